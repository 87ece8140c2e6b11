
/*
 * Copyright (C) PayFlow
 *
 * Per-worker PostgreSQL connection pool driven by nginx events.
 *
 * libpq runs in non-blocking mode; its sockets are wrapped as nginx
 * connections (released with ngx_free_connection: libpq owns them) and
 * watched level-triggered, because libpq does not promise to drain a socket
 * on every read.  Every query is sent in pipeline mode followed by one Sync,
 * so a multi-statement transaction costs one round trip.  Statements named
 * with pf_pg_statement_add() are prepared on each connection right after it
 * connects.
 *
 * A query whose owner goes away (client abort) is detached: the connection
 * drains its results and is reused, or is dropped at query_timeout.  Libpq's
 * PQcancel() blocks, so it is never used.
 */


#include "pf_pg.h"
#include "pf_conf.h"
#include "pf_event.h"
#include "pf_json.h"

#include <sys/stat.h>
#include <openssl/ssl.h>


#define PF_PG_BACKOFF_MIN  100
#define PF_PG_BACKOFF_MAX  2000

/* queries one transaction may carry, and how far the queue is searched */
#define PF_PG_GROUP_MAX    16
#define PF_PG_GROUP_SCAN   64


typedef enum {
    PF_PG_CONN_CLOSED = 0,
    PF_PG_CONN_CONNECTING,
    PF_PG_CONN_SETUP,
    PF_PG_CONN_IDLE,
    PF_PG_CONN_BUSY,
    PF_PG_CONN_RESET
} pf_pg_conn_state_e;


struct pf_pg_conn_s {
    pf_pg_pool_t               *pool;
    PGconn                     *pg;
    ngx_connection_t           *c;
    ino_t                       ino;

    pf_pg_conn_state_e          state;
    PostgresPollingStatusType   poll;

    pf_pg_query_t              *query;      /* members[0] */
    ngx_uint_t                  index;      /* statement being answered */
    ngx_uint_t                  nstmts;     /* statements in the pipeline */
    ngx_uint_t                  syncs;      /* Syncs not yet answered */

    /*
     * A group: members[i]'s statements between its BEGIN and COMMIT are
     * the pipeline's from[i] to from[i + 1] - 1, after members[0]'s BEGIN
     * and before its COMMIT.  A member that went away is NULL.
     */
    pf_pg_query_t              *members[PF_PG_GROUP_MAX];
    ngx_uint_t                  from[PF_PG_GROUP_MAX + 1];
    ngx_uint_t                  nmembers;   /* 0: a query of its own */

    ngx_event_t                 timer;
    ngx_msec_t                  backoff;
    ngx_queue_t                 queue;

    unsigned                    setup_failed:1;
    unsigned                    group_failed:1;
    unsigned                    merged:1;   /* the group's merge statement */
};


struct pf_pg_pool_s {
    pf_pg_conf_t               *conf;
    pf_pg_metrics_t            *metrics;   /* NULL: none kept */
    ngx_uint_t                  slot;      /* this worker's gauges */
    ngx_log_t                  *log;
    pf_pg_conn_t               *conns;

    ngx_queue_t                 idle;
    ngx_queue_t                 waiting;

    ngx_uint_t                  nwaiting;
    ngx_uint_t                  nlive;      /* connecting or connected */
    ngx_uint_t                  nconnected;
    ngx_uint_t                  nbusy;

    u_char                      statement_timeout[NGX_INT_T_LEN + 1];

    ngx_event_t                 gather;     /* group_wait */
};


static char *pf_pg_conf_password(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *password);
static char *pf_pg_conf_hostaddr(ngx_conf_t *cf, const char *host,
    ngx_str_t *hostaddr);
static char *pf_pg_strdup(ngx_pool_t *pool, const char *s);

static void pf_pg_conn_connect(pf_pg_conn_t *conn);
static void pf_pg_conn_poll(pf_pg_conn_t *conn);
static void pf_pg_conn_setup(pf_pg_conn_t *conn);
static ngx_int_t pf_pg_conn_send(pf_pg_conn_t *conn, pf_pg_query_t *q);
static ngx_int_t pf_pg_conn_send_group(pf_pg_conn_t *conn);
static ngx_int_t pf_pg_conn_send_merged(pf_pg_conn_t *conn);
static void pf_pg_conn_group_sent(pf_pg_conn_t *conn, ngx_uint_t merged,
    ngx_uint_t nstmts);
static ngx_int_t pf_pg_conn_send_stmt(pf_pg_conn_t *conn, pf_pg_stmt_t *s);
static void pf_pg_conn_busy(pf_pg_conn_t *conn, ngx_uint_t nstmts);
static ngx_uint_t pf_pg_conn_detach(pf_pg_conn_t *conn,
    pf_pg_query_t **done);
static ngx_uint_t pf_pg_conn_gather(pf_pg_conn_t *conn, pf_pg_query_t *q);
static void pf_pg_group_retry(pf_pg_conn_t *conn);
static void pf_pg_group_split(pf_pg_conn_t *conn, PGresult *res);
static void pf_pg_requeue(pf_pg_pool_t *pool, pf_pg_query_t *q);
static void pf_pg_query_clear(pf_pg_query_t *q);
static void pf_pg_conn_flush(pf_pg_conn_t *conn);
static void pf_pg_conn_receive(pf_pg_conn_t *conn);
static void pf_pg_conn_result(pf_pg_conn_t *conn, PGresult *res);
static void pf_pg_conn_complete(pf_pg_conn_t *conn);
static void pf_pg_conn_release(pf_pg_conn_t *conn);
static void pf_pg_conn_fail(pf_pg_conn_t *conn, pf_pg_status_e status);
static void pf_pg_conn_close(pf_pg_conn_t *conn);
static ngx_int_t pf_pg_conn_watch(pf_pg_conn_t *conn);
static void pf_pg_conn_unwatch(pf_pg_conn_t *conn);
static ngx_int_t pf_pg_conn_events(pf_pg_conn_t *conn, ngx_uint_t rd,
    ngx_uint_t wr);
static void pf_pg_conn_log(pf_pg_conn_t *conn, ngx_uint_t level,
    const char *what);
static void pf_pg_notice_processor(void *arg, const char *message);
static void pf_pg_log(ngx_log_t *log, ngx_uint_t level, const char *what,
    const char *msg);

static void pf_pg_read_handler(ngx_event_t *rev);
static void pf_pg_write_handler(ngx_event_t *wev);
static void pf_pg_timer_handler(ngx_event_t *ev);
static void pf_pg_wait_handler(ngx_event_t *ev);
static void pf_pg_gather_handler(ngx_event_t *ev);
static void pf_pg_notify(pf_pg_pool_t *pool, const char *channel,
    const char *payload);
static void pf_pg_pool_fail_waiting(pf_pg_pool_t *pool);
static void pf_pg_query_cleanup(void *data);
static void pf_pg_gauges(pf_pg_pool_t *pool);
static void pf_pg_count(pf_pg_pool_t *pool, pf_pg_query_t *q);


/* upper bounds of the query latency buckets, ms; the last is +Inf */
const ngx_msec_t  pf_pg_latency_bounds[PF_PG_LATENCY_BUCKETS] = {
    1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000
};


/*
 * payflow_db "<conninfo>" [pool=N] [queue=N] [queue_timeout=T]
 *     [query_timeout=T] [connect_timeout=T] [group_wait=T|off]
 *     [password_file=PATH];
 */

