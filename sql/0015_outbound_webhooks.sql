-- Webhooks to tenants.
--
--   * The event log tenants see (GET /v1/events) is payment_events, each
--     row now with a snapshot of its object (payment or refund) as it
--     stood when the event was written.
--   * webhook_endpoints: a tenant's destinations (per mode), each with the
--     event types it wants and a signing secret (Standard Webhooks,
--     whsec_<base64>); a rotated secret keeps signing until its grace ends.
--   * The transactional outbox: inserting events inserts, in the same
--     statement's transaction, one webhook_deliveries row per enabled
--     endpoint that wants the event, and NOTIFYs the delivery workers.
--     No event without its deliveries, no delivery without its event.
--   * Workers claim due deliveries with FOR UPDATE SKIP LOCKED, under a
--     lease (a worker that dies leaves them due again when it ends:
--     at-least-once), at most a few in flight per endpoint, and record
--     each attempt (webhook_attempts) and what follows: done, the next
--     retry per the configured schedule, or given up; 410 Gone, or an
--     endpoint failing every attempt for the configured period, disables
--     the endpoint (audited).

ALTER TABLE payment_events ADD COLUMN data jsonb;

-- GET /v1/events pages through a tenant's events, newest first
CREATE INDEX payment_events_list
    ON payment_events (tenant_id, livemode, created_at, id);

CREATE FUNCTION payment_events_snapshot() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.refund_id IS NOT NULL THEN
        SELECT payflow_refund_json(f) INTO NEW.data
          FROM refunds f WHERE f.id = NEW.refund_id;
    ELSE
        SELECT payflow_payment_json(p) INTO NEW.data
          FROM payments p WHERE p.id = NEW.payment_id;
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER payment_events_snapshot BEFORE INSERT ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_snapshot();


CREATE FUNCTION payflow_api_event_json(e payment_events) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', e.id,
        'object', 'event',
        'type', e.type,
        'livemode', e.livemode,
        'created', floor(extract(epoch FROM e.created_at))::bigint,
        'source', e.source,
        'request_id', e.request_id,
        'data', jsonb_build_object('object', e.data))
$$;

GRANT EXECUTE ON FUNCTION payflow_api_event_json(payment_events) TO :"app";


CREATE TABLE webhook_endpoints (
    id                  text PRIMARY KEY DEFAULT payflow_id('we_')
                        CHECK (id ~ '^we_[0-9A-Za-z]{24}$'),
    tenant_id           text NOT NULL REFERENCES tenants (id),
    livemode            boolean NOT NULL,
    url                 text NOT NULL
                        CHECK (length(url) <= 2048 AND url ~ '^https?://'),
    description         text CHECK (length(description) <= 500),
    events              text[] NOT NULL
                        CHECK (cardinality(events) BETWEEN 1 AND 32),
    enabled             boolean NOT NULL DEFAULT true,
    secret              text NOT NULL CHECK (secret ~ '^whsec_'),
    previous_secret     text CHECK (previous_secret ~ '^whsec_'),
    previous_expires_at timestamptz,
    disabled_reason     text,
    failing_since       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_list
    ON webhook_endpoints (tenant_id, livemode, created_at, id);

ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;

CREATE POLICY webhook_endpoints_scope ON webhook_endpoints
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin())
    WITH CHECK ((tenant_id = payflow_tenant()
                 AND livemode = payflow_livemode())
                OR payflow_is_admin());

GRANT SELECT, INSERT, DELETE ON webhook_endpoints TO :"app";
GRANT UPDATE (url, description, events, enabled, secret, previous_secret,
              previous_expires_at, disabled_reason, failing_since,
              updated_at)
    ON webhook_endpoints TO :"app";


-- at most 16 endpoints per tenant and mode
CREATE FUNCTION webhook_endpoints_limit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF (SELECT count(*) FROM webhook_endpoints
         WHERE tenant_id = NEW.tenant_id AND livemode = NEW.livemode) >= 16
    THEN
        RAISE EXCEPTION 'at most 16 webhook endpoints per tenant and mode'
            USING ERRCODE = 'PF010';
    END IF;

    RETURN NEW;
END
$$;

CREATE TRIGGER webhook_endpoints_limit BEFORE INSERT ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION webhook_endpoints_limit();


-- every change of an endpoint is audited, with who did it
CREATE FUNCTION webhook_endpoints_audit() RETURNS trigger
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

CREATE TRIGGER webhook_endpoints_audit
    AFTER INSERT OR UPDATE OR DELETE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION webhook_endpoints_audit();


