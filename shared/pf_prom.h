
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_PROM_H_INCLUDED_
#define _PF_PROM_H_INCLUDED_


#include "pf_common.h"


#define PF_PROM_CONTENT_TYPE  "text/plain; version=0.0.4; charset=utf-8"


/* Prometheus text exposition into a chain of pool buffers */

typedef struct {
    ngx_pool_t              *pool;
    ngx_chain_t             *first;
    ngx_chain_t            **last;
    ngx_buf_t               *buf;
    off_t                    size;
    ngx_uint_t               failed;
} pf_prom_t;


void pf_prom_init(pf_prom_t *out, ngx_pool_t *pool);
void pf_prom_family(pf_prom_t *out, const char *name, const char *type,
    const char *help);
void pf_prom_printf(pf_prom_t *out, const char *fmt, ...);


#endif /* _PF_PROM_H_INCLUDED_ */
