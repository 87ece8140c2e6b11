
/*
 * Copyright (C) PayFlow
 *
 * Customer details sealed at rest (sql/0024).  The worker that creates a
 * payment seals the customer's e-mail, name and phone under a data key of
 * the payment's own (pf_seal: AES-256-GCM, the key wrapped under the
 * current payflow_kek, both bound to "payments", tenant, mode and id) and
 * computes the e-mail's blind index, an HMAC under a key derived from
 * payflow_key_pepper.  The row keeps the ciphertext in its customer object
 * and the wrapped key in its own column; every copy of the payment (its
 * events, stored answers) keeps only the ciphertext, named by its row:
 *
 *     "customer": {"id": "c_1", "pii": "pay_<24>.<ciphertext>", ...}
 *
 * Every answer, webhook delivery or provider call that shows a payment
 * opens its details on the way out: the keys of the payments an answer
 * names come from one more query (none for the answer of the request
 * that sealed them), the "pii" member is replaced by the details, or by
 * "erased": true once the key is gone.  A key that does not open the
 * ciphertext (another row's, a KEK not configured) fails that answer only.
 */


#include "ngx_http_payflow_module.h"
#include "ngx_http_payflow_payments.h"
#include "ngx_http_payflow_pii.h"

#include <openssl/crypto.h>


typedef struct {
    ngx_str_t                   id;         /* the payment sealed here */
    ngx_str_t                   plain;      /* its details, JSON members */
    ngx_uint_t                  status;     /* an answer waiting for keys */
    ngx_str_t                   body;
    ngx_array_t                *tokens;
} ngx_http_payflow_pii_ctx_t;


static ngx_http_payflow_pii_ctx_t *ngx_http_payflow_pii_ctx(
    ngx_http_request_t *r);
static void ngx_http_payflow_pii_wipe(void *data);
static ngx_int_t ngx_http_payflow_pii_keys_read(ngx_http_request_t *r,
    pf_pg_query_t *q);
static ngx_int_t ngx_http_payflow_pii_finish(ngx_http_request_t *r,
    ngx_http_payflow_pii_ctx_t *pc);
static ngx_int_t ngx_http_payflow_customers_erased(ngx_http_request_t *r,
    pf_pg_query_t *q);


static const char  *ngx_http_payflow_pii_fields[] = {
    "email", "name", "phone", NULL
};

ngx_int_t
ngx_http_payflow_pii_init(ngx_conf_t *cf, ngx_http_payflow_main_conf_t *pmcf)
{
    (void) cf;

    pmcf->st.pii_keys = pf_pg_statement_add(pmcf->db, "payflow_pii_keys",
        "SELECT id, key FROM payflow_customer_keys($1::text[])", 1);
    pmcf->st.pii_erase = pf_pg_statement_add(pmcf->db, "payflow_pii_erase",
        "SELECT payflow_customers_erase($1, $2, $3)", 3);

    return (pmcf->st.pii_keys && pmcf->st.pii_erase) ? NGX_OK : NGX_ERROR;
}


/* payflow_customer_pii: sealed by default when a KEK is configured */

char *
ngx_http_payflow_pii_conf(ngx_conf_t *cf, ngx_http_payflow_main_conf_t *pmcf)
{
    if (pmcf->customer_pii == NGX_CONF_UNSET_UINT) {
        pmcf->customer_pii = (pmcf->keyring.current != NULL);
    }

    if (!pmcf->customer_pii) {
        return NGX_CONF_OK;
    }

    if (pmcf->keyring.current == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_customer_pii sealed\" requires "
                           "\"payflow_kek\"");
        return NGX_CONF_ERROR;
    }

    if (pmcf->pepper.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"payflow_customer_pii sealed\" requires "
                           "\"payflow_key_pepper\" (the customers' blind "
                           "index is keyed from it)");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* the blind index's key: HMAC(pepper, "payflow customer index 1") */

ngx_int_t
ngx_http_payflow_pii_init_process(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_int_t   rc;
    ngx_str_t   key;
    u_char      derived[PF_SHA256_LEN];

    static u_char  label[] = "payflow customer index 1";

    if (pmcf->pepper.len == 0 || pmcf->hmac.inner == NULL) {
        return NGX_OK;
    }

    if (pf_hmac_sha256(&pmcf->hmac, label, sizeof(label) - 1, derived)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    key.data = derived;
    key.len = sizeof(derived);

    rc = pf_hmac_init(&pmcf->pii_hmac, &key);

    OPENSSL_cleanse(derived, sizeof(derived));

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "payflow: the customer index HMAC setup failed");
    }

    return rc;
}


