
/*
 * Copyright (C) PayFlow
 *
 * ngx_http_payflow_ratelimit_module: exact rate limits (GCRA) in shared
 * memory, cluster-wide through Redis, with draft-ietf-httpapi-ratelimit-
 * headers.  It stands alone: any location of any nginx can use it.
 *
 *   payflow_ratelimit_zone  api:10m [redis];
 *   payflow_ratelimit_redis 127.0.0.1:6379 [timeout=30ms] [prefix=...];
 *   payflow_ratelimit zone=api key=$payflow_principal rate=100r/s burst=100
 *                     [name=burst];
 *
 * Each limit is decided in the first phase where its key is not empty:
 * rewrite for keys such as the client address, precontent (after
 * authentication) for keys such as $payflow_principal.  Unauthenticated
 * requests are thus limited by address before any key is looked up.  The
 * first pass runs in the rewrite phase, ahead of the rewrite module's own
 * handler, so that a location answered by "return" is limited too.
 *
 * In cluster mode one EVALSHA per limit (pipelined) decides in Redis with
 * Redis's clock; if Redis is down or slower than the timeout, the request
 * is decided at once from the local zone, and that is logged and counted.
 */


#include "ngx_http_payflow_ratelimit.h"

#include <openssl/evp.h>


#define NGX_HTTP_PAYFLOW_RL_LOG_EVERY  10


typedef struct {
    pf_redis_conf_t              *redis;
    ngx_msec_t                    timeout;
    ngx_str_t                     prefix;
    u_char                        sha[41];
    pf_redis_t                   *rd;           /* this worker's */
    ngx_uint_t                    nlimits;      /* ids handed out */
    ngx_array_t                   zones;        /* ngx_shm_zone_t * */
} ngx_http_payflow_rl_main_conf_t;


typedef struct {
    ngx_array_t                  *limits;       /* rl_limit_t */
    ngx_flag_t                    dry_run;
    ngx_uint_t                    status;
} ngx_http_payflow_rl_loc_conf_t;


typedef struct {
    ngx_http_request_t           *request;
    ngx_http_payflow_rl_verdict_t *verdicts;
    ngx_uint_t                    n;
    ngx_uint_t                    pending;
    ngx_event_t                   timer;
    ngx_table_elt_t              *policy;
    ngx_table_elt_t              *state;
    ngx_http_payflow_rl_result_e  result;
    ngx_uint_t                    remaining;
    unsigned                      waiting:1;
    unsigned                      reported:1;
} ngx_http_payflow_rl_ctx_t;


static ngx_int_t ngx_http_payflow_rl_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_rl_prepare(ngx_http_request_t *r,
    ngx_http_payflow_rl_verdict_t *v);
static ngx_int_t ngx_http_payflow_rl_parse_rate(ngx_str_t *s,
    ngx_uint_t *count, ngx_uint_t *unit);
static ngx_int_t ngx_http_payflow_rl_redis_send(ngx_http_request_t *r,
    ngx_http_payflow_rl_ctx_t *ctx, ngx_http_payflow_rl_verdict_t *v);
static void ngx_http_payflow_rl_redis_reply(void *data, redisReply *reply);
static void ngx_http_payflow_rl_timeout(ngx_event_t *ev);
static void ngx_http_payflow_rl_fallback(ngx_http_payflow_rl_verdict_t *v,
    const char *why);
static void ngx_http_payflow_rl_resume(ngx_http_payflow_rl_ctx_t *ctx);
static ngx_int_t ngx_http_payflow_rl_finish(ngx_http_request_t *r,
    ngx_http_payflow_rl_ctx_t *ctx);
static ngx_int_t ngx_http_payflow_rl_headers(ngx_http_request_t *r,
    ngx_http_payflow_rl_ctx_t *ctx, ngx_http_payflow_rl_verdict_t *best);
static ngx_table_elt_t *ngx_http_payflow_rl_set_header(ngx_http_request_t *r,
    ngx_table_elt_t *h, const char *key, ngx_str_t *value);
static void ngx_http_payflow_rl_cleanup(void *data);
static void ngx_http_payflow_rl_redis_connected(pf_redis_t *rd, void *data);
static void ngx_http_payflow_rl_script_loaded(void *data,
    redisReply *reply);

static ngx_int_t ngx_http_payflow_rl_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_payflow_rl_add_variables(ngx_conf_t *cf);

static char *ngx_http_payflow_rl_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_payflow_rl_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_payflow_rl_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_payflow_rl_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_payflow_rl_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_payflow_rl_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static ngx_int_t ngx_http_payflow_rl_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_payflow_rl_init_process(ngx_cycle_t *cycle);
static void ngx_http_payflow_rl_exit_process(ngx_cycle_t *cycle);


