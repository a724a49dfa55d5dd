/*
 * test_ms_conn.c - lib/core/ms_conn.c: the memory transport alone (the
 * fake both programs' tests talk to) and in pairs; TLS between two paired
 * memory transports and over real loopback TCP, with certificates made at
 * run time (unit_tls.h): server start with SNI, client start with the
 * host name checked (DNS name and IP literal), a name or a CA that does
 * not verify, a failed handshake; match= names and DANE TLSA records
 * (RFC 7672: DANE-EE and DANE-TA, a record that matches nothing); connecting over TCP and to a
 * UNIX-domain socket.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <sys/un.h>

#include "ms_conn.h"
#include "ms_error.h"
#include "unit_tls.h"

/* What one end saw. */
struct end {
    struct ms_conn *c;
    struct ms_buf got; /* plaintext read */
    int connected;     /* on_connect: 1 ok, -1 failed */
    int tls;           /* on_tls: 1 ok, else the error */
    int error;         /* on_error's code */
    int drains, closed;
};

static void on_connect(void *arg, int err)
{
    struct end *e = arg;

    e->connected = err == 0 ? 1 : -1;
}

static void on_read(void *arg, const char *buf, size_t len)
{
    struct end *e = arg;

    assert_int_equal(ms_buf_append(&e->got, buf, len), 0);
}

static void on_tls(void *arg, int err)
{
    struct end *e = arg;

    e->tls = err == 0 ? 1 : err;
}

static void on_drain(void *arg)
{
    ((struct end *)arg)->drains++;
}

static void on_error(void *arg, int err)
{
    struct end *e = arg;

    assert_int_equal(e->error, 0); /* reported once */
    e->error = err;
}

static void on_close(void *arg)
{
    struct end *e = arg;

    e->closed++;
    e->c = NULL;
}

static const struct ms_conn_cb cb = {
    .on_read = on_read,
    .on_tls = on_tls,
    .on_drain = on_drain,
    .on_error = on_error,
    .on_close = on_close,
};

static const struct ms_conn_cb cb_connect = {
    .on_connect = on_connect,
    .on_read = on_read,
    .on_tls = on_tls,
    .on_drain = on_drain,
    .on_error = on_error,
    .on_close = on_close,
};

/* Certificates shared by every test: made once. */
static char *dir;
static struct ms_tls_ctx *server_ctx, *client_ctx, *stranger_ctx;

static int group_setup(void **state)
{
    (void)state;
    dir = unit_tls_dir();
    unit_tls_ca(dir, "ca");
    unit_tls_ca(dir, "ca2"); /* one the client does not know */
    unit_tls_leaf(dir, "mx", "ca", "DNS:mx.test,DNS:*.wild.test,IP:127.0.0.1");
    unit_tls_leaf(dir, "other", "ca", "DNS:other.test");
    server_ctx = unit_tls_server(dir, "mx", "other");
    client_ctx = unit_tls_client(dir, "ca");
    stranger_ctx = unit_tls_client(dir, "ca2");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ms_tls_ctx_free(server_ctx);
    ms_tls_ctx_free(client_ctx);
    ms_tls_ctx_free(stranger_ctx);
    unit_tls_rmdir(dir);
    return 0;
}

struct fixture {
    uv_loop_t loop;
    struct end a, b;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    uv_loop_init(&f->loop);
    ms_buf_init(&f->a.got, 8 << 20);
    ms_buf_init(&f->b.got, 8 << 20);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->a.c)
        ms_conn_abort(f->a.c);
    if (f->b.c)
        ms_conn_abort(f->b.c);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    ms_buf_free(&f->a.got);
    ms_buf_free(&f->b.got);
    free(f);
    return 0;
}

/* Run the loop, one turn at a time, until `cond` holds (bounded: a test
 * that waits for what never comes fails instead of hanging). */
#define RUN_UNTIL(f, cond)                                                                     \
    do {                                                                                       \
        int i_;                                                                                \
        for (i_ = 0; i_ < 100000 && !(cond); i_++)                                             \
            uv_run(&(f)->loop, UV_RUN_NOWAIT);                                                 \
        assert_true(cond);                                                                     \
    } while (0)

