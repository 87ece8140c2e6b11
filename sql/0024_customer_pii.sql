-- Customer details sealed at rest (issue 18): a payment's e-mail, name and
-- phone are sealed by the worker that creates it, under a data key of the
-- payment's own (AES-256-GCM, the key wrapped under the operator's
-- payflow_kek, both bound to the payment: "payments", tenant, mode, id).
--
--   payments.customer        {"id", "country", "pii": <ciphertext>}: the
--                            ciphertext alone, base64url (iv | ct | tag)
--   payments.customer_key    "pf1.<kek>.<wrapped data key>." (the seal's
--                            first half: key + "." ciphertext opens it)
--   payments.customer_index  the blind index: HMAC-SHA256 of tenant, mode
--                            and the lower-case e-mail, under a key the
--                            workers derive from payflow_key_pepper
--
-- Copies of the payment (its events' data, stored idempotent answers)
-- carry the ciphertext and never the key, which stays in the payment row:
-- destroying it (erasure) makes every copy unreadable.  The payment's JSON
-- names its row beside the ciphertext ("pii": "<id>.<ciphertext>"): the
-- worker opens it with that row's key, so a ciphertext moved to another
-- row (or tenant) fails to open.  Only the workers hold the KEK: the
-- database never sees a customer's details, only ciphertext.

ALTER TABLE payments
    ADD COLUMN customer_key text
        CHECK (customer_key ~ '^pf1\.[0-9A-Za-z_-]{1,32}\.[0-9A-Za-z_-]+\.$'),
    ADD COLUMN customer_index bytea
        CHECK (octet_length(customer_index) = 32);

-- sealed means no detail in the clear, a key beside it, and only base64url
ALTER TABLE payments ADD CONSTRAINT payments_customer_sealed CHECK (
    customer IS NULL OR NOT customer ? 'pii'
    OR (customer_key IS NOT NULL
        AND NOT customer ?| ARRAY['email', 'name', 'phone']
        AND customer->>'pii' ~ '^[0-9A-Za-z_-]+$'));

CREATE INDEX payments_customer_index ON payments
    (tenant_id, livemode, customer_index, created_at)
    WHERE customer_index IS NOT NULL;

-- erasure by the tenant's own reference for the customer
-- what the background sealing looks for: keys by KEK (rotation), and
-- details still in the clear (none once sealed: an empty index)
CREATE INDEX payments_customer_kek ON payments
    ((split_part(customer_key, '.', 2)))
    WHERE customer_key IS NOT NULL;

-- sql/0018's index of e-mails, now of rows in the clear only (sealed rows
-- have their blind index): ?customer= and the background sealing use it
DROP INDEX payments_customer;
CREATE INDEX payments_customer ON payments
    (tenant_id, livemode, lower(customer->>'email'), created_at)
    WHERE customer ?| ARRAY['email', 'name', 'phone'];

CREATE INDEX payments_customer_ref ON payments
    (tenant_id, livemode, (customer->>'id'))
    WHERE customer ? 'id';


-- the row's id beside its ciphertext: the worker opens it with that row's
-- key (sql/0020's otherwise)
CREATE OR REPLACE FUNCTION payflow_payment_json(p payments)
    RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', p.id,
        'object', 'payment',
        'livemode', p.livemode,
        'amount', p.amount,
        'currency', lower(p.currency),
        'status', p.status,
        'capture_method', p.capture_method,
        'amount_capturable', p.amount_capturable,
        'amount_received', p.amount_captured,
        'amount_refunded', p.amount_refunded,
        'provider', p.provider,
        'provider_reference', p.provider_reference,
        'routing', p.routing,
        'description', p.description,
        'customer', CASE WHEN p.customer ? 'pii'
                         THEN p.customer || jsonb_build_object('pii',
                                  p.id || '.' || (p.customer->>'pii'))
                         ELSE p.customer END,
        'metadata', p.metadata,
        'return_url', p.return_url,
        'next_action', p.next_action,
        'failure_code', p.failure_code,
        'failure_message', p.failure_message,
        'risk', p.risk,
        'created', floor(extract(epoch FROM p.created_at))::bigint)
$$;


-- sql/0022's, the customer's key and blind index taken from the worker's
-- customer object ("key", "index": not stored in it)

