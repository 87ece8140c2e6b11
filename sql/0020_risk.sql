-- The risk engine (issue 17, docs/risk.md).
--
-- The worker scores what it counts in shared memory (velocity, amount
-- anomalies, first-seen customers, cards per customer) and hands its rule
-- hits to payflow_payment_create with the payment's signals; here, in the
-- same statement, the tenant's own settings apply: its block and allow
-- lists, its self-dealing identities, its rule scores and thresholds.  The
-- decision is the database's, so that a payment and its decision commit
-- together:
--
--   allow   the payment goes on to its provider as before;
--   block   the payment is written failed (failure_code "blocked"),
--           no provider is ever called;
--   review  the payment is written requires_review and waits for a
--           person: approve moves it to processing (and on to its
--           provider), reject or expiry to canceled.
--
-- A held payment (block, review) leaves its Idempotency-Key unfinished:
-- the worker stores the answer in a second statement, as it does after a
-- network provider's call.  Held payments are rare; the common path keeps
-- its one round trip.


-- 1. the payment's new state and its risk -----------------------------------

ALTER TABLE payments ADD COLUMN risk jsonb;

CREATE OR REPLACE FUNCTION payflow_payment_ok(p_status text, p_amount bigint,
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
                        'requires_capture', 'requires_review', 'succeeded',
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
                             'requires_review', 'failed', 'canceled')
            OR p_captured = 0)
       AND (p_status <> 'requires_review' OR p_capturable = 0)
       AND p_provider ~ '^[a-z0-9_]{1,32}$'
       AND coalesce(length(p_routing) <= 300, true);
END
$$;

-- a review ends approved (on to the provider) or canceled, never elsewhere
CREATE OR REPLACE FUNCTION payflow_transition_allowed(p_from text,
    p_to text)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT p_from = p_to OR (p_from, p_to) IN (
        ('pending', 'processing'), ('pending', 'canceled'),
        ('processing', 'succeeded'), ('processing', 'failed'),
        ('processing', 'requires_action'), ('processing', 'requires_capture'),
        ('requires_action', 'processing'), ('requires_action', 'succeeded'),
        ('requires_action', 'failed'), ('requires_action', 'canceled'),
        ('requires_capture', 'succeeded'), ('requires_capture', 'canceled'),
        ('requires_review', 'processing'), ('requires_review', 'canceled'),
        ('succeeded', 'partially_refunded'), ('succeeded', 'refunded'),
        ('partially_refunded', 'refunded'))
$$;

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
        'customer', p.customer,
        'metadata', p.metadata,
        'return_url', p.return_url,
        'next_action', p.next_action,
        'failure_code', p.failure_code,
        'failure_message', p.failure_message,
        'risk', p.risk,
        'created', floor(extract(epoch FROM p.created_at))::bigint)
$$;

-- the review's two endings have their own event types (the owner's, as
-- sql/0018 made it: the event log and the outbox are not the app's to write)
CREATE OR REPLACE FUNCTION payments_event() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_type  text;
    v_data  jsonb := payflow_payment_json(NEW);
BEGIN
    IF NEW.provider <> OLD.provider THEN
        v_type := 'payment.rerouted';
    ELSIF NEW.status = OLD.status THEN
        RETURN NULL;
    ELSIF OLD.status = 'requires_capture' AND NEW.status = 'succeeded' THEN
        v_type := 'payment.captured';
    ELSIF OLD.status = 'requires_review' AND NEW.status = 'processing' THEN
        v_type := 'payment.review_approved';
    ELSIF OLD.status = 'requires_review' THEN
        v_type := 'payment.review_rejected';
    ELSE
        v_type := 'payment.' || NEW.status;
    END IF;

    WITH ev AS (
        INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                    from_status, to_status, source,
                                    request_id, amount, provider, detail,
                                    data)
        VALUES (NEW.tenant_id, NEW.livemode, NEW.id, v_type, OLD.status,
                NEW.status, payflow_event_source(),
                nullif(current_setting('payflow.request_id', true), ''),
                NEW.amount, NEW.provider,
                CASE WHEN v_type = 'payment.rerouted' THEN NEW.routing
                     ELSE NEW.failure_code END,
                v_data)
        RETURNING id
    )
    INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                    endpoint_id, next_attempt_at)
    SELECT NEW.tenant_id, NEW.livemode, ev.id, e.id, now()
      FROM ev JOIN webhook_endpoints e
        ON e.tenant_id = NEW.tenant_id AND e.livemode = NEW.livemode
     WHERE e.enabled AND (v_type = ANY (e.events) OR '*' = ANY (e.events));

    RETURN NULL;
