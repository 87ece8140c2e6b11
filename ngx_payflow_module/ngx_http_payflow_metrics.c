
/*
 * Copyright (C) PayFlow
 *
 * Metrics in one shared-memory block of atomic counters, so that every
 * worker adds to them and any worker reports all of them: no lock is taken
 * to count or to format.  Labels come from closed sets only (route
 * templates, methods, a list of statuses, result codes): no tenant or
 * object id ever becomes a label.
 */


#include "ngx_http_payflow_metrics.h"
#include "pf_mask.h"
#include "ngx_http_payflow_idempotency.h"
#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_risk.h"


#define NGX_HTTP_PAYFLOW_M_AUTH  (NGX_HTTP_PAYFLOW_M_AUTH_REFUSED + 14)


typedef struct {
    ngx_atomic_t                requests[NGX_HTTP_PAYFLOW_M_ROUTES]
                                        [NGX_HTTP_PAYFLOW_M_METHODS]
                                        [NGX_HTTP_PAYFLOW_M_STATUSES];
    ngx_atomic_t                latency[NGX_HTTP_PAYFLOW_M_ROUTES]
                                       [NGX_HTTP_PAYFLOW_M_BUCKETS];
    ngx_atomic_t                latency_sum_ms[NGX_HTTP_PAYFLOW_M_ROUTES];
    ngx_atomic_t                auth[NGX_HTTP_PAYFLOW_M_AUTH];
    ngx_atomic_t                cache[4];
    ngx_atomic_t                idem[5];       /* ngx_http_payflow_idem_e */
    ngx_atomic_t                created[6];    /* m_created[] */
    ngx_atomic_t                outbox[NGX_HTTP_PAYFLOW_OUTBOX_NRESULTS];
    ngx_atomic_t                outbox_backlog;
    ngx_atomic_t                outbox_lag_ms;
    ngx_atomic_t                ledger_unsealed;
    ngx_atomic_t                ledger_lag_ms;
    ngx_atomic_t                secrets_pending;
    ngx_atomic_t                secrets_resealed;
    ngx_atomic_t                secrets_unopened;
    ngx_atomic_t                transitions[NGX_HTTP_PAYFLOW_M_TYPES]
                                           [NGX_HTTP_PAYFLOW_M_SOURCES];
    pf_pg_metrics_t             pg;
} ngx_http_payflow_metrics_sh_t;


typedef struct {
    ngx_http_payflow_metrics_sh_t  *sh;
} ngx_http_payflow_metrics_zone_t;


static ngx_int_t ngx_http_payflow_metrics_init_zone(ngx_shm_zone_t *zone,
    void *data);
static ngx_http_payflow_metrics_sh_t *ngx_http_payflow_metrics_sh(
    ngx_http_request_t *r);
static void ngx_http_payflow_metrics_http(pf_prom_t *out,
    ngx_http_payflow_metrics_sh_t *sh);
static void ngx_http_payflow_metrics_auth_out(pf_prom_t *out,
    ngx_http_payflow_metrics_sh_t *sh);
static void ngx_http_payflow_metrics_pg_out(pf_prom_t *out,
    pf_pg_metrics_t *pg, ngx_uint_t workers);
static void ngx_http_payflow_metrics_seconds(pf_prom_t *out,
    const char *name, const char *labels, uint64_t ms);
static void ngx_http_payflow_log_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static void ngx_http_payflow_log_unmask(void *data);


/* a log that had a writer of its own (syslog, memory) keeps it here */

typedef struct {
    ngx_log_writer_pt           writer;
    void                       *wdata;
} ngx_http_payflow_log_wrap_t;


/* nginx's error-log handler for requests, which ours extends */
ngx_http_log_handler_pt  ngx_http_payflow_log_next;


static const ngx_uint_t  ngx_http_payflow_m_statuses[] = {
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 413, 414, 422, 429,
    499, 500, 502, 503, 504
};

static const char  *ngx_http_payflow_m_methods[] = {
    "GET", "HEAD", "POST", "PATCH", "DELETE", "other"
};

/* request latency bucket bounds, ms; the last bucket is +Inf */
static const ngx_msec_t  ngx_http_payflow_m_bounds[] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000
};

