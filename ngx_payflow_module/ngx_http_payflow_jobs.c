
/*
 * Copyright (C) PayFlow
 *
 * Background work on a per-worker timer: purging expired idempotency keys
 * and completing keys left by requests that died.  Every worker of every
 * node runs it; the database hands out rows with SKIP LOCKED, so there is
 * no coordinator and nothing is done twice.  The timer is cancelable: a
 * worker shutting down does not wait for it.
 */


#include "ngx_http_payflow_jobs.h"


typedef struct {
    ngx_event_t                     timer;
    ngx_http_payflow_main_conf_t   *pmcf;
    ngx_pool_t                     *pool;       /* of the run in flight */
    ngx_log_t                      *log;
} ngx_http_payflow_jobs_t;


static void ngx_http_payflow_jobs_run(ngx_event_t *ev);
static void ngx_http_payflow_jobs_done(pf_pg_query_t *q);
static void ngx_http_payflow_jobs_arm(void);


/* one per worker */
static ngx_http_payflow_jobs_t  ngx_http_payflow_jobs;


ngx_int_t
ngx_http_payflow_jobs_init(ngx_http_payflow_main_conf_t *pmcf)
{
    pmcf->st.jobs = pf_pg_statement_add(pmcf->db, "payflow_jobs",
        "SELECT payflow_purge_idempotency_keys(1000), "
        "payflow_complete_idempotency_keys(100)", 0);

    return pmcf->st.jobs ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_payflow_jobs_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_jobs_t  *jobs;

    jobs = &ngx_http_payflow_jobs;

    ngx_memzero(jobs, sizeof(ngx_http_payflow_jobs_t));

    jobs->pmcf = pmcf;
    jobs->log = cycle->log;
    jobs->timer.handler = ngx_http_payflow_jobs_run;
    jobs->timer.data = jobs;
    jobs->timer.log = cycle->log;
    jobs->timer.cancelable = 1;

    ngx_http_payflow_jobs_arm();

    return NGX_OK;
}


void
ngx_http_payflow_jobs_stop(void)
{
    if (ngx_http_payflow_jobs.timer.timer_set) {
        ngx_del_timer(&ngx_http_payflow_jobs.timer);
    }

    if (ngx_http_payflow_jobs.pool) {
        /* the query's cleanup detaches it from its connection */
        ngx_destroy_pool(ngx_http_payflow_jobs.pool);
        ngx_http_payflow_jobs.pool = NULL;
    }
}


static void
ngx_http_payflow_jobs_arm(void)
{
    ngx_msec_t  every;

    /* up to half as long again, so workers and nodes drift apart */
    every = ngx_http_payflow_jobs.pmcf->jobs_interval;

    ngx_add_timer(&ngx_http_payflow_jobs.timer,
                  every + (ngx_msec_t) ngx_random() % (every / 2));
}


static void
ngx_http_payflow_jobs_run(ngx_event_t *ev)
{
    pf_pg_query_t            *q;
    ngx_http_payflow_jobs_t  *jobs;

    jobs = ev->data;

    if (ngx_exiting || ngx_quit || jobs->pool) {
        goto again;
    }

    jobs->pool = ngx_create_pool(1024, jobs->log);
    if (jobs->pool == NULL) {
        goto again;
    }

    q = pf_pg_query_create(jobs->pool, jobs->pmcf->pool, 1);
    if (q == NULL) {
        goto failed;
    }

    q->stmts[0].statement = jobs->pmcf->st.jobs;
    q->handler = ngx_http_payflow_jobs_done;
    q->data = jobs;

    if (pf_pg_query_run(q) == NGX_OK) {
        goto again;
    }

failed:

    /* the database is away or busy: the next round will do */
    ngx_destroy_pool(jobs->pool);
    jobs->pool = NULL;

again:

    if (!ngx_exiting && !ngx_quit) {
        ngx_http_payflow_jobs_arm();
    }
}


static void
ngx_http_payflow_jobs_done(pf_pg_query_t *q)
{
    PGresult                 *res;
    ngx_pool_t               *pool;
    ngx_http_payflow_jobs_t  *jobs;

    jobs = q->data;
    res = q->results[0];

    if (q->status == PF_PG_OK && PQntuples(res) == 1) {
        if (PQgetvalue(res, 0, 0)[0] != '0'
            || PQgetvalue(res, 0, 1)[0] != '0')
        {
            ngx_log_error(NGX_LOG_INFO, jobs->log, 0,
                          "payflow jobs: purged %s expired idempotency "
                          "keys, settled %s abandoned ones",
                          PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
        }

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, jobs->log, 0,
                      "payflow jobs: failed: %s",
                      PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
    }

    /* frees q too; nothing below may touch it */
    pool = jobs->pool;
    jobs->pool = NULL;
    ngx_destroy_pool(pool);
}
