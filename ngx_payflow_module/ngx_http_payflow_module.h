
/*
 * Copyright (C) PayFlow
 *
 * Types shared by the files of ngx_http_payflow_module.
 */


#ifndef _NGX_HTTP_PAYFLOW_MODULE_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_MODULE_H_INCLUDED_


#include "pf_common.h"
#include "pf_conf.h"
#include "pf_crypto.h"
#include "pf_curl.h"
#include "pf_id.h"
#include "pf_json.h"
#include "pf_jwt.h"
#include "pf_pg.h"
#include "pf_response.h"
#include "pf_seal.h"


#define NGX_HTTP_PAYFLOW_MAX_PARAMS   4

#define NGX_HTTP_PAYFLOW_PERM_READ    0x01
#define NGX_HTTP_PAYFLOW_PERM_WRITE   0x02
#define NGX_HTTP_PAYFLOW_PERM_MANAGE  0x04


typedef enum {
    NGX_HTTP_PAYFLOW_NONE = 0,
    NGX_HTTP_PAYFLOW_HEALTH,
    NGX_HTTP_PAYFLOW_READY,
    NGX_HTTP_PAYFLOW_API,
    NGX_HTTP_PAYFLOW_ADMIN,
    NGX_HTTP_PAYFLOW_METRICS,
    NGX_HTTP_PAYFLOW_WEBHOOK
} ngx_http_payflow_kind_e;


/* in order of power: a key may only mint keys of its own role or below */

typedef enum {
    NGX_HTTP_PAYFLOW_ROLE_OWNER = 0,
    NGX_HTTP_PAYFLOW_ROLE_ADMIN,
    NGX_HTTP_PAYFLOW_ROLE_DEVELOPER,
    NGX_HTTP_PAYFLOW_ROLE_VIEWER,
    NGX_HTTP_PAYFLOW_ROLE_UNKNOWN
} ngx_http_payflow_role_e;


typedef enum {
    NGX_HTTP_PAYFLOW_CRED_NONE = 0,
    NGX_HTTP_PAYFLOW_CRED_API_KEY,
    NGX_HTTP_PAYFLOW_CRED_STATIC_KEY,
    NGX_HTTP_PAYFLOW_CRED_JWT,
    NGX_HTTP_PAYFLOW_CRED_ADMIN
} ngx_http_payflow_cred_e;


/* the cursor parameters of a list */

typedef struct {
    ngx_uint_t                  limit;
    ngx_str_t                   after;
    ngx_str_t                   before;
} ngx_http_payflow_list_t;


/* who is calling, as established by the access phase */

typedef struct {
    ngx_str_t                   tenant_id;
    ngx_str_t                   key_id;
    ngx_str_t                   subject;
    ngx_http_payflow_cred_e     credential;
    ngx_http_payflow_role_e     role;
    ngx_uint_t                  perms;
    time_t                      expires_at;     /* 0: does not expire */
    unsigned                    livemode:1;
    unsigned                    read_only:1;
} ngx_http_payflow_auth_t;


typedef struct {
    u_char                      hash[PF_SHA256_LEN];
    ngx_http_payflow_auth_t     auth;
} ngx_http_payflow_static_key_t;


