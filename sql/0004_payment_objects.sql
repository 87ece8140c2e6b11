-- The API's payment object, built where the row is: create, retrieve and
-- idempotent replays all return exactly this.

CREATE FUNCTION payflow_payment_json(p payments) RETURNS jsonb
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
        'description', p.description,
        'customer', p.customer,
        'metadata', p.metadata,
        'return_url', p.return_url,
        'next_action', p.next_action,
        'failure_code', p.failure_code,
        'failure_message', p.failure_message,
        'created', floor(extract(epoch FROM p.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_payment_json(payments) TO :"app";
