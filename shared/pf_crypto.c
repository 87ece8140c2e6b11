
/*
 * Copyright (C) PayFlow
 *
 * API key format, peppered key hashes and secrets read at configuration.
 *
 * Keys are "pf_test_" or "pf_live_", 32 random base62 characters and a
 * 6-character base62 CRC32 of what precedes it, so that a malformed or
 * mistyped key is refused without any lookup and secret scanners can
 * recognise real ones.  Only HMAC-SHA256(pepper, key) is ever stored.
 */


#include "pf_crypto.h"
#include "pf_id.h"


static void pf_key_checksum(u_char *key, u_char *check);


ngx_int_t
pf_hmac_init(pf_hmac_t *h, ngx_str_t *key)
{
    u_char        block[64], digest[PF_SHA256_LEN];
    size_t        len;
    ngx_uint_t    i;
    unsigned int  n;
    const EVP_MD *md;

    md = EVP_sha256();

    ngx_memzero(block, sizeof(block));

    if (key->len > sizeof(block)) {
        if (EVP_Digest(key->data, key->len, digest, &n, md, NULL) != 1) {
            return NGX_ERROR;
        }

        len = n;
        ngx_memcpy(block, digest, len);

    } else {
        ngx_memcpy(block, key->data, key->len);
    }

    h->inner = EVP_MD_CTX_new();
    h->outer = EVP_MD_CTX_new();
    h->work = EVP_MD_CTX_new();

    if (h->inner == NULL || h->outer == NULL || h->work == NULL) {
        goto failed;
    }

    for (i = 0; i < sizeof(block); i++) {
        block[i] ^= 0x36;
    }

    if (EVP_DigestInit_ex(h->inner, md, NULL) != 1
        || EVP_DigestUpdate(h->inner, block, sizeof(block)) != 1)
    {
        goto failed;
    }

    for (i = 0; i < sizeof(block); i++) {
        block[i] ^= 0x36 ^ 0x5c;
    }

    if (EVP_DigestInit_ex(h->outer, md, NULL) != 1
        || EVP_DigestUpdate(h->outer, block, sizeof(block)) != 1)
    {
        goto failed;
    }

    OPENSSL_cleanse(block, sizeof(block));

    return NGX_OK;

failed:

    OPENSSL_cleanse(block, sizeof(block));
    pf_hmac_free(h);

    return NGX_ERROR;
}


void
pf_hmac_free(pf_hmac_t *h)
{
    EVP_MD_CTX_free(h->inner);
    EVP_MD_CTX_free(h->outer);
    EVP_MD_CTX_free(h->work);

    h->inner = NULL;
    h->outer = NULL;
    h->work = NULL;
}


ngx_int_t
pf_hmac_sha256(pf_hmac_t *h, u_char *data, size_t len, u_char *out)
{
    u_char        inner[PF_SHA256_LEN];
    unsigned int  n;

    if (EVP_MD_CTX_copy_ex(h->work, h->inner) != 1
        || EVP_DigestUpdate(h->work, data, len) != 1
        || EVP_DigestFinal_ex(h->work, inner, &n) != 1
        || EVP_MD_CTX_copy_ex(h->work, h->outer) != 1
        || EVP_DigestUpdate(h->work, inner, sizeof(inner)) != 1
        || EVP_DigestFinal_ex(h->work, out, &n) != 1)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* writes PF_KEY_LEN characters */

ngx_int_t
pf_key_generate(u_char *key, ngx_uint_t livemode)
{
    u_char  *p;

    p = ngx_cpymem(key, livemode ? "pf_live_" : "pf_test_",
                   PF_KEY_PREFIX_LEN);

    if (pf_id_base62(p, PF_KEY_RANDOM_LEN) == NULL) {
        return NGX_ERROR;
    }

    pf_key_checksum(key, p + PF_KEY_RANDOM_LEN);

    return NGX_OK;
}


ngx_uint_t
pf_key_well_formed(ngx_str_t *key)
{
    u_char      ch, check[PF_KEY_CHECK_LEN];
    ngx_uint_t  i;

    if (key->len != PF_KEY_LEN || pf_key_livemode(key) == NGX_ERROR) {
        return 0;
    }

    for (i = PF_KEY_PREFIX_LEN; i < PF_KEY_LEN; i++) {
        ch = key->data[i];

        if (!((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z')
              || (ch >= 'a' && ch <= 'z')))
        {
            return 0;
        }
    }

    pf_key_checksum(key->data, check);

    return ngx_memcmp(check, key->data + PF_KEY_LEN - PF_KEY_CHECK_LEN,
                      PF_KEY_CHECK_LEN) == 0;
}


/*
 * Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]: the first t=
 * (in ts and t) and up to max v1= values, pointing into the header; v0
 * and other schemes are ignored.  NGX_DECLINED if there is no usable t=.
 */

ngx_int_t
pf_stripe_signature_parse(ngx_str_t *header, ngx_str_t *ts, time_t *t,
    ngx_str_t *v1, ngx_uint_t max, ngx_uint_t *n)
{
    u_char  *p, *end, *last;

    ngx_str_null(ts);
    *n = 0;

    last = header->data + header->len;

    for (p = header->data; p < last; p = end + 1) {
        end = ngx_strlchr(p, last, ',');
        if (end == NULL) {
            end = last;
        }

        if (end - p > 2 && p[0] == 't' && p[1] == '=' && ts->len == 0) {
            ts->data = p + 2;
            ts->len = end - p - 2;

        } else if (end - p > 3 && ngx_strncmp(p, "v1=", 3) == 0
                   && *n < max)
        {
            v1[*n].data = p + 3;
            v1[*n].len = end - p - 3;
            (*n)++;
        }
    }

    *t = (ts->len && ts->len <= NGX_TIME_T_LEN) ? ngx_atotm(ts->data, ts->len)
                                                : NGX_ERROR;

    return (*t == NGX_ERROR) ? NGX_DECLINED : NGX_OK;
}


/* 1 for pf_live_, 0 for pf_test_, NGX_ERROR for anything else */

ngx_int_t
pf_key_livemode(ngx_str_t *key)
{
    if (key->len < PF_KEY_PREFIX_LEN) {
        return NGX_ERROR;
    }

    if (ngx_strncmp(key->data, "pf_test_", PF_KEY_PREFIX_LEN) == 0) {
        return 0;
    }

    if (ngx_strncmp(key->data, "pf_live_", PF_KEY_PREFIX_LEN) == 0) {
        return 1;
    }

    return NGX_ERROR;
}


static void
pf_key_checksum(u_char *key, u_char *check)
{
    uint32_t    crc;
    ngx_int_t   i;

    crc = ngx_crc32_long(key, PF_KEY_PREFIX_LEN + PF_KEY_RANDOM_LEN);

    for (i = PF_KEY_CHECK_LEN - 1; i >= 0; i--) {
        check[i] = pf_id_alphabet[crc % 62];
        crc /= 62;
    }
}
