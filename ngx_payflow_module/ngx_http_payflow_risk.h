
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_RISK_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_RISK_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "pf_prom.h"
#include "pf_redis.h"


#define NGX_HTTP_PAYFLOW_RISK_ALLOW   0
#define NGX_HTTP_PAYFLOW_RISK_REVIEW  1
#define NGX_HTTP_PAYFLOW_RISK_BLOCK   2

#define NGX_HTTP_PAYFLOW_RISK_MAXRULES  32


/* what the worker knows of a payment before anyone is asked */

typedef struct {
    int64_t                     amount;
    const char                 *currency;
    ngx_str_t                   email;         /* lower case */
    ngx_str_t                   domain;        /* of the e-mail */
    ngx_str_t                   customer;      /* customer[id], else e-mail */
    ngx_str_t                   customer_id;   /* customer[id] as given */
    ngx_str_t                   ip;            /* $remote_addr */
    ngx_str_t                   card;          /* payment_method */
    ngx_str_t                   country;       /* customer[country] */
} ngx_http_payflow_risk_signals_t;


/* a tenant's settings as a worker's copy of them says (riskcache.c) */

typedef struct {
    int64_t                     version;       /* of lists and settings */
    ngx_int_t                   review;        /* -1: nginx.conf's */
    ngx_int_t                   block;
    ngx_int_t                   scores[NGX_HTTP_PAYFLOW_RISK_MAXRULES];
    u_char                      disabled[NGX_HTTP_PAYFLOW_RISK_MAXRULES];
} ngx_http_payflow_risk_settings_t;

typedef struct ngx_http_payflow_risk_tenant_s  ngx_http_payflow_risk_tenant_t;


char *ngx_http_payflow_risk(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_payflow_risk_rule(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_payflow_risk_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);

ngx_int_t ngx_http_payflow_risk_init_process(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_risk_exit_process(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_risk_assess(ngx_http_request_t *r,
    ngx_http_payflow_risk_signals_t *sig, const char **risk,
    pf_pg_query_t *q, const char *what, ngx_http_payflow_db_ok_pt ok);
void ngx_http_payflow_risk_count(ngx_http_request_t *r);
void ngx_http_payflow_risk_decided(ngx_http_request_t *r,
    const char *decision, ngx_uint_t copied);
void ngx_http_payflow_risk_queue(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t depth, ngx_int_t age);
time_t ngx_http_payflow_risk_review_expiry(
    ngx_http_payflow_main_conf_t *pmcf);
ngx_uint_t ngx_http_payflow_risk_rule_known(const char *name, size_t len);
const char *ngx_http_payflow_risk_defaults(ngx_http_request_t *r);
void ngx_http_payflow_risk_metrics(ngx_http_payflow_main_conf_t *pmcf,
    pf_prom_t *out);

ngx_int_t ngx_http_payflow_risk_cache_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf, size_t size, ngx_msec_t refresh);
void ngx_http_payflow_risk_cache_stop(void);
ngx_int_t ngx_http_payflow_risk_cache_lookup(ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_http_payflow_risk_signals_t *sig,
    ngx_http_payflow_risk_settings_t *out);

ngx_int_t ngx_http_payflow_reviews_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_risk_lists_add(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_risk_lists_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_risk_lists_delete(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_risk_rules_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_risk_rules_update(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_risk_rules_reset(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_reviews_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_reviews_approve(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_reviews_reject(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);


#endif /* _NGX_HTTP_PAYFLOW_RISK_H_INCLUDED_ */
