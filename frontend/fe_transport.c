/*
 * fe_transport.c - plain TCP, TLS over TCP and in-memory transports (see
 * fe_transport.h).
 *
 * TLS runs OpenSSL on memory BIOs: ciphertext read from the socket goes into
 * rbio, SSL_read/SSL_do_handshake turn it into plaintext and handshake
 * messages, and whatever OpenSSL writes to wbio is sent with uv_write.  So
 * OpenSSL never touches the socket and the loop never blocks.
 */
#include "fe_transport.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A certificate chosen by SNI, for one host name or "*.domain". */
struct sni_entry {
    char *name;
    SSL_CTX *ctx;
};

struct fe_tls_ctx {
    SSL_CTX *ctx; /* the default certificate; every handshake starts here */
    SSL_CTX **extra;
    size_t nextra;
    struct sni_entry *sni;
    size_t nsni;
    atomic_int refs;
};

/* ---- TCP (plain or TLS) ---- */

struct tcp_transport {
    struct fe_transport pub;
    uv_tcp_t tcp;
    SSL *ssl;
    BIO *rbio, *wbio;
    int handshaking;
    int tls_failed; /* the handshake failed: no close_notify */
    int errored;  /* on_error already reported */
    int read_eof; /* the client shut down its sending half; we may still write */
    int shutdown; /* close once the pending output is written */
    size_t pending;
    struct fe_tls_ctx *tctx; /* a reference while t->ssl exists */
};

/* One read buffer for every connection of a loop: libuv calls alloc_cb
 * and read_cb back to back on the loop thread, and read_cb consumes the
 * data before returning, so sharing it is safe and saves 64 KiB per idle
 * connection.  Thread-local, so each loop thread has its own. */
static _Thread_local char tcp_rbuf[FE_TRANSPORT_READ_MAX];

struct tcp_write {
    uv_write_t req;
    struct tcp_transport *t;
    size_t len;
    char data[];
};

static void tcp_do_close(struct tcp_transport *t);

static void tcp_report_error(struct tcp_transport *t, int err)
{
    if (t->errored || t->pub.closing)
        return;
    t->errored = 1;
    t->pub.cb.on_error(t->pub.arg, err);
}

static void tcp_write_cb(uv_write_t *req, int status)
{
    struct tcp_write *w = (struct tcp_write *)req;
    struct tcp_transport *t = w->t;

    t->pending -= w->len;
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED)
            tcp_report_error(t, MS_EIO);
        return;
    }
    if (t->pending == 0) {
        if (t->shutdown)
            tcp_do_close(t);
        else if (!t->pub.closing)
            t->pub.cb.on_drain(t->pub.arg);
    }
}

static int tcp_send_raw(struct tcp_transport *t, const char *buf, size_t len)
{
    struct tcp_write *w;
    uv_buf_t b;
    int r;

    if (len == 0)
        return 0;
    /* Nothing queued: write now, and leave libuv only what the kernel did
     * not take.  A uv_write the kernel takes at once still ends with libuv
     * re-arming the socket in epoll (one more epoll_ctl per reply). */
    if (t->pending == 0) {
        b = uv_buf_init((char *)buf, (unsigned)len);
        r = uv_try_write((uv_stream_t *)&t->tcp, &b, 1);
        if (r == (int)len)
            return 0;
        if (r > 0) {
            buf += r;
            len -= (size_t)r;
        } else if (r != UV_EAGAIN) {
            tcp_report_error(t, MS_EIO);
            return MS_EIO;
        }
    }
    w = ms_malloc(sizeof(*w) + len);
    w->t = t;
    w->len = len;
    memcpy(w->data, buf, len);
    b = uv_buf_init(w->data, (unsigned)len);
    t->pending += len;
    if ((r = uv_write(&w->req, (uv_stream_t *)&t->tcp, &b, 1, tcp_write_cb)) < 0) {
        t->pending -= len;
        free(w);
        tcp_report_error(t, MS_EIO);
        return MS_EIO;
    }
    return 0;
}

/* Send whatever OpenSSL queued in the write BIO. */
static int tls_flush(struct tcp_transport *t)
{
    char buf[16384];
    int n, r;

    while ((n = BIO_read(t->wbio, buf, sizeof(buf))) > 0)
        if ((r = tcp_send_raw(t, buf, (size_t)n)) < 0)
            return r;
    return 0;
}

