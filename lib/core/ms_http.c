#include "ms_http.h"
#include "ms_buf.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_net.h"

#include <stdlib.h>
#include <string.h>

/* A scrape that takes longer than this is dropped. */
#define MS_HTTP_TIMEOUT_MS 10000
/* Metrics output larger than this is a bug, not a reason to grow forever. */
#define MS_HTTP_RESPONSE_MAX (16 * 1024 * 1024)

int ms_http_parse_request(const char *buf, size_t len, struct ms_http_request *req)
{
    const char *p, *end, *sp1, *sp2, *eol, *head_end = NULL;
    size_t i;

    for (i = 0; i + 1 < len; i++) {
        if (buf[i] == '\n' && buf[i + 1] == '\n') {
            head_end = buf + i + 2;
            break;
        }
        if (i + 3 < len && memcmp(buf + i, "\r\n\r\n", 4) == 0) {
            head_end = buf + i + 4;
            break;
        }
    }
    if (head_end == NULL)
        return len >= MS_HTTP_REQUEST_MAX ? MS_ETOOBIG : MS_EAGAIN;
    if ((size_t)(head_end - buf) > MS_HTTP_REQUEST_MAX)
        return MS_ETOOBIG;
    end = head_end;
    if ((eol = memchr(buf, '\n', (size_t)(end - buf))) == NULL)
        return MS_EPROTO;
    /* Request-line: method SP request-target SP HTTP-version (RFC 9112 §3). */
    if ((sp1 = memchr(buf, ' ', (size_t)(eol - buf))) == NULL || sp1 == buf)
        return MS_EPROTO;
    if ((sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1))) == NULL || sp2 == sp1 + 1)
        return MS_EPROTO;
    for (p = buf; p < sp1; p++)
        if (*p < 'A' || *p > 'Z')
            return MS_EPROTO;
    for (p = sp1 + 1; p < sp2; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return MS_EPROTO;
    if ((size_t)(eol - sp2 - 1) < 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return MS_EPROTO;
    req->method = buf;
    req->method_len = (size_t)(sp1 - buf);
    req->path = sp1 + 1;
    req->path_len = (size_t)(sp2 - sp1 - 1);
    return (int)(head_end - buf);
}

struct ms_http_server {
    uv_tcp_t listener;
    ms_http_ready_cb ready;
    void *arg;
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    ms_http_server *srv;
    struct ms_buf in;
    char *out;
    uv_write_t wreq;
    int closing;
    int handles;
};

static void conn_free_cb(uv_handle_t *h)
{
    struct http_conn *c = h->data;

    if (--c->handles > 0)
        return;
    ms_buf_free(&c->in);
    free(c->out);
    free(c);
}

static void conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->timer, conn_free_cb);
    uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
}

static void write_cb(uv_write_t *req, int status)
{
    conn_close(req->data);
}

static void respond(struct http_conn *c, int code, const char *reason, const char *ctype,
                    const char *body, size_t bodylen)
{
    struct ms_buf out;
    uv_buf_t b;

    ms_buf_init(&out, MS_HTTP_RESPONSE_MAX + 512);
    ms_buf_appendf(&out,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   code, reason, ctype, bodylen);
    if (ms_buf_append(&out, body, bodylen) != 0)
        ms_panic("http response over MS_HTTP_RESPONSE_MAX");
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->out = ms_buf_steal(&out, &b.len);
    b.base = c->out;
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0)
        conn_close(c);
}

static void serve(struct http_conn *c, const struct ms_http_request *req)
{
    static const char text[] = "text/plain; charset=utf-8";
    char why[256];
    struct ms_buf body;

#define PATH_IS(s) (req->path_len == sizeof(s) - 1 && memcmp(req->path, s, sizeof(s) - 1) == 0)
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0) {
        respond(c, 405, "Method Not Allowed", text, "GET only\n", 9);
    } else if (PATH_IS("/metrics")) {
        ms_buf_init(&body, MS_HTTP_RESPONSE_MAX);
        if (ms_metrics_render(&body) != 0)
            ms_panic("metrics over MS_HTTP_RESPONSE_MAX");
        respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body.data, body.len);
        ms_buf_free(&body);
    } else if (PATH_IS("/healthz")) {
        respond(c, 200, "OK", text, "ok\n", 3);
    } else if (PATH_IS("/readyz")) {
        why[0] = '\0';
        if (c->srv->ready == NULL || c->srv->ready(c->srv->arg, why, sizeof(why) - 1)) {
            respond(c, 200, "OK", text, "ready\n", 6);
        } else {
            size_t n = strlen(why);
            why[n++] = '\n';
            respond(c, 503, "Service Unavailable", text, why, n);
        }
    } else {
        respond(c, 404, "Not Found", text, "not found\n", 10);
    }
#undef PATH_IS
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct http_conn *c = h->data;
    size_t room = MS_HTTP_REQUEST_MAX + 1 - c->in.len;

    buf->base = room ? ms_buf_reserve(&c->in, room) : NULL;
    buf->len = buf->base ? room : 0;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *c = s->data;
    struct ms_http_request req;
    int r;

    if (nread < 0) {
        conn_close(c);
        return;
    }
    ms_buf_commit(&c->in, (size_t)nread);
    r = ms_http_parse_request(c->in.data, c->in.len, &req);
    if (r == MS_EAGAIN)
        return;
    if (r == MS_ETOOBIG)
        respond(c, 431, "Request Header Fields Too Large", "text/plain", "too large\n", 10);
    else if (r < 0)
        respond(c, 400, "Bad Request", "text/plain", "bad request\n", 12);
    else
        serve(c, &req);
}

static void timeout_cb(uv_timer_t *t)
{
    conn_close(t->data);
}

static void connection_cb(uv_stream_t *server, int status)
{
    ms_http_server *srv = server->data;
    struct http_conn *c;

    if (status < 0)
        return;
    c = ms_calloc(1, sizeof(*c));
    c->srv = srv;
    ms_buf_init(&c->in, MS_HTTP_REQUEST_MAX + 1);
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, timeout_cb, MS_HTTP_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void server_free_cb(uv_handle_t *h)
{
    free(h->data);
}

ms_http_server *ms_http_start(uv_loop_t *loop, const char *hostport, ms_http_ready_cb ready,
                              void *arg)
{
    struct sockaddr_storage ss;
    ms_http_server *srv;
    int r;

    if (ms_parse_hostport(hostport, &ss) != 0) {
        ms_warn("event=http_listen_failed addr=\"%s\" error=\"bad address\"", hostport);
        return NULL;
    }
    srv = ms_calloc(1, sizeof(*srv));
    srv->ready = ready;
    srv->arg = arg;
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    if ((r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&srv->listener, 64, connection_cb)) != 0) {
        ms_warn("event=http_listen_failed addr=%s error=\"%s\"", hostport, uv_strerror(r));
        uv_close((uv_handle_t *)&srv->listener, server_free_cb);
        return NULL;
    }
    ms_info("event=http_listening addr=%s", hostport);
    return srv;
}

void ms_http_stop(ms_http_server *srv)
{
    if (srv)
        uv_close((uv_handle_t *)&srv->listener, server_free_cb);
}
