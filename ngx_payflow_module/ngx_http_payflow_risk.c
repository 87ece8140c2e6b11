
/*
 * Copyright (C) PayFlow
 *
 * The risk engine's worker half: what every payment is scored on before
 * any provider is asked (docs/risk.md).
 *
 * One shared memory zone ("payflow_risk zone=") holds a node per thing
 * counted: a customer, a customer in one currency, an e-mail, a client
 * address, a card, a tenant in one currency.  A node is found by a 64-bit
 * keyed digest (SipHash) of what it counts (tenant, mode, kind, value),
 * never the value itself: no e-mail or address is kept in shared memory.
 * Each node keeps sliding-window counts and sums over a minute, an hour
 * and a day (the current and the previous fixed window, the previous
 * weighted by how much of it still overlaps), rolling statistics of the
 * amounts it saw and, for a customer, the last cards it used.  Nodes live
 * in one table filling the zone, eight to a set (the digest picks the set):
 * a payment's lookups touch a few cache lines, not a tree's path each.  A
 * set full, its least recently used node makes room.
 *
 * The rules here read those counters.  With the worker's copy of the
 * tenant's lists and settings (ngx_http_payflow_riskcache.c) current and
 * none of the payment's signals on them, the worker decides, and
 * payflow_payment_create (sql/0022) takes that decision if the copy's
 * version is still the tenant's.  Otherwise the hits, the signals and the
 * operator's thresholds go to the database, which adds the lists,
 * self-dealing and rule settings and decides (sql/0020), in the statement
 * that writes the payment either way.
 */


#include "ngx_http_payflow_risk.h"

#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>


#define NGX_HTTP_PAYFLOW_RISK_WINDOWS  3
#define NGX_HTTP_PAYFLOW_RISK_CARDS    8
#define NGX_HTTP_PAYFLOW_RISK_BUCKETS  9

/* what a node counts */
#define NGX_HTTP_PAYFLOW_RISK_CUSTOMER   0
#define NGX_HTTP_PAYFLOW_RISK_EMAIL      1
#define NGX_HTTP_PAYFLOW_RISK_IP         2
#define NGX_HTTP_PAYFLOW_RISK_CARD       3
#define NGX_HTTP_PAYFLOW_RISK_TENANT     4
#define NGX_HTTP_PAYFLOW_RISK_SPENDER    5     /* customer, one currency */
#define NGX_HTTP_PAYFLOW_RISK_KINDS      6

/* what a rule looks at */
#define NGX_HTTP_PAYFLOW_RISK_COUNT      0
#define NGX_HTTP_PAYFLOW_RISK_SUM        1
#define NGX_HTTP_PAYFLOW_RISK_ANOMALY    2
#define NGX_HTTP_PAYFLOW_RISK_ZSCORE     3
#define NGX_HTTP_PAYFLOW_RISK_FIRST      4
#define NGX_HTTP_PAYFLOW_RISK_DISTINCT   5
#define NGX_HTTP_PAYFLOW_RISK_SQL        6     /* decided in the database */


typedef struct {
    const char                 *name;
    ngx_uint_t                  test;
    ngx_uint_t                  kind;
    ngx_uint_t                  window;
    int64_t                     limit;
    ngx_uint_t                  score;
    const char                 *description;
} ngx_http_payflow_risk_rule_t;


static ngx_http_payflow_risk_rule_t  ngx_http_payflow_risk_rules[] = {

#define NGX_HTTP_PAYFLOW_VELOCITY(who, kind, l1, l2, l3)                      \
    { "velocity_" who "_1m", NGX_HTTP_PAYFLOW_RISK_COUNT, kind, 0, l1, 20,    \
      "more than limit payments of one " who " in a minute" },               \
    { "velocity_" who "_1h", NGX_HTTP_PAYFLOW_RISK_COUNT, kind, 1, l2, 25,    \
      "more than limit payments of one " who " in an hour" },                \
    { "velocity_" who "_24h", NGX_HTTP_PAYFLOW_RISK_COUNT, kind, 2, l3, 20,   \
      "more than limit payments of one " who " in a day" }

    NGX_HTTP_PAYFLOW_VELOCITY("customer", NGX_HTTP_PAYFLOW_RISK_CUSTOMER,
                              3, 10, 25),
    NGX_HTTP_PAYFLOW_VELOCITY("email", NGX_HTTP_PAYFLOW_RISK_EMAIL,
                              3, 10, 25),
    NGX_HTTP_PAYFLOW_VELOCITY("ip", NGX_HTTP_PAYFLOW_RISK_IP, 5, 20, 60),
    NGX_HTTP_PAYFLOW_VELOCITY("card", NGX_HTTP_PAYFLOW_RISK_CARD, 3, 10, 25),

    { "velocity_tenant_1m", NGX_HTTP_PAYFLOW_RISK_COUNT,
      NGX_HTTP_PAYFLOW_RISK_TENANT, 0, 100000, 10,
      "more than limit payments of the tenant in one currency in a minute" },

    { "amount_customer_24h", NGX_HTTP_PAYFLOW_RISK_SUM,
      NGX_HTTP_PAYFLOW_RISK_SPENDER, 2, 1000000, 25,
      "one customer's payments in one currency add up to more than limit "
      "(minor units) in a day" },

    { "amount_customer_anomaly", NGX_HTTP_PAYFLOW_RISK_ANOMALY,
      NGX_HTTP_PAYFLOW_RISK_SPENDER, 0, 5, 25,
      "the amount is more than limit times the customer's usual amount "
      "(after 3 payments)" },

    { "amount_tenant_anomaly", NGX_HTTP_PAYFLOW_RISK_ZSCORE,
      NGX_HTTP_PAYFLOW_RISK_TENANT, 0, 3, 20,
      "the amount is more than limit standard deviations above the "
      "tenant's usual amounts in the currency (after 30 payments)" },

    { "first_seen_large", NGX_HTTP_PAYFLOW_RISK_FIRST,
      NGX_HTTP_PAYFLOW_RISK_CUSTOMER, 0, 50000, 20,
      "a customer never seen before pays more than limit (minor units)" },

    { "cards_per_customer", NGX_HTTP_PAYFLOW_RISK_DISTINCT,
      NGX_HTTP_PAYFLOW_RISK_CUSTOMER, 2, 3, 30,
      "one customer used more than limit distinct cards in a day" },

    { "self_dealing", NGX_HTTP_PAYFLOW_RISK_SQL, 0, 0, 0, 60,
      "the payer's e-mail or domain is one of the tenant's own" },

    { "blocklist", NGX_HTTP_PAYFLOW_RISK_SQL, 0, 0, 0, 100,
      "an e-mail, domain, address, card, country or customer on the "
      "tenant's block list" },

    { NULL, 0, 0, 0, 0, 0, NULL }
};

#define NGX_HTTP_PAYFLOW_RISK_NRULES                                          \
    (sizeof(ngx_http_payflow_risk_rules)                                      \
     / sizeof(ngx_http_payflow_risk_rule_t) - 1)


static const uint32_t  ngx_http_payflow_risk_spans[] = { 60, 3600, 86400 };

static const ngx_uint_t  ngx_http_payflow_risk_bounds[] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 5000
};

static const char  *ngx_http_payflow_risk_signal_names[] = {
    "email", "domain", "ip", "card", "country", "customer"
};

static const char  *ngx_http_payflow_risk_decisions[] = {
    "allow", "review", "block"
};


#define NGX_HTTP_PAYFLOW_RISK_WAYS   8


typedef struct {
    uint64_t                    digest;        /* 0: a free slot */
    uint32_t                    used;          /* last payment's time */
    uint32_t                    start[NGX_HTTP_PAYFLOW_RISK_WINDOWS];
    uint32_t                    count[NGX_HTTP_PAYFLOW_RISK_WINDOWS][2];
    int64_t                     sum[NGX_HTTP_PAYFLOW_RISK_WINDOWS][2];
    uint32_t                    seen;          /* payments, ever */
    double                      mean;          /* of amounts (log: tenant) */
    double                      var;
    uint32_t                    cards[NGX_HTTP_PAYFLOW_RISK_CARDS];
    uint32_t                    card_at[NGX_HTTP_PAYFLOW_RISK_CARDS];
} ngx_http_payflow_risk_node_t;


typedef struct {
    ngx_http_payflow_risk_node_t  *table;      /* sets x ways */
    ngx_uint_t                  sets;
    ngx_atomic_t                nodes;
    ngx_atomic_t                evicted;
    ngx_atomic_t                assessed;
    ngx_atomic_t                decisions[3];
    ngx_atomic_t                hits[NGX_HTTP_PAYFLOW_RISK_NRULES];
    ngx_atomic_t                latency[NGX_HTTP_PAYFLOW_RISK_BUCKETS];
    ngx_atomic_t                latency_us;
    ngx_atomic_t                fallbacks;
    ngx_atomic_t                by_worker;     /* decided on the copy */
    ngx_atomic_t                queue_depth;   /* set by the jobs */
    ngx_atomic_t                queue_age;     /* seconds */
} ngx_http_payflow_risk_sh_t;


