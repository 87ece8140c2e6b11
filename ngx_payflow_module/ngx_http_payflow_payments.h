
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_PAYMENTS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_PAYMENTS_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_providers.h"


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
ngx_int_t ngx_http_payflow_payments_exponent(const char *currency);
ngx_int_t ngx_http_payflow_amount_over(ngx_http_request_t *r,
    json_int_t amount);
ngx_int_t ngx_http_payflow_payment_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

/* shared with ngx_http_payflow_refunds.c and _idempotency.c */

void ngx_http_payflow_payment_error(ngx_http_request_t *r, pf_error_t *err);
ngx_int_t ngx_http_payflow_bad(ngx_http_request_t *r, const char *param,
    const char *code, const char *message);
char *ngx_http_payflow_integer(ngx_http_request_t *r, json_int_t n);
ngx_int_t ngx_http_payflow_read_one(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, ngx_str_t *id,
    ngx_http_payflow_db_ok_pt ok, const char *what);


/* shared with ngx_http_payflow_reviews.c: a payment's way to its answer */
ngx_int_t ngx_http_payflow_payments_attempt(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_payments_settle(ngx_http_request_t *r,
    pf_pg_query_t *q, ngx_uint_t i, ngx_http_payflow_provider_result_t *res,
    ngx_uint_t record);
ngx_int_t ngx_http_payflow_payments_created(ngx_http_request_t *r,
    pf_pg_query_t *q);


#endif /* _NGX_HTTP_PAYFLOW_PAYMENTS_H_INCLUDED_ */
