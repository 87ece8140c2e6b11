
/*
 * Copyright (C) PayFlow
 *
 * Background work on a per-worker timer: purging expired idempotency keys,
 * completing keys left by requests that died, and reconciling payments
 * that a network provider left undecided (processing or requires_action
 * for longer than payflow_reconcile_after): each is verified at its
 * provider and moved to what the provider says, as the system.  Every
 * worker of every node runs it; the database hands out rows with SKIP
 * LOCKED, so there is no coordinator and nothing is done twice.  The timer
 * is cancelable: a worker shutting down does not wait for it.
 */


#include "ngx_http_payflow_jobs.h"
#include "ngx_http_payflow_risk.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_pii.h"
#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_metrics.h"
#include "ngx_http_payflow_accounts.h"


#define NGX_HTTP_PAYFLOW_RECONCILE_BATCH  "10"


typedef struct {
    ngx_event_t                     timer;
    ngx_http_payflow_main_conf_t   *pmcf;
    ngx_pool_t                     *pool;       /* of the run in flight */
    ngx_log_t                      *log;
    ngx_uint_t                      pending;    /* checks in flight */
} ngx_http_payflow_jobs_t;


/* one payment being verified */

typedef struct {
    ngx_http_payflow_jobs_t        *jobs;
    ngx_http_payflow_provider_t    *provider;
    ngx_http_payflow_operation_t    op;
    pf_curl_call_t                  call;
    const char                     *status;     /* when claimed */
    ngx_uint_t                      refund;     /* a refund's check */
} ngx_http_payflow_check_t;


/* a check waiting for the copy of its provider account's tenant */

typedef struct {
    ngx_http_payflow_account_wait_t  wait;      /* first */
    ngx_http_payflow_jobs_t         *jobs;
    PGresult                        *res;
    ngx_uint_t                       row;
    ngx_uint_t                       refund;
} ngx_http_payflow_jobs_wait_t;


static void ngx_http_payflow_jobs_run(ngx_event_t *ev);
static void ngx_http_payflow_jobs_done(pf_pg_query_t *q);
static void ngx_http_payflow_jobs_arm(void);
static void ngx_http_payflow_jobs_check(ngx_http_payflow_jobs_t *jobs,
    PGresult *res, ngx_uint_t row, ngx_uint_t again);
static void ngx_http_payflow_jobs_check_refund(ngx_http_payflow_jobs_t *jobs,
    PGresult *res, ngx_uint_t row, ngx_uint_t again);
static ngx_http_payflow_provider_t *ngx_http_payflow_jobs_provider(
    ngx_http_payflow_jobs_t *jobs, PGresult *res, ngx_uint_t row,
    ngx_uint_t refund, ngx_uint_t again);
static void ngx_http_payflow_jobs_woken(ngx_http_payflow_account_wait_t *w,
    ngx_int_t rc);
static ngx_int_t ngx_http_payflow_jobs_call(ngx_http_payflow_jobs_t *jobs,
    ngx_http_payflow_check_t *check);
static void ngx_http_payflow_jobs_checked(pf_curl_call_t *call);
static void ngx_http_payflow_jobs_refund_checked(
    ngx_http_payflow_check_t *check, ngx_http_payflow_provider_result_t *res);
static void ngx_http_payflow_jobs_applied(pf_pg_query_t *q);
static void ngx_http_payflow_jobs_finish(ngx_http_payflow_jobs_t *jobs);


/* one per worker */
static ngx_http_payflow_jobs_t  ngx_http_payflow_jobs;


#define NGX_HTTP_PAYFLOW_JOBS                                                 \
    "SELECT payflow_purge_idempotency_keys(1000), "                          \
    "payflow_complete_idempotency_keys(100), "                               \
    "payflow_webhook_retry(100)"