typedef struct {
    ngx_shm_zone_t             *zone;
    ngx_http_payflow_risk_sh_t *sh;
    ngx_slab_pool_t            *shpool;
    ngx_uint_t                  review;
    ngx_uint_t                  block;
    time_t                      review_expiry;
    int64_t                     limits[NGX_HTTP_PAYFLOW_RISK_NRULES];
    ngx_uint_t                  scores[NGX_HTTP_PAYFLOW_RISK_NRULES];
    ngx_uint_t                  disabled[NGX_HTTP_PAYFLOW_RISK_NRULES];
    pf_redis_conf_t            *redis;
    ngx_msec_t                  redis_timeout;
    ngx_str_t                   prefix;
    pf_redis_t                 *rd;            /* this worker's */
    uint64_t                    key[2];        /* of the digests */
    ngx_uint_t                  self_rule;     /* the database's two */
    ngx_uint_t                  block_rule;
    size_t                      list_cache;    /* per worker, 0: none */
    ngx_msec_t                  list_refresh;
} ngx_http_payflow_risk_conf_t;


/* one payment's assessment, while Redis is asked */

typedef struct {
    ngx_http_request_t         *request;
    const char                **risk;          /* where p_risk goes */
    pf_pg_query_t              *query;         /* then runs */
    const char                 *what;
    ngx_http_payflow_db_ok_pt   ok;
    ngx_uint_t                  nhits;
    struct {
        ngx_uint_t              rule;
        u_char                  detail[96];
    }                           hits[NGX_HTTP_PAYFLOW_RISK_NRULES];
    ngx_str_t                   signals[6];    /* as signal_names[] */
    int64_t                     amount;
    const char                 *currency;
    uint32_t                    card;          /* crc32, 0: none */
    ngx_uint_t                  by_email;      /* no customer[id] */
    ngx_uint_t                  counted;
    uint32_t                    now;
    ngx_uint_t                  present[NGX_HTTP_PAYFLOW_RISK_KINDS];
    uint64_t                    digest[NGX_HTTP_PAYFLOW_RISK_KINDS];
    ngx_http_payflow_risk_node_t  *nodes[NGX_HTTP_PAYFLOW_RISK_KINDS];
    double                      counts[NGX_HTTP_PAYFLOW_RISK_KINDS]
                                      [NGX_HTTP_PAYFLOW_RISK_WINDOWS];
    double                      sums[NGX_HTTP_PAYFLOW_RISK_KINDS]
                                    [NGX_HTTP_PAYFLOW_RISK_WINDOWS];
    struct {
        ngx_uint_t              kind;
        ngx_uint_t              window;
    }                           windows[NGX_HTTP_PAYFLOW_RISK_KINDS
                                        * NGX_HTTP_PAYFLOW_RISK_WINDOWS];
    ngx_uint_t                  nwindows;
    pf_redis_cmd_t             *cmd;
    ngx_event_t                 timer;
    struct timespec             t0;
    ngx_uint_t                  us;
    ngx_uint_t                  copied;        /* the worker may decide */
    ngx_http_payflow_risk_settings_t  tenant;
} ngx_http_payflow_risk_req_t;


/*
 * KEYS: pairs of (current, previous) window buckets.  Answers, per pair,
 * the current bucket's count and sum, then the previous one's: what the
 * cluster counted before this payment.
 */

static const char  ngx_http_payflow_risk_read[] =
    "local out = {}\n"
    "for i = 1, #KEYS, 2 do\n"
    "  local c = redis.call('HMGET', KEYS[i], 'n', 's')\n"
    "  local p = redis.call('HMGET', KEYS[i + 1], 'n', 's')\n"
    "  out[#out + 1] = tonumber(c[1]) or 0\n"
    "  out[#out + 1] = tonumber(c[2]) or 0\n"
    "  out[#out + 1] = tonumber(p[1]) or 0\n"
    "  out[#out + 1] = tonumber(p[2]) or 0\n"
    "end\n"
    "return out\n";


/*
 * KEYS: the current window buckets; ARGV[1]: the amount.  Counts a payment
 * once it is written, each bucket kept two spans and a minute.
 */

static const char  ngx_http_payflow_risk_write[] =
    "for i = 1, #KEYS do\n"
    "  local span = tonumber(string.match(KEYS[i], ':(%d+):%d+$'))\n"
    "  redis.call('HINCRBY', KEYS[i], 'n', 1)\n"
    "  redis.call('HINCRBY', KEYS[i], 's', ARGV[1])\n"
    "  redis.call('EXPIRE', KEYS[i], 2 * span + 60)\n"
    "end\n"
    "return 1\n";


static ngx_http_payflow_risk_conf_t *ngx_http_payflow_risk_conf(
    ngx_conf_t *cf, ngx_http_payflow_main_conf_t *pmcf);
static ngx_int_t ngx_http_payflow_risk_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_payflow_risk_node_t *ngx_http_payflow_risk_node(
    ngx_http_payflow_risk_conf_t *rc, uint64_t digest, uint32_t now);
static uint64_t ngx_http_payflow_risk_digest(
    ngx_http_payflow_risk_conf_t *rc, ngx_str_t *tenant,
    ngx_uint_t livemode, ngx_uint_t kind, ngx_str_t *value,
    const char *currency);
static void ngx_http_payflow_risk_roll(ngx_http_payflow_risk_node_t *n,
    uint32_t now);
static double ngx_http_payflow_risk_window(ngx_http_payflow_risk_node_t *n,
    ngx_uint_t w, uint32_t now, ngx_uint_t sum);
static ngx_int_t ngx_http_payflow_risk_decide(
    ngx_http_payflow_risk_req_t *rq);
static void ngx_http_payflow_risk_clock(ngx_http_payflow_risk_req_t *rq,
    ngx_uint_t stop);
static ngx_int_t ngx_http_payflow_risk_redis_send(
    ngx_http_payflow_risk_req_t *rq);
static void ngx_http_payflow_risk_redis_reply(void *data, redisReply *reply);
static void ngx_http_payflow_risk_timeout(ngx_event_t *ev);
static void ngx_http_payflow_risk_fallback(ngx_http_payflow_risk_req_t *rq,
    const char *why);
static void ngx_http_payflow_risk_cleanup(void *data);
static void ngx_http_payflow_risk_hit(ngx_http_payflow_risk_req_t *rq,
    ngx_http_payflow_risk_conf_t *rc, ngx_uint_t k, u_char *detail);
static u_char *ngx_http_payflow_risk_hits(ngx_http_payflow_risk_req_t *rq,
    ngx_http_payflow_risk_conf_t *rc, ngx_uint_t tenant, u_char *p);
static void ngx_http_payflow_risk_written(void *data, redisReply *reply);
static u_char *ngx_http_payflow_risk_key(ngx_http_payflow_risk_conf_t *rc,
    ngx_http_payflow_risk_req_t *rq, ngx_uint_t kind, ngx_uint_t w,
    ngx_uint_t back, u_char *p);


/* <prefix><digest>:<span>:<bucket> */
#define NGX_HTTP_PAYFLOW_RISK_KEY_LEN(rc)  ((rc)->prefix.len + 48)


/* payflow_risk zone=name:size [review=50] [block=90] */

