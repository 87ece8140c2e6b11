-- Payments at network providers, orchestrated.
--
--   * Capture, cancel and refund of such a payment go to its provider
--     first.  The sandbox statements still raise PF008 for them, which
--     now tells PayFlow to call the provider and then record what it did
--     (a refund is reserved first, as pending, and settled after).
--   * The payment records how it was routed, and may move to another
--     provider only while it is processing: PayFlow fails over only from
--     a provider that provably took nothing, and commits the move before
--     it calls the next one, so a crash never leaves a charge at a
--     provider the payment does not name.
--   * payment_checks is the reconciler's queue: every payment at a
--     network provider that is processing or requires action has a row,
--     due at a time; the background jobs verify due payments at their
--     provider and settle them.  Sandbox payments never touch it.

CREATE OR REPLACE FUNCTION payflow_operable(p_provider text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    IF p_provider <> 'sandbox' THEN
        RAISE EXCEPTION 'payment at provider %: the provider is called '
            'first', p_provider USING ERRCODE = 'PF008';
    END IF;

    RETURN true;
END
$$;


ALTER TABLE payments
    ADD COLUMN payment_method text CHECK (length(payment_method) <= 255),
    ADD COLUMN routing text CHECK (length(routing) <= 300);

GRANT UPDATE (provider, routing) ON payments TO :"app";

ALTER TABLE payment_events ADD COLUMN provider text,
                           ADD COLUMN detail text;


CREATE OR REPLACE FUNCTION payments_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.livemode <> OLD.livemode OR NEW.amount <> OLD.amount
       OR NEW.currency <> OLD.currency
       OR NEW.capture_method <> OLD.capture_method
    THEN
        RAISE EXCEPTION 'payment % cannot change its identity or amount',
            OLD.id USING ERRCODE = 'PF003';
    END IF;

    IF NEW.provider <> OLD.provider
       AND (OLD.status <> 'processing' OR NEW.status <> 'processing'
            OR NEW.routing IS NOT DISTINCT FROM OLD.routing
            OR OLD.provider = 'sandbox' OR NEW.provider = 'sandbox')
    THEN
        RAISE EXCEPTION 'payment % can change provider only while '
            'processing, with its reason', OLD.id USING ERRCODE = 'PF003';
    END IF;

    IF NOT payflow_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'illegal payment transition % -> % for %',
            OLD.status, NEW.status, OLD.id USING ERRCODE = 'PF001';
    END IF;

    IF NEW.amount_captured < OLD.amount_captured
       OR NEW.amount_refunded < OLD.amount_refunded
    THEN
        RAISE EXCEPTION 'payment % amounts only grow', OLD.id
            USING ERRCODE = 'PF003';
    END IF;

    NEW.updated_at := now();
    RETURN NEW;
END
$$;


CREATE OR REPLACE FUNCTION payments_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_type  text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                    from_status, to_status, source,
                                    request_id, amount, provider, detail)
        SELECT NEW.tenant_id, NEW.livemode, NEW.id, s.type, s.from_status,
               s.to_status, payflow_event_source(),
               nullif(current_setting('payflow.request_id', true), ''),
               NEW.amount, NEW.provider, NEW.routing
          FROM (VALUES (1, 'payment.created', NULL, 'pending'),
                       (2, 'payment.processing', 'pending', 'processing'))
               AS s(step, type, from_status, to_status)
         WHERE s.step = 1 OR NEW.status = 'processing'
         ORDER BY s.step;

        RETURN NULL;
    END IF;

    IF NEW.provider <> OLD.provider THEN
        v_type := 'payment.rerouted';
    ELSIF NEW.status = OLD.status THEN
        RETURN NULL;
    ELSIF OLD.status = 'requires_capture' AND NEW.status = 'succeeded' THEN
        v_type := 'payment.captured';
    ELSE
        v_type := 'payment.' || NEW.status;
    END IF;

    INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                from_status, to_status, source, request_id,
                                amount, provider, detail)
    VALUES (NEW.tenant_id, NEW.livemode, NEW.id, v_type, OLD.status,
            NEW.status, payflow_event_source(),
            nullif(current_setting('payflow.request_id', true), ''),
            NEW.amount, NEW.provider,
            CASE WHEN v_type = 'payment.rerouted' THEN NEW.routing
                 ELSE NEW.failure_code END);

    RETURN NULL;
END
$$;