ngx_int_t
ngx_http_payflow_jobs_init(ngx_http_payflow_main_conf_t *pmcf)
{
    time_t         expiry;
    static u_char  jobs[256];

    /* with the risk engine on, reviews nobody decided in time expire */

    expiry = ngx_http_payflow_risk_review_expiry(pmcf);

    if (expiry) {
        *ngx_snprintf(jobs, sizeof(jobs) - 1,
                      NGX_HTTP_PAYFLOW_JOBS ", payflow_review_expire("
                      "'%T seconds'::interval, 100), "
                      "payflow_review_queue_depth(), "
                      "payflow_review_queue_age()", expiry) = '\0';

    } else {
        *ngx_snprintf(jobs, sizeof(jobs) - 1, NGX_HTTP_PAYFLOW_JOBS) = '\0';
    }

    pmcf->st.jobs = pf_pg_statement_add(pmcf->db, "payflow_jobs",
                                        (char *) jobs, 0);

    pmcf->st.transitions = pf_pg_statement_add(pmcf->db,
        "payflow_transitions",
        "SELECT type, source, n FROM payflow_transition_counts()", 0);

    pmcf->st.reconcile_claim = pf_pg_statement_add(pmcf->db,
        "payflow_reconcile_claim",
        "SELECT c.id, c.status, c.livemode, c.provider, "
        "c.provider_reference, c.amount, c.currency, c.capture_method, "
        "c.payment_method, c.description, c.return_url, c.email, c.age, "
        "k.tenant_id, k.pii, k.key FROM payflow_reconcile_claim("
        NGX_HTTP_PAYFLOW_RECONCILE_BATCH ", $1::interval) c "
        "LEFT JOIN LATERAL payflow_customer_secret(c.id) k ON true", 1);

    pmcf->st.reconcile_apply = pf_pg_statement_add(pmcf->db,
        "payflow_reconcile_apply",
        "SELECT payflow_reconcile_apply($1, $2, $3, $4, $5, $6)", 6);

    pmcf->st.reconcile_refunds = pf_pg_statement_add(pmcf->db,
        "payflow_reconcile_refunds",
        "SELECT id, payment_id, livemode, provider, payment_reference, "
        "refund_reference, amount, currency, reason "
        "FROM payflow_reconcile_refunds_claim("
        NGX_HTTP_PAYFLOW_RECONCILE_BATCH ", $1::interval)", 1);

    pmcf->st.reconcile_refund_apply = pf_pg_statement_add(pmcf->db,
        "payflow_reconcile_refund_apply",
        "SELECT payflow_reconcile_refund_apply($1, $2, $3, $4)", 4);

    return (pmcf->st.jobs && pmcf->st.transitions && pmcf->st.reconcile_claim
            && pmcf->st.reconcile_apply && pmcf->st.reconcile_refunds
            && pmcf->st.reconcile_refund_apply) ? NGX_OK : NGX_ERROR;
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
    u_char                   *p;
    const char              **values;
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

    q = pf_pg_query_create(jobs->pool, jobs->pmcf->pool,
                           jobs->pmcf->providers.nelts ? 5 : 3);
    if (q == NULL) {
        goto failed;
    }

    q->stmts[0].statement = jobs->pmcf->st.jobs;
    q->stmts[1].statement = jobs->pmcf->st.transitions;
    q->stmts[2].statement = jobs->pmcf->st.outbox_backlog;

    if (jobs->pmcf->providers.nelts) {
        p = ngx_pnalloc(jobs->pool, NGX_INT_T_LEN + sizeof(" ms"));
        values = ngx_palloc(jobs->pool, sizeof(char *));
        if (p == NULL || values == NULL) {
            goto failed;
        }

        *ngx_sprintf(p, "%M ms", jobs->pmcf->reconcile_after) = '\0';
        values[0] = (char *) p;

        q->stmts[3].statement = jobs->pmcf->st.reconcile_claim;
        q->stmts[3].nparams = 1;
        q->stmts[3].values = values;

        q->stmts[4].statement = jobs->pmcf->st.reconcile_refunds;
        q->stmts[4].nparams = 1;
        q->stmts[4].values = values;
    }
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
    ngx_uint_t                i;
    ngx_http_payflow_jobs_t  *jobs;

    jobs = q->data;
    res = q->results[0];

    if (q->status == PF_PG_OK && PQntuples(res) == 1) {
        if (PQnfields(res) == 6) {
            /* the review queue, with the risk engine on */
            ngx_http_payflow_risk_queue(jobs->pmcf,
                ngx_atoi((u_char *) PQgetvalue(res, 0, 4),
                         PQgetlength(res, 0, 4)),
                ngx_atoi((u_char *) PQgetvalue(res, 0, 5),
                         PQgetlength(res, 0, 5)));
        }

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
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY));
    }

    /* payments to verify: the pool lives until the last is settled */

    jobs->pending = 1;

    if (q->status == PF_PG_OK) {
        /* the payment transitions this worker took to count */
        res = q->results[1];

        for (i = 0; i < (ngx_uint_t) PQntuples(res); i++) {
            ngx_http_payflow_metrics_transitions(jobs->pmcf,
                PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                ngx_atoi((u_char *) PQgetvalue(res, i, 2),
                         PQgetlength(res, i, 2)));
        }

        /* the outbox's backlog, as this worker sees it now */
        res = q->results[2];

        if (PQntuples(res) == 1) {
            ngx_http_payflow_metrics_outbox(jobs->pmcf, -1,
                ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                         PQgetlength(res, 0, 0)),
                (ngx_msec_t) (strtod(PQgetvalue(res, 0, 1), NULL) * 1000));
        }
    }

    if (q->status == PF_PG_OK && q->nstmts == 5) {
        res = q->results[3];

        for (i = 0; i < (ngx_uint_t) PQntuples(res); i++) {
            ngx_http_payflow_jobs_check(jobs, res, i, 0);
        }

        res = q->results[4];

        for (i = 0; i < (ngx_uint_t) PQntuples(res); i++) {
            ngx_http_payflow_jobs_check_refund(jobs, res, i, 0);
        }
    }

    ngx_http_payflow_jobs_finish(jobs);
}