void
ngx_http_payflow_pii_exit_process(ngx_http_payflow_main_conf_t *pmcf)
{
    if (pmcf->pii_hmac.inner) {
        pf_hmac_free(&pmcf->pii_hmac);
    }
}


/*
 * The customer object as the payment row keeps it: its e-mail, name and
 * phone sealed into "pii", the wrapped key in "key" and the e-mail's
 * blind index in "index" (both moved to their columns by
 * payflow_payment_create).  In the clear with payflow_customer_pii clear.
 */

ngx_int_t
ngx_http_payflow_pii_seal(ngx_http_request_t *r, json_t *customer,
    char **text)
{
    json_t                        *row;
    ngx_int_t                      rc;
    ngx_str_t                      s, plain;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_pii_ctx_t    *pc;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    /* sealing changes the object: the request's own stays as it came */
    row = pmcf->customer_pii ? json_deep_copy(customer)
                             : json_incref(customer);
    if (row == NULL) {
        return NGX_ERROR;
    }

    if (pmcf->customer_pii) {
        rc = ngx_http_payflow_pii_seal_row(r->pool, pmcf,
                                           &ctx->auth.tenant_id,
                                           ctx->auth.livemode,
                                           &ctx->payment_id, row, &plain);
        if (rc == NGX_ERROR) {
            json_decref(row);
            return NGX_ERROR;
        }

        if (rc == NGX_OK) {
            pc = ngx_http_payflow_pii_ctx(r);
            if (pc == NULL) {
                OPENSSL_cleanse(plain.data, plain.len);
                json_decref(row);
                return NGX_ERROR;
            }

            /* the details stay for this request's answer, wiped with it */
            pc->id = ctx->payment_id;
            pc->plain = plain;
        }
    }

    if (pf_response_dump(r->pool, row, &s) != NGX_OK) {
        return NGX_ERROR;
    }

    *text = ngx_http_payflow_db_str(r->pool, &s);

    return (*text == NULL) ? NGX_ERROR : NGX_OK;
}


/*
 * Seals a customer object's details in place (sql/0024's "pii", "key",
 * "index"); plain: the details as JSON members, in the pool (wipe them).
 * NGX_DECLINED: it has none.
 */