char *
ngx_http_payflow_risk(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    u_char                        *p;
    ssize_t                        size, bytes;
    ngx_str_t                     *value, name, s;
    ngx_int_t                      n;
    ngx_uint_t                     i;
    ngx_http_payflow_risk_conf_t  *rc;

    rc = ngx_http_payflow_risk_conf(cf, pmcf);
    if (rc == NULL) {
        return NGX_CONF_ERROR;
    }

    if (rc->zone) {
        return "is duplicate";
    }

    value = cf->args->elts;
    size = 0;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        n = pf_conf_zone(&value[i], &name, &size);

        if (n == NGX_ERROR) {
            goto invalid;
        }

        if (n == NGX_OK) {
            continue;
        }

        if (ngx_strncmp(value[i].data, "review=", 7) == 0
            || ngx_strncmp(value[i].data, "block=", 6) == 0)
        {
            p = (u_char *) ngx_strchr(value[i].data, '=') + 1;
            n = ngx_atoi(p, value[i].data + value[i].len - p);

            if (n == NGX_ERROR || n > 100) {
                goto invalid;
            }

            if (value[i].data[0] == 'r') {
                rc->review = n;

            } else {
                rc->block = n;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "redis=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            rc->redis = ngx_pcalloc(cf->pool, sizeof(pf_redis_conf_t));
            if (rc->redis == NULL) {
                return NGX_CONF_ERROR;
            }

            if (pf_redis_conf_parse(cf, &s, rc->redis) != NGX_CONF_OK) {
                return NGX_CONF_ERROR;
            }

            rc->redis->connect_timeout = 1000;
            continue;
        }

        if (ngx_strncmp(value[i].data, "redis_timeout=", 14) == 0) {
            s.data = value[i].data + 14;
            s.len = value[i].len - 14;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            rc->redis_timeout = (ngx_msec_t) n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "list_cache=", 11) == 0) {
            s.data = value[i].data + 11;
            s.len = value[i].len - 11;

            bytes = ngx_parse_size(&s);
            if (bytes == NGX_ERROR) {
                goto invalid;
            }

            rc->list_cache = (size_t) bytes;
            continue;
        }

        if (ngx_strncmp(value[i].data, "list_refresh=", 13) == 0) {
            s.data = value[i].data + 13;
            s.len = value[i].len - 13;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            rc->list_refresh = (ngx_msec_t) n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "review_expiry=", 14) == 0) {
            s.data = value[i].data + 14;
            s.len = value[i].len - 14;

            rc->review_expiry = ngx_parse_time(&s, 1);

            if (rc->review_expiry == (time_t) NGX_ERROR
                || rc->review_expiry == 0)
            {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_risk: zone=name:size is required");
        return NGX_CONF_ERROR;
    }

    if (rc->review > rc->block) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_risk: review=%ui is above block=%ui",
                           rc->review, rc->block);
        return NGX_CONF_ERROR;
    }

    rc->zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_payflow_module);
    if (rc->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (rc->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    rc->zone->init = ngx_http_payflow_risk_init_zone;
    rc->zone->data = rc;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_risk: invalid parameter \"%V\" (zone=name:"
                       "size of at least 8 pages, review= and block= 0 to "
                       "100, review_expiry=, redis_timeout= and "
                       "list_refresh= times, list_cache= a size, "
                       "redis=host:port)", &value[i]);
    return NGX_CONF_ERROR;
}


/* payflow_risk_rule name [limit=n] [score=n] [off] */

char *
ngx_http_payflow_risk_rule(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_payflow_main_conf_t *pmcf = conf;

    u_char                        *p;
    int64_t                        n;
    ngx_str_t                     *value;
    ngx_uint_t                     i, k;
    ngx_http_payflow_risk_conf_t  *rc;

    rc = ngx_http_payflow_risk_conf(cf, pmcf);
    if (rc == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    k = ngx_http_payflow_risk_rule_known((char *) value[1].data,
                                         value[1].len);
    if (k == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_risk_rule: unknown rule \"%V\" (see "
                           "docs/risk.md)", &value[1]);
        return NGX_CONF_ERROR;
    }

    k--;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "off") == 0) {
            rc->disabled[k] = 1;
            continue;
        }

        p = (u_char *) ngx_strchr(value[i].data, '=');
        if (p == NULL) {
            goto invalid;
        }

        p++;
        n = ngx_atoof(p, value[i].data + value[i].len - p);

        if (ngx_strncmp(value[i].data, "score=", 6) == 0) {
            if (n < 0 || n > 100) {
                goto invalid;
            }

            rc->scores[k] = (ngx_uint_t) n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "limit=", 6) == 0
            && ngx_http_payflow_risk_rules[k].test
               != NGX_HTTP_PAYFLOW_RISK_SQL)
        {
            if (n < 1 || n > NGX_HTTP_PAYFLOW_MAX_AMOUNT
                || (ngx_http_payflow_risk_rules[k].test
                    == NGX_HTTP_PAYFLOW_RISK_DISTINCT
                    && n >= NGX_HTTP_PAYFLOW_RISK_CARDS))
            {
                goto invalid;
            }

            rc->limits[k] = n;
            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "payflow_risk_rule: invalid parameter \"%V\" "
                       "(score= 0 to 100, limit= a positive integer; "
                       "cards_per_customer below %d)", &value[i],
                       NGX_HTTP_PAYFLOW_RISK_CARDS);
    return NGX_CONF_ERROR;
}


static ngx_http_payflow_risk_conf_t *
ngx_http_payflow_risk_conf(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_uint_t                     k;
    ngx_http_payflow_risk_conf_t  *rc;

    if (pmcf->risk) {
        return pmcf->risk;
    }

    rc = ngx_pcalloc(cf->pool, sizeof(ngx_http_payflow_risk_conf_t));
    if (rc == NULL) {
        return NULL;
    }

    rc->review = 50;
    rc->block = 90;
    rc->review_expiry = 72 * 3600;
    rc->redis_timeout = 30;
    rc->list_cache = 8 * 1024 * 1024;
    rc->list_refresh = 1000;
    ngx_str_set(&rc->prefix, "payflow:risk:");

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_NRULES; k++) {
        rc->limits[k] = ngx_http_payflow_risk_rules[k].limit;
        rc->scores[k] = ngx_http_payflow_risk_rules[k].score;
    }

    rc->self_rule = ngx_http_payflow_risk_rule_known("self_dealing", 12) - 1;
    rc->block_rule = ngx_http_payflow_risk_rule_known("blocklist", 9) - 1;

    pmcf->risk = rc;

    return rc;
}


