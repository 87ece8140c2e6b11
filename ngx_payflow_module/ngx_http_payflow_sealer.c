
/*
 * Copyright (C) PayFlow
 *
 * The ledger's sequencer: every payflow_ledger_seal_interval, each worker
 * of each node asks PostgreSQL to seal what is ready (sql/0018,
 * payflow_ledger_seal): entries written unsealed by payments, captures
 * and refunds get their place in their tenant's hash chain, in batches,
 * off the request path.  Each chain head is claimed with SKIP LOCKED, so
 * workers share the work and never wait on each other; one in flight per
 * worker at most.  The answer also says what is left unsealed and how old
 * it is, for the metrics (payflow_ledger_unsealed_entries,
 * payflow_ledger_seal_lag_seconds).
 */


#include "ngx_http_payflow_sealer.h"
#include "ngx_http_payflow_metrics.h"


/* entries per chain and call: a second of one busy tenant's payments */
#define NGX_HTTP_PAYFLOW_SEAL_BATCH  "5000"


typedef struct {
    ngx_event_t                     timer;
    ngx_http_payflow_main_conf_t   *pmcf;
    ngx_pool_t                     *pool;       /* of the call in flight */
    ngx_log_t                      *log;
} ngx_http_payflow_sealer_t;


static void ngx_http_payflow_sealer_run(ngx_event_t *ev);
static void ngx_http_payflow_sealer_done(pf_pg_query_t *q);
static void ngx_http_payflow_sealer_arm(void);


/* one per worker */
static ngx_http_payflow_sealer_t  ngx_http_payflow_sealer;


ngx_int_t
ngx_http_payflow_sealer_init(ngx_http_payflow_main_conf_t *pmcf)
{
    pmcf->st.ledger_seal = pf_pg_statement_add(pmcf->db,
        "payflow_ledger_seal",
        "SELECT sealed, unsealed, lag_seconds FROM payflow_ledger_seal("
        NGX_HTTP_PAYFLOW_SEAL_BATCH ")", 0);

    return pmcf->st.ledger_seal ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_payflow_sealer_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_sealer_t  *sealer;

    sealer = &ngx_http_payflow_sealer;

    ngx_memzero(sealer, sizeof(ngx_http_payflow_sealer_t));

    sealer->pmcf = pmcf;
    sealer->log = cycle->log;
    sealer->timer.handler = ngx_http_payflow_sealer_run;
    sealer->timer.data = sealer;
    sealer->timer.log = cycle->log;
    sealer->timer.cancelable = 1;

    ngx_http_payflow_sealer_arm();

    return NGX_OK;
}


void
ngx_http_payflow_sealer_stop(void)
{
    if (ngx_http_payflow_sealer.timer.timer_set) {
        ngx_del_timer(&ngx_http_payflow_sealer.timer);
    }

    if (ngx_http_payflow_sealer.pool) {
        /* the query's cleanup detaches it from its connection */
        ngx_destroy_pool(ngx_http_payflow_sealer.pool);
        ngx_http_payflow_sealer.pool = NULL;
    }
}


static void
ngx_http_payflow_sealer_arm(void)
{
    ngx_msec_t  every;

    /* up to half as long again, so workers and nodes drift apart */
    every = ngx_http_payflow_sealer.pmcf->seal_interval;

    ngx_add_timer(&ngx_http_payflow_sealer.timer,
                  every + (ngx_msec_t) ngx_random() % (every / 2 + 1));
}


static void
ngx_http_payflow_sealer_run(ngx_event_t *ev)
{
    pf_pg_query_t              *q;
    ngx_http_payflow_sealer_t  *sealer;

    sealer = ev->data;

    if (ngx_exiting || ngx_quit || sealer->pool) {
        goto again;
    }

    sealer->pool = ngx_create_pool(512, sealer->log);
    if (sealer->pool == NULL) {
        goto again;
    }

    q = pf_pg_query_create(sealer->pool, sealer->pmcf->pool, 1);
    if (q == NULL) {
        goto failed;
    }

    q->stmts[0].statement = sealer->pmcf->st.ledger_seal;
    q->handler = ngx_http_payflow_sealer_done;
    q->data = sealer;

    if (pf_pg_query_run(q) == NGX_OK) {
        goto again;
    }

failed:

    /* the database is away or busy: the next round will do */
    ngx_destroy_pool(sealer->pool);
    sealer->pool = NULL;

again:

    if (!ngx_exiting && !ngx_quit) {
        ngx_http_payflow_sealer_arm();
    }
}


static void
ngx_http_payflow_sealer_done(pf_pg_query_t *q)
{
    PGresult                   *res;
    ngx_pool_t                 *pool;
    ngx_http_payflow_sealer_t  *sealer;

    sealer = q->data;
    res = q->results[0];

    if (q->status == PF_PG_OK && PQntuples(res) == 1) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sealer->log, 0,
                       "payflow sealer: sealed %s entries",
                       PQgetvalue(res, 0, 0));

        ngx_http_payflow_metrics_ledger(sealer->pmcf,
            ngx_atoi((u_char *) PQgetvalue(res, 0, 1),
                     PQgetlength(res, 0, 1)),
            (ngx_msec_t) (strtod(PQgetvalue(res, 0, 2), NULL) * 1000));

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, sealer->log, 0,
                      "payflow sealer: failed: %s",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY));
    }

    pool = sealer->pool;
    sealer->pool = NULL;
    ngx_destroy_pool(pool);
}
