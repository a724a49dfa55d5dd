/*
 * ms_conn.c - TCP, UNIX-domain and in-memory links, with TLS over any
 * of them (see ms_conn.h).
 *
 * One struct per connection: the public part, the TLS engine (common to
 * every link), and the link itself - a libuv stream or a memory buffer -
 * behind a small table of operations.  Errors met inside a call of the
 * owner are returned; errors met in a libuv callback are reported through
 * cb.on_error, once.
 */
#include "ms_conn.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <arpa/inet.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

/* A memory transport holds at most this much unread input or output. */
#define MEM_BUF_MAX (64u << 20)
/* TLS output up to this size leaves through a buffer on the stack. */
#define TLS_FLUSH_STACK 16384

/* A certificate chosen by SNI, for one host name or "*.domain". */
struct sni_entry {
    char *name;
    SSL_CTX *ctx;
};

struct ms_tls_ctx {
    SSL_CTX *ctx; /* server: the default certificate, where every handshake
                   * starts; client: the CAs */
    int server;
    SSL_CTX **extra;
    size_t nextra;
    struct sni_entry *sni;
    size_t nsni;
    atomic_int refs;
};

/* How a link sends: flags of link_ops.send. */
enum {
    SEND_KEEP = 1,   /* the caller keeps buf until the write is done: no copy */
    SEND_OWN = 2,    /* buf was allocated for this write: free it when done */
    SEND_SECRET = 4, /* wipe the copy once written */
};

struct conn;

struct link_ops {
    const char *name;
    int (*read_start)(struct conn *t);
    void (*read_stop)(struct conn *t);
    int (*send)(struct conn *t, const char *buf, size_t len, unsigned flags);
    /* a then b in one write, both SEND_KEEP; NULL: two sends */
    int (*send2)(struct conn *t, const char *a, size_t alen, const char *b, size_t blen);
    void (*close)(struct conn *t); /* then conn_closed(), from the loop */
};

struct conn {
    struct ms_conn pub;
    const struct link_ops *ops;
    /* TLS */
    SSL *ssl;
    BIO *rbio, *wbio;
    struct ms_tls_ctx *tctx; /* a reference while ssl exists */
    enum ms_tls_verify verify;
    int client;      /* TLS as the client */
    int named;       /* client: a host name (or IP literal) is checked */
    int dane;        /* client: TLSA records judge the chain */
    int handshaking;
    int tls_failed;  /* handshake failed or certificate refused: no close_notify */
    /* State */
    int errored;     /* broken: no more I/O */
    int reported;    /* on_error called */
    int shutdown;    /* close once the pending output is written */
    int accepted;    /* made by ms_conn_accept: we are the server */
    int read_eof;    /* the peer shut down its sending half; we may still write */
    size_t pending;
    union {
        struct {
            union {
                uv_handle_t handle;
                uv_stream_t stream;
                uv_tcp_t tcp;
                uv_pipe_t pipe;
            } h;
            uv_connect_t creq;
        } s;
        struct {
            uv_timer_t timer;     /* delivers input on a later turn; its close
                                   * closes the transport */
            struct ms_buf in, out;
            struct conn *peer; /* the other end of a pair */
            int paired;
            int peer_gone;        /* the pair's other end has closed */
            int eof_reported;
            int connect_due;
            int drain_due;        /* the peer went away with our output */
        } m;
    } l;
};

static void conn_closed(struct conn *t);
static void conn_sent(struct conn *t);

/* ---- errors ---- */

/* The connection is broken: remember the first reason. */
static void broken(struct conn *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void broken(struct conn *t, const char *fmt, ...)
{
    va_list ap;

    if (t->errored)
        return;
    t->errored = 1;
    va_start(ap, fmt);
    vsnprintf(t->pub.error, sizeof(t->pub.error), fmt, ap);
    va_end(ap);
}

/* Tell the owner, once, from a callback of ours. */
static void report(struct conn *t, int err)
{
    if (t->reported || t->pub.closing)
        return;
    t->reported = 1;
    t->pub.cb.on_error(t->pub.arg, err);
}

/* ---- the TLS engine ---- */

static void peer_name(const struct conn *t, char *buf, size_t len)
{
    snprintf(buf, len, "?");
    if (t->pub.peer.ss_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)&t->pub.peer, buf, len);
    else if (t->pub.peer.ss_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)&t->pub.peer, buf, len);
}

/* OpenSSL failed at `op`: the reason goes to t->error, and a server logs
 * it (a client's owner has the context - a queue id - to log it with). */