ngx_int_t
ngx_http_payflow_pii_seal_row(ngx_pool_t *pool,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, json_t *row, ngx_str_t *plain)
{
    u_char      *dot, hex[NGX_HTTP_PAYFLOW_PII_INDEX_HEX];
    json_t      *details, *v;
    ngx_int_t    rc;
    ngx_str_t    aad, sealed, s;
    ngx_uint_t   i;

    details = json_object();
    if (details == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; ngx_http_payflow_pii_fields[i]; i++) {
        v = json_object_get(row, ngx_http_payflow_pii_fields[i]);

        if (v && json_object_set(details, ngx_http_payflow_pii_fields[i], v)
                 != 0)
        {
            json_decref(details);
            return NGX_ERROR;
        }

        (void) json_object_del(row, ngx_http_payflow_pii_fields[i]);
    }

    if (json_object_size(details) == 0) {
        json_decref(details);
        return NGX_DECLINED;
    }

    v = json_object_get(details, "email");

    if (v) {
        s.data = (u_char *) json_string_value(v);
        s.len = json_string_length(v);

        rc = ngx_http_payflow_pii_index_of(pool, pmcf, tenant, livemode, &s,
                                           hex);

        if (rc == NGX_ERROR
            || (rc == NGX_OK
                && json_object_set_new(row, "index",
                                       json_stringn((char *) hex,
                                                    sizeof(hex)))
                   != 0))
        {
            json_decref(details);
            return NGX_ERROR;
        }
    }

    /* the members alone, "email":"...","name":"...": spliced as they are */

    if (pf_response_dump(pool, details, &s) != NGX_OK) {
        return NGX_ERROR;
    }

    plain->data = s.data + 1;
    plain->len = s.len - 2;

    if (pf_pii_aad(pool, tenant, livemode, id, &aad) != NGX_OK
        || pf_seal(pool, &pmcf->keyring, &aad, plain, &sealed) != NGX_OK)
    {
        OPENSSL_cleanse(s.data, s.len);
        return NGX_ERROR;
    }

    /* "pf1.<kek>.<wrapped>." is the key, what follows the ciphertext */

    for (dot = sealed.data + sealed.len - 1; *dot != '.'; dot--) {
        /* void */
    }

    dot++;

    if (json_object_set_new(row, "key",
                            json_stringn((char *) sealed.data,
                                         dot - sealed.data))
        != 0
        || json_object_set_new(row, "pii",
                               json_stringn((char *) dot,
                                            sealed.data + sealed.len - dot))
           != 0)
    {
        OPENSSL_cleanse(s.data, s.len);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the blind index of an e-mail in the request's tenant and mode, hex */

ngx_int_t
ngx_http_payflow_pii_index(ngx_http_request_t *r, ngx_str_t *email,
    u_char *hex)
{
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    return ngx_http_payflow_pii_index_of(r->pool, pmcf, &ctx->auth.tenant_id,
                                         ctx->auth.livemode, email, hex);
}


/* HMAC("<tenant>\n<t|l>\n<lower-case e-mail>"); NGX_DECLINED: no key */

ngx_int_t
ngx_http_payflow_pii_index_of(ngx_pool_t *pool,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *email, u_char *hex)
{
    u_char  *p, *in, mac[PF_SHA256_LEN];
    size_t   len;

    if (pmcf->pii_hmac.inner == NULL) {
        return NGX_DECLINED;
    }

    len = tenant->len + 3 + email->len;

    in = ngx_pnalloc(pool, len);
    if (in == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(in, tenant->data, tenant->len);
    *p++ = '\n';
    *p++ = livemode ? 'l' : 't';
    *p++ = '\n';
    ngx_strlow(p, email->data, email->len);

    if (pf_hmac_sha256(&pmcf->pii_hmac, in, len, mac) != NGX_OK) {
        OPENSSL_cleanse(in, len);
        return NGX_ERROR;
    }

    OPENSSL_cleanse(in, len);

    ngx_hex_dump(hex, mac, sizeof(mac));

    return NGX_OK;
}


/* a payment's key wrapped again under the current KEK */

ngx_int_t
ngx_http_payflow_pii_rewrap(ngx_pool_t *pool,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *key, ngx_str_t *out)
{
    ngx_str_t  aad;

    if (pf_pii_aad(pool, tenant, livemode, id, &aad) != NGX_OK) {
        return NGX_ERROR;
    }

    return pf_reseal(pool, &pmcf->keyring, &aad, key, out);
}


/*
 * An answer naming sealed details: sent once they are opened, after one
 * more query for the keys unless this request sealed them all.
 */

ngx_int_t
ngx_http_payflow_pii_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    u_char                        *p;
    size_t                         len;
    ngx_int_t                      rc;
    ngx_uint_t                     i, n;
    const char                   **values;
    pf_pg_query_t                 *q;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_pii_ctx_t    *pc;
    pf_pii_token_t                *t;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    pc = ngx_http_payflow_pii_ctx(r);
    if (pc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the body may live in a result freed once this callback returns */

    pc->status = status;
    pc->body.len = body->len;
    pc->body.data = ngx_pstrdup(r->pool, body);
    if (pc->body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = pf_pii_tokens(r->pool, &pc->body, &pc->tokens);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_payflow_send_envelope(r, status, &pc->body);
    }

    t = pc->tokens->elts;
    len = 0;
    n = 0;

    for (i = 0; i < pc->tokens->nelts; i++) {
        if (pc->id.len && t[i].id.len == pc->id.len
            && ngx_strncmp(t[i].id.data, pc->id.data, pc->id.len) == 0)
        {
            t[i].plain = &pc->plain;
            continue;
        }

        len += t[i].id.len + 1;
        n++;
    }

    if (n == 0) {
        return ngx_http_payflow_pii_finish(r, pc);
    }

    if (ctx->auth.credential == NGX_HTTP_PAYFLOW_CRED_ADMIN
        || ctx->auth.tenant_id.len == 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "payflow: an answer outside a tenant's scope names "
                      "sealed customer details");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* {pay_a,pay_b}: ids are letters, digits and "_" */

    values = ngx_palloc(r->pool, sizeof(char *));
    p = ngx_pnalloc(r->pool, len + 2);

    q = ngx_http_payflow_db_query(r, 1, NGX_HTTP_PAYFLOW_DB_READ);

    if (values == NULL || p == NULL || q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = (char *) p;
    *p++ = '{';

    for (i = 0; i < pc->tokens->nelts; i++) {
        if (t[i].plain == NULL) {
            p = ngx_cpymem(p, t[i].id.data, t[i].id.len);
            *p++ = ',';
        }
    }

    p[-1] = '}';
    *p = '\0';

    ngx_http_payflow_db_set(q, 0, pmcf->st.pii_keys, 1, values);

    /* the answer's own flow may judge SQL errors: not this query's */
    ctx->db_sql_ok = 0;

    return ngx_http_payflow_db_run(r, q, "reading customer keys",
                                   ngx_http_payflow_pii_keys_read);
}


static ngx_int_t
ngx_http_payflow_pii_keys_read(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                      *res;
    ngx_uint_t                     i, n, row;
    ngx_http_payflow_pii_ctx_t    *pc;
    pf_pii_token_t                *t;

    pc = ngx_http_payflow_pii_ctx(r);
    if (pc == NULL || q->status != PF_PG_OK) {
        /* no keys is not "erased": the answer fails */
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    res = ngx_http_payflow_db_result(q, 0);
    n = PQntuples(res);
    t = pc->tokens->elts;

    for (row = 0; row < n; row++) {
        if (PQgetisnull(res, row, 1)) {
            continue;
        }

        for (i = 0; i < pc->tokens->nelts; i++) {
            if (t[i].plain == NULL
                && (size_t) PQgetlength(res, row, 0) == t[i].id.len
                && ngx_strncmp(PQgetvalue(res, row, 0), t[i].id.data,
                               t[i].id.len) == 0)
            {
                t[i].key.len = PQgetlength(res, row, 1);
                t[i].key.data = ngx_pnalloc(r->pool, t[i].key.len);
                if (t[i].key.data == NULL) {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }

                ngx_memcpy(t[i].key.data, PQgetvalue(res, row, 1),
                           t[i].key.len);
            }
        }
    }

    return ngx_http_payflow_pii_finish(r, pc);
}


static ngx_int_t
ngx_http_payflow_pii_finish(ngx_http_request_t *r,
    ngx_http_payflow_pii_ctx_t *pc)
{
    ngx_int_t                      rc;
    ngx_str_t                      out;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);

    rc = ngx_http_payflow_pii_splice(r->pool, r->connection->log, pmcf,
                                     &ctx->auth.tenant_id,
                                     ctx->auth.livemode, &pc->body,
                                     pc->tokens, &out);
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the answer holds the details now: wiped with the pool */

    pc->body = out;

    return ngx_http_payflow_send_envelope(r, pc->status, &out);
}


/* pf_pii_splice(), its failure logged (the payment only) */

ngx_int_t
ngx_http_payflow_pii_splice(ngx_pool_t *pool, ngx_log_t *log,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *body, ngx_array_t *tokens,
    ngx_str_t *out)
{
    ngx_int_t   rc;
    ngx_str_t  *failed;

    failed = NULL;

    rc = pf_pii_splice(pool, &pmcf->keyring, tenant, livemode, body, tokens,
                       out, &failed);

    if (rc == NGX_DECLINED && failed) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "payflow: the customer details of payment %V do not "
                      "open (their payflow_kek is not configured, or they "
                      "were written for another row)", failed);
    }

    return rc;
}


/* a payment's e-mail, for a provider call outside its request */

ngx_int_t
ngx_http_payflow_pii_email(ngx_pool_t *pool, ngx_log_t *log,
    ngx_http_payflow_main_conf_t *pmcf, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, const char *pii, const char *key,
    const char **email)
{
    u_char       *p;
    json_t       *details, *v;
    ngx_int_t     rc;
    ngx_str_t     k, ct, plain;
    json_error_t  error;

    *email = NULL;

    if (pii == NULL || key == NULL) {
        return NGX_OK;
    }

    k.data = (u_char *) key;
    k.len = ngx_strlen(key);
    ct.data = (u_char *) pii;
    ct.len = ngx_strlen(pii);

    rc = pf_pii_open(pool, &pmcf->keyring, tenant, livemode, id, &k, &ct,
                     &plain);
    if (rc != NGX_OK) {
        if (rc == NGX_DECLINED) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "payflow: the customer details of payment %V do "
                          "not open (their payflow_kek is not configured, "
                          "or they were written for another row)", id);
        }

        return NGX_ERROR;
    }

    /* the members, in braces again */

    p = ngx_pnalloc(pool, plain.len + 2);
    if (p == NULL) {
        OPENSSL_cleanse(plain.data, plain.len);
        return NGX_ERROR;
    }

    p[0] = '{';
    ngx_memcpy(p + 1, plain.data, plain.len);
    p[plain.len + 1] = '}';

    OPENSSL_cleanse(plain.data, plain.len);

    details = json_loadb((char *) p, plain.len + 2, 0, &error);

    OPENSSL_cleanse(p, plain.len + 2);

    if (details == NULL) {
        return NGX_ERROR;
    }

    v = json_object_get(details, "email");

    if (json_is_string(v)) {
        k.data = (u_char *) json_string_value(v);
        k.len = json_string_length(v) + 1;

        *email = (const char *) ngx_pstrdup(pool, &k);
    }

    json_decref(details);

    return NGX_OK;
}


