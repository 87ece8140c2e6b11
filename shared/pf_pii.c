
/*
 * Copyright (C) PayFlow
 *
 * Sealed customer details in JSON on its way out (sql/0024): finding the
 * "pii" members of payments' customer objects in the text PostgreSQL or
 * jansson wrote, and replacing each by the details it seals, opened with
 * its row's key (or by "erased": true).  The text is the database's, but
 * carries what tenants wrote (descriptions, metadata): parsed as hostile.
 */


#include "pf_pii.h"

#include <openssl/crypto.h>


#define PF_PII_TOKENS   200     /* per answer (a page is 100) */
#define PF_PII_ID_LEN   28      /* pay_ + 24 */


static ngx_uint_t pf_pii_id(u_char *p, u_char *last);
static u_char *pf_pii_space(u_char *p, u_char *last);
static u_char *pf_pii_string(u_char *p, u_char *last);


static ngx_str_t  pf_pii_erased = ngx_string("\"erased\": true");


/*
 * The sealed "pii" members of a payment's customer objects in JSON text,
 * as PostgreSQL or jansson wrote it: "customer": {"id": "...", "pii":
 * "pay_...".  Metadata values are strings and descriptions are strings,
 * so "customer": followed by an object is always a payment's.
 * NGX_DECLINED: none; NGX_ERROR: no memory, or more than an answer holds.
 */

