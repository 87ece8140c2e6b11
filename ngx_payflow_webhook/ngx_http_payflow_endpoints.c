
/*
 * Copyright (C) PayFlow
 *
 * Webhook endpoints and the event log, for tenants:
 *
 *   POST/GET        /v1/webhook_endpoints
 *   GET/PATCH/DELETE /v1/webhook_endpoints/{id}
 *   POST            /v1/webhook_endpoints/{id}/rotate_secret
 *   GET             /v1/events, /v1/events/{id}, /v1/events/{id}/deliveries
 *   POST            /v1/events/{id}/redeliver
 *
 * Each is one statement (sql/0015) in the request's scoped transaction.
 * An endpoint's URL is checked before it is stored: https (http in test
 * mode), no credentials in it, and (unless payflow_outbox_allow_private)
 * a host whose every address is public: resolved by libcurl's resolver
 * off the worker thread, judged and never connected to.
 */


#include "ngx_http_payflow_webhook.h"
#include "ngx_http_payflow_lists.h"


#define NGX_HTTP_PAYFLOW_URL_MAX  2048


static ngx_int_t ngx_http_payflow_endpoint_fields(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const char **v, ngx_uint_t create);
static ngx_int_t ngx_http_payflow_endpoint_url(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, json_t *url, ngx_str_t *host,
    pf_error_t *err);
