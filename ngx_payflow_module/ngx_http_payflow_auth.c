
/*
 * Copyright (C) PayFlow
 *
 * Authentication in the access phase of PayFlow locations.
 *
 *   Authorization: Bearer pf_test_... | pf_live_...   API key
 *   Authorization: Bearer <header>.<payload>.<sig>     JWT (dashboards)
 *   Authorization: Bearer <admin secret>               payflow_admin only
 *
 * An API key is checked for shape and checksum first (no lookup for junk),
 * then hashed with the pepper and looked up: static keys from nginx.conf,
 * the shared-memory cache, and only on a miss PostgreSQL, without blocking:
 * the request waits in the access phase and resumes when the row arrives.
 */


#include "ngx_http_payflow_auth.h"
#include "ngx_http_payflow_keycache.h"
#include "ngx_http_payflow_metrics.h"

#include <openssl/crypto.h>


#define NGX_HTTP_PAYFLOW_DEFAULT_CACHE_SIZE  (1024 * 1024)


static void ngx_http_payflow_kek_wipe(void *data);
static ngx_int_t ngx_http_payflow_authenticate(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
static ngx_int_t ngx_http_payflow_auth_key(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_http_payflow_auth_jwt(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_http_payflow_auth_admin(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_http_payflow_auth_tenant(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);
static ngx_int_t ngx_http_payflow_auth_tenant_entry(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_http_payflow_key_entry_t *entry);
static ngx_int_t ngx_http_payflow_tenant_hash(
    ngx_http_payflow_main_conf_t *pmcf, u_char *id, size_t len,
    u_char *hash);
static ngx_int_t ngx_http_payflow_auth_query(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const pf_pg_statement_t *statement,
    char *value);
static void ngx_http_payflow_auth_key_row(PGresult *res,
    ngx_http_payflow_key_entry_t *entry);
static void ngx_http_payflow_auth_tenant_row(ngx_http_request_t *r,
    PGresult *res, ngx_http_payflow_key_entry_t *entry);
static ngx_int_t ngx_http_payflow_auth_entry(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_http_payflow_key_entry_t *entry,
    ngx_uint_t livemode);
static void ngx_http_payflow_auth_db_done(pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_auth_fail(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message);
static void ngx_http_payflow_auth_notify(void *data, const char *payload);
static ngx_int_t ngx_http_payflow_hex_decode(u_char *dst, u_char *src,
    size_t len);


static const char  *ngx_http_payflow_roles[] = {
    "owner", "admin", "developer", "viewer"
};


const char *
ngx_http_payflow_role_name(ngx_http_payflow_role_e role)
{
    return role < NGX_HTTP_PAYFLOW_ROLE_UNKNOWN
           ? ngx_http_payflow_roles[role] : "";
}


ngx_http_payflow_role_e
ngx_http_payflow_role_parse(const char *name, size_t len)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_PAYFLOW_ROLE_UNKNOWN; i++) {
        if (ngx_strlen(ngx_http_payflow_roles[i]) == len
            && ngx_strncmp(ngx_http_payflow_roles[i], name, len) == 0)
        {
            return (ngx_http_payflow_role_e) i;
        }
    }

    return NGX_HTTP_PAYFLOW_ROLE_UNKNOWN;
}


ngx_uint_t
ngx_http_payflow_role_perms(ngx_http_payflow_role_e role,
    ngx_uint_t read_only)
{
    ngx_uint_t  perms;

    switch (role) {

    case NGX_HTTP_PAYFLOW_ROLE_OWNER:
    case NGX_HTTP_PAYFLOW_ROLE_ADMIN:
        perms = NGX_HTTP_PAYFLOW_PERM_READ|NGX_HTTP_PAYFLOW_PERM_WRITE
                |NGX_HTTP_PAYFLOW_PERM_MANAGE;
        break;

    case NGX_HTTP_PAYFLOW_ROLE_DEVELOPER:
        perms = NGX_HTTP_PAYFLOW_PERM_READ|NGX_HTTP_PAYFLOW_PERM_WRITE;
        break;

    case NGX_HTTP_PAYFLOW_ROLE_VIEWER:
        perms = NGX_HTTP_PAYFLOW_PERM_READ;
        break;

    default:
        perms = 0;
    }

    return read_only ? (perms & NGX_HTTP_PAYFLOW_PERM_READ) : perms;
}


/* payflow_key_pepper file=<path> | env=<NAME>; */

char *
ngx_http_payflow_pepper(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    ngx_str_t  *value;

    (void) cmd;

    if (pmcf->pepper.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    return pf_conf_secret(cf, "payflow_key_pepper", &value[1], 32,
                          &pmcf->pepper);
}


/* payflow_kek <id> file=<path> | env=<NAME> [current] */

char *
ngx_http_payflow_kek(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    char                *rv;
    ngx_int_t            rc;
    ngx_str_t           *value, hex;
    ngx_uint_t           current;
    ngx_pool_cleanup_t  *cln;

    (void) cmd;

    value = cf->args->elts;
    current = 0;

    if (cf->args->nelts == 4) {
        if (ngx_strcmp(value[3].data, "current") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_kek: invalid parameter \"%V\", "
                               "expected \"current\"", &value[3]);
            return NGX_CONF_ERROR;
        }

        current = 1;
    }

    if (pmcf->keyring.keks.elts == NULL) {
        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_http_payflow_kek_wipe;
        cln->data = &pmcf->keyring;
    }

    rv = pf_conf_secret(cf, "payflow_kek", &value[2], 1, &hex);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rc = pf_keyring_add(cf, &pmcf->keyring, &value[1], &hex, current);

    OPENSSL_cleanse(hex.data, hex.len);

    switch (rc) {

    case NGX_OK:
        return NGX_CONF_OK;

    case NGX_DECLINED:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_kek: the id \"%V\" must be 1 to 32 "
                           "letters, digits, \"_\" or \"-\"", &value[1]);
        return NGX_CONF_ERROR;

    case NGX_BUSY:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_kek: \"%V\" is duplicate", &value[1]);
        return NGX_CONF_ERROR;

    case NGX_ABORT:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_kek: the key in \"%V\" is not 64 hex "
                           "digits (32 bytes; scripts/pf-kek new makes "
                           "one)", &value[2]);
        return NGX_CONF_ERROR;

    case NGX_AGAIN:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_kek: only one key may be \"current\"");
        return NGX_CONF_ERROR;

    default:
        return NGX_CONF_ERROR;
    }
}


