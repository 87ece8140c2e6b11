
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_SEAL_H_INCLUDED_
#define _PF_SEAL_H_INCLUDED_


#include "pf_common.h"


#define PF_KEK_LEN       32
#define PF_KEK_ID_MAX    32


/* a key-encryption key: the operator's, from a file or the environment */

typedef struct {
    ngx_str_t      id;                 /* [0-9A-Za-z_-], at most 32 */
    u_char         key[PF_KEK_LEN];
} pf_kek_t;


typedef struct {
    ngx_array_t    keks;               /* pf_kek_t */
    pf_kek_t      *current;            /* seals; all of them open */
    ngx_uint_t     marked;             /* 1 + the index of "current" */
    ngx_str_t      prefix;             /* "pf1.<current id>." */
} pf_keyring_t;


ngx_int_t pf_keyring_add(ngx_conf_t *cf, pf_keyring_t *ring, ngx_str_t *id,
    ngx_str_t *hex, ngx_uint_t current);
ngx_int_t pf_keyring_ready(ngx_conf_t *cf, pf_keyring_t *ring);

ngx_int_t pf_seal_aad(ngx_pool_t *pool, const char *table,
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *aad);
ngx_uint_t pf_sealed(ngx_str_t *s);
ngx_int_t pf_seal(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *aad,
    ngx_str_t *in, ngx_str_t *out);
ngx_int_t pf_unseal(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *aad,
    ngx_str_t *in, ngx_str_t *out);
ngx_int_t pf_reseal(ngx_pool_t *pool, pf_keyring_t *ring, ngx_str_t *aad,
    ngx_str_t *in, ngx_str_t *out);


#endif /* _PF_SEAL_H_INCLUDED_ */
