-- The tenant's lists and risk settings cached in the worker (issue 17).
--
-- sql/0020 matched every payment's signals against the tenant's lists and
-- settings in the statement that writes it: two index probes and a jsonb
-- assembly, about a tenth of a payment's database work.  Now each worker
-- keeps, per tenant and mode, the digests of the list entries and the
-- settings, as of a version; a payment the worker could decide alone (no
-- signal on a list, the payer not the merchant) carries that version and
-- the worker's decision, and the database takes the decision when the
-- version is still the tenant's.  Any change to the lists or the settings
-- moves the version in its own transaction, so a decision made on an older
-- copy is never taken: the database decides as before.

CREATE TABLE risk_versions (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id),
    version    bigint NOT NULL DEFAULT 0
);

-- read and moved only by the functions below (SECURITY DEFINER)
ALTER TABLE risk_versions ENABLE ROW LEVEL SECURITY;

-- Every statement changing lists or settings moves the version of each
-- tenant it touched, once (a bulk load of 10,000 entries: one update).
CREATE FUNCTION risk_versions_bump() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE risk_versions SET version = version + 1;
        RETURN NULL;
    END IF;

    INSERT INTO risk_versions AS v (tenant_id, version)
    SELECT DISTINCT c.tenant_id, 1 FROM risk_changed c
    ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1;

    RETURN NULL;
END
$$;

CREATE TRIGGER risk_lists_version_insert AFTER INSERT ON risk_lists
    REFERENCING NEW TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_lists_version_update AFTER UPDATE ON risk_lists
    REFERENCING OLD TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_lists_version_delete AFTER DELETE ON risk_lists
    REFERENCING OLD TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_lists_version_truncate AFTER TRUNCATE ON risk_lists
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();

CREATE TRIGGER risk_settings_version_insert AFTER INSERT ON risk_settings
    REFERENCING NEW TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_settings_version_update AFTER UPDATE ON risk_settings
    REFERENCING OLD TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_settings_version_delete AFTER DELETE ON risk_settings
    REFERENCING OLD TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_settings_version_truncate AFTER TRUNCATE
    ON risk_settings
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();

-- An update moving an entry to another tenant (only by hand: the API never
-- does) is a delete there and an insert here: both versions move.
CREATE TRIGGER risk_lists_version_moved AFTER UPDATE ON risk_lists
    REFERENCING NEW TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();
CREATE TRIGGER risk_settings_version_moved AFTER UPDATE ON risk_settings
    REFERENCING NEW TABLE AS risk_changed
    FOR EACH STATEMENT EXECUTE FUNCTION risk_versions_bump();


