
/*
 * Copyright (C) PayFlow
 *
 * Prefixed random identifiers (req_, pay_, re_, ...): never sequential,
 * drawn from OpenSSL's CSPRNG, which does not block once seeded.
 */


#include "pf_id.h"

#include <openssl/rand.h>


const u_char  pf_id_alphabet[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";


/*
 * Writes n uniformly distributed base62 characters: bytes of 248 and above
 * are rejected so that "byte % 62" has no bias.
 */

u_char *
pf_id_base62(u_char *dst, size_t n)
{
    u_char  rnd[64], *p, *last;

    while (n) {
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            return NULL;
        }

        last = rnd + sizeof(rnd);

        for (p = rnd; p < last && n; p++) {
            if (*p >= 248) {
                continue;
            }

            *dst++ = pf_id_alphabet[*p % 62];
            n--;
        }
    }

    return dst;
}


ngx_int_t
pf_id_generate(ngx_pool_t *pool, const char *prefix, ngx_str_t *id)
{
    u_char  *p;
    size_t   len;

    len = ngx_strlen(prefix);

    p = ngx_pnalloc(pool, len + PF_ID_RANDOM_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->data = p;
    p = ngx_cpymem(p, prefix, len);

    p = pf_id_base62(p, PF_ID_RANDOM_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->len = p - id->data;

    return NGX_OK;
}
