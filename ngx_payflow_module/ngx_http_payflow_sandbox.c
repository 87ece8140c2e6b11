
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