typedef struct {
    const pf_pg_statement_t    *schema_version;
    const pf_pg_statement_t    *authenticate;
    const pf_pg_statement_t    *tenant_status;
    const pf_pg_statement_t    *scope;
    const pf_pg_statement_t    *tenant_insert;
    const pf_pg_statement_t    *tenant_get;
    const pf_pg_statement_t    *tenant_list;
    const pf_pg_statement_t    *tenant_list_before;
    const pf_pg_statement_t    *key_insert;
    const pf_pg_statement_t    *key_get;
    const pf_pg_statement_t    *key_list;
    const pf_pg_statement_t    *key_list_before;
    const pf_pg_statement_t    *key_revoke;
    const pf_pg_statement_t    *key_roll_insert;
    const pf_pg_statement_t    *key_roll_update;
    const pf_pg_statement_t    *key_state;
    const pf_pg_statement_t    *pay_create;
    const pf_pg_statement_t    *pay_create_many;
    const pf_pg_statement_t    *pay_outcome;
    const pf_pg_statement_t    *pay_finish;
    const pf_pg_statement_t    *pay_reroute;
    const pf_pg_statement_t    *pay_reference;
    const pf_pg_statement_t    *pay_get;
    const pf_pg_statement_t    *idem_get;
    const pf_pg_statement_t    *idem_finish;
    const pf_pg_statement_t    *idem_settle;
    const pf_pg_statement_t    *capture;
    const pf_pg_statement_t    *capture_keyed;
    const pf_pg_statement_t    *cancel;
    const pf_pg_statement_t    *cancel_keyed;
    const pf_pg_statement_t    *refund;
    const pf_pg_statement_t    *refund_keyed;
    const pf_pg_statement_t    *refund_succeed;
    const pf_pg_statement_t    *capture_remote;
    const pf_pg_statement_t    *capture_remote_keyed;
    const pf_pg_statement_t    *cancel_remote;
    const pf_pg_statement_t    *cancel_remote_keyed;
    const pf_pg_statement_t    *refund_remote;
    const pf_pg_statement_t    *refund_remote_keyed;
    const pf_pg_statement_t    *refund_route;
    const pf_pg_statement_t    *refund_settle;
    const pf_pg_statement_t    *pay_route;
    const pf_pg_statement_t    *refund_get;
    const pf_pg_statement_t    *pay_events;
    const pf_pg_statement_t    *jobs;
    const pf_pg_statement_t    *ledger_seal;
    const pf_pg_statement_t    *transitions;
    const pf_pg_statement_t    *reconcile_claim;
    const pf_pg_statement_t    *reconcile_apply;
    const pf_pg_statement_t    *reconcile_refunds;
    const pf_pg_statement_t    *reconcile_refund_apply;
    const pf_pg_statement_t    *pay_list;
    const pf_pg_statement_t    *refund_list;
    const pf_pg_statement_t    *ledger_list;
    const pf_pg_statement_t    *balance;
    const pf_pg_statement_t    *webhook_receive;
    const pf_pg_statement_t    *outbox_claim;
    const pf_pg_statement_t    *outbox_result;
    const pf_pg_statement_t    *outbox_backlog;
    const pf_pg_statement_t    *endpoint_create;
    const pf_pg_statement_t    *endpoint_list;
    const pf_pg_statement_t    *endpoint_get;
    const pf_pg_statement_t    *endpoint_update;
    const pf_pg_statement_t    *endpoint_delete;
    const pf_pg_statement_t    *endpoint_rotate;
    const pf_pg_statement_t    *event_list;
    const pf_pg_statement_t    *event_get;
    const pf_pg_statement_t    *event_deliveries;
    const pf_pg_statement_t    *event_redeliver;
    const pf_pg_statement_t    *risk_list_add;
    const pf_pg_statement_t    *risk_list_page;
    const pf_pg_statement_t    *risk_list_remove;
    const pf_pg_statement_t    *risk_settings;
    const pf_pg_statement_t    *risk_settings_update;
    const pf_pg_statement_t    *risk_settings_reset;
    const pf_pg_statement_t    *review_list;
    const pf_pg_statement_t    *review_decide;
    const pf_pg_statement_t    *review_peek;
    const pf_pg_statement_t    *risk_snapshot;
    const pf_pg_statement_t    *risk_versions;
    const pf_pg_statement_t    *secrets_due;
    const pf_pg_statement_t    *secrets_store;
    const pf_pg_statement_t    *customers_due;
    const pf_pg_statement_t    *customers_store;
    const pf_pg_statement_t    *pii_keys;
    const pf_pg_statement_t    *pii_erase;
    const pf_pg_statement_t    *account_create;
    const pf_pg_statement_t    *account_update;
    const pf_pg_statement_t    *account_delete;
    const pf_pg_statement_t    *account_get;
    const pf_pg_statement_t    *account_list;
    const pf_pg_statement_t    *account_snapshot;
    const pf_pg_statement_t    *account_versions;
} ngx_http_payflow_statements_t;


