-- The write path at the speed of the database (issue 15).
--
-- 1. The ledger's hash chain leaves the request path.  An entry used to
--    take its tenant's chain head (ledger_heads) FOR UPDATE in a BEFORE
--    INSERT trigger and hold it until commit, so every payment of one
--    tenant queued behind the commit of the one before.  Now an entry goes
--    in unsealed, stamped with its transaction id (txid, set by the
--    database: the application cannot write ledger rows at all), and a
--    sequencer, payflow_ledger_seal(), run by every worker on a short timer
--    and claiming each chain head with SKIP LOCKED, gives entries their
--    sequence number and hash in batches: those whose transaction is below
--    the snapshot's xmin, so no entry can still appear before them, in
--    (txid, id) order.  The seal is its own append-only row
--    (ledger_seals); the canonical form hashed is the old one, so chains
--    sealed before this migration verify unchanged.
--
-- 2. A payment is created by one call, payflow_payment_create(), owned by
--    the schema owner: the key with its stored answer, the payment in its
--    final state, its events with their snapshots and deliveries, its
--    ledger transaction, written set-based with one JSON built once,
--    instead of an insert and an update each firing four row triggers.
--    The application role loses INSERT on payments (only this function
--    creates them), on the event log, its deliveries and the ledger (only
--    the owner's triggers and functions write them), so the insert-time
--    triggers that guarded those acts go: the privileges forbid them.
--
-- Invariants kept in the database: the state machine and the amounts
-- (payments_guard, CHECK constraints), every transition's event in its
-- own transaction (payments_event, refunds_event, the create function),
-- balanced ledger transactions (deferred constraint trigger), append-only
-- events, entries, transactions and seals, refunds bounded by the captured
-- amount (refunds_reserve, row lock).


-- 1. sealing ----------------------------------------------------------------

-- entries there are now were sealed by the trigger: txid 0, before any
ALTER TABLE ledger_entries ADD COLUMN txid xid8 NOT NULL DEFAULT '0';
ALTER TABLE ledger_entries ALTER COLUMN txid SET DEFAULT pg_current_xact_id();

CREATE TABLE ledger_seals (
    entry_id        text PRIMARY KEY REFERENCES ledger_entries (id),
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    seq             bigint NOT NULL CHECK (seq > 0),
    prev_hash       bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash            bytea NOT NULL CHECK (length(hash) = 32),
    sealed_at       timestamptz NOT NULL DEFAULT now(),

    UNIQUE (tenant_id, livemode, seq)
);

INSERT INTO ledger_seals (entry_id, tenant_id, livemode, seq, prev_hash,
                          hash, sealed_at)
SELECT id, tenant_id, livemode, seq, prev_hash, hash, created_at
  FROM ledger_entries;

-- the old canonical form took the row; the sequence number is the seal's now
DROP TRIGGER ledger_entries_chain ON ledger_entries;
DROP FUNCTION ledger_entries_chain();
DROP FUNCTION payflow_ledger_verify(text, boolean);
DROP FUNCTION payflow_ledger_canonical(ledger_entries);
DROP FUNCTION payflow_ledger_entry_list(text, text, int, text);
DROP FUNCTION payflow_ledger_entry_json(ledger_entries);

ALTER TABLE ledger_entries DROP COLUMN seq, DROP COLUMN prev_hash,
    DROP COLUMN hash;

-- a payment's entries, a tenant's list and the sequencer's scan, all in
-- (txid, id): the order entries are sealed in
CREATE INDEX ledger_entries_payment_txid ON ledger_entries
    (payment_id, txid, id);
CREATE INDEX ledger_entries_chain ON ledger_entries
    (tenant_id, livemode, txid, id);

ALTER TABLE ledger_seals ENABLE ROW LEVEL SECURITY;

CREATE POLICY ledger_seals_scope ON ledger_seals
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin());

GRANT SELECT ON ledger_seals TO :"app";

CREATE TRIGGER ledger_seals_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_seals
    FOR EACH STATEMENT EXECUTE FUNCTION payflow_append_only();

-- where each chain's sequencer stands: the last entry sealed, by position
ALTER TABLE ledger_heads
    ADD COLUMN last_txid xid8 NOT NULL DEFAULT '1',
    ADD COLUMN last_id text NOT NULL DEFAULT '',
    ADD COLUMN sealed_at timestamptz;

