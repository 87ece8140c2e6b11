
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_ID_H_INCLUDED_
#define _PF_ID_H_INCLUDED_


#include "pf_common.h"


/* random part of every PayFlow id: 24 base62 characters, ~142 bits */
#define PF_ID_RANDOM_LEN  24


/* "ten_" or "key_" and the random part */
#define PF_ID_LEN         (4 + PF_ID_RANDOM_LEN)


extern const u_char  pf_id_alphabet[];


u_char *pf_id_base62(u_char *dst, size_t n);
ngx_int_t pf_id_generate(ngx_pool_t *pool, const char *prefix, ngx_str_t *id);


#endif /* _PF_ID_H_INCLUDED_ */
