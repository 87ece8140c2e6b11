-- pgbench: the database work of one POST /v1/payments with an
-- Idempotency-Key, sandbox provider, automatic capture (bench/payments).
--
-- The statements are those ngx_payflow_module/ngx_http_payflow_payments.c
-- prepares (payflow_pay_insert_keyed, _pay_process, _pay_outcome,
-- _pay_called, _pay_get, _idem_get, _idem_finish) and the RLS scope of
-- ngx_http_payflow_keys.c (payflow_scope), sent the way
-- ngx_http_payflow_db_query() and pf_pg.c send them: each query is
-- BEGIN, the scope, the statements, COMMIT, pipelined with one Sync.
-- A keyed payment is two such round trips, as in the C code: the
-- payment, then the response stored on the key.
--
-- $n parameters become pgbench variables (-D, see bench/payments); the
-- ids the C code generates are built from a per-run prefix, the client
-- and a per-client counter: pay_<run><client, counter>, 24 characters.
-- Absent optional fields (description, customer, metadata, return_url,
-- failure code and message) are NULL parameters in C, literals here.
-- The response stored on the key is C's own (the envelope around the
-- payment read back), taken from a real POST by bench/payments, as :body:
-- pgbench cannot \gset in a pipeline.

\set seq :seq + 1
\set u :client_id * 10000000000 + :seq

\startpipeline
BEGIN;
SELECT set_config('payflow.tenant_id', :tenant, true),
       set_config('payflow.livemode', :mode, true),
       set_config('payflow.admin', 'off', true),
       set_config('payflow.actor_type', 'api_key', true),
       set_config('payflow.actor_id', :key_id, true),
       set_config('payflow.ip', :ip, true),
       set_config('payflow.request_id',
                  'req_' || :run || lpad(:u::text, 14, '0'), true);
WITH k AS (INSERT INTO idempotency_keys (tenant_id, livemode, key,
               fingerprint, method, path, phase, locked_until, payment_id)
           VALUES (:tenant, :livemode::boolean, :run || '-' || :u,
               decode(:fp, 'hex'), 'POST', '/v1/payments',
               'payment_created', now() + interval '30 seconds',
               'pay_' || :run || lpad(:u::text, 14, '0'))
           ON CONFLICT DO NOTHING RETURNING 1)
INSERT INTO payments (id, tenant_id, livemode, amount, currency,
                      capture_method, provider, description, customer,
                      metadata, return_url)
SELECT 'pay_' || :run || lpad(:u::text, 14, '0'), :tenant,
       :livemode::boolean, :amount::bigint, :currency, :capture, :provider,
       NULL, NULL::jsonb, coalesce(NULL::jsonb, '{}'), NULL FROM k;
UPDATE payments SET status = 'processing'
 WHERE id = 'pay_' || :run || lpad(:u::text, 14, '0')
   AND status = 'pending';
UPDATE payments SET status = :outcome,
       amount_captured = CASE WHEN :outcome = 'succeeded'
                              THEN amount ELSE 0 END,
       amount_capturable = CASE WHEN :outcome = 'requires_capture'
                                THEN amount ELSE 0 END,
       failure_code = NULL, failure_message = NULL,
       next_action = CASE WHEN :action THEN jsonb_build_object('type',
           'redirect_to_url', 'redirect_url',
           'https://sandbox.payflow.invalid/authenticate/' || id,
           'return_url', return_url) END,
       provider_reference = id
 WHERE id = 'pay_' || :run || lpad(:u::text, 14, '0')
   AND status = 'processing';
UPDATE idempotency_keys SET phase = 'provider_called'
 WHERE tenant_id = :tenant AND livemode = :livemode::boolean
   AND key = :run || '-' || :u
   AND payment_id = 'pay_' || :run || lpad(:u::text, 14, '0')
   AND phase = 'payment_created';
SELECT payflow_payment_json(p)::text FROM payments p
 WHERE id = 'pay_' || :run || lpad(:u::text, 14, '0');
SELECT encode(fingerprint, 'hex'), phase,
       coalesce(locked_until > now(), false), response_status,
       response_body, payment_id, request_id, object_id
  FROM idempotency_keys
 WHERE tenant_id = :tenant AND livemode = :livemode::boolean
   AND key = :run || '-' || :u;
COMMIT;
\endpipeline

\startpipeline
BEGIN;
SELECT set_config('payflow.tenant_id', :tenant, true),
       set_config('payflow.livemode', :mode, true),
       set_config('payflow.admin', 'off', true),
       set_config('payflow.actor_type', 'api_key', true),
       set_config('payflow.actor_id', :key_id, true),
       set_config('payflow.ip', :ip, true),
       set_config('payflow.request_id',
                  'req_' || :run || lpad(:u::text, 14, '0'), true);
UPDATE idempotency_keys SET phase = 'finished',
       response_status = 200::int, response_body = :body,
       locked_until = NULL
 WHERE tenant_id = :tenant AND livemode = :livemode::boolean
   AND key = :run || '-' || :u AND phase <> 'finished';
COMMIT;
\endpipeline
