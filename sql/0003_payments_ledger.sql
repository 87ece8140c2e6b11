-- Payments, refunds, their event log, idempotency keys and the ledger.
--
-- The money invariants live here, not only in C:
--   * a payment only moves along the state machine (DESIGN.md section 4),
--     and its amounts only grow, within their bounds;
--   * every change of a payment or refund appends its event, from a
--     trigger, in the same transaction;
--   * refunds never exceed what was captured, checked under the payment's
--     row lock, so concurrent refunds cannot over-refund;
--   * captures and refunds write balanced double-entry ledger rows from
--     triggers; entries are append-only and hash-chained per tenant and
--     mode, and the chain is kept by the schema owner, not the app role.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

-- <prefix> + 24 uniformly random base62 characters, like the C ids
CREATE FUNCTION payflow_id(p_prefix text) RETURNS text
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    alphabet  constant text :=
        '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    bytes     bytea;
    result    text := '';
    b         int;
BEGIN
    WHILE length(result) < 24 LOOP
        bytes := gen_random_bytes(32);
        FOR i IN 0 .. 31 LOOP
            b := get_byte(bytes, i);
            IF b < 248 AND length(result) < 24 THEN
                result := result || substr(alphabet, b % 62 + 1, 1);
            END IF;
        END LOOP;
    END LOOP;
    RETURN p_prefix || result;
END
$$;

GRANT EXECUTE ON FUNCTION payflow_id(text) TO :"app";


-- the state machine, the one place SQL knows it
CREATE FUNCTION payflow_transition_allowed(p_from text, p_to text)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT p_from = p_to OR (p_from, p_to) IN (
        ('pending', 'processing'), ('pending', 'canceled'),
        ('processing', 'succeeded'), ('processing', 'failed'),
        ('processing', 'requires_action'), ('processing', 'requires_capture'),
        ('requires_action', 'processing'), ('requires_action', 'succeeded'),
        ('requires_action', 'failed'), ('requires_action', 'canceled'),
        ('requires_capture', 'succeeded'), ('requires_capture', 'canceled'),
        ('succeeded', 'partially_refunded'), ('succeeded', 'refunded'),
        ('partially_refunded', 'refunded'))
$$;

GRANT EXECUTE ON FUNCTION payflow_transition_allowed(text, text) TO :"app";


CREATE TABLE payments (
    id                  text PRIMARY KEY CHECK (id ~ '^pay_[0-9A-Za-z]{24}$'),
    tenant_id           text NOT NULL REFERENCES tenants (id),
    livemode            boolean NOT NULL,
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    capture_method      text NOT NULL DEFAULT 'automatic'
                        CHECK (capture_method IN ('automatic', 'manual')),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'processing',
                               'requires_action', 'requires_capture',
                               'succeeded', 'partially_refunded', 'refunded',
                               'failed', 'canceled')),
    amount_capturable   bigint NOT NULL DEFAULT 0,
    amount_captured     bigint NOT NULL DEFAULT 0,
    amount_refunded     bigint NOT NULL DEFAULT 0,
    provider            text NOT NULL CHECK (provider ~ '^[a-z0-9_]{1,32}$'),
    provider_reference  text,
    description         text CHECK (length(description) <= 1000),
    customer            jsonb,
    metadata            jsonb NOT NULL DEFAULT '{}',
    return_url          text,
    next_action         jsonb,
    failure_code        text,
    failure_message     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),

    UNIQUE (tenant_id, id),
    CHECK (amount_capturable BETWEEN 0 AND amount),
    CHECK (amount_captured BETWEEN 0 AND amount),
    CHECK (amount_refunded BETWEEN 0 AND amount_captured),
    CHECK (status <> 'requires_capture'
           OR (amount_capturable > 0 AND amount_captured = 0)),
    CHECK (status <> 'succeeded'
           OR (amount_captured > 0 AND amount_refunded = 0)),
    CHECK (status <> 'partially_refunded'
           OR (amount_refunded > 0 AND amount_refunded < amount_captured)),
    CHECK (status <> 'refunded'
           OR (amount_refunded > 0 AND amount_refunded = amount_captured)),
    CHECK (status NOT IN ('pending', 'processing', 'requires_action',
                          'failed', 'canceled')
           OR amount_captured = 0)
);

CREATE INDEX payments_list ON payments (tenant_id, livemode, created_at, id);
CREATE INDEX payments_status ON payments (tenant_id, livemode, status);

ALTER TABLE payments ENABLE ROW LEVEL SECURITY;

