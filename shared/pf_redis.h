
/*
 * Copyright (C) PayFlow
 */


#ifndef _PF_REDIS_H_INCLUDED_
#define _PF_REDIS_H_INCLUDED_


#include "pf_common.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>


typedef struct pf_redis_s      pf_redis_t;
typedef struct pf_redis_cmd_s  pf_redis_cmd_t;

/* reply is NULL when the command failed: connection lost or closed */
typedef void (*pf_redis_handler_pt)(void *data, redisReply *reply);
typedef void (*pf_redis_connected_pt)(pf_redis_t *rd, void *data);


struct pf_redis_cmd_s {
    pf_redis_handler_pt      handler;   /* NULL once abandoned */
    void                    *data;
    pf_redis_t              *redis;
    ngx_queue_t              queue;     /* free list */
};


typedef struct {
    ngx_str_t                host;      /* an address, resolved already */
    in_port_t                port;
    ngx_msec_t               connect_timeout;
    pf_redis_connected_pt    connected;
    void                    *data;
} pf_redis_conf_t;


char *pf_redis_conf_parse(ngx_conf_t *cf, ngx_str_t *addr,
    pf_redis_conf_t *conf);
pf_redis_t *pf_redis_create(ngx_cycle_t *cycle, pf_redis_conf_t *conf);
void pf_redis_destroy(pf_redis_t *rd);
ngx_uint_t pf_redis_connected(pf_redis_t *rd);
pf_redis_cmd_t *pf_redis_send(pf_redis_t *rd, pf_redis_handler_pt handler,
    void *data, int argc, const char **argv, const size_t *argvlen);
void pf_redis_abandon(pf_redis_cmd_t *cmd);


#endif /* _PF_REDIS_H_INCLUDED_ */
