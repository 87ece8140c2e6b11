
/*
 * Copyright (C) PayFlow
 *
 * Each worker's copy of the tenants' risk lists and settings (sql/0022,
 * docs/risk.md): what lets a worker decide a payment alone, so that the
 * statement writing it only checks that the copy is current.
 *
 * A copy holds, for one tenant and mode, as of one version of its lists
 * and settings: a sorted array of 64-bit digests of every list entry
 * (type and value; an address network by family, prefix length and
 * masked address) and of the tenant's own e-mails and domains, the prefix
 * lengths its networks use, and the settings (thresholds, rule scores and
 * switches).  A digest found is only a "maybe": the database then matches
 * and decides, exactly as without the copy; a digest not found is a sure
 * "not listed", as equal values have equal digests.
 *
 * Copies are made on a tenant's first payment (the database decides until
 * the copy is there), kept within "list_cache=" bytes (least recently used
 * copies go first), refreshed when the tenant's version moves (checked
 * every "list_refresh=") and dropped after ten idle minutes.  Process
 * memory, no lock: each worker has its own.
 */


#include "ngx_http_payflow_risk.h"

#include <jansson.h>


#define NGX_HTTP_PAYFLOW_RISK_SLOTS          512
#define NGX_HTTP_PAYFLOW_RISK_CACHE_IDLE     600000    /* ms */
#define NGX_HTTP_PAYFLOW_RISK_CACHE_RETRY    1000      /* ms */


struct ngx_http_payflow_risk_tenant_s {
    ngx_http_payflow_risk_tenant_t    *next;       /* in its bucket */
    uint32_t                           hash;
    ngx_uint_t                         livemode;
    size_t                             len;
    u_char                             id[64];

    ngx_http_payflow_risk_settings_t   settings;
    uint64_t                          *digests;    /* sorted */
    ngx_uint_t                         ndigests;
    uint64_t                           v4;         /* prefix lengths */
    uint64_t                           v6[3];
    size_t                             size;       /* in the budget */

    ngx_msec_t                         used;
    ngx_msec_t                         failed;
    ngx_pool_t                        *loading;    /* while it loads */

    unsigned                           ready:1;
    unsigned                           overflow:1; /* the database's */
};


typedef struct {
    ngx_http_payflow_main_conf_t      *pmcf;
    ngx_log_t                         *log;
    ngx_http_payflow_risk_tenant_t    *buckets[NGX_HTTP_PAYFLOW_RISK_SLOTS];
    ngx_uint_t                         tenants;
    size_t                             size;
    size_t                             max;
    ngx_msec_t                         refresh;
    ngx_event_t                        timer;
    ngx_pool_t                        *refreshing;
} ngx_http_payflow_risk_cache_t;


static ngx_http_payflow_risk_cache_t  ngx_http_payflow_risk_cache;


static ngx_uint_t ngx_http_payflow_risk_cache_listed(
    ngx_http_payflow_risk_tenant_t *t, u_char tag, ngx_str_t *value,
    ngx_uint_t upper);
static ngx_uint_t ngx_http_payflow_risk_cache_address(
    ngx_http_payflow_risk_tenant_t *t, ngx_str_t *ip);
static ngx_uint_t ngx_http_payflow_risk_cache_has(
    ngx_http_payflow_risk_tenant_t *t, uint64_t d);
static uint64_t ngx_http_payflow_risk_cache_digest(u_char *p, size_t len);
static ngx_int_t ngx_http_payflow_risk_cache_network(ngx_str_t *text,
    uint64_t *digest, ngx_uint_t *family, ngx_uint_t *prefix);
static void ngx_http_payflow_risk_cache_load(
    ngx_http_payflow_risk_tenant_t *t);
