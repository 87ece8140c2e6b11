
/*
 * Copyright (C) PayFlow
 *
 * The /v1 API entry point.  Resources register here as they are built;
 * anything else under /v1 is answered with a 404 in the envelope.
 */


#include "ngx_http_payflow_api.h"


#define NGX_HTTP_PAYFLOW_ECHO_MAX  128


static ngx_int_t ngx_http_payflow_api_not_found(ngx_http_request_t *r);


ngx_int_t
ngx_http_payflow_api_handler(ngx_http_request_t *r)
{
    return ngx_http_payflow_api_not_found(r);
}


static ngx_int_t
ngx_http_payflow_api_not_found(ngx_http_request_t *r)
{
    u_char      *p, *last, ch;
    size_t       len;
    ngx_int_t    rc;
    ngx_uint_t   i;
    pf_error_t   err;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    /*
     * The message echoes the method and path, printable ASCII only and
     * bounded, so that it is always valid JSON and safe to show.
     */

    len = ngx_min(r->uri.len, NGX_HTTP_PAYFLOW_ECHO_MAX);

    p = ngx_pnalloc(r->pool, sizeof("unrecognized request URL: ") - 1
                             + r->method_name.len + 1 + len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_sprintf(p, "unrecognized request URL: %V ", &r->method_name);

    for (i = 0; i < len; i++) {
        ch = r->uri.data[i];
        *last++ = (ch >= 0x20 && ch < 0x7f && ch != '\\') ? ch : '?';
    }

    *last = '\0';

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_NOT_FOUND;
    err.type = PF_ERROR_INVALID_REQUEST;
    err.code = "resource_not_found";
    err.message = (char *) p;

    return ngx_http_payflow_send_error(r, &err);
}
