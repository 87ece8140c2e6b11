
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
#include "ngx_http_payflow_pii.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>


#define NGX_HTTP_PAYFLOW_OUTBOX_BATCH         32
#define NGX_HTTP_PAYFLOW_OUTBOX_PER_ENDPOINT  "32"


typedef struct {
    ngx_http_payflow_main_conf_t     *pmcf;
    ngx_http_payflow_outbox_conf_t   *conf;
    ngx_log_t                        *log;
    ngx_event_t                       timer;
    ngx_event_t                       wake;
    ngx_pool_t                       *claim;    /* a claim in flight */
    ngx_pool_t                       *flush;    /* results being stored */
    ngx_pool_t                       *batch;    /* results waiting */
    pf_json_out_t                     out;      /* of batch */
    ngx_uint_t                        nbatch;
    ngx_uint_t                        inflight;
    unsigned                          again:1;
    unsigned                          stopped:1;
} ngx_http_payflow_outbox_t;


typedef struct {
    ngx_pool_t                       *pool;
    ngx_str_t                         id;
    ngx_str_t                         attempt;
    ngx_str_t                         endpoint;
    pf_curl_call_t                    call;
    ngx_str_t                         clear;    /* details opened in it */
    ngx_uint_t                        final;
} ngx_http_payflow_delivery_t;


static ngx_int_t ngx_http_payflow_outbox_claim(ngx_http_payflow_outbox_t *ob,
    ngx_pool_t *pool, pf_pg_stmt_t *st, ngx_uint_t room);
static ngx_uint_t ngx_http_payflow_outbox_take(ngx_http_payflow_outbox_t *ob,
    PGresult *res);
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
static void ngx_http_payflow_outbox_flush(ngx_http_payflow_outbox_t *ob);
static void ngx_http_payflow_outbox_flushed(pf_pg_query_t *q);
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
        "SELECT c.id, c.attempt, c.endpoint_id, c.url, c.secret, "
        "c.previous_secret, c.event_id, c.body, c.request_id, c.livemode, "
        "c.enabled, c.tenant_id, k.payment_id, k.key "
        "FROM payflow_outbox_claim($1::int, $2::interval, "
        NGX_HTTP_PAYFLOW_OUTBOX_PER_ENDPOINT ") c "
        "LEFT JOIN LATERAL payflow_event_customer(c.event_id) k ON true", 2);

    st->outbox_result = pf_pg_statement_add(pmcf->db,
        "payflow_outbox_results",
        "SELECT payflow_outbox_results($1, $2::int[], $3::interval)", 3);

    st->outbox_backlog = pf_pg_statement_add(pmcf->db,
        "payflow_outbox_backlog",
        "SELECT due, lag_seconds FROM payflow_outbox_backlog()", 0);

    if (st->outbox_claim == NULL || st->outbox_result == NULL
        || st->outbox_backlog == NULL)
    {
        return NGX_ERROR;
    }

    /*
     * every pool connection listens: any of them wakes the worker (a
     * redelivery asks for it; new events are found by polling)
     */

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

    if (ob->flush) {
        ngx_destroy_pool(ob->flush);
        ob->flush = NULL;
    }

    if (ob->batch) {
        ngx_destroy_pool(ob->batch);
        ob->batch = NULL;
    }

    /*
     * deliveries in flight, or sent and not recorded: their leases run
     * out, and they are sent again
     */
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


/* the claim statement, for up to room deliveries */

static ngx_int_t
ngx_http_payflow_outbox_claim(ngx_http_payflow_outbox_t *ob,
    ngx_pool_t *pool, pf_pg_stmt_t *st, ngx_uint_t room)
{
    u_char       *p;
    const char  **values;

    values = ngx_palloc(pool, 2 * sizeof(char *));
    p = ngx_pnalloc(pool, 2 * NGX_INT_T_LEN + sizeof(" ms"));

    if (values == NULL || p == NULL) {
        return NGX_ERROR;
    }

    values[0] = (char *) p;
    p = ngx_sprintf(p, "%ui%Z", ngx_min(room, NGX_HTTP_PAYFLOW_OUTBOX_BATCH));
    values[1] = (char *) p;

    /* the lease: the exchange, and as long again to record it */
    (void) ngx_sprintf(p, "%M ms%Z", 2 * ob->conf->timeout + 5000);

    st->statement = ob->pmcf->st.outbox_claim;
    st->nparams = 2;
    st->values = values;

    return NGX_OK;
}