char *
pf_pg_conf_parse(ngx_conf_t *cf, pf_pg_conf_t *conf)
{
    char                *err;
    ngx_int_t            n;
    ngx_str_t           *value, s, password, hostaddr;
    ngx_msec_t          *timeout;
    ngx_uint_t           i, nopts;
    const char          *host;
    PQconninfoOption    *opts, *o;

    value = cf->args->elts;

    conf->size = 4;
    conf->queue = 256;
    conf->queue_timeout = 3000;
    conf->query_timeout = 10000;
    conf->connect_timeout = 5000;
    conf->group_wait = 1;

    ngx_str_null(&password);

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);
            if (n == NGX_ERROR || n == 0 || n > 1024) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_db: invalid pool size \"%V\", "
                                   "expected 1..1024", &value[i]);
                return NGX_CONF_ERROR;
            }

            conf->size = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "queue=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_db: invalid queue size \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            conf->queue = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "group_wait=", 11) == 0) {
            s.data = value[i].data + 11;
            s.len = value[i].len - 11;

            if (s.len == 3 && ngx_strncmp(s.data, "off", 3) == 0) {
                conf->group_wait = NGX_CONF_UNSET_MSEC;
                continue;
            }

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n > 100) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_db: invalid group_wait \"%V\", "
                                   "expected off or 0..100ms", &value[i]);
                return NGX_CONF_ERROR;
            }

            conf->group_wait = n;
            continue;
        }

        timeout = NULL;

        if (ngx_strncmp(value[i].data, "queue_timeout=", 14) == 0) {
            timeout = &conf->queue_timeout;

        } else if (ngx_strncmp(value[i].data, "query_timeout=", 14) == 0) {
            timeout = &conf->query_timeout;

        } else if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0) {
            timeout = &conf->connect_timeout;
        }

        if (timeout) {
            s.data = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            s.len = value[i].data + value[i].len - s.data;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_db: invalid timeout \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            *timeout = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "password_file=", 14) == 0) {
            s.data = value[i].data + 14;
            s.len = value[i].len - 14;

            if (pf_pg_conf_password(cf, &s, &password) != NGX_CONF_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_db: invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    opts = PQconninfoParse((char *) value[1].data, &err);
    if (opts == NULL) {
        if (err) {
            s.data = (u_char *) err;
            s.len = ngx_strlen(err);

            while (s.len && (s.data[s.len - 1] == '\n'
                             || s.data[s.len - 1] == '\r'))
            {
                s.len--;
            }

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_db: invalid connection string "
                               "\"%V\": %V", &value[1], &s);
            PQfreemem(err);

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_db: invalid connection string "
                               "\"%V\"",
                               &value[1]);
        }

        return NGX_CONF_ERROR;
    }

    nopts = 0;
    host = NULL;
    ngx_str_null(&hostaddr);

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL || o->val[0] == '\0') {
            continue;
        }

        if (ngx_strcmp(o->keyword, "password") == 0 && password.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_db: both a password in the connection "
                               "string and \"password_file\" are given");
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }

        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = o->val;
        }

        if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            host = NULL;
            hostaddr.len = 1;
            break;
        }

        nopts++;
    }

    /* host names are resolved now: libpq would resolve them blocking */

    if (host && hostaddr.len == 0) {
        if (pf_pg_conf_hostaddr(cf, host, &hostaddr) != NGX_CONF_OK) {
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }
    }

    conf->keywords = ngx_pcalloc(cf->pool, (nopts + 4) * sizeof(char *));
    conf->values = ngx_pcalloc(cf->pool, (nopts + 4) * sizeof(char *));
    if (conf->keywords == NULL || conf->values == NULL) {
        PQconninfoFree(opts);
        return NGX_CONF_ERROR;
    }

    n = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL || o->val[0] == '\0') {
            continue;
        }

        conf->keywords[n] = pf_pg_strdup(cf->pool, o->keyword);
        conf->values[n] = pf_pg_strdup(cf->pool, o->val);

        if (conf->keywords[n] == NULL || conf->values[n] == NULL) {
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }

        n++;
    }

    PQconninfoFree(opts);

    if (hostaddr.len > 1) {
        conf->keywords[n] = "hostaddr";
        conf->values[n++] = (char *) hostaddr.data;
    }

    if (password.len) {
        conf->keywords[n] = "password";
        conf->values[n++] = (char *) password.data;
    }

    conf->keywords[n] = "fallback_application_name";
    conf->values[n] = "payflow";

    if (ngx_array_init(&conf->statements, cf->pool, 8,
                       sizeof(pf_pg_statement_t))
        != NGX_OK
        || ngx_array_init(&conf->listeners, cf->pool, 2,
                          sizeof(pf_pg_listener_t))
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


const pf_pg_statement_t *
pf_pg_statement_add(pf_pg_conf_t *conf, const char *name, const char *sql,
    ngx_uint_t nparams)
{
    ngx_uint_t          i;
    pf_pg_statement_t  *st;

    st = conf->statements.elts;

    for (i = 0; i < conf->statements.nelts; i++) {
        if (ngx_strcmp(st[i].name, name) == 0) {
            return &st[i];
        }
    }

    st = ngx_array_push(&conf->statements);
    if (st == NULL) {
        return NULL;
    }

    st->name = name;
    st->sql = sql;
    st->nparams = nparams;

    return st;
}


/*
 * Every connection of the pool LISTENs on the channel: a notification then
 * arrives as long as any connection is up, and duplicates are harmless to
 * handlers, which must be idempotent.
 */

ngx_int_t
pf_pg_listen_add(ngx_conf_t *cf, pf_pg_conf_t *conf, const char *channel,
    pf_pg_notify_pt handler, void *data)
{
    u_char            *sql;
    size_t             len;
    pf_pg_listener_t  *l;

    l = ngx_array_push(&conf->listeners);
    if (l == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(channel);

    sql = ngx_pnalloc(cf->pool, sizeof("LISTEN ") + len);
    if (sql == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_sprintf(sql, "LISTEN %s%Z", channel);

    l->sql = (const char *) sql;
    l->channel = channel;
    l->handler = handler;
    l->data = data;

    return NGX_OK;
}


static char *
pf_pg_conf_password(ngx_conf_t *cf, ngx_str_t *name, ngx_str_t *password)
{
    if (pf_conf_read_file(cf, "payflow_db", name, 1024, password)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    while (password->len && (password->data[password->len - 1] == '\n'
                             || password->data[password->len - 1] == '\r'))
    {
        password->data[--password->len] = '\0';
    }

    if (password->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_db: password file \"%V\" is empty", name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * Builds "hostaddr" for a comma-separated "host" list: addresses are kept,
 * socket directories get an empty entry, names are resolved here, in the
 * master process, like nginx resolves upstream servers at configuration.
 */

static char *
pf_pg_conf_hostaddr(ngx_conf_t *cf, const char *host, ngx_str_t *hostaddr)
{
    u_char      *p, *last, *start, *end;
    size_t       len;
    ngx_url_t    u;
    ngx_uint_t   names;

    len = ngx_strlen(host);

    p = ngx_pnalloc(cf->pool, (len + 1) * (NGX_SOCKADDR_STRLEN + 1));
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    hostaddr->data = p;
    names = 0;

    start = (u_char *) host;
    last = start + len;

    while (start <= last) {
        end = ngx_strlchr(start, last, ',');
        if (end == NULL) {
            end = last;
        }

        if (start != (u_char *) host) {
            *p++ = ',';
        }

        if (end > start && *start != '/' && *start != '@') {

            ngx_memzero(&u, sizeof(ngx_url_t));

            u.host.data = start;
            u.host.len = end - start;

            if (*start == '[' || ngx_strlchr(start, end, ':') != NULL) {
                /* an IPv6 literal needs no resolving */
                p = ngx_cpymem(p, start, end - start);

            } else if (ngx_inet_addr(start, end - start) != INADDR_NONE) {
                p = ngx_cpymem(p, start, end - start);

            } else {
                if (ngx_inet_resolve_host(cf->pool, &u) != NGX_OK
                    || u.naddrs == 0)
                {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "payflow_db: host \"%V\" in the "
                                       "connection string could not be "
                                       "resolved", &u.host);
                    return NGX_CONF_ERROR;
                }

                p += ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen,
                                   p, NGX_SOCKADDR_STRLEN, 0);
                names++;
            }
        }

        start = end + 1;
    }

    *p = '\0';
    hostaddr->len = p - hostaddr->data;

    if (names == 0) {
        /* nothing to resolve: leave libpq's own handling untouched */
        hostaddr->len = 0;
    }

    return NGX_CONF_OK;
}


static char *
pf_pg_strdup(ngx_pool_t *pool, const char *s)
{
    u_char  *p;
    size_t   len;

    len = ngx_strlen(s);

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, s, len + 1);

    return (char *) p;
}


pf_pg_pool_t *
pf_pg_pool_create(ngx_cycle_t *cycle, pf_pg_conf_t *conf,
    pf_pg_metrics_t *metrics)
{
    ngx_uint_t     i;
    pf_pg_conn_t  *conn;
    pf_pg_pool_t  *pool;

    pool = ngx_pcalloc(cycle->pool, sizeof(pf_pg_pool_t));
    if (pool == NULL) {
        return NULL;
    }

    pool->conns = ngx_pcalloc(cycle->pool, conf->size * sizeof(pf_pg_conn_t));
    if (pool->conns == NULL) {
        return NULL;
    }

    pool->conf = conf;
    pool->log = cycle->log;
    pool->metrics = metrics;
    pool->slot = ngx_min(ngx_worker, PF_PG_MAX_WORKERS - 1);

    if (metrics) {
        metrics->size[pool->slot] = conf->size;
        metrics->connected[pool->slot] = 0;
        metrics->in_use[pool->slot] = 0;
        metrics->waiting[pool->slot] = 0;
    }

    ngx_queue_init(&pool->idle);
    ngx_queue_init(&pool->waiting);

    pool->gather.handler = pf_pg_gather_handler;
    pool->gather.data = pool;
    pool->gather.log = pool->log;
    pool->gather.cancelable = 1;

    (void) ngx_sprintf(pool->statement_timeout, "%M%Z", conf->query_timeout);

    for (i = 0; i < conf->size; i++) {
        conn = &pool->conns[i];

        conn->pool = pool;
        conn->timer.handler = pf_pg_timer_handler;
        conn->timer.data = conn;
        conn->timer.log = pool->log;

        pf_pg_conn_connect(conn);
    }

    return pool;
}


void
pf_pg_pool_destroy(pf_pg_pool_t *pool)
{
    ngx_uint_t      i;
    ngx_queue_t    *qu;
    pf_pg_conn_t   *conn;
    pf_pg_query_t  *q, *done[PF_PG_GROUP_MAX];

    while (!ngx_queue_empty(&pool->waiting)) {
        qu = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qu, pf_pg_query_t, queue);

        ngx_queue_remove(qu);
        q->queued = 0;

        if (q->wait.timer_set) {
            ngx_del_timer(&q->wait);
        }
    }

    pool->nwaiting = 0;

    if (pool->gather.timer_set) {
        ngx_del_timer(&pool->gather);
    }

    if (pool->gather.posted) {
        ngx_delete_posted_event(&pool->gather);
    }

    for (i = 0; i < pool->conf->size; i++) {
        conn = &pool->conns[i];

        (void) pf_pg_conn_detach(conn, done);

        pf_pg_conn_close(conn);
    }
}


void
pf_pg_pool_stats(pf_pg_pool_t *pool, pf_pg_pool_stats_t *stats)
{
    stats->size = pool->conf->size;
    stats->connected = pool->nconnected;
    stats->busy = pool->nbusy;
    stats->waiting = pool->nwaiting;
}


pf_pg_query_t *
pf_pg_query_create(ngx_pool_t *pool, pf_pg_pool_t *pg, ngx_uint_t nstmts)
{
    pf_pg_query_t       *q;
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, sizeof(pf_pg_query_t));
    if (cln == NULL) {
        return NULL;
    }

    q = cln->data;
    ngx_memzero(q, sizeof(pf_pg_query_t));

    q->stmts = ngx_pcalloc(pool, nstmts * sizeof(pf_pg_stmt_t));
    q->results = ngx_pcalloc(pool, nstmts * sizeof(PGresult *));
    if (q->stmts == NULL || q->results == NULL) {
        return NULL;
    }

    q->pool = pg;
    q->nstmts = nstmts;
    q->log = pg->log;

    cln->handler = pf_pg_query_cleanup;

    return q;
}


/*
 * NGX_OK: the handler will be called later, never before this returns.
 * NGX_DECLINED: the query was not started; q->status tells why.
 */

ngx_int_t
pf_pg_query_run(pf_pg_query_t *q)
{
    ngx_queue_t   *qu;
    pf_pg_conn_t  *conn;
    pf_pg_pool_t  *pool;

    pool = q->pool;

    q->status = PF_PG_OK;
    q->start = ngx_current_msec;

    /*
     * Under load, a query of a group waits a moment for others to share
     * a free connection's transaction (group_wait): most of a group's
     * answers bring their clients' next requests back within it, and
     * each of those would otherwise take a connection alone, at several
     * times the cost per payment of a shared one.
     */

    if (q->group && !q->alone && pool->nbusy
        && pool->conf->group_wait != NGX_CONF_UNSET_MSEC)
    {
        goto wait;
    }

    while (!ngx_queue_empty(&pool->idle)) {
        qu = ngx_queue_head(&pool->idle);
        conn = ngx_queue_data(qu, pf_pg_conn_t, queue);

        ngx_queue_remove(qu);

        if (pf_pg_conn_send(conn, q) == NGX_OK) {
            return NGX_OK;
        }

        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
    }

wait:

    if (pool->nlive == 0) {
        q->status = PF_PG_UNAVAILABLE;
        pf_pg_count(pool, q);
        return NGX_DECLINED;
    }

    if (pool->nwaiting >= pool->conf->queue) {
        q->status = PF_PG_BUSY;
        pf_pg_count(pool, q);
        return NGX_DECLINED;
    }

    ngx_queue_insert_tail(&pool->waiting, &q->queue);
    q->queued = 1;
    pool->nwaiting++;
    pf_pg_gauges(pool);

    q->wait.handler = pf_pg_wait_handler;
    q->wait.data = q;
    q->wait.log = q->log;

    ngx_add_timer(&q->wait, pool->conf->queue_timeout);

    if (!ngx_queue_empty(&pool->idle)) {
        /* a free connection takes the queue when the moment is over */

        if (pool->conf->group_wait == 0) {
            if (!pool->gather.posted) {
                ngx_post_event(&pool->gather, &ngx_posted_events);
            }

        } else if (!pool->gather.timer_set) {
            ngx_add_timer(&pool->gather, pool->conf->group_wait);
        }
    }

    return NGX_OK;
}


/* group_wait is over: the free connections take what waits */

static void
pf_pg_gather_handler(ngx_event_t *ev)
{
    ngx_queue_t   *qu;
    pf_pg_conn_t  *conn;
    pf_pg_pool_t  *pool;

    pool = ev->data;

    while (!ngx_queue_empty(&pool->waiting)
           && !ngx_queue_empty(&pool->idle))
    {
        qu = ngx_queue_head(&pool->idle);
        conn = ngx_queue_data(qu, pf_pg_conn_t, queue);

        ngx_queue_remove(qu);

        pf_pg_conn_release(conn);
    }
}


const char *
pf_pg_query_sqlstate(pf_pg_query_t *q)
{
    if (q->status != PF_PG_SQL_ERROR || q->results[q->failed] == NULL) {
        return NULL;
    }

    return PQresultErrorField(q->results[q->failed], PG_DIAG_SQLSTATE);
}


const char *
pf_pg_status_text(pf_pg_status_e status)
{
    switch (status) {
    case PF_PG_OK:
        return "ok";
    case PF_PG_SQL_ERROR:
        return "statement failed";
    case PF_PG_UNAVAILABLE:
        return "database unavailable";
    case PF_PG_BUSY:
        return "all database connections busy";
    default:
        return "database query timed out";
    }
}


static void
pf_pg_query_cleanup(void *data)
{
    pf_pg_query_t *q = data;

    if (q->queued) {
        ngx_queue_remove(&q->queue);
        q->queued = 0;
        q->pool->nwaiting--;
        pf_pg_gauges(q->pool);
    }

    if (q->wait.timer_set) {
        ngx_del_timer(&q->wait);
    }

    if (q->conn) {
        /* the connection drains the results and is reused */

        if (q->conn->nmembers) {
            q->conn->members[q->member] = NULL;
        }

        if (q->conn->query == q) {
            q->conn->query = NULL;
        }

        q->conn = NULL;
    }

    pf_pg_query_clear(q);
}


static void
pf_pg_query_clear(pf_pg_query_t *q)
{
    ngx_uint_t  i;

    for (i = 0; i < q->nstmts; i++) {
        if (q->results[i]) {
            PQclear(q->results[i]);
            q->results[i] = NULL;
        }
    }
}


static void
pf_pg_conn_connect(pf_pg_conn_t *conn)
{
    pf_pg_pool_t  *pool;

    pool = conn->pool;

    conn->pg = PQconnectStartParams(pool->conf->keywords,
                                    pool->conf->values, 0);
    if (conn->pg == NULL) {
        ngx_log_error(NGX_LOG_ALERT, pool->log, 0,
                      "payflow pg: PQconnectStartParams() failed");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }

    (void) PQsetNoticeProcessor(conn->pg, pf_pg_notice_processor, conn);

    conn->state = PF_PG_CONN_CONNECTING;
    conn->poll = PGRES_POLLING_WRITING;
    pool->nlive++;

    if (PQstatus(conn->pg) == CONNECTION_BAD) {
        pf_pg_conn_log(conn, conn->backoff ? NGX_LOG_INFO : NGX_LOG_ERR,
                       "connect failed");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }

    if (pf_pg_conn_watch(conn) != NGX_OK) {
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }

    conn->timer.cancelable = 1;
    ngx_add_timer(&conn->timer, pool->conf->connect_timeout);
}


static void
pf_pg_conn_poll(pf_pg_conn_t *conn)
{
    conn->poll = PQconnectPoll(conn->pg);

    switch (conn->poll) {

    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:

        /* libpq may have moved on to another socket (next address) */

        if (pf_pg_conn_watch(conn) != NGX_OK) {
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        }

        return;

    case PGRES_POLLING_OK:

        if (PQsetnonblocking(conn->pg, 1) != 0
            || PQenterPipelineMode(conn->pg) != 1)
        {
            pf_pg_conn_log(conn, NGX_LOG_ERR, "connection setup failed");
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
            return;
        }

        if (conn->timer.timer_set) {
            ngx_del_timer(&conn->timer);
        }

        conn->state = PF_PG_CONN_SETUP;

        if (pf_pg_conn_watch(conn) != NGX_OK) {
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
            return;
        }

        pf_pg_conn_setup(conn);
        return;

    default:
        pf_pg_conn_log(conn, conn->backoff ? NGX_LOG_INFO : NGX_LOG_ERR,
                       "connect failed");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }
}


/* prepares the registered statements and sets statement_timeout */

static void
pf_pg_conn_setup(pf_pg_conn_t *conn)
{
    ngx_uint_t          i;
    const char         *params[1];
    pf_pg_conf_t       *conf;
    pf_pg_listener_t   *l;
    pf_pg_statement_t  *st;

    conf = conn->pool->conf;
    st = conf->statements.elts;

    for (i = 0; i < conf->statements.nelts; i++) {
        if (!PQsendPrepare(conn->pg, st[i].name, st[i].sql,
                           (int) st[i].nparams, NULL))
        {
            goto failed;
        }
    }

    l = conf->listeners.elts;

    for (i = 0; i < conf->listeners.nelts; i++) {
        if (!PQsendQueryParams(conn->pg, l[i].sql, 0, NULL, NULL, NULL,
                               NULL, 0))
        {
            goto failed;
        }
    }

    params[0] = (const char *) conn->pool->statement_timeout;

    if (!PQsendQueryParams(conn->pg,
                           "SELECT pg_catalog.set_config("
                           "'statement_timeout', $1, false)",
                           1, NULL, params, NULL, NULL, 0)
        || !PQpipelineSync(conn->pg))
    {
        goto failed;
    }

    conn->index = 0;
    conn->nstmts = conf->statements.nelts + conf->listeners.nelts + 1;
    conn->syncs = 1;
    conn->setup_failed = 0;

    conn->timer.cancelable = 1;
    ngx_add_timer(&conn->timer, conf->query_timeout);

    pf_pg_conn_flush(conn);

    return;

failed:

    pf_pg_conn_log(conn, NGX_LOG_ERR, "sending setup failed");
    pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
}


/* NGX_ERROR leaves the query unattached; the caller closes the connection */

static ngx_int_t
pf_pg_conn_send(pf_pg_conn_t *conn, pf_pg_query_t *q)
{
    ngx_uint_t  i;

    for (i = 0; i < q->nstmts; i++) {
        if (pf_pg_conn_send_stmt(conn, &q->stmts[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (!PQpipelineSync(conn->pg) || PQflush(conn->pg) == -1) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "sending query failed");
        return NGX_ERROR;
    }

    conn->query = q;
    conn->nmembers = 0;
    q->conn = conn;
    q->member = 0;

    pf_pg_conn_busy(conn, q->nstmts);

    return NGX_OK;
}


/*
 * conn->members[0 .. nmembers - 1] in one transaction: the first one's
 * BEGIN, each one's statements, the first one's COMMIT.
 */

static ngx_int_t
pf_pg_conn_send_group(pf_pg_conn_t *conn)
{
    ngx_uint_t      i, j, n;
    pf_pg_query_t  *q, *first;

    first = conn->members[0];

    if (first->merge) {
        return pf_pg_conn_send_merged(conn);
    }

    if (pf_pg_conn_send_stmt(conn, &first->stmts[0]) != NGX_OK) {
        return NGX_ERROR;
    }

    n = 1;

    for (i = 0; i < conn->nmembers; i++) {
        q = conn->members[i];
        conn->from[i] = n;

        for (j = 1; j < q->nstmts - 1; j++) {
            if (pf_pg_conn_send_stmt(conn, &q->stmts[j]) != NGX_OK) {
                return NGX_ERROR;
            }

            n++;
        }
    }

    conn->from[i] = n;

    if (pf_pg_conn_send_stmt(conn, &first->stmts[first->nstmts - 1])
        != NGX_OK
        || !PQpipelineSync(conn->pg) || PQflush(conn->pg) == -1)
    {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "sending query failed");
        return NGX_ERROR;
    }

    pf_pg_conn_group_sent(conn, 0, n + 1);

    return NGX_OK;
}


/*
 * conn->members at once, as their group's merge statement (pf_pg.h): one
 * statement, its own transaction, its parameter the members' parameters
 * as JSON.
 */

static ngx_int_t
pf_pg_conn_send_merged(pf_pg_conn_t *conn)
{
    int             ok;
    u_char         *param;
    ngx_str_t       json;
    ngx_uint_t      i, j, n;
    ngx_pool_t     *pool;
    pf_pg_stmt_t   *s;
    pf_pg_query_t  *q;
    pf_json_out_t   out;

    pool = ngx_create_pool(4096, conn->pool->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    ok = 0;

    if (pf_json_out_init(&out, pool, 4096) != NGX_OK) {
        goto done;
    }

    pf_json_out_open(&out, '[');

    for (i = 0; i < conn->nmembers; i++) {
        q = conn->members[i];

        pf_json_out_open(&out, '[');

        for (j = 1; j < q->nstmts - 1; j++) {
            s = &q->stmts[j];

            for (n = 0; n < (ngx_uint_t) s->nparams; n++) {
                if (s->values[n]) {
                    pf_json_out_cstr(&out, s->values[n]);

                } else {
                    pf_json_out_null(&out);
                }
            }
        }

        pf_json_out_close(&out, ']');
    }

    pf_json_out_close(&out, ']');

    if (pf_json_out_result(&out, &json) != NGX_OK) {
        goto done;
    }

    /* libpq reads a text parameter to its NUL, and copies it */

    param = ngx_pnalloc(pool, json.len + 1);
    if (param == NULL) {
        goto done;
    }

    *ngx_cpymem(param, json.data, json.len) = '\0';

    ok = PQsendQueryPrepared(conn->pg, conn->members[0]->merge->name, 1,
                             (const char **) &param, NULL, NULL, 0);

done:

    ngx_destroy_pool(pool);

    if (!ok || !PQpipelineSync(conn->pg) || PQflush(conn->pg) == -1) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "sending query failed");
        return NGX_ERROR;
    }

    pf_pg_conn_group_sent(conn, 1, 1);

    return NGX_OK;
}


/* a group's pipeline of nstmts statements is out: the connection is its */

static void
pf_pg_conn_group_sent(pf_pg_conn_t *conn, ngx_uint_t merged,
    ngx_uint_t nstmts)
{
    ngx_uint_t        i;
    pf_pg_metrics_t  *metrics;

    conn->query = conn->members[0];
    conn->group_failed = 0;
    conn->merged = merged;

    for (i = 0; i < conn->nmembers; i++) {
        conn->members[i]->conn = conn;
        conn->members[i]->member = i;
    }

    metrics = conn->pool->metrics;

    if (metrics) {
        (void) ngx_atomic_fetch_add(&metrics->grouped, 1);
        (void) ngx_atomic_fetch_add(&metrics->group_members,
                                    conn->nmembers);

        if (merged) {
            (void) ngx_atomic_fetch_add(&metrics->group_merged, 1);
        }
    }

    pf_pg_conn_busy(conn, nstmts);
}


static ngx_int_t
pf_pg_conn_send_stmt(pf_pg_conn_t *conn, pf_pg_stmt_t *s)
{
    int  ok;

    if (s->statement) {
        ok = PQsendQueryPrepared(conn->pg, s->statement->name, s->nparams,
                                 s->values, s->lengths, NULL, 0);

    } else {
        ok = PQsendQueryParams(conn->pg, s->sql, s->nparams, NULL,
                               s->values, s->lengths, NULL, 0);
    }

    if (!ok) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "sending query failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
pf_pg_conn_busy(pf_pg_conn_t *conn, ngx_uint_t nstmts)
{
    pf_pg_pool_t  *pool;

    pool = conn->pool;

    conn->state = PF_PG_CONN_BUSY;
    conn->index = 0;
    conn->nstmts = nstmts;
    conn->syncs = 1;
    pool->nbusy++;
    pf_pg_gauges(pool);

    conn->timer.cancelable = 0;
    ngx_add_timer(&conn->timer, pool->conf->query_timeout);

    /* whatever PQflush() could not send goes out on the write event */
    pf_pg_conn_flush(conn);
}


/*
 * The connection forgets its queries, and they it; they are put in done
 * (PF_PG_GROUP_MAX places), their number returned.
 */

static ngx_uint_t
pf_pg_conn_detach(pf_pg_conn_t *conn, pf_pg_query_t **done)
{
    ngx_uint_t  i, n;

    n = 0;

    if (conn->nmembers) {
        for (i = 0; i < conn->nmembers; i++) {
            if (conn->members[i]) {
                conn->members[i]->conn = NULL;
                done[n++] = conn->members[i];
                conn->members[i] = NULL;
            }
        }

    } else if (conn->query) {
        conn->query->conn = NULL;
        done[n++] = conn->query;
    }

    conn->query = NULL;
    conn->nmembers = 0;
    conn->merged = 0;

    return n;
}


static void
pf_pg_conn_flush(pf_pg_conn_t *conn)
{
    int  rc;

    rc = PQflush(conn->pg);

    if (rc == -1) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "send failed");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }

    if (pf_pg_conn_events(conn, 1, rc == 1) != NGX_OK) {
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
    }
}