static void ngx_http_payflow_risk_cache_loaded(pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_risk_cache_settings(
    ngx_http_payflow_risk_tenant_t *t, const char *text);
static int ngx_libc_cdecl ngx_http_payflow_risk_cache_cmp(const void *a,
    const void *b);
static void ngx_http_payflow_risk_cache_free(
    ngx_http_payflow_risk_tenant_t *t);
static void ngx_http_payflow_risk_cache_evict(size_t need,
    ngx_http_payflow_risk_tenant_t *keep);
static void ngx_http_payflow_risk_cache_tick(ngx_event_t *ev);
static void ngx_http_payflow_risk_cache_versions(pf_pg_query_t *q);


ngx_int_t
ngx_http_payflow_risk_cache_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf, size_t size, ngx_msec_t refresh)
{
    ngx_http_payflow_risk_cache_t  *c;

    c = &ngx_http_payflow_risk_cache;

    ngx_memzero(c, sizeof(ngx_http_payflow_risk_cache_t));

    if (size == 0) {
        /* list_cache=0: the database decides every payment */
        return NGX_OK;
    }

    c->pmcf = pmcf;
    c->log = cycle->log;
    c->max = size;
    c->refresh = refresh;

    c->timer.handler = ngx_http_payflow_risk_cache_tick;
    c->timer.data = c;
    c->timer.log = cycle->log;
    c->timer.cancelable = 1;

    ngx_add_timer(&c->timer, refresh);

    return NGX_OK;
}


void
ngx_http_payflow_risk_cache_stop(void)
{
    ngx_uint_t                       i;
    ngx_http_payflow_risk_cache_t   *c;
    ngx_http_payflow_risk_tenant_t  *t, *next;

    c = &ngx_http_payflow_risk_cache;

    if (c->pmcf == NULL) {
        return;
    }

    if (c->timer.timer_set) {
        ngx_del_timer(&c->timer);
    }

    if (c->refreshing) {
        /* the query's cleanup detaches it from its connection */
        ngx_destroy_pool(c->refreshing);
        c->refreshing = NULL;
    }

    for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_SLOTS; i++) {
        for (t = c->buckets[i]; t; t = next) {
            next = t->next;
            ngx_http_payflow_risk_cache_free(t);
        }

        c->buckets[i] = NULL;
    }

    c->pmcf = NULL;
}


/*
 * NGX_OK: *out is the tenant's settings and no signal of the payment is on
 * its lists, nor is the payer the merchant: the worker may decide.
 * NGX_DECLINED: the database decides (no copy yet, and one is being made;
 * a signal may be listed; lists too large to copy).
 */

ngx_int_t
ngx_http_payflow_risk_cache_lookup(ngx_str_t *tenant, ngx_uint_t livemode,
    ngx_http_payflow_risk_signals_t *sig,
    ngx_http_payflow_risk_settings_t *out)
{
    uint32_t                         hash;
    ngx_http_payflow_risk_cache_t   *c;
    ngx_http_payflow_risk_tenant_t  *t;

    c = &ngx_http_payflow_risk_cache;

    if (c->pmcf == NULL || tenant->len > sizeof(t->id)) {
        return NGX_DECLINED;
    }

    hash = ngx_crc32_short(tenant->data, tenant->len) ^ (uint32_t) livemode;

    for (t = c->buckets[hash % NGX_HTTP_PAYFLOW_RISK_SLOTS];
         t;
         t = t->next)
    {
        if (t->hash == hash && t->livemode == livemode
            && t->len == tenant->len
            && ngx_memcmp(t->id, tenant->data, tenant->len) == 0)
        {
            break;
        }
    }

    if (t == NULL) {
        if (c->size + sizeof(ngx_http_payflow_risk_tenant_t) > c->max) {
            ngx_http_payflow_risk_cache_evict(
                sizeof(ngx_http_payflow_risk_tenant_t), NULL);
        }

        t = ngx_calloc(sizeof(ngx_http_payflow_risk_tenant_t), c->log);
        if (t == NULL) {
            return NGX_DECLINED;
        }

        t->hash = hash;
        t->livemode = livemode;
        t->len = tenant->len;
        ngx_memcpy(t->id, tenant->data, tenant->len);
        t->size = sizeof(ngx_http_payflow_risk_tenant_t);
        t->settings.version = -1;

        t->next = c->buckets[hash % NGX_HTTP_PAYFLOW_RISK_SLOTS];
        c->buckets[hash % NGX_HTTP_PAYFLOW_RISK_SLOTS] = t;
        c->tenants++;
        c->size += t->size;
    }

    t->used = ngx_current_msec;

    if (!t->ready) {
        if (t->loading == NULL
            && (t->failed == 0
                || ngx_current_msec - t->failed
                   > NGX_HTTP_PAYFLOW_RISK_CACHE_RETRY))
        {
            ngx_http_payflow_risk_cache_load(t);
        }

        return NGX_DECLINED;
    }

    if (t->overflow) {
        return NGX_DECLINED;
    }

    if (ngx_http_payflow_risk_cache_listed(t, 'e', &sig->email, 0)
        || ngx_http_payflow_risk_cache_listed(t, 'E', &sig->email, 0)
        || ngx_http_payflow_risk_cache_listed(t, 'd', &sig->domain, 0)
        || ngx_http_payflow_risk_cache_listed(t, 'D', &sig->domain, 0)
        || ngx_http_payflow_risk_cache_listed(t, 'c', &sig->card, 0)
        || ngx_http_payflow_risk_cache_listed(t, 'n', &sig->country, 1)
        || ngx_http_payflow_risk_cache_listed(t, 'u', &sig->customer_id, 0)
        || ngx_http_payflow_risk_cache_address(t, &sig->ip))
    {
        return NGX_DECLINED;
    }

    *out = t->settings;

    return NGX_OK;
}