static void tls_log_error(struct tcp_transport *t, const char *what)
{
    char addr[64] = "?";
    unsigned long e = ERR_get_error();
    char ebuf[256];

    ERR_error_string_n(e, ebuf, sizeof(ebuf));
    ERR_clear_error();
    if (t->pub.peer.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&t->pub.peer, addr, sizeof(addr));
    else if (t->pub.peer.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&t->pub.peer, addr, sizeof(addr));
    ms_info("event=tls_error client=%s op=%s error=\"%s\"", addr, what, ebuf);
}

/* Feed ciphertext to OpenSSL and hand out every plaintext octet it yields. */
static void tls_input(struct tcp_transport *t, const char *buf, size_t len)
{
    char plain[16384];
    int r, e;

    if (BIO_write(t->rbio, buf, (int)len) != (int)len) {
        tcp_report_error(t, MS_EIO);
        return;
    }
    if (t->handshaking) {
        r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            e = SSL_get_error(t->ssl, r);
            tls_flush(t); /* an alert, or the next flight */
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            tls_log_error(t, "handshake");
            t->handshaking = 0;
            t->tls_failed = 1;
            if (!t->pub.closing)
                t->pub.cb.on_tls(t->pub.arg, MS_EPROTO);
            return;
        }
        t->handshaking = 0;
        t->pub.tls = 1;
        snprintf(t->pub.tls_version, sizeof(t->pub.tls_version), "%s", SSL_get_version(t->ssl));
        snprintf(t->pub.tls_cipher, sizeof(t->pub.tls_cipher), "%s",
                 SSL_CIPHER_get_name(SSL_get_current_cipher(t->ssl)));
        tls_flush(t);
        t->pub.cb.on_tls(t->pub.arg, 0);
    }
    /* Drain everything OpenSSL can decrypt now, even if the owner asked to
     * stop reading: the owner buffers it, and records left in rbio would
     * otherwise wait for socket input that may never come. */
    while (!t->pub.closing && !t->errored) {
        r = SSL_read(t->ssl, plain, sizeof(plain));
        if (r > 0) {
            t->pub.cb.on_read(t->pub.arg, plain, (size_t)r);
            continue;
        }
        e = SSL_get_error(t->ssl, r);
        tls_flush(t);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return;
        if (e == SSL_ERROR_ZERO_RETURN) {
            tcp_report_error(t, MS_ECLOSED);
            return;
        }
        tls_log_error(t, "read");
        tcp_report_error(t, MS_EIO);
        return;
    }
}

static void tcp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(tcp_rbuf, sizeof(tcp_rbuf));
}

static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tcp_transport *t = s->data;

    if (nread == 0 || t->pub.closing)
        return;
    if (nread == UV_EOF && t->ssl == NULL) {
        /* A half-close (shutdown(SHUT_WR), as Exim does after pipelining
         * QUIT behind the end of a message): the client still reads the
         * replies it is owed (RFC 2920 3.1, RFC 5321 4.1.1.10), so writing
         * stays allowed; the session decides when to close. */
        t->read_eof = 1;
        uv_read_stop(s);
        t->pub.reading = 0;
        if (!t->errored && !t->pub.closing)
            t->pub.cb.on_error(t->pub.arg, MS_ECLOSED);
        return;
    }
    if (nread < 0) {
        tcp_report_error(t, nread == UV_EOF ? MS_ECLOSED : MS_EIO);
        return;
    }
    if (t->ssl)
        tls_input(t, buf->base, (size_t)nread);
    else
        t->pub.cb.on_read(t->pub.arg, buf->base, (size_t)nread);
}

static void tcp_read_start(struct fe_transport *pub)
{
    struct tcp_transport *t = (struct tcp_transport *)pub;

    if (pub->reading || pub->closing || t->read_eof)
        return;
    if (uv_read_start((uv_stream_t *)&t->tcp, tcp_alloc_cb, tcp_read_cb) == 0)
        pub->reading = 1;
}

static void tcp_read_stop(struct fe_transport *pub)
{
    struct tcp_transport *t = (struct tcp_transport *)pub;

    if (!pub->reading)
        return;
    uv_read_stop((uv_stream_t *)&t->tcp);
    pub->reading = 0;
}