/*
 * GCRA in Redis, on Redis's clock, so that nodes with skewed clocks still
 * share one budget.  Returns allowed, remaining, reset and retry (us).
 */

static const char  ngx_http_payflow_rl_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local tau = tonumber(ARGV[2]) * interval\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or 0)\n"
    "if tat < now then tat = now end\n"
    "local diff = tat + interval - now\n"
    "if diff > tau then\n"
    "  return {0, 0, tat - now, diff - tau}\n"
    "end\n"
    "redis.call('SET', KEYS[1], tat + interval, 'PX',\n"
    "           math.ceil(diff / 1000) + 1000)\n"
    "return {1, math.floor((tau - diff) / interval), diff, 0}\n";


static ngx_conf_num_bounds_t  ngx_http_payflow_rl_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_command_t  ngx_http_payflow_rl_commands[] = {

    { ngx_string("payflow_ratelimit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_payflow_rl_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_ratelimit_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_payflow_rl_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_ratelimit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_payflow_rl_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("payflow_ratelimit_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_payflow_rl_loc_conf_t, dry_run),
      NULL },

    { ngx_string("payflow_ratelimit_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_payflow_rl_loc_conf_t, status),
      &ngx_http_payflow_rl_status_bounds },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_payflow_ratelimit_module_ctx = {
    ngx_http_payflow_rl_add_variables,     /* preconfiguration */
    ngx_http_payflow_rl_init,              /* postconfiguration */

    ngx_http_payflow_rl_create_main_conf,  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_payflow_rl_create_loc_conf,   /* create location configuration */
    ngx_http_payflow_rl_merge_loc_conf     /* merge location configuration */
};


ngx_module_t  ngx_http_payflow_ratelimit_module = {
    NGX_MODULE_V1,
    &ngx_http_payflow_ratelimit_module_ctx, /* module context */
    ngx_http_payflow_rl_commands,          /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_payflow_rl_init_process,      /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_payflow_rl_exit_process,      /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_payflow_rl_vars[] = {

    { ngx_string("payflow_ratelimit_result"), NULL,
      ngx_http_payflow_rl_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("payflow_ratelimit_remaining"), NULL,
      ngx_http_payflow_rl_variable, 1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_payflow_rl_results[] = {
    ngx_null_string,
    ngx_string("passed"),
    ngx_string("rejected"),
    ngx_string("dry_run")
};


/* fallbacks since the last log line, per worker */
static ngx_uint_t  ngx_http_payflow_rl_fallbacks;
static time_t      ngx_http_payflow_rl_fallback_logged;


static ngx_int_t
ngx_http_payflow_rl_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_uint_t                       i;
    ngx_pool_cleanup_t              *cln;
    ngx_http_payflow_rl_ctx_t       *ctx;
    ngx_http_payflow_rl_zone_t      *zone;
    ngx_http_payflow_rl_limit_t     *limits;
    ngx_http_payflow_rl_verdict_t   *v;
    ngx_http_payflow_rl_loc_conf_t  *lcf;
    ngx_http_payflow_rl_main_conf_t *mcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_ratelimit_module);

    if (lcf->limits == NULL || r != r->main || r->internal) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_ratelimit_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_rl_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->n = lcf->limits->nelts;
        ctx->request = r;
        ctx->verdicts = ngx_pcalloc(r->pool,
                               ctx->n * sizeof(ngx_http_payflow_rl_verdict_t));
        if (ctx->verdicts == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        limits = lcf->limits->elts;

        for (i = 0; i < ctx->n; i++) {
            ctx->verdicts[i].limit = &limits[i];
        }

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_payflow_rl_cleanup;
        cln->data = ctx;

        ngx_http_set_ctx(r, ctx, ngx_http_payflow_ratelimit_module);
    }

    /*
     * While Redis answers the request is suspended with NGX_DONE: in the
     * rewrite phase NGX_AGAIN would finalize it.
     */

    if (ctx->waiting) {
        return NGX_DONE;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_ratelimit_module);

    for (i = 0; i < ctx->n; i++) {
        v = &ctx->verdicts[i];

        if (v->done || v->skip) {
            continue;
        }

        rc = ngx_http_payflow_rl_prepare(r, v);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED) {
            /* no key yet: perhaps after authentication */
            continue;
        }

        if (rc == NGX_ABORT) {
            v->skip = 1;
            continue;
        }

        zone = v->limit->shm_zone->data;

        if (zone->cluster && mcf->rd) {
            zone->sh->redis_up[ngx_min(ngx_worker,
                                       NGX_HTTP_PAYFLOW_RL_MAX_WORKERS - 1)]
                = pf_redis_connected(mcf->rd);

            if (ngx_http_payflow_rl_redis_send(r, ctx, v) == NGX_OK) {
                continue;
            }

            ngx_http_payflow_rl_fallback(v, "not connected");
            continue;
        }

        ngx_http_payflow_rl_shm_decide(zone, v, v->limit->id);
    }

    if (ctx->pending) {
        ctx->waiting = 1;

        ctx->timer.handler = ngx_http_payflow_rl_timeout;
        ctx->timer.data = ctx;
        ctx->timer.log = r->connection->log;
        ngx_add_timer(&ctx->timer, mcf->timeout);

        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;

        return NGX_DONE;
    }

    return ngx_http_payflow_rl_finish(r, ctx);
}


/*
 * NGX_OK: key, interval and burst set; NGX_DECLINED: the key is empty;
 * NGX_ABORT: the limit cannot apply (a bad rate from a variable).
 */

static ngx_int_t
ngx_http_payflow_rl_prepare(ngx_http_request_t *r,
    ngx_http_payflow_rl_verdict_t *v)
{
    ngx_int_t                     n;
    ngx_str_t                     s;
    ngx_uint_t                    count, unit, burst;
    ngx_http_payflow_rl_limit_t  *limit;

    limit = v->limit;

    if (ngx_http_complex_value(r, &limit->key, &v->key) != NGX_OK) {
        return NGX_ERROR;
    }

    if (v->key.len == 0) {
        return NGX_DECLINED;
    }

    if (v->key.len > NGX_HTTP_PAYFLOW_RL_MAX_KEY) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow ratelimit: the key of \"%V\" is longer than "
                      "%d bytes, limit skipped", &limit->name,
                      NGX_HTTP_PAYFLOW_RL_MAX_KEY);
        return NGX_ABORT;
    }

    count = limit->count;
    unit = limit->unit;
    burst = limit->burst;

    if (limit->rate_cv) {
        if (ngx_http_complex_value(r, limit->rate_cv, &s) != NGX_OK) {
            return NGX_ERROR;
        }

        if (ngx_http_payflow_rl_parse_rate(&s, &count, &unit) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "payflow ratelimit: invalid rate \"%V\" for "
                          "\"%V\", limit skipped", &s, &limit->name);
            return NGX_ABORT;
        }
    }

    if (limit->burst_cv) {
        if (ngx_http_complex_value(r, limit->burst_cv, &s) != NGX_OK) {
            return NGX_ERROR;
        }

        n = ngx_atoi(s.data, s.len);

        if (n <= 0 || n > NGX_HTTP_PAYFLOW_RL_MAX_BURST) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "payflow ratelimit: invalid burst \"%V\" for "
                          "\"%V\", limit skipped", &s, &limit->name);
            return NGX_ABORT;
        }

        burst = n;
    }

    v->interval = (uint64_t) unit * 1000000 / count;
    v->burst = burst ? burst : count;

    if (v->interval == 0) {
        v->interval = 1;
    }

    return NGX_OK;
}