static const char  *ngx_http_payflow_m_refusals[] = {
    "authorization_missing", "authorization_invalid", "api_key_invalid",
    "api_key_revoked", "api_key_expired", "invalid_token", "token_expired",
    "admin_key_invalid", "tenant_suspended", "database_busy",
    "database_unavailable", "database_timeout", "database_error", "other"
};

static const char  *ngx_http_payflow_m_credentials[] = {
    "api_key", "static_key", "jwt", "admin"
};

/* what a new payment can be when its creation returns */
static const char  *ngx_http_payflow_m_created[] = {
    "succeeded", "requires_capture", "requires_action", "processing",
    "requires_review", "failed"
};


static const char  *ngx_http_payflow_m_cache[] = {
    "hit", "negative", "miss", "static"
};


ngx_int_t
ngx_http_payflow_metrics_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_str_t                         name = ngx_string("payflow_metrics");
    ngx_http_payflow_metrics_zone_t  *mz;

    mz = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_metrics_zone_t));
    if (mz == NULL) {
        return NGX_ERROR;
    }

    pmcf->metrics = ngx_shared_memory_add(cf, &name,
                        ngx_align(sizeof(ngx_http_payflow_metrics_sh_t)
                                  + 8 * ngx_pagesize, ngx_pagesize),
                        &ngx_http_payflow_module);
    if (pmcf->metrics == NULL) {
        return NGX_ERROR;
    }

    pmcf->metrics->init = ngx_http_payflow_metrics_init_zone;
    pmcf->metrics->data = mz;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_metrics_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_payflow_metrics_zone_t  *omz = data;

    ngx_slab_pool_t                  *shpool;
    ngx_http_payflow_metrics_zone_t  *mz;

    mz = zone->data;

    if (omz) {
        /* reload: counting goes on */
        mz->sh = omz->sh;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists) {
        mz->sh = shpool->data;
        return NGX_OK;
    }

    mz->sh = ngx_slab_alloc(shpool, sizeof(ngx_http_payflow_metrics_sh_t));
    if (mz->sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(mz->sh, sizeof(ngx_http_payflow_metrics_sh_t));
    shpool->data = mz->sh;

    return NGX_OK;
}


static const char  *ngx_http_payflow_m_types[] = {
    "payment.created", "payment.processing", "payment.requires_action",
    "payment.requires_capture", "payment.succeeded", "payment.failed",
    "payment.canceled", "payment.captured", "payment.partially_refunded",
    "payment.refunded", "payment.rerouted", "payment.review_required",
    "payment.review_approved", "payment.review_rejected", "refund.created",
    "refund.succeeded", "refund.failed", "other"
};

static const char  *ngx_http_payflow_m_sources[] = {
    "api", "webhook", "system", "admin"
};


/* n events of a type and source, counted by the background jobs */

void
ngx_http_payflow_metrics_transitions(ngx_http_payflow_main_conf_t *pmcf,
    const char *type, const char *source, ngx_int_t n)
{
    ngx_uint_t                        t, s;
    ngx_http_payflow_metrics_zone_t  *mz;

    if (n <= 0) {
        return;
    }

    for (t = 0; t < NGX_HTTP_PAYFLOW_M_TYPES - 1; t++) {
        if (ngx_strcmp(type, ngx_http_payflow_m_types[t]) == 0) {
            break;
        }
    }

    for (s = 0; s < NGX_HTTP_PAYFLOW_M_SOURCES; s++) {
        if (ngx_strcmp(source, ngx_http_payflow_m_sources[s]) == 0) {
            break;
        }
    }

    if (s == NGX_HTTP_PAYFLOW_M_SOURCES) {
        s = 0;
    }

    mz = pmcf->metrics->data;

    (void) ngx_atomic_fetch_add(&mz->sh->transitions[t][s], n);
}


/* an attempt of the outbox, or (result -1) the backlog it last saw */

