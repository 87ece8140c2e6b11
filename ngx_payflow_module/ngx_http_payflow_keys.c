
/*
 * Copyright (C) PayFlow
 *
 * Tenants and API keys, for tenants (/v1/api_keys, their own keys in their
 * own mode) and for the operator (/v1/admin/...).  The same handlers serve
 * both; the scope comes from the credential.  Secrets are generated here,
 * returned once and never stored: the database gets the peppered hash.
 * Audit rows are written by the database's triggers in the same
 * transaction.
 */


#include "ngx_http_payflow_keys.h"
#include "ngx_http_payflow_auth.h"


/* times as whole unix seconds, rounded down like the expiry check */

#define NGX_HTTP_PAYFLOW_KEY_COLS                                             \
    "id, tenant_id, livemode, role, read_only, prefix, last4, description, " \
    "floor(extract(epoch FROM created_at))::bigint, "                        \
    "floor(extract(epoch FROM expires_at))::bigint, "                        \
    "floor(extract(epoch FROM revoked_at))::bigint, replaced_by, key_hash"

#define NGX_HTTP_PAYFLOW_KEY_HASH_COL  12

#define NGX_HTTP_PAYFLOW_TENANT_COLS                                          \
    "id, name, status, floor(extract(epoch FROM created_at))::bigint"

#define NGX_HTTP_PAYFLOW_MAX_GRACE     (7 * 86400)
#define NGX_HTTP_PAYFLOW_MAX_LIFETIME  (10 * 366 * 86400)


static ngx_int_t ngx_http_payflow_keys_secret(ngx_http_request_t *r,
    ngx_uint_t livemode, ngx_str_t *secret, char **hash, char **last4);
static json_t *ngx_http_payflow_key_secret_json(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_payflow_keys_create_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_keys_list_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_keys_get_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_keys_revoke_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_keys_roll_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_tenants_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_tenants_list_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);

static json_t *ngx_http_payflow_key_json(PGresult *res, int row);
static json_t *ngx_http_payflow_tenant_json(PGresult *res, int row);
static json_t *ngx_http_payflow_list_json(PGresult *res,
    const ngx_http_payflow_list_t *l,
    json_t *(*row)(PGresult *res, int row));
static ngx_int_t ngx_http_payflow_send_row(ngx_http_request_t *r,
    PGresult *res, json_t *(*row)(PGresult *res, int row),
    const char *missing);
static ngx_int_t ngx_http_payflow_not_found(ngx_http_request_t *r,
    const char *message);
static const char **ngx_http_payflow_values(ngx_http_request_t *r,
    pf_pg_stmt_t *st, const pf_pg_statement_t *statement, int n);
static json_t *ngx_http_payflow_col_str(PGresult *res, int row, int col);
static json_t *ngx_http_payflow_col_int(PGresult *res, int row, int col);
static const char *ngx_http_payflow_keys_below(ngx_http_payflow_ctx_t *ctx);
static ngx_int_t ngx_http_payflow_keys_above(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const char *role);


static const char  *ngx_http_payflow_key_fields[] = {
    "role", "read_only", "description", "expires_at", NULL
};

static const char  *ngx_http_payflow_admin_key_fields[] = {
    "mode", "role", "read_only", "description", "expires_at", NULL
};

static const char  *ngx_http_payflow_roll_fields[] = {
    "grace_period", NULL
};

static const char  *ngx_http_payflow_tenant_fields[] = {
    "name", NULL
};


