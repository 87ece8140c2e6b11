
/*
 * Copyright (C) PayFlow
 *
 * Outbound HTTP: a per-worker curl multi handle driven by nginx events.
 *
 * curl owns its sockets.  Each socket curl asks to watch is wrapped in an
 * nginx connection, attached to the socket with curl_multi_assign() (so a
 * descriptor number reused by a new socket is never confused with the old
 * one), watched level-triggered (curl reads at most a buffer per call),
 * and released with ngx_free_connection() when curl stops watching it.
 * curl says so before it closes a socket, and also when it parks one in
 * its connection cache, so the event is deleted with a system call while
 * the descriptor is still curl's.  Names are resolved by curl's threaded
 * resolver: the worker never waits on DNS.
 *
 * A call lives in its caller's pool; a caller that goes away cancels it
 * (a pool cleanup) and curl forgets the transfer.  The outcome says
 * whether the request can have reached the server: a failure before any
 * byte was sent (resolution, connect, TLS handshake) is safe to send
 * elsewhere, a failure after it is not.
 */


#include "pf_curl.h"
#include "pf_event.h"


struct pf_curl_s {
    CURLM                   *multi;
    ngx_log_t               *log;
    ngx_event_t              timer;
};


static int pf_curl_socket(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp);
static int pf_curl_timer(CURLM *multi, long timeout_ms, void *userp);
static void pf_curl_timer_handler(ngx_event_t *ev);
static void pf_curl_event_handler(ngx_event_t *ev);
static void pf_curl_action(pf_curl_t *curl, curl_socket_t s, int mask);
static void pf_curl_done(pf_curl_t *curl);
static void pf_curl_finish(pf_curl_call_t *call);
static size_t pf_curl_write(char *ptr, size_t size, size_t nmemb,
    void *userdata);
static void pf_curl_cleanup(void *data);
static curl_socket_t pf_curl_open_socket(void *data, curlsocktype purpose,
    struct curl_sockaddr *address);


static ngx_uint_t  pf_curl_initialized;


pf_curl_t *
pf_curl_create(ngx_cycle_t *cycle)
{
    pf_curl_t  *curl;

    if (!pf_curl_initialized) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "payflow curl: curl_global_init() failed");
            return NULL;
        }

        pf_curl_initialized = 1;
    }

    curl = ngx_pcalloc(cycle->pool, sizeof(pf_curl_t));
    if (curl == NULL) {
        return NULL;
    }

    curl->multi = curl_multi_init();
    if (curl->multi == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "payflow curl: curl_multi_init() failed");
        return NULL;
    }

    curl->log = cycle->log;

    curl->timer.handler = pf_curl_timer_handler;
    curl->timer.data = curl;
    curl->timer.log = cycle->log;
    curl->timer.cancelable = 1;

    (void) curl_multi_setopt(curl->multi, CURLMOPT_SOCKETFUNCTION,
                             pf_curl_socket);
    (void) curl_multi_setopt(curl->multi, CURLMOPT_SOCKETDATA, curl);
    (void) curl_multi_setopt(curl->multi, CURLMOPT_TIMERFUNCTION,
                             pf_curl_timer);
    (void) curl_multi_setopt(curl->multi, CURLMOPT_TIMERDATA, curl);
    (void) curl_multi_setopt(curl->multi, CURLMOPT_MAXCONNECTS, 64L);

    return curl;
}


void
pf_curl_destroy(pf_curl_t *curl)
{
    if (curl == NULL || curl->multi == NULL) {
        return;
    }

    if (curl->timer.timer_set) {
        ngx_del_timer(&curl->timer);
    }

    (void) curl_multi_cleanup(curl->multi);
    curl->multi = NULL;
}


