
/*
 * Copyright (C) PayFlow
 *
 * The response envelope of DESIGN.md section 3:
 *
 *   {"success": true,  "data": {...},  "meta": {...}}
 *   {"success": false, "error": {...}, "meta": {...}}
 *
 * Bodies are serialised into the request pool; the jansson objects are
 * released before returning, whatever happens.
 */


#include "pf_response.h"
#include "pf_json.h"


static void pf_response_meta(pf_json_out_t *out, ngx_str_t *request_id);


static const char  *pf_error_types[] = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "idempotency_error",
    "rate_limit_error",
    "provider_error",
    "api_error"
};


/* data: the JSON text of the "data" member */

ngx_int_t
pf_response_data_body(ngx_pool_t *pool, ngx_str_t *data,
    ngx_str_t *request_id, ngx_str_t *body)
{
    pf_json_out_t  out;

    if (pf_json_out_init(&out, pool, data->len + 128) != NGX_OK) {
        return NGX_ERROR;
    }

    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "success");
    pf_json_out_bool(&out, 1);
    pf_json_out_key(&out, "data");
    pf_json_out_raw(&out, data->data, data->len);
    pf_response_meta(&out, request_id);
    pf_json_out_close(&out, '}');

    return pf_json_out_result(&out, body);
}


ngx_int_t
pf_response_error_body(ngx_pool_t *pool, pf_error_t *err,
    ngx_str_t *request_id, ngx_str_t *body)
{
    pf_json_out_t  out;

    if (pf_json_out_init(&out, pool,
                         384 + (err->object ? err->object->len : 0))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "success");
    pf_json_out_bool(&out, 0);

    pf_json_out_key(&out, "error");
    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "type");
    pf_json_out_cstr(&out, pf_error_types[err->type]);
    pf_json_out_key(&out, "code");
    pf_json_out_cstr(&out, err->code);
    pf_json_out_key(&out, "message");
    pf_json_out_cstr(&out, err->message);

    if (err->param) {
        pf_json_out_key(&out, "param");
        pf_json_out_cstr(&out, err->param);
    }

    if (err->object) {
        pf_json_out_key(&out, err->object_name);
        pf_json_out_raw(&out, err->object->data, err->object->len);
    }

    pf_json_out_close(&out, '}');

    pf_response_meta(&out, request_id);
    pf_json_out_close(&out, '}');

    return pf_json_out_result(&out, body);
}


/* serialises a jansson value into the pool and releases it */

ngx_int_t
pf_response_dump(ngx_pool_t *pool, json_t *json, ngx_str_t *text)
{
    size_t  len;

    if (json == NULL) {
        return NGX_ERROR;
    }

    len = json_dumpb(json, NULL, 0, JSON_COMPACT);

    text->data = len ? ngx_pnalloc(pool, len) : NULL;

    if (text->data == NULL) {
        json_decref(json);
        return NGX_ERROR;
    }

    text->len = json_dumpb(json, (char *) text->data, len, JSON_COMPACT);

    json_decref(json);

    return (text->len == len) ? NGX_OK : NGX_ERROR;
}


/* the error an API client sees for a bare HTTP status nginx produced */

void
pf_response_status_error(ngx_uint_t status, pf_error_t *err)
{
    ngx_memzero(err, sizeof(pf_error_t));

    err->status = status;
    err->type = PF_ERROR_INVALID_REQUEST;

    switch (status) {

    case NGX_HTTP_BAD_REQUEST:
        err->code = "bad_request";
        err->message = "the request could not be parsed";
        break;

    case NGX_HTTP_UNAUTHORIZED:
        err->type = PF_ERROR_AUTHENTICATION;
        err->code = "authentication_required";
        err->message = "authentication is required";
        break;

    case NGX_HTTP_FORBIDDEN:
        err->type = PF_ERROR_PERMISSION;
        err->code = "forbidden";
        err->message = "access to this resource is forbidden";
        break;

    case NGX_HTTP_NOT_FOUND:
        err->code = "resource_not_found";
        err->message = "the requested resource does not exist";
        break;

    case NGX_HTTP_NOT_ALLOWED:
        err->code = "method_not_allowed";
        err->message = "the method is not allowed for this resource";
        break;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        err->code = "request_too_large";
        err->message = "the request body is larger than allowed";
        break;

    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
        err->code = "uri_too_long";
        err->message = "the request URI is too long";
        break;

    case NGX_HTTP_TOO_MANY_REQUESTS:
        err->type = PF_ERROR_RATE_LIMIT;
        err->code = "rate_limited";
        err->message = "too many requests";
        break;

    case NGX_HTTP_BAD_GATEWAY:
        err->type = PF_ERROR_API;
        err->code = "bad_gateway";
        err->message = "an upstream service failed";
        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        err->type = PF_ERROR_API;
        err->code = "service_unavailable";
        err->message = "the service is temporarily unavailable";
        err->retry_after = 1;
        break;

    case NGX_HTTP_GATEWAY_TIME_OUT:
        err->type = PF_ERROR_API;
        err->code = "gateway_timeout";
        err->message = "an upstream service timed out";
        break;

    default:
        if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
            err->type = PF_ERROR_API;
            err->code = "internal_error";
            err->message = "an internal error occurred";

        } else {
            err->code = "invalid_request";
            err->message = "the request is not valid";
        }
    }
}


ngx_int_t
pf_response_set_json_headers(ngx_http_request_t *r, size_t len)
{
    r->headers_out.content_type_len = sizeof(PF_JSON_CONTENT_TYPE) - 1;
    ngx_str_set(&r->headers_out.content_type, PF_JSON_CONTENT_TYPE);
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    r->headers_out.content_length_n = len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    return NGX_OK;
}


ngx_int_t
pf_response_send(ngx_http_request_t *r, ngx_uint_t status, ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;

    (void) pf_response_set_json_headers(r, body->len);

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
pf_response_add_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


ngx_int_t
pf_response_retry_after(ngx_http_request_t *r, time_t seconds)
{
    ngx_str_t  value;

    value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    value.len = ngx_sprintf(value.data, "%T", seconds) - value.data;

    return pf_response_add_header(r, "Retry-After", &value);
}


/* "meta"; the timestamp text is remade once a second per worker */

static void
pf_response_meta(pf_json_out_t *out, ngx_str_t *request_id)
{
    time_t           now;
    ngx_tm_t         tm;
    static time_t    cached;
    static u_char    ts[sizeof("1970-01-01T00:00:00Z") - 1];

    now = ngx_time();

    if (now != cached) {
        ngx_gmtime(now, &tm);

        (void) ngx_sprintf(ts, "%4d-%02d-%02dT%02d:%02d:%02dZ",
                           tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                           tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);
        cached = now;
    }

    pf_json_out_key(out, "meta");
    pf_json_out_open(out, '{');
    pf_json_out_key(out, "request_id");
    pf_json_out_str(out, request_id->data, request_id->len);
    pf_json_out_key(out, "timestamp");
    pf_json_out_str(out, ts, sizeof(ts));
    pf_json_out_close(out, '}');
}
