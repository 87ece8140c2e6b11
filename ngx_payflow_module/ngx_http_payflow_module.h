
/*
 * Copyright (C) PayFlow
 *
 * Types shared by the files of ngx_http_payflow_module.
 */


#ifndef _NGX_HTTP_PAYFLOW_MODULE_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_MODULE_H_INCLUDED_


#include "pf_common.h"
#include "pf_id.h"
#include "pf_pg.h"
#include "pf_response.h"


typedef enum {
    NGX_HTTP_PAYFLOW_NONE = 0,
    NGX_HTTP_PAYFLOW_HEALTH,
    NGX_HTTP_PAYFLOW_READY,
    NGX_HTTP_PAYFLOW_API
} ngx_http_payflow_kind_e;


typedef struct {
    pf_pg_conf_t               *db;
    pf_pg_pool_t               *pool;      /* this worker's */
    ngx_int_t                   request_id_index;
    const pf_pg_statement_t    *schema_version;
} ngx_http_payflow_main_conf_t;


typedef struct {
    ngx_http_payflow_kind_e     kind;
} ngx_http_payflow_loc_conf_t;


typedef struct {
    ngx_str_t                   error_body;   /* replaces nginx's page */
    pf_pg_query_t              *query;

    unsigned                    envelope:1;   /* body is ours already */
    unsigned                    replace:1;
} ngx_http_payflow_ctx_t;


ngx_http_payflow_ctx_t *ngx_http_payflow_get_ctx(ngx_http_request_t *r);
ngx_str_t *ngx_http_payflow_request_id(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_send_data(ngx_http_request_t *r,
    ngx_uint_t status, json_t *data);
ngx_int_t ngx_http_payflow_send_error(ngx_http_request_t *r,
    pf_error_t *err);
ngx_int_t ngx_http_payflow_send_db_error(ngx_http_request_t *r,
    pf_pg_query_t *q);
void ngx_http_payflow_finalize(ngx_http_request_t *r, ngx_int_t rc);


extern ngx_module_t  ngx_http_payflow_module;


#endif /* _NGX_HTTP_PAYFLOW_MODULE_H_INCLUDED_ */
