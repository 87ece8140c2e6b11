-- Secrets at rest (issue 18, docs/accounts.md): outbound webhook signing
-- secrets are stored sealed (envelope encryption under the operator's
-- payflow_kek, shared/pf_seal.c): "pf1.<kek id>.<wrapped data key>.
-- <ciphertext>", bound to the tenant, the mode and the endpoint.  The
-- worker seals and opens them; the database never sees a secret in the
-- clear once a KEK is configured, and rows written before (whsec_...) are
-- sealed by the workers in the background (payflow_secrets_due, _store),
-- as rows sealed under an older KEK are wrapped again under the current
-- one.

ALTER TABLE webhook_endpoints
    DROP CONSTRAINT webhook_endpoints_secret_check,
    DROP CONSTRAINT webhook_endpoints_previous_secret_check,
    ADD CONSTRAINT webhook_endpoints_secret_check
        CHECK (secret ~ '^(whsec_|pf1\.)' AND length(secret) <= 1024),
    ADD CONSTRAINT webhook_endpoints_previous_secret_check
        CHECK (previous_secret ~ '^(whsec_|pf1\.)'
               AND length(previous_secret) <= 1024);


-- An endpoint as the API shows it, never with its secret: the row holds it
-- sealed, and only the worker that made it shows it, once (p_secret, kept
-- for the signature, is ignored).
CREATE OR REPLACE FUNCTION payflow_endpoint_json(e webhook_endpoints,
    p_secret boolean DEFAULT false)
    RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', e.id,
        'object', 'webhook_endpoint',
        'livemode', e.livemode,
        'url', e.url,
        'description', e.description,
        'events', to_jsonb(e.events),
        'enabled', e.enabled,
        'status', CASE WHEN e.enabled THEN 'enabled' ELSE 'disabled' END,
        'disabled_reason', e.disabled_reason,
        'failing_since', floor(extract(epoch FROM e.failing_since))::bigint,
        'previous_secret_expires',
            floor(extract(epoch FROM e.previous_expires_at))::bigint,
        'created', floor(extract(epoch FROM e.created_at))::bigint)
$$;

-- The worker names the endpoint (its id is in the seal) and shows the new
-- secret itself: the row's copy is never read back into an answer.
DROP FUNCTION payflow_endpoint_create(text, text, text, text);

CREATE FUNCTION payflow_endpoint_create(p_url text, p_events text,
    p_description text, p_id text, p_secret text)
    RETURNS text
    LANGUAGE sql
    AS $$
    INSERT INTO webhook_endpoints (id, tenant_id, livemode, url, events,
                                   description, secret)
    VALUES (p_id, payflow_tenant(), payflow_livemode(), p_url,
            ARRAY(SELECT jsonb_array_elements_text(p_events::jsonb)),
            p_description, p_secret)
    RETURNING payflow_endpoint_json(webhook_endpoints)::text
$$;

GRANT EXECUTE ON FUNCTION payflow_endpoint_create(text, text, text, text,
    text) TO :"app";

CREATE OR REPLACE FUNCTION payflow_endpoint_rotate(p_id text, p_secret text,
    p_grace interval)
    RETURNS text
    LANGUAGE sql
    AS $$
    UPDATE webhook_endpoints e SET
           previous_secret = e.secret,
           previous_expires_at = now() + p_grace,
           secret = p_secret,
           updated_at = now()
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode()
    RETURNING payflow_endpoint_json(e)::text
$$;


-- sql/0015's claim, with the tenant each secret is bound to
DROP FUNCTION payflow_outbox_claim(int, interval, int);

