
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: sealed secrets (pf_seal.c) as a row may hold them.
 * The input is opened and wrapped again as a stored value would be (it
 * may be anything a database or an attacker with write access put there):
 * never a crash, never a plaintext from a ciphertext the keys did not
 * seal.  Then the input's bytes are sealed, opened back to the same bytes,
 * refused under another row's additional data, and wrapped again under the
 * other key to the same bytes.
 */


#include "pf_seal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pf_kek_t      *kek;
    ngx_int_t      rc;
    ngx_log_t      log;
    ngx_str_t      in, out, sealed, again, aad, other;
    ngx_pool_t    *pool;
    pf_keyring_t   ring;

    if (ngx_pagesize == 0) {
        ngx_pagesize = getpagesize();
    }

    ngx_memzero(&log, sizeof(ngx_log_t));

    pool = ngx_create_pool(4096, &log);
    if (pool == NULL) {
        return 0;
    }

    ngx_memzero(&ring, sizeof(pf_keyring_t));

    if (ngx_array_init(&ring.keks, pool, 2, sizeof(pf_kek_t)) != NGX_OK) {
        goto done;
    }

    kek = ngx_array_push_n(&ring.keks, 2);
    if (kek == NULL) {
        goto done;
    }

    ngx_str_set(&kek[0].id, "k1");
    ngx_memset(kek[0].key, 0x11, PF_KEK_LEN);
    ngx_str_set(&kek[1].id, "k2");
    ngx_memset(kek[1].key, 0x22, PF_KEK_LEN);
    ring.current = &kek[0];

    ngx_str_set(&aad, "webhook_endpoints\nten_fuzz\nt\nwe_1");
    ngx_str_set(&other, "webhook_endpoints\nten_fuzz\nt\nwe_2");

    in.data = ngx_pnalloc(pool, size ? size : 1);
    if (in.data == NULL) {
        goto done;
    }

    ngx_memcpy(in.data, data, size);
    in.len = size;

    /* the input as a stored value */

    (void) pf_unseal(pool, &ring, &aad, &in, &out);
    (void) pf_reseal(pool, &ring, &aad, &in, &out);

    /* the input as a secret */

    if (size > 8192) {
        goto done;
    }

    if (pf_seal(pool, &ring, &aad, &in, &sealed) != NGX_OK) {
        abort();
    }

    if (pf_unseal(pool, &ring, &aad, &sealed, &out) != NGX_OK
        || out.len != size || ngx_memcmp(out.data, data, size) != 0)
    {
        abort();
    }

    rc = pf_unseal(pool, &ring, &other, &sealed, &out);
    if (rc != NGX_DECLINED) {
        abort();
    }

    ring.current = &kek[1];

    if (pf_reseal(pool, &ring, &aad, &sealed, &again) != NGX_OK
        || ngx_strncmp(again.data, "pf1.k2.", 7) != 0
        || pf_unseal(pool, &ring, &aad, &again, &out) != NGX_OK
        || out.len != size || ngx_memcmp(out.data, data, size) != 0)
    {
        abort();
    }

done:

    ngx_destroy_pool(pool);

    return 0;
}
