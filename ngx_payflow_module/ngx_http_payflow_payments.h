
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_PAYMENTS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_PAYMENTS_H_INCLUDED_


#include "ngx_http_payflow_module.h"


ngx_int_t ngx_http_payflow_payments_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_payments_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_payments_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_payments_capture(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_payments_cancel(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_payments_events(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_refunds_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_refunds_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_payments_exponent(const char *currency);
ngx_int_t ngx_http_payflow_payment_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


extern const char  *ngx_http_payflow_idem_names[];


#endif /* _NGX_HTTP_PAYFLOW_PAYMENTS_H_INCLUDED_ */
