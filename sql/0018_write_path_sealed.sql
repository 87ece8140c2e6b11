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

    -- chains with something to seal, found without a lock
    FOR c IN SELECT hd.tenant_id, hd.livemode FROM ledger_heads hd
              WHERE EXISTS (
                    SELECT 1 FROM ledger_entries le
                     WHERE le.tenant_id = hd.tenant_id
                       AND le.livemode = hd.livemode
                       AND (le.txid, le.id) > (hd.last_txid, hd.last_id)
                       AND le.txid < v_horizon)
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

    SELECT count(*),
           coalesce(extract(epoch FROM clock_timestamp()
                                       - min(le.created_at)), 0)
      INTO unsealed, lag_seconds
      FROM ledger_heads hd
      JOIN ledger_entries le
        ON le.tenant_id = hd.tenant_id AND le.livemode = hd.livemode
       AND (le.txid, le.id) > (hd.last_txid, hd.last_id);

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

CREATE OR REPLACE FUNCTION payflow_ledger_post(p_tenant text,
    p_livemode boolean, p_payment text, p_refund text, p_description text,
    p_debit text, p_credit text, p_currency text, p_amount bigint)
    RETURNS void
    LANGUAGE sql
    AS $$
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
           AS s(account, direction)
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


-- 2. creating a payment -----------------------------------------------------

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

    IF p_status NOT IN ('processing', 'requires_action', 'requires_capture',
                        'succeeded', 'failed')
    THEN
        RAISE EXCEPTION 'a payment starts processing or with its '
            'provider''s answer, not %', p_status USING ERRCODE = 'PF001';
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

    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys AS k (tenant_id, livemode, key,
            fingerprint, method, path, phase, locked_until, payment_id,
            response_status, response_body)
        VALUES (p.tenant_id, p.livemode, p_key, decode(p_fingerprint, 'hex'),
            'POST', '/v1/payments',
            CASE WHEN p_head IS NULL THEN 'payment_created'
                 ELSE 'finished' END,
            CASE WHEN p_head IS NULL THEN now() + interval '30 seconds' END,
            p_id, CASE WHEN p_head IS NOT NULL THEN p_response_status END,
            p_head || v_json::text || p_tail)
        ON CONFLICT DO NOTHING;

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
            RETURN;
        END IF;
    END IF;

    INSERT INTO payments VALUES (p.*);

    -- the log shows every step, each with the payment as it was then
    v_first := v_json || jsonb_build_object('status', 'processing',
        'amount_capturable', 0, 'amount_received', 0,
        'provider_reference', NULL, 'next_action', NULL,
        'failure_code', NULL, 'failure_message', NULL);

    WITH ev AS (
        INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                    from_status, to_status, source,
                                    request_id, amount, provider, detail,
                                    data, created_at)
        SELECT p.tenant_id, p.livemode, p.id, s.type, s.from_status,
               s.to_status, payflow_event_source(),
               nullif(current_setting('payflow.request_id', true), ''),
               p.amount, p.provider, s.detail,
               CASE WHEN s.step = 3 THEN v_json ELSE v_first END,
               v_at + (s.step - 1) * interval '1 microsecond'
          FROM (VALUES (1, 'payment.created', NULL, 'pending', p.routing),
                       (2, 'payment.processing', 'pending', 'processing',
                        p.routing),
                       (3, 'payment.' || p.status, 'processing', p.status,
                        p.failure_code))
               AS s(step, type, from_status, to_status, detail)
         WHERE s.step < 3 OR p.status <> 'processing'
        RETURNING id, type
    )
    INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                    endpoint_id, next_attempt_at)
    SELECT p.tenant_id, p.livemode, ev.id, e.id, now()
      FROM ev JOIN webhook_endpoints e
        ON e.tenant_id = p.tenant_id AND e.livemode = p.livemode
     WHERE e.enabled AND (ev.type = ANY (e.events) OR '*' = ANY (e.events));

    IF p.amount_captured > 0 THEN
        PERFORM payflow_ledger_post(p.tenant_id, p.livemode, p.id, NULL,
                    'capture', 'provider:' || p.provider || ':clearing',
                    'merchant:payable', p.currency, p.amount_captured);
    END IF;

    IF p.provider <> 'sandbox'
       AND p.status IN ('processing', 'requires_action')
    THEN
        INSERT INTO payment_checks (payment_id, due_at)
        VALUES (p.id, now())
        ON CONFLICT (payment_id) DO NOTHING;
    END IF;

    RETURN QUERY
        SELECT p_fingerprint,
               CASE WHEN p_head IS NULL THEN 'payment_created'
                    ELSE 'finished' END,
               p_head IS NULL,
               CASE WHEN p_head IS NOT NULL THEN p_response_status END,
               p_head || v_json::text || p_tail, p.id, NULL::text,
               NULL::text, true, v_json::text;
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int) TO :"app";
