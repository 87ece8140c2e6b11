
/*
 * Copyright (C) PayFlow
 *
 * Envelope encryption of secrets at rest (docs/accounts.md).
 *
 * Each value gets its own data key (32 random bytes).  The value is
 * encrypted under it with AES-256-GCM, and the data key is encrypted
 * ("wrapped") under the operator's current key-encryption key, also with
 * AES-256-GCM.  Both carry the caller's additional data (table, tenant,
 * mode, row), the wrapped key also the KEK's id: a ciphertext moved to
 * another row, or a wrapped key to another KEK's name, fails to open.
 * One text holds it all:
 *
 *   pf1.<kek id>.<base64url: iv | wrapped key | tag>.<base64url: iv |
 *   ciphertext | tag>
 *
 * Re-wrapping under a new KEK (pf_reseal) changes the first part only.
 */


#include "pf_seal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>


#define PF_SEAL_IV     12
#define PF_SEAL_TAG    16
#define PF_SEAL_DEK    32
#define PF_SEAL_MAX    8192               /* plaintext bytes */


typedef struct {
    pf_kek_t      *kek;
    ngx_str_t      wrapped;                /* iv | key | tag, decoded */
    ngx_str_t      data;                   /* iv | ciphertext | tag */
} pf_seal_parts_t;


static ngx_int_t pf_seal_parse(ngx_pool_t *pool, pf_keyring_t *ring,
    ngx_str_t *in, pf_seal_parts_t *parts);
static ngx_int_t pf_seal_gcm(ngx_uint_t enc, const u_char *key,
    const u_char *iv, ngx_str_t *aad1, ngx_str_t *aad2, const u_char *in,
    size_t len, u_char *out, u_char *tag);
static ngx_int_t pf_seal_wrap(ngx_pool_t *pool, pf_kek_t *kek,
    ngx_str_t *aad, u_char *dek, ngx_str_t *out);
static ngx_int_t pf_seal_unwrap(pf_kek_t *kek, ngx_str_t *aad,
    ngx_str_t *wrapped, u_char *dek);
static ngx_int_t pf_seal_join(ngx_pool_t *pool, pf_kek_t *kek,
    ngx_str_t *wrapped, ngx_str_t *data, ngx_str_t *out);


/* payflow_kek <id> file=|env= [current]: hex is 64 hex digits */

