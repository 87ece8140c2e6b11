
/*
 * Copyright (C) PayFlow
 *
 * The outbox's delivery worker, one per nginx worker: webhooks to tenants.
 *
 * Deliveries are written by the database in the transaction of the event
 * (sql/0015).  Each worker claims due ones (FOR UPDATE SKIP LOCKED, under
 * a lease, a few per endpoint at most) when woken by the outbox's NOTIFY
 * or every payflow_outbox_interval, sends each with libcurl on the event
 * loop, signed per Standard Webhooks, and records the attempt; the
 * database decides what follows (done, the next retry, given up, the
 * endpoint disabled).  A worker that dies mid-delivery leaves its leases
 * to run out: the deliveries are sent again (at least once).
 *
 * The destination's addresses are judged as libcurl is about to connect
 * (pf_curl's check): only public ones, unless payflow_outbox_allow_private
 * says otherwise, and the connection goes to the address that was judged.
 */


#include "ngx_http_payflow_webhook.h"
#include "ngx_http_payflow_metrics.h"

#include <openssl/hmac.h>
#include <openssl/rand.h>


#define NGX_HTTP_PAYFLOW_OUTBOX_BATCH         32
#define NGX_HTTP_PAYFLOW_OUTBOX_PER_ENDPOINT  "8"


typedef struct {
    ngx_http_payflow_main_conf_t     *pmcf;
    ngx_http_payflow_outbox_conf_t   *conf;
    ngx_log_t                        *log;
    ngx_event_t                       timer;
    ngx_event_t                       wake;
    ngx_pool_t                       *claim;    /* a claim in flight */
    ngx_uint_t                        inflight;
    unsigned                          again:1;
    unsigned                          stopped:1;
} ngx_http_payflow_outbox_t;


typedef struct {
    ngx_pool_t                       *pool;
    ngx_str_t                         id;
    ngx_str_t                         attempt;
    pf_curl_call_t                    call;
    ngx_uint_t                        final;
} ngx_http_payflow_delivery_t;


static void ngx_http_payflow_outbox_run(ngx_event_t *ev);
static void ngx_http_payflow_outbox_claimed(pf_pg_query_t *q);
static void ngx_http_payflow_outbox_send(ngx_http_payflow_outbox_t *ob,
    PGresult *res, ngx_uint_t row);
static ngx_int_t ngx_http_payflow_outbox_sign(
    ngx_http_payflow_delivery_t *d, ngx_str_t *body, ngx_str_t *secret,
    ngx_str_t *previous, time_t now);
static void ngx_http_payflow_outbox_sent(pf_curl_call_t *call);
static void ngx_http_payflow_outbox_record(ngx_http_payflow_delivery_t *d,
    ngx_uint_t code, const char *error);
static void ngx_http_payflow_outbox_recorded(pf_pg_query_t *q);
static void ngx_http_payflow_outbox_notify(void *data, const char *payload);
static void ngx_http_payflow_outbox_arm(ngx_http_payflow_outbox_t *ob);


const char  *ngx_http_payflow_outbox_names[] = {
    "succeeded", "retry", "failed", "refused", "stale"
};


/* one per worker */
static ngx_http_payflow_outbox_t  ngx_http_payflow_outbox;


ngx_int_t
ngx_http_payflow_outbox_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->outbox_claim = pf_pg_statement_add(pmcf->db, "payflow_outbox_claim",
        "SELECT id, attempt, endpoint_id, url, secret, previous_secret, "
        "event_id, body, request_id, livemode, enabled "
        "FROM payflow_outbox_claim($1::int, $2::interval, "
        NGX_HTTP_PAYFLOW_OUTBOX_PER_ENDPOINT ")", 2);

    st->outbox_result = pf_pg_statement_add(pmcf->db,
        "payflow_outbox_result",
        "SELECT payflow_outbox_result($1, $2::int, $3::int, $4::int, $5, "
        "$6::int[], $7::interval, $8::boolean)", 8);

    st->outbox_backlog = pf_pg_statement_add(pmcf->db,
        "payflow_outbox_backlog",
        "SELECT due, lag_seconds FROM payflow_outbox_backlog()", 0);

    if (st->outbox_claim == NULL || st->outbox_result == NULL
        || st->outbox_backlog == NULL)
    {
        return NGX_ERROR;
    }

    /* every pool connection listens: any of them wakes the worker */

    return pf_pg_listen_add(cf, pmcf->db, "payflow_outbox",
                            ngx_http_payflow_outbox_notify,
                            &ngx_http_payflow_outbox);
}


