
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_CRYPTO_H_INCLUDED_
#define _PF_CRYPTO_H_INCLUDED_


#include "pf_common.h"

#include <openssl/evp.h>


#define PF_SHA256_LEN      32

/* pf_test_ | pf_live_, 32 random base62, 6 base62 of CRC32 */
#define PF_KEY_PREFIX_LEN  8
#define PF_KEY_RANDOM_LEN  32
#define PF_KEY_CHECK_LEN   6
#define PF_KEY_LEN         (PF_KEY_PREFIX_LEN + PF_KEY_RANDOM_LEN            \
                            + PF_KEY_CHECK_LEN)


/* HMAC-SHA256 under one fixed key, with both pads hashed once */

typedef struct {
    EVP_MD_CTX    *inner;
    EVP_MD_CTX    *outer;
    EVP_MD_CTX    *work;
} pf_hmac_t;


ngx_int_t pf_hmac_init(pf_hmac_t *h, ngx_str_t *key);
void pf_hmac_free(pf_hmac_t *h);
ngx_int_t pf_hmac_sha256(pf_hmac_t *h, u_char *data, size_t len,
    u_char *out);

ngx_int_t pf_stripe_signature_parse(ngx_str_t *header, ngx_str_t *ts,
    time_t *t, ngx_str_t *v1, ngx_uint_t max, ngx_uint_t *n);

ngx_int_t pf_key_generate(u_char *key, ngx_uint_t livemode);
ngx_uint_t pf_key_well_formed(ngx_str_t *key);
ngx_int_t pf_key_livemode(ngx_str_t *key);


#endif /* _PF_CRYPTO_H_INCLUDED_ */
