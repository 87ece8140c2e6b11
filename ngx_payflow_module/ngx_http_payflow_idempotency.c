
/*
 * Copyright (C) PayFlow
 *
 * Idempotency-Key: the request's fingerprint, the key's statements and
 * the answers a key gives.  A key is inserted by the statement of the
 * operation it gates (payflow_payment_create() for a payment,
 * NGX_HTTP_PAYFLOW_KEY_CTE ahead of a capture, cancel or refund), so that
 * key and operation commit together.  A payment's answer is put on its key
 * by the payment's own statements, in the envelope built here; capture,
 * cancel and refund store theirs in a second round trip (idem_store).  A
 * key that belongs to another request is answered from (idem_other): a
 * different request is refused (422), a running one is a 409, a finished
 * one is replayed byte for byte, and one whose request died before storing
 * its answer is settled once its lock has expired (finished from the
 * object it made, or released for the retry; the background jobs complete
 * such keys too).
 */


#include "ngx_http_payflow_idempotency.h"
#include "ngx_http_payflow_payments.h"

#include <openssl/evp.h>


static ngx_int_t ngx_http_payflow_payments_stored(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_idem_restored(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_idem_replay(ngx_http_request_t *r,
    PGresult *key);
static ngx_int_t ngx_http_payflow_idem_settled(ngx_http_request_t *r,
    pf_pg_query_t *q);


const char  *ngx_http_payflow_idem_names[] = {
    "", "new", "replayed", "in_use", "reused"
};


ngx_int_t
ngx_http_payflow_idempotency_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->idem_get = pf_pg_statement_add(pmcf->db, "payflow_idem_get",
        "SELECT encode(fingerprint, 'hex'), phase, "
        "coalesce(locked_until > now(), false), response_status, "
        "response_body, payment_id, request_id, object_id, "
        "coalesce(xmin = pg_current_xact_id_if_assigned()::xid, false) "
        "FROM idempotency_keys "
        "WHERE tenant_id = $1 AND livemode = $2::boolean AND key = $3", 3);

    /* a key whose lock expired without an answer, settled for its retry */
    st->idem_settle = pf_pg_statement_add(pmcf->db, "payflow_idem_settle",
        "SELECT payflow_complete_idempotency_keys(1, $1, $2::boolean, $3)",
        3);

    st->idem_finish = pf_pg_statement_add(pmcf->db, "payflow_idem_finish",
        "UPDATE idempotency_keys SET phase = 'finished', "
        "response_status = $4::int, response_body = $5, locked_until = NULL "
        "WHERE tenant_id = $1 AND livemode = $2::boolean AND key = $3 "
        "AND phase <> 'finished'", 5);

    if (st->idem_get == NULL || st->idem_finish == NULL
        || st->idem_settle == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * This request's answer envelope split around the payment, as
 * NUL-terminated strings: what pf_response_data_body() (or, for a failed
 * payment, pf_response_error_body()) writes, so that an answer assembled
 * by the database is byte for byte the one C would send.  Sets
 * ctx->response_status.
 */

ngx_int_t
ngx_http_payflow_envelope(ngx_http_request_t *r, const char **head,
    const char **tail)
{
    u_char                  *p;
    ngx_str_t                body, part;
    pf_error_t               err;
    const char              *mark;
    ngx_http_payflow_ctx_t  *ctx;

    static ngx_str_t  zero = ngx_string("0");

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ngx_http_payflow_payment_error(r, &err);

    ctx->response_status = err.status;

    if (err.status == NGX_HTTP_OK) {
        mark = "\"data\":0";

        if (pf_response_data_body(r->pool, &zero,
                                  ngx_http_payflow_request_id(r), &body)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else {
        mark = "\"payment\":0";
        err.object = &zero;

        if (pf_response_error_body(r->pool, &err,
                                   ngx_http_payflow_request_id(r), &body)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    p = ngx_strnstr(body.data, (char *) mark, body.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    part.data = body.data;
    part.len = p + ngx_strlen(mark) - 1 - body.data;

    *head = ngx_http_payflow_db_str(r->pool, &part);

    part.data = p + ngx_strlen(mark);
    part.len = body.data + body.len - part.data;

    *tail = ngx_http_payflow_db_str(r->pool, &part);

    return (*head && *tail) ? NGX_OK : NGX_ERROR;
}


/* n statement parameters, the first three naming the key: tenant, mode, key */

const char **
ngx_http_payflow_idem_values(ngx_http_request_t *r, ngx_uint_t n)
{
    const char              **values;
    ngx_http_payflow_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    values = ngx_pcalloc(r->pool, n * sizeof(char *));
    if (values == NULL) {
        return NULL;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);
    values[1] = ctx->auth.livemode ? "true" : "false";
    values[2] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);

    return (values[0] && values[2]) ? values : NULL;
}


/* ctx->response goes on the key, then to the client */

ngx_int_t
ngx_http_payflow_idem_store(ngx_http_request_t *r)
{
    u_char                         *p;
    pf_pg_query_t                  *q;
    const char                    **values;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_main_conf_t   *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, 1);
    values = ngx_http_payflow_idem_values(r, 5);
    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);

    if (q == NULL || values == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf(p, "%ui", ctx->response_status) = '\0';

    values[3] = (char *) p;
    values[4] = ngx_http_payflow_db_str(r->pool, &ctx->response);

    if (values[4] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.idem_finish, 5, values);

    ctx->db_sql_ok = 0;

    return ngx_http_payflow_db_run(r, q, "storing an idempotent response",
                                   ngx_http_payflow_payments_stored);
}


/*
 * The key was finished by this request, or meanwhile by another (a retry
 * resuming it too, the completer, or the first request outliving its
 * lock): then what the key holds is the answer, so that every answer the
 * key ever gives is the same.
 */

static ngx_int_t
ngx_http_payflow_payments_stored(ngx_http_request_t *r, pf_pg_query_t *q)
{
    char                          *n;
    const char                   **values;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    n = PQcmdTuples(ngx_http_payflow_db_result(q, 0));

    if (n[0] != '0') {
        ctx->idem = NGX_HTTP_PAYFLOW_IDEM_NEW;

        return ngx_http_payflow_send_body(r, ctx->response_status,
                                          &ctx->response);
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    /* tenant, mode and key, as idem_finish had them */
    values = ngx_http_payflow_db_stmt(q, 0)->values;

    /* a new query: its snapshot sees the other's commit */

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.idem_get, 3, values);

    return ngx_http_payflow_db_run(r, q, "reading an idempotent response",
                                   ngx_http_payflow_idem_restored);
}


static ngx_int_t
ngx_http_payflow_idem_restored(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                *key;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    key = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(key) == 1
        && ngx_strcmp(PQgetvalue(key, 0, 1), "finished") == 0)
    {
        return ngx_http_payflow_idem_replay(r, key);
    }

    /* purged in between: nothing else will ever be answered */

    return ngx_http_payflow_send_body(r, ctx->response_status,
                                      &ctx->response);
}


ngx_int_t
ngx_http_payflow_idem_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    pf_error_t               err;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    ctx->idem = (status == NGX_HTTP_CONFLICT) ? NGX_HTTP_PAYFLOW_IDEM_IN_USE
                                              : NGX_HTTP_PAYFLOW_IDEM_REUSED;
    ctx->payment_id.len = 0;

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = status;
    err.type = PF_ERROR_IDEMPOTENCY;
    err.code = code;
    err.message = message;
    err.param = "Idempotency-Key";
    err.retry_after = (status == NGX_HTTP_CONFLICT) ? 1 : 0;

    return ngx_http_payflow_send_error(r, &err);
}


/* SHA-256 of method, path and the raw body, as lowercase hex */

ngx_int_t
ngx_http_payflow_fingerprint(ngx_http_request_t *r, u_char *hex)
{
    u_char        digest[EVP_MAX_MD_SIZE];
    ngx_int_t     rc;
    ngx_chain_t  *cl;
    EVP_MD_CTX   *md;
    unsigned int  len;

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(md, r->method_name.data, r->method_name.len) != 1
        || EVP_DigestUpdate(md, "\n", 1) != 1
        || EVP_DigestUpdate(md, r->uri.data, r->uri.len) != 1
        || EVP_DigestUpdate(md, "\n", 1) != 1)
    {
        goto done;
    }

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            if (EVP_DigestUpdate(md, cl->buf->pos,
                                 cl->buf->last - cl->buf->pos)
                != 1)
            {
                goto done;
            }
        }
    }

    if (EVP_DigestFinal_ex(md, digest, &len) != 1) {
        goto done;
    }

    *ngx_hex_dump(hex, digest, len) = '\0';
    rc = NGX_OK;

done:

    EVP_MD_CTX_free(md);

    return rc;
}


/* a finished key (an idem_get row): its stored response, byte for byte */

static ngx_int_t
ngx_http_payflow_idem_replay(ngx_http_request_t *r, PGresult *key)
{
    ngx_str_t                stored, value;
    ngx_uint_t               status;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    ctx->idem = NGX_HTTP_PAYFLOW_IDEM_REPLAYED;

    /* $payflow_payment_id: the key's payment, not one this request made */

    ctx->payment_id.len = 0;

    if (!PQgetisnull(key, 0, 5)) {
        value.data = (u_char *) PQgetvalue(key, 0, 5);
        value.len = PQgetlength(key, 0, 5);

        ctx->payment_id.data = ngx_pstrdup(r->pool, &value);
        if (ctx->payment_id.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->payment_id.len = value.len;
    }

    status = ngx_atoi((u_char *) PQgetvalue(key, 0, 3),
                      PQgetlength(key, 0, 3));

    stored.len = PQgetlength(key, 0, 4);
    stored.data = ngx_pnalloc(r->pool, stored.len);
    if (stored.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(stored.data, PQgetvalue(key, 0, 4), stored.len);

    ngx_str_set(&value, "true");

    if (pf_response_add_header(r, "Idempotent-Replayed", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_body(r, status, &stored);
}


/*
 * The key belongs to another request: a different request is refused,
 * a finished one replayed byte for byte, a running one is a 409, and one
 * whose request died after its transaction committed is finished from the
 * object it made.
 */

ngx_int_t
ngx_http_payflow_idem_other(ngx_http_request_t *r, PGresult *key)
{
    u_char                         hex[2 * 32 + 1];
    const char                   **values;
    pf_pg_query_t                 *q;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ngx_http_payflow_fingerprint(r, hex) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_strcmp(PQgetvalue(key, 0, 0), hex) != 0) {
        return ngx_http_payflow_idem_error(r, 422, "idempotency_key_reused",
                   "this Idempotency-Key was used with a different "
                   "request");
    }

    if (ngx_strcmp(PQgetvalue(key, 0, 1), "finished") == 0) {
        return ngx_http_payflow_idem_replay(r, key);
    }

    if (PQgetvalue(key, 0, 2)[0] == 't') {
        return ngx_http_payflow_idem_error(r, NGX_HTTP_CONFLICT,
                   "idempotency_key_in_use",
                   "a request with this Idempotency-Key is in progress");
    }

    /*
     * The lock expired without an answer: the completer settles this key
     * now (finished from the object if its operation ran, deleted if it
     * did not), then the key is read again.
     */

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 2, 1);
    values = ngx_http_payflow_idem_values(r, 3);

    if (q == NULL || values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.idem_settle, 3, values);

    ngx_http_payflow_db_set(q, 1, pmcf->st.idem_get, 3, values);

    ctx->db_sql_ok = 0;

    return ngx_http_payflow_db_run(r, q, "resuming an idempotent request",
                                   ngx_http_payflow_idem_settled);
}


/*
 * A replay if the key was finished; otherwise it was deleted (its
 * operation never ran) or another request is settling it, and the client
 * is told to retry: that retry runs afresh.
 */

static ngx_int_t
ngx_http_payflow_idem_settled(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult  *key;

    key = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(key) == 1
        && ngx_strcmp(PQgetvalue(key, 0, 1), "finished") == 0)
    {
        return ngx_http_payflow_idem_replay(r, key);
    }

    return ngx_http_payflow_idem_error(r, NGX_HTTP_CONFLICT,
               "idempotency_key_in_use",
               "a request with this Idempotency-Key is being settled; "
               "retry");
}


/*
 * The request's Idempotency-Key into ctx->idem_key: NGX_OK with one,
 * NGX_DECLINED without (empty), NGX_ABORT if it is not 1 to 255 bytes of
 * text (answered by ngx_http_payflow_idem_invalid()).
 */

ngx_int_t
ngx_http_payflow_idem_header(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    if (ngx_http_payflow_header(r, "Idempotency-Key", &ctx->idem_key)
        != NGX_OK)
    {
        ngx_str_null(&ctx->idem_key);
        return NGX_DECLINED;
    }

    if (ctx->idem_key.len == 0 || ctx->idem_key.len > 255
        || !pf_text_valid(ctx->idem_key.data, ctx->idem_key.len))
    {
        return NGX_ABORT;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_payflow_idem_invalid(ngx_http_request_t *r)
{
    return ngx_http_payflow_idem_error(r, NGX_HTTP_BAD_REQUEST,
               "idempotency_key_invalid",
               "Idempotency-Key must be 1 to 255 bytes of UTF-8 text "
               "without control characters");
}
