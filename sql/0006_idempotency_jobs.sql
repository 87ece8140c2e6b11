-- The completer: a key whose request died after its transaction committed
-- (operation and key commit together, so its object exists) gets the
-- object's state stored as its response once its lock has expired.  Runs
-- on every worker of every node; SKIP LOCKED shares the work out.

CREATE FUNCTION payflow_complete_idempotency_keys(p_limit int) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    n  int;
BEGIN
    WITH stuck AS (
        SELECT k.tenant_id, k.livemode, k.key, k.request_id,
               coalesce(k.object_id, k.payment_id) AS object_id
          FROM idempotency_keys k
         WHERE k.phase <> 'finished' AND k.locked_until < now()
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), answers AS (
        SELECT s.*,
               coalesce((SELECT payflow_payment_json(p) FROM payments p
                          WHERE p.id = s.object_id),
                        (SELECT payflow_refund_json(f) FROM refunds f
                          WHERE f.id = s.object_id)) AS data
          FROM stuck s
    )
    UPDATE idempotency_keys k
       SET phase = 'finished', response_status = 200, locked_until = NULL,
           response_body = jsonb_build_object(
               'success', true, 'data', a.data,
               'meta', jsonb_build_object(
                   'request_id', coalesce(a.request_id, 'req_completer'),
                   'timestamp', to_char(now() AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS"Z"')))::text
      FROM answers a
     WHERE k.tenant_id = a.tenant_id AND k.livemode = a.livemode
       AND k.key = a.key AND a.data IS NOT NULL;

    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION payflow_complete_idempotency_keys(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_complete_idempotency_keys(int) TO :"app";
