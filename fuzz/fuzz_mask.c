
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: pf_mask() over any bytes, as the masking log writer
 * runs it on every error-log line.  It must stay within the buffer, keep
 * the length, and leave no PayFlow key, admin credential or webhook
 * secret unmasked that it was given whole.
 */


#include "pf_mask.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
pf_fuzz_word(u_char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9');
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char  *buf, *p, *last;
    size_t   i, n;

    /* an exact-size copy: ASan sees any byte read or written past it */
    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    pf_mask(buf, buf + size);

    /* an API key whose random part was in the input whole is masked */

    last = buf + size;

    for (p = buf; p + 8 + 38 <= last; p++) {
        if (memcmp(p, "pf_test_", 8) != 0 && memcmp(p, "pf_live_", 8) != 0) {
            continue;
        }

        n = 0;

        for (i = 8; i < 8 + 38 && pf_fuzz_word(p[i]); i++) {
            n++;
        }

        if (n == 38) {
            abort();
        }
    }

    free(buf);

    return 0;
}