static void pair(struct fixture *f)
{
    ms_conn_mem_pair(&f->loop, &cb, &f->a, &cb, &f->b, &f->a.c, &f->b.c);
    assert_int_equal(ms_conn_read_start(f->a.c), 0);
    assert_int_equal(ms_conn_read_start(f->b.c), 0);
}

static int got_is(const struct end *e, const char *s)
{
    return e->got.len == strlen(s) && memcmp(e->got.data, s, e->got.len) == 0;
}

/* ---- memory ---- */

/* The fake a test talks to: output appended, input delivered at once. */
static void test_mem_fake(void **state)
{
    struct fixture *f = *state;
    struct ms_buf *out;

    f->a.c = ms_conn_mem_new(&f->loop, &cb, &f->a);
    out = ms_conn_mem_output(f->a.c);
    ms_conn_mem_input(f->a.c, "EHLO x\r\n", 8);
    assert_int_equal(f->a.got.len, 0); /* kept until reading starts */
    assert_int_equal(ms_conn_read_start(f->a.c), 0);
    assert_true(got_is(&f->a, "EHLO x\r\n"));
    ms_conn_read_stop(f->a.c);
    ms_conn_mem_input(f->a.c, "QUIT\r\n", 6);
    assert_true(got_is(&f->a, "EHLO x\r\n"));
    assert_int_equal(ms_conn_read_start(f->a.c), 0);
    assert_true(got_is(&f->a, "EHLO x\r\nQUIT\r\n"));
    assert_int_equal(ms_conn_write(f->a.c, "250 ok\r\n", 8), 0);
    assert_int_equal(out->len, 8);
    assert_memory_equal(out->data, "250 ok\r\n", 8);
    assert_int_equal(ms_conn_pending(f->a.c), 0);
    ms_conn_close(f->a.c);
    assert_int_equal(ms_conn_write(f->a.c, "x", 1), MS_ECLOSED);
    assert_int_equal(f->a.closed, 0); /* from the loop, not from close */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->a.closed, 1);
}

/* A pair: a later turn delivers, output is pending until then, and a
 * closed end is an end of stream for the other. */
static void test_mem_pair(void **state)
{
    struct fixture *f = *state;

    ms_conn_mem_pair(&f->loop, &cb_connect, &f->a, &cb, &f->b, &f->a.c, &f->b.c);
    assert_int_equal(f->a.connected, 0);
    assert_int_equal(ms_conn_read_start(f->b.c), 0);
    assert_int_equal(ms_conn_write(f->a.c, "abc", 3), 0);
    assert_int_equal(ms_conn_write_ref(f->a.c, "def", 3), 0);
    assert_int_equal(ms_conn_write2_ref(f->a.c, "gh", 2, "ij", 2), 0);
    assert_int_equal(ms_conn_pending(f->a.c), 10);
    assert_int_equal(f->b.got.len, 0); /* never from inside the call */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->a.connected, 1);
    assert_true(got_is(&f->b, "abcdefghij"));
    assert_int_equal(ms_conn_pending(f->a.c), 0);
    assert_int_equal(f->a.drains, 1);
    assert_int_equal(ms_conn_read_start(f->a.c), 0);
    assert_int_equal(ms_conn_write(f->b.c, "250", 3), 0);
    ms_conn_close(f->b.c); /* what it wrote still arrives, then the end */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(got_is(&f->a, "250"));
    assert_int_equal(f->a.error, MS_ECLOSED);
    assert_string_equal(f->a.c->error, "connection closed");
    assert_int_equal(f->b.closed, 1);
    assert_int_equal(ms_conn_write(f->a.c, "x", 1), MS_EIO); /* broken now */
}

/* ---- TLS between two memory transports ---- */

/* Client a, server b: start TLS on both and run the handshake. */
static void handshake(struct fixture *f, struct ms_tls_ctx *cctx, const char *host,
                      enum ms_tls_verify verify)
{
    struct ms_tls_policy p = {.host = host, .verify = verify};

    pair(f);
    assert_int_equal(ms_conn_tls_accept(f->b.c, server_ctx), 0);
    assert_int_equal(ms_conn_tls_connect(f->a.c, cctx, &p), 0);
    assert_int_equal(ms_conn_write(f->a.c, "x", 1), MS_EAGAIN); /* handshaking */
    RUN_UNTIL(f, f->a.tls);
}

