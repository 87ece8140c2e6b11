-- Payments routed through a tenant's own provider accounts (issue 18).
--
-- A payment at a tenant's account names the account as its provider
-- ("pa_..."), so every later step (capture, cancel, refund, the
-- reconciler, the provider's webhooks) finds the same account.  Each
-- worker keeps a copy of a tenant's accounts, with their secrets opened,
-- as of a version; any change to provider_accounts moves the tenant's
-- version in its own statement, and workers check versions every second.
-- The database checks, whatever the worker's copy says, that a payment
-- names an account of its own tenant and mode that is open, and enabled
-- when the payment is made.

CREATE TABLE provider_account_versions (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id),
    version    bigint NOT NULL DEFAULT 0
);

-- read and moved only by the functions below (SECURITY DEFINER)
ALTER TABLE provider_account_versions ENABLE ROW LEVEL SECURITY;

CREATE FUNCTION provider_account_versions_bump() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE provider_account_versions SET version = version + 1;
        RETURN NULL;
    END IF;

    INSERT INTO provider_account_versions AS v (tenant_id, version)
    SELECT DISTINCT c.tenant_id, 1 FROM account_changed c
    ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1;

    RETURN NULL;
END
$$;

CREATE TRIGGER provider_accounts_version_insert
    AFTER INSERT ON provider_accounts
    REFERENCING NEW TABLE AS account_changed
    FOR EACH STATEMENT EXECUTE FUNCTION provider_account_versions_bump();
CREATE TRIGGER provider_accounts_version_update
    AFTER UPDATE ON provider_accounts
    REFERENCING OLD TABLE AS account_changed
    FOR EACH STATEMENT EXECUTE FUNCTION provider_account_versions_bump();
CREATE TRIGGER provider_accounts_version_moved
    AFTER UPDATE ON provider_accounts
    REFERENCING NEW TABLE AS account_changed
    FOR EACH STATEMENT EXECUTE FUNCTION provider_account_versions_bump();
CREATE TRIGGER provider_accounts_version_delete
    AFTER DELETE ON provider_accounts
    REFERENCING OLD TABLE AS account_changed
    FOR EACH STATEMENT EXECUTE FUNCTION provider_account_versions_bump();
CREATE TRIGGER provider_accounts_version_truncate
    AFTER TRUNCATE ON provider_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION provider_account_versions_bump();


-- at most 32 open accounts per tenant and mode: a worker copies them all
CREATE FUNCTION provider_accounts_limit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF (SELECT count(*) FROM provider_accounts
         WHERE tenant_id = NEW.tenant_id AND livemode = NEW.livemode
           AND deleted_at IS NULL) >= 32
    THEN
        RAISE EXCEPTION 'at most 32 provider accounts per tenant and mode'
            USING ERRCODE = 'PF030';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER provider_accounts_limit BEFORE INSERT ON provider_accounts
    FOR EACH ROW EXECUTE FUNCTION provider_accounts_limit();