/* "<n>r/s", "<n>r/m", "<n>r/h" or "<n>r/d" */

static ngx_int_t
ngx_http_payflow_rl_parse_rate(ngx_str_t *s, ngx_uint_t *count,
    ngx_uint_t *unit)
{
    ngx_int_t  n;

    if (s->len < 4 || s->data[s->len - 3] != 'r'
        || s->data[s->len - 2] != '/')
    {
        return NGX_ERROR;
    }

    switch (s->data[s->len - 1]) {
    case 's':
        *unit = 1;
        break;
    case 'm':
        *unit = 60;
        break;
    case 'h':
        *unit = 3600;
        break;
    case 'd':
        *unit = 86400;
        break;
    default:
        return NGX_ERROR;
    }

    n = ngx_atoi(s->data, s->len - 3);

    if (n <= 0 || n > 1000000) {
        return NGX_ERROR;
    }

    *count = n;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_rl_redis_send(ngx_http_request_t *r,
    ngx_http_payflow_rl_ctx_t *ctx, ngx_http_payflow_rl_verdict_t *v)
{
    u_char                           *p;
    size_t                            lens[6];
    const char                       *argv[6];
    ngx_http_payflow_rl_zone_t       *zone;
    ngx_http_payflow_rl_main_conf_t  *mcf;
    u_char                            interval[NGX_INT64_LEN];
    u_char                            burst[NGX_INT_T_LEN];

    mcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_ratelimit_module);
    zone = v->limit->shm_zone->data;

    if (!pf_redis_connected(mcf->rd)) {
        return NGX_DECLINED;
    }

    /* <prefix><zone>:<limit id>:<key>, binary safe */

    lens[3] = mcf->prefix.len + zone->name.len + 1 + NGX_INT_T_LEN + 1
              + v->key.len;

    p = ngx_pnalloc(r->pool, lens[3]);
    if (p == NULL) {
        return NGX_ERROR;
    }

    argv[3] = (char *) p;
    p = ngx_cpymem(p, mcf->prefix.data, mcf->prefix.len);
    p = ngx_sprintf(p, "%V:%ui:", &zone->name, v->limit->id);
    p = ngx_cpymem(p, v->key.data, v->key.len);
    lens[3] = p - (u_char *) argv[3];

    argv[0] = "EVALSHA";
    lens[0] = sizeof("EVALSHA") - 1;
    argv[1] = (char *) mcf->sha;
    lens[1] = 40;
    argv[2] = "1";
    lens[2] = 1;
    argv[4] = (char *) interval;
    lens[4] = ngx_sprintf(interval, "%uL", v->interval) - interval;
    argv[5] = (char *) burst;
    lens[5] = ngx_sprintf(burst, "%ui", v->burst) - burst;

    v->cmd = pf_redis_send(mcf->rd, ngx_http_payflow_rl_redis_reply, v, 6,
                           argv, lens);

    if (v->cmd == NULL) {
        return NGX_DECLINED;
    }

    v->owner = ctx;
    ctx->pending++;

    return NGX_OK;
}


