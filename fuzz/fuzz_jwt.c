
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: pf_jwt_verify() over any token, with one HS256 key,
 * an issuer and an audience configured as payflow_jwt would.  A token it
 * accepts must carry claims of the shapes the module relies on.
 */


#include "pf_jwt.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* the secret of fuzz/corpus/jwt's seeds (tools/jwt-seeds) */
#define PF_FUZZ_SECRET  "fuzz-secret-fuzz-secret-fuzz-sec"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t            i;
    ngx_int_t         rc;
    ngx_str_t         token;
    ngx_log_t         log;
    ngx_pool_t       *pool;
    const char       *reason;
    pf_jwt_key_t     *key;
    pf_jwt_conf_t     conf;
    pf_jwt_claims_t   claims;

    if (ngx_pagesize == 0) {
        ngx_pagesize = getpagesize();
    }

    ngx_memzero(&log, sizeof(ngx_log_t));

    pool = ngx_create_pool(4096, &log);
    if (pool == NULL) {
        return 0;
    }

    ngx_memzero(&conf, sizeof(pf_jwt_conf_t));

    if (ngx_array_init(&conf.keys, pool, 1, sizeof(pf_jwt_key_t)) != NGX_OK) {
        goto done;
    }

    key = ngx_array_push(&conf.keys);
    if (key == NULL) {
        goto done;
    }

    ngx_memzero(key, sizeof(pf_jwt_key_t));
    ngx_str_set(&key->kid, "hs");
    key->alg = PF_JWT_HS256;
    ngx_str_set(&key->secret, PF_FUZZ_SECRET);

    ngx_str_set(&conf.issuer, "https://dash.payflow.test");
    ngx_str_set(&conf.audience, "payflow-api");
    conf.leeway = 30;

    /* the token in a buffer of its own size, as in a request header */
    token.len = size;
    token.data = ngx_pnalloc(pool, size ? size : 1);
    if (token.data == NULL) {
        goto done;
    }

    ngx_memcpy(token.data, data, size);

    rc = pf_jwt_verify(pool, &conf, &token, 1800000000, &claims, &reason);

    if (rc == NGX_OK) {
        if (claims.tenant.len == 0 || claims.tenant.len > 64
            || claims.role.len == 0 || claims.exp <= 0)
        {
            abort();
        }

        for (i = 0; i < claims.tenant.len; i++) {
            u_char c = claims.tenant.data[i];

            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                  || (c >= '0' && c <= '9') || c == '_'))
            {
                abort();
            }
        }

    } else if (rc != NGX_ERROR && reason == NULL) {
        abort();
    }

done:

    ngx_destroy_pool(pool);

    return 0;
}
