
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_REFUNDS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_REFUNDS_H_INCLUDED_


#include "ngx_http_payflow_money.h"


ngx_int_t ngx_http_payflow_refunds_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_refunds_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_refunds_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);


extern ngx_http_payflow_money_t  ngx_http_payflow_refund_op;
extern ngx_http_payflow_money_t  ngx_http_payflow_refund_remote_op;


#endif /* _NGX_HTTP_PAYFLOW_REFUNDS_H_INCLUDED_ */
