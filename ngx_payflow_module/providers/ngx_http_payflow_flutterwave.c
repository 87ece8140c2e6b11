
/*
 * Copyright (C) PayFlow
 *
 * Flutterwave v3 (https://developer.flutterwave.com/v3.0/reference): JSON
 * both ways, "Authorization: Bearer FLWSECK-...", answers {"status":
 * "success"|"error", "message", "data"}.  A payment is the hosted checkout:
 * /v3/payments with tx_ref = the payment id returns the link
 * (requires_action); /v3/transactions/verify_by_reference?tx_ref= tells the
 * outcome and the transaction's numeric id, which becomes the payment's
 * provider reference and is what /v3/transactions/:id/refund takes.
 * Amounts are decimal MAJOR units.  No capture, no cancel, no idempotency
 * keys (tx_ref is the guard).
 */


#include "ngx_http_payflow_providers.h"
#include "ngx_http_payflow_payments.h"

#include <openssl/crypto.h>


static ngx_int_t ngx_http_payflow_flutterwave_request(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call);
static void ngx_http_payflow_flutterwave_response(
    ngx_http_payflow_provider_t *p, ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call, ngx_http_payflow_provider_result_t *res);
static void ngx_http_payflow_flutterwave_verified(
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call, json_t *data,
    ngx_http_payflow_provider_result_t *res);
static ngx_int_t ngx_http_payflow_flutterwave_webhook_verify(
    ngx_http_request_t *r, ngx_http_payflow_webhook_conf_t *wcf,
    ngx_str_t *body);
static ngx_int_t ngx_http_payflow_flutterwave_webhook_parse(ngx_pool_t *pool,
    json_t *doc, ngx_http_payflow_webhook_event_t *ev);


const ngx_http_payflow_adapter_t  ngx_http_payflow_flutterwave_adapter = {
    "flutterwave",
    ngx_string("https://api.flutterwave.com"),
    0,
    1,                                      /* needs the customer's e-mail */
    0,
    ngx_http_payflow_flutterwave_request,
    ngx_http_payflow_flutterwave_response,
    "verif-hash",
    1,                                      /* verif-hash signs no body */
    ngx_http_payflow_flutterwave_webhook_verify,
    ngx_http_payflow_flutterwave_webhook_parse
};


static ngx_int_t
ngx_http_payflow_flutterwave_request(ngx_http_payflow_provider_t *p,
    ngx_http_payflow_operation_t *op, pf_curl_call_t *call)
{
    u_char         amount[32];
    ngx_int_t      rc;
    pf_json_out_t  out;

    if (pf_json_out_init(&out, call->pool, 1024) != NGX_OK) {
        return NGX_ERROR;
    }

    (void) ngx_http_payflow_major_units(amount, op->amount, op->exponent);

    switch (op->op) {

    case NGX_HTTP_PAYFLOW_OP_CHARGE:
        call->method = "POST";
        rc = ngx_http_payflow_provider_url(call, p, "/v3/payments", NULL,
                                           "");

        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "tx_ref");
        pf_json_out_str(&out, op->payment_id.data, op->payment_id.len);
        pf_json_out_key(&out, "amount");
        pf_json_out_raw(&out, amount, ngx_strlen(amount));
        pf_json_out_key(&out, "currency");
        pf_json_out_cstr(&out, op->currency);

        if (op->return_url) {
            pf_json_out_key(&out, "redirect_url");
            pf_json_out_cstr(&out, op->return_url);
        }

        pf_json_out_key(&out, "customer");
        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "email");
        pf_json_out_cstr(&out, op->email);
        pf_json_out_close(&out, '}');

        if (op->description) {
            pf_json_out_key(&out, "customizations");
            pf_json_out_open(&out, '{');
            pf_json_out_key(&out, "description");
            pf_json_out_cstr(&out, op->description);
            pf_json_out_close(&out, '}');
        }

        pf_json_out_key(&out, "meta");
        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "payflow_payment_id");
        pf_json_out_str(&out, op->payment_id.data, op->payment_id.len);
        pf_json_out_close(&out, '}');
        pf_json_out_close(&out, '}');
        break;

    case NGX_HTTP_PAYFLOW_OP_VERIFY:
        call->method = "GET";
        rc = ngx_http_payflow_provider_url(call, p,
                 "/v3/transactions/verify_by_reference?tx_ref=",
                 &op->payment_id, "");
        break;

    case NGX_HTTP_PAYFLOW_OP_REFUND:
        call->method = "POST";
        rc = ngx_http_payflow_provider_url(call, p, "/v3/transactions/",
                                           &op->reference, "/refund");

        pf_json_out_open(&out, '{');
        pf_json_out_key(&out, "amount");
        pf_json_out_raw(&out, amount, ngx_strlen(amount));
        pf_json_out_key(&out, "comments");
        pf_json_out_str(&out, op->refund_id.data, op->refund_id.len);
        pf_json_out_close(&out, '}');
        break;

    case NGX_HTTP_PAYFLOW_OP_REFUND_STATUS:
        if (op->refund_reference.len == 0) {
            return NGX_DECLINED;
        }

        call->method = "GET";
        rc = ngx_http_payflow_provider_url(call, p, "/v3/refunds/",
                                           &op->refund_reference, "");
        break;

    default:
        /* the hosted checkout has neither capture nor cancel */
        return NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_payflow_provider_json(call, p, &out);
}