ngx_int_t
ngx_http_payflow_keys_init(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_statements_t  *st;

    st = &pmcf->st;

    st->scope = pf_pg_statement_add(pmcf->db, "payflow_scope",
        "SELECT set_config('payflow.tenant_id', $1, true), "
        "set_config('payflow.livemode', $2, true), "
        "set_config('payflow.admin', $3, true), "
        "set_config('payflow.actor_type', $4, true), "
        "set_config('payflow.actor_id', $5, true), "
        "set_config('payflow.ip', $6, true), "
        "set_config('payflow.request_id', $7, true)", 7);

    st->tenant_insert = pf_pg_statement_add(pmcf->db, "payflow_tenant_insert",
        "INSERT INTO tenants (id, name) VALUES ($1, $2) "
        "RETURNING " NGX_HTTP_PAYFLOW_TENANT_COLS, 2);

    st->tenant_get = pf_pg_statement_add(pmcf->db, "payflow_tenant_get",
        "SELECT " NGX_HTTP_PAYFLOW_TENANT_COLS " FROM tenants "
        "WHERE id = $1", 1);

    st->tenant_list = pf_pg_statement_add(pmcf->db, "payflow_tenant_list",
        "SELECT " NGX_HTTP_PAYFLOW_TENANT_COLS " FROM tenants "
        "WHERE $1::text IS NULL OR (created_at, id) < "
        "(SELECT created_at, id FROM tenants WHERE id = $1) "
        "ORDER BY created_at DESC, id DESC LIMIT $2::int", 2);

    st->tenant_list_before = pf_pg_statement_add(pmcf->db,
        "payflow_tenant_list_before",
        "SELECT " NGX_HTTP_PAYFLOW_TENANT_COLS " FROM tenants "
        "WHERE (created_at, id) > "
        "(SELECT created_at, id FROM tenants WHERE id = $1) "
        "ORDER BY created_at, id LIMIT $2::int", 2);

    st->key_insert = pf_pg_statement_add(pmcf->db, "payflow_key_insert",
        "INSERT INTO api_keys (id, tenant_id, livemode, role, read_only, "
        "key_hash, prefix, last4, description, expires_at) "
        "SELECT $1, t.id, $3::boolean, $4, $5::boolean, $6, $7, $8, $9, "
        "to_timestamp($10::bigint) FROM tenants t WHERE t.id = $2 "
        "RETURNING " NGX_HTTP_PAYFLOW_KEY_COLS, 10);

    st->key_get = pf_pg_statement_add(pmcf->db, "payflow_key_get",
        "SELECT " NGX_HTTP_PAYFLOW_KEY_COLS " FROM api_keys "
        "WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)", 2);

    st->key_list = pf_pg_statement_add(pmcf->db, "payflow_key_list",
        "SELECT " NGX_HTTP_PAYFLOW_KEY_COLS " FROM api_keys "
        "WHERE tenant_id = $1 "
        "AND ($2::boolean IS NULL OR livemode = $2::boolean) "
        "AND ($3::text IS NULL OR (created_at, id) < "
        "(SELECT created_at, id FROM api_keys WHERE id = $3)) "
        "ORDER BY created_at DESC, id DESC LIMIT $4::int", 4);

    st->key_list_before = pf_pg_statement_add(pmcf->db,
        "payflow_key_list_before",
        "SELECT " NGX_HTTP_PAYFLOW_KEY_COLS " FROM api_keys "
        "WHERE tenant_id = $1 "
        "AND ($2::boolean IS NULL OR livemode = $2::boolean) "
        "AND (created_at, id) > "
        "(SELECT created_at, id FROM api_keys WHERE id = $3) "
        "ORDER BY created_at, id LIMIT $4::int", 4);

    st->key_revoke = pf_pg_statement_add(pmcf->db, "payflow_key_revoke",
        "UPDATE api_keys SET revoked_at = now() "
        "WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) "
        "AND ($3::text[] IS NULL OR role = ANY ($3::text[])) "
        "AND revoked_at IS NULL RETURNING key_hash", 3);

    st->key_roll_insert = pf_pg_statement_add(pmcf->db,
        "payflow_key_roll_insert",
        "INSERT INTO api_keys (id, tenant_id, livemode, role, read_only, "
        "key_hash, prefix, last4, description, expires_at) "
        "SELECT $3, o.tenant_id, o.livemode, o.role, o.read_only, "
        "CASE WHEN o.livemode THEN $6 ELSE $4 END, o.prefix, "
        "CASE WHEN o.livemode THEN $7 ELSE $5 END, o.description, "
        "o.expires_at FROM api_keys o "
        "WHERE o.id = $1 AND ($2::text IS NULL OR o.tenant_id = $2) "
        "AND ($8::text[] IS NULL OR o.role = ANY ($8::text[])) "
        "AND o.revoked_at IS NULL AND o.replaced_by IS NULL "
        "AND (o.expires_at IS NULL OR o.expires_at > now()) "
        "RETURNING " NGX_HTTP_PAYFLOW_KEY_COLS, 8);

    st->key_roll_update = pf_pg_statement_add(pmcf->db,
        "payflow_key_roll_update",
        "UPDATE api_keys SET replaced_by = $2, expires_at = "
        "least(coalesce(expires_at, 'infinity'), "
        "now() + make_interval(secs => $3::int)) "
        "WHERE id = $1 AND replaced_by IS NULL "
        "AND EXISTS (SELECT 1 FROM api_keys WHERE id = $2) "
        "RETURNING " NGX_HTTP_PAYFLOW_KEY_COLS, 3);

    st->key_state = pf_pg_statement_add(pmcf->db, "payflow_key_state",
        "SELECT revoked_at IS NOT NULL, replaced_by IS NOT NULL, role "
        "FROM api_keys WHERE id = $1 "
        "AND ($2::text IS NULL OR tenant_id = $2)", 2);

    if (st->scope == NULL || st->tenant_insert == NULL
        || st->tenant_get == NULL || st->tenant_list == NULL
        || st->tenant_list_before == NULL || st->key_insert == NULL
        || st->key_get == NULL || st->key_list == NULL
        || st->key_list_before == NULL || st->key_revoke == NULL
        || st->key_roll_insert == NULL || st->key_roll_update == NULL
        || st->key_state == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * POST /v1/api_keys                       (tenant: own tenant and mode)
 * POST /v1/admin/tenants/{id}/api_keys    (operator: any tenant, "mode")
 */

ngx_int_t
ngx_http_payflow_keys_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    char                          *hash, *last4;
    json_t                        *v;
    ngx_int_t                      rc;
    ngx_str_t                      id, description;
    ngx_uint_t                     admin, livemode, read_only;
    pf_error_t                     err;
    pf_pg_stmt_t                  *st;
    pf_pg_query_t                 *q;
    const char                   **values;
    json_int_t                     expires_at;
    ngx_http_payflow_role_e        role;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    admin = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN);

    rc = pf_json_check_fields(r->pool, ctx->body,
                              admin ? ngx_http_payflow_admin_key_fields
                                    : ngx_http_payflow_key_fields,
                              &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    livemode = ctx->auth.livemode;

    if (admin) {
        livemode = 0;
        v = json_object_get(ctx->body, "mode");

        if (v) {
            if (json_is_string(v)
                && ngx_strcmp(json_string_value(v), "live") == 0)
            {
                livemode = 1;

            } else if (!json_is_string(v)
                       || ngx_strcmp(json_string_value(v), "test") != 0)
            {
                pf_json_param_error(&err, "mode", "parameter_invalid",
                                    "mode must be \"test\" or \"live\"");
                return ngx_http_payflow_send_error(r, &err);
            }
        }
    }

    role = NGX_HTTP_PAYFLOW_ROLE_DEVELOPER;
    v = json_object_get(ctx->body, "role");

    if (v) {
        role = json_is_string(v)
               ? ngx_http_payflow_role_parse(json_string_value(v),
                                             json_string_length(v))
               : NGX_HTTP_PAYFLOW_ROLE_UNKNOWN;

        if (role == NGX_HTTP_PAYFLOW_ROLE_UNKNOWN) {
            pf_json_param_error(&err, "role", "parameter_invalid",
                                "role must be one of owner, admin, "
                                "developer, viewer");
            return ngx_http_payflow_send_error(r, &err);
        }
    }

    if (!admin && role < ctx->auth.role) {
        ngx_memzero(&err, sizeof(pf_error_t));
        err.status = NGX_HTTP_FORBIDDEN;
        err.type = PF_ERROR_PERMISSION;
        err.code = "role_not_allowed";
        err.message = "a key cannot create a key with a more powerful role "
                      "than its own";
        err.param = "role";
        return ngx_http_payflow_send_error(r, &err);
    }

    read_only = 0;
    v = json_object_get(ctx->body, "read_only");

    if (v) {
        if (!json_is_boolean(v)) {
            pf_json_param_error(&err, "read_only", "parameter_invalid",
                                "read_only must be a boolean");
            return ngx_http_payflow_send_error(r, &err);
        }

        read_only = json_is_true(v);
    }

    ngx_str_null(&description);
    v = json_object_get(ctx->body, "description");

    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > 200) {
            pf_json_param_error(&err, "description", "parameter_invalid",
                                "description must be a string of at most "
                                "200 bytes");
            return ngx_http_payflow_send_error(r, &err);
        }

        description.data = (u_char *) json_string_value(v);
        description.len = json_string_length(v);
    }

    expires_at = 0;
    v = json_object_get(ctx->body, "expires_at");

    if (v && !json_is_null(v)) {
        expires_at = json_is_integer(v) ? json_integer_value(v) : 0;

        if (expires_at <= ngx_time()
            || expires_at > ngx_time() + NGX_HTTP_PAYFLOW_MAX_LIFETIME)
        {
            pf_json_param_error(&err, "expires_at", "parameter_invalid",
                                "expires_at must be a future unix time "
                                "within ten years");
            return ngx_http_payflow_send_error(r, &err);
        }
    }

    if (pf_id_generate(r->pool, "key_", &id) != NGX_OK
        || ngx_http_payflow_keys_secret(r, livemode, &ctx->secret, &hash,
                                        &last4)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st = ngx_http_payflow_db_stmt(q, 0);

    values = ngx_http_payflow_values(r, st, pmcf->st.key_insert, 10);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &id);
    values[1] = ngx_http_payflow_db_str(r->pool,
                                        admin ? &ctx->params[0]
                                              : &ctx->auth.tenant_id);
    values[2] = livemode ? "true" : "false";
    values[3] = ngx_http_payflow_role_name(role);
    values[4] = read_only ? "true" : "false";
    values[5] = hash;
    values[6] = livemode ? "pf_live_" : "pf_test_";
    values[7] = last4;
    values[8] = ngx_http_payflow_nullable(r, &description);
    values[9] = expires_at ? ngx_http_payflow_int(r, expires_at) : NULL;

    if (values[0] == NULL || values[1] == NULL
        || (description.len && values[8] == NULL)
        || (expires_at && values[9] == NULL))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_db_run(r, q, "creating a key",
                                   ngx_http_payflow_keys_create_ok);
}


