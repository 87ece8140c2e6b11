
/*
 * Copyright (C) PayFlow
 *
 * POST /v1/payments, GET /v1/payments/{id}, capture, cancel and the event
 * log, and the runner of the money operations on an existing payment
 * (ngx_http_payflow_money.h): capture and cancel here, refunds in
 * ngx_http_payflow_refunds.c.
 *
 * A payment is created and confirmed in one call.  With the built-in
 * sandbox provider (ngx_http_payflow_sandbox.c) the whole creation is one
 * statement, payflow_payment_create(): the idempotency key (when given)
 * with its stored answer, the payment in its outcome, its events and
 * outbox deliveries, its ledger transaction (sealed into the chain later
 * by ngx_http_payflow_sealer.c); a replay sends the stored bytes.
 * Capture, cancel and refund store their answer in a second round trip;
 * a key left locked by a request that died before that is resumed
 * from its object once the lock has expired (or completed by the
 * background jobs).  The key's own handling, replays and stored answers
 * are in ngx_http_payflow_idempotency.c.
 */


#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_pii.h"
#include "ngx_http_payflow_auth.h"
#include "ngx_http_payflow_idempotency.h"
#include "ngx_http_payflow_money.h"
#include "ngx_http_payflow_providers.h"
#include "ngx_http_payflow_refunds.h"
#include "ngx_http_payflow_risk.h"
#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_sandbox.h"


static const char  ngx_http_payflow_payments_group[] = "payments";
static const char  ngx_http_payflow_outcomes_group[] = "outcomes";


typedef struct {
    const char                 *code;
    ngx_uint_t                  exponent;
} ngx_http_payflow_currency_t;


static ngx_int_t ngx_http_payflow_payments_held(ngx_http_request_t *r,
    PGresult *row);
static ngx_int_t ngx_http_payflow_payments_risk(ngx_http_request_t *r,
    json_t *body, json_int_t amount, const char *currency,
    const char *method, const char **risk, pf_pg_query_t *q,
    ngx_http_payflow_db_ok_pt ok);
static ngx_int_t ngx_http_payflow_payments_outcome(ngx_http_request_t *r,
    ngx_http_payflow_provider_result_t *res);
