
/*
 * Copyright (C) PayFlow
 *
 * Stripe, through PaymentIntents (https://docs.stripe.com/api): form-encoded
 * requests, "Authorization: Bearer sk_...", and an Idempotency-Key derived
 * from the payment id, so that a retried or resumed call can never create
 * a second charge.  The intent carries the payment id in its metadata.
 */


#include "ngx_http_payflow_providers.h"


#define NGX_HTTP_PAYFLOW_STRIPE_VERSION  "2024-06-20"


static ngx_int_t ngx_http_payflow_stripe_charge(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_charge_t *charge,
    pf_curl_call_t *call);
static void ngx_http_payflow_stripe_charged(ngx_http_payflow_provider_t *p,
    pf_curl_call_t *call, ngx_http_payflow_provider_result_t *res);
static const char *ngx_http_payflow_stripe_string(pf_curl_call_t *call,
    json_t *o, const char *name);


const ngx_http_payflow_adapter_t  ngx_http_payflow_stripe_adapter = {
    "stripe",
    ngx_string("https://api.stripe.com"),
    1,
    ngx_http_payflow_stripe_charge,
    ngx_http_payflow_stripe_charged
};


static ngx_int_t
ngx_http_payflow_stripe_charge(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_charge_t *charge, pf_curl_call_t *call)
{
    u_char         *s, currency[4], amount[NGX_INT64_LEN + 1];
    ngx_str_t       form, v;
    ngx_uint_t      i;
    ngx_keyval_t    f[12], *kv;

    s = ngx_pnalloc(call->pool, p->base_url.len
                                + sizeof("/v1/payment_intents") - 1);
    if (s == NULL) {
        return NGX_ERROR;
    }

    call->method = "POST";
    call->url.data = s;
    call->url.len = ngx_sprintf(s, "%V/v1/payment_intents", &p->base_url)
                    - s;

    for (i = 0; i < 3; i++) {
        currency[i] = ngx_tolower(charge->currency[i]);
    }

    *ngx_sprintf(amount, "%L", charge->amount) = '\0';

    kv = ngx_http_payflow_keyval(f, "amount", (char *) amount);
    kv = ngx_http_payflow_keyval(kv, "currency", (char *) currency);
    kv = ngx_http_payflow_keyval(kv, "capture_method",
                                 charge->manual ? "manual" : "automatic");
    kv = ngx_http_payflow_keyval(kv, "confirm", "true");
    kv = ngx_http_payflow_keyval(kv, "payment_method",
                                 charge->payment_method);

    if (charge->return_url) {
        kv = ngx_http_payflow_keyval(kv, "return_url", charge->return_url);

    } else {
        /* no page to come back to: card flows only, 3DS in Stripe.js */
        kv = ngx_http_payflow_keyval(kv,
                                     "automatic_payment_methods[enabled]",
                                     "true");
        kv = ngx_http_payflow_keyval(kv,
                             "automatic_payment_methods[allow_redirects]",
                             "never");
    }

    if (charge->description) {
        kv = ngx_http_payflow_keyval(kv, "description", charge->description);
    }

    if (charge->email) {
        kv = ngx_http_payflow_keyval(kv, "receipt_email", charge->email);
    }

    kv->key = (ngx_str_t) ngx_string("metadata[payflow_payment_id]");
    kv->value = charge->payment_id;
    kv++;

    if (ngx_http_payflow_form(call->pool, f, kv - f, &form) != NGX_OK) {
        return NGX_ERROR;
    }

    call->body = form;

    v.len = sizeof("Bearer ") - 1 + p->secret.len;
    v.data = ngx_pnalloc(call->pool, v.len);
    if (v.data == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_sprintf(v.data, "Bearer %V", &p->secret);

    if (pf_curl_header(call, "Authorization", &v) != NGX_OK
        || pf_curl_header(call, "Idempotency-Key", &charge->payment_id)
           != NGX_OK
        || pf_curl_header(call, "Stripe-Version", &(ngx_str_t)
                          ngx_string(NGX_HTTP_PAYFLOW_STRIPE_VERSION))
           != NGX_OK
        || pf_curl_header(call, "Content-Type", &(ngx_str_t)
                          ngx_string("application/x-www-form-urlencoded"))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_payflow_stripe_charged(ngx_http_payflow_provider_t *p,
    pf_curl_call_t *call, ngx_http_payflow_provider_result_t *res)
{
    json_t        *doc, *o, *e;
    const char    *status, *s;
    json_error_t   jerr;

    if (call->result != PF_CURL_OK) {
        ngx_http_payflow_provider_transport(call, res);
        return;
    }

    ngx_memzero(res, sizeof(ngx_http_payflow_provider_result_t));

    doc = json_loadb((char *) call->response.data, call->response.len, 0,
                     &jerr);

    if (call->status == 200 && json_is_object(doc)) {
        o = doc;
        status = ngx_http_payflow_stripe_string(call, o, "status");
        s = ngx_http_payflow_stripe_string(call, o, "id");

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
            s = ngx_http_payflow_stripe_string(call,
                    json_object_get(e, "redirect_to_url"), "url");

            if (s) {
                res->redirect_url.data = (u_char *) s;
                res->redirect_url.len = ngx_strlen(s);
            }

        } else if (ngx_strcmp(status, "requires_payment_method") == 0
                   || ngx_strcmp(status, "canceled") == 0)
        {
            e = json_object_get(o, "last_payment_error");
            res->status = "failed";
            res->code = ngx_http_payflow_stripe_string(call, e,
                                                       "decline_code");
            if (res->code == NULL) {
                res->code = ngx_http_payflow_stripe_string(call, e, "code");
            }

            res->message = ngx_http_payflow_stripe_string(call, e,
                                                          "message");
            res->not_taken = 1;
        }

        /* "processing": the provider is still at it; verified later */

        json_decref(doc);
        return;
    }

    e = json_is_object(doc) ? json_object_get(doc, "error") : NULL;

    res->code = ngx_http_payflow_stripe_string(call, e, "decline_code");
    if (res->code == NULL) {
        res->code = ngx_http_payflow_stripe_string(call, e, "code");
    }

    res->message = ngx_http_payflow_stripe_string(call, e, "message");

    s = ngx_http_payflow_stripe_string(call,
                                       json_object_get(e, "payment_intent"),
                                       "id");
    if (s) {
        res->reference.data = (u_char *) s;
        res->reference.len = ngx_strlen(s);
    }

    switch (call->status) {

    case 400:
    case 402:
    case 404:
        /* declined or refused as invalid: Stripe charged nothing */
        res->status = "failed";
        res->not_taken = 1;

        if (res->code == NULL) {
            res->code = (call->status == 402) ? "card_declined"
                                              : "provider_invalid_request";
        }

        break;

    case 401:
    case 403:
        ngx_log_error(NGX_LOG_ERR, call->log, 0,
                      "payflow provider: \"%V\" refused our credentials "
                      "(HTTP %ui): check its secret", &p->name,
                      call->status);
        res->status = "failed";
        res->code = "provider_authentication_failed";
        res->message = "the provider refused PayFlow's credentials";
        res->not_taken = 1;
        break;

    case 429:
        /* rate limited requests are not processed */
        res->status = "failed";
        res->code = "provider_rate_limited";
        res->message = "the provider is rate limiting requests";
        res->not_taken = 1;
        res->retry = 1;
        break;

    default:
        /*
         * 409 (a concurrent request with our key) and 5xx: the charge may
         * or may not exist; retrying with the same Idempotency-Key is safe
         */
        res->status = NULL;
        res->code = "provider_error";
        res->message = "the provider failed; the payment is being "
                       "verified with the provider";
        res->retry = (call->status >= 500 || call->status == 409);
    }

    if (doc) {
        json_decref(doc);
    }
}


/* a string member copied into the call's pool, or NULL */

static const char *
ngx_http_payflow_stripe_string(pf_curl_call_t *call, json_t *o,
    const char *name)
{
    u_char  *p;
    json_t  *v;
    size_t   len;

    v = json_is_object(o) ? json_object_get(o, name) : NULL;

    if (!json_is_string(v)) {
        return NULL;
    }

    len = json_string_length(v);

    p = ngx_pnalloc(call->pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, json_string_value(v), len);
    p[len] = '\0';

    return (const char *) p;
}