typedef struct {
    pf_pg_conf_t               *db;
    pf_pg_pool_t               *pool;          /* this worker's */
    ngx_int_t                   request_id_index;
    ngx_http_payflow_statements_t  st;

    ngx_str_t                   pepper;
    pf_hmac_t                   hmac;          /* this worker's */
    pf_keyring_t                keyring;       /* payflow_kek */
    ngx_uint_t                  customer_pii;  /* 1: sealed */
    ngx_flag_t                  account_base_url;
    ngx_flag_t                  reseal;        /* payflow_reseal */
    pf_hmac_t                   pii_hmac;      /* blind index, worker's */

    ngx_shm_zone_t             *keycache;
    time_t                      cache_ttl;
    time_t                      negative_ttl;
    ngx_uint_t                  negative_max;

    ngx_array_t                 static_keys;   /* static_key_t */
    ngx_array_t                 admin_keys;    /* u_char[32] */

    pf_jwt_conf_t               jwt;

    ngx_shm_zone_t             *metrics;

    ngx_msec_t                  jobs_interval;
    ngx_msec_t                  seal_interval;

    ngx_array_t                 providers;     /* provider_t */
    ngx_array_t                 routes;        /* route_t */
    ngx_shm_zone_t             *providers_zone;
    ngx_uint_t                  breaker_failures;
    ngx_msec_t                  breaker_window;
    ngx_msec_t                  breaker_open;
    ngx_uint_t                  breaker_successes;
    ngx_msec_t                  provider_deadline;
    ngx_msec_t                  reconcile_after;
    pf_curl_t                  *curl;          /* this worker's */
    void                       *risk;          /* risk_conf_t */
} ngx_http_payflow_main_conf_t;


#define NGX_HTTP_PAYFLOW_MAX_AMOUNT  99999999999LL


typedef struct {
    ngx_http_payflow_kind_e     kind;
    off_t                       max_amount;
} ngx_http_payflow_loc_conf_t;


/* what an Idempotency-Key did for a request ($payflow_idempotency) */

typedef enum {
    NGX_HTTP_PAYFLOW_IDEM_NONE = 0,
    NGX_HTTP_PAYFLOW_IDEM_NEW,        /* ran, its answer stored */
    NGX_HTTP_PAYFLOW_IDEM_REPLAYED,   /* the stored answer sent */
    NGX_HTTP_PAYFLOW_IDEM_IN_USE,     /* 409: another request holds it */
    NGX_HTTP_PAYFLOW_IDEM_REUSED      /* 422: another request's key */
} ngx_http_payflow_idem_e;


/* what an outbox attempt came to (a metric label each) */

typedef enum {
    NGX_HTTP_PAYFLOW_OUTBOX_SUCCEEDED = 0,
    NGX_HTTP_PAYFLOW_OUTBOX_RETRY,
    NGX_HTTP_PAYFLOW_OUTBOX_FAILED,
    NGX_HTTP_PAYFLOW_OUTBOX_REFUSED,
    NGX_HTTP_PAYFLOW_OUTBOX_STALE,
    NGX_HTTP_PAYFLOW_OUTBOX_NRESULTS
} ngx_http_payflow_outbox_result_e;

extern const char  *ngx_http_payflow_outbox_names[];


typedef ngx_int_t (*ngx_http_payflow_db_ok_pt)(ngx_http_request_t *r,
    pf_pg_query_t *q);
typedef ngx_int_t (*ngx_http_payflow_provider_ok_pt)(ngx_http_request_t *r,
    pf_curl_call_t *call);