CREATE POLICY payments_scope ON payments
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT ON payments TO :"app";
GRANT UPDATE (status, amount_capturable, amount_captured, amount_refunded,
              provider_reference, next_action, failure_code,
              failure_message, updated_at)
    ON payments TO :"app";


-- what a payment is never allowed to do, whoever asks
CREATE FUNCTION payments_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.livemode <> OLD.livemode OR NEW.amount <> OLD.amount
       OR NEW.currency <> OLD.currency OR NEW.provider <> OLD.provider
       OR NEW.capture_method <> OLD.capture_method
    THEN
        RAISE EXCEPTION 'payment % cannot change its identity or amount',
            OLD.id USING ERRCODE = 'PF003';
    END IF;

    IF NOT payflow_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'illegal payment transition % -> % for %',
            OLD.status, NEW.status, OLD.id USING ERRCODE = 'PF001';
    END IF;

    IF NEW.amount_captured < OLD.amount_captured
       OR NEW.amount_refunded < OLD.amount_refunded
    THEN
        RAISE EXCEPTION 'payment % amounts only grow', OLD.id
            USING ERRCODE = 'PF003';
    END IF;

    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER payments_guard BEFORE UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_guard();

CREATE FUNCTION payments_insert_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status NOT IN ('pending', 'processing') THEN
        RAISE EXCEPTION 'a payment starts pending or processing, not %',
            NEW.status USING ERRCODE = 'PF001';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER payments_insert_guard BEFORE INSERT ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_insert_guard();


CREATE TABLE refunds (
    id              text PRIMARY KEY CHECK (id ~ '^re_[0-9A-Za-z]{24}$'),
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    payment_id      text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason          text CHECK (reason IN ('duplicate', 'fraudulent',
                                           'requested_by_customer')),
    provider_reference  text,
    failure_code    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),

    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);

CREATE INDEX refunds_payment ON refunds (payment_id, created_at, id);
CREATE INDEX refunds_list ON refunds (tenant_id, livemode, created_at, id);

ALTER TABLE refunds ENABLE ROW LEVEL SECURITY;

CREATE POLICY refunds_scope ON refunds
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT ON refunds TO :"app";
GRANT UPDATE (status, provider_reference, failure_code, updated_at)
    ON refunds TO :"app";


-- The payment's row lock serialises refunds of one payment: a new refund
-- must fit in what was captured minus every refund not failed.
CREATE FUNCTION refunds_reserve() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    p         payments%ROWTYPE;
    reserved  bigint;
BEGIN
    SELECT * INTO p FROM payments
     WHERE id = NEW.payment_id AND tenant_id = NEW.tenant_id
       FOR UPDATE;

    IF NOT FOUND THEN
        RAISE EXCEPTION 'no payment %', NEW.payment_id
            USING ERRCODE = 'PF004';
    END IF;

    IF p.livemode <> NEW.livemode OR p.currency <> NEW.currency THEN
        RAISE EXCEPTION 'refund % does not match payment %', NEW.id, p.id
            USING ERRCODE = 'PF003';
    END IF;

    IF p.status NOT IN ('succeeded', 'partially_refunded') THEN
        RAISE EXCEPTION 'payment % is %, not refundable', p.id, p.status
            USING ERRCODE = 'PF005';
    END IF;

    SELECT coalesce(sum(amount), 0) INTO reserved FROM refunds
     WHERE payment_id = p.id AND status <> 'failed';

    IF reserved + NEW.amount > p.amount_captured THEN
        RAISE EXCEPTION 'refund of % exceeds what is left of payment % (%)',
            NEW.amount, p.id, p.amount_captured - reserved
            USING ERRCODE = 'PF002';
    END IF;

    IF NEW.status <> 'pending' THEN
        RAISE EXCEPTION 'a refund starts pending' USING ERRCODE = 'PF001';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER refunds_reserve BEFORE INSERT ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_reserve();

CREATE FUNCTION refunds_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.payment_id <> OLD.payment_id
       OR NEW.amount <> OLD.amount OR NEW.tenant_id <> OLD.tenant_id
    THEN
        RAISE EXCEPTION 'refund % cannot change its identity or amount',
            OLD.id USING ERRCODE = 'PF003';
    END IF;

    IF OLD.status <> NEW.status AND OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'illegal refund transition % -> % for %',
            OLD.status, NEW.status, OLD.id USING ERRCODE = 'PF001';
    END IF;

    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER refunds_guard BEFORE UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_guard();