static ngx_http_payflow_pii_ctx_t *
ngx_http_payflow_pii_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t          *cln;
    ngx_http_payflow_ctx_t      *ctx;
    ngx_http_payflow_pii_ctx_t  *pc;

    ctx = ngx_http_payflow_get_ctx(r);
    if (ctx == NULL) {
        return NULL;
    }

    if (ctx->pii) {
        return ctx->pii;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_payflow_pii_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    pc = cln->data;
    ngx_memzero(pc, sizeof(ngx_http_payflow_pii_ctx_t));

    cln->handler = ngx_http_payflow_pii_wipe;
    ctx->pii = pc;

    return pc;
}


/* what this request held in the clear goes with it */

static void
ngx_http_payflow_pii_wipe(void *data)
{
    ngx_http_payflow_pii_ctx_t *pc = data;

    if (pc->plain.len) {
        OPENSSL_cleanse(pc->plain.data, pc->plain.len);
    }

    if (pc->tokens && pc->body.len) {
        OPENSSL_cleanse(pc->body.data, pc->body.len);
    }
}


/*
 * POST /v1/customers/erase {"email"} or {"id"}: every payment of the
 * caller's tenant and mode with that customer loses its details (sql/0024:
 * the keys that open them are destroyed, the copies replaced).
 */

