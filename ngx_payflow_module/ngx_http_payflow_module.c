
/*
 * Copyright (C) PayFlow
 *
 * ngx_http_payflow_module: the payment API.  This file declares the
 * directives, owns the per-worker PostgreSQL pool and wraps every response
 * of a PayFlow location: X-Request-Id, and nginx's own error pages (413,
 * 405, ...) turned into the JSON envelope.  Handlers live in their own
 * files.
 */


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_api.h"
#include "ngx_http_payflow_auth.h"
#include "ngx_http_payflow_health.h"
#include "ngx_http_payflow_jobs.h"
#include "ngx_http_payflow_sealer.h"
#include "ngx_http_payflow_lists.h"
#include "ngx_http_payflow_keys.h"
#include "ngx_http_payflow_metrics.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_providers.h"
#include "ngx_http_payflow_webhook.h"
#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_risk.h"
#include "ngx_http_payflow_pii.h"
#include "ngx_http_payflow_accounts.h"


#define NGX_HTTP_PAYFLOW_REQUEST_ID_MAX  128


static void ngx_http_payflow_db_done(pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_payflow_request_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_uint_t ngx_http_payflow_request_id_valid(ngx_str_t *id);
static ngx_int_t ngx_http_payflow_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);

static char *ngx_http_payflow_db(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_payflow_handler(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

static void *ngx_http_payflow_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_payflow_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_payflow_max_amount(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_payflow_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_payflow_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_payflow_post_read(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_payflow_init_process(ngx_cycle_t *cycle);
static void ngx_http_payflow_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_payflow_pii_modes[] = {
    { ngx_string("sealed"), 1 },
    { ngx_string("clear"), 0 },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_payflow_commands[] = {

    { ngx_string("payflow_db"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_db,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_key_pepper"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_payflow_pepper,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_kek"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE23,
      ngx_http_payflow_kek,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_customer_pii"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, customer_pii),
      &ngx_http_payflow_pii_modes },

    { ngx_string("payflow_reseal"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, reseal),
      NULL },

    { ngx_string("payflow_provider_account_base_url"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, account_base_url),
      NULL },

    { ngx_string("payflow_key_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_key_cache,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_static_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_payflow_static_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_admin_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_payflow_admin_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_jwt_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE3,
      ngx_http_payflow_jwt_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_jwt"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_jwt,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_max_amount"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_payflow_max_amount,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_risk"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_risk,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_risk_rule"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_payflow_risk_rule,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_provider"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_payflow_provider,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_route"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_payflow_route,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_provider_breaker"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_breaker,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_provider_deadline"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, provider_deadline),
      NULL },

    { ngx_string("payflow_reconcile_after"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, reconcile_after),
      NULL },

    { ngx_string("payflow_jobs_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, jobs_interval),
      NULL },

    { ngx_string("payflow_ledger_seal_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_main_conf_t, seal_interval),
      NULL },

    { ngx_string("payflow_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_payflow_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PAYFLOW_HEALTH,
      NULL },

    { ngx_string("payflow_ready"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_payflow_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PAYFLOW_READY,
      NULL },

    { ngx_string("payflow_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_payflow_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PAYFLOW_API,
      NULL },

    { ngx_string("payflow_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_payflow_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PAYFLOW_ADMIN,
      NULL },

    { ngx_string("payflow_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_payflow_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PAYFLOW_METRICS,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_payflow_module_ctx = {
    ngx_http_payflow_add_variables,        /* preconfiguration */
    ngx_http_payflow_init,                 /* postconfiguration */

    ngx_http_payflow_create_main_conf,     /* create main configuration */
    ngx_http_payflow_init_main_conf,       /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_payflow_create_loc_conf,      /* create location configuration */
    ngx_http_payflow_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_payflow_module = {
    NGX_MODULE_V1,
    &ngx_http_payflow_module_ctx,          /* module context */
    ngx_http_payflow_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_payflow_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_payflow_exit_process,         /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_payflow_vars[] = {

    { ngx_string("payflow_request_id"), NULL,
      ngx_http_payflow_request_id_variable, 0, 0, 0 },

    { ngx_string("payflow_tenant_id"), NULL,
      ngx_http_payflow_auth_variable, NGX_HTTP_PAYFLOW_VAR_TENANT_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_key_id"), NULL,
      ngx_http_payflow_auth_variable, NGX_HTTP_PAYFLOW_VAR_KEY_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_mode"), NULL,
      ngx_http_payflow_auth_variable, NGX_HTTP_PAYFLOW_VAR_MODE,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_role"), NULL,
      ngx_http_payflow_auth_variable, NGX_HTTP_PAYFLOW_VAR_ROLE,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_principal"), NULL,
      ngx_http_payflow_auth_variable, NGX_HTTP_PAYFLOW_VAR_PRINCIPAL,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_payment_id"), NULL,
      ngx_http_payflow_payment_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_idempotency"), NULL,
      ngx_http_payflow_payment_variable, 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_provider"), NULL,
      ngx_http_payflow_payment_variable, 2, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static const char  *ngx_http_payflow_kind_names[] = {
    "", "payflow_health", "payflow_ready", "payflow_api", "payflow_admin",
    "payflow_metrics", "payflow_webhook"
};


static ngx_str_t  ngx_http_payflow_request_id_name =
    ngx_string("payflow_request_id");
static ngx_str_t  ngx_http_payflow_unknown_id = ngx_string("req_unknown");


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_http_payflow_ctx_t *
ngx_http_payflow_get_ctx(ngx_http_request_t *r)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_ctx_t));
        if (ctx == NULL) {
            return NULL;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_payflow_module);
    }

    return ctx;
}


/*
 * The request id is a cacheable indexed variable, so it stays the same
 * across internal redirects (which clear module contexts).
 */

ngx_str_t *
ngx_http_payflow_request_id(ngx_http_request_t *r)
{
    ngx_str_t                     *id;
    ngx_http_variable_value_t     *vv;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    vv = ngx_http_get_indexed_variable(r->main, pmcf->request_id_index);

    if (vv == NULL || vv->not_found) {
        return &ngx_http_payflow_unknown_id;
    }

    id = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (id == NULL) {
        return &ngx_http_payflow_unknown_id;
    }

    id->data = vv->data;
    id->len = vv->len;

    return id;
}


ngx_int_t
ngx_http_payflow_send_data(ngx_http_request_t *r, ngx_uint_t status,
    json_t *data)
{
    ngx_str_t  text;

    if (pf_response_dump(r->pool, data, &text) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_json(r, status, &text);
}


/* data: JSON text, from pf_json_out_t or pf_response_dump() */

ngx_int_t
ngx_http_payflow_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *data)
{
    ngx_str_t  body;

    if (pf_response_data_body(r->pool, data, ngx_http_payflow_request_id(r),
                              &body)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_body(r, status, &body);
}


/*
 * A whole envelope already built (and perhaps stored for replays); one
 * naming sealed customer details leaves with them opened (sql/0024)
 */

ngx_int_t
ngx_http_payflow_send_body(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    static const char  mark[] = "\"pii\":";

    if (memmem(body->data, body->len, mark, sizeof(mark) - 1) != NULL) {
        return ngx_http_payflow_pii_send(r, status, body);
    }

    return ngx_http_payflow_send_envelope(r, status, body);
}


/* the envelope as it goes out: nginx's own error page is not wanted */

ngx_int_t
ngx_http_payflow_send_envelope(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->envelope = 1;

    return pf_response_send(r, status, body);
}


ngx_int_t
ngx_http_payflow_send_error(ngx_http_request_t *r, pf_error_t *err)
{
    ngx_str_t                body;
    ngx_http_payflow_ctx_t  *ctx;

    if (pf_response_error_body(r->pool, err, ngx_http_payflow_request_id(r),
                               &body)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->envelope = 1;

    if (err->retry_after
        && pf_response_retry_after(r, err->retry_after) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return pf_response_send(r, err->status, &body);
}


/* what a client is told when a query did not succeed (or none ran: q) */

void
ngx_http_payflow_db_error(pf_pg_query_t *q, pf_error_t *err)
{
    ngx_memzero(err, sizeof(pf_error_t));

    err->status = NGX_HTTP_SERVICE_UNAVAILABLE;
    err->type = PF_ERROR_API;
    err->retry_after = 1;

    switch (q ? q->status : PF_PG_UNAVAILABLE) {

    case PF_PG_BUSY:
        err->code = "database_busy";
        err->message = "the database is busy, retry shortly";
        break;

    case PF_PG_TIMEOUT:
        err->code = "database_timeout";
        err->message = "the database did not answer in time";
        break;

    case PF_PG_SQL_ERROR:
        err->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        err->code = "database_error";
        err->message = "a database statement failed";
        err->retry_after = 0;
        break;

    default:
        err->code = "database_unavailable";
        err->message = "the database is unavailable, retry shortly";
        break;
    }
}


ngx_int_t
ngx_http_payflow_send_db_error(ngx_http_request_t *r, pf_pg_query_t *q)
{
    pf_error_t  err;

    ngx_http_payflow_db_error(q, &err);

    return ngx_http_payflow_send_error(r, &err);
}


/* the first request header of that name: NGX_OK, or NGX_DECLINED */

ngx_int_t
ngx_http_payflow_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NGX_DECLINED;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            *value = h[i].value;
            return NGX_OK;
        }
    }
}


/* completes a request suspended on PostgreSQL, from the pool's event */

void
ngx_http_payflow_finalize(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/*
 * A query of n statements inside one transaction.  Scoped queries first
 * set the tenant, mode and admin settings that row-level security reads,
 * from what the access phase established: the database, not only this
 * code, keeps tenants apart.  Pipelined, the whole transaction is one
 * round trip.
 *
 * NGX_HTTP_PAYFLOW_DB_READ: the scope and the statements without BEGIN
 * and COMMIT.  Statements pipelined before one Sync run in one implicit
 * transaction, so the scope (set_config(..., true)) holds for them and
 * ends with them; two statements fewer for a read.  Writes keep the
 * explicit transaction: an error at commit (a deferred constraint) is
 * then COMMIT's own.
 */

static const char  ngx_http_payflow_begin[] = "BEGIN";

#define ngx_http_payflow_db_first(q)                                          \
    ((q)->stmts[0].sql == ngx_http_payflow_begin ? 2 : 1)

pf_pg_query_t *
ngx_http_payflow_db_query(ngx_http_request_t *r, ngx_uint_t n,
    ngx_uint_t scoped)
{
    const char                   **values;
    pf_pg_stmt_t                  *st;
    pf_pg_query_t                 *q;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (!scoped) {
        return pf_pg_query_create(r->pool, pmcf->pool, n);
    }

    q = pf_pg_query_create(r->pool, pmcf->pool,
                           n + (scoped == NGX_HTTP_PAYFLOW_DB_READ ? 1 : 3));
    if (q == NULL) {
        return NULL;
    }

    values = ngx_palloc(r->pool, 7 * sizeof(char *));
    if (values == NULL) {
        return NULL;
    }

    if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN) {
        values[0] = "";
        values[1] = "off";
        values[2] = "on";
        values[3] = "admin";

    } else {
        values[0] = ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);
        values[1] = ctx->auth.livemode ? "on" : "off";
        values[2] = "off";
        values[3] = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_JWT)
                    ? "jwt" : "api_key";
    }

    values[4] = ngx_http_payflow_db_str(r->pool,
                                        ctx->auth.key_id.len
                                        ? &ctx->auth.key_id
                                        : &ctx->auth.subject);
    values[5] = ngx_http_payflow_db_str(r->pool, &r->connection->addr_text);
    values[6] = ngx_http_payflow_db_str(r->pool,
                                        ngx_http_payflow_request_id(r));

    if (values[0] == NULL || values[4] == NULL || values[5] == NULL
        || values[6] == NULL)
    {
        return NULL;
    }

    st = q->stmts;

    if (scoped == NGX_HTTP_PAYFLOW_DB_READ) {
        st[0].statement = pmcf->st.scope;
        st[0].nparams = 7;
        st[0].values = values;

        return q;
    }

    st[0].sql = ngx_http_payflow_begin;

    st[1].statement = pmcf->st.scope;
    st[1].nparams = 7;
    st[1].values = values;

    st[n + 2].sql = "COMMIT";

    return q;
}


/*
 * The list parameters of DESIGN.md section 3: limit (1-100, default 10)
 * and one of the cursors starting_after and ending_before, object ids.
 */

ngx_int_t
ngx_http_payflow_list_args(ngx_http_request_t *r, ngx_http_payflow_list_t *l,
    pf_error_t *err)
{
    ngx_int_t    n;
    ngx_str_t    v, *cursor;
    ngx_uint_t   i, k;

    static const char  *names[] = { "starting_after", "ending_before" };

    l->limit = 10;
    ngx_str_null(&l->after);
    ngx_str_null(&l->before);

    if (ngx_http_arg(r, (u_char *) "limit", 5, &v) == NGX_OK) {
        n = ngx_atoi(v.data, v.len);

        if (n < 1 || n > 100) {
            pf_json_param_error(err, "limit", "parameter_invalid",
                                "limit must be an integer from 1 to 100");
            return NGX_DECLINED;
        }

        l->limit = n;
    }

    for (k = 0; k < 2; k++) {
        cursor = k ? &l->before : &l->after;

        if (ngx_http_arg(r, (u_char *) names[k], ngx_strlen(names[k]), &v)
            != NGX_OK)
        {
            continue;
        }

        for (i = 0; i < v.len; i++) {
            if (!(isalnum(v.data[i]) || v.data[i] == '_')) {
                break;
            }
        }

        if (v.len == 0 || v.len > 64 || i < v.len) {
            pf_json_param_error(err, names[k], "parameter_invalid",
                                "the cursor must be an object id");
            return NGX_DECLINED;
        }

        *cursor = v;
    }

    if (l->after.len && l->before.len) {
        pf_json_param_error(err, "ending_before", "parameter_invalid",
                            "starting_after and ending_before cannot be "
                            "used together");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


char *
ngx_http_payflow_nullable(ngx_http_request_t *r, ngx_str_t *s)
{
    return s->len ? ngx_http_payflow_db_str(r->pool, s) : NULL;
}


char *
ngx_http_payflow_int(ngx_http_request_t *r, ngx_int_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%i", n) = '\0';

    return (char *) p;
}


/* a query parameter: libpq wants NUL-terminated text */

char *
ngx_http_payflow_db_str(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_cpymem(p, s->data, s->len) = '\0';

    return (char *) p;
}


/* statement i of a scoped query, after BEGIN and the scope */

pf_pg_stmt_t *
ngx_http_payflow_db_stmt(pf_pg_query_t *q, ngx_uint_t i)
{
    return &q->stmts[i + ngx_http_payflow_db_first(q)];
}


/* statement i of a scoped query, with its parameters */

void
ngx_http_payflow_db_set(pf_pg_query_t *q, ngx_uint_t i,
    const pf_pg_statement_t *statement, ngx_uint_t nparams,
    const char **values)
{
    pf_pg_stmt_t  *st;

    st = &q->stmts[i + ngx_http_payflow_db_first(q)];

    st->statement = statement;
    st->nparams = (int) nparams;
    st->values = values;
}


PGresult *
ngx_http_payflow_db_result(pf_pg_query_t *q, ngx_uint_t i)
{
    return q->results[i + ngx_http_payflow_db_first(q)];
}


/*
 * NGX_DONE: the request waits for PostgreSQL and is completed by ok(), or
 * with the database error; otherwise the status of the error just sent.
 */

ngx_int_t
ngx_http_payflow_db_run(ngx_http_request_t *r, pf_pg_query_t *q,
    const char *what, ngx_http_payflow_db_ok_pt ok)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->handler = ngx_http_payflow_db_done;
    q->data = r;
    q->log = r->connection->log;

    if (pf_pg_query_run(q) != NGX_OK) {
        return ngx_http_payflow_send_db_error(r, q);
    }

    ctx->query = q;
    ctx->db_ok = ok;
    ctx->db_what = what;

    r->read_event_handler = ngx_http_test_reading;
    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_payflow_db_done(pf_pg_query_t *q)
{
    ngx_int_t                rc;
    ngx_http_request_t      *r;
    ngx_http_payflow_ctx_t  *ctx;

    r = q->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ctx->query = NULL;

    if (q->status == PF_PG_OK
        || (q->status == PF_PG_SQL_ERROR && ctx->db_sql_ok))
    {
        rc = ctx->db_ok(r, q);

    } else {
        if (q->status == PF_PG_SQL_ERROR) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "payflow: %s failed: %s (%s)", ctx->db_what,
                          PQresultErrorField(q->results[q->failed],
                                             PG_DIAG_MESSAGE_PRIMARY),
                          pf_pg_query_sqlstate(q));
        }

        rc = ngx_http_payflow_send_db_error(r, q);
    }

    ngx_http_payflow_finalize(r, rc);
}


static ngx_int_t
ngx_http_payflow_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_payflow_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* a sane client X-Request-Id is kept, anything else replaced */

static ngx_int_t
ngx_http_payflow_request_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t         id;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    (void) data;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("X-Request-Id") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "X-Request-Id",
                               sizeof("X-Request-Id") - 1) == 0
            && ngx_http_payflow_request_id_valid(&h[i].value))
        {
            v->data = h[i].value.data;
            v->len = h[i].value.len;
            goto found;
        }
    }

    if (pf_id_generate(r->pool, "req_", &id) != NGX_OK) {
        return NGX_ERROR;
    }

    v->data = id.data;
    v->len = id.len;

found:

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_uint_t
ngx_http_payflow_request_id_valid(ngx_str_t *id)
{
    u_char      ch;
    ngx_uint_t  i;

    if (id->len == 0 || id->len > NGX_HTTP_PAYFLOW_REQUEST_ID_MAX) {
        return 0;
    }

    for (i = 0; i < id->len; i++) {
        ch = id->data[i];

        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
            || (ch >= '0' && ch <= '9')
            || ch == '-' || ch == '_' || ch == '.' || ch == ':')
        {
            continue;
        }

        return 0;
    }

    return 1;
}


static ngx_int_t
ngx_http_payflow_header_filter(ngx_http_request_t *r)
{
    ngx_str_t                    *id;
    pf_error_t                    err;
    ngx_http_payflow_ctx_t       *ctx;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_payflow_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);

    if (plcf->kind == NGX_HTTP_PAYFLOW_NONE || r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    id = ngx_http_payflow_request_id(r);

    if (pf_response_add_header(r, "X-Request-Id", id) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (r->headers_out.status < NGX_HTTP_BAD_REQUEST
        || (ctx && ctx->envelope))
    {
        return ngx_http_next_header_filter(r);
    }

    /* an error page nginx made itself: the client gets the envelope */

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ctx->error && ctx->error->status == r->headers_out.status) {
        /* a phase handler said what the status means */
        err = *ctx->error;

    } else {
        pf_response_status_error(r->headers_out.status, &err);
    }

    if (r->headers_out.status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
        && ctx->error == NULL)
    {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        err.message = (char *) ngx_pnalloc(r->pool, 80);
        if (err.message == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_sprintf((u_char *) err.message,
                           "the request body exceeds the limit of %O bytes%Z",
                           clcf->client_max_body_size);
    }

    if (pf_response_error_body(r->pool, &err, id, &ctx->error_body)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (err.retry_after
        && pf_response_retry_after(r, err.retry_after) != NGX_OK)
    {
        return NGX_ERROR;
    }

    (void) pf_response_set_json_headers(r, ctx->error_body.len);

    ctx->replace = 1;

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_payflow_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t               *b;
    ngx_uint_t               last;
    ngx_chain_t             *cl, out;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ctx == NULL || !ctx->replace || in == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* swallow nginx's HTML page, send the envelope in its place */

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (b->last_buf) {
            last = 1;
        }

        b->pos = b->last;
        b->file_pos = b->file_last;
    }

    if (!last) {
        return NGX_OK;
    }

    ctx->replace = 0;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = ctx->error_body.data;
    b->last = ctx->error_body.data + ctx->error_body.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static char *
ngx_http_payflow_db(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    (void) cmd;

    if (pmcf->db) {
        return "is duplicate";
    }

    pmcf->db = ngx_pcalloc(cf->pool, sizeof(pf_pg_conf_t));
    if (pmcf->db == NULL) {
        return NGX_CONF_ERROR;
    }

    return pf_pg_conf_parse(cf, pmcf->db);
}


static char *
ngx_http_payflow_handler(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_loc_conf_t *plcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (plcf->kind != NGX_HTTP_PAYFLOW_NONE) {
        return "is duplicate";
    }

    /* the directive table carries the handler kind in "offset" */
    plcf->kind = (ngx_http_payflow_kind_e) cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    switch (plcf->kind) {

    case NGX_HTTP_PAYFLOW_HEALTH:
        clcf->handler = ngx_http_payflow_health_handler;
        break;

    case NGX_HTTP_PAYFLOW_READY:
        clcf->handler = ngx_http_payflow_ready_handler;
        break;

    case NGX_HTTP_PAYFLOW_ADMIN:
        clcf->handler = ngx_http_payflow_admin_handler;
        break;

    case NGX_HTTP_PAYFLOW_METRICS:
        clcf->handler = ngx_http_payflow_metrics_handler;
        break;

    default:
        clcf->handler = ngx_http_payflow_api_handler;
        break;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_payflow_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_main_conf_t));
    if (pmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     pmcf->db = NULL;
     *     pmcf->pool = NULL;
     *     pmcf->schema_version = NULL;
     */

    pmcf->request_id_index = NGX_CONF_UNSET;
    pmcf->cache_ttl = NGX_CONF_UNSET;
    pmcf->negative_ttl = NGX_CONF_UNSET;
    pmcf->negative_max = NGX_CONF_UNSET_UINT;
    pmcf->jobs_interval = NGX_CONF_UNSET_MSEC;
    pmcf->customer_pii = NGX_CONF_UNSET_UINT;
    pmcf->account_base_url = NGX_CONF_UNSET;
    pmcf->reseal = NGX_CONF_UNSET;
    pmcf->seal_interval = NGX_CONF_UNSET_MSEC;
    pmcf->breaker_failures = NGX_CONF_UNSET_UINT;
    pmcf->breaker_window = NGX_CONF_UNSET_MSEC;
    pmcf->breaker_open = NGX_CONF_UNSET_MSEC;
    pmcf->breaker_successes = NGX_CONF_UNSET_UINT;
    pmcf->provider_deadline = NGX_CONF_UNSET_MSEC;
    pmcf->reconcile_after = NGX_CONF_UNSET_MSEC;

    if (ngx_array_init(&pmcf->static_keys, cf->pool, 2,
                       sizeof(ngx_http_payflow_static_key_t))
        != NGX_OK
        || ngx_array_init(&pmcf->admin_keys, cf->pool, 2, PF_SHA256_LEN)
           != NGX_OK
        || pf_jwt_conf_init(cf, &pmcf->jwt) != NGX_OK)
    {
        return NULL;
    }

    return pmcf;
}


static char *
ngx_http_payflow_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    if ((pmcf->static_keys.nelts || pmcf->admin_keys.nelts)
        && pmcf->pepper.len == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_static_key\" and \"payflow_admin_key\" "
                           "require \"payflow_key_pepper\"");
        return NGX_CONF_ERROR;
    }

    switch (pf_keyring_ready(cf, &pmcf->keyring)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "several \"payflow_kek\" keys: one must be "
                           "\"current\" (the one that seals)");
        return NGX_CONF_ERROR;

    default:
        return NGX_CONF_ERROR;
    }

    if (ngx_http_payflow_pii_conf(cf, pmcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_value(pmcf->account_base_url, 0);
    ngx_conf_init_value(pmcf->reseal, 1);

    ngx_conf_init_msec_value(pmcf->jobs_interval, 10000);

    if (pmcf->jobs_interval < 100) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_jobs_interval\" must be at least 100ms");
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(pmcf->seal_interval, 200);

    if (pmcf->seal_interval < 10) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_ledger_seal_interval\" must be at "
                           "least 10ms");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_payflow_routing_init_main_conf(cf, pmcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_payflow_auth_init_main_conf(cf, pmcf);
}


/* payflow_max_amount <minor units>: what one payment may be at most */

static char *
ngx_http_payflow_max_amount(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_loc_conf_t *plcf = conf;

    ngx_str_t  *value;

    if (plcf->max_amount != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    plcf->max_amount = ngx_atoof(value[1].data, value[1].len);

    if (plcf->max_amount < 1
        || plcf->max_amount > NGX_HTTP_PAYFLOW_MAX_AMOUNT)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_max_amount\" must be an integer from "
                           "1 to %O", (off_t) NGX_HTTP_PAYFLOW_MAX_AMOUNT);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_payflow_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_payflow_loc_conf_t  *plcf;

    plcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_loc_conf_t));
    if (plcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     plcf->kind = NGX_HTTP_PAYFLOW_NONE;
     */

    plcf->max_amount = NGX_CONF_UNSET;

    return plcf;
}


static char *
ngx_http_payflow_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_payflow_loc_conf_t *prev = parent;
    ngx_http_payflow_loc_conf_t *conf = child;

    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_payflow_main_conf_t  *pmcf;

    ngx_conf_merge_off_value(conf->max_amount, prev->max_amount,
                             NGX_HTTP_PAYFLOW_MAX_AMOUNT);

    /* the core module merged first: this is the location's final log */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (ngx_http_payflow_log_mask(cf->pool, clcf->error_log) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* the handler kind belongs to its location and is not inherited */

    if (conf->kind < NGX_HTTP_PAYFLOW_READY
        || conf->kind == NGX_HTTP_PAYFLOW_METRICS)
    {
        return NGX_CONF_OK;
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_payflow_module);

    if (pmcf->db == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" requires \"payflow_db\" in the http block",
                           ngx_http_payflow_kind_names[conf->kind]);
        return NGX_CONF_ERROR;
    }

    if ((conf->kind == NGX_HTTP_PAYFLOW_API
         || conf->kind == NGX_HTTP_PAYFLOW_ADMIN)
        && pmcf->pepper.len == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" requires \"payflow_key_pepper\" in the "
                           "http block",
                           ngx_http_payflow_kind_names[conf->kind]);
        return NGX_CONF_ERROR;
    }

    if (conf->kind == NGX_HTTP_PAYFLOW_ADMIN && pmcf->admin_keys.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_admin\" requires \"payflow_admin_key\" "
                           "in the http block");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* error-log lines about a request carry its request id */

static ngx_int_t
ngx_http_payflow_post_read(ngx_http_request_t *r)
{
    if (r->log_handler != ngx_http_payflow_log_error) {
        ngx_http_payflow_log_next = r->log_handler;
        r->log_handler = ngx_http_payflow_log_error;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_payflow_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt           *h;
    ngx_http_core_main_conf_t     *cmcf;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_payflow_module);

    pmcf->request_id_index = ngx_http_get_variable_index(cf,
                                           &ngx_http_payflow_request_id_name);
    if (pmcf->request_id_index == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (pmcf->db
        && (ngx_http_payflow_health_init(pmcf) != NGX_OK
            || ngx_http_payflow_auth_init(cf, pmcf) != NGX_OK
            || ngx_http_payflow_keys_init(pmcf) != NGX_OK
            || ngx_http_payflow_payments_init(pmcf) != NGX_OK
            || ngx_http_payflow_lists_init(pmcf) != NGX_OK
            || ngx_http_payflow_jobs_init(pmcf) != NGX_OK
            || ngx_http_payflow_sealer_init(pmcf) != NGX_OK
            || ngx_http_payflow_webhook_init(pmcf) != NGX_OK
            || ngx_http_payflow_outbox_init(cf, pmcf) != NGX_OK
            || ngx_http_payflow_endpoints_init(pmcf) != NGX_OK
            || ngx_http_payflow_reseal_init(pmcf) != NGX_OK
            || ngx_http_payflow_reviews_init(pmcf) != NGX_OK
            || ngx_http_payflow_pii_init(cf, pmcf) != NGX_OK
            || ngx_http_payflow_accounts_init(pmcf) != NGX_OK))
    {
        return NGX_ERROR;
    }

    if (ngx_http_payflow_risk_init(cf, pmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_payflow_metrics_init(cf, pmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_payflow_post_read;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_payflow_access_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_payflow_metrics_log;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_payflow_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_payflow_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_init_process(ngx_cycle_t *cycle)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    /* the main error_log as it ended up, whatever came after http {} */

    if (ngx_http_payflow_log_mask(cycle->pool, &cycle->new_log) != NGX_OK) {
        return NGX_ERROR;
    }

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_payflow_module);

    if (pmcf == NULL || pmcf->db == NULL) {
        return NGX_OK;
    }

    /* not in the cache manager and loader: they serve no requests */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    if (ngx_http_payflow_auth_init_process(cycle, pmcf) != NGX_OK
        || ngx_http_payflow_pii_init_process(cycle, pmcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    pmcf->pool = pf_pg_pool_create(cycle, pmcf->db,
                                   ngx_http_payflow_metrics_pg(pmcf));
    if (pmcf->pool == NULL) {
        return NGX_ERROR;
    }

    pmcf->curl = pf_curl_create(cycle);
    if (pmcf->curl == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_payflow_risk_init_process(cycle, pmcf) != NGX_OK
        || ngx_http_payflow_account_cache_start(cycle, pmcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_payflow_jobs_start(cycle, pmcf) != NGX_OK
        || ngx_http_payflow_sealer_start(cycle, pmcf) != NGX_OK
        || ngx_http_payflow_outbox_start(cycle, pmcf) != NGX_OK
        || ngx_http_payflow_reseal_start(cycle, pmcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_payflow_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_payflow_module);

    if (pmcf == NULL) {
        return;
    }

    if (pmcf->pool) {
        ngx_http_payflow_jobs_stop();
        ngx_http_payflow_sealer_stop();
        ngx_http_payflow_outbox_stop();
        ngx_http_payflow_risk_cache_stop();
        ngx_http_payflow_account_cache_stop();
        ngx_http_payflow_reseal_stop();
        pf_pg_pool_destroy(pmcf->pool);
        pmcf->pool = NULL;
    }

    pf_curl_destroy(pmcf->curl);
    pmcf->curl = NULL;

    ngx_http_payflow_risk_exit_process(pmcf);

    ngx_http_payflow_pii_exit_process(pmcf);
    ngx_http_payflow_auth_exit_process(pmcf);
}
