-- Provider accounts per tenant and mode (issue 18): a merchant connects
-- its own Stripe, Paystack or Flutterwave account.  The secret key and the
-- webhook secret are stored sealed by the worker (pf_seal, bound to
-- "provider_accounts", tenant, mode and id) and never shown again: the
-- account shows a hint ("sk_test_...4242").  The worker validates the key
-- with an authenticated call to the provider before the row is written.

CREATE TABLE provider_accounts (
    id              text PRIMARY KEY CHECK (id ~ '^pa_[0-9A-Za-z]{24}$'),
    tenant_id       text NOT NULL REFERENCES tenants (id),
    livemode        boolean NOT NULL,
    provider        text NOT NULL
                    CHECK (provider IN ('stripe', 'paystack', 'flutterwave')),
    description     text CHECK (length(description) <= 500),
    secret          text NOT NULL CHECK (secret ~ '^pf1\.'),
    secret_hint     text NOT NULL CHECK (length(secret_hint) <= 40),
    webhook_secret  text CHECK (webhook_secret ~ '^pf1\.'),
    base_url        text CHECK (length(base_url) <= 2048
                                AND base_url ~ '^https?://[^/?#]+'),
    currencies      text[] NOT NULL DEFAULT '{}'
                    CHECK (cardinality(currencies) <= 50),
    fees            jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(fees) = 'object'),
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);

CREATE INDEX provider_accounts_tenant ON provider_accounts
    (tenant_id, livemode, created_at) WHERE deleted_at IS NULL;

ALTER TABLE provider_accounts ENABLE ROW LEVEL SECURITY;

CREATE POLICY provider_accounts_scope ON provider_accounts
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT ON provider_accounts TO :"app";
GRANT UPDATE (description, currencies, fees, enabled, updated_at,
              deleted_at, secret, webhook_secret)
    ON provider_accounts TO :"app";


-- what an account shows: never a secret, only its hint
CREATE FUNCTION payflow_provider_account_json(a provider_accounts)
    RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', a.id,
        'object', 'provider_account',
        'livemode', a.livemode,
        'provider', a.provider,
        'description', a.description,
        'secret_key', a.secret_hint,
        'webhook_secret', a.webhook_secret IS NOT NULL,
        'base_url', a.base_url,
        'currencies', to_jsonb(ARRAY(SELECT lower(c)
                                       FROM unnest(a.currencies) c)),
        'fees', a.fees,
        'enabled', a.enabled,
        'webhook_url', '/webhooks/' || a.provider || '/' || a.id,
        'created', floor(extract(epoch FROM a.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_provider_account_json(provider_accounts)
    TO :"app";

CREATE FUNCTION payflow_provider_account_create(p_id text, p_provider text,
    p_description text, p_secret text, p_hint text, p_webhook_secret text,
    p_base_url text, p_currencies text, p_fees text)
    RETURNS text
    LANGUAGE sql
    AS $$
    INSERT INTO provider_accounts (id, tenant_id, livemode, provider,
                                   description, secret, secret_hint,
                                   webhook_secret, base_url, currencies,
                                   fees)
    VALUES (p_id, payflow_tenant(), payflow_livemode(), p_provider,
            p_description, p_secret, p_hint, p_webhook_secret, p_base_url,
            ARRAY(SELECT upper(jsonb_array_elements_text(
                      coalesce(p_currencies, '[]')::jsonb))),
            coalesce(p_fees, '{}')::jsonb)
    RETURNING payflow_provider_account_json(provider_accounts)::text
$$;

GRANT EXECUTE ON FUNCTION payflow_provider_account_create(text, text, text,
    text, text, text, text, text, text) TO :"app";

CREATE FUNCTION payflow_provider_account_update(p_id text,
    p_description text, p_currencies text, p_fees text, p_enabled boolean)
    RETURNS text
    LANGUAGE sql
    AS $$
    UPDATE provider_accounts a SET
           description = coalesce(p_description, a.description),
           currencies = CASE WHEN p_currencies IS NULL THEN a.currencies
                        ELSE ARRAY(SELECT upper(jsonb_array_elements_text(
                                 p_currencies::jsonb))) END,
           fees = coalesce(p_fees::jsonb, a.fees),
           enabled = coalesce(p_enabled, a.enabled),
           updated_at = now()
     WHERE a.id = p_id AND a.tenant_id = payflow_tenant()
       AND a.livemode = payflow_livemode() AND a.deleted_at IS NULL
    RETURNING payflow_provider_account_json(a)::text
$$;

GRANT EXECUTE ON FUNCTION payflow_provider_account_update(text, text, text,
    text, boolean) TO :"app";

-- DELETE: the account is closed (kept for the payments made through it),
-- disabled and its secrets destroyed
CREATE FUNCTION payflow_provider_account_delete(p_id text)
    RETURNS text
    LANGUAGE sql
    AS $$
    UPDATE provider_accounts a SET
           enabled = false, deleted_at = now(), updated_at = now(),
           secret = 'pf1.deleted', webhook_secret = NULL
     WHERE a.id = p_id AND a.tenant_id = payflow_tenant()
       AND a.livemode = payflow_livemode() AND a.deleted_at IS NULL
    RETURNING (payflow_provider_account_json(a)
               || '{"deleted": true}')::text
$$;

GRANT EXECUTE ON FUNCTION payflow_provider_account_delete(text) TO :"app";

CREATE FUNCTION payflow_provider_account_get(p_id text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_provider_account_json(a)::text FROM provider_accounts a
     WHERE a.id = p_id AND a.tenant_id = payflow_tenant()
       AND a.livemode = payflow_livemode() AND a.deleted_at IS NULL
$$;

GRANT EXECUTE ON FUNCTION payflow_provider_account_get(text) TO :"app";

CREATE FUNCTION payflow_provider_account_list(p_after text, p_before text,
    p_limit int)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('provider_accounts', 'payflow_provider_account_json',
        't.deleted_at IS NULL', 't.created_at, t.id',
        coalesce(p_after, p_before), p_before IS NOT NULL, p_limit,
        '{}'::text[])
$$;

GRANT EXECUTE ON FUNCTION payflow_provider_account_list(text, text, int)
    TO :"app";

-- audited like endpoints: who connected, changed or closed which account
CREATE FUNCTION provider_accounts_audit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    PERFORM payflow_audit_write(NEW.tenant_id, NEW.livemode,
        CASE WHEN TG_OP = 'INSERT' THEN 'provider_account.created'
             WHEN NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL
                 THEN 'provider_account.deleted'
             ELSE 'provider_account.updated' END,
        'provider_account', NEW.id,
        jsonb_build_object('provider', NEW.provider,
                           'enabled', NEW.enabled));
    RETURN NULL;
END
$$;

CREATE TRIGGER provider_accounts_audit
    AFTER INSERT OR UPDATE ON provider_accounts
    FOR EACH ROW EXECUTE FUNCTION provider_accounts_audit();