static void
pf_pg_conn_receive(pf_pg_conn_t *conn)
{
    SSL        *ssl;
    PGnotify   *notify;
    PGresult   *res;

    if (!PQconsumeInput(conn->pg)) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "connection lost");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }

    /* decrypted bytes OpenSSL holds back never make the socket readable */

    ssl = PQsslInUse(conn->pg) ? PQsslStruct(conn->pg, "OpenSSL") : NULL;

    while (ssl && SSL_pending(ssl) > 0) {
        if (!PQconsumeInput(conn->pg)) {
            pf_pg_conn_log(conn, NGX_LOG_ERR, "connection lost");
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
            return;
        }
    }

    while ((notify = PQnotifies(conn->pg)) != NULL) {
        pf_pg_notify(conn->pool, notify->relname, notify->extra);
        PQfreemem(notify);
    }

    while (conn->syncs) {

        if (PQisBusy(conn->pg) || PQstatus(conn->pg) == CONNECTION_BAD) {
            break;
        }

        res = PQgetResult(conn->pg);

        if (res == NULL) {
            /* end of one statement's results */

            if (++conn->index > conn->nstmts) {
                ngx_log_error(NGX_LOG_ALERT, conn->pool->log, 0,
                              "payflow pg: unexpected end of results");
                pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
                return;
            }

            continue;
        }

        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            conn->syncs--;
            continue;
        }

        pf_pg_conn_result(conn, res);
    }

    if (PQstatus(conn->pg) == CONNECTION_BAD) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "connection lost");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;
    }

    if (conn->syncs == 0 && conn->state != PF_PG_CONN_IDLE) {
        pf_pg_conn_complete(conn);
    }
}


