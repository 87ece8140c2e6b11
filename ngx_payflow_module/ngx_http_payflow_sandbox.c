
/*
 * Copyright (C) PayFlow
 *
 * The built-in sandbox provider: a test-mode payment that no network
 * provider takes gets its outcome from the last two digits of its amount.
 * It runs in process and moves no money, so that
 * ngx_http_payflow_payments_create() writes the payment in its outcome in
 * the one statement that creates it.  Live mode never uses it.
 */


#include "ngx_http_payflow_sandbox.h"


static ngx_http_payflow_outcome_t  ngx_http_payflow_outcomes[] = {
    { "succeeded", NULL, NULL, 0 },
    { "requires_capture", NULL, NULL, 0 },
    { "failed", "card_declined", "the card was declined", 0 },
    { "failed", "insufficient_funds", "the card has insufficient funds", 0 },
    { "requires_action", NULL, NULL, 1 },
    { NULL, NULL, NULL, 0 }
};


/*
 * The sandbox's outcome from the amount's last two digits:
 * ..02 declined, ..05 insufficient funds, ..08 requires action (a
 * redirect), ..09 stays processing (the slow, undecided case); anything
 * else succeeds, or waits for capture with capture_method "manual".
 */

ngx_http_payflow_outcome_t *
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


/* the sandbox's answer for a payment, as a provider's answer reads */

ngx_int_t
ngx_http_payflow_sandbox_result(ngx_pool_t *pool, json_int_t amount,
    ngx_uint_t manual, ngx_str_t *payment_id,
    ngx_http_payflow_provider_result_t *res)
{
    ngx_http_payflow_outcome_t  *outcome;

    outcome = ngx_http_payflow_sandbox(amount, manual);

    ngx_memzero(res, sizeof(ngx_http_payflow_provider_result_t));

    res->status = outcome->status;
    res->code = outcome->code;
    res->message = outcome->message;
    res->declined = (outcome->code != NULL);

    if (outcome->action) {
        res->redirect_url.len = sizeof(NGX_HTTP_PAYFLOW_SANDBOX_ACTION) - 1
                                + payment_id->len;
        res->redirect_url.data = ngx_pnalloc(pool, res->redirect_url.len);
        if (res->redirect_url.data == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_sprintf(res->redirect_url.data,
                           NGX_HTTP_PAYFLOW_SANDBOX_ACTION "%V", payment_id);
    }

    return NGX_OK;
}
