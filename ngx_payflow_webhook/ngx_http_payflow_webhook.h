
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_WEBHOOK_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_WEBHOOK_H_INCLUDED_


#include "ngx_http_payflow_providers.h"


ngx_int_t ngx_http_payflow_webhook_init(ngx_http_payflow_main_conf_t *pmcf);


#endif /* _NGX_HTTP_PAYFLOW_WEBHOOK_H_INCLUDED_ */
