
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_PROVIDERS_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_PROVIDERS_H_INCLUDED_


#include "ngx_http_payflow_module.h"
#include "pf_curl.h"


typedef struct ngx_http_payflow_adapter_s   ngx_http_payflow_adapter_t;


/* a payment provider as configured with "payflow_provider" */

typedef struct {
    ngx_str_t                           name;
    const ngx_http_payflow_adapter_t   *adapter;
    ngx_str_t                           base_url;   /* no trailing slash */
    ngx_str_t                           secret;
    ngx_str_t                           ca_file;
    ngx_msec_t                          connect_timeout;
    ngx_msec_t                          timeout;
    unsigned                            livemode:1;
} ngx_http_payflow_provider_t;


/* what a payment asks of its provider */

typedef struct {
    ngx_str_t                   payment_id;     /* the provider reference */
    int64_t                     amount;
    const char                 *currency;       /* upper case */
    const char                 *payment_method; /* or NULL */
    const char                 *description;    /* or NULL */
    const char                 *return_url;     /* or NULL */
    const char                 *email;          /* or NULL */
    ngx_str_t                   request_id;
    unsigned                    manual:1;
} ngx_http_payflow_charge_t;


/* what the provider answered, in PayFlow's terms */

typedef struct {
    const char                 *status;     /* NULL: unknown, processing */
    ngx_str_t                   reference;  /* the provider's own id */
    ngx_str_t                   redirect_url;
    const char                 *code;       /* failure or decline code */
    const char                 *message;
    unsigned                    not_taken:1;  /* provably no money moved */
    unsigned                    retry:1;      /* worth another attempt */
} ngx_http_payflow_provider_result_t;


struct ngx_http_payflow_adapter_s {
    const char                 *type;
    ngx_str_t                   default_url;
    ngx_uint_t                  needs_payment_method;

    /* fills call: method, url, headers, body */
    ngx_int_t                 (*charge)(ngx_http_payflow_provider_t *p,
                                        ngx_http_payflow_charge_t *charge,
                                        pf_curl_call_t *call);

    /* reads a completed HTTP exchange of charge */
    void                      (*charged)(ngx_http_payflow_provider_t *p,
                                         pf_curl_call_t *call,
                                         ngx_http_payflow_provider_result_t
                                             *res);
};


char *ngx_http_payflow_provider(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_payflow_provider_t *ngx_http_payflow_provider_find(
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *name,
    ngx_uint_t livemode);
ngx_http_payflow_provider_t *ngx_http_payflow_provider_default(
    ngx_http_payflow_main_conf_t *pmcf, ngx_uint_t livemode);
pf_curl_call_t *ngx_http_payflow_provider_call(ngx_http_request_t *r,
    ngx_http_payflow_provider_t *p);
ngx_int_t ngx_http_payflow_provider_run(ngx_http_request_t *r,
    pf_curl_call_t *call, ngx_http_payflow_provider_ok_pt ok);
void ngx_http_payflow_provider_transport(pf_curl_call_t *call,
    ngx_http_payflow_provider_result_t *res);

ngx_keyval_t *ngx_http_payflow_keyval(ngx_keyval_t *kv, const char *key,
    const char *value);
ngx_int_t ngx_http_payflow_form(ngx_pool_t *pool, ngx_keyval_t *fields,
    ngx_uint_t n, ngx_str_t *form);


extern const ngx_http_payflow_adapter_t  ngx_http_payflow_stripe_adapter;


#endif /* _NGX_HTTP_PAYFLOW_PROVIDERS_H_INCLUDED_ */