void
ngx_http_payflow_metrics_outbox(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t result, ngx_uint_t backlog, ngx_msec_t lag)
{
    ngx_http_payflow_metrics_zone_t  *mz;

    mz = pmcf->metrics->data;

    if (result >= 0) {
        (void) ngx_atomic_fetch_add(&mz->sh->outbox[result], 1);
        return;
    }

    mz->sh->outbox_backlog = backlog;
    mz->sh->outbox_lag_ms = lag;
}


/*
 * The background sealing of secrets: pending >= 0 sets what is left to
 * seal under the current payflow_kek; resealed and unopened count rows.
 */

void
ngx_http_payflow_metrics_secrets(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t pending, ngx_uint_t resealed, ngx_uint_t unopened)
{
    ngx_http_payflow_metrics_zone_t  *mz;

    if (pmcf->metrics == NULL) {
        return;
    }

    mz = pmcf->metrics->data;

    if (pending >= 0) {
        mz->sh->secrets_pending = (ngx_atomic_uint_t) pending;
    }

    (void) ngx_atomic_fetch_add(&mz->sh->secrets_resealed, resealed);
    (void) ngx_atomic_fetch_add(&mz->sh->secrets_unopened, unopened);
}


/* what the ledger's sequencer left unsealed when it last ran */

void
ngx_http_payflow_metrics_ledger(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t unsealed, ngx_msec_t lag)
{
    ngx_http_payflow_metrics_zone_t  *mz;

    mz = pmcf->metrics->data;

    mz->sh->ledger_unsealed = unsealed > 0 ? (ngx_atomic_uint_t) unsealed : 0;
    mz->sh->ledger_lag_ms = lag;
}


pf_pg_metrics_t *
ngx_http_payflow_metrics_pg(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_metrics_zone_t  *mz;

    mz = pmcf->metrics->data;

    return &mz->sh->pg;
}


static ngx_http_payflow_metrics_sh_t *
ngx_http_payflow_metrics_sh(ngx_http_request_t *r)
{
    ngx_http_payflow_main_conf_t     *pmcf;
    ngx_http_payflow_metrics_zone_t  *mz;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    mz = pmcf->metrics->data;

    return mz->sh;
}


/* the log phase: every response of a PayFlow location is counted */

ngx_int_t
ngx_http_payflow_metrics_log(ngx_http_request_t *r)
{
    ngx_int_t                       route;
    ngx_uint_t                      m, s, b, status;
    ngx_time_t                     *tp;
    ngx_msec_int_t                  ms;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_loc_conf_t    *plcf;
    ngx_http_payflow_metrics_sh_t  *sh;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);

    if (plcf->kind == NGX_HTTP_PAYFLOW_NONE || r != r->main) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    route = ngx_http_payflow_route_index(r, ctx);

    if (route < 0 || route >= NGX_HTTP_PAYFLOW_M_ROUTES) {
        return NGX_OK;
    }

    switch (r->method) {
    case NGX_HTTP_GET:
        m = 0;
        break;
    case NGX_HTTP_HEAD:
        m = 1;
        break;
    case NGX_HTTP_POST:
        m = 2;
        break;
    case NGX_HTTP_PATCH:
        m = 3;
        break;
    case NGX_HTTP_DELETE:
        m = 4;
        break;
    default:
        m = 5;
    }

    status = r->err_status ? r->err_status : r->headers_out.status;

    if (r->connection->error && status == 0) {
        status = NGX_HTTP_CLIENT_CLOSED_REQUEST;
    }

    for (s = 0; s < sizeof(ngx_http_payflow_m_statuses) / sizeof(ngx_uint_t);
         s++)
    {
        if (ngx_http_payflow_m_statuses[s] == status) {
            break;
        }
    }

    /* as $request_time: start_msec is the milliseconds of start_sec */

    tp = ngx_timeofday();

    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));
    ms = ngx_max(ms, 0);

    for (b = 0; b < NGX_HTTP_PAYFLOW_M_BUCKETS - 1; b++) {
        if ((ngx_msec_t) ms <= ngx_http_payflow_m_bounds[b]) {
            break;
        }
    }

    sh = ngx_http_payflow_metrics_sh(r);

    (void) ngx_atomic_fetch_add(&sh->requests[route][m][s], 1);
    (void) ngx_atomic_fetch_add(&sh->latency[route][b], 1);
    (void) ngx_atomic_fetch_add(&sh->latency_sum_ms[route], ms);

    if (ctx && ctx->idem != NGX_HTTP_PAYFLOW_IDEM_NONE) {
        (void) ngx_atomic_fetch_add(&sh->idem[ctx->idem], 1);
    }

    if (ctx && ctx->created && !ctx->review) {

        /* the last, failed, also takes what is not listed */

        for (b = 0; b < 5; b++) {
            if (ngx_strcmp(ctx->outcome, ngx_http_payflow_m_created[b]) == 0)
            {
                break;
            }
        }

        (void) ngx_atomic_fetch_add(&sh->created[b], 1);
    }

    return NGX_OK;
}