static void
ngx_http_payflow_flutterwave_response(ngx_http_payflow_provider_t *p,
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
    s = ngx_http_payflow_json_string(call->pool, doc, "status");
    res->message = ngx_http_payflow_json_string(call->pool, doc, "message");

    if (call->status == 200 && s && ngx_strcmp(s, "success") == 0
        && json_is_object(data))
    {
        res->message = NULL;

        switch (op->op) {

        case NGX_HTTP_PAYFLOW_OP_CHARGE:
            s = ngx_http_payflow_json_string(call->pool, data, "link");
            if (s) {
                res->status = "requires_action";
                res->redirect_url.data = (u_char *) s;
                res->redirect_url.len = ngx_strlen(s);
                res->reference = op->payment_id;
            }

            break;

        case NGX_HTTP_PAYFLOW_OP_VERIFY:
            ngx_http_payflow_flutterwave_verified(op, call, data, res);
            break;

        default: /* NGX_HTTP_PAYFLOW_OP_REFUND, OP_REFUND_STATUS */
            s = ngx_http_payflow_json_string(call->pool, data, "id");
            if (s) {
                res->reference.data = (u_char *) s;
                res->reference.len = ngx_strlen(s);
            }

            s = ngx_http_payflow_json_string(call->pool, data, "status");

            if (s && ngx_strncmp(s, "completed", 9) == 0) {
                res->status = "succeeded";

            } else if (s && ngx_strcmp(s, "failed") == 0) {
                res->status = "failed";
                res->code = "refund_failed";

            } else {
                res->status = "pending";
            }
        }

        goto done;
    }

    switch (call->status) {

    case 400:
    case 404:
        if (res->message && ngx_strstr(res->message, "Duplicate")) {
            /* an earlier attempt created it: not a refusal */
            res->code = "provider_duplicate_reference";
            break;
        }

        /*
         * For a verification, "No transaction was found": the customer
         * has not paid (yet), or the link was never made.
         */

        res->code = (op->op == NGX_HTTP_PAYFLOW_OP_VERIFY)
                    ? "provider_transaction_missing"
                    : "provider_invalid_request";
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


/* a transaction as verify_by_reference shows it */

static void
ngx_http_payflow_flutterwave_verified(ngx_http_payflow_operation_t *op,
    pf_curl_call_t *call, json_t *data,
    ngx_http_payflow_provider_result_t *res)
{
    u_char      *p, expected[32];
    json_t      *amount;
    const char  *status, *currency, *id;

    status = ngx_http_payflow_json_string(call->pool, data, "status");
    currency = ngx_http_payflow_json_string(call->pool, data, "currency");
    id = ngx_http_payflow_json_string(call->pool, data, "id");
    amount = json_object_get(data, "amount");

    if (id) {
        res->reference.data = (u_char *) id;
        res->reference.len = ngx_strlen(id);
    }

    if (status == NULL) {
        return;
    }

    if (ngx_strcmp(status, "successful") == 0) {

        /* the amount as major units, compared exactly as text */

        (void) ngx_http_payflow_major_units(expected, op->amount,
                                            op->exponent);
        p = ngx_pnalloc(call->pool, 32);

        if (p == NULL || !json_is_number(amount)
            || ngx_strcmp(ngx_http_payflow_major_units(p,
                   (int64_t) (json_number_value(amount)
                              * (op->exponent == 3 ? 1000
                                 : op->exponent == 2 ? 100 : 1) + 0.5),
                   op->exponent), expected) != 0
            || currency == NULL || ngx_strcmp(currency, op->currency) != 0)
        {
            ngx_log_error(NGX_LOG_ERR, call->log, 0,
                          "payflow provider: Flutterwave reports payment "
                          "%V paid with another amount or currency",
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
                                                    "processor_response");
        return;
    }

    /* pending: not yet */
}


/*
 * verif-hash: the secret hash set in Flutterwave's dashboard, sent as is.
 * Compared as SHA-256 digests, so the time taken tells neither where the
 * bytes differ nor how long the secret is.
 */

static ngx_int_t
ngx_http_payflow_flutterwave_webhook_verify(ngx_http_request_t *r,
    ngx_http_payflow_webhook_conf_t *wcf, ngx_str_t *body)
{
    u_char      got[PF_SHA256_LEN], want[PF_SHA256_LEN];
    ngx_str_t   hash, *secret;
    ngx_uint_t  i, match;

    if (ngx_http_payflow_header(r, "verif-hash", &hash) != NGX_OK
        || hash.len == 0)
    {
        return NGX_HTTP_PAYFLOW_WEBHOOK_MISSING;
    }

    if (EVP_Digest(hash.data, hash.len, got, NULL, EVP_sha256(), NULL)
        != 1)
    {
        return NGX_ERROR;
    }

    secret = wcf->secrets.elts;
    match = 0;

    for (i = 0; i < wcf->secrets.nelts; i++) {

        if (EVP_Digest(secret[i].data, secret[i].len, want, NULL,
                       EVP_sha256(), NULL)
            != 1)
        {
            return NGX_ERROR;
        }

        match |= (CRYPTO_memcmp(got, want, PF_SHA256_LEN) == 0);
    }

    return match ? NGX_HTTP_PAYFLOW_WEBHOOK_VALID
                 : NGX_HTTP_PAYFLOW_WEBHOOK_INVALID;
}


/*
 * {"event": "charge.completed", "data": {"id", "tx_ref", "amount",
 * "currency", "status", ...}} and refund events {"event": "refund...",
 * "data": {"id", "tx_id", "amount_refunded", "status"}}.  v3 events carry
 * no id of their own: the event name, the object's id and its status
 * make one.  As verif-hash signs no body, such an event moves nothing by
 * itself (verify_by_api): it makes the reconciler verify the payment now,
 * which also records the transaction's id.
 */

static ngx_int_t
ngx_http_payflow_flutterwave_webhook_parse(ngx_pool_t *pool, json_t *doc,
    ngx_http_payflow_webhook_event_t *ev)
{
    double       major, scale;
    json_t      *data, *amount;
    ngx_int_t    exponent;
    ngx_str_t    oid;
    const char  *status;

    ngx_http_payflow_webhook_str(pool, doc, "event", &ev->type);
    data = json_object_get(doc, "data");

    if (ev->type.len == 0 || !json_is_object(data)) {
        return NGX_DECLINED;
    }

    ngx_http_payflow_webhook_str(pool, data, "id", &oid);
    status = ngx_http_payflow_json_string(pool, data, "status");

    if (oid.len == 0) {
        return NGX_DECLINED;
    }

    if (ngx_http_payflow_webhook_id(pool, ev, &oid, status ? status : "")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ev->currency = ngx_http_payflow_json_string(pool, data, "currency");

    /* major units to minor, exactly, for a currency PayFlow knows */

    amount = json_object_get(data, "amount");
    if (amount == NULL) {
        amount = json_object_get(data, "amount_refunded");
    }

    exponent = ev->currency
               ? ngx_http_payflow_payments_exponent(ev->currency) : NGX_ERROR;

    if (json_is_number(amount) && exponent != NGX_ERROR) {
        major = json_number_value(amount);
        scale = (exponent == 3) ? 1000 : (exponent == 2) ? 100 : 1;

        if (major >= 0 && major < 1e15) {
            ev->amount = (int64_t) (major * scale + 0.5);
        }
    }

    if (status == NULL) {
        return NGX_OK;
    }

    if (ngx_strcmp(ev->type.data, "charge.completed") == 0) {
        ev->object = "payment";
        ngx_http_payflow_webhook_str(pool, data, "tx_ref", &ev->payment_id);

        if (ngx_strcmp(status, "successful") == 0) {
            ev->res.status = "succeeded";

        } else if (ngx_strcmp(status, "failed") == 0) {
            ev->res.status = "failed";
            ev->res.declined = 1;
            ev->res.code = "card_declined";
            ev->res.message = ngx_http_payflow_json_string(pool, data,
                                                    "processor_response");
        }

        return NGX_OK;
    }

    if (ngx_strncmp(ev->type.data, "refund.", 7) == 0) {
        ev->object = "refund";
        ngx_http_payflow_webhook_str(pool, data, "tx_ref", &ev->payment_id);
        ev->res.reference = oid;

        if (ngx_strncmp(status, "completed", 9) == 0) {
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
