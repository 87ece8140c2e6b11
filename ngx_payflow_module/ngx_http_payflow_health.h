
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_HEALTH_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_HEALTH_H_INCLUDED_


#include "ngx_http_payflow_module.h"


ngx_int_t ngx_http_payflow_health_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_health_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_ready_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_PAYFLOW_HEALTH_H_INCLUDED_ */