void
ngx_http_payflow_metrics_auth(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_uint_t                      i, n;
    ngx_http_payflow_metrics_sh_t  *sh;

    if (ctx->auth_rc == NGX_OK) {
        i = ctx->auth.credential - NGX_HTTP_PAYFLOW_CRED_API_KEY;

    } else {
        n = sizeof(ngx_http_payflow_m_refusals) / sizeof(char *) - 1;

        for (i = 0; i < n; i++) {
            if (ctx->error
                && ngx_strcmp(ctx->error->code,
                              ngx_http_payflow_m_refusals[i]) == 0)
            {
                break;
            }
        }

        i += NGX_HTTP_PAYFLOW_M_AUTH_REFUSED;
    }

    sh = ngx_http_payflow_metrics_sh(r);

    (void) ngx_atomic_fetch_add(&sh->auth[i], 1);
}


void
ngx_http_payflow_metrics_cache(ngx_http_request_t *r,
    ngx_http_payflow_m_cache_e result)
{
    ngx_http_payflow_metrics_sh_t  *sh;

    sh = ngx_http_payflow_metrics_sh(r);

    (void) ngx_atomic_fetch_add(&sh->cache[result], 1);
}


ngx_int_t
ngx_http_payflow_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    pf_prom_t                       out;
    ngx_core_conf_t                *ccf;
    ngx_http_payflow_metrics_sh_t  *sh;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);
    sh = ngx_http_payflow_metrics_sh(r);

    pf_prom_init(&out, r->pool);

    ngx_http_payflow_metrics_http(&out, sh);
    ngx_http_payflow_metrics_auth_out(&out, sh);
    ngx_http_payflow_metrics_pg_out(&out, &sh->pg,
                                    ngx_min((ngx_uint_t)
                                            ccf->worker_processes,
                                            PF_PG_MAX_WORKERS));
    ngx_http_payflow_ratelimit_metrics(&out);
    ngx_http_payflow_providers_metrics(
        ngx_http_get_module_main_conf(r, ngx_http_payflow_module), &out);
    ngx_http_payflow_risk_metrics(
        ngx_http_get_module_main_conf(r, ngx_http_payflow_module), &out);

    if (out.failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = out.size;
    ngx_str_set(&r->headers_out.content_type, PF_PROM_CONTENT_TYPE);
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only
        || out.first == NULL)
    {
        return rc;
    }

    *out.last = NULL;
    out.buf->last_buf = 1;
    out.buf->last_in_chain = 1;

    return ngx_http_output_filter(r, out.first);
}


