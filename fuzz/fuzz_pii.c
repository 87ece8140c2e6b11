
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: the sealed customer details of answers on their way
 * out (pf_pii.c).  The input is JSON text as an answer may carry it
 * (tenants write descriptions and metadata into it): the tokens found lie
 * inside it, in order, apart; spliced with no keys, each becomes
 * "erased": true and nothing else changes.  Then a payment sealed by the
 * harness is put in front of the input: it opens to its details with its
 * key, and does not under another tenant.
 */


#include "pf_pii.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static const char  pf_fuzz_erased[] = "\"erased\": true";


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char          *p, *dot;
    size_t           len;
    pf_kek_t        *kek;
    ngx_log_t        log;
    ngx_str_t        body, out, aad, plain, sealed, tenant, other, id;
    ngx_str_t       *failed;
    ngx_uint_t       i;
    ngx_pool_t      *pool;
    ngx_array_t     *tokens;
    pf_keyring_t     ring;
    pf_pii_token_t  *t;

    if (ngx_pagesize == 0) {
        ngx_pagesize = getpagesize();
    }

    ngx_memzero(&log, sizeof(ngx_log_t));

    pool = ngx_create_pool(4096, &log);
    if (pool == NULL) {
        return 0;
    }

    ngx_memzero(&ring, sizeof(pf_keyring_t));

    if (ngx_array_init(&ring.keks, pool, 1, sizeof(pf_kek_t)) != NGX_OK) {
        goto done;
    }

    kek = ngx_array_push(&ring.keks);
    if (kek == NULL) {
        goto done;
    }

    ngx_str_set(&kek->id, "k1");
    ngx_memset(kek->key, 0x33, PF_KEK_LEN);
    ring.current = kek;

    ngx_str_set(&tenant, "ten_fuzz");
    ngx_str_set(&other, "ten_other");
    ngx_str_set(&id, "pay_000000000000000000000001");

    body.data = ngx_pnalloc(pool, size ? size : 1);
    if (body.data == NULL) {
        goto done;
    }

    ngx_memcpy(body.data, data, size);
    body.len = size;

    /* the input alone: tokens inside it, erased without keys */

    if (pf_pii_tokens(pool, &body, &tokens) == NGX_OK) {
        t = tokens->elts;
        len = body.len;

        for (i = 0; i < tokens->nelts; i++) {
            if (t[i].start < (i ? t[i - 1].end : body.data)
                || t[i].end <= t[i].start
                || t[i].end > body.data + body.len
                || t[i].id.data < t[i].start || t[i].ct.data < t[i].id.data
                || t[i].ct.data + t[i].ct.len >= t[i].end)
            {
                abort();
            }

            len += sizeof(pf_fuzz_erased) - 1 - (t[i].end - t[i].start);
        }

        failed = NULL;

        if (pf_pii_splice(pool, &ring, &tenant, 0, &body, tokens, &out,
                          &failed)
            != NGX_OK
            || out.len != len)
        {
            abort();
        }
    }

    /* a payment the harness sealed, ahead of the input */

    if (size > 4096) {
        goto done;
    }

    plain.data = ngx_pnalloc(pool, 2 * 16 + sizeof("\"email\": \"\""));
    if (plain.data == NULL) {
        goto done;
    }

    p = ngx_cpymem(plain.data, "\"email\": \"", 10);
    p = ngx_hex_dump(p, (u_char *) data, ngx_min(size, 16));
    *p++ = '"';
    plain.len = p - plain.data;

    if (pf_pii_aad(pool, &tenant, 0, &id, &aad) != NGX_OK
        || pf_seal(pool, &ring, &aad, &plain, &sealed) != NGX_OK)
    {
        abort();
    }

    for (dot = sealed.data + sealed.len - 1; *dot != '.'; dot--) {
        /* void */
    }

    dot++;

    body.len = sizeof("{\"customer\": {\"pii\": \".\"}, \"x\": ") - 1
               + id.len + (sealed.data + sealed.len - dot) + size + 1;
    body.data = ngx_pnalloc(pool, body.len);
    if (body.data == NULL) {
        goto done;
    }

    p = ngx_cpymem(body.data, "{\"customer\": {\"pii\": \"", 22);
    p = ngx_cpymem(p, id.data, id.len);
    *p++ = '.';
    p = ngx_cpymem(p, dot, sealed.data + sealed.len - dot);
    p = ngx_cpymem(p, "\"}, \"x\": ", 9);
    p = ngx_cpymem(p, data, size);
    *p++ = '}';
    body.len = p - body.data;

    if (pf_pii_tokens(pool, &body, &tokens) != NGX_OK) {
        abort();
    }

    /* its key for its own token only: the input's are any row's */

    t = tokens->elts;

    if (t[0].start != body.data + 14) {
        abort();
    }

    t[0].key.data = sealed.data;
    t[0].key.len = dot - sealed.data;

    failed = NULL;

    if (pf_pii_splice(pool, &ring, &tenant, 0, &body, tokens, &out, &failed)
        != NGX_OK
        || out.len < plain.len
        || ngx_memcmp(out.data + 14, plain.data, plain.len) != 0)
    {
        abort();
    }

    if (pf_pii_splice(pool, &ring, &other, 0, &body, tokens, &out, &failed)
        != NGX_DECLINED
        || failed == NULL)
    {
        abort();
    }

done:

    ngx_destroy_pool(pool);

    return 0;
}
