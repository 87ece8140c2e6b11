
/*
 * Copyright (C) PayFlow
 *
 * The background sealing of stored signing secrets (sql/0023): every few
 * seconds each worker asks for endpoints whose secrets are not sealed
 * under the current payflow_kek (in the clear, written before a KEK was
 * configured, or under an older KEK), seals or wraps them again, and
 * writes each back only over what it read.  Resumable and idempotent: a
 * pass that dies leaves rows as they were, the next one takes them.  With
 * the old KEK still configured, the data is readable throughout: the
 * operator removes it once payflow_secrets_pending reads 0.
 */


#include "ngx_http_payflow_webhook.h"
#include "ngx_http_payflow_metrics.h"
#include "ngx_http_payflow_pii.h"

#include <openssl/crypto.h>


#define NGX_HTTP_PAYFLOW_RESEAL_EVERY   5000       /* ms */
#define NGX_HTTP_PAYFLOW_RESEAL_BATCH   "50"
#define NGX_HTTP_PAYFLOW_RESEAL_ROWS    "200"     /* payments per pass */


typedef struct {
    ngx_http_payflow_main_conf_t  *pmcf;
    ngx_log_t                     *log;
    ngx_event_t                    timer;
    ngx_pool_t                    *pool;           /* a pass in flight */
    ngx_uint_t                     phase;          /* 1: payments' */
    ngx_int_t                      pending[2];     /* as last counted */
    u_char                         after[64];      /* the payments' sweep */
    size_t                         after_len;
} ngx_http_payflow_reseal_t;


