
/*
 * Copyright (C) PayFlow
 *
 * Each worker's copy of the tenants' provider accounts (sql/0026): what
 * lets a payment be routed through a tenant's own Stripe, Paystack or
 * Flutterwave account without a database round trip, and its later
 * steps (capture, refund, the reconciler, webhooks) reach the same
 * account.
 *
 * A copy holds, for one tenant and mode, as of one version, its open
 * accounts with their secrets opened (pf_unseal) in worker memory.  It is
 * made on the tenant's first request that needs it, which waits for it;
 * the reconciler and webhooks know only an account, and load the copy of
 * its tenant and mode.  Every second the worker checks the versions of
 * the tenants it holds and makes again the copies that moved; a copy idle
 * for ten minutes is dropped.  Secrets are wiped (OPENSSL_cleanse) when a
 * copy goes.  A request takes its own copy of an account's provider into
 * its pool, so a copy replaced while the request runs is never touched.
 */


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_accounts.h"
#include "ngx_http_payflow_providers.h"

#include <openssl/crypto.h>


#define NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS      512
#define NGX_HTTP_PAYFLOW_ACCOUNT_IDLE       600000     /* ms */
#define NGX_HTTP_PAYFLOW_ACCOUNT_REFRESH    1000       /* ms */
#define NGX_HTTP_PAYFLOW_ACCOUNT_ID_LEN     27         /* pa_ + 24 */


typedef struct ngx_http_payflow_acct_tenant_s  ngx_http_payflow_acct_tenant_t;


struct ngx_http_payflow_acct_tenant_s {
    ngx_http_payflow_acct_tenant_t    *next;        /* in its bucket */
    uint32_t                           hash;
    ngx_uint_t                         livemode;
    size_t                             len;
    u_char                             id[64];

    int64_t                            version;
    ngx_http_payflow_account_t        *accounts;    /* a list */
    ngx_uint_t                         naccounts;

    ngx_msec_t                         used;
    ngx_pool_t                        *loading;     /* while it loads */
    ngx_queue_t                        waiters;

    unsigned                           ready:1;
};


/* a load by an account alone: its tenant is not known yet */

typedef struct {
    ngx_queue_t                        queue;       /* of the cache's */
    ngx_queue_t                        waiters;
    ngx_pool_t                        *pool;
    u_char                             id[NGX_HTTP_PAYFLOW_ACCOUNT_ID_LEN];
} ngx_http_payflow_acct_load_t;


typedef struct {
    ngx_http_payflow_main_conf_t      *pmcf;
    ngx_log_t                         *log;
    ngx_http_payflow_acct_tenant_t    *buckets[NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS];
    ngx_http_payflow_account_t        *ids[NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS];
    ngx_uint_t                         tenants;
    ngx_queue_t                        loads;
    ngx_event_t                        timer;
    ngx_pool_t                        *refreshing;
} ngx_http_payflow_acct_cache_t;


static ngx_http_payflow_acct_cache_t  ngx_http_payflow_acct_cache;


static ngx_http_payflow_acct_tenant_t *ngx_http_payflow_acct_tenant(
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_uint_t create);
static ngx_int_t ngx_http_payflow_acct_load(ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *account, void *data,
    ngx_pool_t **pool);
static void ngx_http_payflow_acct_loaded(pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_acct_copy(ngx_http_payflow_acct_tenant_t *t,
    PGresult *res, ngx_uint_t row, ngx_pool_t *pool,
    ngx_http_payflow_account_t **list);
static ngx_int_t ngx_http_payflow_acct_open(ngx_pool_t *pool,
    ngx_http_payflow_acct_tenant_t *t, ngx_str_t *id, char *sealed,
    ngx_str_t *out);
static void ngx_http_payflow_acct_forget(ngx_http_payflow_account_t *list);
static void ngx_http_payflow_acct_move(ngx_queue_t *to, ngx_queue_t *from);
static void ngx_http_payflow_acct_wake(ngx_queue_t *waiters, ngx_int_t rc);
static void ngx_http_payflow_acct_tick(ngx_event_t *ev);
static void ngx_http_payflow_acct_versions(pf_pg_query_t *q);
static void ngx_http_payflow_acct_wipe(void *data);


ngx_int_t
ngx_http_payflow_account_cache_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_acct_cache_t  *c;

    c = &ngx_http_payflow_acct_cache;

    ngx_memzero(c, sizeof(ngx_http_payflow_acct_cache_t));

    c->pmcf = pmcf;
    c->log = cycle->log;
    ngx_queue_init(&c->loads);

    c->timer.handler = ngx_http_payflow_acct_tick;
    c->timer.data = c;
    c->timer.log = cycle->log;
    c->timer.cancelable = 1;

    ngx_add_timer(&c->timer, NGX_HTTP_PAYFLOW_ACCOUNT_REFRESH);

    return NGX_OK;
}