static void
pf_pg_conn_result(pf_pg_conn_t *conn, PGresult *res)
{
    ngx_uint_t       ok, i, m;
    pf_pg_query_t   *q;
    ExecStatusType   st;

    st = PQresultStatus(res);
    ok = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);

    if (conn->state == PF_PG_CONN_SETUP) {
        if (!ok && st != PGRES_PIPELINE_ABORTED) {
            ngx_log_error(NGX_LOG_ERR, conn->pool->log, 0,
                          "payflow pg: preparing statements failed: %s",
                          PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
            conn->setup_failed = 1;
        }

        PQclear(res);
        return;
    }

    q = conn->query;
    i = conn->index;

    if (conn->merged) {
        if (ok) {
            pf_pg_group_split(conn, res);

        } else {
            conn->group_failed = 1;

            ngx_log_error(NGX_LOG_INFO, conn->pool->log, 0,
                          "payflow pg: a group's merged statement failed: "
                          "%s",
                          PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
        }

        PQclear(res);
        return;
    }

    if (conn->nmembers) {
        if (!ok) {
            conn->group_failed = 1;
        }

        /* BEGIN and COMMIT are the first member's */

        q = NULL;

        if (i == 0 || i == conn->nstmts - 1) {
            q = conn->members[0];

            if (q && i) {
                i = q->nstmts - 1;
            }

        } else {
            for (m = 0; m < conn->nmembers; m++) {
                if (i < conn->from[m + 1]) {
                    q = conn->members[m];
                    i = i - conn->from[m] + 1;
                    break;
                }
            }
        }
    }

    if (q && i < q->nstmts && q->results[i] == NULL) {
        q->results[i] = res;

        if (!ok && q->status == PF_PG_OK) {
            q->status = PF_PG_SQL_ERROR;
            q->failed = i;
        }

        return;
    }

    if (!ok && st != PGRES_PIPELINE_ABORTED) {
        ngx_log_error(NGX_LOG_INFO, conn->pool->log, 0,
                      "payflow pg: statement of an abandoned query "
                      "failed: %s",
                      PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
    }

    PQclear(res);
}


static void
pf_pg_conn_complete(pf_pg_conn_t *conn)
{
    const char     *rollback;
    ngx_uint_t      i, n;
    pf_pg_pool_t   *pool;
    pf_pg_query_t  *q, *done[PF_PG_GROUP_MAX];

    pool = conn->pool;

    if (conn->timer.timer_set) {
        ngx_del_timer(&conn->timer);
    }

    if (conn->state == PF_PG_CONN_SETUP) {
        if (conn->setup_failed) {
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
            return;
        }

        if (conn->backoff) {
            ngx_log_error(NGX_LOG_NOTICE, pool->log, 0,
                          "payflow pg: connection restored");

            /* what was said while it was down was not heard */
            pf_pg_notify(pool, NULL, NULL);

            if (pool->metrics) {
                (void) ngx_atomic_fetch_add(&pool->metrics->reconnects, 1);
            }
        }

        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                       "payflow pg: connected, fd:%d", conn->c->fd);

        conn->backoff = 0;
        pool->nconnected++;
        pf_pg_gauges(pool);
        pf_pg_conn_release(conn);
        return;
    }

    if (conn->nmembers && conn->group_failed) {
        /* each runs again alone, first in line, before anyone else */
        pf_pg_group_retry(conn);
    }

    n = pf_pg_conn_detach(conn, done);

    if (PQtransactionStatus(conn->pg) != PQTRANS_IDLE) {

        /* a failed or abandoned transaction never reaches the next user */

        rollback = "ROLLBACK";

        if (!PQsendQueryParams(conn->pg, rollback, 0, NULL, NULL, NULL,
                               NULL, 0)
            || !PQpipelineSync(conn->pg))
        {
            pf_pg_conn_log(conn, NGX_LOG_ERR, "sending rollback failed");
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);

        } else {
            conn->state = PF_PG_CONN_RESET;
            conn->index = 0;
            conn->nstmts = 1;
            conn->syncs = 1;

            conn->timer.cancelable = 0;
            ngx_add_timer(&conn->timer, pool->conf->query_timeout);

            pf_pg_conn_flush(conn);
        }

    } else {
        pf_pg_conn_release(conn);
    }

    for (i = 0; i < n; i++) {
        q = done[i];
        pf_pg_count(q->pool, q);
        q->handler(q);
    }
}