static void ngx_http_payflow_reseal_run(ngx_event_t *ev);
static void ngx_http_payflow_reseal_due(pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_reseal_one(ngx_http_payflow_reseal_t *rs,
    const char *table, ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *id,
    ngx_str_t *in, ngx_str_t *out);
static u_char *ngx_http_payflow_reseal_item(u_char *p, ngx_str_t *s,
    ngx_uint_t first);
static void ngx_http_payflow_reseal_stored(pf_pg_query_t *q);
static void ngx_http_payflow_reseal_query(ngx_http_payflow_reseal_t *rs,
    const pf_pg_statement_t *statement, const char **values, ngx_uint_t n,
    pf_pg_handler_pt handler);
static void ngx_http_payflow_reseal_done(ngx_http_payflow_reseal_t *rs);
static void ngx_http_payflow_reseal_customers(ngx_http_payflow_reseal_t *rs);
static void ngx_http_payflow_reseal_customers_due(pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_reseal_customer(
    ngx_http_payflow_reseal_t *rs, PGresult *res, ngx_uint_t i,
    pf_json_out_t *out);
static void ngx_http_payflow_reseal_wipe(void *data);
static void ngx_http_payflow_reseal_pending(ngx_http_payflow_reseal_t *rs,
    ngx_int_t due, ngx_uint_t resealed, ngx_uint_t unopened);


static ngx_http_payflow_reseal_t  ngx_http_payflow_reseal;


ngx_int_t
ngx_http_payflow_reseal_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->secrets_due = pf_pg_statement_add(pmcf->db, "payflow_secrets_due",
        "SELECT id, tenant_id, livemode, secret, previous_secret, due, "
        "kind FROM payflow_secrets_due($1, " NGX_HTTP_PAYFLOW_RESEAL_BATCH
        ")", 1);
    st->secrets_store = pf_pg_statement_add(pmcf->db,
        "payflow_secrets_store",
        "SELECT payflow_secrets_store($1::text[], $2::text[], $3::text[], "
        "$4::text[], $5::text[], $6::text[])", 6);

    st->customers_due = pf_pg_statement_add(pmcf->db,
        "payflow_customers_due",
        "SELECT id, tenant_id, livemode, customer, key, due "
        "FROM payflow_customers_due($1, $2::boolean, $3, "
        NGX_HTTP_PAYFLOW_RESEAL_ROWS ")", 3);
    st->customers_store = pf_pg_statement_add(pmcf->db,
        "payflow_customers_store",
        "SELECT payflow_customers_store($1::jsonb)", 1);

    return (st->secrets_due && st->secrets_store && st->customers_due
            && st->customers_store) ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_payflow_reseal_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_reseal_t  *rs;

    rs = &ngx_http_payflow_reseal;

    ngx_memzero(rs, sizeof(ngx_http_payflow_reseal_t));

    if (pmcf->keyring.current == NULL || !pmcf->reseal) {
        /* no KEK: secrets stay as they are written, in the clear; or
         * "payflow_reseal off": other nodes do it */
        return NGX_OK;
    }

    rs->pmcf = pmcf;
    rs->log = cycle->log;
    rs->timer.handler = ngx_http_payflow_reseal_run;
    rs->timer.data = rs;
    rs->timer.log = cycle->log;
    rs->timer.cancelable = 1;

    /* soon after start: a new KEK is taken up at once */
    ngx_add_timer(&rs->timer, 500 + (ngx_msec_t) ngx_random() % 1000);

    return NGX_OK;
}


void
ngx_http_payflow_reseal_stop(void)
{
    ngx_http_payflow_reseal_t  *rs;

    rs = &ngx_http_payflow_reseal;

    if (rs->timer.timer_set) {
        ngx_del_timer(&rs->timer);
    }

    if (rs->pool) {
        /* the query's cleanup detaches it from its connection */
        ngx_destroy_pool(rs->pool);
        rs->pool = NULL;
    }
}


static void
ngx_http_payflow_reseal_run(ngx_event_t *ev)
{
    const char                **values;
    ngx_http_payflow_reseal_t  *rs;

    rs = ev->data;

    if (ngx_exiting || ngx_quit) {
        return;
    }

    ngx_add_timer(&rs->timer, NGX_HTTP_PAYFLOW_RESEAL_EVERY
                              + (ngx_msec_t) ngx_random() % 1000);

    if (rs->pool) {
        return;
    }

    rs->pool = ngx_create_pool(4096, rs->log);
    if (rs->pool == NULL) {
        return;
    }

    values = ngx_palloc(rs->pool, sizeof(char *));
    if (values == NULL) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    values[0] = (char *) rs->pmcf->keyring.prefix.data;

    ngx_http_payflow_reseal_query(rs, rs->pmcf->st.secrets_due, values, 1,
                                  ngx_http_payflow_reseal_due);
}


/*
 * rows: id, tenant_id, livemode, secret, previous_secret, due, kind
 * ("endpoint": a webhook endpoint's secrets; "account": a provider
 * account's key and webhook secret)
 */

static void
ngx_http_payflow_reseal_due(pf_pg_query_t *q)
{
    u_char                     *p[6];
    size_t                      len;
    PGresult                   *res;
    ngx_str_t                   id, tenant, out[2], old[2], kind;
    ngx_int_t                   rc, due;
    ngx_uint_t                  i, j, n, livemode, unopened;
    const char                **values, *table;
    ngx_http_payflow_reseal_t  *rs;

    rs = q->data;
    res = q->results[0];

    if (q->status != PF_PG_OK || PQnfields(res) != 7) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    n = PQntuples(res);
    due = n ? ngx_atoi((u_char *) PQgetvalue(res, 0, 5),
                       PQgetlength(res, 0, 5)) : 0;

    if (n == 0) {
        ngx_http_payflow_reseal_pending(rs, 0, 0, 0);
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    /*
     * Six text[] literals: ids, old, new, old previous, new previous,
     * kinds.  A
     * sealed value is at most 4/3 of what it seals and 160 bytes, the
     * same again when wrapped anew: room for any of them per row.
     */

    len = 0;

    for (i = 0; i < n; i++) {
        len += 2 * (PQgetlength(res, i, 3) + PQgetlength(res, i, 4))
               + PQgetlength(res, i, 0) + 400;
    }

    for (j = 0; j < 6; j++) {
        p[j] = ngx_pnalloc(rs->pool, len + 3);
        if (p[j] == NULL) {
            ngx_http_payflow_reseal_done(rs);
            return;
        }
    }

    values = ngx_palloc(rs->pool, 6 * sizeof(char *));
    if (values == NULL) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    for (j = 0; j < 6; j++) {
        values[j] = (char *) p[j];
        *p[j]++ = '{';
    }

    unopened = 0;

    for (i = 0, j = 0; i < n; i++) {
        id.data = (u_char *) PQgetvalue(res, i, 0);
        id.len = PQgetlength(res, i, 0);
        tenant.data = (u_char *) PQgetvalue(res, i, 1);
        tenant.len = PQgetlength(res, i, 1);
        livemode = (PQgetvalue(res, i, 2)[0] == 't');
        kind.data = (u_char *) PQgetvalue(res, i, 6);
        kind.len = PQgetlength(res, i, 6);
        table = (kind.data[0] == 'a') ? "provider_accounts"
                                      : "webhook_endpoints";

        old[0].data = (u_char *) PQgetvalue(res, i, 3);
        old[0].len = PQgetlength(res, i, 3);
        rc = ngx_http_payflow_reseal_one(rs, table, &tenant, livemode, &id,
                                         &old[0], &out[0]);

        if (rc == NGX_OK && !PQgetisnull(res, i, 4)) {
            old[1].data = (u_char *) PQgetvalue(res, i, 4);
            old[1].len = PQgetlength(res, i, 4);
            rc = ngx_http_payflow_reseal_one(rs, table, &tenant, livemode,
                                             &id, &old[1], &out[1]);
        } else {
            old[1].data = NULL;
            out[1].data = NULL;
        }

        if (rc == NGX_ERROR) {
            ngx_http_payflow_reseal_done(rs);
            return;
        }

        if (rc != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, rs->log, 0,
                          "payflow: a secret of %s %V does not open (its "
                          "payflow_kek is not configured, or it was written "
                          "for another row): left as it is",
                          kind.data[0] == 'a' ? "provider account"
                                              : "endpoint", &id);
            unopened++;
            continue;
        }

        p[0] = ngx_http_payflow_reseal_item(p[0], &id, j == 0);
        p[1] = ngx_http_payflow_reseal_item(p[1], &old[0], j == 0);
        p[2] = ngx_http_payflow_reseal_item(p[2], &out[0], j == 0);
        p[3] = ngx_http_payflow_reseal_item(p[3], &old[1], j == 0);
        p[4] = ngx_http_payflow_reseal_item(p[4], &out[1], j == 0);
        p[5] = ngx_http_payflow_reseal_item(p[5], &kind, j == 0);
        j++;
    }

    for (i = 0; i < 6; i++) {
        *p[i]++ = '}';
        *p[i] = '\0';
    }

    ngx_http_payflow_reseal_pending(rs, due, 0, unopened);

    if (j == 0) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    ngx_http_payflow_reseal_query(rs, rs->pmcf->st.secrets_store, values, 6,
                                  ngx_http_payflow_reseal_stored);
}


/*
 * The value as it is to be stored: sealed under the current KEK (from the
 * clear, or its data key wrapped again).  NGX_DECLINED: it does not open.
 */

static ngx_int_t
ngx_http_payflow_reseal_one(ngx_http_payflow_reseal_t *rs,
    const char *table, ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *id,
    ngx_str_t *in, ngx_str_t *out)
{
    ngx_int_t      rc;
    ngx_str_t      aad;
    pf_keyring_t  *ring;

    ring = &rs->pmcf->keyring;

    if (in->len >= ring->prefix.len
        && ngx_strncmp(in->data, ring->prefix.data, ring->prefix.len) == 0)
    {
        *out = *in;
        return NGX_OK;
    }

    if (pf_seal_aad(rs->pool, table, tenant, livemode, id, &aad) != NGX_OK) {
        return NGX_ERROR;
    }

    if (pf_sealed(in)) {
        rc = pf_reseal(rs->pool, ring, &aad, in, out);

    } else {
        rc = pf_seal(rs->pool, ring, &aad, in, out);
    }

    return rc;
}


/* one element of a text[] literal (values are base64 and "pf1."/"whsec_") */

static u_char *
ngx_http_payflow_reseal_item(u_char *p, ngx_str_t *s, ngx_uint_t first)
{
    if (!first) {
        *p++ = ',';
    }

    if (s->data == NULL) {
        return ngx_cpymem(p, "NULL", 4);
    }

    *p++ = '"';
    p = ngx_cpymem(p, s->data, s->len);
    *p++ = '"';

    return p;
}


static void
ngx_http_payflow_reseal_stored(pf_pg_query_t *q)
{
    ngx_int_t                   n;
    PGresult                   *res;
    ngx_http_payflow_reseal_t  *rs;

    rs = q->data;
    res = q->results[0];

    if (q->status == PF_PG_OK && PQntuples(res) == 1) {
        n = ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                     PQgetlength(res, 0, 0));

        if (n > 0) {
            ngx_http_payflow_reseal_pending(rs, -1, (ngx_uint_t) n, 0);
            ngx_log_error(NGX_LOG_INFO, rs->log, 0,
                          "payflow: %i %s sealed under payflow_kek \"%V\"",
                          n, rs->phase ? "customers' details"
                                       : "signing secrets",
                          &rs->pmcf->keyring.current->id);

            /* more may be due: at once, not in five seconds */
            if (rs->timer.timer_set) {
                ngx_del_timer(&rs->timer);
            }

            ngx_add_timer(&rs->timer, 10);
        }
    }

    ngx_http_payflow_reseal_done(rs);
}