CREATE FUNCTION payflow_endpoint_json(e webhook_endpoints,
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
        || CASE WHEN p_secret THEN jsonb_build_object('secret', e.secret)
                ELSE '{}' END
$$;

GRANT EXECUTE ON FUNCTION payflow_endpoint_json(webhook_endpoints, boolean)
    TO :"app";


CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY DEFAULT payflow_id('msg_'),
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    event_id        text NOT NULL REFERENCES payment_events (id),
    endpoint_id     text NOT NULL
                    REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    leased_until    timestamptz,
    last_status     int,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (event_id, endpoint_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id)
    WHERE leased_until IS NOT NULL;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id);

CREATE TABLE webhook_attempts (
    delivery_id     text NOT NULL
                    REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt         int NOT NULL,
    tenant_id       text NOT NULL,
    livemode        boolean NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    status_code     int,
    duration_ms     int,
    error           text CHECK (length(error) <= 500),
    PRIMARY KEY (delivery_id, attempt)
);

ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;

CREATE POLICY webhook_deliveries_scope ON webhook_deliveries
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin());

CREATE POLICY webhook_attempts_scope ON webhook_attempts
    USING ((tenant_id = payflow_tenant() AND livemode = payflow_livemode())
           OR payflow_is_admin());

-- read by tenants; written by the outbox (its functions are the owner's)
GRANT SELECT ON webhook_deliveries, webhook_attempts TO :"app";


-- the outbox: deliveries for the events of one statement, and a wake-up

CREATE FUNCTION payment_events_outbox() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                    endpoint_id, next_attempt_at)
    SELECT ev.tenant_id, ev.livemode, ev.id, e.id, now()
      FROM new_events ev
      JOIN webhook_endpoints e
        ON e.tenant_id = ev.tenant_id AND e.livemode = ev.livemode
     WHERE e.enabled AND (ev.type = ANY (e.events) OR '*' = ANY (e.events));

    /*
     * No NOTIFY here: it would serialise every payment's commit on the
     * notification queue's lock; the workers poll (payflow_outbox_interval).
     */

    RETURN NULL;
END
$$;

CREATE TRIGGER payment_events_outbox AFTER INSERT ON payment_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION payment_events_outbox();


