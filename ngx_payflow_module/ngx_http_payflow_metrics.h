
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_METRICS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_METRICS_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "pf_prom.h"


#define NGX_HTTP_PAYFLOW_M_ROUTES    64
#define NGX_HTTP_PAYFLOW_M_TYPES     18
#define NGX_HTTP_PAYFLOW_M_SOURCES   4
#define NGX_HTTP_PAYFLOW_M_METHODS   6
#define NGX_HTTP_PAYFLOW_M_STATUSES  20
#define NGX_HTTP_PAYFLOW_M_BUCKETS   11


typedef enum {
    NGX_HTTP_PAYFLOW_M_AUTH_API_KEY = 0,
    NGX_HTTP_PAYFLOW_M_AUTH_STATIC_KEY,
    NGX_HTTP_PAYFLOW_M_AUTH_JWT,
    NGX_HTTP_PAYFLOW_M_AUTH_ADMIN,
    NGX_HTTP_PAYFLOW_M_AUTH_REFUSED     /* + index of the error code */
} ngx_http_payflow_m_auth_e;


typedef enum {
    NGX_HTTP_PAYFLOW_M_CACHE_HIT = 0,
    NGX_HTTP_PAYFLOW_M_CACHE_NEGATIVE,
    NGX_HTTP_PAYFLOW_M_CACHE_MISS,
    NGX_HTTP_PAYFLOW_M_CACHE_STATIC
} ngx_http_payflow_m_cache_e;


ngx_int_t ngx_http_payflow_metrics_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);
pf_pg_metrics_t *ngx_http_payflow_metrics_pg(
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_metrics_transitions(
    ngx_http_payflow_main_conf_t *pmcf, const char *type, const char *source,
    ngx_int_t n);
void ngx_http_payflow_metrics_secrets(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t pending, ngx_uint_t resealed, ngx_uint_t unopened);
void ngx_http_payflow_metrics_outbox(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t result, ngx_uint_t backlog, ngx_msec_t lag);
void ngx_http_payflow_metrics_ledger(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t unsealed, ngx_msec_t lag);
ngx_int_t ngx_http_payflow_metrics_log(ngx_http_request_t *r);
void ngx_http_payflow_metrics_auth(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
void ngx_http_payflow_metrics_cache(ngx_http_request_t *r,
    ngx_http_payflow_m_cache_e result);
ngx_int_t ngx_http_payflow_metrics_handler(ngx_http_request_t *r);
u_char *ngx_http_payflow_log_error(ngx_http_request_t *r,
    ngx_http_request_t *sr, u_char *buf, size_t len);

ngx_int_t ngx_http_payflow_log_mask(ngx_pool_t *pool, ngx_log_t *log);

extern ngx_http_log_handler_pt  ngx_http_payflow_log_next;

/* from ngx_http_payflow_api.c: route templates for labels */
ngx_int_t ngx_http_payflow_route_index(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_uint_t ngx_http_payflow_route_label(ngx_uint_t i, u_char *buf,
    size_t len);

/* from ngx_payflow_ratelimit: its zones and Redis */
void ngx_http_payflow_ratelimit_metrics(pf_prom_t *out);


#endif /* _NGX_HTTP_PAYFLOW_METRICS_H_INCLUDED_ */