/* one check less in flight; the last frees the run (and q with it) */

static void
ngx_http_payflow_jobs_finish(ngx_http_payflow_jobs_t *jobs)
{
    ngx_pool_t  *pool;

    if (--jobs->pending) {
        return;
    }

    pool = jobs->pool;
    jobs->pool = NULL;
    ngx_destroy_pool(pool);
}


/*
 * Row: id, status, livemode, provider, provider_reference, amount,
 * currency, capture_method, payment_method, description, return_url,
 * email, age (seconds), and the sealed customer's tenant_id, pii, key.
 * The strings live in the run's pool (the results do).
 */

static void
ngx_http_payflow_jobs_check(ngx_http_payflow_jobs_t *jobs, PGresult *res,
    ngx_uint_t row, ngx_uint_t again)
{
    ngx_int_t                      exponent;
    ngx_str_t                      tenant;
    ngx_http_payflow_check_t      *check;
    ngx_http_payflow_provider_t   *pv;

#define ngx_http_payflow_value(col)                                           \
    (PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col))

    pv = ngx_http_payflow_jobs_provider(jobs, res, row, 0, again);
    if (pv == NULL) {
        return;
    }

    check = ngx_pcalloc(jobs->pool, sizeof(ngx_http_payflow_check_t));
    if (check == NULL) {
        return;
    }

    check->jobs = jobs;
    check->provider = pv;
    check->status = PQgetvalue(res, row, 1);

    check->op.op = NGX_HTTP_PAYFLOW_OP_VERIFY;
    check->op.payment_id.data = (u_char *) PQgetvalue(res, row, 0);
    check->op.payment_id.len = PQgetlength(res, row, 0);

    if (!PQgetisnull(res, row, 4)) {
        check->op.reference.data = (u_char *) PQgetvalue(res, row, 4);
        check->op.reference.len = PQgetlength(res, row, 4);
    }

    check->op.amount = ngx_atoof((u_char *) PQgetvalue(res, row, 5),
                                 PQgetlength(res, row, 5));
    check->op.currency = PQgetvalue(res, row, 6);
    exponent = ngx_http_payflow_payments_exponent(check->op.currency);
    check->op.exponent = (exponent == NGX_ERROR) ? 2 : exponent;
    check->op.manual = (PQgetvalue(res, row, 7)[0] == 'm');
    check->op.payment_method = ngx_http_payflow_value(8);
    check->op.description = ngx_http_payflow_value(9);
    check->op.return_url = ngx_http_payflow_value(10);
    check->op.email = ngx_http_payflow_value(11);
    check->op.age = ngx_atoof((u_char *) PQgetvalue(res, row, 12),
                              PQgetlength(res, row, 12));

    if (check->op.email == NULL && !PQgetisnull(res, row, 14)) {
        /* sealed (sql/0024): opened in the run's pool for the call */
        tenant.data = (u_char *) PQgetvalue(res, row, 13);
        tenant.len = PQgetlength(res, row, 13);

        if (ngx_http_payflow_pii_email(jobs->pool, jobs->log, jobs->pmcf,
                                       &tenant,
                                       PQgetvalue(res, row, 2)[0] == 't',
                                       &check->op.payment_id,
                                       ngx_http_payflow_value(14),
                                       ngx_http_payflow_value(15),
                                       &check->op.email)
            != NGX_OK)
        {
            return;
        }
    }

