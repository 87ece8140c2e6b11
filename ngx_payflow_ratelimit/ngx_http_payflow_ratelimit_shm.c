
/*
 * Copyright (C) PayFlow
 *
 * GCRA (the generic cell rate algorithm) in shared memory.  Each key keeps
 * one number, its theoretical arrival time (TAT), in microseconds: a
 * request is admitted if, after it, TAT - now <= burst * interval, and it
 * then moves TAT on by one interval.  That is exact: a fresh key admits
 * exactly "burst" at once and then one request per interval, with no
 * double burst at window edges.
 *
 * The zone is the limit_req one: an rbtree keyed by CRC32 plus an LRU
 * queue; a key whose TAT has passed is as good as absent and is dropped,
 * and when memory runs out the least recently used keys are evicted.
 */


#include "ngx_http_payflow_ratelimit.h"


typedef struct {
    u_char                        color;
    u_char                        dummy;
    u_short                       len;
    ngx_queue_t                   queue;
    uint64_t                      tat;
    u_char                        data[1];
} ngx_http_payflow_rl_node_t;


static void ngx_http_payflow_rl_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_rbtree_node_t *ngx_http_payflow_rl_lookup(
    ngx_http_payflow_rl_zone_t *zone, ngx_uint_t hash, u_char *data,
    size_t len);
static ngx_uint_t ngx_http_payflow_rl_expire(
    ngx_http_payflow_rl_zone_t *zone, uint64_t now, ngx_uint_t n,
    ngx_uint_t force);


ngx_int_t
ngx_http_payflow_rl_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_payflow_rl_zone_t  *ozone = data;

    size_t                       len;
    ngx_http_payflow_rl_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        /* reload: the counters live on */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_alloc(zone->shpool, sizeof(ngx_http_payflow_rl_sh_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(zone->sh, sizeof(ngx_http_payflow_rl_sh_t));

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_payflow_rl_rbtree_insert);

    ngx_queue_init(&zone->sh->queue);

    len = sizeof(" in payflow_ratelimit_zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in payflow_ratelimit_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* eviction makes room; a full zone is not an error worth a line */
    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


/*
 * Decides v for the limit with the given id; the key stored is the id
 * followed by the key, so that limits sharing a zone never share state.
 */

void
ngx_http_payflow_rl_shm_decide(ngx_http_payflow_rl_zone_t *zone,
    ngx_http_payflow_rl_verdict_t *v, ngx_uint_t id)
{
    u_char                      *data;
    size_t                       len, size;
    uint32_t                     hash, id32;
    uint64_t                     now, tat, tau, diff;
    ngx_time_t                  *tp;
    ngx_rbtree_node_t           *node;
    ngx_http_payflow_rl_node_t  *rn;
    u_char                       buf[sizeof(uint32_t)
                                     + NGX_HTTP_PAYFLOW_RL_MAX_KEY];

    tp = ngx_timeofday();
    now = (uint64_t) tp->sec * 1000000 + (uint64_t) tp->msec * 1000;

    len = sizeof(uint32_t) + v->key.len;
    data = buf;

    id32 = (uint32_t) id;
    ngx_memcpy(data, &id32, sizeof(uint32_t));
    ngx_memcpy(data + sizeof(uint32_t), v->key.data, v->key.len);

    hash = ngx_crc32_short(data, len);
    tau = (uint64_t) v->burst * v->interval;

    ngx_shmtx_lock(&zone->shpool->mutex);

    (void) ngx_http_payflow_rl_expire(zone, now, 2, 0);

    node = ngx_http_payflow_rl_lookup(zone, hash, data, len);

    if (node) {
        rn = (ngx_http_payflow_rl_node_t *) &node->color;
        tat = ngx_max(rn->tat, now);

    } else {
        rn = NULL;
        tat = now;
    }

    diff = tat + v->interval - now;

    if (diff > tau) {
        v->allowed = 0;
        v->remaining = 0;
        v->reset = tat - now;
        v->retry = diff - tau;

        if (rn) {
            ngx_queue_remove(&rn->queue);
            ngx_queue_insert_head(&zone->sh->queue, &rn->queue);
        }

        goto done;
    }

    v->allowed = 1;
    v->remaining = (ngx_uint_t) ((tau - diff) / v->interval);
    v->reset = diff;
    v->retry = 0;

    if (rn) {
        rn->tat = tat + v->interval;
        ngx_queue_remove(&rn->queue);
        ngx_queue_insert_head(&zone->sh->queue, &rn->queue);
        goto done;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_payflow_rl_node_t, data)
           + len;

    node = ngx_slab_alloc_locked(zone->shpool, size);

    if (node == NULL) {
        /* full: drop what has expired, else the least recently used */

        if (ngx_http_payflow_rl_expire(zone, now, 8, 0) == 0) {
            (void) ngx_http_payflow_rl_expire(zone, now, 8, 1);
        }

        node = ngx_slab_alloc_locked(zone->shpool, size);

        if (node == NULL) {
            /* admitted without memory: a full zone never fails requests */
            goto done;
        }
    }

    node->key = hash;

    rn = (ngx_http_payflow_rl_node_t *) &node->color;
    rn->len = (u_short) len;
    rn->tat = tat + v->interval;
    ngx_memcpy(rn->data, data, len);

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &rn->queue);

done:

    ngx_shmtx_unlock(&zone->shpool->mutex);

    v->done = 1;
}


static ngx_rbtree_node_t *
ngx_http_payflow_rl_lookup(ngx_http_payflow_rl_zone_t *zone,
    ngx_uint_t hash, u_char *data, size_t len)
{
    ngx_int_t                    rc;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_http_payflow_rl_node_t  *rn;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        rn = (ngx_http_payflow_rl_node_t *) &node->color;

        rc = ngx_memn2cmp(data, rn->data, len, (size_t) rn->len);

        if (rc == 0) {
            return node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * Frees up to n nodes from the LRU end: those whose TAT has passed (they
 * hold nothing a fresh key would not), or any when force is set.
 */

static ngx_uint_t
ngx_http_payflow_rl_expire(ngx_http_payflow_rl_zone_t *zone, uint64_t now,
    ngx_uint_t n, ngx_uint_t force)
{
    ngx_uint_t                   freed;
    ngx_queue_t                 *q;
    ngx_rbtree_node_t           *node;
    ngx_http_payflow_rl_node_t  *rn;

    freed = 0;

    while (freed < n && !ngx_queue_empty(&zone->sh->queue)) {
        q = ngx_queue_last(&zone->sh->queue);
        rn = ngx_queue_data(q, ngx_http_payflow_rl_node_t, queue);

        if (!force && rn->tat > now) {
            break;
        }

        if (force) {
            (void) ngx_atomic_fetch_add(&zone->sh->evicted, 1);
        }

        node = (ngx_rbtree_node_t *)
                   ((u_char *) rn - offsetof(ngx_rbtree_node_t, color));

        ngx_queue_remove(q);
        ngx_rbtree_delete(&zone->sh->rbtree, node);
        ngx_slab_free_locked(zone->shpool, node);

        freed++;
    }

    return freed;
}


static void
ngx_http_payflow_rl_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_http_payflow_rl_node_t   *rn, *rnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            rn = (ngx_http_payflow_rl_node_t *) &node->color;
            rnt = (ngx_http_payflow_rl_node_t *) &temp->color;

            p = (ngx_memn2cmp(rn->data, rnt->data, rn->len, rnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}