static void
ngx_http_payflow_kek_wipe(void *data)
{
    pf_keyring_t *ring = data;

    ngx_uint_t   i;
    pf_kek_t    *kek;

    kek = ring->keks.elts;

    for (i = 0; i < ring->keks.nelts; i++) {
        OPENSSL_cleanse(kek[i].key, sizeof(kek[i].key));
    }
}


/*
 * payflow_key_cache zone=<name>:<size> [ttl=<time>] [negative_ttl=<time>]
 *     [negative_max=<n>];
 */

char *
ngx_http_payflow_key_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    ssize_t      size;
    ngx_int_t    n, rc;
    ngx_str_t   *value, name, s;
    ngx_uint_t   i;

    (void) cmd;

    if (pmcf->keycache) {
        return "is duplicate";
    }

    value = cf->args->elts;
    ngx_str_null(&name);
    size = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        rc = pf_conf_zone(&value[i], &name, &size);

        if (rc == NGX_ERROR) {
            goto invalid;
        }

        if (rc == NGX_OK) {
            continue;
        }

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0
            || ngx_strncmp(value[i].data, "negative_ttl=", 13) == 0)
        {
            s.data = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            s.len = value[i].data + value[i].len - s.data;

            n = ngx_parse_time(&s, 1);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            if (value[i].data[0] == 't') {
                pmcf->cache_ttl = n;

            } else {
                pmcf->negative_ttl = n;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "negative_max=", 13) == 0) {
            n = ngx_atoi(value[i].data + 13, value[i].len - 13);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            pmcf->negative_max = n;
            continue;
        }

        goto invalid;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_key_cache: \"zone=\" is required");
        return NGX_CONF_ERROR;
    }

    pmcf->keycache = ngx_http_payflow_keycache_add(cf, &name, size);

    return pmcf->keycache ? NGX_CONF_OK : NGX_CONF_ERROR;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_key_cache: invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * payflow_static_key <hex hash> tenant=<id> mode=test|live role=<role>
 *     [read_only] [id=<key id>];
 */

