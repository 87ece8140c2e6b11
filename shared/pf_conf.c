
/*
 * Copyright (C) PayFlow
 *
 * Configuration-time helpers: small files (passwords, peppers, keys) are
 * read by the master process while the configuration loads, never by a
 * worker on a request.
 */


#include "pf_conf.h"


/*
 * Reads a whole file of at most max bytes into cf->pool, NUL-terminated.
 * A relative name is taken from the configuration directory, as for
 * ssl_certificate.  Errors name the directive and the file.
 */

char *
pf_conf_read_file(ngx_conf_t *cf, const char *directive, ngx_str_t *file,
    size_t max, ngx_str_t *content)
{
    u_char           *p;
    size_t            size;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t         name;
    ngx_file_info_t   fi;

    name = *file;

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "%s: " ngx_open_file_n " \"%V\" failed",
                           directive, &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "%s: " ngx_fd_info_n " \"%V\" failed",
                           directive, &name);
        goto failed;
    }

    size = ngx_file_size(&fi);

    if (size > max) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: \"%V\" is larger than %uz bytes",
                           directive, &name, max);
        goto failed;
    }

    p = ngx_pnalloc(cf->pool, size + 1);
    if (p == NULL) {
        goto failed;
    }

    n = ngx_read_fd(fd, p, size);
    if (n != (ssize_t) size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "%s: " ngx_read_fd_n " \"%V\" failed",
                           directive, &name);
        goto failed;
    }

    p[size] = '\0';

    content->data = p;
    content->len = size;

    (void) ngx_close_file(fd);

    return NGX_CONF_OK;

failed:

    (void) ngx_close_file(fd);

    return NGX_CONF_ERROR;
}


/*
 * "file=<path>" or "env=<NAME>" (the master's environment, read at
 * configuration time; workers need no "env" directive).  Trailing CR/LF
 * are trimmed; the secret must have at least min bytes.
 */

char *
pf_conf_secret(ngx_conf_t *cf, const char *directive, ngx_str_t *spec,
    size_t min, ngx_str_t *secret)
{
    u_char     *value;
    ngx_str_t   file;

    if (ngx_strncmp(spec->data, "env=", 4) == 0) {
        value = (u_char *) getenv((char *) spec->data + 4);

        if (value == NULL || *value == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s: environment variable \"%s\" is not set",
                               directive, spec->data + 4);
            return NGX_CONF_ERROR;
        }

        secret->len = ngx_strlen(value);
        secret->data = ngx_pnalloc(cf->pool, secret->len + 1);
        if (secret->data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(secret->data, value, secret->len + 1);

    } else if (ngx_strncmp(spec->data, "file=", 5) == 0) {
        file.data = spec->data + 5;
        file.len = spec->len - 5;

        if (pf_conf_read_file(cf, directive, &file, 4096, secret)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: invalid value \"%V\", expected "
                           "\"file=<path>\" or \"env=<NAME>\"",
                           directive, spec);
        return NGX_CONF_ERROR;
    }

    while (secret->len && (secret->data[secret->len - 1] == '\n'
                           || secret->data[secret->len - 1] == '\r'))
    {
        secret->data[--secret->len] = '\0';
    }

    if (secret->len < min) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s: the secret in \"%V\" is shorter than %uz "
                           "bytes", directive, spec, min);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * A "zone=name:size" parameter: NGX_OK with its name and size (at least
 * eight pages), NGX_DECLINED if arg is another parameter, NGX_ERROR if it
 * is not well formed.
 */

ngx_int_t
pf_conf_zone(ngx_str_t *arg, ngx_str_t *name, ssize_t *size)
{
    u_char     *p;
    ngx_str_t   s;

    if (arg->len < 5 || ngx_strncmp(arg->data, "zone=", 5) != 0) {
        return NGX_DECLINED;
    }

    name->data = arg->data + 5;

    p = ngx_strlchr(name->data, arg->data + arg->len, ':');
    if (p == NULL) {
        return NGX_ERROR;
    }

    name->len = p - name->data;

    s.data = p + 1;
    s.len = arg->data + arg->len - s.data;

    *size = ngx_parse_size(&s);

    if (name->len == 0 || *size == NGX_ERROR
        || *size < (ssize_t) (8 * ngx_pagesize))
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}