-- What a worker copies: the accounts of one tenant and mode, or of the
-- tenant and mode of one account (a webhook or the reconciler knows only
-- the account), with the version they are as of.  One row with a NULL id
-- when there are none; none at all for an unknown account.
CREATE FUNCTION payflow_provider_accounts_snapshot(p_tenant text,
    p_livemode boolean, p_account text)
    RETURNS TABLE (tenant_id text, livemode boolean, version bigint,
                   id text, provider text, secret text, webhook_secret text,
                   base_url text, currencies text, fee_percent bigint,
                   fee_fixed bigint, enabled boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    WITH k AS (
        SELECT p_tenant AS tenant_id, p_livemode AS livemode
         WHERE p_account IS NULL
        UNION ALL
        SELECT a.tenant_id, a.livemode FROM provider_accounts a
         WHERE p_account IS NOT NULL AND a.id = p_account
    )
    SELECT k.tenant_id, k.livemode,
           coalesce((SELECT v.version FROM provider_account_versions v
                      WHERE v.tenant_id = k.tenant_id), 0),
           a.id, a.provider, a.secret, a.webhook_secret, a.base_url,
           array_to_string(a.currencies, ','),
           CASE WHEN jsonb_typeof(a.fees->'percent') = 'number'
                THEN (a.fees->>'percent')::numeric::bigint END,
           CASE WHEN jsonb_typeof(a.fees->'fixed') = 'number'
                THEN (a.fees->>'fixed')::numeric::bigint END,
           a.enabled
      FROM k
      LEFT JOIN LATERAL (
          SELECT * FROM provider_accounts a
           WHERE a.tenant_id = k.tenant_id AND a.livemode = k.livemode
             AND a.deleted_at IS NULL
           ORDER BY a.created_at, a.id
           LIMIT 32) a ON true
$$;

REVOKE EXECUTE ON FUNCTION payflow_provider_accounts_snapshot(text, boolean,
    text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_provider_accounts_snapshot(text, boolean,
    text) TO :"app";

-- The versions of the tenants a worker copies, for its refresh.
CREATE FUNCTION payflow_provider_account_versions(p_tenants text[])
    RETURNS TABLE (tenant_id text, version bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT t.id, coalesce(v.version, 0)
      FROM unnest(p_tenants) t(id)
      LEFT JOIN provider_account_versions v ON v.tenant_id = t.id
$$;

REVOKE EXECUTE ON FUNCTION payflow_provider_account_versions(text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_provider_account_versions(text[])
    TO :"app";


-- sql/0020's row check, but a payment's provider may be an account's id
CREATE OR REPLACE FUNCTION payflow_payment_ok(p_status text, p_amount bigint,
    p_capturable bigint, p_captured bigint, p_refunded bigint,
    p_provider text, p_routing text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN p_amount > 0
       AND p_capturable BETWEEN 0 AND p_amount
       AND p_captured BETWEEN 0 AND p_amount
       AND p_refunded BETWEEN 0 AND p_captured
       AND p_status IN ('pending', 'processing', 'requires_action',
                        'requires_capture', 'requires_review', 'succeeded',
                        'partially_refunded', 'refunded', 'failed',
                        'canceled')
       AND (p_status <> 'requires_capture'
            OR (p_capturable > 0 AND p_captured = 0))
       AND (p_status <> 'succeeded'
            OR (p_captured > 0 AND p_refunded = 0))
       AND (p_status <> 'partially_refunded'
            OR (p_refunded > 0 AND p_refunded < p_captured))
       AND (p_status <> 'refunded'
            OR (p_refunded > 0 AND p_refunded = p_captured))
       AND (p_status NOT IN ('pending', 'processing', 'requires_action',
                             'requires_review', 'failed', 'canceled')
            OR p_captured = 0)
       AND (p_status <> 'requires_review' OR p_capturable = 0)
       AND (p_provider ~ '^[a-z0-9_]{1,32}$'
            OR p_provider ~ '^pa_[0-9A-Za-z]{24}$')
       AND coalesce(length(p_routing) <= 300, true);
END
$$;


-- A payment at an account: the account is the payment's own tenant's, in
-- its mode, open and enabled when the payment is made or sent on to it
-- (a failover).  Whatever a
-- worker's copy says, a payment cannot reach another tenant's account.
CREATE FUNCTION payments_provider_account() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    PERFORM 1 FROM provider_accounts a
     WHERE a.id = NEW.provider AND a.tenant_id = NEW.tenant_id
       AND a.livemode = NEW.livemode AND a.deleted_at IS NULL
       AND a.enabled;

    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment % names provider account %, which is not '
            'an open account of its tenant and mode', NEW.id, NEW.provider
            USING ERRCODE = 'PF031';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER payments_provider_account BEFORE INSERT ON payments
    FOR EACH ROW WHEN (NEW.provider LIKE 'pa\_%')
    EXECUTE FUNCTION payments_provider_account();

CREATE TRIGGER payments_provider_account_moved
    BEFORE UPDATE OF provider ON payments
    FOR EACH ROW WHEN (NEW.provider LIKE 'pa\_%'
                       AND NEW.provider IS DISTINCT FROM OLD.provider)
    EXECUTE FUNCTION payments_provider_account();


-- a payment at an account clears through "provider:<account id>:clearing"
-- (an id has capitals)
CREATE OR REPLACE FUNCTION payflow_ledger_entry_ok(p_account text,
    p_currency text, p_amount bigint, p_direction text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN p_account ~ '^[a-z_]+(:[A-Za-z0-9_]+)*$'
       AND p_currency ~ '^[A-Z]{3}$'
       AND p_amount > 0
       AND p_direction IN ('debit', 'credit');
END
$$;


-- A refund of a payment at a closed account (its secrets destroyed) could
-- never be asked of the provider: refused before it is reserved (PF032).
CREATE FUNCTION refunds_provider_account() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    PERFORM 1 FROM payments p JOIN provider_accounts a ON a.id = p.provider
     WHERE p.id = NEW.payment_id AND a.deleted_at IS NOT NULL;

    IF FOUND THEN
        RAISE EXCEPTION 'payment % is at a closed provider account',
            NEW.payment_id USING ERRCODE = 'PF032';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER refunds_provider_account BEFORE INSERT ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_provider_account();