static void tls_note_error(struct conn *t, const char *op)
{
    unsigned long e = ERR_get_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    char addr[64], ebuf[256];

    snprintf(t->pub.error, sizeof(t->pub.error), "%s", reason ? reason : "protocol error");
    if (!t->client) {
        ERR_error_string_n(e, ebuf, sizeof(ebuf));
        peer_name(t, addr, sizeof(addr));
        ms_info("event=tls_error client=%s op=%s error=\"%s\"", addr, op, ebuf);
    }
    ERR_clear_error(); /* the error queue is per thread, not ours */
}

/* Send whatever OpenSSL queued in the write BIO, in one write. */
static int tls_flush(struct conn *t)
{
    char buf[TLS_FLUSH_STACK], *p;
    size_t n = BIO_ctrl_pending(t->wbio);

    if (n == 0)
        return 0;
    if (n <= sizeof(buf)) {
        BIO_read(t->wbio, buf, (int)n);
        return t->ops->send(t, buf, n, 0);
    }
    /* A large write (a message body): read it once into a buffer the
     * link takes over, rather than copying it again. */
    p = ms_malloc(n);
    BIO_read(t->wbio, p, (int)n);
    return t->ops->send(t, p, n, SEND_OWN);
}

/* OpenSSL's verification result, sorted as TLS reports sort it (RFC
 * 8460 §4.3.2.1). */
static int cert_error(long vr, int dane)
{
    switch (vr) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return MS_TLS_CERT_NAME;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return MS_TLS_CERT_EXPIRED;
    case X509_V_ERR_DANE_NO_MATCH:
        return MS_TLS_CERT_DANE;
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
        return dane ? MS_TLS_CERT_DANE : MS_TLS_CERT_UNTRUSTED;
    default:
        return MS_TLS_CERT_OTHER;
    }
}

/* The handshake finished: judge the certificate (a client), then tell. */
static void tls_established(struct conn *t)
{
    long vr;

    snprintf(t->pub.tls_version, sizeof(t->pub.tls_version), "%s", SSL_get_version(t->ssl));
    snprintf(t->pub.tls_cipher, sizeof(t->pub.tls_cipher), "%s",
             SSL_CIPHER_get_name(SSL_get_current_cipher(t->ssl)));
    if (tls_flush(t) < 0) { /* a client's Finished */
        report(t, MS_EIO);
        return;
    }
    if (t->client) {
        /* The context verifies with SSL_VERIFY_NONE, so the handshake
         * always completes and the result is judged here, by policy:
         * opportunistic TLS must not fail on a self-signed certificate. */
        vr = SSL_get_verify_result(t->ssl);
        t->pub.tls_verified =
            t->named && vr == X509_V_OK && SSL_get0_peer_certificate(t->ssl) != NULL;
        /* With DANE, OpenSSL's verification succeeds only through a TLSA
         * record that matched (SSL_get0_dane_authority says which usage). */
        t->pub.tls_dane = t->dane && t->pub.tls_verified &&
                          SSL_get0_dane_authority(t->ssl, NULL, NULL) >= 0;
        if (!t->pub.tls_verified)
            t->pub.tls_cert_error = cert_error(vr, t->dane);
        if (!t->pub.tls_verified)
            snprintf(t->pub.error, sizeof(t->pub.error), "%s",
                     vr != X509_V_OK ? X509_verify_cert_error_string(vr)
                     : !t->named     ? "no name to verify"
                                     : "no certificate");
        if (t->verify == MS_TLS_VERIFY_PEER && !t->pub.tls_verified) {
            t->tls_failed = 1;
            t->pub.cb.on_tls(t->pub.arg, MS_ECERT);
            return;
        }
    }
    t->pub.tls = 1;
    t->pub.cb.on_tls(t->pub.arg, 0);
}

/* Feed ciphertext to OpenSSL and hand out every plaintext octet it yields. */
static void tls_input(struct conn *t, const char *buf, size_t len)
{
    char plain[16384];
    int r, e;

    if (t->tls_failed)
        return; /* the owner is closing: nothing more is read */
    if (len > INT_MAX || BIO_write(t->rbio, buf, (int)len) != (int)len) {
        broken(t, "TLS input not buffered");
        report(t, MS_EIO);
        return;
    }
    if (t->handshaking) {
        r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                if (tls_flush(t) < 0) /* the next flight */
                    report(t, MS_EIO);
                return;
            }
            tls_note_error(t, "handshake");
            (void)tls_flush(t); /* the alert, if it can still go */
            t->handshaking = 0;
            t->tls_failed = 1;
            if (!t->pub.closing)
                t->pub.cb.on_tls(t->pub.arg, MS_EPROTO);
            return;
        }
        t->handshaking = 0;
        tls_established(t);
        if (!t->pub.tls)
            return;
    }
    /* Drain everything OpenSSL can decrypt now, even if the owner asked to
     * stop reading: the owner buffers it, and records left in rbio would
     * otherwise wait for input that may never come. */
    while (!t->pub.closing && !t->errored && !t->tls_failed) {
        r = SSL_read(t->ssl, plain, sizeof(plain));
        if (r > 0) {
            t->pub.cb.on_read(t->pub.arg, plain, (size_t)r);
            continue;
        }
        e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (tls_flush(t) < 0) /* what reading made OpenSSL say */
                report(t, MS_EIO);
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            broken(t, "connection closed (TLS close_notify)");
            report(t, MS_ECLOSED);
            return;
        }
        tls_note_error(t, "read");
        t->errored = 1;
        report(t, MS_EIO);
        return;
    }
}

