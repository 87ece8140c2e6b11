
/*
 * Copyright (C) PayFlow
 *
 * Types shared by the files of ngx_http_payflow_ratelimit_module.
 */


#ifndef _NGX_HTTP_PAYFLOW_RATELIMIT_H_INCLUDED_
#define _NGX_HTTP_PAYFLOW_RATELIMIT_H_INCLUDED_


#include "pf_common.h"
#include "pf_prom.h"
#include "pf_redis.h"


#define NGX_HTTP_PAYFLOW_RL_MAX_LIMITS  16
#define NGX_HTTP_PAYFLOW_RL_MAX_KEY     1024
#define NGX_HTTP_PAYFLOW_RL_MAX_BURST   10000000
#define NGX_HTTP_PAYFLOW_RL_MAX_WORKERS 64


typedef enum {
    NGX_HTTP_PAYFLOW_RL_NONE = 0,
    NGX_HTTP_PAYFLOW_RL_PASSED,
    NGX_HTTP_PAYFLOW_RL_REJECTED,
    NGX_HTTP_PAYFLOW_RL_DRY_RUN
} ngx_http_payflow_rl_result_e;


typedef struct {
    ngx_rbtree_t                  rbtree;
    ngx_rbtree_node_t             sentinel;
    ngx_queue_t                   queue;

    ngx_atomic_t                  passed;
    ngx_atomic_t                  rejected;
    ngx_atomic_t                  dry_run;
    ngx_atomic_t                  fallbacks;
    ngx_atomic_t                  evicted;
    ngx_atomic_t                  redis_up[NGX_HTTP_PAYFLOW_RL_MAX_WORKERS];
} ngx_http_payflow_rl_sh_t;


typedef struct {
    ngx_http_payflow_rl_sh_t     *sh;
    ngx_slab_pool_t              *shpool;
    ngx_str_t                     name;
    ngx_uint_t                    cluster;      /* decided in Redis */
} ngx_http_payflow_rl_zone_t;


/* one payflow_ratelimit directive */

typedef struct {
    ngx_shm_zone_t               *shm_zone;
    ngx_http_complex_value_t      key;
    ngx_http_complex_value_t     *rate_cv;      /* NULL: constant */
    ngx_http_complex_value_t     *burst_cv;     /* NULL: constant */
    ngx_uint_t                    count;        /* "n" of n r/unit */
    ngx_uint_t                    unit;         /* seconds */
    ngx_uint_t                    burst;        /* 0: count */
    ngx_str_t                     name;
    ngx_uint_t                    id;
} ngx_http_payflow_rl_limit_t;


/* the verdict of one limit for one request */

typedef struct {
    ngx_http_payflow_rl_limit_t  *limit;
    ngx_str_t                     key;
    uint64_t                      interval;     /* microseconds */
    ngx_uint_t                    burst;
    ngx_uint_t                    allowed;
    ngx_uint_t                    remaining;
    uint64_t                      reset;        /* us until replenished */
    uint64_t                      retry;        /* us until admitted */
    pf_redis_cmd_t               *cmd;
    void                         *owner;        /* the request's ctx */
    unsigned                      done:1;       /* decided */
    unsigned                      skip:1;       /* not for this request */
} ngx_http_payflow_rl_verdict_t;


ngx_int_t ngx_http_payflow_rl_shm_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
void ngx_http_payflow_rl_shm_decide(ngx_http_payflow_rl_zone_t *zone,
    ngx_http_payflow_rl_verdict_t *v, ngx_uint_t id);

void ngx_http_payflow_ratelimit_metrics(pf_prom_t *out);

extern ngx_module_t  ngx_http_payflow_ratelimit_module;


#endif /* _NGX_HTTP_PAYFLOW_RATELIMIT_H_INCLUDED_ */