static ngx_int_t
ngx_http_payflow_keys_create_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult  *res;

    res = ngx_http_payflow_db_result(q, 0);

    if (PQntuples(res) != 1) {
        return ngx_http_payflow_not_found(r, "no such tenant");
    }

    return ngx_http_payflow_send_data(r, NGX_HTTP_OK,
                                      ngx_http_payflow_key_secret_json(r,
                                                                       res));
}


/* the new key, with its secret: the only time anyone sees it */

static json_t *
ngx_http_payflow_key_secret_json(ngx_http_request_t *r, PGresult *res)
{
    json_t                  *key;
    ngx_str_t               *secret;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    key = ngx_http_payflow_key_json(res, 0);
    if (key == NULL) {
        return NULL;
    }

    secret = (PQgetvalue(res, 0, 2)[0] == 't' && ctx->secret_live.len)
             ? &ctx->secret_live : &ctx->secret;

    if (json_object_set_new(key, "secret",
                            json_stringn((char *) secret->data, secret->len))
        != 0)
    {
        json_decref(key);
        return NULL;
    }

    return key;
}


/*
 * GET /v1/api_keys                        (own tenant and mode)
 * GET /v1/admin/tenants/{id}/api_keys     (both modes)
 */

ngx_int_t
ngx_http_payflow_keys_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                      rc;
    ngx_uint_t                     admin;
    pf_error_t                     err;
    pf_pg_stmt_t                  *st;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_list_t       *l;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    l = ngx_palloc(r->pool, sizeof(ngx_http_payflow_list_t));
    if (l == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_list_args(r, l, &err);
    if (rc != NGX_OK) {
        return ngx_http_payflow_send_error(r, &err);
    }

    admin = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN);

    /* the operator names the tenant: it must exist, or this is a 404 */

    q = ngx_http_payflow_db_query(r, 2, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 0),
                                     pmcf->st.tenant_get, 1);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool,
                                        admin ? &ctx->params[0]
                                              : &ctx->auth.tenant_id);

    st = ngx_http_payflow_db_stmt(q, 1);

    values = ngx_http_payflow_values(r, st,
                                     l->before.len ? pmcf->st.key_list_before
                                                   : pmcf->st.key_list, 4);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool,
                                        admin ? &ctx->params[0]
                                              : &ctx->auth.tenant_id);
    values[1] = admin ? NULL : (ctx->auth.livemode ? "true" : "false");
    values[2] = ngx_http_payflow_nullable(r, l->before.len ? &l->before
                                                           : &l->after);
    values[3] = ngx_http_payflow_int(r, l->limit + 1);

    if (values[0] == NULL || values[3] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->route = l;

    return ngx_http_payflow_db_run(r, q, "listing keys",
                                   ngx_http_payflow_keys_list_ok);
}