static void test_tls_verified(void **state)
{
    struct fixture *f = *state;
    size_t big = 3 << 20, i;
    char *data = malloc(big);

    handshake(f, client_ctx, "mx.test", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, 1);
    RUN_UNTIL(f, f->b.tls);
    assert_int_equal(f->b.tls, 1);
    assert_true(f->a.c->tls && f->a.c->tls_verified && f->b.c->tls);
    assert_string_equal(f->a.c->tls_version, "TLSv1.3");
    assert_string_equal(f->a.c->tls_cipher, f->b.c->tls_cipher);
    /* Both ways, and a write larger than a TLS record or a flush on the
     * stack: it arrives whole and in order. */
    assert_int_equal(ms_conn_write(f->b.c, "220 ready\r\n", 11), 0);
    for (i = 0; i < big; i++)
        data[i] = (char)(i * 7 + i / 1000);
    assert_int_equal(ms_conn_write_secret(f->a.c, "AUTH\r\n", 6), 0);
    assert_int_equal(ms_conn_write_ref(f->a.c, data, big), 0);
    assert_int_equal(ms_conn_write2_ref(f->a.c, data, 1000, ".\r\n", 3), 0);
    assert_true(ms_conn_pending(f->a.c) > big);
    RUN_UNTIL(f, f->b.got.len >= big + 6 + 1003 || f->b.error);
    assert_true(got_is(&f->a, "220 ready\r\n"));
    assert_int_equal(f->b.got.len, big + 6 + 1003);
    assert_memory_equal(f->b.got.data, "AUTH\r\n", 6);
    assert_memory_equal(f->b.got.data + 6, data, big);
    assert_memory_equal(f->b.got.data + 6 + big, data, 1000);
    assert_memory_equal(f->b.got.data + 6 + big + 1000, ".\r\n", 3);
    RUN_UNTIL(f, ms_conn_pending(f->a.c) == 0);
    /* A close sends close_notify: an orderly end for the other side. */
    ms_conn_close(f->a.c);
    RUN_UNTIL(f, f->b.error);
    assert_int_equal(f->b.error, MS_ECLOSED);
    assert_non_null(strstr(f->b.c->error, "close_notify"));
    free(data);
}

/* SNI picks the second certificate: only it names other.test. */
static void test_tls_sni(void **state)
{
    struct fixture *f = *state;

    handshake(f, client_ctx, "other.test", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, 1);
    assert_true(f->a.c->tls_verified);
}

/* A wildcard in the certificate names one label (RFC 6125 §6.4.3). */
static void test_tls_wildcard(void **state)
{
    struct fixture *f = *state;

    handshake(f, client_ctx, "mail.wild.test", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, 1);
}

/* An IP literal is checked against the iPAddress names. */
static void test_tls_ip_literal(void **state)
{
    struct fixture *f = *state;

    handshake(f, client_ctx, "127.0.0.1", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, 1);
    assert_true(f->a.c->tls_verified);
}

