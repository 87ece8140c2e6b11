
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_CONF_H_INCLUDED_
#define _PF_CONF_H_INCLUDED_


#include "pf_common.h"


char *pf_conf_read_file(ngx_conf_t *cf, const char *directive,
    ngx_str_t *file, size_t max, ngx_str_t *content);
char *pf_conf_secret(ngx_conf_t *cf, const char *directive, ngx_str_t *spec,
    size_t min, ngx_str_t *secret);
ngx_int_t pf_conf_zone(ngx_str_t *arg, ngx_str_t *name, ssize_t *size);


#endif /* _PF_CONF_H_INCLUDED_ */
