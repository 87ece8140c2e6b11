
/*
 * Copyright (C) PayFlow
 *
 * POST /v1/payments and GET /v1/payments/{id}.
 *
 * A payment is created and confirmed in one call.  With the built-in
 * sandbox provider the whole creation is one pipelined transaction: the
 * idempotency key (when given) is inserted first and gates the payment
 * insert, the outcome's transitions follow (triggers write the events and
 * the ledger), and the payment and the key row are read back.  A second
 * round trip stores the response on the key; a replay sends those very
 * bytes.  A key left locked by a request that died is resumed from its
 * payment once the lock has expired.
 */


#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_auth.h"

#include <openssl/evp.h>


#define NGX_HTTP_PAYFLOW_MAX_AMOUNT  99999999999LL


typedef struct {
    const char                 *code;
    ngx_uint_t                  exponent;
} ngx_http_payflow_currency_t;


/* what the sandbox does, chosen by the last two digits of the amount */

typedef struct {
    const char                 *status;     /* NULL: stays processing */
    const char                 *code;
    const char                 *message;
    ngx_uint_t                  action;
} ngx_http_payflow_outcome_t;


static ngx_int_t ngx_http_payflow_payments_created(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_payments_finish(ngx_http_request_t *r,
    ngx_str_t *data);
static ngx_int_t ngx_http_payflow_payments_stored(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_payments_resumed(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_payments_got(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_idem_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
static ngx_int_t ngx_http_payflow_fingerprint(ngx_http_request_t *r,
    u_char *hex);
static ngx_int_t ngx_http_payflow_header(ngx_http_request_t *r,
    const char *name, ngx_str_t *value);
static ngx_int_t ngx_http_payflow_bad(ngx_http_request_t *r,
    const char *param, const char *code, const char *message);
static char *ngx_http_payflow_text(ngx_http_request_t *r, json_t *v);
static ngx_http_payflow_outcome_t *ngx_http_payflow_sandbox(
    json_int_t amount, ngx_uint_t manual);


static const char  *ngx_http_payflow_payment_fields[] = {
    "amount", "currency", "description", "customer", "metadata",
    "capture_method", "provider", "return_url", NULL
};

static const char  *ngx_http_payflow_customer_fields[] = {
    "email", "name", "phone", NULL
};


/* ISO 4217 codes PayFlow accepts, with their minor-unit exponent */

static ngx_http_payflow_currency_t  ngx_http_payflow_currencies[] = {
    { "AED", 2 }, { "AUD", 2 }, { "BHD", 3 }, { "BRL", 2 }, { "CAD", 2 },
    { "CHF", 2 }, { "CNY", 2 }, { "CZK", 2 }, { "DKK", 2 }, { "EGP", 2 },
    { "EUR", 2 }, { "GBP", 2 }, { "GHS", 2 }, { "HKD", 2 }, { "INR", 2 },
    { "JOD", 3 }, { "JPY", 0 }, { "KES", 2 }, { "KRW", 0 }, { "KWD", 3 },
    { "MAD", 2 }, { "MXN", 2 }, { "NGN", 2 }, { "NOK", 2 }, { "NZD", 2 },
    { "OMR", 3 }, { "PLN", 2 }, { "RWF", 0 }, { "SEK", 2 }, { "SGD", 2 },
    { "TND", 3 }, { "TZS", 2 }, { "UGX", 0 }, { "USD", 2 }, { "XAF", 0 },
    { "XOF", 0 }, { "ZAR", 2 }, { NULL, 0 }
};


static ngx_http_payflow_outcome_t  ngx_http_payflow_outcomes[] = {
    { "succeeded", NULL, NULL, 0 },
    { "requires_capture", NULL, NULL, 0 },
    { "failed", "card_declined", "the card was declined", 0 },
    { "failed", "insufficient_funds", "the card has insufficient funds", 0 },
    { "requires_action", NULL, NULL, 1 },
    { NULL, NULL, NULL, 0 }
};


ngx_int_t
ngx_http_payflow_payments_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

#define NGX_HTTP_PAYFLOW_PAY_COLS                                             \
    "id, tenant_id, livemode, amount, currency, capture_method, provider, "  \
    "description, customer, metadata, return_url"

#define NGX_HTTP_PAYFLOW_PAY_VALUES                                           \
    "$1, $2, $3::boolean, $4::bigint, $5, $6, $7, $8, $9::jsonb, "           \
    "coalesce($10::jsonb, '{}'), $11"

    st->pay_insert = pf_pg_statement_add(pmcf->db, "payflow_pay_insert",
        "INSERT INTO payments (" NGX_HTTP_PAYFLOW_PAY_COLS ") VALUES ("
        NGX_HTTP_PAYFLOW_PAY_VALUES ")", 11);

    /* the key goes in first; only if it is new does the payment */
    st->pay_insert_keyed = pf_pg_statement_add(pmcf->db,
        "payflow_pay_insert_keyed",
        "WITH k AS (INSERT INTO idempotency_keys (tenant_id, livemode, key, "
        "fingerprint, method, path, phase, locked_until, payment_id) "
        "VALUES ($2, $3::boolean, $12, decode($13, 'hex'), 'POST', "
        "'/v1/payments', 'payment_created', now() + interval '30 seconds', "
        "$1) ON CONFLICT DO NOTHING RETURNING 1) "
        "INSERT INTO payments (" NGX_HTTP_PAYFLOW_PAY_COLS ") SELECT "
        NGX_HTTP_PAYFLOW_PAY_VALUES " FROM k", 13);

    st->pay_process = pf_pg_statement_add(pmcf->db, "payflow_pay_process",
        "UPDATE payments SET status = 'processing' "
        "WHERE id = $1 AND status = 'pending'", 1);

    st->pay_outcome = pf_pg_statement_add(pmcf->db, "payflow_pay_outcome",
        "UPDATE payments SET status = $2, "
        "amount_captured = CASE WHEN $2 = 'succeeded' THEN amount ELSE 0 END, "
        "amount_capturable = CASE WHEN $2 = 'requires_capture' "
        "THEN amount ELSE 0 END, "
        "failure_code = $3, failure_message = $4, "
        "next_action = CASE WHEN $5 THEN jsonb_build_object('type', "
        "'redirect_to_url', 'redirect_url', 'https://sandbox.payflow.invalid"
        "/authenticate/' || id, 'return_url', return_url) END, "
        "provider_reference = id "
        "WHERE id = $1 AND status = 'processing'", 5);

    st->pay_called = pf_pg_statement_add(pmcf->db, "payflow_pay_called",
        "UPDATE idempotency_keys SET phase = 'provider_called' "
        "WHERE tenant_id = $1 AND livemode = $2::boolean AND key = $3 "
        "AND payment_id = $4 AND phase = 'payment_created'", 4);

    st->pay_get = pf_pg_statement_add(pmcf->db, "payflow_pay_get",
        "SELECT payflow_payment_json(p)::text FROM payments p "
        "WHERE id = $1", 1);

    st->idem_get = pf_pg_statement_add(pmcf->db, "payflow_idem_get",
        "SELECT encode(fingerprint, 'hex'), phase, "
        "coalesce(locked_until > now(), false), response_status, "
        "response_body, payment_id FROM idempotency_keys "
        "WHERE tenant_id = $1 AND livemode = $2::boolean AND key = $3", 3);

    st->idem_finish = pf_pg_statement_add(pmcf->db, "payflow_idem_finish",
        "UPDATE idempotency_keys SET phase = 'finished', "
        "response_status = $4::int, response_body = $5, locked_until = NULL "
        "WHERE tenant_id = $1 AND livemode = $2::boolean AND key = $3 "
        "AND phase <> 'finished'", 5);

    if (st->pay_insert == NULL || st->pay_insert_keyed == NULL
        || st->pay_process == NULL || st->pay_outcome == NULL
        || st->pay_called == NULL || st->pay_get == NULL
        || st->idem_get == NULL || st->idem_finish == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* POST /v1/payments */

ngx_int_t
ngx_http_payflow_payments_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                         *p, hex[2 * 32 + 1];
    char                           *currency, *customer, *metadata;
    json_t                         *v, *item, *body;
    size_t                          len;
    ngx_int_t                       rc;
    ngx_uint_t                      i, manual, n, keyed;
    pf_error_t                      err;
    json_int_t                      amount;
    const char                     *key, **values, *provider;
    pf_pg_query_t                  *q;
    ngx_http_payflow_outcome_t     *outcome;
    ngx_http_payflow_currency_t    *c;
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    body = ctx->body;

    rc = pf_json_check_fields(r->pool, body,
                              ngx_http_payflow_payment_fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    v = json_object_get(body, "amount");

    if (v == NULL) {
        return ngx_http_payflow_bad(r, "amount", "parameter_missing",
                                    "amount is required");
    }

    amount = json_is_integer(v) ? json_integer_value(v) : 0;

    if (amount <= 0 || amount > NGX_HTTP_PAYFLOW_MAX_AMOUNT) {
        return ngx_http_payflow_bad(r, "amount", "amount_invalid",
                   "amount must be a positive integer in the currency's "
                   "minor unit, at most 99999999999");
    }

    v = json_object_get(body, "currency");

    if (v == NULL) {
        return ngx_http_payflow_bad(r, "currency", "parameter_missing",
                                    "currency is required");
    }

    currency = NULL;

    if (json_is_string(v) && json_string_length(v) == 3) {
        currency = ngx_pnalloc(r->pool, 4);
        if (currency == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (i = 0; i < 3; i++) {
            currency[i] = ngx_toupper(json_string_value(v)[i]);
        }

        currency[3] = '\0';

        for (c = ngx_http_payflow_currencies; c->code; c++) {
            if (ngx_strcmp(c->code, currency) == 0) {
                break;
            }
        }

        if (c->code == NULL) {
            currency = NULL;
        }
    }

    if (currency == NULL) {
        return ngx_http_payflow_bad(r, "currency", "currency_invalid",
                   "currency must be a supported ISO 4217 code, such as "
                   "\"usd\"");
    }

    manual = 0;
    v = json_object_get(body, "capture_method");

    if (v) {
        if (json_is_string(v)
            && ngx_strcmp(json_string_value(v), "manual") == 0)
        {
            manual = 1;

        } else if (!json_is_string(v)
                   || ngx_strcmp(json_string_value(v), "automatic") != 0)
        {
            return ngx_http_payflow_bad(r, "capture_method",
                       "parameter_invalid",
                       "capture_method must be \"automatic\" or \"manual\"");
        }
    }

    provider = "sandbox";
    v = json_object_get(body, "provider");

    if (v && (!json_is_string(v)
              || ngx_strcmp(json_string_value(v), "sandbox") != 0))
    {
        return ngx_http_payflow_bad(r, "provider", "provider_unavailable",
                   "the only provider configured is \"sandbox\"");
    }

    if (ctx->auth.livemode) {
        /* the sandbox never moves real money */
        return ngx_http_payflow_bad(r, "provider", "provider_unavailable",
                   "no provider is configured for live mode");
    }

    v = json_object_get(body, "description");

    if (v && !json_is_null(v)
        && (!json_is_string(v) || json_string_length(v) > 1000))
    {
        return ngx_http_payflow_bad(r, "description", "parameter_invalid",
                   "description must be a string of at most 1000 bytes");
    }

    v = json_object_get(body, "return_url");

    if (v && !json_is_null(v)
        && (!json_is_string(v) || json_string_length(v) > 2048
            || (ngx_strncmp(json_string_value(v), "https://", 8) != 0
                && ngx_strncmp(json_string_value(v), "http://", 7) != 0)))
    {
        return ngx_http_payflow_bad(r, "return_url", "parameter_invalid",
                   "return_url must be an http(s) URL of at most 2048 "
                   "bytes");
    }

    customer = NULL;
    v = json_object_get(body, "customer");

    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            return ngx_http_payflow_bad(r, "customer", "parameter_invalid",
                                        "customer must be an object");
        }

        rc = pf_json_check_fields(r->pool, v,
                                  ngx_http_payflow_customer_fields, &err);
        if (rc != NGX_OK) {
            if (rc == NGX_DECLINED) {
                /* name the nested field as Stripe does */
                len = sizeof("customer[]") + ngx_strlen(err.param);
                p = ngx_pnalloc(r->pool, len);
                if (p == NULL) {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }

                (void) ngx_sprintf(p, "customer[%s]%Z", err.param);
                err.param = (char *) p;
                return ngx_http_payflow_send_error(r, &err);
            }

            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        item = json_object_get(v, "email");

        if (item && (!json_is_string(item) || json_string_length(item) > 254
                     || ngx_strchr(json_string_value(item), '@') == NULL))
        {
            return ngx_http_payflow_bad(r, "customer[email]",
                                        "parameter_invalid",
                                        "customer email is not valid");
        }

        item = json_object_get(v, "name");

        if (item && (!json_is_string(item) || json_string_length(item) > 200))
        {
            return ngx_http_payflow_bad(r, "customer[name]",
                                        "parameter_invalid",
                                        "customer name: a string of at most "
                                        "200 bytes");
        }

        item = json_object_get(v, "phone");

        if (item && (!json_is_string(item) || json_string_length(item) > 32))
        {
            return ngx_http_payflow_bad(r, "customer[phone]",
                                        "parameter_invalid",
                                        "customer phone: a string of at most "
                                        "32 bytes");
        }

        customer = ngx_http_payflow_text(r, v);
        if (customer == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    metadata = NULL;
    v = json_object_get(body, "metadata");

    if (v && !json_is_null(v)) {
        if (!json_is_object(v) || json_object_size(v) > 50) {
            return ngx_http_payflow_bad(r, "metadata", "parameter_invalid",
                       "metadata must be an object of at most 50 keys");
        }

        json_object_foreach(v, key, item) {
            if (ngx_strlen(key) > 40 || !json_is_string(item)
                || json_string_length(item) > 500)
            {
                return ngx_http_payflow_bad(r, "metadata",
                           "parameter_invalid",
                           "metadata keys are at most 40 characters and "
                           "values strings of at most 500");
            }
        }

        metadata = ngx_http_payflow_text(r, v);
        if (metadata == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_payflow_header(r, "Idempotency-Key", &ctx->idem_key);

    if (rc == NGX_OK
        && (ctx->idem_key.len == 0 || ctx->idem_key.len > 255))
    {
        return ngx_http_payflow_idem_error(r, NGX_HTTP_BAD_REQUEST,
                   "idempotency_key_invalid",
                   "Idempotency-Key must be 1 to 255 characters");
    }

    keyed = (rc == NGX_OK);

    if (keyed && ngx_http_payflow_fingerprint(r, hex) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (pf_id_generate(r->pool, "pay_", &ctx->payment_id) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    outcome = ngx_http_payflow_sandbox(amount, manual);

    /*
     * keyed:   insert_keyed, process, [outcome], called, get, idem_get
     * unkeyed: insert, process, [outcome], get
     */

    n = 3 + (outcome->status ? 1 : 0) + (keyed ? 2 : 0);

    q = ngx_http_payflow_db_query(r, n, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_pcalloc(r->pool, 13 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->payment_id);
    values[1] = ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);
    values[2] = ctx->auth.livemode ? "true" : "false";
    values[3] = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    values[4] = currency;
    values[5] = manual ? "manual" : "automatic";
    values[6] = provider;
    v = json_object_get(body, "description");
    values[7] = (v && json_is_string(v)) ? json_string_value(v) : NULL;
    values[8] = customer;
    values[9] = metadata;
    v = json_object_get(body, "return_url");
    values[10] = (v && json_is_string(v)) ? json_string_value(v) : NULL;

    if (values[0] == NULL || values[1] == NULL || values[3] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf((u_char *) values[3], "%L", (int64_t) amount) = '\0';

    i = 0;

    if (keyed) {
        values[11] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);
        values[12] = (char *) ngx_pstrdup(r->pool, &(ngx_str_t)
                                          { sizeof(hex), hex });
        if (values[11] == NULL || values[12] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.pay_insert_keyed;
        ngx_http_payflow_db_stmt(q, i)->nparams = 13;

    } else {
        ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.pay_insert;
        ngx_http_payflow_db_stmt(q, i)->nparams = 11;
    }

    ngx_http_payflow_db_stmt(q, i++)->values = values;

    ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.pay_process;
    ngx_http_payflow_db_stmt(q, i)->nparams = 1;
    ngx_http_payflow_db_stmt(q, i++)->values = values;

    if (outcome->status) {
        values = ngx_pcalloc(r->pool, 5 * sizeof(char *));
        if (values == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        values[0] = ngx_http_payflow_db_stmt(q, 0)->values[0];
        values[1] = outcome->status;
        values[2] = outcome->code;
        values[3] = outcome->message;
        values[4] = outcome->action ? "true" : "false";

        ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.pay_outcome;
        ngx_http_payflow_db_stmt(q, i)->nparams = 5;
        ngx_http_payflow_db_stmt(q, i++)->values = values;
    }

    values = ngx_http_payflow_db_stmt(q, 0)->values;

    if (keyed) {
        /* tenant, livemode, key, payment */
        ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.pay_called;
        ngx_http_payflow_db_stmt(q, i)->nparams = 4;
        ngx_http_payflow_db_stmt(q, i)->values = ngx_pcalloc(r->pool,
                                                       4 * sizeof(char *));
        if (ngx_http_payflow_db_stmt(q, i)->values == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_payflow_db_stmt(q, i)->values[0] = values[1];
        ngx_http_payflow_db_stmt(q, i)->values[1] = values[2];
        ngx_http_payflow_db_stmt(q, i)->values[2] = values[11];
        ngx_http_payflow_db_stmt(q, i++)->values[3] = values[0];
    }

    ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.pay_get;
    ngx_http_payflow_db_stmt(q, i)->nparams = 1;
    ngx_http_payflow_db_stmt(q, i++)->values = values;

    if (keyed) {
        ngx_http_payflow_db_stmt(q, i)->statement = pmcf->st.idem_get;
        ngx_http_payflow_db_stmt(q, i)->nparams = 3;
        ngx_http_payflow_db_stmt(q, i)->values =
                    ngx_http_payflow_db_stmt(q, i - 2)->values;
    }

    return ngx_http_payflow_db_run(r, q, "creating a payment",
                                   ngx_http_payflow_payments_created);
}


static ngx_int_t
ngx_http_payflow_payments_created(ngx_http_request_t *r, pf_pg_query_t *q)
{
    char                           *fp, *phase, *locked, *payment;
    u_char                          hex[2 * 32 + 1];
    PGresult                       *pay, *key;
    ngx_str_t                       data, stored;
    ngx_uint_t                      n, status;
    pf_pg_query_t                  *q2;
    const char                    **values;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_main_conf_t   *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    n = q->nstmts - 3;

    if (ctx->idem_key.len == 0) {
        pay = ngx_http_payflow_db_result(q, n - 1);

        if (PQntuples(pay) != 1) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        data.data = (u_char *) PQgetvalue(pay, 0, 0);
        data.len = PQgetlength(pay, 0, 0);

        return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
    }

    pay = ngx_http_payflow_db_result(q, n - 2);
    key = ngx_http_payflow_db_result(q, n - 1);

    if (PQntuples(key) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    fp = PQgetvalue(key, 0, 0);
    phase = PQgetvalue(key, 0, 1);
    locked = PQgetvalue(key, 0, 2);
    payment = PQgetvalue(key, 0, 5);

    if (PQntuples(pay) == 1
        && ngx_strncmp(payment, ctx->payment_id.data, ctx->payment_id.len)
           == 0)
    {
        /* this request made the payment */
        data.data = (u_char *) PQgetvalue(pay, 0, 0);
        data.len = PQgetlength(pay, 0, 0);

        return ngx_http_payflow_payments_finish(r, &data);
    }

    if (ngx_http_payflow_fingerprint(r, hex) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_strcmp(fp, hex) != 0) {
        return ngx_http_payflow_idem_error(r, 422, "idempotency_key_reused",
                   "this Idempotency-Key was used with a different "
                   "request");
    }

    if (ngx_strcmp(phase, "finished") == 0) {
        status = ngx_atoi((u_char *) PQgetvalue(key, 0, 3),
                          PQgetlength(key, 0, 3));

        stored.len = PQgetlength(key, 0, 4);
        stored.data = ngx_pnalloc(r->pool, stored.len);
        if (stored.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(stored.data, PQgetvalue(key, 0, 4), stored.len);

        ngx_str_set(&data, "true");

        if (pf_response_add_header(r, "Idempotent-Replayed", &data)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_payflow_send_body(r, status, &stored);
    }

    if (locked[0] == 't') {
        return ngx_http_payflow_idem_error(r, NGX_HTTP_CONFLICT,
                   "idempotency_key_in_use",
                   "a request with this Idempotency-Key is in progress");
    }

    /* its request died after the payment was made: answer with it */

    q2 = ngx_http_payflow_db_query(r, 1, 1);
    values = ngx_pcalloc(r->pool, sizeof(char *));

    if (q2 == NULL || values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->payment_id.len = PQgetlength(key, 0, 5);
    ctx->payment_id.data = (u_char *) ngx_http_payflow_db_str(r->pool,
                                        &(ngx_str_t) { ctx->payment_id.len,
                                                       (u_char *) payment });
    values[0] = (char *) ctx->payment_id.data;

    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_stmt(q2, 0)->statement = pmcf->st.pay_get;
    ngx_http_payflow_db_stmt(q2, 0)->nparams = 1;
    ngx_http_payflow_db_stmt(q2, 0)->values = values;

    return ngx_http_payflow_db_run(r, q2, "resuming an idempotent request",
                                   ngx_http_payflow_payments_resumed);
}


static ngx_int_t
ngx_http_payflow_payments_resumed(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult   *pay;
    ngx_str_t   data;

    pay = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(pay) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    data.data = (u_char *) PQgetvalue(pay, 0, 0);
    data.len = PQgetlength(pay, 0, 0);

    return ngx_http_payflow_payments_finish(r, &data);
}


/*
 * The response is stored on the key before it is sent: whoever retries
 * gets these very bytes.
 */

static ngx_int_t
ngx_http_payflow_payments_finish(ngx_http_request_t *r, ngx_str_t *data)
{
    pf_pg_query_t                  *q;
    const char                    **values;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_main_conf_t   *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (pf_response_data_body(r->pool, data, ngx_http_payflow_request_id(r),
                              &ctx->response)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q = ngx_http_payflow_db_query(r, 1, 1);
    values = ngx_pcalloc(r->pool, 5 * sizeof(char *));

    if (q == NULL || values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);
    values[1] = ctx->auth.livemode ? "true" : "false";
    values[2] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);
    values[3] = "200";
    values[4] = ngx_http_payflow_db_str(r->pool, &ctx->response);

    if (values[0] == NULL || values[2] == NULL || values[4] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_stmt(q, 0)->statement = pmcf->st.idem_finish;
    ngx_http_payflow_db_stmt(q, 0)->nparams = 5;
    ngx_http_payflow_db_stmt(q, 0)->values = values;

    return ngx_http_payflow_db_run(r, q, "storing an idempotent response",
                                   ngx_http_payflow_payments_stored);
}


static ngx_int_t
ngx_http_payflow_payments_stored(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_http_payflow_ctx_t  *ctx;

    (void) q;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    return ngx_http_payflow_send_body(r, NGX_HTTP_OK, &ctx->response);
}


/* GET /v1/payments/{id} */

ngx_int_t
ngx_http_payflow_payments_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    pf_pg_query_t                  *q;
    const char                    **values;
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, 1);
    values = ngx_pcalloc(r->pool, sizeof(char *));

    if (q == NULL || values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_stmt(q, 0)->statement = pmcf->st.pay_get;
    ngx_http_payflow_db_stmt(q, 0)->nparams = 1;
    ngx_http_payflow_db_stmt(q, 0)->values = values;

    return ngx_http_payflow_db_run(r, q, "reading a payment",
                                   ngx_http_payflow_payments_got);
}


static ngx_int_t
ngx_http_payflow_payments_got(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult    *res;
    ngx_str_t    data;
    pf_error_t   err;

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1) {
        /* another tenant's payment is as absent as a missing one */
        ngx_memzero(&err, sizeof(pf_error_t));
        err.status = NGX_HTTP_NOT_FOUND;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "resource_missing";
        err.message = "no such payment";
        err.param = "id";

        return ngx_http_payflow_send_error(r, &err);
    }

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


static ngx_int_t
ngx_http_payflow_idem_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    pf_error_t  err;

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = status;
    err.type = PF_ERROR_IDEMPOTENCY;
    err.code = code;
    err.message = message;
    err.param = "Idempotency-Key";
    err.retry_after = (status == NGX_HTTP_CONFLICT) ? 1 : 0;

    return ngx_http_payflow_send_error(r, &err);
}


/* SHA-256 of method, path and the raw body, as lowercase hex */

static ngx_int_t
ngx_http_payflow_fingerprint(ngx_http_request_t *r, u_char *hex)
{
    u_char        digest[EVP_MAX_MD_SIZE];
    ngx_int_t     rc;
    ngx_chain_t  *cl;
    EVP_MD_CTX   *md;
    unsigned int  len;

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(md, r->method_name.data, r->method_name.len) != 1
        || EVP_DigestUpdate(md, "\n", 1) != 1
        || EVP_DigestUpdate(md, r->uri.data, r->uri.len) != 1
        || EVP_DigestUpdate(md, "\n", 1) != 1)
    {
        goto done;
    }

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            if (EVP_DigestUpdate(md, cl->buf->pos,
                                 cl->buf->last - cl->buf->pos)
                != 1)
            {
                goto done;
            }
        }
    }

    if (EVP_DigestFinal_ex(md, digest, &len) != 1) {
        goto done;
    }

    *ngx_hex_dump(hex, digest, len) = '\0';
    rc = NGX_OK;

done:

    EVP_MD_CTX_free(md);

    return rc;
}


static ngx_int_t
ngx_http_payflow_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NGX_DECLINED;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            *value = h[i].value;
            return NGX_OK;
        }
    }
}


static ngx_int_t
ngx_http_payflow_bad(ngx_http_request_t *r, const char *param,
    const char *code, const char *message)
{
    pf_error_t  err;

    pf_json_param_error(&err, param, code, message);

    return ngx_http_payflow_send_error(r, &err);
}


static char *
ngx_http_payflow_text(ngx_http_request_t *r, json_t *v)
{
    ngx_str_t  text;

    /* pf_response_dump() releases what it is given */
    json_incref(v);

    if (pf_response_dump(r->pool, v, &text) != NGX_OK) {
        return NULL;
    }

    return ngx_http_payflow_db_str(r->pool, &text);
}


/*
 * The sandbox's outcome from the amount's last two digits:
 * ..02 declined, ..05 insufficient funds, ..08 requires action (a
 * redirect), ..09 stays processing (the slow, undecided case); anything
 * else succeeds, or waits for capture with capture_method "manual".
 */

static ngx_http_payflow_outcome_t *
ngx_http_payflow_sandbox(json_int_t amount, ngx_uint_t manual)
{
    switch (amount % 100) {
    case 2:
        return &ngx_http_payflow_outcomes[2];
    case 5:
        return &ngx_http_payflow_outcomes[3];
    case 8:
        return &ngx_http_payflow_outcomes[4];
    case 9:
        return &ngx_http_payflow_outcomes[5];
    default:
        return &ngx_http_payflow_outcomes[manual ? 1 : 0];
    }
}
