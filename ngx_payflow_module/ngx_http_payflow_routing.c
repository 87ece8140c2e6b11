
/*
 * Copyright (C) PayFlow
 *
 * Which provider a payment goes to, and how providers are doing.
 *
 * "payflow_route" lines, in configuration order, match a payment by mode,
 * currency and tenant; the first match orders its providers by strategy:
 * priority (as listed), weighted (one drawn by weight goes first),
 * lowest_cost (by the fee each charges for the amount) or success_rate
 * (by the share of decided calls that succeeded over the last minute).
 * The rest follow as failover candidates.
 *
 * One shared memory slot per provider holds its circuit breaker, its
 * success-rate window and its call metrics.  The breaker opens after
 * "failures" outages within "window", lets one probe through after
 * "open", and closes after "successes" probes in a row succeed.
 */


#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_accounts.h"


#define NGX_HTTP_PAYFLOW_PRIORITY      0
#define NGX_HTTP_PAYFLOW_WEIGHTED      1
#define NGX_HTTP_PAYFLOW_LOWEST_COST   2
#define NGX_HTTP_PAYFLOW_SUCCESS_RATE  3

#define NGX_HTTP_PAYFLOW_BREAKER_CLOSED     0
#define NGX_HTTP_PAYFLOW_BREAKER_OPEN       1
#define NGX_HTTP_PAYFLOW_BREAKER_HALF_OPEN  2

#define NGX_HTTP_PAYFLOW_MAX_FAILURES  32
#define NGX_HTTP_PAYFLOW_RATE_BUCKETS  6
#define NGX_HTTP_PAYFLOW_RATE_SPAN     10000    /* ms per bucket */
#define NGX_HTTP_PAYFLOW_CALL_BUCKETS  11
#define NGX_HTTP_PAYFLOW_OPS           6

#define NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS 1024    /* tenants' accounts */
#define NGX_HTTP_PAYFLOW_ACCOUNT_WAYS  8


typedef struct {
    ngx_str_t                       name;
    ngx_http_payflow_provider_t    *provider;
    ngx_uint_t                      weight;
    ngx_uint_t                      percent;    /* hundredths of a % */
    int64_t                         fixed;
} ngx_http_payflow_route_entry_t;


typedef struct {
    ngx_uint_t                      strategy;
    ngx_uint_t                      livemode;
    ngx_array_t                    *currencies;     /* char[4] */
    ngx_array_t                    *tenants;        /* ngx_str_t */
    ngx_uint_t                      n;
    ngx_http_payflow_route_entry_t  entries[NGX_HTTP_PAYFLOW_MAX_ROUTE];
    ngx_uint_t                      line;
} ngx_http_payflow_route_t;


typedef struct {
    ngx_msec_t                      start;
    ngx_uint_t                      ok;
    ngx_uint_t                      failed;
} ngx_http_payflow_rate_bucket_t;


typedef struct {
    ngx_atomic_t                    lock;
    u_char                          account[32];    /* or "" */
    ngx_uint_t                      livemode;       /* the account's */
    ngx_msec_t                      used;
    ngx_uint_t                      state;
    ngx_msec_t                      opened_at;
    ngx_msec_t                      probe_at;
    ngx_uint_t                      successes;
    ngx_uint_t                      nfailures;
    ngx_msec_t                      failures[NGX_HTTP_PAYFLOW_MAX_FAILURES];
    ngx_http_payflow_rate_bucket_t  rate[NGX_HTTP_PAYFLOW_RATE_BUCKETS];

    /* metrics, updated without the lock */
    ngx_atomic_t                    opened;
    ngx_atomic_t                    calls[NGX_HTTP_PAYFLOW_OPS]
                                         [NGX_HTTP_PAYFLOW_CALL_NOUTCOMES];
    ngx_atomic_t                    latency[NGX_HTTP_PAYFLOW_CALL_BUCKETS];
    ngx_atomic_t                    latency_ms;
    ngx_atomic_t                    latency_count;
    ngx_atomic_t                    verified[NGX_HTTP_PAYFLOW_WEBHOOK_NVERIFY];
    ngx_atomic_t                    events[NGX_HTTP_PAYFLOW_WEBHOOK_NRESULTS];
} ngx_http_payflow_provider_slot_t;


static ngx_int_t ngx_http_payflow_providers_init_zone(ngx_shm_zone_t *zone,
    void *data);
static ngx_http_payflow_provider_slot_t *ngx_http_payflow_slot(
    ngx_http_payflow_main_conf_t *pmcf, ngx_http_payflow_provider_t *p);
static ngx_uint_t ngx_http_payflow_success_rate(
    ngx_http_payflow_main_conf_t *pmcf, ngx_http_payflow_provider_t *p);


static const char  *ngx_http_payflow_strategies[] = {
    "priority", "weighted", "lowest_cost", "success_rate", NULL
};