void
ngx_http_payflow_account_cache_stop(void)
{
    ngx_uint_t                       i;
    ngx_queue_t                     *q;
    ngx_http_payflow_acct_load_t    *ld;
    ngx_http_payflow_acct_cache_t   *c;
    ngx_http_payflow_acct_tenant_t  *t, *next;

    c = &ngx_http_payflow_acct_cache;

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

    while (!ngx_queue_empty(&c->loads)) {
        q = ngx_queue_head(&c->loads);
        ld = ngx_queue_data(q, ngx_http_payflow_acct_load_t, queue);
        ngx_queue_remove(q);
        ngx_destroy_pool(ld->pool);
        ngx_free(ld);
    }

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS; i++) {
        for (t = c->buckets[i]; t; t = next) {
            next = t->next;

            if (t->loading) {
                ngx_destroy_pool(t->loading);
            }

            ngx_http_payflow_acct_forget(t->accounts);
            ngx_free(t);
        }

        c->buckets[i] = NULL;
    }

    c->pmcf = NULL;
}


/*
 * NGX_OK: the tenant's copy is there (it may have no account);
 * NGX_AGAIN: it is being made, and w->handler is called once it is,
 * with NGX_OK or NGX_ERROR; NGX_ERROR.
 */

ngx_int_t
ngx_http_payflow_accounts_ready(ngx_str_t *tenant, ngx_uint_t livemode,
    ngx_http_payflow_account_wait_t *w)
{
    ngx_http_payflow_acct_tenant_t  *t;

    t = ngx_http_payflow_acct_tenant(tenant, livemode, 1);
    if (t == NULL) {
        return NGX_ERROR;
    }

    t->used = ngx_current_msec;

    if (t->ready) {
        return NGX_OK;
    }

    if (t->loading == NULL
        && ngx_http_payflow_acct_load(tenant, livemode, NULL, t,
                                      &t->loading)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&t->waiters, &w->queue);
    w->waiting = 1;

    return NGX_AGAIN;
}


/* the tenant's accounts, once ready: a list, NULL if none */

ngx_http_payflow_account_t *
ngx_http_payflow_accounts_of(ngx_str_t *tenant, ngx_uint_t livemode)
{
    ngx_http_payflow_acct_tenant_t  *t;

    t = ngx_http_payflow_acct_tenant(tenant, livemode, 0);

    return (t && t->ready) ? t->accounts : NULL;
}


/*
 * An account by its id alone (the reconciler, webhooks): NGX_OK and *out;
 * NGX_DECLINED: no such open account; NGX_AGAIN: w->handler is called
 * when its tenant's copy is made, to ask again; NGX_ERROR.
 */

ngx_int_t
ngx_http_payflow_account_find(ngx_str_t *id, ngx_http_payflow_account_t **out,
    ngx_http_payflow_account_wait_t *w)
{
    uint32_t                         hash;
    ngx_str_t                        tenant;
    ngx_queue_t                     *q;
    ngx_http_payflow_account_t      *a;
    ngx_http_payflow_acct_load_t    *ld;
    ngx_http_payflow_acct_cache_t   *c;
    ngx_http_payflow_acct_tenant_t  *t;

    c = &ngx_http_payflow_acct_cache;

    if (c->pmcf == NULL || !ngx_http_payflow_account_id(id)) {
        return NGX_DECLINED;
    }

    hash = ngx_crc32_short(id->data, id->len);

    for (a = c->ids[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS]; a; a = a->by_id)
    {
        if (a->provider.name.len == id->len
            && ngx_memcmp(a->provider.name.data, id->data, id->len) == 0)
        {
            t = a->tenant;
            t->used = ngx_current_msec;

            *out = a;
            return NGX_OK;
        }
    }

    if (w == NULL) {
        return NGX_DECLINED;
    }

    /* one load per account at a time */

    for (q = ngx_queue_head(&c->loads);
         q != ngx_queue_sentinel(&c->loads);
         q = ngx_queue_next(q))
    {
        ld = ngx_queue_data(q, ngx_http_payflow_acct_load_t, queue);

        if (ngx_memcmp(ld->id, id->data, id->len) == 0) {
            goto wait;
        }
    }

    ld = ngx_calloc(sizeof(ngx_http_payflow_acct_load_t), c->log);
    if (ld == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ld->id, id->data, id->len);
    ngx_queue_init(&ld->waiters);

    ngx_str_null(&tenant);

    if (ngx_http_payflow_acct_load(&tenant, 0, id, ld, &ld->pool) != NGX_OK)
    {
        ngx_free(ld);
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&c->loads, &ld->queue);

wait:

    ngx_queue_insert_tail(&ld->waiters, &w->queue);
    w->waiting = 1;

    return NGX_AGAIN;
}


