
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_ROUTING_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_ROUTING_H_INCLUDED_


#include "ngx_http_payflow_providers.h"
#include "pf_prom.h"


#define NGX_HTTP_PAYFLOW_MAX_ROUTE  8


/* the providers a payment may go to, in the order they are tried */

typedef struct {
    ngx_http_payflow_provider_t  *providers[NGX_HTTP_PAYFLOW_MAX_ROUTE];
    ngx_uint_t                    n;
    ngx_uint_t                    next;        /* the next to try */
    const char                   *strategy;
    ngx_str_t                     reason;      /* of the last choice */
    ngx_msec_t                    deadline;    /* ngx_current_msec */
} ngx_http_payflow_plan_t;


typedef enum {
    NGX_HTTP_PAYFLOW_CALL_OK = 0,        /* answered, decided */
    NGX_HTTP_PAYFLOW_CALL_DECLINED,      /* the payer's bank said no */
    NGX_HTTP_PAYFLOW_CALL_ERROR,         /* refused, nothing moved */
    NGX_HTTP_PAYFLOW_CALL_UNKNOWN,       /* no telling what happened */
    NGX_HTTP_PAYFLOW_CALL_NOUTCOMES
} ngx_http_payflow_call_outcome_e;


char *ngx_http_payflow_route(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_breaker(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_routing_init_main_conf(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);

ngx_int_t ngx_http_payflow_route_plan(ngx_http_request_t *r,
    ngx_http_payflow_plan_t *plan, const char *currency, int64_t amount);
ngx_http_payflow_provider_t *ngx_http_payflow_request_provider(
    ngx_http_request_t *r, ngx_str_t *name, ngx_uint_t enabled);
ngx_http_payflow_provider_t *ngx_http_payflow_route_next(
    ngx_http_request_t *r, ngx_http_payflow_plan_t *plan,
    const char *why);

ngx_uint_t ngx_http_payflow_breaker_allow(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p);
void ngx_http_payflow_provider_record(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p, ngx_http_payflow_op_e op,
    ngx_http_payflow_provider_result_t *res, ngx_msec_t elapsed);
void ngx_http_payflow_webhook_count(ngx_http_payflow_main_conf_t *pmcf,
    ngx_http_payflow_provider_t *p, ngx_uint_t verify, ngx_int_t result);
void ngx_http_payflow_providers_metrics(ngx_http_payflow_main_conf_t *pmcf,
    pf_prom_t *out);


#endif /* _NGX_HTTP_PAYFLOW_ROUTING_H_INCLUDED_ */