/* Input from the link: ciphertext once TLS started, else plaintext. */
static void conn_input(struct conn *t, const char *buf, size_t len)
{
    if (t->ssl)
        tls_input(t, buf, len);
    else
        t->pub.cb.on_read(t->pub.arg, buf, len);
}

/* ---- the public calls ---- */

int ms_conn_read_start(struct ms_conn *pub)
{
    struct conn *t = (struct conn *)pub;

    if (pub->reading || pub->closing || t->read_eof)
        return 0;
    return t->ops->read_start(t);
}

void ms_conn_read_stop(struct ms_conn *pub)
{
    struct conn *t = (struct conn *)pub;

    if (!pub->reading)
        return;
    t->ops->read_stop(t);
    pub->reading = 0;
}

/* buf, then b when blen > 0 (SEND_KEEP only), as one write where the link
 * can. */
static int conn_write(struct conn *t, const char *buf, size_t len, const char *b, size_t blen,
                      unsigned flags)
{
    int r;

    if (t->pub.closing)
        return MS_ECLOSED;
    if (t->errored)
        return MS_EIO;
    if (t->ssl == NULL) {
        if (blen == 0)
            return t->ops->send(t, buf, len, flags);
        if (t->ops->send2 != NULL)
            return t->ops->send2(t, buf, len, b, blen);
        r = t->ops->send(t, buf, len, flags);
        return r < 0 ? r : t->ops->send(t, b, blen, flags);
    }
    if (t->handshaking)
        return MS_EAGAIN;
    if (!t->pub.tls)
        return MS_EPROTO;
    if (len > INT_MAX || blen > INT_MAX)
        return MS_EINVAL;
    /* Memory BIOs grow, so SSL_write takes everything at once (and copies
     * it: the caller's buffer is free again when it returns). */
    if ((len > 0 && SSL_write(t->ssl, buf, (int)len) != (int)len) ||
        (blen > 0 && SSL_write(t->ssl, b, (int)blen) != (int)blen)) {
        tls_note_error(t, "write");
        t->errored = 1;
        return MS_EIO;
    }
    return tls_flush(t);
}

int ms_conn_write(struct ms_conn *t, const char *buf, size_t len)
{
    return conn_write((struct conn *)t, buf, len, NULL, 0, 0);
}

int ms_conn_write_ref(struct ms_conn *t, const char *buf, size_t len)
{
    return conn_write((struct conn *)t, buf, len, NULL, 0, SEND_KEEP);
}

int ms_conn_write2_ref(struct ms_conn *t, const char *a, size_t alen, const char *b,
                       size_t blen)
{
    return conn_write((struct conn *)t, a, alen, b, blen, SEND_KEEP);
}

int ms_conn_write_secret(struct ms_conn *t, const char *buf, size_t len)
{
    return conn_write((struct conn *)t, buf, len, NULL, 0, SEND_SECRET);
}

size_t ms_conn_pending(const struct ms_conn *t)
{
    return ((const struct conn *)t)->pending;
}

void ms_conn_unread(struct ms_conn *pub, const char *buf, size_t len)
{
    if (len == 0 || pub->closing)
        return;
    conn_input((struct conn *)pub, buf, len);
}

void ms_conn_close(struct ms_conn *pub)
{
    struct conn *t = (struct conn *)pub;

    if (pub->closing)
        return;
    pub->closing = 1;
    ms_conn_read_stop(pub);
    if (t->ssl && pub->tls && !t->errored) {
        SSL_shutdown(t->ssl); /* queue close_notify */
        ERR_clear_error();
        (void)tls_flush(t);
    }
    if (t->pending > 0 && !t->errored)
        t->shutdown = 1; /* closed by the last write callback */
    else
        t->ops->close(t);
}

void ms_conn_abort(struct ms_conn *pub)
{
    struct conn *t = (struct conn *)pub;

    if (pub->closing)
        return;
    pub->closing = 1;
    ms_conn_read_stop(pub);
    t->ops->close(t);
}

