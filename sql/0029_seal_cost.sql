-- The sequencer's cost per entry (issue 15).
--
-- With payments written a group at a time, sealing their entries was a
-- sixth of the database's time under load (pg_stat_user_functions during
-- bench/payments: payflow_ledger_seal 3.8 s of every 10).  Two things in
-- it did nothing the schema does not already guarantee:
--
-- * the foreign key from a seal to its entry: its check locked every
--   entry sealed (FOR KEY SHARE: a write to the entry's page and to the
--   WAL) so that the entry could not be deleted meanwhile; entries are
--   append-only (ledger_entries_append_only refuses DELETE, UPDATE and
--   TRUNCATE to everyone), seals are written only by payflow_ledger_seal,
--   which takes each id from the entry it has just read (payflow_app may
--   only read ledger_seals), and payflow_ledger_verify names an entry
--   whose seal is missing or wrong.  Sealing 5,000 entries: 300-370 ms
--   with it, 200-210 ms without.
-- * payflow_ledger_canonical declared IMMUTABLE over concat_ws (STABLE): a
--   function call per entry instead of being inlined into the hash.

ALTER TABLE ledger_seals DROP CONSTRAINT ledger_seals_entry_id_fkey;

ALTER FUNCTION payflow_ledger_canonical(ledger_entries, bigint) STABLE;