char *
ngx_http_payflow_static_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    ngx_str_t                      *value, v;
    ngx_uint_t                      i, mode;
    ngx_http_payflow_static_key_t  *sk;

    (void) cmd;

    value = cf->args->elts;

    sk = ngx_array_push(&pmcf->static_keys);
    if (sk == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(sk, sizeof(ngx_http_payflow_static_key_t));

    if (value[1].len != 2 * PF_SHA256_LEN
        || ngx_http_payflow_hex_decode(sk->hash, value[1].data, value[1].len)
           != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_static_key: invalid key hash \"%V\", "
                           "expected 64 hex digits (scripts/pf-key)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    mode = 2;
    sk->auth.credential = NGX_HTTP_PAYFLOW_CRED_STATIC_KEY;
    sk->auth.role = NGX_HTTP_PAYFLOW_ROLE_UNKNOWN;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "tenant=", 7) == 0) {
            sk->auth.tenant_id.data = value[i].data + 7;
            sk->auth.tenant_id.len = value[i].len - 7;
            continue;
        }

        if (ngx_strcmp(value[i].data, "mode=test") == 0) {
            mode = 0;
            continue;
        }

        if (ngx_strcmp(value[i].data, "mode=live") == 0) {
            mode = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "role=", 5) == 0) {
            sk->auth.role = ngx_http_payflow_role_parse(
                                        (char *) value[i].data + 5,
                                        value[i].len - 5);
            if (sk->auth.role == NGX_HTTP_PAYFLOW_ROLE_UNKNOWN) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "read_only") == 0) {
            sk->auth.read_only = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "id=", 3) == 0) {
            sk->auth.key_id.data = value[i].data + 3;
            sk->auth.key_id.len = value[i].len - 3;
            continue;
        }

        goto invalid;
    }

    if (sk->auth.tenant_id.len == 0 || sk->auth.tenant_id.len > 64
        || mode == 2 || sk->auth.role == NGX_HTTP_PAYFLOW_ROLE_UNKNOWN)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_static_key: \"tenant=\", \"mode=\" and "
                           "\"role=\" are required");
        return NGX_CONF_ERROR;
    }

    if (sk->auth.key_id.len == 0) {
        /* a stable id from the hash, which is not secret */
        v.len = sizeof("key_static_") - 1 + 16;
        v.data = ngx_pnalloc(cf->pool, v.len);
        if (v.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_hex_dump(ngx_cpymem(v.data, "key_static_",
                                sizeof("key_static_") - 1),
                     sk->hash, 8);
        sk->auth.key_id = v;
    }

    sk->auth.livemode = mode;
    sk->auth.perms = ngx_http_payflow_role_perms(sk->auth.role,
                                                 sk->auth.read_only);

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_static_key: invalid parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/* payflow_admin_key <hex hash>; */

char *
ngx_http_payflow_admin_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    u_char     *hash;
    ngx_str_t  *value;

    (void) cmd;

    value = cf->args->elts;

    hash = ngx_array_push(&pmcf->admin_keys);
    if (hash == NULL) {
        return NGX_CONF_ERROR;
    }

    if (value[1].len != 2 * PF_SHA256_LEN
        || ngx_http_payflow_hex_decode(hash, value[1].data, value[1].len)
           != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_admin_key: invalid key hash \"%V\", "
                           "expected 64 hex digits (scripts/pf-key admin)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* payflow_jwt_key <name> alg=<alg> file=<path>; */

char *
ngx_http_payflow_jwt_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    ngx_str_t  *value, alg, file;

    (void) cmd;

    value = cf->args->elts;

    if (ngx_strncmp(value[2].data, "alg=", 4) != 0
        || ngx_strncmp(value[3].data, "file=", 5) != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt_key: expected "
                           "\"<name> alg=<alg> file=<path>\"");
        return NGX_CONF_ERROR;
    }

    alg.data = value[2].data + 4;
    alg.len = value[2].len - 4;
    file.data = value[3].data + 5;
    file.len = value[3].len - 5;

    return pf_jwt_key_add(cf, &pmcf->jwt, &value[1], &alg, &file);
}


/* payflow_jwt [issuer=<iss>] [audience=<aud>] [leeway=<time>]; */

char *
ngx_http_payflow_jwt(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    time_t       leeway;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    (void) cmd;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "issuer=", 7) == 0) {
            pmcf->jwt.issuer.data = value[i].data + 7;
            pmcf->jwt.issuer.len = value[i].len - 7;
            continue;
        }

        if (ngx_strncmp(value[i].data, "audience=", 9) == 0) {
            pmcf->jwt.audience.data = value[i].data + 9;
            pmcf->jwt.audience.len = value[i].len - 9;
            continue;
        }

        if (ngx_strncmp(value[i].data, "leeway=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            leeway = ngx_parse_time(&s, 1);
            if (leeway == (time_t) NGX_ERROR || leeway > 300) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "payflow_jwt: invalid leeway \"%V\", "
                                   "at most 5m", &value[i]);
                return NGX_CONF_ERROR;
            }

            pmcf->jwt.leeway = leeway;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt: invalid parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
