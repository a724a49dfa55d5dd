/*
 * ms_conn.h - how a connection's bytes travel: TCP or a UNIX-domain
 * socket, TLS over either (OpenSSL 3 on memory BIOs), or memory (tests).
 * The owner - the frontend's SMTP session, the worker's SMTP client - sees
 * plaintext and this interface only (STYLE.md 6), never an SSL object.
 *
 * Either side: a server's transport comes from ms_conn_accept() and
 * starts TLS as the server with ms_conn_tls_accept() (SNI picks the
 * certificate); a client's comes from ms_conn_connect() and starts
 * TLS as the client with ms_conn_tls_connect(), which sends SNI and
 * judges the server's certificate by a struct ms_tls_policy.  A memory
 * transport does everything but the socket, so two paired memory
 * transports (ms_conn_mem_pair) run a real TLS handshake in a unit
 * test, and one alone (ms_conn_mem_new) is a scripted peer.
 *
 * TLS runs OpenSSL on memory BIOs: ciphertext read from the link goes
 * into rbio, SSL_read/SSL_do_handshake turn it into plaintext and
 * handshake messages, and whatever OpenSSL writes to wbio goes out on the
 * link.  So OpenSSL never touches a socket and the loop never blocks.
 *
 * Ownership: the owner owns its transport.  ms_conn_close() sends
 * what was written (and a TLS close_notify) first, ms_conn_abort()
 * drops it; both then close and call cb.on_close exactly once, from a
 * libuv close callback: that is where the owner may free itself (the
 * transport frees itself right after on_close returns).  No callback runs
 * after on_close.  All calls and callbacks on the thread of the
 * transport's loop.  A TLS context is reference-counted and may be shared
 * by every loop (see ms_tls_ctx_new_server).
 *
 * Errors: a call returns 0 or a negative MS_E* code, and a call that
 * returns an error calls no callback for it.  A connection that breaks
 * while none of the owner's calls runs (end of stream, a reset, a TLS
 * alert, a write that failed later) is reported once through cb.on_error:
 * MS_ECLOSED for the peer's orderly end (a FIN, a close_notify), MS_EIO
 * otherwise; the owner then closes.  t->error says why in words, for the
 * owner's diagnostics; a server's TLS failures are also logged here
 * (event=tls_error), a client's are left to its owner, who knows the
 * queue id.
 */
#ifndef MS_CONN_H
#define MS_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_buf.h"

/* Read chunk size: one read callback delivers at most this much plaintext. */
#define MS_CONN_READ_MAX 65536
/* Longest text kept in t->error. */
#define MS_CONN_ERROR_MAX 128

struct ms_conn_cb {
    void (*on_connect)(void *arg, int err);                  /* client: connected, or not
                                                              * (MS_EIO); NULL otherwise */
    void (*on_read)(void *arg, const char *buf, size_t len); /* plaintext */
    void (*on_tls)(void *arg, int err);                      /* handshake done (0), failed
                                                              * (MS_EPROTO), or done with a
                                                              * certificate the policy
                                                              * refuses (MS_ECERT) */
    void (*on_drain)(void *arg);                             /* all output written */
    void (*on_error)(void *arg, int err);                    /* EOF or broken */
    void (*on_close)(void *arg);                             /* closed: free the owner */
};

/* What the owner may read (and a test may set); the rest is private. */
struct ms_conn {
    struct ms_conn_cb cb;
    void *arg;
    struct sockaddr_storage peer; /* the other end; AF_UNIX: the socket's path */
    struct sockaddr_storage local; /* a TCP client's own address once connected
                                    * (ss_family 0 before, or when unknown) */
    int tls;                      /* 1 once a TLS handshake completed and was accepted */
    int tls_verified;             /* client: the server's chain verified and named
                                   * the policy's host, or a TLSA record of its
                                   * policy matched it */
    int tls_dane;                 /* client: authenticated by a TLSA record
                                   * (tls_verified is then 1 too) */
    int tls_cert_error;           /* client, not verified: why, an enum
                                   * ms_tls_cert_error (TLS reports tell these
                                   * apart, RFC 8460 §4.3.2.1) */
    char tls_version[16];         /* "TLSv1.3" */
    char tls_cipher[64];
    char error[MS_CONN_ERROR_MAX]; /* why the last failure, "" before one */
    int reading;
    int closing;
};

