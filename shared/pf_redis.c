
/*
 * Copyright (C) PayFlow
 *
 * A per-worker hiredis asynchronous context driven by nginx events.
 *
 * hiredis owns the socket: it is wrapped as an nginx connection, watched
 * level-triggered (hiredis reads at most one buffer per call) and released
 * with ngx_free_connection when hiredis lets it go.  A lost connection is
 * retried with backoff, from a timer.  Commands are records that outlive
 * the request that sent them: a request that goes away abandons its
 * record and hiredis's callback finds it empty.
 */


#include "pf_redis.h"
#include "pf_event.h"


#define PF_REDIS_BACKOFF_MIN  100
#define PF_REDIS_BACKOFF_MAX  2000


struct pf_redis_s {
    pf_redis_conf_t         *conf;
    ngx_log_t               *log;
    redisAsyncContext       *ac;
    ngx_connection_t        *c;
    ngx_event_t              timer;     /* connect timeout, reconnect */
    ngx_msec_t               backoff;
    ngx_queue_t              free;      /* spare command records */
    unsigned                 connected:1;
    unsigned                 exiting:1;
};


static void pf_redis_connect(pf_redis_t *rd);
static void pf_redis_on_connect(const redisAsyncContext *ac, int status);
static void pf_redis_on_disconnect(const redisAsyncContext *ac, int status);
static void pf_redis_lost(pf_redis_t *rd, const char *what, const char *err);
static void pf_redis_reply(redisAsyncContext *ac, void *r, void *privdata);
static void pf_redis_timer_handler(ngx_event_t *ev);
static void pf_redis_read_handler(ngx_event_t *rev);
static void pf_redis_write_handler(ngx_event_t *wev);
static ngx_int_t pf_redis_watch(pf_redis_t *rd);
static void pf_redis_add_read(void *privdata);
static void pf_redis_del_read(void *privdata);
static void pf_redis_add_write(void *privdata);
static void pf_redis_del_write(void *privdata);
static void pf_redis_cleanup(void *privdata);


/* "<host>:<port>", a name resolved now, in the master, like upstreams */

char *
pf_redis_conf_parse(ngx_conf_t *cf, ngx_str_t *addr, pf_redis_conf_t *conf)
{
    u_char     *p;
    ngx_url_t   u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *addr;
    u.default_port = 6379;
    u.no_resolve = 0;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid Redis address \"%V\"%s%s", addr,
                           u.err ? ": " : "", u.err ? u.err : "");
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->host.data = p;
    conf->host.len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen,
                                   p, NGX_SOCKADDR_STRLEN, 0);
    p[conf->host.len] = '\0';

    conf->port = ngx_inet_get_port(u.addrs[0].sockaddr);

    return NGX_CONF_OK;
}


pf_redis_t *
pf_redis_create(ngx_cycle_t *cycle, pf_redis_conf_t *conf)
{
    pf_redis_t  *rd;

    rd = ngx_pcalloc(cycle->pool, sizeof(pf_redis_t));
    if (rd == NULL) {
        return NULL;
    }

    rd->conf = conf;
    rd->log = cycle->log;

    ngx_queue_init(&rd->free);

    rd->timer.handler = pf_redis_timer_handler;
    rd->timer.data = rd;
    rd->timer.log = cycle->log;
    rd->timer.cancelable = 1;

    pf_redis_connect(rd);

    return rd;
}


void
pf_redis_destroy(pf_redis_t *rd)
{
    ngx_queue_t     *q;
    pf_redis_cmd_t  *cmd;

    rd->exiting = 1;

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (rd->ac) {
        /* pending callbacks run with NULL replies, then cleanup */
        redisAsyncFree(rd->ac);
        rd->ac = NULL;
    }

    while (!ngx_queue_empty(&rd->free)) {
        q = ngx_queue_head(&rd->free);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, pf_redis_cmd_t, queue);
        ngx_free(cmd);
    }
}


ngx_uint_t
pf_redis_connected(pf_redis_t *rd)
{
    return rd->connected;
}


/* NULL when not connected: the caller decides without Redis */

pf_redis_cmd_t *
pf_redis_send(pf_redis_t *rd, pf_redis_handler_pt handler, void *data,
    int argc, const char **argv, const size_t *argvlen)
{
    ngx_queue_t     *q;
    pf_redis_cmd_t  *cmd;

    if (!rd->connected) {
        return NULL;
    }

    if (!ngx_queue_empty(&rd->free)) {
        q = ngx_queue_head(&rd->free);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, pf_redis_cmd_t, queue);

    } else {
        cmd = ngx_alloc(sizeof(pf_redis_cmd_t), rd->log);
        if (cmd == NULL) {
            return NULL;
        }
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->redis = rd;

    if (redisAsyncCommandArgv(rd->ac, pf_redis_reply, cmd, argc, argv,
                              argvlen)
        != REDIS_OK)
    {
        ngx_queue_insert_head(&rd->free, &cmd->queue);
        return NULL;
    }

    return cmd;
}


void
pf_redis_abandon(pf_redis_cmd_t *cmd)
{
    cmd->handler = NULL;
    cmd->data = NULL;
}


static void
pf_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    pf_redis_cmd_t *cmd = privdata;

    void                 *data;
    pf_redis_t           *rd;
    pf_redis_handler_pt   handler;

    (void) ac;

    rd = cmd->redis;
    handler = cmd->handler;
    data = cmd->data;

    /* the record is free again before the handler, which may send more */
    cmd->handler = NULL;
    ngx_queue_insert_head(&rd->free, &cmd->queue);

    if (handler) {
        handler(data, r);
    }
}