/* The pending output went out (or nothing is pending any more). */
static void conn_sent(struct conn *t)
{
    if (t->pending > 0)
        return;
    if (t->shutdown)
        t->ops->close(t);
    else if (!t->pub.closing && !t->errored && t->pub.cb.on_drain)
        t->pub.cb.on_drain(t->pub.arg);
}

/* The link is closed: the owner's last callback, then the memory. */
static void conn_closed(struct conn *t)
{
    t->pub.cb.on_close(t->pub.arg);
    if (t->ssl)
        SSL_free(t->ssl); /* frees the BIOs too */
    ms_tls_ctx_free(t->tctx);
    free(t);
}

/* ---- TLS start ---- */

static int tls_setup(struct conn *t, struct ms_tls_ctx *ctx)
{
    if ((t->ssl = SSL_new(ctx->ctx)) == NULL)
        return MS_ENOMEM;
    t->tctx = ms_tls_ctx_ref(ctx); /* the SNI callback reads it */
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    t->handshaking = 1;
    return 0;
}

int ms_conn_tls_accept(struct ms_conn *pub, struct ms_tls_ctx *ctx)
{
    struct conn *t = (struct conn *)pub;
    int r;

    if (t->ssl || ctx == NULL || !ctx->server || pub->closing)
        return MS_EINVAL;
    if ((r = tls_setup(t, ctx)) < 0)
        return r;
    SSL_set_accept_state(t->ssl);
    return 0;
}

static int is_ip_literal(const char *s)
{
    unsigned char a[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

int ms_conn_tls_connect(struct ms_conn *pub, struct ms_tls_ctx *ctx,
                             const struct ms_tls_policy *policy)
{
    struct conn *t = (struct conn *)pub;
    const char *host = policy && policy->host && *policy->host ? policy->host : NULL;
    enum ms_tls_verify verify = policy ? policy->verify : MS_TLS_VERIFY_NONE;
    size_t nmatch = policy && policy->match ? policy->nmatch : 0;
    size_t ntlsa = policy && policy->tlsa ? policy->ntlsa : 0;
    size_t i;
    int r, e, usable = 0;

    if (t->ssl || ctx == NULL || ctx->server || pub->closing ||
        (host && strlen(host) > MS_TLS_HOST_MAX) || (verify == MS_TLS_VERIFY_PEER && !host) ||
        nmatch > MS_TLS_MATCH_MAX || ntlsa > MS_TLS_TLSA_MAX || (ntlsa && !host))
        return MS_EINVAL;
    if ((r = tls_setup(t, ctx)) < 0)
        return r;
    t->client = 1;
    t->named = host != NULL;
    t->verify = verify;
    SSL_set_connect_state(t->ssl);
    if (ntlsa) {
        /* RFC 7672 §3.1: the TLSA base domain is the MX host; it is the
         * SNI (§8.1) and the name DANE-TA(2) checks (§3.2.2).  DANE-EE(3)
         * checks no name (§3.1.1).  OpenSSL copies every record. */
        if (SSL_dane_enable(t->ssl, host) <= 0)
            goto invalid;
        SSL_dane_set_flags(t->ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
        for (i = 0; i < ntlsa; i++) {
            const struct ms_tlsa *a = &policy->tlsa[i];
            if (a->len > MS_TLS_TLSA_DATA_MAX)
                goto invalid;
            r = SSL_dane_tlsa_add(t->ssl, a->usage, a->selector, a->mtype, a->data, a->len);
            if (r < 0)
                goto invalid;
            usable += r > 0;
        }
        /* The caller filters by RFC 7672; what OpenSSL cannot use either
         * (a digest it does not know) leaves nothing to authenticate with,
         * and that is the caller's decision (§2.2: mandatory TLS). */
        if (!usable)
            goto invalid;
        t->dane = 1;
    } else if (host && is_ip_literal(host)) {
        /* RFC 6066 §3: no IP literal in server_name; the certificate must
         * name the address (RFC 6125 §1.7.2: iPAddress). */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) != 1)
            goto invalid;
    } else if (host) {
        if (SSL_set_tlsext_host_name(t->ssl, host) != 1 ||
            (nmatch == 0 && SSL_set1_host(t->ssl, host) != 1))
            goto invalid;
    }
    /* match=: these names instead of host (SSL_dane_enable set host as the
     * first one for DANE-TA, and these are added to it). */
    for (i = 0; i < nmatch; i++) {
        const char *n = policy->match[i];
        if (n == NULL || *n == '\0' || strlen(n) > MS_TLS_HOST_MAX ||
            (i == 0 && !ntlsa ? SSL_set1_host(t->ssl, n) : SSL_add1_host(t->ssl, n)) != 1)
            goto invalid;
    }
    r = SSL_do_handshake(t->ssl); /* the ClientHello */
    e = SSL_get_error(t->ssl, r);
    if (r != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        tls_note_error(t, "handshake");
        t->handshaking = 0;
        t->tls_failed = 1;
        return MS_EPROTO;
    }
    return tls_flush(t);
invalid:
    /* The SSL object stays (freed with the transport); no ClientHello went
     * out, so the owner closes or aborts as after any refused call. */
    ERR_clear_error();
    t->tls_failed = 1;
    return MS_EINVAL;
}

/* ---- stream links: TCP and UNIX-domain sockets ---- */

/* One read buffer for every connection of a loop: libuv calls alloc_cb
 * and read_cb back to back on the loop thread, and read_cb consumes the
 * data before returning, so sharing it is safe and saves 64 KiB per idle
 * connection.  Thread-local, so each loop thread has its own. */
static _Thread_local char stream_rbuf[MS_CONN_READ_MAX];

struct stream_write {
    uv_write_t req;
    struct conn *t;
    size_t len;
    char *own;  /* the buffer written, when we free it */
    int secret; /* wipe data[] when done */
    char data[];
};

static void stream_write_cb(uv_write_t *req, int status)
{
    struct stream_write *w = (struct stream_write *)req;
    struct conn *t = w->t;

    t->pending -= w->len;
    if (w->secret)
        OPENSSL_cleanse(w->data, w->len);
    free(w->own);
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED) {
            broken(t, "while sending: %s", uv_strerror(status));
            report(t, MS_EIO);
        }
        if (t->shutdown && t->pending == 0)
            t->ops->close(t); /* nothing more will go out */
        return;
    }
    conn_sent(t);
}

