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
-- (a secret sealed or wrapped again in the background is not a change)
CREATE FUNCTION provider_accounts_audit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    PERFORM payflow_audit_write(NEW.tenant_id, NEW.livemode,
        CASE WHEN TG_OP = 'INSERT' THEN 'provider_account.created'
             WHEN NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL
                 THEN 'provider_account.deleted'
             WHEN current_setting('payflow.resealing', true) = 'on'
                 THEN 'provider_account.secret_resealed'
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


-- The background sealing (sql/0023) takes the accounts' secrets too: their
-- key and webhook secret in the two slots of an endpoint's secret and
-- previous secret, told apart by kind.  A closed account has none left.
DROP FUNCTION payflow_secrets_due(text, int);

CREATE FUNCTION payflow_secrets_due(p_prefix text, p_limit int)
    RETURNS TABLE (id text, tenant_id text, livemode boolean, secret text,
                   previous_secret text, due bigint, kind text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    WITH due AS (
        SELECT e.id, e.tenant_id, e.livemode, e.secret, e.previous_secret,
               e.created_at, 'endpoint' AS kind
          FROM webhook_endpoints e
         WHERE NOT starts_with(e.secret, p_prefix)
            OR NOT starts_with(coalesce(e.previous_secret, p_prefix),
                               p_prefix)
        UNION ALL
        SELECT a.id, a.tenant_id, a.livemode, a.secret, a.webhook_secret,
               a.created_at, 'account'
          FROM provider_accounts a
         WHERE a.deleted_at IS NULL
           AND (NOT starts_with(a.secret, p_prefix)
                OR NOT starts_with(coalesce(a.webhook_secret, p_prefix),
                                   p_prefix))
    )
    SELECT d.id, d.tenant_id, d.livemode, d.secret, d.previous_secret,
           count(*) OVER (), d.kind
      FROM due d
     ORDER BY d.created_at
     LIMIT p_limit
$$;

REVOKE ALL ON FUNCTION payflow_secrets_due(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_secrets_due(text, int) TO :"app";

DROP FUNCTION payflow_secrets_store(text[], text[], text[], text[], text[]);

CREATE FUNCTION payflow_secrets_store(p_ids text[], p_old text[],
    p_new text[], p_old_previous text[], p_new_previous text[],
    p_kinds text[])
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    n  int;
    m  int;
BEGIN
    PERFORM set_config('payflow.resealing', 'on', true);

    UPDATE webhook_endpoints e
       SET secret = v.new, previous_secret = v.new_previous
      FROM unnest(p_ids, p_old, p_new, p_old_previous, p_new_previous,
                  p_kinds)
           AS v(id, old, new, old_previous, new_previous, kind)
     WHERE v.kind = 'endpoint' AND e.id = v.id AND e.secret = v.old
       AND e.previous_secret IS NOT DISTINCT FROM v.old_previous;

    GET DIAGNOSTICS n = ROW_COUNT;

    UPDATE provider_accounts a
       SET secret = v.new, webhook_secret = v.new_previous
      FROM unnest(p_ids, p_old, p_new, p_old_previous, p_new_previous,
                  p_kinds)
           AS v(id, old, new, old_previous, new_previous, kind)
     WHERE v.kind = 'account' AND a.id = v.id AND a.secret = v.old
       AND a.webhook_secret IS NOT DISTINCT FROM v.old_previous
       AND a.deleted_at IS NULL;

    GET DIAGNOSTICS m = ROW_COUNT;

    PERFORM set_config('payflow.resealing', 'off', true);

    RETURN n + m;
END
$$;

REVOKE ALL ON FUNCTION payflow_secrets_store(text[], text[], text[],
    text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_secrets_store(text[], text[], text[],
    text[], text[], text[]) TO :"app";
