
/*
 * Copyright (C) PayFlow
 *
 * The risk engine's API, for tenants (docs/risk.md):
 *
 *   GET/PATCH/POST/DELETE  /v1/risk/rules           settings, thresholds
 *   GET/POST/DELETE        /v1/risk/lists/{type}    block and allow lists
 *   GET                    /v1/reviews              payments in review
 *   POST                   /v1/reviews/{id}/approve on to the provider
 *   POST                   /v1/reviews/{id}/reject  canceled
 *
 * Each is a statement of sql/0020 in the request's scoped transaction; an
 * approved payment then takes the way every new payment takes to its
 * provider (ngx_http_payflow_payments.c).
 */


#include "ngx_http_payflow_risk.h"
#include "ngx_http_payflow_idempotency.h"
#include "ngx_http_payflow_lists.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_pii.h"
#include "ngx_http_payflow_routing.h"
#include "ngx_http_payflow_sandbox.h"


/* entries of one tenant and mode, all lists and types together */
#define NGX_HTTP_PAYFLOW_RISK_MAX_LIST  100000


static ngx_int_t ngx_http_payflow_risk_type(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const char **type);
static ngx_int_t ngx_http_payflow_risk_bad_type(ngx_http_request_t *r);
static ngx_int_t ngx_http_payflow_risk_arg(ngx_http_request_t *r,
    const char *name, const char **value);
static ngx_int_t ngx_http_payflow_risk_run(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char **values,
    ngx_uint_t nvalues, const char *what);