static int tcp_write(struct fe_transport *pub, const char *buf, size_t len)
{
    struct tcp_transport *t = (struct tcp_transport *)pub;
    int r;

    if (pub->closing || t->errored)
        return MS_ECLOSED;
    if (t->ssl == NULL)
        return tcp_send_raw(t, buf, len);
    if (t->handshaking)
        return MS_EAGAIN;
    /* Memory BIOs grow, so SSL_write takes everything at once. */
    if (len > 0 && (r = SSL_write(t->ssl, buf, (int)len)) != (int)len) {
        tls_log_error(t, "write");
        return MS_EIO;
    }
    return tls_flush(t);
}

static int tcp_tls_start(struct fe_transport *pub, struct fe_tls_ctx *ctx)
{
    struct tcp_transport *t = (struct tcp_transport *)pub;

    if (t->ssl || ctx == NULL)
        return MS_EINVAL;
    if ((t->ssl = SSL_new(ctx->ctx)) == NULL)
        return MS_ENOMEM;
    t->tctx = fe_tls_ctx_ref(ctx); /* the SNI callback reads it */
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_accept_state(t->ssl);
    t->handshaking = 1;
    return 0;
}

static void tcp_unread(struct fe_transport *pub, const char *buf, size_t len)
{
    struct tcp_transport *t = (struct tcp_transport *)pub;

    if (len == 0 || pub->closing)
        return;
    if (t->ssl)
        tls_input(t, buf, len);
    else
        pub->cb.on_read(pub->arg, buf, len);
}

static size_t tcp_pending(const struct fe_transport *pub)
{
    return ((const struct tcp_transport *)pub)->pending;
}

static void tcp_close_cb(uv_handle_t *h)
{
    struct tcp_transport *t = h->data;

    t->pub.cb.on_close(t->pub.arg);
    if (t->ssl)
        SSL_free(t->ssl); /* frees the BIOs too */
    fe_tls_ctx_free(t->tctx);
    free(t);
}

static void tcp_do_close(struct tcp_transport *t)
{
    if (uv_is_closing((uv_handle_t *)&t->tcp))
        return;
    uv_close((uv_handle_t *)&t->tcp, tcp_close_cb);
}

static void tcp_close(struct fe_transport *pub)
{
    struct tcp_transport *t = (struct tcp_transport *)pub;

    if (pub->closing)
        return;
    pub->closing = 1;
    tcp_read_stop(pub);
    if (t->ssl && !t->handshaking && !t->tls_failed && !t->errored) {
        SSL_shutdown(t->ssl); /* queue close_notify */
        ERR_clear_error();    /* the error queue is per thread, not ours */
        tls_flush(t);
    }
    if (t->pending > 0 && !t->errored)
        t->shutdown = 1; /* closed by the last write callback */
    else
        tcp_do_close(t);
}

static const struct fe_transport_ops tcp_ops = {
    .name = "tcp",
    .read_start = tcp_read_start,
    .read_stop = tcp_read_stop,
    .write = tcp_write,
    .tls_start = tcp_tls_start,
    .unread = tcp_unread,
    .pending = tcp_pending,
    .close = tcp_close,
};

static void tcp_reject_close_cb(uv_handle_t *h)
{
    free(h->data);
}

struct fe_transport *fe_transport_tcp_accept(uv_stream_t *server, const struct fe_transport_cb *cb,
                                             void *arg)
{
    struct tcp_transport *t = ms_calloc(1, sizeof(*t));
    int len = sizeof(t->pub.peer), r;

    uv_tcp_init(server->loop, &t->tcp);
    t->tcp.data = t;
    if ((r = uv_accept(server, (uv_stream_t *)&t->tcp)) < 0 ||
        (r = uv_tcp_getpeername(&t->tcp, (struct sockaddr *)&t->pub.peer, &len)) < 0) {
        ms_warn("event=accept_failed error=\"%s\"", uv_strerror(r));
        uv_close((uv_handle_t *)&t->tcp, tcp_reject_close_cb);
        return NULL;
    }
    uv_tcp_nodelay(&t->tcp, 1);
    t->pub.ops = &tcp_ops;
    t->pub.cb = *cb;
    t->pub.arg = arg;
    return &t->pub;
}

/* ---- TLS context ---- */

/* RFC 6125 6.4.3, simplified: exact, or "*." matching exactly one label. */
static int sni_match(const char *pattern, const char *host)
{
    const char *dot;

    if (strcasecmp(pattern, host) == 0)
        return 1;
    if (strncmp(pattern, "*.", 2) != 0 || (dot = strchr(host, '.')) == NULL || dot == host)
        return 0;
    return strcasecmp(pattern + 1, dot) == 0;
}