-- The append-only log of what happened to payments and refunds.
CREATE TABLE payment_events (
    id              text PRIMARY KEY DEFAULT payflow_id('evt_'),
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    payment_id      text NOT NULL,
    refund_id       text,
    type            text NOT NULL,
    from_status     text,
    to_status       text NOT NULL,
    source          text NOT NULL CHECK (source IN ('api', 'webhook',
                                                     'system', 'admin')),
    request_id      text,
    amount          bigint,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),

    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);

CREATE INDEX payment_events_payment ON payment_events (payment_id, created_at);

ALTER TABLE payment_events ENABLE ROW LEVEL SECURITY;

CREATE POLICY payment_events_scope ON payment_events
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT ON payment_events TO :"app";

CREATE FUNCTION payflow_event_source() RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE current_setting('payflow.source', true)
           WHEN 'webhook' THEN 'webhook' WHEN 'system' THEN 'system'
           ELSE CASE WHEN payflow_is_admin() THEN 'admin' ELSE 'api' END
           END
$$;

GRANT EXECUTE ON FUNCTION payflow_event_source() TO :"app";

CREATE FUNCTION payments_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_type  text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_type := 'payment.created';
    ELSIF NEW.status = OLD.status THEN
        RETURN NULL;
    ELSIF OLD.status = 'requires_capture' AND NEW.status = 'succeeded' THEN
        v_type := 'payment.captured';
    ELSE
        v_type := 'payment.' || NEW.status;
    END IF;

    INSERT INTO payment_events (tenant_id, livemode, payment_id, type,
                                from_status, to_status, source, request_id,
                                amount)
    VALUES (NEW.tenant_id, NEW.livemode, NEW.id, v_type,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            payflow_event_source(),
            nullif(current_setting('payflow.request_id', true), ''),
            NEW.amount);

    RETURN NULL;
END
$$;

CREATE TRIGGER payments_event AFTER INSERT OR UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_event();

CREATE FUNCTION refunds_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = OLD.status THEN
        RETURN NULL;
    END IF;

    INSERT INTO payment_events (tenant_id, livemode, payment_id, refund_id,
                                type, from_status, to_status, source,
                                request_id, amount)
    VALUES (NEW.tenant_id, NEW.livemode, NEW.payment_id, NEW.id,
            CASE WHEN TG_OP = 'INSERT' THEN 'refund.created'
                 ELSE 'refund.' || NEW.status END,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            payflow_event_source(),
            nullif(current_setting('payflow.request_id', true), ''),
            NEW.amount);

    RETURN NULL;
END
$$;

CREATE TRIGGER refunds_event AFTER INSERT OR UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_event();

-- nothing in the event log is ever changed
CREATE FUNCTION payflow_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER payment_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON payment_events
    FOR EACH STATEMENT EXECUTE FUNCTION payflow_append_only();