END
$$;

-- the review queue, oldest first for the expiry job
CREATE INDEX payments_review ON payments (tenant_id, livemode, created_at, id)
    WHERE status = 'requires_review';
CREATE INDEX payments_review_age ON payments (created_at)
    WHERE status = 'requires_review';


-- 2. block and allow lists ---------------------------------------------------

CREATE TABLE risk_lists (
    id          text PRIMARY KEY DEFAULT payflow_id('rle_'),
    tenant_id   text NOT NULL REFERENCES tenants (id),
    livemode    boolean NOT NULL,
    list        text NOT NULL CHECK (list IN ('block', 'allow')),
    type        text NOT NULL CHECK (type IN ('email', 'email_domain', 'ip',
                                              'card', 'country',
                                              'customer')),
    value       text NOT NULL CHECK (length(value) BETWEEN 1 AND 255),
    network     cidr CHECK ((type = 'ip') = (network IS NOT NULL)),
    note        text CHECK (length(note) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, livemode, type, value, list)
);

CREATE INDEX risk_lists_network ON risk_lists USING gist (network inet_ops)
    WHERE type = 'ip';
CREATE INDEX risk_lists_page ON risk_lists
    (tenant_id, livemode, type, created_at, id);

ALTER TABLE risk_lists ENABLE ROW LEVEL SECURITY;

CREATE POLICY risk_lists_scope ON risk_lists
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT, DELETE ON risk_lists TO :"app";