/* The ClientHello's server_name picks the certificate.  Exact names win
 * over wildcards; no match keeps the default. */
static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    struct fe_tls_ctx *c = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *found = NULL;
    size_t i;

    (void)alert;
    if (host == NULL || *host == '\0')
        return SSL_TLSEXT_ERR_NOACK;
    for (i = 0; i < c->nsni && !found; i++)
        if (c->sni[i].name[0] != '*' && sni_match(c->sni[i].name, host))
            found = c->sni[i].ctx;
    for (i = 0; i < c->nsni && !found; i++)
        if (c->sni[i].name[0] == '*' && sni_match(c->sni[i].name, host))
            found = c->sni[i].ctx;
    if (found)
        SSL_set_SSL_CTX(ssl, found);
    return SSL_TLSEXT_ERR_OK;
}

static void sni_add(struct fe_tls_ctx *c, const char *name, size_t len, SSL_CTX *ctx)
{
    if (len == 0 || len > 253)
        return;
    c->sni = ms_realloc(c->sni, (c->nsni + 1) * sizeof(*c->sni));
    c->sni[c->nsni].name = ms_strndup(name, len);
    c->sni[c->nsni].ctx = ctx;
    c->nsni++;
}

/* The names a certificate answers for: its DNS subjectAltNames, else the
 * CN (RFC 6125 6.4.4). */
static void sni_from_cert(struct fe_tls_ctx *c, SSL_CTX *ctx)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    GENERAL_NAMES *gens;
    int i, n = 0, len;
    char cn[256];

    if (x == NULL)
        return;
    if ((gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL)) != NULL) {
        for (i = 0; i < sk_GENERAL_NAME_num(gens) && n < FE_TLS_NAMES_MAX; i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
            if (g->type != GEN_DNS)
                continue;
            sni_add(c, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                    (size_t)ASN1_STRING_length(g->d.dNSName), ctx);
            n++;
        }
        GENERAL_NAMES_free(gens);
    }
    if (n == 0 && (len = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName,
                                                   cn, sizeof(cn))) > 0)
        sni_add(c, cn, (size_t)len, ctx);
}

static void sni_from_list(struct fe_tls_ctx *c, const char *names, SSL_CTX *ctx)
{
    const char *p = names, *e;
    int n = 0;

    while (*p && n < FE_TLS_NAMES_MAX) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        for (e = p; *e && *e != ',' && *e != ' ' && *e != '\t'; e++)
            ;
        if (e > p) {
            sni_add(c, p, (size_t)(e - p), ctx);
            n++;
        }
        p = e;
    }
}

