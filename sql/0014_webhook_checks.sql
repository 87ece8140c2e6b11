-- Provider webhooks, tightened after review:
--
--   * an event belongs to a provider AND a mode: the same provider name
--     may be declared for test and live, and an event id is unique only
--     within one of them;
--   * a success must tell the amount and currency it is for (an event
--     that tells neither is a mismatch, never applied), and a Stripe
--     event must name the PaymentIntent the payment already has;
--   * providers whose signature covers no body (Flutterwave's verif-hash)
--     never move money by the webhook alone: the event makes the
--     payment's or refund's verification due now, and the reconciler asks
--     the provider ("verifying");
--   * a refund the provider reports failed after it succeeded is a
--     mismatch for an operator, not "unchanged";
--   * an event still unmatched is applied again when the provider
--     delivers it again (a resend from its dashboard), and one event
--     failing in the jobs' retry no longer stops the others;
--   * sandbox payments are never touched by a webhook.

ALTER TABLE webhook_events
    DROP CONSTRAINT webhook_events_provider_event_id_key,
    ADD CONSTRAINT webhook_events_event_key
        UNIQUE (provider, livemode, event_id),
    ADD COLUMN verify boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT webhook_events_result_check,
    ADD CONSTRAINT webhook_events_result_check
        CHECK (result IN ('received', 'applied', 'unchanged', 'unmatched',
                          'ignored', 'mismatch', 'verifying'));


CREATE OR REPLACE FUNCTION payflow_webhook_apply(p_id text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    e         webhook_events;
    p         payments;
    f         refunds;
    v_to      text;
    v_result  text;
    v_detail  text;
BEGIN
    SELECT * INTO e FROM webhook_events WHERE id = p_id FOR UPDATE;

    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    PERFORM set_config('payflow.source', 'webhook', true);
    PERFORM set_config('payflow.request_id', coalesce(e.request_id, ''),
                       true);

    IF e.object IS NULL OR e.status IS NULL THEN
        v_result := 'ignored';
        v_detail := 'event type not acted on';

    ELSIF e.object = 'payment' THEN
        SELECT * INTO p FROM payments
         WHERE id = e.payment_ref AND provider = e.provider
           AND livemode = e.livemode AND provider <> 'sandbox'
           FOR UPDATE;

        IF NOT FOUND THEN
            v_result := 'unmatched';
            v_detail := 'no payment at this provider with this reference';

        ELSIF e.reference IS NOT NULL AND p.provider_reference IS NOT NULL
              AND e.reference <> p.provider_reference
        THEN
            v_result := 'mismatch';
            v_detail := 'the event is about another object of the provider '
                        'than the payment''s';

        ELSIF e.status IN ('succeeded', 'requires_capture')
              AND (e.amount IS DISTINCT FROM p.amount
                   OR e.currency IS DISTINCT FROM p.currency)
        THEN
            v_result := 'mismatch';
            v_detail := format('the event tells %s %s, the payment is %s %s',
                               coalesce(e.amount::text, 'no amount'),
                               coalesce(e.currency, 'no currency'),
                               p.amount, p.currency);

        ELSIF p.status NOT IN ('processing', 'requires_action') THEN
            v_result := 'unchanged';
            v_detail := 'payment is ' || p.status;

        ELSIF e.verify THEN
            /* the provider is asked before anything moves */
            UPDATE payment_checks SET due_at = '-infinity'
             WHERE payment_id = p.id;

            v_result := 'verifying';
            v_detail := 'the reconciler verifies it at the provider';

        ELSE
            v_to := e.status;

            IF v_to = 'canceled' AND p.status = 'processing' THEN
                /* the provider gave up on it: nothing was taken */
                v_to := 'failed';
            END IF;

            IF v_to = p.status
               OR NOT payflow_transition_allowed(p.status, v_to)
            THEN
                v_result := 'unchanged';
                v_detail := 'payment is ' || p.status;

                UPDATE payments SET provider_reference = e.reference
                 WHERE id = p.id AND provider_reference IS NULL
                   AND e.reference IS NOT NULL;

            ELSE
                UPDATE payments SET status = v_to,
                    amount_captured = CASE WHEN v_to = 'succeeded'
                                           THEN amount ELSE 0 END,
                    amount_capturable = CASE WHEN v_to = 'requires_capture'
                                             THEN amount ELSE 0 END,
                    failure_code = CASE WHEN v_to IN ('failed', 'canceled')
                        THEN coalesce(e.failure_code, 'payment_failed') END,
                    failure_message = CASE WHEN v_to IN ('failed', 'canceled')
                        THEN e.failure_message END,
                    next_action = CASE WHEN e.redirect_url IS NOT NULL THEN
                        jsonb_build_object('type', 'redirect_to_url',
                                           'redirect_url', e.redirect_url,
                                           'return_url', return_url)
                        WHEN v_to = 'requires_action' THEN next_action END,
                    provider_reference = coalesce(e.reference,
                                                  provider_reference, id)
                 WHERE id = p.id;

                v_result := 'applied';
                v_detail := p.status || ' -> ' || v_to;
            END IF;
        END IF;

        e.tenant_id := p.tenant_id;
        e.payment_id := p.id;

    ELSE
        /* a refund: by our id, by the provider's, or the one it can be */
        SELECT f1.* INTO f FROM refunds f1
          JOIN payments p1 ON p1.id = f1.payment_id
         WHERE f1.id = e.refund_ref AND p1.provider = e.provider
           AND f1.livemode = e.livemode AND p1.provider <> 'sandbox'
           FOR UPDATE OF f1;

        IF NOT FOUND AND e.reference IS NOT NULL THEN
            SELECT f1.* INTO f FROM refunds f1
              JOIN payments p1 ON p1.id = f1.payment_id
             WHERE f1.provider_reference = e.reference
               AND p1.provider = e.provider AND f1.livemode = e.livemode
               AND p1.provider <> 'sandbox'
               FOR UPDATE OF f1;
        END IF;

        IF NOT FOUND AND e.payment_ref IS NOT NULL AND e.amount IS NOT NULL
        THEN
            /* one pending refund of that amount, and only one */
            SELECT f1.* INTO f FROM refunds f1
              JOIN payments p1 ON p1.id = f1.payment_id
             WHERE f1.payment_id = e.payment_ref AND p1.provider = e.provider
               AND f1.livemode = e.livemode AND f1.status = 'pending'
               AND p1.provider <> 'sandbox'
               AND f1.amount = e.amount AND f1.provider_reference IS NULL
               AND (SELECT count(*) FROM refunds f2
                     WHERE f2.payment_id = f1.payment_id
                       AND f2.status = 'pending' AND f2.amount = e.amount
                       AND f2.provider_reference IS NULL) = 1
               FOR UPDATE OF f1;
        END IF;

        IF NOT FOUND THEN
            v_result := 'unmatched';
            v_detail := 'no refund at this provider with this reference';

        ELSIF e.amount IS NOT NULL AND e.amount <> f.amount THEN
            v_result := 'mismatch';
            v_detail := format('the event tells %s, the refund is %s',
                               e.amount, f.amount);

        ELSIF f.status = 'succeeded' AND e.status = 'failed' THEN
            v_result := 'mismatch';
            v_detail := 'the provider reports a refund failed after it '
                        'succeeded: the money may have come back';

        ELSIF f.status <> 'pending' OR e.status NOT IN ('succeeded', 'failed')
        THEN
            v_result := 'unchanged';
            v_detail := 'refund is ' || f.status;

            UPDATE refunds SET provider_reference = e.reference
             WHERE id = f.id AND provider_reference IS NULL
               AND e.reference IS NOT NULL;

        ELSIF e.verify THEN
            UPDATE refund_checks SET due_at = '-infinity'
             WHERE refund_id = f.id;

            v_result := 'verifying';
            v_detail := 'the reconciler verifies it at the provider';

        ELSE
            UPDATE refunds SET status = e.status,
                   provider_reference = coalesce(provider_reference,
                                                 e.reference),
                   failure_code = CASE WHEN e.status = 'failed'
                       THEN coalesce(e.failure_code, 'refund_failed') END
             WHERE id = f.id;

            v_result := 'applied';
            v_detail := 'pending -> ' || e.status;
        END IF;

        e.tenant_id := f.tenant_id;
        e.payment_id := f.payment_id;
        e.refund_id := f.id;
    END IF;

    UPDATE webhook_events SET result = v_result, detail = v_detail,
           tenant_id = e.tenant_id, payment_id = e.payment_id,
           refund_id = e.refund_id, attempts = attempts + 1,
           processed_at = now(),
           retry_at = CASE WHEN v_result = 'unmatched' AND attempts < 12
                           THEN now() + make_interval(
                                    secs => power(2, attempts + 1))
                      END
     WHERE id = e.id;

    RETURN v_result;
END
$$;


DROP FUNCTION payflow_webhook_receive(text, boolean, text, text, text, text,
    text, text, text, text, text, text, text, bigint, text, text);

CREATE FUNCTION payflow_webhook_receive(p_provider text, p_livemode boolean,
    p_event_id text, p_type text, p_payload text, p_object text,
    p_payment_ref text, p_refund_ref text, p_reference text, p_status text,
    p_code text, p_message text, p_redirect text, p_amount bigint,
    p_currency text, p_request_id text, p_verify boolean)
    RETURNS TABLE (id text, result text, payment_id text, refund_id text,
                   duplicate boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_id      text;
    v_result  text;
BEGIN
    INSERT INTO webhook_events (provider, livemode, event_id, type, payload,
                                object, payment_ref, refund_ref, reference,
                                status, failure_code, failure_message,
                                redirect_url, amount, currency, request_id,
                                verify)
    VALUES (p_provider, p_livemode, p_event_id, p_type, p_payload, p_object,
            p_payment_ref, p_refund_ref, p_reference, p_status,
            left(p_code, 255), left(p_message, 1000), p_redirect, p_amount,
            upper(p_currency), left(p_request_id, 255), p_verify)
    ON CONFLICT ON CONSTRAINT webhook_events_event_key DO NOTHING
    RETURNING webhook_events.id INTO v_id;

    IF v_id IS NOT NULL THEN
        PERFORM payflow_webhook_apply(v_id);

        RETURN QUERY SELECT w.id, w.result, w.payment_id, w.refund_id, false
                       FROM webhook_events w WHERE w.id = v_id;
        RETURN;
    END IF;

    /* delivered before; one still unmatched is tried again */

    SELECT w.id, w.result INTO v_id, v_result FROM webhook_events w
     WHERE w.provider = p_provider AND w.livemode = p_livemode
       AND w.event_id = p_event_id;

    IF v_result = 'unmatched' THEN
        PERFORM payflow_webhook_apply(v_id);
    END IF;

    RETURN QUERY SELECT w.id, w.result, w.payment_id, w.refund_id, true
                   FROM webhook_events w WHERE w.id = v_id;
END
$$;

REVOKE ALL ON FUNCTION payflow_webhook_receive(text, boolean, text, text,
    text, text, text, text, text, text, text, text, text, bigint, text, text,
    boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_webhook_receive(text, boolean, text, text,
    text, text, text, text, text, text, text, text, text, bigint, text, text,
    boolean) TO :"app";


-- each event in a subtransaction of its own: one that fails is pushed
-- back and reported, the others (and the rest of the jobs) go on

CREATE OR REPLACE FUNCTION payflow_webhook_retry(p_limit int) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_id  text;
    n     int := 0;
BEGIN
    FOR v_id IN SELECT w.id FROM webhook_events w
                 WHERE w.retry_at <= now()
                 ORDER BY w.retry_at
                 LIMIT p_limit
                   FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            PERFORM payflow_webhook_apply(v_id);
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'payflow webhook: event % could not be applied: %',
                v_id, SQLERRM;
            UPDATE webhook_events SET retry_at = now() + interval '10 min'
             WHERE id = v_id;
        END;
    END LOOP;

    DELETE FROM webhook_events
     WHERE id IN (SELECT w.id FROM webhook_events w
                   WHERE w.received_at < now() - interval '30 days'
                   LIMIT 1000);

    RETURN n;
END
$$;
