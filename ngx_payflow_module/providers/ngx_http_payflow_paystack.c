
/*
 * Copyright (C) PayFlow
 *
 * Paystack (https://paystack.com/docs/api/): JSON both ways,
 * "Authorization: Bearer sk_...", answers {"status", "message", "data"}.
 * A payment is a redirect flow: /transaction/initialize with reference =
 * the payment id returns the checkout page (requires_action), and the
 * outcome is learnt from /transaction/verify/:reference (or, later, a
 * webhook).  Paystack has no idempotency keys: the reference is the guard,
 * and "Duplicate Transaction Reference" means an earlier attempt got
 * there, so it is an unknown outcome, never a refusal.  Amounts are
 * integers in the currency's subunit.  There is no capture and no cancel.
 */


#include "ngx_http_payflow_providers.h"


static ngx_int_t ngx_http_payflow_paystack_request(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call);
static void ngx_http_payflow_paystack_response(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call, ngx_http_payflow_provider_result_t *res);
static ngx_int_t ngx_http_payflow_paystack_webhook_verify(
    ngx_http_request_t *r, ngx_http_payflow_webhook_conf_t *wcf,
    ngx_str_t *body);
static ngx_int_t ngx_http_payflow_paystack_webhook_parse(ngx_pool_t *pool,
    json_t *doc, ngx_http_payflow_webhook_event_t *ev);
static void ngx_http_payflow_paystack_verified(
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call, json_t *data,
    ngx_http_payflow_provider_result_t *res);


const ngx_http_payflow_adapter_t  ngx_http_payflow_paystack_adapter = {
    "paystack",
    ngx_string("https://api.paystack.co"),
    0,
    1,                                      /* needs the customer's e-mail */
    0,
    ngx_http_payflow_paystack_request,
    ngx_http_payflow_paystack_response,
    "x-paystack-signature",
    0,
    ngx_http_payflow_paystack_webhook_verify,
    ngx_http_payflow_paystack_webhook_parse
};


static ngx_int_t
ngx_http_payflow_paystack_request(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call)
{
    ngx_int_t      rc;
    pf_json_out_t  out;

    if (pf_json_out_init(&out, call->pool, 1024) != NGX_OK) {
        return NGX_ERROR;
    }

    switch (op->op) {

    case NGX_HTTP_PAYFLOW_OP_CHARGE:
        call->method = "POST";
        rc = ngx_http_payflow_provider_url(call, p, "/transaction/initialize",
                                           NULL, "");

        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "email");
        pf_json_out_cstr(&out, op->email);
        pf_json_out_key(&out, "amount");
        pf_json_out_int(&out, op->amount);
        pf_json_out_key(&out, "currency");
        pf_json_out_cstr(&out, op->currency);
        pf_json_out_key(&out, "reference");
        pf_json_out_str(&out, op->payment_id.data, op->payment_id.len);

        if (op->return_url) {
            pf_json_out_key(&out, "callback_url");
            pf_json_out_cstr(&out, op->return_url);
        }

        pf_json_out_key(&out, "metadata");
        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "payflow_payment_id");
        pf_json_out_str(&out, op->payment_id.data, op->payment_id.len);
        pf_json_out_close(&out, '}');
        pf_json_out_close(&out, '}');
        break;

    case NGX_HTTP_PAYFLOW_OP_VERIFY:
        call->method = "GET";
        rc = ngx_http_payflow_provider_url(call, p, "/transaction/verify/",
                                           &op->payment_id, "");
        break;

    case NGX_HTTP_PAYFLOW_OP_REFUND:
        call->method = "POST";
        rc = ngx_http_payflow_provider_url(call, p, "/refund", NULL, "");

        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "transaction");
        pf_json_out_str(&out, op->payment_id.data, op->payment_id.len);
        pf_json_out_key(&out, "amount");
        pf_json_out_int(&out, op->amount);
        pf_json_out_key(&out, "merchant_note");
        pf_json_out_str(&out, op->refund_id.data, op->refund_id.len);
        pf_json_out_close(&out, '}');
        break;

    case NGX_HTTP_PAYFLOW_OP_REFUND_STATUS:
        if (op->refund_reference.len == 0) {
            /* the refund's answer was lost: no id to ask about */
            return NGX_DECLINED;
        }

        call->method = "GET";
        rc = ngx_http_payflow_provider_url(call, p, "/refund/",
                                           &op->refund_reference, "");
        break;

    default:
        /* Paystack has neither capture nor cancel */
        return NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_payflow_provider_json(call, p, &out);
}