CREATE OR REPLACE FUNCTION payflow_payment_create(p_id text, p_amount bigint,
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
    p.customer := p_customer - 'key' - 'index';
    p.customer_key := p_customer->>'key';
    p.customer_index := decode(p_customer->>'index', 'hex');
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


-- The keys of the scoped tenant's payments that the worker is about to
-- show (NULL: none, or erased).
CREATE FUNCTION payflow_customer_keys(p_ids text[])
    RETURNS TABLE (id text, key text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT p.id, p.customer_key FROM payments p
     WHERE p.id = ANY (p_ids[1:100])
       AND p.tenant_id = payflow_tenant()
       AND p.livemode = payflow_livemode()
$$;

REVOKE ALL ON FUNCTION payflow_customer_keys(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_customer_keys(text[]) TO :"app";

-- A payment's sealed details and key, for the worker that calls a
-- provider for it outside a request (the reconciler, a review's approval)
CREATE FUNCTION payflow_customer_secret(p_id text)
    RETURNS TABLE (tenant_id text, pii text, key text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT p.tenant_id, p.customer->>'pii', p.customer_key
      FROM payments p WHERE p.id = p_id
$$;

REVOKE ALL ON FUNCTION payflow_customer_secret(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_customer_secret(text) TO :"app";

-- The payment of an event and its key, for the outbox
CREATE FUNCTION payflow_event_customer(p_event text)
    RETURNS TABLE (payment_id text, key text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT p.id, p.customer_key
      FROM payment_events e JOIN payments p ON p.id = e.payment_id
     WHERE e.id = p_event
$$;

REVOKE ALL ON FUNCTION payflow_event_customer(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_event_customer(text) TO :"app";


-- GET /v1/payments?customer=: sql/0007's, p_customer now "<e-mail>" or
-- "<blind index, hex> <e-mail>": sealed rows are found by their index,
-- rows in the clear by their e-mail
CREATE OR REPLACE FUNCTION payflow_payment_list(p_after text,
    p_before text, p_limit int, p_status text, p_created_gte bigint,
    p_created_lte bigint, p_customer text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('payments', 'payflow_payment_json',
        '($1 IS NULL OR t.status = $1) '
        'AND ($2 IS NULL OR t.created_at >= to_timestamp($2::bigint)) '
        'AND ($3 IS NULL OR t.created_at < to_timestamp($3::bigint + 1)) '
        'AND ($4 IS NULL '
        '     OR (t.customer ?| ARRAY[''email'', ''name'', ''phone''] '
        '         AND lower(t.customer->>''email'') '
        '             = lower(substr($4, strpos($4, '' '') + 1))) '
        '     OR (strpos($4, '' '') = 65 AND t.customer_index IS NOT NULL '
        '         AND t.customer_index = decode(left($4, 64), ''hex'')))',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit,
        ARRAY[p_status, p_created_gte::text, p_created_lte::text,
              p_customer])
$$;


-- The event log is append-only (sql/0003) but for one change: erasure
-- replaces an event's customer by {"erased": true}, nothing else, and only
-- from payflow_customers_erase.
CREATE OR REPLACE FUNCTION payflow_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'payment_events'
       AND current_setting('payflow.erasing', true) = 'on'
    THEN
        RETURN NULL;
    END IF;

    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE FUNCTION payment_events_erasure() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF (NEW.id, NEW.tenant_id, NEW.livemode, NEW.payment_id, NEW.type,
        NEW.created_at)
       IS DISTINCT FROM (OLD.id, OLD.tenant_id, OLD.livemode, OLD.payment_id,
                         OLD.type, OLD.created_at)
       OR NEW.data IS DISTINCT FROM
          jsonb_set(OLD.data, '{customer}', '{"erased": true}')
    THEN
        RAISE EXCEPTION 'payment_events is append-only; erasure replaces '
            'the customer only' USING ERRCODE = 'insufficient_privilege';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER payment_events_erasure BEFORE UPDATE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_erasure();


-- A finished key's stored answer changes only for erasure (sql/0003's
-- guard otherwise)
CREATE OR REPLACE FUNCTION idempotency_keys_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    phases constant text[] :=
        ARRAY['started', 'payment_created', 'provider_called', 'finished'];
    v      idempotency_keys%ROWTYPE;
BEGIN
    IF current_setting('payflow.erasing', true) = 'on' THEN
        v := NEW;
        v.response_body := OLD.response_body;

        -- the customer replaced, as payflow_customers_erase does, only
        IF row(v.*) IS NOT DISTINCT FROM row(OLD.*)
           AND NEW.response_body IS NOT DISTINCT FROM
               regexp_replace(OLD.response_body,
                   '"customer": \{("([^"\\]|\\.)*"|[^"{}])*\}',
                   '"customer": {"erased": true}', 'g')
        THEN
            RETURN NEW;
        END IF;
    END IF;

    IF array_position(phases, NEW.phase) < array_position(phases, OLD.phase)
       OR NEW.fingerprint <> OLD.fingerprint
       OR (OLD.phase = 'finished' AND row(NEW.*) IS DISTINCT FROM row(OLD.*))
    THEN
        RAISE EXCEPTION 'idempotency key phases only move forward'
            USING ERRCODE = 'PF006';
    END IF;

    RETURN NEW;
END
$$;


-- POST /v1/customers/erase: every payment of the scoped tenant and mode
-- with that customer (by blind index, e-mail in the clear, or the
-- tenant's own customer id) loses its details: the key that opens them
-- is destroyed, the payment shows {"erased": true}, and the copies in its
-- events and stored answers are replaced as well.  Amounts, states, the
-- ledger and its chain are untouched.  Returns how many payments.
CREATE FUNCTION payflow_customers_erase(p_index text, p_email text,
    p_ref text)
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_tenant  text := payflow_tenant();
    v_mode    boolean := payflow_livemode();
    v_ids     text[];
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'customers are erased in a tenant''s scope'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    SELECT coalesce(array_agg(s.id), '{}') INTO v_ids
      FROM (SELECT p.id FROM payments p
             WHERE p.tenant_id = v_tenant AND p.livemode = v_mode
               AND p.customer IS NOT NULL
               AND NOT p.customer ? 'erased'
               AND ((p_index IS NOT NULL
                     AND p.customer_index = decode(p_index, 'hex'))
                    OR (p_email IS NOT NULL
                        AND p.customer ?| ARRAY['email', 'name', 'phone']
                        AND lower(p.customer->>'email') = lower(p_email))
                    OR (p_ref IS NOT NULL AND p.customer ? 'id'
                        AND p.customer->>'id' = p_ref))
               FOR UPDATE) s;

    IF cardinality(v_ids) = 0 THEN
        RETURN 0;
    END IF;

    UPDATE payments p
       SET customer = '{"erased": true}', customer_key = NULL,
           customer_index = NULL
     WHERE p.id = ANY (v_ids);

    PERFORM set_config('payflow.erasing', 'on', true);

    UPDATE payment_events e
       SET data = jsonb_set(e.data, '{customer}', '{"erased": true}')
     WHERE e.payment_id = ANY (v_ids)
       AND jsonb_typeof(e.data->'customer') = 'object';

    -- stored answers are text: the customer object is flat (strings)
    UPDATE idempotency_keys k
       SET response_body = regexp_replace(k.response_body,
               '"customer": \{("([^"\\]|\\.)*"|[^"{}])*\}',
               '"customer": {"erased": true}', 'g')
     WHERE k.tenant_id = v_tenant AND k.livemode = v_mode
       AND k.payment_id = ANY (v_ids)
       AND k.response_body LIKE '%"customer": {%';

    PERFORM set_config('payflow.erasing', 'off', true);

    PERFORM payflow_audit_write(v_tenant, v_mode, 'customer.erased',
        'customer', NULL,
        jsonb_build_object('payments', cardinality(v_ids),
                           'by', CASE WHEN p_ref IS NOT NULL THEN 'id'
                                      ELSE 'email' END));

    RETURN cardinality(v_ids);
END
$$;

REVOKE ALL ON FUNCTION payflow_customers_erase(text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_customers_erase(text, text, text)
    TO :"app";


-- The background sealing (sql/0023's resealer): payments whose customer
-- key is not under the current KEK, and payments whose details are still
-- in the clear (written before a KEK, or with payflow_customer_pii clear)
-- when p_seal says the workers seal them; in id order after p_after (a
-- worker's sweep goes past rows it cannot open), and how many in all.
CREATE FUNCTION payflow_customers_due(p_kek text, p_seal boolean,
    p_after text, p_limit int)
    RETURNS TABLE (id text, tenant_id text, livemode boolean,
                   customer text, key text, due bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    WITH due AS (
        -- two ranges of the KEK index, not one scan of it filtered
        SELECT p.* FROM payments p
         WHERE p.customer_key IS NOT NULL
           AND split_part(p.customer_key, '.', 2) < p_kek
        UNION ALL
        SELECT p.* FROM payments p
         WHERE p.customer_key IS NOT NULL
           AND split_part(p.customer_key, '.', 2) > p_kek
        UNION ALL
        SELECT p.* FROM payments p
         WHERE p_seal AND p.customer ?| ARRAY['email', 'name', 'phone']
    )
    SELECT d.id, d.tenant_id, d.livemode, d.customer::text,
           d.customer_key,
           (SELECT count(*) FROM (SELECT 1 FROM due LIMIT 100000) c)
      FROM due d
     WHERE d.id > coalesce(p_after, '')
     ORDER BY d.id
     LIMIT p_limit
$$;

REVOKE ALL ON FUNCTION payflow_customers_due(text, boolean, text, int)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_customers_due(text, boolean, text,
    int) TO :"app";

-- What the worker sealed or wrapped again: [{"id", "old", "customer"}],
-- old the customer object's text as it was read, customer the object to
-- store with its "key" and "index" (as payflow_payment_create takes
-- them).  Each is written only over what was read (an erasure meanwhile
-- wins).  Returns the rows written.
CREATE FUNCTION payflow_customers_store(p_rows jsonb)
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    n  int;
BEGIN
    UPDATE payments p
       SET customer = v.customer - 'key' - 'index',
           customer_key = v.customer->>'key',
           customer_index = coalesce(decode(v.customer->>'index', 'hex'),
                                     p.customer_index)
      FROM jsonb_to_recordset(p_rows) AS v(id text, old text, customer jsonb)
     WHERE p.id = v.id AND p.customer::text = v.old;

    GET DIAGNOSTICS n = ROW_COUNT;

    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION payflow_customers_store(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_customers_store(jsonb) TO :"app";