static void
ngx_http_payflow_metrics_http(pf_prom_t *out,
    ngx_http_payflow_metrics_sh_t *sh)
{
    u_char       label[128];
    uint64_t     v, cum, buckets[NGX_HTTP_PAYFLOW_M_BUCKETS];
    ngx_uint_t   i, m, s, b, len;
    u_char       labels[256];

    pf_prom_family(out, "payflow_http_requests_total", "counter",
                   "Responses of PayFlow locations by route template, "
                   "method and status.");

    for (i = 0; i < NGX_HTTP_PAYFLOW_M_ROUTES; i++) {
        len = ngx_http_payflow_route_label(i, label, sizeof(label));

        if (len == 0) {
            continue;
        }

        for (m = 0; m < NGX_HTTP_PAYFLOW_M_METHODS; m++) {
            for (s = 0; s < NGX_HTTP_PAYFLOW_M_STATUSES; s++) {
                v = sh->requests[i][m][s];

                if (v == 0) {
                    continue;
                }

                if (s < sizeof(ngx_http_payflow_m_statuses)
                        / sizeof(ngx_uint_t))
                {
                    pf_prom_printf(out, "payflow_http_requests_total"
                                   "{route=\"%*s\",method=\"%s\","
                                   "status=\"%ui\"} %uL\n", len, label,
                                   ngx_http_payflow_m_methods[m],
                                   ngx_http_payflow_m_statuses[s], v);

                } else {
                    pf_prom_printf(out, "payflow_http_requests_total"
                                   "{route=\"%*s\",method=\"%s\","
                                   "status=\"other\"} %uL\n", len, label,
                                   ngx_http_payflow_m_methods[m], v);
                }
            }
        }
    }

    pf_prom_family(out, "payflow_http_request_duration_seconds",
                   "histogram",
                   "Time from the first request byte to the log phase, by "
                   "route template.");

    for (i = 0; i < NGX_HTTP_PAYFLOW_M_ROUTES; i++) {
        len = ngx_http_payflow_route_label(i, label, sizeof(label));

        if (len == 0) {
            continue;
        }

        /* one read of each bucket: counts and buckets agree */

        cum = 0;

        for (b = 0; b < NGX_HTTP_PAYFLOW_M_BUCKETS; b++) {
            buckets[b] = sh->latency[i][b];
            cum += buckets[b];
        }

        if (cum == 0) {
            continue;
        }

        cum = 0;

        for (b = 0; b < NGX_HTTP_PAYFLOW_M_BUCKETS - 1; b++) {
            cum += buckets[b];
            pf_prom_printf(out, "payflow_http_request_duration_seconds_bucket"
                           "{route=\"%*s\",le=\"%ui.%03ui\"} %uL\n", len,
                           label, ngx_http_payflow_m_bounds[b] / 1000,
                           ngx_http_payflow_m_bounds[b] % 1000, cum);
        }

        cum += buckets[b];

        pf_prom_printf(out, "payflow_http_request_duration_seconds_bucket"
                       "{route=\"%*s\",le=\"+Inf\"} %uL\n", len, label, cum);

        *ngx_snprintf(labels, sizeof(labels) - 1, "{route=\"%*s\"}", len,
                      label) = '\0';

        ngx_http_payflow_metrics_seconds(out,
            "payflow_http_request_duration_seconds_sum", (char *) labels,
            sh->latency_sum_ms[i]);

        pf_prom_printf(out, "payflow_http_request_duration_seconds_count"
                       "%s %uL\n", labels, cum);
    }
}


