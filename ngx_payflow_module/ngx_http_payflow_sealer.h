
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_SEALER_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_SEALER_H_INCLUDED_


#include "ngx_http_payflow_module.h"


ngx_int_t ngx_http_payflow_sealer_init(ngx_http_payflow_main_conf_t *pmcf);
ngx_int_t ngx_http_payflow_sealer_start(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf);
void ngx_http_payflow_sealer_stop(void);


#endif /* _NGX_HTTP_PAYFLOW_SEALER_H_INCLUDED_ */
