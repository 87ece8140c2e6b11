
/*
 * Copyright (C) PayFlow
 *
 * Stripe, through PaymentIntents and Refunds (https://docs.stripe.com/api):
 * form-encoded requests, "Authorization: Bearer sk_...", and an
 * Idempotency-Key derived from what the call is for (the payment id for
 * its charge, "<payment id>-capture" and "-cancel", the refund id), so
 * that a retried, resumed or verifying call can never move money twice.
 * The intent carries the payment id in its metadata, a refund its id.
 */


#include "ngx_http_payflow_providers.h"


#define NGX_HTTP_PAYFLOW_STRIPE_VERSION  "2024-06-20"


static ngx_int_t ngx_http_payflow_stripe_request(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_stripe_charge(
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_stripe_headers(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call);
static void ngx_http_payflow_stripe_response(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call,
    ngx_http_payflow_provider_result_t *res);
static void ngx_http_payflow_stripe_intent(ngx_pool_t *pool, json_t *o,
    ngx_uint_t cancel, ngx_http_payflow_provider_result_t *res);
static void ngx_http_payflow_stripe_refund(ngx_pool_t *pool, json_t *o,
    ngx_http_payflow_provider_result_t *res);
static void ngx_http_payflow_stripe_error(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call, json_t *doc,
    ngx_http_payflow_provider_result_t *res);
static ngx_int_t ngx_http_payflow_stripe_webhook_verify(ngx_http_request_t *r,
    ngx_http_payflow_webhook_conf_t *wcf, ngx_str_t *body);
static ngx_int_t ngx_http_payflow_stripe_webhook_parse(ngx_pool_t *pool,
    json_t *doc, ngx_http_payflow_webhook_event_t *ev);


const ngx_http_payflow_adapter_t  ngx_http_payflow_stripe_adapter = {
    "stripe",
    ngx_string("https://api.stripe.com"),
    1,                                      /* needs a payment method */
    0,
    1,                                      /* manual capture */
    ngx_http_payflow_stripe_request,
    ngx_http_payflow_stripe_response,
    "Stripe-Signature",
    0,
    ngx_http_payflow_stripe_webhook_verify,
    ngx_http_payflow_stripe_webhook_parse
};


static ngx_int_t
ngx_http_payflow_stripe_request(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call)
{
    u_char         amount[NGX_INT64_LEN + 1];
    ngx_int_t      rc;
    ngx_keyval_t   f[4], *kv;

    kv = f;
    call->method = "POST";

    switch (op->op) {

    case NGX_HTTP_PAYFLOW_OP_VERIFY:

        if (op->reference.len > 3
            && ngx_strncmp(op->reference.data, "pi_", 3) == 0)
        {
            call->method = "GET";
            rc = ngx_http_payflow_provider_url(call, p,
                                               "/v1/payment_intents/",
                                               &op->reference, "");
            break;
        }

        /*
         * The charge's answer was lost: the same request under the same
         * Idempotency-Key gets Stripe's stored answer (or, had the first
         * never arrived, makes the charge the payment asked for, once).
         * Stripe keeps a key 24 hours: after that the same request would
         * be a new charge, so an old payment is left for an operator.
         */

        if (op->age > 23 * 3600) {
            ngx_log_error(NGX_LOG_ERR, call->log, 0,
                          "payflow provider: payment %V at \"%V\" has no "
                          "PaymentIntent id and is too old to ask Stripe "
                          "again by key: check it by hand",
                          &op->payment_id, &p->name);
            return NGX_DECLINED;
        }

        /* fall through */

    case NGX_HTTP_PAYFLOW_OP_CHARGE:
        rc = ngx_http_payflow_provider_url(call, p, "/v1/payment_intents",
                                           NULL, "");
        if (rc == NGX_OK) {
            rc = ngx_http_payflow_stripe_charge(op, call);
        }

        break;

    case NGX_HTTP_PAYFLOW_OP_CAPTURE:
        rc = ngx_http_payflow_provider_url(call, p, "/v1/payment_intents/",
                                           &op->reference, "/capture");
        if (op->amount) {
            *ngx_sprintf(amount, "%L", op->amount) = '\0';
            kv = ngx_http_payflow_keyval(kv, "amount_to_capture",
                                         (char *) amount);
        }

        break;

    case NGX_HTTP_PAYFLOW_OP_CANCEL:
        rc = ngx_http_payflow_provider_url(call, p, "/v1/payment_intents/",
                                           &op->reference, "/cancel");
        break;

    case NGX_HTTP_PAYFLOW_OP_REFUND_STATUS:

        if (op->refund_reference.len) {
            call->method = "GET";
            rc = ngx_http_payflow_provider_url(call, p, "/v1/refunds/",
                                               &op->refund_reference, "");
            break;
        }

        /* the answer was lost: the same refund under the same key */

        /* fall through */

    default: /* NGX_HTTP_PAYFLOW_OP_REFUND */
        rc = ngx_http_payflow_provider_url(call, p, "/v1/refunds", NULL, "");

        *ngx_sprintf(amount, "%L", op->amount) = '\0';

        kv->key = (ngx_str_t) ngx_string("payment_intent");
        kv->value = op->reference;
        kv++;

        kv = ngx_http_payflow_keyval(kv, "amount", (char *) amount);

        if (op->reason) {
            kv = ngx_http_payflow_keyval(kv, "reason", op->reason);
        }

        kv->key = (ngx_str_t) ngx_string("metadata[payflow_refund_id]");
        kv->value = op->refund_id;
        kv++;
    }

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    if (kv > f
        && ngx_http_payflow_form(call->pool, f, kv - f, &call->body)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_payflow_stripe_headers(p, op, call);
}


/* POST /v1/payment_intents, confirmed at once */

static ngx_int_t
ngx_http_payflow_stripe_charge(ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call)
{
    u_char         currency[4], amount[NGX_INT64_LEN + 1];
    ngx_uint_t     i;
    ngx_keyval_t   f[12], *kv;

    for (i = 0; i < 3; i++) {
        currency[i] = ngx_tolower(op->currency[i]);
    }

    currency[3] = '\0';

    *ngx_sprintf(amount, "%L", op->amount) = '\0';

    kv = ngx_http_payflow_keyval(f, "amount", (char *) amount);
    kv = ngx_http_payflow_keyval(kv, "currency", (char *) currency);
    kv = ngx_http_payflow_keyval(kv, "capture_method",
                                 op->manual ? "manual" : "automatic");
    kv = ngx_http_payflow_keyval(kv, "confirm", "true");

    if (op->payment_method) {
        kv = ngx_http_payflow_keyval(kv, "payment_method",
                                     op->payment_method);
    }

    if (op->return_url) {
        kv = ngx_http_payflow_keyval(kv, "return_url", op->return_url);

    } else {
        /* no page to come back to: card flows only, 3DS in Stripe.js */
        kv = ngx_http_payflow_keyval(kv,
                                     "automatic_payment_methods[enabled]",
                                     "true");
        kv = ngx_http_payflow_keyval(kv,
                             "automatic_payment_methods[allow_redirects]",
                             "never");
    }

    if (op->description) {
        kv = ngx_http_payflow_keyval(kv, "description", op->description);
    }

    if (op->email) {
        kv = ngx_http_payflow_keyval(kv, "receipt_email", op->email);
    }

    kv->key = (ngx_str_t) ngx_string("metadata[payflow_payment_id]");
    kv->value = op->payment_id;
    kv++;

    return ngx_http_payflow_form(call->pool, f, kv - f, &call->body);
}


static ngx_int_t
ngx_http_payflow_stripe_headers(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call)
{
    u_char     *s;
    ngx_str_t   key;

    if (ngx_http_payflow_provider_bearer(call, p) != NGX_OK
        || pf_curl_header(call, "Stripe-Version", &(ngx_str_t)
                          ngx_string(NGX_HTTP_PAYFLOW_STRIPE_VERSION))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (call->method[0] == 'G') {
        return NGX_OK;
    }

    switch (op->op) {

    case NGX_HTTP_PAYFLOW_OP_CAPTURE:
    case NGX_HTTP_PAYFLOW_OP_CANCEL:
        /* a payment is captured or canceled once: one key each */
        key.len = op->payment_id.len + sizeof("-capture") - 1;
        key.data = ngx_pnalloc(call->pool, key.len);
        if (key.data == NULL) {
            return NGX_ERROR;
        }

        s = ngx_sprintf(key.data, "%V-%s", &op->payment_id,
                        op->op == NGX_HTTP_PAYFLOW_OP_CAPTURE
                        ? "capture" : "cancel");
        key.len = s - key.data;
        break;

    case NGX_HTTP_PAYFLOW_OP_REFUND:
    case NGX_HTTP_PAYFLOW_OP_REFUND_STATUS:
        key = op->refund_id;
        break;

    default:
        key = op->payment_id;
    }

    if (pf_curl_header(call, "Idempotency-Key", &key) != NGX_OK
        || pf_curl_header(call, "Content-Type", &(ngx_str_t)
                          ngx_string("application/x-www-form-urlencoded"))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_payflow_stripe_response(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call,
    ngx_http_payflow_provider_result_t *res)
{
    json_t        *doc;
    json_error_t   jerr;

    if (call->result != PF_CURL_OK) {
        ngx_http_payflow_provider_transport(call, res);
        return;
    }

    ngx_memzero(res, sizeof(ngx_http_payflow_provider_result_t));

    doc = json_loadb((char *) call->response.data, call->response.len, 0,
                     &jerr);

    if (call->status == 200 && json_is_object(doc)) {

        if (op->op == NGX_HTTP_PAYFLOW_OP_REFUND
            || op->op == NGX_HTTP_PAYFLOW_OP_REFUND_STATUS)
        {
            ngx_http_payflow_stripe_refund(call->pool, doc, res);

        } else {
            ngx_http_payflow_stripe_intent(call->pool, doc,
                                           op->op == NGX_HTTP_PAYFLOW_OP_CANCEL,
                                           res);
        }

    } else {
        ngx_http_payflow_stripe_error(p, op, call, doc, res);
    }

    if (doc) {
        json_decref(doc);
    }
}


/* a PaymentIntent, in PayFlow's terms */

static void
ngx_http_payflow_stripe_intent(ngx_pool_t *pool, json_t *o, ngx_uint_t cancel,
    ngx_http_payflow_provider_result_t *res)
{
    json_t      *e;
    const char  *status, *s;

    status = ngx_http_payflow_json_string(pool, o, "status");
    s = ngx_http_payflow_json_string(pool, o, "id");

    if (s) {
        res->reference.data = (u_char *) s;
        res->reference.len = ngx_strlen(s);
    }

    if (status == NULL) {
        /* unknown: verified later */

    } else if (ngx_strcmp(status, "succeeded") == 0
               || ngx_strcmp(status, "requires_capture") == 0)
    {
        res->status = status;

    } else if (ngx_strcmp(status, "requires_action") == 0) {
        res->status = status;

        e = json_object_get(o, "next_action");
        s = ngx_http_payflow_json_string(pool,
                json_object_get(e, "redirect_to_url"), "url");

        if (s) {
            res->redirect_url.data = (u_char *) s;
            res->redirect_url.len = ngx_strlen(s);
        }

    } else if (ngx_strcmp(status, "canceled") == 0 && cancel) {
        res->status = status;

    } else if (ngx_strcmp(status, "requires_payment_method") == 0
               || ngx_strcmp(status, "canceled") == 0)
    {
        e = json_object_get(o, "last_payment_error");
        res->status = "failed";
        res->declined = 1;
        res->not_taken = 1;
        res->code = ngx_http_payflow_json_string(pool, e, "decline_code");

        if (res->code == NULL) {
            res->code = ngx_http_payflow_json_string(pool, e, "code");
        }

        if (res->code == NULL) {
            res->code = "payment_failed";
        }

        res->message = ngx_http_payflow_json_string(pool, e, "message");
    }

    /* "processing": Stripe is still at it; verified later */
}


static void
ngx_http_payflow_stripe_refund(ngx_pool_t *pool, json_t *o,
    ngx_http_payflow_provider_result_t *res)
{
    const char  *status, *s;

    status = ngx_http_payflow_json_string(pool, o, "status");
    s = ngx_http_payflow_json_string(pool, o, "id");

    if (s) {
        res->reference.data = (u_char *) s;
        res->reference.len = ngx_strlen(s);
    }

    if (status == NULL) {
        return;
    }

    if (ngx_strcmp(status, "succeeded") == 0) {
        res->status = "succeeded";

    } else if (ngx_strcmp(status, "failed") == 0
               || ngx_strcmp(status, "canceled") == 0)
    {
        res->status = "failed";
        res->code = ngx_http_payflow_json_string(pool, o, "failure_reason");
        if (res->code == NULL) {
            res->code = "refund_failed";
        }

    } else {
        /* pending, requires_action: the refund is under way */
        res->status = "pending";
    }
}


static void
ngx_http_payflow_stripe_error(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call, json_t *doc,
    ngx_http_payflow_provider_result_t *res)
{
    json_t      *e;
    const char  *s;

    e = json_is_object(doc) ? json_object_get(doc, "error") : NULL;

    res->code = ngx_http_payflow_json_string(call->pool, e, "decline_code");
    if (res->code == NULL) {
        res->code = ngx_http_payflow_json_string(call->pool, e, "code");
    }

    res->message = ngx_http_payflow_json_string(call->pool, e, "message");

    s = ngx_http_payflow_json_string(call->pool,
                                     json_object_get(e, "payment_intent"),
                                     "id");
    if (s && op->op != NGX_HTTP_PAYFLOW_OP_REFUND
        && op->op != NGX_HTTP_PAYFLOW_OP_REFUND_STATUS)
    {
        res->reference.data = (u_char *) s;
        res->reference.len = ngx_strlen(s);
    }

    switch (call->status) {

    case 400:
    case 402:
    case 404:
        /* declined or refused as invalid: Stripe moved nothing */
        res->not_taken = 1;
        res->declined = (call->status == 402);

        if (res->code == NULL) {
            res->code = (call->status == 402) ? "card_declined"
                                              : "provider_invalid_request";
        }

        if (op->op == NGX_HTTP_PAYFLOW_OP_VERIFY
            || op->op == NGX_HTTP_PAYFLOW_OP_REFUND_STATUS)
        {
            /* only a decline tells; a refusal of the question does not */
            res->not_taken = res->declined;
        }

        return;

    default:
        /*
         * 409 (a concurrent request with our key) and 5xx: the operation
         * may or may not have happened; the same Idempotency-Key is safe
         */
        ngx_http_payflow_provider_refused(p, call, res);
    }
}


/*
 * Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...] (v0 and other
 * schemes ignored), each v1 an HMAC-SHA256 of "<t>.<raw body>" under the
 * endpoint's signing secret; during a secret roll Stripe signs with both,
 * and any match is enough.  A genuine signature older (or newer) than
 * the tolerance is a replay: stale.
 */

static ngx_int_t
ngx_http_payflow_stripe_webhook_verify(ngx_http_request_t *r,
    ngx_http_payflow_webhook_conf_t *wcf, ngx_str_t *body)
{
    u_char      *p, *data;
    time_t       t;
    ngx_int_t    rc;
    ngx_str_t    header, ts, v1[8];
    ngx_uint_t   i, n;

    if (ngx_http_payflow_header(r, "Stripe-Signature", &header) != NGX_OK
        || header.len == 0)
    {
        return NGX_HTTP_PAYFLOW_WEBHOOK_MISSING;
    }

    if (pf_stripe_signature_parse(&header, &ts, &t, v1, 8, &n) != NGX_OK) {
        return NGX_HTTP_PAYFLOW_WEBHOOK_INVALID;
    }

    data = ngx_pnalloc(r->pool, ts.len + 1 + body->len);
    if (data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(data, ts.data, ts.len);
    *p++ = '.';
    p = ngx_cpymem(p, body->data, body->len);

    rc = NGX_DECLINED;

    for (i = 0; i < n; i++) {
        rc = ngx_http_payflow_webhook_hmac(wcf, EVP_sha256(), data,
                                           ts.len + 1 + body->len,
                                           v1[i].data, v1[i].len);
        if (rc != NGX_DECLINED) {
            break;
        }
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_PAYFLOW_WEBHOOK_INVALID;
    }

    if (wcf->tolerance
        && (ngx_time() - t > wcf->tolerance
            || t - ngx_time() > wcf->tolerance))
    {
        return NGX_HTTP_PAYFLOW_WEBHOOK_STALE;
    }

    return NGX_HTTP_PAYFLOW_WEBHOOK_VALID;
}


/*
 * An Event: {"id": "evt_...", "type": "payment_intent.succeeded", "data":
 * {"object": {...}}}.  PaymentIntents carry our payment id in their
 * metadata, refunds our refund id; the object's status, not the event's
 * name, says where it is.
 */

static ngx_int_t
ngx_http_payflow_stripe_webhook_parse(ngx_pool_t *pool, json_t *doc,
    ngx_http_payflow_webhook_event_t *ev)
{
    json_t      *o, *amount, *meta;
    const char  *kind, *status, *currency;

    ngx_http_payflow_webhook_str(pool, doc, "id", &ev->id);
    ngx_http_payflow_webhook_str(pool, doc, "type", &ev->type);

    if (ev->id.len == 0 || ev->type.len == 0) {
        return NGX_DECLINED;
    }

    o = json_object_get(doc, "livemode");
    if (json_is_boolean(o)) {
        ev->livemode = json_is_true(o);
    }

    o = json_object_get(json_object_get(doc, "data"), "object");
    meta = json_object_get(o, "metadata");
    kind = ngx_http_payflow_json_string(pool, o, "object");
    status = ngx_http_payflow_json_string(pool, o, "status");
    currency = ngx_http_payflow_json_string(pool, o, "currency");
    amount = json_object_get(o, "amount");

    if (kind == NULL || status == NULL) {
        return NGX_OK;
    }

    if (json_is_integer(amount)) {
        ev->amount = json_integer_value(amount);
    }

    ev->currency = currency;

    if (ngx_strcmp(kind, "payment_intent") == 0) {
        ev->object = "payment";
        ngx_http_payflow_webhook_str(pool, meta, "payflow_payment_id",
                                     &ev->payment_id);

        ngx_http_payflow_stripe_intent(pool, o, 1, &ev->res);

        if (ngx_strcmp(status, "processing") == 0) {
            ev->res.status = "processing";
        }

        return NGX_OK;
    }

    if (ngx_strcmp(kind, "refund") == 0) {
        ev->object = "refund";
        ngx_http_payflow_webhook_str(pool, meta, "payflow_refund_id",
                                     &ev->refund_id);

        ngx_http_payflow_stripe_refund(pool, o, &ev->res);
    }

    return NGX_OK;
}