ngx_int_t
pf_curl_header(pf_curl_call_t *call, const char *name, ngx_str_t *value)
{
    size_t      len;
    ngx_str_t  *h;

    if (call->headers == NULL) {
        call->headers = ngx_array_create(call->pool, 8, sizeof(ngx_str_t));
        if (call->headers == NULL) {
            return NGX_ERROR;
        }
    }

    h = ngx_array_push(call->headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(name) + sizeof(": ") - 1 + value->len;

    h->data = ngx_pnalloc(call->pool, len + 1);
    if (h->data == NULL) {
        return NGX_ERROR;
    }

    h->len = ngx_sprintf(h->data, "%s: %V", name, value) - h->data;
    h->data[h->len] = '\0';

    return NGX_OK;
}


ngx_int_t
pf_curl_start(pf_curl_t *curl, pf_curl_call_t *call)
{
    u_char              *url, *ca;
    CURL                *easy;
    ngx_str_t           *h;
    ngx_uint_t           i;
    ngx_pool_cleanup_t  *cln;
    struct curl_slist   *sl;

    if (curl == NULL || curl->multi == NULL) {
        return NGX_ERROR;
    }

    url = ngx_pnalloc(call->pool, call->url.len + 1);
    if (url == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(url, call->url.data, call->url.len + 1);

    ca = NULL;

    if (call->ca_file.len) {
        ca = ngx_pnalloc(call->pool, call->ca_file.len + 1);
        if (ca == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_cpystrn(ca, call->ca_file.data, call->ca_file.len + 1);
    }

    cln = ngx_pool_cleanup_add(call->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    easy = curl_easy_init();
    if (easy == NULL) {
        return NGX_ERROR;
    }

    call->curl = curl;
    call->easy = easy;
    call->slist = NULL;
    call->response.len = 0;
    call->size = 0;
    call->result = PF_CURL_OK;
    call->status = 0;
    call->error = NULL;
    call->errbuf[0] = '\0';

    cln->handler = pf_curl_cleanup;
    cln->data = call;

    /* never "Expect: 100-continue": it costs a round trip */

    sl = curl_slist_append(NULL, "Expect:");

    if (call->headers) {
        h = call->headers->elts;

        for (i = 0; sl && i < call->headers->nelts; i++) {
            sl = curl_slist_append(sl, (char *) h[i].data);
        }
    }

    if (sl == NULL) {
        curl_easy_cleanup(easy);
        call->easy = NULL;
        return NGX_ERROR;
    }

    call->slist = sl;

    (void) curl_easy_setopt(easy, CURLOPT_URL, url);
    (void) curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    (void) curl_easy_setopt(easy, CURLOPT_PRIVATE, call);
    (void) curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    (void) curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, call->errbuf);
    (void) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, sl);
    (void) curl_easy_setopt(easy, CURLOPT_USERAGENT, "PayFlow/1.0");
    (void) curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    (void) curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, pf_curl_write);
    (void) curl_easy_setopt(easy, CURLOPT_WRITEDATA, call);
    (void) curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                            (long) call->connect_timeout);
    (void) curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) call->timeout);
    /*
     * Removing a handle whose name is still resolving (a call cancelled
     * or timed out) joins libcurl's resolver thread: the worker would
     * block until the system resolver gives up.  With quick exit the
     * thread is left to finish on its own.
     */
#if (LIBCURL_VERSION_NUM >= 0x075700)
    (void) curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L);
#else
#error "libcurl 7.87.0 or later is needed (CURLOPT_QUICK_EXIT)"
#endif

    (void) curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    (void) curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);

    if (ca) {
        (void) curl_easy_setopt(easy, CURLOPT_CAINFO, ca);
    }

    call->allowed = 0;
    call->refused = 0;

    if (call->check) {
        (void) curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION,
                                pf_curl_open_socket);
        (void) curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, call);
        (void) curl_easy_setopt(easy, CURLOPT_PROXY, "");

        /*
         * a connection of its own, so the check sees every destination
         * (never one another call opened unchecked); a probe's is not
         * kept for anyone
         */
        (void) curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);

        if (call->probe) {
            (void) curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
        }
    }

    if (ngx_strcmp(call->method, "GET") == 0) {
        (void) curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);

    } else {
        (void) curl_easy_setopt(easy, CURLOPT_POST, 1L);
        (void) curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE,
                                (long) call->body.len);
        (void) curl_easy_setopt(easy, CURLOPT_POSTFIELDS,
                                call->body.len ? (char *) call->body.data
                                               : "");

        if (ngx_strcmp(call->method, "POST") != 0) {
            (void) curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST,
                                    call->method);
        }
    }

    if (curl_multi_add_handle(curl->multi, easy) != CURLM_OK) {
        pf_curl_finish(call);
        return NGX_ERROR;
    }

    call->active = 1;
    call->start = ngx_current_msec;

    return NGX_OK;
}


