
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_ACCOUNTS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_ACCOUNTS_H_INCLUDED_


#include "ngx_http_payflow_module.h"


ngx_int_t ngx_http_payflow_accounts_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_accounts_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_accounts_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_accounts_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_accounts_update(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_accounts_delete(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);


#endif /* _NGX_HTTP_PAYFLOW_ACCOUNTS_H_INCLUDED_ */
