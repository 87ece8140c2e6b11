
/*
 * Copyright (C) PayFlow
 *
 * The read side: GET /v1/payments, GET /v1/refunds, GET /v1/ledger/entries
 * and GET /v1/balance.  Each is one statement (sql/0007_lists.sql) that
 * answers with the API's JSON, inside the request's scoped transaction, so
 * row-level security keeps every tenant to its own rows.  The C side
 * validates the parameters and names the offending one.
 */


#include "ngx_http_payflow_lists.h"
#include "ngx_http_payflow_pii.h"


#define NGX_HTTP_PAYFLOW_LIST_ARGS  7


typedef struct {
    const char                 *name;
    size_t                      len;
} ngx_http_payflow_arg_name_t;


static ngx_int_t ngx_http_payflow_list_by_payment(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char *what);
static ngx_int_t ngx_http_payflow_list_id(ngx_http_request_t *r,
    const char *name, const char *prefix, const char **value,
    pf_error_t *err);
static ngx_int_t ngx_http_payflow_list_created(ngx_http_request_t *r,
    const char **gte, const char **lte, pf_error_t *err);


static const char  *ngx_http_payflow_statuses[] = {
    "pending", "processing", "requires_action", "requires_capture",
    "requires_review", "succeeded", "partially_refunded", "refunded",
    "failed", "canceled", NULL
};


ngx_int_t
ngx_http_payflow_lists_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->pay_list = pf_pg_statement_add(pmcf->db, "payflow_pay_list",
        "SELECT payflow_payment_list($1, $2, $3::int, $4, $5::bigint, "
        "$6::bigint, $7)", 7);

    st->refund_list = pf_pg_statement_add(pmcf->db, "payflow_refund_list",
        "SELECT payflow_refund_list($1, $2, $3::int, $4)", 4);

    st->ledger_list = pf_pg_statement_add(pmcf->db, "payflow_ledger_list",
        "SELECT payflow_ledger_entry_list($1, $2, $3::int, $4)", 4);

    st->balance = pf_pg_statement_add(pmcf->db, "payflow_balance",
        "SELECT payflow_balance()", 0);

    if (st->pay_list == NULL || st->refund_list == NULL
        || st->ledger_list == NULL || st->balance == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* GET /v1/payments?status=&created[gte]=&created[lte]=&customer= */

ngx_int_t
ngx_http_payflow_payments_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                        *dst, *src, *p;
    ngx_int_t                      rc;
    ngx_str_t                      v, email;
    ngx_uint_t                     i;
    pf_error_t                     err;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    ngx_memzero(&err, sizeof(pf_error_t));

    values = ngx_pcalloc(r->pool, NGX_HTTP_PAYFLOW_LIST_ARGS * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_list_cursor(r, values, &err);

    if (rc == NGX_OK) {
        rc = ngx_http_payflow_list_created(r, &values[4], &values[5], &err);
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        goto invalid;
    }

    if (ngx_http_arg(r, (u_char *) "status", 6, &v) == NGX_OK) {

        for (i = 0; ngx_http_payflow_statuses[i]; i++) {
            if (v.len == ngx_strlen(ngx_http_payflow_statuses[i])
                && ngx_strncmp(v.data, ngx_http_payflow_statuses[i], v.len)
                   == 0)
            {
                values[3] = ngx_http_payflow_statuses[i];
                break;
            }
        }

        if (values[3] == NULL) {
            pf_json_param_error(&err, "status", "parameter_invalid",
                                "status must be one of pending, processing, "
                                "requires_action, requires_capture, "
                                "requires_review, "
                                "succeeded, partially_refunded, refunded, "
                                "failed, canceled");
            goto invalid;
        }
    }

    if (ngx_http_arg(r, (u_char *) "customer", 8, &v) == NGX_OK) {

        /* "a%40b.example" is how most clients send an address */

        email.data = ngx_pnalloc(r->pool, v.len);
        if (email.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        dst = email.data;
        src = v.data;
        ngx_unescape_uri(&dst, &src, v.len, 0);
        email.len = dst - email.data;

        if (email.len == 0 || email.len > 254
            || ngx_strlchr(email.data, email.data + email.len, '@') == NULL
            || !pf_text_valid(email.data, email.len))
        {
            pf_json_param_error(&err, "customer", "parameter_invalid",
                                "customer must be the customer's "
                                "e-mail address");
            goto invalid;
        }

        /*
         * "<blind index> <e-mail>" finds sealed rows by their index and
         * rows in the clear by their e-mail; " <e-mail>" without an index
         */

        p = ngx_pnalloc(r->pool, NGX_HTTP_PAYFLOW_PII_INDEX_HEX + 2
                                 + email.len);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        values[6] = (char *) p;

        rc = ngx_http_payflow_pii_index(r, &email, p);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_OK) {
            p += NGX_HTTP_PAYFLOW_PII_INDEX_HEX;
        }

        *p++ = ' ';
        *ngx_cpymem(p, email.data, email.len) = '\0';
    }

    return ngx_http_payflow_json_run(r, pmcf->st.pay_list, values,
                                     NGX_HTTP_PAYFLOW_LIST_ARGS,
                                     "listing payments");

invalid:

    return ngx_http_payflow_send_error(r, &err);
}


/* GET /v1/refunds?payment= */

ngx_int_t
ngx_http_payflow_refunds_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_list_by_payment(r, pmcf->st.refund_list,
                                            "listing refunds");
}