#undef ngx_http_payflow_value

    (void) ngx_http_payflow_jobs_call(jobs, check);
}


/*
 * Row: id, payment_id, livemode, provider, payment_reference,
 * refund_reference, amount, currency, reason.
 */

static void
ngx_http_payflow_jobs_check_refund(ngx_http_payflow_jobs_t *jobs,
    PGresult *res, ngx_uint_t row, ngx_uint_t again)
{
    ngx_int_t                      exponent;
    ngx_http_payflow_check_t      *check;
    ngx_http_payflow_provider_t   *pv;

    pv = ngx_http_payflow_jobs_provider(jobs, res, row, 1, again);
    if (pv == NULL) {
        return;
    }

    check = ngx_pcalloc(jobs->pool, sizeof(ngx_http_payflow_check_t));
    if (check == NULL) {
        return;
    }

    check->jobs = jobs;
    check->provider = pv;
    check->status = "pending";
    check->refund = 1;

    check->op.op = NGX_HTTP_PAYFLOW_OP_REFUND_STATUS;
    check->op.refund_id.data = (u_char *) PQgetvalue(res, row, 0);
    check->op.refund_id.len = PQgetlength(res, row, 0);
    check->op.payment_id.data = (u_char *) PQgetvalue(res, row, 1);
    check->op.payment_id.len = PQgetlength(res, row, 1);
    check->op.reference.data = (u_char *) PQgetvalue(res, row, 4);
    check->op.reference.len = PQgetlength(res, row, 4);
    check->op.refund_reference.data = (u_char *) PQgetvalue(res, row, 5);
    check->op.refund_reference.len = PQgetlength(res, row, 5);
    check->op.amount = ngx_atoof((u_char *) PQgetvalue(res, row, 6),
                                 PQgetlength(res, row, 6));
    check->op.currency = PQgetvalue(res, row, 7);
    exponent = ngx_http_payflow_payments_exponent(check->op.currency);
    check->op.exponent = (exponent == NGX_ERROR) ? 2 : exponent;
    check->op.reason = PQgetisnull(res, row, 8) ? NULL
                                                : PQgetvalue(res, row, 8);

    (void) ngx_http_payflow_jobs_call(jobs, check);
}


/*
 * The provider a payment or refund to verify is at (column 3): a
 * configured one, or a tenant's account, as the run's own copy.  NULL:
 * none, or not yet: the account's copy is being made, and the check is
 * made again once it is (again: that was it).
 */

