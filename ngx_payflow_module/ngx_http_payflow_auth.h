
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_AUTH_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_AUTH_H_INCLUDED_


#include "ngx_http_payflow_module.h"


typedef enum {
    NGX_HTTP_PAYFLOW_VAR_TENANT_ID = 0,
    NGX_HTTP_PAYFLOW_VAR_KEY_ID,
    NGX_HTTP_PAYFLOW_VAR_MODE,
    NGX_HTTP_PAYFLOW_VAR_ROLE,
    NGX_HTTP_PAYFLOW_VAR_PRINCIPAL
} ngx_http_payflow_auth_var_e;


char *ngx_http_payflow_kek(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_payflow_pepper(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_key_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_static_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_admin_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_jwt_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_payflow_jwt(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

char *ngx_http_payflow_auth_init_main_conf(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_auth_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_auth_init_process(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_auth_exit_process(ngx_http_payflow_main_conf_t *pmcf);

ngx_int_t ngx_http_payflow_access_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_auth_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
void ngx_http_payflow_auth_forget(ngx_http_request_t *r, u_char *hash);

ngx_int_t ngx_http_payflow_me_handler(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx);


#endif /* _NGX_HTTP_PAYFLOW_AUTH_H_INCLUDED_ */
