/*
 * fe_transport.h - how a session's bytes reach the client: plain TCP, TLS
 * over TCP (OpenSSL 3 with memory BIOs), or memory (tests).  The session only
 * sees plaintext and this interface (STYLE.md 6); this is the only frontend
 * file that includes OpenSSL.
 *
 * Ownership: the session owns its transport.  fe_transport_close() flushes
 * what was written, closes, and then calls cb.on_close exactly once, from a
 * libuv close callback: that is where the owner may free itself (the
 * transport frees itself right after on_close returns).  No callback runs
 * after on_close.  All calls and callbacks on the loop thread.
 *
 * Errors: write and tls_start return 0 or a negative MS_E* code.  A broken
 * connection (EOF, reset, TLS failure) is reported once through cb.on_error;
 * the owner then closes.
 */
#ifndef FE_TRANSPORT_H
#define FE_TRANSPORT_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_buf.h"

/* Read chunk size: one read callback delivers at most this much plaintext. */
#define FE_TRANSPORT_READ_MAX 65536

struct fe_transport_cb {
    void (*on_read)(void *arg, const char *buf, size_t len); /* plaintext */
    void (*on_tls)(void *arg, int err);                      /* handshake done or failed */
    void (*on_drain)(void *arg);                             /* all output written */
    void (*on_error)(void *arg, int err);                    /* EOF or broken */
    void (*on_close)(void *arg);                             /* closed: free the owner */
};

struct fe_transport;
struct fe_tls_ctx;

struct fe_transport_ops {
    const char *name;
    void (*read_start)(struct fe_transport *t);
    void (*read_stop)(struct fe_transport *t);
    int (*write)(struct fe_transport *t, const char *buf, size_t len);
    int (*tls_start)(struct fe_transport *t, struct fe_tls_ctx *ctx);
    /* Octets the owner read before tls_start() that belong to the TLS
     * stream (a ClientHello that came in one segment with a PROXY header):
     * processed as if just read from the socket.  Only right after
     * tls_start(); never for STARTTLS, where early octets are discarded. */
    void (*unread)(struct fe_transport *t, const char *buf, size_t len);
    size_t (*pending)(const struct fe_transport *t); /* octets written, not yet sent */
    void (*close)(struct fe_transport *t);
};

struct fe_transport {
    const struct fe_transport_ops *ops;
    struct fe_transport_cb cb;
    void *arg;
    struct sockaddr_storage peer;
    int tls;              /* 1 once a TLS handshake completed */
    char tls_version[16]; /* "TLSv1.3" */
    char tls_cipher[64];
    int reading;
    int closing;
};

/* Accept a connection from `server` into a new TCP transport (not reading
 * yet).  Returns NULL (and logs) when accept fails. */
struct fe_transport *fe_transport_tcp_accept(uv_stream_t *server, const struct fe_transport_cb *cb,
                                             void *arg);

/* In-memory transport for tests: fe_transport_mem_input() feeds bytes as if
 * the client sent them (delivered at once when reading, else kept until
 * read_start); everything written is appended to *fe_transport_mem_output(). */
struct fe_transport *fe_transport_mem_new(uv_loop_t *loop, const struct fe_transport_cb *cb,
                                          void *arg);
void fe_transport_mem_input(struct fe_transport *t, const char *buf, size_t len);
struct ms_buf *fe_transport_mem_output(struct fe_transport *t);

static inline void fe_transport_read_start(struct fe_transport *t) { t->ops->read_start(t); }
static inline void fe_transport_read_stop(struct fe_transport *t) { t->ops->read_stop(t); }
static inline int fe_transport_write(struct fe_transport *t, const char *b, size_t n)
{
    return t->ops->write(t, b, n);
}
static inline size_t fe_transport_pending(const struct fe_transport *t) { return t->ops->pending(t); }
static inline void fe_transport_close(struct fe_transport *t) { t->ops->close(t); }
static inline int fe_transport_tls_start(struct fe_transport *t, struct fe_tls_ctx *ctx)
{
    return t->ops->tls_start(t, ctx);
}
static inline void fe_transport_unread(struct fe_transport *t, const char *b, size_t n)
{
    t->ops->unread(t, b, n);
}

/* ---- TLS server context ---- */

/* TLS 1.2 with FE_TLS_CIPHERS_DEF (ECDHE key exchange and AEAD ciphers
 * only, RFC 9325 4.2) and TLS 1.3 with OpenSSL's suites (all AEAD). */
#define FE_TLS_CIPHERS_DEF                                                                     \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define FE_TLS_CERTS_MAX 64
#define FE_TLS_NAMES_MAX 64 /* names per certificate taken for SNI */

/* One certificate: chain and key in PEM files, and the host names it is
 * chosen for by SNI (RFC 6066 3).  names NULL: the DNS names of its
 * subjectAltName (else its CN), "*.example.com" matching one label. */
struct fe_tls_cert {
    const char *label; /* for messages: "default", the [tls.NAME] */
    const char *cert, *key;
    const char *names; /* comma or space separated, or NULL */
};

/*
 * A server context over certs[0] (the default: no SNI, or no match) and
 * certs[1..n-1] chosen by the name the client asks for.  ciphers NULL:
 * FE_TLS_CIPHERS_DEF.  Returns NULL with the reason in err.
 *
 * The context is reference-counted (atomically: any thread may hold one):
 * a transport takes a reference in tls_start and drops it when it closes,
 * so the owner can replace and free its context (SIGHUP reload) while
 * sessions still use or negotiate with the old one.
 */
struct fe_tls_ctx *fe_tls_ctx_new_multi(const struct fe_tls_cert *certs, size_t n,
                                        const char *ciphers, char *err, size_t errlen);
/* One certificate, default ciphers. */
struct fe_tls_ctx *fe_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen);
struct fe_tls_ctx *fe_tls_ctx_ref(struct fe_tls_ctx *ctx);
/* Drop a reference (the owner's, or a transport's); NULL is fine. */
void fe_tls_ctx_free(struct fe_tls_ctx *ctx);

#endif
