
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_ID_H_INCLUDED_
#define _PF_ID_H_INCLUDED_


#include "pf_common.h"


/* every PayFlow id after its prefix: 24 base62 characters (~142 bits) */
#define PF_ID_RANDOM_LEN  24


/* "ten_" or "key_" and the random part */
#define PF_ID_LEN         (4 + PF_ID_RANDOM_LEN)


extern const u_char  pf_id_alphabet[];


/*
 * Ids of the write path (pay_, re_): the time they were made in
 * milliseconds as 11 hex digits, then 13 random base62 characters (~77
 * bits), so that they sort as they were made (sql/0030)
 */
#define PF_ID_TIME_LEN    11


u_char *pf_id_base62(u_char *dst, size_t n);
ngx_int_t pf_id_generate(ngx_pool_t *pool, const char *prefix, ngx_str_t *id);
ngx_int_t pf_id_generate_ordered(ngx_pool_t *pool, const char *prefix,
    ngx_str_t *id);


#endif /* _PF_ID_H_INCLUDED_ */
