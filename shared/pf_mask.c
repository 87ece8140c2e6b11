
/*
 * Copyright (C) PayFlow
 *
 * Masks, in place and at the same length, what must not reach a log:
 * e-mail addresses (a***@example.com), PayFlow keys and admin credentials
 * (pf_test_****...wxyz), webhook secrets (whsec_****).  Used on text nginx
 * itself writes about a request: the request line, host, referrer.
 */


#include "pf_mask.h"


#define pf_mask_word(c)                                                       \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')               \
     || ((c) >= '0' && (c) <= '9') || (c) == '_' || (c) == '-')

#define pf_mask_local(c)                                                      \
    (pf_mask_word(c) || (c) == '.' || (c) == '+' || (c) == '%')


static void pf_mask_email(u_char *start, u_char *end, u_char *at);
static u_char *pf_mask_secret(u_char *p, u_char *end);


void
pf_mask(u_char *start, u_char *end)
{
    u_char  *p;

    for (p = start; p < end; p++) {

        if (*p == '@') {
            pf_mask_email(start, end, p);
            continue;
        }

        if (*p == 'p' || *p == 'w') {
            p = pf_mask_secret(p, end);
        }
    }
}


/* keeps the first character of the local part and the domain */

static void
pf_mask_email(u_char *start, u_char *end, u_char *at)
{
    u_char  *p;

    if (at + 1 >= end || !pf_mask_word(at[1])) {
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
    u_char  *s, *last;
    size_t   prefix, keep;

    if (end - p >= 8
        && (ngx_strncmp(p, "pf_test_", 8) == 0
            || ngx_strncmp(p, "pf_live_", 8) == 0))
    {
        prefix = 8;
        keep = 4;

    } else if (end - p >= 9 && ngx_strncmp(p, "pf_admin_", 9) == 0) {
        prefix = 9;
        keep = 0;

    } else if (end - p >= 6 && ngx_strncmp(p, "whsec_", 6) == 0) {
        prefix = 6;
        keep = 0;

    } else {
        return p;
    }

    s = p + prefix;

    for (last = s; last < end && pf_mask_word(*last); last++) {
        /* void */
    }

    if ((size_t) (last - s) <= keep) {
        return last - 1;
    }

    for ( /* void */ ; s < last - keep; s++) {
        *s = '*';
    }

    return last - 1;
}
