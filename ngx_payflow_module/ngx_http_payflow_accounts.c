
/*
 * Copyright (C) PayFlow
 *
 * Provider accounts per tenant and mode (sql/0025): POST, GET, PATCH and
 * DELETE /v1/provider_accounts.  A new account's secret key is checked
 * first with a cheap authenticated call to its provider, through the
 * worker's non-blocking client (Stripe GET /v1/balance, Paystack GET
 * /balance, Flutterwave GET /v3/balances); only then are the key and the
 * webhook secret sealed (pf_seal, bound to "provider_accounts", tenant,
 * mode and id) and the row written.  The key is never shown again: the
 * account shows a hint, sk_test_...4242.
 */


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_accounts.h"
#include "ngx_http_payflow_lists.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_providers.h"

#include <openssl/crypto.h>


#define NGX_HTTP_PAYFLOW_ACCOUNT_SECRET_MAX   256


typedef struct {
    const char                 *type;
    const char                 *path;           /* the validation call */
    const char                 *test_prefix;    /* of a test-mode key */
    const char                 *live_prefix;
    const char                 *alt_test;       /* or NULL */
    const char                 *alt_live;
} ngx_http_payflow_account_kind_t;


typedef struct {
    ngx_str_t                   id;
    const char                 *type;
    const char                **values;
    ngx_str_t                   secret;         /* in the clear, wiped */
    ngx_str_t                   webhook_secret;
    ngx_http_payflow_provider_t provider;
} ngx_http_payflow_account_op_t;


