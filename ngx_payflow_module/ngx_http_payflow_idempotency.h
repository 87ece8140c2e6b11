
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_IDEMPOTENCY_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_IDEMPOTENCY_H_INCLUDED_


#include "ngx_http_payflow_module.h"


/*
 * This request's key, inserted ahead of the operation it gates: the
 * operation reads FROM k, so it runs only if the key is new.
 */

#define NGX_HTTP_PAYFLOW_KEY_CTE(t, l, k, f, path, rid, pay, obj)            \
    "WITH k AS (INSERT INTO idempotency_keys (tenant_id, livemode, key, "    \
    "fingerprint, method, path, phase, locked_until, payment_id, "          \
    "request_id, object_id) VALUES (" t ", " l "::boolean, " k ", "         \
    "decode(" f ", 'hex'), 'POST', " path ", 'provider_called', "           \
    "now() + interval '30 seconds', " pay ", " rid ", " obj ") "             \
    "ON CONFLICT DO NOTHING RETURNING 1) "


ngx_int_t ngx_http_payflow_idempotency_init(
    ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_fingerprint(ngx_http_request_t *r, u_char *hex);
const char **ngx_http_payflow_idem_values(ngx_http_request_t *r,
    ngx_uint_t n);
ngx_int_t ngx_http_payflow_envelope(ngx_http_request_t *r,
    const char **head, const char **tail);
ngx_int_t ngx_http_payflow_idem_store(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_idem_other(ngx_http_request_t *r,
    PGresult *key);
ngx_int_t ngx_http_payflow_idem_header(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
ngx_int_t ngx_http_payflow_idem_invalid(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_idem_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);


extern const char  *ngx_http_payflow_idem_names[];


#endif /* _NGX_HTTP_PAYFLOW_IDEMPOTENCY_H_INCLUDED_ */