/* v[0..nv) in one write (writev).  Nothing queued: write now, and leave
 * libuv only what the kernel did not take (a uv_write the kernel takes at
 * once still ends with libuv re-arming the socket in epoll: one more
 * epoll_ctl per reply).  What libuv gets is copied unless the caller keeps
 * it (SEND_KEEP) or gives it (SEND_OWN: own, freed when done). */
static int stream_sendv(struct conn *t, uv_buf_t *v, unsigned nv, unsigned flags, char *own)
{
    struct stream_write *w;
    size_t left = 0, done, off;
    unsigned i = 0, k;
    int r;

    for (k = 0; k < nv; k++)
        left += v[k].len;
    if (left == 0) {
        free(own);
        return 0;
    }
    if (t->pending == 0) {
        r = uv_try_write(&t->l.s.h.stream, v, nv);
        if (r > 0) {
            done = (size_t)r;
            left -= done;
            if (left == 0) {
                free(own);
                return 0;
            }
            while (done >= v[i].len)
                done -= v[i++].len;
            v[i].base += done;
            v[i].len -= (unsigned)done;
        } else if (r != UV_EAGAIN) {
            free(own);
            broken(t, "%s", uv_strerror(r));
            return MS_EIO;
        }
    }
    if (flags & (SEND_KEEP | SEND_OWN)) {
        w = ms_malloc(sizeof(*w));
        w->secret = 0;
    } else {
        w = ms_malloc(sizeof(*w) + left);
        for (off = 0, k = i; k < nv; off += v[k].len, k++)
            memcpy(w->data + off, v[k].base, v[k].len);
        v[i] = uv_buf_init(w->data, (unsigned)left);
        nv = i + 1;
        w->secret = (flags & SEND_SECRET) != 0;
    }
    w->t = t;
    w->len = left;
    w->own = own;
    t->pending += left;
    if ((r = uv_write(&w->req, &t->l.s.h.stream, v + i, nv - i, stream_write_cb)) < 0) {
        t->pending -= left;
        if (w->secret)
            OPENSSL_cleanse(w->data, left);
        free(own);
        free(w);
        broken(t, "%s", uv_strerror(r));
        return MS_EIO;
    }
    return 0;
}

static int stream_send(struct conn *t, const char *buf, size_t len, unsigned flags)
{
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);

    return stream_sendv(t, &b, 1, flags, flags & SEND_OWN ? (char *)buf : NULL);
}

/* a then b in one writev, neither copied. */
static int stream_send2(struct conn *t, const char *a, size_t alen, const char *b, size_t blen)
{
    uv_buf_t v[2] = {uv_buf_init((char *)a, (unsigned)alen),
                     uv_buf_init((char *)b, (unsigned)blen)};

    return stream_sendv(t, v, 2, SEND_KEEP, NULL);
}

static void stream_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(stream_rbuf, sizeof(stream_rbuf));
}

