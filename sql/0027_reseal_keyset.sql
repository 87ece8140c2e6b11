-- The resealer's pass reads its rows, not every row that is due (issue 18).
--
-- sql/0024's payflow_customers_due gathered every due payment (each row
-- sealed under another KEK than the current one, and each still in the
-- clear), sorted them all by id and took 200: 0.35-0.6 s a pass with 55k
-- due, so a migration or a rotation of n rows cost O(n^2 / 200).  Each
-- branch is now a range of an index in the order it is read, stopped at
-- the pass's limit, and the count of what is due reads those indexes.

DROP INDEX payments_customer_kek;

-- the KEK of each sealed customer, then the payment: one KEK's rows in id
-- order
CREATE INDEX payments_customer_kek ON payments
    ((split_part(customer_key, '.', 2)), id)
    WHERE customer_key IS NOT NULL;

-- payments whose customer details are still in the clear, in id order
CREATE INDEX payments_customer_clear ON payments (id)
    WHERE customer ?| ARRAY['email', 'name', 'phone'];

CREATE OR REPLACE FUNCTION payflow_customers_due(p_kek text,
    p_seal boolean, p_after text, p_limit int)
    RETURNS TABLE (id text, tenant_id text, livemode boolean,
                   customer text, key text, due bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
    -- the planner cannot tell how many rows a KEK range holds (an
    -- expression of a partial index): a sequential scan of every payment,
    -- 50 ms at 180k, where the index answers "none" in 0.1 ms
    SET enable_seqscan = off
    AS $$
    WITH due AS (
        (SELECT p.id FROM payments p
          WHERE p.customer_key IS NOT NULL
            AND split_part(p.customer_key, '.', 2) < p_kek
            AND p.id > coalesce(p_after, '')
          ORDER BY split_part(p.customer_key, '.', 2), p.id
          LIMIT p_limit)
        UNION ALL
        (SELECT p.id FROM payments p
          WHERE p.customer_key IS NOT NULL
            AND split_part(p.customer_key, '.', 2) > p_kek
            AND p.id > coalesce(p_after, '')
          ORDER BY split_part(p.customer_key, '.', 2), p.id
          LIMIT p_limit)
        UNION ALL
        (SELECT p.id FROM payments p
          WHERE p_seal AND p.customer ?| ARRAY['email', 'name', 'phone']
            AND p.id > coalesce(p_after, '')
          ORDER BY p.id
          LIMIT p_limit)
    ), pending AS (
        SELECT count(*) AS n FROM (
            (SELECT 1 FROM payments p
              WHERE p.customer_key IS NOT NULL
                AND split_part(p.customer_key, '.', 2) < p_kek
              LIMIT 100000)
            UNION ALL
            (SELECT 1 FROM payments p
              WHERE p.customer_key IS NOT NULL
                AND split_part(p.customer_key, '.', 2) > p_kek
              LIMIT 100000)
            UNION ALL
            (SELECT 1 FROM payments p
              WHERE p_seal AND p.customer ?| ARRAY['email', 'name', 'phone']
              LIMIT 100000)) c
    )
    SELECT p.id, p.tenant_id, p.livemode, p.customer::text, p.customer_key,
           (SELECT n FROM pending)
      FROM (SELECT d.id FROM due d ORDER BY d.id LIMIT p_limit) d
      JOIN payments p ON p.id = d.id
     ORDER BY p.id
$$;