ngx_int_t
ngx_http_payflow_risk_init(ngx_conf_t *cf,
    ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_risk_conf_t  *rc;

    /*
     * The catalogue is there for the API even with the engine off
     * (payflow_risk_rule lines alone do not turn it on).
     */

    rc = ngx_http_payflow_risk_conf(cf, pmcf);

    return rc ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_payflow_risk_init_process(ngx_cycle_t *cycle,
    ngx_http_payflow_main_conf_t *pmcf)
{
    u_char                        *in;
    ngx_http_payflow_risk_conf_t  *rc;
    u_char                         md[EVP_MAX_MD_SIZE];

    rc = pmcf->risk;

    if (rc == NULL || rc->zone == NULL) {
        return NGX_OK;
    }

    /*
     * The digests' key: SHA-256 of the pepper, labelled; in the worker,
     * which alone names counters (nginx -t never needs it).
     */

    in = ngx_pnalloc(cycle->pool, 20 + pmcf->pepper.len);
    if (in == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(in, "payflow risk digest\n", 20);
    ngx_memcpy(in + 20, pmcf->pepper.data, pmcf->pepper.len);

    if (EVP_Digest(in, 20 + pmcf->pepper.len, md, NULL, EVP_sha256(), NULL)
        != 1)
    {
        return NGX_ERROR;
    }

    ngx_memcpy(rc->key, md, sizeof(rc->key));
    OPENSSL_cleanse(md, sizeof(md));
    OPENSSL_cleanse(in, 20 + pmcf->pepper.len);

    if (ngx_http_payflow_risk_cache_start(cycle, pmcf, rc->list_cache,
                                          rc->list_refresh)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (rc->redis == NULL) {
        return NGX_OK;
    }

    rc->rd = pf_redis_create(cycle, rc->redis);

    return rc->rd ? NGX_OK : NGX_ERROR;
}


void
ngx_http_payflow_risk_exit_process(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_risk_conf_t  *rc;

    rc = pmcf->risk;

    if (rc && rc->rd) {
        pf_redis_destroy(rc->rd);
        rc->rd = NULL;
    }
}


/* the review queue as the jobs last read it */

void
ngx_http_payflow_risk_queue(ngx_http_payflow_main_conf_t *pmcf,
    ngx_int_t depth, ngx_int_t age)
{
    ngx_http_payflow_risk_conf_t  *rc;

    rc = pmcf->risk;

    if (rc == NULL || rc->sh == NULL || depth < 0 || age < 0) {
        return;
    }

    rc->sh->queue_depth = (ngx_atomic_uint_t) depth;
    rc->sh->queue_age = (ngx_atomic_uint_t) age;
}


/* seconds a review may wait, 0: the engine is off */

time_t
ngx_http_payflow_risk_review_expiry(ngx_http_payflow_main_conf_t *pmcf)
{
    ngx_http_payflow_risk_conf_t  *rc;

    rc = pmcf->risk;

    return (rc && rc->zone) ? rc->review_expiry : 0;
}


/* 1 + the rule's index, 0: no such rule */

ngx_uint_t
ngx_http_payflow_risk_rule_known(const char *name, size_t len)
{
    ngx_uint_t  k;

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_NRULES; k++) {
        if (ngx_strlen(ngx_http_payflow_risk_rules[k].name) == len
            && ngx_strncmp(ngx_http_payflow_risk_rules[k].name, name, len)
               == 0)
        {
            return k + 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_payflow_risk_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_payflow_risk_conf_t  *orc = data;

    size_t                         len, size;
    ngx_uint_t                     sets;
    ngx_http_payflow_risk_conf_t  *rc;

    rc = shm_zone->data;

    if (orc) {
        /* reload: what was counted stays */
        rc->sh = orc->sh;
        rc->shpool = orc->shpool;
        return NGX_OK;
    }

    rc->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        rc->sh = rc->shpool->data;
        return NGX_OK;
    }

    rc->sh = ngx_slab_alloc(rc->shpool, sizeof(ngx_http_payflow_risk_sh_t));
    if (rc->sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(rc->sh, sizeof(ngx_http_payflow_risk_sh_t));

    rc->shpool->data = rc->sh;

    len = sizeof(" in payflow_risk zone \"\"") + shm_zone->shm.name.len;

    rc->shpool->log_ctx = ngx_slab_alloc(rc->shpool, len);
    if (rc->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(rc->shpool->log_ctx, " in payflow_risk zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* the table: as many sets as the rest of the zone holds */

    size = shm_zone->shm.size - shm_zone->shm.size / 32;

    for ( ;; ) {
        sets = size / (NGX_HTTP_PAYFLOW_RISK_WAYS
                       * sizeof(ngx_http_payflow_risk_node_t));

        if (sets < 16) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "payflow_risk zone \"%V\" is too small",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }

        len = sets * NGX_HTTP_PAYFLOW_RISK_WAYS
              * sizeof(ngx_http_payflow_risk_node_t);

        rc->sh->table = ngx_slab_calloc(rc->shpool, len);
        if (rc->sh->table) {
            break;
        }

        size -= size / 16;
    }

    rc->sh->sets = sets;

    return NGX_OK;
}


/*
 * Scores a payment and counts it, then runs q, the statement that writes
 * it, with *risk (its p_risk) set.  What this node counted decides at once;
 * with "redis=", the velocity windows are the cluster's: the request waits
 * for Redis (at most redis_timeout) and what this node counted decides if
 * Redis does not answer in time.  Returns what db_run returns.
 */

ngx_int_t
ngx_http_payflow_risk_assess(ngx_http_request_t *r,
    ngx_http_payflow_risk_signals_t *sig, const char **risk,
    pf_pg_query_t *q, const char *what, ngx_http_payflow_db_ok_pt ok)
{
    double                          x, sd;
    uint32_t                        card;
    ngx_str_t                      *value, tenant;
    ngx_uint_t                      k, kind, j, cards, w;
    ngx_http_cleanup_t             *cln;
    ngx_http_payflow_ctx_t         *ctx;
    ngx_http_payflow_risk_req_t    *rq;
    ngx_http_payflow_risk_conf_t   *rc;
    ngx_http_payflow_main_conf_t   *pmcf;
    ngx_http_payflow_risk_node_t   *n;
    u_char                          detail[160];

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    rc = pmcf->risk;

    *risk = NULL;

    if (rc == NULL || rc->zone == NULL) {
        return ngx_http_payflow_db_run(r, q, what, ok);
    }

    rq = ngx_pcalloc(r->pool, sizeof(ngx_http_payflow_risk_req_t));
    if (rq == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rq->request = r;
    rq->risk = risk;
    rq->query = q;
    rq->what = what;
    rq->ok = ok;
    rq->amount = sig->amount;
    rq->currency = sig->currency;
    rq->by_email = (sig->customer_id.len == 0);

    if (sig->card.len) {
        rq->card = ngx_crc32_long(sig->card.data, sig->card.len) | 1;
    }

    ngx_http_payflow_risk_clock(rq, 0);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_payflow_risk_cleanup;
    cln->data = rq;

    ctx->risk = rq;

    rq->now = (uint32_t) ngx_time();
    tenant = ctx->auth.tenant_id;

    ngx_shmtx_lock(&rc->shpool->mutex);

    for (kind = 0; kind < NGX_HTTP_PAYFLOW_RISK_KINDS; kind++) {

        switch (kind) {
        case NGX_HTTP_PAYFLOW_RISK_CUSTOMER:
        case NGX_HTTP_PAYFLOW_RISK_SPENDER:
            value = &sig->customer;
            break;
        case NGX_HTTP_PAYFLOW_RISK_EMAIL:
            value = &sig->email;
            break;
        case NGX_HTTP_PAYFLOW_RISK_IP:
            value = &sig->ip;
            break;
        case NGX_HTTP_PAYFLOW_RISK_CARD:
            value = &sig->card;
            break;
        default: /* NGX_HTTP_PAYFLOW_RISK_TENANT */
            value = &tenant;
            break;
        }

        if (value->len == 0) {
            continue;
        }

        rq->digest[kind] = ngx_http_payflow_risk_digest(rc, &tenant,
                     ctx->auth.livemode, kind, value,
                     (kind == NGX_HTTP_PAYFLOW_RISK_SPENDER
                      || kind == NGX_HTTP_PAYFLOW_RISK_TENANT)
                     ? sig->currency : NULL);
        rq->present[kind] = 1;

        n = ngx_http_payflow_risk_node(rc, rq->digest[kind], rq->now);
        rq->nodes[kind] = n;

        if (n == NULL) {
            continue;
        }

        /* the windows as this node saw them, this payment included */

        for (w = 0; w < NGX_HTTP_PAYFLOW_RISK_WINDOWS; w++) {
            rq->counts[kind][w] = ngx_http_payflow_risk_window(n, w,
                                      rq->now, 0) + 1;
            rq->sums[kind][w] = ngx_http_payflow_risk_window(n, w,
                                    rq->now, 1) + sig->amount;
        }
    }

    /* the rules on the node's own statistics, before this payment */

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_NRULES; k++) {
        n = rq->nodes[ngx_http_payflow_risk_rules[k].kind];

        if (rc->disabled[k] || n == NULL) {
            continue;
        }

        detail[0] = '\0';

        switch (ngx_http_payflow_risk_rules[k].test) {

        case NGX_HTTP_PAYFLOW_RISK_ANOMALY:
            if (n->seen >= 3 && n->mean > 0
                && sig->amount > rc->limits[k] * n->mean)
            {
                *ngx_snprintf(detail, sizeof(detail) - 1,
                              "%.1f times the customer's usual %.0f",
                              sig->amount / n->mean, n->mean) = '\0';
            }

            break;

        case NGX_HTTP_PAYFLOW_RISK_ZSCORE:
            sd = sqrt(n->var);
            x = log((double) sig->amount);

            if (n->seen >= 30 && sd > 0.01
                && (x - n->mean) / sd > rc->limits[k])
            {
                *ngx_snprintf(detail, sizeof(detail) - 1,
                              "%.1f standard deviations above the tenant's "
                              "usual amounts", (x - n->mean) / sd) = '\0';
            }

            break;

        case NGX_HTTP_PAYFLOW_RISK_FIRST:
            if (n->seen == 0 && sig->amount > rc->limits[k]) {
                *ngx_snprintf(detail, sizeof(detail) - 1,
                              "a new customer pays %L (limit %L)",
                              sig->amount, rc->limits[k]) = '\0';
            }

            break;

        case NGX_HTTP_PAYFLOW_RISK_DISTINCT:
            if (sig->card.len == 0) {
                break;
            }

            card = rq->card;
            cards = 1;

            for (j = 0; j < NGX_HTTP_PAYFLOW_RISK_CARDS; j++) {
                if (n->card_at[j] + 86400 > rq->now && n->cards[j] != card) {
                    cards++;
                }
            }

            if (cards > (ngx_uint_t) rc->limits[k]) {
                *ngx_snprintf(detail, sizeof(detail) - 1,
                              "%ui cards in a day (limit %L)", cards,
                              rc->limits[k]) = '\0';
            }

            break;

        default:
            /* velocity: once the windows are known */
            break;
        }

        if (detail[0] == '\0') {
            continue;
        }

        ngx_http_payflow_risk_hit(rq, rc, k, detail);
    }

    /* the payment is counted once it is written: not a replay's */

    ngx_shmtx_unlock(&rc->shpool->mutex);

    /* the signals the database matches the tenant's lists against */

    rq->signals[0] = sig->email;
    rq->signals[1] = sig->domain;
    rq->signals[2] = sig->ip;
    rq->signals[3] = sig->card;
    rq->signals[4] = sig->country;
    rq->signals[5] = sig->customer_id;

    /* this worker's copy of the tenant's lists and settings, if current */

    rq->copied = (ngx_http_payflow_risk_cache_lookup(&tenant,
                                                     ctx->auth.livemode, sig,
                                                     &rq->tenant)
                  == NGX_OK);

    ngx_http_payflow_risk_clock(rq, 1);

    if (rc->rd && ngx_http_payflow_risk_redis_send(rq) == NGX_OK) {
        rq->timer.handler = ngx_http_payflow_risk_timeout;
        rq->timer.data = rq;
        rq->timer.log = r->connection->log;
        ngx_add_timer(&rq->timer, rc->redis_timeout);

        r->main->count++;

        return NGX_DONE;
    }

    if (rc->rd) {
        ngx_http_payflow_risk_fallback(rq, "not connected");
    }

    return ngx_http_payflow_risk_decide(rq);
}


/* a worker rule fired: its reason for the payment's risk.rules */

static void
ngx_http_payflow_risk_hit(ngx_http_payflow_risk_req_t *rq,
    ngx_http_payflow_risk_conf_t *rc, ngx_uint_t k, u_char *detail)
{
    (void) ngx_atomic_fetch_add(&rc->sh->hits[k], 1);

    rq->hits[rq->nhits].rule = k;
    *ngx_cpystrn(rq->hits[rq->nhits].detail, detail,
                 sizeof(rq->hits[0].detail)) = '\0';
    rq->nhits++;
}


/* the velocity rules on the windows known, then the statement runs */

static ngx_int_t
ngx_http_payflow_risk_decide(ngx_http_payflow_risk_req_t *rq)
{
    u_char                        *out, *p;
    size_t                         len, rules;
    double                         v;
    ngx_uint_t                     i, k, j, kind, w, us, score, decision;
    ngx_http_request_t            *r;
    ngx_http_payflow_risk_conf_t  *rc;
    ngx_http_payflow_main_conf_t  *pmcf;
    u_char                         detail[160];

    r = rq->request;
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    rc = pmcf->risk;

    ngx_http_payflow_risk_clock(rq, 0);

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_NRULES; k++) {
        kind = ngx_http_payflow_risk_rules[k].kind;
        w = ngx_http_payflow_risk_rules[k].window;

        if (rc->disabled[k] || !rq->present[kind]) {
            continue;
        }

        if (kind == NGX_HTTP_PAYFLOW_RISK_CUSTOMER && rq->by_email) {
            /* the e-mail's own rules count it already */
            continue;
        }

        detail[0] = '\0';

        if (ngx_http_payflow_risk_rules[k].test
            == NGX_HTTP_PAYFLOW_RISK_COUNT)
        {
            v = rq->counts[kind][w];

            if (v > rc->limits[k]) {
                *ngx_snprintf(detail, sizeof(detail) - 1,
                              "%.0f payments (limit %L)", v, rc->limits[k])
                    = '\0';
            }

        } else if (ngx_http_payflow_risk_rules[k].test
                   == NGX_HTTP_PAYFLOW_RISK_SUM)
        {
            v = rq->sums[kind][w];

            if (v > rc->limits[k]) {
                *ngx_snprintf(detail, sizeof(detail) - 1,
                              "%.0f %s in a day (limit %L)", v,
                              rq->currency, rc->limits[k]) = '\0';
            }
        }

        if (detail[0] == '\0') {
            continue;
        }

        ngx_http_payflow_risk_hit(rq, rc, k, detail);
    }

    k = rc->self_rule;
    j = rc->block_rule;

    /* p_risk: the hits (their details are ours), signals escaped */

    len = sizeof("{\"rules\":[],\"signals\":{},\"scores\":{"
                 "\"self_dealing\":,\"blocklist\":},\"review\":,"
                 "\"block\":}") + 5 * NGX_INT_T_LEN;

    rules = 0;

    for (i = 0; i < rq->nhits; i++) {
        rules += sizeof("{\"rule\":\"\",\"score\":,\"detail\":\"\"},")
                 + ngx_strlen(ngx_http_payflow_risk_rules[rq->hits[i].rule]
                                  .name)
                 + NGX_INT_T_LEN
                 + ngx_escape_json(NULL, rq->hits[i].detail,
                                   ngx_strlen(rq->hits[i].detail))
                 + ngx_strlen(rq->hits[i].detail);
    }

    len += rules;

    if (rq->copied) {
        /* the decision as the database would make it, on the copy */
        len += sizeof(",\"version\":,\"result\":{\"score\":,"
                      "\"decision\":\"review\",\"rules\":[]}")
               + NGX_INT64_LEN + NGX_INT_T_LEN + rules;
    }

    for (i = 0; i < 6; i++) {
        len += sizeof("\"\":\"\",") + sizeof("customer")
               + rq->signals[i].len
               + ngx_escape_json(NULL, rq->signals[i].data,
                                 rq->signals[i].len);
    }

    out = ngx_pnalloc(r->pool, len);
    if (out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(out, "{\"rules\":[", sizeof("{\"rules\":[") - 1);
    p = ngx_http_payflow_risk_hits(rq, rc, 0, p);
    p = ngx_cpymem(p, "],\"signals\":{", sizeof("],\"signals\":{") - 1);
    w = 0;

    for (i = 0; i < 6; i++) {
        if (rq->signals[i].len == 0) {
            continue;
        }

        p = ngx_sprintf(p, "%s\"%s\":\"", w++ ? "," : "",
                        ngx_http_payflow_risk_signal_names[i]);
        p = (u_char *) ngx_escape_json(p, rq->signals[i].data,
                                       rq->signals[i].len);
        *p++ = '"';
    }

    p = ngx_sprintf(p, "},\"scores\":{\"self_dealing\":%ui,"
                    "\"blocklist\":%ui},\"review\":%ui,\"block\":%ui",
                    rc->disabled[k] ? 0 : rc->scores[k],
                    rc->disabled[j] ? 0 : rc->scores[j],
                    rc->review, rc->block);

    if (rq->copied) {

        /*
         * sql/0020's arithmetic: the tenant's score for each hit (a rule
         * it turned off drops), at most 100; above its block threshold
         * blocks, from its review threshold reviews.
         */

        score = 0;

        for (i = 0; i < rq->nhits; i++) {
            k = rq->hits[i].rule;

            if (!rq->tenant.disabled[k]) {
                score += (rq->tenant.scores[k] >= 0)
                         ? (ngx_uint_t) rq->tenant.scores[k] : rc->scores[k];
            }
        }

        score = ngx_min(score, 100);

        decision = (score > (rq->tenant.block >= 0
                             ? (ngx_uint_t) rq->tenant.block : rc->block))
                   ? NGX_HTTP_PAYFLOW_RISK_BLOCK
                   : (score >= (rq->tenant.review >= 0
                                ? (ngx_uint_t) rq->tenant.review
                                : rc->review))
                     ? NGX_HTTP_PAYFLOW_RISK_REVIEW
                     : NGX_HTTP_PAYFLOW_RISK_ALLOW;

        p = ngx_sprintf(p, ",\"version\":%L,\"result\":{\"score\":%ui,"
                        "\"decision\":\"%s\",\"rules\":[",
                        rq->tenant.version, score,
                        ngx_http_payflow_risk_decisions[decision]);
        p = ngx_http_payflow_risk_hits(rq, rc, 1, p);
        *p++ = ']';
        *p++ = '}';
    }

    *p++ = '}';
    *p = '\0';

    *rq->risk = (char *) out;

    ngx_http_payflow_risk_clock(rq, 1);

    us = rq->us;

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_BUCKETS; k++) {
        if (us <= ngx_http_payflow_risk_bounds[k]) {
            break;
        }
    }

    if (k < NGX_HTTP_PAYFLOW_RISK_BUCKETS) {
        (void) ngx_atomic_fetch_add(&rc->sh->latency[k], 1);
    }

    (void) ngx_atomic_fetch_add(&rc->sh->assessed, 1);
    (void) ngx_atomic_fetch_add(&rc->sh->latency_us, us);

    return ngx_http_payflow_db_run(r, rq->query, rq->what, rq->ok);
}


/* the hits as rules[]: with nginx.conf's scores, or the tenant's */

static u_char *
ngx_http_payflow_risk_hits(ngx_http_payflow_risk_req_t *rq,
    ngx_http_payflow_risk_conf_t *rc, ngx_uint_t tenant, u_char *p)
{
    ngx_uint_t  i, k, n, score;

    n = 0;

    for (i = 0; i < rq->nhits; i++) {
        k = rq->hits[i].rule;
        score = rc->scores[k];

        if (tenant) {
            if (rq->tenant.disabled[k]) {
                continue;
            }

            if (rq->tenant.scores[k] >= 0) {
                score = (ngx_uint_t) rq->tenant.scores[k];
            }
        }

        p = ngx_sprintf(p, "%s{\"rule\":\"%s\",\"score\":%ui,"
                        "\"detail\":\"", n++ ? "," : "",
                        ngx_http_payflow_risk_rules[k].name, score);
        p = (u_char *) ngx_escape_json(p, rq->hits[i].detail,
                                       ngx_strlen(rq->hits[i].detail));
        *p++ = '"';
        *p++ = '}';
    }

    return p;
}


/* the worker's own time on a payment, Redis's wait left out */

static void
ngx_http_payflow_risk_clock(ngx_http_payflow_risk_req_t *rq,
    ngx_uint_t stop)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    if (!stop) {
        rq->t0 = ts;
        return;
    }

    rq->us += (ts.tv_sec - rq->t0.tv_sec) * 1000000
              + (ts.tv_nsec - rq->t0.tv_nsec) / 1000;
}


/*
 * One EVAL reads every window of every thing counted, in buckets each node
 * names by its own clock (nodes keep NTP time): the current and the
 * previous bucket's count and sum.
 */

static ngx_int_t
ngx_http_payflow_risk_redis_send(ngx_http_payflow_risk_req_t *rq)
{
    u_char                        *p;
    ngx_uint_t                     kind, w, argc;
    ngx_http_request_t            *r;
    ngx_http_payflow_risk_conf_t  *rc;
    ngx_http_payflow_main_conf_t  *pmcf;
    size_t                         lens[4 + 2 * NGX_HTTP_PAYFLOW_RISK_KINDS
                                        * NGX_HTTP_PAYFLOW_RISK_WINDOWS];
    const char                    *argv[4 + 2 * NGX_HTTP_PAYFLOW_RISK_KINDS
                                        * NGX_HTTP_PAYFLOW_RISK_WINDOWS];

    r = rq->request;
    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    rc = pmcf->risk;

    if (!pf_redis_connected(rc->rd)) {
        return NGX_DECLINED;
    }

    argc = 3;
    argv[0] = "EVAL";
    lens[0] = 4;
    argv[1] = ngx_http_payflow_risk_read;
    lens[1] = sizeof(ngx_http_payflow_risk_read) - 1;

    for (kind = 0; kind < NGX_HTTP_PAYFLOW_RISK_KINDS; kind++) {
        if (!rq->present[kind]) {
            continue;
        }

        for (w = 0; w < NGX_HTTP_PAYFLOW_RISK_WINDOWS; w++) {
            /* the current bucket, then the previous */

            p = ngx_pnalloc(r->pool, 2 * NGX_HTTP_PAYFLOW_RISK_KEY_LEN(rc));
            if (p == NULL) {
                return NGX_ERROR;
            }

            argv[argc] = (char *) p;
            p = ngx_http_payflow_risk_key(rc, rq, kind, w, 0, p);
            lens[argc] = p - (u_char *) argv[argc];
            argc++;

            argv[argc] = (char *) p;
            p = ngx_http_payflow_risk_key(rc, rq, kind, w, 1, p);
            lens[argc] = p - (u_char *) argv[argc];
            argc++;

            rq->windows[rq->nwindows].kind = kind;
            rq->windows[rq->nwindows].window = w;
            rq->nwindows++;
        }
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    argv[2] = (char *) p;
    p = ngx_sprintf(p, "%ui", argc - 3);
    lens[2] = p - (u_char *) argv[2];

    rq->cmd = pf_redis_send(rc->rd, ngx_http_payflow_risk_redis_reply, rq,
                            (int) argc, argv, lens);

    return rq->cmd ? NGX_OK : NGX_DECLINED;
}


static void
ngx_http_payflow_risk_redis_reply(void *data, redisReply *reply)
{
    ngx_http_payflow_risk_req_t *rq = data;

    double                         left;
    uint32_t                       span;
    ngx_int_t                      rc;
    ngx_uint_t                     i, kind, w;
    redisReply                   **e;
    ngx_http_request_t            *r;

    rq->cmd = NULL;
    r = rq->request;

    if (rq->timer.timer_set) {
        ngx_del_timer(&rq->timer);
    }

    if (reply && reply->type == REDIS_REPLY_ARRAY
        && reply->elements == 4 * rq->nwindows)
    {
        e = reply->element;

        for (i = 0; i < rq->nwindows; i++) {
            if (e[4 * i]->type != REDIS_REPLY_INTEGER
                || e[4 * i + 1]->type != REDIS_REPLY_INTEGER
                || e[4 * i + 2]->type != REDIS_REPLY_INTEGER
                || e[4 * i + 3]->type != REDIS_REPLY_INTEGER)
            {
                break;
            }
        }

        if (i == rq->nwindows) {
            for (i = 0; i < rq->nwindows; i++) {
                kind = rq->windows[i].kind;
                w = rq->windows[i].window;
                span = ngx_http_payflow_risk_spans[w];
                left = (double) (span - rq->now % span) / span;

                rq->counts[kind][w] = e[4 * i]->integer + 1
                                      + e[4 * i + 2]->integer * left;
                rq->sums[kind][w] = e[4 * i + 1]->integer + rq->amount
                                    + e[4 * i + 3]->integer * left;
            }

            goto decide;
        }
    }

    ngx_http_payflow_risk_fallback(rq,
        (reply && reply->type == REDIS_REPLY_ERROR) ? reply->str
                                                    : "no reply");

decide:

    rc = ngx_http_payflow_risk_decide(rq);

    ngx_http_payflow_finalize(r, rc);
}


static void
ngx_http_payflow_risk_timeout(ngx_event_t *ev)
{
    ngx_int_t                     rc;
    ngx_http_request_t           *r;
    ngx_http_payflow_risk_req_t  *rq;

    rq = ev->data;
    r = rq->request;

    if (rq->cmd) {
        pf_redis_abandon(rq->cmd);
        rq->cmd = NULL;
    }

    ngx_http_payflow_risk_fallback(rq, "timed out");

    rc = ngx_http_payflow_risk_decide(rq);

    ngx_http_payflow_finalize(r, rc);
}


/*
 * Redis did not count: this node's windows decide, and the operator hears
 * of it at most every 10 seconds per worker.
 */

static void
ngx_http_payflow_risk_fallback(ngx_http_payflow_risk_req_t *rq,
    const char *why)
{
    ngx_http_payflow_risk_conf_t  *rc;
    ngx_http_payflow_main_conf_t  *pmcf;

    static time_t  logged;

    pmcf = ngx_http_get_module_main_conf(rq->request,
                                         ngx_http_payflow_module);
    rc = pmcf->risk;

    (void) ngx_atomic_fetch_add(&rc->sh->fallbacks, 1);

    if (ngx_time() - logged >= 10) {
        logged = ngx_time();
        ngx_log_error(NGX_LOG_WARN, rq->request->connection->log, 0,
                      "payflow risk: Redis %s, velocity counted by this "
                      "node alone", why);
    }
}


/* the client went away while Redis was asked */

static void
ngx_http_payflow_risk_cleanup(void *data)
{
    ngx_http_payflow_risk_req_t *rq = data;

    if (rq->timer.timer_set) {
        ngx_del_timer(&rq->timer);
    }

    if (rq->cmd) {
        pf_redis_abandon(rq->cmd);
        rq->cmd = NULL;
    }
}


/*
 * The payment this request assessed is written (not another request's
 * under the same Idempotency-Key): it is counted, here and in Redis.
 */

void
ngx_http_payflow_risk_count(ngx_http_request_t *r)
{
    u_char                        *p;
    double                         x, d, alpha;
    ngx_uint_t                     kind, j, w, argc, found;
    ngx_http_payflow_ctx_t        *ctx;
    ngx_http_payflow_risk_req_t   *rq;
    ngx_http_payflow_risk_conf_t  *rc;
    ngx_http_payflow_main_conf_t  *pmcf;
    ngx_http_payflow_risk_node_t  *n;
    size_t                         lens[4 + NGX_HTTP_PAYFLOW_RISK_KINDS
                                        * NGX_HTTP_PAYFLOW_RISK_WINDOWS];
    const char                    *argv[4 + NGX_HTTP_PAYFLOW_RISK_KINDS
                                        * NGX_HTTP_PAYFLOW_RISK_WINDOWS];

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_payflow_module);
    rc = pmcf->risk;
    rq = ctx ? ctx->risk : NULL;

    if (rq == NULL || rq->counted || rc == NULL || rc->sh == NULL) {
        return;
    }

    rq->counted = 1;

    ngx_shmtx_lock(&rc->shpool->mutex);

    for (kind = 0; kind < NGX_HTTP_PAYFLOW_RISK_KINDS; kind++) {
        if (!rq->present[kind]) {
            continue;
        }

        /* the assessment's node, unless another took its slot since */

        n = rq->nodes[kind];

        if (n == NULL || n->digest != rq->digest[kind]) {
            n = ngx_http_payflow_risk_node(rc, rq->digest[kind], rq->now);
            if (n == NULL) {
                continue;
            }
        }

        for (j = 0; j < NGX_HTTP_PAYFLOW_RISK_WINDOWS; j++) {
            n->count[j][0]++;
            n->sum[j][0] += rq->amount;
        }

        n->seen++;
        alpha = 1.0 / ngx_min(n->seen, 1000);

        if (kind == NGX_HTTP_PAYFLOW_RISK_TENANT) {
            x = log((double) rq->amount);
            d = x - n->mean;
            n->mean += alpha * d;
            n->var = (1 - alpha) * (n->var + d * alpha * d);

        } else if (kind == NGX_HTTP_PAYFLOW_RISK_SPENDER) {
            n->mean += (rq->amount - n->mean) / ngx_min(n->seen, 50);
        }

        if (kind == NGX_HTTP_PAYFLOW_RISK_CUSTOMER && rq->card) {
            found = NGX_HTTP_PAYFLOW_RISK_CARDS;

            for (j = 0; j < NGX_HTTP_PAYFLOW_RISK_CARDS; j++) {
                if (n->cards[j] == rq->card && n->card_at[j]) {
                    found = j;
                    break;
                }

                if (found == NGX_HTTP_PAYFLOW_RISK_CARDS
                    || n->card_at[j] < n->card_at[found])
                {
                    found = j;
                }
            }

            n->cards[found] = rq->card;
            n->card_at[found] = rq->now;
        }
    }

    ngx_shmtx_unlock(&rc->shpool->mutex);

    if (rc->rd == NULL || !pf_redis_connected(rc->rd)) {
        return;
    }

    /* the cluster's windows: sent and not waited for */

    argc = 3;
    argv[0] = "EVAL";
    lens[0] = 4;
    argv[1] = ngx_http_payflow_risk_write;
    lens[1] = sizeof(ngx_http_payflow_risk_write) - 1;

    for (kind = 0; kind < NGX_HTTP_PAYFLOW_RISK_KINDS; kind++) {
        if (!rq->present[kind]) {
            continue;
        }

        for (w = 0; w < NGX_HTTP_PAYFLOW_RISK_WINDOWS; w++) {
            p = ngx_pnalloc(r->pool, NGX_HTTP_PAYFLOW_RISK_KEY_LEN(rc));
            if (p == NULL) {
                return;
            }

            argv[argc] = (char *) p;
            p = ngx_http_payflow_risk_key(rc, rq, kind, w, 0, p);
            lens[argc] = p - (u_char *) argv[argc];
            argc++;
        }
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + NGX_INT64_LEN);
    if (p == NULL) {
        return;
    }

    argv[2] = (char *) p;
    p = ngx_sprintf(p, "%ui", argc - 3);
    lens[2] = p - (u_char *) argv[2];

    argv[argc] = (char *) p;
    p = ngx_sprintf(p, "%L", rq->amount);
    lens[argc] = p - (u_char *) argv[argc];
    argc++;

    (void) pf_redis_send(rc->rd, ngx_http_payflow_risk_written, NULL,
                         (int) argc, argv, lens);
}


/* a window bucket's Redis key: the current one, or back the previous */

static u_char *
ngx_http_payflow_risk_key(ngx_http_payflow_risk_conf_t *rc,
    ngx_http_payflow_risk_req_t *rq, ngx_uint_t kind, ngx_uint_t w,
    ngx_uint_t back, u_char *p)
{
    uint32_t  span;

    span = ngx_http_payflow_risk_spans[w];

    return ngx_sprintf(p, "%V%016xL:%uD:%uD", &rc->prefix, rq->digest[kind],
                       span, rq->now / span - (back ? 1 : 0));
}


static void
ngx_http_payflow_risk_written(void *data, redisReply *reply)
{
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "payflow risk: counting in Redis failed: %s",
                      reply->str);
    }
}


/*
 * The database's decision on a payment this worker assessed; copied: the
 * one the worker made on its copy of the tenant's lists and settings.
 */

void
ngx_http_payflow_risk_decided(ngx_http_request_t *r, const char *decision,
    ngx_uint_t copied)
{
    ngx_uint_t                     i;
    ngx_http_payflow_risk_conf_t  *rc;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    rc = pmcf->risk;

    if (rc == NULL || rc->sh == NULL || decision == NULL) {
        return;
    }

    if (copied) {
        (void) ngx_atomic_fetch_add(&rc->sh->by_worker, 1);
    }

    for (i = 0; i < 3; i++) {
        if (ngx_strcmp(decision, ngx_http_payflow_risk_decisions[i]) == 0) {
            (void) ngx_atomic_fetch_add(&rc->sh->decisions[i], 1);
            return;
        }
    }
}


/* the node counting digest, created if new; NULL: no memory */

static ngx_http_payflow_risk_node_t *
ngx_http_payflow_risk_node(ngx_http_payflow_risk_conf_t *rc, uint64_t digest,
    uint32_t now)
{
    ngx_uint_t                     i;
    ngx_http_payflow_risk_node_t  *set, *n, *old;

    set = &rc->sh->table[(digest >> 8) % rc->sh->sets
                         * NGX_HTTP_PAYFLOW_RISK_WAYS];
    old = NULL;

    for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_WAYS; i++) {
        n = &set[i];

        if (n->digest == digest) {
            n->used = now;
            ngx_http_payflow_risk_roll(n, now);
            return n;
        }

        if (old == NULL
            || (old->digest
                && (n->digest == 0 || (int32_t) (n->used - old->used) < 0)))
        {
            old = n;
        }
    }

    /* the set's free slot, or its least recently used node */

    n = old;

    if (n->digest) {
        rc->sh->evicted++;

    } else {
        rc->sh->nodes++;
    }

    ngx_memzero(n, sizeof(ngx_http_payflow_risk_node_t));

    n->digest = digest;
    n->used = now;

    for (i = 0; i < NGX_HTTP_PAYFLOW_RISK_WINDOWS; i++) {
        n->start[i] = now - now % ngx_http_payflow_risk_spans[i];
    }

    return n;
}


