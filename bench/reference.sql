-- pgbench: the fixed reference for POST /v1/payments (bench/payments).
--
-- The logical work of one sandbox payment with an Idempotency-Key and
-- automatic capture, as ONE plain statement on the plain tables of
-- bench/reference-schema.sql: the key row with its stored answer, the
-- payment row, two payment events (created, succeeded) and two ledger
-- entries (clearing debit, payable credit).  No triggers, no row-level
-- security, no transaction block: what the database must do at least,
-- so that PayFlow's ratio to it shows what PayFlow's own SQL costs.
--
-- The accounts' colons are written \x3a: pgbench would take a colon
-- and a word for one of its variables even inside a string literal.
--
-- Ids are built from a per-run prefix, the client and a counter (as
-- bench/payments.sql does); the answer stored is one of the size PayFlow
-- stores.

\set seq :seq + 1
\set u :client_id * 10000000000 + :seq

WITH p AS (
    INSERT INTO bench_reference.payments (id, tenant_id, livemode, amount,
        currency, capture_method, status, amount_capturable,
        amount_captured, amount_refunded, provider, provider_reference,
        metadata)
    VALUES ('pay_' || :run::text || lpad(:u::bigint::text, 14, '0'), :tenant::text, false,
        4200, 'USD', 'automatic', 'succeeded', 0, 4200, 0, 'sandbox',
        'pay_' || :run::text || lpad(:u::bigint::text, 14, '0'), '{}')
    RETURNING id, tenant_id, livemode, amount, currency
), e AS (
    INSERT INTO bench_reference.payment_events (id, tenant_id, livemode,
        payment_id, type, from_status, to_status, source, request_id,
        amount)
    SELECT 'evt_' || :run::text || s.n || lpad(:u::bigint::text, 14, '0'), p.tenant_id,
           p.livemode, p.id, s.type, s.from_status, s.to_status, 'api',
           'req_' || :run::text || lpad(:u::bigint::text, 14, '0'), p.amount
      FROM p, (VALUES ('1', 'payment.created', NULL, 'processing'),
                      ('2', 'payment.succeeded', 'processing',
                       'succeeded')) AS s(n, type, from_status, to_status)
), l AS (
    INSERT INTO bench_reference.ledger_entries (id, tenant_id, livemode,
        account, currency, amount, direction, payment_id)
    SELECT 'le_' || :run::text || s.n || lpad(:u::bigint::text, 15, '0'), p.tenant_id,
           p.livemode, s.account, p.currency, p.amount, s.direction, p.id
      FROM p, (VALUES ('1', E'provider\x3asandbox\x3aclearing', 'debit'),
                      ('2', E'merchant\x3apayable', 'credit'))
           AS s(n, account, direction)
)
INSERT INTO bench_reference.idempotency_keys (tenant_id, livemode, key,
    fingerprint, method, path, phase, payment_id, response_status,
    response_body, request_id)
SELECT p.tenant_id, p.livemode, :run::text || '-' || :u::bigint::text, decode(:fp::text, 'hex'),
       'POST', '/v1/payments', 'finished', p.id, 200, :body::text,
       'req_' || :run::text || lpad(:u::bigint::text, 14, '0')
  FROM p;