/* maybe listed: the value's digest is among the copy's */

static ngx_uint_t
ngx_http_payflow_risk_cache_listed(ngx_http_payflow_risk_tenant_t *t,
    u_char tag, ngx_str_t *value, ngx_uint_t upper)
{
    size_t  i;
    u_char  buf[1 + 255];

    if (value->len == 0) {
        return 0;
    }

    if (value->len > 255) {
        /* longer than any entry may be: the database says */
        return 1;
    }

    buf[0] = tag;

    for (i = 0; i < value->len; i++) {
        buf[1 + i] = upper ? ngx_toupper(value->data[i]) : value->data[i];
    }

    return ngx_http_payflow_risk_cache_has(t,
               ngx_http_payflow_risk_cache_digest(buf, 1 + value->len));
}


/* maybe in a listed network: each prefix length the lists use, tried */

static ngx_uint_t
ngx_http_payflow_risk_cache_address(ngx_http_payflow_risk_tenant_t *t,
    ngx_str_t *ip)
{
    size_t      n;
    u_char     *addr;
    in_addr_t   v4;
    ngx_uint_t  family, bits, len, i;
    u_char      buf[4 + 16], a6[16];

    if (ip->len == 0
        || (t->v4 | t->v6[0] | t->v6[1] | t->v6[2]) == 0)
    {
        return 0;
    }

    v4 = ngx_inet_addr(ip->data, ip->len);

    if (v4 != INADDR_NONE) {
        family = 4;
        addr = (u_char *) &v4;
        n = 4;

#if (NGX_HAVE_INET6)
    } else if (ngx_inet6_addr(ip->data, ip->len, a6) == NGX_OK) {
        family = 6;
        addr = a6;
        n = 16;
#endif

    } else {
        /* not an address the lists know: the database says */
        return 1;
    }

    for (bits = 0; bits <= n * 8; bits++) {
        if (family == 4 ? !(t->v4 & ((uint64_t) 1 << bits))
                        : !(t->v6[bits / 64] & ((uint64_t) 1 << bits % 64)))
        {
            continue;
        }

        buf[0] = 'i';
        buf[1] = (u_char) family;
        buf[2] = (u_char) bits;
        len = 3;

        for (i = 0; i < n; i++) {
            buf[len++] = (i * 8 + 8 <= bits) ? addr[i]
                         : (i * 8 >= bits) ? 0
                         : addr[i] & (u_char) (0xff << (8 - bits % 8));
        }

        if (ngx_http_payflow_risk_cache_has(t,
                ngx_http_payflow_risk_cache_digest(buf, len)))
        {
            return 1;
        }
    }

    return 0;
}


/* the digest among the copy's (sorted) */

