-- pgbench: the database work of one POST /v1/payments with an
-- Idempotency-Key, sandbox provider, automatic capture (bench/payments).
--
-- The statements are those ngx_payflow_module/ngx_http_payflow_payments.c
-- sends (payflow_pay_create: the one call of sql/0018 that writes the key
-- with its answer, the payment in its outcome, its events and ledger) and
-- the RLS scope of ngx_http_payflow_keys.c (payflow_scope), sent the way
-- ngx_http_payflow_db_query() and pf_pg.c send them: BEGIN, the scope, the
-- call, COMMIT, pipelined with one Sync: one round trip.
--
-- $n parameters become pgbench variables (-D, see bench/payments); the
-- ids the C code generates are built from a per-run prefix, the client
-- and a per-client counter: pay_<run><client, counter>, 24 characters.
-- Absent optional fields (description, customer, metadata, return_url,
-- payment method, routing, failure code and message, redirect, provider
-- reference) are NULL parameters in C, literals here.  The envelope's
-- head and tail around the payment are C's own, cut from a real POST by
-- bench/payments.

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
SELECT fingerprint, phase, locked, response_status, response_body,
       payment_id, request_id, object_id, mine, payment, decision, copied
  FROM payflow_payment_create('pay_' || :run || lpad(:u::text, 14, '0'),
       :amount::bigint, :currency, :capture, :provider, NULL, NULL::jsonb,
       NULL::jsonb, NULL, NULL, NULL, :outcome, NULL, NULL, NULL, NULL,
       :run || '-' || :u, :fp, :head, :tail, 200, NULL::jsonb);
COMMIT;
\endpipeline