static ngx_http_payflow_provider_t *
ngx_http_payflow_jobs_provider(ngx_http_payflow_jobs_t *jobs, PGresult *res,
    ngx_uint_t row, ngx_uint_t refund, ngx_uint_t again)
{
    ngx_int_t                      rc;
    ngx_str_t                      name;
    ngx_http_payflow_account_t    *a;
    ngx_http_payflow_provider_t   *pv;
    ngx_http_payflow_jobs_wait_t  *jw;

    name.data = (u_char *) PQgetvalue(res, row, 3);
    name.len = PQgetlength(res, row, 3);

    if (!ngx_http_payflow_account_id(&name)) {
        pv = ngx_http_payflow_provider_find(jobs->pmcf, &name,
                                            PQgetvalue(res, row, 2)[0] == 't');
        if (pv == NULL) {
            goto missing;
        }

        return pv;
    }

    jw = NULL;

    if (!again) {
        jw = ngx_pcalloc(jobs->pool, sizeof(ngx_http_payflow_jobs_wait_t));
        if (jw == NULL) {
            return NULL;
        }

        jw->wait.handler = ngx_http_payflow_jobs_woken;
        jw->jobs = jobs;
        jw->res = res;
        jw->row = row;
        jw->refund = refund;
    }

    rc = ngx_http_payflow_account_find(&name, &a, jw ? &jw->wait : NULL);

    if (rc == NGX_OK) {
        return ngx_http_payflow_account_provider(jobs->pool, a);
    }

    if (rc == NGX_AGAIN) {
        /* the run's pool lives until the check is made */
        jobs->pending++;
        return NULL;
    }

missing:

    ngx_log_error(NGX_LOG_WARN, jobs->log, 0,
                  "payflow reconcile: %s %s is at provider \"%V\", which is "
                  "neither configured nor an open provider account",
                  refund ? "refund" : "payment", PQgetvalue(res, row, 0),
                  &name);

    return NULL;
}


static void
ngx_http_payflow_jobs_woken(ngx_http_payflow_account_wait_t *w,
    ngx_int_t rc)
{
    ngx_http_payflow_jobs_wait_t *jw = (ngx_http_payflow_jobs_wait_t *) w;

    if (rc == NGX_OK) {
        if (jw->refund) {
            ngx_http_payflow_jobs_check_refund(jw->jobs, jw->res, jw->row, 1);

        } else {
            ngx_http_payflow_jobs_check(jw->jobs, jw->res, jw->row, 1);
        }
    }

    ngx_http_payflow_jobs_finish(jw->jobs);
}