ngx_int_t
pf_keyring_add(ngx_conf_t *cf, pf_keyring_t *ring, ngx_str_t *id,
    ngx_str_t *hex, ngx_uint_t current)
{
    ngx_int_t    c;
    ngx_uint_t   i;
    pf_kek_t    *kek;

    if (ring->keks.elts == NULL
        && ngx_array_init(&ring->keks, cf->pool, 2, sizeof(pf_kek_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (id->len == 0 || id->len > PF_KEK_ID_MAX) {
        return NGX_DECLINED;
    }

    for (i = 0; i < id->len; i++) {
        if (!(isalnum(id->data[i]) || id->data[i] == '_'
              || id->data[i] == '-'))
        {
            return NGX_DECLINED;
        }
    }

    kek = ring->keks.elts;

    for (i = 0; i < ring->keks.nelts; i++) {
        if (kek[i].id.len == id->len
            && ngx_strncmp(kek[i].id.data, id->data, id->len) == 0)
        {
            return NGX_BUSY;
        }
    }

    if (hex->len != 2 * PF_KEK_LEN) {
        return NGX_ABORT;
    }

    kek = ngx_array_push(&ring->keks);
    if (kek == NULL) {
        return NGX_ERROR;
    }

    kek->id = *id;

    for (i = 0; i < PF_KEK_LEN; i++) {
        c = ngx_hextoi(hex->data + 2 * i, 2);

        if (c == NGX_ERROR) {
            OPENSSL_cleanse(kek->key, sizeof(kek->key));
            ring->keks.nelts--;
            return NGX_ABORT;
        }

        kek->key[i] = (u_char) c;
    }

    if (current) {
        if (ring->marked) {
            return NGX_AGAIN;
        }

        /* the array may move as it grows: the pointer once it is whole */
        ring->marked = ring->keks.nelts;
    }

    return NGX_OK;
}


/* after the last payflow_kek: which one seals */

ngx_int_t
pf_keyring_ready(ngx_conf_t *cf, pf_keyring_t *ring)
{
    u_char      *p;
    pf_kek_t    *kek;
    ngx_uint_t   n;

    if (ring->keks.nelts == 0) {
        ring->current = NULL;
        return NGX_OK;
    }

    kek = ring->keks.elts;
    n = ring->marked;

    if (n == 0) {
        if (ring->keks.nelts > 1) {
            return NGX_DECLINED;
        }

        n = 1;
    }

    ring->current = &kek[n - 1];

    p = ngx_pnalloc(cf->pool, sizeof("pf1..") + ring->current->id.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ring->prefix.data = p;
    p = ngx_cpymem(p, "pf1.", 4);
    p = ngx_cpymem(p, ring->current->id.data, ring->current->id.len);
    *p++ = '.';
    ring->prefix.len = p - ring->prefix.data;
    *p = '\0';

    return NGX_OK;
}


/* "<table>\n<tenant>\n<t|l>\n<id>": the row a sealed value belongs to */

ngx_int_t
pf_seal_aad(ngx_pool_t *pool, const char *table, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *aad)
{
    u_char  *p;
    size_t   len;

    len = ngx_strlen(table);

    p = ngx_pnalloc(pool, len + tenant->len + id->len + 5);
    if (p == NULL) {
        return NGX_ERROR;
    }

    aad->data = p;

    p = ngx_cpymem(p, table, len);
    *p++ = '\n';
    p = ngx_cpymem(p, tenant->data, tenant->len);
    *p++ = '\n';
    *p++ = livemode ? 'l' : 't';
    *p++ = '\n';
    p = ngx_cpymem(p, id->data, id->len);

    aad->len = p - aad->data;

    return NGX_OK;
}


ngx_uint_t
pf_sealed(ngx_str_t *s)
{
    return s->len > 4 && ngx_strncmp(s->data, "pf1.", 4) == 0;
}


ngx_int_t
pf_seal(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *aad,
    ngx_str_t *in, ngx_str_t *out)
{
    ngx_int_t  rc;
    ngx_str_t  wrapped, data;
    u_char     dek[PF_SEAL_DEK];

    if (ring->current == NULL || in->len > PF_SEAL_MAX) {
        return NGX_ERROR;
    }

    data.len = PF_SEAL_IV + in->len + PF_SEAL_TAG;
    data.data = ngx_pnalloc(pool, data.len);
    if (data.data == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (RAND_bytes(dek, sizeof(dek)) != 1
        || RAND_bytes(data.data, PF_SEAL_IV) != 1)
    {
        goto done;
    }

    if (pf_seal_gcm(1, dek, data.data, aad, NULL, in->data, in->len,
                    data.data + PF_SEAL_IV,
                    data.data + PF_SEAL_IV + in->len)
        != NGX_OK)
    {
        goto done;
    }

    if (pf_seal_wrap(pool, ring->current, aad, dek, &wrapped) != NGX_OK) {
        goto done;
    }

    rc = pf_seal_join(pool, ring->current, &wrapped, &data, out);

done:

    OPENSSL_cleanse(dek, sizeof(dek));

    return rc;
}


/*
 * NGX_OK: out is the plaintext, in the pool (wipe it after use);
 * NGX_DECLINED: not ours to open (unknown KEK, malformed, or moved: the
 * tags do not match); NGX_ERROR: no memory.
 */

ngx_int_t
pf_unseal(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *aad,
    ngx_str_t *in, ngx_str_t *out)
{
    size_t           len;
    ngx_int_t        rc;
    pf_seal_parts_t  parts;
    u_char           dek[PF_SEAL_DEK];

    rc = pf_seal_parse(pool, ring, in, &parts);
    if (rc != NGX_OK) {
        return rc;
    }

    if (parts.data.len < PF_SEAL_IV + PF_SEAL_TAG) {
        return NGX_DECLINED;
    }

    if (pf_seal_unwrap(parts.kek, aad, &parts.wrapped, dek) != NGX_OK) {
        return NGX_DECLINED;
    }

    len = parts.data.len - PF_SEAL_IV - PF_SEAL_TAG;

    out->data = ngx_pnalloc(pool, len + 1);
    if (out->data == NULL) {
        OPENSSL_cleanse(dek, sizeof(dek));
        return NGX_ERROR;
    }

    rc = pf_seal_gcm(0, dek, parts.data.data, aad, NULL,
                     parts.data.data + PF_SEAL_IV, len, out->data,
                     parts.data.data + PF_SEAL_IV + len);

    OPENSSL_cleanse(dek, sizeof(dek));

    if (rc != NGX_OK) {
        OPENSSL_cleanse(out->data, len);
        return NGX_DECLINED;
    }

    out->len = len;
    out->data[len] = '\0';

    return NGX_OK;
}


/* the same value, its data key wrapped under the current KEK */

ngx_int_t
pf_reseal(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *aad,
    ngx_str_t *in, ngx_str_t *out)
{
    ngx_int_t        rc;
    ngx_str_t        wrapped;
    pf_seal_parts_t  parts;
    u_char           dek[PF_SEAL_DEK];

    if (ring->current == NULL) {
        return NGX_ERROR;
    }

    rc = pf_seal_parse(pool, ring, in, &parts);
    if (rc != NGX_OK) {
        return rc;
    }

    if (pf_seal_unwrap(parts.kek, aad, &parts.wrapped, dek) != NGX_OK) {
        return NGX_DECLINED;
    }

    rc = pf_seal_wrap(pool, ring->current, aad, dek, &wrapped);

    OPENSSL_cleanse(dek, sizeof(dek));

    if (rc != NGX_OK) {
        return rc;
    }

    return pf_seal_join(pool, ring->current, &wrapped, &parts.data, out);
}


static ngx_int_t
pf_seal_parse(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *in,
    pf_seal_parts_t *parts)
{
    u_char      *p, *last, *dot;
    ngx_str_t    id, s;
    pf_kek_t    *kek;
    ngx_uint_t   i;

    if (!pf_sealed(in)) {
        return NGX_DECLINED;
    }

    p = in->data + 4;
    last = in->data + in->len;

    dot = ngx_strlchr(p, last, '.');
    if (dot == NULL) {
        return NGX_DECLINED;
    }

    id.data = p;
    id.len = dot - p;

    kek = ring->keks.elts;
    parts->kek = NULL;

    for (i = 0; i < ring->keks.nelts; i++) {
        if (kek[i].id.len == id.len
            && ngx_strncmp(kek[i].id.data, id.data, id.len) == 0)
        {
            parts->kek = &kek[i];
            break;
        }
    }

    if (parts->kek == NULL) {
        return NGX_DECLINED;
    }

    p = dot + 1;
    dot = ngx_strlchr(p, last, '.');
    if (dot == NULL) {
        return NGX_DECLINED;
    }

    s.data = p;
    s.len = dot - p;

    parts->wrapped.data = ngx_pnalloc(pool, ngx_base64_decoded_length(s.len));
    if (parts->wrapped.data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64url(&parts->wrapped, &s) != NGX_OK
        || parts->wrapped.len != PF_SEAL_IV + PF_SEAL_DEK + PF_SEAL_TAG)
    {
        return NGX_DECLINED;
    }

    s.data = dot + 1;
    s.len = last - s.data;

    parts->data.data = ngx_pnalloc(pool, ngx_base64_decoded_length(s.len));
    if (parts->data.data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64url(&parts->data, &s) != NGX_OK) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* the data key under a KEK, its id bound in */

static ngx_int_t
pf_seal_wrap(ngx_pool_t *pool, pf_kek_t *kek, ngx_str_t *aad, u_char *dek,
    ngx_str_t *out)
{
    out->len = PF_SEAL_IV + PF_SEAL_DEK + PF_SEAL_TAG;
    out->data = ngx_pnalloc(pool, out->len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    if (RAND_bytes(out->data, PF_SEAL_IV) != 1) {
        return NGX_ERROR;
    }

    return pf_seal_gcm(1, kek->key, out->data, &kek->id, aad, dek,
                       PF_SEAL_DEK, out->data + PF_SEAL_IV,
                       out->data + PF_SEAL_IV + PF_SEAL_DEK);
}


static ngx_int_t
pf_seal_unwrap(pf_kek_t *kek, ngx_str_t *aad, ngx_str_t *wrapped,
    u_char *dek)
{
    return pf_seal_gcm(0, kek->key, wrapped->data, &kek->id, aad,
                       wrapped->data + PF_SEAL_IV, PF_SEAL_DEK, dek,
                       wrapped->data + PF_SEAL_IV + PF_SEAL_DEK);
}


static ngx_int_t
pf_seal_join(ngx_pool_t *pool, pf_kek_t *kek, ngx_str_t *wrapped,
    ngx_str_t *data, ngx_str_t *out)
{
    u_char     *p;
    ngx_str_t   s;

    out->data = ngx_pnalloc(pool, sizeof("pf1...") + kek->id.len
                                  + ngx_base64_encoded_length(wrapped->len)
                                  + ngx_base64_encoded_length(data->len));
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(out->data, "pf1.", 4);
    p = ngx_cpymem(p, kek->id.data, kek->id.len);
    *p++ = '.';

    s.data = p;
    ngx_encode_base64url(&s, wrapped);
    p += s.len;
    *p++ = '.';

    s.data = p;
    ngx_encode_base64url(&s, data);
    p += s.len;
    *p = '\0';

    out->len = p - out->data;

    return NGX_OK;
}


/* AES-256-GCM; decrypting, tag is checked (NGX_DECLINED if wrong) */

static ngx_int_t
pf_seal_gcm(ngx_uint_t enc, const u_char *key, const u_char *iv,
    ngx_str_t *aad1, ngx_str_t *aad2, const u_char *in, size_t len,
    u_char *out, u_char *tag)
{
    int              n, ok;
    u_char           lb[4];
    ngx_str_t       *aad;
    ngx_uint_t       i;
    EVP_CIPHER_CTX  *ctx;

    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL,
                           (int) enc) == 1
         && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, PF_SEAL_IV,
                                NULL) == 1
         && EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, (int) enc) == 1;

    /* each piece of additional data length-prefixed: no two read alike */

    for (i = 0; ok && i < 2; i++) {
        aad = i ? aad2 : aad1;

        if (aad == NULL) {
            continue;
        }

        lb[0] = (u_char) (aad->len >> 24);
        lb[1] = (u_char) (aad->len >> 16);
        lb[2] = (u_char) (aad->len >> 8);
        lb[3] = (u_char) aad->len;

        ok = EVP_CipherUpdate(ctx, NULL, &n, lb, 4) == 1
             && (aad->len == 0
                 || EVP_CipherUpdate(ctx, NULL, &n, aad->data,
                                     (int) aad->len) == 1);
    }

    if (ok && len) {
        ok = EVP_CipherUpdate(ctx, out, &n, in, (int) len) == 1;
    }

    if (ok && !enc) {
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, PF_SEAL_TAG,
                                 tag) == 1;
    }

    if (ok) {
        ok = EVP_CipherFinal_ex(ctx, out + len, &n) == 1;

        if (!ok && !enc) {
            EVP_CIPHER_CTX_free(ctx);
            return NGX_DECLINED;
        }
    }

    if (ok && enc) {
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, PF_SEAL_TAG,
                                 tag) == 1;
    }

    EVP_CIPHER_CTX_free(ctx);

    return ok ? NGX_OK : NGX_ERROR;
}
