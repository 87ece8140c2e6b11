
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_MASK_H_INCLUDED_
#define _PF_MASK_H_INCLUDED_


#include "pf_common.h"


void pf_mask(u_char *start, u_char *end);


#endif /* _PF_MASK_H_INCLUDED_ */