static ngx_uint_t
ngx_http_payflow_risk_cache_has(ngx_http_payflow_risk_tenant_t *t,
    uint64_t d)
{
    ngx_uint_t  lo, hi, mid;

    lo = 0;
    hi = t->ndigests;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        if (t->digests[mid] == d) {
            return 1;
        }

        if (t->digests[mid] < d) {
            lo = mid + 1;

        } else {
            hi = mid;
        }
    }

    return 0;
}


/*
 * FNV-1a, 64 bits: equal values have equal digests, and a collision (even
 * a crafted one) only sends a payment to the database.
 */

static uint64_t
ngx_http_payflow_risk_cache_digest(u_char *p, size_t len)
{
    size_t    i;
    uint64_t  h;

    h = 0xcbf29ce484222325ULL;

    for (i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }

    return h;
}


/* a list entry's network as the database writes it: "10.1.2.0/24" */

static ngx_int_t
ngx_http_payflow_risk_cache_network(ngx_str_t *text, uint64_t *digest,
    ngx_uint_t *family, ngx_uint_t *prefix)
{
    u_char      *addr, *mask;
    ngx_uint_t   i, n, bits, len;
    ngx_cidr_t   cidr;
    u_char       buf[4 + 16];

    if (ngx_ptocidr(text, &cidr) == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (cidr.family == AF_INET) {
        *family = 4;
        addr = (u_char *) &cidr.u.in.addr;
        mask = (u_char *) &cidr.u.in.mask;
        n = 4;

#if (NGX_HAVE_INET6)
    } else if (cidr.family == AF_INET6) {
        *family = 6;
        addr = cidr.u.in6.addr.s6_addr;
        mask = cidr.u.in6.mask.s6_addr;
        n = 16;
#endif

    } else {
        return NGX_ERROR;
    }

    bits = 0;

    for (i = 0; i < n; i++) {
        bits += (ngx_uint_t) __builtin_popcount(mask[i]);
    }

    buf[0] = 'i';
    buf[1] = (u_char) *family;
    buf[2] = (u_char) bits;
    len = 3;

    for (i = 0; i < n; i++) {
        buf[len++] = addr[i] & mask[i];
    }

    *prefix = bits;
    *digest = ngx_http_payflow_risk_cache_digest(buf, len);

    return NGX_OK;
}


static void
ngx_http_payflow_risk_cache_load(ngx_http_payflow_risk_tenant_t *t)
{
    u_char                         *p;
    ngx_pool_t                     *pool;
    const char                    **values;
    pf_pg_query_t                  *q;
    ngx_http_payflow_risk_cache_t  *c;

    c = &ngx_http_payflow_risk_cache;

    if (ngx_exiting || ngx_quit) {
        return;
    }

    pool = ngx_create_pool(1024, c->log);
    if (pool == NULL) {
        return;
    }

    q = pf_pg_query_create(pool, c->pmcf->pool, 1);
    values = ngx_palloc(pool, 3 * sizeof(char *));
    p = ngx_pnalloc(pool, t->len + 1 + NGX_INT_T_LEN + 1);

    if (q == NULL || values == NULL || p == NULL) {
        goto failed;
    }

    values[0] = (char *) p;
    p = ngx_cpymem(p, t->id, t->len);
    *p++ = '\0';
    values[1] = t->livemode ? "true" : "false";

    /* a quarter of the budget at most: the digests of one copy */
    values[2] = (char *) p;
    *ngx_sprintf(p, "%uz", c->max / 4 / sizeof(uint64_t)) = '\0';

    q->stmts[0].statement = c->pmcf->st.risk_snapshot;
    q->stmts[0].nparams = 3;
    q->stmts[0].values = values;
    q->handler = ngx_http_payflow_risk_cache_loaded;
    q->data = t;

    t->loading = pool;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

    t->loading = NULL;

failed:

    t->failed = ngx_current_msec;
    ngx_destroy_pool(pool);
}


static void
ngx_http_payflow_risk_cache_loaded(pf_pg_query_t *q)
{
    char                            *kind, *a;
    int64_t                          version;
    PGresult                        *res;
    uint64_t                        *digests, v4, v6[3];
    ngx_str_t                        value;
    ngx_uint_t                       i, n, rows, family, prefix, overflow;
    ngx_pool_t                      *pool;
    ngx_http_payflow_risk_cache_t   *c;
    ngx_http_payflow_risk_tenant_t  *t;
    u_char                           buf[1 + 255];

    c = &ngx_http_payflow_risk_cache;
    t = q->data;
    pool = t->loading;
    res = q->results[0];
    digests = NULL;

    if (q->status != PF_PG_OK || PQnfields(res) != 3) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "payflow risk: the lists of tenant \"%*s\" were not "
                      "loaded (%s): the database decides its payments",
                      t->len, t->id, pf_pg_status_text(q->status));
        goto failed;
    }

    rows = PQntuples(res);
    version = -1;
    overflow = 0;
    v4 = 0;
    v6[0] = v6[1] = v6[2] = 0;

    digests = ngx_alloc((rows ? rows : 1) * sizeof(uint64_t), c->log);
    if (digests == NULL) {
        goto failed;
    }

    t->settings.review = -1;
    t->settings.block = -1;

    for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_MAXRULES; i++) {
        t->settings.scores[i] = -1;
        t->settings.disabled[i] = 0;
    }

    n = 0;

    for (i = 0; i < rows; i++) {
        kind = PQgetvalue(res, i, 0);
        a = PQgetvalue(res, i, 1);
        value.data = (u_char *) PQgetvalue(res, i, 2);
        value.len = PQgetlength(res, i, 2);

        if (ngx_strcmp(kind, "version") == 0) {
            version = ngx_atoof((u_char *) a, ngx_strlen(a));
            continue;
        }

        if (ngx_strcmp(kind, "settings") == 0) {
            if (ngx_http_payflow_risk_cache_settings(t, a) != NGX_OK) {
                overflow = 1;
            }

            continue;
        }

        if (value.len > 255) {
            overflow = 1;
            continue;
        }

        if (ngx_strcmp(kind, "self") == 0) {
            buf[0] = (a[0] == 'e') ? 'E' : 'D';

        } else if (ngx_strcmp(a, "ip") == 0) {
            if (ngx_http_payflow_risk_cache_network(&value, &digests[n],
                                                    &family, &prefix)
                != NGX_OK)
            {
                overflow = 1;
                continue;
            }

            if (family == 4) {
                v4 |= (uint64_t) 1 << prefix;

            } else {
                v6[prefix / 64] |= (uint64_t) 1 << prefix % 64;
            }

            n++;
            continue;

        } else {
            buf[0] = ngx_strcmp(a, "email") == 0 ? 'e'
                     : ngx_strcmp(a, "email_domain") == 0 ? 'd'
                     : ngx_strcmp(a, "card") == 0 ? 'c'
                     : ngx_strcmp(a, "country") == 0 ? 'n'
                     : ngx_strcmp(a, "customer") == 0 ? 'u' : '?';

            if (buf[0] == '?') {
                overflow = 1;
                continue;
            }
        }

        ngx_memcpy(buf + 1, value.data, value.len);
        digests[n++] = ngx_http_payflow_risk_cache_digest(buf,
                                                          1 + value.len);
    }

    if (version < 0
        || n > c->max / 4 / sizeof(uint64_t))
    {
        /* the lists did not fit: the database decides, as before */
        overflow = 1;
        n = 0;
    }

    ngx_qsort(digests, n, sizeof(uint64_t), ngx_http_payflow_risk_cache_cmp);

    c->size -= t->size;
    ngx_free(t->digests);

    t->digests = digests;
    t->ndigests = n;
    t->v4 = v4;
    ngx_memcpy(t->v6, v6, sizeof(v6));
    t->settings.version = version;
    t->overflow = overflow;
    t->ready = 1;
    t->failed = 0;
    t->size = sizeof(ngx_http_payflow_risk_tenant_t) + n * sizeof(uint64_t);
    t->loading = NULL;

    c->size += t->size;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "payflow risk: tenant \"%*s\" version %L: %ui digests",
                   t->len, t->id, version, n);

    if (c->size > c->max) {
        ngx_http_payflow_risk_cache_evict(0, t);
    }

    ngx_destroy_pool(pool);
    return;

