
/*
 * Copyright (C) PayFlow
 *
 * Resolved API keys, shared by all workers: an rbtree keyed by the key's
 * peppered hash plus two LRU queues, one for valid keys and one, bounded
 * separately, for unknown and revoked ones, so that a flood of random keys
 * can never push real keys out.  Entries live for a TTL; revocations are
 * pushed (LISTEN/NOTIFY) and remove entries at once.
 *
 * A generation counter, bumped by every removal, keeps a lookup that was
 * in flight during a revocation from storing the key it read before it.
 *
 * The tree is searched by HMAC outputs, never by secrets: how long a
 * comparison takes tells an attacker nothing about any key.
 */


#include "ngx_http_payflow_keycache.h"


typedef struct {
    u_char                        color;
    u_char                        state;
    u_char                        livemode;
    u_char                        role;
    u_char                        read_only;
    u_char                        negative;
    u_char                        hash[PF_SHA256_LEN];
    ngx_queue_t                   queue;
    time_t                        valid_until;
    time_t                        expires_at;
    u_char                        key_id[PF_ID_LEN];
    u_char                        tenant_id[PF_ID_LEN];
} ngx_http_payflow_keycache_node_t;


typedef struct {
    ngx_rbtree_t                  rbtree;
    ngx_rbtree_node_t             sentinel;
    ngx_queue_t                   positive;
    ngx_queue_t                   negative;
    ngx_uint_t                    nnegative;
    ngx_uint_t                    generation;
} ngx_http_payflow_keycache_sh_t;


typedef struct {
    ngx_http_payflow_keycache_sh_t  *sh;
    ngx_slab_pool_t                 *shpool;
} ngx_http_payflow_keycache_t;


static ngx_int_t ngx_http_payflow_keycache_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_payflow_keycache_rbtree_insert(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_rbtree_node_t *ngx_http_payflow_keycache_find(
    ngx_http_payflow_keycache_t *kc, u_char *hash);
static void ngx_http_payflow_keycache_delete(
    ngx_http_payflow_keycache_t *kc, ngx_rbtree_node_t *node);
static ngx_uint_t ngx_http_payflow_keycache_evict(
    ngx_http_payflow_keycache_t *kc, ngx_queue_t *q, ngx_uint_t n,
    ngx_uint_t force);


#define ngx_http_payflow_keycache_node(node)                                  \
    ((ngx_http_payflow_keycache_node_t *) &(node)->color)

#define ngx_http_payflow_keycache_hash_key(hash)                              \
    (((ngx_rbtree_key_t) (hash)[0] << 24) | ((hash)[1] << 16)                 \
     | ((hash)[2] << 8) | (hash)[3])


ngx_shm_zone_t *
ngx_http_payflow_keycache_add(ngx_conf_t *cf, ngx_str_t *name, size_t size)
{
    ngx_shm_zone_t               *zone;
    ngx_http_payflow_keycache_t  *kc;

    kc = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_keycache_t));
    if (kc == NULL) {
        return NULL;
    }

    zone = ngx_shared_memory_add(cf, name, size, &ngx_http_payflow_module);
    if (zone == NULL) {
        return NULL;
    }

    if (zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", name);
        return NULL;
    }

    zone->init = ngx_http_payflow_keycache_init_zone;
    zone->data = kc;

    return zone;
}


static ngx_int_t
ngx_http_payflow_keycache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_payflow_keycache_t  *okc = data;

    size_t                        len;
    ngx_http_payflow_keycache_t  *kc;

    kc = shm_zone->data;

    if (okc) {
        kc->sh = okc->sh;
        kc->shpool = okc->shpool;
        return NGX_OK;
    }

    kc->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        kc->sh = kc->shpool->data;
        return NGX_OK;
    }

    kc->sh = ngx_slab_alloc(kc->shpool,
                            sizeof(ngx_http_payflow_keycache_sh_t));
    if (kc->sh == NULL) {
        return NGX_ERROR;
    }

    kc->shpool->data = kc->sh;

    ngx_rbtree_init(&kc->sh->rbtree, &kc->sh->sentinel,
                    ngx_http_payflow_keycache_rbtree_insert);

    ngx_queue_init(&kc->sh->positive);
    ngx_queue_init(&kc->sh->negative);

    len = sizeof(" in payflow key cache \"\"") + shm_zone->shm.name.len;

    kc->shpool->log_ctx = ngx_slab_alloc(kc->shpool, len);
    if (kc->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(kc->shpool->log_ctx, " in payflow key cache \"%V\"%Z",
                &shm_zone->shm.name);

    kc->shpool->log_nomem = 0;

    return NGX_OK;
}