CREATE FUNCTION payflow_outbox_claim(p_limit int, p_lease interval,
    p_per_endpoint int)
    RETURNS TABLE (id text, attempt int, endpoint_id text, url text,
                   secret text, previous_secret text, event_id text,
                   body text, request_id text, livemode boolean,
                   enabled boolean, tenant_id text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    RETURN QUERY
    WITH cand AS (
        /* the oldest due, numbered within their endpoint */
        SELECT d.id, d.endpoint_id, d.next_attempt_at,
               row_number() OVER (PARTITION BY d.endpoint_id
                                  ORDER BY d.next_attempt_at) AS rn
          FROM (SELECT * FROM webhook_deliveries
                 WHERE next_attempt_at <= now()
                 ORDER BY next_attempt_at
                 LIMIT p_limit * 4) d
    ), room AS (
        /* an endpoint's share: the cap less what is in flight already */
        SELECT c.id, c.next_attempt_at FROM cand c
         WHERE c.rn <= p_per_endpoint
                       - (SELECT count(*) FROM webhook_deliveries l
                           WHERE l.endpoint_id = c.endpoint_id
                             AND l.leased_until > now())
    ), due AS (
        SELECT d.id FROM webhook_deliveries d JOIN room ON room.id = d.id
         WHERE d.next_attempt_at <= now()
         ORDER BY room.next_attempt_at
         LIMIT p_limit
           FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_deliveries d
           SET attempts = d.attempts + 1,
               next_attempt_at = now() + p_lease,
               leased_until = now() + p_lease
          FROM due WHERE d.id = due.id
        RETURNING d.*
    )
    SELECT c.id, c.attempts, e.id, e.url, e.secret,
           CASE WHEN e.previous_expires_at > now()
                THEN e.previous_secret END,
           ev.id, payflow_delivery_body(ev), ev.request_id, c.livemode,
           e.enabled, e.tenant_id
      FROM claimed c
      JOIN webhook_endpoints e ON e.id = c.endpoint_id
      JOIN payment_events ev ON ev.id = c.event_id;
END
$$;

REVOKE ALL ON FUNCTION payflow_outbox_claim(int, interval, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_outbox_claim(int, interval, int)
    TO :"app";


-- The endpoints whose secrets are not sealed under the current KEK
-- (p_prefix: "pf1.<id>."), at most p_limit, and how many there are in
-- all (the progress a worker reports in its metrics).
CREATE FUNCTION payflow_secrets_due(p_prefix text, p_limit int)
    RETURNS TABLE (id text, tenant_id text, livemode boolean, secret text,
                   previous_secret text, due bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT e.id, e.tenant_id, e.livemode, e.secret, e.previous_secret,
           count(*) OVER ()
      FROM webhook_endpoints e
     WHERE NOT starts_with(e.secret, p_prefix)
        OR NOT starts_with(coalesce(e.previous_secret, p_prefix), p_prefix)
     ORDER BY e.created_at
     LIMIT p_limit
$$;

REVOKE ALL ON FUNCTION payflow_secrets_due(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_secrets_due(text, int) TO :"app";

-- What the worker sealed, each written only over what it read (a secret
-- rotated meanwhile stays as its rotation wrote it: the next pass sees
-- it).  Returns the rows written.
CREATE FUNCTION payflow_secrets_store(p_ids text[], p_old text[],
    p_new text[], p_old_previous text[], p_new_previous text[])
    RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    n  int;
BEGIN
    PERFORM set_config('payflow.resealing', 'on', true);

    UPDATE webhook_endpoints e
       SET secret = v.new, previous_secret = v.new_previous
      FROM unnest(p_ids, p_old, p_new, p_old_previous, p_new_previous)
           AS v(id, old, new, old_previous, new_previous)
     WHERE e.id = v.id AND e.secret = v.old
       AND e.previous_secret IS NOT DISTINCT FROM v.old_previous;

    GET DIAGNOSTICS n = ROW_COUNT;

    PERFORM set_config('payflow.resealing', 'off', true);

    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION payflow_secrets_store(text[], text[], text[],
    text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_secrets_store(text[], text[], text[],
    text[], text[]) TO :"app";


-- sql/0015's audit of endpoint changes: a secret sealed or wrapped again
-- is not a rotation (the secret is the same), and says so.
CREATE OR REPLACE FUNCTION webhook_endpoints_audit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    r         webhook_endpoints;
    v_action  text;
    v_ip      text := current_setting('payflow.ip', true);
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.url = OLD.url AND NEW.events = OLD.events
       AND NEW.enabled = OLD.enabled AND NEW.secret = OLD.secret
       AND NEW.description IS NOT DISTINCT FROM OLD.description
    THEN
        /* the delivery loop's failure streak: not an audited change */
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        r := OLD;
        v_action := 'webhook_endpoint.deleted';
    ELSE
        r := NEW;
        v_action := CASE
            WHEN TG_OP = 'INSERT' THEN 'webhook_endpoint.created'
            WHEN current_setting('payflow.resealing', true) = 'on'
                THEN 'webhook_endpoint.secret_resealed'
            WHEN NEW.enabled IS DISTINCT FROM OLD.enabled AND NOT NEW.enabled
                 AND NEW.disabled_reason IS NOT NULL
                THEN 'webhook_endpoint.disabled'
            WHEN NEW.secret IS DISTINCT FROM OLD.secret
                THEN 'webhook_endpoint.secret_rotated'
            ELSE 'webhook_endpoint.updated' END;
    END IF;

    INSERT INTO audit_logs (tenant_id, actor_type, actor_id, action,
                            target_type, target_id, ip, request_id,
                            details)
    VALUES (r.tenant_id,
            coalesce(nullif(current_setting('payflow.actor_type', true),
                            ''), 'system'),
            nullif(current_setting('payflow.actor_id', true), ''),
            v_action, 'webhook_endpoint', r.id,
            CASE WHEN v_ip ~ '^[0-9A-Fa-f:.]+$' THEN v_ip::inet END,
            nullif(current_setting('payflow.request_id', true), ''),
            jsonb_build_object('livemode', r.livemode, 'url', r.url,
                               'enabled', r.enabled,
                               'reason', r.disabled_reason));

    RETURN NULL;
END
$$;
