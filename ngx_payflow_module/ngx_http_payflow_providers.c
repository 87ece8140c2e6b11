
/*
 * Copyright (C) PayFlow
 *
 * Payment providers: the "payflow_provider" directive, finding a payment's
 * provider, and calls to providers from a request.
 *
 * A provider call suspends the request as a database query does and
 * resumes it from curl's completion.  A client that disconnects meanwhile
 * does not cancel the call: the request lives on until the provider's
 * answer is in the database, since that answer may be money moved.
 */


#include "ngx_http_payflow_providers.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>


static void ngx_http_payflow_provider_done(pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_hex(u_char c);


static const ngx_http_payflow_adapter_t  *ngx_http_payflow_adapters[] = {
    &ngx_http_payflow_stripe_adapter,
    &ngx_http_payflow_paystack_adapter,
    &ngx_http_payflow_flutterwave_adapter,
    NULL
};


/*
 * payflow_provider <name> type=<stripe|paystack|flutterwave>
 *     [mode=test|live] [base_url=<url>]
 *     [secret_file=<path> | secret_env=<NAME>] [connect_timeout=<time>]
 *     [timeout=<time>] [retries=<n>] [ca_file=<path>];
 */

char *
ngx_http_payflow_provider(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    u_char                               *p;
    ngx_str_t                            *value, spec, s;
    ngx_int_t                             ms;
    ngx_uint_t                            i;
    ngx_http_payflow_provider_t          *pv, *other;
    const ngx_http_payflow_adapter_t    **a;

    value = cf->args->elts;

    if (pmcf->providers.elts == NULL
        && ngx_array_init(&pmcf->providers, cf->pool, 4,
                          sizeof(ngx_http_payflow_provider_t))
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    pv = ngx_array_push(&pmcf->providers);
    if (pv == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(pv, sizeof(ngx_http_payflow_provider_t));

    pv->name = value[1];
    pv->connect_timeout = 2000;
    pv->timeout = 10000;
    pv->retries = 2;

    if (pv->name.len == 0 || pv->name.len > 32
        || ngx_strcmp(pv->name.data, "sandbox") == 0)
    {
        goto invalid_name;
    }

    for (p = pv->name.data; p < pv->name.data + pv->name.len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')
              || *p == '_'))
        {
            goto invalid_name;
        }
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "type=", 5) == 0) {
            for (a = ngx_http_payflow_adapters; *a; a++) {
                if (ngx_strcmp(value[i].data + 5, (*a)->type) == 0) {
                    pv->adapter = *a;
                    break;
                }
            }

            if (pv->adapter == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_provider: unknown type \"%s\", "
                                   "expected \"stripe\", \"paystack\" or "
                                   "\"flutterwave\"", value[i].data + 5);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "mode=test") == 0) {
            pv->livemode = 0;
            continue;
        }

        if (ngx_strcmp(value[i].data, "mode=live") == 0) {
            pv->livemode = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "base_url=", 9) == 0) {
            s.data = value[i].data + 9;
            s.len = value[i].len - 9;

            while (s.len && s.data[s.len - 1] == '/') {
                s.len--;
            }

            if (ngx_strncmp(s.data, "https://", 8) != 0
                && ngx_strncmp(s.data, "http://", 7) != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_provider: base_url \"%V\" is "
                                   "not an http(s) URL", &s);
                return NGX_CONF_ERROR;
            }

            pv->base_url = s;
            continue;
        }

        if (ngx_strncmp(value[i].data, "secret_file=", 12) == 0
            || ngx_strncmp(value[i].data, "secret_env=", 11) == 0)
        {
            /* pf_conf_secret() reads "file=..." and "env=..." */
            spec.data = value[i].data + sizeof("secret_") - 1;
            spec.len = value[i].len - (sizeof("secret_") - 1);

            if (pf_conf_secret(cf, "payflow_provider", &spec, 1,
                               &pv->secret)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0
            || ngx_strncmp(value[i].data, "timeout=", 8) == 0)
        {
            s.data = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            s.len = value[i].data + value[i].len - s.data;

            ms = ngx_parse_time(&s, 0);
            if (ms == NGX_ERROR || ms == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_provider: invalid \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            if (value[i].data[0] == 'c') {
                pv->connect_timeout = (ngx_msec_t) ms;

            } else {
                pv->timeout = (ngx_msec_t) ms;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "retries=", 8) == 0) {
            ms = ngx_atoi(value[i].data + 8, value[i].len - 8);
            if (ms == NGX_ERROR || ms > 10) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_provider: invalid \"%V\", "
                                   "0 to 10", &value[i]);
                return NGX_CONF_ERROR;
            }

            pv->retries = ms;
            continue;
        }

        if (ngx_strncmp(value[i].data, "ca_file=", 8) == 0) {
            pv->ca_file.data = value[i].data + 8;
            pv->ca_file.len = value[i].len - 8;

            if (ngx_conf_full_name(cf->cycle, &pv->ca_file, 1) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_provider: invalid parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    if (pv->adapter == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_provider \"%V\": \"type=\" is required",
                           &pv->name);
        return NGX_CONF_ERROR;
    }

    if (pv->secret.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_provider \"%V\": \"secret_file=\" or "
                           "\"secret_env=\" is required", &pv->name);
        return NGX_CONF_ERROR;
    }

    if (pv->base_url.len == 0) {
        pv->base_url = pv->adapter->default_url;
    }

    other = pmcf->providers.elts;

    for (i = 0; i + 1 < pmcf->providers.nelts; i++) {
        if (other[i].name.len == pv->name.len
            && ngx_strcmp(other[i].name.data, pv->name.data) == 0
            && other[i].livemode == pv->livemode)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_provider \"%V\" is duplicate for "
                               "%s mode", &pv->name,
                               pv->livemode ? "live" : "test");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;