void
pf_curl_cancel(pf_curl_call_t *call)
{
    if (call->easy) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, call->log, 0,
                       "payflow curl: canceled %V", &call->url);
        pf_curl_finish(call);
    }
}


static void
pf_curl_cleanup(void *data)
{
    pf_curl_call_t  *call = data;

    pf_curl_cancel(call);
}


static void
pf_curl_finish(pf_curl_call_t *call)
{
    if (call->active && call->curl->multi) {
        (void) curl_multi_remove_handle(call->curl->multi, call->easy);
    }

    curl_easy_cleanup(call->easy);
    curl_slist_free_all(call->slist);

    call->easy = NULL;
    call->slist = NULL;
    call->active = 0;
}


static size_t
pf_curl_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    pf_curl_call_t  *call = userdata;

    u_char  *p;
    size_t   n, want;

    n = size * nmemb;

    if (call->response.len + n > call->max_response) {
        call->result = PF_CURL_TOO_LARGE;
        return 0;
    }

    if (call->response.len + n > call->size) {
        want = ngx_max(2 * call->size, call->response.len + n);
        want = ngx_min(want, call->max_response);

        p = ngx_pnalloc(call->pool, want);
        if (p == NULL) {
            return 0;
        }

        if (call->response.len) {
            ngx_memcpy(p, call->response.data, call->response.len);
        }

        call->response.data = p;
        call->size = want;
    }

    ngx_memcpy(call->response.data + call->response.len, ptr, n);
    call->response.len += n;

    return n;
}


static int
pf_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    pf_curl_t         *curl = userp;
    ngx_connection_t  *c = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (c) {
            /* still open and curl's: it may keep it for reuse */
            pf_event_release(c, 1);
            (void) curl_multi_assign(curl->multi, s, NULL);
        }

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, curl->log);
        if (c == NULL) {
            return -1;
        }

        c->data = curl;
        c->read->handler = pf_curl_event_handler;
        c->write->handler = pf_curl_event_handler;
        c->read->log = curl->log;
        c->write->log = curl->log;

        (void) curl_multi_assign(curl->multi, s, c);
    }

    if ((what & CURL_POLL_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(what & CURL_POLL_IN) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    if ((what & CURL_POLL_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(what & CURL_POLL_OUT) && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    return 0;
}


static int
pf_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    pf_curl_t  *curl = userp;

    if (timeout_ms < 0) {
        if (curl->timer.timer_set) {
            ngx_del_timer(&curl->timer);
        }

        return 0;
    }

    ngx_add_timer(&curl->timer, (ngx_msec_t) timeout_ms);

    return 0;
}


static void
pf_curl_timer_handler(ngx_event_t *ev)
{
    pf_curl_t  *curl = ev->data;

    pf_curl_action(curl, CURL_SOCKET_TIMEOUT, 0);
}


static void
pf_curl_event_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    pf_curl_action(c->data, c->fd,
                   ev->write ? CURL_CSELECT_OUT : CURL_CSELECT_IN);
}


static void
pf_curl_action(pf_curl_t *curl, curl_socket_t s, int mask)
{
    int        running;
    CURLMcode  rc;

    rc = curl_multi_socket_action(curl->multi, s, mask, &running);

    if (rc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ALERT, curl->log, 0,
                      "payflow curl: curl_multi_socket_action() failed: %s",
                      curl_multi_strerror(rc));
    }

    pf_curl_done(curl);
}