/* what a claim returned, sent; its number */

static ngx_uint_t
ngx_http_payflow_outbox_take(ngx_http_payflow_outbox_t *ob, PGresult *res)
{
    ngx_uint_t  i, n;

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        ngx_http_payflow_outbox_send(ob, res, i);
    }

    return n;
}


static void
ngx_http_payflow_outbox_run(ngx_event_t *ev)
{
    ngx_uint_t                  room;
    pf_pg_query_t              *q;
    ngx_http_payflow_outbox_t  *ob;

    ob = ev->data;

    if (ob->stopped || ngx_exiting || ngx_quit) {
        return;
    }

    ngx_http_payflow_outbox_arm(ob);

    room = (ob->conf->concurrency > ob->inflight)
           ? ob->conf->concurrency - ob->inflight : 0;

    if (ob->claim || ob->flush || room == 0) {
        /*
         * the claim out now, or the flush (which claims as well), or a
         * delivery ending, runs the next one
         */
        ob->again = 1;
        return;
    }

    ob->again = 0;

    ob->claim = ngx_create_pool(1024, ob->log);
    if (ob->claim == NULL) {
        return;
    }

    q = pf_pg_query_create(ob->claim, ob->pmcf->pool, 1);

    if (q == NULL
        || ngx_http_payflow_outbox_claim(ob, ob->claim, &q->stmts[0], room)
           != NGX_OK)
    {
        goto failed;
    }


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
    ngx_uint_t                  n;
    ngx_http_payflow_outbox_t  *ob;

    ob = q->data;
    n = 0;

    if (q->status == PF_PG_OK) {
        n = ngx_http_payflow_outbox_take(ob, q->results[0]);

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ob->log, 0,
                      "payflow outbox: claiming failed: %s",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY));
    }

    ngx_destroy_pool(ob->claim);
    ob->claim = NULL;

    /*
     * While deliveries are in flight, the flush of their results claims
     * again (more may be due than a batch, or an endpoint's share in
     * flight, allowed: an empty claim then says nothing); idle, the timer
     * or a NOTIFY wakes the worker.
     */

    ob->again = (n > 0 || ob->inflight > 0);

    if (n == NGX_HTTP_PAYFLOW_OUTBOX_BATCH) {
        ngx_http_payflow_outbox_notify(ob, NULL);
    }
}


/*
 * Row: id, attempt, endpoint_id, url, secret, previous_secret, event_id,
 * body, request_id, livemode, enabled, tenant_id, and the event's payment
 * and its customer key.  What is kept is copied into the delivery's own
 * pool: the claim's results are freed at once.
 */