/* NGX_OK: entry copied out; NGX_DECLINED: not cached (ask the database) */

ngx_int_t
ngx_http_payflow_keycache_lookup(ngx_shm_zone_t *zone, u_char *hash,
    ngx_http_payflow_key_entry_t *entry, ngx_uint_t *generation)
{
    ngx_int_t                          rc;
    ngx_rbtree_node_t                 *node;
    ngx_http_payflow_keycache_t       *kc;
    ngx_http_payflow_keycache_node_t  *kn;

    kc = zone->data;

    ngx_shmtx_lock(&kc->shpool->mutex);

    *generation = kc->sh->generation;

    node = ngx_http_payflow_keycache_find(kc, hash);

    if (node == NULL) {
        rc = NGX_DECLINED;
        goto done;
    }

    kn = ngx_http_payflow_keycache_node(node);

    if (kn->valid_until < ngx_time()) {
        ngx_http_payflow_keycache_delete(kc, node);
        rc = NGX_DECLINED;
        goto done;
    }

    ngx_queue_remove(&kn->queue);
    ngx_queue_insert_head(kn->negative ? &kc->sh->negative
                                       : &kc->sh->positive, &kn->queue);

    entry->state = kn->state;
    entry->livemode = kn->livemode;
    entry->role = kn->role;
    entry->read_only = kn->read_only;
    entry->expires_at = kn->expires_at;
    ngx_memcpy(entry->key_id, kn->key_id, PF_ID_LEN);
    ngx_memcpy(entry->tenant_id, kn->tenant_id, PF_ID_LEN);

    rc = NGX_OK;

done:

    ngx_shmtx_unlock(&kc->shpool->mutex);

    return rc;
}


void
ngx_http_payflow_keycache_store(ngx_shm_zone_t *zone, u_char *hash,
    ngx_http_payflow_key_entry_t *entry, time_t ttl,
    ngx_uint_t negative_max, ngx_uint_t generation)
{
    size_t                             size;
    ngx_uint_t                         negative;
    ngx_queue_t                       *q;
    ngx_rbtree_node_t                 *node;
    ngx_http_payflow_keycache_t       *kc;
    ngx_http_payflow_keycache_node_t  *kn;

    kc = zone->data;
    negative = (entry->state != NGX_HTTP_PAYFLOW_KEY_VALID);
    q = negative ? &kc->sh->negative : &kc->sh->positive;

    ngx_shmtx_lock(&kc->shpool->mutex);

    if (kc->sh->generation != generation) {
        /* a revocation arrived while the database was being asked */
        goto done;
    }

    node = ngx_http_payflow_keycache_find(kc, hash);

    if (node) {
        ngx_http_payflow_keycache_delete(kc, node);
    }

    if (negative && kc->sh->nnegative >= negative_max) {
        (void) ngx_http_payflow_keycache_evict(kc, q, 1, 1);
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + sizeof(ngx_http_payflow_keycache_node_t);

    node = ngx_slab_alloc_locked(kc->shpool, size);

    if (node == NULL) {
        /* expire first, then evict the least recently used */

        if (ngx_http_payflow_keycache_evict(kc, q, 16, 0) == 0) {
            (void) ngx_http_payflow_keycache_evict(kc, q, 1, 1);
        }

        node = ngx_slab_alloc_locked(kc->shpool, size);

        if (node == NULL) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "payflow auth: key cache \"%V\" is full",
                          &zone->shm.name);
            goto done;
        }
    }

    kn = ngx_http_payflow_keycache_node(node);

    node->key = ngx_http_payflow_keycache_hash_key(hash);

    kn->state = (u_char) entry->state;
    kn->livemode = (u_char) entry->livemode;
    kn->role = (u_char) entry->role;
    kn->read_only = (u_char) entry->read_only;
    kn->negative = (u_char) negative;
    ngx_memcpy(kn->hash, hash, PF_SHA256_LEN);
    kn->valid_until = ngx_time() + ttl;
    kn->expires_at = entry->expires_at;
    ngx_memcpy(kn->key_id, entry->key_id, PF_ID_LEN);
    ngx_memcpy(kn->tenant_id, entry->tenant_id, PF_ID_LEN);

    ngx_rbtree_insert(&kc->sh->rbtree, node);
    ngx_queue_insert_head(q, &kn->queue);

    if (negative) {
        kc->sh->nnegative++;
    }