/* Accept a connection from `server` into a new TCP transport (not reading
 * yet).  Returns NULL (and logs) when accept fails. */
struct ms_conn *ms_conn_accept(uv_stream_t *server, const struct ms_conn_cb *cb,
                                         void *arg);

/*
 * Connect to addr (AF_INET, AF_INET6, or AF_UNIX with a NUL-terminated
 * sun_path): 0 and the transport in *out, whose cb.on_connect (required)
 * then says whether it worked; reading starts when the owner asks.  Or
 * MS_EIO at once, the reason in err, no transport and no callback.
 * Aborting or closing it before on_connect cancels the attempt (no
 * on_connect).  A program that connects takes a function of this type,
 * so that its tests can hand it one end of a memory pair instead.
 */
typedef int ms_conn_connect_fn(uv_loop_t *loop, const struct sockaddr *addr,
                                    const struct ms_conn_cb *cb, void *arg,
                                    struct ms_conn **out, char *err, size_t errlen);
ms_conn_connect_fn ms_conn_connect;

/* Deliver what arrives through cb.on_read; MS_EIO when the socket will
 * not read (t->error says why).  Stopping holds input in the kernel (or,
 * for memory, in the transport) until reading starts again. */
int ms_conn_read_start(struct ms_conn *t);
void ms_conn_read_stop(struct ms_conn *t);

/*
 * Send plaintext (through TLS once it is up).  What the kernel does not
 * take at once is queued and counted in ms_conn_pending(); cb.on_drain
 * says when the queue has emptied (only after something was queued).
 * Returns 0, MS_EAGAIN during a TLS handshake, MS_ECLOSED once closing, or
 * MS_EIO / MS_EPROTO when the connection is broken (t->error says why).
 *   ms_conn_write: buf is copied as far as needed; reuse it at once.
 *   ms_conn_write_ref: buf is not copied; it must stay as it is until
 *     ms_conn_pending() is 0 or cb.on_drain or cb.on_close has run
 *     (a message body: no copy of it on the way out).
 *   ms_conn_write_secret: like write, and every copy of buf the
 *     transport makes in plaintext is wiped once sent (credentials).
 */
int ms_conn_write(struct ms_conn *t, const char *buf, size_t len);
int ms_conn_write_ref(struct ms_conn *t, const char *buf, size_t len);
int ms_conn_write_secret(struct ms_conn *t, const char *buf, size_t len);
/* a then b, neither copied (as ms_conn_write_ref), in one system call on a
 * socket (writev; through TLS, one flush): the end of a message body and
 * its terminator leave as one segment, with no Nagle wait between them. */
int ms_conn_write2_ref(struct ms_conn *t, const char *a, size_t alen, const char *b,
                       size_t blen);
/* Octets written, not yet sent. */
size_t ms_conn_pending(const struct ms_conn *t);

/* Octets the owner read before ms_conn_tls_accept() that belong to
 * the TLS stream (a ClientHello that came in one segment with a PROXY
 * header): processed as if just read, callbacks included.  Only right
 * after ms_conn_tls_accept(); never for STARTTLS, where early octets
 * are discarded (RFC 3207 §5). */
void ms_conn_unread(struct ms_conn *t, const char *buf, size_t len);

/* Flush and close (TLS: close_notify first, when the handshake was
 * accepted), then cb.on_close.  Reading stops at once. */
void ms_conn_close(struct ms_conn *t);
/* Close at once: queued output is dropped, no close_notify; then
 * cb.on_close.  What a client does that has nothing more to say. */
void ms_conn_abort(struct ms_conn *t);

/* ---- memory (tests) ---- */