/* a request's or a run's own copy of an account's provider, in its pool */

ngx_http_payflow_provider_t *
ngx_http_payflow_account_provider(ngx_pool_t *pool,
    ngx_http_payflow_account_t *a)
{
    u_char                       *p;
    ngx_pool_cleanup_t           *cln;
    ngx_http_payflow_provider_t  *pv;

    cln = ngx_pool_cleanup_add(pool, 0);
    pv = ngx_palloc(pool, sizeof(ngx_http_payflow_provider_t));
    p = ngx_pnalloc(pool, a->provider.name.len + a->provider.base_url.len
                          + a->provider.secret.len + 3);

    if (cln == NULL || pv == NULL || p == NULL) {
        return NULL;
    }

    /* NUL-terminated, as configured providers' strings are */

    *pv = a->provider;

    pv->name.data = p;
    p = ngx_cpymem(p, a->provider.name.data, a->provider.name.len);
    *p++ = '\0';
    pv->base_url.data = p;
    p = ngx_cpymem(p, a->provider.base_url.data, a->provider.base_url.len);
    *p++ = '\0';
    pv->secret.data = p;
    p = ngx_cpymem(p, a->provider.secret.data, a->provider.secret.len);
    *p = '\0';

    cln->handler = ngx_http_payflow_acct_wipe;
    cln->data = pv;

    return pv;
}


/* "pa_" and 24 letters or digits */

ngx_uint_t
ngx_http_payflow_account_id(ngx_str_t *id)
{
    size_t  i;

    if (id->len != NGX_HTTP_PAYFLOW_ACCOUNT_ID_LEN
        || ngx_strncmp(id->data, "pa_", 3) != 0)
    {
        return 0;
    }

    for (i = 3; i < id->len; i++) {
        if (!isalnum(id->data[i])) {
            return 0;
        }
    }

    return 1;
}


/*
 * The tenant changed its accounts (committed): the copy is made again
 * before it is used, a load already on the way (perhaps from before the
 * change) given up and started again for its waiters.
 */

void
ngx_http_payflow_accounts_changed(ngx_str_t *tenant, ngx_uint_t livemode)
{
    ngx_queue_t                      waiters;
    ngx_http_payflow_acct_tenant_t  *t;

    t = ngx_http_payflow_acct_tenant(tenant, livemode, 0);
    if (t == NULL) {
        return;
    }

    if (t->loading) {
        /* the query's cleanup detaches it from its connection */
        ngx_destroy_pool(t->loading);
        t->loading = NULL;
    }

    t->ready = 0;

    if (ngx_queue_empty(&t->waiters)
        || ngx_http_payflow_acct_load(tenant, livemode, NULL, t, &t->loading)
           == NGX_OK)
    {
        return;
    }

    ngx_queue_init(&waiters);
    ngx_http_payflow_acct_move(&waiters, &t->waiters);
    ngx_http_payflow_acct_wake(&waiters, NGX_ERROR);
}


void
ngx_http_payflow_account_unwait(ngx_http_payflow_account_wait_t *w)
{
    if (w->waiting) {
        ngx_queue_remove(&w->queue);
        w->waiting = 0;
    }
}