/* the windows moved on: the current becomes the previous, or both clear */

static void
ngx_http_payflow_risk_roll(ngx_http_payflow_risk_node_t *n, uint32_t now)
{
    uint32_t    span, start;
    ngx_uint_t  w;

    for (w = 0; w < NGX_HTTP_PAYFLOW_RISK_WINDOWS; w++) {
        span = ngx_http_payflow_risk_spans[w];
        start = now - now % span;

        if ((int32_t) (start - n->start[w]) <= 0) {
            /* this window, or a worker whose clock is a second behind */
            continue;
        }

        if (start - n->start[w] == span) {
            n->count[w][1] = n->count[w][0];
            n->sum[w][1] = n->sum[w][0];

        } else {
            n->count[w][1] = 0;
            n->sum[w][1] = 0;
        }

        n->count[w][0] = 0;
        n->sum[w][0] = 0;
        n->start[w] = start;
    }
}


/* the sliding window's estimate: the previous window by its overlap */

static double
ngx_http_payflow_risk_window(ngx_http_payflow_risk_node_t *n, ngx_uint_t w,
    uint32_t now, ngx_uint_t sum)
{
    double    left;
    uint32_t  span;

    span = ngx_http_payflow_risk_spans[w];
    now = ngx_max(now, n->start[w]);
    left = (double) (span - ngx_min(now - n->start[w], span)) / span;

    if (sum) {
        return n->sum[w][0] + n->sum[w][1] * left;
    }

    return n->count[w][0] + n->count[w][1] * left;
}