static void
ngx_http_payflow_rl_redis_reply(void *data, redisReply *reply)
{
    ngx_http_payflow_rl_verdict_t *v = data;

    ngx_http_payflow_rl_ctx_t  *ctx;

    ctx = v->owner;

    /* the record is no longer ours */
    v->cmd = NULL;
    ctx->pending--;

    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 4
        && reply->element[0]->type == REDIS_REPLY_INTEGER)
    {
        v->allowed = reply->element[0]->integer != 0;
        v->remaining = (ngx_uint_t) reply->element[1]->integer;
        v->reset = (uint64_t) reply->element[2]->integer;
        v->retry = (uint64_t) reply->element[3]->integer;
        v->done = 1;

    } else {
        ngx_http_payflow_rl_fallback(v,
            (reply && reply->type == REDIS_REPLY_ERROR) ? reply->str
                                                        : "no reply");
    }

    if (ctx->pending == 0 && ctx->waiting) {
        ngx_http_payflow_rl_resume(ctx);
    }
}


static void
ngx_http_payflow_rl_timeout(ngx_event_t *ev)
{
    ngx_uint_t                      i;
    ngx_http_payflow_rl_ctx_t      *ctx;
    ngx_http_payflow_rl_verdict_t  *v;

    ctx = ev->data;

    for (i = 0; i < ctx->n; i++) {
        v = &ctx->verdicts[i];

        if (v->cmd) {
            pf_redis_abandon(v->cmd);
            v->cmd = NULL;
            ngx_http_payflow_rl_fallback(v, "timed out");
        }
    }

    ctx->pending = 0;

    ngx_http_payflow_rl_resume(ctx);
}


/*
 * Redis did not decide: the local zone does, at once, and the operator
 * hears about it at most every few seconds per worker.
 */

static void
ngx_http_payflow_rl_fallback(ngx_http_payflow_rl_verdict_t *v,
    const char *why)
{
    ngx_http_payflow_rl_zone_t  *zone;

    zone = v->limit->shm_zone->data;

    (void) ngx_atomic_fetch_add(&zone->sh->fallbacks, 1);

    ngx_http_payflow_rl_fallbacks++;

    if (ngx_time() - ngx_http_payflow_rl_fallback_logged
        >= NGX_HTTP_PAYFLOW_RL_LOG_EVERY)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "payflow ratelimit: Redis %s, deciding locally "
                      "(%ui decisions in the last %d s)", why,
                      ngx_http_payflow_rl_fallbacks,
                      NGX_HTTP_PAYFLOW_RL_LOG_EVERY);

        ngx_http_payflow_rl_fallback_logged = ngx_time();
        ngx_http_payflow_rl_fallbacks = 0;
    }

    ngx_http_payflow_rl_shm_decide(zone, v, v->limit->id);
}


