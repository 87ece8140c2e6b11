-- pgbench: the database work of GET /v1/payments/{id} (bench/payments),
-- as ngx_http_payflow_read_one() sends it through
-- ngx_http_payflow_db_query(): the RLS scope of the key's tenant
-- (payflow_scope) and payflow_pay_get, pipelined with one Sync: one round
-- trip.  Variables as for bench/payments.sql; :payment is the payment
-- read.

\startpipeline
SELECT set_config('payflow.tenant_id', :tenant, true),
       set_config('payflow.livemode', :mode, true),
       set_config('payflow.admin', 'off', true),
       set_config('payflow.actor_type', 'api_key', true),
       set_config('payflow.actor_id', :key_id, true),
       set_config('payflow.ip', :ip, true),
       set_config('payflow.request_id', 'req_' || :run, true);
SELECT payflow_payment_json(p)::text FROM payments p WHERE id = :payment;
\endpipeline