done:

    ngx_shmtx_unlock(&kc->shpool->mutex);
}


void
ngx_http_payflow_keycache_remove(ngx_shm_zone_t *zone, u_char *hash)
{
    ngx_rbtree_node_t            *node;
    ngx_http_payflow_keycache_t  *kc;

    kc = zone->data;

    ngx_shmtx_lock(&kc->shpool->mutex);

    kc->sh->generation++;

    node = ngx_http_payflow_keycache_find(kc, hash);

    if (node) {
        ngx_http_payflow_keycache_delete(kc, node);
    }

    ngx_shmtx_unlock(&kc->shpool->mutex);
}


void
ngx_http_payflow_keycache_flush(ngx_shm_zone_t *zone)
{
    ngx_http_payflow_keycache_t  *kc;

    kc = zone->data;

    ngx_shmtx_lock(&kc->shpool->mutex);

    kc->sh->generation++;

    (void) ngx_http_payflow_keycache_evict(kc, &kc->sh->positive,
                                           NGX_MAX_UINT32_VALUE, 1);
    (void) ngx_http_payflow_keycache_evict(kc, &kc->sh->negative,
                                           NGX_MAX_UINT32_VALUE, 1);

    ngx_shmtx_unlock(&kc->shpool->mutex);
}


static ngx_rbtree_node_t *
ngx_http_payflow_keycache_find(ngx_http_payflow_keycache_t *kc,
    u_char *hash)
{
    ngx_int_t                          rc;
    ngx_rbtree_key_t                   key;
    ngx_rbtree_node_t                 *node, *sentinel;
    ngx_http_payflow_keycache_node_t  *kn;

    key = ngx_http_payflow_keycache_hash_key(hash);

    node = kc->sh->rbtree.root;
    sentinel = kc->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        kn = ngx_http_payflow_keycache_node(node);

        rc = ngx_memcmp(hash, kn->hash, PF_SHA256_LEN);

        if (rc == 0) {
            return node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static void
ngx_http_payflow_keycache_delete(ngx_http_payflow_keycache_t *kc,
    ngx_rbtree_node_t *node)
{
    ngx_http_payflow_keycache_node_t  *kn;

    kn = ngx_http_payflow_keycache_node(node);

    if (kn->negative) {
        kc->sh->nnegative--;
    }

    ngx_queue_remove(&kn->queue);
    ngx_rbtree_delete(&kc->sh->rbtree, node);
    ngx_slab_free_locked(kc->shpool, node);
}


/*
 * Frees up to n entries from the LRU end of q: only expired ones, or any
 * when force is set.  Returns how many were freed.
 */

static ngx_uint_t
ngx_http_payflow_keycache_evict(ngx_http_payflow_keycache_t *kc,
    ngx_queue_t *q, ngx_uint_t n, ngx_uint_t force)
{
    time_t                             now;
    ngx_uint_t                         freed;
    ngx_queue_t                       *last;
    ngx_rbtree_node_t                 *node;
    ngx_http_payflow_keycache_node_t  *kn;

    now = ngx_time();
    freed = 0;

    while (freed < n && !ngx_queue_empty(q)) {
        last = ngx_queue_last(q);
        kn = ngx_queue_data(last, ngx_http_payflow_keycache_node_t, queue);

        if (!force && kn->valid_until >= now) {
            break;
        }

        node = (ngx_rbtree_node_t *)
                   ((u_char *) kn - offsetof(ngx_rbtree_node_t, color));

        ngx_http_payflow_keycache_delete(kc, node);
        freed++;
    }

    return freed;
}


static void
ngx_http_payflow_keycache_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t                 **p;
    ngx_http_payflow_keycache_node_t   *kn, *knt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            kn = ngx_http_payflow_keycache_node(node);
            knt = ngx_http_payflow_keycache_node(temp);

            p = (ngx_memcmp(kn->hash, knt->hash, PF_SHA256_LEN) < 0)
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
