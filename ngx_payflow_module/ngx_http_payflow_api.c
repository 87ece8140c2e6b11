
/*
 * Copyright (C) PayFlow
 *
 * Every endpoint of the API, in two tables: /v1 for tenants and
 * /v1/admin for the operator.  A route names its method, its path ("{}"
 * is one id segment), the permission it needs and its handler; POST
 * routes get their JSON body parsed and checked before the handler runs.
 * Anything else under /v1 is a 404 in the envelope.
 */


#include "ngx_http_payflow_api.h"
#include "ngx_http_payflow_auth.h"
#include "ngx_http_payflow_keys.h"
#include "ngx_http_payflow_metrics.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_pii.h"
#include "ngx_http_payflow_accounts.h"
#include "ngx_http_payflow_lists.h"
#include "ngx_http_payflow_refunds.h"
#include "ngx_http_payflow_risk.h"
#include "ngx_http_payflow_webhook.h"


#define NGX_HTTP_PAYFLOW_ECHO_MAX  128
#define NGX_HTTP_PAYFLOW_ID_MAX    64


typedef ngx_int_t (*ngx_http_payflow_route_pt)(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);


typedef struct {
    ngx_uint_t                  method;
    const char                 *path;
    ngx_uint_t                  perm;
    ngx_http_payflow_route_pt   handler;
} ngx_http_payflow_route_t;


static ngx_int_t ngx_http_payflow_dispatch(ngx_http_request_t *r,
    ngx_http_payflow_route_t *routes);
static ngx_uint_t ngx_http_payflow_route_match(ngx_str_t *uri,
    const char *path, ngx_str_t *params);
