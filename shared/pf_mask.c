
/*
 * Copyright (C) PayFlow
 *
 * Masks, in place and at the same length, what must not reach a log:
 * e-mail addresses (a***@example.com, also with the "@" percent-encoded as
 * in a query string), PayFlow keys and admin credentials
 * (pf_test_****...wxyz), webhook secrets (whsec_****, the whole base64
 * secret, "+", "/", "=" and their percent-encoded forms included).  Used
 * on every error-log line a worker writes (ngx_http_payflow_log_writer).
 */


#include "pf_mask.h"


#define pf_mask_word(c)                                                       \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')               \
     || ((c) >= '0' && (c) <= '9') || (c) == '_' || (c) == '-')

#define pf_mask_local(c)                                                      \
    (pf_mask_word(c) || (c) == '.' || (c) == '+' || (c) == '%')

#define pf_mask_base64(c)                                                     \
    (pf_mask_word(c) || (c) == '+' || (c) == '/' || (c) == '=')

#define pf_mask_hex(c)                                                        \
    (((c) >= '0' && (c) <= '9') || ((c) >= 'a' && (c) <= 'f')               \
     || ((c) >= 'A' && (c) <= 'F'))


static void pf_mask_email(u_char *start, u_char *end, u_char *at,
    size_t len);
static u_char *pf_mask_secret(u_char *p, u_char *end);


void
pf_mask(u_char *start, u_char *end)
{
    u_char  *p;

    for (p = start; p < end; p++) {

        if (*p == '@') {
            pf_mask_email(start, end, p, 1);
            continue;
        }

        if (*p == '%' && end - p >= 3 && p[1] == '4' && p[2] == '0') {
            pf_mask_email(start, end, p, 3);
            p += 2;
            continue;
        }

        if (*p == 'p' || *p == 'w') {
            p = pf_mask_secret(p, end);
        }
    }
}


/* keeps the first character of the local part and the domain */

static void
pf_mask_email(u_char *start, u_char *end, u_char *at, size_t len)
{
    u_char  *p;

    if (at + len >= end || !pf_mask_word(at[len])) {
        return;
    }

    for (p = at; p > start && pf_mask_local(p[-1]); p--) {
        /* void */
    }

    if (at - p < 2) {
        return;
    }

    for (p++; p < at; p++) {
        *p = '*';
    }
}


/* returns the last byte looked at */

static u_char *
pf_mask_secret(u_char *p, u_char *end)
{
    u_char      *s, *last;
    size_t       prefix, keep;
    ngx_uint_t   base64;

    if (end - p >= 8
        && (ngx_strncmp(p, "pf_test_", 8) == 0
            || ngx_strncmp(p, "pf_live_", 8) == 0))
    {
        prefix = 8;
        keep = 4;
        base64 = 0;

    } else if (end - p >= 9 && ngx_strncmp(p, "pf_admin_", 9) == 0) {
        prefix = 9;
        keep = 0;
        base64 = 0;

    } else if (end - p >= 6 && ngx_strncmp(p, "whsec_", 6) == 0) {
        prefix = 6;
        keep = 0;
        base64 = 1;

    } else {
        return p;
    }

    s = p + prefix;

    for (last = s; last < end; last++) {

        if (pf_mask_word(*last) || (base64 && pf_mask_base64(*last))) {
            continue;
        }

        /* "+", "/", "=" percent-encoded, as in a query string */

        if (base64 && *last == '%' && end - last >= 3
            && pf_mask_hex(last[1]) && pf_mask_hex(last[2]))
        {
            last += 2;
            continue;
        }

        break;
    }

    if ((size_t) (last - s) <= keep) {
        return last - 1;
    }

    for ( /* void */ ; s < last - keep; s++) {
        *s = '*';
    }

    return last - 1;
}