static void
ngx_http_payflow_rl_resume(ngx_http_payflow_rl_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    ctx->waiting = 0;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_payflow_rl_finish(ngx_http_request_t *r,
    ngx_http_payflow_rl_ctx_t *ctx)
{
    uint64_t                         retry;
    ngx_str_t                        value;
    ngx_uint_t                       i, applied;
    ngx_http_payflow_rl_zone_t      *zone;
    ngx_http_payflow_rl_verdict_t   *v, *best, *rejected;
    ngx_http_payflow_rl_loc_conf_t  *lcf;

    best = NULL;
    rejected = NULL;
    applied = 0;

    for (i = 0; i < ctx->n; i++) {
        v = &ctx->verdicts[i];

        if (!v->done || v->skip) {
            continue;
        }

        applied++;

        if (!v->allowed && (rejected == NULL || v->retry > rejected->retry)) {
            rejected = v;
        }

        /* the limit with the fewest requests left is the one reported */
        if (best == NULL || v->remaining < best->remaining) {
            best = v;
        }
    }

    if (applied == 0) {
        return NGX_DECLINED;
    }

    if (ngx_http_payflow_rl_headers(r, ctx, best) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->remaining = best->remaining;

    if (rejected == NULL) {
        if (ctx->result != NGX_HTTP_PAYFLOW_RL_DRY_RUN) {
            ctx->result = NGX_HTTP_PAYFLOW_RL_PASSED;
        }

        if (!ctx->reported) {
            ctx->reported = 1;

            for (i = 0; i < ctx->n; i++) {
                v = &ctx->verdicts[i];

                if (v->done && !v->skip) {
                    zone = v->limit->shm_zone->data;
                    (void) ngx_atomic_fetch_add(&zone->sh->passed, 1);
                }
            }
        }

        return NGX_DECLINED;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_ratelimit_module);

    zone = rejected->limit->shm_zone->data;

    if (lcf->dry_run) {
        (void) ngx_atomic_fetch_add(&zone->sh->dry_run, 1);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "payflow ratelimit: dry run, would limit by "
                      "\"%V\" in zone \"%V\"", &rejected->limit->name,
                      &zone->name);

        /* the verdict is not held against later phases */
        rejected->allowed = 1;
        ctx->result = NGX_HTTP_PAYFLOW_RL_DRY_RUN;

        return NGX_DECLINED;
    }

    (void) ngx_atomic_fetch_add(&zone->sh->rejected, 1);

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "payflow ratelimit: limiting requests by \"%V\" in "
                  "zone \"%V\"", &rejected->limit->name, &zone->name);

    ctx->result = NGX_HTTP_PAYFLOW_RL_REJECTED;

    retry = (rejected->retry + 999999) / 1000000;

    value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    value.len = ngx_sprintf(value.data, "%uL", ngx_max(retry, 1))
                - value.data;

    if (ngx_http_payflow_rl_set_header(r, NULL, "Retry-After", &value)
        == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return lcf->status;
}


/*
 * RateLimit-Policy lists every limit applied; RateLimit reports the one
 * closest to running out.  Both are rewritten when the second phase adds
 * limits.
 */

static ngx_int_t
ngx_http_payflow_rl_headers(ngx_http_request_t *r,
    ngx_http_payflow_rl_ctx_t *ctx, ngx_http_payflow_rl_verdict_t *best)
{
    u_char                         *p;
    size_t                          len;
    uint64_t                        window;
    ngx_str_t                       value;
    ngx_uint_t                      i;
    ngx_http_payflow_rl_verdict_t  *v;

    len = 0;

    for (i = 0; i < ctx->n; i++) {
        v = &ctx->verdicts[i];

        if (v->done && !v->skip) {
            len += v->limit->name.len + sizeof("\"\";q=;w=, ") - 1
                   + 2 * NGX_INT64_LEN;
        }
    }

    value.data = ngx_pnalloc(r->pool, len);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    p = value.data;

    for (i = 0; i < ctx->n; i++) {
        v = &ctx->verdicts[i];

        if (!v->done || v->skip) {
            continue;
        }

        if (p != value.data) {
            *p++ = ',';
            *p++ = ' ';
        }

        window = ((uint64_t) v->burst * v->interval + 999999) / 1000000;

        p = ngx_sprintf(p, "\"%V\";q=%ui;w=%uL", &v->limit->name, v->burst,
                        ngx_max(window, 1));
    }

    value.len = p - value.data;

    ctx->policy = ngx_http_payflow_rl_set_header(r, ctx->policy,
                                                 "RateLimit-Policy", &value);
    if (ctx->policy == NULL) {
        return NGX_ERROR;
    }

    value.data = ngx_pnalloc(r->pool, best->limit->name.len
                                      + sizeof("\"\";r=;t=") - 1
                                      + 2 * NGX_INT64_LEN);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    value.len = ngx_sprintf(value.data, "\"%V\";r=%ui;t=%uL",
                            &best->limit->name, best->remaining,
                            (best->reset + 999999) / 1000000)
                - value.data;

    ctx->state = ngx_http_payflow_rl_set_header(r, ctx->state, "RateLimit",
                                                &value);

    return ctx->state ? NGX_OK : NGX_ERROR;
}


/* sets (or replaces the value of) a response header */

static ngx_table_elt_t *
ngx_http_payflow_rl_set_header(ngx_http_request_t *r, ngx_table_elt_t *h,
    const char *key, ngx_str_t *value)
{
    if (h == NULL) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NULL;
        }

        h->hash = 1;
        h->key.data = (u_char *) key;
        h->key.len = ngx_strlen(key);
#if (nginx_version >= 1023000)
        h->next = NULL;
#endif
    }

    h->value = *value;

    return h;
}


