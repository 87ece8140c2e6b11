
/*
 * Copyright (C) PayFlow
 *
 * libFuzzer harness: the Stripe-Signature header parser an inbound Stripe
 * webhook goes through before its HMAC is checked.  Every part it returns
 * lies within the header, at most max v1 values, and t is what the t=
 * part says.
 */


#include "pf_crypto.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    time_t      t;
    u_char     *buf;
    ngx_int_t   rc;
    ngx_str_t   header, ts, v1[8];
    ngx_uint_t  i, n;

    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    header.data = buf;
    header.len = size;

    rc = pf_stripe_signature_parse(&header, &ts, &t, v1, 8, &n);

    if (n > 8) {
        abort();
    }

    for (i = 0; i < n; i++) {
        if (v1[i].len == 0 || v1[i].data < buf
            || v1[i].data + v1[i].len > buf + size
            || ngx_strlchr(v1[i].data, v1[i].data + v1[i].len, ',') != NULL)
        {
            abort();
        }
    }

    if (rc == NGX_OK
        && (ts.len == 0 || ts.data < buf || ts.data + ts.len > buf + size
            || t != ngx_atotm(ts.data, ts.len) || t < 0))
    {
        abort();
    }

    free(buf);

    return 0;
}