static void
ngx_http_payflow_paystack_response(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call,
    ngx_http_payflow_provider_result_t *res)
{
    json_t        *doc, *data;
    const char    *s;
    json_error_t   jerr;

    if (call->result != PF_CURL_OK) {
        ngx_http_payflow_provider_transport(call, res);
        return;
    }

    ngx_memzero(res, sizeof(ngx_http_payflow_provider_result_t));

    doc = json_loadb((char *) call->response.data, call->response.len, 0,
                     &jerr);

    data = json_is_object(doc) ? json_object_get(doc, "data") : NULL;
    res->message = ngx_http_payflow_json_string(call->pool, doc, "message");

    if (call->status == 200 && json_is_true(json_object_get(doc, "status"))
        && json_is_object(data))
    {
        switch (op->op) {

        case NGX_HTTP_PAYFLOW_OP_CHARGE:
            s = ngx_http_payflow_json_string(call->pool, data,
                                             "authorization_url");
            if (s) {
                res->status = "requires_action";
                res->redirect_url.data = (u_char *) s;
                res->redirect_url.len = ngx_strlen(s);
                res->reference = op->payment_id;
                res->message = NULL;
            }

            break;

        case NGX_HTTP_PAYFLOW_OP_VERIFY:
            ngx_http_payflow_paystack_verified(op, call, data, res);
            break;

        default: /* NGX_HTTP_PAYFLOW_OP_REFUND, OP_REFUND_STATUS */
            s = ngx_http_payflow_json_string(call->pool, data, "id");
            if (s) {
                res->reference.data = (u_char *) s;
                res->reference.len = ngx_strlen(s);
            }

            s = ngx_http_payflow_json_string(call->pool, data, "status");

            if (s && ngx_strcmp(s, "processed") == 0) {
                res->status = "succeeded";

            } else if (s && ngx_strcmp(s, "failed") == 0) {
                res->status = "failed";
                res->code = "refund_failed";

            } else {
                /* pending, processing, needs-attention */
                res->status = "pending";
            }

            res->message = NULL;
        }

        goto done;
    }

    switch (call->status) {

    case 400:
    case 404:
        if (res->message
            && ngx_strstr(res->message, "Duplicate Transaction Reference"))
        {
            /* an earlier attempt created it: not a refusal */
            res->code = "provider_duplicate_reference";
            res->retry = 0;
            break;
        }

        if (op->op == NGX_HTTP_PAYFLOW_OP_VERIFY) {
            /* "Transaction reference not found": never initialized */
            res->code = "provider_transaction_missing";
            res->not_taken = 1;
            break;
        }

        res->code = "provider_invalid_request";
        res->not_taken = 1;
        break;

    default:
        /* 5xx: the reference guards a retry against a second charge */
        ngx_http_payflow_provider_refused(p, call, res);
    }

done:

    if (doc) {
        json_decref(doc);
    }
}


/* a transaction as /transaction/verify shows it */

static void
ngx_http_payflow_paystack_verified(ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call, json_t *data,
    ngx_http_payflow_provider_result_t *res)
{
    json_t      *amount;
    const char  *status, *currency;

    status = ngx_http_payflow_json_string(call->pool, data, "status");
    currency = ngx_http_payflow_json_string(call->pool, data, "currency");
    amount = json_object_get(data, "amount");

    res->message = NULL;
    res->reference = op->payment_id;

    if (status == NULL) {
        return;
    }

    if (ngx_strcmp(status, "success") == 0
        || ngx_strcmp(status, "reversed") == 0)
    {
        /*
         * paid: for what was asked, or an operator must look (it stays
         * undecided, so it keeps being reported)
         */

        if (!json_is_integer(amount) || json_integer_value(amount)
                                        != op->amount
            || currency == NULL || ngx_strcmp(currency, op->currency) != 0)
        {
            ngx_log_error(NGX_LOG_ERR, call->log, 0,
                          "payflow provider: Paystack reports payment %V "
                          "paid with another amount or currency",
                          &op->payment_id);
            res->code = "amount_mismatch";
            return;
        }

        res->status = "succeeded";
        return;
    }

    if (ngx_strcmp(status, "failed") == 0) {
        res->status = "failed";
        res->declined = 1;
        res->code = "card_declined";
        res->message = ngx_http_payflow_json_string(call->pool, data,
                                                    "gateway_response");
        return;
    }

    /* abandoned, ongoing, pending, processing, queued: not yet */
}


