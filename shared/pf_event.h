
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_EVENT_H_INCLUDED_
#define _PF_EVENT_H_INCLUDED_


#include "pf_common.h"


void pf_event_release(ngx_connection_t *c, ngx_uint_t open);


#endif /* _PF_EVENT_H_INCLUDED_ */