static ngx_int_t ngx_http_payflow_events_redelivered(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_endpoint_ipv4(ngx_http_request_t *r,
    ngx_str_t *host, struct sockaddr_in *sin);
static ngx_int_t ngx_http_payflow_endpoint_probe(ngx_http_request_t *r,
    ngx_str_t *url, ngx_str_t *host);
static void ngx_http_payflow_endpoint_probed(pf_curl_call_t *call);
static ngx_int_t ngx_http_payflow_endpoint_store(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_endpoint_stored(ngx_http_request_t *r,
    pf_pg_query_t *q);


/* the statement a create or update runs once its URL passed */

typedef struct {
    const pf_pg_statement_t    *statement;
    const char                **values;
    ngx_uint_t                  nvalues;
    ngx_str_t                   shown;         /* the new secret, once */
} ngx_http_payflow_endpoint_op_t;


static ngx_int_t ngx_http_payflow_endpoint_seal(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_str_t *id,
    ngx_http_payflow_endpoint_op_t *op, const char **stored);


static const char  *ngx_http_payflow_event_types[] = {
    "*", "payment.created", "payment.processing", "payment.requires_action",
    "payment.requires_capture", "payment.succeeded", "payment.failed",
    "payment.canceled", "payment.captured", "payment.partially_refunded",
    "payment.refunded", "payment.rerouted", "payment.review_required",
    "payment.review_approved", "payment.review_rejected", "refund.created",
    "refund.succeeded", "refund.failed", NULL
};


ngx_int_t
ngx_http_payflow_endpoints_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->endpoint_create = pf_pg_statement_add(pmcf->db,
        "payflow_endpoint_create",
        "SELECT payflow_endpoint_create($1, $2, $3, $4, $5)", 5);
    st->endpoint_list = pf_pg_statement_add(pmcf->db,
        "payflow_endpoint_list",
        "SELECT payflow_endpoint_list($1, $2, $3::int)", 3);
    st->endpoint_get = pf_pg_statement_add(pmcf->db, "payflow_endpoint_get",
        "SELECT payflow_endpoint_get($1)", 1);
    st->endpoint_update = pf_pg_statement_add(pmcf->db,
        "payflow_endpoint_update",
        "SELECT payflow_endpoint_update($1, $2, $3, $4, $5::boolean)", 5);
    st->endpoint_delete = pf_pg_statement_add(pmcf->db,
        "payflow_endpoint_delete",
        "SELECT payflow_endpoint_delete($1)", 1);
    st->endpoint_rotate = pf_pg_statement_add(pmcf->db,
        "payflow_endpoint_rotate",
        "SELECT payflow_endpoint_rotate($1, $2, $3::interval)", 3);
    st->event_list = pf_pg_statement_add(pmcf->db, "payflow_event_list",
        "SELECT payflow_event_list($1, $2, $3::int, $4)", 4);
    st->event_get = pf_pg_statement_add(pmcf->db, "payflow_event_get",
        "SELECT payflow_event_get($1)", 1);
    st->event_deliveries = pf_pg_statement_add(pmcf->db,
        "payflow_event_deliveries",
        "SELECT payflow_event_deliveries($1)", 1);
    st->event_redeliver = pf_pg_statement_add(pmcf->db,
        "payflow_event_redeliver",
        "SELECT payflow_event_redeliver($1)", 1);

    if (st->endpoint_create == NULL || st->endpoint_list == NULL
        || st->endpoint_get == NULL || st->endpoint_update == NULL
        || st->endpoint_delete == NULL || st->endpoint_rotate == NULL
        || st->event_list == NULL || st->event_get == NULL
        || st->event_deliveries == NULL || st->event_redeliver == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* POST /v1/webhook_endpoints {"url", "events", "description"} */

ngx_int_t
ngx_http_payflow_endpoints_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_str_t                       id;
    const char                    **v;
    ngx_http_payflow_main_conf_t   *pmcf;
    ngx_http_payflow_endpoint_op_t *op;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    v = ngx_pcalloc(r->pool, 6 * sizeof(char *));
    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_endpoint_op_t));
    if (v == NULL || op == NULL
        || pf_id_generate(r->pool, "we_", &id) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* values: url, events (JSON), description, id, secret */

    v[3] = ngx_http_payflow_db_str(r->pool, &id);
    if (v[3] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_payflow_endpoint_seal(r, ctx, &id, op, &v[4]) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->statement = pmcf->st.endpoint_create;
    op->values = v;
    op->nvalues = 5;
    ctx->op = op;

    return ngx_http_payflow_endpoint_fields(r, ctx, v, 1);
}


/* PATCH /v1/webhook_endpoints/{id} {"url", "events", "description",
 * "enabled"} */

ngx_int_t
ngx_http_payflow_endpoints_update(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    json_t                         *enabled;
    const char                    **v;
    pf_error_t                      err;
    ngx_http_payflow_main_conf_t   *pmcf;
    ngx_http_payflow_endpoint_op_t *op;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    v = ngx_pcalloc(r->pool, 6 * sizeof(char *));
    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_endpoint_op_t));
    if (v == NULL || op == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* values: id, url, events (JSON), description, enabled */
    v[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (v[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    enabled = json_object_get(ctx->body, "enabled");

    if (enabled) {
        if (!json_is_boolean(enabled)) {
            pf_json_param_error(&err, "enabled", "parameter_invalid",
                                "enabled must be true or false");
            return ngx_http_payflow_send_error(r, &err);
        }

        v[4] = json_is_true(enabled) ? "t" : "f";
    }

    op->statement = pmcf->st.endpoint_update;
    op->values = v;
    op->nvalues = 5;
    ctx->op = op;

    return ngx_http_payflow_endpoint_fields(r, ctx, v + 1, 0);
}


/*
 * url, events and description into v[0..2] (NULL: not given), each
 * checked; then the URL's host is probed, and the statement runs.
 */

static ngx_int_t
ngx_http_payflow_endpoint_fields(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const char **v, ngx_uint_t create)
{
    char         *dump;
    json_t       *url, *events, *e, *description;
    size_t        i;
    ngx_int_t     rc;
    ngx_str_t     host, s;
    ngx_uint_t    k;
    pf_error_t    err;

    static const char  *fields[] = {
        "url", "events", "description", "enabled", NULL
    };

    rc = pf_json_check_fields(r->pool, ctx->body, fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    if (create && json_object_get(ctx->body, "enabled")) {
        pf_json_param_error(&err, "enabled", "parameter_unknown",
                            "a new endpoint is enabled; PATCH it to "
                            "disable it");
        return ngx_http_payflow_send_error(r, &err);
    }

    url = json_object_get(ctx->body, "url");
    events = json_object_get(ctx->body, "events");
    description = json_object_get(ctx->body, "description");

    if (create && url == NULL) {
        pf_json_param_error(&err, "url", "parameter_missing",
                            "url is required");
        return ngx_http_payflow_send_error(r, &err);
    }

    if (create && events == NULL) {
        pf_json_param_error(&err, "events", "parameter_missing",
                            "events is required: event types, or [\"*\"]");
        return ngx_http_payflow_send_error(r, &err);
    }

    ngx_str_null(&host);

    if (url) {
        rc = ngx_http_payflow_endpoint_url(r, ctx, url, &host, &err);
        if (rc != NGX_OK) {
            return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                                   : ngx_http_payflow_send_error(r, &err);
        }

        v[0] = json_string_value(url);
    }

    if (events) {
        if (!json_is_array(events) || json_array_size(events) == 0
            || json_array_size(events) > 32)
        {
            pf_json_param_error(&err, "events", "parameter_invalid",
                                "events must be 1 to 32 event types, or "
                                "[\"*\"]");
            return ngx_http_payflow_send_error(r, &err);
        }

        json_array_foreach(events, i, e) {

            for (k = 0; ngx_http_payflow_event_types[k]; k++) {
                if (json_is_string(e)
                    && json_string_length(e) == ngx_strlen(
                                                   json_string_value(e))
                    && ngx_strcmp(json_string_value(e),
                                  ngx_http_payflow_event_types[k]) == 0)
                {
                    break;
                }
            }

            if (ngx_http_payflow_event_types[k] == NULL) {
                pf_json_param_error(&err, "events", "parameter_invalid",
                                    "an unknown event type: see "
                                    "docs/webhooks.md for the list");
                return ngx_http_payflow_send_error(r, &err);
            }
        }

        dump = json_dumps(events, JSON_COMPACT);
        if (dump == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        s.data = (u_char *) dump;
        s.len = ngx_strlen(dump);
        v[1] = ngx_http_payflow_db_str(r->pool, &s);
        free(dump);

        if (v[1] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (description) {
        if (!json_is_string(description)
            || json_string_length(description) > 500)
        {
            pf_json_param_error(&err, "description", "parameter_invalid",
                                "description must be a string of at most "
                                "500 characters");
            return ngx_http_payflow_send_error(r, &err);
        }

        v[2] = json_string_value(description);
    }

    if (host.len) {
        s.data = (u_char *) v[0];
        s.len = ngx_strlen(v[0]);
        return ngx_http_payflow_endpoint_probe(r, &s, &host);
    }

    return ngx_http_payflow_endpoint_store(r);
}


/*
 * https://host[:port]/path (http:// for test-mode endpoints): no
 * credentials, no spaces or control characters.  host is set when its
 * addresses still have to be judged (a name); an address literal is
 * judged here.
 */

static ngx_int_t
ngx_http_payflow_endpoint_url(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, json_t *url, ngx_str_t *host,
    pf_error_t *err)
{
    u_char                          *p, *last, *start, *end;
    size_t                           len;
    ngx_int_t                        rc;
    ngx_addr_t                       addr;
    struct sockaddr_in               sin;
    ngx_http_payflow_outbox_conf_t  *ocf;

    ocf = ngx_http_get_module_main_conf(r, ngx_http_payflow_webhook_module);

    if (!json_is_string(url)
        || json_string_length(url) > NGX_HTTP_PAYFLOW_URL_MAX)
    {
        pf_json_param_error(err, "url", "parameter_invalid",
                            "url must be a string of at most 2048 "
                            "characters");
        return NGX_DECLINED;
    }

    p = (u_char *) json_string_value(url);
    len = json_string_length(url);
    last = p + len;

    if (ngx_strlen(p) != len) {
        goto invalid;
    }

    for (start = p; start < last; start++) {
        if (*start <= ' ' || *start >= 0x7f) {
            goto invalid;
        }
    }

    if (len > 8 && ngx_strncmp(p, "https://", 8) == 0) {
        p += 8;

    } else if (len > 7 && ngx_strncmp(p, "http://", 7) == 0) {

        if (ctx->auth.livemode && !ocf->allow_private) {
            pf_json_param_error(err, "url", "url_invalid",
                                "a live-mode endpoint must use https");
            return NGX_DECLINED;
        }

        p += 7;

    } else {
        goto invalid;
    }

    /* the authority: up to the path, the query or the fragment */

    for (end = p; end < last && *end != '/' && *end != '?' && *end != '#';
         end++)
    {
        if (*end == '@') {
            pf_json_param_error(err, "url", "url_invalid",
                                "url must not carry credentials");
            return NGX_DECLINED;
        }
    }

    if (end == p) {
        goto invalid;
    }

    if (*p == '[') {
        start = p + 1;
        p = ngx_strlchr(p, end, ']');
        if (p == NULL) {
            goto invalid;
        }

    } else {
        start = p;
        p = ngx_strlchr(p, end, ':');
        if (p == NULL) {
            p = end;
        }
    }

    if (p == start) {
        goto invalid;
    }

    host->data = start;
    host->len = p - start;

    if (ocf->allow_private) {
        ngx_str_null(host);
        return NGX_OK;
    }

    /*
     * An address literal is judged now; a name once it is resolved.  An
     * IPv4 literal is read as libcurl will connect to it (inet_aton's
     * forms: octal "0177.0.0.1", hex "0x7f.1", one to four parts), not
     * as ngx_parse_addr() reads it (decimal octets only).
     */

    rc = ngx_http_payflow_endpoint_ipv4(r, host, &sin);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {

        if (!pf_curl_address_public((struct sockaddr *) &sin)) {
            goto refused;
        }

        ngx_str_null(host);
        return NGX_OK;
    }

    if (ngx_parse_addr(r->pool, &addr, host->data, host->len) == NGX_OK) {

        if (!pf_curl_address_public(addr.sockaddr)) {
            goto refused;
        }

        ngx_str_null(host);
    }

    return NGX_OK;

refused:

    pf_json_param_error(err, "url", "url_not_allowed",
                        "the destination's address is private, loopback, "
                        "link-local or reserved");
    return NGX_DECLINED;

invalid:

    pf_json_param_error(err, "url", "url_invalid",
                        "url must be an absolute https URL");
    return NGX_DECLINED;
}


/*
 * NGX_OK and the address if the host is an IPv4 literal in any form
 * inet_aton() (and libcurl's URL parser) accepts, NGX_DECLINED if it is
 * not one.
 */

static ngx_int_t
ngx_http_payflow_endpoint_ipv4(ngx_http_request_t *r, ngx_str_t *host,
    struct sockaddr_in *sin)
{
    u_char  *p, *last, *name;

    last = host->data + host->len;

    for (p = host->data; p < last; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')
              || (*p >= 'A' && *p <= 'F') || *p == 'x' || *p == 'X'
              || *p == '.'))
        {
            return NGX_DECLINED;
        }
    }

    name = ngx_pnalloc(r->pool, host->len + 1);
    if (name == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(name, host->data, host->len) = '\0';

    ngx_memzero(sin, sizeof(struct sockaddr_in));
    sin->sin_family = AF_INET;

    if (inet_aton((char *) name, &sin->sin_addr) == 0) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* the host's addresses, judged by libcurl's resolver and ours */

static ngx_int_t
ngx_http_payflow_endpoint_probe(ngx_http_request_t *r, ngx_str_t *url,
    ngx_str_t *host)
{
    pf_curl_call_t                *call;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    call = ngx_pcalloc(r->pool, sizeof(pf_curl_call_t));
    if (call == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    call->method = "GET";
    call->url = *url;
    call->connect_timeout = 5000;
    call->timeout = 5000;
    call->max_response = 1;
    call->pool = r->pool;
    call->log = r->connection->log;
    call->check = ngx_http_payflow_outbox_check;
    call->probe = 1;
    call->handler = ngx_http_payflow_endpoint_probed;
    call->data = r;

    if (pf_curl_start(pmcf->curl, call) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->call = call;
    r->read_event_handler = ngx_http_test_reading;
    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_payflow_endpoint_probed(pf_curl_call_t *call)
{
    ngx_int_t                rc;
    pf_error_t               err;
    ngx_http_request_t      *r;
    ngx_http_payflow_ctx_t  *ctx;

    r = call->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    ctx->call = NULL;

    if (call->refused) {
        pf_json_param_error(&err, "url", "url_not_allowed",
                            "the destination resolves to a private, "
                            "loopback, link-local or reserved address");
        rc = ngx_http_payflow_send_error(r, &err);

    } else if (call->allowed == 0) {
        pf_json_param_error(&err, "url", "url_invalid",
                            "the destination's host name does not resolve");
        rc = ngx_http_payflow_send_error(r, &err);

    } else {
        rc = ngx_http_payflow_endpoint_store(r);
    }

    ngx_http_payflow_finalize(r, rc);
}


static ngx_int_t
ngx_http_payflow_endpoint_store(ngx_http_request_t *r)
{
    pf_pg_query_t                   *q;
    ngx_http_payflow_ctx_t          *ctx;
    ngx_http_payflow_endpoint_op_t  *op;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    op = ctx->op;

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, op->statement, op->nvalues, op->values);

    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q, "storing a webhook endpoint",
                                   ngx_http_payflow_endpoint_stored);
}


static ngx_int_t
ngx_http_payflow_endpoint_stored(ngx_http_request_t *r, pf_pg_query_t *q)
{
    u_char                          *p;
    PGresult                        *res;
    ngx_str_t                        data, shown;
    pf_error_t                       err;
    const char                      *state;
    ngx_http_payflow_endpoint_op_t  *op;

    if (q->status == PF_PG_SQL_ERROR) {
        state = pf_pg_query_sqlstate(q);

        if (state && ngx_strcmp(state, "PF010") == 0) {
            pf_json_param_error(&err, "url", "endpoint_limit",
                                "at most 16 webhook endpoints per tenant "
                                "and mode");
            return ngx_http_payflow_send_error(r, &err);
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow: storing a webhook endpoint failed: %s (%s)",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY), state);

        return ngx_http_payflow_send_db_error(r, q);
    }

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        ngx_memzero(&err, sizeof(pf_error_t));

        err.status = NGX_HTTP_NOT_FOUND;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "resource_missing";
        err.message = "no such webhook endpoint";
        err.param = "id";

        return ngx_http_payflow_send_error(r, &err);
    }

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    op = ((ngx_http_payflow_ctx_t *)
          ngx_http_get_module_ctx(r, ngx_http_payflow_module))->op;

    if (op->shown.len && data.len > 2 && data.data[data.len - 1] == '}') {

        /* the new secret, shown this once: never read back from the row */

        p = ngx_pnalloc(r->pool, data.len + sizeof(", \"secret\": \"\"")
                                 + op->shown.len);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        shown.data = p;
        p = ngx_cpymem(p, data.data, data.len - 1);
        p = ngx_cpymem(p, ", \"secret\": \"", sizeof(", \"secret\": \"") - 1);
        p = ngx_cpymem(p, op->shown.data, op->shown.len);
        *p++ = '"';
        *p++ = '}';
        shown.len = p - shown.data;

        data = shown;
    }

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


/*
 * A new signing secret: *stored is what the row keeps (sealed under the
 * current payflow_kek, bound to the tenant, the mode and the endpoint; in
 * the clear without one), op->shown what the answer shows once.
 */

static ngx_int_t
ngx_http_payflow_endpoint_seal(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_str_t *id,
    ngx_http_payflow_endpoint_op_t *op, const char **stored)
{
    ngx_str_t                      sealed, aad;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (ngx_http_payflow_outbox_secret(r->pool, &op->shown) != NGX_OK) {
        return NGX_ERROR;
    }

    if (pmcf->keyring.current == NULL) {
        *stored = (char *) op->shown.data;
        return NGX_OK;
    }

    if (ngx_http_payflow_endpoint_aad(r->pool, &ctx->auth.tenant_id,
                                      ctx->auth.livemode, id, &aad)
        != NGX_OK
        || pf_seal(r->pool, &pmcf->keyring, &aad, &op->shown, &sealed)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    *stored = (char *) sealed.data;

    return NGX_OK;
}


/* what a sealed signing secret is bound to */

ngx_int_t
ngx_http_payflow_endpoint_aad(ngx_pool_t *pool, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *aad)
{
    return pf_seal_aad(pool, "webhook_endpoints", tenant, livemode, id, aad);
}


/*
 * A row's signing secret as the signer needs it: opened if sealed, as it
 * is if in the clear (written before payflow_kek).  NGX_DECLINED: it does
 * not open (its KEK is not configured, or it was moved from another row).
 */

ngx_int_t
ngx_http_payflow_endpoint_open(ngx_pool_t *pool, pf_keyring_t *ring,
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *id,
    ngx_str_t *secret)
{
    ngx_int_t  rc;
    ngx_str_t  aad, plain;

    if (!pf_sealed(secret)) {
        return NGX_OK;
    }

    if (ngx_http_payflow_endpoint_aad(pool, tenant, livemode, id, &aad)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = pf_unseal(pool, ring, &aad, secret, &plain);
    if (rc != NGX_OK) {
        return rc;
    }

    *secret = plain;

    return NGX_OK;
}


/* GET /v1/webhook_endpoints */

ngx_int_t
ngx_http_payflow_endpoints_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_list_run(r, pmcf->st.endpoint_list,
                                     "listing webhook endpoints");
}


/* GET /v1/events?type= */

ngx_int_t
ngx_http_payflow_events_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_str_t                       type;
    ngx_uint_t                      k;
    ngx_int_t                       rc;
    const char                    **v;
    pf_error_t                      err;
    ngx_http_payflow_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    v = ngx_pcalloc(r->pool, 4 * sizeof(char *));
    if (v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_list_cursor(r, v, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    if (ngx_http_arg(r, (u_char *) "type", 4, &type) == NGX_OK) {

        /* "*" is a subscription, not a type */
        for (k = 1; ngx_http_payflow_event_types[k]; k++) {
            if (type.len == ngx_strlen(ngx_http_payflow_event_types[k])
                && ngx_strncmp(type.data, ngx_http_payflow_event_types[k],
                               type.len) == 0)
            {
                v[3] = ngx_http_payflow_event_types[k];
                break;
            }
        }

        if (v[3] == NULL) {
            pf_json_param_error(&err, "type", "parameter_invalid",
                                "an unknown event type");
            return ngx_http_payflow_send_error(r, &err);
        }
    }

    return ngx_http_payflow_json_run(r, pmcf->st.event_list, v, 4,
                                     "listing events");
}


ngx_int_t
ngx_http_payflow_endpoints_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_id_run(r, ctx, pmcf->st.endpoint_get,
                                   "reading a webhook endpoint");
}


ngx_int_t
ngx_http_payflow_endpoints_delete(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_id_run(r, ctx, pmcf->st.endpoint_delete,
                                   "deleting a webhook endpoint");
}


/* POST /v1/webhook_endpoints/{id}/rotate_secret: the new secret, once */

ngx_int_t
ngx_http_payflow_endpoints_rotate(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                          *p;
    ngx_int_t                        rc;
    pf_error_t                       err;
    const char                     **v;
    ngx_http_payflow_main_conf_t    *pmcf;
    ngx_http_payflow_outbox_conf_t  *ocf;
    ngx_http_payflow_endpoint_op_t  *op;

    static const char  *none[] = { NULL };

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ocf = ngx_http_get_module_main_conf(r, ngx_http_payflow_webhook_module);

    rc = pf_json_check_fields(r->pool, ctx->body, none, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    v = ngx_pcalloc(r->pool, 3 * sizeof(char *));
    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN + sizeof(" s"));
    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_endpoint_op_t));

    if (v == NULL || p == NULL || op == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    v[2] = (char *) p;
    (void) ngx_sprintf(p, "%T s%Z", ocf->grace);

    if (v[0] == NULL
        || ngx_http_payflow_endpoint_seal(r, ctx, &ctx->params[0], op, &v[1])
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->statement = pmcf->st.endpoint_rotate;
    op->values = v;
    op->nvalues = 3;
    ctx->op = op;

    return ngx_http_payflow_endpoint_store(r);
}


ngx_int_t
ngx_http_payflow_events_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_id_run(r, ctx, pmcf->st.event_get,
                                   "reading an event");
}


ngx_int_t
ngx_http_payflow_events_deliveries(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_id_run(r, ctx, pmcf->st.event_deliveries,
                                   "listing an event's deliveries");
}


ngx_int_t
ngx_http_payflow_events_redeliver(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                      rc;
    pf_error_t                     err;
    const char                   **v;
    pf_pg_query_t                 *q;
    ngx_http_payflow_main_conf_t  *pmcf;

    static const char  *none[] = { NULL };

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body, none, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    v = ngx_palloc(r->pool, sizeof(char *));
    q = ngx_http_payflow_db_query(r, 1, 1);

    if (v == NULL || q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    if (v[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.event_redeliver, 1, v);

    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q, "redelivering an event",
                                   ngx_http_payflow_events_redelivered);
}


/* the event's deliveries, or 429 when the last redelivery is too recent */

static ngx_int_t
ngx_http_payflow_events_redelivered(ngx_http_request_t *r, pf_pg_query_t *q)
{
    char        *detail;
    PGresult    *res;
    ngx_str_t    data, after;
    pf_error_t   err;
    const char  *state;

    if (q->status == PF_PG_SQL_ERROR) {
        state = pf_pg_query_sqlstate(q);

        if (state && ngx_strcmp(state, "PF011") == 0) {
            detail = PQresultErrorField(q->results[q->failed],
                                        PG_DIAG_MESSAGE_DETAIL);

            if (detail) {
                after.data = (u_char *) detail;
                after.len = ngx_strlen(detail);

                if (pf_response_add_header(r, "Retry-After", &after)
                    != NGX_OK)
                {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
            }

            ngx_memzero(&err, sizeof(pf_error_t));

            err.status = NGX_HTTP_TOO_MANY_REQUESTS;
            err.type = PF_ERROR_RATE_LIMIT;
            err.code = "redelivery_too_soon";
            err.message = "an event is redelivered to an endpoint at most "
                          "once a minute; see Retry-After";
            err.param = "id";

            return ngx_http_payflow_send_error(r, &err);
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow: redelivering an event failed: %s (%s)",
                      PQresultErrorField(q->results[q->failed],
                                         PG_DIAG_MESSAGE_PRIMARY), state);

        return ngx_http_payflow_send_db_error(r, q);
    }

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        ngx_memzero(&err, sizeof(pf_error_t));

        err.status = NGX_HTTP_NOT_FOUND;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "resource_missing";
        err.message = "no such event";
        err.param = "id";

        return ngx_http_payflow_send_error(r, &err);
    }

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}
