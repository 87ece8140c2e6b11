-- Refunds at network providers are reserved as pending and settled by the
-- provider's answer; one the provider left pending (Paystack's always
-- start so) or whose answer was lost is verified later by the background
-- jobs, from this queue, as payments are from payment_checks.

CREATE TABLE refund_checks (
    refund_id       text PRIMARY KEY REFERENCES refunds (id),
    due_at          timestamptz NOT NULL,
    attempts        int NOT NULL DEFAULT 0
);

CREATE INDEX refund_checks_due ON refund_checks (due_at);

REVOKE ALL ON refund_checks FROM PUBLIC;

CREATE FUNCTION refunds_check() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF NEW.status <> 'pending' THEN
        DELETE FROM refund_checks WHERE refund_id = NEW.id;
    ELSIF (SELECT provider FROM payments WHERE id = NEW.payment_id)
          <> 'sandbox'
    THEN
        INSERT INTO refund_checks (refund_id, due_at)
        VALUES (NEW.id, now())
        ON CONFLICT (refund_id) DO NOTHING;
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER refunds_check AFTER INSERT OR UPDATE OF status ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_check();


CREATE FUNCTION payflow_reconcile_refunds_claim(p_limit int,
    p_after interval)
    RETURNS TABLE (id text, payment_id text, livemode boolean,
                   provider text, payment_reference text,
                   refund_reference text, amount bigint, currency text,
                   reason text)
    LANGUAGE sql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    WITH due AS (
        SELECT c.refund_id FROM refund_checks c
         WHERE c.due_at <= now() - p_after
         ORDER BY c.due_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE refund_checks c
           SET attempts = c.attempts + 1,
               due_at = now() - p_after
                        + least(interval '1 hour',
                                p_after * power(2, least(c.attempts, 12)))
          FROM due WHERE c.refund_id = due.refund_id
        RETURNING c.refund_id
    )
    SELECT f.id, f.payment_id, f.livemode, p.provider,
           coalesce(p.provider_reference, p.id), f.provider_reference,
           f.amount, f.currency, f.reason
      FROM claimed JOIN refunds f ON f.id = claimed.refund_id
      JOIN payments p ON p.id = f.payment_id
$$;

REVOKE ALL ON FUNCTION payflow_reconcile_refunds_claim(int, interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_reconcile_refunds_claim(int, interval)
    TO :"app";


CREATE FUNCTION payflow_reconcile_refund_apply(p_id text, p_status text,
    p_reference text, p_code text)
    RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    PERFORM set_config('payflow.source', 'system', true);

    UPDATE refunds SET status = p_status,
           provider_reference = coalesce(p_reference, provider_reference),
           failure_code = p_code
     WHERE id = p_id AND status = 'pending';

    RETURN p_status;
END
$$;

REVOKE ALL ON FUNCTION payflow_reconcile_refund_apply(text, text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_reconcile_refund_apply(text, text, text,
    text) TO :"app";


-- The reconciler, tightened: the claim tells a payment's age (Stripe keeps
-- an Idempotency-Key 24 hours; past that, sending the charge again would
-- make a new one, so an intent whose id never came back is left for an
-- operator), a verification that only learnt the provider's id records
-- it, and neither apply function touches a sandbox object or takes a
-- state the reconciler cannot mean.

DROP FUNCTION payflow_reconcile_claim(int, interval);

CREATE FUNCTION payflow_reconcile_claim(p_limit int, p_after interval)
    RETURNS TABLE (id text, status text, livemode boolean, provider text,
                   provider_reference text, amount bigint, currency text,
                   capture_method text, payment_method text,
                   description text, return_url text, email text,
                   attempts int, age bigint)
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
    SELECT p.id, p.status, p.livemode, p.provider, p.provider_reference,
           p.amount, p.currency, p.capture_method, p.payment_method,
           p.description, p.return_url, p.customer ->> 'email',
           claimed.attempts,
           floor(extract(epoch FROM now() - p.created_at))::bigint
      FROM claimed JOIN payments p ON p.id = claimed.payment_id
$$;

REVOKE ALL ON FUNCTION payflow_reconcile_claim(int, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_reconcile_claim(int, interval) TO :"app";


CREATE OR REPLACE FUNCTION payflow_reconcile_apply(p_id text, p_status text,
    p_code text, p_message text, p_redirect text, p_reference text)
    RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_from  text;
BEGIN
    PERFORM set_config('payflow.source', 'system', true);

    SELECT status INTO v_from FROM payments
     WHERE id = p_id AND provider <> 'sandbox' FOR UPDATE;

    IF v_from IS NULL OR v_from NOT IN ('processing', 'requires_action') THEN
        RETURN v_from;
    END IF;

    IF v_from = p_status THEN
        /* undecided still; the provider's id is worth keeping */
        UPDATE payments SET provider_reference = p_reference
         WHERE id = p_id AND provider_reference IS NULL
           AND p_reference IS NOT NULL;
        RETURN v_from;
    END IF;

    IF NOT payflow_transition_allowed(v_from, p_status) THEN
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


CREATE OR REPLACE FUNCTION payflow_reconcile_refund_apply(p_id text,
    p_status text, p_reference text, p_code text)
    RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF p_status NOT IN ('succeeded', 'failed') THEN
        RETURN NULL;
    END IF;

    PERFORM set_config('payflow.source', 'system', true);

    UPDATE refunds f SET status = p_status,
           provider_reference = coalesce(p_reference, f.provider_reference),
           failure_code = p_code
      FROM payments p
     WHERE f.id = p_id AND f.status = 'pending'
       AND p.id = f.payment_id AND p.provider <> 'sandbox';

    RETURN p_status;
END
$$;