static SSL_CTX *server_ctx(const struct fe_tls_cert *tc, const char *ciphers, char *err,
                           size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    unsigned long e;

    if (ctx == NULL)
        goto fail;
    /* RFC 8996 / RFC 9325: TLS 1.2 and 1.3 only. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, tc->cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, tc->key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    return ctx;
fail:
    e = ERR_get_error();
    snprintf(err, errlen, "TLS %s: %s / %s: %s", tc->label ? tc->label : "", tc->cert, tc->key,
             e ? ERR_reason_error_string(e) : "?");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

struct fe_tls_ctx *fe_tls_ctx_new_multi(const struct fe_tls_cert *certs, size_t n,
                                        const char *ciphers, char *err, size_t errlen)
{
    struct fe_tls_ctx *c;
    SSL_CTX *ctx;
    size_t i;

    if (n == 0 || n > FE_TLS_CERTS_MAX) {
        snprintf(err, errlen, "TLS: want 1 to %d certificates", FE_TLS_CERTS_MAX);
        return NULL;
    }
    c = ms_calloc(1, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->extra = ms_calloc(n, sizeof(*c->extra));
    for (i = 0; i < n; i++) {
        if ((ctx = server_ctx(&certs[i], ciphers ? ciphers : FE_TLS_CIPHERS_DEF, err, errlen)) ==
            NULL) {
            fe_tls_ctx_free(c);
            return NULL;
        }
        if (i == 0) {
            c->ctx = ctx;
            continue;
        }
        c->extra[c->nextra++] = ctx;
        if (certs[i].names && *certs[i].names)
            sni_from_list(c, certs[i].names, ctx);
        else
            sni_from_cert(c, ctx);
    }
    if (c->nsni > 0) {
        SSL_CTX_set_tlsext_servername_callback(c->ctx, sni_cb);
        SSL_CTX_set_tlsext_servername_arg(c->ctx, c);
    }
    return c;
}

struct fe_tls_ctx *fe_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    struct fe_tls_cert tc = {"default", cert, key, NULL};

    return fe_tls_ctx_new_multi(&tc, 1, NULL, err, errlen);
}

struct fe_tls_ctx *fe_tls_ctx_ref(struct fe_tls_ctx *ctx)
{
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    return ctx;
}

void fe_tls_ctx_free(struct fe_tls_ctx *ctx)
{
    size_t i;

    if (ctx == NULL || atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) != 1)
        return;
    SSL_CTX_free(ctx->ctx);
    for (i = 0; i < ctx->nextra; i++)
        SSL_CTX_free(ctx->extra[i]);
    for (i = 0; i < ctx->nsni; i++)
        free(ctx->sni[i].name);
    free(ctx->sni);
    free(ctx->extra);
    free(ctx);
}

/* ---- memory (tests) ---- */

struct mem_transport {
    struct fe_transport pub;
    uv_timer_t closer; /* defers on_close to a close callback */
    struct ms_buf in, out;
};

static void mem_deliver(struct mem_transport *m)
{
    char *data;
    size_t len;

    while (m->pub.reading && !m->pub.closing && m->in.len > 0) {
        data = ms_buf_steal(&m->in, &len);
        m->pub.cb.on_read(m->pub.arg, data, len);
        free(data);
    }
}

static void mem_read_start(struct fe_transport *pub)
{
    pub->reading = 1;
    mem_deliver((struct mem_transport *)pub);
}

static void mem_read_stop(struct fe_transport *pub)
{
    pub->reading = 0;
}

static int mem_write(struct fe_transport *pub, const char *buf, size_t len)
{
    struct mem_transport *m = (struct mem_transport *)pub;

    if (pub->closing)
        return MS_ECLOSED;
    return ms_buf_append(&m->out, buf, len);
}

static int mem_tls_start(struct fe_transport *pub, struct fe_tls_ctx *ctx)
{
    (void)pub;
    (void)ctx;
    return MS_EINVAL;
}

static void mem_unread(struct fe_transport *pub, const char *buf, size_t len)
{
    if (len > 0 && !pub->closing)
        pub->cb.on_read(pub->arg, buf, len);
}

static size_t mem_pending(const struct fe_transport *pub)
{
    (void)pub;
    return 0;
}

static void mem_close_cb(uv_handle_t *h)
{
    struct mem_transport *m = h->data;

    m->pub.cb.on_close(m->pub.arg);
    ms_buf_free(&m->in);
    ms_buf_free(&m->out);
    free(m);
}

static void mem_close(struct fe_transport *pub)
{
    struct mem_transport *m = (struct mem_transport *)pub;

    if (pub->closing)
        return;
    pub->closing = 1;
    uv_close((uv_handle_t *)&m->closer, mem_close_cb);
}

static const struct fe_transport_ops mem_ops = {
    .name = "memory",
    .read_start = mem_read_start,
    .read_stop = mem_read_stop,
    .write = mem_write,
    .tls_start = mem_tls_start,
    .unread = mem_unread,
    .pending = mem_pending,
    .close = mem_close,
};

struct fe_transport *fe_transport_mem_new(uv_loop_t *loop, const struct fe_transport_cb *cb,
                                          void *arg)
{
    struct mem_transport *m = ms_calloc(1, sizeof(*m));
    struct sockaddr_in *sin = (struct sockaddr_in *)&m->pub.peer;

    uv_timer_init(loop, &m->closer);
    m->closer.data = m;
    ms_buf_init(&m->in, 64 << 20);
    ms_buf_init(&m->out, 64 << 20);
    m->pub.ops = &mem_ops;
    m->pub.cb = *cb;
    m->pub.arg = arg;
    uv_ip4_addr("192.0.2.7", 40000, sin);
    return &m->pub;
}

void fe_transport_mem_input(struct fe_transport *t, const char *buf, size_t len)
{
    struct mem_transport *m = (struct mem_transport *)t;

    if (t->closing)
        return;
    ms_buf_append(&m->in, buf, len);
    mem_deliver(m);
}

struct ms_buf *fe_transport_mem_output(struct fe_transport *t)
{
    return &((struct mem_transport *)t)->out;
}
