/*
 * fe_listen.c - a loop's listeners: bind, listen, accept into sessions (see
 * fe_listen.h).
 */
#include "fe_listen.h"
#include "fe_session.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_connection(uv_stream_t *server, int status)
{
    struct fe_listener *l = server->data;
    struct ms_conn *t;

    if (status < 0) {
        ms_warn("event=accept_error listener=%s error=\"%s\"", l->name, uv_strerror(status));
        return;
    }
    if ((t = ms_conn_accept(server, &fe_session_transport_cb, NULL)) == NULL)
        return;
    fe_session_new(l->srv, l, t);
}

/* SO_REUSEPORT before bind, so several frontend processes share the port
 * and the kernel spreads connections over them. */
static int open_listener(struct fe_listener *l, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    int fd, one = 1, r;

    if (ms_parse_hostport(l->listen, &ss) < 0) {
        snprintf(err, errlen, "[listener.%s] listen: bad address \"%s\"", l->name, l->listen);
        return MS_ECONFIG;
    }
    slen = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, slen) < 0) {
        snprintf(err, errlen, "[listener.%s] %s: %s", l->name, l->listen, strerror(errno));
        if (fd >= 0)
            close(fd);
        return MS_EIO;
    }
    uv_tcp_init(l->srv->loop, &l->tcp);
    l->tcp.data = l;
    l->open = 1;
    if ((r = uv_tcp_open(&l->tcp, fd)) < 0 ||
        (r = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection)) < 0) {
        snprintf(err, errlen, "[listener.%s] %s: %s", l->name, l->listen, uv_strerror(r));
        return MS_EIO;
    }
    ms_info("event=listening listener=%s listen=%s role=%s proxy=%s", l->name, l->listen,
            l->role == FE_ROLE_MX ? "mx" : l->role == FE_ROLE_SUBMISSION ? "submission"
                                                                         : "submissions",
            l->proxy ? "yes" : "no");
    return 0;
}

int fe_listen_open(struct fe_server *srv, const ms_config *cfg, char *err, size_t errlen)
{
    const char *const *names;
    const char *role, *listen;
    size_t n, i;
    int r;

    n = ms_config_sections(cfg, "listener.", &names);
    if (n == 0) {
        snprintf(err, errlen, "no [listener.NAME] section");
        return MS_ECONFIG;
    }
    srv->listeners = ms_calloc(n, sizeof(*srv->listeners));
    for (i = 0; i < n; i++) {
        struct fe_listener *l = &srv->listeners[i];

        l->srv = srv;
        l->name = ms_strdup(names[i] + strlen("listener."));
        srv->nlisteners++;
        listen = ms_config_get(cfg, names[i], "listen", NULL);
        role = ms_config_get(cfg, names[i], "role", "mx");
        if (listen == NULL || *listen == '\0') {
            snprintf(err, errlen, "[%s] listen is required", names[i]);
            return MS_ECONFIG;
        }
        l->listen = ms_strdup(listen);
        if (strcmp(role, "mx") == 0)
            l->role = FE_ROLE_MX;
        else if (strcmp(role, "submission") == 0)
            l->role = FE_ROLE_SUBMISSION;
        else if (strcmp(role, "submissions") == 0)
            l->role = FE_ROLE_SUBMISSIONS;
        else {
            snprintf(err, errlen, "[%s] role: want mx, submission or submissions", names[i]);
            return MS_ECONFIG;
        }
        if ((r = ms_config_get_bool(cfg, names[i], "milters", 1, &l->milters, err, errlen)) < 0)
            return r;
        if ((r = ms_config_get_bool(cfg, names[i], "proxy", 0, &l->proxy, err, errlen)) < 0)
            return r;
        if (l->proxy && srv->set.nproxy_trusted == 0)
            ms_warn("event=config_warning listener=%s reason=\"proxy = yes without "
                    "[smtp] proxy_trusted_networks: every connection will be refused\"",
                    l->name);
        if (l->role != FE_ROLE_MX && srv->tls == NULL) {
            snprintf(err, errlen, "[%s] role %s needs [smtp] tls_cert and tls_key", names[i],
                     role);
            return MS_ECONFIG;
        }
        if (l->role != FE_ROLE_MX && srv->passwd == NULL)
            ms_warn("event=config_warning listener=%s reason=\"role %s without passwd_file: "
                    "nobody can authenticate\"",
                    l->name, role);
        fe_metrics_listener(l);
        if ((r = open_listener(l, err, errlen)) < 0)
            return r;
    }
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    (void)h;
}

void fe_listen_close(struct fe_server *srv)
{
    size_t i;

    for (i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i].open && !uv_is_closing((uv_handle_t *)&srv->listeners[i].tcp)) {
            uv_close((uv_handle_t *)&srv->listeners[i].tcp, listener_closed);
            srv->listeners[i].open = 0;
        }
}

