-- Payments that commit together are written together (issue 15).
--
-- pf_pg's group commit (sql/0018's call per payment, up to 16 between one
-- BEGIN and COMMIT) paid every statement's fixed cost once per payment:
-- the executor's start of the large plan, its init plans and the table
-- constraints built again at every statement.  payflow_payment_create_many
-- takes the group's payments at once and writes each table with one
-- statement for all of them, so those costs are paid once per group.
--
-- Its argument is what the worker would have sent each payment's own
-- scope (payflow_scope, 7 values) and call (payflow_payment_create, 22
-- values), as text, in a JSON array per payment:
--
--   [[tenant, livemode, admin, actor_type, actor_id, ip, request_id,
--     id, amount, currency, ..., response_status, risk], ...]
--
-- Each payment is checked as sql/0024's function checks it; the rows are
-- the same; a row comes back for each payment, its place in the array
-- first, then sql/0024's columns.  One refused payment refuses them all
-- (nothing is written): the worker then runs each alone through
-- payflow_payment_create, so a bad payment never fails the others.

CREATE FUNCTION payflow_payment_create_many(p_items jsonb)
    RETURNS TABLE (member int, fingerprint text, phase text,
                   locked boolean, response_status int,
                   response_body text, payment_id text, request_id text,
                   object_id text, mine boolean, payment text,
                   decision text, copied boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    -- planned once per connection, not at every call: a custom plan of
    -- the large statement cost more than its execution (perf: 16% of
    -- the database's time in the planner); a group's few rows are never
    -- worth a parallel worker
    SET plan_cache_mode = force_generic_plan
    SET max_parallel_workers_per_gather = 0
    AS $$
#variable_conflict use_column
DECLARE
    x         jsonb;
    i         int := -1;
    n         int := 0;
    p         payments%ROWTYPE;
    v_json    jsonb;
    v_risk    jsonb;
    v_decide  text;
    v_copied  boolean;
    v_head    text;
    v_key     text;
    v_seen    text[] := '{}';
    v_tenants text[] := '{}';
    v_vtenant text[] := '{}';      -- risk_versions read so far
    v_vver    bigint[] := '{}';
    v_at      int;
    v_ver     bigint;
    v_cust    jsonb;

    -- one place per payment that is written
    a_member  int[] := '{}';
    a_pay     payments[] := '{}';
    a_json    jsonb[] := '{}';
    a_key     text[] := '{}';
    a_fp      text[] := '{}';
    a_head    text[] := '{}';
    a_body    text[] := '{}';      -- the answer stored with the key
    a_text    text[] := '{}';      -- the payment's JSON as text
    a_status  int[] := '{}';
    a_req     text[] := '{}';
    a_at      timestamptz[] := '{}';
    a_decide  text[] := '{}';
    a_copied  boolean[] := '{}';
    a_detail  text[] := '{}';

    -- payments whose key was another's in the same group
    d_member  int[] := '{}';
    d_tenant  text[] := '{}';
    d_mode    boolean[] := '{}';
    d_key     text[] := '{}';

    v_won     int[];
BEGIN
    IF jsonb_typeof(p_items) <> 'array' OR jsonb_array_length(p_items) > 64
    THEN
        RAISE EXCEPTION 'payments come as an array of at most 64'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR x IN SELECT e FROM jsonb_array_elements(p_items) e LOOP
        i := i + 1;

        IF jsonb_typeof(x) <> 'array' OR jsonb_array_length(x) <> 29 THEN
            RAISE EXCEPTION 'payment % is not its scope and call', i
                USING ERRCODE = 'invalid_parameter_value';
        END IF;

        p := NULL;
        p.tenant_id := nullif(x->>0, '');
        p.livemode := (x->>1) = 'on';

        IF p.tenant_id IS NULL OR (x->>2) = 'on' THEN
            RAISE EXCEPTION 'a payment is created in a tenant''s scope'
                USING ERRCODE = 'insufficient_privilege';
        END IF;

        v_key := x->>23;

        IF v_key IS NOT NULL THEN
            -- the second of one key in the group answers what the first
            -- wrote, as it would have one transaction later
            IF (p.tenant_id || ' ' || p.livemode || ' ' || v_key)
               = ANY (v_seen)
            THEN
                d_member := d_member || i;
                d_tenant := d_tenant || p.tenant_id;
                d_mode := d_mode || p.livemode;
                d_key := d_key || v_key;
                CONTINUE;
            END IF;

            v_seen := v_seen || (p.tenant_id || ' ' || p.livemode || ' '
                                 || v_key);
        END IF;

        -- once per tenant of the group
        IF NOT p.tenant_id = ANY (v_tenants) THEN
            IF NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = p.tenant_id)
            THEN
                RAISE EXCEPTION 'no tenant %', p.tenant_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;

            v_tenants := v_tenants || p.tenant_id;
        END IF;

        p.status := x->>18;

        IF p.status IS NULL
           OR p.status NOT IN ('processing', 'requires_action',
                               'requires_capture', 'succeeded', 'failed')
        THEN
            RAISE EXCEPTION 'a payment starts processing or with its '
                'provider''s answer, not %', p.status
                USING ERRCODE = 'PF001';
        END IF;

        p.id := x->>7;
        p.amount := (x->>8)::bigint;
        p.currency := x->>9;
        p.capture_method := x->>10;
        p.provider := x->>11;
        p.description := x->>12;

        IF p.id !~ '^pay_[0-9A-Za-z]{24}$' OR p.currency !~ '^[A-Z]{3}$'
           OR p.capture_method NOT IN ('automatic', 'manual')
           OR length(p.description) > 1000 OR length(x->>16) > 255
        THEN
            RAISE EXCEPTION 'payment % is not well formed', p.id
                USING ERRCODE = 'check_violation';
        END IF;

        p.provider_reference := CASE WHEN p.status = 'processing'
                                     THEN x->>22
                                     ELSE coalesce(x->>22, p.id) END;
        p.failure_code := x->>19;
        p.failure_message := x->>20;

        v_head := x->>25;
        v_decide := 'allow';
        v_copied := NULL;
        v_risk := (x->>28)::jsonb;

        IF v_risk IS NOT NULL THEN
            -- sql/0024's: the worker's decision stands if its copy of
            -- the tenant's lists and settings is current
            -- read once per tenant of the group
            v_at := array_position(v_vtenant, p.tenant_id);

            IF v_at IS NULL THEN
                v_ver := coalesce((SELECT v.version FROM risk_versions v
                                    WHERE v.tenant_id = p.tenant_id), 0);
                v_vtenant := v_vtenant || p.tenant_id;
                v_vver := v_vver || v_ver;
            ELSE
                v_ver := v_vver[v_at];
            END IF;

            IF v_risk ? 'result' AND (v_risk->>'version')::bigint = v_ver
            THEN
                v_risk := v_risk->'result';
                v_copied := true;
            ELSE
                v_risk := payflow_risk_assess(p.tenant_id, p.livemode,
                                              v_risk);
                v_copied := false;
            END IF;

            v_decide := v_risk->>'decision';
            p.risk := v_risk;

            IF v_decide <> 'allow' THEN
                p.status := CASE v_decide WHEN 'block' THEN 'failed'
                                          ELSE 'requires_review' END;
                p.provider_reference := NULL;
                p.failure_code := CASE v_decide WHEN 'block'
                                       THEN 'blocked' END;
                p.failure_message := CASE v_decide WHEN 'block' THEN
                    'the payment was blocked by the risk rules; nothing '
                    'was charged' END;
                v_head := NULL;
            END IF;
        END IF;

        p.amount_capturable := CASE WHEN p.status = 'requires_capture'
                                    THEN p.amount ELSE 0 END;
        p.amount_captured := CASE WHEN p.status = 'succeeded'
                                  THEN p.amount ELSE 0 END;
        p.amount_refunded := 0;
        v_cust := (x->>13)::jsonb;
        p.customer := v_cust - 'key' - 'index';
        p.customer_key := v_cust->>'key';
        p.customer_index := decode(v_cust->>'index', 'hex');
        p.metadata := coalesce((x->>14)::jsonb, '{}');
        p.return_url := x->>15;
        p.next_action := CASE WHEN x->>21 IS NOT NULL
                              AND v_decide = 'allow' THEN
            jsonb_build_object('type', 'redirect_to_url', 'redirect_url',
                               x->>21, 'return_url', p.return_url) END;
        p.created_at := now();
        p.updated_at := now();
        p.payment_method := x->>16;
        p.routing := x->>17;

        v_json := payflow_payment_json(p);

        n := n + 1;
        a_member[n] := i;
        a_pay[n] := p;
        a_json[n] := v_json;
        a_key[n] := v_key;
        a_fp[n] := x->>24;
        a_head[n] := v_head;
        a_text[n] := v_json::text;
        a_body[n] := v_head || a_text[n] || (x->>26);
        a_status[n] := (x->>27)::int;
        a_req[n] := nullif(x->>6, '');
        a_at[n] := clock_timestamp();
        a_decide[n] := v_decide;
        a_copied[n] := v_copied;
        a_detail[n] := coalesce(p.failure_code,
                                CASE WHEN v_decide <> 'allow'
                                     THEN 'score ' || (v_risk->>'score')
                                END);
    END LOOP;

    -- one statement per table: the keys gate the payments, the rest
    -- follows those written
    WITH u AS (
        SELECT a_member[o] AS m, a_pay[o] AS p, a_json[o] AS js,
               a_key[o] AS key, a_fp[o] AS fp, a_head[o] AS head,
               a_body[o] AS body, a_status[o] AS st, a_req[o] AS req,
               a_at[o] AS at, a_decide[o] AS decide, a_detail[o] AS detail
          FROM generate_series(1, n) AS g(o)
    ), k AS (
        INSERT INTO idempotency_keys AS k (tenant_id, livemode, key,
            fingerprint, method, path, phase, locked_until, payment_id,
            response_status, response_body)
        SELECT (u.p).tenant_id, (u.p).livemode, u.key, decode(u.fp, 'hex'),
            'POST', '/v1/payments',
            CASE WHEN u.head IS NULL THEN 'payment_created'
                 ELSE 'finished' END,
            CASE WHEN u.head IS NULL THEN now() + interval '30 seconds' END,
            (u.p).id, CASE WHEN u.head IS NOT NULL THEN u.st END, u.body
          FROM u
         WHERE u.key IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING k.payment_id
    ), pay AS (
        INSERT INTO payments
        SELECT (u.p).*
          FROM u
         WHERE u.key IS NULL OR (u.p).id IN (SELECT k.payment_id FROM k)
        RETURNING payments.id
    ), w AS (
        -- the payments written; the first steps show it still processing
        SELECT u.*,
               u.js || jsonb_build_object('status', 'processing',
                   'amount_capturable', 0, 'amount_received', 0,
                   'provider_reference', NULL, 'next_action', NULL,
                   'failure_code', NULL, 'failure_message', NULL) AS first
          FROM u JOIN pay ON pay.id = (u.p).id
    ), ev AS (
        INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                    from_status, to_status, source,
                                    request_id, amount, provider, detail,
                                    data, created_at)
        SELECT (w.p).tenant_id, (w.p).livemode, (w.p).id, s.type,
               s.from_status, s.to_status, 'api', w.req, (w.p).amount,
               (w.p).provider, s.detail,
               CASE WHEN s.step = 3 THEN w.js ELSE w.first END,
               w.at + (s.step - 1) * interval '1 microsecond'
          FROM w, LATERAL (
               VALUES (1, 'payment.created', NULL, 'pending',
                       (w.p).routing),
                      (2, 'payment.processing', 'pending', 'processing',
                       (w.p).routing),
                      (3, CASE WHEN (w.p).status = 'requires_review'
                               THEN 'payment.review_required'
                               ELSE 'payment.' || (w.p).status END,
                       CASE WHEN w.decide = 'allow' THEN 'processing'
                            ELSE 'pending' END,
                       (w.p).status, w.detail))
               AS s(step, type, from_status, to_status, detail)
         WHERE (s.step = 1)
            OR (s.step = 2 AND w.decide = 'allow')
            OR (s.step = 3 AND (w.p).status <> 'processing')
        RETURNING payment_events.id, payment_events.type,
                  payment_events.tenant_id, payment_events.livemode
    ), dl AS (
        INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                        endpoint_id, next_attempt_at)
        SELECT ev.tenant_id, ev.livemode, ev.id, e.id, now()
          FROM ev JOIN webhook_endpoints e
            ON e.tenant_id = ev.tenant_id AND e.livemode = ev.livemode
         WHERE e.enabled
           AND (ev.type = ANY (e.events) OR '*' = ANY (e.events))
    ), tx AS (
        INSERT INTO ledger_transactions (tenant_id, livemode, payment_id,
                                         description)
        SELECT (w.p).tenant_id, (w.p).livemode, (w.p).id, 'capture'
          FROM w
         WHERE (w.p).amount_captured > 0
        RETURNING ledger_transactions.id, ledger_transactions.payment_id
    ), le AS (
        INSERT INTO ledger_entries (tenant_id, livemode, transaction_id,
                                    account, currency, amount, direction,
                                    payment_id)
        SELECT (w.p).tenant_id, (w.p).livemode, tx.id, s.account,
               (w.p).currency, (w.p).amount_captured, s.direction, (w.p).id
          FROM tx JOIN w ON (w.p).id = tx.payment_id,
               LATERAL (VALUES ('provider:' || (w.p).provider || ':clearing',
                                'debit'),
                               ('merchant:payable', 'credit'))
               AS s(account, direction)
    ), chk AS (
        INSERT INTO payment_checks (payment_id, due_at)
        SELECT (w.p).id, now()
          FROM w
         WHERE (w.p).provider <> 'sandbox'
           AND (w.p).status IN ('processing', 'requires_action')
        ON CONFLICT (payment_id) DO NOTHING
    )
    SELECT array_agg(w.m) INTO v_won FROM w;

    RETURN QUERY
        SELECT u.m, u.fp,
               CASE WHEN u.head IS NULL THEN 'payment_created'
                    ELSE 'finished' END,
               u.head IS NULL,
               CASE WHEN u.head IS NOT NULL THEN u.st END,
               u.body, u.id, NULL::text, NULL::text, true, u.text,
               u.decide, u.copied
          FROM (SELECT a_member[o] AS m, (a_pay[o]).id AS id,
                       a_text[o] AS text, a_body[o] AS body,
                       a_fp[o] AS fp, a_head[o] AS head,
                       a_status[o] AS st, a_decide[o] AS decide,
                       a_copied[o] AS copied
                  FROM generate_series(1, n) AS g(o)) AS u
         WHERE u.m = ANY (v_won);

    IF coalesce(cardinality(v_won), 0) = n AND cardinality(d_member) = 0
    THEN
        RETURN;
    END IF;

    -- another request's key: its answer, not a second payment
    RETURN QUERY
        SELECT u.m, encode(k.fingerprint, 'hex'), k.phase,
               coalesce(k.locked_until > now(), false),
               k.response_status, k.response_body, k.payment_id,
               k.request_id, k.object_id, false, NULL::text, NULL::text,
               NULL::boolean
          FROM (SELECT a_member[o], a_key[o], (a_pay[o]).tenant_id,
                       (a_pay[o]).livemode
                  FROM generate_series(1, n) AS g(o)
                 WHERE NOT a_member[o] = ANY (coalesce(v_won, '{}'))
                UNION ALL
                SELECT * FROM unnest(d_member, d_key, d_tenant, d_mode))
               AS u(m, key, tenant_id, livemode)
          JOIN idempotency_keys k
            ON k.tenant_id = u.tenant_id AND k.livemode = u.livemode
           AND k.key = u.key;
END
$$;

REVOKE ALL ON FUNCTION payflow_payment_create_many(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_payment_create_many(jsonb) TO :"app";
