-- Security review findings (issue 16).
--
-- 1. A JWT names its tenant in a claim; the tenant must exist and be
--    active, as for an API key.  Workers cache the answer beside the keys
--    (a status change already flushes that cache on every node) and must
--    hear when a tenant is created, so that a "no such tenant" they
--    cached is dropped: tenants_notify now also says "tenant:<id>" on
--    INSERT.  payflow_tenant_status() is the application's only way to
--    read a tenant's status before it is scoped to it.

CREATE FUNCTION payflow_tenant_status(p_id text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT status FROM tenants WHERE id = p_id
    $$;

REVOKE ALL ON FUNCTION payflow_tenant_status(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_tenant_status(text) TO :"app";

CREATE OR REPLACE FUNCTION tenants_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('payflow_auth', 'tenant:' || NEW.id);

    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('payflow_auth', 'flush');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify_insert AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_notify();

-- 2. The completer decides whether a capture or cancel ran from what the
--    server wrote, not from the client's X-Request-Id: the key is inserted
--    by the statement that moves the payment (NGX_HTTP_PAYFLOW_KEY_CTE),
--    so the operation ran if and only if the payment row, or an event of
--    the payment, was written by the key's own transaction (the key row's
--    xmin: a key is never updated before it is finished).  A request id
--    reused from an earlier request on the same payment no longer turns a
--    capture that matched nothing into a stored 200.

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

-- 3. A manual redelivery is throttled per event and endpoint: a delivery
--    in flight is left to finish, and one redelivered by hand less than a
--    minute ago is not sent again (each call used to send to every
--    endpoint, so 11 calls made 110 POSTs).  When a call sends nothing
--    because of the minute, it says how long to wait (PF011, the seconds
--    in the detail: 429 with Retry-After).

ALTER TABLE webhook_deliveries ADD COLUMN redelivered_at timestamptz;

CREATE OR REPLACE FUNCTION payflow_event_redeliver(p_id text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    ev      payment_events;
    queued  int;
    wait    timestamptz;
BEGIN
    SELECT * INTO ev FROM payment_events e
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode();

    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    WITH sent AS (
        INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                        endpoint_id, next_attempt_at,
                                        redelivered_at)
        SELECT ev.tenant_id, ev.livemode, ev.id, e.id, now(), now()
          FROM webhook_endpoints e
         WHERE e.tenant_id = ev.tenant_id AND e.livemode = ev.livemode
           AND e.enabled
           AND (ev.type = ANY (e.events) OR '*' = ANY (e.events))
        ON CONFLICT (event_id, endpoint_id) DO UPDATE
           SET status = 'pending', next_attempt_at = now(),
               leased_until = NULL, redelivered_at = now()
         WHERE (webhook_deliveries.status <> 'pending'
                OR webhook_deliveries.leased_until IS NULL)
           AND (webhook_deliveries.redelivered_at IS NULL
                OR webhook_deliveries.redelivered_at
                   <= now() - interval '60 seconds')
        RETURNING 1)
    SELECT count(*) INTO queued FROM sent;

    IF queued = 0 THEN
        SELECT min(d.redelivered_at) + interval '60 seconds' INTO wait
          FROM webhook_deliveries d
         WHERE d.event_id = ev.id
           AND d.redelivered_at > now() - interval '60 seconds';

        IF wait IS NOT NULL THEN
            RAISE EXCEPTION 'this event was redelivered less than a minute '
                'ago' USING ERRCODE = 'PF011',
                DETAIL = ceil(extract(epoch FROM wait - now()))::int::text;
        END IF;

    ELSE
        PERFORM pg_notify('payflow_outbox', '');
    END IF;

    RETURN payflow_event_deliveries(p_id);
END
$$;