/*
 * SipHash-2-4 (Aumasson and Bernstein) of what a node counts, under a key
 * derived from the key pepper: nodes sharing the pepper name the same
 * Redis keys, and nobody without it can make two customers collide.
 */

#define ngx_http_payflow_risk_rotl(x, b)  (((x) << (b)) | ((x) >> (64 - (b))))

#define ngx_http_payflow_risk_round(v0, v1, v2, v3)                           \
    v0 += v1; v1 = ngx_http_payflow_risk_rotl(v1, 13); v1 ^= v0;              \
    v0 = ngx_http_payflow_risk_rotl(v0, 32);                                  \
    v2 += v3; v3 = ngx_http_payflow_risk_rotl(v3, 16); v3 ^= v2;              \
    v0 += v3; v3 = ngx_http_payflow_risk_rotl(v3, 21); v3 ^= v0;              \
    v2 += v1; v1 = ngx_http_payflow_risk_rotl(v1, 17); v1 ^= v2;              \
    v2 = ngx_http_payflow_risk_rotl(v2, 32)

static uint64_t
ngx_http_payflow_risk_siphash(const uint64_t *key, const u_char *in,
    size_t len)
{
    size_t    i, left;
    uint64_t  v0, v1, v2, v3, m, b;

    v0 = 0x736f6d6570736575ULL ^ key[0];
    v1 = 0x646f72616e646f6dULL ^ key[1];
    v2 = 0x6c7967656e657261ULL ^ key[0];
    v3 = 0x7465646279746573ULL ^ key[1];

    b = (uint64_t) len << 56;
    left = len & 7;

    for (i = 0; i + 8 <= len; i += 8) {
        m = (uint64_t) in[i] | (uint64_t) in[i + 1] << 8
            | (uint64_t) in[i + 2] << 16 | (uint64_t) in[i + 3] << 24
            | (uint64_t) in[i + 4] << 32 | (uint64_t) in[i + 5] << 40
            | (uint64_t) in[i + 6] << 48 | (uint64_t) in[i + 7] << 56;

        v3 ^= m;
        ngx_http_payflow_risk_round(v0, v1, v2, v3);
        ngx_http_payflow_risk_round(v0, v1, v2, v3);
        v0 ^= m;
    }

    while (left) {
        left--;
        b |= (uint64_t) in[i + left] << (8 * left);
    }

    v3 ^= b;
    ngx_http_payflow_risk_round(v0, v1, v2, v3);
    ngx_http_payflow_risk_round(v0, v1, v2, v3);
    v0 ^= b;

    v2 ^= 0xff;
    ngx_http_payflow_risk_round(v0, v1, v2, v3);
    ngx_http_payflow_risk_round(v0, v1, v2, v3);
    ngx_http_payflow_risk_round(v0, v1, v2, v3);
    ngx_http_payflow_risk_round(v0, v1, v2, v3);

    return v0 ^ v1 ^ v2 ^ v3;
}