static void
pf_curl_done(pf_curl_t *curl)
{
    int              left;
    long             status, sent;
    CURL            *easy;
    CURLMsg         *msg;
    CURLcode         code;
    pf_curl_call_t  *call;

    while ((msg = curl_multi_info_read(curl->multi, &left)) != NULL) {

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        easy = msg->easy_handle;
        code = msg->data.result;
        call = NULL;
        status = 0;
        sent = 0;

        (void) curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &call);
        (void) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        (void) curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &sent);

        if (call == NULL) {
            (void) curl_multi_remove_handle(curl->multi, easy);
            curl_easy_cleanup(easy);
            continue;
        }

        if (code == CURLE_OK) {
            call->result = PF_CURL_OK;
            call->status = status;

        } else if (call->result == PF_CURL_TOO_LARGE) {
            /* the status line came before the body that was too long */
            call->status = status;

        } else {
            call->result = sent ? PF_CURL_AMBIGUOUS : PF_CURL_NOT_SENT;
            call->error = call->errbuf[0] ? call->errbuf
                                          : curl_easy_strerror(code);
        }

        call->elapsed = ngx_current_msec - call->start;

        pf_curl_finish(call);

        ngx_log_debug4(NGX_LOG_DEBUG_EVENT, call->log, 0,
                       "payflow curl: %V: result %d, status %ui, %M ms",
                       &call->url, call->result, call->status,
                       call->elapsed);

        call->handler(call);
    }
}


/* the one place a socket to a checked destination is opened */

static curl_socket_t
pf_curl_open_socket(void *data, curlsocktype purpose,
    struct curl_sockaddr *address)
{
    pf_curl_call_t  *call = data;

    if (purpose != CURLSOCKTYPE_IPCXN) {
        return CURL_SOCKET_BAD;
    }

    if (call->check(call, &address->addr, address->addrlen) != NGX_OK) {
        call->refused++;
        return CURL_SOCKET_BAD;
    }

    call->allowed++;

    if (call->probe) {
        return CURL_SOCKET_BAD;
    }

    return socket(address->family, address->socktype, address->protocol);
}


/*
 * An address on the public internet: not loopback, private (RFC 1918,
 * unique local), link-local, carrier-grade NAT, multicast, reserved,
 * unspecified, documentation or benchmarking space, and no IPv6 form
 * that carries an IPv4 address (mapped, compatible, NAT64, 6to4).
 */

ngx_uint_t
pf_curl_address_public(struct sockaddr *sa)
{
    u_char               *p;
    uint32_t              a;
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6  *sin6;
#endif

    switch (sa->sa_family) {

    case AF_INET:
        sin = (struct sockaddr_in *) sa;
        a = ntohl(sin->sin_addr.s_addr);

        return !((a >> 24) == 0                         /* 0.0.0.0/8 */
                 || (a >> 24) == 10                     /* 10/8 */
                 || (a >> 24) == 127                    /* loopback */
                 || (a & 0xffc00000) == 0x64400000      /* 100.64/10 */
                 || (a & 0xffff0000) == 0xa9fe0000      /* 169.254/16 */
                 || (a & 0xfff00000) == 0xac100000      /* 172.16/12 */
                 || (a & 0xffffff00) == 0xc0000000      /* 192.0.0/24 */
                 || (a & 0xffffff00) == 0xc0000200      /* 192.0.2/24 */
                 || (a & 0xffff0000) == 0xc0a80000      /* 192.168/16 */
                 || (a & 0xfffe0000) == 0xc6120000      /* 198.18/15 */
                 || (a & 0xffffff00) == 0xc6336400      /* 198.51.100/24 */
                 || (a & 0xffffff00) == 0xcb007100      /* 203.0.113/24 */
                 || (a >> 28) >= 0xe);                  /* 224/4, 240/4 */

#if (NGX_HAVE_INET6)
    case AF_INET6:
        sin6 = (struct sockaddr_in6 *) sa;
        p = sin6->sin6_addr.s6_addr;

        if ((p[0] & 0xe0) != 0x20) {
            /* only global unicast, 2000::/3 */
            return 0;
        }

        return !((p[0] == 0x20 && p[1] == 0x01 && p[2] == 0x0d
                  && p[3] == 0xb8)                      /* 2001:db8::/32 */
                 || (p[0] == 0x20 && p[1] == 0x02)      /* 6to4 */
                 || (p[0] == 0x20 && p[1] == 0x01 && p[2] == 0
                     && p[3] == 0));                    /* Teredo */
#endif

    default:
        return 0;
    }
}
