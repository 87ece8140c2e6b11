
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_LISTS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_LISTS_H_INCLUDED_


#include "ngx_http_payflow_module.h"


ngx_int_t ngx_http_payflow_lists_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_payments_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_refunds_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_ledger_entries(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_balance(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_list_cursor(ngx_http_request_t *r,
    const char **values, pf_error_t *err);
ngx_int_t ngx_http_payflow_json_sent(ngx_http_request_t *r,
    pf_pg_query_t *q);
ngx_int_t ngx_http_payflow_json_run(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char **values,
    ngx_uint_t nvalues, const char *what);
ngx_int_t ngx_http_payflow_list_run(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char *what);
ngx_int_t ngx_http_payflow_id_run(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const pf_pg_statement_t *statement,
    const char *what);


#endif /* _NGX_HTTP_PAYFLOW_LISTS_H_INCLUDED_ */
