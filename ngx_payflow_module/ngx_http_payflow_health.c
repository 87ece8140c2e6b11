
/*
 * Copyright (C) PayFlow
 *
 * GET /healthz: this worker is alive (no I/O).
 * GET /readyz:  one real PostgreSQL round trip through the worker's pool.
 */


#include "ngx_http_payflow_health.h"


static ngx_int_t ngx_http_payflow_ready_ok(ngx_http_request_t *r,
    pf_pg_query_t *q);
static json_t *ngx_http_payflow_pool_json(pf_pg_pool_t *pool);


ngx_int_t
ngx_http_payflow_health_init(ngx_http_payflow_main_conf_t *pmcf)
{
    pmcf->st.schema_version = pf_pg_statement_add(pmcf->db,
        "payflow_schema_version",
        "SELECT coalesce(max(version), '') FROM schema_migrations", 0);

    return pmcf->st.schema_version ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_payflow_health_handler(ngx_http_request_t *r)
{
    ngx_int_t      rc;
    ngx_str_t      data;
    pf_json_out_t  out;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (pf_json_out_init(&out, r->pool, 48) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pf_json_out_open(&out, '{');
    pf_json_out_key(&out, "status");
    pf_json_out_cstr(&out, "ok");
    pf_json_out_key(&out, "pid");
    pf_json_out_int(&out, ngx_pid);
    pf_json_out_close(&out, '}');

    if (pf_json_out_result(&out, &data) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_payflow_send_json(r, NGX_HTTP_OK, &data);
}


ngx_int_t
ngx_http_payflow_ready_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    pf_pg_query_t                 *q;
    ngx_http_payflow_main_conf_t  *pmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    q = ngx_http_payflow_db_query(r, 1, 0);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->stmts[0].statement = pmcf->st.schema_version;

    return ngx_http_payflow_db_run(r, q, "the readiness query",
                                   ngx_http_payflow_ready_ok);
}


static ngx_int_t
ngx_http_payflow_ready_ok(ngx_http_request_t *r, pf_pg_query_t *q)
{
    PGresult                      *res;
    ngx_http_payflow_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_payflow_module);

    res = q->results[0];

    return ngx_http_payflow_send_data(r, NGX_HTTP_OK,
               json_pack("{s:s, s:{s:{s:s, s:s, s:I, s:o}}}",
                         "status", "ready",
                         "checks",
                           "postgres",
                             "status", "ok",
                             "schema_version",
                               PQntuples(res) == 1 ? PQgetvalue(res, 0, 0)
                                                   : "",
                             "latency_ms",
                               (json_int_t) (ngx_current_msec - q->start),
                             "pool",
                               ngx_http_payflow_pool_json(pmcf->pool)));
}


static json_t *
ngx_http_payflow_pool_json(pf_pg_pool_t *pool)
{
    pf_pg_pool_stats_t  st;

    pf_pg_pool_stats(pool, &st);

    return json_pack("{s:I, s:I, s:I, s:I}",
                     "size", (json_int_t) st.size,
                     "connected", (json_int_t) st.connected,
                     "busy", (json_int_t) st.busy,
                     "waiting", (json_int_t) st.waiting);
}
