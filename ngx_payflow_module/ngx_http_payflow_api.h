
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_API_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_API_H_INCLUDED_


#include "ngx_http_payflow_module.h"


ngx_int_t ngx_http_payflow_api_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_admin_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_payflow_not_allowed(ngx_http_request_t *r);


#endif /* _NGX_HTTP_PAYFLOW_API_H_INCLUDED_ */
