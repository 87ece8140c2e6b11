
/*
 * Copyright (C) PayFlow
 */


#ifndef _NGX_HTTP_PAYFLOW_MONEY_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_MONEY_H_INCLUDED_


#include "ngx_http_payflow_module.h"


/*
 * The sandbox's statements raise PF008 for a payment at a network
 * provider; the remote ones run after that provider did its part.
 */

#define NGX_HTTP_PAYFLOW_LOCAL   "payflow_operable(p.provider) "
#define NGX_HTTP_PAYFLOW_REMOTE  "p.provider <> 'sandbox' "


/*
 * A money-moving operation on an existing object: its statements plain
 * and with the idempotency key, an optional follow-up, how to read the
 * object back, and how to answer from what happened.
 */

typedef struct {
    const char                 *what;
    const pf_pg_statement_t    *plain;
    const pf_pg_statement_t    *keyed;
    const pf_pg_statement_t    *follow;     /* takes values[0], or NULL */
    const pf_pg_statement_t    *get;
    ngx_http_payflow_db_ok_pt   answer;
} ngx_http_payflow_money_t;


ngx_int_t ngx_http_payflow_money_run(ngx_http_request_t *r,
    ngx_http_payflow_ctx_t *ctx, ngx_http_payflow_money_t *m,
    const char **values, ngx_uint_t nvalues, const char *id);
ngx_int_t ngx_http_payflow_money_data(ngx_http_request_t *r,
    PGresult *res);
ngx_int_t ngx_http_payflow_money_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message,
    const char *param);


#endif /* _NGX_HTTP_PAYFLOW_MONEY_H_INCLUDED_ */
