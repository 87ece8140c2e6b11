
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
    ngx_uint_t                          retries;
    ngx_uint_t                          index;      /* its shm slot */
    unsigned                            livemode:1;
} ngx_http_payflow_provider_t;


/* what PayFlow asks of a provider */

typedef enum {
    NGX_HTTP_PAYFLOW_OP_CHARGE = 0,
    NGX_HTTP_PAYFLOW_OP_CAPTURE,
    NGX_HTTP_PAYFLOW_OP_CANCEL,
    NGX_HTTP_PAYFLOW_OP_REFUND,
    NGX_HTTP_PAYFLOW_OP_VERIFY,        /* a payment's state, by reference */
    NGX_HTTP_PAYFLOW_OP_REFUND_STATUS  /* a refund's state */
} ngx_http_payflow_op_e;


typedef struct {
    ngx_http_payflow_op_e       op;
    ngx_str_t                   payment_id;     /* our reference */
    ngx_str_t                   reference;      /* the provider's, or empty */
    ngx_str_t                   refund_id;      /* OP_REFUND... */
    ngx_str_t                   refund_reference;   /* the provider's */
    int64_t                     amount;         /* minor units; 0: all */
    const char                 *currency;       /* upper case */
    ngx_uint_t                  exponent;       /* of the minor unit */
    const char                 *payment_method; /* or NULL */
    const char                 *description;    /* or NULL */
    const char                 *return_url;     /* or NULL */
    const char                 *email;          /* or NULL */
    const char                 *reason;         /* refund reason, or NULL */
    int64_t                     age;            /* OP_VERIFY: seconds */
    unsigned                    manual:1;
} ngx_http_payflow_operation_t;


/*
 * What the provider answered, in PayFlow's terms.  status is the payment's
 * new status (for a refund, the refund's), NULL when the answer does not
 * tell: then nothing moves until the provider is asked again.
 */

typedef struct {
    const char                 *status;
    ngx_str_t                   reference;  /* the provider's own id */
    ngx_str_t                   redirect_url;
    const char                 *code;       /* failure or decline code */
    const char                 *message;
    unsigned                    not_taken:1;  /* provably no money moved */
    unsigned                    declined:1;   /* by the payer's bank */
    unsigned                    retry:1;      /* worth another attempt */
    unsigned                    outage:1;     /* counts against a breaker */
} ngx_http_payflow_provider_result_t;


/* how a webhook's signature was judged (a metric label each) */

typedef enum {
    NGX_HTTP_PAYFLOW_WEBHOOK_VALID = 0,
    NGX_HTTP_PAYFLOW_WEBHOOK_MISSING,     /* no signature header */
    NGX_HTTP_PAYFLOW_WEBHOOK_INVALID,     /* no signature matches */
    NGX_HTTP_PAYFLOW_WEBHOOK_STALE,       /* signed too long ago */
    NGX_HTTP_PAYFLOW_WEBHOOK_REFUSED,     /* from an address not allowed */
    NGX_HTTP_PAYFLOW_WEBHOOK_NVERIFY
} ngx_http_payflow_webhook_verify_e;


/* what became of a verified webhook (a metric label each) */

typedef enum {
    NGX_HTTP_PAYFLOW_WEBHOOK_APPLIED = 0, /* moved a payment or refund */
    NGX_HTTP_PAYFLOW_WEBHOOK_UNCHANGED,   /* matched, nothing to move */
    NGX_HTTP_PAYFLOW_WEBHOOK_UNMATCHED,   /* no such object (yet) */
    NGX_HTTP_PAYFLOW_WEBHOOK_IGNORED,     /* an event type not acted on */
    NGX_HTTP_PAYFLOW_WEBHOOK_MISMATCH,    /* another amount or currency */
    NGX_HTTP_PAYFLOW_WEBHOOK_VERIFYING,   /* the reconciler asks first */
    NGX_HTTP_PAYFLOW_WEBHOOK_DUPLICATE,   /* delivered before */
    NGX_HTTP_PAYFLOW_WEBHOOK_MALFORMED,   /* signed, but not an event */
    NGX_HTTP_PAYFLOW_WEBHOOK_FAILED,      /* not stored: retried by them */
    NGX_HTTP_PAYFLOW_WEBHOOK_NRESULTS
} ngx_http_payflow_webhook_result_e;


/* what a verified webhook tells, in PayFlow's terms */

