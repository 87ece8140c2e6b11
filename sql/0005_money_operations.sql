-- Capture, cancel and refunds share one idempotency flow: the key row
-- records which request ran the operation, so that "a row changed" never
-- has to be guessed from the object.

ALTER TABLE idempotency_keys ADD COLUMN request_id text,
                             ADD COLUMN object_id text;

GRANT UPDATE (request_id, object_id) ON idempotency_keys TO :"app";

CREATE FUNCTION payflow_refund_json(f refunds) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', f.id,
        'object', 'refund',
        'livemode', f.livemode,
        'payment', f.payment_id,
        'amount', f.amount,
        'currency', lower(f.currency),
        'status', f.status,
        'reason', f.reason,
        'failure_code', f.failure_code,
        'created', floor(extract(epoch FROM f.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_refund_json(refunds) TO :"app";

CREATE FUNCTION payflow_event_json(e payment_events) RETURNS jsonb
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
        'request_id', e.request_id,
        'amount', e.amount,
        'created', floor(extract(epoch FROM e.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_event_json(payment_events) TO :"app";
