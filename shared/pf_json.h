
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_JSON_H_INCLUDED_
#define _PF_JSON_H_INCLUDED_


#include "pf_common.h"
#include "pf_response.h"

#include <jansson.h>


#define PF_JSON_MAX_DEPTH  8


ngx_int_t pf_json_parse_body(ngx_http_request_t *r, json_t **obj,
    pf_error_t *err);
ngx_int_t pf_json_check_fields(ngx_pool_t *pool, json_t *obj,
    const char **allowed, pf_error_t *err);
void pf_json_param_error(pf_error_t *err, const char *param,
    const char *code, const char *message);


#endif /* _PF_JSON_H_INCLUDED_ */