/*
 * The transaction the group shared failed: which member's statement did
 * it does not matter, as none of them is written.  Each goes back to the
 * head of the queue, in its order, to run alone.
 */

static void
pf_pg_group_retry(pf_pg_conn_t *conn)
{
    ngx_uint_t      i;
    pf_pg_pool_t   *pool;
    pf_pg_query_t  *q;

    pool = conn->pool;

    for (i = conn->nmembers; i-- > 0; /* void */) {
        q = conn->members[i];

        if (q == NULL) {
            continue;
        }

        pf_pg_query_clear(q);

        q->status = PF_PG_OK;
        q->failed = 0;
        q->alone = 1;
        q->conn = NULL;
        conn->members[i] = NULL;

        pf_pg_requeue(pool, q);

        if (pool->metrics) {
            (void) ngx_atomic_fetch_add(&pool->metrics->group_retries, 1);
        }
    }

    conn->query = NULL;
    pf_pg_gauges(pool);

    ngx_log_error(NGX_LOG_INFO, pool->log, 0,
                  "payflow pg: a shared transaction failed, its queries "
                  "run again alone");
}


/*
 * The merge statement's rows, each to the member its first column names,
 * as a result of the member's own: the columns after the first.  A member
 * without a row gets an empty result.
 */

static void
pf_pg_group_split(pf_pg_conn_t *conn, PGresult *res)
{
    int             nf, nt, f, t, rows[PF_PG_GROUP_MAX];
    ngx_int_t       m;
    ngx_uint_t      i;
    PGresult       *part[PF_PG_GROUP_MAX], *r;
    PGresAttDesc   *attrs;
    pf_pg_query_t  *q;

    nf = PQnfields(res) - 1;
    nt = PQntuples(res);

    attrs = NULL;

    if (nf > 0) {
        attrs = ngx_alloc(nf * sizeof(PGresAttDesc), conn->pool->log);
        if (attrs == NULL) {
            nf = -1;
        }
    }

    for (f = 0; f < nf; f++) {
        attrs[f].name = PQfname(res, f + 1);
        attrs[f].tableid = PQftable(res, f + 1);
        attrs[f].columnid = PQftablecol(res, f + 1);
        attrs[f].format = PQfformat(res, f + 1);
        attrs[f].typid = PQftype(res, f + 1);
        attrs[f].typlen = PQfsize(res, f + 1);
        attrs[f].atttypmod = PQfmod(res, f + 1);
    }

    for (i = 0; i < conn->nmembers; i++) {
        part[i] = NULL;
        rows[i] = 0;

        if (conn->members[i] == NULL || nf < 0) {
            continue;
        }

        r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);

        if (r && !PQsetResultAttrs(r, nf, attrs)) {
            PQclear(r);
            r = NULL;
        }

        part[i] = r;
    }

    for (t = 0; t < nt && nf >= 0; t++) {
        m = ngx_atoi((u_char *) PQgetvalue(res, t, 0),
                     PQgetlength(res, t, 0));

        if (m < 0 || (ngx_uint_t) m >= conn->nmembers || part[m] == NULL) {
            continue;
        }

        r = part[m];

        for (f = 0; f < nf; f++) {
            if (!PQsetvalue(r, rows[m], f,
                            PQgetisnull(res, t, f + 1)
                            ? NULL : PQgetvalue(res, t, f + 1),
                            PQgetlength(res, t, f + 1)))
            {
                PQclear(r);
                part[m] = NULL;
                break;
            }
        }

        if (part[m]) {
            rows[m]++;
        }
    }

    if (attrs) {
        ngx_free(attrs);
    }

    for (i = 0; i < conn->nmembers; i++) {
        q = conn->members[i];

        if (q == NULL) {
            continue;
        }

        if (part[i] == NULL) {
            /* written, but its answer is lost: as if the line broke */

            ngx_log_error(NGX_LOG_ERR, conn->pool->log, 0,
                          "payflow pg: a merged result could not be "
                          "split");

            q->status = PF_PG_UNAVAILABLE;
            continue;
        }

        if (q->results[q->nstmts - 2]) {
            PQclear(q->results[q->nstmts - 2]);
        }

        q->results[q->nstmts - 2] = part[i];
    }
}