invalid_name:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_provider: invalid name \"%V\": 1 to 32 of "
                       "a-z, 0-9 and _, and not \"sandbox\"", &value[1]);
    return NGX_CONF_ERROR;
}


ngx_http_payflow_provider_t *
ngx_http_payflow_provider_find(ngx_http_payflow_main_conf_t *pmcf,
    ngx_str_t *name, ngx_uint_t livemode)
{
    ngx_uint_t                    i;
    ngx_http_payflow_provider_t  *pv;

    pv = pmcf->providers.elts;

    for (i = 0; i < pmcf->providers.nelts; i++) {
        if (pv[i].livemode == livemode && pv[i].name.len == name->len
            && ngx_strncmp(pv[i].name.data, name->data, name->len) == 0)
        {
            return &pv[i];
        }
    }

    return NULL;
}


/* the first provider configured for the mode */

ngx_http_payflow_provider_t *
ngx_http_payflow_provider_default(ngx_http_payflow_main_conf_t *pmcf,
    ngx_uint_t livemode)
{
    ngx_uint_t                    i;
    ngx_http_payflow_provider_t  *pv;

    pv = pmcf->providers.elts;

    for (i = 0; i < pmcf->providers.nelts; i++) {
        if (pv[i].livemode == livemode) {
            return &pv[i];
        }
    }

    return NULL;
}


/* the adapter of a type of provider, or NULL */

const ngx_http_payflow_adapter_t *
ngx_http_payflow_adapter(const char *type)
{
    const ngx_http_payflow_adapter_t  **a;

    for (a = ngx_http_payflow_adapters; *a; a++) {
        if (ngx_strcmp((*a)->type, type) == 0) {
            return *a;
        }
    }

    return NULL;
}


