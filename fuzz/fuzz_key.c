
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: the API-key format check every request's bearer
 * token passes before any lookup (pf_key_well_formed, pf_key_livemode),
 * and the key generator against it: a generated key is always well
 * formed, in its mode, and a one-byte change of it never is.
 */


#include "pf_crypto.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *buf, key[PF_KEY_LEN];
    ngx_str_t   s;
    ngx_int_t   mode;

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    s.data = buf;
    s.len = size;

    mode = pf_key_livemode(&s);

    if (pf_key_well_formed(&s) && (size != PF_KEY_LEN || mode == NGX_ERROR)) {
        abort();
    }

    free(buf);

    /* a fresh key, and the same key with one byte the input chose changed */

    if (size < 2) {
        return 0;
    }

    if (pf_key_generate(key, data[0] & 1) != NGX_OK) {
        return 0;
    }

    s.data = key;
    s.len = PF_KEY_LEN;

    if (!pf_key_well_formed(&s) || pf_key_livemode(&s) != (data[0] & 1)) {
        abort();
    }

    if (key[data[1] % PF_KEY_LEN] != (data[0] | 0x01)) {
        key[data[1] % PF_KEY_LEN] = data[0] | 0x01;

        /* the checksum may collide: 1 in 62^6, never in practice */
        if (pf_key_well_formed(&s) && data[1] % PF_KEY_LEN >= 8
            && pf_key_livemode(&s) != NGX_ERROR)
        {
            u_char  c = key[data[1] % PF_KEY_LEN];

            if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
                  || (c >= 'a' && c <= 'z')))
            {
                abort();
            }
        }
    }

    return 0;
}
