
/*
 * Copyright (C) PayFlow
 *
 * Types and includes common to all PayFlow C code.
 */


#ifndef _PF_COMMON_H_INCLUDED_
#define _PF_COMMON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define PF_JSON_CONTENT_TYPE  "application/json"


#endif /* _PF_COMMON_H_INCLUDED_ */
