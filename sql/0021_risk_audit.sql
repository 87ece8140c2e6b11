-- The risk engine's changes are audited (issue 17): review decisions,
-- list entries added and removed, settings changed or reset, each an
-- audit_logs row of the caller's tenant with who, from where and which
-- request, in the transaction of the change.

CREATE FUNCTION payflow_audit_write(p_tenant text, p_livemode boolean,
    p_action text, p_type text, p_id text, p_details jsonb)
    RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO audit_logs (tenant_id, actor_type, actor_id, action,
                            target_type, target_id, ip, request_id, details)
    SELECT p_tenant,
           coalesce(nullif(current_setting('payflow.actor_type', true), ''),
                    'system'),
           nullif(current_setting('payflow.actor_id', true), ''),
           p_action, p_type, p_id,
           CASE WHEN current_setting('payflow.ip', true) ~ '^[0-9A-Fa-f:.]+$'
                THEN current_setting('payflow.ip', true)::inet END,
           nullif(current_setting('payflow.request_id', true), ''),
           coalesce(p_details, '{}')
           || jsonb_build_object('livemode', p_livemode)
$$;

GRANT EXECUTE ON FUNCTION payflow_audit_write(text, boolean, text, text,
    text, jsonb) TO :"app";

CREATE FUNCTION risk_lists_audit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    l  risk_lists;
BEGIN
    l := CASE TG_OP WHEN 'INSERT' THEN NEW ELSE OLD END;

    PERFORM payflow_audit_write(l.tenant_id, l.livemode,
        CASE TG_OP WHEN 'INSERT' THEN 'risk_list.added'
                   ELSE 'risk_list.removed' END,
        'risk_list_entry', l.id,
        jsonb_build_object('list', l.list, 'type', l.type, 'value', l.value));

    RETURN NULL;
END
$$;

CREATE TRIGGER risk_lists_audit AFTER INSERT OR DELETE ON risk_lists
    FOR EACH ROW EXECUTE FUNCTION risk_lists_audit();

CREATE FUNCTION risk_settings_audit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM payflow_audit_write(OLD.tenant_id, OLD.livemode,
            'risk_settings.reset', 'risk_settings', OLD.tenant_id, '{}');

    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM payflow_audit_write(NEW.tenant_id, NEW.livemode,
            'risk_settings.updated', 'risk_settings', NEW.tenant_id,
            jsonb_build_object(
                'review_threshold', NEW.review_threshold,
                'block_threshold', NEW.block_threshold,
                'rules', NEW.rules, 'self_emails', NEW.self_emails,
                'self_domains', NEW.self_domains));
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER risk_settings_audit AFTER UPDATE OR DELETE ON risk_settings
    FOR EACH ROW EXECUTE FUNCTION risk_settings_audit();

-- a review's decision: the payment's transition, audited by who took it
CREATE FUNCTION payments_review_audit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM payflow_audit_write(NEW.tenant_id, NEW.livemode,
        CASE WHEN NEW.status = 'processing' THEN 'review.approved'
             WHEN NEW.failure_code = 'review_expired' THEN 'review.expired'
             ELSE 'review.rejected' END,
        'payment', NEW.id,
        jsonb_build_object('score', NEW.risk->'score', 'amount', NEW.amount,
                           'currency', NEW.currency));

    RETURN NULL;
END
$$;

CREATE TRIGGER payments_review_audit AFTER UPDATE OF status ON payments
    FOR EACH ROW WHEN (OLD.status = 'requires_review'
                       AND NEW.status <> 'requires_review')
    EXECUTE FUNCTION payments_review_audit();


-- the review queue as the metrics show it (the jobs read it every
-- interval): payments waiting, and how long the oldest has waited
CREATE FUNCTION payflow_review_queue_depth() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT count(*) FROM payments WHERE status = 'requires_review'
$$;

CREATE FUNCTION payflow_review_queue_age() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT coalesce(floor(extract(epoch FROM now() - min(created_at))), 0)
           ::bigint
      FROM payments WHERE status = 'requires_review'
$$;

REVOKE EXECUTE ON FUNCTION payflow_review_queue_depth() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION payflow_review_queue_age() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_review_queue_depth() TO :"app";
GRANT EXECUTE ON FUNCTION payflow_review_queue_age() TO :"app";
