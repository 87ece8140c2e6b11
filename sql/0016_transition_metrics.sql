-- Payment transitions for the metrics (payflow_payment_transitions_total):
-- the events written since the last count, counted once across all nodes.
-- Whichever worker takes the watermark (SKIP LOCKED) counts them into its
-- node's shared memory and moves the watermark on; Prometheus sums the
-- nodes.  The event log is append-only and written in time order, so a
-- BRIN index finds a time range at almost no cost to the write path.  The
-- count trails by a second, so that transactions committing just then are
-- seen; one that stays open longer than that may be missed (a metric, not
-- the books).

CREATE INDEX payment_events_created_brin ON payment_events
    USING brin (created_at);

CREATE TABLE metrics_watermarks (
    name    text PRIMARY KEY,
    upto    timestamptz NOT NULL
);

INSERT INTO metrics_watermarks VALUES ('payment_events', now());

REVOKE ALL ON metrics_watermarks FROM PUBLIC;

CREATE FUNCTION payflow_transition_counts()
    RETURNS TABLE (type text, source text, n bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    v_from  timestamptz;
    v_to    timestamptz := clock_timestamp() - interval '1 second';
BEGIN
    SELECT w.upto INTO v_from FROM metrics_watermarks w
     WHERE w.name = 'payment_events'
       FOR UPDATE SKIP LOCKED;

    IF NOT FOUND OR v_from >= v_to THEN
        RETURN;
    END IF;

    UPDATE metrics_watermarks SET upto = v_to WHERE name = 'payment_events';

    RETURN QUERY
        SELECT e.type, e.source, count(*) FROM payment_events e
         WHERE e.created_at > v_from AND e.created_at <= v_to
         GROUP BY e.type, e.source;
END
$$;

REVOKE ALL ON FUNCTION payflow_transition_counts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payflow_transition_counts() TO :"app";