static ngx_int_t
ngx_http_payflow_jobs_call(ngx_http_payflow_jobs_t *jobs,
    ngx_http_payflow_check_t *check)
{
    ngx_http_payflow_provider_t  *pv;

    pv = check->provider;

    check->call.pool = jobs->pool;
    check->call.log = jobs->log;
    check->call.connect_timeout = pv->connect_timeout;
    check->call.timeout = pv->timeout;
    check->call.ca_file = pv->ca_file;
    check->call.max_response = 256 * 1024;
    check->call.handler = ngx_http_payflow_jobs_checked;
    check->call.data = check;

    if (pv->adapter->request(pv, &check->op, &check->call) != NGX_OK
        || pf_curl_start(jobs->pmcf->curl, &check->call) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    jobs->pending++;

    return NGX_OK;
}


static void
ngx_http_payflow_jobs_checked(pf_curl_call_t *call)
{
    pf_pg_query_t                       *q;
    const char                         **values;
    ngx_http_payflow_check_t            *check;
    ngx_http_payflow_jobs_t             *jobs;
    ngx_http_payflow_provider_t         *pv;
    ngx_http_payflow_provider_result_t   res;

    check = call->data;
    jobs = check->jobs;
    pv = check->provider;

    pv->adapter->response(pv, &check->op, call, &res);

    ngx_http_payflow_provider_record(jobs->pmcf, pv, check->op.op, &res,
                                     call->elapsed);

    if (check->refund) {
        ngx_http_payflow_jobs_refund_checked(check, &res);
        return;
    }

    if (res.status == NULL && res.declined) {
        res.status = "failed";
    }

    /*
     * The provider has no such transaction: a payment whose call never
     * got there (still processing) failed; one waiting for its customer
     * (requires_action) may yet be paid.
     */

    if (res.status == NULL && res.not_taken && !res.outage
        && ngx_strcmp(check->status, "processing") == 0)
    {
        res.status = "failed";
    }

    if (res.status == NULL) {
        ngx_log_error(NGX_LOG_INFO, jobs->log, 0,
                      "payflow reconcile: payment %V at \"%V\" is still "
                      "undecided (%s)", &check->op.payment_id, &pv->name,
                      res.code ? res.code : check->status);

        if (res.reference.len == 0 || check->op.reference.len) {
            goto done;
        }

        /* the provider's id, learnt: kept, so it is asked by it */
        res.status = check->status;
    }

    values = ngx_pcalloc(jobs->pool, 6 * sizeof(char *));
    q = pf_pg_query_create(jobs->pool, jobs->pmcf->pool, 1);

    if (values == NULL || q == NULL) {
        goto done;
    }

    values[0] = (char *) check->op.payment_id.data;
    values[1] = res.status;
    values[2] = ngx_strcmp(res.status, "failed") == 0 ? res.code : NULL;
    values[3] = ngx_strcmp(res.status, "failed") == 0 ? res.message : NULL;
    values[4] = res.redirect_url.len
                ? ngx_http_payflow_db_str(jobs->pool, &res.redirect_url)
                : NULL;
    values[5] = res.reference.len
                ? ngx_http_payflow_db_str(jobs->pool, &res.reference)
                : NULL;

    q->stmts[0].statement = jobs->pmcf->st.reconcile_apply;
    q->stmts[0].nparams = 6;
    q->stmts[0].values = values;
    q->handler = ngx_http_payflow_jobs_applied;
    q->data = check;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

done:

    ngx_http_payflow_jobs_finish(jobs);
}


/* a refund the provider settled: recorded (ledger by its triggers) */

static void
ngx_http_payflow_jobs_refund_checked(ngx_http_payflow_check_t *check,
    ngx_http_payflow_provider_result_t *res)
{
    pf_pg_query_t            *q;
    const char              **values;
    ngx_http_payflow_jobs_t  *jobs;

    jobs = check->jobs;

    if (res->status == NULL || ngx_strcmp(res->status, "pending") == 0) {
        ngx_log_error(NGX_LOG_INFO, jobs->log, 0,
                      "payflow reconcile: refund %V at \"%V\" is still "
                      "pending", &check->op.refund_id,
                      &check->provider->name);
        goto done;
    }

    values = ngx_pcalloc(jobs->pool, 4 * sizeof(char *));
    q = pf_pg_query_create(jobs->pool, jobs->pmcf->pool, 1);

    if (values == NULL || q == NULL) {
        goto done;
    }

    values[0] = (char *) check->op.refund_id.data;
    values[1] = res->status;
    values[2] = res->reference.len
                ? ngx_http_payflow_db_str(jobs->pool, &res->reference)
                : NULL;
    values[3] = ngx_strcmp(res->status, "failed") == 0 ? res->code : NULL;

    q->stmts[0].statement = jobs->pmcf->st.reconcile_refund_apply;
    q->stmts[0].nparams = 4;
    q->stmts[0].values = values;
    q->handler = ngx_http_payflow_jobs_applied;
    q->data = check;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

done:

    ngx_http_payflow_jobs_finish(jobs);
}


static void
ngx_http_payflow_jobs_applied(pf_pg_query_t *q)
{
    ngx_http_payflow_check_t  *check;

    check = q->data;

    if (q->status == PF_PG_OK) {
        ngx_log_error(NGX_LOG_NOTICE, check->jobs->log, 0,
                      "payflow reconcile: %s %V at \"%V\" was %s, "
                      "now %s", check->refund ? "refund" : "payment",
                      check->refund ? &check->op.refund_id
                                    : &check->op.payment_id,
                      &check->provider->name, check->status,
                      PQgetvalue(q->results[0], 0, 0));

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, check->jobs->log, 0,
                      "payflow reconcile: payment %V: %s",
                      &check->op.payment_id,
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY));
    }

    ngx_http_payflow_jobs_finish(check->jobs);
}