-- Idempotency keys (DESIGN.md section 5): one row per tenant, mode and
-- key, inserted locked; its phase only moves forward.
CREATE TABLE idempotency_keys (
    tenant_id         text NOT NULL REFERENCES tenants (id),
    livemode          boolean NOT NULL,
    key               text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint       bytea NOT NULL CHECK (length(fingerprint) = 32),
    method            text NOT NULL,
    path              text NOT NULL,
    phase             text NOT NULL DEFAULT 'started'
                      CHECK (phase IN ('started', 'payment_created',
                                       'provider_called', 'finished')),
    locked_until      timestamptz,
    payment_id        text,
    response_status   int,
    response_body     text,
    response_headers  jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL
                      DEFAULT now() + interval '24 hours',

    PRIMARY KEY (tenant_id, livemode, key),
    CHECK ((phase = 'finished') = (response_status IS NOT NULL))
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
CREATE INDEX idempotency_keys_stuck ON idempotency_keys (locked_until)
    WHERE phase <> 'finished';

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;

CREATE POLICY idempotency_keys_scope ON idempotency_keys
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT ON idempotency_keys TO :"app";
GRANT UPDATE (phase, locked_until, payment_id, response_status,
              response_body, response_headers)
    ON idempotency_keys TO :"app";

CREATE FUNCTION idempotency_keys_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    phases constant text[] :=
        ARRAY['started', 'payment_created', 'provider_called', 'finished'];
BEGIN
    IF array_position(phases, NEW.phase) < array_position(phases, OLD.phase)
       OR NEW.fingerprint <> OLD.fingerprint
       OR (OLD.phase = 'finished' AND row(NEW.*) IS DISTINCT FROM row(OLD.*))
    THEN
        RAISE EXCEPTION 'idempotency key phases only move forward'
            USING ERRCODE = 'PF006';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER idempotency_keys_guard BEFORE UPDATE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION idempotency_keys_guard();

-- the purge job runs without a tenant: only expired keys, only through this
CREATE FUNCTION payflow_purge_idempotency_keys(p_limit int) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM idempotency_keys
     WHERE ctid IN (SELECT ctid FROM idempotency_keys
                     WHERE expires_at < now()
                     LIMIT p_limit FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION payflow_purge_idempotency_keys(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_purge_idempotency_keys(int) TO :"app";


-- The ledger (DESIGN.md section 6).  A transaction groups entries that
-- balance per currency; entries are append-only and chained:
-- hash = sha256(prev_hash || canonical entry), per tenant and mode.

CREATE TABLE ledger_transactions (
    id              text PRIMARY KEY DEFAULT payflow_id('ltx_'),
    tenant_id       text NOT NULL REFERENCES tenants (id),
    livemode        boolean NOT NULL,
    payment_id      text,
    refund_id       text,
    description     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    id              text PRIMARY KEY DEFAULT payflow_id('le_'),
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    transaction_id  text NOT NULL REFERENCES ledger_transactions (id),
    seq             bigint NOT NULL,
    account         text NOT NULL
                    CHECK (account ~ '^[a-z_]+(:[a-z0-9_]+)*$'),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount          bigint NOT NULL CHECK (amount > 0),
    direction       text NOT NULL CHECK (direction IN ('debit', 'credit')),
    payment_id      text,
    refund_id       text,
    prev_hash       bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash            bytea NOT NULL CHECK (length(hash) = 32),
    created_at      timestamptz NOT NULL DEFAULT now(),

    UNIQUE (tenant_id, livemode, seq)
);

CREATE INDEX ledger_entries_payment ON ledger_entries (payment_id, seq);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);

-- the head of each chain; only the owner's trigger touches it
CREATE TABLE ledger_heads (
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    seq             bigint NOT NULL DEFAULT 0,
    hash            bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000',

    PRIMARY KEY (tenant_id, livemode)
);

ALTER TABLE ledger_transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_entries ENABLE ROW LEVEL SECURITY;

CREATE POLICY ledger_transactions_scope ON ledger_transactions
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

CREATE POLICY ledger_entries_scope ON ledger_entries
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

-- insert and read, nothing else; the heads not at all
GRANT SELECT, INSERT ON ledger_transactions, ledger_entries TO :"app";

CREATE TRIGGER ledger_transactions_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION payflow_append_only();

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION payflow_append_only();


CREATE FUNCTION payflow_ledger_canonical(e ledger_entries) RETURNS bytea
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT convert_to(concat_ws('|', e.tenant_id, e.livemode::text, e.seq,
                                e.transaction_id, e.account, e.currency,
                                e.amount, e.direction,
                                coalesce(e.payment_id, ''),
                                coalesce(e.refund_id, ''),
                                (extract(epoch FROM e.created_at)
                                 * 1000000)::bigint),
                      'UTF8')
$$;

-- sequence number and hash of a new entry, under the chain head's lock
CREATE FUNCTION ledger_entries_chain() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    h  ledger_heads%ROWTYPE;
BEGIN
    INSERT INTO ledger_heads (tenant_id, livemode)
    VALUES (NEW.tenant_id, NEW.livemode)
    ON CONFLICT DO NOTHING;

    SELECT * INTO h FROM ledger_heads
     WHERE tenant_id = NEW.tenant_id AND livemode = NEW.livemode
       FOR UPDATE;

    NEW.seq := h.seq + 1;
    NEW.prev_hash := h.hash;
    NEW.created_at := now();
    NEW.hash := sha256(NEW.prev_hash || payflow_ledger_canonical(NEW));

    UPDATE ledger_heads SET seq = NEW.seq, hash = NEW.hash
     WHERE tenant_id = NEW.tenant_id AND livemode = NEW.livemode;

    RETURN NEW;
END
$$;

CREATE TRIGGER ledger_entries_chain BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_chain();

-- at commit: every transaction touched balances, per currency
CREATE FUNCTION ledger_entries_balanced() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    bad  record;
BEGIN
    SELECT currency, sum(CASE direction WHEN 'debit' THEN amount
                                        ELSE -amount END) AS net
      INTO bad
      FROM ledger_entries
     WHERE transaction_id = NEW.transaction_id
     GROUP BY currency
    HAVING sum(CASE direction WHEN 'debit' THEN amount ELSE -amount END) <> 0
     LIMIT 1;

    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance in % (%)',
            NEW.transaction_id, bad.currency, bad.net
            USING ERRCODE = 'PF007';
    END IF;

    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_balanced();


-- one balanced pair: debit one account, credit another
CREATE FUNCTION payflow_ledger_post(p_tenant text, p_livemode boolean,
    p_payment text, p_refund text, p_description text, p_debit text,
    p_credit text, p_currency text, p_amount bigint)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    tx  text;
BEGIN
    INSERT INTO ledger_transactions (tenant_id, livemode, payment_id,
                                     refund_id, description)
    VALUES (p_tenant, p_livemode, p_payment, p_refund, p_description)
    RETURNING id INTO tx;

    INSERT INTO ledger_entries (tenant_id, livemode, transaction_id,
                                account, currency, amount, direction,
                                payment_id, refund_id, seq, prev_hash, hash)
    VALUES (p_tenant, p_livemode, tx, p_debit, p_currency, p_amount,
            'debit', p_payment, p_refund, 0, '\x00'::bytea, '\x00'::bytea),
           (p_tenant, p_livemode, tx, p_credit, p_currency, p_amount,
            'credit', p_payment, p_refund, 0, '\x00'::bytea, '\x00'::bytea);
END
$$;

-- (the chain trigger replaces seq, prev_hash and hash; the placeholders
-- satisfy NOT NULL only until it runs)

GRANT EXECUTE ON FUNCTION payflow_ledger_post(text, boolean, text, text,
    text, text, text, text, bigint) TO :"app";

-- money captured at the provider is owed to the merchant
CREATE FUNCTION payments_ledger() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    delta  bigint;
BEGIN
    delta := NEW.amount_captured
             - CASE WHEN TG_OP = 'UPDATE' THEN OLD.amount_captured ELSE 0 END;

    IF delta > 0 THEN
        PERFORM payflow_ledger_post(NEW.tenant_id, NEW.livemode, NEW.id,
                    NULL, 'capture',
                    'provider:' || NEW.provider || ':clearing',
                    'merchant:payable', NEW.currency, delta);
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER payments_ledger AFTER INSERT OR UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_ledger();

-- a refund that succeeds moves the payment on and posts the way back
CREATE FUNCTION refunds_succeeded() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    p  payments%ROWTYPE;
BEGIN
    IF NEW.status <> 'succeeded' OR OLD.status = 'succeeded' THEN
        RETURN NULL;
    END IF;

    UPDATE payments
       SET amount_refunded = amount_refunded + NEW.amount,
           status = CASE WHEN amount_refunded + NEW.amount = amount_captured
                         THEN 'refunded' ELSE 'partially_refunded' END
     WHERE id = NEW.payment_id AND tenant_id = NEW.tenant_id
    RETURNING * INTO p;

    PERFORM payflow_ledger_post(NEW.tenant_id, NEW.livemode, NEW.payment_id,
                NEW.id, 'refund', 'merchant:payable',
                'provider:' || p.provider || ':clearing', NEW.currency,
                NEW.amount);

    RETURN NULL;
END
$$;

CREATE TRIGGER refunds_succeeded AFTER UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_succeeded();


-- Recomputes a chain: the first sequence number that does not verify, or
-- NULL when every entry (and the head) does.
CREATE FUNCTION payflow_ledger_verify(p_tenant text, p_livemode boolean)
    RETURNS TABLE (entries bigint, broken_seq bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    e     ledger_entries%ROWTYPE;
    prev  bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    n     bigint := 0;
    h     ledger_heads%ROWTYPE;
BEGIN
    entries := 0;
    broken_seq := NULL;

    FOR e IN SELECT * FROM ledger_entries
              WHERE tenant_id = p_tenant AND livemode = p_livemode
              ORDER BY seq
    LOOP
        n := n + 1;

        IF e.seq <> n OR e.prev_hash <> prev
           OR e.hash <> sha256(prev || payflow_ledger_canonical(e))
        THEN
            entries := n;
            broken_seq := n;
            RETURN NEXT;
            RETURN;
        END IF;

        prev := e.hash;
    END LOOP;

    SELECT * INTO h FROM ledger_heads
     WHERE tenant_id = p_tenant AND livemode = p_livemode;

    IF FOUND AND (h.seq <> n OR h.hash <> prev) THEN
        broken_seq := n + 1;
    END IF;

    entries := n;
    RETURN NEXT;
END
$$;

REVOKE ALL ON FUNCTION payflow_ledger_verify(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_ledger_verify(text, boolean) TO :"app";