static void test_tls_ip_literal_mismatch(void **state)
{
    struct fixture *f = *state;

    handshake(f, client_ctx, "127.0.0.2", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_non_null(strstr(f->a.c->error, "IP address mismatch"));
}

/* `verify`: a certificate not for the name ends it; without, the
 * connection is encrypted and says it is not verified. */
static void test_tls_name_mismatch(void **state)
{
    struct fixture *f = *state;

    handshake(f, client_ctx, "wrong.test", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_false(f->a.c->tls);
    assert_false(f->a.c->tls_verified);
    assert_non_null(strstr(f->a.c->error, "hostname mismatch"));
    assert_int_equal(ms_conn_write(f->a.c, "x", 1), MS_EPROTO);
}

static void test_tls_name_mismatch_unverified(void **state)
{
    struct fixture *f = *state;

    handshake(f, client_ctx, "wrong.test", MS_TLS_VERIFY_NONE);
    assert_int_equal(f->a.tls, 1);
    assert_true(f->a.c->tls);
    assert_false(f->a.c->tls_verified);
    assert_non_null(strstr(f->a.c->error, "hostname mismatch"));
    assert_int_equal(ms_conn_write(f->a.c, "EHLO\r\n", 6), 0);
    RUN_UNTIL(f, f->b.got.len > 0);
    assert_true(got_is(&f->b, "EHLO\r\n"));
}

/* A chain to a CA the client does not trust. */
static void test_tls_unknown_ca(void **state)
{
    struct fixture *f = *state;

    handshake(f, stranger_ctx, "mx.test", MS_TLS_VERIFY_PEER);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_non_null(strstr(f->a.c->error, "issuer certificate"));
}

/* The other side does not speak TLS: the handshake fails, the reason is
 * kept.  A server's handshake fails on plaintext too. */
static void test_tls_handshake_fails(void **state)
{
    struct fixture *f = *state;
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_NONE};
    struct ms_conn *srv;
    struct end e = {0};

    pair(f);
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &p), 0);
    RUN_UNTIL(f, f->b.got.len > 0); /* the ClientHello */
    assert_int_equal((unsigned char)f->b.got.data[0], 0x16); /* a handshake record */
    assert_int_equal(ms_conn_write(f->b.c, "220 plaintext here\r\n", 20), 0);
    RUN_UNTIL(f, f->a.tls);
    assert_int_equal(f->a.tls, MS_EPROTO);
    assert_true(f->a.c->error[0] != '\0');
    assert_false(f->a.c->tls);

    ms_buf_init(&e.got, 1024);
    srv = e.c = ms_conn_mem_new(&f->loop, &cb, &e);
    assert_int_equal(ms_conn_tls_accept(srv, server_ctx), 0);
    assert_int_equal(ms_conn_read_start(srv), 0);
    ms_conn_mem_input(srv, "EHLO client.example\r\n", 21);
    assert_int_equal(e.tls, MS_EPROTO);
    assert_int_equal(e.got.len, 0);
    ms_conn_close(srv); /* no close_notify after a failed handshake */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(e.closed, 1);
    ms_buf_free(&e.got);
}

static void test_tls_misuse(void **state)
{
    struct fixture *f = *state;
    struct ms_tls_policy none = {.host = NULL, .verify = MS_TLS_VERIFY_PEER};
    struct ms_tls_policy ok = {.host = "mx.test", .verify = MS_TLS_VERIFY_PEER};
    char longname[MS_TLS_HOST_MAX + 2];

    pair(f);
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(ms_conn_tls_accept(f->b.c, client_ctx), MS_EINVAL);
    assert_int_equal(ms_conn_tls_connect(f->a.c, server_ctx, &ok), MS_EINVAL);
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &none), MS_EINVAL);
    ok.host = longname;
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &ok), MS_EINVAL);
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, NULL), 0); /* no name, no check */
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, NULL), MS_EINVAL); /* started */
    assert_int_equal(ms_conn_tls_accept(f->b.c, server_ctx), 0);
    RUN_UNTIL(f, f->a.tls);
    assert_int_equal(f->a.tls, 1);
    assert_false(f->a.c->tls_verified); /* nothing named, so nothing verified for a name */
}

/* ---- match= names and DANE (RFC 7672) ---- */

/* Client a, server b, with a whole policy. */
static void handshake_policy(struct fixture *f, struct ms_tls_ctx *cctx,
                             const struct ms_tls_policy *p)
{
    pair(f);
    assert_int_equal(ms_conn_tls_accept(f->b.c, server_ctx), 0);
    assert_int_equal(ms_conn_tls_connect(f->a.c, cctx, p), 0);
    RUN_UNTIL(f, f->a.tls);
}

/* Close both ends and forget what they saw, for the next handshake. */
static void reset(struct fixture *f)
{
    if (f->a.c)
        ms_conn_abort(f->a.c);
    if (f->b.c)
        ms_conn_abort(f->b.c);
    RUN_UNTIL(f, f->a.c == NULL && f->b.c == NULL);
    f->a.tls = f->b.tls = f->a.error = f->b.error = 0;
    f->a.got.len = f->b.got.len = 0;
}

/* match=: one of the names, not the host, must be in the certificate; a
 * leading dot matches every name below (mx.test is below .test). */