static ngx_int_t
ngx_http_payflow_keys_list_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN
        && PQntuples(ngx_http_payflow_db_result(q, 0)) != 1)
    {
        return ngx_http_payflow_not_found(r, "no such tenant");
    }

    return ngx_http_payflow_send_data(r, NGX_HTTP_OK,
               ngx_http_payflow_list_json(ngx_http_payflow_db_result(q, 1),
                                          ctx->route,
                                          ngx_http_payflow_key_json));
}


/* GET /v1/api_keys/{id}, GET /v1/admin/api_keys/{id} */

ngx_int_t
ngx_http_payflow_keys_get(ngx_http_request_t *r, ngx_http_payflow_ctx_t *ctx)
{
    pf_pg_stmt_t                  *st;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st = ngx_http_payflow_db_stmt(q, 0);

    values = ngx_http_payflow_values(r, st, pmcf->st.key_get, 2);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    values[1] = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN)
                ? NULL
                : ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);

    return ngx_http_payflow_db_run(r, q, "reading a key",
                                   ngx_http_payflow_keys_get_ok);
}


static ngx_int_t
ngx_http_payflow_keys_get_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    /* another tenant's key is exactly as absent as a missing one */

    return ngx_http_payflow_send_row(r, ngx_http_payflow_db_result(q, 0),
                                     ngx_http_payflow_key_json,
                                     "no such API key");
}