static ngx_int_t ngx_http_payflow_account_validated(ngx_http_request_t *r,
    pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_account_store(ngx_http_request_t *r,
    ngx_http_payflow_account_op_t *op);
static ngx_int_t ngx_http_payflow_account_write(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char **values,
    ngx_uint_t nvalues, const char *what);
static ngx_int_t ngx_http_payflow_account_written(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_account_fields(ngx_http_request_t *r,
    json_t *body, const char **values, pf_error_t *err);
static ngx_int_t ngx_http_payflow_account_seal(ngx_http_request_t *r,
    ngx_str_t *id, ngx_str_t *in, const char **out);
static void ngx_http_payflow_account_wipe(void *data);
static ngx_int_t ngx_http_payflow_account_unavailable(ngx_http_request_t *r,
    const char *code, const char *message);


static const ngx_http_payflow_account_kind_t  ngx_http_payflow_kinds[] = {
    { "stripe", "/v1/balance", "sk_test_", "sk_live_", "rk_test_",
      "rk_live_" },
    { "paystack", "/balance", "sk_test_", "sk_live_", NULL, NULL },
    { "flutterwave", "/v3/balances", "FLWSECK_TEST-", "FLWSECK-", NULL,
      NULL },
    { NULL, NULL, NULL, NULL, NULL, NULL }
};


static const char  *ngx_http_payflow_account_create_fields[] = {
    "provider", "secret_key", "webhook_secret", "description", "base_url",
    "currencies", "fees", NULL
};

static const char  *ngx_http_payflow_account_update_fields[] = {
    "description", "currencies", "fees", "enabled", NULL
};


ngx_int_t
ngx_http_payflow_accounts_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->account_create = pf_pg_statement_add(pmcf->db,
        "payflow_account_create",
        "SELECT payflow_provider_account_create($1, $2, $3, $4, $5, $6, $7, "
        "$8, $9)", 9);
    st->account_update = pf_pg_statement_add(pmcf->db,
        "payflow_account_update",
        "SELECT payflow_provider_account_update($1, $2, $3, $4, "
        "$5::boolean)", 5);
    st->account_delete = pf_pg_statement_add(pmcf->db,
        "payflow_account_delete",
        "SELECT payflow_provider_account_delete($1)", 1);
    st->account_get = pf_pg_statement_add(pmcf->db, "payflow_account_get",
        "SELECT payflow_provider_account_get($1)", 1);
    st->account_list = pf_pg_statement_add(pmcf->db, "payflow_account_list",
        "SELECT payflow_provider_account_list($1, $2, $3::int)", 3);
    st->account_snapshot = pf_pg_statement_add(pmcf->db,
        "payflow_account_snapshot",
        "SELECT * FROM payflow_provider_accounts_snapshot($1, $2::boolean, "
        "$3)", 3);
    st->account_versions = pf_pg_statement_add(pmcf->db,
        "payflow_account_versions",
        "SELECT tenant_id, version "
        "FROM payflow_provider_account_versions($1::text[])", 1);

    return (st->account_create && st->account_update && st->account_delete
            && st->account_get && st->account_list && st->account_snapshot
            && st->account_versions) ? NGX_OK : NGX_ERROR;
}


/*
 * POST /v1/provider_accounts {"provider", "secret_key", "webhook_secret",
 * "description", "base_url", "currencies", "fees"}
 */

ngx_int_t
ngx_http_payflow_accounts_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                                 *p;
    json_t                                 *v;
    ngx_int_t                               rc;
    ngx_str_t                               s;
    pf_error_t                              err;
    ngx_uint_t                              i;
    const char                             *prefix[2];
    pf_curl_call_t                         *call;
    ngx_pool_cleanup_t                     *cln;
    ngx_http_payflow_account_op_t          *op;
    ngx_http_payflow_main_conf_t           *pmcf;
    const ngx_http_payflow_account_kind_t  *kind;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body,
                              ngx_http_payflow_account_create_fields, &err);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? ngx_http_payflow_send_error(r, &err)
                                    : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (pmcf->keyring.current == NULL) {
        return ngx_http_payflow_account_unavailable(r, "not_configured",
                   "provider accounts need the operator's payflow_kek: "
                   "their secrets are stored sealed");
    }

    v = json_object_get(ctx->body, "provider");
    kind = NULL;

    for (i = 0; v && json_is_string(v) && ngx_http_payflow_kinds[i].type;
         i++)
    {
        if (ngx_strcmp(json_string_value(v), ngx_http_payflow_kinds[i].type)
            == 0)
        {
            kind = &ngx_http_payflow_kinds[i];
            break;
        }
    }

    if (kind == NULL) {
        return ngx_http_payflow_bad(r, "provider",
                                    v ? "parameter_invalid"
                                      : "parameter_missing",
                                    "provider is one of stripe, paystack, "
                                    "flutterwave");
    }

    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_account_op_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (op == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_payflow_account_wipe;
    cln->data = op;

    /* the secret key: printable, the provider's shape, of this mode */

    v = json_object_get(ctx->body, "secret_key");

    if (v == NULL || !json_is_string(v) || json_string_length(v) < 12
        || json_string_length(v) > NGX_HTTP_PAYFLOW_ACCOUNT_SECRET_MAX)
    {
        return ngx_http_payflow_bad(r, "secret_key",
                                    v ? "parameter_invalid"
                                      : "parameter_missing",
                                    "secret_key: the account's secret API "
                                    "key, 12 to 256 characters");
    }

    s.data = (u_char *) json_string_value(v);
    s.len = json_string_length(v);

    for (i = 0; i < s.len; i++) {
        if (s.data[i] <= 0x20 || s.data[i] >= 0x7f) {
            return ngx_http_payflow_bad(r, "secret_key", "parameter_invalid",
                                        "secret_key holds a character that "
                                        "is not printable");
        }
    }

    prefix[0] = ctx->auth.livemode ? kind->live_prefix : kind->test_prefix;
    prefix[1] = ctx->auth.livemode ? kind->alt_live : kind->alt_test;

    if (ngx_strncmp(s.data, prefix[0], ngx_strlen(prefix[0])) != 0
        && (prefix[1] == NULL
            || ngx_strncmp(s.data, prefix[1], ngx_strlen(prefix[1])) != 0))
    {
        return ngx_http_payflow_bad(r, "secret_key", "parameter_invalid",
                                    ctx->auth.livemode
                                    ? "secret_key must be the provider's "
                                      "live secret key (a live-mode API key "
                                      "connects live accounts)"
                                    : "secret_key must be the provider's "
                                      "test secret key (a test-mode API key "
                                      "connects test accounts)");
    }

    if (s.len < ngx_strlen(prefix[0]) + 16) {
        /* the hint shows four characters: never most of a short key */
        return ngx_http_payflow_bad(r, "secret_key", "parameter_invalid",
                                    "secret_key is too short for the "
                                    "provider's key");
    }

    op->secret.len = s.len;
    op->secret.data = ngx_pstrdup(r->pool, &s);
    if (op->secret.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v = json_object_get(ctx->body, "webhook_secret");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0
            || json_string_length(v) > NGX_HTTP_PAYFLOW_ACCOUNT_SECRET_MAX)
        {
            return ngx_http_payflow_bad(r, "webhook_secret",
                                        "parameter_invalid",
                                        "webhook_secret: 1 to 256 "
                                        "characters");
        }

        s.data = (u_char *) json_string_value(v);
        s.len = json_string_length(v);

        op->webhook_secret.len = s.len;
        op->webhook_secret.data = ngx_pstrdup(r->pool, &s);
        if (op->webhook_secret.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* values: id, provider, description, secret, hint, webhook secret,
     * base_url, currencies, fees */

    op->values = ngx_pcalloc(r->pool, 9 * sizeof(char *));
    if (op->values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->values[1] = kind->type;
    op->type = kind->type;
    op->provider.adapter = ngx_http_payflow_adapter(kind->type);

    if (op->provider.adapter == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_account_fields(r, ctx->body, op->values, &err);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? ngx_http_payflow_send_error(r, &err)
                                    : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v = json_object_get(ctx->body, "base_url");

    if (v && !json_is_null(v)) {
        if (!pmcf->account_base_url) {
            return ngx_http_payflow_bad(r, "base_url", "parameter_invalid",
                                        "base_url is not allowed here: the "
                                        "provider's own API is used");
        }

        if (!json_is_string(v) || json_string_length(v) > 2048
            || (ngx_strncmp(json_string_value(v), "https://", 8) != 0
                && ngx_strncmp(json_string_value(v), "http://", 7) != 0))
        {
            return ngx_http_payflow_bad(r, "base_url", "parameter_invalid",
                                        "base_url must be an http(s) URL of "
                                        "at most 2048 bytes");
        }

        s.data = (u_char *) json_string_value(v);
        s.len = json_string_length(v);

        while (s.len && s.data[s.len - 1] == '/') {
            s.len--;
        }

        /* a host after the scheme, as the table's CHECK wants it */
        p = s.data + (s.data[4] == 's' ? 8 : 7);

        if (p >= s.data + s.len || *p == '/' || *p == '?' || *p == '#') {
            return ngx_http_payflow_bad(r, "base_url", "parameter_invalid",
                                        "base_url must name a host");
        }

        op->provider.base_url = s;
        op->values[6] = ngx_http_payflow_db_str(r->pool, &s);
        if (op->values[6] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else {
        op->provider.base_url = op->provider.adapter->default_url;
    }

    /* the hint: the key's prefix, "...", its last four */

    p = ngx_pnalloc(r->pool, 24);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->values[4] = (char *) p;
    s.len = ngx_min(ngx_strlen(prefix[0]), 14);

    if (prefix[1] && ngx_strncmp(op->secret.data, prefix[1],
                                 ngx_strlen(prefix[1])) == 0)
    {
        s.len = ngx_strlen(prefix[1]);
    }

    p = ngx_cpymem(p, op->secret.data, s.len);
    p = ngx_cpymem(p, "...", 3);
    p = ngx_cpymem(p, op->secret.data + op->secret.len - 4, 4);
    *p = '\0';

    if (pf_id_generate(r->pool, "pa_", &op->id) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->values[0] = ngx_http_payflow_db_str(r->pool, &op->id);
    if (op->values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the key, tried at the provider before anything is stored */

    op->provider.name = op->id;
    op->provider.secret = op->secret;
    op->provider.connect_timeout = 5000;
    op->provider.timeout = 10000;
    op->provider.livemode = ctx->auth.livemode;

    call = ngx_http_payflow_provider_call(r, &op->provider);
    if (call == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    call->method = "GET";
    call->max_response = 64 * 1024;

    if (ngx_http_payflow_provider_url(call, &op->provider, kind->path, NULL,
                                      "")
        != NGX_OK
        || ngx_http_payflow_provider_bearer(call, &op->provider) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->op = op;

    return ngx_http_payflow_provider_run(r, call,
                                         ngx_http_payflow_account_validated);
}


/* 2xx: the key works; 401/403: refused, with the provider's reason */

static ngx_int_t
ngx_http_payflow_account_validated(ngx_http_request_t *r,
    pf_curl_call_t *call)
{
    u_char                         *p, *msg;
    json_t                         *doc, *m;
    size_t                          len;
    ngx_uint_t                      i;
    json_error_t                    jerr;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_account_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    op = ctx->op;

    if (call->result == PF_CURL_OK && call->status >= 200
        && call->status < 300)
    {
        return ngx_http_payflow_account_store(r, op);
    }

    if (call->result != PF_CURL_OK || call->status >= 500
        || call->status == 429)
    {
        return ngx_http_payflow_account_unavailable(r,
                   "provider_unavailable",
                   "the provider could not be reached to check the key; "
                   "nothing was stored, try again");
    }

    /* the provider's own words: Stripe's error.message, the others' */

    doc = json_loadb((char *) call->response.data, call->response.len, 0,
                     &jerr);
    m = json_object_get(json_object_get(doc, "error"), "message");
    if (!json_is_string(m)) {
        m = json_object_get(doc, "message");
    }

    len = json_is_string(m) ? ngx_min(json_string_length(m), 200) : 0;

    msg = ngx_pnalloc(r->pool, len + 80);
    if (msg == NULL) {
        if (doc) {
            json_decref(doc);
        }

        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(msg, "%s refused the key (HTTP %ui)", op->type,
                    call->status);

    if (len) {
        p = ngx_cpymem(p, ": ", 2);

        for (i = 0; i < len; i++) {
            /* printable only: it is the provider's text, not ours */
            *p++ = (json_string_value(m)[i] >= 0x20
                    && json_string_value(m)[i] < 0x7f)
                   ? json_string_value(m)[i] : '?';
        }
    }

    *p = '\0';

    if (doc) {
        json_decref(doc);
    }

    return ngx_http_payflow_bad(r, "secret_key", "provider_rejected",
                                (char *) msg);
}


static ngx_int_t
ngx_http_payflow_account_store(ngx_http_request_t *r,
    ngx_http_payflow_account_op_t *op)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (ngx_http_payflow_account_seal(r, &op->id, &op->secret,
                                      &op->values[3])
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (op->webhook_secret.len
        && ngx_http_payflow_account_seal(r, &op->id, &op->webhook_secret,
                                         &op->values[5])
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_account_write(r, pmcf->st.account_create,
                                          op->values, 9,
                                          "connecting a provider account");
}


/* GET /v1/provider_accounts */

ngx_int_t
ngx_http_payflow_accounts_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_list_run(r, pmcf->st.account_list,
                                     "listing provider accounts");
}


/* GET /v1/provider_accounts/{id} */

ngx_int_t
ngx_http_payflow_accounts_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_id_run(r, ctx, pmcf->st.account_get,
                                   "reading a provider account");
}


/* PATCH /v1/provider_accounts/{id} {"description", "currencies", "fees",
 * "enabled"} */

ngx_int_t
ngx_http_payflow_accounts_update(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    json_t                        *v;
    ngx_int_t                      rc;
    pf_error_t                     err;
    const char                   **values, *fields[9];
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body,
                              ngx_http_payflow_account_update_fields, &err);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? ngx_http_payflow_send_error(r, &err)
                                    : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_pcalloc(r->pool, 5 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(fields, sizeof(fields));

    rc = ngx_http_payflow_account_fields(r, ctx->body, fields, &err);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? ngx_http_payflow_send_error(r, &err)
                                    : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[1] = fields[2];
    values[2] = fields[7];
    values[3] = fields[8];

    v = json_object_get(ctx->body, "enabled");

    if (v && !json_is_boolean(v)) {
        return ngx_http_payflow_bad(r, "enabled", "parameter_invalid",
                                    "enabled must be true or false");
    }

    values[4] = v ? (json_is_true(v) ? "true" : "false") : NULL;

    return ngx_http_payflow_account_write(r, pmcf->st.account_update, values,
                                          5, "updating a provider account");
}


/* DELETE /v1/provider_accounts/{id} */

ngx_int_t
ngx_http_payflow_accounts_delete(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    values = ngx_palloc(r->pool, sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_account_write(r, pmcf->st.account_delete, values,
                                          1, "closing a provider account");
}


/*
 * A change to the tenant's accounts; once committed, this worker's copy
 * is made again before its next payment (the other workers' within a
 * second, when they see the version move).
 */

static ngx_int_t
ngx_http_payflow_account_write(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char **values,
    ngx_uint_t nvalues, const char *what)
{
    pf_pg_query_t           *q;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, NGX_HTTP_PAYFLOW_DB_READ);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, statement, nvalues, values);

    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q, what,
                                   ngx_http_payflow_account_written);
}


static ngx_int_t
ngx_http_payflow_account_written(ngx_http_request_t *r, pf_pg_query_t *q)
{
    pf_error_t               err;
    const char              *state;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    ctx->db_sql_ok = 0;

    if (q->status == PF_PG_SQL_ERROR) {
        state = pf_pg_query_sqlstate(q);

        if (state && ngx_strcmp(state, "PF030") == 0) {
            pf_json_param_error(&err, "provider", "account_limit",
                                "at most 32 provider accounts per tenant "
                                "and mode");
            return ngx_http_payflow_send_error(r, &err);
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow: storing a provider account failed: %s (%s)",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY), state);

        return ngx_http_payflow_send_db_error(r, q);
    }

    ngx_http_payflow_accounts_changed(&ctx->auth.tenant_id,
                                      ctx->auth.livemode);

    return ngx_http_payflow_json_sent(r, q);
}


/*
 * description (values[2]), currencies (values[7], a JSON array of ISO 4217
 * codes), fees (values[8], {"percent": 0-10000 basis points, "fixed":
 * minor units}).  NGX_DECLINED: err says which is wrong.
 */

static ngx_int_t
ngx_http_payflow_account_fields(ngx_http_request_t *r, json_t *body,
    const char **values, pf_error_t *err)
{
    char        *text;
    u_char       code[4];
    json_t      *v, *item;
    size_t       i;
    ngx_str_t    s;
    ngx_uint_t   k;
    const char  *key;

    v = json_object_get(body, "description");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > 500
            || !pf_text_valid((u_char *) json_string_value(v),
                              json_string_length(v)))
        {
            pf_json_param_error(err, "description", "parameter_invalid",
                                "description: text of at most 500 bytes");
            return NGX_DECLINED;
        }

        values[2] = json_string_value(v);
    }

    v = json_object_get(body, "currencies");

    if (v && !json_is_null(v)) {
        if (!json_is_array(v) || json_array_size(v) > 50) {
            pf_json_param_error(err, "currencies", "parameter_invalid",
                                "currencies: an array of at most 50 ISO "
                                "4217 codes");
            return NGX_DECLINED;
        }

        json_array_foreach(v, i, item) {
            if (json_is_string(item) && json_string_length(item) == 3) {
                for (k = 0; k < 3; k++) {
                    code[k] = ngx_toupper(json_string_value(item)[k]);
                }

                code[3] = '\0';
            }

            if (!json_is_string(item) || json_string_length(item) != 3
                || ngx_http_payflow_payments_exponent((char *) code)
                   == NGX_ERROR)
            {
                pf_json_param_error(err, "currencies", "parameter_invalid",
                                    "currencies: ISO 4217 codes such as "
                                    "\"usd\"");
                return NGX_DECLINED;
            }
        }

        if (pf_response_dump(r->pool, json_incref(v), &s) != NGX_OK) {
            return NGX_ERROR;
        }

        text = ngx_http_payflow_db_str(r->pool, &s);
        if (text == NULL) {
            return NGX_ERROR;
        }

        values[7] = text;
    }

    v = json_object_get(body, "fees");

    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            goto bad_fees;
        }

        json_object_foreach(v, key, item) {
            if (!json_is_integer(item) || json_integer_value(item) < 0
                || (ngx_strcmp(key, "percent") == 0
                    ? json_integer_value(item) > 10000
                    : ngx_strcmp(key, "fixed") == 0
                      ? json_integer_value(item) > 100000000
                      : 1))
            {
                goto bad_fees;
            }
        }

        if (pf_response_dump(r->pool, json_incref(v), &s) != NGX_OK) {
            return NGX_ERROR;
        }

        text = ngx_http_payflow_db_str(r->pool, &s);
        if (text == NULL) {
            return NGX_ERROR;
        }

        values[8] = text;
    }

    return NGX_OK;

bad_fees:

    pf_json_param_error(err, "fees", "parameter_invalid",
                        "fees: {\"percent\": basis points (0 to 10000), "
                        "\"fixed\": minor units}");

    return NGX_DECLINED;
}


/* "provider_accounts\n<tenant>\n<t|l>\n<id>": what a secret belongs to */

static ngx_int_t
ngx_http_payflow_account_seal(ngx_http_request_t *r, ngx_str_t *id,
    ngx_str_t *in, const char **out)
{
    ngx_str_t                      aad, sealed;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (pf_seal_aad(r->pool, "provider_accounts", &ctx->auth.tenant_id,
                    ctx->auth.livemode, id, &aad)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (pf_seal(r->pool, &pmcf->keyring, &aad, in, &sealed) != NGX_OK) {
        return NGX_ERROR;
    }

    *out = (const char *) sealed.data;

    return NGX_OK;
}


static void
ngx_http_payflow_account_wipe(void *data)
{
    ngx_http_payflow_account_op_t *op = data;

    if (op->secret.len) {
        OPENSSL_cleanse(op->secret.data, op->secret.len);
    }

    if (op->webhook_secret.len) {
        OPENSSL_cleanse(op->webhook_secret.data, op->webhook_secret.len);
    }
}


static ngx_int_t
ngx_http_payflow_account_unavailable(ngx_http_request_t *r, const char *code,
    const char *message)
{
    pf_error_t  err;

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_SERVICE_UNAVAILABLE;
    err.type = PF_ERROR_PROVIDER;
    err.code = code;
    err.message = message;

    return ngx_http_payflow_send_error(r, &err);
}