static const char  *ngx_http_payflow_op_names[] = {
    "charge", "capture", "cancel", "refund", "verify", "refund_status"
};

static const char  *ngx_http_payflow_outcome_names[] = {
    "ok", "declined", "error", "unknown"
};

static const char  *ngx_http_payflow_verify_names[] = {
    "valid", "missing", "invalid", "stale", "refused"
};

static const char  *ngx_http_payflow_webhook_names[] = {
    "applied", "unchanged", "unmatched", "ignored", "mismatch", "verifying",
    "duplicate", "malformed", "failed"
};

static const char  *ngx_http_payflow_breaker_names[] = {
    "closed", "open", "half_open"
};

/* call latency buckets, ms */
static ngx_msec_t  ngx_http_payflow_call_bounds[] = {
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000
};


/*
 * payflow_route <strategy> [mode=test|live] [currency=USD,EUR]
 *     [tenant=<id>,...] <provider>[:<weight> | :<percent>%+<fixed>] ...;
 */

char *
ngx_http_payflow_route(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    u_char                          *p, *q, *last;
    char                           **cur;
    ngx_str_t                       *value, s, *t;
    ngx_int_t                        n;
    ngx_uint_t                       i, k;
    ngx_http_payflow_route_t        *route;
    ngx_http_payflow_route_entry_t  *e;

    value = cf->args->elts;

    if (pmcf->routes.elts == NULL
        && ngx_array_init(&pmcf->routes, cf->pool, 4,
                          sizeof(ngx_http_payflow_route_t))
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    route = ngx_array_push(&pmcf->routes);
    if (route == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(route, sizeof(ngx_http_payflow_route_t));
    route->line = cf->conf_file->line;

    for (k = 0; ngx_http_payflow_strategies[k]; k++) {
        if (ngx_strcmp(value[1].data, ngx_http_payflow_strategies[k]) == 0) {
            break;
        }
    }

    if (ngx_http_payflow_strategies[k] == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_route: unknown strategy \"%V\", expected "
                           "priority, weighted, lowest_cost or success_rate",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    route->strategy = k;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "mode=test") == 0
            || ngx_strcmp(value[i].data, "mode=live") == 0)
        {
            route->livemode = (value[i].data[5] == 'l');
            continue;
        }

        if (ngx_strncmp(value[i].data, "currency=", 9) == 0
            || ngx_strncmp(value[i].data, "tenant=", 7) == 0)
        {
            p = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            last = value[i].data + value[i].len;

            if (value[i].data[0] == 'c') {
                route->currencies = ngx_array_create(cf->pool, 4,
                                                     sizeof(char *));
                if (route->currencies == NULL) {
                    return NGX_CONF_ERROR;
                }

            } else {
                route->tenants = ngx_array_create(cf->pool, 4,
                                                  sizeof(ngx_str_t));
                if (route->tenants == NULL) {
                    return NGX_CONF_ERROR;
                }
            }

            while (p < last) {
                q = ngx_strlchr(p, last, ',');
                if (q == NULL) {
                    q = last;
                }

                if (q == p) {
                    goto invalid;
                }

                if (value[i].data[0] == 'c') {
                    if (q - p != 3) {
                        goto invalid;
                    }

                    cur = ngx_array_push(route->currencies);
                    if (cur == NULL) {
                        return NGX_CONF_ERROR;
                    }

                    *cur = ngx_pnalloc(cf->pool, 4);
                    if (*cur == NULL) {
                        return NGX_CONF_ERROR;
                    }

                    for (k = 0; k < 3; k++) {
                        (*cur)[k] = ngx_toupper(p[k]);
                    }

                    (*cur)[3] = '\0';

                } else {
                    t = ngx_array_push(route->tenants);
                    if (t == NULL) {
                        return NGX_CONF_ERROR;
                    }

                    t->data = p;
                    t->len = q - p;
                }

                p = q + 1;
            }

            continue;
        }

        /* a provider */

        if (route->n == NGX_HTTP_PAYFLOW_MAX_ROUTE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_route: at most %d providers",
                               NGX_HTTP_PAYFLOW_MAX_ROUTE);
            return NGX_CONF_ERROR;
        }

        e = &route->entries[route->n++];
        e->weight = 1;

        p = (u_char *) ngx_strchr(value[i].data, ':');

        e->name.data = value[i].data;
        e->name.len = p ? (size_t) (p - value[i].data) : value[i].len;

        if (p == NULL) {
            continue;
        }

        s.data = p + 1;
        s.len = value[i].data + value[i].len - s.data;

        if (route->strategy == NGX_HTTP_PAYFLOW_WEIGHTED) {
            n = ngx_atoi(s.data, s.len);
            if (n == NGX_ERROR) {
                goto invalid;
            }

            e->weight = n;
            continue;
        }

        if (route->strategy != NGX_HTTP_PAYFLOW_LOWEST_COST) {
            goto invalid;
        }

        /* 2.9%+30: a percentage with up to two decimals, plus a fixed fee */

        q = ngx_strlchr(s.data, s.data + s.len, '%');
        if (q == NULL) {
            goto invalid;
        }

        n = ngx_atofp(s.data, q - s.data, 2);
        if (n == NGX_ERROR) {
            goto invalid;
        }

        e->percent = n;

        if (q + 1 < s.data + s.len) {
            if (q[1] != '+') {
                goto invalid;
            }

            n = ngx_atoi(q + 2, s.data + s.len - q - 2);
            if (n == NGX_ERROR) {
                goto invalid;
            }

            e->fixed = n;
        }
    }

    if (route->n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_route: no provider is listed");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_route: invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * payflow_provider_breaker [failures=5] [window=30s] [open=60s]
 *     [successes=1];
 */

char *
ngx_http_payflow_breaker(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    ngx_str_t   *value, s;
    ngx_int_t    n;
    ngx_uint_t   i;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        s.data = (u_char *) ngx_strchr(value[i].data, '=');

        if (s.data == NULL) {
            goto invalid;
        }

        s.data++;
        s.len = value[i].data + value[i].len - s.data;

        if (ngx_strncmp(value[i].data, "failures=", 9) == 0
            || ngx_strncmp(value[i].data, "successes=", 10) == 0)
        {
            n = ngx_atoi(s.data, s.len);

            if (n < 1 || n > NGX_HTTP_PAYFLOW_MAX_FAILURES) {
                goto invalid;
            }

            if (value[i].data[0] == 'f') {
                pmcf->breaker_failures = n;

            } else {
                pmcf->breaker_successes = n;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0
            || ngx_strncmp(value[i].data, "open=", 5) == 0)
        {
            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            if (value[i].data[0] == 'w') {
                pmcf->breaker_window = n;

            } else {
                pmcf->breaker_open = n;
            }

            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_provider_breaker: invalid parameter \"%V\" "
                       "(failures and successes 1 to %d)", &value[i],
                       NGX_HTTP_PAYFLOW_MAX_FAILURES);
    return NGX_CONF_ERROR;
}


/* resolves routes' provider names; sizes the providers' zone */

char *
ngx_http_payflow_routing_init_main_conf(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf)
{
    size_t                          size;
    ngx_str_t                       name;
    ngx_uint_t                      i, k;
    ngx_http_payflow_route_t       *route;
    ngx_http_payflow_provider_t    *pv;

    ngx_conf_init_uint_value(pmcf->breaker_failures, 5);
    ngx_conf_init_msec_value(pmcf->breaker_window, 30000);
    ngx_conf_init_msec_value(pmcf->breaker_open, 60000);
    ngx_conf_init_uint_value(pmcf->breaker_successes, 1);
    ngx_conf_init_msec_value(pmcf->provider_deadline, 30000);
    ngx_conf_init_msec_value(pmcf->reconcile_after, 60000);

    route = pmcf->routes.elts;

    for (i = 0; i < pmcf->routes.nelts; i++) {
        for (k = 0; k < route[i].n; k++) {
            pv = ngx_http_payflow_provider_find(pmcf,
                                                &route[i].entries[k].name,
                                                route[i].livemode);
            if (pv == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_route (line %ui): no provider "
                                   "\"%V\" in %s mode", route[i].line,
                                   &route[i].entries[k].name,
                                   route[i].livemode ? "live" : "test");
                return NGX_CONF_ERROR;
            }

            route[i].entries[k].provider = pv;
        }
    }

    pv = pmcf->providers.elts;

    for (i = 0; i < pmcf->providers.nelts; i++) {
        pv[i].index = i;
    }

    /* the configured providers' slots, then the tenants' accounts' */

    size = 8 * ngx_pagesize
           + (pmcf->providers.nelts + NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS)
             * sizeof(ngx_http_payflow_provider_slot_t);

    ngx_str_set(&name, "payflow_providers");

    pmcf->providers_zone = ngx_shared_memory_add(cf, &name, size,
                                                 &ngx_http_payflow_module);
    if (pmcf->providers_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    pmcf->providers_zone->init = ngx_http_payflow_providers_init_zone;
    pmcf->providers_zone->data = pmcf;

    return NGX_CONF_OK;
}


/* the slots start afresh on every start and reload: providers may change */

static ngx_int_t
ngx_http_payflow_providers_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_payflow_main_conf_t *pmcf = zone->data;

    size_t             size;
    ngx_slab_pool_t   *shpool;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    size = (pmcf->providers.nelts + NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS)
           * sizeof(ngx_http_payflow_provider_slot_t);

    if (data) {
        /* a reload kept the zone (same size: as many providers) */
        ngx_memzero(shpool->data, size);
        return NGX_OK;
    }

    shpool->data = ngx_slab_calloc(shpool, size);
    if (shpool->data == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A configured provider's slot is its own; a tenant's account takes one of
 * the eight of its set, by its id's hash, the least recently used when
 * none is its yet.
 */

static ngx_http_payflow_provider_slot_t *
ngx_http_payflow_slot(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p)
{
    uint32_t                           hash;
    ngx_uint_t                         i;
    ngx_slab_pool_t                   *shpool;
    ngx_http_payflow_provider_slot_t  *slots, *s, *lru;

    shpool = (ngx_slab_pool_t *) pmcf->providers_zone->shm.addr;
    slots = shpool->data;

    if (p->index != NGX_HTTP_PAYFLOW_ACCOUNT_INDEX) {
        return &slots[p->index];
    }

    hash = ngx_crc32_short(p->name.data, p->name.len);

    s = slots + pmcf->providers.nelts
        + (hash % (NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS
                   / NGX_HTTP_PAYFLOW_ACCOUNT_WAYS))
          * NGX_HTTP_PAYFLOW_ACCOUNT_WAYS;

    lru = s;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_WAYS; i++) {
        if (ngx_strncmp(s[i].account, p->name.data, p->name.len) == 0
            && s[i].account[p->name.len] == '\0')
        {
            lru = &s[i];
            goto found;
        }

        if (s[i].account[0] == '\0') {
            if (lru->account[0] != '\0') {
                lru = &s[i];
            }

        } else if (lru->account[0] != '\0' && s[i].used < lru->used) {
            lru = &s[i];
        }
    }

    ngx_memzero(lru, sizeof(ngx_http_payflow_provider_slot_t));
    ngx_memcpy(lru->account, p->name.data,
               ngx_min(p->name.len, sizeof(lru->account) - 1));
    lru->livemode = p->livemode;

found:

    lru->used = ngx_current_msec;

    ngx_shmtx_unlock(&shpool->mutex);

    return lru;
}


/*
 * Orders the providers of a payment: the tenant's own enabled accounts
 * that take the currency, if it has any, by the strategy of the first
 * matching route (priority when none matches); else the providers of the
 * first matching route.  NGX_DECLINED when neither is there.
 */

ngx_int_t
ngx_http_payflow_route_plan(ngx_http_request_t *r,
    ngx_http_payflow_plan_t *plan, const char *currency, int64_t amount)
{
    char                           **cur;
    int64_t                          fee[NGX_HTTP_PAYFLOW_MAX_ROUTE], f;
    ngx_str_t                       *t;
    ngx_uint_t                       i, k, j, n, total, pick, rate;
    ngx_uint_t                       strategy;
    ngx_uint_t                       rates[NGX_HTTP_PAYFLOW_MAX_ROUTE];
    ngx_uint_t                       weight[NGX_HTTP_PAYFLOW_MAX_ROUTE];
    ngx_http_payflow_ctx_t          *ctx;
    ngx_http_payflow_route_t        *route;
    ngx_http_payflow_account_t      *a;
    ngx_http_payflow_provider_t     *pv;
    ngx_http_payflow_main_conf_t    *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    route = pmcf->routes.elts;

    for (i = 0; i < pmcf->routes.nelts; i++, route++) {

        if (route->livemode != ctx->auth.livemode) {
            continue;
        }

        if (route->currencies) {
            cur = route->currencies->elts;

            for (k = 0; k < route->currencies->nelts; k++) {
                if (ngx_strcmp(cur[k], currency) == 0) {
                    break;
                }
            }

            if (k == route->currencies->nelts) {
                continue;
            }
        }

        if (route->tenants) {
            t = route->tenants->elts;

            for (k = 0; k < route->tenants->nelts; k++) {
                if (t[k].len == ctx->auth.tenant_id.len
                    && ngx_strncmp(t[k].data, ctx->auth.tenant_id.data,
                                   t[k].len) == 0)
                {
                    break;
                }
            }

            if (k == route->tenants->nelts) {
                continue;
            }
        }

        break;
    }

    if (i == pmcf->routes.nelts) {
        route = NULL;
    }

    /* the tenant's own accounts first */

    n = 0;

    for (a = ngx_http_payflow_accounts_of(&ctx->auth.tenant_id,
                                          ctx->auth.livemode);
         a && n < NGX_HTTP_PAYFLOW_MAX_ROUTE;
         a = a->next)
    {
        if (!a->enabled) {
            continue;
        }

        for (k = 0; k < a->ncurrencies; k++) {
            if (ngx_strcmp(a->currencies[k], currency) == 0) {
                break;
            }
        }

        if (a->ncurrencies && k == a->ncurrencies) {
            continue;
        }

        pv = ngx_http_payflow_account_provider(r->pool, a);
        if (pv == NULL) {
            return NGX_ERROR;
        }

        plan->providers[n] = pv;
        weight[n] = 1;
        fee[n] = amount * (int64_t) a->percent / 10000 + a->fixed;
        n++;
    }

    if (n) {
        strategy = route ? route->strategy : NGX_HTTP_PAYFLOW_PRIORITY;

    } else if (route) {
        strategy = route->strategy;
        n = route->n;

        for (k = 0; k < n; k++) {
            plan->providers[k] = route->entries[k].provider;
            weight[k] = route->entries[k].weight;
            fee[k] = amount * (int64_t) route->entries[k].percent / 10000
                     + route->entries[k].fixed;
        }

    } else {
        return NGX_DECLINED;
    }

    plan->strategy = ngx_http_payflow_strategies[strategy];
    plan->n = n;
    plan->next = 0;

    switch (strategy) {

    case NGX_HTTP_PAYFLOW_WEIGHTED:
        total = 0;

        for (k = 0; k < n; k++) {
            total += weight[k];
        }

        if (total == 0) {
            break;
        }

        pick = ngx_random() % total;

        for (k = 0; k < n; k++) {
            if (pick < weight[k]) {
                break;
            }

            pick -= weight[k];
        }

        /* the drawn one first, the others after it in their order */

        pv = plan->providers[k];

        for (j = k; j > 0; j--) {
            plan->providers[j] = plan->providers[j - 1];
        }

        plan->providers[0] = pv;
        break;

    case NGX_HTTP_PAYFLOW_LOWEST_COST:

        /* insertion sort, stable: ties keep the listed order */

        for (k = 1; k < n; k++) {
            pv = plan->providers[k];
            f = fee[k];

            for (j = k; j > 0 && fee[j - 1] > f; j--) {
                plan->providers[j] = plan->providers[j - 1];
                fee[j] = fee[j - 1];
            }

            plan->providers[j] = pv;
            fee[j] = f;
        }

        break;

    case NGX_HTTP_PAYFLOW_SUCCESS_RATE:

        for (k = 0; k < n; k++) {
            rates[k] = ngx_http_payflow_success_rate(pmcf,
                                                     plan->providers[k]);
        }

        for (k = 1; k < n; k++) {
            pv = plan->providers[k];
            rate = rates[k];

            for (j = k; j > 0 && rates[j - 1] < rate; j--) {
                plan->providers[j] = plan->providers[j - 1];
                rates[j] = rates[j - 1];
            }

            plan->providers[j] = pv;
            rates[j] = rate;
        }

        break;

    default: /* NGX_HTTP_PAYFLOW_PRIORITY */
        break;
    }

    return NGX_OK;
}


/*
 * The provider a payment names (its "provider", or the one it is at):
 * a configured provider by name, or one of the tenant's accounts by id,
 * as the request's own copy.  NULL: none such (an account closed).
 */

ngx_http_payflow_provider_t *
ngx_http_payflow_request_provider(ngx_http_request_t *r, ngx_str_t *name,
    ngx_uint_t enabled)
{
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_account_t    *a;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (!ngx_http_payflow_account_id(name)) {
        return ngx_http_payflow_provider_find(pmcf, name, ctx->auth.livemode);
    }

    for (a = ngx_http_payflow_accounts_of(&ctx->auth.tenant_id,
                                          ctx->auth.livemode);
         a;
         a = a->next)
    {
        if (a->provider.name.len == name->len
            && ngx_memcmp(a->provider.name.data, name->data, name->len) == 0)
        {
            if (enabled && !a->enabled) {
                return NULL;
            }

            return ngx_http_payflow_account_provider(r->pool, a);
        }
    }

    return NULL;
}


/*
 * The next provider of the plan whose breaker lets a call through, with
 * the reason recorded on the payment; NULL when none is left.  why: what
 * sent the payment on from the previous one, or NULL for the first.
 */

ngx_http_payflow_provider_t *
ngx_http_payflow_route_next(ngx_http_request_t *r,
    ngx_http_payflow_plan_t *plan, const char *why)
{
    u_char                        *p, *last;
    ngx_uint_t                     skipped;
    ngx_http_payflow_provider_t   *pv, *prev;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    prev = plan->next ? plan->providers[plan->next - 1] : NULL;
    skipped = 0;

    while (plan->next < plan->n) {
        pv = plan->providers[plan->next++];

        if (ngx_http_payflow_breaker_allow(pmcf, pv)) {
            p = ngx_pnalloc(r->pool, 256);
            if (p == NULL) {
                return NULL;
            }

            last = p + 256;

            plan->reason.data = p;

            p = ngx_slprintf(p, last, "%s: %V", plan->strategy, &pv->name);

            if (prev && why) {
                p = ngx_slprintf(p, last, ", failover from %V (%s)",
                                 &prev->name, why);
            }

            if (skipped) {
                p = ngx_slprintf(p, last, ", %ui skipped: circuit open",
                                 skipped);
            }

            plan->reason.len = p - plan->reason.data;

            return pv;
        }

        skipped++;
    }

    return NULL;
}


ngx_uint_t
ngx_http_payflow_breaker_allow(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p)
{
    ngx_uint_t                         allow;
    ngx_msec_t                         now;
    ngx_http_payflow_provider_slot_t  *s;

    s = ngx_http_payflow_slot(pmcf, p);
    now = ngx_current_msec;
    allow = 1;

    ngx_spinlock(&s->lock, ngx_pid, 1024);

    switch (s->state) {

    case NGX_HTTP_PAYFLOW_BREAKER_OPEN:
        if (now - s->opened_at < pmcf->breaker_open) {
            allow = 0;
            break;
        }

        s->state = NGX_HTTP_PAYFLOW_BREAKER_HALF_OPEN;
        s->successes = 0;
        s->probe_at = now;
        break;

    case NGX_HTTP_PAYFLOW_BREAKER_HALF_OPEN:
        /* one probe at a time; a probe that never reported is given up */
        if (s->probe_at && now - s->probe_at < p->timeout + 1000) {
            allow = 0;
            break;
        }

        s->probe_at = now;
        break;

    default:
        break;
    }

    ngx_unlock(&s->lock);

    return allow;
}


/* a call's outcome: the breaker, the success rate and the metrics */

void
ngx_http_payflow_provider_record(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p, ngx_http_payflow_op_e op,
    ngx_http_payflow_provider_result_t *res, ngx_msec_t elapsed)
{
    ngx_uint_t                         i, outcome, n, ok;
    ngx_msec_t                         now, start;
    ngx_http_payflow_rate_bucket_t    *b;
    ngx_http_payflow_provider_slot_t  *s;

    s = ngx_http_payflow_slot(pmcf, p);
    now = ngx_current_msec;

    if (res->status == NULL && !res->not_taken) {
        outcome = NGX_HTTP_PAYFLOW_CALL_UNKNOWN;

    } else if (res->declined) {
        outcome = NGX_HTTP_PAYFLOW_CALL_DECLINED;

    } else if (res->status == NULL || res->outage) {
        outcome = NGX_HTTP_PAYFLOW_CALL_ERROR;

    } else {
        outcome = NGX_HTTP_PAYFLOW_CALL_OK;
    }

    (void) ngx_atomic_fetch_add(&s->calls[op][outcome], 1);

    for (i = 0; i < NGX_HTTP_PAYFLOW_CALL_BUCKETS - 1; i++) {
        if (elapsed <= ngx_http_payflow_call_bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&s->latency[i], 1);
    (void) ngx_atomic_fetch_add(&s->latency_ms, elapsed);
    (void) ngx_atomic_fetch_add(&s->latency_count, 1);

    ok = (outcome == NGX_HTTP_PAYFLOW_CALL_OK);

    ngx_spinlock(&s->lock, ngx_pid, 1024);

    /* the success rate: charges only, decided or failed */

    if (op == NGX_HTTP_PAYFLOW_OP_CHARGE) {
        start = now - now % NGX_HTTP_PAYFLOW_RATE_SPAN;
        b = &s->rate[(now / NGX_HTTP_PAYFLOW_RATE_SPAN)
                     % NGX_HTTP_PAYFLOW_RATE_BUCKETS];

        if (b->start != start) {
            b->start = start;
            b->ok = 0;
            b->failed = 0;
        }

        if (ok) {
            b->ok++;

        } else {
            b->failed++;
        }
    }

    /* the breaker counts outages, not declines */

    switch (s->state) {

    case NGX_HTTP_PAYFLOW_BREAKER_CLOSED:
        if (!res->outage) {
            break;
        }

        n = pmcf->breaker_failures;

        s->failures[s->nfailures++ % NGX_HTTP_PAYFLOW_MAX_FAILURES] = now;

        /* the n-th failure back is within the window */

        if (s->nfailures >= n
            && now - s->failures[(s->nfailures - n)
                                 % NGX_HTTP_PAYFLOW_MAX_FAILURES]
               <= pmcf->breaker_window)
        {
            s->state = NGX_HTTP_PAYFLOW_BREAKER_OPEN;
            s->opened_at = now;
            s->nfailures = 0;
            (void) ngx_atomic_fetch_add(&s->opened, 1);

            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "payflow provider: \"%V\" circuit opened after "
                          "%ui failures within %M ms", &p->name, n,
                          pmcf->breaker_window);
        }

        break;

    case NGX_HTTP_PAYFLOW_BREAKER_HALF_OPEN:
        s->probe_at = 0;

        if (res->outage) {
            s->state = NGX_HTTP_PAYFLOW_BREAKER_OPEN;
            s->opened_at = now;
            (void) ngx_atomic_fetch_add(&s->opened, 1);
            break;
        }

        if (++s->successes >= pmcf->breaker_successes) {
            s->state = NGX_HTTP_PAYFLOW_BREAKER_CLOSED;
            s->nfailures = 0;

            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "payflow provider: \"%V\" circuit closed",
                          &p->name);
        }

        break;

    default:
        /* open: a late answer changes nothing */
        break;
    }

    ngx_unlock(&s->lock);
}


/* per ten thousand over the window; an unused provider rates 10000 */

static ngx_uint_t
ngx_http_payflow_success_rate(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p)
{
    ngx_uint_t                         i, ok, failed;
    ngx_msec_t                         now;
    ngx_http_payflow_provider_slot_t  *s;

    s = ngx_http_payflow_slot(pmcf, p);
    now = ngx_current_msec;
    ok = 0;
    failed = 0;

    ngx_spinlock(&s->lock, ngx_pid, 1024);

    for (i = 0; i < NGX_HTTP_PAYFLOW_RATE_BUCKETS; i++) {
        if (now - s->rate[i].start
            < NGX_HTTP_PAYFLOW_RATE_SPAN * NGX_HTTP_PAYFLOW_RATE_BUCKETS)
        {
            ok += s->rate[i].ok;
            failed += s->rate[i].failed;
        }
    }

    ngx_unlock(&s->lock);

    return (ok + failed) ? ok * 10000 / (ok + failed) : 10000;
}


void
ngx_http_payflow_providers_metrics(ngx_http_payflow_main_conf_t *pmcf,
    pf_prom_t *out)
{
    ngx_uint_t                         i, op, k, state;
    ngx_slab_pool_t                   *shpool;
    ngx_atomic_uint_t                  cum;
    ngx_http_payflow_provider_t       *pv;
    ngx_http_payflow_provider_slot_t  *s, *accounts;

    if (pmcf->providers_zone == NULL) {
        return;
    }

    pv = pmcf->providers.elts;

    shpool = (ngx_slab_pool_t *) pmcf->providers_zone->shm.addr;
    accounts = (ngx_http_payflow_provider_slot_t *) shpool->data
               + pmcf->providers.nelts;

    pf_prom_family(out, "payflow_provider_calls_total", "counter",
                   "Calls to payment providers by provider, operation and "
                   "outcome (ok, declined, error: refused with nothing "
                   "moved, unknown: no telling).");

    for (i = 0; i < pmcf->providers.nelts; i++) {
        s = ngx_http_payflow_slot(pmcf, &pv[i]);

        for (op = 0; op < NGX_HTTP_PAYFLOW_OPS; op++) {
            for (k = 0; k < NGX_HTTP_PAYFLOW_CALL_NOUTCOMES; k++) {
                pf_prom_printf(out, "payflow_provider_calls_total{provider="
                               "\"%V\",mode=\"%s\",operation=\"%s\","
                               "outcome=\"%s\"} %uA\n", &pv[i].name,
                               pv[i].livemode ? "live" : "test",
                               ngx_http_payflow_op_names[op],
                               ngx_http_payflow_outcome_names[k],
                               s->calls[op][k]);
            }
        }
    }

    /* the tenants' accounts with a slot: by account id */

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS; i++) {
        s = &accounts[i];

        if (s->account[0] == '\0') {
            continue;
        }

        for (op = 0; op < NGX_HTTP_PAYFLOW_OPS; op++) {
            for (k = 0; k < NGX_HTTP_PAYFLOW_CALL_NOUTCOMES; k++) {
                if (s->calls[op][k] == 0) {
                    continue;
                }

                pf_prom_printf(out, "payflow_provider_calls_total{provider="
                               "\"%s\",mode=\"%s\",operation=\"%s\","
                               "outcome=\"%s\"} %uA\n", s->account,
                               s->livemode ? "live" : "test",
                               ngx_http_payflow_op_names[op],
                               ngx_http_payflow_outcome_names[k],
                               s->calls[op][k]);
            }
        }
    }

    pf_prom_family(out, "payflow_provider_call_duration_seconds",
                   "histogram", "Time of calls to payment providers.");

    for (i = 0; i < pmcf->providers.nelts; i++) {
        s = ngx_http_payflow_slot(pmcf, &pv[i]);
        cum = 0;

        for (k = 0; k < NGX_HTTP_PAYFLOW_CALL_BUCKETS; k++) {
            cum += s->latency[k];
            pf_prom_printf(out, "payflow_provider_call_duration_seconds_"
                           "bucket{provider=\"%V\",mode=\"%s\",le=\"%.3f\"} "
                           "%uA\n", &pv[i].name,
                           pv[i].livemode ? "live" : "test",
                           (double) ngx_http_payflow_call_bounds[k] / 1000,
                           cum);
        }

        pf_prom_printf(out, "payflow_provider_call_duration_seconds_bucket"
                       "{provider=\"%V\",mode=\"%s\",le=\"+Inf\"} %uA\n",
                       &pv[i].name, pv[i].livemode ? "live" : "test",
                       s->latency_count);
        pf_prom_printf(out, "payflow_provider_call_duration_seconds_sum"
                       "{provider=\"%V\",mode=\"%s\"} %.3f\n", &pv[i].name,
                       pv[i].livemode ? "live" : "test",
                       (double) s->latency_ms / 1000);
        pf_prom_printf(out, "payflow_provider_call_duration_seconds_count"
                       "{provider=\"%V\",mode=\"%s\"} %uA\n", &pv[i].name,
                       pv[i].livemode ? "live" : "test", s->latency_count);
    }

    pf_prom_family(out, "payflow_provider_circuit_state", "gauge",
                   "Circuit breaker per provider: 1 for its current state.");

    for (i = 0; i < pmcf->providers.nelts; i++) {
        s = ngx_http_payflow_slot(pmcf, &pv[i]);
        state = s->state;

        for (k = 0; k < 3; k++) {
            pf_prom_printf(out, "payflow_provider_circuit_state{provider="
                           "\"%V\",mode=\"%s\",state=\"%s\"} %d\n",
                           &pv[i].name, pv[i].livemode ? "live" : "test",
                           ngx_http_payflow_breaker_names[k], state == k);
        }
    }

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS; i++) {
        s = &accounts[i];

        if (s->account[0] == '\0') {
            continue;
        }

        state = s->state;

        for (k = 0; k < 3; k++) {
            pf_prom_printf(out, "payflow_provider_circuit_state{provider="
                           "\"%s\",mode=\"%s\",state=\"%s\"} %d\n",
                           s->account, s->livemode ? "live" : "test",
                           ngx_http_payflow_breaker_names[k], state == k);
        }
    }

    pf_prom_family(out, "payflow_provider_circuit_opened_total", "counter",
                   "Times a provider's circuit breaker opened.");

    for (i = 0; i < pmcf->providers.nelts; i++) {
        s = ngx_http_payflow_slot(pmcf, &pv[i]);

        pf_prom_printf(out, "payflow_provider_circuit_opened_total{provider="
                       "\"%V\",mode=\"%s\"} %uA\n", &pv[i].name,
                       pv[i].livemode ? "live" : "test", s->opened);
    }

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS; i++) {
        s = &accounts[i];

        if (s->account[0] != '\0') {
            pf_prom_printf(out, "payflow_provider_circuit_opened_total{"
                           "provider=\"%s\",mode=\"%s\"} %uA\n",
                           s->account, s->livemode ? "live" : "test",
                           s->opened);
        }
    }

    pf_prom_family(out, "payflow_webhook_verifications_total", "counter",
                   "Provider webhooks by provider and how their signature "
                   "was judged (valid, missing, invalid, stale, refused: "
                   "address not allowed).");

    for (i = 0; i < pmcf->providers.nelts; i++) {
        s = ngx_http_payflow_slot(pmcf, &pv[i]);

        for (k = 0; k < NGX_HTTP_PAYFLOW_WEBHOOK_NVERIFY; k++) {
            pf_prom_printf(out, "payflow_webhook_verifications_total{"
                           "provider=\"%V\",mode=\"%s\",result=\"%s\"} "
                           "%uA\n", &pv[i].name,
                           pv[i].livemode ? "live" : "test",
                           ngx_http_payflow_verify_names[k], s->verified[k]);
        }
    }

    pf_prom_family(out, "payflow_webhook_events_total", "counter",
                   "Verified provider webhooks by provider and what became "
                   "of them.");

    for (i = 0; i < pmcf->providers.nelts; i++) {
        s = ngx_http_payflow_slot(pmcf, &pv[i]);

        for (k = 0; k < NGX_HTTP_PAYFLOW_WEBHOOK_NRESULTS; k++) {
            pf_prom_printf(out, "payflow_webhook_events_total{provider="
                           "\"%V\",mode=\"%s\",result=\"%s\"} %uA\n",
                           &pv[i].name, pv[i].livemode ? "live" : "test",
                           ngx_http_payflow_webhook_names[k], s->events[k]);
        }
    }
}


/* result: an ngx_http_payflow_webhook_result_e, or -1 (not verified) */

void
ngx_http_payflow_webhook_count(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p, ngx_uint_t verify, ngx_int_t result)
{
    ngx_http_payflow_provider_slot_t  *s;

    if (pmcf->providers_zone == NULL) {
        return;
    }

    s = ngx_http_payflow_slot(pmcf, p);

    (void) ngx_atomic_fetch_add(&s->verified[verify], 1);

    if (result >= 0) {
        (void) ngx_atomic_fetch_add(&s->events[result], 1);
    }
}