/* POST /v1/api_keys/{id}/revoke, POST /v1/admin/api_keys/{id}/revoke */

ngx_int_t
ngx_http_payflow_keys_revoke(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    char                          *id, *tenant;
    pf_error_t                     err;
    ngx_int_t                      rc;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;
    static const char             *none[] = { NULL };

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body, none, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    id = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    tenant = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN)
             ? NULL
             : ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);

    q = ngx_http_payflow_db_query(r, 2, 1);
    if (q == NULL || id == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 0),
                                     pmcf->st.key_revoke, 3);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = id;
    values[1] = tenant;
    values[2] = ngx_http_payflow_keys_below(ctx);

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 1),
                                     pmcf->st.key_get, 2);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = id;
    values[1] = tenant;

    return ngx_http_payflow_db_run(r, q, "revoking a key",
                                   ngx_http_payflow_keys_revoke_ok);
}


static ngx_int_t
ngx_http_payflow_keys_revoke_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_int_t                rc;
    PGresult                *res, *key;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    res = ngx_http_payflow_db_result(q, 0);
    key = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(res) == 1) {
        /* this node at once; the others when the NOTIFY arrives */
        ngx_http_payflow_auth_forget(r, (u_char *) PQgetvalue(res, 0, 0));

    } else if (PQntuples(key) == 1) {
        rc = ngx_http_payflow_keys_above(r, ctx, PQgetvalue(key, 0, 3));
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    return ngx_http_payflow_send_row(r, key, ngx_http_payflow_key_json,
                                     "no such API key");
}


/*
 * POST /v1/api_keys/{id}/roll {"grace_period": seconds}: a new secret
 * with the same role and mode; the old one keeps working for the grace
 * period (default 24 h, at most 7 days, 0 ends it now).
 */

