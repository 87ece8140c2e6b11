-- Lists, the balance and ledger entries, each answered by one statement as
-- the API's JSON.  They run as the caller (SECURITY INVOKER), so row-level
-- security scopes them to the request's tenant and mode; the explicit
-- tenant and mode conditions are there for the indexes.
--
-- Pages are newest first.  starting_after gives the page after an object,
-- ending_before the page before it (fetched oldest first, then turned
-- around); limit + 1 rows are read to learn has_more.  A cursor that does
-- not name one of the caller's objects gives an empty page.

CREATE INDEX payments_customer ON payments
    (tenant_id, livemode, lower(customer->>'email'), created_at);
CREATE INDEX ledger_entries_list ON ledger_entries
    (tenant_id, livemode, payment_id, seq);

CREATE FUNCTION payflow_list_json(p_rows jsonb[], p_limit int,
    p_before boolean)
    RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT jsonb_build_object(
        'object', 'list',
        'has_more', coalesce(array_length(p_rows, 1), 0) > p_limit,
        'data', coalesce((SELECT jsonb_agg(r ORDER BY
                                   CASE WHEN p_before THEN -i ELSE i END)
                            FROM unnest(p_rows[1:p_limit])
                                 WITH ORDINALITY AS u(r, i)),
                         '[]'))::text
$$;

GRANT EXECUTE ON FUNCTION payflow_list_json(jsonb[], int, boolean)
    TO :"app";


-- One page of p_table as p_json objects: the caller's conditions in
-- p_where (on alias t, with $1..$4 bound to p_args), ordered by
-- p_cursor_cols, after (or before) the row p_cursor_id
CREATE FUNCTION payflow_page(p_table text, p_json text, p_where text,
    p_cursor_cols text, p_cursor_id text, p_before boolean, p_limit int,
    p_args text[])
    RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    rows     jsonb[];
    dir      text := CASE WHEN p_before THEN 'ASC' ELSE 'DESC' END;
    cmp      text := CASE WHEN p_before THEN '>' ELSE '<' END;
    found    boolean;
BEGIN
    IF p_cursor_id IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE id = $1 '
                       'AND tenant_id = payflow_tenant() '
                       'AND livemode = payflow_livemode())', p_table)
           INTO found USING p_cursor_id;

        IF NOT found THEN
            RETURN payflow_list_json('{}', p_limit, false);
        END IF;
    END IF;

    EXECUTE format(
        'SELECT array_agg(%2$s(t) ORDER BY %4$s) FROM '
        '(SELECT * FROM %1$I t '
        '  WHERE t.tenant_id = payflow_tenant() '
        '    AND t.livemode = payflow_livemode() AND (%3$s) '
        '    AND ($5::text IS NULL OR (%5$s) %6$s '
        '        (SELECT %5$s FROM %1$I t WHERE t.id = $5)) '
        '  ORDER BY %4$s LIMIT $6) t',
        p_table, p_json, p_where,
        (SELECT string_agg(c || ' ' || dir, ', ')
           FROM unnest(string_to_array(p_cursor_cols, ', ')) AS c),
        p_cursor_cols, cmp)
       INTO rows
      USING p_args[1], p_args[2], p_args[3], p_args[4], p_cursor_id,
            p_limit + 1;

    RETURN payflow_list_json(coalesce(rows, '{}'), p_limit, p_before);
END
$$;

GRANT EXECUTE ON FUNCTION payflow_page(text, text, text, text, text,
    boolean, int, text[]) TO :"app";


-- GET /v1/payments: status, created range (unix seconds, inclusive),
-- customer e-mail (any case)
CREATE FUNCTION payflow_payment_list(p_after text, p_before text,
    p_limit int, p_status text, p_created_gte bigint, p_created_lte bigint,
    p_customer text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('payments', 'payflow_payment_json',
        '($1 IS NULL OR t.status = $1) '
        'AND ($2 IS NULL OR t.created_at >= to_timestamp($2::bigint)) '
        'AND ($3 IS NULL OR t.created_at < to_timestamp($3::bigint + 1)) '
        'AND ($4 IS NULL OR lower(t.customer->>''email'') = lower($4))',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit,
        ARRAY[p_status, p_created_gte::text, p_created_lte::text,
              p_customer])
$$;

GRANT EXECUTE ON FUNCTION payflow_payment_list(text, text, int, text,
    bigint, bigint, text) TO :"app";


-- GET /v1/refunds: all of them, or one payment's
CREATE FUNCTION payflow_refund_list(p_after text, p_before text,
    p_limit int, p_payment text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('refunds', 'payflow_refund_json',
        '($1 IS NULL OR t.payment_id = $1)',
        't.created_at, t.id', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[p_payment])
$$;

GRANT EXECUTE ON FUNCTION payflow_refund_list(text, text, int, text)
    TO :"app";


CREATE FUNCTION payflow_ledger_entry_json(e ledger_entries) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT jsonb_build_object(
        'id', e.id,
        'object', 'ledger_entry',
        'livemode', e.livemode,
        'transaction', e.transaction_id,
        'seq', e.seq,
        'account', e.account,
        'direction', e.direction,
        'amount', e.amount,
        'currency', lower(e.currency),
        'payment', e.payment_id,
        'refund', e.refund_id,
        'prev_hash', encode(e.prev_hash, 'hex'),
        'hash', encode(e.hash, 'hex'),
        'created', floor(extract(epoch FROM e.created_at))::bigint)
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_entry_json(ledger_entries)
    TO :"app";


-- GET /v1/ledger/entries: newest first, all of them or one payment's
CREATE FUNCTION payflow_ledger_entry_list(p_after text, p_before text,
    p_limit int, p_payment text)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT payflow_page('ledger_entries', 'payflow_ledger_entry_json',
        '($1 IS NULL OR t.payment_id = $1)',
        't.seq', coalesce(p_after, p_before),
        p_before IS NOT NULL, p_limit, ARRAY[p_payment])
$$;

GRANT EXECUTE ON FUNCTION payflow_ledger_entry_list(text, text, int, text)
    TO :"app";


-- GET /v1/balance: what is owed to the merchant per currency (the credit
-- balance of merchant:payable), and every account's debits and credits
CREATE FUNCTION payflow_balance() RETURNS text
    LANGUAGE sql STABLE
    AS $$
    WITH accounts AS (
        SELECT account, currency,
               sum(amount) FILTER (WHERE direction = 'debit') AS debits,
               sum(amount) FILTER (WHERE direction = 'credit') AS credits
          FROM ledger_entries
         WHERE tenant_id = payflow_tenant()
           AND livemode = payflow_livemode()
         GROUP BY account, currency
    )
    SELECT jsonb_build_object(
        'object', 'balance',
        'livemode', payflow_livemode(),
        'available', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'currency', lower(currency),
                       'amount', coalesce(credits, 0) - coalesce(debits, 0))
                       ORDER BY currency)
              FROM accounts WHERE account = 'merchant:payable'), '[]'),
        'accounts', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'account', account,
                       'currency', lower(currency),
                       'debits', coalesce(debits, 0),
                       'credits', coalesce(credits, 0))
                       ORDER BY account, currency)
              FROM accounts), '[]'))::text
$$;

GRANT EXECUTE ON FUNCTION payflow_balance() TO :"app";