/* tenant, mode, kind, currency and value, each length-prefixed */

static uint64_t
ngx_http_payflow_risk_digest(ngx_http_payflow_risk_conf_t *rc,
    ngx_str_t *tenant, ngx_uint_t livemode, ngx_uint_t kind,
    ngx_str_t *value, const char *currency)
{
    u_char    *p, buf[16 + 64 + 8 + 255];
    size_t     tlen, vlen;
    uint64_t   d;

    /* ids are 28 bytes, values at most 255 (checked before) */

    tlen = ngx_min(tenant->len, 64);
    vlen = ngx_min(value->len, 255);

    p = buf;
    *p++ = (u_char) tlen;
    p = ngx_cpymem(p, tenant->data, tlen);
    *p++ = livemode ? 'l' : 't';
    *p++ = (u_char) kind;
    *p++ = currency ? 3 : 0;

    if (currency) {
        p = ngx_cpymem(p, currency, 3);
    }

    *p++ = (u_char) vlen;
    p = ngx_cpymem(p, value->data, vlen);

    d = ngx_http_payflow_risk_siphash(rc->key, buf, p - buf);

    /* 0 names a free slot */
    return d ? d : 1;
}


/* the catalogue for the settings API: defaults as nginx.conf made them */

const char *
ngx_http_payflow_risk_defaults(ngx_http_request_t *r)
{
    char                           *dump;
    json_t                         *doc, *rules, *rule;
    ngx_str_t                       s;
    ngx_uint_t                      k;
    const char                     *out;
    ngx_http_payflow_risk_conf_t   *rc;
    ngx_http_payflow_main_conf_t   *pmcf;
    u_char                          text[256];

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);
    rc = pmcf->risk;

    doc = json_object();
    rules = json_object();

    if (doc == NULL || rules == NULL) {
        goto failed;
    }

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_NRULES; k++) {

        if (ngx_http_payflow_risk_rules[k].test
            == NGX_HTTP_PAYFLOW_RISK_SQL)
        {
            *ngx_snprintf(text, sizeof(text) - 1, "%s",
                          ngx_http_payflow_risk_rules[k].description) = '\0';

        } else {
            *ngx_snprintf(text, sizeof(text) - 1, "%s (limit %L)",
                          ngx_http_payflow_risk_rules[k].description,
                          rc->limits[k]) = '\0';
        }

        rule = json_pack("{s:I, s:s}", "score",
                         (json_int_t) (rc->disabled[k] ? 0 : rc->scores[k]),
                         "description", (char *) text);

        if (rule == NULL
            || json_object_set_new(rules,
                   ngx_http_payflow_risk_rules[k].name, rule) != 0)
        {
            goto failed;
        }
    }

    if (json_object_set_new(doc, "rules", rules) != 0) {
        rules = NULL;
        goto failed;
    }

    rules = NULL;

    if (json_object_set_new(doc, "review", json_integer(rc->review)) != 0
        || json_object_set_new(doc, "block", json_integer(rc->block)) != 0)
    {
        goto failed;
    }

    dump = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);

    if (dump == NULL) {
        return NULL;
    }

    s.data = (u_char *) dump;
    s.len = ngx_strlen(dump);
    out = ngx_http_payflow_db_str(r->pool, &s);
    free(dump);

    return out;

