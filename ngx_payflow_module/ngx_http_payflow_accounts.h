
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_ACCOUNTS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_ACCOUNTS_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_providers.h"


#define NGX_HTTP_PAYFLOW_ACCOUNT_CURRENCIES  50

/* an account's provider slot is found by its id (routing.c) */
#define NGX_HTTP_PAYFLOW_ACCOUNT_INDEX       ((ngx_uint_t) -1)


typedef struct ngx_http_payflow_account_s  ngx_http_payflow_account_t;

/* a tenant's provider account, as a worker keeps it (acctcache.c) */

struct ngx_http_payflow_account_s {
    ngx_http_payflow_provider_t     provider;   /* name: the id */
    ngx_str_t                       webhook_secret;  /* opened, or empty */
    ngx_uint_t                      percent;    /* fee: basis points */
    int64_t                         fixed;      /* fee: minor units */
    char            currencies[NGX_HTTP_PAYFLOW_ACCOUNT_CURRENCIES][4];
    ngx_uint_t                      ncurrencies;    /* 0: any */
    unsigned                        enabled:1;

    ngx_http_payflow_account_t     *next;       /* the tenant's */
    ngx_http_payflow_account_t     *by_id;      /* in the id index */
    void                           *tenant;
    size_t                          size;
};


typedef struct ngx_http_payflow_account_wait_s
    ngx_http_payflow_account_wait_t;

typedef void (*ngx_http_payflow_account_wait_pt)(
    ngx_http_payflow_account_wait_t *w, ngx_int_t rc);

struct ngx_http_payflow_account_wait_s {
    ngx_queue_t                        queue;
    ngx_http_payflow_account_wait_pt   handler;
    void                              *data;
    unsigned                           waiting:1;
};


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

ngx_int_t ngx_http_payflow_account_cache_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_account_cache_stop(void);
ngx_int_t ngx_http_payflow_accounts_ready(ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_http_payflow_account_wait_t *w);
ngx_http_payflow_account_t *ngx_http_payflow_accounts_of(ngx_str_t *tenant,
    ngx_uint_t livemode);
ngx_int_t ngx_http_payflow_account_find(ngx_str_t *id,
    ngx_http_payflow_account_t **out, ngx_http_payflow_account_wait_t *w);
ngx_http_payflow_provider_t *ngx_http_payflow_account_provider(
    ngx_pool_t *pool, ngx_http_payflow_account_t *a);
ngx_uint_t ngx_http_payflow_account_id(ngx_str_t *id);
void ngx_http_payflow_account_unwait(ngx_http_payflow_account_wait_t *w);
void ngx_http_payflow_accounts_changed(ngx_str_t *tenant,
    ngx_uint_t livemode);


#endif /* _NGX_HTTP_PAYFLOW_ACCOUNTS_H_INCLUDED_ */
