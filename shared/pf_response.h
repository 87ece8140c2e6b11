
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_RESPONSE_H_INCLUDED_
#define _PF_RESPONSE_H_INCLUDED_


#include "pf_common.h"

#include <jansson.h>


typedef enum {
    PF_ERROR_INVALID_REQUEST = 0,
    PF_ERROR_AUTHENTICATION,
    PF_ERROR_PERMISSION,
    PF_ERROR_IDEMPOTENCY,
    PF_ERROR_RATE_LIMIT,
    PF_ERROR_PROVIDER,
    PF_ERROR_API
} pf_error_type_e;


typedef struct {
    ngx_uint_t        status;
    pf_error_type_e   type;
    const char       *code;
    const char       *message;
    const char       *param;         /* offending parameter, or NULL */
    time_t            retry_after;   /* seconds, 0: no Retry-After */
    const char       *object_name;   /* an object the error is about, */
    ngx_str_t        *object;        /* as JSON text, or NULL */
} pf_error_t;


ngx_int_t pf_response_data_body(ngx_pool_t *pool, ngx_str_t *data,
    ngx_str_t *request_id, ngx_str_t *body);
ngx_int_t pf_response_dump(ngx_pool_t *pool, json_t *json, ngx_str_t *text);
ngx_int_t pf_response_error_body(ngx_pool_t *pool, pf_error_t *err,
    ngx_str_t *request_id, ngx_str_t *body);
void pf_response_status_error(ngx_uint_t status, pf_error_t *err);
ngx_int_t pf_response_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body);
ngx_int_t pf_response_set_json_headers(ngx_http_request_t *r, size_t len);
ngx_int_t pf_response_add_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value);
ngx_int_t pf_response_retry_after(ngx_http_request_t *r, time_t seconds);


#endif /* _PF_RESPONSE_H_INCLUDED_ */