/* one statement of a pass, in its pool; the pass ends if it cannot run */

static void
ngx_http_payflow_reseal_query(ngx_http_payflow_reseal_t *rs,
    const pf_pg_statement_t *statement, const char **values, ngx_uint_t n,
    pf_pg_handler_pt handler)
{
    pf_pg_query_t  *q;

    q = pf_pg_query_create(rs->pool, rs->pmcf->pool, 1);
    if (q == NULL) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    q->stmts[0].statement = statement;
    q->stmts[0].nparams = n;
    q->stmts[0].values = values;
    q->handler = handler;
    q->data = rs;

    if (pf_pg_query_run(q) != NGX_OK) {
        ngx_http_payflow_reseal_done(rs);
    }
}


static void
ngx_http_payflow_reseal_done(ngx_http_payflow_reseal_t *rs)
{
    if (rs->pool) {
        ngx_destroy_pool(rs->pool);
        rs->pool = NULL;
    }

    /* each pass: the endpoints' secrets, then the payments' customers */

    if (rs->phase == 0 && !ngx_exiting && !ngx_quit) {
        rs->phase = 1;

        rs->pool = ngx_create_pool(4096, rs->log);
        if (rs->pool) {
            ngx_http_payflow_reseal_customers(rs);
            return;
        }
    }

    rs->phase = 0;
}