ngx_int_t
ngx_http_payflow_keys_roll(ngx_http_request_t *r, ngx_http_payflow_ctx_t *ctx)
{
    char                          *id, *new_id, *tenant, *hash, *last4;
    char                          *hash_live, *last4_live;
    json_t                        *v;
    ngx_int_t                      rc;
    ngx_str_t                      nid;
    json_int_t                     grace;
    pf_error_t                     err;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body,
                              ngx_http_payflow_roll_fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    grace = 86400;
    v = json_object_get(ctx->body, "grace_period");

    if (v) {
        grace = json_is_integer(v) ? json_integer_value(v) : -1;

        if (grace < 0 || grace > NGX_HTTP_PAYFLOW_MAX_GRACE) {
            pf_json_param_error(&err, "grace_period", "parameter_invalid",
                                "grace_period must be an integer number of "
                                "seconds from 0 to 604800");
            return ngx_http_payflow_send_error(r, &err);
        }
    }

    /* the old key's mode is known only to the database: mint for both */

    if (pf_id_generate(r->pool, "key_", &nid) != NGX_OK
        || ngx_http_payflow_keys_secret(r, 0, &ctx->secret, &hash, &last4)
           != NGX_OK
        || ngx_http_payflow_keys_secret(r, 1, &ctx->secret_live, &hash_live,
                                        &last4_live)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    id = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);
    new_id = ngx_http_payflow_db_str(r->pool, &nid);
    tenant = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN)
             ? NULL
             : ngx_http_payflow_db_str(r->pool, &ctx->auth.tenant_id);

    q = ngx_http_payflow_db_query(r, 3, 1);
    if (q == NULL || id == NULL || new_id == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 0),
                                     pmcf->st.key_roll_insert, 8);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = id;
    values[1] = tenant;
    values[2] = new_id;
    values[3] = hash;
    values[4] = last4;
    values[5] = hash_live;
    values[6] = last4_live;
    values[7] = ngx_http_payflow_keys_below(ctx);

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 1),
                                     pmcf->st.key_roll_update, 3);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = id;
    values[1] = new_id;
    values[2] = ngx_http_payflow_int(r, grace);

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 2),
                                     pmcf->st.key_state, 2);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = id;
    values[1] = tenant;

    return ngx_http_payflow_db_run(r, q, "rolling a key",
                                   ngx_http_payflow_keys_roll_ok);
}


static ngx_int_t
ngx_http_payflow_keys_roll_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    json_t                  *key, *old;
    ngx_int_t                rc;
    PGresult                *res, *upd, *state;
    pf_error_t               err;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    res = ngx_http_payflow_db_result(q, 0);
    upd = ngx_http_payflow_db_result(q, 1);

    if (PQntuples(res) != 1 || PQntuples(upd) != 1) {

        state = ngx_http_payflow_db_result(q, 2);

        if (PQntuples(state) != 1) {
            return ngx_http_payflow_not_found(r, "no such API key");
        }

        rc = ngx_http_payflow_keys_above(r, ctx, PQgetvalue(state, 0, 2));
        if (rc != NGX_DECLINED) {
            return rc;
        }

        ngx_memzero(&err, sizeof(pf_error_t));
        err.status = NGX_HTTP_CONFLICT;
        err.type = PF_ERROR_INVALID_REQUEST;
        err.code = "api_key_not_active";
        err.message = "only an active key that was not rolled before can "
                      "be rolled";

        return ngx_http_payflow_send_error(r, &err);
    }

    ngx_http_payflow_auth_forget(r, (u_char *) PQgetvalue(upd, 0,
                                             NGX_HTTP_PAYFLOW_KEY_HASH_COL));

    key = ngx_http_payflow_key_secret_json(r, res);
    old = ngx_http_payflow_key_json(upd, 0);

    if (key == NULL || old == NULL) {
        json_decref(key);
        json_decref(old);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* takes "old" whatever happens */
    if (json_object_set_new(key, "previous_key", old) != 0) {
        json_decref(key);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_data(r, NGX_HTTP_OK, key);
}


/* POST /v1/admin/tenants {"name": ...} */

ngx_int_t
ngx_http_payflow_tenants_create(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    json_t                        *v;
    ngx_int_t                      rc;
    ngx_str_t                      id, name;
    pf_error_t                     err;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body,
                              ngx_http_payflow_tenant_fields, &err);
    if (rc != NGX_OK) {
        return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR
                               : ngx_http_payflow_send_error(r, &err);
    }

    v = json_object_get(ctx->body, "name");

    if (v == NULL || !json_is_string(v) || json_string_length(v) == 0
        || json_string_length(v) > 200)
    {
        pf_json_param_error(&err, "name",
                            v ? "parameter_invalid" : "parameter_missing",
                            "name must be a string of 1 to 200 bytes");
        return ngx_http_payflow_send_error(r, &err);
    }

    name.data = (u_char *) json_string_value(v);
    name.len = json_string_length(v);

    if (pf_id_generate(r->pool, "ten_", &id) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 0),
                                     pmcf->st.tenant_insert, 2);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &id);
    values[1] = ngx_http_payflow_db_str(r->pool, &name);

    if (values[0] == NULL || values[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_db_run(r, q, "reading tenants",
                                   ngx_http_payflow_tenants_ok);
}


/* GET /v1/admin/tenants/{id} */

ngx_int_t
ngx_http_payflow_tenants_get(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 0),
                                     pmcf->st.tenant_get, 1);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_db_str(r->pool, &ctx->params[0]);

    return ngx_http_payflow_db_run(r, q, "reading tenants",
                                   ngx_http_payflow_tenants_ok);
}