static void stream_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *t = s->data;

    if (nread == 0 || t->pub.closing)
        return;
    if (nread == UV_EOF && t->ssl == NULL && t->accepted) {
        /* A client half-closing (shutdown(SHUT_WR), as Exim does after
         * pipelining QUIT behind the end of a message): the client still reads the
         * replies it is owed (RFC 2920 3.1, RFC 5321 4.1.1.10), so writing
         * stays allowed and the owner decides when to close.  Reported as
         * MS_ECLOSED without marking the link broken.  (A client link, the
         * worker's, keeps treating EOF as a broken connection.) */
        t->read_eof = 1;
        uv_read_stop(s);
        t->pub.reading = 0;
        if (!t->errored && !t->reported)
            t->pub.cb.on_error(t->pub.arg, MS_ECLOSED);
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF)
            broken(t, "connection closed");
        else
            broken(t, "%s", uv_strerror((int)nread));
        report(t, nread == UV_EOF ? MS_ECLOSED : MS_EIO);
        return;
    }
    conn_input(t, buf->base, (size_t)nread);
}

static int stream_read_start(struct conn *t)
{
    int r = uv_read_start(&t->l.s.h.stream, stream_alloc_cb, stream_read_cb);

    if (r < 0) {
        broken(t, "%s", uv_strerror(r));
        return MS_EIO;
    }
    t->pub.reading = 1;
    return 0;
}

static void stream_read_stop(struct conn *t)
{
    uv_read_stop(&t->l.s.h.stream);
}

static void stream_close_cb(uv_handle_t *h)
{
    conn_closed(h->data);
}

static void stream_close(struct conn *t)
{
    if (!uv_is_closing(&t->l.s.h.handle))
        uv_close(&t->l.s.h.handle, stream_close_cb);
}

static const struct link_ops stream_ops = {
    .name = "stream",
    .read_start = stream_read_start,
    .read_stop = stream_read_stop,
    .send = stream_send,
    .send2 = stream_send2,
    .close = stream_close,
};

/* A handle that never became a transport for the owner. */
static void stream_reject_close_cb(uv_handle_t *h)
{
    free(h->data);
}

struct ms_conn *ms_conn_accept(uv_stream_t *server, const struct ms_conn_cb *cb,
                                         void *arg)
{
    struct conn *t = ms_calloc(1, sizeof(*t));
    int len = sizeof(t->pub.peer), r;

    uv_tcp_init(server->loop, &t->l.s.h.tcp);
    t->l.s.h.handle.data = t;
    if ((r = uv_accept(server, &t->l.s.h.stream)) < 0 ||
        (r = uv_tcp_getpeername(&t->l.s.h.tcp, (struct sockaddr *)&t->pub.peer, &len)) < 0) {
        ms_warn("event=accept_failed error=\"%s\"", uv_strerror(r));
        uv_close(&t->l.s.h.handle, stream_reject_close_cb);
        return NULL;
    }
    uv_tcp_nodelay(&t->l.s.h.tcp, 1);
    t->ops = &stream_ops;
    t->accepted = 1;
    t->pub.cb = *cb;
    t->pub.arg = arg;
    return &t->pub;
}

static void stream_connect_cb(uv_connect_t *req, int status)
{
    struct conn *t = req->data;

    if (status == UV_ECANCELED || t->pub.closing)
        return;
    if (status < 0) {
        broken(t, "%s", uv_strerror(status));
        t->pub.cb.on_connect(t->pub.arg, MS_EIO);
        return;
    }
    if (t->pub.peer.ss_family != AF_UNIX) {
        int len = sizeof(t->pub.local);
        if (uv_tcp_getsockname(&t->l.s.h.tcp, (struct sockaddr *)&t->pub.local, &len) < 0)
            memset(&t->pub.local, 0, sizeof(t->pub.local));
    }
    t->pub.cb.on_connect(t->pub.arg, 0);
}