static ngx_http_payflow_acct_tenant_t *
ngx_http_payflow_acct_tenant(ngx_str_t *tenant, ngx_uint_t livemode,
    ngx_uint_t create)
{
    uint32_t                         hash;
    ngx_http_payflow_acct_cache_t   *c;
    ngx_http_payflow_acct_tenant_t  *t;

    c = &ngx_http_payflow_acct_cache;

    if (c->pmcf == NULL || tenant->len == 0
        || tenant->len > sizeof(t->id))
    {
        return NULL;
    }

    hash = ngx_crc32_short(tenant->data, tenant->len) ^ (uint32_t) livemode;

    for (t = c->buckets[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS];
         t;
         t = t->next)
    {
        if (t->hash == hash && t->livemode == livemode
            && t->len == tenant->len
            && ngx_memcmp(t->id, tenant->data, tenant->len) == 0)
        {
            return t;
        }
    }

    if (!create) {
        return NULL;
    }

    t = ngx_calloc(sizeof(ngx_http_payflow_acct_tenant_t), c->log);
    if (t == NULL) {
        return NULL;
    }

    t->hash = hash;
    t->livemode = livemode;
    t->len = tenant->len;
    ngx_memcpy(t->id, tenant->data, tenant->len);
    ngx_queue_init(&t->waiters);
    t->version = -1;

    t->next = c->buckets[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS];
    c->buckets[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS] = t;
    c->tenants++;

    return t;
}


/* the snapshot of a tenant and mode, or of an account's */

static ngx_int_t
ngx_http_payflow_acct_load(ngx_str_t *tenant, ngx_uint_t livemode,
    ngx_str_t *account, void *data, ngx_pool_t **pool)
{
    const char                     **values;
    pf_pg_query_t                   *q;
    ngx_http_payflow_acct_cache_t   *c;

    c = &ngx_http_payflow_acct_cache;

    if (ngx_exiting || ngx_quit) {
        return NGX_ERROR;
    }

    *pool = ngx_create_pool(4096, c->log);
    if (*pool == NULL) {
        return NGX_ERROR;
    }

    q = pf_pg_query_create(*pool, c->pmcf->pool, 1);
    values = ngx_pcalloc(*pool, 3 * sizeof(char *));

    if (q == NULL || values == NULL) {
        goto failed;
    }

    if (account) {
        values[2] = ngx_http_payflow_db_str(*pool, account);
        if (values[2] == NULL) {
            goto failed;
        }

    } else {
        values[0] = ngx_http_payflow_db_str(*pool, tenant);
        values[1] = livemode ? "true" : "false";

        if (values[0] == NULL) {
            goto failed;
        }
    }

    q->stmts[0].statement = c->pmcf->st.account_snapshot;
    q->stmts[0].nparams = 3;
    q->stmts[0].values = values;
    q->handler = ngx_http_payflow_acct_loaded;
    q->data = data;

    if (pf_pg_query_run(q) == NGX_OK) {
        return NGX_OK;
    }

failed:

    ngx_destroy_pool(*pool);
    *pool = NULL;

    return NGX_ERROR;
}


/*
 * Rows: tenant_id, livemode, version, id, provider, secret, webhook_secret,
 * base_url, currencies, fee_percent, fee_fixed, enabled.  q->data is the
 * tenant loaded, or the load by account.
 */

