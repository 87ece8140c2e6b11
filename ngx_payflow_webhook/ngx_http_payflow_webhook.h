
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_WEBHOOK_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_WEBHOOK_H_INCLUDED_


#include "ngx_http_payflow_providers.h"


/* webhooks to tenants: the outbox's settings (http block) */

typedef struct {
    ngx_flag_t                  enabled;        /* payflow_outbox */
    ngx_msec_t                  interval;
    ngx_msec_t                  timeout;
    ngx_array_t                *retries;        /* time_t, seconds */
    ngx_str_t                   schedule;       /* "{5,300,...}" */
    time_t                      disable_after;
    time_t                      grace;          /* of a rotated secret */
    ngx_flag_t                  allow_private;
    ngx_uint_t                  concurrency;    /* per worker */
} ngx_http_payflow_outbox_conf_t;


ngx_int_t ngx_http_payflow_webhook_init(ngx_http_payflow_main_conf_t *pmcf);

ngx_int_t ngx_http_payflow_outbox_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_outbox_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_outbox_stop(void);
ngx_int_t ngx_http_payflow_outbox_check(pf_curl_call_t *call,
    struct sockaddr *sa, socklen_t socklen);
ngx_int_t ngx_http_payflow_outbox_secret(ngx_pool_t *pool,
    ngx_str_t *secret);

ngx_int_t ngx_http_payflow_reseal_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_reseal_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_reseal_stop(void);
ngx_int_t ngx_http_payflow_endpoint_aad(ngx_pool_t *pool, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *aad);
ngx_int_t ngx_http_payflow_endpoint_open(ngx_pool_t *pool, pf_keyring_t *ring,
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *id,
    ngx_str_t *secret);
ngx_int_t ngx_http_payflow_endpoints_init(
    ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_endpoints_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_endpoints_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_endpoints_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_endpoints_update(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_endpoints_delete(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_endpoints_rotate(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_events_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_events_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_events_deliveries(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_events_redeliver(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);


extern ngx_module_t  ngx_http_payflow_webhook_module;


#endif /* _NGX_HTTP_PAYFLOW_WEBHOOK_H_INCLUDED_ */
