-- Webhooks from providers.
--
--   * Every verified delivery is stored once, unique on the provider (as
--     nginx.conf names it) and the provider's event id, with the raw body
--     as received and what the event tells in PayFlow's terms (the C
--     adapter reads the provider's format; the database decides).
--   * Storing and applying are one transaction: the payment or refund
--     moves through the state machine with its payment event (source
--     "webhook", the delivery's request id) and ledger entries, or the
--     event records why it did not.  A duplicate delivery finds the row
--     and changes nothing.
--   * Like the reconciler, a webhook settles only what PayFlow waits on the
--     provider for: a payment processing or requiring action, a pending
--     refund.  Captures and cancels are PayFlow's own calls; a late or
--     out-of-order event never moves anything backwards.
--   * An event for an object not (yet) known is kept and tried again by
--     the background jobs, at growing intervals, for about two hours.

CREATE TABLE webhook_events (
    id              text PRIMARY KEY DEFAULT payflow_id('whev_'),
    provider        text NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    livemode        boolean NOT NULL,
    event_id        text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    type            text NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    payload         text NOT NULL,
    object          text CHECK (object IN ('payment', 'refund')),
    payment_ref     text CHECK (length(payment_ref) <= 255),
    refund_ref      text CHECK (length(refund_ref) <= 255),
    reference       text CHECK (length(reference) <= 255),
    status          text CHECK (status IN ('processing', 'requires_action',
                                           'requires_capture', 'succeeded',
                                           'failed', 'canceled', 'pending')),
    failure_code    text CHECK (length(failure_code) <= 255),
    failure_message text CHECK (length(failure_message) <= 1000),
    redirect_url    text CHECK (length(redirect_url) <= 2048),
    amount          bigint,
    currency        text CHECK (currency ~ '^[A-Z]{3}$'),
    request_id      text CHECK (length(request_id) <= 255),
    received_at     timestamptz NOT NULL DEFAULT now(),
    result          text NOT NULL DEFAULT 'received'
                    CHECK (result IN ('received', 'applied', 'unchanged',
                                      'unmatched', 'ignored', 'mismatch')),
    detail          text,
    tenant_id       text,
    payment_id      text,
    refund_id       text,
    attempts        int NOT NULL DEFAULT 0,
    retry_at        timestamptz,
    processed_at    timestamptz,
    UNIQUE (provider, event_id)
);

CREATE INDEX webhook_events_retry ON webhook_events (retry_at)
    WHERE retry_at IS NOT NULL;
CREATE INDEX webhook_events_received ON webhook_events (received_at);
CREATE INDEX webhook_events_payment ON webhook_events (payment_id)
    WHERE payment_id IS NOT NULL;

REVOKE ALL ON webhook_events FROM PUBLIC;

-- refunds are found by the provider's id too (Flutterwave's events carry
-- only that)
CREATE INDEX refunds_provider_reference ON refunds (provider_reference)
    WHERE provider_reference IS NOT NULL;


-- what a stored event is never to change

CREATE FUNCTION webhook_events_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.provider <> OLD.provider OR NEW.event_id <> OLD.event_id
       OR NEW.payload <> OLD.payload OR NEW.livemode <> OLD.livemode
       OR NEW.received_at <> OLD.received_at
    THEN
        RAISE EXCEPTION 'webhook event % is kept as received', OLD.id
            USING ERRCODE = 'PF003';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER webhook_events_guard BEFORE UPDATE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_guard();


-- Applies a stored event (again); returns its result.