static void
ngx_http_payflow_reseal_wipe(void *data)
{
    u_char *p = data;

    OPENSSL_cleanse(p, ngx_strlen(p));
}


/* payflow_secrets_pending counts both kinds: each as last counted */

static void
ngx_http_payflow_reseal_pending(ngx_http_payflow_reseal_t *rs,
    ngx_int_t due, ngx_uint_t resealed, ngx_uint_t unopened)
{
    if (due >= 0) {
        rs->pending[rs->phase] = due;
        due = rs->pending[0] + rs->pending[1];
    }

    ngx_http_payflow_metrics_secrets(rs->pmcf, due, resealed, unopened);
}


/*
 * Payments (sql/0024): keys wrapped under an older KEK are wrapped again,
 * details still in the clear are sealed (unless payflow_customer_pii is
 * clear), each row written back only over what was read.
 */

static void
ngx_http_payflow_reseal_customers(ngx_http_payflow_reseal_t *rs)
{
    const char  **values;

    values = ngx_palloc(rs->pool, 3 * sizeof(char *));

    if (values == NULL) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    values[0] = ngx_http_payflow_db_str(rs->pool,
                                        &rs->pmcf->keyring.current->id);
    values[1] = rs->pmcf->customer_pii ? "t" : "f";
    values[2] = rs->after_len
                ? ngx_http_payflow_db_str(rs->pool,
                                          &(ngx_str_t) { rs->after_len,
                                                         rs->after })
                : NULL;

    if (values[0] == NULL) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    ngx_http_payflow_reseal_query(rs, rs->pmcf->st.customers_due, values, 3,
                                  ngx_http_payflow_reseal_customers_due);
}


/* rows: id, tenant_id, livemode, customer, key, due */

