
/*
 * Copyright (C) PayFlow
 *
 * POST /v1/refunds and GET /v1/refunds/{id}.  A refund is a money
 * operation on a payment, run with its Idempotency-Key by
 * ngx_http_payflow_money_run() as capture and cancel are
 * (ngx_http_payflow_payments.c): the sandbox refunds at once, in the
 * transaction that inserts the refund; at a network provider the refund
 * is reserved as pending first, then asked of the provider, then settled
 * with what the provider said.
 */


#include "ngx_http_payflow_refunds.h"
#include "ngx_http_payflow_idempotency.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_providers.h"
#include "ngx_http_payflow_routing.h"


static ngx_int_t ngx_http_payflow_refund_answer(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_refund_reserved(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_refund_called(ngx_http_request_t *r,
    pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_refund_settled(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_refunds_got(ngx_http_request_t *r,
    pf_pg_query_t *q);


/*
 * A refund as the sandbox does it, and as one at a network provider is
 * reserved (remote), filled once per worker when the statements are
 * known; the money operations' runner switches to the remote one when
 * the sandbox's statement finds the payment at a network provider.
 */

ngx_http_payflow_money_t  ngx_http_payflow_refund_op;
ngx_http_payflow_money_t  ngx_http_payflow_refund_remote_op;


static pf_error_t  ngx_http_payflow_no_refund = {
    NGX_HTTP_NOT_FOUND, PF_ERROR_INVALID_REQUEST, "resource_missing",
    "no such refund", "id", 0, NULL, NULL
};


static const char  *ngx_http_payflow_refund_fields[] = {
    "payment", "amount", "reason", NULL
};


ngx_int_t
ngx_http_payflow_refunds_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

#define NGX_HTTP_PAYFLOW_REFUND                                               \
    "INSERT INTO refunds (id, tenant_id, livemode, payment_id, amount, "     \
    "currency, reason) SELECT $1, p.tenant_id, p.livemode, p.id, "           \
    "coalesce($3::bigint, p.amount_captured - p.amount_refunded), "          \
    "p.currency, $4 FROM payments p"

    st->refund = pf_pg_statement_add(pmcf->db, "payflow_refund",
        NGX_HTTP_PAYFLOW_REFUND " WHERE p.id = $2 "
        "AND " NGX_HTTP_PAYFLOW_LOCAL "RETURNING id", 4);

    st->refund_keyed = pf_pg_statement_add(pmcf->db, "payflow_refund_k",
        NGX_HTTP_PAYFLOW_KEY_CTE("$5", "$6", "$7", "$8", "$9", "$10", "$2",
                                 "$1")
        NGX_HTTP_PAYFLOW_REFUND ", k WHERE p.id = $2 "
        "AND " NGX_HTTP_PAYFLOW_LOCAL "RETURNING id", 10);

    /* a refund at a network provider is reserved first, as pending */

    st->refund_remote = pf_pg_statement_add(pmcf->db, "payflow_refund_r",
        NGX_HTTP_PAYFLOW_REFUND " WHERE p.id = $2 "
        "AND " NGX_HTTP_PAYFLOW_REMOTE "RETURNING id", 4);

    st->refund_remote_keyed = pf_pg_statement_add(pmcf->db,
        "payflow_refund_rk",
        NGX_HTTP_PAYFLOW_KEY_CTE("$5", "$6", "$7", "$8", "$9", "$10", "$2",
                                 "$1")
        NGX_HTTP_PAYFLOW_REFUND ", k WHERE p.id = $2 "
        "AND " NGX_HTTP_PAYFLOW_REMOTE "RETURNING id", 10);

    st->refund_route = pf_pg_statement_add(pmcf->db, "payflow_refund_route",
        "SELECT p.provider, p.id, coalesce(p.provider_reference, p.id), "
        "f.amount, f.currency, f.reason FROM refunds f "
        "JOIN payments p ON p.id = f.payment_id WHERE f.id = $1", 1);

    st->refund_settle = pf_pg_statement_add(pmcf->db,
        "payflow_refund_settle",
        "UPDATE refunds SET status = $2, "
        "provider_reference = coalesce($3, provider_reference), "
        "failure_code = $4 WHERE id = $1 AND status = 'pending'", 4);

    /* the sandbox refunds at once */
    st->refund_succeed = pf_pg_statement_add(pmcf->db,
        "payflow_refund_succeed",
        "UPDATE refunds SET status = 'succeeded', provider_reference = id "
        "WHERE id = $1 AND status = 'pending'", 1);

    st->refund_get = pf_pg_statement_add(pmcf->db, "payflow_refund_get",
        "SELECT payflow_refund_json(f)::text FROM refunds f WHERE id = $1",
        1);

    if (st->refund == NULL || st->refund_keyed == NULL
        || st->refund_remote == NULL || st->refund_remote_keyed == NULL
        || st->refund_route == NULL || st->refund_settle == NULL
        || st->refund_succeed == NULL || st->refund_get == NULL)
    {
        return NGX_ERROR;
    }

    ngx_http_payflow_refund_op.what = "refunding a payment";
    ngx_http_payflow_refund_op.plain = st->refund;
    ngx_http_payflow_refund_op.keyed = st->refund_keyed;
    ngx_http_payflow_refund_op.follow = st->refund_succeed;
    ngx_http_payflow_refund_op.get = st->refund_get;
    ngx_http_payflow_refund_op.answer = ngx_http_payflow_refund_answer;

    ngx_http_payflow_refund_remote_op = ngx_http_payflow_refund_op;
    ngx_http_payflow_refund_remote_op.plain = st->refund_remote;
    ngx_http_payflow_refund_remote_op.keyed = st->refund_remote_keyed;
    ngx_http_payflow_refund_remote_op.follow = st->refund_route;
    ngx_http_payflow_refund_remote_op.answer =
                                           ngx_http_payflow_refund_reserved;

    return NGX_OK;
}


/* POST /v1/refunds {"payment", "amount", "reason"} (permission write) */

ngx_int_t
ngx_http_payflow_refunds_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    json_t                         *v;
    ngx_int_t                       rc;
    ngx_str_t                       id;
    pf_error_t                      err;
    const char                    **values;

    rc = pf_json_check_fields(r->pool, ctx->body,
                              ngx_http_payflow_refund_fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    values = ngx_pcalloc(r->pool, 4 * sizeof(char *));
    if (values == NULL
        || pf_id_generate_ordered(r->pool, "re_", &id) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &id);

    v = json_object_get(ctx->body, "payment");

    if (v == NULL || !json_is_string(v) || json_string_length(v) == 0
        || json_string_length(v) > 64)
    {
        return ngx_http_payflow_bad(r, "payment",
                                    v ? "parameter_invalid"
                                      : "parameter_missing",
                                    "payment must be a payment id");
    }

    values[1] = json_string_value(v);

    v = json_object_get(ctx->body, "amount");

    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0) {
            return ngx_http_payflow_bad(r, "amount", "amount_invalid",
                                        "amount must be a positive integer");
        }

        rc = ngx_http_payflow_amount_over(r, json_integer_value(v));
        if (rc != NGX_DECLINED) {
            return rc;
        }

        values[2] = ngx_http_payflow_integer(r, json_integer_value(v));
        if (values[2] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    v = json_object_get(ctx->body, "reason");

    if (v) {
        if (!json_is_string(v)
            || (ngx_strcmp(json_string_value(v), "duplicate") != 0
                && ngx_strcmp(json_string_value(v), "fraudulent") != 0
                && ngx_strcmp(json_string_value(v),
                              "requested_by_customer") != 0))
        {
            return ngx_http_payflow_bad(r, "reason", "parameter_invalid",
                       "reason must be duplicate, fraudulent or "
                       "requested_by_customer");
        }

        values[3] = json_string_value(v);
    }

    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_money_run(r, ctx, &ngx_http_payflow_refund_op,
                                      values, 4, values[0]);
}


static ngx_int_t
ngx_http_payflow_refund_answer(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult  *op, *refund;

    op = ngx_http_payflow_db_result(q, 0);
    refund = ngx_http_payflow_db_result(q, 2);

    if (PQntuples(op) != 1 || PQntuples(refund) != 1) {
        /* another tenant's payment is as absent as a missing one */
        return ngx_http_payflow_money_error(r, NGX_HTTP_NOT_FOUND,
                                            "resource_missing",
                                            "no such payment", "payment");
    }

    return ngx_http_payflow_money_data(r, refund);
}


/* the refund is reserved (results: refund, route, refund read back) */

static ngx_int_t
ngx_http_payflow_refund_reserved(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_int_t                       exponent;
    PGresult                       *op_row, *row;
    ngx_int_t                       rc;
    ngx_str_t                       name;
    pf_curl_call_t                 *call;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_provider_t    *pv;
    ngx_http_payflow_operation_t   *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    op_row = ngx_http_payflow_db_result(q, 0);
    row = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(op_row) != 1 || PQntuples(row) != 1) {
        return ngx_http_payflow_money_error(r, NGX_HTTP_NOT_FOUND,
                                            "resource_missing",
                                            "no such payment", "payment");
    }

    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_operation_t));
    if (op == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* provider, payment id, reference, amount, currency, reason */

    op->op = NGX_HTTP_PAYFLOW_OP_REFUND;
    op->refund_id.data = (u_char *) ctx->money_values[0];
    op->refund_id.len = ngx_strlen(ctx->money_values[0]);

    op->payment_id.data = (u_char *) PQgetvalue(row, 0, 1);
    op->payment_id.len = PQgetlength(row, 0, 1);
    op->reference.data = (u_char *) PQgetvalue(row, 0, 2);
    op->reference.len = PQgetlength(row, 0, 2);
    op->currency = PQgetvalue(row, 0, 4);
    op->amount = ngx_atoof((u_char *) PQgetvalue(row, 0, 3),
                           PQgetlength(row, 0, 3));
    op->reason = PQgetisnull(row, 0, 5) ? NULL : PQgetvalue(row, 0, 5);

    exponent = ngx_http_payflow_payments_exponent(op->currency);
    if (exponent == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->exponent = exponent;

    name.data = (u_char *) PQgetvalue(row, 0, 0);
    name.len = PQgetlength(row, 0, 0);

    pv = ngx_http_payflow_request_provider(r, &name, 0);
    call = pv ? ngx_http_payflow_provider_call(r, pv) : NULL;

    rc = call ? pv->adapter->request(pv, op, call) : NGX_DECLINED;

    if (rc != NGX_OK) {
        /* the reservation stays pending, for an operator: logged */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow provider: refund %V of payment %V cannot be "
                      "asked of provider \"%V\"", &op->refund_id,
                      &op->payment_id, &name);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->provider = pv;
    ctx->op = op;

    return ngx_http_payflow_provider_run(r, call,
                                         ngx_http_payflow_refund_called);
}


static ngx_int_t
ngx_http_payflow_refund_called(ngx_http_request_t *r, pf_curl_call_t *call)
{
    pf_pg_query_t                       *q;
    const char                         **values;
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_provider_t         *pv;
    ngx_http_payflow_operation_t        *op;
    ngx_http_payflow_main_conf_t        *pmcf;
    ngx_http_payflow_provider_result_t   res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    pv = (ngx_http_payflow_provider_t *) ctx->provider;
    op = ctx->op;

    pv->adapter->response(pv, op, call, &res);

    ngx_http_payflow_provider_record(pmcf, pv, op->op, &res, call->elapsed);

    if (res.status == NULL && res.not_taken) {
        /* refused: nothing refunded, the reservation is released */
        res.status = "failed";
    }

    if (res.status == NULL) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "payflow provider: refund %V at \"%V\" is undecided "
                      "(%s), it stays pending", &op->refund_id, &pv->name,
                      res.code);
        res.status = "pending";
        res.code = NULL;
    }

    values = ngx_pcalloc(r->pool, 4 * sizeof(char *));
    q = ngx_http_payflow_db_query(r, 2, 1);

    if (values == NULL || q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = (char *) op->refund_id.data;
    values[1] = res.status;
    values[2] = ngx_http_payflow_nullable(r, &res.reference);
    values[3] = (ngx_strcmp(res.status, "failed") == 0) ? res.code : NULL;

    ngx_http_payflow_db_set(q, 0, pmcf->st.refund_settle, 4, values);

    ngx_http_payflow_db_set(q, 1, pmcf->st.refund_get, 1, values);

    ctx->db_sql_ok = 0;

    return ngx_http_payflow_db_run(r, q, "recording a refund",
                                   ngx_http_payflow_refund_settled);
}


static ngx_int_t
ngx_http_payflow_refund_settled(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_int_t                 rc;
    ngx_http_payflow_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    rc = ngx_http_payflow_money_data(r, ngx_http_payflow_db_result(q, 1));

    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->idem_key.len) {
        return ngx_http_payflow_idem_store(r);
    }

    return ngx_http_payflow_send_body(r, ctx->response_status,
                                      &ctx->response);
}


/* GET /v1/refunds/{id} */

ngx_int_t
ngx_http_payflow_refunds_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_read_one(r, pmcf->st.refund_get, &ctx->params[0],
                                     ngx_http_payflow_refunds_got,
                                     "reading a refund");
}


static ngx_int_t
ngx_http_payflow_refunds_got(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult    *res;
    ngx_str_t    data;

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1) {
        return ngx_http_payflow_send_error(r, &ngx_http_payflow_no_refund);
    }

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}