static void test_tls_match_names(void **state)
{
    struct fixture *f = *state;
    const char *ok[] = {"nothere.test", "mx.test"}, *below[] = {".test"}, *bad[] = {"x.test"};
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_PEER};

    p.match = ok;
    p.nmatch = 2;
    handshake_policy(f, client_ctx, &p);
    assert_int_equal(f->a.tls, 1);
    assert_true(f->a.c->tls_verified);
    assert_false(f->a.c->tls_dane);
    reset(f);
    p.match = below;
    p.nmatch = 1;
    handshake_policy(f, client_ctx, &p);
    assert_int_equal(f->a.tls, 1);
    reset(f);
    p.match = bad; /* the host would verify; the match list replaces it */
    handshake_policy(f, client_ctx, &p);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_non_null(strstr(f->a.c->error, "hostname mismatch"));
    assert_int_equal(f->a.c->tls_cert_error, MS_TLS_CERT_NAME); /* RFC 8460 §4.3.2.1 */
}

/* Why a certificate was not verified, as TLS reports sort it (RFC 8460
 * §4.3.2.1): no chain to our CAs is "not trusted", whatever the name. */
static void test_tls_cert_error_untrusted(void **state)
{
    struct fixture *f = *state;
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_NONE};

    handshake_policy(f, stranger_ctx, &p);
    assert_int_equal(f->a.tls, 1); /* encrypt-only: kept */
    assert_false(f->a.c->tls_verified);
    assert_int_equal(f->a.c->tls_cert_error, MS_TLS_CERT_UNTRUSTED);
    reset(f);
    p.verify = MS_TLS_VERIFY_PEER;
    handshake_policy(f, stranger_ctx, &p);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_int_equal(f->a.c->tls_cert_error, MS_TLS_CERT_UNTRUSTED);
}

/* The TLSA data for the server's "mx" certificate: its DER (selector 0)
 * or its SubjectPublicKeyInfo (selector 1), whole (matching type 0),
 * SHA2-256 (1) or SHA2-512 (2). */
static size_t tlsa_data(const char *name, int selector, int mtype, unsigned char *out)
{
    X509 *x;
    EVP_PKEY *key;
    unsigned char *der = NULL;
    unsigned int dlen = 0;
    int n;

    unit_tls_read(dir, name, &x, &key);
    n = selector == 0 ? i2d_X509(x, &der) : i2d_PUBKEY(X509_get0_pubkey(x), &der);
    assert_true(n > 0 && n <= MS_TLS_TLSA_DATA_MAX);
    if (mtype == 0) {
        memcpy(out, der, (size_t)n);
        dlen = (unsigned)n;
    } else {
        assert_int_equal(EVP_Digest(der, (size_t)n, out, &dlen,
                                    mtype == 2 ? EVP_sha512() : EVP_sha256(), NULL),
                         1);
    }
    OPENSSL_free(der);
    X509_free(x);
    EVP_PKEY_free(key);
    return dlen;
}

/* DANE-EE(3): the record alone authenticates, whatever CA signed the
 * certificate (the client knows only ca2) and whatever names it carries
 * (RFC 7672 §3.1.1): every selector (certificate, key) and matching type
 * (whole, SHA2-256, SHA2-512) of RFC 6698 §2.1, as OpenSSL's own DANE
 * tests go through them. */
static void test_tls_dane_ee(void **state)
{
    struct fixture *f = *state;
    static unsigned char d[MS_TLS_TLSA_DATA_MAX];
    struct ms_tlsa rr = {3, 1, 1, d, 0};
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_PEER, .tlsa = &rr,
                              .ntlsa = 1};
    int sel, mtype;

    for (sel = 0; sel <= 1; sel++)
        for (mtype = 0; mtype <= 2; mtype++) {
            rr.selector = (uint8_t)sel;
            rr.mtype = (uint8_t)mtype;
            rr.len = tlsa_data("mx", sel, mtype, d);
            handshake_policy(f, stranger_ctx, &p);
            assert_int_equal(f->a.tls, 1);
            assert_true(f->a.c->tls_verified);
            assert_true(f->a.c->tls_dane);
            reset(f);
        }
}

/* DANE-TA(2): the CA named by the record; the name is then checked
 * (RFC 7672 §3.2.2), so another name fails. */
static void test_tls_dane_ta(void **state)
{
    struct fixture *f = *state;
    static unsigned char d[MS_TLS_TLSA_DATA_MAX];
    struct ms_tlsa rr = {2, 0, 0, d, 0};
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_PEER, .tlsa = &rr,
                              .ntlsa = 1};

    rr.len = tlsa_data("ca", 0, 0, d);
    handshake_policy(f, stranger_ctx, &p);
    assert_int_equal(f->a.tls, 1);
    assert_true(f->a.c->tls_dane);
    reset(f);
    p.host = "wrong.test"; /* the server's default certificate: mx.test */
    handshake_policy(f, stranger_ctx, &p);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_false(f->a.c->tls_dane);
}