ngx_http_payflow_auth_init_main_conf(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_str_t  name = ngx_string("payflow_keys");

    ngx_conf_init_value(pmcf->cache_ttl, 60);
    ngx_conf_init_value(pmcf->negative_ttl, 10);
    ngx_conf_init_uint_value(pmcf->negative_max, 1024);

    if (pmcf->jwt.keys.nelts && pmcf->jwt.audience.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_jwt_key\" requires \"payflow_jwt "
                           "audience=<aud>\": tokens meant for another "
                           "service must be refused");
        return NGX_CONF_ERROR;
    }

    if (pmcf->pepper.len && pmcf->keycache == NULL) {
        pmcf->keycache = ngx_http_payflow_keycache_add(cf, &name,
                                         NGX_HTTP_PAYFLOW_DEFAULT_CACHE_SIZE);
        if (pmcf->keycache == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_payflow_auth_init(ngx_conf_t *cf, ngx_http_payflow_main_conf_t *pmcf)
{
    pmcf->st.authenticate = pf_pg_statement_add(pmcf->db,
        "payflow_authenticate",
        "SELECT key_id, tenant_id, livemode, role, read_only, expires_at, "
        "revoked, tenant_active FROM payflow_authenticate($1)", 1);

    pmcf->st.tenant_status = pf_pg_statement_add(pmcf->db,
        "payflow_tenant_status",
        "SELECT payflow_tenant_status($1)", 1);

    if (pmcf->st.authenticate == NULL || pmcf->st.tenant_status == NULL) {
        return NGX_ERROR;
    }

    if (pmcf->keycache
        && pf_pg_listen_add(cf, pmcf->db, "payflow_auth",
                            ngx_http_payflow_auth_notify, pmcf)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_payflow_auth_init_process(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    if (pmcf->pepper.len == 0) {
        return NGX_OK;
    }

    if (pf_hmac_init(&pmcf->hmac, &pmcf->pepper) != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "payflow auth: HMAC setup failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_payflow_auth_exit_process(ngx_http_payflow_main_conf_t *pmcf)
{
    if (pmcf->hmac.inner) {
        pf_hmac_free(&pmcf->hmac);
    }
}


ngx_int_t
ngx_http_payflow_access_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_http_payflow_ctx_t       *ctx;
    ngx_http_payflow_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);

    if (plcf->kind != NGX_HTTP_PAYFLOW_API
        && plcf->kind != NGX_HTTP_PAYFLOW_ADMIN)
    {
        return NGX_DECLINED;
    }

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->auth_done) {
        return ctx->auth_rc;
    }

    if (ctx->auth_waiting) {
        return NGX_AGAIN;
    }

    rc = ngx_http_payflow_authenticate(r, ctx);

    if (rc == NGX_AGAIN) {
        ctx->auth_waiting = 1;

        /* notice a client that leaves while PostgreSQL is asked */
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;

        return NGX_AGAIN;
    }

    ctx->auth_done = 1;
    ctx->auth_rc = rc;

    ngx_http_payflow_metrics_auth(r, ctx);

    return rc;
}


static ngx_int_t
ngx_http_payflow_authenticate(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                        *p, *last;
    ngx_str_t                      token;
    ngx_table_elt_t               *h;
    ngx_http_payflow_loc_conf_t   *plcf;
    ngx_http_payflow_main_conf_t  *pmcf;

    h = r->headers_in.authorization;

    if (h == NULL) {
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                   "authorization_missing",
                   "no credentials: send \"Authorization: Bearer <key>\"");
    }

    if (h->value.len < sizeof("Bearer x") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) != 0)
    {
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                   "authorization_invalid",
                   "the Authorization header must be \"Bearer <key>\"");
    }

    token.data = h->value.data + sizeof("Bearer ") - 1;
    token.len = h->value.len - (sizeof("Bearer ") - 1);

    while (token.len && token.data[0] == ' ') {
        token.data++;
        token.len--;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_payflow_module);

    if (plcf->kind == NGX_HTTP_PAYFLOW_ADMIN) {
        return ngx_http_payflow_auth_admin(r, ctx, &token);
    }

    if (pf_key_livemode(&token) != NGX_ERROR) {
        return ngx_http_payflow_auth_key(r, ctx, &token);
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    /* anything dotted is a JWT to judge, and refused as one */

    last = token.data + token.len;

    for (p = token.data; p < last; p++) {
        if (*p == '.') {
            break;
        }
    }

    if (p < last && pmcf->jwt.keys.nelts) {
        return ngx_http_payflow_auth_jwt(r, ctx, &token);
    }

    return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                      "api_key_invalid",
                                      "invalid API key provided");
}