/* q waits again, first in line */

static void
pf_pg_requeue(pf_pg_pool_t *pool, pf_pg_query_t *q)
{
    ngx_queue_insert_head(&pool->waiting, &q->queue);
    q->queued = 1;
    pool->nwaiting++;

    q->wait.handler = pf_pg_wait_handler;
    q->wait.data = q;
    q->wait.log = q->log;

    ngx_add_timer(&q->wait, pool->conf->queue_timeout);
}


/* the connection is free: give it the oldest waiting query, or park it */

static void
pf_pg_conn_release(pf_pg_conn_t *conn)
{
    ngx_uint_t      i, n;
    ngx_queue_t    *qu;
    pf_pg_pool_t   *pool;
    pf_pg_query_t  *q, *w;

    pool = conn->pool;

    if (conn->state == PF_PG_CONN_BUSY || conn->state == PF_PG_CONN_RESET) {
        pool->nbusy--;
    }

    conn->state = PF_PG_CONN_IDLE;

    pf_pg_gauges(pool);

    if (!ngx_queue_empty(&pool->waiting)) {
        qu = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qu, pf_pg_query_t, queue);

        n = pf_pg_conn_gather(conn, q);

        /*
         * Out of the queue before they are sent: a send that fails at
         * its flush answers them at once, and their requests may be gone
         * by the time it returns.
         */

        for (i = 0; i < n; i++) {
            w = (n > 1) ? conn->members[i] : q;

            ngx_queue_remove(&w->queue);
            w->queued = 0;
            pool->nwaiting--;

            if (w->wait.timer_set) {
                ngx_del_timer(&w->wait);
            }
        }

        pf_pg_gauges(pool);

        if ((n > 1 ? pf_pg_conn_send_group(conn) : pf_pg_conn_send(conn, q))
            != NGX_OK)
        {
            /* nothing was sent: the queries go back first in line */

            for (i = n; i-- > 0; /* void */) {
                pf_pg_requeue(pool, (n > 1) ? conn->members[i] : q);
            }

            conn->nmembers = 0;
            pf_pg_gauges(pool);
            pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        }

        if (ngx_queue_empty(&pool->waiting) && pool->gather.timer_set) {
            /* those group_wait held are on their way */
            ngx_del_timer(&pool->gather);
        }

        return;
    }

    /* LIFO: the most recently used connection is the warmest */
    ngx_queue_insert_head(&pool->idle, &conn->queue);
}


