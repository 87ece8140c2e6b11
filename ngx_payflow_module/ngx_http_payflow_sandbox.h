
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_SANDBOX_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_SANDBOX_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_providers.h"


#define NGX_HTTP_PAYFLOW_SANDBOX_ACTION                                       \
    "https://sandbox.payflow.invalid/authenticate/"


/* what the sandbox does, chosen by the last two digits of the amount */

typedef struct {
    const char                 *status;     /* NULL: stays processing */
    const char                 *code;
    const char                 *message;
    ngx_uint_t                  action;
} ngx_http_payflow_outcome_t;


ngx_http_payflow_outcome_t *ngx_http_payflow_sandbox(json_int_t amount,
    ngx_uint_t manual);
ngx_int_t ngx_http_payflow_sandbox_result(ngx_pool_t *pool,
    json_int_t amount, ngx_uint_t manual, ngx_str_t *payment_id,
    ngx_http_payflow_provider_result_t *res);


#endif /* _NGX_HTTP_PAYFLOW_SANDBOX_H_INCLUDED_ */