static ngx_int_t
ngx_http_payflow_auth_key(ngx_http_request_t *r, ngx_http_payflow_ctx_t *ctx,
    ngx_str_t *token)
{
    u_char                         *hex;
    ngx_int_t                       rc, livemode;
    ngx_uint_t                      i, found;
    ngx_http_payflow_key_entry_t    entry;
    ngx_http_payflow_static_key_t  *sk;
    ngx_http_payflow_main_conf_t   *pmcf;

    if (!pf_key_well_formed(token)) {
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                          "api_key_invalid",
                                          "invalid API key provided");
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    livemode = pf_key_livemode(token);
    ctx->auth.livemode = livemode;

    if (pf_hmac_sha256(&pmcf->hmac, token->data, token->len, ctx->hash)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* every static key is compared, in constant time */

    sk = pmcf->static_keys.elts;
    found = pmcf->static_keys.nelts;

    for (i = 0; i < pmcf->static_keys.nelts; i++) {
        if (CRYPTO_memcmp(sk[i].hash, ctx->hash, PF_SHA256_LEN) == 0) {
            found = i;
        }
    }

    if (found < pmcf->static_keys.nelts
        && sk[found].auth.livemode == (ngx_uint_t) livemode)
    {
        ngx_http_payflow_metrics_cache(r, NGX_HTTP_PAYFLOW_M_CACHE_STATIC);
        ctx->auth = sk[found].auth;
        return NGX_OK;
    }

    rc = ngx_http_payflow_keycache_lookup(pmcf->keycache, ctx->hash, &entry,
                                          &ctx->generation);

    if (rc == NGX_OK) {
        ngx_http_payflow_metrics_cache(r,
                                entry.state == NGX_HTTP_PAYFLOW_KEY_VALID
                                ? NGX_HTTP_PAYFLOW_M_CACHE_HIT
                                : NGX_HTTP_PAYFLOW_M_CACHE_NEGATIVE);

        return ngx_http_payflow_auth_entry(r, ctx, &entry, livemode);
    }

    ngx_http_payflow_metrics_cache(r, NGX_HTTP_PAYFLOW_M_CACHE_MISS);

    /* not cached: ask PostgreSQL */

    hex = ngx_pnalloc(r->pool, 2 * PF_SHA256_LEN + 1);
    if (hex == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_hex_dump(hex, ctx->hash, PF_SHA256_LEN) = '\0';

    return ngx_http_payflow_auth_query(r, ctx, pmcf->st.authenticate,
                                       (char *) hex);
}


/* one lookup statement, answered in ngx_http_payflow_auth_db_done() */

static ngx_int_t
ngx_http_payflow_auth_query(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, const pf_pg_statement_t *statement,
    char *value)
{
    pf_pg_query_t                 *q;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = pf_pg_query_create(r->pool, pmcf->pool, 1);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->stmts[0].statement = statement;
    q->stmts[0].nparams = 1;
    q->stmts[0].values = ngx_palloc(r->pool, sizeof(char *));
    if (q->stmts[0].values == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->stmts[0].values[0] = value;

    q->handler = ngx_http_payflow_auth_db_done;
    q->data = r;
    q->log = r->connection->log;

    if (pf_pg_query_run(q) != NGX_OK) {
        ctx->error = ngx_palloc(r->pool, sizeof(pf_error_t));
        if (ctx->error == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_payflow_db_error(q, ctx->error);

        return ctx->error->status;
    }

    ctx->query = q;

    return NGX_AGAIN;
}


static void
ngx_http_payflow_auth_db_done(pf_pg_query_t *q)
{
    PGresult                      *res;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_key_entry_t   entry;
    ngx_http_payflow_main_conf_t  *pmcf;

    r = q->data;
    c = r->connection;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    ctx->query = NULL;
    ctx->auth_waiting = 0;
    ctx->auth_done = 1;

    if (q->status != PF_PG_OK) {
        if (q->status == PF_PG_SQL_ERROR) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "payflow auth: %s lookup failed: %s",
                          ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_JWT
                          ? "tenant" : "key",
                          PQresultErrorField(q->results[q->failed],
                                             PG_DIAG_MESSAGE_PRIMARY));
        }

        ctx->error = ngx_palloc(r->pool, sizeof(pf_error_t));
        if (ctx->error == NULL) {
            ctx->auth_rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            goto resume;
        }

        ngx_http_payflow_db_error(q, ctx->error);
        ctx->auth_rc = ctx->error->status;
        goto resume;
    }

    res = q->results[0];

    ngx_memzero(&entry, sizeof(ngx_http_payflow_key_entry_t));

    if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_JWT) {
        ngx_http_payflow_auth_tenant_row(r, res, &entry);

    } else {
        ngx_http_payflow_auth_key_row(res, &entry);
    }

    if (pmcf->keycache) {
        ngx_http_payflow_keycache_store(pmcf->keycache, ctx->hash, &entry,
                                    entry.state == NGX_HTTP_PAYFLOW_KEY_VALID
                                    ? pmcf->cache_ttl : pmcf->negative_ttl,
                                    pmcf->negative_max, ctx->generation);
    }

    ctx->auth_rc = (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_JWT)
                   ? ngx_http_payflow_auth_tenant_entry(r, ctx, &entry)
                   : ngx_http_payflow_auth_entry(r, ctx, &entry,
                                                 ctx->auth.livemode);

resume:

    ngx_http_payflow_metrics_auth(r, ctx);

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/* a payflow_authenticate() row: the key, its tenant's state */

static void
ngx_http_payflow_auth_key_row(PGresult *res,
    ngx_http_payflow_key_entry_t *entry)
{
    char  *v;

    if (PQntuples(res) != 1
        || PQgetlength(res, 0, 0) != PF_ID_LEN
        || PQgetlength(res, 0, 1) != PF_ID_LEN)
    {
        entry->state = NGX_HTTP_PAYFLOW_KEY_UNKNOWN;

    } else {
        ngx_memcpy(entry->key_id, PQgetvalue(res, 0, 0), PF_ID_LEN);
        ngx_memcpy(entry->tenant_id, PQgetvalue(res, 0, 1), PF_ID_LEN);

        entry->livemode = (PQgetvalue(res, 0, 2)[0] == 't');

        v = PQgetvalue(res, 0, 3);
        entry->role = ngx_http_payflow_role_parse(v, ngx_strlen(v));
        entry->read_only = (PQgetvalue(res, 0, 4)[0] == 't');

        entry->expires_at = PQgetisnull(res, 0, 5)
                            ? 0 : ngx_atotm((u_char *) PQgetvalue(res, 0, 5),
                                            PQgetlength(res, 0, 5));

        if (PQgetvalue(res, 0, 6)[0] == 't') {
            entry->state = NGX_HTTP_PAYFLOW_KEY_REVOKED;

        } else if (PQgetvalue(res, 0, 7)[0] != 't') {
            entry->state = NGX_HTTP_PAYFLOW_KEY_SUSPENDED;

        } else {
            entry->state = NGX_HTTP_PAYFLOW_KEY_VALID;
        }
    }
}


static ngx_int_t
ngx_http_payflow_auth_entry(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_http_payflow_key_entry_t *entry,
    ngx_uint_t livemode)
{
    u_char  *p;

    switch (entry->state) {

    case NGX_HTTP_PAYFLOW_KEY_VALID:
        break;

    case NGX_HTTP_PAYFLOW_KEY_REVOKED:
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                          "api_key_revoked",
                                          "the API key has been revoked");

    case NGX_HTTP_PAYFLOW_KEY_SUSPENDED:
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_FORBIDDEN,
                                          "tenant_suspended",
                                          "the account is suspended");

    default:
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                          "api_key_invalid",
                                          "invalid API key provided");
    }

    if ((entry->expires_at && entry->expires_at <= ngx_time())
        || entry->livemode != livemode)
    {
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                          "api_key_expired",
                                          "the API key has expired");
    }

    p = ngx_pnalloc(r->pool, 2 * PF_ID_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->auth.key_id.data = p;
    ctx->auth.key_id.len = PF_ID_LEN;
    p = ngx_cpymem(p, entry->key_id, PF_ID_LEN);

    ctx->auth.tenant_id.data = p;
    ctx->auth.tenant_id.len = PF_ID_LEN;
    ngx_memcpy(p, entry->tenant_id, PF_ID_LEN);

    ctx->auth.credential = NGX_HTTP_PAYFLOW_CRED_API_KEY;
    ctx->auth.role = entry->role;
    ctx->auth.livemode = entry->livemode;
    ctx->auth.read_only = entry->read_only;
    ctx->auth.expires_at = entry->expires_at;
    ctx->auth.perms = ngx_http_payflow_role_perms(entry->role,
                                                  entry->read_only);

    return NGX_OK;
}