static ngx_int_t ngx_http_payflow_risk_sent(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_risk_json(ngx_http_request_t *r,
    json_t *v, const char **out);
static ngx_int_t ngx_http_payflow_reviews_decide(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_uint_t approve);
static ngx_int_t ngx_http_payflow_reviews_peeked(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_reviews_decided(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_reviews_error(ngx_http_request_t *r,
    ngx_uint_t status, pf_error_type_e type, const char *code,
    const char *message, const char *param);


static const char  *ngx_http_payflow_risk_types[] = {
    "email", "email_domain", "ip", "card", "country", "customer", NULL
};


ngx_int_t
ngx_http_payflow_reviews_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->risk_list_add = pf_pg_statement_add(pmcf->db, "payflow_risk_add",
        "SELECT payflow_risk_list_add($1, $2, $3, $4, $5::int)", 5);
    st->risk_list_page = pf_pg_statement_add(pmcf->db, "payflow_risk_page",
        "SELECT payflow_risk_list_page($1, $2, $3::int, $4, $5)", 5);
    st->risk_list_remove = pf_pg_statement_add(pmcf->db,
        "payflow_risk_remove",
        "SELECT payflow_risk_list_remove($1, $2, $3)", 3);
    st->risk_settings = pf_pg_statement_add(pmcf->db,
        "payflow_risk_settings",
        "SELECT payflow_risk_settings_json($1::jsonb)", 1);
    st->risk_settings_update = pf_pg_statement_add(pmcf->db,
        "payflow_risk_update",
        "SELECT payflow_risk_settings_update($1::jsonb, $2::int, $3::int, "
        "$4::jsonb, CASE WHEN $5::jsonb IS NOT NULL THEN ARRAY(SELECT "
        "lower(e) FROM jsonb_array_elements_text($5::jsonb) e) END, "
        "CASE WHEN $6::jsonb IS NOT NULL THEN ARRAY(SELECT lower(d) FROM "
        "jsonb_array_elements_text($6::jsonb) d) END)", 6);
    st->risk_settings_reset = pf_pg_statement_add(pmcf->db,
        "payflow_risk_reset",
        "SELECT payflow_risk_settings_reset($1::jsonb)", 1);
    st->review_list = pf_pg_statement_add(pmcf->db, "payflow_review_list",
        "SELECT payflow_review_list($1, $2, $3::int)", 3);
    st->review_decide = pf_pg_statement_add(pmcf->db,
        "payflow_review_decide",
        "SELECT d.fingerprint, d.phase, d.locked, d.response_status, "
        "d.response_body, d.payment_id, d.request_id, d.object_id, d.mine, "
        "d.amount, d.currency, d.capture_method, d.provider, "
        "d.payment_method, d.email, d.description, d.return_url, k.pii, "
        "k.key FROM payflow_review_decide($1, $2::boolean, $3, $4, $5, "
        "$6::text[], $7, $8, $9, $10) d "
        "LEFT JOIN LATERAL payflow_customer_secret(d.payment_id) k ON true",
        10);
    st->review_peek = pf_pg_statement_add(pmcf->db, "payflow_review_peek",
        "SELECT amount, capture_method, provider "
        "FROM payflow_review_peek($1)", 1);
    st->risk_snapshot = pf_pg_statement_add(pmcf->db, "payflow_risk_snapshot",
        "SELECT kind, a, b FROM payflow_risk_snapshot($1, $2::boolean, "
        "$3::int)", 3);
    st->risk_versions = pf_pg_statement_add(pmcf->db, "payflow_risk_versions",
        "SELECT tenant_id, version FROM payflow_risk_versions($1::text[])",
        1);

    if (st->risk_list_add == NULL || st->risk_list_page == NULL
        || st->risk_list_remove == NULL || st->risk_settings == NULL
        || st->risk_settings_update == NULL
        || st->risk_settings_reset == NULL || st->review_list == NULL
        || st->review_decide == NULL || st->review_peek == NULL
        || st->risk_snapshot == NULL || st->risk_versions == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* POST /v1/risk/lists/{type} {"value", "list", "note"} */

ngx_int_t
ngx_http_payflow_risk_lists_add(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    json_t                        *v;
    ngx_int_t                      rc;
    pf_error_t                     err;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    static const char  *fields[] = { "value", "list", "note", NULL };

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    values = ngx_pcalloc(r->pool, 5 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_payflow_risk_type(r, ctx, &values[0]) != NGX_OK) {
        return ngx_http_payflow_risk_bad_type(r);
    }

    rc = pf_json_check_fields(r->pool, ctx->body, fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    values[1] = "block";
    v = json_object_get(ctx->body, "list");

    if (v) {
        if (!json_is_string(v)
            || (ngx_strcmp(json_string_value(v), "block") != 0
                && ngx_strcmp(json_string_value(v), "allow") != 0))
        {
            return ngx_http_payflow_bad(r, "list", "parameter_invalid",
                                        "list must be \"block\" or "
                                        "\"allow\"");
        }

        values[1] = json_string_value(v);
    }

    v = json_object_get(ctx->body, "value");

    if (v == NULL) {
        return ngx_http_payflow_bad(r, "value", "parameter_missing",
                                    "value is required");
    }

    if (!json_is_string(v) || json_string_length(v) == 0
        || json_string_length(v) > 255
        || !pf_text_valid((u_char *) json_string_value(v),
                          json_string_length(v)))
    {
        return ngx_http_payflow_bad(r, "value", "parameter_invalid",
                                    "value must be 1 to 255 bytes of text");
    }

    values[2] = json_string_value(v);

    v = json_object_get(ctx->body, "note");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > 500
            || !pf_text_valid((u_char *) json_string_value(v),
                              json_string_length(v)))
        {
            return ngx_http_payflow_bad(r, "note", "parameter_invalid",
                                        "note must be text of at most 500 "
                                        "bytes");
        }

        values[3] = json_string_value(v);
    }

    values[4] = ngx_http_payflow_int(r, NGX_HTTP_PAYFLOW_RISK_MAX_LIST);
    if (values[4] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_risk_run(r, pmcf->st.risk_list_add, values, 5,
                                     "adding a risk list entry");
}


/* GET /v1/risk/lists/{type}?list= */

ngx_int_t
ngx_http_payflow_risk_lists_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                      rc;
    pf_error_t                     err;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    values = ngx_pcalloc(r->pool, 5 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_payflow_risk_type(r, ctx, &values[3]) != NGX_OK) {
        return ngx_http_payflow_risk_bad_type(r);
    }

    rc = ngx_http_payflow_list_cursor(r, values, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    rc = ngx_http_payflow_risk_arg(r, "list", &values[4]);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_bad(r, "list",
                                     "parameter_invalid",
                                     "list must be \"block\" or \"allow\"");
    }

    if (values[4] && ngx_strcmp(values[4], "block") != 0
        && ngx_strcmp(values[4], "allow") != 0)
    {
        return ngx_http_payflow_bad(r, "list", "parameter_invalid",
                                    "list must be \"block\" or \"allow\"");
    }

    return ngx_http_payflow_json_run(r, pmcf->st.risk_list_page, values, 5,
                                     "listing risk list entries");
}


/* DELETE /v1/risk/lists/{type}?value=[&list=] */

ngx_int_t
ngx_http_payflow_risk_lists_delete(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                      rc;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    values = ngx_pcalloc(r->pool, 3 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_payflow_risk_type(r, ctx, &values[0]) != NGX_OK) {
        return ngx_http_payflow_risk_bad_type(r);
    }

    rc = ngx_http_payflow_risk_arg(r, "value", &values[1]);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_bad(r, "value",
                                     "parameter_invalid",
                                     "value must be 1 to 255 bytes of text");
    }

    rc = ngx_http_payflow_risk_arg(r, "list", &values[2]);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_bad(r, "list",
                                     "parameter_invalid",
                                     "list must be \"block\" or \"allow\"");
    }

    if (values[1] == NULL) {
        return ngx_http_payflow_bad(r, "value", "parameter_missing",
                                    "value is required: the entry to "
                                    "remove");
    }

    if (values[2] && ngx_strcmp(values[2], "block") != 0
        && ngx_strcmp(values[2], "allow") != 0)
    {
        return ngx_http_payflow_bad(r, "list", "parameter_invalid",
                                    "list must be \"block\" or \"allow\"");
    }

    return ngx_http_payflow_risk_run(r, pmcf->st.risk_list_remove, values, 3,
                                     "removing a risk list entry");
}


/* the {type} of a list's path */

static ngx_int_t
ngx_http_payflow_risk_type(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const char **type)
{
    ngx_uint_t  i;

    for (i = 0; ngx_http_payflow_risk_types[i]; i++) {
        if (ctx->params[0].len == ngx_strlen(ngx_http_payflow_risk_types[i])
            && ngx_strncmp(ctx->params[0].data,
                           ngx_http_payflow_risk_types[i],
                           ctx->params[0].len) == 0)
        {
            *type = ngx_http_payflow_risk_types[i];
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_payflow_risk_bad_type(ngx_http_request_t *r)
{
    return ngx_http_payflow_bad(r, "type", "parameter_invalid",
                                "a list's type is email, email_domain, ip, "
                                "card, country or customer");
}


/*
 * A query string argument, unescaped; NULL: absent.  NGX_DECLINED: not 1
 * to 255 bytes of text.
 */

static ngx_int_t
ngx_http_payflow_risk_arg(ngx_http_request_t *r, const char *name,
    const char **value)
{
    u_char     *dst, *src;
    ngx_str_t   arg;

    *value = NULL;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &arg) != NGX_OK) {
        return NGX_OK;
    }

    dst = ngx_pnalloc(r->pool, arg.len + 1);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    *value = (char *) dst;
    src = arg.data;

    ngx_unescape_uri(&dst, &src, arg.len, 0);

    if (dst == (u_char *) *value || dst - (u_char *) *value > 255
        || !pf_text_valid((u_char *) *value, dst - (u_char *) *value))
    {
        return NGX_DECLINED;
    }

    *dst = '\0';

    return NGX_OK;
}


/* GET /v1/risk/rules */

ngx_int_t
ngx_http_payflow_risk_rules_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    const char                    *defaults;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    defaults = ngx_http_payflow_risk_defaults(r);
    if (defaults == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_json_run(r, pmcf->st.risk_settings, &defaults, 1,
                                     "reading risk settings");
}


/* DELETE /v1/risk/rules: the operator's defaults again */

ngx_int_t
ngx_http_payflow_risk_rules_reset(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    const char                    *defaults;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    defaults = ngx_http_payflow_risk_defaults(r);
    if (defaults == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_risk_run(r, pmcf->st.risk_settings_reset,
                                     &defaults, 1, "resetting risk settings");
}


/*
 * PATCH (or POST) /v1/risk/rules {"review_threshold", "block_threshold",
 * "rules": {"name": {"score", "enabled"} | null},
 * "self_dealing": {"emails": [...], "domains": [...]}}
 */

ngx_int_t
ngx_http_payflow_risk_rules_update(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                        *p;
    json_t                        *v, *rule, *item, *list;
    size_t                         i;
    ngx_int_t                      rc;
    ngx_uint_t                     k;
    pf_error_t                     err;
    const char                    *name, *key, **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    static const char  *fields[] = {
        "review_threshold", "block_threshold", "rules", "self_dealing", NULL
    };
    static const char  *self_fields[] = { "emails", "domains", NULL };

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    values = ngx_pcalloc(r->pool, 6 * sizeof(char *));
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = pf_json_check_fields(r->pool, ctx->body, fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    values[0] = ngx_http_payflow_risk_defaults(r);
    if (values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (k = 0; k < 2; k++) {
        name = fields[k];
        v = json_object_get(ctx->body, name);

        if (v == NULL) {
            continue;
        }

        if (!json_is_integer(v) || json_integer_value(v) < 0
            || json_integer_value(v) > 100)
        {
            return ngx_http_payflow_bad(r, name, "parameter_invalid",
                                        "a threshold is an integer score "
                                        "from 0 to 100");
        }

        values[1 + k] = ngx_http_payflow_int(r, json_integer_value(v));
        if (values[1 + k] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    v = json_object_get(ctx->body, "rules");

    if (v) {
        if (!json_is_object(v)) {
            return ngx_http_payflow_bad(r, "rules", "parameter_invalid",
                                        "rules is an object of rule names");
        }

        json_object_foreach(v, key, rule) {

            p = ngx_pnalloc(r->pool, ngx_strlen(key) + sizeof("rules[]"));
            if (p == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            (void) ngx_sprintf(p, "rules[%s]%Z", key);

            if (ngx_http_payflow_risk_rule_known(key, ngx_strlen(key)) == 0)
            {
                return ngx_http_payflow_bad(r, (char *) p, "rule_unknown",
                                            "no such rule: GET "
                                            "/v1/risk/rules lists them");
            }

            if (json_is_null(rule)) {
                continue;
            }

            if (!json_is_object(rule) || json_object_size(rule) == 0) {
                return ngx_http_payflow_bad(r, (char *) p,
                                            "parameter_invalid",
                                            "a rule's settings are "
                                            "{\"score\", \"enabled\"}, or "
                                            "null for the default");
            }

            json_object_foreach(rule, name, item) {

                if (ngx_strcmp(name, "score") == 0
                    && json_is_integer(item)
                    && json_integer_value(item) >= 0
                    && json_integer_value(item) <= 100)
                {
                    continue;
                }

                if (ngx_strcmp(name, "enabled") == 0
                    && json_is_boolean(item))
                {
                    continue;
                }

                return ngx_http_payflow_bad(r, (char *) p,
                                            "parameter_invalid",
                                            "a rule's score is 0 to 100 and "
                                            "enabled true or false");
            }
        }

        rc = ngx_http_payflow_risk_json(r, v, &values[3]);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    v = json_object_get(ctx->body, "self_dealing");

    if (v) {
        if (!json_is_object(v)) {
            return ngx_http_payflow_bad(r, "self_dealing",
                                        "parameter_invalid",
                                        "self_dealing is {\"emails\", "
                                        "\"domains\"}");
        }

        rc = pf_json_check_fields(r->pool, v, self_fields, &err);
        if (rc != NGX_OK) {
            return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                                   : ngx_http_payflow_send_error(r, &err);
        }

        for (k = 0; k < 2; k++) {
            list = json_object_get(v, self_fields[k]);

            if (list == NULL) {
                continue;
            }

            name = k ? "self_dealing[domains]" : "self_dealing[emails]";

            if (!json_is_array(list) || json_array_size(list) > 100) {
                return ngx_http_payflow_bad(r, name, "parameter_invalid",
                                            "a list of at most 100");
            }

            json_array_foreach(list, i, item) {
                if (!json_is_string(item) || json_string_length(item) < 3
                    || json_string_length(item) > 254
                    || !pf_text_valid((u_char *) json_string_value(item),
                                      json_string_length(item))
                    || (k == 0
                        && ngx_strchr(json_string_value(item), '@') == NULL)
                    || (k == 1
                        && (ngx_strchr(json_string_value(item), '@')
                            || ngx_strchr(json_string_value(item), '.')
                               == NULL)))
                {
                    return ngx_http_payflow_bad(r, name,
                                                "parameter_invalid",
                                                k ? "domains such as "
                                                    "\"example.com\""
                                                  : "e-mail addresses");
                }
            }

            rc = ngx_http_payflow_risk_json(r, list, &values[4 + k]);
            if (rc != NGX_OK) {
                return rc;
            }
        }
    }

    return ngx_http_payflow_risk_run(r, pmcf->st.risk_settings_update,
                                     values, 6, "updating risk settings");
}


static ngx_int_t
ngx_http_payflow_risk_json(ngx_http_request_t *r, json_t *v,
    const char **out)
{
    char       *dump;
    ngx_str_t   s;

    dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (dump == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    s.data = (u_char *) dump;
    s.len = ngx_strlen(dump);
    *out = ngx_http_payflow_db_str(r->pool, &s);
    free(dump);

    return *out ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* a statement whose one value is the answer, with sql/0020's refusals */

static ngx_int_t
ngx_http_payflow_risk_run(ngx_http_request_t *r,
    const pf_pg_statement_t *statement, const char **values,
    ngx_uint_t nvalues, const char *what)
{
    pf_pg_query_t           *q;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q, 0, statement, nvalues, values);

    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q, what, ngx_http_payflow_risk_sent);
}


static ngx_int_t
ngx_http_payflow_risk_sent(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult    *res;
    ngx_str_t    data;
    pf_error_t   err;
    const char  *state;

    if (q->status == PF_PG_SQL_ERROR) {
        state = pf_pg_query_sqlstate(q);

        if (state && ngx_strcmp(state, "PF020") == 0) {
            return ngx_http_payflow_bad(r, "value", "parameter_invalid",
                                        "the value is not one of the "
                                        "list's type (an e-mail, a domain, "
                                        "an address or CIDR network, a "
                                        "two-letter country)");
        }

        if (state && ngx_strcmp(state, "PF021") == 0) {
            return ngx_http_payflow_bad(r, "value", "list_full",
                                        "the tenant's lists hold as many "
                                        "entries as they may (100000)");
        }

        if (state && (ngx_strcmp(state, "PF022") == 0
                      || ngx_strcmp(state, "23514") == 0))
        {
            return ngx_http_payflow_bad(r, "review_threshold",
                                        "parameter_invalid",
                                        "the review threshold must not be "
                                        "above the block threshold");
        }

        return ngx_http_payflow_send_db_error(r, q);
    }

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetisnull(res, 0, 0)) {
        ngx_memzero(&err, sizeof(pf_error_t));

        err.status = NGX_HTTP_NOT_FOUND;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "resource_missing";
        err.message = "no such list entry";
        err.param = "value";

        return ngx_http_payflow_send_error(r, &err);
    }

    data.data = (u_char *) PQgetvalue(res, 0, 0);
    data.len = PQgetlength(res, 0, 0);

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


/* GET /v1/reviews */

ngx_int_t
ngx_http_payflow_reviews_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    return ngx_http_payflow_list_run(r, pmcf->st.review_list,
                                     "listing reviews");
}


ngx_int_t
ngx_http_payflow_reviews_approve(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    return ngx_http_payflow_reviews_decide(r, ctx, 1);
}


ngx_int_t
ngx_http_payflow_reviews_reject(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    return ngx_http_payflow_reviews_decide(r, ctx, 0);
}


static ngx_int_t
ngx_http_payflow_reviews_decide(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_uint_t approve)
{
    u_char                        *hex, *p;
    size_t                         len;
    ngx_int_t                      rc;
    ngx_uint_t                     i;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_provider_t   *pv;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (ctx->params[0].len != 28
        || ngx_strncmp(ctx->params[0].data, "pay_", 4) != 0)
    {
        return ngx_http_payflow_bad(r, "id", "resource_missing",
                                    "no such payment");
    }

    rc = ngx_http_payflow_idem_header(r, ctx);

    if (rc == NGX_ABORT) {
        return ngx_http_payflow_idem_invalid(r);
    }

    values = ngx_pcalloc(r->pool, 10 * sizeof(char *));
    hex = ngx_pnalloc(r->pool, 2 * 32 + 1);
    q = ngx_http_payflow_db_query(r, 1, 1);

    if (values == NULL || hex == NULL || q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->payment_id = ctx->params[0];
    ctx->outcome = approve ? "processing" : "canceled";
    ctx->review = 1;    /* not a payment created, in the metrics */

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->payment_id);
    values[1] = approve ? "t" : "f";

    if (ctx->idem_key.len) {
        if (ngx_http_payflow_fingerprint(r, hex) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        values[2] = ngx_http_payflow_db_str(r->pool, &ctx->idem_key);
        values[3] = (char *) hex;
        values[4] = ngx_http_payflow_db_str(r->pool, &r->uri);

        if (values[2] == NULL || values[4] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* the providers of the caller's mode an approval may go to */

    len = sizeof("{}");
    pv = pmcf->providers.elts;

    for (i = 0; i < pmcf->providers.nelts; i++) {
        len += pv[i].name.len + 1;
    }

    p = ngx_pnalloc(r->pool, len);

    if (values[0] == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[5] = (char *) p;
    *p++ = '{';

    for (i = 0; i < pmcf->providers.nelts; i++) {
        if (pv[i].livemode == ctx->auth.livemode) {
            /* names are [a-z0-9_]: nothing to quote */
            p = ngx_sprintf(p, "%s%V", p[-1] == '{' ? "" : ",",
                            &pv[i].name);
        }
    }

    *p++ = '}';
    *p = '\0';

    ctx->money_values = values;

    if (approve) {
        /* the sandbox answers by the amount: it is read first */
        ngx_http_payflow_db_set(q, 0, pmcf->st.review_peek, 1, values);

        return ngx_http_payflow_db_run(r, q, "reading a review",
                                       ngx_http_payflow_reviews_peeked);
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.review_decide, 10, values);

    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q, "rejecting a review",
                                   ngx_http_payflow_reviews_decided);
}


/*
 * The payment in review, read: a sandbox payment's outcome is decided now
 * and recorded by the approval itself, in its transaction.
 */

static ngx_int_t
ngx_http_payflow_reviews_peeked(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                            *row;
    json_int_t                           amount;
    pf_pg_query_t                       *q2;
    const char                         **values;
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_main_conf_t        *pmcf;
    ngx_http_payflow_provider_result_t  *res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    values = ctx->money_values;

    row = ngx_http_payflow_db_result(q, 0);

    /*
     * Not (or no longer) in review: the approval itself answers, a replay
     * of its Idempotency-Key or 409.
     */

    if (PQntuples(row) == 1
        && ngx_strcmp(PQgetvalue(row, 0, 2), "sandbox") == 0)
    {
        amount = ngx_atoof((u_char *) PQgetvalue(row, 0, 0),
                           PQgetlength(row, 0, 0));

        res = ngx_palloc(r->pool,
                         sizeof(ngx_http_payflow_provider_result_t));

        if (res == NULL
            || ngx_http_payflow_sandbox_result(r->pool, amount,
                   ngx_strcmp(PQgetvalue(row, 0, 1), "manual") == 0,
                   &ctx->payment_id, res)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        values[6] = res->status;
        values[7] = res->code;
        values[8] = res->message;
        values[9] = ngx_http_payflow_nullable(r, &res->redirect_url);

        ctx->result = res;
    }

    q2 = ngx_http_payflow_db_query(r, 1, 1);
    if (q2 == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_payflow_db_set(q2, 0, pmcf->st.review_decide, 10, values);

    ctx->db_sql_ok = 1;

    return ngx_http_payflow_db_run(r, q2, "approving a review",
                                   ngx_http_payflow_reviews_decided);
}


/*
 * The payment left review: rejected, it is answered; approved, the
 * sandbox decides at once, a network provider is called as for a new
 * payment (routing is not asked again: the payment keeps its provider).
 */

static ngx_int_t
ngx_http_payflow_reviews_decided(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                            *row;
    ngx_str_t                            name;
    ngx_uint_t                           manual;
    json_int_t                           amount;
    const char                          *state;
    pf_pg_query_t                       *q2;
    ngx_http_payflow_ctx_t              *ctx;
    ngx_http_payflow_plan_t             *plan;
    ngx_http_payflow_provider_t         *pv;
    ngx_http_payflow_operation_t        *op;
    ngx_http_payflow_main_conf_t        *pmcf;
    ngx_http_payflow_provider_result_t   res;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (q->status == PF_PG_SQL_ERROR) {
        state = pf_pg_query_sqlstate(q);

        if (state && ngx_strcmp(state, "PF024") == 0) {
            return ngx_http_payflow_reviews_error(r,
                       NGX_HTTP_SERVICE_UNAVAILABLE, PF_ERROR_PROVIDER,
                       "provider_unavailable",
                       "the payment's provider is not configured for this "
                       "mode; it stays in review", "id");
        }

        if (state && ngx_strcmp(state, "PF023") == 0) {
            return ngx_http_payflow_reviews_error(r, NGX_HTTP_CONFLICT,
                       PF_ERROR_INVALID_REQUEST, "payment_not_in_review",
                       "no payment with this id is waiting for review",
                       "id");
        }

        return ngx_http_payflow_send_db_error(r, q);
    }

    row = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(row) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetvalue(row, 0, 8)[0] != 't') {
        /* another request's key */
        return ngx_http_payflow_idem_other(r, row);
    }

    /* what follows judges no SQL error of its own */
    ctx->db_sql_ok = 0;

    ngx_memzero(&res, sizeof(ngx_http_payflow_provider_result_t));

    amount = ngx_atoof((u_char *) PQgetvalue(row, 0, 9),
                       PQgetlength(row, 0, 9));
    manual = (ngx_strcmp(PQgetvalue(row, 0, 11), "manual") == 0);
    name.data = (u_char *) PQgetvalue(row, 0, 12);
    name.len = PQgetlength(row, 0, 12);

    if (ngx_strcmp(ctx->outcome, "canceled") == 0) {
        res.status = "canceled";

        q2 = ngx_http_payflow_db_query(r, ctx->idem_key.len ? 2 : 1, 1);

        if (q2 == NULL
            || ngx_http_payflow_payments_settle(r, q2, 0, &res, 0) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_payflow_db_run(r, q2, "answering a rejected review",
                                       ngx_http_payflow_payments_created);
    }

    ctx->created = 1;

    if (name.len == 7 && ngx_strncmp(name.data, "sandbox", 7) == 0) {

        /* the approval recorded the sandbox's answer: only the answer */

        if (ctx->result) {
            res = *(ngx_http_payflow_provider_result_t *) ctx->result;
        }

        q2 = ngx_http_payflow_db_query(r, ctx->idem_key.len ? 2 : 1, 1);

        if (q2 == NULL
            || ngx_http_payflow_payments_settle(r, q2, 0, &res, 0) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_payflow_db_run(r, q2, "answering an approved payment",
                                       ngx_http_payflow_payments_created);
    }

    pv = ngx_http_payflow_request_provider(r, &name, 0);

    if (pv == NULL) {
        /* its check verifies it once the provider is back in nginx.conf */
        return ngx_http_payflow_reviews_error(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, PF_ERROR_PROVIDER,
                   "provider_unavailable",
                   "the payment's provider is no longer configured; the "
                   "payment stays processing until it is verified", NULL);
    }

    plan = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_plan_t));
    op = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_operation_t));
    if (plan == NULL || op == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    plan->providers[plan->n++] = pv;
    plan->strategy = "review";
    plan->next = 1;
    plan->deadline = ngx_current_msec + pmcf->provider_deadline;
    ngx_str_set(&plan->reason, "approved in review");

    op->op = NGX_HTTP_PAYFLOW_OP_CHARGE;
    op->payment_id = ctx->payment_id;
    op->amount = amount;
    op->manual = manual;

#define ngx_http_payflow_review_text(col)                                     \
    (PQgetisnull(row, 0, col) ? NULL                                          \
     : (const char *) ngx_pstrdup(r->pool, &(ngx_str_t) {                     \
           PQgetlength(row, 0, col) + 1, (u_char *) PQgetvalue(row, 0, col) }))

    op->currency = ngx_http_payflow_review_text(10);
    op->payment_method = ngx_http_payflow_review_text(13);
    op->email = ngx_http_payflow_review_text(14);
    op->description = ngx_http_payflow_review_text(15);
    op->return_url = ngx_http_payflow_review_text(16);

    if (op->email == NULL && !PQgetisnull(row, 0, 17)
        && ngx_http_payflow_pii_email(r->pool, r->connection->log, pmcf,
                                      &ctx->auth.tenant_id,
                                      ctx->auth.livemode, &ctx->payment_id,
                                      PQgetvalue(row, 0, 17),
                                      PQgetvalue(row, 0, 18), &op->email)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#undef ngx_http_payflow_review_text

    if (op->currency == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    op->exponent = ngx_http_payflow_payments_exponent(op->currency);

    ctx->provider = pv;
    ctx->plan = plan;
    ctx->op = op;
    ctx->outcome = "processing";

    return ngx_http_payflow_payments_attempt(r);
}


static ngx_int_t
ngx_http_payflow_reviews_error(ngx_http_request_t *r, ngx_uint_t status,
    pf_error_type_e type, const char *code, const char *message,
    const char *param)
{
    pf_error_t  err;

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = status;
    err.type = type;
    err.code = code;
    err.message = message;
    err.param = param;

    return ngx_http_payflow_send_error(r, &err);
}
