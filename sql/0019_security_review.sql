-- Security review findings (issue 16).
--
-- 1. A JWT names its tenant in a claim; the tenant must exist and be
--    active, as for an API key.  Workers cache the answer beside the keys
--    (a status change already flushes that cache on every node) and must
--    hear when a tenant is created, so that a "no such tenant" they
--    cached is dropped: tenants_notify now also says "tenant:<id>" on
--    INSERT.  payflow_tenant_status() is the application's only way to
--    read a tenant's status before it is scoped to it.

CREATE FUNCTION payflow_tenant_status(p_id text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT status FROM tenants WHERE id = p_id
    $$;

REVOKE ALL ON FUNCTION payflow_tenant_status(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_tenant_status(text) TO :"app";

CREATE OR REPLACE FUNCTION tenants_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('payflow_auth', 'tenant:' || NEW.id);

    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('payflow_auth', 'flush');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify_insert AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_notify();