static void ngx_http_payflow_body_ready(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_accounts_wait(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
static void ngx_http_payflow_accounts_woken(
    ngx_http_payflow_account_wait_t *w, ngx_int_t rc);
static void ngx_http_payflow_accounts_cleanup(void *data);
static ngx_int_t ngx_http_payflow_forbidden(ngx_http_request_t *r,
    ngx_uint_t perm);
static ngx_int_t ngx_http_payflow_api_not_found(ngx_http_request_t *r);


/* route metrics indexes: API routes, admin routes, then these */
#define NGX_HTTP_PAYFLOW_API_ROUTES                                           \
    (sizeof(ngx_http_payflow_api_routes)                                      \
     / sizeof(ngx_http_payflow_route_t) - 1)
#define NGX_HTTP_PAYFLOW_ADMIN_ROUTES                                         \
    (sizeof(ngx_http_payflow_admin_routes)                                    \
     / sizeof(ngx_http_payflow_route_t) - 1)
#define NGX_HTTP_PAYFLOW_ROUTES                                               \
    (NGX_HTTP_PAYFLOW_API_ROUTES + NGX_HTTP_PAYFLOW_ADMIN_ROUTES)


static const char  *ngx_http_payflow_route_specials[] = {
    "health", "ready", "metrics", "unmatched", "webhook"
};


static ngx_http_payflow_route_t  ngx_http_payflow_api_routes[] = {

    { NGX_HTTP_GET, "/v1/me", 0,
      ngx_http_payflow_me_handler },

    { NGX_HTTP_GET, "/v1/api_keys", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_keys_list },

    { NGX_HTTP_POST, "/v1/api_keys", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_keys_create },

    { NGX_HTTP_GET, "/v1/api_keys/{}", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_keys_get },

    { NGX_HTTP_POST, "/v1/api_keys/{}/revoke", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_keys_revoke },

    { NGX_HTTP_POST, "/v1/api_keys/{}/roll", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_keys_roll },

    { NGX_HTTP_GET, "/v1/provider_accounts", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_accounts_list },

    { NGX_HTTP_POST, "/v1/provider_accounts", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_accounts_create },

    { NGX_HTTP_GET, "/v1/provider_accounts/{}",
      NGX_HTTP_PAYFLOW_PERM_MANAGE, ngx_http_payflow_accounts_get },

    { NGX_HTTP_PATCH, "/v1/provider_accounts/{}",
      NGX_HTTP_PAYFLOW_PERM_MANAGE, ngx_http_payflow_accounts_update },

    { NGX_HTTP_DELETE, "/v1/provider_accounts/{}",
      NGX_HTTP_PAYFLOW_PERM_MANAGE, ngx_http_payflow_accounts_delete },

    { NGX_HTTP_POST, "/v1/customers/erase", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_customers_erase },

    { NGX_HTTP_GET, "/v1/payments", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_payments_list },

    { NGX_HTTP_POST, "/v1/payments", NGX_HTTP_PAYFLOW_PERM_WRITE,
      ngx_http_payflow_payments_create },

    { NGX_HTTP_GET, "/v1/payments/{}", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_payments_get },

    { NGX_HTTP_POST, "/v1/payments/{}/capture", NGX_HTTP_PAYFLOW_PERM_WRITE,
      ngx_http_payflow_payments_capture },

    { NGX_HTTP_POST, "/v1/payments/{}/cancel", NGX_HTTP_PAYFLOW_PERM_WRITE,
      ngx_http_payflow_payments_cancel },

    { NGX_HTTP_GET, "/v1/payments/{}/events", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_payments_events },

    { NGX_HTTP_GET, "/v1/webhook_endpoints", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_endpoints_list },

    { NGX_HTTP_POST, "/v1/webhook_endpoints", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_endpoints_create },

    { NGX_HTTP_GET, "/v1/webhook_endpoints/{}", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_endpoints_get },

    { NGX_HTTP_PATCH, "/v1/webhook_endpoints/{}",
      NGX_HTTP_PAYFLOW_PERM_MANAGE, ngx_http_payflow_endpoints_update },

    { NGX_HTTP_DELETE, "/v1/webhook_endpoints/{}",
      NGX_HTTP_PAYFLOW_PERM_MANAGE, ngx_http_payflow_endpoints_delete },

    { NGX_HTTP_POST, "/v1/webhook_endpoints/{}/rotate_secret",
      NGX_HTTP_PAYFLOW_PERM_MANAGE, ngx_http_payflow_endpoints_rotate },

    { NGX_HTTP_GET, "/v1/events", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_events_list },

    { NGX_HTTP_GET, "/v1/events/{}", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_events_get },

    { NGX_HTTP_GET, "/v1/events/{}/deliveries", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_events_deliveries },

    { NGX_HTTP_POST, "/v1/events/{}/redeliver", NGX_HTTP_PAYFLOW_PERM_WRITE,
      ngx_http_payflow_events_redeliver },

    { NGX_HTTP_GET, "/v1/refunds", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_refunds_list },

    { NGX_HTTP_POST, "/v1/refunds", NGX_HTTP_PAYFLOW_PERM_WRITE,
      ngx_http_payflow_refunds_create },

    { NGX_HTTP_GET, "/v1/refunds/{}", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_refunds_get },

    { NGX_HTTP_GET, "/v1/ledger/entries", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_ledger_entries },

    { NGX_HTTP_GET, "/v1/balance", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_balance },

    { NGX_HTTP_GET, "/v1/risk/rules", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_risk_rules_get },

    { NGX_HTTP_PATCH, "/v1/risk/rules", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_risk_rules_update },

    { NGX_HTTP_POST, "/v1/risk/rules", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_risk_rules_update },

    { NGX_HTTP_DELETE, "/v1/risk/rules", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_risk_rules_reset },

    { NGX_HTTP_GET, "/v1/risk/lists/{}", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_risk_lists_get },

    { NGX_HTTP_POST, "/v1/risk/lists/{}", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_risk_lists_add },

    { NGX_HTTP_DELETE, "/v1/risk/lists/{}", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_risk_lists_delete },

    { NGX_HTTP_GET, "/v1/reviews", NGX_HTTP_PAYFLOW_PERM_READ,
      ngx_http_payflow_reviews_list },

    { NGX_HTTP_POST, "/v1/reviews/{}/approve", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_reviews_approve },

    { NGX_HTTP_POST, "/v1/reviews/{}/reject", NGX_HTTP_PAYFLOW_PERM_MANAGE,
      ngx_http_payflow_reviews_reject },

    { 0, NULL, 0, NULL }
};


/* the operator's credential is checked in the access phase */

static ngx_http_payflow_route_t  ngx_http_payflow_admin_routes[] = {

    { NGX_HTTP_POST, "/v1/admin/tenants", 0,
      ngx_http_payflow_tenants_create },

    { NGX_HTTP_GET, "/v1/admin/tenants", 0,
      ngx_http_payflow_tenants_list },

    { NGX_HTTP_GET, "/v1/admin/tenants/{}", 0,
      ngx_http_payflow_tenants_get },

    { NGX_HTTP_POST, "/v1/admin/tenants/{}/api_keys", 0,
      ngx_http_payflow_keys_create },

    { NGX_HTTP_GET, "/v1/admin/tenants/{}/api_keys", 0,
      ngx_http_payflow_keys_list },

    { NGX_HTTP_GET, "/v1/admin/api_keys/{}", 0,
      ngx_http_payflow_keys_get },

    { NGX_HTTP_POST, "/v1/admin/api_keys/{}/revoke", 0,
      ngx_http_payflow_keys_revoke },

    { NGX_HTTP_POST, "/v1/admin/api_keys/{}/roll", 0,
      ngx_http_payflow_keys_roll },

    { 0, NULL, 0, NULL }
};


ngx_int_t
ngx_http_payflow_api_handler(ngx_http_request_t *r)
{
    return ngx_http_payflow_dispatch(r, ngx_http_payflow_api_routes);
}


ngx_int_t
ngx_http_payflow_admin_handler(ngx_http_request_t *r)
{
    return ngx_http_payflow_dispatch(r, ngx_http_payflow_admin_routes);
}


static ngx_int_t
ngx_http_payflow_dispatch(ngx_http_request_t *r,
    ngx_http_payflow_route_t *routes)
{
    ngx_int_t                  rc;
    ngx_uint_t                 path_known;
    ngx_http_payflow_ctx_t    *ctx;
    ngx_http_payflow_route_t  *rt;

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    path_known = 0;

    for (rt = routes; rt->path; rt++) {
        if (!ngx_http_payflow_route_match(&r->uri, rt->path, ctx->params)) {
            continue;
        }

        path_known = 1;

        if (r->method & rt->method) {
            break;
        }
    }

    if (rt->path == NULL) {
        return path_known ? ngx_http_payflow_not_allowed(r)
                          : ngx_http_payflow_api_not_found(r);
    }

    ctx->route_index = 1 + (rt - routes)
                       + (routes == ngx_http_payflow_admin_routes
                          ? NGX_HTTP_PAYFLOW_API_ROUTES : 0);

    if ((ctx->auth.perms & rt->perm) != rt->perm) {
        return ngx_http_payflow_forbidden(r, rt->perm);
    }

    if (!(r->method & (NGX_HTTP_POST|NGX_HTTP_PATCH))) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return rt->handler(r, ctx);
    }

    ctx->route = rt;

    /* bodies are parsed in memory; larger ones fail in pf_json */
    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_payflow_body_ready);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_payflow_body_ready(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    pf_error_t                 err;
    ngx_http_payflow_ctx_t    *ctx;
    ngx_http_payflow_route_t  *rt;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    rt = (ngx_http_payflow_route_t *) ctx->route;

    rc = pf_json_parse_body(r, &ctx->body, &err);

    if (rc == NGX_OK) {
        rc = ngx_http_payflow_accounts_wait(r, ctx);

        if (rc == NGX_OK) {
            rc = rt->handler(r, ctx);
        }

    } else if (rc == NGX_DECLINED) {
        rc = ngx_http_payflow_send_error(r, &err);

    } else {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_finalize_request(r, rc);
}


/*
 * A tenant's write may reach its provider accounts (a payment routed
 * through them, a capture or refund at one): the worker's copy of them is
 * made first, once, and the request waits for it.  NGX_OK: go on;
 * NGX_DONE: the request waits.
 */

static ngx_int_t
ngx_http_payflow_accounts_wait(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                         rc;
    ngx_pool_cleanup_t               *cln;
    ngx_http_payflow_account_wait_t  *w;

    if (ctx->auth.tenant_id.len == 0
        || ctx->route_index > NGX_HTTP_PAYFLOW_API_ROUTES)
    {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    w = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_account_wait_t));

    if (cln == NULL || w == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    w->handler = ngx_http_payflow_accounts_woken;
    w->data = r;

    rc = ngx_http_payflow_accounts_ready(&ctx->auth.tenant_id,
                                         ctx->auth.livemode, w);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    if (rc == NGX_AGAIN) {
        cln->handler = ngx_http_payflow_accounts_cleanup;
        cln->data = w;

        r->main->count++;
        return NGX_DONE;
    }

    return ngx_http_payflow_send_db_error(r, NULL);
}


static void
ngx_http_payflow_accounts_woken(ngx_http_payflow_account_wait_t *w,
    ngx_int_t rc)
{
    ngx_http_request_t        *r;
    ngx_http_payflow_ctx_t    *ctx;
    ngx_http_payflow_route_t  *rt;

    r = w->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    rt = (ngx_http_payflow_route_t *) ctx->route;

    rc = (rc == NGX_OK) ? rt->handler(r, ctx)
                        : ngx_http_payflow_send_db_error(r, NULL);

    ngx_http_payflow_finalize(r, rc);
}


static void
ngx_http_payflow_accounts_cleanup(void *data)
{
    ngx_http_payflow_account_unwait(data);
}


/* "{}" matches one id segment: 1..64 of [A-Za-z0-9_] */

static ngx_uint_t
ngx_http_payflow_route_match(ngx_str_t *uri, const char *path,
    ngx_str_t *params)
{
    u_char      *p, *last, *start;
    ngx_uint_t   n;

    p = uri->data;
    last = uri->data + uri->len;
    n = 0;

    while (*path) {

        if (path[0] == '{' && path[1] == '}') {
            start = p;

            while (p < last && (isalnum(*p) || *p == '_')) {
                p++;
            }

            if (p == start || p - start > NGX_HTTP_PAYFLOW_ID_MAX
                || n == NGX_HTTP_PAYFLOW_MAX_PARAMS)
            {
                return 0;
            }

            params[n].data = start;
            params[n].len = p - start;
            n++;

            path += 2;
            continue;
        }

        if (p == last || *p != (u_char) *path) {
            return 0;
        }

        p++;
        path++;
    }

    return p == last;
}


/* 405, in the envelope, the body discarded */

ngx_int_t
ngx_http_payflow_not_allowed(ngx_http_request_t *r)
{
    ngx_int_t   rc;
    pf_error_t  err;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_NOT_ALLOWED;
    err.type = PF_ERROR_INVALID_REQUEST;
    err.code = "method_not_allowed";
    err.message = "the method is not allowed for this resource";

    return ngx_http_payflow_send_error(r, &err);
}


static ngx_int_t
ngx_http_payflow_forbidden(ngx_http_request_t *r, ngx_uint_t perm)
{
    ngx_int_t   rc;
    pf_error_t  err;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_FORBIDDEN;
    err.type = PF_ERROR_PERMISSION;
    err.code = "insufficient_permissions";

    if (perm & NGX_HTTP_PAYFLOW_PERM_MANAGE) {
        err.message = "this request needs the \"manage\" permission "
                      "(role owner or admin, not read-only)";

    } else if (perm & NGX_HTTP_PAYFLOW_PERM_WRITE) {
        err.message = "this request needs the \"write\" permission "
                      "(a key that is not read-only, role developer or "
                      "above)";

    } else {
        err.message = "this request needs the \"read\" permission";
    }

    return ngx_http_payflow_send_error(r, &err);
}


static ngx_int_t
ngx_http_payflow_api_not_found(ngx_http_request_t *r)
{
    u_char      *p, *last, ch;
    size_t       len;
    ngx_int_t    rc;
    ngx_uint_t   i;
    pf_error_t   err;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    /*
     * The message echoes the method and path, printable ASCII only and
     * bounded, so that it is always valid JSON and safe to show.
     */

    len = ngx_min(r->uri.len, NGX_HTTP_PAYFLOW_ECHO_MAX);

    p = ngx_pnalloc(r->pool, sizeof("unrecognized request URL: ") - 1
                             + r->method_name.len + 1 + len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_sprintf(p, "unrecognized request URL: %V ", &r->method_name);

    for (i = 0; i < len; i++) {
        ch = r->uri.data[i];
        *last++ = (ch >= 0x20 && ch < 0x7f && ch != '\\') ? ch : '?';
    }

    *last = '\0';

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_NOT_FOUND;
    err.type = PF_ERROR_INVALID_REQUEST;
    err.code = "resource_not_found";
    err.message = (char *) p;

    return ngx_http_payflow_send_error(r, &err);
}


/*
 * The route a response is counted under: the one the router matched, or,
 * for requests refused before routing, the one the path would have
 * matched; never the path itself, whose ids would flood the labels.
 */

ngx_int_t
ngx_http_payflow_route_index(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_str_t                     params[NGX_HTTP_PAYFLOW_MAX_PARAMS];
    ngx_uint_t                    base;
    ngx_http_payflow_route_t     *routes, *rt;
    ngx_http_payflow_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);

    switch (plcf->kind) {

    case NGX_HTTP_PAYFLOW_HEALTH:
        return NGX_HTTP_PAYFLOW_ROUTES;

    case NGX_HTTP_PAYFLOW_READY:
        return NGX_HTTP_PAYFLOW_ROUTES + 1;

    case NGX_HTTP_PAYFLOW_METRICS:
        return NGX_HTTP_PAYFLOW_ROUTES + 2;

    case NGX_HTTP_PAYFLOW_WEBHOOK:
        return NGX_HTTP_PAYFLOW_ROUTES + 4;

    case NGX_HTTP_PAYFLOW_API:
    case NGX_HTTP_PAYFLOW_ADMIN:
        break;

    default:
        return NGX_ERROR;
    }

    if (ctx && ctx->route_index) {
        return ctx->route_index - 1;
    }

    if (plcf->kind == NGX_HTTP_PAYFLOW_ADMIN) {
        routes = ngx_http_payflow_admin_routes;
        base = NGX_HTTP_PAYFLOW_API_ROUTES;

    } else {
        routes = ngx_http_payflow_api_routes;
        base = 0;
    }

    for (rt = routes; rt->path; rt++) {
        if (ngx_http_payflow_route_match(&r->uri, rt->path, params)) {
            return base + (rt - routes);
        }
    }

    return NGX_HTTP_PAYFLOW_ROUTES + 3;
}


/* the label of route i ("/v1/api_keys/{id}"), 0 past the last */

ngx_uint_t
ngx_http_payflow_route_label(ngx_uint_t i, u_char *buf, size_t len)
{
    u_char      *p, *last;
    const char  *path;

    if (i < NGX_HTTP_PAYFLOW_API_ROUTES) {
        path = ngx_http_payflow_api_routes[i].path;

    } else if (i < NGX_HTTP_PAYFLOW_ROUTES) {
        path = ngx_http_payflow_admin_routes[i - NGX_HTTP_PAYFLOW_API_ROUTES]
                   .path;

    } else if (i < NGX_HTTP_PAYFLOW_ROUTES + 5) {
        path = ngx_http_payflow_route_specials[i - NGX_HTTP_PAYFLOW_ROUTES];
        return ngx_cpymem(buf, path, ngx_strlen(path)) - buf;

    } else {
        return 0;
    }

    p = buf;
    last = buf + len - sizeof("{id}");

    while (*path && p < last) {
        if (path[0] == '{' && path[1] == '}') {
            p = ngx_cpymem(p, "{id}", 4);
            path += 2;
            continue;
        }

        *p++ = *path++;
    }

    return p - buf;
}