typedef struct {
    ngx_str_t                   id;         /* the provider's event id */
    ngx_str_t                   type;
    const char                 *object;     /* "payment", "refund", NULL */
    ngx_str_t                   payment_id; /* ours, as the event has it */
    ngx_str_t                   refund_id;  /* ours, or empty */
    int64_t                     amount;     /* minor units; -1: not told */
    const char                 *currency;   /* upper case, or NULL */
    ngx_int_t                   livemode;   /* as the event says; -1 */
    ngx_http_payflow_provider_result_t  res;    /* status, reference... */
} ngx_http_payflow_webhook_event_t;


/* a webhook location's provider, secrets and tolerance */

typedef struct {
    ngx_http_payflow_provider_t  *provider;
    ngx_array_t                   secrets;      /* ngx_str_t */
    time_t                        tolerance;
    ngx_array_t                  *allow;        /* ngx_cidr_t, or NULL */
} ngx_http_payflow_webhook_conf_t;


struct ngx_http_payflow_adapter_s {
    const char                 *type;
    ngx_str_t                   default_url;
    ngx_uint_t                  needs_payment_method;
    ngx_uint_t                  needs_email;
    ngx_uint_t                  manual_capture;

    /* fills call (method, url, headers, body) for an operation */
    ngx_int_t                 (*request)(ngx_http_payflow_provider_t *p,
                                         ngx_http_payflow_operation_t *op,
                                         pf_curl_call_t *call);

    /* reads the completed HTTP exchange of an operation */
    void                      (*response)(ngx_http_payflow_provider_t *p,
                                          ngx_http_payflow_operation_t *op,
                                          pf_curl_call_t *call,
                                          ngx_http_payflow_provider_result_t
                                              *res);

    /*
     * webhooks: the signature's header (checked before the body is read);
     * verify_by_api: the signature covers no body, so a webhook only makes
     * the object's verification at the provider due
     */
    const char                 *webhook_header;
    ngx_uint_t                  verify_by_api;

    /* judges a webhook's signature over its raw body, or NGX_ERROR */
    ngx_int_t                 (*webhook_verify)(ngx_http_request_t *r,
                                  ngx_http_payflow_webhook_conf_t *wcf,
                                  ngx_str_t *body);

    /* reads a verified webhook: NGX_OK, NGX_DECLINED (malformed) */
    ngx_int_t                 (*webhook_parse)(ngx_pool_t *pool,
                                  json_t *doc,
                                  ngx_http_payflow_webhook_event_t *ev);
};


char *ngx_http_payflow_provider(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_payflow_provider_t *ngx_http_payflow_provider_find(
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *name,
    ngx_uint_t livemode);
ngx_http_payflow_provider_t *ngx_http_payflow_provider_default(
    ngx_http_payflow_main_conf_t *pmcf, ngx_uint_t livemode);
const ngx_http_payflow_adapter_t *ngx_http_payflow_adapter(
    const char *type);
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
ngx_int_t ngx_http_payflow_provider_url(pf_curl_call_t *call,
    ngx_http_payflow_provider_t *p, const char *path, ngx_str_t *arg,
    const char *tail);
ngx_int_t ngx_http_payflow_provider_bearer(pf_curl_call_t *call,
    ngx_http_payflow_provider_t *p);
ngx_int_t ngx_http_payflow_provider_json(pf_curl_call_t *call,
    ngx_http_payflow_provider_t *p, pf_json_out_t *out);
void ngx_http_payflow_provider_refused(ngx_http_payflow_provider_t *p,
    pf_curl_call_t *call, ngx_http_payflow_provider_result_t *res);
const char *ngx_http_payflow_json_string(ngx_pool_t *pool, json_t *o,
    const char *name);
u_char *ngx_http_payflow_major_units(u_char *buf, int64_t amount,
    ngx_uint_t exponent);
ngx_int_t ngx_http_payflow_webhook_hmac(ngx_http_payflow_webhook_conf_t *wcf,
    const EVP_MD *md, u_char *data, size_t len, u_char *sig, size_t siglen);
void ngx_http_payflow_webhook_str(ngx_pool_t *pool, json_t *o,
    const char *name, ngx_str_t *value);
ngx_int_t ngx_http_payflow_webhook_id(ngx_pool_t *pool,
    ngx_http_payflow_webhook_event_t *ev, ngx_str_t *oid, const char *tail);


extern const ngx_http_payflow_adapter_t  ngx_http_payflow_stripe_adapter;
extern const ngx_http_payflow_adapter_t  ngx_http_payflow_paystack_adapter;
extern const ngx_http_payflow_adapter_t  ngx_http_payflow_flutterwave_adapter;


#endif /* _NGX_HTTP_PAYFLOW_PROVIDERS_H_INCLUDED_ */
