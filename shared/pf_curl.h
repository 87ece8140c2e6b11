
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_CURL_H_INCLUDED_
#define _PF_CURL_H_INCLUDED_


#include "pf_common.h"

#include <curl/curl.h>


typedef struct pf_curl_s       pf_curl_t;
typedef struct pf_curl_call_s  pf_curl_call_t;

typedef void (*pf_curl_handler_pt)(pf_curl_call_t *call);

/* NGX_OK: connect to this address; anything else: do not */
typedef ngx_int_t (*pf_curl_check_pt)(pf_curl_call_t *call,
    struct sockaddr *sa, socklen_t socklen);


typedef enum {
    PF_CURL_OK = 0,          /* an HTTP response, whatever its status */
    PF_CURL_NOT_SENT,        /* failed before the request left: safe */
    PF_CURL_AMBIGUOUS,       /* failed after sending: outcome unknown */
    PF_CURL_TOO_LARGE        /* the response exceeded max_response */
} pf_curl_result_e;


struct pf_curl_call_s {
    /* the request, set by the caller */
    const char              *method;         /* "GET", "POST", ... */
    ngx_str_t                url;
    ngx_array_t             *headers;        /* ngx_str_t "Name: value" */
    ngx_str_t                body;
    ngx_msec_t               connect_timeout;
    ngx_msec_t               timeout;        /* the whole exchange */
    size_t                   max_response;
    ngx_str_t                ca_file;        /* empty: the system's */

    pf_curl_handler_pt       handler;        /* not called once canceled */
    void                    *data;

    /*
     * check: each address the name resolved to is judged before a socket
     * is opened to it, so the connection goes only to an address that
     * passed (and no proxy is used); probe: resolve and judge, connect
     * to none (the call fails as PF_CURL_NOT_SENT)
     */
    pf_curl_check_pt         check;
    unsigned                 probe:1;
    ngx_uint_t               allowed;        /* addresses that passed */
    ngx_uint_t               refused;        /* and those that did not */
    ngx_pool_t              *pool;
    ngx_log_t               *log;

    /* the outcome, set before handler runs */
    pf_curl_result_e         result;
    ngx_uint_t               status;         /* HTTP status, or 0 */
    ngx_str_t                response;
    ngx_msec_t               elapsed;
    const char              *error;          /* curl's words, or NULL */

    /* private */
    pf_curl_t               *curl;
    CURL                    *easy;
    struct curl_slist       *slist;
    size_t                   size;           /* of the response buffer */
    ngx_msec_t               start;
    char                     errbuf[CURL_ERROR_SIZE];
    unsigned                 active:1;
};


pf_curl_t *pf_curl_create(ngx_cycle_t *cycle);
void pf_curl_destroy(pf_curl_t *curl);
ngx_int_t pf_curl_start(pf_curl_t *curl, pf_curl_call_t *call);
void pf_curl_cancel(pf_curl_call_t *call);
ngx_uint_t pf_curl_address_public(struct sockaddr *sa);
ngx_int_t pf_curl_header(pf_curl_call_t *call, const char *name,
    ngx_str_t *value);


#endif /* _PF_CURL_H_INCLUDED_ */
