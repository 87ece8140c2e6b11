
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_PII_H_INCLUDED_
#define _PF_PII_H_INCLUDED_


#include "pf_common.h"
#include "pf_seal.h"


/* one sealed "pii" member of an answer about to leave the worker */

typedef struct {
    u_char         *start;      /* the member's first quote */
    u_char         *end;        /* past the value's last one */
    ngx_str_t       id;         /* the payment it names */
    ngx_str_t       ct;         /* its ciphertext, base64url */
    ngx_str_t       key;        /* the row's key; empty: none */
    ngx_str_t      *plain;      /* sealed by this request */
} pf_pii_token_t;


ngx_int_t pf_pii_tokens(ngx_pool_t *pool, ngx_str_t *body,
    ngx_array_t **tokens);
ngx_int_t pf_pii_splice(ngx_pool_t *pool, pf_keyring_t *ring,
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *body,
    ngx_array_t *tokens, ngx_str_t *out, ngx_str_t **failed);
ngx_int_t pf_pii_open(ngx_pool_t *pool, pf_keyring_t *ring,
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *key,
    ngx_str_t *ct, ngx_str_t *plain);
ngx_int_t pf_pii_aad(ngx_pool_t *pool, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_str_t *id, ngx_str_t *aad);


#endif /* _PF_PII_H_INCLUDED_ */