pf_curl_call_t *
ngx_http_payflow_provider_call(ngx_http_request_t *r,
    ngx_http_payflow_provider_t *p)
{
    ngx_str_t       *id;
    pf_curl_call_t  *call;

    call = ngx_pcalloc(r->pool, sizeof(pf_curl_call_t));
    if (call == NULL) {
        return NULL;
    }

    call->pool = r->pool;
    call->log = r->connection->log;
    call->connect_timeout = p->connect_timeout;
    call->timeout = p->timeout;
    call->ca_file = p->ca_file;
    call->max_response = 256 * 1024;

    /* the request id travels, so the provider's logs can be matched */

    id = ngx_http_payflow_request_id(r);

    if (id && pf_curl_header(call, "X-Request-Id", id) != NGX_OK) {
        return NULL;
    }

    return call;
}


ngx_int_t
ngx_http_payflow_provider_run(ngx_http_request_t *r, pf_curl_call_t *call,
    ngx_http_payflow_provider_ok_pt ok)
{
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    ctx = ngx_http_payflow_get_ctx(r);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    call->handler = ngx_http_payflow_provider_done;
    call->data = r;

    if (pf_curl_start(pmcf->curl, call) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "payflow provider: could not start a call to %V",
                      &call->url);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->call = call;
    ctx->provider_ok = ok;

    /*
     * Not ngx_http_test_reading: a client that goes away must not end the
     * request (and cancel the call) while money may be moving; its answer
     * still goes into the database, the write to the client just fails.
     */
    r->read_event_handler = ngx_http_block_reading;
    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_payflow_provider_done(pf_curl_call_t *call)
{
    ngx_int_t                rc;
    ngx_http_request_t      *r;
    ngx_http_payflow_ctx_t  *ctx;

    r = call->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ctx->call = NULL;

    if (call->result != PF_CURL_OK) {
        /* the URL holds no secret: credentials travel in headers */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "payflow provider: %s %V failed after %M ms: %s",
                      call->method, &call->url, call->elapsed,
                      call->error ? call->error : "response too large");
    }

    rc = ctx->provider_ok(r, call);

    ngx_http_payflow_finalize(r, rc);
}


/* a call that got no HTTP answer, in PayFlow's terms */

void
ngx_http_payflow_provider_transport(pf_curl_call_t *call,
    ngx_http_payflow_provider_result_t *res)
{
    ngx_memzero(res, sizeof(ngx_http_payflow_provider_result_t));

    res->outage = 1;

    if (call->result == PF_CURL_NOT_SENT) {
        /* nothing reached the provider: no money can have moved */
        res->code = "provider_unavailable";
        res->message = "the provider could not be reached";
        res->not_taken = 1;
        res->retry = 1;
        return;
    }

    /* sent, and then silence: only the provider knows */
    res->code = "provider_timeout";
    res->message = "the provider did not answer in time";
}


/*
 * An HTTP answer that means the same at every provider: 401 and 403 (our
 * credentials), 429, and the rest (5xx: the call may or may not have done
 * its work; the provider's own deduplication makes a retry safe).
 */

void
ngx_http_payflow_provider_refused(ngx_http_payflow_provider_t *p,
    pf_curl_call_t *call, ngx_http_payflow_provider_result_t *res)
{
    switch (call->status) {

    case 401:
    case 403:
        ngx_log_error(NGX_LOG_ERR, call->log, 0,
                      "payflow provider: \"%V\" refused our credentials "
                      "(HTTP %ui): check its secret", &p->name,
                      call->status);
        res->code = "provider_authentication_failed";
        res->message = "the provider refused PayFlow's credentials";
        res->not_taken = 1;
        res->outage = 1;
        return;

    case 429:
        /* rate limited requests are not processed */
        res->code = "provider_rate_limited";
        res->message = "the provider is rate limiting requests";
        res->not_taken = 1;
        res->retry = 1;
        res->outage = 1;
        return;

    default:
        res->code = "provider_error";
        res->message = "the provider failed";
        res->retry = (call->status >= 500 || call->status == 409);
        res->outage = (call->status >= 500);
    }
}


/* a JSON request: its body and headers */