ngx_int_t
ngx_http_payflow_outbox_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_outbox_t       *ob;
    ngx_http_payflow_outbox_conf_t  *conf;

    conf = ngx_http_cycle_get_module_main_conf(cycle,
                                          ngx_http_payflow_webhook_module);

    ob = &ngx_http_payflow_outbox;
    ngx_memzero(ob, sizeof(ngx_http_payflow_outbox_t));

    ob->stopped = 1;

    if (conf == NULL || !conf->enabled) {
        return NGX_OK;
    }

    ob->pmcf = pmcf;
    ob->conf = conf;
    ob->log = cycle->log;
    ob->stopped = 0;

    ob->timer.handler = ngx_http_payflow_outbox_run;
    ob->timer.data = ob;
    ob->timer.log = cycle->log;
    ob->timer.cancelable = 1;

    ob->wake = ob->timer;

    ngx_http_payflow_outbox_arm(ob);

    return NGX_OK;
}


void
ngx_http_payflow_outbox_stop(void)
{
    ngx_http_payflow_outbox_t  *ob;

    ob = &ngx_http_payflow_outbox;
    ob->stopped = 1;

    if (ob->timer.timer_set) {
        ngx_del_timer(&ob->timer);
    }

    if (ob->wake.posted) {
        ngx_delete_posted_event(&ob->wake);
    }

    if (ob->claim) {
        ngx_destroy_pool(ob->claim);
        ob->claim = NULL;
    }

    /* deliveries in flight: their leases run out, they are sent again */
}


static void
ngx_http_payflow_outbox_arm(ngx_http_payflow_outbox_t *ob)
{
    ngx_msec_t  every;

    if (ob->stopped || ngx_exiting || ngx_quit) {
        return;
    }

    every = ob->conf->interval;

    if (!ob->timer.timer_set) {
        ngx_add_timer(&ob->timer, every + (ngx_msec_t) ngx_random()
                                          % (every / 4 + 1));
    }
}


/* a NOTIFY on any pool connection (payload NULL: a reconnect) */

static void
ngx_http_payflow_outbox_notify(void *data, const char *payload)
{
    ngx_http_payflow_outbox_t  *ob = data;

    if (ob->stopped || ob->wake.posted) {
        return;
    }

    ngx_post_event(&ob->wake, &ngx_posted_events);
}


static void
ngx_http_payflow_outbox_run(ngx_event_t *ev)
{
    u_char                     *p;
    ngx_uint_t                  room;
    const char                **values;
    pf_pg_query_t              *q;
    ngx_http_payflow_outbox_t  *ob;

    ob = ev->data;

    if (ob->stopped || ngx_exiting || ngx_quit) {
        return;
    }

    ngx_http_payflow_outbox_arm(ob);

    room = (ob->conf->concurrency > ob->inflight)
           ? ob->conf->concurrency - ob->inflight : 0;

    if (ob->claim || room == 0) {
        /* the claim out now, or a delivery ending, runs the next one */
        ob->again = 1;
        return;
    }

    ob->again = 0;

    ob->claim = ngx_create_pool(1024, ob->log);
    if (ob->claim == NULL) {
        return;
    }

    q = pf_pg_query_create(ob->claim, ob->pmcf->pool, 2);
    values = ngx_palloc(ob->claim, 2 * sizeof(char *));
    p = ngx_pnalloc(ob->claim, 2 * NGX_INT_T_LEN + sizeof(" ms"));

    if (q == NULL || values == NULL || p == NULL) {
        goto failed;
    }

    values[0] = (char *) p;
    p = ngx_sprintf(p, "%ui%Z",
                    ngx_min(room, NGX_HTTP_PAYFLOW_OUTBOX_BATCH));
    values[1] = (char *) p;

    /* the lease: the exchange, and as long again to record it */
    (void) ngx_sprintf(p, "%M ms%Z", 2 * ob->conf->timeout + 5000);

    q->stmts[0].statement = ob->pmcf->st.outbox_claim;
    q->stmts[0].nparams = 2;
    q->stmts[0].values = values;
    q->stmts[1].statement = ob->pmcf->st.outbox_backlog;

    q->handler = ngx_http_payflow_outbox_claimed;
    q->data = ob;
    q->log = ob->log;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

failed:

    /* the database is away or busy: the timer tries again */
    ngx_destroy_pool(ob->claim);
    ob->claim = NULL;
}