static ngx_int_t
ngx_http_payflow_tenants_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    return ngx_http_payflow_send_row(r, ngx_http_payflow_db_result(q, 0),
                                     ngx_http_payflow_tenant_json,
                                     "no such tenant");
}


/* GET /v1/admin/tenants */

ngx_int_t
ngx_http_payflow_tenants_list(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_int_t                      rc;
    pf_error_t                     err;
    pf_pg_query_t                 *q;
    const char                   **values;
    ngx_http_payflow_list_t       *l;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    l = ngx_palloc(r->pool, sizeof(ngx_http_payflow_list_t));
    if (l == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_payflow_list_args(r, l, &err);
    if (rc != NGX_OK) {
        return ngx_http_payflow_send_error(r, &err);
    }

    q = ngx_http_payflow_db_query(r, 1, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values = ngx_http_payflow_values(r, ngx_http_payflow_db_stmt(q, 0),
                                     l->before.len
                                     ? pmcf->st.tenant_list_before
                                     : pmcf->st.tenant_list, 2);
    if (values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = ngx_http_payflow_nullable(r, l->before.len ? &l->before
                                                           : &l->after);
    values[1] = ngx_http_payflow_int(r, l->limit + 1);

    ctx->route = l;

    return ngx_http_payflow_db_run(r, q, "listing tenants",
                                   ngx_http_payflow_tenants_list_ok);
}


static ngx_int_t
ngx_http_payflow_tenants_list_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    return ngx_http_payflow_send_data(r, NGX_HTTP_OK,
               ngx_http_payflow_list_json(ngx_http_payflow_db_result(q, 0),
                                          ctx->route,
                                          ngx_http_payflow_tenant_json));
}


static ngx_int_t
ngx_http_payflow_keys_secret(ngx_http_request_t *r, ngx_uint_t livemode,
    ngx_str_t *secret, char **hash, char **last4)
{
    u_char                         digest[PF_SHA256_LEN];
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    secret->data = ngx_pnalloc(r->pool, PF_KEY_LEN);
    *hash = ngx_pnalloc(r->pool, 2 * PF_SHA256_LEN + 1);
    *last4 = ngx_pnalloc(r->pool, 5);

    if (secret->data == NULL || *hash == NULL || *last4 == NULL) {
        return NGX_ERROR;
    }

    secret->len = PF_KEY_LEN;

    if (pf_key_generate(secret->data, livemode) != NGX_OK
        || pf_hmac_sha256(&pmcf->hmac, secret->data, secret->len, digest)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    *ngx_hex_dump((u_char *) *hash, digest, PF_SHA256_LEN) = '\0';
    *ngx_cpymem(*last4, secret->data + PF_KEY_LEN - 4, 4) = '\0';

    return NGX_OK;
}


static json_t *
ngx_http_payflow_key_json(PGresult *res, int row)
{
    return json_pack("{s:s, s:s, s:s, s:b, s:s, s:b, s:s, s:s, s:o, s:o,"
                     " s:o, s:o, s:o}",
                     "id", PQgetvalue(res, row, 0),
                     "object", "api_key",
                     "tenant_id", PQgetvalue(res, row, 1),
                     "livemode", PQgetvalue(res, row, 2)[0] == 't',
                     "role", PQgetvalue(res, row, 3),
                     "read_only", PQgetvalue(res, row, 4)[0] == 't',
                     "prefix", PQgetvalue(res, row, 5),
                     "last4", PQgetvalue(res, row, 6),
                     "description", ngx_http_payflow_col_str(res, row, 7),
                     "created", ngx_http_payflow_col_int(res, row, 8),
                     "expires_at", ngx_http_payflow_col_int(res, row, 9),
                     "revoked_at", ngx_http_payflow_col_int(res, row, 10),
                     "replaced_by", ngx_http_payflow_col_str(res, row, 11));
}


static json_t *
ngx_http_payflow_tenant_json(PGresult *res, int row)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:o}",
                     "id", PQgetvalue(res, row, 0),
                     "object", "tenant",
                     "name", PQgetvalue(res, row, 1),
                     "status", PQgetvalue(res, row, 2),
                     "created", ngx_http_payflow_col_int(res, row, 3));
}