-- every tenant has both chains from the start, so that the sequencer
-- finds them without scanning the entries
INSERT INTO ledger_heads (tenant_id, livemode)
SELECT t.id, m.livemode FROM tenants t, (VALUES (false), (true)) m(livemode)
UNION
SELECT DISTINCT tenant_id, livemode FROM ledger_entries
ON CONFLICT DO NOTHING;

CREATE FUNCTION tenants_ledger_heads() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    INSERT INTO ledger_heads (tenant_id, livemode)
    VALUES (NEW.id, false), (NEW.id, true)
    ON CONFLICT DO NOTHING;

    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_ledger_heads AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_ledger_heads();

CREATE FUNCTION payflow_ledger_canonical(e ledger_entries, p_seq bigint)
    RETURNS bytea
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT convert_to(concat_ws('|', e.tenant_id, e.livemode::text, p_seq,
                                e.transaction_id, e.account, e.currency,
                                e.amount, e.direction,
                                coalesce(e.payment_id, ''),
                                coalesce(e.refund_id, ''),
                                (extract(epoch FROM e.created_at)
                                 * 1000000)::bigint),
                      'UTF8')
$$;

-- Seals up to p_limit entries of each chain it can claim; returns how many
-- it sealed, and what is left unsealed and how old the oldest of those is
-- (across every chain, as this transaction sees them).
CREATE FUNCTION payflow_ledger_seal(p_limit int)
    RETURNS TABLE (sealed bigint, unsealed bigint, lag_seconds float8)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    -- planned for a backlog, each call's work is small: never worth JIT
    SET jit = off
    AS $$
DECLARE
    v_horizon  xid8 := pg_snapshot_xmin(pg_current_snapshot());
    c          record;
    h          ledger_heads%ROWTYPE;
    e          ledger_entries%ROWTYPE;
    v_ids      text[];
    v_seqs     bigint[];
    v_prevs    bytea[];
    v_hashes   bytea[];
    v_hash     bytea;
    v_seq      bigint;
BEGIN
    sealed := 0;

    -- chains with something to seal, found without a lock: an index probe
    -- each (the order keeps the planner on the chain's index when one
    -- tenant holds most entries)
    FOR c IN SELECT hd.tenant_id, hd.livemode FROM ledger_heads hd,
                    LATERAL (SELECT 1 FROM ledger_entries le
                              WHERE le.tenant_id = hd.tenant_id
                                AND le.livemode = hd.livemode
                                AND (le.txid, le.id)
                                    > (hd.last_txid, hd.last_id)
                                AND le.txid < v_horizon
                              ORDER BY le.txid, le.id
                              LIMIT 1) x
    LOOP
        SELECT * INTO h FROM ledger_heads hd
         WHERE hd.tenant_id = c.tenant_id AND hd.livemode = c.livemode
           FOR UPDATE SKIP LOCKED;

        IF NOT FOUND THEN
            CONTINUE;   -- another worker or node is sealing it
        END IF;

        v_seq := h.seq;
        v_hash := h.hash;
        v_ids := '{}';
        v_seqs := '{}';
        v_prevs := '{}';
        v_hashes := '{}';

        FOR e IN SELECT * FROM ledger_entries le
                  WHERE le.tenant_id = h.tenant_id
                    AND le.livemode = h.livemode
                    AND (le.txid, le.id) > (h.last_txid, h.last_id)
                    AND le.txid < v_horizon
                  ORDER BY le.txid, le.id
                  LIMIT p_limit
        LOOP
            v_seq := v_seq + 1;
            v_prevs := v_prevs || v_hash;
            v_hash := sha256(v_hash || payflow_ledger_canonical(e, v_seq));
            v_ids := v_ids || e.id;
            v_seqs := v_seqs || v_seq;
            v_hashes := v_hashes || v_hash;
            h.last_txid := e.txid;
            h.last_id := e.id;
        END LOOP;

        INSERT INTO ledger_seals (entry_id, tenant_id, livemode, seq,
                                  prev_hash, hash)
        SELECT s.id, h.tenant_id, h.livemode, s.seq, s.prev, s.hash
          FROM unnest(v_ids, v_seqs, v_prevs, v_hashes)
               AS s(id, seq, prev, hash);

        UPDATE ledger_heads
           SET seq = v_seq, hash = v_hash, last_txid = h.last_txid,
               last_id = h.last_id, sealed_at = now()
         WHERE tenant_id = h.tenant_id AND livemode = h.livemode;

        sealed := sealed + coalesce(array_length(v_ids, 1), 0);
    END LOOP;

    -- per chain, from where it stands: an index range each, in the
    -- chain's order, so that the planner never takes a whole-table scan
    -- for it; the first unsealed entry is the oldest (txid order)
    SELECT coalesce(sum(x.n), 0),
           coalesce(extract(epoch FROM clock_timestamp() - min(y.oldest)), 0)
      INTO unsealed, lag_seconds
      FROM ledger_heads hd,
           LATERAL (SELECT count(*) AS n
                      FROM (SELECT 1 FROM ledger_entries le
                             WHERE le.tenant_id = hd.tenant_id
                               AND le.livemode = hd.livemode
                               AND (le.txid, le.id)
                                   > (hd.last_txid, hd.last_id)
                             ORDER BY le.txid, le.id
                             LIMIT 10000000) u) x,
           LATERAL (SELECT le.created_at AS oldest FROM ledger_entries le
                     WHERE le.tenant_id = hd.tenant_id
                       AND le.livemode = hd.livemode
                       AND (le.txid, le.id) > (hd.last_txid, hd.last_id)
                     ORDER BY le.txid, le.id
                     LIMIT 1) y;

    RETURN NEXT;