ngx_int_t
ngx_http_payflow_customers_erase(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx)
{
    u_char                        *hex;
    json_t                        *email, *id;
    ngx_int_t                      rc;
    ngx_str_t                      s;
    pf_error_t                     err;
    const char                   **values;
    pf_pg_query_t                 *q;
    ngx_http_payflow_main_conf_t  *pmcf;

    static const char  *fields[] = { "email", "id", NULL };

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    rc = pf_json_check_fields(r->pool, ctx->body, fields, &err);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? ngx_http_payflow_send_error(r, &err)
                                    : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    email = json_object_get(ctx->body, "email");
    id = json_object_get(ctx->body, "id");

    if ((email == NULL) == (id == NULL)) {
        return ngx_http_payflow_bad(r, email ? "id" : "email",
                                    email ? "parameter_unknown"
                                          : "parameter_missing",
                                    "name the customer by exactly one of "
                                    "email and id");
    }

    if (email && (!json_is_string(email) || json_string_length(email) > 254
                  || ngx_strchr(json_string_value(email), '@') == NULL))
    {
        return ngx_http_payflow_bad(r, "email", "parameter_invalid",
                                    "email must be the customer's e-mail "
                                    "address");
    }

    if (id && (!json_is_string(id) || json_string_length(id) == 0
               || json_string_length(id) > 255
               || !pf_text_valid((u_char *) json_string_value(id),
                                 json_string_length(id))))
    {
        return ngx_http_payflow_bad(r, "id", "parameter_invalid",
                                    "id: your own reference for the "
                                    "customer, 1 to 255 bytes of text");
    }

    values = ngx_pcalloc(r->pool, 3 * sizeof(char *));
    q = ngx_http_payflow_db_query(r, 1, 1);

    if (values == NULL || q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (email) {
        s.data = (u_char *) json_string_value(email);
        s.len = json_string_length(email);

        hex = ngx_pnalloc(r->pool, NGX_HTTP_PAYFLOW_PII_INDEX_HEX + 1);
        if (hex == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_payflow_pii_index(r, &s, hex);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_OK) {
            hex[NGX_HTTP_PAYFLOW_PII_INDEX_HEX] = '\0';
            values[0] = (char *) hex;
        }

        values[1] = json_string_value(email);

    } else {
        values[2] = json_string_value(id);
    }

    ngx_http_payflow_db_set(q, 0, pmcf->st.pii_erase, 3, values);

    return ngx_http_payflow_db_run(r, q, "erasing a customer",
                                   ngx_http_payflow_customers_erased);
}


static ngx_int_t
ngx_http_payflow_customers_erased(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult        *res;
    ngx_str_t        json;
    pf_json_out_t    out;

    res = ngx_http_payflow_db_result(q, 0);

    if (pf_json_out_init(&out, r->pool, 128) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "object");
    pf_json_out_cstr(&out, "customer_erasure");
    pf_json_out_key(&out, "livemode");
    pf_json_out_bool(&out, ngx_http_payflow_get_ctx(r)->auth.livemode);
    pf_json_out_key(&out, "payments_erased");
    pf_json_out_raw(&out, (u_char *) PQgetvalue(res, 0, 0),
                    PQgetlength(res, 0, 0));
    pf_json_out_close(&out, '}');

    if (pf_json_out_result(&out, &json) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &json);
}