static void
ngx_http_payflow_acct_loaded(pf_pg_query_t *q)
{
    PGresult                        *res;
    ngx_int_t                        rc;
    ngx_str_t                        tenant;
    ngx_uint_t                       i, n, rows;
    ngx_pool_t                      *pool;
    ngx_queue_t                      waiters, *w;
    ngx_http_payflow_account_t      *list, *a;
    ngx_http_payflow_acct_load_t    *ld;
    ngx_http_payflow_acct_cache_t   *c;
    ngx_http_payflow_acct_tenant_t  *t;

    c = &ngx_http_payflow_acct_cache;
    res = q->results[0];
    ld = NULL;
    t = NULL;

    ngx_queue_init(&waiters);

    for (w = ngx_queue_head(&c->loads);
         w != ngx_queue_sentinel(&c->loads);
         w = ngx_queue_next(w))
    {
        if (ngx_queue_data(w, ngx_http_payflow_acct_load_t, queue)
            == q->data)
        {
            ld = q->data;
            break;
        }
    }

    if (ld) {
        pool = ld->pool;
        ngx_queue_remove(&ld->queue);
        ngx_http_payflow_acct_move(&waiters, &ld->waiters);
        ngx_free(ld);

    } else {
        t = q->data;
        pool = t->loading;
        t->loading = NULL;
        ngx_http_payflow_acct_move(&waiters, &t->waiters);
    }

    rc = NGX_ERROR;

    if (q->status != PF_PG_OK || PQnfields(res) != 12) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "payflow accounts: a copy of provider accounts was "
                      "not made (%s)", pf_pg_status_text(q->status));
        goto done;
    }

    rows = PQntuples(res);

    if (ld) {
        if (rows == 0) {
            /* no such account: the waiters find none */
            rc = NGX_OK;
            goto done;
        }

        tenant.data = (u_char *) PQgetvalue(res, 0, 0);
        tenant.len = PQgetlength(res, 0, 0);

        t = ngx_http_payflow_acct_tenant(&tenant,
                                         PQgetvalue(res, 0, 1)[0] == 't', 1);
        if (t == NULL) {
            goto done;
        }

        t->used = ngx_current_msec;

        if (t->loading) {
            /* a load of the tenant itself is on the way, and newer */
            ngx_http_payflow_acct_move(&t->waiters, &waiters);
            goto done;
        }
    }

    if (rows == 0) {
        goto done;
    }

    /* the new copy is built aside, and replaces the old one whole */

    list = NULL;
    n = 0;

    for (i = 0; i < rows; i++) {
        if (PQgetisnull(res, i, 3)) {
            continue;
        }

        rc = ngx_http_payflow_acct_copy(t, res, i, pool, &list);

        if (rc == NGX_ERROR) {
            ngx_http_payflow_acct_forget(list);
            goto done;
        }

        n += (rc == NGX_OK);
    }

    ngx_http_payflow_acct_forget(t->accounts);

    /* in the snapshot's order: the list was built backwards */

    t->accounts = NULL;

    while (list) {
        a = list;
        list = a->next;
        a->next = t->accounts;
        t->accounts = a;
    }

    t->naccounts = n;
    t->version = ngx_atoof((u_char *) PQgetvalue(res, 0, 2),
                           PQgetlength(res, 0, 2));
    t->ready = 1;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "payflow accounts: tenant \"%*s\" version %L: %ui",
                   t->len, t->id, t->version, n);

    rc = NGX_OK;

done:

    ngx_destroy_pool(pool);

    ngx_http_payflow_acct_wake(&waiters, rc);
}


/* the waiters of "from" join those of "to" */

static void
ngx_http_payflow_acct_move(ngx_queue_t *to, ngx_queue_t *from)
{
    if (!ngx_queue_empty(from)) {
        ngx_queue_add(to, from);
        ngx_queue_init(from);
    }
}


/*
 * One account of the snapshot into worker memory, its secrets opened, at
 * the head of *list; NGX_DECLINED: its key does not open, it is left out.
 */