static void
ngx_http_payflow_metrics_auth_out(pf_prom_t *out,
    ngx_http_payflow_metrics_sh_t *sh)
{
    ngx_uint_t  i, k;

    pf_prom_family(out, "payflow_auth_total", "counter",
                   "Authentication outcomes: the credential accepted, or "
                   "the error code of the refusal.");

    for (i = 0; i < NGX_HTTP_PAYFLOW_M_AUTH_REFUSED; i++) {
        pf_prom_printf(out, "payflow_auth_total{result=\"ok\","
                       "credential=\"%s\"} %uA\n",
                       ngx_http_payflow_m_credentials[i], sh->auth[i]);
    }

    for (i = 0; i < sizeof(ngx_http_payflow_m_refusals) / sizeof(char *);
         i++)
    {
        pf_prom_printf(out, "payflow_auth_total{result=\"%s\","
                       "credential=\"none\"} %uA\n",
                       ngx_http_payflow_m_refusals[i],
                       sh->auth[NGX_HTTP_PAYFLOW_M_AUTH_REFUSED + i]);
    }

    pf_prom_family(out, "payflow_key_cache_total", "counter",
                   "API key lookups: found valid, found refused, not "
                   "cached (a database round trip), static key.");

    for (i = 0; i < 4; i++) {
        pf_prom_printf(out, "payflow_key_cache_total{result=\"%s\"} %uA\n",
                       ngx_http_payflow_m_cache[i], sh->cache[i]);
    }

    pf_prom_family(out, "payflow_idempotency_total", "counter",
                   "Requests with an Idempotency-Key: run and stored "
                   "(new), answered from the key (replayed), refused "
                   "while another holds it (in_use), or with another "
                   "request's key (reused).");

    for (i = NGX_HTTP_PAYFLOW_IDEM_NEW; i <= NGX_HTTP_PAYFLOW_IDEM_REUSED;
         i++)
    {
        pf_prom_printf(out, "payflow_idempotency_total{result=\"%s\"} "
                       "%uA\n", ngx_http_payflow_idem_names[i],
                       sh->idem[i]);
    }

    pf_prom_family(out, "payflow_payments_created_total", "counter",
                   "Payments created, by their status when the creating "
                   "request returned.");

    for (i = 0; i < 6; i++) {
        pf_prom_printf(out, "payflow_payments_created_total{status=\"%s\"} "
                       "%uA\n", ngx_http_payflow_m_created[i],
                       sh->created[i]);
    }

    pf_prom_family(out, "payflow_payment_transitions_total", "counter",
                   "Payment and refund transitions by event type and what "
                   "caused them (api, webhook, system: the reconciler, "
                   "admin), counted from the event log by the background "
                   "jobs of this node.");

    for (i = 0; i < NGX_HTTP_PAYFLOW_M_TYPES; i++) {
        for (k = 0; k < NGX_HTTP_PAYFLOW_M_SOURCES; k++) {
            pf_prom_printf(out, "payflow_payment_transitions_total{type="
                           "\"%s\",source=\"%s\"} %uA\n",
                           ngx_http_payflow_m_types[i],
                           ngx_http_payflow_m_sources[k],
                           sh->transitions[i][k]);
        }
    }

    pf_prom_family(out, "payflow_outbox_deliveries_total", "counter",
                   "Attempts to deliver webhooks to tenants: succeeded "
                   "(2xx), retry (scheduled again), failed (given up), "
                   "refused (the destination's address is not allowed), "
                   "stale (its lease ran out first).");

    for (i = 0; i < NGX_HTTP_PAYFLOW_OUTBOX_NRESULTS; i++) {
        pf_prom_printf(out, "payflow_outbox_deliveries_total{result=\"%s\"} "
                       "%uA\n", ngx_http_payflow_outbox_names[i],
                       sh->outbox[i]);
    }

    pf_prom_family(out, "payflow_outbox_backlog", "gauge",
                   "Webhook deliveries due and not yet taken, as the "
                   "background jobs last counted them.");
    pf_prom_printf(out, "payflow_outbox_backlog %uA\n", sh->outbox_backlog);

    pf_prom_family(out, "payflow_outbox_lag_seconds", "gauge",
                   "How long the oldest due delivery has waited, as a "
                   "worker last saw it.");
    pf_prom_printf(out, "payflow_outbox_lag_seconds %.3f\n",
                   (double) sh->outbox_lag_ms / 1000);

    pf_prom_family(out, "payflow_ledger_unsealed_entries", "gauge",
                   "Ledger entries committed and not yet sealed into their "
                   "tenant's hash chain, as the sequencer last saw them.");
    pf_prom_printf(out, "payflow_ledger_unsealed_entries %uA\n",
                   sh->ledger_unsealed);

    pf_prom_family(out, "payflow_ledger_seal_lag_seconds", "gauge",
                   "Age of the oldest unsealed ledger entry when the "
                   "sequencer last ran (0 when all are sealed).");
    pf_prom_printf(out, "payflow_ledger_seal_lag_seconds %.3f\n",
                   (double) sh->ledger_lag_ms / 1000);

    pf_prom_family(out, "payflow_secrets_pending", "gauge",
                   "Stored secrets not yet sealed under the current "
                   "payflow_kek (in the clear, or under an older key), as "
                   "a worker last counted them.");
    pf_prom_printf(out, "payflow_secrets_pending %uA\n",
                   sh->secrets_pending);

    pf_prom_family(out, "payflow_secrets_resealed_total", "counter",
                   "Stored secrets sealed, or wrapped again under the "
                   "current payflow_kek, in the background.");
    pf_prom_printf(out, "payflow_secrets_resealed_total %uA\n",
                   sh->secrets_resealed);

    pf_prom_family(out, "payflow_secrets_unopened_total", "counter",
                   "Stored secrets that did not open (their payflow_kek is "
                   "not configured, or they were moved from another row).");
    pf_prom_printf(out, "payflow_secrets_unopened_total %uA\n",
                   sh->secrets_unopened);
}