CREATE OR REPLACE FUNCTION payflow_event_json(e payment_events) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', e.id,
        'object', 'payment_event',
        'type', e.type,
        'payment', e.payment_id,
        'refund', e.refund_id,
        'from_status', e.from_status,
        'to_status', e.to_status,
        'source', e.source,
        'provider', e.provider,
        'detail', e.detail,
        'request_id', e.request_id,
        'amount', e.amount,
        'created', floor(extract(epoch FROM e.created_at))::bigint)
$$;


CREATE OR REPLACE FUNCTION payflow_payment_json(p payments) RETURNS jsonb
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
        'created', floor(extract(epoch FROM p.created_at))::bigint)
$$;


-- the reconciler's queue

CREATE TABLE payment_checks (
    payment_id      text PRIMARY KEY REFERENCES payments (id),
    due_at          timestamptz NOT NULL,
    attempts        int NOT NULL DEFAULT 0
);

CREATE INDEX payment_checks_due ON payment_checks (due_at);

REVOKE ALL ON payment_checks FROM PUBLIC;


CREATE FUNCTION payments_check() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF NEW.status IN ('processing', 'requires_action') THEN
        INSERT INTO payment_checks (payment_id, due_at)
        VALUES (NEW.id, now())
        ON CONFLICT (payment_id) DO NOTHING;
    ELSE
        DELETE FROM payment_checks WHERE payment_id = NEW.id;
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER payments_check AFTER INSERT OR UPDATE OF status ON payments
    FOR EACH ROW WHEN (NEW.provider <> 'sandbox')
    EXECUTE FUNCTION payments_check();


-- Claims up to p_limit payments undecided for p_after: a row's due_at is
-- when it became undecided, moved on by each claim (the wait doubling, at
-- most an hour) before the payment is handed out, so that a worker dying
-- with it leaves it to be verified again later.

CREATE FUNCTION payflow_reconcile_claim(p_limit int, p_after interval)
    RETURNS TABLE (id text, status text, livemode boolean, provider text,
                   provider_reference text, amount bigint, currency text,
                   capture_method text, payment_method text,
                   description text, return_url text, email text,
                   attempts int)
    LANGUAGE sql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    WITH due AS (
        SELECT c.payment_id FROM payment_checks c
         WHERE c.due_at <= now() - p_after
         ORDER BY c.due_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE payment_checks c
           SET attempts = c.attempts + 1,
               due_at = now() - p_after
                        + least(interval '1 hour',
                                p_after * power(2, least(c.attempts, 12)))
          FROM due WHERE c.payment_id = due.payment_id
        RETURNING c.payment_id, c.attempts
    )
    SELECT p.id, p.status, p.livemode, p.provider, p.provider_reference, p.amount,
           p.currency, p.capture_method, p.payment_method, p.description,
           p.return_url, p.customer ->> 'email', claimed.attempts
      FROM claimed JOIN payments p ON p.id = claimed.payment_id
$$;

REVOKE ALL ON FUNCTION payflow_reconcile_claim(int, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_reconcile_claim(int, interval) TO :"app";


-- What a verification learnt, applied as the system: a payment only
-- moves forward from processing or requires_action.

CREATE FUNCTION payflow_reconcile_apply(p_id text, p_status text,
    p_code text, p_message text, p_redirect text, p_reference text)
    RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_from  text;
BEGIN
    PERFORM set_config('payflow.source', 'system', true);

    SELECT status INTO v_from FROM payments WHERE id = p_id FOR UPDATE;

    IF v_from IS NULL OR v_from NOT IN ('processing', 'requires_action')
       OR v_from = p_status
       OR NOT payflow_transition_allowed(v_from, p_status)
    THEN
        RETURN v_from;
    END IF;

    UPDATE payments SET status = p_status,
        amount_captured = CASE WHEN p_status = 'succeeded'
                               THEN amount ELSE 0 END,
        amount_capturable = CASE WHEN p_status = 'requires_capture'
                                 THEN amount ELSE 0 END,
        failure_code = p_code, failure_message = p_message,
        next_action = CASE WHEN p_redirect IS NOT NULL THEN
            jsonb_build_object('type', 'redirect_to_url', 'redirect_url',
                               p_redirect, 'return_url', return_url)
            ELSE next_action END,
        provider_reference = coalesce(p_reference, provider_reference, id)
     WHERE id = p_id;

    RETURN p_status;
END
$$;

REVOKE ALL ON FUNCTION payflow_reconcile_apply(text, text, text, text, text,
    text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_reconcile_apply(text, text, text, text,
    text, text) TO :"app";
