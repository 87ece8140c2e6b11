-- pgbench: the database work of one POST /v1/payments with an
-- Idempotency-Key, sandbox provider, automatic capture (bench/payments).
--
-- The statements are those ngx_payflow_module/ngx_http_payflow_payments.c
-- prepares (payflow_pay_insert_keyed, _pay_outcome, _pay_finish,
-- _idem_get) and the RLS scope of ngx_http_payflow_keys.c
-- (payflow_scope), sent the way ngx_http_payflow_db_query() and pf_pg.c
-- send them: BEGIN, the scope, the statements, COMMIT, pipelined with one
-- Sync.  A keyed payment is one round trip: the key, the payment, its
-- ledger and the answer stored on the key commit together.
--
-- $n parameters become pgbench variables (-D, see bench/payments); the
-- ids the C code generates are built from a per-run prefix, the client
-- and a per-client counter: pay_<run><client, counter>, 24 characters.
-- Absent optional fields (description, customer, metadata, return_url,
-- failure code and message) are NULL parameters in C, literals here.
-- The envelope's head and tail around the payment (:head, :tail) are
-- C's own, cut from a real POST by bench/payments.

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
                      metadata, return_url, status)
SELECT 'pay_' || :run || lpad(:u::text, 14, '0'), :tenant,
       :livemode::boolean, :amount::bigint, :currency, :capture, :provider,
       NULL, NULL::jsonb, coalesce(NULL::jsonb, '{}'), NULL, 'processing'
  FROM k;
UPDATE payments SET status = :outcome,
       amount_captured = CASE WHEN :outcome = 'succeeded'
                              THEN amount ELSE 0 END,
       amount_capturable = CASE WHEN :outcome = 'requires_capture'
                                THEN amount ELSE 0 END,
       failure_code = NULL, failure_message = NULL,
       next_action = CASE WHEN NULL::text IS NOT NULL THEN
           jsonb_build_object('type', 'redirect_to_url', 'redirect_url',
                              NULL::text, 'return_url', return_url) END,
       provider_reference = coalesce(NULL, id)
 WHERE id = 'pay_' || :run || lpad(:u::text, 14, '0')
   AND status = 'processing';
UPDATE idempotency_keys SET phase = 'finished',
       response_status = 200, locked_until = NULL,
       response_body = :head || (SELECT payflow_payment_json(p)::text
                                   FROM payments p
                                  WHERE p.id = 'pay_' || :run
                                               || lpad(:u::text, 14, '0'))
                       || :tail
 WHERE tenant_id = :tenant AND livemode = :livemode::boolean
   AND key = :run || '-' || :u
   AND payment_id = 'pay_' || :run || lpad(:u::text, 14, '0')
   AND phase = 'payment_created'
RETURNING response_body;
SELECT encode(fingerprint, 'hex'), phase,
       coalesce(locked_until > now(), false), response_status,
       response_body, payment_id, request_id, object_id,
       coalesce(xmin = pg_current_xact_id_if_assigned()::xid, false)
  FROM idempotency_keys
 WHERE tenant_id = :tenant AND livemode = :livemode::boolean
   AND key = :run || '-' || :u;
COMMIT;
\endpipeline