static ngx_int_t
ngx_http_payflow_auth_jwt(ngx_http_request_t *r, ngx_http_payflow_ctx_t *ctx,
    ngx_str_t *token)
{
    ngx_int_t                      rc;
    const char                    *reason;
    pf_jwt_claims_t                claims;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_jwt_verify(r->pool, &pmcf->jwt, token, ngx_time(), &claims,
                       &reason);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                   ngx_strcmp(reason, "token expired") == 0
                   ? "token_expired" : "invalid_token",
                   reason);
    }

    ctx->auth.credential = NGX_HTTP_PAYFLOW_CRED_JWT;
    ctx->auth.tenant_id = claims.tenant;
    ctx->auth.subject = claims.subject;
    ctx->auth.livemode = claims.livemode;
    ctx->auth.role = ngx_http_payflow_role_parse((char *) claims.role.data,
                                                 claims.role.len);
    ctx->auth.expires_at = claims.exp;
    ctx->auth.perms = ngx_http_payflow_role_perms(ctx->auth.role, 0);

    return ngx_http_payflow_auth_tenant(r, ctx);
}


/*
 * A JWT's tenant must exist and be active, as an API key's must: the
 * answer is cached in the key cache under HMAC(pepper, "tenant:<id>"),
 * dropped with the keys when a tenant's status changes (a "flush") and
 * by "tenant:<id>" when one is created.
 */

static ngx_int_t
ngx_http_payflow_auth_tenant(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    char                          *id;
    ngx_int_t                      rc;
    ngx_http_payflow_key_entry_t   entry;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (ctx->auth.tenant_id.len != PF_ID_LEN) {
        ngx_memzero(&entry, sizeof(ngx_http_payflow_key_entry_t));
        entry.state = NGX_HTTP_PAYFLOW_KEY_UNKNOWN;
        return ngx_http_payflow_auth_tenant_entry(r, ctx, &entry);
    }

    if (pmcf->keycache) {
        if (ngx_http_payflow_tenant_hash(pmcf, ctx->auth.tenant_id.data,
                                         ctx->auth.tenant_id.len, ctx->hash)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_payflow_keycache_lookup(pmcf->keycache, ctx->hash,
                                              &entry, &ctx->generation);

        if (rc == NGX_OK
            && ngx_memcmp(entry.tenant_id, ctx->auth.tenant_id.data,
                          PF_ID_LEN) == 0)
        {
            ngx_http_payflow_metrics_cache(r,
                                entry.state == NGX_HTTP_PAYFLOW_KEY_VALID
                                ? NGX_HTTP_PAYFLOW_M_CACHE_HIT
                                : NGX_HTTP_PAYFLOW_M_CACHE_NEGATIVE);

            return ngx_http_payflow_auth_tenant_entry(r, ctx, &entry);
        }

        ngx_http_payflow_metrics_cache(r, NGX_HTTP_PAYFLOW_M_CACHE_MISS);
    }

    id = ngx_pnalloc(r->pool, PF_ID_LEN + 1);
    if (id == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(id, ctx->auth.tenant_id.data, PF_ID_LEN) = '\0';

    return ngx_http_payflow_auth_query(r, ctx, pmcf->st.tenant_status, id);
}


/* a payflow_tenant_status() row: NULL when there is no such tenant */

static void
ngx_http_payflow_auth_tenant_row(ngx_http_request_t *r, PGresult *res,
    ngx_http_payflow_key_entry_t *entry)
{
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    ngx_memcpy(entry->tenant_id, ctx->auth.tenant_id.data, PF_ID_LEN);

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        entry->state = NGX_HTTP_PAYFLOW_KEY_UNKNOWN;

    } else if (ngx_strcmp(PQgetvalue(res, 0, 0), "active") != 0) {
        entry->state = NGX_HTTP_PAYFLOW_KEY_SUSPENDED;

    } else {
        entry->state = NGX_HTTP_PAYFLOW_KEY_VALID;
    }
}


static ngx_int_t
ngx_http_payflow_auth_tenant_entry(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_http_payflow_key_entry_t *entry)
{
    switch (entry->state) {

    case NGX_HTTP_PAYFLOW_KEY_VALID:
        return NGX_OK;

    case NGX_HTTP_PAYFLOW_KEY_SUSPENDED:
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_FORBIDDEN,
                                          "tenant_suspended",
                                          "the account is suspended");

    default:
        return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                          "invalid_token",
                                          "the token's tenant does not "
                                          "exist");
    }
}


