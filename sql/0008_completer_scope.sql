-- The completer, again, stricter (it runs as the schema owner, so row-level
-- security does not scope it: it must do so itself).
--
-- A key whose lock has expired without an answer is looked at once:
--   - its operation ran (the payment it made, the refund it made, or for a
--     capture or cancel an event written under the key's request id), in
--     the key's own tenant and mode: the key is finished with the object's
--     state as a 200, an envelope byte-compatible with the C one;
--   - it did not (the operation matched nothing, e.g. a capture of a
--     payment in another state, or of another tenant's payment): the key
--     means nothing and is deleted, so that a retry runs afresh and gets
--     the operation's real answer.
-- Oldest locks first, so no key can hold the queue up.  With a tenant,
-- mode and key it looks at that key only: a retry resuming it.

DROP FUNCTION payflow_complete_idempotency_keys(int);

CREATE FUNCTION payflow_complete_idempotency_keys(p_limit int,
    p_tenant text DEFAULT NULL, p_livemode boolean DEFAULT NULL,
    p_key text DEFAULT NULL)
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    k     idempotency_keys%ROWTYPE;
    data  jsonb;
    n     int := 0;
BEGIN
    FOR k IN SELECT * FROM idempotency_keys
              WHERE phase <> 'finished' AND locked_until < now()
                AND (p_key IS NULL
                     OR (tenant_id = p_tenant AND livemode = p_livemode
                         AND key = p_key))
              ORDER BY locked_until
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

        ELSIF k.request_id IS NOT NULL THEN
            SELECT payflow_payment_json(p) INTO data FROM payments p
             WHERE p.id = coalesce(k.object_id, k.payment_id)
               AND p.tenant_id = k.tenant_id AND p.livemode = k.livemode
               AND EXISTS (SELECT 1 FROM payment_events e
                            WHERE e.payment_id = p.id
                              AND e.tenant_id = k.tenant_id
                              AND e.request_id = k.request_id);
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

REVOKE ALL ON FUNCTION payflow_complete_idempotency_keys(int, text, boolean,
    text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_complete_idempotency_keys(int, text,
    boolean, text) TO :"app";
