
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_JSON_H_INCLUDED_
#define _PF_JSON_H_INCLUDED_


#include "pf_common.h"
#include "pf_response.h"

#include <jansson.h>


#define PF_JSON_MAX_DEPTH  8
#define PF_JSON_OUT_DEPTH  16


/*
 * A JSON writer for responses: appends to one pool buffer that grows as
 * needed, escapes strings, places commas; no per-value allocation.
 */

typedef struct {
    ngx_pool_t     *pool;
    u_char         *start;
    u_char         *pos;
    u_char         *end;
    ngx_uint_t      depth;
    uint32_t        more;       /* bit n: depth n already has a member */
    unsigned        key:1;      /* a key was written, its value is next */
    unsigned        failed:1;
} pf_json_out_t;


ngx_int_t pf_json_parse_body(ngx_http_request_t *r, json_t **obj,
    pf_error_t *err);
ngx_int_t pf_json_check_fields(ngx_pool_t *pool, json_t *obj,
    const char **allowed, pf_error_t *err);
ngx_uint_t pf_text_valid(u_char *p, size_t len);
void pf_json_param_error(pf_error_t *err, const char *param,
    const char *code, const char *message);

ngx_int_t pf_json_out_init(pf_json_out_t *out, ngx_pool_t *pool,
    size_t size);
void pf_json_out_open(pf_json_out_t *out, u_char bracket);
void pf_json_out_close(pf_json_out_t *out, u_char bracket);
void pf_json_out_key(pf_json_out_t *out, const char *key);
void pf_json_out_str(pf_json_out_t *out, u_char *s, size_t len);
void pf_json_out_cstr(pf_json_out_t *out, const char *s);
void pf_json_out_int(pf_json_out_t *out, int64_t n);
void pf_json_out_bool(pf_json_out_t *out, ngx_uint_t b);
void pf_json_out_null(pf_json_out_t *out);
void pf_json_out_raw(pf_json_out_t *out, u_char *json, size_t len);
ngx_int_t pf_json_out_result(pf_json_out_t *out, ngx_str_t *json);


#endif /* _PF_JSON_H_INCLUDED_ */
