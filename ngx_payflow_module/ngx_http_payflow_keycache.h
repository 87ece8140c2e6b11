
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_KEYCACHE_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_KEYCACHE_H_INCLUDED_


#include "ngx_http_payflow_module.h"


typedef enum {
    NGX_HTTP_PAYFLOW_KEY_VALID = 0,
    NGX_HTTP_PAYFLOW_KEY_UNKNOWN,
    NGX_HTTP_PAYFLOW_KEY_REVOKED,
    NGX_HTTP_PAYFLOW_KEY_SUSPENDED
} ngx_http_payflow_key_state_e;


typedef struct {
    ngx_http_payflow_key_state_e  state;
    ngx_http_payflow_role_e       role;
    ngx_uint_t                    livemode;
    ngx_uint_t                    read_only;
    time_t                        expires_at;
    u_char                        key_id[PF_ID_LEN];
    u_char                        tenant_id[PF_ID_LEN];
} ngx_http_payflow_key_entry_t;


ngx_shm_zone_t *ngx_http_payflow_keycache_add(ngx_conf_t *cf,
    ngx_str_t *name, size_t size);
ngx_int_t ngx_http_payflow_keycache_lookup(ngx_shm_zone_t *zone,
    u_char *hash, ngx_http_payflow_key_entry_t *entry,
    ngx_uint_t *generation);
void ngx_http_payflow_keycache_store(ngx_shm_zone_t *zone, u_char *hash,
    ngx_http_payflow_key_entry_t *entry, time_t ttl,
    ngx_uint_t negative_max, ngx_uint_t generation);
void ngx_http_payflow_keycache_remove(ngx_shm_zone_t *zone, u_char *hash);
void ngx_http_payflow_keycache_flush(ngx_shm_zone_t *zone);


#endif /* _NGX_HTTP_PAYFLOW_KEYCACHE_H_INCLUDED_ */