static void
ngx_http_payflow_reseal_customers_due(pf_pg_query_t *q)
{
    PGresult                   *res;
    ngx_int_t                   rc, due;
    ngx_str_t                   rows;
    ngx_uint_t                  i, n, stored, unopened;
    const char                **values;
    ngx_pool_cleanup_t         *cln;
    pf_json_out_t               out;
    ngx_http_payflow_reseal_t  *rs;

    rs = q->data;
    res = q->results[0];

    if (q->status != PF_PG_OK || PQnfields(res) != 6) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    n = PQntuples(res);
    due = n ? ngx_atoi((u_char *) PQgetvalue(res, 0, 5),
                       PQgetlength(res, 0, 5)) : 0;

    /* the sweep goes on after the last row, or starts again */

    rs->after_len = 0;

    if ((ngx_int_t) n
        == ngx_atoi((u_char *) NGX_HTTP_PAYFLOW_RESEAL_ROWS,
                    sizeof(NGX_HTTP_PAYFLOW_RESEAL_ROWS) - 1)
        && (size_t) PQgetlength(res, n - 1, 0) <= sizeof(rs->after))
    {
        rs->after_len = PQgetlength(res, n - 1, 0);
        ngx_memcpy(rs->after, PQgetvalue(res, n - 1, 0), rs->after_len);
    }

    if (n == 0 || pf_json_out_init(&out, rs->pool, 1024 * n) != NGX_OK) {
        ngx_http_payflow_reseal_pending(rs, 0, 0, 0);
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    pf_json_out_open(&out, '[');

    stored = 0;
    unopened = 0;

    for (i = 0; i < n; i++) {
        rc = ngx_http_payflow_reseal_customer(rs, res, i, &out);

        if (rc == NGX_ERROR) {
            ngx_http_payflow_reseal_done(rs);
            return;
        }

        if (rc == NGX_DECLINED) {
            ngx_log_error(NGX_LOG_ERR, rs->log, 0,
                          "payflow: the customer key of payment %s does not "
                          "open (its payflow_kek is not configured, or it "
                          "was written for another row): left as it is",
                          PQgetvalue(res, i, 0));
            unopened++;
            continue;
        }

        stored++;
    }

    pf_json_out_close(&out, ']');

    ngx_http_payflow_reseal_pending(rs, due, 0, unopened);

    values = ngx_palloc(rs->pool, sizeof(char *));

    if (stored == 0 || values == NULL
        || pf_json_out_result(&out, &rows) != NGX_OK)
    {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    values[0] = ngx_http_payflow_db_str(rs->pool, &rows);

    /* the rows held details in the clear: wiped once copied */
    OPENSSL_cleanse(rows.data, rows.len);

    /* values[0], the query's copy, goes with the pool: wiped first */

    if (values[0]) {
        cln = ngx_pool_cleanup_add(rs->pool, 0);
        if (cln == NULL) {
            OPENSSL_cleanse((u_char *) values[0], rows.len);
            ngx_http_payflow_reseal_done(rs);
            return;
        }

        cln->handler = ngx_http_payflow_reseal_wipe;
        cln->data = (void *) values[0];
    }

    if (values[0] == NULL) {
        ngx_http_payflow_reseal_done(rs);
        return;
    }

    ngx_http_payflow_reseal_query(rs, rs->pmcf->st.customers_store, values,
                                  1, ngx_http_payflow_reseal_stored);
}


/*
 * One payment's {"id", "old", "customer"}; NGX_DECLINED: its key does not
 * open (nothing written).
 */

static ngx_int_t
ngx_http_payflow_reseal_customer(ngx_http_payflow_reseal_t *rs,
    PGresult *res, ngx_uint_t i, pf_json_out_t *out)
{
    json_t        *row;
    ngx_int_t      rc;
    ngx_str_t      id, tenant, key, rewrapped, plain, text;
    ngx_uint_t     livemode;
    json_error_t   error;

    id.data = (u_char *) PQgetvalue(res, i, 0);
    id.len = PQgetlength(res, i, 0);
    tenant.data = (u_char *) PQgetvalue(res, i, 1);
    tenant.len = PQgetlength(res, i, 1);
    livemode = (PQgetvalue(res, i, 2)[0] == 't');

    row = json_loadb(PQgetvalue(res, i, 3), PQgetlength(res, i, 3), 0,
                     &error);
    if (row == NULL) {
        return NGX_DECLINED;
    }

    if (!PQgetisnull(res, i, 4)) {
        key.data = (u_char *) PQgetvalue(res, i, 4);
        key.len = PQgetlength(res, i, 4);

        rc = ngx_http_payflow_pii_rewrap(rs->pool, rs->pmcf, &tenant,
                                         livemode, &id, &key, &rewrapped);

        if (rc == NGX_OK
            && json_object_set_new(row, "key",
                                   json_stringn((char *) rewrapped.data,
                                                rewrapped.len))
               != 0)
        {
            rc = NGX_ERROR;
        }

        plain.len = 0;

    } else {
        rc = ngx_http_payflow_pii_seal_row(rs->pool, rs->pmcf, &tenant,
                                           livemode, &id, row, &plain);
        if (rc != NGX_OK) {
            plain.len = 0;
        }
    }

    if (plain.len) {
        OPENSSL_cleanse(plain.data, plain.len);
    }

    if (rc != NGX_OK || pf_response_dump(rs->pool, row, &text) != NGX_OK) {
        if (rc == NGX_OK) {
            return NGX_ERROR;
        }

        json_decref(row);
        return rc;
    }

    pf_json_out_open(out, '{');
    pf_json_out_key(out, "id");
    pf_json_out_str(out, id.data, id.len);
    pf_json_out_key(out, "old");
    pf_json_out_str(out, (u_char *) PQgetvalue(res, i, 3),
                    PQgetlength(res, i, 3));
    pf_json_out_key(out, "customer");
    pf_json_out_raw(out, text.data, text.len);
    pf_json_out_close(out, '}');

    return NGX_OK;
}