failed:

    if (rules) {
        json_decref(rules);
    }

    if (doc) {
        json_decref(doc);
    }

    return NULL;
}


void
ngx_http_payflow_risk_metrics(ngx_http_payflow_main_conf_t *pmcf,
    pf_prom_t *out)
{
    ngx_uint_t                     k;
    ngx_atomic_uint_t              cum;
    ngx_http_payflow_risk_sh_t    *sh;
    ngx_http_payflow_risk_conf_t  *rc;

    rc = pmcf->risk;

    if (rc == NULL || rc->sh == NULL) {
        return;
    }

    sh = rc->sh;

    pf_prom_family(out, "payflow_risk_decisions_total", "counter",
                   "Risk decisions on new payments, by outcome.");

    for (k = 0; k < 3; k++) {
        pf_prom_printf(out, "payflow_risk_decisions_total{decision=\"%s\"} "
                       "%uA\n", ngx_http_payflow_risk_decisions[k],
                       sh->decisions[k]);
    }

    pf_prom_family(out, "payflow_risk_rule_hits_total", "counter",
                   "Payments a worker-side risk rule fired on.");

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_NRULES; k++) {
        if (ngx_http_payflow_risk_rules[k].test
            != NGX_HTTP_PAYFLOW_RISK_SQL)
        {
            pf_prom_printf(out, "payflow_risk_rule_hits_total{rule=\"%s\"} "
                           "%uA\n", ngx_http_payflow_risk_rules[k].name,
                           sh->hits[k]);
        }
    }

    pf_prom_family(out, "payflow_risk_evaluation_seconds", "histogram",
                   "Time a worker takes to evaluate its risk rules.");

    cum = 0;

    for (k = 0; k < NGX_HTTP_PAYFLOW_RISK_BUCKETS; k++) {
        cum += sh->latency[k];
        pf_prom_printf(out, "payflow_risk_evaluation_seconds_bucket"
                       "{le=\"%.6f\"} %uA\n",
                       (double) ngx_http_payflow_risk_bounds[k] / 1000000,
                       cum);
    }

    pf_prom_printf(out, "payflow_risk_evaluation_seconds_bucket{le=\"+Inf\"} "
                   "%uA\n", sh->assessed);
    pf_prom_printf(out, "payflow_risk_evaluation_seconds_sum %.6f\n",
                   (double) sh->latency_us / 1000000);
    pf_prom_printf(out, "payflow_risk_evaluation_seconds_count %uA\n",
                   sh->assessed);

    pf_prom_family(out, "payflow_risk_copy_decisions_total", "counter",
                   "Payments decided by a worker on its copy of the "
                   "tenant's lists and settings, the copy current (the "
                   "others: decided in the database).");
    pf_prom_printf(out, "payflow_risk_copy_decisions_total %uA\n",
                   sh->by_worker);

    pf_prom_family(out, "payflow_risk_counters", "gauge",
                   "Things the risk zone counts now (customers, e-mails, "
                   "addresses, cards, tenants).");
    pf_prom_printf(out, "payflow_risk_counters %uA\n", sh->nodes);

    pf_prom_family(out, "payflow_risk_evicted_total", "counter",
                   "Risk counters dropped to make room.");
    pf_prom_printf(out, "payflow_risk_evicted_total %uA\n", sh->evicted);

    pf_prom_family(out, "payflow_risk_review_queue", "gauge",
                   "Payments waiting in review (all tenants), as the "
                   "background jobs last counted.");
    pf_prom_printf(out, "payflow_risk_review_queue %uA\n", sh->queue_depth);

    pf_prom_family(out, "payflow_risk_review_oldest_seconds", "gauge",
                   "How long the oldest payment in review has waited.");
    pf_prom_printf(out, "payflow_risk_review_oldest_seconds %uA\n",
                   sh->queue_age);

    pf_prom_family(out, "payflow_risk_redis_fallbacks_total", "counter",
                   "Payments whose velocity this node counted alone: "
                   "Redis was down or slower than redis_timeout.");
    pf_prom_printf(out, "payflow_risk_redis_fallbacks_total %uA\n",
                   sh->fallbacks);
}