-- What a worker caches of one tenant and mode, in one statement (one
-- snapshot: the version and the rows it names):
--
--   version   a: the version
--   settings  a: {"review": n, "block": n, "rules": {...}} or none
--   self      a: email | domain, b: one of the tenant's own
--   list      a: the type, b: the value (an address: its network)
--
-- at most p_limit list rows and one more, so that the worker knows the
-- lists did not fit.
CREATE FUNCTION payflow_risk_snapshot(p_tenant text, p_livemode boolean,
    p_limit int)
    RETURNS TABLE (kind text, a text, b text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT 'version', coalesce((SELECT v.version FROM risk_versions v
                                 WHERE v.tenant_id = p_tenant), 0)::text,
           NULL
    UNION ALL
    SELECT 'settings',
           jsonb_build_object('review', s.review_threshold,
                              'block', s.block_threshold,
                              'rules', s.rules)::text, NULL
      FROM risk_settings s
     WHERE s.tenant_id = p_tenant AND s.livemode = p_livemode
    UNION ALL
    SELECT 'self', 'email', e
      FROM risk_settings s, unnest(s.self_emails) e
     WHERE s.tenant_id = p_tenant AND s.livemode = p_livemode
    UNION ALL
    SELECT 'self', 'domain', d
      FROM risk_settings s, unnest(s.self_domains) d
     WHERE s.tenant_id = p_tenant AND s.livemode = p_livemode
    UNION ALL
    (SELECT 'list', l.type, coalesce(l.network::text, l.value)
       FROM risk_lists l
      WHERE l.tenant_id = p_tenant AND l.livemode = p_livemode
      LIMIT p_limit + 1)
$$;

REVOKE EXECUTE ON FUNCTION payflow_risk_snapshot(text, boolean, int)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_risk_snapshot(text, boolean, int)
    TO :"app";

-- The versions of the tenants a worker caches, for its refresh.
CREATE FUNCTION payflow_risk_versions(p_tenants text[])
    RETURNS TABLE (tenant_id text, version bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT t.id, coalesce(v.version, 0)
      FROM unnest(p_tenants) t(id)
      LEFT JOIN risk_versions v ON v.tenant_id = t.id
$$;

REVOKE EXECUTE ON FUNCTION payflow_risk_versions(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_risk_versions(text[]) TO :"app";


-- sql/0020's payflow_payment_create, but for where the decision comes
-- from: the worker's (p_risk's "result") when p_risk's "version" is the
-- tenant's, else payflow_risk_assess as before; the row's new last column
-- says which (true: the worker's).
DROP FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int, jsonb);

CREATE FUNCTION payflow_payment_create(p_id text, p_amount bigint,
    p_currency text, p_capture text, p_provider text, p_description text,
    p_customer jsonb, p_metadata jsonb, p_return_url text, p_method text,
    p_routing text, p_status text, p_failure_code text,
    p_failure_message text, p_redirect_url text, p_reference text,
    p_key text, p_fingerprint text, p_head text, p_tail text,
    p_response_status int, p_risk jsonb)
    RETURNS TABLE (fingerprint text, phase text, locked boolean,
                   response_status int, response_body text,
                   payment_id text, request_id text, object_id text,
                   mine boolean, payment text, decision text,
                   copied boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    p         payments%ROWTYPE;
    v_json    jsonb;
    v_first   jsonb;
    v_at      timestamptz := clock_timestamp();
    v_risk    jsonb;
    v_decide  text := 'allow';
    v_copied  boolean;
    v_head    text := p_head;
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
    p.provider := p_provider;
    p.provider_reference := CASE WHEN p_status = 'processing'
                                 THEN p_reference
                                 ELSE coalesce(p_reference, p_id) END;
    p.failure_code := p_failure_code;
    p.failure_message := p_failure_message;

    IF p_risk IS NOT NULL THEN
        -- the worker's decision, made on its copy of the tenant's lists
        -- and settings, stands if the copy is current; else the database
        -- decides on them
        IF p_risk ? 'result'
           AND (p_risk->>'version')::bigint
               = coalesce((SELECT v.version FROM risk_versions v
                            WHERE v.tenant_id = p.tenant_id), 0)
        THEN
            v_risk := p_risk->'result';
            v_copied := true;
        ELSE
            v_risk := payflow_risk_assess(p.tenant_id, p.livemode, p_risk);
            v_copied := false;
        END IF;

        v_decide := v_risk->>'decision';
        p.risk := v_risk;

        IF v_decide <> 'allow' THEN
            -- held before any provider: nothing was or will be charged
            p.status := CASE v_decide WHEN 'block' THEN 'failed'
                                      ELSE 'requires_review' END;
            p.provider_reference := NULL;
            p.failure_code := CASE v_decide WHEN 'block' THEN 'blocked' END;
            p.failure_message := CASE v_decide WHEN 'block' THEN
                'the payment was blocked by the risk rules; nothing was '
                'charged' END;
            v_head := NULL;
        END IF;
    END IF;

    p.amount_capturable := CASE WHEN p.status = 'requires_capture'
                                THEN p_amount ELSE 0 END;
    p.amount_captured := CASE WHEN p.status = 'succeeded'
                              THEN p_amount ELSE 0 END;
    p.amount_refunded := 0;
    p.description := p_description;
    p.customer := p_customer;
    p.metadata := coalesce(p_metadata, '{}');
    p.return_url := p_return_url;
    p.next_action := CASE WHEN p_redirect_url IS NOT NULL
                          AND v_decide = 'allow' THEN
        jsonb_build_object('type', 'redirect_to_url', 'redirect_url',
                           p_redirect_url, 'return_url', p_return_url) END;
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
            CASE WHEN v_head IS NULL THEN 'payment_created'
                 ELSE 'finished' END,
            CASE WHEN v_head IS NULL THEN now() + interval '30 seconds' END,
            p.id, CASE WHEN v_head IS NOT NULL THEN p_response_status END,
            v_head || v_json::text || p_tail
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
                       (3, CASE WHEN p.status = 'requires_review'
                                THEN 'payment.review_required'
                                ELSE 'payment.' || p.status END,
                        CASE WHEN v_decide = 'allow' THEN 'processing'
                             ELSE 'pending' END,
                        p.status,
                        coalesce(p.failure_code,
                                 CASE WHEN v_decide <> 'allow'
                                      THEN 'score ' || (v_risk->>'score')
                                 END)))
               AS s(step, type, from_status, to_status, detail)
         WHERE (s.step = 1)
            OR (s.step = 2 AND v_decide = 'allow')
            OR (s.step = 3 AND p.status <> 'processing')
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
           CASE WHEN v_head IS NULL THEN 'payment_created'
                ELSE 'finished' END,
           v_head IS NULL,
           CASE WHEN v_head IS NOT NULL THEN p_response_status END,
           v_head || v_json::text || p_tail, pay.id, NULL::text,
           NULL::text, true, v_json::text, v_decide, v_copied
      FROM pay;

    IF NOT FOUND THEN
        -- another request's key: its answer, not a second payment
        RETURN QUERY
            SELECT encode(k.fingerprint, 'hex'), k.phase,
                   coalesce(k.locked_until > now(), false),
                   k.response_status, k.response_body, k.payment_id,
                   k.request_id, k.object_id, false, NULL::text, NULL::text,
                   NULL::boolean
              FROM idempotency_keys k
             WHERE k.tenant_id = p.tenant_id
               AND k.livemode = p.livemode AND k.key = p_key;
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_payment_create(text, bigint, text, text,
    text, text, jsonb, jsonb, text, text, text, text, text, text, text, text,
    text, text, text, text, int, jsonb) TO :"app";


-- A blocked payment's key the worker could not finish (it died between
-- writing the payment and answering): the background completer answers
-- it as the worker would have, 402 payment_blocked with the payment, not
-- 200.  As sql/0019's otherwise.
CREATE OR REPLACE FUNCTION payflow_complete_idempotency_keys(p_limit int,
    p_tenant text DEFAULT NULL, p_livemode boolean DEFAULT NULL,
    p_key text DEFAULT NULL)
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    k     record;
    data  jsonb;
    n     int := 0;
BEGIN
    FOR k IN SELECT ik.*, ik.xmin AS written_by FROM idempotency_keys ik
              WHERE ik.phase <> 'finished' AND ik.locked_until < now()
                AND (p_key IS NULL
                     OR (ik.tenant_id = p_tenant
                         AND ik.livemode = p_livemode
                         AND ik.key = p_key))
              ORDER BY ik.locked_until
              LIMIT p_limit
                FOR UPDATE SKIP LOCKED
    LOOP
        data := NULL;

        IF k.path = '/v1/payments' THEN
            SELECT payflow_payment_json(p) INTO data FROM payments p
             WHERE p.id = k.payment_id
               AND p.tenant_id = k.tenant_id AND p.livemode = k.livemode;

        ELSIF k.path = '/v1/refunds' THEN
            SELECT payflow_refund_json(f) INTO data FROM refunds f
             WHERE f.id = k.object_id
               AND f.tenant_id = k.tenant_id AND f.livemode = k.livemode;

        ELSE
            SELECT payflow_payment_json(p) INTO data FROM payments p
             WHERE p.id = coalesce(k.object_id, k.payment_id)
               AND p.tenant_id = k.tenant_id AND p.livemode = k.livemode
               AND (p.xmin = k.written_by
                    OR EXISTS (SELECT 1 FROM payment_events e
                                WHERE e.payment_id = p.id
                                  AND e.tenant_id = k.tenant_id
                                  AND e.xmin = k.written_by));
        END IF;

        IF data IS NULL THEN
            DELETE FROM idempotency_keys
             WHERE tenant_id = k.tenant_id AND livemode = k.livemode
               AND key = k.key;

        ELSIF k.path = '/v1/payments' AND data->>'status' = 'failed'
              AND data->>'failure_code' = 'blocked'
        THEN
            -- what the worker answers a payment the risk rules blocked
            UPDATE idempotency_keys
               SET phase = 'finished', response_status = 402,
                   locked_until = NULL,
                   response_body = '{"success":false,"error":{"type":'
                       || '"provider_error","code":"payment_blocked",'
                       || '"message":' || to_json(data->>'failure_message')
                       || ',"payment":' || data::text
                       || '},"meta":{"request_id":'
                       || to_json(coalesce(k.request_id, 'req_completer'))
                       || ',"timestamp":'
                       || to_json(to_char(now() AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                       || '}}'
             WHERE tenant_id = k.tenant_id AND livemode = k.livemode
               AND key = k.key;

        ELSE
            UPDATE idempotency_keys
               SET phase = 'finished', response_status = 200,
                   locked_until = NULL,
                   response_body = '{"success":true,"data":' || data::text
                       || ',"meta":{"request_id":'
                       || to_json(coalesce(k.request_id, 'req_completer'))
                       || ',"timestamp":'
                       || to_json(to_char(now() AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                       || '}}'
             WHERE tenant_id = k.tenant_id AND livemode = k.livemode
               AND key = k.key;
        END IF;

        n := n + 1;
    END LOOP;

    RETURN n;
END
$$;