/*
 * The waiting queries of q's group that can share its transaction, q
 * first, in conn->members; their number (1: q alone, members unset).
 */

static ngx_uint_t
pf_pg_conn_gather(pf_pg_conn_t *conn, pf_pg_query_t *q)
{
    ngx_uint_t      n, scanned;
    ngx_queue_t    *qu;
    pf_pg_query_t  *w;

    conn->nmembers = 0;

    if (q->group == NULL || q->alone) {
        return 1;
    }

    conn->members[0] = q;
    n = 1;
    scanned = 0;

    for (qu = ngx_queue_next(&q->queue);
         qu != ngx_queue_sentinel(&conn->pool->waiting)
         && n < PF_PG_GROUP_MAX && scanned < PF_PG_GROUP_SCAN;
         qu = ngx_queue_next(qu))
    {
        scanned++;
        w = ngx_queue_data(qu, pf_pg_query_t, queue);

        if (w->group == q->group && w->merge == q->merge && !w->alone) {
            conn->members[n++] = w;
        }
    }

    if (n > 1) {
        conn->nmembers = n;
    }

    return n;
}


/*
 * Closes the connection, schedules a reconnect and tells the attached
 * query (and, when no connection is left, every waiting one) why.
 */

static void
pf_pg_conn_fail(pf_pg_conn_t *conn, pf_pg_status_e status)
{
    ngx_uint_t      i, n;
    ngx_msec_t      delay;
    pf_pg_pool_t   *pool;
    pf_pg_query_t  *q, *done[PF_PG_GROUP_MAX];

    pool = conn->pool;

    n = pf_pg_conn_detach(conn, done);

    pf_pg_conn_close(conn);

    conn->backoff = conn->backoff ? ngx_min(conn->backoff * 2,
                                            PF_PG_BACKOFF_MAX)
                                  : PF_PG_BACKOFF_MIN;

    /* jitter, so that workers do not reconnect in lockstep */
    delay = conn->backoff / 2
            + (ngx_msec_t) ngx_random() % (conn->backoff / 2);

    conn->timer.cancelable = 1;
    ngx_add_timer(&conn->timer, delay);

    if (pool->nlive == 0) {
        pf_pg_pool_fail_waiting(pool);
    }

    for (i = 0; i < n; i++) {
        q = done[i];
        q->status = status;
        pf_pg_count(q->pool, q);
        q->handler(q);
    }
}


static void
pf_pg_conn_close(pf_pg_conn_t *conn)
{
    pf_pg_pool_t  *pool;

    pool = conn->pool;

    switch (conn->state) {

    case PF_PG_CONN_IDLE:
        ngx_queue_remove(&conn->queue);
        pool->nconnected--;
        break;

    case PF_PG_CONN_BUSY:
    case PF_PG_CONN_RESET:
        pool->nbusy--;
        pool->nconnected--;
        break;

    default:
        break;
    }

    if (conn->state != PF_PG_CONN_CLOSED) {
        pool->nlive--;
    }

    conn->state = PF_PG_CONN_CLOSED;

    pf_pg_gauges(pool);
    conn->syncs = 0;

    if (conn->timer.timer_set) {
        ngx_del_timer(&conn->timer);
    }

    pf_pg_conn_unwatch(conn);

    if (conn->pg) {
        PQfinish(conn->pg);
        conn->pg = NULL;
    }
}


/*
 * Makes conn->c wrap libpq's current socket and watch what it needs:
 * during connect whatever PQconnectPoll() asked for, afterwards reads.
 * A socket libpq replaced may come back with the same number, so the
 * socket is identified by its inode, not by its descriptor.
 */

static ngx_int_t
pf_pg_conn_watch(pf_pg_conn_t *conn)
{
    int                fd;
    struct stat        st;
    ngx_uint_t         rd, wr;
    ngx_connection_t  *c;

    fd = PQsocket(conn->pg);

    if (fd == -1) {
        pf_pg_conn_log(conn, NGX_LOG_ERR, "no socket");
        return NGX_ERROR;
    }

    if (fstat(fd, &st) == -1) {
        ngx_log_error(NGX_LOG_ALERT, conn->pool->log, ngx_errno,
                      "payflow pg: fstat(%d) failed", fd);
        return NGX_ERROR;
    }

    if (conn->c && (conn->c->fd != fd || conn->ino != st.st_ino)) {
        pf_pg_conn_unwatch(conn);
    }

    if (conn->c == NULL) {
        c = ngx_get_connection(fd, conn->pool->log);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->data = conn;
        c->read->handler = pf_pg_read_handler;
        c->write->handler = pf_pg_write_handler;
        c->read->log = conn->pool->log;
        c->write->log = conn->pool->log;

        conn->c = c;
        conn->ino = st.st_ino;
    }

    if (conn->state == PF_PG_CONN_CONNECTING) {
        rd = (conn->poll == PGRES_POLLING_READING);
        wr = (conn->poll == PGRES_POLLING_WRITING);

    } else {
        rd = 1;
        wr = 0;
    }

    return pf_pg_conn_events(conn, rd, wr);
}


