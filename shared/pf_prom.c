
/*
 * Copyright (C) PayFlow
 *
 * A writer for the Prometheus text format: lines go into 16k pool
 * buffers chained for the output filter, so a scrape never needs one
 * large allocation and never holds a lock.
 */


#include "pf_prom.h"


#define PF_PROM_BUF   16384
#define PF_PROM_LINE  1024


void
pf_prom_init(pf_prom_t *out, ngx_pool_t *pool)
{
    ngx_memzero(out, sizeof(pf_prom_t));

    out->pool = pool;
    out->last = &out->first;
}


void
pf_prom_family(pf_prom_t *out, const char *name, const char *type,
    const char *help)
{
    pf_prom_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                   type);
}


void
pf_prom_printf(pf_prom_t *out, const char *fmt, ...)
{
    u_char       *p;
    va_list       args;
    ngx_chain_t  *cl;

    if (out->failed) {
        return;
    }

    if (out->buf == NULL || out->buf->end - out->buf->last < PF_PROM_LINE) {
        out->buf = ngx_create_temp_buf(out->pool, PF_PROM_BUF);
        cl = ngx_alloc_chain_link(out->pool);

        if (out->buf == NULL || cl == NULL) {
            out->failed = 1;
            return;
        }

        cl->buf = out->buf;
        cl->next = NULL;

        *out->last = cl;
        out->last = &cl->next;
    }

    va_start(args, fmt);
    p = ngx_vslprintf(out->buf->last, out->buf->last + PF_PROM_LINE, fmt,
                      args);
    va_end(args);

    out->size += p - out->buf->last;
    out->buf->last = p;
}