END
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_seal(int) TO :"app";

-- Walks a chain from its first seal: each must follow the one before and
-- hash its entry as it is now; the head must stand at the last.  Entries
-- the sequencer should have sealed by now (their transaction ended before
-- the oldest one still running) but did not, are a break too.  Returns
-- the entries checked and, at the first break, its sequence number and
-- the entry, with what is wrong.
CREATE FUNCTION payflow_ledger_verify(p_tenant text, p_livemode boolean)
    RETURNS TABLE (entries bigint, unsealed bigint, broken_seq bigint,
                   broken_entry text, problem text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    r      record;
    prev   bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    n      bigint := 0;
    h      ledger_heads%ROWTYPE;
BEGIN
    entries := 0;
    unsealed := 0;

    FOR r IN SELECT s.seq, s.prev_hash, s.hash, s.entry_id, le AS e
               FROM ledger_seals s
               LEFT JOIN ledger_entries le ON le.id = s.entry_id
              WHERE s.tenant_id = p_tenant AND s.livemode = p_livemode
              ORDER BY s.seq
    LOOP
        n := n + 1;
        broken_seq := n;
        broken_entry := r.entry_id;

        IF r.seq <> n THEN
            problem := 'seal ' || n || ' is missing';
        ELSIF r.prev_hash <> prev THEN
            problem := 'the seal does not follow the one before';
        ELSIF (r.e).id IS NULL OR (r.e).tenant_id <> p_tenant
              OR (r.e).livemode <> p_livemode
              OR r.hash <> sha256(prev || payflow_ledger_canonical(r.e, n))
        THEN
            problem := 'the entry is not what was sealed';
        END IF;

        IF problem IS NOT NULL THEN
            entries := n;
            RETURN NEXT;
            RETURN;
        END IF;

        prev := r.hash;
    END LOOP;

    broken_seq := NULL;
    broken_entry := NULL;
    entries := n;

    SELECT * INTO h FROM ledger_heads
     WHERE tenant_id = p_tenant AND livemode = p_livemode;

    IF FOUND AND (h.seq <> n OR h.hash <> prev) THEN
        broken_seq := n + 1;
        problem := 'the chain head is not at the last seal';
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT count(*) INTO unsealed FROM ledger_entries le
     WHERE le.tenant_id = p_tenant AND le.livemode = p_livemode
       AND NOT EXISTS (SELECT 1 FROM ledger_seals s WHERE s.entry_id = le.id);

    SELECT le.id INTO broken_entry FROM ledger_entries le
     WHERE le.tenant_id = p_tenant AND le.livemode = p_livemode
       AND le.txid < coalesce(h.last_txid, '1')
       AND NOT EXISTS (SELECT 1 FROM ledger_seals s WHERE s.entry_id = le.id)
     ORDER BY le.txid, le.id
     LIMIT 1;

    IF broken_entry IS NOT NULL THEN
        problem := 'the entry was passed over by the sequencer';
    END IF;

    RETURN NEXT;
END
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_verify(text, boolean) TO :"app";

CREATE FUNCTION payflow_ledger_entry_json(e ledger_entries) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', e.id,
        'object', 'ledger_entry',
        'livemode', e.livemode,
        'transaction', e.transaction_id,
        'account', e.account,
        'direction', e.direction,
        'amount', e.amount,
        'currency', lower(e.currency),
        'payment', e.payment_id,
        'refund', e.refund_id,
        'sealed', s.seq IS NOT NULL,
        'seq', s.seq,
        'prev_hash', encode(s.prev_hash, 'hex'),
        'hash', encode(s.hash, 'hex'),
        'created', floor(extract(epoch FROM e.created_at))::bigint)
      FROM (SELECT NULL) x
      LEFT JOIN ledger_seals s ON s.entry_id = e.id
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_entry_json(ledger_entries)
    TO :"app";