/* One memory transport with the test as its peer: ms_conn_mem_input()
 * feeds bytes as if the peer sent them (delivered at once when reading,
 * else kept until read_start); everything written is appended to
 * *ms_conn_mem_output().  Nothing is ever pending. */
struct ms_conn *ms_conn_mem_new(uv_loop_t *loop, const struct ms_conn_cb *cb,
                                          void *arg);
void ms_conn_mem_input(struct ms_conn *t, const char *buf, size_t len);
struct ms_buf *ms_conn_mem_output(struct ms_conn *t);

/* Two memory transports, each the other's peer: what one writes the other
 * reads on a later loop turn (callbacks never nest), and it counts as
 * pending for the writer until then.  An end whose cb.on_connect is set
 * gets on_connect(0) on the first turn.  When one end closes, the other
 * reads what was sent and then gets on_error(MS_ECLOSED); writing to a
 * closed peer fails with MS_ECLOSED.  Their mem_output stays empty. */
void ms_conn_mem_pair(uv_loop_t *loop, const struct ms_conn_cb *cb_a, void *arg_a,
                           const struct ms_conn_cb *cb_b, void *arg_b,
                           struct ms_conn **a, struct ms_conn **b);

/* ---- TLS ---- */

struct ms_tls_ctx;

/* A server: TLS 1.2 with MS_TLS_CIPHERS_DEF (ECDHE key exchange and AEAD
 * ciphers only, RFC 9325 4.2) and TLS 1.3 with OpenSSL's suites (all AEAD). */
#define MS_TLS_CIPHERS_DEF                                                                     \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define MS_TLS_CERTS_MAX 64
#define MS_TLS_NAMES_MAX 64 /* names per certificate taken for SNI */
/* Longest host name a client checks (a DNS name: RFC 1035 §2.3.4). */
#define MS_TLS_HOST_MAX 255

/* One certificate: chain and key in PEM files, and the host names it is
 * chosen for by SNI (RFC 6066 3).  names NULL: the DNS names of its
 * subjectAltName (else its CN), "*.example.com" matching one label. */
struct ms_tls_cert {
    const char *label; /* for messages: "default", the [tls.NAME] */
    const char *cert, *key;
    const char *names; /* comma or space separated, or NULL */
};

/*
 * A server context over certs[0] (the default: no SNI, or no match) and
 * certs[1..n-1] chosen by the name the client asks for.  ciphers NULL:
 * MS_TLS_CIPHERS_DEF.  Returns NULL with the reason in err.
 *
 * Every context is reference-counted (atomically: any thread may hold
 * one): a transport takes a reference when it starts TLS and drops it
 * when it closes, so the owner can replace and free its context (SIGHUP
 * reload) while connections still use or negotiate with the old one.
 */
struct ms_tls_ctx *ms_tls_ctx_new_server(const struct ms_tls_cert *certs, size_t n,
                                         const char *ciphers, char *err, size_t errlen);

/* A client context: the CAs a server's chain is verified against, from
 * ca_file (PEM), or the system's when NULL or "".  OpenSSL's protocol
 * versions and ciphers: opportunistic TLS takes what it gets (RFC 7435).
 * Returns NULL with the reason in err. */
struct ms_tls_ctx *ms_tls_ctx_new_client(const char *ca_file, char *err, size_t errlen);

struct ms_tls_ctx *ms_tls_ctx_ref(struct ms_tls_ctx *ctx);
/* Drop a reference (the owner's, or a transport's); NULL is fine. */
void ms_tls_ctx_free(struct ms_tls_ctx *ctx);

/* Start TLS as the server over ctx (a server context).  0, then
 * cb.on_tls once the client's handshake is done; MS_EINVAL (a client
 * context, TLS already started) or MS_ENOMEM. */
int ms_conn_tls_accept(struct ms_conn *t, struct ms_tls_ctx *ctx);

/* How a client judges the server's certificate.  The chain is always
 * checked against the context's CAs and the host name (OpenSSL's
 * X509_VERIFY_PARAM host and IP checks, RFC 6125 §6), and the answer kept
 * in t->tls_verified; the level says whether a failed check ends it. */
