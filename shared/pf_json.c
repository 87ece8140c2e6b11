
/*
 * Copyright (C) PayFlow
 *
 * Request bodies: one JSON object, no duplicate keys, bounded nesting,
 * only known fields.  Every refusal is a 400 that names the problem and,
 * where there is one, the parameter.
 */


#include "pf_json.h"


static ngx_uint_t pf_json_depth_ok(json_t *json, ngx_uint_t depth);
static void pf_json_cleanup(void *data);
static u_char *pf_json_out_reserve(pf_json_out_t *out, size_t n);
static void pf_json_out_value(pf_json_out_t *out);


ngx_int_t
pf_json_parse_body(ngx_http_request_t *r, json_t **obj, pf_error_t *err)
{
    u_char              *p, *data;
    size_t               len;
    json_t              *json;
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    json_error_t         jerr;
    ngx_pool_cleanup_t  *cln;

    ngx_memzero(err, sizeof(pf_error_t));
    err->status = NGX_HTTP_BAD_REQUEST;
    err->type = PF_ERROR_INVALID_REQUEST;

    len = 0;

    if (r->request_body && r->request_body->bufs) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;

            if (b->in_file && !ngx_buf_in_memory(b)) {
                /* bodies are read into memory, never from temp files */
                err->status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
                err->code = "request_too_large";
                err->message = "the request body is larger than "
                               "client_body_buffer_size";
                return NGX_DECLINED;
            }

            len += b->last - b->pos;
        }
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    if (len == 0) {
        json = json_object();
        if (json == NULL) {
            return NGX_ERROR;
        }

        cln->handler = pf_json_cleanup;
        cln->data = json;
        *obj = json;

        return NGX_OK;
    }

    data = ngx_pnalloc(r->pool, len);
    if (data == NULL) {
        return NGX_ERROR;
    }

    p = data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    json = json_loadb((char *) data, len, JSON_REJECT_DUPLICATES, &jerr);

    if (json == NULL) {
        err->code = "invalid_json";
        err->message = (char *) ngx_pnalloc(r->pool, 96);
        if (err->message == NULL) {
            return NGX_ERROR;
        }

        /* jansson's own text may quote the input: only positions here */
        (void) ngx_sprintf((u_char *) err->message,
                           "the request body is not valid JSON or repeats "
                           "a key (line %d, column %d)%Z",
                           jerr.line, jerr.column);
        return NGX_DECLINED;
    }

    cln->handler = pf_json_cleanup;
    cln->data = json;

    if (!json_is_object(json)) {
        err->code = "invalid_json";
        err->message = "the request body must be a JSON object";
        return NGX_DECLINED;
    }

    if (!pf_json_depth_ok(json, 0)) {
        err->code = "invalid_json";
        err->message = "the request body is nested too deeply";
        return NGX_DECLINED;
    }

    *obj = json;

    return NGX_OK;
}