/* GET /v1/ledger/entries?payment= */

ngx_int_t
ngx_http_payflow_ledger_entries(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_list_by_payment(r, pmcf->st.ledger_list,
                                            "listing ledger entries");
}


/* a list whose one filter is an optional payment id */

static ngx_int_t
ngx_http_payflow_list_by_payment(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char *what)
{
    ngx_int_t     rc;
    pf_error_t    err;
    const char  **values;

    ngx_memzero(&err, sizeof(pf_error_t));

    values = ngx_pcalloc(r->pool, 4 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_list_cursor(r, values, &err);

    if (rc == NGX_OK) {
        rc = ngx_http_payflow_list_id(r, "payment", "pay_", &values[3], &err);
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_payflow_send_error(r, &err);
    }

    return ngx_http_payflow_json_run(r, statement, values, 4, what);
}


/* GET /v1/balance */

ngx_int_t
ngx_http_payflow_balance(ngx_http_request_t *r, ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_json_run(r, pmcf->st.balance, NULL, 0,
                                     "reading the balance");
}


/*
 * One statement in the request's scoped transaction whose one value is the
 * answer's JSON; NULL (no such object of this tenant) answers 404.
 */

ngx_int_t
ngx_http_payflow_json_run(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char **values,
    ngx_uint_t nvalues, const char *what)
{
    pf_pg_query_t  *q;

    q = ngx_http_payflow_db_query(r, 1, NGX_HTTP_PAYFLOW_DB_READ);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, statement, nvalues, values);

    return ngx_http_payflow_db_run(r, q, what, ngx_http_payflow_json_sent);
}


/* the answer of a one-value statement: its JSON, or 404 */

ngx_int_t
ngx_http_payflow_json_sent(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult    *res;
    ngx_str_t    data;
    pf_error_t   err;

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetisnull(res, 0, 0)) {
        ngx_memzero(&err, sizeof(pf_error_t));

        err.status = NGX_HTTP_NOT_FOUND;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "resource_missing";
        err.message = "no such object";
        err.param = "id";

        return ngx_http_payflow_send_error(r, &err);
    }

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


/* a cursor list with no filter: starting_after, ending_before, limit */