static ngx_int_t
ngx_http_payflow_tenant_hash(ngx_http_payflow_main_conf_t *pmcf, u_char *id,
    size_t len, u_char *hash)
{
    u_char  buf[sizeof("tenant:") - 1 + PF_ID_LEN];

    if (len != PF_ID_LEN || pmcf->hmac.inner == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ngx_cpymem(buf, "tenant:", sizeof("tenant:") - 1), id, len);

    return pf_hmac_sha256(&pmcf->hmac, buf, sizeof(buf), hash);
}


static ngx_int_t
ngx_http_payflow_auth_admin(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_str_t *token)
{
    u_char                        *hash;
    ngx_uint_t                     i, found;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (token->len < 32 || token->len > 256 || pmcf->hmac.inner == NULL
        || pf_hmac_sha256(&pmcf->hmac, token->data, token->len, ctx->hash)
           != NGX_OK)
    {
        goto invalid;
    }

    hash = pmcf->admin_keys.elts;
    found = 0;

    for (i = 0; i < pmcf->admin_keys.nelts; i++) {
        found |= (CRYPTO_memcmp(hash + i * PF_SHA256_LEN, ctx->hash,
                                PF_SHA256_LEN) == 0);
    }

    if (!found) {
        goto invalid;
    }

    ctx->auth.credential = NGX_HTTP_PAYFLOW_CRED_ADMIN;

    /* the admin's id in audit logs: a fingerprint of its hash */
    ctx->auth.key_id.data = ngx_pnalloc(r->pool, sizeof("admin_") - 1 + 16);
    if (ctx->auth.key_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->auth.key_id.len = ngx_hex_dump(ngx_cpymem(ctx->auth.key_id.data,
                                                   "admin_", 6),
                                        ctx->hash, 8)
                           - ctx->auth.key_id.data;

    return NGX_OK;

invalid:

    return ngx_http_payflow_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                      "admin_key_invalid",
                                      "invalid admin credentials");
}


/*
 * The status goes back to the phase engine; the header filter sends
 * ctx->error in the envelope in place of nginx's page.
 */

