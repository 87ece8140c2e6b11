
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_PII_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_PII_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "pf_pii.h"


#define NGX_HTTP_PAYFLOW_PII_INDEX_HEX  (2 * PF_SHA256_LEN)


ngx_int_t ngx_http_payflow_pii_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);
char *ngx_http_payflow_pii_conf(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_pii_init_process(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_pii_exit_process(ngx_http_payflow_main_conf_t *pmcf);

ngx_int_t ngx_http_payflow_pii_seal(ngx_http_request_t *r, json_t *customer,
    char **text);
ngx_int_t ngx_http_payflow_pii_index(ngx_http_request_t *r,
    ngx_str_t *email, u_char *hex);
ngx_int_t ngx_http_payflow_pii_seal_row(ngx_pool_t *pool,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, json_t *row, ngx_str_t *plain);
ngx_int_t ngx_http_payflow_pii_index_of(ngx_pool_t *pool,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *email, u_char *hex);
ngx_int_t ngx_http_payflow_pii_rewrap(ngx_pool_t *pool,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *key, ngx_str_t *out);

ngx_int_t ngx_http_payflow_customers_erase(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);

ngx_int_t ngx_http_payflow_pii_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);

ngx_int_t ngx_http_payflow_pii_splice(ngx_pool_t *pool, ngx_log_t *log,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *body, ngx_array_t *tokens,
    ngx_str_t *out);
ngx_int_t ngx_http_payflow_pii_email(ngx_pool_t *pool, ngx_log_t *log,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, const char *pii, const char *key,
    const char **email);


#endif /* _NGX_HTTP_PAYFLOW_PII_H_INCLUDED_ */