static void
ngx_http_payflow_metrics_pg_out(pf_prom_t *out, pf_pg_metrics_t *pg,
    ngx_uint_t workers)
{
    uint64_t    v, ok, cum, size, connected, in_use, waiting;
    ngx_uint_t  i;

    pf_prom_family(out, "payflow_pg_queries_total", "counter",
                   "PostgreSQL queries by outcome (a transaction counts "
                   "once).");

    v = pg->queries;
    ok = v - pg->sql_errors - pg->unavailable - pg->busy_rejected
         - pg->timeouts;

    pf_prom_printf(out, "payflow_pg_queries_total{outcome=\"ok\"} %uL\n", ok);
    pf_prom_printf(out, "payflow_pg_queries_total{outcome=\"sql_error\"} "
                   "%uA\n", pg->sql_errors);
    pf_prom_printf(out, "payflow_pg_queries_total{outcome=\"unavailable\"} "
                   "%uA\n", pg->unavailable);
    pf_prom_printf(out, "payflow_pg_queries_total{outcome=\"busy\"} %uA\n",
                   pg->busy_rejected);
    pf_prom_printf(out, "payflow_pg_queries_total{outcome=\"timeout\"} "
                   "%uA\n", pg->timeouts);

    pf_prom_family(out, "payflow_pg_group_commits_total", "counter",
                   "Transactions that carried several waiting queries "
                   "(group commit).");
    pf_prom_printf(out, "payflow_pg_group_commits_total %uA\n",
                   pg->grouped);

    pf_prom_family(out, "payflow_pg_group_members_total", "counter",
                   "Queries answered by a transaction shared with others.");
    pf_prom_printf(out, "payflow_pg_group_members_total %uA\n",
                   pg->group_members);

    pf_prom_family(out, "payflow_pg_group_merged_total", "counter",
                   "Shared transactions written by one statement for all "
                   "their queries.");
    pf_prom_printf(out, "payflow_pg_group_merged_total %uA\n",
                   pg->group_merged);

    pf_prom_family(out, "payflow_pg_group_retries_total", "counter",
                   "Queries run again alone because the transaction they "
                   "shared failed.");
    pf_prom_printf(out, "payflow_pg_group_retries_total %uA\n",
                   pg->group_retries);

    pf_prom_family(out, "payflow_pg_query_duration_seconds", "histogram",
                   "Round trip of queries the server answered.");

    cum = 0;

    for (i = 0; i < PF_PG_LATENCY_BUCKETS; i++) {
        cum += pg->latency[i];
        pf_prom_printf(out, "payflow_pg_query_duration_seconds_bucket"
                       "{le=\"%ui.%03ui\"} %uL\n",
                       pf_pg_latency_bounds[i] / 1000,
                       pf_pg_latency_bounds[i] % 1000, cum);
    }

    cum += pg->latency[i];

    pf_prom_printf(out, "payflow_pg_query_duration_seconds_bucket"
                   "{le=\"+Inf\"} %uL\n", cum);
    ngx_http_payflow_metrics_seconds(out,
        "payflow_pg_query_duration_seconds_sum", "", pg->latency_sum_ms);
    pf_prom_printf(out, "payflow_pg_query_duration_seconds_count %uL\n", cum);

    size = connected = in_use = waiting = 0;

    for (i = 0; i < workers; i++) {
        size += pg->size[i];
        connected += pg->connected[i];
        in_use += pg->in_use[i];
        waiting += pg->waiting[i];
    }

    pf_prom_family(out, "payflow_pg_pool_connections", "gauge",
                   "PostgreSQL connections of all workers: configured, "
                   "connected, running a query.");
    pf_prom_printf(out, "payflow_pg_pool_connections{state=\"configured\"} "
                   "%uL\n", size);
    pf_prom_printf(out, "payflow_pg_pool_connections{state=\"connected\"} "
                   "%uL\n", connected);
    pf_prom_printf(out, "payflow_pg_pool_connections{state=\"in_use\"} "
                   "%uL\n", in_use);

    pf_prom_family(out, "payflow_pg_pool_waiting", "gauge",
                   "Requests waiting for a free PostgreSQL connection.");
    pf_prom_printf(out, "payflow_pg_pool_waiting %uL\n", waiting);

    pf_prom_family(out, "payflow_pg_reconnects_total", "counter",
                   "Connections re-established after a failure.");
    pf_prom_printf(out, "payflow_pg_reconnects_total %uA\n",
                   pg->reconnects);
}