CREATE FUNCTION payflow_risk_list_json(l risk_lists) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', l.id,
        'object', 'risk_list_entry',
        'livemode', l.livemode,
        'list', l.list,
        'type', l.type,
        'value', l.value,
        'note', l.note,
        'created', floor(extract(epoch FROM l.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_list_json(risk_lists) TO :"app";

-- a value as the lists keep it: e-mails and domains in lower case,
-- countries in upper case, addresses and networks in their canonical form;
-- NULL when it is not one of its type
CREATE FUNCTION payflow_risk_value(p_type text, p_value text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    CASE p_type
    WHEN 'email' THEN
        IF p_value ~ '^[^@[:space:][:cntrl:]]+@[^@[:space:][:cntrl:]]+$'
           AND length(p_value) <= 254
        THEN
            RETURN lower(p_value);
        END IF;
    WHEN 'email_domain' THEN
        IF p_value ~* '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$'
           AND length(p_value) <= 253
        THEN
            RETURN lower(p_value);
        END IF;
    WHEN 'ip' THEN
        IF p_value ~ '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' THEN
            BEGIN
                RETURN CASE WHEN masklen(p_value::cidr)
                                 = CASE family(p_value::cidr)
                                   WHEN 4 THEN 32 ELSE 128 END
                            THEN host(p_value::cidr)
                            ELSE p_value::cidr::text END;
            EXCEPTION WHEN invalid_text_representation
                           OR invalid_parameter_value THEN
                RETURN NULL;
            END;
        END IF;
    WHEN 'country' THEN
        IF p_value ~* '^[a-z]{2}$' THEN
            RETURN upper(p_value);
        END IF;
    WHEN 'card', 'customer' THEN
        IF length(p_value) BETWEEN 1 AND 255
           AND p_value !~ '[[:cntrl:]]'
        THEN
            RETURN p_value;
        END IF;
    ELSE
        NULL;
    END CASE;

    RETURN NULL;
END
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_value(text, text) TO :"app";

-- POST /v1/risk/lists/{type}: the entry, or the one already there.
-- PF020: the value is not one of its type; PF021: the list is full.
CREATE FUNCTION payflow_risk_list_add(p_type text, p_list text,
    p_value text, p_note text, p_max int)
    RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_value  text := payflow_risk_value(p_type, p_value);
    l        risk_lists;
BEGIN
    IF v_value IS NULL THEN
        RAISE EXCEPTION 'not a valid % entry', p_type USING ERRCODE = 'PF020';
    END IF;

    -- entries of one tenant and mode are counted under its lock
    PERFORM pg_advisory_xact_lock(hashtextextended(
        'risk_lists:' || payflow_tenant() || ':' || payflow_livemode(), 0));

    SELECT * INTO l FROM risk_lists
     WHERE tenant_id = payflow_tenant() AND livemode = payflow_livemode()
       AND type = p_type AND value = v_value AND list = p_list;

    IF FOUND THEN
        RETURN payflow_risk_list_json(l)::text;
    END IF;

    IF (SELECT count(*) FROM risk_lists
         WHERE tenant_id = payflow_tenant()
           AND livemode = payflow_livemode()) >= p_max
    THEN
        RAISE EXCEPTION 'at most % list entries', p_max
            USING ERRCODE = 'PF021';
    END IF;

    INSERT INTO risk_lists (tenant_id, livemode, list, type, value, network,
                            note)
    VALUES (payflow_tenant(), payflow_livemode(), p_list, p_type, v_value,
            CASE WHEN p_type = 'ip' THEN v_value::cidr END, p_note)
    RETURNING * INTO l;

    RETURN payflow_risk_list_json(l)::text;
END
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_list_add(text, text, text, text, int)
    TO :"app";

-- GET /v1/risk/lists/{type}?list=
CREATE FUNCTION payflow_risk_list_page(p_after text, p_before text,
    p_limit int, p_type text, p_list text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('risk_lists', 'payflow_risk_list_json',
        't.type = $1 AND ($2 IS NULL OR t.list = $2)',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[p_type, p_list])
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_list_page(text, text, int, text, text)
    TO :"app";

-- DELETE /v1/risk/lists/{type}?value=&list=: the entries removed, as a
-- list (none: NULL, a 404)
CREATE FUNCTION payflow_risk_list_remove(p_type text, p_value text,
    p_list text)
    RETURNS text
    LANGUAGE sql
    AS $$
    WITH d AS (
        DELETE FROM risk_lists l
         WHERE l.tenant_id = payflow_tenant()
           AND l.livemode = payflow_livemode()
           AND l.type = p_type
           AND l.value = payflow_risk_value(p_type, p_value)
           AND (p_list IS NULL OR l.list = p_list)
        RETURNING l.*
    )
    SELECT CASE WHEN count(*) > 0 THEN
           jsonb_build_object('object', 'list', 'deleted', true,
               'data', jsonb_agg(payflow_risk_list_json(d)
                                 ORDER BY d.created_at, d.id))::text END
      FROM d
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_list_remove(text, text, text)
    TO :"app";


-- 3. a tenant's settings -----------------------------------------------------

CREATE TABLE risk_settings (
    tenant_id         text NOT NULL REFERENCES tenants (id),
    livemode          boolean NOT NULL,
    review_threshold  int CHECK (review_threshold BETWEEN 0 AND 100),
    block_threshold   int CHECK (block_threshold BETWEEN 0 AND 100),
    rules             jsonb NOT NULL DEFAULT '{}'
                      CHECK (jsonb_typeof(rules) = 'object'),
    self_emails       text[] NOT NULL DEFAULT '{}'
                      CHECK (cardinality(self_emails) <= 100),
    self_domains      text[] NOT NULL DEFAULT '{}'
                      CHECK (cardinality(self_domains) <= 100),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, livemode),
    CHECK (review_threshold IS NULL OR block_threshold IS NULL
           OR review_threshold <= block_threshold)
);

ALTER TABLE risk_settings ENABLE ROW LEVEL SECURITY;

CREATE POLICY risk_settings_scope ON risk_settings
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT, UPDATE, DELETE ON risk_settings TO :"app";

-- The settings as the API shows them.  p_defaults is the worker's
-- catalogue: {"review": 50, "block": 90, "rules": {"name": {"score": n,
-- "description": "..."}}}; the tenant's own values override it.
CREATE FUNCTION payflow_risk_settings_json(p_defaults jsonb)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'object', 'risk_settings',
        'livemode', payflow_livemode(),
        'review_threshold', coalesce(s.review_threshold,
                                     (p_defaults->>'review')::int),
        'block_threshold', coalesce(s.block_threshold,
                                    (p_defaults->>'block')::int),
        'self_dealing', jsonb_build_object(
            'emails', to_jsonb(coalesce(s.self_emails, '{}')),
            'domains', to_jsonb(coalesce(s.self_domains, '{}'))),
        'rules', (SELECT jsonb_agg(jsonb_build_object(
                      'rule', d.key,
                      'description', d.value->'description',
                      'default_score', (d.value->>'score')::int,
                      'score', coalesce((s.rules->d.key->>'score')::int,
                                        (d.value->>'score')::int),
                      'enabled', coalesce((s.rules->d.key->>'enabled')
                                          ::boolean, true))
                      ORDER BY d.key)
                    FROM jsonb_each(p_defaults->'rules') d),
        'updated', floor(extract(epoch FROM s.updated_at))::bigint)::text
      FROM (SELECT 1) one
      LEFT JOIN risk_settings s
        ON s.tenant_id = payflow_tenant() AND s.livemode = payflow_livemode()
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_settings_json(jsonb) TO :"app";

-- PATCH /v1/risk/rules: NULL leaves a field as it is; p_rules merges into
-- the tenant's rule settings ({"name": {"score": n, "enabled": b}}, a null
-- member drops the tenant's setting of that rule).  PF022: the thresholds
-- would cross.
CREATE FUNCTION payflow_risk_settings_update(p_defaults jsonb,
    p_review int, p_block int, p_rules jsonb, p_emails text[],
    p_domains text[])
    RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
    s  risk_settings;
BEGIN
    INSERT INTO risk_settings (tenant_id, livemode)
    VALUES (payflow_tenant(), payflow_livemode())
    ON CONFLICT DO NOTHING;

    UPDATE risk_settings r SET
           review_threshold = coalesce(p_review, r.review_threshold),
           block_threshold = coalesce(p_block, r.block_threshold),
           rules = CASE WHEN p_rules IS NULL THEN r.rules
                        ELSE jsonb_strip_nulls(r.rules || (
                            SELECT coalesce(jsonb_object_agg(n.key,
                                       CASE WHEN jsonb_typeof(n.value) = 'null'
                                            THEN n.value
                                            ELSE coalesce(r.rules->n.key,
                                                          '{}') || n.value
                                       END), '{}')
                              FROM jsonb_each(p_rules) n)) END,
           self_emails = coalesce(p_emails, r.self_emails),
           self_domains = coalesce(p_domains, r.self_domains),
           updated_at = now()
     WHERE r.tenant_id = payflow_tenant() AND r.livemode = payflow_livemode()
    RETURNING * INTO s;

    IF coalesce(s.review_threshold, (p_defaults->>'review')::int)
       > coalesce(s.block_threshold, (p_defaults->>'block')::int)
    THEN
        RAISE EXCEPTION 'the review threshold is above the block threshold'
            USING ERRCODE = 'PF022';
    END IF;

    RETURN payflow_risk_settings_json(p_defaults);
END
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_settings_update(jsonb, int, int,
    jsonb, text[], text[]) TO :"app";

-- DELETE /v1/risk/rules: back to the operator's defaults (lists stay)
CREATE FUNCTION payflow_risk_settings_reset(p_defaults jsonb)
    RETURNS text
    LANGUAGE plpgsql
    AS $$
BEGIN
    DELETE FROM risk_settings
     WHERE tenant_id = payflow_tenant() AND livemode = payflow_livemode();

    RETURN payflow_risk_settings_json(p_defaults);
END
$$;

GRANT EXECUTE ON FUNCTION payflow_risk_settings_reset(jsonb) TO :"app";


-- 4. the decision ------------------------------------------------------------

-- p_risk, from the worker:
--   {"rules": [{"rule", "score", "detail"}...],     what it counted
--    "signals": {"email", "domain", "ip", "card", "country", "customer"},
--    "review": 50, "block": 90,                     nginx.conf thresholds
--    "scores": {"blocklist": 100, "self_dealing": 60}}
-- Returns {"score", "decision", "rules"}: the worker's hits with the
-- tenant's scores (a disabled rule drops out), then list and self-dealing
-- hits.  An allow-list hit allows whatever the score.
CREATE FUNCTION payflow_risk_assess(p_tenant text, p_livemode boolean,
    p_risk jsonb)
    RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    -- one statement: its plan is kept, and started once per payment
    RETURN (
    WITH sig AS (
        SELECT coalesce(p_risk->'signals', '{}') AS v
    ), s AS (
        SELECT coalesce(r.rules, '{}') AS rules, r.tenant_id, r.self_emails,
               r.self_domains, r.review_threshold, r.block_threshold
          FROM (SELECT 1) one
          LEFT JOIN risk_settings r
            ON r.tenant_id = p_tenant AND r.livemode = p_livemode
    ), lists AS (
        -- equal values by the unique index, addresses by the network one
        SELECT r.list, r.type, r.value FROM risk_lists r, sig
         WHERE r.tenant_id = p_tenant AND r.livemode = p_livemode
           AND (r.type, r.value) IN (
               ('email', lower(sig.v->>'email')),
               ('email_domain', lower(sig.v->>'domain')),
               ('card', sig.v->>'card'),
               ('country', upper(sig.v->>'country')),
               ('customer', sig.v->>'customer'))
        UNION ALL
        SELECT r.list, r.type, r.value FROM risk_lists r, sig
         WHERE sig.v->>'ip' IS NOT NULL AND r.type = 'ip'
           AND r.network >>= (sig.v->>'ip')::inet
           AND r.tenant_id = p_tenant AND r.livemode = p_livemode
    ), hits AS (
        -- the worker's, with the tenant's scores (a disabled rule drops)
        SELECT a.n, jsonb_set(a.r, '{score}', to_jsonb(coalesce(
                   (s.rules->(a.r->>'rule')->>'score')::int,
                   (a.r->>'score')::int))) AS hit
          FROM s, jsonb_array_elements(coalesce(p_risk->'rules', '[]'))
                  WITH ORDINALITY AS a(r, n)
         WHERE coalesce((s.rules->(a.r->>'rule')->>'enabled')::boolean,
                        true)
        UNION ALL
        SELECT 1000, jsonb_build_object('rule', 'self_dealing',
                   'score', coalesce((s.rules->'self_dealing'->>'score')
                                     ::int,
                                     (p_risk->'scores'->>'self_dealing')
                                     ::int, 60),
                   'detail', 'the payer is the merchant itself')
          FROM s, sig
         WHERE s.tenant_id IS NOT NULL
           AND coalesce((s.rules->'self_dealing'->>'enabled')::boolean,
                        true)
           AND (lower(sig.v->>'email') = ANY (s.self_emails)
                OR lower(sig.v->>'domain') = ANY (s.self_domains))
        UNION ALL
        SELECT 2000 + CASE l.list WHEN 'block' THEN 0 ELSE 100 END,
               jsonb_build_object(
                   'rule', l.list || 'list_' || l.type,
                   'score', CASE WHEN l.list = 'allow' THEN 0
                                 WHEN coalesce((s.rules->'blocklist'
                                                ->>'enabled')::boolean, true)
                                 THEN coalesce((s.rules->'blocklist'
                                                ->>'score')::int,
                                               (p_risk->'scores'
                                                ->>'blocklist')::int, 100)
                                 ELSE 0 END,
                   'detail', l.type || ' ' || l.value || ' is on the '
                             || l.list || ' list')
          FROM lists l, s
    ), total AS (
        SELECT coalesce(jsonb_agg(h.hit ORDER BY h.n, h.hit->>'rule'),
                        '[]') AS rules,
               least(100, coalesce(sum((h.hit->>'score')::int), 0))
                   AS score,
               coalesce(bool_or(h.hit->>'rule' LIKE 'allowlist\_%'), false)
                   AS allowed
          FROM hits h
    )
    SELECT jsonb_build_object(
               'score', t.score,
               'decision', CASE
                   WHEN t.allowed THEN 'allow'
                   WHEN t.score > coalesce(s.block_threshold,
                                           (p_risk->>'block')::int, 90)
                   THEN 'block'
                   WHEN t.score >= coalesce(s.review_threshold,
                                            (p_risk->>'review')::int, 50)
                   THEN 'review'
                   ELSE 'allow' END,
               'rules', t.rules)
      FROM total t, s);
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_risk_assess(text, boolean, jsonb)
    FROM PUBLIC;


-- 5. creating a payment, with its decision ----------------------------------

DROP FUNCTION payflow_payment_create(text, bigint, text, text, text, text,
    jsonb, jsonb, text, text, text, text, text, text, text, text, text,
    text, text, text, int);

-- As sql/0018's, with p_risk (NULL: the risk engine is off).  A payment
-- the decision holds (block, review) is written in that state instead of
-- p_status, its key left for the worker to finish; the row's last column
-- says the decision.
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
                   mine boolean, payment text, decision text)
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
        v_risk := payflow_risk_assess(p.tenant_id, p.livemode, p_risk);
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
           NULL::text, true, v_json::text, v_decide
      FROM pay;

    IF NOT FOUND THEN
        -- another request's key: its answer, not a second payment
        RETURN QUERY
            SELECT encode(k.fingerprint, 'hex'), k.phase,
                   coalesce(k.locked_until > now(), false),
                   k.response_status, k.response_body, k.payment_id,
                   k.request_id, k.object_id, false, NULL::text, NULL::text
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


-- 6. reviews -----------------------------------------------------------------

-- GET /v1/reviews: the payments waiting for a person, newest first
CREATE FUNCTION payflow_review_list(p_after text, p_before text,
    p_limit int)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('payments', 'payflow_payment_json',
        't.status = ''requires_review''',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[]::text[])
$$;

GRANT EXECUTE ON FUNCTION payflow_review_list(text, text, int) TO :"app";

-- POST /v1/reviews/{payment}/approve and /reject: the payment leaves
-- review (approve: processing, on to its provider; reject: canceled),
-- with the request's Idempotency-Key, if any, taken first and left for the
-- worker to finish.  Another request's key: that key (mine false), nothing
-- done.  PF023: no such payment in review; PF024: approved, its provider
-- is not among p_providers (this mode's in nginx.conf), and nothing
-- changes.  The owner's, scoped by hand:
-- an approved network payment gets its check, which the app cannot write.
CREATE FUNCTION payflow_review_decide(p_id text, p_approve boolean,
    p_key text, p_fingerprint text, p_path text, p_providers text[],
    p_status text, p_failure_code text, p_failure_message text,
    p_redirect_url text)
    RETURNS TABLE (fingerprint text, phase text, locked boolean,
                   response_status int, response_body text,
                   payment_id text, request_id text, object_id text,
                   mine boolean, amount bigint, currency text,
                   capture_method text, provider text, payment_method text,
                   email text, description text, return_url text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    p  payments;
BEGIN
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys AS k (tenant_id, livemode, key,
            fingerprint, method, path, phase, locked_until, payment_id,
            object_id)
        VALUES (payflow_tenant(), payflow_livemode(), p_key,
                decode(p_fingerprint, 'hex'), 'POST', p_path,
                'payment_created', now() + interval '30 seconds', p_id, p_id)
        ON CONFLICT DO NOTHING;

        IF NOT FOUND THEN
            RETURN QUERY
                SELECT encode(k.fingerprint, 'hex'), k.phase,
                       coalesce(k.locked_until > now(), false),
                       k.response_status, k.response_body, k.payment_id,
                       k.request_id, k.object_id, false, NULL::bigint,
                       NULL::text, NULL::text, NULL::text, NULL::text,
                       NULL::text, NULL::text, NULL::text
                  FROM idempotency_keys k
                 WHERE k.tenant_id = payflow_tenant()
                   AND k.livemode = payflow_livemode() AND k.key = p_key;
            RETURN;
        END IF;
    END IF;

    UPDATE payments t
       SET status = CASE WHEN p_approve THEN 'processing' ELSE 'canceled'
                    END,
           failure_code = CASE WHEN p_approve THEN NULL
                               ELSE 'review_rejected' END,
           failure_message = CASE WHEN p_approve THEN NULL
                                  ELSE 'the payment was rejected in review; '
                                       'nothing was charged' END
     WHERE t.id = p_id AND t.tenant_id = payflow_tenant()
       AND t.livemode = payflow_livemode() AND t.status = 'requires_review'
    RETURNING t.* INTO p;

    IF NOT FOUND THEN
        RAISE EXCEPTION 'no payment % in review', p_id
            USING ERRCODE = 'PF023';
    END IF;

    -- approved, it goes to its provider: one this node can call
    IF p_approve AND p.provider <> 'sandbox'
       AND NOT p.provider = ANY (coalesce(p_providers, '{}'))
    THEN
        RAISE EXCEPTION 'payment % has provider %, not configured', p_id,
            p.provider USING ERRCODE = 'PF024';
    END IF;

    -- an approved sandbox payment takes the sandbox's answer (p_status,
    -- from the worker) in the same transaction: never left processing
    IF p_approve AND p.provider = 'sandbox' AND p_status IS NOT NULL THEN
        UPDATE payments t
           SET status = p_status,
               amount_captured = CASE WHEN p_status = 'succeeded'
                                      THEN t.amount ELSE 0 END,
               amount_capturable = CASE WHEN p_status = 'requires_capture'
                                        THEN t.amount ELSE 0 END,
               failure_code = p_failure_code,
               failure_message = p_failure_message,
               next_action = CASE WHEN p_redirect_url IS NOT NULL THEN
                   jsonb_build_object('type', 'redirect_to_url',
                                      'redirect_url', p_redirect_url,
                                      'return_url', t.return_url) END,
               provider_reference = coalesce(t.provider_reference, t.id)
         WHERE t.id = p.id AND t.status = 'processing';
    END IF;

    -- an approved network payment is verified if its call is cut short
    IF p_approve AND p.provider <> 'sandbox' THEN
        INSERT INTO payment_checks (payment_id, due_at)
        VALUES (p.id, now() + interval '60 seconds')
        ON CONFLICT (payment_id) DO NOTHING;
    END IF;

    RETURN QUERY
        SELECT p_fingerprint, 'payment_created', true, NULL::int, NULL::text,
               p.id, NULL::text, p.id, true, p.amount, p.currency,
               p.capture_method, p.provider, p.payment_method,
               p.customer->>'email', p.description, p.return_url;
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_review_decide(text, boolean, text, text,
    text, text[], text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_review_decide(text, boolean, text, text,
    text, text[], text, text, text, text) TO :"app";

-- what an approval needs to know first: the payment in review's amount,
-- capture method and provider (the sandbox decides by the amount)
CREATE FUNCTION payflow_review_peek(p_id text)
    RETURNS TABLE (amount bigint, capture_method text, provider text)
    LANGUAGE sql STABLE
    AS $$
    SELECT t.amount, t.capture_method, t.provider FROM payments t
     WHERE t.id = p_id AND t.tenant_id = payflow_tenant()
       AND t.livemode = payflow_livemode() AND t.status = 'requires_review'
$$;

GRANT EXECUTE ON FUNCTION payflow_review_peek(text) TO :"app";

-- reviews nobody decided in time are canceled (the jobs run it); the
-- number canceled
CREATE FUNCTION payflow_review_expire(p_after interval, p_limit int)
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    n  int;
BEGIN
    PERFORM set_config('payflow.source', 'system', true);

    WITH due AS (
        SELECT id FROM payments
         WHERE status = 'requires_review'
           AND created_at < now() - p_after
         ORDER BY created_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE payments t
       SET status = 'canceled', failure_code = 'review_expired',
           failure_message = 'nobody reviewed the payment in time; '
                             'nothing was charged'
      FROM due WHERE t.id = due.id;

    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE EXECUTE ON FUNCTION payflow_review_expire(interval, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_review_expire(interval, int) TO :"app";
