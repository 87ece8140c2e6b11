
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_JWT_H_INCLUDED_
#define _PF_JWT_H_INCLUDED_


#include "pf_common.h"

#include <openssl/evp.h>
#include <jansson.h>


/* the longest token pf_jwt_verify() looks at, in bytes */
#define PF_JWT_MAX_LEN  8192


typedef enum {
    PF_JWT_HS256 = 0,
    PF_JWT_RS256,
    PF_JWT_ES256
} pf_jwt_alg_e;


typedef struct {
    ngx_str_t      kid;        /* key name, matched to the header's "kid" */
    pf_jwt_alg_e   alg;
    ngx_str_t      secret;     /* HS256 raw secret */
    EVP_PKEY      *pkey;       /* RS256 / ES256 public key */
} pf_jwt_key_t;


typedef struct {
    ngx_array_t    keys;       /* pf_jwt_key_t */
    ngx_str_t      issuer;     /* empty: not checked */
    ngx_str_t      audience;   /* empty: not checked */
    time_t         leeway;     /* seconds */
} pf_jwt_conf_t;


typedef struct {
    ngx_str_t      subject;    /* "sub", may be empty */
    ngx_str_t      tenant;     /* "tenant", 1..64 of [A-Za-z0-9_] */
    ngx_str_t      role;       /* "role": owner|admin|developer|viewer */
    ngx_uint_t     livemode;   /* "mode": "test" 0, "live" 1 */
    ngx_str_t      kid;        /* name of the key that verified it */
    time_t         exp;
} pf_jwt_claims_t;


ngx_int_t pf_jwt_conf_init(ngx_conf_t *cf, pf_jwt_conf_t *conf);
char *pf_jwt_key_add(ngx_conf_t *cf, pf_jwt_conf_t *conf, ngx_str_t *name,
    ngx_str_t *alg, ngx_str_t *file);
ngx_int_t pf_jwt_verify(ngx_pool_t *pool, pf_jwt_conf_t *conf,
    ngx_str_t *token, time_t now, pf_jwt_claims_t *claims,
    const char **reason);


#endif /* _PF_JWT_H_INCLUDED_ */