/* A record that matches nothing: refused even though the chain would
 * verify by the CAs (DANE replaces PKIX, RFC 7672 §2.2); encrypt-only
 * policy keeps the connection but says it is not authenticated. */
static void test_tls_dane_mismatch(void **state)
{
    struct fixture *f = *state;
    unsigned char d[32];
    struct ms_tlsa rr = {3, 1, 1, d, sizeof(d)};
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_PEER, .tlsa = &rr,
                              .ntlsa = 1};

    memset(d, 0x5a, sizeof(d));
    handshake_policy(f, client_ctx, &p);
    assert_int_equal(f->a.tls, MS_ECERT);
    assert_false(f->a.c->tls_verified);
    assert_false(f->a.c->tls_dane);
    reset(f);
    p.verify = MS_TLS_VERIFY_NONE;
    handshake_policy(f, client_ctx, &p);
    assert_int_equal(f->a.tls, 1);
    assert_false(f->a.c->tls_verified);
    assert_int_equal(f->a.c->tls_cert_error, MS_TLS_CERT_DANE);
}

/* Records OpenSSL cannot use, too many, or no host: refused at once. */
static void test_tls_dane_misuse(void **state)
{
    struct fixture *f = *state;
    unsigned char d[32] = {0};
    struct ms_tlsa rr = {3, 1, 255, d, sizeof(d)}; /* an unknown matching type */
    struct ms_tls_policy p = {.host = "mx.test", .verify = MS_TLS_VERIFY_PEER, .tlsa = &rr,
                              .ntlsa = 1};

    pair(f);
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &p), MS_EINVAL);
    reset(f);
    pair(f);
    p.ntlsa = MS_TLS_TLSA_MAX + 1;
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &p), MS_EINVAL);
    p.ntlsa = 1;
    p.host = NULL;
    p.verify = MS_TLS_VERIFY_NONE;
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &p), MS_EINVAL);
}

/* ---- sockets ---- */

struct tcp_fixture {
    struct fixture *f;
    uv_tcp_t listener;
};

static void on_connection(uv_stream_t *server, int status)
{
    struct tcp_fixture *tf = server->data;

    assert_int_equal(status, 0);
    tf->f->b.c = ms_conn_accept(server, &cb, &tf->f->b);
    assert_non_null(tf->f->b.c);
    assert_int_equal(ms_conn_tls_accept(tf->f->b.c, server_ctx), 0);
    assert_int_equal(ms_conn_read_start(tf->f->b.c), 0);
}

/* A listener on a free loopback port whose connections on_conn takes as
 * f->b, and f->a connected to it. */
static void tcp_pair(struct fixture *f, struct tcp_fixture *tf, uv_connection_cb on_conn)
{
    struct sockaddr_storage addr;
    int len = sizeof(addr);
    char err[128];

    uv_tcp_init(&f->loop, &tf->listener);
    tf->listener.data = tf;
    uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&addr);
    assert_int_equal(uv_tcp_bind(&tf->listener, (struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&tf->listener, 8, on_conn), 0);
    assert_int_equal(uv_tcp_getsockname(&tf->listener, (struct sockaddr *)&addr, &len), 0);
    assert_int_equal(ms_conn_connect(&f->loop, (struct sockaddr *)&addr, &cb_connect, &f->a,
                                     &f->a.c, err, sizeof(err)),
                     0);
    RUN_UNTIL(f, f->a.connected);
}