static void
ngx_http_payflow_outbox_send(ngx_http_payflow_outbox_t *ob, PGresult *res,
    ngx_uint_t row)
{
    ngx_str_t                     url, body, secret, previous, rid, tenant;
    ngx_str_t                     opened;
    ngx_int_t                     rc;
    ngx_uint_t                    livemode, i;
    ngx_array_t                  *tokens;
    pf_pii_token_t               *t;
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
    ngx_http_payflow_copy(d->endpoint, 2);
    ngx_http_payflow_copy(url, 3);
    ngx_http_payflow_copy(secret, 4);
    ngx_http_payflow_copy(previous, 5);
    ngx_http_payflow_copy(body, 7);
    ngx_http_payflow_copy(rid, 8);
    ngx_http_payflow_copy(tenant, 11);

#undef ngx_http_payflow_copy

    ob->inflight++;

    if (PQgetvalue(res, row, 10)[0] != 't') {
        /* disabled since the event: nothing more is sent to it */
        d->final = 1;
        ngx_http_payflow_outbox_record(d, 0, "the endpoint is disabled");
        return;
    }

    livemode = (PQgetvalue(res, row, 9)[0] == 't');

    /* the customer's details, sealed in the event, opened (sql/0024) */

    rc = pf_pii_tokens(pool, &body, &tokens);

    if (rc == NGX_ERROR) {
        goto sent_failed;
    }

    if (rc == NGX_OK) {
        t = tokens->elts;

        for (i = 0; i < tokens->nelts; i++) {
            if (!PQgetisnull(res, row, 13)
                && (size_t) PQgetlength(res, row, 12) == t[i].id.len
                && ngx_strncmp(PQgetvalue(res, row, 12), t[i].id.data,
                               t[i].id.len) == 0)
            {
                t[i].key.data = (u_char *) PQgetvalue(res, row, 13);
                t[i].key.len = PQgetlength(res, row, 13);
            }
        }

        rc = ngx_http_payflow_pii_splice(pool, ob->log, ob->pmcf, &tenant,
                                         livemode, &body, tokens, &opened);
        if (rc == NGX_ERROR) {
            goto sent_failed;
        }

        if (rc != NGX_OK) {
            ngx_http_payflow_outbox_record(d, 0,
                                           "the customer's details do not "
                                           "open");
            return;
        }

        body = opened;
        d->clear = body;
    }

    /* the signing secrets, opened in this pool, wiped once signed */

    rc = ngx_http_payflow_endpoint_open(pool, &ob->pmcf->keyring, &tenant,
                                        livemode, &d->endpoint, &secret);

    if (rc == NGX_OK && !PQgetisnull(res, row, 5)) {
        rc = ngx_http_payflow_endpoint_open(pool, &ob->pmcf->keyring,
                                            &tenant, livemode, &d->endpoint,
                                            &previous);
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, ob->log, 0,
                      "payflow outbox: the signing secret of endpoint %V "
                      "does not open (its payflow_kek is not configured, "
                      "or it was written for another row): delivery %V "
                      "not sent", &d->endpoint, &d->id);
        ngx_http_payflow_outbox_record(d, 0,
                                       "the endpoint's signing secret does "
                                       "not open");
        return;
    }

    call = &d->call;

    call->method = "POST";
    call->url = url;
    call->body = body;
    call->connect_timeout = ngx_min(ob->conf->timeout, 10000);
    call->timeout = ob->conf->timeout;
    call->max_response = 4096;     /* the body is not read anyway */
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

    rc = ngx_http_payflow_outbox_sign(d, &body, &secret,
                                      PQgetisnull(res, row, 5)
                                      ? NULL : &previous,
                                      ngx_time());

    OPENSSL_cleanse(secret.data, secret.len);
    OPENSSL_cleanse(previous.data, previous.len);

    if (rc != NGX_OK
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


/*
 * An attempt's outcome joins the worker's batch; the delivery's pool goes
 * at once.  One statement records a batch (group commit): while one is
 * out, outcomes gather for the next.
 */

static void
ngx_http_payflow_outbox_record(ngx_http_payflow_delivery_t *d,
    ngx_uint_t code, const char *error)
{
    pf_json_out_t              *out;
    ngx_http_payflow_outbox_t  *ob;

    ob = &ngx_http_payflow_outbox;
    out = &ob->out;

    if (d->call.refused && d->call.allowed == 0) {
        ngx_http_payflow_metrics_outbox(ob->pmcf,
                                        NGX_HTTP_PAYFLOW_OUTBOX_REFUSED, 0, 0);
    }

    if (ob->stopped) {
        goto done;
    }

    if (ob->batch == NULL) {
        ob->batch = ngx_create_pool(4096, ob->log);
        if (ob->batch == NULL) {
            goto done;
        }

        if (pf_json_out_init(out, ob->batch, 4096) != NGX_OK) {
            ngx_destroy_pool(ob->batch);
            ob->batch = NULL;
            goto done;
        }

        pf_json_out_open(out, '[');
        ob->nbatch = 0;
    }

    pf_json_out_open(out, '{');
    pf_json_out_key(out, "id");
    pf_json_out_str(out, d->id.data, d->id.len);
    pf_json_out_key(out, "attempt");
    pf_json_out_int(out, ngx_atoi(d->attempt.data, d->attempt.len));
    pf_json_out_key(out, "endpoint");
    pf_json_out_str(out, d->endpoint.data, d->endpoint.len);
    pf_json_out_key(out, "code");

    if (code) {
        pf_json_out_int(out, code);

    } else {
        pf_json_out_raw(out, (u_char *) "null", 4);
    }

    pf_json_out_key(out, "ms");
    pf_json_out_int(out, d->call.elapsed);
    pf_json_out_key(out, "error");

    if (error) {
        pf_json_out_cstr(out, error);

    } else {
        pf_json_out_raw(out, (u_char *) "null", 4);
    }

    pf_json_out_key(out, "final");
    pf_json_out_bool(out, d->final);
    pf_json_out_close(out, '}');

    ob->nbatch++;

done:

    /* not recorded (no memory, exiting): the lease runs out, sent again */
    ob->inflight--;

    if (d->clear.len) {
        OPENSSL_cleanse(d->clear.data, d->clear.len);
    }

    ngx_destroy_pool(d->pool);

    if (ob->flush == NULL) {
        ngx_http_payflow_outbox_flush(ob);
    }
}


static void
ngx_http_payflow_outbox_flush(ngx_http_payflow_outbox_t *ob)
{
    u_char          *p;
    ngx_uint_t       room;
    ngx_str_t        json;
    const char     **v;
    pf_pg_query_t   *q;

    if (ob->batch == NULL || ob->stopped) {
        return;
    }

    ob->flush = ob->batch;
    ob->batch = NULL;

    pf_json_out_close(&ob->out, ']');

    /*
     * with the results, a claim in the same round trip: what they free of
     * an endpoint's share in flight is taken again at once
     */

    room = (ob->conf->concurrency > ob->inflight)
           ? ob->conf->concurrency - ob->inflight : 0;

    q = pf_pg_query_create(ob->flush, ob->pmcf->pool,
                           (room && ob->claim == NULL) ? 2 : 1);
    v = ngx_pcalloc(ob->flush, 3 * sizeof(char *));
    p = ngx_pnalloc(ob->flush, NGX_TIME_T_LEN + sizeof(" s"));

    if (q == NULL || v == NULL || p == NULL
        || pf_json_out_result(&ob->out, &json) != NGX_OK)
    {
        goto failed;
    }

    v[0] = ngx_http_payflow_db_str(ob->flush, &json);
    v[1] = (char *) ob->conf->schedule.data;
    v[2] = (char *) p;
    (void) ngx_sprintf(p, "%T s%Z", ob->conf->disable_after);

    if (v[0] == NULL) {
        goto failed;
    }

    q->stmts[0].statement = ob->pmcf->st.outbox_result;
    q->stmts[0].nparams = 3;
    q->stmts[0].values = v;

    if (q->nstmts == 2
        && ngx_http_payflow_outbox_claim(ob, ob->flush, &q->stmts[1], room)
           != NGX_OK)
    {
        goto failed;
    }

    q->handler = ngx_http_payflow_outbox_flushed;
    q->data = ob;
    q->log = ob->log;

    if (pf_pg_query_run(q) == NGX_OK) {
        return;
    }

failed:

    /* not recorded: their leases run out, they are sent again */
    ngx_destroy_pool(ob->flush);
    ob->flush = NULL;
}


static void
ngx_http_payflow_outbox_flushed(pf_pg_query_t *q)
{
    char                       *result;
    PGresult                   *res;
    ngx_uint_t                  i, k, n, given_up;
    ngx_http_payflow_outbox_t  *ob;

    ob = q->data;
    res = q->results[0];
    given_up = 0;

    if (q->status == PF_PG_OK) {

        for (i = 0; i < (ngx_uint_t) PQntuples(res); i++) {
            result = PQgetvalue(res, i, 0);

            for (k = 0; k < NGX_HTTP_PAYFLOW_OUTBOX_NRESULTS; k++) {
                if (ngx_strcmp(result, ngx_http_payflow_outbox_names[k])
                    == 0)
                {
                    ngx_http_payflow_metrics_outbox(ob->pmcf, k, 0, 0);
                    break;
                }
            }

            given_up += (k == NGX_HTTP_PAYFLOW_OUTBOX_FAILED);
        }

        if (given_up) {
            ngx_log_error(NGX_LOG_WARN, ob->log, 0,
                          "payflow outbox: %ui deliveries given up after "
                          "their last attempt", given_up);
        }

    } else if (q->status == PF_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ob->log, 0,
                      "payflow outbox: recording deliveries failed: %s",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY));
    }

    n = 0;

    if (q->status == PF_PG_OK && q->nstmts == 2) {
        n = ngx_http_payflow_outbox_take(ob, q->results[1]);
        ob->again = (n > 0 || ob->inflight > 0);
    }

    ngx_destroy_pool(ob->flush);
    ob->flush = NULL;

    if (ob->stopped) {
        return;
    }

    ngx_http_payflow_outbox_flush(ob);

    /* nothing more in flight, nothing flushing: a claim of its own */

    if (ob->again && ob->flush == NULL) {
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