int ms_conn_connect(uv_loop_t *loop, const struct sockaddr *addr,
                         const struct ms_conn_cb *cb, void *arg, struct ms_conn **out,
                         char *err, size_t errlen)
{
    struct conn *t = ms_calloc(1, sizeof(*t));
    int r;

    t->ops = &stream_ops;
    t->pub.cb = *cb;
    t->pub.arg = arg;
    t->l.s.creq.data = t;
    if (addr->sa_family == AF_UNIX) {
        memcpy(&t->pub.peer, addr, sizeof(struct sockaddr_un));
        uv_pipe_init(loop, &t->l.s.h.pipe, 0);
        t->l.s.h.handle.data = t;
        /* libuv 1.44: errors, even immediate ones, come to the callback. */
        uv_pipe_connect(&t->l.s.creq, &t->l.s.h.pipe,
                        ((const struct sockaddr_un *)addr)->sun_path, stream_connect_cb);
        *out = &t->pub;
        return 0;
    }
    memcpy(&t->pub.peer, addr,
           addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    uv_tcp_init(loop, &t->l.s.h.tcp);
    t->l.s.h.handle.data = t;
    if ((r = uv_tcp_connect(&t->l.s.creq, &t->l.s.h.tcp, addr, stream_connect_cb)) < 0) {
        snprintf(err, errlen, "%s", uv_strerror(r));
        uv_close(&t->l.s.h.handle, stream_reject_close_cb);
        return MS_EIO;
    }
    *out = &t->pub;
    return 0;
}

/* ---- memory links (tests) ---- */

static void mem_timer_cb(uv_timer_t *h);

static void mem_kick(struct conn *t)
{
    uv_handle_t *h = (uv_handle_t *)&t->l.m.timer;

    if (!uv_is_closing(h) && !uv_is_active(h))
        uv_timer_start(&t->l.m.timer, mem_timer_cb, 0, 0);
}

/* Hand the input over while the owner reads; then, once the pair's other
 * end has gone, the end of the stream. */
static void mem_deliver(struct conn *t)
{
    struct conn *src = t->l.m.peer;
    char *data;
    size_t len;

    while (t->pub.reading && !t->pub.closing && t->l.m.in.len > 0) {
        data = ms_buf_steal(&t->l.m.in, &len);
        conn_input(t, data, len);
        free(data);
        if (src) {
            src->pending = src->pending > len ? src->pending - len : 0;
            conn_sent(src);
        }
    }
    if (t->l.m.peer_gone && t->l.m.in.len == 0 && t->pub.reading && !t->l.m.eof_reported) {
        t->l.m.eof_reported = 1;
        broken(t, "connection closed");
        report(t, MS_ECLOSED);
    }
}

static void mem_timer_cb(uv_timer_t *h)
{
    struct conn *t = h->data;

    if (t->l.m.connect_due) {
        t->l.m.connect_due = 0;
        if (!t->pub.closing)
            t->pub.cb.on_connect(t->pub.arg, 0);
    }
    if (t->l.m.drain_due) {
        t->l.m.drain_due = 0;
        conn_sent(t);
    }
    mem_deliver(t);
}

static int mem_read_start(struct conn *t)
{
    t->pub.reading = 1;
    if (t->l.m.paired)
        mem_kick(t); /* never call back from inside the owner's call */
    else
        mem_deliver(t);
    return 0;
}

static void mem_read_stop(struct conn *t)
{
    (void)t;
}

static int mem_send(struct conn *t, const char *buf, size_t len, unsigned flags)
{
    struct conn *p = t->l.m.peer;
    int r;

    if (!t->l.m.paired)
        r = ms_buf_append(&t->l.m.out, buf, len);
    else if (p == NULL)
        r = MS_ECLOSED;
    else if ((r = ms_buf_append(&p->l.m.in, buf, len)) == 0) {
        t->pending += len;
        mem_kick(p);
    }
    if (flags & SEND_OWN)
        free((char *)buf);
    if (r < 0)
        broken(t, "%s", r == MS_ECLOSED ? "the peer has closed" : ms_strerror(r));
    return r;
}

static void mem_close_cb(uv_handle_t *h)
{
    struct conn *t = h->data;

    ms_buf_free(&t->l.m.in);
    ms_buf_free(&t->l.m.out);
    conn_closed(t);
}

static void mem_close(struct conn *t)
{
    struct conn *p = t->l.m.peer;

    if (uv_is_closing((uv_handle_t *)&t->l.m.timer))
        return;
    /* What was sent stays readable at the other end, then it ends. */
    if (p) {
        p->l.m.peer = NULL;
        p->l.m.peer_gone = 1;
        if (p->pending > 0) { /* what it sent us is gone with us */
            p->pending = 0;
            p->l.m.drain_due = 1;
        }
        mem_kick(p);
        t->l.m.peer = NULL;
    }
    t->pending = 0;
    uv_close((uv_handle_t *)&t->l.m.timer, mem_close_cb);
}

static const struct link_ops mem_ops = {
    .name = "memory",
    .read_start = mem_read_start,
    .read_stop = mem_read_stop,
    .send = mem_send,
    .close = mem_close,
};

static struct conn *mem_create(uv_loop_t *loop, const struct ms_conn_cb *cb, void *arg)
{
    struct conn *t = ms_calloc(1, sizeof(*t));
    struct sockaddr_in *sin = (struct sockaddr_in *)&t->pub.peer;

    uv_timer_init(loop, &t->l.m.timer);
    t->l.m.timer.data = t;
    ms_buf_init(&t->l.m.in, MEM_BUF_MAX);
    ms_buf_init(&t->l.m.out, MEM_BUF_MAX);
    t->ops = &mem_ops;
    t->pub.cb = *cb;
    t->pub.arg = arg;
    uv_ip4_addr("192.0.2.7", 40000, sin); /* RFC 5737 TEST-NET-1 */
    return t;
}

struct ms_conn *ms_conn_mem_new(uv_loop_t *loop, const struct ms_conn_cb *cb,
                                          void *arg)
{
    return &mem_create(loop, cb, arg)->pub;
}

void ms_conn_mem_pair(uv_loop_t *loop, const struct ms_conn_cb *cb_a, void *arg_a,
                           const struct ms_conn_cb *cb_b, void *arg_b,
                           struct ms_conn **a, struct ms_conn **b)
{
    struct conn *x = mem_create(loop, cb_a, arg_a), *y = mem_create(loop, cb_b, arg_b);

    x->l.m.paired = y->l.m.paired = 1;
    x->l.m.peer = y;
    y->l.m.peer = x;
    if (cb_a->on_connect) {
        x->l.m.connect_due = 1;
        mem_kick(x);
    }
    if (cb_b->on_connect) {
        y->l.m.connect_due = 1;
        mem_kick(y);
    }
    *a = &x->pub;
    *b = &y->pub;
}

void ms_conn_mem_input(struct ms_conn *pub, const char *buf, size_t len)
{
    struct conn *t = (struct conn *)pub;

    if (pub->closing)
        return;
    ms_buf_append(&t->l.m.in, buf, len);
    mem_deliver(t);
}

struct ms_buf *ms_conn_mem_output(struct ms_conn *pub)
{
    return &((struct conn *)pub)->l.m.out;
}

/* ---- TLS contexts ---- */

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
    struct ms_tls_ctx *c = arg;
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

static void sni_add(struct ms_tls_ctx *c, const char *name, size_t len, SSL_CTX *ctx)
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
static void sni_from_cert(struct ms_tls_ctx *c, SSL_CTX *ctx)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    GENERAL_NAMES *gens;
    int i, n = 0, len;
    char cn[256];

    if (x == NULL)
        return;
    if ((gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL)) != NULL) {
        for (i = 0; i < sk_GENERAL_NAME_num(gens) && n < MS_TLS_NAMES_MAX; i++) {
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

static void sni_from_list(struct ms_tls_ctx *c, const char *names, SSL_CTX *ctx)
{
    const char *p = names, *e;
    int n = 0;

    while (*p && n < MS_TLS_NAMES_MAX) {
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

static SSL_CTX *server_ctx(const struct ms_tls_cert *tc, const char *ciphers, char *err,
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

struct ms_tls_ctx *ms_tls_ctx_new_server(const struct ms_tls_cert *certs, size_t n,
                                         const char *ciphers, char *err, size_t errlen)
{
    struct ms_tls_ctx *c;
    SSL_CTX *ctx;
    size_t i;

    if (n == 0 || n > MS_TLS_CERTS_MAX) {
        snprintf(err, errlen, "TLS: want 1 to %d certificates", MS_TLS_CERTS_MAX);
        return NULL;
    }
    c = ms_calloc(1, sizeof(*c));
    c->server = 1;
    atomic_init(&c->refs, 1);
    c->extra = ms_calloc(n, sizeof(*c->extra));
    for (i = 0; i < n; i++) {
        if ((ctx = server_ctx(&certs[i], ciphers ? ciphers : MS_TLS_CIPHERS_DEF, err, errlen)) ==
            NULL) {
            ms_tls_ctx_free(c);
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

struct ms_tls_ctx *ms_tls_ctx_new_client(const char *ca_file, char *err, size_t errlen)
{
    struct ms_tls_ctx *c = ms_calloc(1, sizeof(*c));
    int has_file = ca_file && *ca_file;

    atomic_init(&c->refs, 1);
    if ((c->ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        free(c);
        return NULL;
    }
    /* Verification is judged after the handshake, by policy (see
     * tls_established): `may` and `encrypt` must not fail on a
     * self-signed certificate. */
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    /* DANE (RFC 7672) per connection needs the digests set up once per
     * context; a connection without TLSA records is not affected. */
    if (SSL_CTX_dane_enable(c->ctx) <= 0) {
        snprintf(err, errlen, "SSL_CTX_dane_enable failed");
        ERR_clear_error();
        SSL_CTX_free(c->ctx);
        free(c);
        return NULL;
    }
    if (has_file ? SSL_CTX_load_verify_locations(c->ctx, ca_file, NULL) != 1
                 : SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
        snprintf(err, errlen, "cannot load CAs from %s: %s",
                 has_file ? ca_file : "the system default",
                 ERR_reason_error_string(ERR_get_error()));
        ERR_clear_error();
        SSL_CTX_free(c->ctx);
        free(c);
        return NULL;
    }
    return c;
}

struct ms_tls_ctx *ms_tls_ctx_ref(struct ms_tls_ctx *ctx)
{
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    return ctx;
}

void ms_tls_ctx_free(struct ms_tls_ctx *ctx)
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