typedef struct {
    ngx_str_t                   error_body;    /* replaces nginx's page */
    pf_error_t                 *error;         /* meaning of a bare status */
    pf_pg_query_t              *query;
    ngx_http_payflow_db_ok_pt   db_ok;         /* the query succeeded */
    unsigned                    db_sql_ok:1;   /* db_ok judges SQL errors */
    const char                 *db_what;       /* for the error log */

    ngx_http_payflow_auth_t     auth;
    ngx_int_t                   auth_rc;
    ngx_uint_t                  generation;    /* key cache, at lookup */
    u_char                      hash[PF_SHA256_LEN];

    ngx_str_t                   params[NGX_HTTP_PAYFLOW_MAX_PARAMS];
    ngx_uint_t                  route_index;   /* 1 + the matched route */
    json_t                     *body;
    const void                 *route;
    ngx_str_t                   secret;        /* shown once, at creation */
    ngx_str_t                   secret_live;
    ngx_str_t                   idem_key;      /* Idempotency-Key */
    ngx_str_t                   payment_id;
    ngx_str_t                   response;      /* envelope to store, send */
    ngx_uint_t                  response_status;
    const void                 *money;         /* the operation running */
    ngx_str_t                   object_id;
    const char                 *outcome;       /* a new payment's status */
    const void                 *provider;      /* the payment's provider */
    void                       *plan;          /* routing_plan_t */
    void                       *op;            /* operation_t */
    void                       *result;        /* provider_result_t */
    ngx_event_t                *backoff;       /* before a retry */
    ngx_uint_t                  attempts;      /* at this provider */
    const char                **money_values;  /* of a remote operation */
    ngx_uint_t                  money_n;
    const char                 *money_id;
    pf_curl_call_t             *call;          /* to the provider */
    ngx_http_payflow_provider_ok_pt  provider_ok;
    void                       *risk;          /* risk_req_t, assessed */
    void                       *pii;           /* pii_ctx_t */

    unsigned                    idem:3;        /* ngx_http_payflow_idem_e */
    unsigned                    created:1;     /* made a payment: outcome */
    unsigned                    review:1;      /* decided a review */
    unsigned                    ambiguous:1;   /* the provider may have */
    unsigned                    envelope:1;    /* body is ours already */
    unsigned                    replace:1;
    unsigned                    auth_done:1;
    unsigned                    auth_waiting:1;
} ngx_http_payflow_ctx_t;


ngx_http_payflow_ctx_t *ngx_http_payflow_get_ctx(ngx_http_request_t *r);
ngx_str_t *ngx_http_payflow_request_id(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_header(ngx_http_request_t *r, const char *name,
    ngx_str_t *value);
ngx_int_t ngx_http_payflow_send_data(ngx_http_request_t *r,
    ngx_uint_t status, json_t *data);
ngx_int_t ngx_http_payflow_send_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *data);
ngx_int_t ngx_http_payflow_send_body(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
ngx_int_t ngx_http_payflow_send_envelope(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
ngx_int_t ngx_http_payflow_send_error(ngx_http_request_t *r,
    pf_error_t *err);
ngx_int_t ngx_http_payflow_send_db_error(ngx_http_request_t *r,
    pf_pg_query_t *q);
void ngx_http_payflow_db_error(pf_pg_query_t *q, pf_error_t *err);
void ngx_http_payflow_finalize(ngx_http_request_t *r, ngx_int_t rc);

#define NGX_HTTP_PAYFLOW_DB_READ  2

pf_pg_query_t *ngx_http_payflow_db_query(ngx_http_request_t *r,
    ngx_uint_t n, ngx_uint_t scoped);
char *ngx_http_payflow_db_str(ngx_pool_t *pool, ngx_str_t *s);
char *ngx_http_payflow_nullable(ngx_http_request_t *r, ngx_str_t *s);
char *ngx_http_payflow_int(ngx_http_request_t *r, ngx_int_t n);
ngx_int_t ngx_http_payflow_list_args(ngx_http_request_t *r,
    ngx_http_payflow_list_t *l, pf_error_t *err);
pf_pg_stmt_t *ngx_http_payflow_db_stmt(pf_pg_query_t *q, ngx_uint_t i);
void ngx_http_payflow_db_set(pf_pg_query_t *q, ngx_uint_t i,
    const pf_pg_statement_t *statement, ngx_uint_t nparams,
    const char **values);
PGresult *ngx_http_payflow_db_result(pf_pg_query_t *q, ngx_uint_t i);
ngx_int_t ngx_http_payflow_db_run(ngx_http_request_t *r, pf_pg_query_t *q,
    const char *what, ngx_http_payflow_db_ok_pt ok);

const char *ngx_http_payflow_role_name(ngx_http_payflow_role_e role);
ngx_http_payflow_role_e ngx_http_payflow_role_parse(const char *name,
    size_t len);
ngx_uint_t ngx_http_payflow_role_perms(ngx_http_payflow_role_e role,
    ngx_uint_t read_only);


extern ngx_module_t  ngx_http_payflow_module;


#endif /* _NGX_HTTP_PAYFLOW_MODULE_H_INCLUDED_ */