ngx_int_t
pf_pii_tokens(ngx_pool_t *pool, ngx_str_t *body,
    ngx_array_t **tokens)
{
    u_char                        *p, *last, *v, *dot, *start;
    pf_pii_token_t  *t;

    static const char  customer[] = "\"customer\":";

    p = body->data;
    last = body->data + body->len;
    *tokens = NULL;

    for ( ;; ) {
        p = memmem(p, last - p, customer, sizeof(customer) - 1);
        if (p == NULL) {
            break;
        }

        p += sizeof(customer) - 1;

        p = pf_pii_space(p, last);

        if (p == last || *p++ != '{') {
            continue;
        }

        p = pf_pii_space(p, last);

        /* jsonb orders keys by length: "id" alone may come first */

        if (last - p > 5 && ngx_strncmp(p, "\"id\":", 5) == 0) {
            p += 5;
            p = pf_pii_space(p, last);

            p = pf_pii_string(p, last);
            if (p == NULL) {
                break;
            }

            p = pf_pii_space(p, last);

            if (p == last || *p++ != ',') {
                continue;
            }

            p = pf_pii_space(p, last);
        }

        if (last - p < 6 || ngx_strncmp(p, "\"pii\":", 6) != 0) {
            continue;
        }

        start = p;
        v = p + 6;

        v = pf_pii_space(v, last);

        if (v == last || *v++ != '"') {
            continue;
        }

        p = v;

        while (p < last && *p != '"') {
            p++;
        }

        if (p == last) {
            break;
        }

        dot = ngx_strlchr(v, p, '.');

        if (dot == NULL || dot - v != PF_PII_ID_LEN
            || ngx_strncmp(v, "pay_", 4) != 0 || p - dot < 2
            || !pf_pii_id(v + 4, dot))
        {
            continue;
        }

        if (*tokens == NULL) {
            *tokens = ngx_array_create(pool, 4,
                                   sizeof(pf_pii_token_t));
            if (*tokens == NULL) {
                return NGX_ERROR;
            }
        }

        if ((*tokens)->nelts == PF_PII_TOKENS) {
            /* more than any answer holds: not sent half opened */
            return NGX_ERROR;
        }

        t = ngx_array_push(*tokens);
        if (t == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(t, sizeof(pf_pii_token_t));

        t->start = start;
        t->end = p + 1;
        t->id.data = v;
        t->id.len = dot - v;
        t->ct.data = dot + 1;
        t->ct.len = p - dot - 1;

        p++;
    }

    return *tokens ? NGX_OK : NGX_DECLINED;
}


/* an id's 24 characters: letters and digits only */

static ngx_uint_t
pf_pii_id(u_char *p, u_char *last)
{
    for ( /* void */ ; p < last; p++) {
        if (!isalnum(*p)) {
            return 0;
        }
    }

    return 1;
}


static u_char *
pf_pii_space(u_char *p, u_char *last)
{
    while (p < last && *p == ' ') {
        p++;
    }

    return p;
}


/* past a JSON string starting at p, or NULL */

static u_char *
pf_pii_string(u_char *p, u_char *last)
{
    if (p == last || *p++ != '"') {
        return NULL;
    }

    while (p < last) {
        if (*p == '\\') {
            p += 2;
            continue;
        }

        if (*p == '"') {
            return p + 1;
        }

        p++;
    }

    return NULL;
}


/*
 * The body with each token's member replaced by the details it seals, or
 * by "erased": true when its row has no key (erased, or not the caller's).
 * NGX_DECLINED: a key did not open its ciphertext (*failed names the
 * payment, for the log: never the ciphertext or the details).
 */

ngx_int_t
pf_pii_splice(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *body, ngx_array_t *tokens,
    ngx_str_t *out, ngx_str_t **failed)
{
    u_char                        *p, *from;
    size_t                         len;
    ngx_int_t                      rc;
    ngx_str_t                     *plains;
    ngx_uint_t                     i;
    pf_pii_token_t  *t;

    t = tokens->elts;

    plains = ngx_pcalloc(pool, tokens->nelts * sizeof(ngx_str_t));
    if (plains == NULL) {
        return NGX_ERROR;
    }

    len = body->len;
    rc = NGX_OK;

    for (i = 0; i < tokens->nelts; i++) {

        if (t[i].plain) {
            plains[i] = *t[i].plain;

        } else if (t[i].key.len == 0) {
            plains[i] = pf_pii_erased;

        } else {
            rc = pf_pii_open(pool, ring, tenant, livemode,
                                           &t[i].id, &t[i].key, &t[i].ct,
                                           &plains[i]);
            if (rc != NGX_OK) {
                *failed = &t[i].id;
                goto done;
            }
        }

        len += plains[i].len - (t[i].end - t[i].start);
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        rc = NGX_ERROR;
        goto done;
    }

    p = out->data;
    from = body->data;

    for (i = 0; i < tokens->nelts; i++) {
        p = ngx_cpymem(p, from, t[i].start - from);
        p = ngx_cpymem(p, plains[i].data, plains[i].len);
        from = t[i].end;
    }

    p = ngx_cpymem(p, from, body->data + body->len - from);

    out->len = p - out->data;

done:

    for (i = 0; i < tokens->nelts; i++) {
        if (t[i].plain == NULL && t[i].key.len && plains[i].data) {
            OPENSSL_cleanse(plains[i].data, plains[i].len);
        }
    }

    return rc;
}


ngx_int_t
pf_pii_open(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *key, ngx_str_t *ct,
    ngx_str_t *plain)
{
    u_char     *p;
    ngx_int_t   rc;
    ngx_str_t   aad, sealed;

    if (pf_pii_aad(pool, tenant, livemode, id, &aad)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    sealed.len = key->len + ct->len;
    sealed.data = ngx_pnalloc(pool, sealed.len);
    if (sealed.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(sealed.data, key->data, key->len);
    ngx_memcpy(p, ct->data, ct->len);

    rc = pf_unseal(pool, ring, &aad, &sealed, plain);

    return rc;
}


/* "payments\n<tenant>\n<t|l>\n<id>": what a ciphertext belongs to */

ngx_int_t
pf_pii_aad(ngx_pool_t *pool, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *aad)
{
    return pf_seal_aad(pool, "payments", tenant, livemode, id, aad);
}


/* the envelope was not sent after all: the error is answered as JSON */
