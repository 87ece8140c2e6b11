-- The fixed reference of bench/payments (bench/reference.sql): plain
-- tables holding the rows one payment writes, with the columns PayFlow's
-- own tables had when the reference was set (sql/0017), their primary
-- keys and the one index each needs to be read back (a tenant's list, a
-- payment's events, a tenant's entries).  No triggers, no row-level
-- security, no foreign keys, no constraints beyond the keys: the least
-- a database can do for the same logical work.  Never changed with
-- PayFlow's schema, so that a ratio to it means the same from run to run.

DROP SCHEMA IF EXISTS bench_reference CASCADE;
CREATE SCHEMA bench_reference;

CREATE TABLE bench_reference.idempotency_keys (
    tenant_id         text NOT NULL,
    livemode          boolean NOT NULL,
    key               text NOT NULL,
    fingerprint       bytea NOT NULL,
    method            text NOT NULL,
    path              text NOT NULL,
    phase             text NOT NULL,
    payment_id        text,
    response_status   int,
    response_body     text,
    request_id        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (tenant_id, livemode, key)
);

CREATE TABLE bench_reference.payments (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL,
    livemode            boolean NOT NULL,
    amount              bigint NOT NULL,
    currency            text NOT NULL,
    capture_method      text NOT NULL,
    status              text NOT NULL,
    amount_capturable   bigint NOT NULL,
    amount_captured     bigint NOT NULL,
    amount_refunded     bigint NOT NULL,
    provider            text NOT NULL,
    provider_reference  text,
    metadata            jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ON bench_reference.payments (tenant_id, livemode, created_at, id);

CREATE TABLE bench_reference.payment_events (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    payment_id      text NOT NULL,
    type            text NOT NULL,
    from_status     text,
    to_status       text NOT NULL,
    source          text NOT NULL,
    request_id      text,
    amount          bigint,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX ON bench_reference.payment_events (payment_id, created_at);

CREATE TABLE bench_reference.ledger_entries (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    account         text NOT NULL,
    currency        text NOT NULL,
    amount          bigint NOT NULL,
    direction       text NOT NULL,
    payment_id      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ON bench_reference.ledger_entries (tenant_id, livemode, created_at);

GRANT USAGE ON SCHEMA bench_reference TO payflow_app;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA bench_reference TO payflow_app;
