
/*
 * Copyright (C) PayFlow
 *
 * Sockets owned by a client library (libpq, hiredis) are wrapped in nginx
 * connections for their events only.  Releasing one must not close the
 * descriptor, which the library closes or has closed, and must not make a
 * system call on it: it may already belong to another socket.
 */


#include "pf_event.h"


void
pf_event_release(ngx_connection_t *c)
{
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (ngx_del_conn) {
        ngx_del_conn(c, NGX_CLOSE_EVENT);

    } else {
        if (c->read->active || c->read->disabled) {
            ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (c->write->active || c->write->disabled) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }
    }

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;
}