/* Connect, STARTTLS-style: plaintext first, then TLS both ways. */
static void test_tcp_tls(void **state)
{
    struct fixture *f = *state;
    struct tcp_fixture tf = {.f = f};
    struct ms_tls_policy p = {.host = "127.0.0.1", .verify = MS_TLS_VERIFY_PEER};
    size_t big = 2 << 20;
    char *data = calloc(1, big);

    tcp_pair(f, &tf, on_connection);
    assert_int_equal(f->a.connected, 1);
    assert_int_equal(ms_conn_read_start(f->a.c), 0);
    assert_int_equal(ms_conn_tls_connect(f->a.c, client_ctx, &p), 0);
    RUN_UNTIL(f, f->a.tls);
    assert_int_equal(f->a.tls, 1);
    assert_true(f->a.c->tls_verified);
    memset(data, 'm', big);
    assert_int_equal(ms_conn_write_ref(f->a.c, data, big), 0);
    RUN_UNTIL(f, f->b.got.len >= big || f->b.error);
    assert_int_equal(f->b.got.len, big);
    assert_memory_equal(f->b.got.data, data, big);
    RUN_UNTIL(f, ms_conn_pending(f->a.c) == 0);
    ms_conn_close(f->a.c);
    RUN_UNTIL(f, f->b.error);
    assert_int_equal(f->b.error, MS_ECLOSED);
    ms_conn_close(f->b.c);
    uv_close((uv_handle_t *)&tf.listener, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->a.closed + f->b.closed, 2);
    free(data);
}

static void on_connection_plain(uv_stream_t *server, int status)
{
    struct tcp_fixture *tf = server->data;

    assert_int_equal(status, 0);
    tf->f->b.c = ms_conn_accept(server, &cb, &tf->f->b);
    assert_non_null(tf->f->b.c);
    assert_int_equal(ms_conn_read_start(tf->f->b.c), 0);
}

/* Two pieces in one write on a socket (ms_conn_write2_ref, writev): more
 * than the kernel takes at once, then the terminator, arrive whole and in
 * order behind what was written before, and count as pending until sent;
 * two small pieces go at once. */
static void test_tcp_write2(void **state)
{
    struct fixture *f = *state;
    struct tcp_fixture tf = {.f = f};
    size_t big = 6 << 20, i; /* more than the socket buffers, less than got's 8 MiB */
    char *data = malloc(big);

    tcp_pair(f, &tf, on_connection_plain);
    RUN_UNTIL(f, f->b.c != NULL);
    for (i = 0; i < big; i++)
        data[i] = (char)(i * 13 + i / 4093);
    assert_int_equal(ms_conn_write2_ref(f->a.c, "DATA\r\n", 6, "", 0), 0);
    assert_int_equal(ms_conn_pending(f->a.c), 0); /* taken at once */
    assert_int_equal(ms_conn_write2_ref(f->a.c, data, big, ".\r\n", 3), 0);
    assert_true(ms_conn_pending(f->a.c) > 0); /* the peer has not read yet */
    assert_int_equal(ms_conn_write_ref(f->a.c, "QUIT\r\n", 6), 0);
    RUN_UNTIL(f, f->b.got.len >= 6 + big + 3 + 6 || f->b.error);
    assert_int_equal(f->b.got.len, 6 + big + 3 + 6);
    assert_memory_equal(f->b.got.data, "DATA\r\n", 6);
    assert_memory_equal(f->b.got.data + 6, data, big);
    assert_memory_equal(f->b.got.data + 6 + big, ".\r\nQUIT\r\n", 9);
    RUN_UNTIL(f, ms_conn_pending(f->a.c) == 0);
    assert_int_equal(ms_conn_pending(f->a.c), 0);
    ms_conn_close(f->a.c);
    RUN_UNTIL(f, f->b.error);
    ms_conn_close(f->b.c);
    uv_close((uv_handle_t *)&tf.listener, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->a.closed + f->b.closed, 2);
    free(data);
}

/* Nobody listens: on_connect says so, with the reason. */
static void test_connect_fails(void **state)
{
    struct fixture *f = *state;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    char err[128];

    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/nobody.sock", dir);
    assert_int_equal(ms_conn_connect(&f->loop, (struct sockaddr *)&sun, &cb_connect, &f->a,
                                     &f->a.c, err, sizeof(err)),
                     0);
    RUN_UNTIL(f, f->a.connected);
    assert_int_equal(f->a.connected, -1);
    assert_non_null(strstr(f->a.c->error, "no such file"));
    ms_conn_abort(f->a.c);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->a.closed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mem_fake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mem_pair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_verified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_sni, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_wildcard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_ip_literal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_ip_literal_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_name_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_name_mismatch_unverified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_unknown_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_match_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_cert_error_untrusted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_dane_ee, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_dane_ta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_dane_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_dane_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_write2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_fails, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