ngx_int_t
ngx_http_payflow_list_run(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char *what)
{
    ngx_int_t     rc;
    pf_error_t    err;
    const char  **values;

    values = ngx_pcalloc(r->pool, 3 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_list_cursor(r, values, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    return ngx_http_payflow_json_run(r, statement, values, 3, what);
}


/* one object by the id in the request's path: get, delete and the like */

ngx_int_t
ngx_http_payflow_id_run(ngx_http_request_t *r, ngx_http_payflow_ctx_t *ctx,
    const pf_pg_statement_t *statement, const char *what)
{
    const char  **v;

    v = ngx_palloc(r->pool, sizeof(char *));
    if (v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (v[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_json_run(r, statement, v, 1, what);
}


/*
 * values[0..2]: starting_after, ending_before, limit.  NGX_DECLINED: err
 * says what is wrong.
 */

ngx_int_t
ngx_http_payflow_list_cursor(ngx_http_request_t *r, const char **values,
    pf_error_t *err)
{
    ngx_http_payflow_list_t  l;

    if (ngx_http_payflow_list_args(r, &l, err) != NGX_OK) {
        return NGX_DECLINED;
    }

    values[0] = ngx_http_payflow_nullable(r, &l.after);
    values[1] = ngx_http_payflow_nullable(r, &l.before);
    values[2] = ngx_http_payflow_int(r, l.limit);

    if ((l.after.len && values[0] == NULL)
        || (l.before.len && values[1] == NULL) || values[2] == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* an optional filter naming an object by id */

static ngx_int_t
ngx_http_payflow_list_id(ngx_http_request_t *r, const char *name,
    const char *prefix, const char **value, pf_error_t *err)
{
    size_t      n;
    ngx_str_t   v;
    ngx_uint_t  i;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &v) != NGX_OK) {
        return NGX_OK;
    }

    n = ngx_strlen(prefix);

    for (i = 0; i < v.len; i++) {
        if (!(isalnum(v.data[i]) || v.data[i] == '_')) {
            break;
        }
    }

    if (v.len <= n || v.len > 64 || i < v.len
        || ngx_strncmp(v.data, prefix, n) != 0)
    {
        pf_json_param_error(err, name, "parameter_invalid",
                            "not an object id of the right kind");
        return NGX_DECLINED;
    }

    *value = ngx_http_payflow_db_str(r->pool, &v);

    return *value ? NGX_OK : NGX_ERROR;
}


/*
 * created[gte] and created[lte], unix seconds, inclusive; also created[gt]
 * and created[lt].  Brackets may come escaped (%5B, %5D).
 */

static ngx_int_t
ngx_http_payflow_list_created(ngx_http_request_t *r, const char **gte,
    const char **lte, pf_error_t *err)
{
    ngx_int_t     n;
    ngx_str_t     v;
    ngx_uint_t    i, k;
    const char  **bound;

    static ngx_http_payflow_arg_name_t  names[] = {
        { "created[gte]", 12 }, { "created%5Bgte%5D", 16 },
        { "created[gt]", 11 }, { "created%5Bgt%5D", 15 },
        { "created[lte]", 12 }, { "created%5Blte%5D", 16 },
        { "created[lt]", 11 }, { "created%5Blt%5D", 15 }
    };

    for (i = 0; i < 8; i++) {
        if (ngx_http_arg(r, (u_char *) names[i].name, names[i].len, &v)
            != NGX_OK)
        {
            continue;
        }

        n = ngx_atoi(v.data, v.len);

        if (n == NGX_ERROR || n > 253402300799) {
            pf_json_param_error(err, names[i & ~1].name, "parameter_invalid",
                                "a time is a unix timestamp in seconds");
            return NGX_DECLINED;
        }

        /* gt and lt are gte and lte a second on; lt=0 is an empty range */

        k = i / 2;
        n += (k == 1) - (k == 3);
        bound = (k < 2) ? gte : lte;

        if (*bound) {
            pf_json_param_error(err, names[i & ~1].name, "parameter_invalid",
                                "give each end of the created range once");
            return NGX_DECLINED;
        }

        *bound = ngx_http_payflow_int(r, n);
        if (*bound == NULL) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