CREATE FUNCTION payflow_ledger_entry_list(p_after text, p_before text,
    p_limit int, p_payment text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('ledger_entries', 'payflow_ledger_entry_json',
        '($1 IS NULL OR t.payment_id = $1)',
        't.txid, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[p_payment])
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_entry_list(text, text, int, text)
    TO :"app";


-- only the owner's code writes the books ----------------------------------

-- one statement, its plan cached (a plpgsql function's are; a SQL
-- function called from PL/pgSQL is planned again at every call)
CREATE OR REPLACE FUNCTION payflow_ledger_post(p_tenant text,
    p_livemode boolean, p_payment text, p_refund text, p_description text,
    p_debit text, p_credit text, p_currency text, p_amount bigint)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    WITH tx AS (
        INSERT INTO ledger_transactions (tenant_id, livemode, payment_id,
                                         refund_id, description)
        VALUES (p_tenant, p_livemode, p_payment, p_refund, p_description)
        RETURNING id
    )
    INSERT INTO ledger_entries (tenant_id, livemode, transaction_id,
                                account, currency, amount, direction,
                                payment_id, refund_id)
    SELECT p_tenant, p_livemode, tx.id, s.account, p_currency, p_amount,
           s.direction, p_payment, p_refund
      FROM tx, (VALUES (p_debit, 'debit'), (p_credit, 'credit'))
           AS s(account, direction);
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_ledger_post(text, boolean, text, text,
    text, text, text, text, bigint) FROM PUBLIC, :"app";

ALTER FUNCTION payments_ledger() SECURITY DEFINER
    SET search_path = public, pg_temp;
ALTER FUNCTION refunds_succeeded() SECURITY DEFINER
    SET search_path = public, pg_temp;
ALTER FUNCTION payments_event() SECURITY DEFINER
    SET search_path = public, pg_temp;
ALTER FUNCTION refunds_event() SECURITY DEFINER
    SET search_path = public, pg_temp;

REVOKE INSERT ON payments, payment_events, webhook_deliveries,
    ledger_transactions, ledger_entries FROM :"app";

-- every event is written by the owner's code for the payment at hand
ALTER TABLE payment_events
    DROP CONSTRAINT payment_events_tenant_id_payment_id_fkey;

-- A foreign key to tenants takes the tenant's row FOR KEY SHARE: every
-- concurrent payment of one tenant shares a lock on one row, which
-- PostgreSQL keeps as a MultiXact written into that row, three per
-- payment.  Tenants are never deleted (a closed tenant keeps its books),
-- so a lookup without a lock says the same: payflow_payment_create checks
-- the tenant; the key and the ledger rows follow the payment.
ALTER TABLE payments DROP CONSTRAINT payments_tenant_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_tenant_id_fkey;
ALTER TABLE ledger_transactions
    DROP CONSTRAINT ledger_transactions_tenant_id_fkey;

CREATE FUNCTION tenants_kept() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'tenants are never deleted: their books are kept'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER tenants_kept BEFORE DELETE OR TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenants_kept();


-- 2. creating a payment -----------------------------------------------------

-- A CHECK constraint's expression is read back from its stored form (and
-- prepared) at every statement that writes its table: PostgreSQL does not
-- keep it between statements.  Twenty-two of them on the tables a payment
-- writes were a fifth of its database time.  Each table's checks become
-- one, a call of a PL/pgSQL function that says the same (its expression
-- compiled once per session); what never changes after a payment's
-- creation (id, currency, capture method, description, payment method)
-- is checked once, by payflow_payment_create, its only writer.

CREATE FUNCTION payflow_payment_ok(p_status text, p_amount bigint,
    p_capturable bigint, p_captured bigint, p_refunded bigint,
    p_provider text, p_routing text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN p_amount > 0
       AND p_capturable BETWEEN 0 AND p_amount
       AND p_captured BETWEEN 0 AND p_amount
       AND p_refunded BETWEEN 0 AND p_captured
       AND p_status IN ('pending', 'processing', 'requires_action',
                        'requires_capture', 'succeeded',
                        'partially_refunded', 'refunded', 'failed',
                        'canceled')
       AND (p_status <> 'requires_capture'
            OR (p_capturable > 0 AND p_captured = 0))
       AND (p_status <> 'succeeded'
            OR (p_captured > 0 AND p_refunded = 0))
       AND (p_status <> 'partially_refunded'
            OR (p_refunded > 0 AND p_refunded < p_captured))
       AND (p_status <> 'refunded'
            OR (p_refunded > 0 AND p_refunded = p_captured))
       AND (p_status NOT IN ('pending', 'processing', 'requires_action',
                             'failed', 'canceled')
            OR p_captured = 0)
       AND p_provider ~ '^[a-z0-9_]{1,32}$'
       AND coalesce(length(p_routing) <= 300, true);
END
$$;

GRANT EXECUTE ON FUNCTION payflow_payment_ok(text, bigint, bigint, bigint,
    bigint, text, text) TO :"app";

ALTER TABLE payments DROP CONSTRAINT payments_amount_check,
    DROP CONSTRAINT payments_check, DROP CONSTRAINT payments_check1,
    DROP CONSTRAINT payments_check2, DROP CONSTRAINT payments_check3,
    DROP CONSTRAINT payments_check4, DROP CONSTRAINT payments_check5,
    DROP CONSTRAINT payments_check6, DROP CONSTRAINT payments_check7,
    DROP CONSTRAINT payments_status_check,
    DROP CONSTRAINT payments_provider_check,
    DROP CONSTRAINT payments_routing_check,
    DROP CONSTRAINT payments_id_check,
    DROP CONSTRAINT payments_currency_check,
    DROP CONSTRAINT payments_capture_method_check,
    DROP CONSTRAINT payments_description_check,
    DROP CONSTRAINT payments_payment_method_check,
    ADD CONSTRAINT payments_ok CHECK (payflow_payment_ok(status, amount,
        amount_capturable, amount_captured, amount_refunded, provider,
        routing));

CREATE FUNCTION payflow_idempotency_key_ok(p_key text, p_fingerprint bytea,
    p_phase text, p_status int) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN length(p_key) BETWEEN 1 AND 255
       AND length(p_fingerprint) = 32
       AND p_phase IN ('started', 'payment_created', 'provider_called',
                       'finished')
       AND (p_phase = 'finished') = (p_status IS NOT NULL);
END
$$;

GRANT EXECUTE ON FUNCTION payflow_idempotency_key_ok(text, bytea, text, int)
    TO :"app";

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_key_check,
    DROP CONSTRAINT idempotency_keys_fingerprint_check,
    DROP CONSTRAINT idempotency_keys_phase_check,
    DROP CONSTRAINT idempotency_keys_check,
    ADD CONSTRAINT idempotency_keys_ok CHECK (payflow_idempotency_key_ok(
        key, fingerprint, phase, response_status));

CREATE FUNCTION payflow_ledger_entry_ok(p_account text, p_currency text,
    p_amount bigint, p_direction text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN p_account ~ '^[a-z_]+(:[a-z0-9_]+)*$'
       AND p_currency ~ '^[A-Z]{3}$'
       AND p_amount > 0
       AND p_direction IN ('debit', 'credit');
END
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_entry_ok(text, text, bigint, text)
    TO :"app";

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_account_check,
    DROP CONSTRAINT ledger_entries_currency_check,
    DROP CONSTRAINT ledger_entries_amount_check,
    DROP CONSTRAINT ledger_entries_direction_check,
    ADD CONSTRAINT ledger_entries_ok CHECK (payflow_ledger_entry_ok(account,
        currency, amount, direction));

-- entries are written by the owner's code only, each right after its
-- transaction, whose balance the deferred trigger checks at commit
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_transaction_id_fkey;

-- most payments name no customer: they need no entry in its index
DROP INDEX payments_customer;
CREATE INDEX payments_customer ON payments
    (tenant_id, livemode, lower(customer->>'email'), created_at)
    WHERE customer IS NOT NULL;

-- the insert-time triggers: the create function does what they did
DROP TRIGGER payments_insert_guard ON payments;
DROP FUNCTION payments_insert_guard();

DROP TRIGGER payments_event ON payments;
CREATE TRIGGER payments_event AFTER UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_event();

DROP TRIGGER payments_ledger ON payments;
CREATE TRIGGER payments_ledger AFTER UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_ledger();

DROP TRIGGER payments_check ON payments;
CREATE TRIGGER payments_check AFTER UPDATE OF status ON payments
    FOR EACH ROW WHEN (NEW.provider <> 'sandbox')
    EXECUTE FUNCTION payments_check();

-- A new payment of the caller's tenant and mode, in the state its provider
-- answered (processing while a network provider is still to be called or
-- undecided), with an Idempotency-Key or without (p_key NULL).
--
-- With a key, the key goes in first and gates the rest: if another request
-- holds it, nothing is written and that key is returned (mine false).
-- With p_head (the answer's envelope around the payment, from C), the key
-- is finished with its answer in the same row; without, it waits in
-- payment_created for the provider's answer.
--
-- Returns the key as payflow_idem_get reads it, then the payment's JSON.
CREATE FUNCTION payflow_payment_create(p_id text, p_amount bigint,
    p_currency text, p_capture text, p_provider text, p_description text,
    p_customer jsonb, p_metadata jsonb, p_return_url text, p_method text,
    p_routing text, p_status text, p_failure_code text,
    p_failure_message text, p_redirect_url text, p_reference text,
    p_key text, p_fingerprint text, p_head text, p_tail text,
    p_response_status int)
    RETURNS TABLE (fingerprint text, phase text, locked boolean,
                   response_status int, response_body text,
                   payment_id text, request_id text, object_id text,
                   mine boolean, payment text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    p        payments%ROWTYPE;
    v_json   jsonb;
    v_first  jsonb;
    v_at     timestamptz := clock_timestamp();
BEGIN
    p.tenant_id := payflow_tenant();
    p.livemode := payflow_livemode();

    IF p.tenant_id IS NULL THEN
        RAISE EXCEPTION 'a payment is created in a tenant''s scope'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    -- what the foreign key did, without its lock (tenants are kept)
    IF NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = p.tenant_id) THEN
        RAISE EXCEPTION 'no tenant %', p.tenant_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    IF p_status NOT IN ('processing', 'requires_action', 'requires_capture',
                        'succeeded', 'failed')
    THEN
        RAISE EXCEPTION 'a payment starts processing or with its '
            'provider''s answer, not %', p_status USING ERRCODE = 'PF001';
    END IF;

    -- what the table's constraints checked once, for what never changes
    IF p_id !~ '^pay_[0-9A-Za-z]{24}$' OR p_currency !~ '^[A-Z]{3}$'
       OR p_capture NOT IN ('automatic', 'manual')
       OR length(p_description) > 1000 OR length(p_method) > 255
    THEN
        RAISE EXCEPTION 'payment % is not well formed', p_id
            USING ERRCODE = 'check_violation';
    END IF;

    p.id := p_id;
    p.amount := p_amount;
    p.currency := p_currency;
    p.capture_method := p_capture;
    p.status := p_status;
    p.amount_capturable := CASE WHEN p_status = 'requires_capture'
                                THEN p_amount ELSE 0 END;
    p.amount_captured := CASE WHEN p_status = 'succeeded'
                              THEN p_amount ELSE 0 END;
    p.amount_refunded := 0;
    p.provider := p_provider;
    p.provider_reference := CASE WHEN p_status = 'processing'
                                 THEN p_reference
                                 ELSE coalesce(p_reference, p_id) END;
    p.description := p_description;
    p.customer := p_customer;
    p.metadata := coalesce(p_metadata, '{}');
    p.return_url := p_return_url;
    p.next_action := CASE WHEN p_redirect_url IS NOT NULL THEN
        jsonb_build_object('type', 'redirect_to_url', 'redirect_url',
                           p_redirect_url, 'return_url', p_return_url) END;
    p.failure_code := p_failure_code;
    p.failure_message := p_failure_message;
    p.created_at := now();
    p.updated_at := now();
    p.payment_method := p_method;
    p.routing := p_routing;

    v_json := payflow_payment_json(p);

    -- the log shows every step, each with the payment as it was then
    v_first := v_json || jsonb_build_object('status', 'processing',
        'amount_capturable', 0, 'amount_received', 0,
        'provider_reference', NULL, 'next_action', NULL,
        'failure_code', NULL, 'failure_message', NULL);

    -- one statement: the key gates the payment, everything else follows it
    RETURN QUERY
    WITH k AS (
        INSERT INTO idempotency_keys AS k (tenant_id, livemode, key,
            fingerprint, method, path, phase, locked_until, payment_id,
            response_status, response_body)
        SELECT p.tenant_id, p.livemode, p_key, decode(p_fingerprint, 'hex'),
            'POST', '/v1/payments',
            CASE WHEN p_head IS NULL THEN 'payment_created'
                 ELSE 'finished' END,
            CASE WHEN p_head IS NULL THEN now() + interval '30 seconds' END,
            p.id, CASE WHEN p_head IS NOT NULL THEN p_response_status END,
            p_head || v_json::text || p_tail
         WHERE p_key IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING k.key
    ), pay AS (
        INSERT INTO payments
        SELECT (p).*
         WHERE p_key IS NULL OR EXISTS (SELECT 1 FROM k)
        RETURNING payments.id
    ), ev AS (
        INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                    from_status, to_status, source,
                                    request_id, amount, provider, detail,
                                    data, created_at)
        SELECT p.tenant_id, p.livemode, pay.id, s.type, s.from_status,
               s.to_status, payflow_event_source(),
               nullif(current_setting('payflow.request_id', true), ''),
               p.amount, p.provider, s.detail,
               CASE WHEN s.step = 3 THEN v_json ELSE v_first END,
               v_at + (s.step - 1) * interval '1 microsecond'
          FROM pay,
               (VALUES (1, 'payment.created', NULL, 'pending', p.routing),
                       (2, 'payment.processing', 'pending', 'processing',
                        p.routing),
                       (3, 'payment.' || p.status, 'processing', p.status,
                        p.failure_code))
               AS s(step, type, from_status, to_status, detail)
         WHERE s.step < 3 OR p.status <> 'processing'
        RETURNING payment_events.id, payment_events.type
    ), dl AS (
        INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                        endpoint_id, next_attempt_at)
        SELECT p.tenant_id, p.livemode, ev.id, e.id, now()
          FROM ev JOIN webhook_endpoints e
            ON e.tenant_id = p.tenant_id AND e.livemode = p.livemode
         WHERE e.enabled
           AND (ev.type = ANY (e.events) OR '*' = ANY (e.events))
    ), tx AS (
        -- the capture's ledger transaction (payflow_ledger_post, inline)
        INSERT INTO ledger_transactions (tenant_id, livemode, payment_id,
                                         description)
        SELECT p.tenant_id, p.livemode, pay.id, 'capture'
          FROM pay
         WHERE p.amount_captured > 0
        RETURNING ledger_transactions.id
    ), le AS (
        INSERT INTO ledger_entries (tenant_id, livemode, transaction_id,
                                    account, currency, amount, direction,
                                    payment_id)
        SELECT p.tenant_id, p.livemode, tx.id, s.account, p.currency,
               p.amount_captured, s.direction, p.id
          FROM tx, (VALUES ('provider:' || p.provider || ':clearing',
                            'debit'),
                           ('merchant:payable', 'credit'))
               AS s(account, direction)
    ), chk AS (
        -- a network provider's payment is verified if it stays undecided
        INSERT INTO payment_checks (payment_id, due_at)
        SELECT pay.id, now()
          FROM pay
         WHERE p.provider <> 'sandbox'
           AND p.status IN ('processing', 'requires_action')
        ON CONFLICT (payment_id) DO NOTHING
    )
    SELECT p_fingerprint,
           CASE WHEN p_head IS NULL THEN 'payment_created'
                ELSE 'finished' END,
           p_head IS NULL,
           CASE WHEN p_head IS NOT NULL THEN p_response_status END,
           p_head || v_json::text || p_tail, pay.id, NULL::text,
           NULL::text, true, v_json::text
      FROM pay;

    IF NOT FOUND THEN
        -- another request's key: its answer, not a second payment
        RETURN QUERY
            SELECT encode(k.fingerprint, 'hex'), k.phase,
                   coalesce(k.locked_until > now(), false),
                   k.response_status, k.response_body, k.payment_id,
                   k.request_id, k.object_id, false, NULL::text
              FROM idempotency_keys k
             WHERE k.tenant_id = p.tenant_id
               AND k.livemode = p.livemode AND k.key = p_key;
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int) TO :"app";
