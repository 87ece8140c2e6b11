
/*
 * Copyright (C) PayFlow
 *
 * ngx_http_payflow_webhook_module: inbound provider webhooks.
 *
 *     location = /webhooks/stripe {
 *         payflow_webhook  stripe secret_file=/etc/payflow/stripe.whsec;
 *     }
 *
 * The raw body (in memory or in nginx's temporary file) is checked as the
 * provider signs it, by its adapter; a delivery that fails is answered 401,
 * counted and logged without its body, and goes no further.  A verified
 * one is read by the adapter into PayFlow's terms and handed to the
 * database in one statement (payflow_webhook_receive) that stores it once
 * and applies it through the state machine in the same transaction; the
 * provider is answered as soon as that commits, never after a call of
 * ours to anyone else.
 */


#include "ngx_http_payflow_webhook.h"
#include "ngx_http_payflow_api.h"
#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_accounts.h"

#include <openssl/crypto.h>


#define NGX_HTTP_PAYFLOW_WEBHOOK_SECRETS    4
#define NGX_HTTP_PAYFLOW_WEBHOOK_FIELD_MAX  255


typedef struct {
    ngx_http_payflow_webhook_conf_t     wh;
    ngx_str_t                           name;       /* of the provider */
    ngx_uint_t                          livemode;   /* its mode */
    ngx_uint_t                          line;
    ngx_str_t                           file;

    /* this worker's refusal log: a line a second at most */
    ngx_msec_t                          logged;
    ngx_uint_t                          quiet;

    unsigned                            accounts:1; /* tenants' accounts */
} ngx_http_payflow_webhook_loc_conf_t;


/* a delivery to a tenant's account: /webhooks/<provider>/<account id> */

typedef struct {
    ngx_http_payflow_webhook_conf_t     wh;         /* first */
    ngx_http_payflow_provider_t         unknown;    /* until it is found */
    ngx_str_t                           account;
    ngx_str_t                           body;
    ngx_str_t                           secret;     /* a copy, wiped */
    ngx_http_payflow_account_wait_t     wait;
    unsigned                            found:1;
} ngx_http_payflow_webhook_ctx_t;