static ngx_int_t ngx_http_payflow_payments_made(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_payments_started(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_payments_charged(ngx_http_request_t *r,
    pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_payments_rerouted(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_payments_backoff(ngx_http_request_t *r,
    ngx_msec_t delay);
static void ngx_http_payflow_payments_retry(ngx_event_t *ev);
static void ngx_http_payflow_payments_backoff_cleanup(void *data);
static ngx_int_t ngx_http_payflow_provider_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message,
    const char *param);
static ngx_int_t ngx_http_payflow_payments_got(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_money_done(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_money_unsupported(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_money_remote(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_money_routed(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_money_called(ngx_http_request_t *r,
    pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_capture_answer(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_cancel_answer(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_events_got(ngx_http_request_t *r,
    pf_pg_query_t *q);
static char *ngx_http_payflow_text(ngx_http_request_t *r, json_t *v);
static ngx_uint_t ngx_http_payflow_status_is(PGresult *pay,
    const char *status);


/*
 * Capture and cancel, filled once per worker when the statements are
 * known: as the sandbox does them, and after a network provider did its
 * part (remote).  The refund's are in ngx_http_payflow_refunds.c.
 */

static ngx_http_payflow_money_t  ngx_http_payflow_capture_op;
static ngx_http_payflow_money_t  ngx_http_payflow_cancel_op;
static ngx_http_payflow_money_t  ngx_http_payflow_capture_remote_op;
static ngx_http_payflow_money_t  ngx_http_payflow_cancel_remote_op;


static const char  *ngx_http_payflow_payment_fields[] = {
    "amount", "currency", "description", "customer", "metadata",
    "capture_method", "provider", "payment_method", "return_url", NULL
};

static const char  *ngx_http_payflow_customer_fields[] = {
    "email", "name", "phone", "id", "country", NULL
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


ngx_int_t
ngx_http_payflow_payments_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    /*
     * A new payment, its key, events and ledger in one call (sql/0018):
     * in its provider's answer for the sandbox, processing for a network
     * provider still to be called.  Parameters as
     * ngx_http_payflow_payments_values() sets them; the row is the key as
     * idem_get reads it, then the payment.
     */

    st->pay_create = pf_pg_statement_add(pmcf->db, "payflow_pay_create",
        "SELECT fingerprint, phase, locked, response_status, "
        "response_body, payment_id, request_id, object_id, mine, payment, "
        "decision, copied FROM payflow_payment_create($1, $2::bigint, $3, "
        "$4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13, $14, "
        "$15, $16, $17, $18, $19, $20, $21::int, $22::jsonb)", 22);

    /*
     * The same for the payments of a group at once (sql/0028), their
     * scopes and calls as pf_pg's merge passes them (pf_pg.h)
     */

    st->pay_create_many = pf_pg_statement_add(pmcf->db,
        "payflow_pay_create_many",
        "SELECT member, fingerprint, phase, locked, response_status, "
        "response_body, payment_id, request_id, object_id, mine, payment, "
        "decision, copied FROM payflow_payment_create_many($1::jsonb)", 1);

    st->pay_outcome = pf_pg_statement_add(pmcf->db, "payflow_pay_outcome",
        "UPDATE payments SET status = $2, "
        "amount_captured = CASE WHEN $2 = 'succeeded' THEN amount ELSE 0 END, "
        "amount_capturable = CASE WHEN $2 = 'requires_capture' "
        "THEN amount ELSE 0 END, "
        "failure_code = $3, failure_message = $4, "
        "next_action = CASE WHEN $5::text IS NOT NULL THEN "
        "jsonb_build_object('type', 'redirect_to_url', 'redirect_url', $5, "
        "'return_url', return_url) END, "
        "provider_reference = coalesce($6, id) "
        "WHERE id = $1 AND status = 'processing'", 6);

    /*
     * A keyed payment's answer is stored in its own transaction: $5 and $6
     * are the envelope around the payment's JSON, built by C as for any
     * answer; the client is sent what the key now holds.
     */
    st->pay_finish = pf_pg_statement_add(pmcf->db, "payflow_pay_finish",
        "UPDATE idempotency_keys SET phase = 'finished', "
        "response_status = $7::int, locked_until = NULL, "
        "response_body = $5 || (SELECT payflow_payment_json(p)::text "
        "FROM payments p WHERE p.id = $4) || $6 "
        "WHERE tenant_id = $1 AND livemode = $2::boolean AND key = $3 "
        "AND payment_id = $4 AND phase = 'payment_created' "
        "RETURNING response_body", 7);

    st->pay_reference = pf_pg_statement_add(pmcf->db,
        "payflow_pay_reference",
        "UPDATE payments SET provider_reference = $2 "
        "WHERE id = $1 AND status = 'processing' "
        "AND provider_reference IS NULL", 2);

    st->pay_reroute = pf_pg_statement_add(pmcf->db, "payflow_pay_reroute",
        "UPDATE payments SET provider = $2, routing = $3 "
        "WHERE id = $1 AND status = 'processing' AND provider = $4 "
        "RETURNING id", 4);

    st->pay_get = pf_pg_statement_add(pmcf->db, "payflow_pay_get",
        "SELECT payflow_payment_json(p)::text FROM payments p "
        "WHERE id = $1", 1);

    if (ngx_http_payflow_idempotency_init(pmcf) != NGX_OK) {
        return NGX_ERROR;
    }

#define NGX_HTTP_PAYFLOW_CAPTURE                                              \
    "UPDATE payments p SET status = 'succeeded', "                           \
    "amount_captured = coalesce($2::bigint, p.amount_capturable), "          \
    "amount_capturable = 0 "

#define NGX_HTTP_PAYFLOW_CAPTURE_WHERE(where)                                 \
    "p.id = $1 AND " where                                                   \
    "AND p.status = 'requires_capture' "                                     \
    "AND coalesce($2::bigint, p.amount_capturable) "                         \
    "BETWEEN 1 AND p.amount_capturable RETURNING p.id"

    st->capture = pf_pg_statement_add(pmcf->db, "payflow_capture",
        NGX_HTTP_PAYFLOW_CAPTURE "WHERE "
        NGX_HTTP_PAYFLOW_CAPTURE_WHERE(NGX_HTTP_PAYFLOW_LOCAL), 2);

    st->capture_keyed = pf_pg_statement_add(pmcf->db, "payflow_capture_k",
        NGX_HTTP_PAYFLOW_KEY_CTE("$3", "$4", "$5", "$6", "$7", "$8", "$1",
                                 "$1")
        NGX_HTTP_PAYFLOW_CAPTURE "FROM k WHERE "
        NGX_HTTP_PAYFLOW_CAPTURE_WHERE(NGX_HTTP_PAYFLOW_LOCAL), 8);

    st->capture_remote = pf_pg_statement_add(pmcf->db, "payflow_capture_r",
        NGX_HTTP_PAYFLOW_CAPTURE "WHERE "
        NGX_HTTP_PAYFLOW_CAPTURE_WHERE(NGX_HTTP_PAYFLOW_REMOTE), 2);

    st->capture_remote_keyed = pf_pg_statement_add(pmcf->db,
        "payflow_capture_rk",
        NGX_HTTP_PAYFLOW_KEY_CTE("$3", "$4", "$5", "$6", "$7", "$8", "$1",
                                 "$1")
        NGX_HTTP_PAYFLOW_CAPTURE "FROM k WHERE "
        NGX_HTTP_PAYFLOW_CAPTURE_WHERE(NGX_HTTP_PAYFLOW_REMOTE), 8);

#define NGX_HTTP_PAYFLOW_CANCEL                                               \
    "UPDATE payments p SET status = 'canceled', amount_capturable = 0 "

/*
 * After the provider canceled it, a payment its webhook already recorded
 * as canceled is canceled all the same (nothing changes, no event).
 */

#define NGX_HTTP_PAYFLOW_CANCEL_WHERE(where, also)                            \
    "p.id = $1 AND " where                                                   \
    "AND p.status IN ('pending', 'requires_action', 'requires_capture'" also \
    ") RETURNING p.id"

    st->cancel = pf_pg_statement_add(pmcf->db, "payflow_cancel",
        NGX_HTTP_PAYFLOW_CANCEL "WHERE "
        NGX_HTTP_PAYFLOW_CANCEL_WHERE(NGX_HTTP_PAYFLOW_LOCAL, ""), 1);

    st->cancel_keyed = pf_pg_statement_add(pmcf->db, "payflow_cancel_k",
        NGX_HTTP_PAYFLOW_KEY_CTE("$2", "$3", "$4", "$5", "$6", "$7", "$1",
                                 "$1")
        NGX_HTTP_PAYFLOW_CANCEL "FROM k WHERE "
        NGX_HTTP_PAYFLOW_CANCEL_WHERE(NGX_HTTP_PAYFLOW_LOCAL, ""), 7);

    st->cancel_remote = pf_pg_statement_add(pmcf->db, "payflow_cancel_r",
        NGX_HTTP_PAYFLOW_CANCEL "WHERE "
        NGX_HTTP_PAYFLOW_CANCEL_WHERE(NGX_HTTP_PAYFLOW_REMOTE,
                                      ", 'canceled'"), 1);

    st->cancel_remote_keyed = pf_pg_statement_add(pmcf->db,
        "payflow_cancel_rk",
        NGX_HTTP_PAYFLOW_KEY_CTE("$2", "$3", "$4", "$5", "$6", "$7", "$1",
                                 "$1")
        NGX_HTTP_PAYFLOW_CANCEL "FROM k WHERE "
        NGX_HTTP_PAYFLOW_CANCEL_WHERE(NGX_HTTP_PAYFLOW_REMOTE,
                                      ", 'canceled'"), 7);

    if (ngx_http_payflow_refunds_init(pmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    st->pay_route = pf_pg_statement_add(pmcf->db, "payflow_pay_route",
        "SELECT provider, coalesce(provider_reference, id), currency "
        "FROM payments WHERE id = $1", 1);

    st->pay_events = pf_pg_statement_add(pmcf->db, "payflow_pay_events",
        "SELECT coalesce(jsonb_agg(payflow_event_json(e) "
        "ORDER BY e.created_at, e.id), '[]')::text "
        "FROM payment_events e WHERE e.payment_id = $1", 1);

    if (st->capture == NULL || st->capture_keyed == NULL
        || st->capture_remote == NULL || st->capture_remote_keyed == NULL
        || st->cancel == NULL || st->cancel_keyed == NULL
        || st->cancel_remote == NULL || st->cancel_remote_keyed == NULL
        || st->pay_route == NULL || st->pay_events == NULL)
    {
        return NGX_ERROR;
    }

    if (st->pay_create == NULL || st->pay_create_many == NULL
        || st->pay_outcome == NULL || st->pay_reroute == NULL
        || st->pay_reference == NULL
        || st->pay_finish == NULL || st->pay_get == NULL)
    {
        return NGX_ERROR;
    }

    ngx_http_payflow_capture_op.what = "capturing a payment";
    ngx_http_payflow_capture_op.plain = st->capture;
    ngx_http_payflow_capture_op.keyed = st->capture_keyed;
    ngx_http_payflow_capture_op.get = st->pay_get;
    ngx_http_payflow_capture_op.answer = ngx_http_payflow_capture_answer;

    ngx_http_payflow_capture_remote_op = ngx_http_payflow_capture_op;
    ngx_http_payflow_capture_remote_op.plain = st->capture_remote;
    ngx_http_payflow_capture_remote_op.keyed = st->capture_remote_keyed;

    ngx_http_payflow_cancel_op.what = "canceling a payment";
    ngx_http_payflow_cancel_op.plain = st->cancel;
    ngx_http_payflow_cancel_op.keyed = st->cancel_keyed;
    ngx_http_payflow_cancel_op.get = st->pay_get;
    ngx_http_payflow_cancel_op.answer = ngx_http_payflow_cancel_answer;

    ngx_http_payflow_cancel_remote_op = ngx_http_payflow_cancel_op;
    ngx_http_payflow_cancel_remote_op.plain = st->cancel_remote;
    ngx_http_payflow_cancel_remote_op.keyed = st->cancel_remote_keyed;

    return NGX_OK;
}


/* POST /v1/payments */

ngx_int_t
ngx_http_payflow_payments_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                         *p, *msg, hex[2 * 32 + 1];
    char                           *currency, *customer, *metadata;
    json_t                         *v, *item, *body, *who;
    size_t                          len;
    ngx_int_t                       rc;
    ngx_uint_t                      i, manual, n, keyed;
    pf_error_t                      err;
    json_int_t                      amount;
    ngx_str_t                       name;
    const char                     *key, **values, *provider;
    const char                     *method;
    pf_pg_query_t                  *q;
    const char                     *email;
    ngx_http_payflow_plan_t        *plan;
    ngx_http_payflow_operation_t   *op;
    ngx_http_payflow_provider_t    *pv;
    ngx_http_payflow_provider_result_t  res;
    ngx_int_t                       exponent;
    ngx_http_payflow_loc_conf_t    *plcf;
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);
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

    if (amount <= 0 || amount > plcf->max_amount) {
        msg = ngx_pnalloc(r->pool, 128);
        if (msg == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *ngx_snprintf(msg, 127, "amount must be a positive integer in the "
                      "currency's minor unit, at most %O",
                      plcf->max_amount) = '\0';

        return ngx_http_payflow_bad(r, "amount", "amount_invalid",
                                    (char *) msg);
    }

    v = json_object_get(body, "currency");

    if (v == NULL) {
        return ngx_http_payflow_bad(r, "currency", "parameter_missing",
                                    "currency is required");
    }

    currency = NULL;
    exponent = NGX_ERROR;

    if (json_is_string(v) && json_string_length(v) == 3) {
        currency = ngx_pnalloc(r->pool, 4);
        if (currency == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (i = 0; i < 3; i++) {
            currency[i] = ngx_toupper(json_string_value(v)[i]);
        }

        currency[3] = '\0';

        exponent = ngx_http_payflow_payments_exponent(currency);

        if (exponent == NGX_ERROR) {
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

    method = NULL;
    v = json_object_get(body, "payment_method");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0
            || json_string_length(v) > 255)
        {
            return ngx_http_payflow_bad(r, "payment_method",
                       "parameter_invalid",
                       "payment_method must be a provider's payment method "
                       "id of 1 to 255 characters");
        }

        method = json_string_value(v);
    }

    v = json_object_get(json_object_get(body, "customer"), "email");
    email = json_is_string(v) ? json_string_value(v) : NULL;

    plan = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_plan_t));
    if (plan == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v = json_object_get(body, "provider");

    if (v && !json_is_string(v)) {
        return ngx_http_payflow_bad(r, "provider", "parameter_invalid",
                                    "provider must be a string");
    }

    if (v && ngx_strcmp(json_string_value(v), "sandbox") != 0) {
        name.data = (u_char *) json_string_value(v);
        name.len = json_string_length(v);

        pv = ngx_http_payflow_request_provider(r, &name, 1);
        if (pv == NULL) {
            return ngx_http_payflow_bad(r, "provider", "provider_unavailable",
                       ctx->auth.livemode
                       ? "no such provider is configured for live mode, "
                         "nor an enabled provider account of this tenant"
                       : "no such provider is configured for test mode, "
                         "nor an enabled provider account of this tenant");
        }

        plan->providers[plan->n++] = pv;
        plan->strategy = "requested";

    } else if (v == NULL) {
        rc = ngx_http_payflow_route_plan(r, plan, currency, amount);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED && ctx->auth.livemode) {
            pv = ngx_http_payflow_provider_default(pmcf, 1);

            if (pv) {
                plan->providers[plan->n++] = pv;
                plan->strategy = "default";
            }
        }
    }

    if (plan->n == 0 && ctx->auth.livemode) {
        /* the sandbox never moves real money */
        return ngx_http_payflow_bad(r, "provider", "provider_unavailable",
                   "no provider is configured for live mode");
    }

    /* providers that cannot take this payment leave the plan */

    for (i = 0, n = 0; i < plan->n; i++) {
        pv = plan->providers[i];

        if ((pv->adapter->needs_payment_method && method == NULL)
            || (pv->adapter->needs_email && email == NULL)
            || (manual && !pv->adapter->manual_capture))
        {
            continue;
        }

        plan->providers[n++] = pv;
    }

    if (n == 0 && plan->n) {
        pv = plan->providers[0];

        if (manual && !pv->adapter->manual_capture) {
            return ngx_http_payflow_bad(r, "capture_method",
                       "parameter_invalid",
                       "this payment's provider does not support manual "
                       "capture");
        }

        if (pv->adapter->needs_payment_method && method == NULL) {
            return ngx_http_payflow_bad(r, "payment_method",
                       "parameter_missing",
                       "payment_method is required for this provider");
        }

        return ngx_http_payflow_bad(r, "customer[email]",
                   "parameter_missing",
                   "customer email is required for this provider");
    }

    plan->n = n;
    pv = NULL;

    if (plan->n) {
        pv = ngx_http_payflow_route_next(r, plan, NULL);

        if (pv == NULL) {
            return ngx_http_payflow_provider_error(r,
                       NGX_HTTP_SERVICE_UNAVAILABLE, "provider_unavailable",
                       "every provider for this payment is unavailable "
                       "(circuit open); nothing was charged", NULL);
        }
    }

    provider = pv ? (const char *) pv->name.data : "sandbox";

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
    who = NULL;
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

        item = json_object_get(v, "id");

        if (item && (!json_is_string(item) || json_string_length(item) == 0
                     || json_string_length(item) > 255
                     || !pf_text_valid((u_char *) json_string_value(item),
                                       json_string_length(item))))
        {
            return ngx_http_payflow_bad(r, "customer[id]",
                                        "parameter_invalid",
                                        "customer id: your own reference "
                                        "for the customer, 1 to 255 bytes "
                                        "of text");
        }

        item = json_object_get(v, "country");

        if (item && (!json_is_string(item) || json_string_length(item) != 2
                     || !isalpha(json_string_value(item)[0])
                     || !isalpha(json_string_value(item)[1])))
        {
            return ngx_http_payflow_bad(r, "customer[country]",
                                        "parameter_invalid",
                                        "customer country: an ISO 3166-1 "
                                        "alpha-2 code such as \"GB\"");
        }

        who = v;
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

    rc = ngx_http_payflow_idem_header(r, ctx);

    if (rc == NGX_ABORT) {
        return ngx_http_payflow_idem_invalid(r);
    }

    keyed = (rc == NGX_OK);

    if (keyed && ngx_http_payflow_fingerprint(r, hex) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (pf_id_generate_ordered(r->pool, "pay_", &ctx->payment_id) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* its details sealed under the payment's own key (sql/0024) */

    if (who && ngx_http_payflow_pii_seal(r, who, &customer) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_pcalloc(r->pool, 22 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->payment_id);
    values[1] = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    values[2] = currency;
    values[3] = manual ? "manual" : "automatic";
    values[4] = provider;
    v = json_object_get(body, "description");
    values[5] = (v && json_is_string(v)) ? json_string_value(v) : NULL;
    values[6] = customer;
    values[7] = metadata;
    v = json_object_get(body, "return_url");
    values[8] = (v && json_is_string(v)) ? json_string_value(v) : NULL;
    values[9] = method;

    if (values[0] == NULL || values[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf((u_char *) values[1], "%L", (int64_t) amount) = '\0';

    if (pv) {
        values[10] = ngx_http_payflow_db_str(r->pool, &plan->reason);
        if (values[10] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (keyed) {
        values[16] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);
        values[17] = (char *) ngx_pstrdup(r->pool, &(ngx_str_t)
                                          { sizeof(hex), hex });
        if (values[16] == NULL || values[17] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (pv) {
        /*
         * A provider over the network: the payment (and key) commit first,
         * so that a crash during the call leaves a processing payment to
         * verify, never a charge nobody knows of.
         */

        op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_operation_t));
        if (op == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        op->op = NGX_HTTP_PAYFLOW_OP_CHARGE;
        op->payment_id = ctx->payment_id;
        op->amount = amount;
        op->currency = currency;
        op->exponent = exponent;
        op->payment_method = method;
        op->description = values[5];
        op->return_url = values[8];
        op->email = email;
        op->manual = manual;

        plan->deadline = ngx_current_msec + pmcf->provider_deadline;

        ctx->provider = pv;
        ctx->plan = plan;
        ctx->op = op;
        ctx->outcome = "processing";

        values[11] = "processing";

        q = ngx_http_payflow_db_query(r, 1, 1);
        if (q == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_payflow_db_set(q, 0, pmcf->st.pay_create, 22, values);

        /* written with the sandbox's payments waiting beside it */
        q->group = ngx_http_payflow_payments_group;
        q->merge = pmcf->st.pay_create_many;

        /* scored before any provider is asked; decided with the payment */

        return ngx_http_payflow_payments_risk(r, body, amount, currency,
                   method, &values[21], q, ngx_http_payflow_payments_started);
    }

    if (ngx_http_payflow_sandbox_result(r->pool, amount, manual,
                                        &ctx->payment_id, &res)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * The sandbox is in-process: one call writes the payment in its
     * outcome, with its key finished on the answer when there is one.
     */

    if (ngx_http_payflow_payments_outcome(r, &res) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[11] = ctx->outcome;
    values[12] = res.code;
    values[13] = res.message;
    values[14] = ngx_http_payflow_nullable(r, &res.redirect_url);
    values[15] = ngx_http_payflow_nullable(r, &res.reference);

    if (keyed) {
        p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);

        if (p == NULL
            || ngx_http_payflow_envelope(r, &values[18], &values[19])
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *ngx_sprintf(p, "%ui", ctx->response_status) = '\0';
        values[20] = (char *) p;
    }

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.pay_create, 22, values);

    /*
     * Payments waiting for a connection commit together (pf_pg.h), all
     * written by one statement; alone, or if that fails, each is its own
     * scope and call between BEGIN and COMMIT.
     */
    q->group = ngx_http_payflow_payments_group;
    q->merge = pmcf->st.pay_create_many;

    return ngx_http_payflow_payments_risk(r, body, amount, currency, method,
                                          &values[21], q,
                                          ngx_http_payflow_payments_made);
}


/* the provider's answer, as this request will tell it */

static ngx_int_t
ngx_http_payflow_payments_outcome(ngx_http_request_t *r,
    ngx_http_payflow_provider_result_t *res)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ctx->outcome = res->status ? res->status : "processing";

    ctx->result = ngx_palloc(r->pool,
                             sizeof(ngx_http_payflow_provider_result_t));
    if (ctx->result == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ctx->result, res, sizeof(ngx_http_payflow_provider_result_t));

    return NGX_OK;
}


/*
 * The sandbox's payment is in: the row is its key (idem_get's columns)
 * and its JSON.  Another request's key means that request made the
 * payment; this one answers what that key holds.
 */

static ngx_int_t
ngx_http_payflow_payments_made(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                *row;
    ngx_str_t                data;
    pf_error_t               err;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    row = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(row) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetvalue(row, 0, 8)[0] != 't') {
        return ngx_http_payflow_idem_other(r, row);
    }

    ctx->created = 1;

    ngx_http_payflow_risk_count(r);

    if (!PQgetisnull(row, 0, 10)) {
        ngx_http_payflow_risk_decided(r, PQgetvalue(row, 0, 10),
                                      PQgetvalue(row, 0, 11)[0] == 't');

        if (ngx_strcmp(PQgetvalue(row, 0, 10), "allow") != 0) {
            return ngx_http_payflow_payments_held(r, row);
        }
    }

    if (ctx->idem_key.len) {
        /* this request made the payment and stored its answer */
        ctx->idem = NGX_HTTP_PAYFLOW_IDEM_NEW;
        ctx->response.data = (u_char *) PQgetvalue(row, 0, 4);
        ctx->response.len = PQgetlength(row, 0, 4);

        return ngx_http_payflow_send_body(r, ctx->response_status,
                                          &ctx->response);
    }

    data.data = (u_char *) PQgetvalue(row, 0, 9);
    data.len = PQgetlength(row, 0, 9);

    ngx_http_payflow_payment_error(r, &err);

    if (err.status == NGX_HTTP_OK) {
        return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
    }

    err.object = &data;

    if (pf_response_error_body(r->pool, &err, ngx_http_payflow_request_id(r),
                               &ctx->response)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_body(r, err.status, &ctx->response);
}


/*
 * Statements from i on that record a new payment's outcome and read its
 * answer: [outcome], then finish and idem_get with a key, or get.
 */

ngx_int_t
ngx_http_payflow_payments_settle(ngx_http_request_t *r, pf_pg_query_t *q,
    ngx_uint_t i, ngx_http_payflow_provider_result_t *res, ngx_uint_t record)
{
    u_char                         *p;
    const char                    **values, **finish;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_main_conf_t   *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (ngx_http_payflow_payments_outcome(r, res) != NGX_OK) {
        return NGX_ERROR;
    }

    /* tenant, livemode, key, payment, envelope head and tail, status */

    finish = ngx_pcalloc(r->pool, 7 * sizeof(char *));
    if (finish == NULL) {
        return NGX_ERROR;
    }

    finish[0] = ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);
    finish[1] = ctx->auth.livemode ? "true" : "false";
    finish[3] = ngx_http_payflow_db_str(r->pool, &ctx->payment_id);

    if (finish[0] == NULL || finish[3] == NULL) {
        return NGX_ERROR;
    }

    if (!record) {
        /* the payment is in its state already: only its answer */

    } else if (res->status) {
        values = ngx_pcalloc(r->pool, 6 * sizeof(char *));
        if (values == NULL) {
            return NGX_ERROR;
        }

        values[0] = finish[3];
        values[1] = res->status;
        values[2] = res->code;
        values[3] = res->message;
        values[4] = ngx_http_payflow_nullable(r, &res->redirect_url);
        values[5] = ngx_http_payflow_nullable(r, &res->reference);

        ngx_http_payflow_db_set(q, i++, pmcf->st.pay_outcome, 6, values);

    } else if (res->reference.len) {
        /* undecided, but the provider's id is known: it is asked by it */

        values = ngx_pcalloc(r->pool, 2 * sizeof(char *));
        if (values == NULL) {
            return NGX_ERROR;
        }

        values[0] = finish[3];
        values[1] = ngx_http_payflow_db_str(r->pool, &res->reference);

        if (values[1] == NULL) {
            return NGX_ERROR;
        }

        ngx_http_payflow_db_set(q, i++, pmcf->st.pay_reference, 2, values);
    }

    if (ctx->idem_key.len == 0) {
        ngx_http_payflow_db_set(q, i, pmcf->st.pay_get, 1, &finish[3]);

        return NGX_OK;
    }

    finish[2] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);
    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);

    if (finish[2] == NULL || p == NULL
        || ngx_http_payflow_envelope(r, &finish[4], &finish[5]) != NGX_OK)
    {
        return NGX_ERROR;
    }

    *ngx_sprintf(p, "%ui", ctx->response_status) = '\0';
    finish[6] = (char *) p;

    ngx_http_payflow_db_set(q, i++, pmcf->st.pay_finish, 7, finish);

    ngx_http_payflow_db_set(q, i, pmcf->st.idem_get, 3, finish);

    return NGX_OK;
}


/*
 * How a new payment is answered: 200 unless it failed; a decline is 402,
 * a provider that could not take it 503 (502 when it refused PayFlow),
 * each with the payment in the error.
 */

void
ngx_http_payflow_payment_error(ngx_http_request_t *r, pf_error_t *err)
{
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_provider_result_t  *res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    res = ctx->result;

    ngx_memzero(err, sizeof(pf_error_t));

    if (res == NULL || res->status == NULL
        || ngx_strcmp(res->status, "failed") != 0)
    {
        err->status = NGX_HTTP_OK;
        return;
    }

    err->type = PF_ERROR_PROVIDER;
    err->code = res->code ? res->code : "payment_failed";
    err->message = res->message ? res->message : "the payment failed";
    err->object_name = "payment";

    if (res->declined) {
        err->status = 402;    /* Payment Required */

    } else if (res->code
               && ngx_strcmp(res->code, "provider_authentication_failed")
                  == 0)
    {
        err->status = NGX_HTTP_BAD_GATEWAY;

    } else {
        err->status = NGX_HTTP_SERVICE_UNAVAILABLE;
    }
}


/* an error from a provider's side, nothing stored */

static ngx_int_t
ngx_http_payflow_provider_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, const char *param)
{
    pf_error_t  err;

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = status;
    err.type = PF_ERROR_PROVIDER;
    err.code = code;
    err.message = message;
    err.param = param;

    return ngx_http_payflow_send_error(r, &err);
}


/* the payment (and its key) committed: now the provider */

static ngx_int_t
ngx_http_payflow_payments_started(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                *key;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ctx->idem_key.len) {
        key = ngx_http_payflow_db_result(q, 0);

        if (PQntuples(key) != 1) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (PQgetvalue(key, 0, 8)[0] != 't') {
            /* another request's key: it made the payment, not this one */
            return ngx_http_payflow_idem_other(r, key);
        }
    }

    ctx->created = 1;

    ngx_http_payflow_risk_count(r);

    key = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(key) == 1 && !PQgetisnull(key, 0, 10)) {
        ngx_http_payflow_risk_decided(r, PQgetvalue(key, 0, 10),
                                      PQgetvalue(key, 0, 11)[0] == 't');

        if (ngx_strcmp(PQgetvalue(key, 0, 10), "allow") != 0) {
            /* no provider is asked */
            return ngx_http_payflow_payments_held(r, key);
        }
    }

    return ngx_http_payflow_payments_attempt(r);
}


/*
 * The risk decision held a new payment before any provider: blocked
 * (402 payment_blocked, the payment failed) or waiting for review (200,
 * requires_review).  Its key, if any, is finished on that answer.
 */

static ngx_int_t
ngx_http_payflow_payments_held(ngx_http_request_t *r, PGresult *row)
{
    pf_pg_query_t                       *q;
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_provider_result_t   res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ngx_memzero(&res, sizeof(ngx_http_payflow_provider_result_t));

    if (ngx_strcmp(PQgetvalue(row, 0, 10), "block") == 0) {
        res.status = "failed";
        res.code = "payment_blocked";
        res.message = "the payment was blocked by the risk rules; nothing "
                      "was charged";
        res.declined = 1;

    } else {
        res.status = "requires_review";
    }

    q = ngx_http_payflow_db_query(r, ctx->idem_key.len ? 2 : 1, 1);

    if (q == NULL
        || ngx_http_payflow_payments_settle(r, q, 0, &res, 0) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_db_run(r, q, "answering a held payment",
                                   ngx_http_payflow_payments_created);
}


/*
 * A new payment's signals for the risk engine, which sets *risk (its
 * p_risk; NULL with the engine off) and then runs q, the statement that
 * creates the payment.
 */

static ngx_int_t
ngx_http_payflow_payments_risk(ngx_http_request_t *r, json_t *body,
    json_int_t amount, const char *currency, const char *method,
    const char **risk, pf_pg_query_t *q, ngx_http_payflow_db_ok_pt ok)
{
    u_char                           *at;
    json_t                           *customer, *v;
    ngx_uint_t                        i;
    ngx_http_payflow_main_conf_t     *pmcf;
    ngx_http_payflow_risk_signals_t   sig;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    *risk = NULL;

    if (pmcf->risk == NULL) {
        return ngx_http_payflow_db_run(r, q, "creating a payment", ok);
    }

    ngx_memzero(&sig, sizeof(ngx_http_payflow_risk_signals_t));

    sig.amount = amount;
    sig.currency = currency;

    customer = json_object_get(body, "customer");
    v = json_object_get(customer, "email");

    if (json_is_string(v)) {
        sig.email.len = json_string_length(v);
        sig.email.data = ngx_pnalloc(r->pool, sig.email.len);
        if (sig.email.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        for (i = 0; i < sig.email.len; i++) {
            sig.email.data[i] = ngx_tolower(json_string_value(v)[i]);
        }

        at = ngx_strlchr(sig.email.data, sig.email.data + sig.email.len,
                         '@');
        if (at) {
            sig.domain.data = at + 1;
            sig.domain.len = sig.email.data + sig.email.len - at - 1;
        }

        sig.customer = sig.email;
    }

    v = json_object_get(customer, "id");

    if (json_is_string(v)) {
        sig.customer_id.data = (u_char *) json_string_value(v);
        sig.customer_id.len = json_string_length(v);
        sig.customer = sig.customer_id;
    }

    v = json_object_get(customer, "country");

    if (json_is_string(v)) {
        sig.country.data = (u_char *) json_string_value(v);
        sig.country.len = json_string_length(v);
    }

    if (method) {
        sig.card.data = (u_char *) method;
        sig.card.len = ngx_strlen(method);
    }

    /* the client, as nginx sees it (set_real_ip_from: a trusted proxy's) */

    switch (r->connection->sockaddr->sa_family) {
    case AF_INET:
#if (NGX_HAVE_INET6)
    case AF_INET6:
#endif
        sig.ip = r->connection->addr_text;
        break;
    default:
        break;
    }

    return ngx_http_payflow_risk_assess(r, &sig, risk, q,
                                        "creating a payment", ok);
}


ngx_int_t
ngx_http_payflow_payments_attempt(ngx_http_request_t *r)
{
    ngx_msec_t                     left;
    pf_curl_call_t                *call;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_plan_t       *plan;
    ngx_http_payflow_provider_t   *pv;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pv = (ngx_http_payflow_provider_t *) ctx->provider;
    plan = ctx->plan;

    call = ngx_http_payflow_provider_call(r, pv);
    if (call == NULL || pv->adapter->request(pv, ctx->op, call) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the call fits in what is left of the deadline */

    left = plan->deadline - ngx_current_msec;

    if ((ngx_msec_int_t) left < 1000) {
        left = 1000;
    }

    call->timeout = ngx_min(call->timeout, left);
    call->connect_timeout = ngx_min(call->connect_timeout, call->timeout);

    ctx->attempts++;

    return ngx_http_payflow_provider_run(r, call,
                                         ngx_http_payflow_payments_charged);
}


static ngx_int_t
ngx_http_payflow_payments_charged(ngx_http_request_t *r,
    pf_curl_call_t *call)
{
    ngx_uint_t                           n;
    ngx_msec_t                           delay, left;
    pf_pg_query_t                       *q;
    const char                         **values;
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_plan_t             *plan;
    ngx_http_payflow_provider_t         *pv, *next;
    ngx_http_payflow_main_conf_t        *pmcf;
    ngx_http_payflow_provider_result_t   res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    pv = (ngx_http_payflow_provider_t *) ctx->provider;
    plan = ctx->plan;

    pv->adapter->response(pv, ctx->op, call, &res);

    ngx_http_payflow_provider_record(pmcf, pv, NGX_HTTP_PAYFLOW_OP_CHARGE,
                                     &res, call->elapsed);

    /*
     * An earlier attempt at this provider that may have charged makes
     * every later refusal as undecided as it was: no failover, no
     * failure, the reconciler asks the provider.
     */

    if (res.status == NULL && !res.not_taken) {
        ctx->ambiguous = 1;

    } else if (res.status == NULL && ctx->ambiguous) {
        res.not_taken = 0;
        res.declined = 0;
    }

    left = plan->deadline - ngx_current_msec;

    if (res.status == NULL && res.retry && ctx->attempts <= pv->retries
        && (ngx_msec_int_t) left > 0)
    {
        /* exponential backoff with full jitter: 100, 200, 400 ms ... */

        delay = 100 << (ctx->attempts - 1);
        delay = delay / 2 + ngx_random() % (delay / 2 + 1);

        if (delay + 1000 < left) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "payflow provider: \"%V\" %s, retry %ui in %M ms",
                          &pv->name, res.code, ctx->attempts, delay);

            return ngx_http_payflow_payments_backoff(r, delay);
        }
    }

    if (res.status == NULL && res.not_taken && !res.declined) {

        /* provably nothing moved: the next provider may take it */

        next = ngx_http_payflow_route_next(r, plan, res.code);

        if (next) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "payflow provider: payment %V fails over from "
                          "\"%V\" (%s) to \"%V\"", &ctx->payment_id,
                          &pv->name, res.code, &next->name);

            values = ngx_pcalloc(r->pool, 4 * sizeof(char *));
            q = ngx_http_payflow_db_query(r, 1, 1);

            if (values == NULL || q == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            values[0] = ngx_http_payflow_db_str(r->pool, &ctx->payment_id);
            values[1] = (char *) next->name.data;
            values[2] = ngx_http_payflow_db_str(r->pool, &plan->reason);
            values[3] = (char *) pv->name.data;

            if (values[0] == NULL || values[2] == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_http_payflow_db_set(q, 0, pmcf->st.pay_reroute, 4, values);

            ctx->provider = next;
            ctx->attempts = 0;

            return ngx_http_payflow_db_run(r, q, "rerouting a payment",
                                       ngx_http_payflow_payments_rerouted);
        }
    }

    if (res.status == NULL && res.not_taken) {
        res.status = "failed";
    }

    if (res.status == NULL) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "payflow provider: payment %V at \"%V\" is undecided "
                      "(%s), it stays processing until verified",
                      &ctx->payment_id, &pv->name, res.code);
    }

    n = (res.status || res.reference.len ? 1 : 0)
        + (ctx->idem_key.len ? 2 : 1);

    q = ngx_http_payflow_db_query(r, n, 1);
    if (q == NULL
        || ngx_http_payflow_payments_settle(r, q, 0, &res, 1) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* providers' answers waiting for a connection commit together */
    q->group = ngx_http_payflow_outcomes_group;

    return ngx_http_payflow_db_run(r, q, "recording a provider's answer",
                                   ngx_http_payflow_payments_created);
}


/* the move to the next provider committed: call it */

static ngx_int_t
ngx_http_payflow_payments_rerouted(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (PQntuples(ngx_http_payflow_db_result(q, 0)) != 1) {
        /* moved on meanwhile (verified by the reconciler): as it is now */
        ctx->params[0] = ctx->payment_id;
        return ngx_http_payflow_payments_get(r, ctx);
    }

    return ngx_http_payflow_payments_attempt(r);
}


static ngx_int_t
ngx_http_payflow_payments_backoff(ngx_http_request_t *r, ngx_msec_t delay)
{
    ngx_http_payflow_ctx_t  *ctx;
    ngx_pool_cleanup_t      *cln;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ctx->backoff == NULL) {
        ctx->backoff = ngx_pcalloc(r->pool, sizeof(ngx_event_t));
        cln = ngx_pool_cleanup_add(r->pool, 0);

        if (ctx->backoff == NULL || cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->backoff->handler = ngx_http_payflow_payments_retry;
        ctx->backoff->data = r;
        ctx->backoff->log = r->connection->log;

        cln->handler = ngx_http_payflow_payments_backoff_cleanup;
        cln->data = ctx->backoff;
    }

    ngx_add_timer(ctx->backoff, delay);

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_payflow_payments_retry(ngx_event_t *ev)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = ev->data;

    rc = ngx_http_payflow_payments_attempt(r);

    ngx_http_payflow_finalize(r, rc);
}


static void
ngx_http_payflow_payments_backoff_cleanup(void *data)
{
    ngx_event_t  *ev = data;

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }
}


ngx_int_t
ngx_http_payflow_payments_created(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                *pay, *key, *done;
    ngx_str_t                data;
    ngx_uint_t               n;
    pf_error_t               err;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    n = q->nstmts - 3;

    if (ctx->idem_key.len == 0) {
        pay = ngx_http_payflow_db_result(q, n - 1);

        if (PQntuples(pay) != 1) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        data.data = (u_char *) PQgetvalue(pay, 0, 0);
        data.len = PQgetlength(pay, 0, 0);

        ctx->created = 1;

        ngx_http_payflow_payment_error(r, &err);

        if (err.status == NGX_HTTP_OK) {
            return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
        }

        err.object = &data;

        if (pf_response_error_body(r->pool, &err,
                                   ngx_http_payflow_request_id(r),
                                   &ctx->response)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_payflow_send_body(r, err.status, &ctx->response);
    }

    done = ngx_http_payflow_db_result(q, n - 2);
    key = ngx_http_payflow_db_result(q, n - 1);

    if (PQntuples(done) == 1) {
        /* this request made the payment and stored its answer */
        ctx->idem = NGX_HTTP_PAYFLOW_IDEM_NEW;
        ctx->created = 1;
        ctx->response.data = (u_char *) PQgetvalue(done, 0, 0);
        ctx->response.len = PQgetlength(done, 0, 0);

        return ngx_http_payflow_send_body(r, ctx->response_status,
                                          &ctx->response);
    }

    if (PQntuples(key) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_idem_other(r, key);
}


/* GET /v1/payments/{id} */

ngx_int_t
ngx_http_payflow_payments_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_read_one(r, pmcf->st.pay_get, &ctx->params[0],
                                     ngx_http_payflow_payments_got,
                                     "reading a payment");
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


ngx_int_t
ngx_http_payflow_bad(ngx_http_request_t *r, const char *param,
    const char *code, const char *message)
{
    pf_error_t  err;

    pf_json_param_error(&err, param, code, message);

    return ngx_http_payflow_send_error(r, &err);
}


/* a query parameter for an integer (jansson dumps only containers) */

char *
ngx_http_payflow_integer(ngx_http_request_t *r, json_int_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%L", (int64_t) n) = '\0';

    return (char *) p;
}


/* the JSON text of an object or array, as a query parameter */

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
 * values[0 .. nvalues - 1] are the operation's own parameters; with an
 * Idempotency-Key the key's follow: tenant, mode, key, fingerprint, path,
 * request id.  id is the object to read back.
 */

ngx_int_t
ngx_http_payflow_money_run(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_http_payflow_money_t *m,
    const char **values, ngx_uint_t nvalues, const char *id)
{
    u_char                         *hex;
    ngx_int_t                       rc;
    ngx_uint_t                      keyed, i, n;
    pf_pg_query_t                  *q;
    const char                    **v, **get;
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = ngx_http_payflow_idem_header(r, ctx);

    if (rc == NGX_ABORT) {
        return ngx_http_payflow_idem_invalid(r);
    }

    keyed = (rc == NGX_OK);

    n = 2 + (m->follow ? 1 : 0) + (keyed ? 1 : 0);

    q = ngx_http_payflow_db_query(r, n, 1);
    v = ngx_pcalloc(r->pool, (nvalues + 6) * sizeof(char *));
    hex = ngx_pnalloc(r->pool, 2 * 32 + 1);

    if (q == NULL || v == NULL || hex == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < nvalues; i++) {
        v[i] = values[i];
    }

    i = 0;

    ngx_http_payflow_db_set(q, i++, keyed ? m->keyed : m->plain,
                            nvalues + (keyed ? 6 : 0), v);

    if (keyed) {
        if (ngx_http_payflow_fingerprint(r, hex) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        v[nvalues] = ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);
        v[nvalues + 1] = ctx->auth.livemode ? "true" : "false";
        v[nvalues + 2] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);
        v[nvalues + 3] = (char *) hex;
        v[nvalues + 4] = ngx_http_payflow_db_str(r->pool, &r->uri);
        v[nvalues + 5] = ngx_http_payflow_db_str(r->pool,
                                          ngx_http_payflow_request_id(r));

        if (v[nvalues] == NULL || v[nvalues + 2] == NULL
            || v[nvalues + 4] == NULL || v[nvalues + 5] == NULL)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (m->follow) {
        ngx_http_payflow_db_set(q, i++, m->follow, 1, v);
    }

    get = ngx_palloc(r->pool, sizeof(char *));
    if (get == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    get[0] = id;
    ngx_http_payflow_db_set(q, i++, m->get, 1, get);

    if (keyed) {
        ngx_http_payflow_db_set(q, i, pmcf->st.idem_get, 3, &v[nvalues]);
    }

    ctx->money = m;
    ctx->money_values = (const char **) values;
    ctx->money_n = nvalues;
    ctx->money_id = id;
    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q, m->what,
                                   ngx_http_payflow_money_done);
}


static ngx_int_t
ngx_http_payflow_money_done(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_int_t                  rc;
    PGresult                  *key;
    const char                *state;
    ngx_http_payflow_ctx_t    *ctx;
    ngx_http_payflow_money_t  *m;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    m = (ngx_http_payflow_money_t *) ctx->money;

    if (q->status == PF_PG_SQL_ERROR) {

        /* what the database refused for the request's own sake */

        state = pf_pg_query_sqlstate(q);

        if (state && ngx_strcmp(state, "PF002") == 0) {
            return ngx_http_payflow_bad(r, "amount", "amount_too_large",
                       "the amount exceeds what is left to refund");
        }

        if (state && ngx_strcmp(state, "PF005") == 0) {
            /* nothing ran: answered, not stored with the key */
            rc = ngx_http_payflow_money_error(r, NGX_HTTP_CONFLICT,
                       "payment_not_refundable",
                       "only a succeeded or partially refunded payment can "
                       "be refunded", "payment");

            return rc != NGX_OK ? rc
                   : ngx_http_payflow_send_body(r, ctx->response_status,
                                                &ctx->response);
        }

        if (state && ngx_strcmp(state, "PF008") == 0) {
            /* at a network provider: the provider goes first */
            return ngx_http_payflow_money_remote(r);
        }

        if (state && ngx_strcmp(state, "PF032") == 0) {
            /* nothing ran: answered, not stored with the key */
            rc = ngx_http_payflow_money_error(r, NGX_HTTP_CONFLICT,
                       "provider_account_closed",
                       "the payment's provider account was closed; refund "
                       "it at the provider", "payment");

            return rc != NGX_OK ? rc
                   : ngx_http_payflow_send_body(r, ctx->response_status,
                                                &ctx->response);
        }

        if (state && ngx_strcmp(state, "23514") == 0) {
            return ngx_http_payflow_bad(r, "amount", "amount_invalid",
                       "nothing is left to refund");
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow: %s failed: %s (%s)", m->what,
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY), state);

        return ngx_http_payflow_send_db_error(r, q);
    }

    if (ctx->idem_key.len) {
        key = ngx_http_payflow_db_result(q, q->nstmts - 4);

        if (PQntuples(key) != 1) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /*
         * Whose key: inserted by this very transaction (its xmin), not
         * judged by the request id, which a client may choose and repeat.
         */

        if (PQgetvalue(key, 0, 8)[0] != 't') {
            return ngx_http_payflow_idem_other(r, key);
        }
    }

    rc = m->answer(r, q);

    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->idem_key.len) {
        return ngx_http_payflow_idem_store(r);
    }

    return ngx_http_payflow_send_body(r, ctx->response_status,
                                      &ctx->response);
}


/* the answer is the object read back */

ngx_int_t
ngx_http_payflow_money_data(ngx_http_request_t *r, PGresult *res)
{
    ngx_str_t                data;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    ctx->response_status = NGX_HTTP_OK;

    return pf_response_data_body(r->pool, &data,
                                 ngx_http_payflow_request_id(r),
                                 &ctx->response) == NGX_OK
           ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* an outcome of execution: stored with the key like a success */

/* nothing ran (the transaction rolled back): answered, not stored */

static ngx_int_t
ngx_http_payflow_money_unsupported(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    rc = ngx_http_payflow_money_error(r, NGX_HTTP_CONFLICT,
             "provider_operation_unavailable",
             "the payment's provider does not offer this operation, or is "
             "no longer configured", "id");

    return rc != NGX_OK ? rc
           : ngx_http_payflow_send_body(r, ctx->response_status,
                                        &ctx->response);
}


ngx_int_t
ngx_http_payflow_money_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, const char *param)
{
    pf_error_t               err;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = status;
    err.type = PF_ERROR_INVALID_REQUEST;
    err.code = code;
    err.message = message;
    err.param = param;

    ctx->response_status = status;

    return pf_response_error_body(r->pool, &err,
                                  ngx_http_payflow_request_id(r),
                                  &ctx->response) == NGX_OK
           ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/*
 * Capture, cancel and refund of a payment at a network provider.  Capture
 * and cancel ask the provider first, and only what it did is recorded (by
 * the remote statements, with the key as for the sandbox); a refund is
 * reserved as pending first, then asked for, then settled.  An answer
 * that does not tell is not stored with the key: the retry asks the
 * provider again under the same idempotency key, which is safe.
 */

static ngx_int_t
ngx_http_payflow_money_remote(ngx_http_request_t *r)
{
    pf_pg_query_t                  *q;
    const char                    **values;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_money_t       *m;
    ngx_http_payflow_main_conf_t   *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    m = (ngx_http_payflow_money_t *) ctx->money;

    if (m == &ngx_http_payflow_refund_op) {
        return ngx_http_payflow_money_run(r, ctx,
                                          &ngx_http_payflow_refund_remote_op,
                                          ctx->money_values, ctx->money_n,
                                          ctx->money_id);
    }

    /*
     * With a key, the key is looked at before the provider is asked: a
     * key that exists is answered from (replayed, in use, or another
     * request's), and the provider never hears of it.
     */

    q = ngx_http_payflow_db_query(r, ctx->idem_key.len ? 2 : 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.pay_route, 1, ctx->money_values);

    if (ctx->idem_key.len) {
        values = ngx_http_payflow_idem_values(r, 3);
        if (values == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_payflow_db_set(q, 1, pmcf->st.idem_get, 3, values);
    }

    ctx->db_sql_ok = 0;

    return ngx_http_payflow_db_run(r, q, "reading a payment's provider",
                                   ngx_http_payflow_money_routed);
}


/* provider, provider reference, currency: the call */

static ngx_int_t
ngx_http_payflow_money_routed(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_int_t                       exponent;
    PGresult                       *row;
    ngx_int_t                       rc;
    ngx_str_t                       name;
    pf_curl_call_t                 *call;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_provider_t    *pv;
    ngx_http_payflow_operation_t   *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    row = ngx_http_payflow_db_result(q, 0);

    if (ctx->idem_key.len
        && PQntuples(ngx_http_payflow_db_result(q, 1)) == 1)
    {
        return ngx_http_payflow_idem_other(r,
                                           ngx_http_payflow_db_result(q, 1));
    }

    if (PQntuples(row) != 1) {
        rc = ngx_http_payflow_money_error(r, NGX_HTTP_NOT_FOUND,
                                          "resource_missing",
                                          "no such payment", "id");
        return rc != NGX_OK ? rc
               : ngx_http_payflow_send_body(r, ctx->response_status,
                                            &ctx->response);
    }

    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_operation_t));
    if (op == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->op = (ctx->money == &ngx_http_payflow_capture_op)
             ? NGX_HTTP_PAYFLOW_OP_CAPTURE : NGX_HTTP_PAYFLOW_OP_CANCEL;
    op->payment_id.data = (u_char *) ctx->money_values[0];
    op->payment_id.len = ngx_strlen(ctx->money_values[0]);
    op->reference.data = (u_char *) PQgetvalue(row, 0, 1);
    op->reference.len = PQgetlength(row, 0, 1);
    op->currency = PQgetvalue(row, 0, 2);

    exponent = ngx_http_payflow_payments_exponent(op->currency);
    if (exponent == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->exponent = exponent;

    if (op->op == NGX_HTTP_PAYFLOW_OP_CAPTURE && ctx->money_values[1]) {
        op->amount = ngx_atoof((u_char *) ctx->money_values[1],
                               ngx_strlen(ctx->money_values[1]));
    }

    name.data = (u_char *) PQgetvalue(row, 0, 0);
    name.len = PQgetlength(row, 0, 0);

    pv = ngx_http_payflow_request_provider(r, &name, 0);
    call = pv ? ngx_http_payflow_provider_call(r, pv) : NULL;

    rc = call ? pv->adapter->request(pv, op, call) : NGX_DECLINED;

    if (rc == NGX_DECLINED) {
        return ngx_http_payflow_money_unsupported(r);
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->provider = pv;
    ctx->op = op;

    return ngx_http_payflow_provider_run(r, call,
                                         ngx_http_payflow_money_called);
}


/*
 * An amount for an operation on a payment (capture, refund) above any
 * payment's limit is refused here, before the database: NGX_DECLINED if
 * it is within the limit.
 */

ngx_int_t
ngx_http_payflow_amount_over(ngx_http_request_t *r, json_int_t amount)
{
    u_char                       *msg;
    ngx_http_payflow_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);

    if (amount <= plcf->max_amount) {
        return NGX_DECLINED;
    }

    msg = ngx_pnalloc(r->pool, 64);
    if (msg == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_snprintf(msg, 63, "amount must be at most %O", plcf->max_amount)
        = '\0';

    return ngx_http_payflow_bad(r, "amount", "amount_too_large",
                                (char *) msg);
}


/* the minor-unit exponent of an accepted currency, or NGX_ERROR */

ngx_int_t
ngx_http_payflow_payments_exponent(const char *currency)
{
    ngx_http_payflow_currency_t  *c;

    for (c = ngx_http_payflow_currencies; c->code; c++) {
        if (ngx_strcmp(c->code, currency) == 0) {
            return c->exponent;
        }
    }

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_payflow_money_called(ngx_http_request_t *r, pf_curl_call_t *call)
{
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_provider_t         *pv;
    ngx_http_payflow_operation_t        *op;
    ngx_http_payflow_main_conf_t        *pmcf;
    ngx_http_payflow_provider_result_t   res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    pv = (ngx_http_payflow_provider_t *) ctx->provider;
    op = ctx->op;

    pv->adapter->response(pv, op, call, &res);

    ngx_http_payflow_provider_record(pmcf, pv, op->op, &res, call->elapsed);

    if (res.status
        && ngx_strcmp(res.status, (op->op == NGX_HTTP_PAYFLOW_OP_CAPTURE
                                   ? "succeeded" : "canceled")) == 0)
    {
        /* done at the provider: now in the books, with the key */

        return ngx_http_payflow_money_run(r, ctx,
                   op->op == NGX_HTTP_PAYFLOW_OP_CAPTURE
                   ? &ngx_http_payflow_capture_remote_op
                   : &ngx_http_payflow_cancel_remote_op,
                   ctx->money_values, ctx->money_n, ctx->money_id);
    }

    if (res.status) {
        /* answered, but not with what was asked: nothing is recorded */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow provider: \"%V\" answered %s to a %s of "
                      "payment %V; nothing recorded", &pv->name, res.status,
                      op->op == NGX_HTTP_PAYFLOW_OP_CAPTURE
                      ? "capture" : "cancel", &op->payment_id);

        return ngx_http_payflow_provider_error(r, NGX_HTTP_CONFLICT,
                   "provider_unexpected_state",
                   "the provider reports the payment in another state",
                   NULL);
    }

    if (res.not_taken) {
        return ngx_http_payflow_provider_error(r,
                   res.outage ? NGX_HTTP_SERVICE_UNAVAILABLE
                              : NGX_HTTP_CONFLICT,
                   res.code,
                   res.message ? res.message
                               : "the provider refused the operation",
                   NULL);
    }

    return ngx_http_payflow_provider_error(r, NGX_HTTP_BAD_GATEWAY,
               res.code,
               "the provider's answer was lost; retry with the same "
               "Idempotency-Key: the provider is asked again under the "
               "same key", NULL);
}


/* POST /v1/payments/{id}/capture {"amount": n} (permission write) */


static const char  *ngx_http_payflow_capture_fields[] = { "amount", NULL };


ngx_int_t
ngx_http_payflow_payments_capture(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    json_t                         *v;
    ngx_int_t                       rc;
    pf_error_t                      err;
    const char                    **values;

    rc = pf_json_check_fields(r->pool, ctx->body,
                              ngx_http_payflow_capture_fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    values = ngx_pcalloc(r->pool, 2 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);

    v = json_object_get(ctx->body, "amount");

    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0) {
            return ngx_http_payflow_bad(r, "amount", "amount_invalid",
                                        "amount must be a positive integer");
        }

        rc = ngx_http_payflow_amount_over(r, json_integer_value(v));
        if (rc != NGX_DECLINED) {
            return rc;
        }

        values[1] = ngx_http_payflow_integer(r, json_integer_value(v));
    }

    if (values[0] == NULL || (v && values[1] == NULL)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_money_run(r, ctx, &ngx_http_payflow_capture_op,
                                      values, 2, values[0]);
}


static ngx_int_t
ngx_http_payflow_capture_answer(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult  *op, *pay;

    op = ngx_http_payflow_db_result(q, 0);
    pay = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(pay) != 1) {
        return ngx_http_payflow_money_error(r, NGX_HTTP_NOT_FOUND,
                                            "resource_missing",
                                            "no such payment", "id");
    }

    if (PQntuples(op) == 1) {
        return ngx_http_payflow_money_data(r, pay);
    }

    if (ngx_http_payflow_status_is(pay, "requires_capture")) {
        return ngx_http_payflow_money_error(r, NGX_HTTP_BAD_REQUEST,
                   "amount_invalid",
                   "amount exceeds the capturable amount", "amount");
    }

    return ngx_http_payflow_money_error(r, NGX_HTTP_CONFLICT,
               "payment_not_capturable",
               "only a payment that requires capture can be captured",
               NULL);
}


/* the status in a payment's JSON as the database wrote it */

static ngx_uint_t
ngx_http_payflow_status_is(PGresult *pay, const char *status)
{
    json_t      *doc, *v;
    ngx_uint_t   is;

    doc = json_loads(PQgetvalue(pay, 0, 0), 0, NULL);
    v = json_object_get(doc, "status");

    is = json_is_string(v) && ngx_strcmp(json_string_value(v), status) == 0;

    if (doc) {
        json_decref(doc);
    }

    return is;
}


/* POST /v1/payments/{id}/cancel (permission write) */

ngx_int_t
ngx_http_payflow_payments_cancel(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                       rc;
    pf_error_t                      err;
    const char                    **values;
    static const char              *none[] = { NULL };

    rc = pf_json_check_fields(r->pool, ctx->body, none, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    values = ngx_pcalloc(r->pool, sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_money_run(r, ctx, &ngx_http_payflow_cancel_op,
                                      values, 1, values[0]);
}


static ngx_int_t
ngx_http_payflow_cancel_answer(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult  *op, *pay;

    op = ngx_http_payflow_db_result(q, 0);
    pay = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(pay) != 1) {
        return ngx_http_payflow_money_error(r, NGX_HTTP_NOT_FOUND,
                                            "resource_missing",
                                            "no such payment", "id");
    }

    if (PQntuples(op) == 1) {
        return ngx_http_payflow_money_data(r, pay);
    }

    return ngx_http_payflow_money_error(r, NGX_HTTP_CONFLICT,
               "payment_not_cancelable",
               "only a pending payment, or one that requires action or "
               "capture, can be canceled", NULL);
}


/* GET /v1/payments/{id}/events: the append-only log, oldest first */

ngx_int_t
ngx_http_payflow_payments_events(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    pf_pg_query_t                  *q;
    const char                    **values;
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 2, NGX_HTTP_PAYFLOW_DB_READ);
    values = ngx_pcalloc(r->pool, sizeof(char *));

    if (q == NULL || values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.pay_get, 1, values);

    ngx_http_payflow_db_set(q, 1, pmcf->st.pay_events, 1, values);

    return ngx_http_payflow_db_run(r, q, "reading payment events",
                                   ngx_http_payflow_events_got);
}


static ngx_int_t
ngx_http_payflow_events_got(ngx_http_request_t *r, pf_pg_query_t *q)
{
    u_char         *p;
    PGresult       *pay, *events;
    ngx_str_t       data;
    pf_error_t      err;

    pay = ngx_http_payflow_db_result(q, 0);
    events = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(pay) != 1) {
        ngx_memzero(&err, sizeof(pf_error_t));
        err.status = NGX_HTTP_NOT_FOUND;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "resource_missing";
        err.message = "no such payment";
        err.param = "id";

        return ngx_http_payflow_send_error(r, &err);
    }

    data.len = sizeof("{\"object\":\"list\",\"has_more\":false,\"data\":}") - 1
               + PQgetlength(events, 0, 0);

    p = ngx_pnalloc(r->pool, data.len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    data.data = p;
    p = ngx_sprintf(p, "{\"object\":\"list\",\"has_more\":false,\"data\":");
    p = ngx_cpymem(p, PQgetvalue(events, 0, 0), PQgetlength(events, 0, 0));
    *p++ = '}';

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


/* one object by id, through a statement returning its JSON */

ngx_int_t
ngx_http_payflow_read_one(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, ngx_str_t *id,
    ngx_http_payflow_db_ok_pt ok, const char *what)
{
    pf_pg_query_t   *q;
    const char     **values;

    q = ngx_http_payflow_db_query(r, 1, 1);
    values = ngx_pcalloc(r->pool, sizeof(char *));

    if (q == NULL || values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, id);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, statement, 1, values);

    return ngx_http_payflow_db_run(r, q, what, ok);
}


/*
 * $payflow_payment_id: the payment the request made or names in its path;
 * $payflow_provider (data 2): the provider this request called, or
 * "sandbox" for a payment the sandbox made;
 * $payflow_idempotency: what its Idempotency-Key did (new, replayed,
 * in_use, reused).
 */

ngx_int_t
ngx_http_payflow_payment_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                s;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_payflow_module);

    ngx_str_null(&s);

    if (ctx && data == 0) {
        s = ctx->payment_id;

        if (s.len == 0 && ctx->params[0].len > 4
            && ngx_strncmp(ctx->params[0].data, "pay_", 4) == 0)
        {
            s = ctx->params[0];
        }

    } else if (ctx && data == 2) {
        if (ctx->provider) {
            s = ((ngx_http_payflow_provider_t *) ctx->provider)->name;

        } else if (ctx->created) {
            ngx_str_set(&s, "sandbox");
        }

    } else if (ctx && data == 1 && ctx->idem != NGX_HTTP_PAYFLOW_IDEM_NONE) {
        s.data = (u_char *) ngx_http_payflow_idem_names[ctx->idem];
        s.len = ngx_strlen(s.data);
    }

    if (s.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = s.data;
    v->len = s.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
