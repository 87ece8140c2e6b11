
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: pf_text_valid(), the check an Idempotency-Key or a
 * query value passes before it reaches PostgreSQL, against an independent
 * reading of UTF-8 (RFC 3629): both must agree on every input.
 */


#include "pf_json.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
pf_fuzz_utf8(const uint8_t *p, size_t n)
{
    size_t    i, k, need;
    uint32_t  c, min;

    for (i = 0; i < n; /* void */) {
        c = p[i];

        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) {
                return 0;
            }

            i++;
            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            need = 1; c &= 0x1f; min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2; c &= 0x0f; min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3; c &= 0x07; min = 0x10000;
        } else {
            return 0;
        }

        /* fewer bytes left than the sequence needs */

        if (n - i - 1 < need) {
            return 0;
        }

        for (k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            c = (c << 6) | (p[i + k] & 0x3f);
        }

        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
            return 0;
        }

        i += need + 1;
    }

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char  *buf;

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    if ((pf_text_valid(buf, size) != 0) != (pf_fuzz_utf8(data, size) != 0)) {
        abort();
    }

    free(buf);

    return 0;
}