static void
ngx_http_payflow_rl_cleanup(void *data)
{
    ngx_http_payflow_rl_ctx_t *ctx = data;

    ngx_uint_t  i;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    for (i = 0; i < ctx->n; i++) {
        if (ctx->verdicts[i].cmd) {
            pf_redis_abandon(ctx->verdicts[i].cmd);
            ctx->verdicts[i].cmd = NULL;
        }
    }
}


static ngx_int_t
ngx_http_payflow_rl_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_payflow_rl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_payflow_ratelimit_module);

    if (ctx == NULL || ctx->result == NGX_HTTP_PAYFLOW_RL_NONE) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (data == 0) {
        v->data = ngx_http_payflow_rl_results[ctx->result].data;
        v->len = ngx_http_payflow_rl_results[ctx->result].len;

    } else {
        v->data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
        if (v->data == NULL) {
            return NGX_ERROR;
        }

        v->len = ngx_sprintf(v->data, "%ui", ctx->remaining) - v->data;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_rl_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_payflow_rl_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* payflow_ratelimit_zone <name>:<size> [redis]; */

static char *
ngx_http_payflow_rl_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_rl_main_conf_t *mcf = conf;

    u_char                      *p;
    ssize_t                      size;
    ngx_str_t                   *value, name, s;
    ngx_shm_zone_t              *shm_zone, **zp;
    ngx_http_payflow_rl_zone_t  *zone;

    (void) cmd;

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');

    if (p == NULL || p == value[1].data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_ratelimit_zone: invalid zone \"%V\", "
                           "expected <name>:<size>", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - value[1].data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_ratelimit_zone: zone \"%V\" is too "
                           "small or invalid: \"%V\", at least %uzk",
                           &name, &s, 8 * ngx_pagesize / 1024);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_rl_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->name = name;

    if (cf->args->nelts == 3) {
        if (ngx_strcmp(value[2].data, "redis") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_ratelimit_zone: invalid parameter "
                               "\"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        zone->cluster = 1;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_payflow_ratelimit_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_ratelimit_zone: duplicate zone \"%V\"",
                           &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_payflow_rl_shm_init_zone;
    shm_zone->data = zone;

    zp = ngx_array_push(&mcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = shm_zone;

    return NGX_CONF_OK;
}


/*
 * payflow_ratelimit zone=<name> key=<value> rate=<rate> [burst=<n>]
 *     [name=<policy>];
 */

static char *
ngx_http_payflow_rl_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_rl_loc_conf_t *lcf = conf;

    ngx_int_t                          n;
    ngx_str_t                         *value, s, zone, rate, burst;
    ngx_uint_t                         i;
    ngx_http_payflow_rl_limit_t       *limit;
    ngx_http_payflow_rl_main_conf_t   *mcf;
    ngx_http_compile_complex_value_t   ccv;

    (void) cmd;

    value = cf->args->elts;

    if (lcf->limits == NULL) {
        lcf->limits = ngx_array_create(cf->pool, 2,
                                       sizeof(ngx_http_payflow_rl_limit_t));
        if (lcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (lcf->limits->nelts == NGX_HTTP_PAYFLOW_RL_MAX_LIMITS) {
        return "has too many limits in one context";
    }

    limit = ngx_array_push(lcf->limits);
    if (limit == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(limit, sizeof(ngx_http_payflow_rl_limit_t));

    ngx_str_null(&zone);
    ngx_str_null(&rate);
    ngx_str_null(&burst);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            zone.data = value[i].data + 5;
            zone.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &s;
            ccv.complex_value = &limit->key;

            if (s.len == 0
                || ngx_http_compile_complex_value(&ccv) != NGX_OK)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {
            rate.data = value[i].data + 5;
            rate.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {
            burst.data = value[i].data + 6;
            burst.len = value[i].len - 6;
            continue;
        }

        if (ngx_strncmp(value[i].data, "name=", 5) == 0) {
            limit->name.data = value[i].data + 5;
            limit->name.len = value[i].len - 5;

            if (limit->name.len == 0 || limit->name.len > 64
                || ngx_strlchr(limit->name.data,
                               limit->name.data + limit->name.len, '"'))
            {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (zone.len == 0 || limit->key.value.len == 0 || rate.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_ratelimit: \"zone=\", \"key=\" and "
                           "\"rate=\" are required");
        return NGX_CONF_ERROR;
    }

    limit->shm_zone = ngx_shared_memory_add(cf, &zone, 0,
                                          &ngx_http_payflow_ratelimit_module);
    if (limit->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (limit->name.len == 0) {
        limit->name = zone;
    }

    if (ngx_http_script_variables_count(&rate)) {
        limit->rate_cv = ngx_palloc(cf->pool,
                                    sizeof(ngx_http_complex_value_t));
        if (limit->rate_cv == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &rate;
        ccv.complex_value = limit->rate_cv;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (ngx_http_payflow_rl_parse_rate(&rate, &limit->count,
                                              &limit->unit)
               != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_ratelimit: invalid rate \"%V\", "
                           "expected <n>r/s, r/m, r/h or r/d", &rate);
        return NGX_CONF_ERROR;
    }

    if (burst.len && ngx_http_script_variables_count(&burst)) {
        limit->burst_cv = ngx_palloc(cf->pool,
                                     sizeof(ngx_http_complex_value_t));
        if (limit->burst_cv == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &burst;
        ccv.complex_value = limit->burst_cv;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

    } else if (burst.len) {
        n = ngx_atoi(burst.data, burst.len);

        if (n <= 0 || n > NGX_HTTP_PAYFLOW_RL_MAX_BURST) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_ratelimit: invalid burst \"%V\", "
                               "expected 1..%d", &burst,
                               NGX_HTTP_PAYFLOW_RL_MAX_BURST);
            return NGX_CONF_ERROR;
        }

        limit->burst = n;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                          ngx_http_payflow_ratelimit_module);
    limit->id = mcf->nlimits++;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_ratelimit: invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/* payflow_ratelimit_redis <host>:<port> [timeout=<time>] [prefix=<s>]; */

static char *
ngx_http_payflow_rl_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_rl_main_conf_t *mcf = conf;

    u_char        digest[EVP_MAX_MD_SIZE];
    ngx_int_t     n;
    ngx_str_t    *value, s;
    ngx_uint_t    i;
    unsigned int  len;

    (void) cmd;

    if (mcf->redis) {
        return "is duplicate";
    }

    value = cf->args->elts;

    mcf->redis = ngx_pcalloc(cf->pool, sizeof(pf_redis_conf_t));
    if (mcf->redis == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pf_redis_conf_parse(cf, &value[1], mcf->redis) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    mcf->redis->connect_timeout = 1000;
    mcf->redis->connected = ngx_http_payflow_rl_redis_connected;
    mcf->redis->data = mcf;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            mcf->timeout = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "prefix=", 7) == 0) {
            mcf->prefix.data = value[i].data + 7;
            mcf->prefix.len = value[i].len - 7;
            continue;
        }

        goto invalid;
    }

    /* the script goes by its SHA-1, loaded on every (re)connect */

    if (EVP_Digest(ngx_http_payflow_rl_script,
                   sizeof(ngx_http_payflow_rl_script) - 1, digest, &len,
                   EVP_sha1(), NULL)
        != 1)
    {
        return NGX_CONF_ERROR;
    }

    *ngx_hex_dump(mcf->sha, digest, len) = '\0';

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_ratelimit_redis: invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


static void
ngx_http_payflow_rl_redis_connected(pf_redis_t *rd, void *data)
{
    size_t       lens[3];
    const char  *argv[3];

    (void) data;

    argv[0] = "SCRIPT";
    lens[0] = sizeof("SCRIPT") - 1;
    argv[1] = "LOAD";
    lens[1] = sizeof("LOAD") - 1;
    argv[2] = ngx_http_payflow_rl_script;
    lens[2] = sizeof(ngx_http_payflow_rl_script) - 1;

    /* sent before any EVALSHA on this connection, so it is there first */
    (void) pf_redis_send(rd, ngx_http_payflow_rl_script_loaded, rd, 3, argv,
                         lens);
}


static void
ngx_http_payflow_rl_script_loaded(void *data, redisReply *reply)
{
    (void) data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "payflow ratelimit: SCRIPT LOAD failed: %s",
                      reply ? reply->str : "no reply");
    }
}


static void *
ngx_http_payflow_rl_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_payflow_rl_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_rl_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->redis = NULL;
     *     mcf->rd = NULL;
     *     mcf->nlimits = 0;
     */

    mcf->timeout = 30;
    ngx_str_set(&mcf->prefix, "payflow:rl:");

    if (ngx_array_init(&mcf->zones, cf->pool, 4, sizeof(ngx_shm_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return mcf;
}


static void *
ngx_http_payflow_rl_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_payflow_rl_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_rl_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     lcf->limits = NULL;
     */

    lcf->dry_run = NGX_CONF_UNSET;
    lcf->status = NGX_CONF_UNSET_UINT;

    return lcf;
}


static char *
ngx_http_payflow_rl_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_payflow_rl_loc_conf_t *prev = parent;
    ngx_http_payflow_rl_loc_conf_t *conf = child;

    ngx_uint_t                        i;
    ngx_http_payflow_rl_zone_t       *zone;
    ngx_http_payflow_rl_limit_t      *limit;
    ngx_http_payflow_rl_main_conf_t  *mcf;

    if (conf->limits == NULL) {
        conf->limits = prev->limits;
    }

    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_uint_value(conf->status, prev->status,
                              NGX_HTTP_TOO_MANY_REQUESTS);

    if (conf->limits == NULL) {
        return NGX_CONF_OK;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf,
                                          ngx_http_payflow_ratelimit_module);
    limit = conf->limits->elts;

    for (i = 0; i < conf->limits->nelts; i++) {
        zone = limit[i].shm_zone->data;

        if (zone == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_ratelimit: unknown zone \"%V\"",
                               &limit[i].shm_zone->shm.name);
            return NGX_CONF_ERROR;
        }

        if (zone->cluster && mcf->redis == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_ratelimit_zone \"%V\" is \"redis\" "
                               "but \"payflow_ratelimit_redis\" is not set",
                               &zone->name);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_payflow_rl_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * before authentication: limits keyed by address; registered after
     * the rewrite module, this handler runs before "return" does
     */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_payflow_rl_handler;

    /* after it: limits keyed by API key or tenant */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_payflow_rl_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_rl_init_process(ngx_cycle_t *cycle)
{
    ngx_http_payflow_rl_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                          ngx_http_payflow_ratelimit_module);

    if (mcf == NULL || mcf->redis == NULL) {
        return NGX_OK;
    }

    mcf->rd = pf_redis_create(cycle, mcf->redis);

    return mcf->rd ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_payflow_rl_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_payflow_rl_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                          ngx_http_payflow_ratelimit_module);

    if (mcf && mcf->rd) {
        pf_redis_destroy(mcf->rd);
        mcf->rd = NULL;
    }
}


/* for the payflow_metrics location: every zone's decisions and Redis */

void
ngx_http_payflow_ratelimit_metrics(pf_prom_t *out)
{
    ngx_uint_t                        i, w, workers;
    ngx_core_conf_t                  *ccf;
    ngx_shm_zone_t                  **zones;
    ngx_http_payflow_rl_sh_t         *sh;
    ngx_http_payflow_rl_zone_t       *zone;
    ngx_http_payflow_rl_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                          ngx_http_payflow_ratelimit_module);

    if (mcf == NULL || mcf->zones.nelts == 0) {
        return;
    }

    zones = mcf->zones.elts;

    pf_prom_family(out, "payflow_ratelimit_decisions_total", "counter",
                   "Rate-limit decisions by zone: passed, rejected, or "
                   "would have been rejected in a dry run.");

    for (i = 0; i < mcf->zones.nelts; i++) {
        zone = zones[i]->data;
        sh = zone->sh;

        pf_prom_printf(out, "payflow_ratelimit_decisions_total{zone=\"%V\","
                       "result=\"passed\"} %uA\n", &zone->name, sh->passed);
        pf_prom_printf(out, "payflow_ratelimit_decisions_total{zone=\"%V\","
                       "result=\"rejected\"} %uA\n", &zone->name,
                       sh->rejected);
        pf_prom_printf(out, "payflow_ratelimit_decisions_total{zone=\"%V\","
                       "result=\"dry_run\"} %uA\n", &zone->name, sh->dry_run);
    }

    pf_prom_family(out, "payflow_ratelimit_redis_fallbacks_total", "counter",
                   "Decisions of Redis zones taken locally because Redis "
                   "was down or slower than the timeout.");

    for (i = 0; i < mcf->zones.nelts; i++) {
        zone = zones[i]->data;

        if (zone->cluster) {
            pf_prom_printf(out, "payflow_ratelimit_redis_fallbacks_total"
                           "{zone=\"%V\"} %uA\n", &zone->name,
                           zone->sh->fallbacks);
        }
    }

    pf_prom_family(out, "payflow_ratelimit_evictions_total", "counter",
                   "Keys evicted from a full zone before their time.");

    for (i = 0; i < mcf->zones.nelts; i++) {
        zone = zones[i]->data;

        pf_prom_printf(out, "payflow_ratelimit_evictions_total"
                       "{zone=\"%V\"} %uA\n", &zone->name, zone->sh->evicted);
    }

    if (mcf->redis == NULL) {
        return;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);
    workers = ngx_min((ngx_uint_t) ccf->worker_processes,
                      NGX_HTTP_PAYFLOW_RL_MAX_WORKERS);

    pf_prom_family(out, "payflow_redis_up", "gauge",
                   "Whether the worker's Redis connection was up at its "
                   "last rate-limit decision.");

    for (i = 0; i < mcf->zones.nelts; i++) {
        zone = zones[i]->data;

        if (!zone->cluster) {
            continue;
        }

        for (w = 0; w < workers; w++) {
            pf_prom_printf(out, "payflow_redis_up{worker=\"%ui\"} %uA\n", w,
                           zone->sh->redis_up[w]);
        }

        break;
    }
}