static void
ngx_http_payflow_outbox_claimed(pf_pg_query_t *q)
{
    PGresult                   *res;
    ngx_uint_t                  i, n;
    ngx_http_payflow_outbox_t  *ob;

    ob = q->data;
    n = 0;

    if (q->status == PF_PG_OK) {
        res = q->results[0];
        n = PQntuples(res);

        for (i = 0; i < n; i++) {
            ngx_http_payflow_outbox_send(ob, res, i);
        }

        res = q->results[1];

        if (PQntuples(res) == 1) {
            ngx_http_payflow_metrics_outbox(ob->pmcf, -1,
                ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                         PQgetlength(res, 0, 0)),
                (ngx_msec_t) (strtod(PQgetvalue(res, 0, 1), NULL) * 1000));
        }

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ob->log, 0,
                      "payflow outbox: claiming failed: %s",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY));
    }

    ngx_destroy_pool(ob->claim);
    ob->claim = NULL;

    /* a full batch: more are likely due */

    if (ob->again || n == NGX_HTTP_PAYFLOW_OUTBOX_BATCH) {
        ngx_http_payflow_outbox_notify(ob, NULL);
    }
}


/*
 * Row: id, attempt, endpoint_id, url, secret, previous_secret, event_id,
 * body, request_id, livemode, enabled.  What is kept is copied into the
 * delivery's own pool: the claim's results are freed at once.
 */

static void
ngx_http_payflow_outbox_send(ngx_http_payflow_outbox_t *ob, PGresult *res,
    ngx_uint_t row)
{
    ngx_str_t                     url, body, secret, previous, rid;
    ngx_pool_t                   *pool;
    pf_curl_call_t               *call;
    ngx_http_payflow_delivery_t  *d;

#define ngx_http_payflow_copy(s, col)                                         \
    (s).len = PQgetlength(res, row, col);                                    \
    (s).data = ngx_pnalloc(pool, (s).len + 1);                               \
    if ((s).data == NULL) {                                                  \
        goto failed;                                                         \
    }                                                                        \
    ngx_memcpy((s).data, PQgetvalue(res, row, col), (s).len);                \
    (s).data[(s).len] = '\0'

    pool = ngx_create_pool(4096, ob->log);
    if (pool == NULL) {
        return;
    }

    d = ngx_pcalloc(pool, sizeof(ngx_http_payflow_delivery_t));
    if (d == NULL) {
        goto failed;
    }

    d->pool = pool;

    ngx_http_payflow_copy(d->id, 0);
    ngx_http_payflow_copy(d->attempt, 1);
    ngx_http_payflow_copy(url, 3);
    ngx_http_payflow_copy(secret, 4);
    ngx_http_payflow_copy(previous, 5);
    ngx_http_payflow_copy(body, 7);
    ngx_http_payflow_copy(rid, 8);

#undef ngx_http_payflow_copy

    ob->inflight++;

    if (PQgetvalue(res, row, 10)[0] != 't') {
        /* disabled since the event: nothing more is sent to it */
        d->final = 1;
        ngx_http_payflow_outbox_record(d, 0, "the endpoint is disabled");
        return;
    }

    call = &d->call;

    call->method = "POST";
    call->url = url;
    call->body = body;
    call->connect_timeout = ngx_min(ob->conf->timeout, 10000);
    call->timeout = ob->conf->timeout;
    call->max_response = 4096;
    call->handler = ngx_http_payflow_outbox_sent;
    call->data = d;
    call->pool = pool;
    call->log = ob->log;
    call->check = ob->conf->allow_private ? NULL
                                          : ngx_http_payflow_outbox_check;

    call->headers = ngx_array_create(pool, 6, sizeof(ngx_str_t));
    if (call->headers == NULL) {
        goto sent_failed;
    }

    if (ngx_http_payflow_outbox_sign(d, &body, &secret,
                                     PQgetisnull(res, row, 5)
                                     ? NULL : &previous,
                                     ngx_time())
        != NGX_OK
        || pf_curl_header(call, "Content-Type",
                          &(ngx_str_t) ngx_string("application/json"))
           != NGX_OK
        || (rid.len && pf_curl_header(call, "X-Request-Id", &rid) != NGX_OK))
    {
        goto sent_failed;
    }

    if (pf_curl_start(ob->pmcf->curl, call) != NGX_OK) {
        goto sent_failed;
    }

    return;

sent_failed:

    ngx_http_payflow_outbox_record(d, 0, "could not be sent (no memory)");
    return;

failed:

    ngx_destroy_pool(pool);
}


