
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_PG_H_INCLUDED_
#define _PF_PG_H_INCLUDED_


#include "pf_common.h"

#include <libpq-fe.h>


typedef struct pf_pg_pool_s   pf_pg_pool_t;
typedef struct pf_pg_conn_s   pf_pg_conn_t;
typedef struct pf_pg_query_s  pf_pg_query_t;

typedef void (*pf_pg_handler_pt)(pf_pg_query_t *q);

/*
 * Called for each NOTIFY on a LISTENed channel, and with payload NULL when
 * a connection came back after a failure: notifications may have been
 * missed meanwhile.
 */
typedef void (*pf_pg_notify_pt)(void *data, const char *payload);


typedef enum {
    PF_PG_OK = 0,          /* every statement succeeded */
    PF_PG_SQL_ERROR,       /* the server refused a statement */
    PF_PG_UNAVAILABLE,     /* no usable connection, or it broke mid-query */
    PF_PG_BUSY,            /* wait queue full, or the wait timed out */
    PF_PG_TIMEOUT          /* the query ran past query_timeout */
} pf_pg_status_e;


typedef struct {
    const char              *name;      /* prepared statement name */
    const char              *sql;
    ngx_uint_t               nparams;
} pf_pg_statement_t;


typedef struct {
    const char              *sql;       /* "LISTEN <channel>" */
    const char              *channel;
    pf_pg_notify_pt          handler;
    void                    *data;
} pf_pg_listener_t;


typedef struct {
    const char             **keywords;  /* libpq connection parameters */
    const char             **values;
    ngx_uint_t               size;      /* connections per worker */
    ngx_uint_t               queue;     /* requests waiting, per worker */
    ngx_msec_t               queue_timeout;
    ngx_msec_t               query_timeout;
    ngx_msec_t               connect_timeout;

    /*
     * How long a query of a group that finds a free connection while
     * others are busy waits for more of its group to join it: 0 to the
     * end of the event loop's pass, NGX_CONF_UNSET_MSEC never
     */
    ngx_msec_t               group_wait;
    ngx_array_t              statements;    /* pf_pg_statement_t */
    ngx_array_t              listeners;     /* pf_pg_listener_t */
} pf_pg_conf_t;


/* one statement of a query: a prepared statement or constant SQL */

typedef struct {
    const pf_pg_statement_t *statement;
    const char              *sql;
    const char             **values;
    int                     *lengths;
    int                      nparams;
} pf_pg_stmt_t;


struct pf_pg_query_s {
    pf_pg_pool_t            *pool;
    pf_pg_conn_t            *conn;
    pf_pg_stmt_t            *stmts;
    PGresult               **results;
    ngx_uint_t               nstmts;
    pf_pg_status_e           status;
    ngx_uint_t               failed;    /* index of the refused statement */

    pf_pg_handler_pt         handler;
    void                    *data;
    ngx_log_t               *log;

    ngx_event_t              wait;      /* queue timeout */
    ngx_queue_t              queue;
    ngx_msec_t               start;

    /*
     * Non-NULL: the query is BEGIN, statements, COMMIT, and its statements
     * may share one transaction with other waiting queries of the same
     * group (group commit).  If that transaction fails, each runs again
     * alone.
     */
    const char              *group;
    ngx_uint_t               member;    /* its place in the transaction */

    /*
     * With a group, optionally: one statement that does the work of all
     * its members at once.  Its one parameter is a JSON array with, for
     * each member, the parameters of its statements between BEGIN and
     * COMMIT (strings; null for NULL), in one array.  Its rows begin with
     * the member's place in that array (from 0); each member's rows,
     * without that column, are its result of its last statement before
     * COMMIT, and its other results are NULL.  If it fails, each member
     * runs again alone, as it would have without it.
     */
    const pf_pg_statement_t *merge;

    unsigned                 queued:1;
    unsigned                 alone:1;   /* never grouped again */
};


typedef struct {
    ngx_uint_t               size;
    ngx_uint_t               connected;
    ngx_uint_t               busy;
    ngx_uint_t               waiting;
} pf_pg_pool_stats_t;


#define PF_PG_LATENCY_BUCKETS  10
#define PF_PG_MAX_WORKERS      64


/*
 * Counters and gauges the pool keeps in memory the caller provides
 * (shared memory, for metrics across workers).  Gauges are per worker
 * slot, so a restarted worker starts its own afresh.
 */

typedef struct {
    ngx_atomic_t             queries;
    ngx_atomic_t             grouped;   /* transactions of several queries */
    ngx_atomic_t             group_members;
    ngx_atomic_t             group_merged;  /* ... by one merged statement */
    ngx_atomic_t             group_retries;
    ngx_atomic_t             sql_errors;
    ngx_atomic_t             unavailable;
    ngx_atomic_t             busy_rejected;
    ngx_atomic_t             timeouts;
    ngx_atomic_t             reconnects;
    ngx_atomic_t             latency[PF_PG_LATENCY_BUCKETS + 1];
    ngx_atomic_t             latency_sum_ms;
    ngx_atomic_t             size[PF_PG_MAX_WORKERS];
    ngx_atomic_t             connected[PF_PG_MAX_WORKERS];
    ngx_atomic_t             in_use[PF_PG_MAX_WORKERS];
    ngx_atomic_t             waiting[PF_PG_MAX_WORKERS];
} pf_pg_metrics_t;


extern const ngx_msec_t  pf_pg_latency_bounds[PF_PG_LATENCY_BUCKETS];


char *pf_pg_conf_parse(ngx_conf_t *cf, pf_pg_conf_t *conf);
const pf_pg_statement_t *pf_pg_statement_add(pf_pg_conf_t *conf,
    const char *name, const char *sql, ngx_uint_t nparams);
ngx_int_t pf_pg_listen_add(ngx_conf_t *cf, pf_pg_conf_t *conf,
    const char *channel, pf_pg_notify_pt handler, void *data);

pf_pg_pool_t *pf_pg_pool_create(ngx_cycle_t *cycle, pf_pg_conf_t *conf,
    pf_pg_metrics_t *metrics);
void pf_pg_pool_destroy(pf_pg_pool_t *pool);
void pf_pg_pool_stats(pf_pg_pool_t *pool, pf_pg_pool_stats_t *stats);

pf_pg_query_t *pf_pg_query_create(ngx_pool_t *pool, pf_pg_pool_t *pg,
    ngx_uint_t nstmts);
ngx_int_t pf_pg_query_run(pf_pg_query_t *q);
const char *pf_pg_query_sqlstate(pf_pg_query_t *q);
const char *pf_pg_status_text(pf_pg_status_e status);


#endif /* _PF_PG_H_INCLUDED_ */