failed:

    ngx_free(digests);
    t->failed = ngx_current_msec;
    t->loading = NULL;
    ngx_destroy_pool(pool);
}


/*
 * {"review": n, "block": n, "rules": {"name": {"score": n, "enabled": b}}}:
 * anything the worker could read otherwise than the database would
 * (a string for a number, say) leaves the decision to the database.
 */

static ngx_int_t
ngx_http_payflow_risk_cache_settings(ngx_http_payflow_risk_tenant_t *t,
    const char *text)
{
    json_t       *root, *v, *rules, *rule, *score, *enabled;
    ngx_int_t     rc;
    ngx_uint_t    k;
    const char   *name;

    root = json_loads(text, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return NGX_ERROR;
    }

    rc = NGX_OK;

    v = json_object_get(root, "review");
    if (json_is_integer(v)) {
        t->settings.review = (ngx_int_t) json_integer_value(v);

    } else if (v && !json_is_null(v)) {
        rc = NGX_ERROR;
    }

    v = json_object_get(root, "block");
    if (json_is_integer(v)) {
        t->settings.block = (ngx_int_t) json_integer_value(v);

    } else if (v && !json_is_null(v)) {
        rc = NGX_ERROR;
    }

    rules = json_object_get(root, "rules");

    if (!json_is_object(rules)) {
        json_decref(root);
        return NGX_ERROR;
    }

    json_object_foreach(rules, name, rule) {
        k = ngx_http_payflow_risk_rule_known(name, ngx_strlen(name));

        if (k == 0 || k > NGX_HTTP_PAYFLOW_RISK_MAXRULES) {
            /* not this worker's: the database may know it */
            continue;
        }

        k--;

        if (!json_is_object(rule)) {
            rc = NGX_ERROR;
            continue;
        }

        score = json_object_get(rule, "score");

        if (json_is_integer(score)
            && json_integer_value(score) >= 0
            && json_integer_value(score) <= 100)
        {
            t->settings.scores[k] = (ngx_int_t) json_integer_value(score);

        } else if (score && !json_is_null(score)) {
            rc = NGX_ERROR;
        }

        enabled = json_object_get(rule, "enabled");

        if (json_is_false(enabled)) {
            t->settings.disabled[k] = 1;

        } else if (enabled && !json_is_true(enabled)
                   && !json_is_null(enabled))
        {
            rc = NGX_ERROR;
        }
    }

    json_decref(root);

    return rc;
}


