-- Ids of the write path sort as they were made (issue 15).
--
-- Every id was 24 random characters, so every insert into a primary key
-- or an index led by an id (a payment's events and entries, a ledger
-- transaction's entries, the seals) landed on a random leaf: 16 random
-- leaf pages per payment.  Once the indexes outgrow memory each is a page
-- read and a dirty page to write back, and after every checkpoint each
-- first touch of a page writes all of it to the WAL (after a checkpoint,
-- 73 MB of full-page images for 155 MB of records in 5 s of payments).
--
-- An id of the write path (pay_ and re_ from the worker, evt_, ltx_, le_
-- and msg_ here) is now its prefix, the time it was made in milliseconds
-- since 1970 as 11 lower-case hex digits (until the year 2527), and 13
-- random base62 characters (78 bits): still [0-9A-Za-z]{24}, still
-- unguessable, but ids made together sort together and share pages.
-- pgbench, 8 payments a statement, ids made in SQL, after a checkpoint:
-- 417 and 420 groups/s with random ids, 533 and 610 with these.  Ids
-- already stored keep their form; nothing reads the time back from an id.

CREATE OR REPLACE FUNCTION payflow_id(p_prefix text) RETURNS text
    LANGUAGE sql VOLATILE
    AS $$
    SELECT p_prefix
           || lpad(to_hex((extract(epoch FROM clock_timestamp())
                           * 1000)::bigint), 11, '0')
           || left(translate(encode(gen_random_bytes(12), 'base64'),
                             '+/', 'xy'), 13)
$$;