/*
 * Rows were fetched with limit + 1 to learn has_more.  An ending_before
 * page comes in ascending order and is turned around.
 */

static json_t *
ngx_http_payflow_list_json(PGresult *res, const ngx_http_payflow_list_t *l,
    json_t *(*row)(PGresult *res, int row))
{
    int      i, n;
    json_t  *data, *item;

    data = json_array();
    if (data == NULL) {
        return NULL;
    }

    n = ngx_min((ngx_uint_t) PQntuples(res), l->limit);

    for (i = 0; i < n; i++) {
        item = row(res, l->before.len ? n - 1 - i : i);

        if (item == NULL || json_array_append_new(data, item) != 0) {
            json_decref(data);
            return NULL;
        }
    }

    return json_pack("{s:s, s:o, s:b}",
                     "object", "list",
                     "data", data,
                     "has_more", (ngx_uint_t) PQntuples(res) > l->limit);
}


/*
 * The roles a caller may act on (roll, revoke), as a text[] parameter:
 * its own and those below it; NULL (any) for the operator.
 */

static const char *
ngx_http_payflow_keys_below(ngx_http_payflow_ctx_t *ctx)
{
    static const char  *below[] = {
        "{owner,admin,developer,viewer}",
        "{admin,developer,viewer}",
        "{developer,viewer}",
        "{viewer}"
    };

    if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN) {
        return NULL;
    }

    if (ctx->auth.role >= NGX_HTTP_PAYFLOW_ROLE_UNKNOWN) {
        return "{}";
    }

    return below[ctx->auth.role];
}


/* NGX_DECLINED if the caller may act on a key of this role, or a 403 */

static ngx_int_t
ngx_http_payflow_keys_above(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const char *role)
{
    pf_error_t  err;

    if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN
        || ngx_http_payflow_role_parse(role, ngx_strlen(role))
           >= ctx->auth.role)
    {
        return NGX_DECLINED;
    }

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_FORBIDDEN;
    err.type = PF_ERROR_PERMISSION;
    err.code = "role_not_allowed";
    err.message = "a key cannot act on a key with a more powerful role "
                  "than its own";
    err.param = "id";

    return ngx_http_payflow_send_error(r, &err);
}


/* the one row a statement found, or a 404 */

static ngx_int_t
ngx_http_payflow_send_row(ngx_http_request_t *r, PGresult *res,
    json_t *(*row)(PGresult *res, int row), const char *missing)
{
    if (PQntuples(res) != 1) {
        return ngx_http_payflow_not_found(r, missing);
    }

    return ngx_http_payflow_send_data(r, NGX_HTTP_OK, row(res, 0));
}


static ngx_int_t
ngx_http_payflow_not_found(ngx_http_request_t *r, const char *message)
{
    pf_error_t  err;

    ngx_memzero(&err, sizeof(pf_error_t));

    err.status = NGX_HTTP_NOT_FOUND;
    err.type = PF_ERROR_INVALID_REQUEST;
    err.code = "resource_missing";
    err.message = message;
    err.param = "id";

    return ngx_http_payflow_send_error(r, &err);
}


static const char **
ngx_http_payflow_values(ngx_http_request_t *r, pf_pg_stmt_t *st,
    const pf_pg_statement_t *statement, int n)
{
    st->statement = statement;
    st->nparams = n;
    st->values = ngx_pcalloc(r->pool, n * sizeof(char *));

    return st->values;
}


static json_t *
ngx_http_payflow_col_str(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null()
                                      : json_string(PQgetvalue(res, row, col));
}


static json_t *
ngx_http_payflow_col_int(PGresult *res, int row, int col)
{
    char  *v;

    if (PQgetisnull(res, row, col)) {
        return json_null();
    }

    v = PQgetvalue(res, row, col);

    return json_integer((json_int_t) ngx_atotm((u_char *) v,
                                               ngx_strlen(v)));
}