static int ngx_libc_cdecl
ngx_http_payflow_risk_cache_cmp(const void *a, const void *b)
{
    uint64_t  x, y;

    x = *(const uint64_t *) a;
    y = *(const uint64_t *) b;

    return (x > y) - (x < y);
}


static void
ngx_http_payflow_risk_cache_free(ngx_http_payflow_risk_tenant_t *t)
{
    if (t->loading) {
        ngx_destroy_pool(t->loading);
    }

    ngx_free(t->digests);
    ngx_free(t);
}


/* the least recently used copies go until need more bytes fit */

static void
ngx_http_payflow_risk_cache_evict(size_t need,
    ngx_http_payflow_risk_tenant_t *keep)
{
    ngx_uint_t                        i;
    ngx_http_payflow_risk_cache_t    *c;
    ngx_http_payflow_risk_tenant_t   *t, **tp, **oldest;

    c = &ngx_http_payflow_risk_cache;

    while (c->size + need > c->max) {
        oldest = NULL;

        for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_SLOTS; i++) {
            for (tp = &c->buckets[i]; *tp; tp = &(*tp)->next) {
                t = *tp;

                if (t == keep || t->loading) {
                    continue;
                }

                if (oldest == NULL
                    || (ngx_msec_int_t) (t->used - (*oldest)->used) < 0)
                {
                    oldest = tp;
                }
            }
        }

        if (oldest == NULL) {
            return;
        }

        t = *oldest;
        *oldest = t->next;
        c->size -= t->size;
        c->tenants--;
        ngx_http_payflow_risk_cache_free(t);
    }
}


/*
 * Every list_refresh: the versions of the tenants copied; a copy behind
 * is made again, a copy idle for ten minutes dropped.
 */