static ngx_int_t
ngx_http_payflow_acct_copy(ngx_http_payflow_acct_tenant_t *t, PGresult *res,
    ngx_uint_t row, ngx_pool_t *pool, ngx_http_payflow_account_t **list)
{
    u_char                          *p, *cur;
    size_t                           size;
    uint32_t                         hash;
    ngx_str_t                        id, secret, whsec, url, names;
    ngx_uint_t                       n;
    ngx_http_payflow_account_t      *a;
    ngx_http_payflow_acct_cache_t   *c;
    const ngx_http_payflow_adapter_t *adapter;

    c = &ngx_http_payflow_acct_cache;

    id.data = (u_char *) PQgetvalue(res, row, 3);
    id.len = PQgetlength(res, row, 3);

    adapter = ngx_http_payflow_adapter(PQgetvalue(res, row, 4));

    if (adapter == NULL || !ngx_http_payflow_account_id(&id)) {
        return NGX_ERROR;
    }

    if (ngx_http_payflow_acct_open(pool, t, &id, PQgetvalue(res, row, 5),
                                   &secret)
        != NGX_OK)
    {
        /* this account cannot be used; the others can */
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "payflow accounts: the secret key of provider account "
                      "\"%V\" does not open (its payflow_kek is not "
                      "configured, or the value was moved from another "
                      "row): the account is not used", &id);
        return NGX_DECLINED;
    }

    ngx_str_null(&whsec);

    if (!PQgetisnull(res, row, 6)
        && ngx_http_payflow_acct_open(pool, t, &id, PQgetvalue(res, row, 6),
                                      &whsec)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "payflow accounts: the webhook secret of provider "
                      "account \"%V\" does not open: its webhooks are "
                      "refused", &id);
        ngx_str_null(&whsec);
    }

    if (PQgetisnull(res, row, 7)) {
        url = adapter->default_url;

    } else {
        url.data = (u_char *) PQgetvalue(res, row, 7);
        url.len = PQgetlength(res, row, 7);

        /* no trailing slash, as payflow_provider's */
        while (url.len && url.data[url.len - 1] == '/') {
            url.len--;
        }
    }

    names.data = (u_char *) PQgetvalue(res, row, 8);
    names.len = PQgetlength(res, row, 8);

    size = sizeof(ngx_http_payflow_account_t) + id.len + url.len
           + secret.len + whsec.len + 4;

    a = ngx_calloc(size, c->log);
    if (a == NULL) {
        OPENSSL_cleanse(secret.data, secret.len);
        OPENSSL_cleanse(whsec.data, whsec.len);
        return NGX_ERROR;
    }

    a->size = size;
    a->tenant = t;
    a->enabled = (PQgetvalue(res, row, 11)[0] == 't');

    /* the fees, as the API checked them; anything else counts as none */

    n = PQgetisnull(res, row, 9)
        ? 0 : (ngx_uint_t) ngx_atoi((u_char *) PQgetvalue(res, row, 9),
                                    PQgetlength(res, row, 9));
    a->fixed = PQgetisnull(res, row, 10)
               ? 0 : ngx_atoof((u_char *) PQgetvalue(res, row, 10),
                               PQgetlength(res, row, 10));

    if ((ngx_int_t) n == NGX_ERROR || n > 10000 || a->fixed == NGX_ERROR) {
        n = 0;
        a->fixed = 0;
    }

    a->percent = n;

    /* "USD,EUR": none means any currency */

    n = 0;
    cur = names.data;

    while (cur + 3 <= names.data + names.len
           && n < NGX_HTTP_PAYFLOW_ACCOUNT_CURRENCIES)
    {
        ngx_memcpy(a->currencies[n], cur, 3);
        a->currencies[n][3] = '\0';
        n++;
        cur += 4;
    }

    a->ncurrencies = n;

    p = (u_char *) (a + 1);

    a->provider.adapter = adapter;
    a->provider.livemode = t->livemode;
    a->provider.connect_timeout = 2000;
    a->provider.timeout = 10000;
    a->provider.retries = 2;
    a->provider.index = NGX_HTTP_PAYFLOW_ACCOUNT_INDEX;

    /* each NUL-terminated (ngx_calloc()) */

    a->provider.name.data = p;
    a->provider.name.len = id.len;
    p = ngx_cpymem(p, id.data, id.len) + 1;

    a->provider.base_url.data = p;
    a->provider.base_url.len = url.len;
    p = ngx_cpymem(p, url.data, url.len) + 1;

    a->provider.secret.data = p;
    a->provider.secret.len = secret.len;
    p = ngx_cpymem(p, secret.data, secret.len) + 1;

    a->webhook_secret.data = whsec.len ? p : NULL;
    a->webhook_secret.len = whsec.len;
    ngx_memcpy(p, whsec.data, whsec.len);

    OPENSSL_cleanse(secret.data, secret.len);
    OPENSSL_cleanse(whsec.data, whsec.len);

    a->next = *list;
    *list = a;

    hash = ngx_crc32_short(id.data, id.len);
    a->by_id = c->ids[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS];
    c->ids[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS] = a;

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_acct_open(ngx_pool_t *pool,
    ngx_http_payflow_acct_tenant_t *t, ngx_str_t *id, char *sealed,
    ngx_str_t *out)
{
    ngx_str_t                       aad, in, tenant;
    ngx_http_payflow_acct_cache_t  *c;

    c = &ngx_http_payflow_acct_cache;

    in.data = (u_char *) sealed;
    in.len = ngx_strlen(sealed);

    if (!pf_sealed(&in)) {
        return NGX_DECLINED;
    }

    tenant.data = t->id;
    tenant.len = t->len;

    if (pf_seal_aad(pool, "provider_accounts", &tenant, t->livemode, id,
                    &aad)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return pf_unseal(pool, &c->pmcf->keyring, &aad, &in, out);
}


/* accounts go: out of the id index, their secrets wiped */

static void
ngx_http_payflow_acct_forget(ngx_http_payflow_account_t *list)
{
    uint32_t                        hash;
    ngx_http_payflow_account_t     *a, *next, **ap;
    ngx_http_payflow_acct_cache_t  *c;

    c = &ngx_http_payflow_acct_cache;

    for (a = list; a; a = next) {
        next = a->next;

        hash = ngx_crc32_short(a->provider.name.data, a->provider.name.len);

        for (ap = &c->ids[hash % NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS];
             *ap;
             ap = &(*ap)->by_id)
        {
            if (*ap == a) {
                *ap = a->by_id;
                break;
            }
        }

        OPENSSL_cleanse(a, a->size);
        ngx_free(a);
    }
}


static void
ngx_http_payflow_acct_wake(ngx_queue_t *waiters, ngx_int_t rc)
{
    ngx_queue_t                      *q;
    ngx_http_payflow_account_wait_t  *w;

    while (!ngx_queue_empty(waiters)) {
        q = ngx_queue_head(waiters);
        ngx_queue_remove(q);

        w = ngx_queue_data(q, ngx_http_payflow_account_wait_t, queue);
        w->waiting = 0;
        w->handler(w, rc);
    }
}


/*
 * Every second: the versions of the tenants copied; a copy behind is made
 * again, a copy idle for ten minutes dropped.
 */

static void
ngx_http_payflow_acct_tick(ngx_event_t *ev)
{
    u_char                          *p;
    size_t                           len;
    ngx_uint_t                       i;
    const char                     **values;
    pf_pg_query_t                   *q;
    ngx_http_payflow_acct_cache_t   *c;
    ngx_http_payflow_acct_tenant_t  *t, **tp;

    c = ev->data;

    if (ngx_exiting || ngx_quit) {
        return;
    }

    ngx_add_timer(&c->timer, NGX_HTTP_PAYFLOW_ACCOUNT_REFRESH);

    if (c->refreshing || c->tenants == 0) {
        return;
    }

    len = sizeof("{}");

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS; i++) {
        tp = &c->buckets[i];

        while (*tp) {
            t = *tp;

            if (t->loading == NULL && ngx_queue_empty(&t->waiters)
                && ngx_current_msec - t->used
                   > NGX_HTTP_PAYFLOW_ACCOUNT_IDLE)
            {
                *tp = t->next;
                c->tenants--;
                ngx_http_payflow_acct_forget(t->accounts);
                ngx_free(t);
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

    for (i = 0; i < NGX_HTTP_PAYFLOW_ACCOUNT_SLOTS; i++) {
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

    q->stmts[0].statement = c->pmcf->st.account_versions;
    q->stmts[0].nparams = 1;
    q->stmts[0].values = values;
    q->handler = ngx_http_payflow_acct_versions;
    q->data = c;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

failed:

    ngx_destroy_pool(c->refreshing);
    c->refreshing = NULL;
}


static void
ngx_http_payflow_acct_versions(pf_pg_query_t *q)
{
    int64_t                          version;
    PGresult                        *res;
    ngx_str_t                        id;
    ngx_uint_t                       i, mode;
    ngx_http_payflow_acct_cache_t   *c;
    ngx_http_payflow_acct_tenant_t  *t;

    c = q->data;
    res = q->results[0];

    if (q->status == PF_PG_OK && PQnfields(res) == 2) {

        for (i = 0; i < (ngx_uint_t) PQntuples(res); i++) {
            id.data = (u_char *) PQgetvalue(res, i, 0);
            id.len = PQgetlength(res, i, 0);
            version = ngx_atoof((u_char *) PQgetvalue(res, i, 1),
                                PQgetlength(res, i, 1));

            for (mode = 0; mode < 2; mode++) {
                t = ngx_http_payflow_acct_tenant(&id, mode, 0);

                if (t == NULL || t->loading || !t->ready
                    || t->version == version)
                {
                    continue;
                }

                (void) ngx_http_payflow_acct_load(&id, mode, NULL, t,
                                                  &t->loading);
            }
        }
    }

    ngx_destroy_pool(c->refreshing);
    c->refreshing = NULL;
}


static void
ngx_http_payflow_acct_wipe(void *data)
{
    ngx_http_payflow_provider_t *pv = data;

    OPENSSL_cleanse(pv->secret.data, pv->secret.len);
}