/* x-paystack-signature: hex HMAC-SHA512 of the raw body, secret key */

static ngx_int_t
ngx_http_payflow_paystack_webhook_verify(ngx_http_request_t *r,
    ngx_http_payflow_webhook_conf_t *wcf, ngx_str_t *body)
{
    ngx_int_t  rc;
    ngx_str_t  sig;

    if (ngx_http_payflow_header(r, "x-paystack-signature", &sig) != NGX_OK
        || sig.len == 0)
    {
        return NGX_HTTP_PAYFLOW_WEBHOOK_MISSING;
    }

    rc = ngx_http_payflow_webhook_hmac(wcf, EVP_sha512(), body->data,
                                       body->len, sig.data, sig.len);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    return (rc == NGX_OK) ? NGX_HTTP_PAYFLOW_WEBHOOK_VALID
                          : NGX_HTTP_PAYFLOW_WEBHOOK_INVALID;
}


/*
 * {"event": "charge.success", "data": {transaction}} or "refund.processed"
 * (and .pending, .processing, .failed) with {refund}.  Paystack's events
 * have no id of their own: the event name and its object's id make one,
 * the same on every retry of a delivery.
 */

static ngx_int_t
ngx_http_payflow_paystack_webhook_parse(ngx_pool_t *pool, json_t *doc,
    ngx_http_payflow_webhook_event_t *ev)
{
    json_t      *data, *amount;
    ngx_str_t    oid;
    const char  *status, *currency, *domain;

    ngx_http_payflow_webhook_str(pool, doc, "event", &ev->type);
    data = json_object_get(doc, "data");

    if (ev->type.len == 0 || !json_is_object(data)) {
        return NGX_DECLINED;
    }

    status = ngx_http_payflow_json_string(pool, data, "status");
    currency = ngx_http_payflow_json_string(pool, data, "currency");
    amount = json_object_get(data, "amount");
    domain = ngx_http_payflow_json_string(pool, data, "domain");

    if (domain) {
        ev->livemode = (ngx_strcmp(domain, "live") == 0);
    }

    ngx_http_payflow_webhook_str(pool, data, "id", &oid);

    if (oid.len == 0) {
        ngx_http_payflow_webhook_str(pool, data, "refund_reference", &oid);
    }

    if (oid.len == 0) {
        ngx_http_payflow_webhook_str(pool, data, "reference", &oid);
    }

    if (oid.len == 0) {
        return NGX_DECLINED;
    }

    if (ngx_http_payflow_webhook_id(pool, ev, &oid, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    if (json_is_integer(amount)) {
        ev->amount = json_integer_value(amount);
    }

    ev->currency = currency;

    if (status == NULL) {
        return NGX_OK;
    }

    if (ngx_strcmp(ev->type.data, "charge.success") == 0
        || ngx_strcmp(ev->type.data, "charge.failed") == 0)
    {
        ev->object = "payment";
        ngx_http_payflow_webhook_str(pool, data, "reference",
                                     &ev->payment_id);
        ev->res.reference = ev->payment_id;

        if (ngx_strcmp(status, "success") == 0) {
            ev->res.status = "succeeded";

        } else if (ngx_strcmp(status, "failed") == 0) {
            ev->res.status = "failed";
            ev->res.declined = 1;
            ev->res.code = "card_declined";
            ev->res.message = ngx_http_payflow_json_string(pool, data,
                                                    "gateway_response");
        }

        return NGX_OK;
    }

    if (ngx_strncmp(ev->type.data, "refund.", 7) == 0) {
        ev->object = "refund";
        ngx_http_payflow_webhook_str(pool, data, "transaction_reference",
                                     &ev->payment_id);
        ev->res.reference = oid;

        if (ngx_strcmp(status, "processed") == 0) {
            ev->res.status = "succeeded";

        } else if (ngx_strcmp(status, "failed") == 0) {
            ev->res.status = "failed";
            ev->res.code = "refund_failed";

        } else {
            ev->res.status = "pending";
        }
    }

    return NGX_OK;
}