CREATE FUNCTION payflow_webhook_apply(p_id text) RETURNS text
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
           AND livemode = e.livemode
           FOR UPDATE;

        IF NOT FOUND THEN
            v_result := 'unmatched';
            v_detail := 'no payment at this provider with this reference';

        ELSIF e.status IN ('succeeded', 'requires_capture')
              AND (e.amount IS DISTINCT FROM p.amount
                   OR e.currency IS DISTINCT FROM p.currency)
              AND (e.amount IS NOT NULL OR e.currency IS NOT NULL)
        THEN
            v_result := 'mismatch';
            v_detail := format('the event tells %s %s, the payment is %s %s',
                               e.amount, e.currency, p.amount, p.currency);

        ELSIF p.status NOT IN ('processing', 'requires_action') THEN
            v_result := 'unchanged';
            v_detail := 'payment is ' || p.status;

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
           AND f1.livemode = e.livemode
           FOR UPDATE OF f1;

        IF NOT FOUND AND e.reference IS NOT NULL THEN
            SELECT f1.* INTO f FROM refunds f1
              JOIN payments p1 ON p1.id = f1.payment_id
             WHERE f1.provider_reference = e.reference
               AND p1.provider = e.provider AND f1.livemode = e.livemode
               FOR UPDATE OF f1;
        END IF;

        IF NOT FOUND AND e.payment_ref IS NOT NULL AND e.amount IS NOT NULL
        THEN
            /* one pending refund of that amount, and only one */
            SELECT f1.* INTO f FROM refunds f1
              JOIN payments p1 ON p1.id = f1.payment_id
             WHERE f1.payment_id = e.payment_ref AND p1.provider = e.provider
               AND f1.livemode = e.livemode AND f1.status = 'pending'
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

        ELSIF f.status <> 'pending' OR e.status NOT IN ('succeeded', 'failed')
        THEN
            v_result := 'unchanged';
            v_detail := 'refund is ' || f.status;

            UPDATE refunds SET provider_reference = e.reference
             WHERE id = f.id AND provider_reference IS NULL
               AND e.reference IS NOT NULL;

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

REVOKE ALL ON FUNCTION payflow_webhook_apply(text) FROM PUBLIC;


-- A verified delivery: stored once, applied in the same transaction.

CREATE FUNCTION payflow_webhook_receive(p_provider text, p_livemode boolean,
    p_event_id text, p_type text, p_payload text, p_object text,
    p_payment_ref text, p_refund_ref text, p_reference text, p_status text,
    p_code text, p_message text, p_redirect text, p_amount bigint,
    p_currency text, p_request_id text)
    RETURNS TABLE (id text, result text, payment_id text, refund_id text,
                   duplicate boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_id  text;
BEGIN
    INSERT INTO webhook_events (provider, livemode, event_id, type, payload,
                                object, payment_ref, refund_ref, reference,
                                status, failure_code, failure_message,
                                redirect_url, amount, currency, request_id)
    VALUES (p_provider, p_livemode, p_event_id, p_type, p_payload, p_object,
            p_payment_ref, p_refund_ref, p_reference, p_status,
            left(p_code, 255), left(p_message, 1000), p_redirect, p_amount,
            upper(p_currency), left(p_request_id, 255))
    ON CONFLICT ON CONSTRAINT webhook_events_provider_event_id_key
    DO NOTHING
    RETURNING webhook_events.id INTO v_id;

    IF v_id IS NULL THEN
        RETURN QUERY SELECT w.id, w.result, w.payment_id, w.refund_id, true
                       FROM webhook_events w
                      WHERE w.provider = p_provider
                        AND w.event_id = p_event_id;
        RETURN;
    END IF;

    PERFORM payflow_webhook_apply(v_id);

    RETURN QUERY SELECT w.id, w.result, w.payment_id, w.refund_id, false
                   FROM webhook_events w WHERE w.id = v_id;
END
$$;

REVOKE ALL ON FUNCTION payflow_webhook_receive(text, boolean, text, text,
    text, text, text, text, text, text, text, text, text, bigint, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_webhook_receive(text, boolean, text, text,
    text, text, text, text, text, text, text, text, text, bigint, text, text)
    TO :"app";


-- The background jobs: unmatched events due again, then the retention.

CREATE FUNCTION payflow_webhook_retry(p_limit int) RETURNS int
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
        PERFORM payflow_webhook_apply(v_id);
        n := n + 1;
    END LOOP;

    DELETE FROM webhook_events
     WHERE id IN (SELECT w.id FROM webhook_events w
                   WHERE w.received_at < now() - interval '30 days'
                   LIMIT 1000);

    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION payflow_webhook_retry(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_webhook_retry(int) TO :"app";