enum ms_tls_verify {
    MS_TLS_VERIFY_NONE, /* encrypt whatever the certificate */
    MS_TLS_VERIFY_PEER  /* the chain and the host name must verify, else
                         * on_tls(MS_ECERT) with the reason in t->error */
};

/* Why a client did not verify the server's certificate. */
enum ms_tls_cert_error {
    MS_TLS_CERT_OK,
    MS_TLS_CERT_NAME,      /* the chain verified, the name did not match */
    MS_TLS_CERT_EXPIRED,   /* a certificate of the chain expired */
    MS_TLS_CERT_UNTRUSTED, /* no chain to a trust anchor (self-signed, unknown CA) */
    MS_TLS_CERT_DANE,      /* DANE: no TLSA record matched */
    MS_TLS_CERT_OTHER,     /* anything else (no certificate, no name to check) */
};

/* Names a certificate may carry instead of the host (a policy's match=
 * list), and TLSA records per connection: named limits. */
#define MS_TLS_MATCH_MAX 16
#define MS_TLS_TLSA_MAX 32
/* Longest TLSA certificate association data we take: a SHA2-512 digest is
 * 64 octets; a full certificate or key (matching type 0) a few KiB. */
#define MS_TLS_TLSA_DATA_MAX 4096

/* One TLSA record (RFC 6698 §2.1): certificate usage, selector, matching
 * type, certificate association data.  The caller keeps only the records
 * RFC 7672 §3.1.3 calls usable for SMTP (DANE-TA(2), DANE-EE(3)); data is
 * the caller's until ms_conn_tls_connect() returns (OpenSSL copies it). */
struct ms_tlsa {
    uint8_t usage, selector, mtype;
    const unsigned char *data;
    size_t len;
};

/* The client's side of one handshake.  A struct, so that ways to
 * authenticate a server (DANE TLSA records, MTA-STS names) are fields
 * here, not more arguments. */
struct ms_tls_policy {
    const char *host;          /* the server's name: a DNS name, sent as SNI (RFC
                                * 6066 §3) and matched against the certificate,
                                * or an IP literal, matched against its iPAddress
                                * names (no SNI); NULL or "": neither (only
                                * MS_TLS_VERIFY_NONE) */
    enum ms_tls_verify verify;
    /* DNS names the certificate must carry one of, instead of host (host is
     * still the SNI): Postfix's match= (docs/config.md, [tls]).  A name
     * with a leading dot, ".example.org", matches every name below
     * example.org (OpenSSL's X509_check_host rule).  NULL/0: host. */
    const char *const *match;
    size_t nmatch;
    /* DANE (RFC 7672 §3.1): usable TLSA records of host, validated by
     * DNSSEC.  When there are any, the chain is judged by them alone, not
     * by the context's CAs: DANE-EE(3) matches the server's certificate or
     * key and checks no name (§3.1.1); DANE-TA(2) matches a trust anchor in
     * the chain the server sent and then checks host or a match name
     * (§3.2.2).  t->tls_dane says when they authenticated the peer.
     * NULL/0: no DANE. */
    const struct ms_tlsa *tlsa;
    size_t ntlsa;
};

/* Start TLS as the client over ctx (a client context), by policy (NULL:
 * no name, MS_TLS_VERIFY_NONE).  The ClientHello goes out at once.  0,
 * then cb.on_tls; MS_EINVAL (a server context, TLS already started, a
 * host over MS_TLS_HOST_MAX, MS_TLS_VERIFY_PEER without a host, more than
 * MS_TLS_MATCH_MAX names or MS_TLS_TLSA_MAX records, a name OpenSSL will
 * not take, TLSA records of which OpenSSL can use none), MS_ENOMEM, or
 * MS_EIO / MS_EPROTO when the ClientHello could not be sent. */
int ms_conn_tls_connect(struct ms_conn *t, struct ms_tls_ctx *ctx,
                             const struct ms_tls_policy *policy);

#endif