/*
 * Standard Webhooks: webhook-id (the delivery, the same on every attempt),
 * webhook-timestamp, webhook-signature "v1,<base64 HMAC-SHA256 of
 * id.timestamp.body>" under the secret's bytes (whsec_<base64>), and a
 * second one under the previous secret while it is in its grace period.
 */

static ngx_int_t
ngx_http_payflow_outbox_sign(ngx_http_payflow_delivery_t *d, ngx_str_t *body,
    ngx_str_t *secret, ngx_str_t *previous, time_t now)
{
    u_char        *p, mac[EVP_MAX_MD_SIZE];
    size_t         len;
    ngx_str_t      ts, content, header, key, src, enc, *s;
    ngx_uint_t     i;
    unsigned int   maclen;

    ts.data = ngx_pnalloc(d->pool, NGX_TIME_T_LEN);
    if (ts.data == NULL) {
        return NGX_ERROR;
    }

    ts.len = ngx_sprintf(ts.data, "%T", now) - ts.data;

    len = d->id.len + 1 + ts.len + 1 + body->len;

    content.data = ngx_pnalloc(d->pool, len);
    if (content.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(content.data, d->id.data, d->id.len);
    *p++ = '.';
    p = ngx_cpymem(p, ts.data, ts.len);
    *p++ = '.';
    p = ngx_cpymem(p, body->data, body->len);
    content.len = p - content.data;

    header.data = ngx_pnalloc(d->pool, 2 * (3 + 44 + 1));
    if (header.data == NULL) {
        return NGX_ERROR;
    }

    header.len = 0;

    for (i = 0; i < 2; i++) {
        s = (i == 0) ? secret : previous;

        if (s == NULL || s->len <= sizeof("whsec_") - 1) {
            continue;
        }

        src.data = s->data + sizeof("whsec_") - 1;
        src.len = s->len - (sizeof("whsec_") - 1);

        key.data = ngx_pnalloc(d->pool, ngx_base64_decoded_length(src.len));
        if (key.data == NULL || ngx_decode_base64(&key, &src) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, d->call.log, 0,
                          "payflow outbox: the signing secret of delivery "
                          "%V is not whsec_<base64>", &d->id);
            return NGX_ERROR;
        }

        if (HMAC(EVP_sha256(), key.data, (int) key.len, content.data,
                 content.len, mac, &maclen)
            == NULL)
        {
            return NGX_ERROR;
        }

        p = header.data + header.len;

        if (header.len) {
            *p++ = ' ';
        }

        p = ngx_cpymem(p, "v1,", 3);

        enc.data = p;
        src.data = mac;
        src.len = maclen;
        ngx_encode_base64(&enc, &src);

        header.len = (p + enc.len) - header.data;
    }

    if (pf_curl_header(&d->call, "webhook-id", &d->id) != NGX_OK
        || pf_curl_header(&d->call, "webhook-timestamp", &ts) != NGX_OK
        || pf_curl_header(&d->call, "webhook-signature", &header) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_payflow_outbox_sent(pf_curl_call_t *call)
{
    const char                   *error;
    ngx_http_payflow_delivery_t  *d;

    d = call->data;

    if (call->result == PF_CURL_OK || call->result == PF_CURL_TOO_LARGE) {
        /* the answer's body is not read; its status is what counts */
        error = (call->status >= 200 && call->status < 300) ? NULL
                : "the endpoint did not answer 2xx";
        ngx_http_payflow_outbox_record(d, call->status, error);
        return;
    }

    if (call->refused && call->allowed == 0) {
        ngx_http_payflow_outbox_record(d, 0,
                                       "the destination's address is not "
                                       "allowed (private or reserved)");
        return;
    }

    ngx_http_payflow_outbox_record(d, 0, call->error ? call->error
                                                     : "no answer");
}


static void
ngx_http_payflow_outbox_record(ngx_http_payflow_delivery_t *d,
    ngx_uint_t code, const char *error)
{
    u_char                     *p;
    const char                **v;
    pf_pg_query_t              *q;
    ngx_http_payflow_outbox_t  *ob;

    ob = &ngx_http_payflow_outbox;

    if (d->call.refused && d->call.allowed == 0) {
        ngx_http_payflow_metrics_outbox(ob->pmcf,
                                        NGX_HTTP_PAYFLOW_OUTBOX_REFUSED, 0, 0);
    }

    q = pf_pg_query_create(d->pool, ob->pmcf->pool, 1);
    v = ngx_pcalloc(d->pool, 8 * sizeof(char *));
    p = ngx_pnalloc(d->pool, 3 * (NGX_INT_T_LEN + sizeof(" s")));

    if (q == NULL || v == NULL || p == NULL || ob->stopped) {
        goto done;
    }

    v[0] = (char *) d->id.data;
    v[1] = (char *) d->attempt.data;

    if (code) {
        v[2] = (char *) p;
        p = ngx_sprintf(p, "%ui%Z", code);
    }

    v[3] = (char *) p;
    p = ngx_sprintf(p, "%M%Z", d->call.elapsed);

    v[4] = error;
    v[5] = (char *) ob->conf->schedule.data;

    v[6] = (char *) p;
    (void) ngx_sprintf(p, "%T s%Z", ob->conf->disable_after);

    v[7] = d->final ? "t" : "f";

    q->stmts[0].statement = ob->pmcf->st.outbox_result;
    q->stmts[0].nparams = 8;
    q->stmts[0].values = v;

    q->handler = ngx_http_payflow_outbox_recorded;
    q->data = d;
    q->log = ob->log;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

done:

    /* not recorded: the lease runs out and the delivery is sent again */
    ob->inflight--;
    ngx_destroy_pool(d->pool);
}


static void
ngx_http_payflow_outbox_recorded(pf_pg_query_t *q)
{
    char                         *result;
    ngx_uint_t                    i;
    ngx_http_payflow_outbox_t    *ob;
    ngx_http_payflow_delivery_t  *d;

    d = q->data;
    ob = &ngx_http_payflow_outbox;

    if (q->status == PF_PG_OK && PQntuples(q->results[0]) == 1) {
        result = PQgetvalue(q->results[0], 0, 0);

        for (i = 0; i < NGX_HTTP_PAYFLOW_OUTBOX_NRESULTS; i++) {
            if (ngx_strcmp(result, ngx_http_payflow_outbox_names[i]) == 0) {
                ngx_http_payflow_metrics_outbox(ob->pmcf, i, 0, 0);
                break;
            }
        }

        if (ngx_strcmp(result, "failed") == 0) {
            ngx_log_error(NGX_LOG_WARN, ob->log, 0,
                          "payflow outbox: delivery %V given up after "
                          "attempt %V", &d->id, &d->attempt);
        }

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ob->log, 0,
                      "payflow outbox: recording delivery %V failed: %s",
                      &d->id, PQresultErrorField(q->results[q->failed],
                                                 PG_DIAG_MESSAGE_PRIMARY));
    }

    ob->inflight--;
    ngx_destroy_pool(d->pool);

    if (ob->again && !ob->stopped) {
        ngx_http_payflow_outbox_notify(ob, NULL);
    }
}


/* pf_curl's check: public addresses only */

ngx_int_t
ngx_http_payflow_outbox_check(pf_curl_call_t *call, struct sockaddr *sa,
    socklen_t socklen)
{
    return pf_curl_address_public(sa) ? NGX_OK : NGX_DECLINED;
}


/* whsec_<base64 of 32 random bytes> */

ngx_int_t
ngx_http_payflow_outbox_secret(ngx_pool_t *pool, ngx_str_t *secret)
{
    u_char     raw[32];
    ngx_str_t  src, dst;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        return NGX_ERROR;
    }

    secret->data = ngx_pnalloc(pool, sizeof("whsec_") - 1
                                     + ngx_base64_encoded_length(32) + 1);
    if (secret->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(secret->data, "whsec_", sizeof("whsec_") - 1);

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = secret->data + sizeof("whsec_") - 1;

    ngx_encode_base64(&dst, &src);

    secret->len = sizeof("whsec_") - 1 + dst.len;
    secret->data[secret->len] = '\0';

    ngx_explicit_memzero(raw, sizeof(raw));

    return NGX_OK;
}
