
/*
 * Copyright (C) PayFlow
 *
 * Sockets owned by a client library (libpq, hiredis, libcurl) are wrapped
 * in nginx connections for their events only.  Releasing one never closes
 * the descriptor: the library does.  Once the library has closed it, no
 * system call may touch it either: it may already belong to another
 * socket.
 */


#include "pf_event.h"


void
pf_event_release(ngx_connection_t *c, ngx_uint_t open)
{
    ngx_uint_t  flags;

    /*
     * A closed descriptor has left epoll by itself: no system call.  An
     * open one (curl keeps sockets for reuse) is deleted from the event
     * set, but only if it is in it: deleting an unknown one is an error.
     */

    flags = open ? 0 : NGX_CLOSE_EVENT;

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (ngx_del_conn) {
        if (!open || c->read->active || c->write->active) {
            ngx_del_conn(c, flags);
        }

    } else {
        if (c->read->active || c->read->disabled) {
            ngx_del_event(c->read, NGX_READ_EVENT, flags);
        }

        if (c->write->active || c->write->disabled) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
        }
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}