ngx_int_t
ngx_http_payflow_provider_json(pf_curl_call_t *call,
    ngx_http_payflow_provider_t *p, pf_json_out_t *out)
{
    if (ngx_http_payflow_provider_bearer(call, p) != NGX_OK) {
        return NGX_ERROR;
    }

    if (call->method[0] != 'P') {
        return NGX_OK;
    }

    if (pf_json_out_result(out, &call->body) != NGX_OK
        || pf_curl_header(call, "Content-Type", &(ngx_str_t)
                          ngx_string("application/json"))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* fills *kv from C strings; returns the next one */

ngx_keyval_t *
ngx_http_payflow_keyval(ngx_keyval_t *kv, const char *key, const char *value)
{
    kv->key.data = (u_char *) key;
    kv->key.len = ngx_strlen(key);
    kv->value.data = (u_char *) value;
    kv->value.len = ngx_strlen(value);

    return kv + 1;
}


/* application/x-www-form-urlencoded, written once at its exact size */

ngx_int_t
ngx_http_payflow_form(ngx_pool_t *pool, ngx_keyval_t *fields, ngx_uint_t n,
    ngx_str_t *form)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   i;

    len = 0;

    for (i = 0; i < n; i++) {
        len += sizeof("&=") - 1 + fields[i].key.len + fields[i].value.len
               + 2 * ngx_escape_uri(NULL, fields[i].key.data,
                                    fields[i].key.len,
                                    NGX_ESCAPE_URI_COMPONENT)
               + 2 * ngx_escape_uri(NULL, fields[i].value.data,
                                    fields[i].value.len,
                                    NGX_ESCAPE_URI_COMPONENT);
    }

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    form->data = p;

    for (i = 0; i < n; i++) {
        if (i) {
            *p++ = '&';
        }

        p = (u_char *) ngx_escape_uri(p, fields[i].key.data,
                                      fields[i].key.len,
                                      NGX_ESCAPE_URI_COMPONENT);
        *p++ = '=';
        p = (u_char *) ngx_escape_uri(p, fields[i].value.data,
                                      fields[i].value.len,
                                      NGX_ESCAPE_URI_COMPONENT);
    }

    form->len = p - form->data;

    return NGX_OK;
}


/* base_url, path, the URI-escaped arg (if any) and tail */

ngx_int_t
ngx_http_payflow_provider_url(pf_curl_call_t *call,
    ngx_http_payflow_provider_t *p, const char *path, ngx_str_t *arg,
    const char *tail)
{
    u_char  *s;
    size_t   len;

    len = p->base_url.len + ngx_strlen(path) + ngx_strlen(tail);

    if (arg) {
        len += arg->len + 2 * ngx_escape_uri(NULL, arg->data, arg->len,
                                             NGX_ESCAPE_URI_COMPONENT);
    }

    s = ngx_pnalloc(call->pool, len);
    if (s == NULL) {
        return NGX_ERROR;
    }

    call->url.data = s;

    s = ngx_sprintf(s, "%V%s", &p->base_url, path);

    if (arg) {
        s = (u_char *) ngx_escape_uri(s, arg->data, arg->len,
                                      NGX_ESCAPE_URI_COMPONENT);
    }

    s = ngx_cpymem(s, tail, ngx_strlen(tail));

    call->url.len = s - call->url.data;

    return NGX_OK;
}


ngx_int_t
ngx_http_payflow_provider_bearer(pf_curl_call_t *call,
    ngx_http_payflow_provider_t *p)
{
    ngx_str_t  v;

    v.len = sizeof("Bearer ") - 1 + p->secret.len;
    v.data = ngx_pnalloc(call->pool, v.len);
    if (v.data == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_sprintf(v.data, "Bearer %V", &p->secret);

    return pf_curl_header(call, "Authorization", &v);
}


/* a string (or integer) member of an object, copied into pool, or NULL */

const char *
ngx_http_payflow_json_string(ngx_pool_t *pool, json_t *o, const char *name)
{
    u_char  *p;
    json_t  *v;
    size_t   len;

    v = json_is_object(o) ? json_object_get(o, name) : NULL;

    if (json_is_integer(v)) {
        /* numeric ids, as Paystack's and Flutterwave's */
        p = ngx_pnalloc(pool, NGX_INT64_LEN + 1);
        if (p == NULL) {
            return NULL;
        }

        *ngx_sprintf(p, "%L", (int64_t) json_integer_value(v)) = '\0';
        return (const char *) p;
    }

    if (!json_is_string(v)) {
        return NULL;
    }

    len = json_string_length(v);

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, json_string_value(v), len);
    p[len] = '\0';

    return (const char *) p;
}


/* 12345 with exponent 2 is "123.45", NUL-terminated; buf: 32 bytes */

u_char *
ngx_http_payflow_major_units(u_char *buf, int64_t amount,
    ngx_uint_t exponent)
{
    switch (exponent) {

    case 0:
        *ngx_sprintf(buf, "%L", amount) = '\0';
        break;

    case 3:
        *ngx_sprintf(buf, "%L.%03L", amount / 1000, amount % 1000) = '\0';
        break;

    default:
        *ngx_sprintf(buf, "%L.%02L", amount / 100, amount % 100) = '\0';
    }

    return buf;
}


static ngx_int_t
ngx_http_payflow_hex(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}


/*
 * A webhook signature (hex) against the HMAC of data under each secret of
 * the location: NGX_OK if one matches, NGX_DECLINED if none does.  The
 * comparison takes the same time wherever the bytes differ.
 */

ngx_int_t
ngx_http_payflow_webhook_hmac(ngx_http_payflow_webhook_conf_t *wcf,
    const EVP_MD *md, u_char *data, size_t len, u_char *sig, size_t siglen)
{
    u_char        got[EVP_MAX_MD_SIZE], want[EVP_MAX_MD_SIZE];
    ngx_int_t     h, l;
    ngx_str_t    *secret;
    ngx_uint_t    i, n;
    unsigned int  wlen;

    n = EVP_MD_get_size(md);

    if (siglen != 2 * n) {
        return NGX_DECLINED;
    }

    for (i = 0; i < n; i++) {
        h = ngx_http_payflow_hex(sig[2 * i]);
        l = ngx_http_payflow_hex(sig[2 * i + 1]);

        if (h < 0 || l < 0) {
            return NGX_DECLINED;
        }

        got[i] = (u_char) (h << 4 | l);
    }

    secret = wcf->secrets.elts;

    for (i = 0; i < wcf->secrets.nelts; i++) {

        if (HMAC(md, secret[i].data, (int) secret[i].len, data, len, want,
                 &wlen)
            == NULL)
        {
            return NGX_ERROR;
        }

        if (wlen == n && CRYPTO_memcmp(got, want, n) == 0) {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* a string member of a webhook's object, or an empty string */

void
ngx_http_payflow_webhook_str(ngx_pool_t *pool, json_t *o, const char *name,
    ngx_str_t *value)
{
    const char  *s;

    s = ngx_http_payflow_json_string(pool, o, name);

    value->data = (u_char *) s;
    value->len = s ? ngx_strlen(s) : 0;
}


/*
 * An event id for providers whose events have none: "<type>:<object
 * id>[:<tail>]", the same on every delivery of the event.
 */

ngx_int_t
ngx_http_payflow_webhook_id(ngx_pool_t *pool,
    ngx_http_payflow_webhook_event_t *ev, ngx_str_t *oid, const char *tail)
{
    u_char  *p;

    ev->id.data = ngx_pnalloc(pool, ev->type.len + oid->len + 2
                                    + (tail ? ngx_strlen(tail) : 0));
    if (ev->id.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(ev->id.data, "%V:%V", &ev->type, oid);

    if (tail) {
        p = ngx_sprintf(p, ":%s", tail);
    }

    ev->id.len = p - ev->id.data;

    return NGX_OK;
}