CREATE FUNCTION payflow_delivery_json(d webhook_deliveries) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', d.id,
        'object', 'webhook_delivery',
        'event', d.event_id,
        'endpoint', d.endpoint_id,
        'status', d.status,
        'attempts', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'attempt', a.attempt,
                         'at', floor(extract(epoch FROM a.attempted_at))
                               ::bigint,
                         'status_code', a.status_code,
                         'duration_ms', a.duration_ms,
                         'error', a.error) ORDER BY a.attempt), '[]')
                       FROM webhook_attempts a WHERE a.delivery_id = d.id),
        'next_attempt',
            floor(extract(epoch FROM d.next_attempt_at))::bigint,
        'delivered', floor(extract(epoch FROM d.delivered_at))::bigint,
        'created', floor(extract(epoch FROM d.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_delivery_json(webhook_deliveries)
    TO :"app";


-- the body sent: the event as the API shows it, the same on every attempt

CREATE FUNCTION payflow_delivery_body(e payment_events) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_api_event_json(e)::text
$$;


-- Claims up to p_limit due deliveries (none of an endpoint that already
-- has p_per_endpoint in flight), leased for p_lease.

CREATE FUNCTION payflow_outbox_claim(p_limit int, p_lease interval,
    p_per_endpoint int)
    RETURNS TABLE (id text, attempt int, endpoint_id text, url text,
                   secret text, previous_secret text, event_id text,
                   body text, request_id text, livemode boolean,
                   enabled boolean)
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
           e.enabled
      FROM claimed c
      JOIN webhook_endpoints e ON e.id = c.endpoint_id
      JOIN payment_events ev ON ev.id = c.event_id;
END
$$;

REVOKE ALL ON FUNCTION payflow_outbox_claim(int, interval, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_outbox_claim(int, interval, int)
    TO :"app";


-- What one attempt came to.  p_code: the HTTP status, or NULL (no
-- answer: p_error says why); p_schedule: the waits after the first
-- attempt, in seconds (its length + 1 is the number of attempts);
-- p_final: never try again (the endpoint was disabled since).

CREATE FUNCTION payflow_outbox_result(p_id text, p_attempt int,
    p_code int, p_duration int, p_error text, p_schedule int[],
    p_disable_after interval, p_final boolean)
    RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    d       webhook_deliveries;
    e       webhook_endpoints;
    v_wait  int;
BEGIN
    SELECT * INTO d FROM webhook_deliveries WHERE id = p_id FOR UPDATE;

    IF NOT FOUND OR d.attempts <> p_attempt OR d.status <> 'pending' THEN
        /* deleted, or claimed again since (our lease ran out) */
        RETURN 'stale';
    END IF;

    PERFORM set_config('payflow.actor_type', 'system', true);

    INSERT INTO webhook_attempts (delivery_id, attempt, tenant_id, livemode,
                                  status_code, duration_ms, error)
    VALUES (d.id, p_attempt, d.tenant_id, d.livemode, p_code, p_duration,
            left(p_error, 500));

    IF p_code BETWEEN 200 AND 299 THEN
        UPDATE webhook_deliveries SET status = 'succeeded',
               next_attempt_at = NULL, leased_until = NULL,
               last_status = p_code, last_error = NULL,
               delivered_at = clock_timestamp()
         WHERE id = d.id;

        /* the endpoint's row is locked only when its streak ends */
        UPDATE webhook_endpoints SET failing_since = NULL
         WHERE id = d.endpoint_id AND failing_since IS NOT NULL;

        RETURN 'succeeded';
    END IF;

    SELECT * INTO e FROM webhook_endpoints WHERE id = d.endpoint_id
       FOR NO KEY UPDATE;

    IF p_code = 410 THEN
        UPDATE webhook_endpoints SET enabled = false,
               disabled_reason = 'the endpoint answered 410 Gone',
               updated_at = now()
         WHERE id = e.id AND enabled;
    ELSIF e.failing_since IS NULL THEN
        UPDATE webhook_endpoints SET failing_since = now() WHERE id = e.id;
    ELSIF e.enabled AND e.failing_since < now() - p_disable_after THEN
        UPDATE webhook_endpoints SET enabled = false,
               disabled_reason = format('every delivery failed since %s',
                                        e.failing_since),
               updated_at = now()
         WHERE id = e.id;
        p_final := true;
    END IF;

    v_wait := CASE WHEN p_final OR p_code = 410 THEN NULL
                   ELSE p_schedule[p_attempt] END;

    UPDATE webhook_deliveries SET
           status = CASE WHEN v_wait IS NULL THEN 'failed'
                         ELSE 'pending' END,
           next_attempt_at = now() + make_interval(secs =>
                             v_wait * (0.9 + random() * 0.2)),
           leased_until = NULL,
           last_status = p_code, last_error = left(p_error, 500)
     WHERE id = d.id;

    RETURN CASE WHEN v_wait IS NULL THEN 'failed' ELSE 'retry' END;
END
$$;

REVOKE ALL ON FUNCTION payflow_outbox_result(text, int, int, int, text,
    int[], interval, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_outbox_result(text, int, int, int, text,
    int[], interval, boolean) TO :"app";


-- A worker's finished attempts, recorded together: [{"id", "attempt",
-- "endpoint", "code", "ms", "error", "final"}, ...], endpoint by endpoint
-- (workers lock endpoints in one order: no deadlock between them).

CREATE FUNCTION payflow_outbox_results(p_results text, p_schedule int[],
    p_disable_after interval)
    RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    r  jsonb;
BEGIN
    FOR r IN SELECT x FROM jsonb_array_elements(p_results::jsonb) x
              ORDER BY x ->> 'endpoint', x ->> 'id'
    LOOP
        RETURN NEXT payflow_outbox_result(r ->> 'id',
                        (r ->> 'attempt')::int, (r ->> 'code')::int,
                        (r ->> 'ms')::int, r ->> 'error', p_schedule,
                        p_disable_after, (r ->> 'final')::boolean);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION payflow_outbox_results(text, int[], interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_outbox_results(text, int[], interval)
    TO :"app";


-- backlog and lag, for the metrics
CREATE FUNCTION payflow_outbox_backlog(OUT due bigint, OUT lag_seconds
    double precision)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
    SELECT count(*),
           coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
      FROM webhook_deliveries
     WHERE next_attempt_at <= now() AND leased_until IS NULL
$$;

REVOKE ALL ON FUNCTION payflow_outbox_backlog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_outbox_backlog() TO :"app";


-- the API (scoped: row-level security keeps tenants apart)

CREATE FUNCTION payflow_endpoint_create(p_url text, p_events text,
    p_description text, p_secret text)
    RETURNS text
    LANGUAGE sql
    AS $$
    INSERT INTO webhook_endpoints (tenant_id, livemode, url, events,
                                   description, secret)
    VALUES (payflow_tenant(), payflow_livemode(), p_url,
            ARRAY(SELECT jsonb_array_elements_text(p_events::jsonb)),
            p_description, p_secret)
    RETURNING payflow_endpoint_json(webhook_endpoints, true)::text
$$;

CREATE FUNCTION payflow_endpoint_list(p_after text, p_before text,
    p_limit int)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('webhook_endpoints', 'payflow_endpoint_json', 'true',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[]::text[])
$$;

CREATE FUNCTION payflow_endpoint_get(p_id text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_endpoint_json(e)::text FROM webhook_endpoints e
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode()
$$;

-- NULL leaves a field as it is; enabling clears the reason and the streak
CREATE FUNCTION payflow_endpoint_update(p_id text, p_url text,
    p_events text, p_description text, p_enabled boolean)
    RETURNS text
    LANGUAGE sql
    AS $$
    UPDATE webhook_endpoints e SET
           url = coalesce(p_url, e.url),
           events = CASE WHEN p_events IS NULL THEN e.events
                         ELSE ARRAY(SELECT jsonb_array_elements_text(
                                               p_events::jsonb)) END,
           description = coalesce(p_description, e.description),
           enabled = coalesce(p_enabled, e.enabled),
           disabled_reason = CASE WHEN p_enabled THEN NULL
                                  WHEN p_enabled = false THEN 'disabled'
                                  ELSE e.disabled_reason END,
           failing_since = CASE WHEN p_enabled THEN NULL
                                ELSE e.failing_since END,
           updated_at = now()
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode()
    RETURNING payflow_endpoint_json(e)::text
$$;

CREATE FUNCTION payflow_endpoint_delete(p_id text) RETURNS text
    LANGUAGE sql
    AS $$
    DELETE FROM webhook_endpoints e
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode()
    RETURNING jsonb_build_object('id', e.id, 'object', 'webhook_endpoint',
                                 'deleted', true)::text
$$;

CREATE FUNCTION payflow_endpoint_rotate(p_id text, p_secret text,
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
    RETURNING payflow_endpoint_json(e, true)::text
$$;

CREATE FUNCTION payflow_event_list(p_after text, p_before text,
    p_limit int, p_type text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('payment_events', 'payflow_api_event_json',
        '($1 IS NULL OR t.type = $1)',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[p_type])
$$;

CREATE FUNCTION payflow_event_get(p_id text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_api_event_json(e)::text FROM payment_events e
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode()
$$;

CREATE FUNCTION payflow_event_deliveries(p_id text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object('object', 'list', 'has_more', false,
               'data', coalesce((SELECT jsonb_agg(payflow_delivery_json(d)
                                                  ORDER BY d.created_at, d.id)
                                   FROM webhook_deliveries d
                                  WHERE d.event_id = e.id), '[]'))::text
      FROM payment_events e
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode()
$$;

-- the event again to every endpoint that wants it now: a delivery made
-- pending and due (a new one where there was none)
CREATE FUNCTION payflow_event_redeliver(p_id text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    ev  payment_events;
BEGIN
    SELECT * INTO ev FROM payment_events e
     WHERE e.id = p_id AND e.tenant_id = payflow_tenant()
       AND e.livemode = payflow_livemode();

    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    INSERT INTO webhook_deliveries (tenant_id, livemode, event_id,
                                    endpoint_id, next_attempt_at)
    SELECT ev.tenant_id, ev.livemode, ev.id, e.id, now()
      FROM webhook_endpoints e
     WHERE e.tenant_id = ev.tenant_id AND e.livemode = ev.livemode
       AND e.enabled AND (ev.type = ANY (e.events) OR '*' = ANY (e.events))
    ON CONFLICT (event_id, endpoint_id) DO UPDATE
       SET status = 'pending', next_attempt_at = now(), leased_until = NULL
     WHERE webhook_deliveries.status <> 'pending'
        OR webhook_deliveries.leased_until IS NULL;

    PERFORM pg_notify('payflow_outbox', '');

    RETURN payflow_event_deliveries(p_id);
END
$$;

REVOKE ALL ON FUNCTION payflow_event_redeliver(text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION payflow_endpoint_create(text, text, text, text),
    payflow_endpoint_list(text, text, int), payflow_endpoint_get(text),
    payflow_endpoint_update(text, text, text, text, boolean),
    payflow_endpoint_delete(text),
    payflow_endpoint_rotate(text, text, interval),
    payflow_event_list(text, text, int, text), payflow_event_get(text),
    payflow_event_deliveries(text), payflow_event_redeliver(text)
    TO :"app";
