
/*
 * Copyright (C) PayFlow
 *
 * Prefixed random identifiers (req_, ten_, key_, ...), drawn from
 * OpenSSL's CSPRNG, which does not block once seeded; those of the write
 * path (pay_, re_) begin with the time they were made, so that the
 * indexes they lead grow at their right edge (sql/0030).
 */


#include "pf_id.h"

#include <openssl/rand.h>


const u_char  pf_id_alphabet[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";


/*
 * Random bytes are drawn from OpenSSL in batches: one call serves dozens
 * of ids.  The batch belongs to the process that drew it; a forked worker
 * never reuses its parent's bytes.
 */

static u_char  pf_id_random[4096];
static size_t  pf_id_random_left;
static ngx_pid_t  pf_id_random_pid;


static ngx_int_t pf_id_make(ngx_pool_t *pool, const char *prefix,
    ngx_str_t *id, ngx_uint_t ordered);


static ngx_int_t
pf_id_refill(void)
{
    if (RAND_bytes(pf_id_random, sizeof(pf_id_random)) != 1) {
        pf_id_random_left = 0;
        return NGX_ERROR;
    }

    pf_id_random_left = sizeof(pf_id_random);
    pf_id_random_pid = ngx_pid;

    return NGX_OK;
}


/*
 * Writes n uniformly distributed base62 characters: bytes of 248 and above
 * are rejected so that "byte % 62" has no bias.  Used bytes are wiped.
 */

u_char *
pf_id_base62(u_char *dst, size_t n)
{
    u_char  *p;

    if (pf_id_random_pid != ngx_pid) {
        pf_id_random_left = 0;
    }

    while (n) {
        if (pf_id_random_left == 0 && pf_id_refill() != NGX_OK) {
            return NULL;
        }

        p = &pf_id_random[sizeof(pf_id_random) - pf_id_random_left];
        pf_id_random_left--;

        if (*p < 248) {
            *dst++ = pf_id_alphabet[*p % 62];
            n--;
        }

        *p = 0;
    }

    return dst;
}


ngx_int_t
pf_id_generate(ngx_pool_t *pool, const char *prefix, ngx_str_t *id)
{
    return pf_id_make(pool, prefix, id, 0);
}


ngx_int_t
pf_id_generate_ordered(ngx_pool_t *pool, const char *prefix, ngx_str_t *id)
{
    return pf_id_make(pool, prefix, id, 1);
}


/* prefix, [the time in milliseconds as hex,] random base62 characters */

static ngx_int_t
pf_id_make(ngx_pool_t *pool, const char *prefix, ngx_str_t *id,
    ngx_uint_t ordered)
{
    u_char      *p;
    size_t       len, n;
    uint64_t     ms;
    ngx_uint_t   i;
    ngx_time_t  *tp;

    static u_char  hex[] = "0123456789abcdef";

    len = ngx_strlen(prefix);

    p = ngx_pnalloc(pool, len + PF_ID_RANDOM_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->data = p;
    p = ngx_cpymem(p, prefix, len);
    n = PF_ID_RANDOM_LEN;

    if (ordered) {
        tp = ngx_timeofday();
        ms = (uint64_t) tp->sec * 1000 + tp->msec;

        for (i = PF_ID_TIME_LEN; i-- > 0; /* void */) {
            p[i] = hex[ms & 0xf];
            ms >>= 4;
        }

        p += PF_ID_TIME_LEN;
        n -= PF_ID_TIME_LEN;
    }

    p = pf_id_base62(p, n);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->len = p - id->data;

    return NGX_OK;
}