static ngx_int_t ngx_http_payflow_webhook_handler(ngx_http_request_t *r);
static void ngx_http_payflow_webhook_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_webhook_read(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_payflow_webhook_event(ngx_http_request_t *r,
    ngx_http_payflow_webhook_conf_t *wh, ngx_str_t *body);
static ngx_int_t ngx_http_payflow_webhook_stored(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_webhook_refuse(ngx_http_request_t *r,
    ngx_uint_t verify);
static ngx_int_t ngx_http_payflow_webhook_malformed(ngx_http_request_t *r,
    const char *message);
static ngx_uint_t ngx_http_payflow_webhook_allowed(ngx_http_request_t *r,
    ngx_array_t *allow);
static ngx_http_payflow_webhook_conf_t *ngx_http_payflow_webhook_wh(
    ngx_http_request_t *r);
static void ngx_http_payflow_webhook_counted(ngx_http_request_t *r,
    ngx_uint_t verify, ngx_int_t result);
static ngx_int_t ngx_http_payflow_webhook_path(ngx_http_request_t *r,
    ngx_http_payflow_webhook_loc_conf_t *wlcf);
static ngx_int_t ngx_http_payflow_webhook_account(ngx_http_request_t *r,
    ngx_http_payflow_webhook_ctx_t *wctx);
static void ngx_http_payflow_webhook_woken(
    ngx_http_payflow_account_wait_t *w, ngx_int_t rc);
static void ngx_http_payflow_webhook_cleanup(void *data);
static ngx_int_t ngx_http_payflow_webhook_verify(ngx_http_request_t *r,
    ngx_str_t *body);
static char *ngx_http_payflow_webhook(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_payflow_webhook_allow(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_payflow_outbox_retries(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static void *ngx_http_payflow_webhook_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_payflow_webhook_init_main_conf(ngx_conf_t *cf,
    void *conf);
static void *ngx_http_payflow_webhook_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_payflow_webhook_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);


static ngx_command_t  ngx_http_payflow_webhook_commands[] = {

    { ngx_string("payflow_webhook"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_webhook,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_webhook_allow"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_webhook_allow,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_outbox"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, enabled),
      NULL },

    { ngx_string("payflow_outbox_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, interval),
      NULL },

    { ngx_string("payflow_outbox_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, timeout),
      NULL },

    { ngx_string("payflow_outbox_retries"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_outbox_retries,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_outbox_disable_after"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, disable_after),
      NULL },

    { ngx_string("payflow_outbox_secret_grace"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, grace),
      NULL },

    { ngx_string("payflow_outbox_allow_private"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, allow_private),
      NULL },

    { ngx_string("payflow_outbox_concurrency"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_payflow_outbox_conf_t, concurrency),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_payflow_webhook_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_payflow_webhook_create_main_conf, /* create main conf */
    ngx_http_payflow_webhook_init_main_conf,   /* init main conf */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_payflow_webhook_create_loc_conf,  /* create location conf */
    ngx_http_payflow_webhook_merge_loc_conf    /* merge location conf */
};


ngx_module_t  ngx_http_payflow_webhook_module = {
    NGX_MODULE_V1,
    &ngx_http_payflow_webhook_module_ctx,  /* module context */
    ngx_http_payflow_webhook_commands,     /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static const char  *ngx_http_payflow_webhook_results[] = {
    "applied", "unchanged", "unmatched", "ignored", "mismatch", "verifying",
    NULL
};


/* called by ngx_http_payflow_module once the statements are known */

ngx_int_t
ngx_http_payflow_webhook_init(ngx_http_payflow_main_conf_t *pmcf)
{
    pmcf->st.webhook_receive = pf_pg_statement_add(pmcf->db,
        "payflow_webhook_receive",
        "SELECT id, result, payment_id, refund_id, duplicate "
        "FROM payflow_webhook_receive($1, $2::boolean, $3, $4, $5, $6, $7, "
        "$8, $9, $10, $11, $12, $13, $14::bigint, $15, $16, $17::boolean)",
        17);

    return pmcf->st.webhook_receive ? NGX_OK : NGX_ERROR;
}


static ngx_int_t
ngx_http_payflow_webhook_handler(ngx_http_request_t *r)
{
    ngx_int_t                             rc;
    ngx_str_t                             sig;
    ngx_http_payflow_ctx_t               *ctx;
    ngx_http_payflow_webhook_conf_t      *wh;
    ngx_http_payflow_webhook_loc_conf_t  *wlcf;

    wlcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_webhook_module);

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_payflow_not_allowed(r);
    }

    if (wlcf->accounts) {
        rc = ngx_http_payflow_webhook_path(r, wlcf);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    wh = ngx_http_payflow_webhook_wh(r);
    ctx->provider = wh->provider;

    if (wlcf->wh.allow
        && !ngx_http_payflow_webhook_allowed(r, wlcf->wh.allow))
    {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_payflow_webhook_refuse(r,
                                             NGX_HTTP_PAYFLOW_WEBHOOK_REFUSED);
    }

    /* no signature: the body is not worth reading */

    if (ngx_http_payflow_header(r, wh->provider->adapter->webhook_header,
                                &sig)
        != NGX_OK || sig.len == 0)
    {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_payflow_webhook_refuse(r,
                                             NGX_HTTP_PAYFLOW_WEBHOOK_MISSING);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_payflow_webhook_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_payflow_webhook_body(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_str_t                        body;
    ngx_pool_cleanup_t              *cln;
    ngx_http_payflow_account_t      *a;
    ngx_http_payflow_webhook_ctx_t  *wctx;

    rc = ngx_http_payflow_webhook_read(r, &body);

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    wctx = ngx_http_get_module_ctx(r, ngx_http_payflow_webhook_module);

    if (wctx == NULL) {
        ngx_http_finalize_request(r,
                                  ngx_http_payflow_webhook_verify(r, &body));
        return;
    }

    /* the account's copy, made first if this worker has none */

    wctx->body = body;
    wctx->wait.handler = ngx_http_payflow_webhook_woken;
    wctx->wait.data = r;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_payflow_account_find(&wctx->account, &a, &wctx->wait);

    if (rc == NGX_AGAIN) {
        cln->handler = ngx_http_payflow_webhook_cleanup;
        cln->data = wctx;

        r->main->count++;
        ngx_http_finalize_request(r, NGX_DONE);
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, ngx_http_payflow_send_db_error(r, NULL));
        return;
    }

    ngx_http_finalize_request(r, ngx_http_payflow_webhook_account(r, wctx));
}


static void
ngx_http_payflow_webhook_woken(ngx_http_payflow_account_wait_t *w,
    ngx_int_t rc)
{
    ngx_http_request_t              *r;
    ngx_http_payflow_webhook_ctx_t  *wctx;

    r = w->data;
    wctx = ngx_http_get_module_ctx(r, ngx_http_payflow_webhook_module);

    /* not stored: the provider delivers it again later */

    rc = (rc == NGX_OK) ? ngx_http_payflow_webhook_account(r, wctx)
                        : ngx_http_payflow_send_db_error(r, NULL);

    ngx_http_payflow_finalize(r, rc);
}


static void
ngx_http_payflow_webhook_cleanup(void *data)
{
    ngx_http_payflow_webhook_ctx_t *wctx = data;

    ngx_http_payflow_account_unwait(&wctx->wait);

    if (wctx->secret.len) {
        OPENSSL_cleanse(wctx->secret.data, wctx->secret.len);
    }
}


/*
 * The account found, its secret is the one the delivery must be signed
 * with (Paystack signs with the secret key itself).  An account unknown,
 * closed, of another provider or without a webhook secret is refused as
 * a bad signature would be: whether an account exists is not told.
 */

static ngx_int_t
ngx_http_payflow_webhook_account(ngx_http_request_t *r,
    ngx_http_payflow_webhook_ctx_t *wctx)
{
    ngx_str_t                      *secret;
    ngx_pool_cleanup_t             *cln;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_account_t     *a;
    ngx_http_payflow_provider_t    *pv;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ngx_http_payflow_account_find(&wctx->account, &a, NULL) != NGX_OK
        || a->provider.adapter != wctx->unknown.adapter)
    {
        return ngx_http_payflow_webhook_refuse(r,
                                             NGX_HTTP_PAYFLOW_WEBHOOK_INVALID);
    }

    secret = a->webhook_secret.len ? &a->webhook_secret
             : (ngx_strcmp(a->provider.adapter->type, "paystack") == 0)
               ? &a->provider.secret : NULL;

    if (secret == NULL) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "payflow webhook: provider account \"%V\" has no "
                      "webhook secret: its deliveries are refused",
                      &wctx->account);

        return ngx_http_payflow_webhook_refuse(r,
                                             NGX_HTTP_PAYFLOW_WEBHOOK_INVALID);
    }

    pv = ngx_http_payflow_account_provider(r->pool, a);
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (pv == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    wctx->secret.data = ngx_pnalloc(r->pool, secret->len);
    if (wctx->secret.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(wctx->secret.data, secret->data, secret->len);
    wctx->secret.len = secret->len;

    cln->handler = ngx_http_payflow_webhook_cleanup;
    cln->data = wctx;

    if (ngx_array_init(&wctx->wh.secrets, r->pool, 1, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    secret = ngx_array_push(&wctx->wh.secrets);
    *secret = wctx->secret;

    wctx->wh.provider = pv;
    wctx->found = 1;
    ctx->provider = pv;

    return ngx_http_payflow_webhook_verify(r, &wctx->body);
}


/* the signature judged over the raw body, then the event stored */

static ngx_int_t
ngx_http_payflow_webhook_verify(ngx_http_request_t *r, ngx_str_t *body)
{
    ngx_int_t                         verify;
    ngx_http_payflow_webhook_conf_t  *wh;

    wh = ngx_http_payflow_webhook_wh(r);

    verify = wh->provider->adapter->webhook_verify(r, wh, body);

    if (verify == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (verify != NGX_HTTP_PAYFLOW_WEBHOOK_VALID) {
        return ngx_http_payflow_webhook_refuse(r, verify);
    }

    return ngx_http_payflow_webhook_event(r, wh, body);
}


/*
 * payflow_webhook accounts: the location's URI ends in
 * /<provider>/<account id>; the provider names the adapter whose
 * signature header is checked before the body is read.
 */

static ngx_int_t
ngx_http_payflow_webhook_path(ngx_http_request_t *r,
    ngx_http_payflow_webhook_loc_conf_t *wlcf)
{
    u_char                          *p, *last, *slash;
    ngx_str_t                        type;
    ngx_http_payflow_webhook_ctx_t  *wctx;
    u_char                           name[16];

    wctx = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_webhook_ctx_t));
    if (wctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = r->uri.data + r->uri.len;
    slash = NULL;

    for (p = last; p > r->uri.data; p--) {
        if (p[-1] == '/') {
            slash = p - 1;
            break;
        }
    }

    if (slash == NULL) {
        return NGX_HTTP_NOT_FOUND;
    }

    wctx->account.data = slash + 1;
    wctx->account.len = last - (slash + 1);

    for (p = slash; p > r->uri.data && p[-1] != '/'; p--) { /* void */ }

    type.data = p;
    type.len = slash - p;

    if (!ngx_http_payflow_account_id(&wctx->account)
        || type.len == 0 || type.len >= sizeof(name))
    {
        return NGX_HTTP_NOT_FOUND;
    }

    ngx_memcpy(name, type.data, type.len);
    name[type.len] = '\0';

    wctx->unknown.adapter = ngx_http_payflow_adapter((char *) name);
    if (wctx->unknown.adapter == NULL) {
        return NGX_HTTP_NOT_FOUND;
    }

    wctx->unknown.name = wctx->account;
    wctx->unknown.index = NGX_HTTP_PAYFLOW_ACCOUNT_INDEX;

    wctx->wh.provider = &wctx->unknown;
    wctx->wh.tolerance = wlcf->wh.tolerance;
    wctx->wh.allow = wlcf->wh.allow;

    ngx_http_set_ctx(r, wctx, ngx_http_payflow_webhook_module);

    return NGX_OK;
}


/* the location's provider, or the account the delivery is for */

static ngx_http_payflow_webhook_conf_t *
ngx_http_payflow_webhook_wh(ngx_http_request_t *r)
{
    ngx_http_payflow_webhook_ctx_t       *wctx;
    ngx_http_payflow_webhook_loc_conf_t  *wlcf;

    wctx = ngx_http_get_module_ctx(r, ngx_http_payflow_webhook_module);

    if (wctx) {
        return &wctx->wh;
    }

    wlcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_webhook_module);

    return &wlcf->wh;
}


/*
 * Counted in the provider's slot; a delivery to an account not (yet)
 * found is not: made-up account ids must not take accounts' slots.
 */

static void
ngx_http_payflow_webhook_counted(ngx_http_request_t *r, ngx_uint_t verify,
    ngx_int_t result)
{
    ngx_http_payflow_main_conf_t    *pmcf;
    ngx_http_payflow_webhook_ctx_t  *wctx;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    wctx = ngx_http_get_module_ctx(r, ngx_http_payflow_webhook_module);

    if (wctx && !wctx->found) {
        return;
    }

    ngx_http_payflow_webhook_count(pmcf,
                                   ngx_http_payflow_webhook_wh(r)->provider,
                                   verify, result);
}


/* the whole body, contiguous: from memory, or from the temporary file */

static ngx_int_t
ngx_http_payflow_webhook_read(ngx_http_request_t *r, ngx_str_t *body)
{
    off_t         len;
    u_char       *p;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    body->len = 0;
    body->data = (u_char *) "";

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    p = ngx_pnalloc(r->pool, (size_t) len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    body->data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            /* nginx's own temporary file, just written: the page cache */
            n = ngx_read_file(b->file, p, (size_t) (b->file_last
                                                    - b->file_pos),
                              b->file_pos);

            if (n != b->file_last - b->file_pos) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "payflow webhook: the body's temporary file "
                              "could not be read");
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    *p = '\0';
    body->len = p - body->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_webhook_event(ngx_http_request_t *r,
    ngx_http_payflow_webhook_conf_t *wh, ngx_str_t *body)
{
    u_char                            *p;
    json_t                            *doc;
    ngx_int_t                          rc;
    json_error_t                       jerr;
    const char                       **v;
    pf_pg_query_t                     *q;
    ngx_http_payflow_provider_t       *pv;
    ngx_http_payflow_main_conf_t      *pmcf;
    ngx_http_payflow_webhook_event_t   ev;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    pv = wh->provider;

    if (ngx_strlen(body->data) != body->len) {
        return ngx_http_payflow_webhook_malformed(r, "the body holds a NUL");
    }

    doc = json_loadb((char *) body->data, body->len, JSON_REJECT_DUPLICATES,
                     &jerr);

    if (!json_is_object(doc)) {
        if (doc) {
            json_decref(doc);
        }

        return ngx_http_payflow_webhook_malformed(r,
                                                  "the body is not a JSON "
                                                  "object");
    }

    ngx_memzero(&ev, sizeof(ngx_http_payflow_webhook_event_t));
    ev.amount = -1;
    ev.livemode = -1;

    /* the adapter copies what it keeps into the request's pool */
    rc = pv->adapter->webhook_parse(r->pool, doc, &ev);

    json_decref(doc);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED
        || ev.id.len > NGX_HTTP_PAYFLOW_WEBHOOK_FIELD_MAX
        || ev.type.len > NGX_HTTP_PAYFLOW_WEBHOOK_FIELD_MAX
        || ev.payment_id.len > NGX_HTTP_PAYFLOW_WEBHOOK_FIELD_MAX
        || ev.refund_id.len > NGX_HTTP_PAYFLOW_WEBHOOK_FIELD_MAX
        || ev.res.reference.len > NGX_HTTP_PAYFLOW_WEBHOOK_FIELD_MAX
        || ev.res.redirect_url.len > 2048)
    {
        return ngx_http_payflow_webhook_malformed(r,
                                                  "the body is not an event "
                                                  "of this provider");
    }

    if (ev.livemode != -1 && ev.livemode != (ngx_int_t) pv->livemode) {
        return ngx_http_payflow_webhook_malformed(r,
                                                  pv->livemode
                                                  ? "a test-mode event at a "
                                                    "live-mode endpoint"
                                                  : "a live-mode event at a "
                                                    "test-mode endpoint");
    }

    /* a currency PayFlow can compare, or none (never applied then) */

    if (ev.currency) {
        p = (u_char *) ev.currency;

        if (ngx_strlen(ev.currency) == 3 && isalpha(p[0]) && isalpha(p[1])
            && isalpha(p[2]))
        {
            p[0] = ngx_toupper(p[0]);
            p[1] = ngx_toupper(p[1]);
            p[2] = ngx_toupper(p[2]);

        } else {
            ev.currency = NULL;
        }
    }

    q = ngx_http_payflow_db_query(r, 1, 0);
    v = ngx_pcalloc(r->pool, 17 * sizeof(char *));

    if (q == NULL || v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v[0] = ngx_http_payflow_db_str(r->pool, &pv->name);
    v[1] = pv->livemode ? "t" : "f";
    v[2] = ngx_http_payflow_db_str(r->pool, &ev.id);
    v[3] = ngx_http_payflow_db_str(r->pool, &ev.type);
    v[4] = (const char *) body->data;
    v[5] = ev.object;
    v[6] = ngx_http_payflow_nullable(r, &ev.payment_id);
    v[7] = ngx_http_payflow_nullable(r, &ev.refund_id);
    v[8] = ngx_http_payflow_nullable(r, &ev.res.reference);
    v[9] = ev.res.status;
    v[10] = ev.res.code;
    v[11] = ev.res.message;
    v[12] = ngx_http_payflow_nullable(r, &ev.res.redirect_url);
    v[13] = (ev.amount >= 0) ? ngx_http_payflow_int(r, ev.amount) : NULL;
    v[14] = ev.currency;
    v[15] = ngx_http_payflow_db_str(r->pool, ngx_http_payflow_request_id(r));
    v[16] = pv->adapter->verify_by_api ? "t" : "f";

    if (v[0] == NULL || v[2] == NULL || v[3] == NULL || v[15] == NULL
        || (ev.amount >= 0 && v[13] == NULL))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->stmts[0].statement = pmcf->st.webhook_receive;
    q->stmts[0].values = v;
    q->stmts[0].nparams = 17;

    rc = ngx_http_payflow_db_run(r, q, "storing a webhook",
                                 ngx_http_payflow_webhook_stored);

    if (rc != NGX_DONE) {
        /* not stored: the provider delivers it again later */
        ngx_http_payflow_webhook_counted(r, NGX_HTTP_PAYFLOW_WEBHOOK_VALID,
                                         NGX_HTTP_PAYFLOW_WEBHOOK_FAILED);
    }

    return rc;
}


static ngx_int_t
ngx_http_payflow_webhook_stored(ngx_http_request_t *r, pf_pg_query_t *q)
{
    char                                 *result;
    PGresult                             *res;
    ngx_int_t                             k;
    ngx_str_t                             data;
    pf_json_out_t                         out;
    ngx_http_payflow_ctx_t               *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    res = q->results[0];

    if (PQntuples(res) != 1) {
        ngx_http_payflow_webhook_counted(r, NGX_HTTP_PAYFLOW_WEBHOOK_VALID,
                                         NGX_HTTP_PAYFLOW_WEBHOOK_FAILED);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    result = PQgetvalue(res, 0, 1);

    for (k = 0; ngx_http_payflow_webhook_results[k]; k++) {
        if (ngx_strcmp(result, ngx_http_payflow_webhook_results[k]) == 0) {
            break;
        }
    }

    if (ngx_http_payflow_webhook_results[k] == NULL) {
        k = NGX_HTTP_PAYFLOW_WEBHOOK_UNCHANGED;
    }

    if (PQgetvalue(res, 0, 4)[0] == 't') {
        k = NGX_HTTP_PAYFLOW_WEBHOOK_DUPLICATE;
    }

    ngx_http_payflow_webhook_counted(r, NGX_HTTP_PAYFLOW_WEBHOOK_VALID, k);

    if (!PQgetisnull(res, 0, 2)) {
        ctx->payment_id.len = PQgetlength(res, 0, 2);
        ctx->payment_id.data = ngx_pnalloc(r->pool, ctx->payment_id.len);
        if (ctx->payment_id.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(ctx->payment_id.data, PQgetvalue(res, 0, 2),
                   ctx->payment_id.len);
    }

    if (k == NGX_HTTP_PAYFLOW_WEBHOOK_MISMATCH) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow webhook: \"%V\" event %s tells another "
                      "amount or currency than its object's: not applied, "
                      "check it by hand",
                      &ngx_http_payflow_webhook_wh(r)->provider->name,
                      PQgetvalue(res, 0, 0));
    }

    if (pf_json_out_init(&out, r->pool, 256) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "received");
    pf_json_out_bool(&out, 1);
    pf_json_out_key(&out, "event");
    pf_json_out_cstr(&out, PQgetvalue(res, 0, 0));
    pf_json_out_key(&out, "result");
    pf_json_out_cstr(&out, result);
    pf_json_out_key(&out, "duplicate");
    pf_json_out_bool(&out, k == NGX_HTTP_PAYFLOW_WEBHOOK_DUPLICATE);
    pf_json_out_close(&out, '}');

    if (pf_json_out_result(&out, &data) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


/* never applied, and the body never logged */

static ngx_int_t
ngx_http_payflow_webhook_refuse(ngx_http_request_t *r, ngx_uint_t verify)
{
    pf_error_t                            err;
    ngx_http_payflow_webhook_loc_conf_t  *wlcf;

    static const char  *why[] = {
        "", "no signature", "a signature that does not match",
        "a signature older than the tolerance", "an address not allowed"
    };

    wlcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_webhook_module);

    ngx_http_payflow_webhook_counted(r, verify, -1);

    /*
     * A flood of forged deliveries must not turn into a flood of log
     * writes: one line a second per location and worker, telling how many
     * it stands for; the metric counts each.
     */

    if (wlcf->logged == 0 || ngx_current_msec - wlcf->logged >= 1000) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "payflow webhook: \"%V\" delivery refused: %s "
                      "(%ui more refused since the last such line)",
                      &ngx_http_payflow_webhook_wh(r)->provider->name,
                      why[verify], wlcf->quiet);

        wlcf->logged = ngx_current_msec;
        wlcf->quiet = 0;

    } else {
        wlcf->quiet++;
    }

    ngx_memzero(&err, sizeof(pf_error_t));

    err.type = PF_ERROR_AUTHENTICATION;

    switch (verify) {

    case NGX_HTTP_PAYFLOW_WEBHOOK_REFUSED:
        err.status = NGX_HTTP_FORBIDDEN;
        err.type = PF_ERROR_PERMISSION;
        err.code = "address_not_allowed";
        err.message = "webhooks are not accepted from this address";
        break;

    case NGX_HTTP_PAYFLOW_WEBHOOK_MISSING:
        err.status = NGX_HTTP_UNAUTHORIZED;
        err.code = "signature_missing";
        err.message = "the webhook carries no signature";
        break;

    case NGX_HTTP_PAYFLOW_WEBHOOK_STALE:
        err.status = NGX_HTTP_UNAUTHORIZED;
        err.code = "signature_expired";
        err.message = "the webhook's signature timestamp is outside the "
                      "tolerance";
        break;

    default:
        err.status = NGX_HTTP_UNAUTHORIZED;
        err.code = "signature_invalid";
        err.message = "the webhook's signature does not match";
    }

    return ngx_http_payflow_send_error(r, &err);
}


static ngx_int_t
ngx_http_payflow_webhook_malformed(ngx_http_request_t *r,
    const char *message)
{
    pf_error_t                            err;


    ngx_http_payflow_webhook_counted(r, NGX_HTTP_PAYFLOW_WEBHOOK_VALID,
                                     NGX_HTTP_PAYFLOW_WEBHOOK_MALFORMED);

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "payflow webhook: \"%V\" delivery signed but not "
                  "understood: %s",
                  &ngx_http_payflow_webhook_wh(r)->provider->name, message);

    pf_json_param_error(&err, "body", "webhook_malformed", message);

    return ngx_http_payflow_send_error(r, &err);
}


static ngx_uint_t
ngx_http_payflow_webhook_allowed(ngx_http_request_t *r, ngx_array_t *allow)
{
    return ngx_cidr_match(r->connection->sockaddr, allow) == NGX_OK;
}


/*
 * payflow_webhook <provider> [mode=test|live] [secret_file=|secret_env=]...
 *     [tolerance=]
 * payflow_webhook accounts [tolerance=]
 */

static char *
ngx_http_payflow_webhook(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_webhook_loc_conf_t *wlcf = conf;

    ngx_str_t                    *value, *secret, spec, s;
    ngx_uint_t                    i;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_payflow_loc_conf_t  *plcf;

    if (wlcf->name.len) {
        return "is duplicate";
    }

    /* a PayFlow location: request id, JSON error pages, route metrics */

    plcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_payflow_module);

    if (plcf->kind != NGX_HTTP_PAYFLOW_NONE) {
        return "conflicts with another PayFlow handler in the location";
    }

    plcf->kind = NGX_HTTP_PAYFLOW_WEBHOOK;

    value = cf->args->elts;

    wlcf->name = value[1];
    wlcf->line = cf->conf_file->line;
    wlcf->file = cf->conf_file->file.name;

    if (ngx_array_init(&wlcf->wh.secrets, cf->pool, 2, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "secret_file=", 12) == 0
            || ngx_strncmp(value[i].data, "secret_env=", 11) == 0)
        {
            if (wlcf->wh.secrets.nelts == NGX_HTTP_PAYFLOW_WEBHOOK_SECRETS) {
                return "takes at most 4 secrets";
            }

            secret = ngx_array_push(&wlcf->wh.secrets);
            if (secret == NULL) {
                return NGX_CONF_ERROR;
            }

            /* pf_conf_secret() reads "file=..." and "env=..." */
            spec.data = value[i].data + sizeof("secret_") - 1;
            spec.len = value[i].len - (sizeof("secret_") - 1);

            if (pf_conf_secret(cf, "payflow_webhook", &spec, 8, secret)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "mode=test") == 0
            || ngx_strcmp(value[i].data, "mode=live") == 0)
        {
            wlcf->livemode = (value[i].data[5] == 'l');
            continue;
        }

        if (ngx_strncmp(value[i].data, "tolerance=", 10) == 0) {
            s.data = value[i].data + 10;
            s.len = value[i].len - 10;

            wlcf->wh.tolerance = ngx_parse_time(&s, 1);
            if (wlcf->wh.tolerance == (time_t) NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid tolerance \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (ngx_strcmp(wlcf->name.data, "accounts") == 0) {
        /* the tenants' accounts, by the URI; each has its own secret */

        if (wlcf->wh.secrets.nelts || wlcf->livemode) {
            return "accounts takes no secret nor mode: each account has "
                   "its own";
        }

        wlcf->accounts = 1;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_payflow_webhook_handler;

    return NGX_CONF_OK;
}


/* payflow_webhook_allow <address | CIDR | all>... */

static char *
ngx_http_payflow_webhook_allow(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_payflow_webhook_loc_conf_t *wlcf = conf;

    ngx_int_t    rc;
    ngx_str_t   *value;
    ngx_uint_t   i;
    ngx_cidr_t  *cidr;

    value = cf->args->elts;

    if (wlcf->wh.allow == NULL) {
        wlcf->wh.allow = ngx_array_create(cf->pool, 4, sizeof(ngx_cidr_t));
        if (wlcf->wh.allow == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    for (i = 1; i < cf->args->nelts; i++) {
        cidr = ngx_array_push(wlcf->wh.allow);
        if (cidr == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_strcmp(value[i].data, "all") == 0) {
            ngx_memzero(cidr, sizeof(ngx_cidr_t));
            cidr->family = AF_INET;

#if (NGX_HAVE_INET6)
            cidr = ngx_array_push(wlcf->wh.allow);
            if (cidr == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memzero(cidr, sizeof(ngx_cidr_t));
            cidr->family = AF_INET6;
#endif
            continue;
        }

        rc = ngx_ptocidr(&value[i], cidr);

        if (rc == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid address \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        if (rc == NGX_DONE) {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "low address bits of %V are meaningless",
                               &value[i]);
        }
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_payflow_webhook_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_payflow_webhook_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_webhook_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->wh.provider = NULL;
     *     conf->wh.allow = NULL;
     *     conf->name = { 0, NULL };
     */

    conf->wh.tolerance = NGX_CONF_UNSET;

    return conf;
}


/*
 * After the whole http block: the provider named (declared anywhere in it)
 * and its secrets are resolved here.
 */

static char *
ngx_http_payflow_webhook_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_payflow_webhook_loc_conf_t *prev = parent;
    ngx_http_payflow_webhook_loc_conf_t *conf = child;

    ngx_str_t                     *secret;
    ngx_uint_t                     i;
    ngx_http_payflow_provider_t   *pv;
    ngx_http_payflow_main_conf_t  *pmcf;

    if (conf->wh.allow == NULL) {
        conf->wh.allow = prev->wh.allow;
    }

    ngx_conf_merge_sec_value(conf->wh.tolerance, prev->wh.tolerance, 300);

    if (conf->name.len == 0) {
        return NGX_CONF_OK;
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_payflow_module);

    if (pmcf->db == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_webhook\" in %V:%ui requires "
                           "\"payflow_db\" in the http block",
                           &conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    if (conf->accounts) {
        return NGX_CONF_OK;
    }

    pv = pmcf->providers.elts;

    /* a provider name is declared once per mode */

    for (i = 0; i < pmcf->providers.nelts; i++) {
        if (pv[i].name.len == conf->name.len
            && ngx_strncmp(pv[i].name.data, conf->name.data,
                           conf->name.len) == 0
            && pv[i].livemode == conf->livemode)
        {
            conf->wh.provider = &pv[i];
            break;
        }
    }

    if (conf->wh.provider == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_webhook\" in %V:%ui names \"%V\" in "
                           "%s mode, which no \"payflow_provider\" declares",
                           &conf->file, conf->line, &conf->name,
                           conf->livemode ? "live" : "test");
        return NGX_CONF_ERROR;
    }

    if (conf->wh.secrets.nelts == 0) {

        if (ngx_strcmp(conf->wh.provider->adapter->type, "paystack") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"payflow_webhook\" in %V:%ui needs the "
                               "provider's signing secret: secret_file= or "
                               "secret_env=", &conf->file, conf->line);
            return NGX_CONF_ERROR;
        }

        /* Paystack signs its webhooks with the API secret key */

        secret = ngx_array_push(&conf->wh.secrets);
        if (secret == NULL) {
            return NGX_CONF_ERROR;
        }

        *secret = conf->wh.provider->secret;
    }

    return NGX_CONF_OK;
}


/* payflow_outbox_retries <time>...: the waits after the first attempt */

static char *
ngx_http_payflow_outbox_retries(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_payflow_outbox_conf_t *ocf = conf;

    time_t      *t;
    ngx_str_t   *value;
    ngx_uint_t   i;

    if (ocf->retries != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    if (cf->args->nelts > 33) {
        return "takes at most 32 waits";
    }

    ocf->retries = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                    sizeof(time_t));
    if (ocf->retries == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        t = ngx_array_push(ocf->retries);
        if (t == NULL) {
            return NGX_CONF_ERROR;
        }

        *t = ngx_parse_time(&value[i], 1);

        if (*t == (time_t) NGX_ERROR || *t == 0 || *t > 30 * 86400) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid wait \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_payflow_webhook_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_payflow_outbox_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_outbox_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->enabled = NGX_CONF_UNSET;
    conf->interval = NGX_CONF_UNSET_MSEC;
    conf->timeout = NGX_CONF_UNSET_MSEC;
    conf->retries = NGX_CONF_UNSET_PTR;
    conf->disable_after = NGX_CONF_UNSET;
    conf->grace = NGX_CONF_UNSET;
    conf->allow_private = NGX_CONF_UNSET;
    conf->concurrency = NGX_CONF_UNSET_UINT;

    return conf;
}


/*
 * Standard Webhooks' schedule by default: at once, then after 5 s, 5 min,
 * 30 min, 2 h, 5 h, 10 h and 10 h.
 */

static char *
ngx_http_payflow_webhook_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_payflow_outbox_conf_t *ocf = conf;

    u_char      *p;
    time_t      *t;
    ngx_uint_t   i;

    static time_t  schedule[] = { 5, 300, 1800, 7200, 18000, 36000, 36000 };

    ngx_conf_init_value(ocf->enabled, 1);
    ngx_conf_init_msec_value(ocf->interval, 250);
    ngx_conf_init_msec_value(ocf->timeout, 15000);
    ngx_conf_init_value(ocf->disable_after, 5 * 86400);
    ngx_conf_init_value(ocf->grace, 86400);
    ngx_conf_init_value(ocf->allow_private, 0);
    ngx_conf_init_uint_value(ocf->concurrency, 64);

    if (ocf->concurrency == 0) {
        ocf->concurrency = 1;
    }

    if (ocf->interval < 10) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_outbox_interval\" must be 10ms or more");
        return NGX_CONF_ERROR;
    }

    if (ocf->retries == NGX_CONF_UNSET_PTR) {
        ocf->retries = ngx_array_create(cf->pool, 8, sizeof(time_t));
        if (ocf->retries == NULL) {
            return NGX_CONF_ERROR;
        }

        for (i = 0; i < sizeof(schedule) / sizeof(time_t); i++) {
            t = ngx_array_push(ocf->retries);
            if (t == NULL) {
                return NGX_CONF_ERROR;
            }

            *t = schedule[i];
        }
    }

    /* as the database takes it: an int[] literal */

    p = ngx_pnalloc(cf->pool, 2 + ocf->retries->nelts * (NGX_TIME_T_LEN + 1));
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    ocf->schedule.data = p;
    *p++ = '{';

    t = ocf->retries->elts;

    for (i = 0; i < ocf->retries->nelts; i++) {
        p = ngx_sprintf(p, i ? ",%T" : "%T", t[i]);
    }

    *p++ = '}';
    *p = '\0';
    ocf->schedule.len = p - ocf->schedule.data;

    return NGX_CONF_OK;
}