static void
pf_redis_connect(pf_redis_t *rd)
{
    redisAsyncContext  *ac;

    ac = redisAsyncConnect((char *) rd->conf->host.data, rd->conf->port);

    if (ac == NULL || ac->err) {
        pf_redis_lost(rd, "connect failed",
                      ac ? ac->errstr : "out of memory");
        if (ac) {
            redisAsyncFree(ac);
        }

        return;
    }

    rd->ac = ac;

    ac->ev.data = rd;
    ac->ev.addRead = pf_redis_add_read;
    ac->ev.delRead = pf_redis_del_read;
    ac->ev.addWrite = pf_redis_add_write;
    ac->ev.delWrite = pf_redis_del_write;
    ac->ev.cleanup = pf_redis_cleanup;

    /* hooks first: setting the connect callback arms the write event */

    (void) redisAsyncSetDisconnectCallback(ac, pf_redis_on_disconnect);
    (void) redisAsyncSetConnectCallback(ac, pf_redis_on_connect);

    ngx_add_timer(&rd->timer, rd->conf->connect_timeout);
}


static void
pf_redis_on_connect(const redisAsyncContext *ac, int status)
{
    pf_redis_t  *rd;

    rd = ac->ev.data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns */
        rd->ac = NULL;
        pf_redis_lost(rd, "connect failed", ac->errstr);
        return;
    }

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (rd->backoff) {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "payflow redis: connection restored");
    }

    rd->backoff = 0;
    rd->connected = 1;

    if (rd->conf->connected) {
        rd->conf->connected(rd, rd->conf->data);
    }
}


static void
pf_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    pf_redis_t  *rd;

    rd = ac->ev.data;

    rd->ac = NULL;
    rd->connected = 0;

    if (rd->exiting) {
        return;
    }

    pf_redis_lost(rd, status == REDIS_OK ? "disconnected"
                                          : "connection lost",
                  status == REDIS_OK ? "" : ac->errstr);
}


/* logs once per outage at error level, then retries quietly */

static void
pf_redis_lost(pf_redis_t *rd, const char *what, const char *err)
{
    ngx_uint_t  level;
    ngx_msec_t  delay;

    rd->connected = 0;

    level = rd->backoff ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, rd->log, 0,
                  "payflow redis: %s %s:%d: %s", what, rd->conf->host.data,
                  (int) rd->conf->port, err);

    if (rd->exiting) {
        return;
    }

    rd->backoff = rd->backoff ? ngx_min(rd->backoff * 2, PF_REDIS_BACKOFF_MAX)
                              : PF_REDIS_BACKOFF_MIN;

    delay = rd->backoff / 2 + (ngx_msec_t) ngx_random() % (rd->backoff / 2);

    ngx_add_timer(&rd->timer, delay);
}


static void
pf_redis_timer_handler(ngx_event_t *ev)
{
    pf_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL) {
        pf_redis_connect(rd);
        return;
    }

    if (!rd->connected) {
        /* the connect did not complete in time */
        redisAsyncFree(rd->ac);
        rd->ac = NULL;
        pf_redis_lost(rd, "connect timed out", "");
    }
}


static void
pf_redis_read_handler(ngx_event_t *rev)
{
    ngx_connection_t  *c;
    pf_redis_t        *rd;

    c = rev->data;
    rd = c->data;

    if (rd->ac) {
        redisAsyncHandleRead(rd->ac);
    }
}


static void
pf_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t  *c;
    pf_redis_t        *rd;

    c = wev->data;
    rd = c->data;

    if (rd->ac) {
        redisAsyncHandleWrite(rd->ac);
    }
}


static ngx_int_t
pf_redis_watch(pf_redis_t *rd)
{
    ngx_connection_t  *c;

    if (rd->c) {
        return NGX_OK;
    }

    c = ngx_get_connection(rd->ac->c.fd, rd->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = rd;
    c->read->handler = pf_redis_read_handler;
    c->write->handler = pf_redis_write_handler;
    c->read->log = rd->log;
    c->write->log = rd->log;

    rd->c = c;

    return NGX_OK;
}


static void
pf_redis_add_read(void *privdata)
{
    pf_redis_t *rd = privdata;

    if (pf_redis_watch(rd) == NGX_OK && !rd->c->read->active) {
        (void) ngx_add_event(rd->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
pf_redis_del_read(void *privdata)
{
    pf_redis_t *rd = privdata;

    if (rd->c && rd->c->read->active) {
        (void) ngx_del_event(rd->c->read, NGX_READ_EVENT, 0);
    }
}


static void
pf_redis_add_write(void *privdata)
{
    pf_redis_t *rd = privdata;

    if (pf_redis_watch(rd) == NGX_OK && !rd->c->write->active) {
        (void) ngx_add_event(rd->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
pf_redis_del_write(void *privdata)
{
    pf_redis_t *rd = privdata;

    if (rd->c && rd->c->write->active) {
        (void) ngx_del_event(rd->c->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis closes the socket right after: forget it without a syscall */

static void
pf_redis_cleanup(void *privdata)
{
    pf_redis_t *rd = privdata;

    ngx_connection_t  *c;

    c = rd->c;

    if (c == NULL) {
        return;
    }

    pf_event_release(c, 0);
    rd->c = NULL;
}
