-- Tenants, API keys and the audit log.
--
-- Tenant isolation is enforced here, not only in C: every tenant-owned
-- table has row-level security scoped by two transaction-local settings
-- that nginx sets at the start of each transaction:
--
--   payflow.tenant_id   the caller's tenant
--   payflow.livemode    'on' for live keys, 'off' for test keys
--
-- The operator's admin API sets payflow.admin = 'on' instead.  The
-- application role owns nothing and cannot bypass RLS.
--
-- The same statement records who acts (payflow.actor_type, .actor_id,
-- .ip, .request_id); triggers write the audit log from them, so no change
-- to a tenant or key can happen without its audit row.

CREATE FUNCTION payflow_tenant() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('payflow.tenant_id', true), '') $$;

CREATE FUNCTION payflow_livemode() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT current_setting('payflow.livemode', true) = 'on' $$;

CREATE FUNCTION payflow_is_admin() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT current_setting('payflow.admin', true) = 'on' $$;

GRANT EXECUTE ON FUNCTION payflow_tenant(), payflow_livemode(),
    payflow_is_admin() TO :"app";


CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^ten_[0-9A-Za-z]{24}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenants_scope ON tenants
    USING (id = payflow_tenant() OR payflow_is_admin())
    WITH CHECK (payflow_is_admin());

GRANT SELECT, INSERT ON tenants TO :"app";
GRANT UPDATE (name, status) ON tenants TO :"app";


CREATE TABLE api_keys (
    id           text PRIMARY KEY CHECK (id ~ '^key_[0-9A-Za-z]{24}$'),
    tenant_id    text NOT NULL REFERENCES tenants (id),
    livemode     boolean NOT NULL,
    role         text NOT NULL
                 CHECK (role IN ('owner', 'admin', 'developer', 'viewer')),
    read_only    boolean NOT NULL DEFAULT false,
    -- HMAC-SHA256(pepper, secret), hex; the secret itself is never stored
    key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    prefix       text NOT NULL CHECK (prefix ~ '^pf_(test|live)_$'),
    last4        text NOT NULL CHECK (last4 ~ '^[0-9A-Za-z]{4}$'),
    description  text CHECK (length(description) <= 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    replaced_by  text REFERENCES api_keys (id),
    CHECK (prefix = CASE WHEN livemode THEN 'pf_live_' ELSE 'pf_test_' END)
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, livemode, created_at, id);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;

CREATE POLICY api_keys_scope ON api_keys
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT ON api_keys TO :"app";
GRANT UPDATE (expires_at, revoked_at, replaced_by, description)
    ON api_keys TO :"app";

-- a revoked key stays revoked
CREATE FUNCTION api_keys_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL
       AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
    THEN
        RAISE EXCEPTION 'api key % is revoked', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_keys_guard BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_guard();


-- Authentication happens before the tenant is known: this function, owned
-- by the schema owner, is the application's only way to find a key, and
-- only by the hash of its secret.

CREATE FUNCTION payflow_authenticate(p_hash text)
    RETURNS TABLE (key_id text, tenant_id text, livemode boolean,
                   role text, read_only boolean, expires_at bigint,
                   revoked boolean, tenant_active boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT k.id, k.tenant_id, k.livemode, k.role, k.read_only,
               -- down, never up: a key must not outlive its expiry
               floor(extract(epoch FROM k.expires_at))::bigint,
               k.revoked_at IS NOT NULL, t.status = 'active'
          FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.key_hash = p_hash
    $$;

REVOKE ALL ON FUNCTION payflow_authenticate(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_authenticate(text) TO :"app";


-- Workers cache keys in shared memory and LISTEN on payflow_auth: a
-- change that can end a key's validity is pushed to every node at commit.

CREATE FUNCTION api_keys_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
       OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
    THEN
        PERFORM pg_notify('payflow_auth', 'key:' || NEW.key_hash);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify AFTER UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();

CREATE FUNCTION tenants_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('payflow_auth', 'flush');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify AFTER UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_notify();


-- Who did what, when, from where.  Append-only: the application may only
-- insert, and nobody may change a row.

CREATE TABLE audit_logs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    text REFERENCES tenants (id),
    actor_type   text NOT NULL
                 CHECK (actor_type IN ('admin', 'api_key', 'jwt', 'system')),
    actor_id     text,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    ip           inet,
    request_id   text,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_logs_tenant ON audit_logs (tenant_id, created_at);

ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;

CREATE POLICY audit_logs_scope ON audit_logs
    USING (tenant_id = payflow_tenant() OR payflow_is_admin())
    WITH CHECK (tenant_id = payflow_tenant() OR payflow_is_admin());

GRANT SELECT, INSERT ON audit_logs TO :"app";

CREATE FUNCTION payflow_audit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_tenant   text;
    v_type     text;
    v_action   text;
    v_ip       text := current_setting('payflow.ip', true);
    v_details  jsonb := '{}';
BEGIN
    IF TG_TABLE_NAME = 'api_keys' THEN
        v_tenant := NEW.tenant_id;
        v_type := 'api_key';

        IF TG_OP = 'INSERT' THEN
            v_action := 'api_key.created';
            v_details := jsonb_build_object('livemode', NEW.livemode,
                                            'role', NEW.role,
                                            'read_only', NEW.read_only);
        ELSIF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
            v_action := 'api_key.revoked';
        ELSIF NEW.replaced_by IS DISTINCT FROM OLD.replaced_by THEN
            v_action := 'api_key.rolled';
            v_details := jsonb_build_object('replaced_by', NEW.replaced_by,
                                            'expires_at', NEW.expires_at);
        ELSE
            v_action := 'api_key.updated';
        END IF;
    ELSE
        v_tenant := NEW.id;
        v_type := 'tenant';
        v_action := CASE TG_OP WHEN 'INSERT' THEN 'tenant.created'
                                             ELSE 'tenant.updated' END;
        v_details := jsonb_build_object('name', NEW.name,
                                        'status', NEW.status);
    END IF;

    INSERT INTO audit_logs (tenant_id, actor_type, actor_id, action,
                            target_type, target_id, ip, request_id,
                            details)
    VALUES (v_tenant,
            coalesce(nullif(current_setting('payflow.actor_type', true),
                            ''), 'system'),
            nullif(current_setting('payflow.actor_id', true), ''),
            v_action, v_type, NEW.id,
            CASE WHEN v_ip ~ '^[0-9A-Fa-f:.]+$' THEN v_ip::inet END,
            nullif(current_setting('payflow.request_id', true), ''),
            v_details);

    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_audit AFTER INSERT OR UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION payflow_audit();

CREATE TRIGGER api_keys_audit AFTER INSERT OR UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION payflow_audit();

CREATE FUNCTION audit_logs_immutable() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_logs_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_immutable();