static ngx_int_t
ngx_http_payflow_auth_fail(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message)
{
    ngx_str_t    value;
    pf_error_t  *err;

    err = ngx_pcalloc(r->pool, sizeof(pf_error_t));
    if (err == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    err->status = status;
    err->type = (status == NGX_HTTP_UNAUTHORIZED) ? PF_ERROR_AUTHENTICATION
                                                  : PF_ERROR_PERMISSION;
    err->code = code;
    err->message = message;

    ctx->error = err;

    if (status == NGX_HTTP_UNAUTHORIZED) {
        if (ngx_strcmp(code, "authorization_missing") == 0) {
            ngx_str_set(&value, "Bearer realm=\"payflow\"");

        } else {
            ngx_str_set(&value,
                        "Bearer realm=\"payflow\", error=\"invalid_token\"");
        }

        if (pf_response_add_header(r, "WWW-Authenticate", &value) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return status;
}


/* this request's own change (revoke, roll) takes effect here at once */

void
ngx_http_payflow_auth_forget(ngx_http_request_t *r, u_char *hex)
{
    u_char                         hash[PF_SHA256_LEN];
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    if (pmcf->keycache
        && ngx_http_payflow_hex_decode(hash, hex, 2 * PF_SHA256_LEN)
           == NGX_OK)
    {
        ngx_http_payflow_keycache_remove(pmcf->keycache, hash);
    }
}


/*
 * "key:<hash>" drops one key, "tenant:<id>" a JWT tenant's answer, "flush"
 * or a reconnect (NULL) all of them
 */

static void
ngx_http_payflow_auth_notify(void *data, const char *payload)
{
    ngx_http_payflow_main_conf_t *pmcf = data;

    u_char  hash[PF_SHA256_LEN];

    if (payload == NULL || ngx_strcmp(payload, "flush") == 0) {
        ngx_http_payflow_keycache_flush(pmcf->keycache);
        return;
    }

    if (ngx_strncmp(payload, "key:", 4) == 0
        && ngx_strlen(payload) == 4 + 2 * PF_SHA256_LEN
        && ngx_http_payflow_hex_decode(hash, (u_char *) payload + 4,
                                       2 * PF_SHA256_LEN)
           == NGX_OK)
    {
        ngx_http_payflow_keycache_remove(pmcf->keycache, hash);
        return;
    }

    if (ngx_strncmp(payload, "tenant:", 7) == 0
        && ngx_http_payflow_tenant_hash(pmcf, (u_char *) payload + 7,
                                        ngx_strlen(payload) - 7, hash)
           == NGX_OK)
    {
        ngx_http_payflow_keycache_remove(pmcf->keycache, hash);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "payflow auth: ignored notification \"%s\"", payload);
}


ngx_int_t
ngx_http_payflow_auth_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                  *p;
    ngx_str_t                s;
    ngx_http_payflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_payflow_module);

    if (ctx == NULL || !ctx->auth_done || ctx->auth_rc != NGX_OK) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_PAYFLOW_VAR_PRINCIPAL:

        /* whoever is calling, as a rate-limit key: a key's id, a JWT's */

        if (ctx->auth.credential != NGX_HTTP_PAYFLOW_CRED_JWT) {
            s = ctx->auth.key_id;
            break;
        }

        s.len = sizeof("jwt::") - 1 + ctx->auth.tenant_id.len
                + ctx->auth.subject.len;
        s.data = ngx_pnalloc(r->pool, s.len);
        if (s.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(s.data, "jwt:", sizeof("jwt:") - 1);
        p = ngx_cpymem(p, ctx->auth.tenant_id.data, ctx->auth.tenant_id.len);
        *p++ = ':';
        ngx_memcpy(p, ctx->auth.subject.data, ctx->auth.subject.len);

        break;

    case NGX_HTTP_PAYFLOW_VAR_TENANT_ID:
        s = ctx->auth.tenant_id;
        break;

    case NGX_HTTP_PAYFLOW_VAR_KEY_ID:
        s = ctx->auth.key_id;
        break;

    case NGX_HTTP_PAYFLOW_VAR_MODE:
        if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN) {
            ngx_str_null(&s);

        } else if (ctx->auth.livemode) {
            ngx_str_set(&s, "live");

        } else {
            ngx_str_set(&s, "test");
        }

        break;

    default: /* NGX_HTTP_PAYFLOW_VAR_ROLE */
        if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN) {
            ngx_str_set(&s, "operator");

        } else {
            s.data = (u_char *) ngx_http_payflow_role_name(ctx->auth.role);
            s.len = ngx_strlen(s.data);
        }
    }

    if (s.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = s.data;
    v->len = s.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/* GET /v1/me: the hot path of every integration's first call */

ngx_int_t
ngx_http_payflow_me_handler(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    ngx_str_t                 data;
    const char               *credential;
    pf_json_out_t             out;
    ngx_http_payflow_auth_t  *a;

    a = &ctx->auth;

    switch (a->credential) {
    case NGX_HTTP_PAYFLOW_CRED_STATIC_KEY:
        credential = "static_key";
        break;
    case NGX_HTTP_PAYFLOW_CRED_JWT:
        credential = "jwt";
        break;
    default:
        credential = "api_key";
    }

    if (pf_json_out_init(&out, r->pool, 320) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "object");
    pf_json_out_cstr(&out, "me");
    pf_json_out_key(&out, "credential");
    pf_json_out_cstr(&out, credential);
    pf_json_out_key(&out, "tenant_id");
    pf_json_out_str(&out, a->tenant_id.data, a->tenant_id.len);
    pf_json_out_key(&out, "livemode");
    pf_json_out_bool(&out, a->livemode);
    pf_json_out_key(&out, "role");
    pf_json_out_cstr(&out, ngx_http_payflow_role_name(a->role));

    pf_json_out_key(&out, "key_id");
    if (a->key_id.len) {
        pf_json_out_str(&out, a->key_id.data, a->key_id.len);
    } else {
        pf_json_out_null(&out);
    }

    pf_json_out_key(&out, "subject");
    if (a->subject.len) {
        pf_json_out_str(&out, a->subject.data, a->subject.len);
    } else {
        pf_json_out_null(&out);
    }

    pf_json_out_key(&out, "read_only");
    pf_json_out_bool(&out, a->read_only);

    pf_json_out_key(&out, "permissions");
    pf_json_out_open(&out, '[');

    if (a->perms & NGX_HTTP_PAYFLOW_PERM_READ) {
        pf_json_out_cstr(&out, "read");
    }

    if (a->perms & NGX_HTTP_PAYFLOW_PERM_WRITE) {
        pf_json_out_cstr(&out, "write");
    }

    if (a->perms & NGX_HTTP_PAYFLOW_PERM_MANAGE) {
        pf_json_out_cstr(&out, "manage");
    }

    pf_json_out_close(&out, ']');
    pf_json_out_close(&out, '}');

    if (pf_json_out_result(&out, &data) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


static ngx_int_t
ngx_http_payflow_hex_decode(u_char *dst, u_char *src, size_t len)
{
    u_char      c, v;
    ngx_uint_t  i;

    for (i = 0; i < len; i++) {
        c = src[i];

        if (c >= '0' && c <= '9') {
            v = c - '0';

        } else if (c >= 'a' && c <= 'f') {
            v = c - 'a' + 10;

        } else if (c >= 'A' && c <= 'F') {
            v = c - 'A' + 10;

        } else {
            return NGX_ERROR;
        }

        if (i % 2) {
            dst[i / 2] |= v;

        } else {
            dst[i / 2] = (u_char) (v << 4);
        }
    }

    return NGX_OK;
}