/* forgets the socket without a system call: libpq closes or closed it */

static void
pf_pg_conn_unwatch(pf_pg_conn_t *conn)
{
    ngx_connection_t  *c;

    c = conn->c;

    if (c == NULL) {
        return;
    }

    pf_event_release(c, 0);
    conn->c = NULL;
}


static ngx_int_t
pf_pg_conn_events(pf_pg_conn_t *conn, ngx_uint_t rd, ngx_uint_t wr)
{
    ngx_connection_t  *c;

    c = conn->c;

    if (rd && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!rd && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (wr && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!wr && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
pf_pg_read_handler(ngx_event_t *rev)
{
    ngx_connection_t  *c;
    pf_pg_conn_t      *conn;

    c = rev->data;
    conn = c->data;

    if (conn->state == PF_PG_CONN_CONNECTING) {
        if (conn->poll == PGRES_POLLING_READING) {
            pf_pg_conn_poll(conn);
        }

        return;
    }

    pf_pg_conn_receive(conn);
}


static void
pf_pg_write_handler(ngx_event_t *wev)
{
    ngx_connection_t  *c;
    pf_pg_conn_t      *conn;

    c = wev->data;
    conn = c->data;

    if (conn->state == PF_PG_CONN_CONNECTING) {
        if (conn->poll == PGRES_POLLING_WRITING) {
            pf_pg_conn_poll(conn);
        }

        return;
    }

    pf_pg_conn_flush(conn);
}


static void
pf_pg_timer_handler(ngx_event_t *ev)
{
    ngx_uint_t     level;
    pf_pg_conn_t  *conn;

    conn = ev->data;

    switch (conn->state) {

    case PF_PG_CONN_CLOSED:
        pf_pg_conn_connect(conn);
        return;

    case PF_PG_CONN_CONNECTING:
        level = conn->backoff ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, conn->pool->log, NGX_ETIMEDOUT,
                      "payflow pg: connect timed out");
        pf_pg_conn_fail(conn, PF_PG_UNAVAILABLE);
        return;

    default:
        ngx_log_error(NGX_LOG_ERR, conn->pool->log, NGX_ETIMEDOUT,
                      "payflow pg: query timed out after %M ms, "
                      "closing the connection",
                      conn->pool->conf->query_timeout);
        pf_pg_conn_fail(conn, PF_PG_TIMEOUT);
        return;
    }
}


static void
pf_pg_wait_handler(ngx_event_t *ev)
{
    pf_pg_query_t  *q;

    q = ev->data;

    ngx_queue_remove(&q->queue);
    q->queued = 0;
    q->pool->nwaiting--;
    pf_pg_gauges(q->pool);

    ngx_log_error(NGX_LOG_WARN, q->log, 0,
                  "payflow pg: no free connection within %M ms",
                  q->pool->conf->queue_timeout);

    q->status = PF_PG_BUSY;
    pf_pg_count(q->pool, q);
    q->handler(q);
}


static void
pf_pg_notify(pf_pg_pool_t *pool, const char *channel, const char *payload)
{
    ngx_uint_t         i;
    pf_pg_listener_t  *l;

    l = pool->conf->listeners.elts;

    for (i = 0; i < pool->conf->listeners.nelts; i++) {
        if (channel == NULL) {
            l[i].handler(l[i].data, NULL);

        } else if (ngx_strcmp(l[i].channel, channel) == 0) {
            l[i].handler(l[i].data, payload);
        }
    }
}


static void
pf_pg_pool_fail_waiting(pf_pg_pool_t *pool)
{
    ngx_queue_t    *qu;
    pf_pg_query_t  *q;

    while (!ngx_queue_empty(&pool->waiting)) {
        qu = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qu, pf_pg_query_t, queue);

        ngx_queue_remove(qu);
        q->queued = 0;
        pool->nwaiting--;
        pf_pg_gauges(pool);

        if (q->wait.timer_set) {
            ngx_del_timer(&q->wait);
        }

        q->status = PF_PG_UNAVAILABLE;
        pf_pg_count(q->pool, q);
        q->handler(q);
    }
}


static void
pf_pg_conn_log(pf_pg_conn_t *conn, ngx_uint_t level, const char *what)
{
    pf_pg_log(conn->pool->log, level, what,
              conn->pg ? PQerrorMessage(conn->pg) : "");
}


/* libpq would print server notices to stderr; they belong in the log */

static void
pf_pg_notice_processor(void *arg, const char *message)
{
    pf_pg_conn_t *conn = arg;

    pf_pg_log(conn->pool->log, NGX_LOG_NOTICE, "server", message);
}


static void
pf_pg_gauges(pf_pg_pool_t *pool)
{
    pf_pg_metrics_t  *m;

    m = pool->metrics;

    if (m) {
        m->connected[pool->slot] = pool->nconnected;
        m->in_use[pool->slot] = pool->nbusy;
        m->waiting[pool->slot] = pool->nwaiting;
    }
}


/* one query's outcome, and its latency when the server answered */

static void
pf_pg_count(pf_pg_pool_t *pool, pf_pg_query_t *q)
{
    ngx_uint_t        i;
    ngx_msec_t        ms;
    pf_pg_metrics_t  *m;

    m = pool->metrics;

    if (m == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&m->queries, 1);

    switch (q->status) {

    case PF_PG_OK:
    case PF_PG_SQL_ERROR:
        if (q->status == PF_PG_SQL_ERROR) {
            (void) ngx_atomic_fetch_add(&m->sql_errors, 1);
        }

        ms = ngx_current_msec - q->start;

        for (i = 0; i < PF_PG_LATENCY_BUCKETS; i++) {
            if (ms <= pf_pg_latency_bounds[i]) {
                break;
            }
        }

        (void) ngx_atomic_fetch_add(&m->latency[i], 1);
        (void) ngx_atomic_fetch_add(&m->latency_sum_ms, ms);
        break;

    case PF_PG_BUSY:
        (void) ngx_atomic_fetch_add(&m->busy_rejected, 1);
        break;

    case PF_PG_TIMEOUT:
        (void) ngx_atomic_fetch_add(&m->timeouts, 1);
        break;

    default:
        (void) ngx_atomic_fetch_add(&m->unavailable, 1);
    }
}


static void
pf_pg_log(ngx_log_t *log, ngx_uint_t level, const char *what,
    const char *msg)
{
    u_char  *p, *last, buf[512];

    if (log->log_level < level) {
        return;
    }

    /* libpq's messages span lines; a log line must not */

    p = buf;
    last = buf + sizeof(buf);

    for ( /* void */ ; *msg && p < last; msg++) {
        if (*msg == '\n' || *msg == '\r' || *msg == '\t') {
            if (p > buf && p[-1] != ' ') {
                *p++ = ' ';
            }

            continue;
        }

        *p++ = *msg;
    }

    while (p > buf && p[-1] == ' ') {
        p--;
    }

    ngx_log_error(level, log, 0, "payflow pg: %s: %*s", what, p - buf, buf);
}