static void
ngx_http_payflow_metrics_seconds(pf_prom_t *out, const char *name,
    const char *labels, uint64_t ms)
{
    pf_prom_printf(out, "%s%s %uL.%03uL\n", name, labels, ms / 1000,
                   ms % 1000);
}


/*
 * Every error log of the configuration (error_log at main, http, server
 * and location level) writes through ngx_http_payflow_log_writer(), which
 * masks the whole line in place before it goes to the file (or to the
 * writer the log had: syslog, memory): nginx's own lines quote what a
 * client sent (a duplicate Authorization header, a request line with a
 * query string) and nothing lets a module rewrite those messages
 * otherwise.  Masking keeps the length, so the line stays as nginx
 * formatted it.
 */

ngx_int_t
ngx_http_payflow_log_mask(ngx_pool_t *pool, ngx_log_t *log)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_payflow_log_wrap_t  *w;

    for ( /* void */ ; log; log = log->next) {

        if (log->writer == ngx_http_payflow_log_writer) {
            continue;
        }

        /*
         * The pool's cleanups run in reverse order of registration: this
         * one before the dlclose() of the module registered by
         * load_module, after which a debug line written through this
         * writer would jump into unmapped code.
         */

        cln = ngx_pool_cleanup_add(pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_payflow_log_unmask;
        cln->data = log;

        if (log->writer) {
            w = ngx_palloc(pool, sizeof(ngx_http_payflow_log_wrap_t));
            if (w == NULL) {
                return NGX_ERROR;
            }

            w->writer = log->writer;
            w->wdata = log->wdata;
            log->wdata = w;

        } else {
            log->wdata = NULL;
        }

        log->writer = ngx_http_payflow_log_writer;
    }

    return NGX_OK;
}


static void
ngx_http_payflow_log_unmask(void *data)
{
    ngx_log_t *log = data;

    ngx_http_payflow_log_wrap_t  *w;

    if (log->writer != ngx_http_payflow_log_writer) {
        return;
    }

    w = log->wdata;

    log->writer = w ? w->writer : NULL;
    log->wdata = w ? w->wdata : NULL;
}


static void
ngx_http_payflow_log_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    ssize_t                       n;
    ngx_log_t                     own;
    ngx_http_payflow_log_wrap_t  *w;

    pf_mask(buf, buf + len);

    w = log->wdata;

    if (w) {
        own = *log;
        own.writer = w->writer;
        own.wdata = w->wdata;
        w->writer(&own, level, buf, len);
        return;
    }

    if (log->file == NULL || ngx_time() == log->disk_full_time) {
        return;
    }

    n = ngx_write_fd(log->file->fd, buf, len);

    if (n == -1 && ngx_errno == NGX_ENOSPC) {
        log->disk_full_time = ngx_time();
    }
}


/*
 * r->log_handler: nginx's error-log lines about a request end with its
 * request id, so that they can be joined to the access log.
 */

u_char *
ngx_http_payflow_log_error(ngx_http_request_t *r, ngx_http_request_t *sr,
    u_char *buf, size_t len)
{
    u_char     *p;
    ngx_str_t  *id;

    /* nginx's own "client: ..., request: ..."; the writer masks it */
    p = ngx_http_payflow_log_next ? ngx_http_payflow_log_next(r, sr, buf, len)
                                  : buf;

    len -= p - buf;

    id = ngx_http_payflow_request_id(r);

    return ngx_snprintf(p, len, ", request_id: %V", id);
}
