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
