-- pgbench: the database work of one verified webhook (bench/webhooks):
-- the statement ngx_payflow_webhook/ngx_http_payflow_webhook_module.c
-- prepares (payflow_webhook_receive), with the values the Paystack
-- adapter reads from the same charge.success body, one statement per
-- transaction as the C code sends it.  Each transaction is a new event
-- for its own payment: client c takes payments c * :per + 1, + 2, ...
-- (made by bench/webhooks), and the event id follows.

\set seq :seq + 1
\set k :client_id * :per + :seq
\set e :txn + :k

SELECT id, result, payment_id, refund_id, duplicate
  FROM payflow_webhook_receive('paystack', false, 'charge.success:' || :e,
       'charge.success', :payload, 'payment',
       'pay_' || :prefix || lpad(:k::text, 24 - length(:prefix), '0'),
       NULL,
       'pay_' || :prefix || lpad(:k::text, 24 - length(:prefix), '0'),
       'succeeded', NULL, NULL, NULL, 4200, 'NGN',
       'req_pgbench', false);