ngx_int_t
pf_json_check_fields(ngx_pool_t *pool, json_t *obj, const char **allowed,
    pf_error_t *err)
{
    u_char      *p;
    size_t       len;
    json_t      *value;
    const char  *key, **name;

    json_object_foreach(obj, key, value) {

        for (name = allowed; *name; name++) {
            if (ngx_strcmp(key, *name) == 0) {
                break;
            }
        }

        if (*name) {
            continue;
        }

        len = ngx_min(ngx_strlen(key), 64);

        p = ngx_pnalloc(pool, len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, key, len);
        p[len] = '\0';

        pf_json_param_error(err, (char *) p, "parameter_unknown",
                            "received unknown parameter");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * Text from a header or a query string that is to reach the database:
 * well-formed UTF-8 as PostgreSQL reads it (RFC 3629: no overlong form,
 * no surrogate, nothing above U+10FFFF, every continuation byte 10xxxxxx)
 * and no control characters.  ngx_utf8_decode() is not strict enough: it
 * takes any byte from 0x80 up as a continuation byte.
 */

ngx_uint_t
pf_text_valid(u_char *p, size_t len)
{
    u_char    *last;
    size_t     need, i;
    uint32_t   ch, min;

    last = p + len;

    while (p < last) {

        ch = *p;

        if (ch < 0x80) {
            if (ch < 0x20 || ch == 0x7f) {
                return 0;
            }

            p++;
            continue;
        }

        if (ch >= 0xc2 && ch <= 0xdf) {
            need = 1;
            ch &= 0x1f;
            min = 0x80;

        } else if (ch >= 0xe0 && ch <= 0xef) {
            need = 2;
            ch &= 0x0f;
            min = 0x800;

        } else if (ch >= 0xf0 && ch <= 0xf4) {
            need = 3;
            ch &= 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if ((size_t) (last - p) <= need) {
            return 0;
        }

        for (i = 1; i <= need; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }

            ch = (ch << 6) | (p[i] & 0x3f);
        }

        if (ch < min || ch > 0x10ffff || (ch >= 0xd800 && ch <= 0xdfff)) {
            return 0;
        }

        p += need + 1;
    }

    return 1;
}


void
pf_json_param_error(pf_error_t *err, const char *param, const char *code,
    const char *message)
{
    ngx_memzero(err, sizeof(pf_error_t));

    err->status = NGX_HTTP_BAD_REQUEST;
    err->type = PF_ERROR_INVALID_REQUEST;
    err->code = code;
    err->message = message;
    err->param = param;
}


static ngx_uint_t
pf_json_depth_ok(json_t *json, ngx_uint_t depth)
{
    size_t       i;
    json_t      *value;
    const char  *key;

    if (depth > PF_JSON_MAX_DEPTH) {
        return 0;
    }

    if (json_is_object(json)) {
        json_object_foreach(json, key, value) {
            if (!pf_json_depth_ok(value, depth + 1)) {
                return 0;
            }
        }

    } else if (json_is_array(json)) {
        json_array_foreach(json, i, value) {
            if (!pf_json_depth_ok(value, depth + 1)) {
                return 0;
            }
        }
    }

    return 1;
}


static void
pf_json_cleanup(void *data)
{
    json_decref(data);
}


ngx_int_t
pf_json_out_init(pf_json_out_t *out, ngx_pool_t *pool, size_t size)
{
    ngx_memzero(out, sizeof(pf_json_out_t));

    out->pool = pool;

    out->start = ngx_pnalloc(pool, size);
    if (out->start == NULL) {
        return NGX_ERROR;
    }

    out->pos = out->start;
    out->end = out->start + size;

    return NGX_OK;
}


static u_char *
pf_json_out_reserve(pf_json_out_t *out, size_t n)
{
    u_char  *p;
    size_t   size, used;

    if ((size_t) (out->end - out->pos) >= n) {
        return out->pos;
    }

    if (out->failed) {
        return NULL;
    }

    used = out->pos - out->start;
    size = ngx_max(2 * (size_t) (out->end - out->start), used + n);

    p = ngx_pnalloc(out->pool, size);
    if (p == NULL) {
        out->failed = 1;
        return NULL;
    }

    ngx_memcpy(p, out->start, used);

    out->start = p;
    out->pos = p + used;
    out->end = p + size;

    return out->pos;
}


/* the comma before a value that is not the first of its container */

static void
pf_json_out_value(pf_json_out_t *out)
{
    u_char  *p;

    if (out->key) {
        out->key = 0;
        return;
    }

    if (out->more & (1u << out->depth)) {
        p = pf_json_out_reserve(out, 1);
        if (p) {
            *out->pos++ = ',';
        }
    }

    out->more |= (1u << out->depth);
}


void
pf_json_out_open(pf_json_out_t *out, u_char bracket)
{
    pf_json_out_value(out);

    if (out->depth + 1 >= PF_JSON_OUT_DEPTH
        || pf_json_out_reserve(out, 1) == NULL)
    {
        out->failed = 1;
        return;
    }

    *out->pos++ = bracket;
    out->depth++;
    out->more &= ~(1u << out->depth);
}


void
pf_json_out_close(pf_json_out_t *out, u_char bracket)
{
    if (out->depth == 0 || pf_json_out_reserve(out, 1) == NULL) {
        out->failed = 1;
        return;
    }

    *out->pos++ = bracket;
    out->depth--;
}


void
pf_json_out_key(pf_json_out_t *out, const char *key)
{
    pf_json_out_cstr(out, key);

    if (pf_json_out_reserve(out, 1) == NULL) {
        return;
    }

    *out->pos++ = ':';
    out->key = 1;
}


void
pf_json_out_str(pf_json_out_t *out, u_char *s, size_t len)
{
    u_char      *p, ch;
    size_t       i, start;
    static u_char  hex[] = "0123456789abcdef";

    pf_json_out_value(out);

    /* the worst case: every byte a \u00XX escape */

    p = pf_json_out_reserve(out, 6 * len + 2);
    if (p == NULL) {
        return;
    }

    *p++ = '"';

    for (i = 0; i < len; i++) {
        ch = s[i];

        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f) {
            /* the common case: a run that needs no escaping */
            start = i;

            while (i + 1 < len && s[i + 1] >= 0x20 && s[i + 1] != '"'
                   && s[i + 1] != '\\' && s[i + 1] != 0x7f)
            {
                i++;
            }

            p = ngx_cpymem(p, s + start, i - start + 1);
            continue;
        }

        if (ch == '"' || ch == '\\') {
            *p++ = '\\';
            *p++ = ch;
            continue;
        }

        /* control characters and DEL */

        *p++ = '\\';
        *p++ = 'u';
        *p++ = '0';
        *p++ = '0';
        *p++ = hex[ch >> 4];
        *p++ = hex[ch & 0xf];
    }

    *p++ = '"';

    out->pos = p;
}


void
pf_json_out_cstr(pf_json_out_t *out, const char *s)
{
    pf_json_out_str(out, (u_char *) s, ngx_strlen(s));
}


void
pf_json_out_int(pf_json_out_t *out, int64_t n)
{
    pf_json_out_value(out);

    if (pf_json_out_reserve(out, NGX_INT64_LEN) == NULL) {
        return;
    }

    out->pos = ngx_sprintf(out->pos, "%L", n);
}


void
pf_json_out_bool(pf_json_out_t *out, ngx_uint_t b)
{
    if (b) {
        pf_json_out_raw(out, (u_char *) "true", 4);

    } else {
        pf_json_out_raw(out, (u_char *) "false", 5);
    }
}


void
pf_json_out_null(pf_json_out_t *out)
{
    pf_json_out_raw(out, (u_char *) "null", 4);
}


/* a value that is already JSON */

void
pf_json_out_raw(pf_json_out_t *out, u_char *json, size_t len)
{
    pf_json_out_value(out);

    if (pf_json_out_reserve(out, len) == NULL) {
        return;
    }

    out->pos = ngx_cpymem(out->pos, json, len);
}


ngx_int_t
pf_json_out_result(pf_json_out_t *out, ngx_str_t *json)
{
    if (out->failed || out->depth != 0) {
        return NGX_ERROR;
    }

    json->data = out->start;
    json->len = out->pos - out->start;

    return NGX_OK;
}