static void
ngx_http_payflow_risk_cache_tick(ngx_event_t *ev)
{
    u_char                          *p;
    size_t                           len;
    ngx_uint_t                       i;
    const char                     **values;
    pf_pg_query_t                   *q;
    ngx_http_payflow_risk_cache_t   *c;
    ngx_http_payflow_risk_tenant_t  *t, **tp;

    c = ev->data;

    if (ngx_exiting || ngx_quit) {
        return;
    }

    ngx_add_timer(&c->timer, c->refresh);

    if (c->refreshing || c->tenants == 0) {
        return;
    }

    len = sizeof("{}");

    for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_SLOTS; i++) {
        tp = &c->buckets[i];

        while (*tp) {
            t = *tp;

            if (t->loading == NULL
                && ngx_current_msec - t->used
                   > NGX_HTTP_PAYFLOW_RISK_CACHE_IDLE)
            {
                *tp = t->next;
                c->size -= t->size;
                c->tenants--;
                ngx_http_payflow_risk_cache_free(t);
                continue;
            }

            len += t->len + 3;
            tp = &t->next;
        }
    }

    if (c->tenants == 0) {
        return;
    }

    c->refreshing = ngx_create_pool(1024 + len, c->log);
    if (c->refreshing == NULL) {
        return;
    }

    q = pf_pg_query_create(c->refreshing, c->pmcf->pool, 1);
    values = ngx_palloc(c->refreshing, sizeof(char *));
    p = ngx_pnalloc(c->refreshing, len);

    if (q == NULL || values == NULL || p == NULL) {
        goto failed;
    }

    /* a text[] of the ids (tenant ids are letters, digits and "_") */

    values[0] = (char *) p;
    *p++ = '{';

    for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_SLOTS; i++) {
        for (t = c->buckets[i]; t; t = t->next) {
            if (p[-1] != '{') {
                *p++ = ',';
            }

            *p++ = '"';
            p = ngx_cpymem(p, t->id, t->len);
            *p++ = '"';
        }
    }

    *p++ = '}';
    *p = '\0';

    q->stmts[0].statement = c->pmcf->st.risk_versions;
    q->stmts[0].nparams = 1;
    q->stmts[0].values = values;
    q->handler = ngx_http_payflow_risk_cache_versions;
    q->data = c;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

failed:

    ngx_destroy_pool(c->refreshing);
    c->refreshing = NULL;
}


static void
ngx_http_payflow_risk_cache_versions(pf_pg_query_t *q)
{
    char                            *id;
    size_t                           len;
    int64_t                          version;
    PGresult                        *res;
    uint32_t                         hash;
    ngx_uint_t                       i, mode;
    ngx_http_payflow_risk_cache_t   *c;
    ngx_http_payflow_risk_tenant_t  *t;

    c = q->data;
    res = q->results[0];

    if (q->status == PF_PG_OK && PQnfields(res) == 2) {

        for (i = 0; i < (ngx_uint_t) PQntuples(res); i++) {
            id = PQgetvalue(res, i, 0);
            len = PQgetlength(res, i, 0);
            version = ngx_atoof((u_char *) PQgetvalue(res, i, 1),
                                PQgetlength(res, i, 1));

            for (mode = 0; mode < 2; mode++) {
                hash = ngx_crc32_short((u_char *) id, len) ^ (uint32_t) mode;
                t = c->buckets[hash % NGX_HTTP_PAYFLOW_RISK_SLOTS];

                for ( /* void */ ; t; t = t->next) {
                    if (t->hash != hash || t->livemode != mode
                        || t->len != len || ngx_memcmp(t->id, id, len) != 0
                        || t->loading)
                    {
                        continue;
                    }

                    if (t->ready ? t->settings.version != version
                                 : ngx_current_msec - t->failed
                                   > NGX_HTTP_PAYFLOW_RISK_CACHE_RETRY)
                    {
                        ngx_http_payflow_risk_cache_load(t);
                    }
                }
            }
        }
    }

    ngx_destroy_pool(c->refreshing);
    c->refreshing = NULL;
}
