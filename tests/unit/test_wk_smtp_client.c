/*
 * test_wk_smtp_client.c - worker/smtp_client.c: where a REQUIRETLS
 * message may go (RFC 8689 §4.2.1, the pure decision, as a table), and the
 * client's dialogue over lib/core's memory transport (ms_conn_mem_pair)
 * with a scripted server at the other end: STARTTLS with a real handshake
 * against certificates made at run time (unit_tls.h), SNI and the name
 * check of `verify`, REQUIRETLS refused or passed on, the `may` fallback
 * to plaintext on a new connection, data injected after the 220 to
 * STARTTLS, and large bodies through DATA and BDAT.  Real servers are in
 * tests/integration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../worker/smtp_client.h"
#include "ms_conn.h"
#include "unit_tls.h"

static void test_requiretls_table(void **state)
{
    static const struct {
        int local, lmtp, verified;
        unsigned ehlo;
        enum wk_requiretls want;
    } cases[] = {
        /* Verified TLS and REQUIRETLS offered: the one way over a network. */
        {0, 0, 1, MS_EHLO_REQUIRETLS | MS_EHLO_STARTTLS, WK_REQUIRETLS_OK},
        /* Verified TLS without the keyword: 5.7.30. */
        {0, 0, 1, MS_EHLO_STARTTLS | MS_EHLO_DSN, WK_REQUIRETLS_NOT_OFFERED},
        /* No verified TLS: 5.7.10, whatever the server says it can do. */
        {0, 0, 0, MS_EHLO_REQUIRETLS, WK_REQUIRETLS_NO_TLS},
        {0, 0, 0, 0, WK_REQUIRETLS_NO_TLS},
        {0, 1, 0, MS_EHLO_REQUIRETLS, WK_REQUIRETLS_NO_TLS},
        /* LMTP: final delivery, the keyword is not needed; TLS is. */
        {0, 1, 1, 0, WK_REQUIRETLS_OK},
        /* A UNIX-domain socket: local, nothing needed. */
        {1, 1, 0, 0, WK_REQUIRETLS_OK},
        {1, 0, 0, 0, WK_REQUIRETLS_OK},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (wk_requiretls_check(cases[i].local, cases[i].lmtp, cases[i].verified,
                                cases[i].ehlo) != cases[i].want)
            fail_msg("case %zu: want %d", i, (int)cases[i].want);
}

/* ---- a scripted server over a memory pair ---- */

enum starttls_mode {
    STARTTLS_OK,      /* 220, then a TLS handshake */
    STARTTLS_GARBAGE, /* 220, then plaintext instead of a ServerHello */
    STARTTLS_INJECT,  /* 220 and a command in the same write (CVE-2011-0411) */
};

/* What every connection of one test shares: the script and the record. */
struct fake_smtp {
    const char *ehlo;     /* the EHLO reply before TLS */
    const char *ehlo_tls; /* after */
    enum starttls_mode starttls;
    int connects;
    struct ms_buf log;    /* the command lines, one per line */
    struct ms_buf data;   /* the message as it came (dot-stuffed for DATA) */
    int bdat_chunks;
    const char *data_reply; /* the reply to DATA; NULL: 354 */
    size_t body_seen;     /* octets that came after DATA's 354, ended or not */
};

/* One connection. */
struct fake_sess {
    struct fake_smtp *srv;
    struct ms_conn *c;
    struct ms_buf in;
    int tls, in_data, garbage_sent;
    size_t bdat_left;
    int bdat_last;
};

static struct ms_tls_ctx *server_ctx, *client_ctx;
static char *dir;
static struct fake_smtp *cur; /* the server fake_connect hands connections to */

static void say(struct fake_sess *x, const char *s)
{
    assert_int_equal(ms_conn_write(x->c, s, strlen(s)), 0);
}

static void sess_line(struct fake_sess *x, const char *line)
{
    struct fake_smtp *srv = x->srv;
    unsigned long n;
    char last[8];

    ms_buf_appendf(&srv->log, "%s\n", line);
    if (strncmp(line, "EHLO ", 5) == 0) {
        say(x, x->tls ? srv->ehlo_tls : srv->ehlo);
    } else if (strcmp(line, "STARTTLS") == 0) {
        if (srv->starttls == STARTTLS_INJECT) {
            say(x, "220 2.0.0 go ahead\r\n250 injected\r\n");
            return;
        }
        say(x, "220 2.0.0 go ahead\r\n");
        if (srv->starttls == STARTTLS_OK) {
            assert_int_equal(ms_conn_tls_accept(x->c, server_ctx), 0);
            x->tls = 1;
        } else {
            x->garbage_sent = -1; /* answer the ClientHello with nonsense */
        }
    } else if (strncmp(line, "MAIL FROM:", 10) == 0 || strncmp(line, "RCPT TO:", 8) == 0 ||
               strcmp(line, "RSET") == 0) {
        say(x, "250 2.1.0 Ok\r\n");
    } else if (strcmp(line, "DATA") == 0) {
        if (srv->data_reply) {
            say(x, srv->data_reply);
            return;
        }
        x->in_data = 1;
        say(x, "354 go on\r\n");
    } else if (sscanf(line, "BDAT %lu %7s", &n, last) >= 1) {
        x->bdat_left = n;
        x->bdat_last = strstr(line, " LAST") != NULL;
        srv->bdat_chunks++;
        if (n == 0)
            say(x, "250 2.0.0 Ok: queued\r\n");
    } else if (strcmp(line, "QUIT") == 0) {
        say(x, "221 2.0.0 Bye\r\n");
        ms_conn_close(x->c);
    } else {
        say(x, "502 5.5.2 what?\r\n");
    }
}

static void sess_process(struct fake_sess *x)
{
    struct fake_smtp *srv = x->srv;
    const char *p;
    char line[1024];
    size_t n;

    while (x->in.len > 0 && !x->c->closing) {
        if (x->bdat_left > 0) {
            n = x->bdat_left < x->in.len ? x->bdat_left : x->in.len;
            ms_buf_append(&srv->data, x->in.data, n);
            ms_buf_consume(&x->in, n);
            if ((x->bdat_left -= n) > 0)
                return;
            say(x, x->bdat_last ? "250 2.0.0 Ok: queued\r\n" : "250 2.0.0 chunk\r\n");
            continue;
        }
        if (x->in_data) {
            if (x->in.len > srv->body_seen)
                srv->body_seen = x->in.len;
            if ((p = memmem(x->in.data, x->in.len, "\r\n.\r\n", 5)) == NULL)
                return;
            n = (size_t)(p - x->in.data) + 2;
            ms_buf_append(&srv->data, x->in.data, n);
            ms_buf_consume(&x->in, n + 3);
            x->in_data = 0;
            say(x, "250 2.0.0 Ok: queued\r\n");
            continue;
        }
        if ((p = memmem(x->in.data, x->in.len, "\r\n", 2)) == NULL)
            return;
        n = (size_t)(p - x->in.data);
        assert_true(n < sizeof(line));
        memcpy(line, x->in.data, n);
        line[n] = '\0';
        ms_buf_consume(&x->in, n + 2);
        sess_line(x, line);
    }
}

static void sess_read(void *arg, const char *buf, size_t len)
{
    struct fake_sess *x = arg;

    if (x->garbage_sent == -1) {
        /* The ClientHello: not TLS here. */
        x->garbage_sent = 1;
        say(x, "this is not a ServerHello\r\n");
        return;
    }
    if (x->garbage_sent)
        return;
    assert_int_equal(ms_buf_append(&x->in, buf, len), 0);
    sess_process(x);
}

static void sess_tls(void *arg, int err)
{
    assert_int_equal(err, 0);
    (void)arg;
}

static void sess_error(void *arg, int err)
{
    struct fake_sess *x = arg;

    (void)err;
    ms_conn_close(x->c);
}

static void sess_close(void *arg)
{
    struct fake_sess *x = arg;

    ms_buf_free(&x->in);
    free(x);
}

static const struct ms_conn_cb sess_cb = {
    .on_read = sess_read,
    .on_tls = sess_tls,
    .on_error = sess_error,
    .on_close = sess_close,
};

/* wk_smtp_msg.connect: a memory pair whose other end is `cur`. */
static int fake_connect(uv_loop_t *loop, const struct sockaddr *addr,
                        const struct ms_conn_cb *cb, void *arg, struct ms_conn **out, char *err,
                        size_t errlen)
{
    struct fake_sess *x = calloc(1, sizeof(*x));

    (void)addr;
    (void)err;
    (void)errlen;
    x->srv = cur;
    ms_buf_init(&x->in, 8 << 20);
    ms_conn_mem_pair(loop, cb, arg, &sess_cb, x, out, &x->c);
    assert_int_equal(ms_conn_read_start(x->c), 0);
    cur->connects++;
    say(x, "220 mx.test ESMTP fake\r\n");
    return 0;
}

/* ---- fixture ---- */

struct outcome {
    int done, code, tls_fallback, try_next, fenced;
    char dsn[MS_REPLY_DSN_MAX + 1];
    char reply[WK_SMTP_REPLY_TEXT_MAX];
    char tls[WK_SMTP_TLS_INFO_MAX];
};

struct fixture {
    uv_loop_t loop;
    struct fake_smtp srv;
    struct wk_smtp_msg msg;
    const char *rcpts[1];
    struct outcome out;
};

static void done_cb(void *arg, uint64_t id, const struct wk_smtp_result *res)
{
    struct outcome *o = arg;

    assert_int_equal(id, 7);
    assert_int_equal(res->nrcpts, 1);
    o->done++;
    o->code = res->rcpts[0].code;
    o->tls_fallback = res->tls_fallback;
    o->try_next = res->try_next;
    o->fenced = res->fenced;
    snprintf(o->dsn, sizeof(o->dsn), "%s", res->rcpts[0].dsn);
    snprintf(o->reply, sizeof(o->reply), "%s", res->rcpts[0].reply);
    snprintf(o->tls, sizeof(o->tls), "%s", res->tls);
}

static int group_setup(void **state)
{
    (void)state;
    dir = unit_tls_dir();
    unit_tls_ca(dir, "ca");
    unit_tls_leaf(dir, "mx", "ca", "DNS:mx.test");
    unit_tls_leaf(dir, "other", "ca", "DNS:other.test");
    server_ctx = unit_tls_server(dir, "mx", "other");
    client_ctx = unit_tls_client(dir, "ca");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ms_tls_ctx_free(server_ctx);
    ms_tls_ctx_free(client_ctx);
    unit_tls_rmdir(dir);
    return 0;
}

#define EHLO_TLS_OFFERED "250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
#define EHLO_AFTER_TLS "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 REQUIRETLS\r\n"

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    uv_loop_init(&f->loop);
    ms_buf_init(&f->srv.log, 1 << 20);
    ms_buf_init(&f->srv.data, 64 << 20);
    f->srv.ehlo = EHLO_TLS_OFFERED;
    f->srv.ehlo_tls = EHLO_AFTER_TLS;
    cur = &f->srv;
    f->rcpts[0] = "u@other.test";
    f->msg = (struct wk_smtp_msg){
        .log_id = "TESTQID",
        .helo_name = "worker.test",
        .mail_from = "a@b.example",
        .tls = WK_TLS_VERIFY,
        .tls_ctx = client_ctx,
        .tls_name = "other.test",
        .connect = fake_connect,
        .rcpts = f->rcpts,
        .nrcpts = 1,
        .data = "Subject: t\r\n\r\nhello\r\n.dot\r\n",
        .len = 27,
    };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    ms_buf_free(&f->srv.log);
    ms_buf_free(&f->srv.data);
    free(f);
    return 0;
}

static wk_smtp *cur_session; /* the session deliver() started (for the gate) */

/* Deliver f->msg and run until the session has closed. */
static void deliver(struct fixture *f)
{
    struct sockaddr_in sin;
    struct wk_smtp_timeouts t;
    wk_smtp *s;

    wk_smtp_timeouts_default(&t);
    uv_ip4_addr("192.0.2.25", 25, &sin);
    assert_int_equal(wk_smtp_start(&f->loop, (struct sockaddr *)&sin, &t, &f->msg, done_cb,
                                   &f->out, 7, &s),
                     0);
    cur_session = s;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->out.done, 1);
    ms_buf_append(&f->srv.log, "", 1); /* a C string from here */
}

static void want_log(struct fixture *f, const char *want)
{
    if (strcmp(f->srv.log.data, want) != 0)
        fail_msg("want:\n%s\ngot:\n%s", want, f->srv.log.data);
}

/* `verify`: SNI picks the certificate for other.test (the default one
 * names mx.test only), it verifies, EHLO again over TLS, the message. */
static void test_verify_sni(void **state)
{
    struct fixture *f = *state;

    deliver(f);
    assert_int_equal(f->out.code, 250);
    assert_non_null(strstr(f->out.tls, "TLSv1.3"));
    assert_non_null(strstr(f->out.tls, " verified"));
    want_log(f, "EHLO worker.test\nSTARTTLS\nEHLO worker.test\nMAIL FROM:<a@b.example>\n"
                "RCPT TO:<u@other.test>\nDATA\nQUIT\n");
    assert_int_equal(f->srv.data.len, 28);
    assert_memory_equal(f->srv.data.data, "Subject: t\r\n\r\nhello\r\n..dot\r\n", 28);
}

/* `encrypt` takes the same certificate, unverified, and says so. */
static void test_encrypt_unverified(void **state)
{
    struct fixture *f = *state;

    f->msg.tls = WK_TLS_ENCRYPT;
    f->msg.tls_name = "wrong.test";
    deliver(f);
    assert_int_equal(f->out.code, 250);
    assert_non_null(strstr(f->out.tls, "TLSv1.3"));
    assert_null(strstr(f->out.tls, "verified"));
}

/* REQUIRETLS (RFC 8689): `may` becomes `verify`, and MAIL carries it. */
static void test_requiretls_passed_on(void **state)
{
    struct fixture *f = *state;

    f->msg.tls = WK_TLS_MAY;
    f->msg.requiretls = 1;
    deliver(f);
    assert_int_equal(f->out.code, 250);
    want_log(f, "EHLO worker.test\nSTARTTLS\nEHLO worker.test\n"
                "MAIL FROM:<a@b.example> REQUIRETLS\nRCPT TO:<u@other.test>\nDATA\nQUIT\n");
}

/* `may` and a failed handshake: a new connection without STARTTLS. */
static void test_may_fallback(void **state)
{
    struct fixture *f = *state;

    f->msg.tls = WK_TLS_MAY;
    f->srv.starttls = STARTTLS_GARBAGE;
    deliver(f);
    assert_int_equal(f->out.code, 250);
    assert_true(f->out.tls_fallback);
    assert_string_equal(f->out.tls, "");
    assert_int_equal(f->srv.connects, 2);
    want_log(f, "EHLO worker.test\nSTARTTLS\nEHLO worker.test\nMAIL FROM:<a@b.example>\n"
                "RCPT TO:<u@other.test>\nDATA\nQUIT\n");
}

/* Sessions that end without the message: what the server offers, what
 * the client does about it, and what the recipient's result says. */
static void test_refusals(void **state)
{
    static const struct {
        const char *what;
        enum wk_tls_policy tls;
        int requiretls;
        const char *tls_name, *ehlo, *ehlo_tls;
        enum starttls_mode starttls;
        int code;
        const char *dsn, *reply;
        int try_next;
        const char *log;
    } cases[] = {
        {"verify: a certificate for another name: deferred, nothing sent", WK_TLS_VERIFY, 0,
         "wrong.test", NULL, NULL, STARTTLS_OK, 0, "4.7.5",
         "not verified for wrong.test: hostname mismatch", 0,
         "EHLO worker.test\nSTARTTLS\n"},
        {"verify never falls back to plaintext", WK_TLS_VERIFY, 0, NULL, NULL, NULL,
         STARTTLS_GARBAGE, 0, "4.7.5", "TLS handshake with 192.0.2.25:25 failed", 0,
         "EHLO worker.test\nSTARTTLS\n"},
        {"RFC 3207 §5: a command that came with the 220 is refused", WK_TLS_MAY, 0, NULL, NULL,
         NULL, STARTTLS_INJECT, 0, "4.7.0", "sent data after its reply to STARTTLS", 0,
         "EHLO worker.test\nSTARTTLS\n"},
        {"REQUIRETLS, no STARTTLS at all: 5.7.10, another MX may do", WK_TLS_MAY, 1, NULL,
         "250-mx.test\r\n250 PIPELINING\r\n", NULL, STARTTLS_OK, 550, "5.7.10",
         "did not offer STARTTLS", 1, "EHLO worker.test\nQUIT\n"},
        {"REQUIRETLS, verified TLS without the keyword: 5.7.30", WK_TLS_VERIFY, 1, NULL, NULL,
         "250-mx.test\r\n250 PIPELINING\r\n", STARTTLS_OK, 550, "5.7.30",
         "does not offer REQUIRETLS", 1,
         "EHLO worker.test\nSTARTTLS\nEHLO worker.test\nQUIT\n"},
        /* It may be renewed, and waiting exposes nothing. */
        {"REQUIRETLS, a certificate that does not verify: deferred", WK_TLS_ENCRYPT, 1,
         "wrong.test", NULL, NULL, STARTTLS_OK, 0, "4.7.5", "not verified", 0,
         "EHLO worker.test\nSTARTTLS\n"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fixture *f;

        setup((void **)&f);
        f->msg.tls = cases[i].tls;
        f->msg.requiretls = cases[i].requiretls;
        if (cases[i].tls_name)
            f->msg.tls_name = cases[i].tls_name;
        if (cases[i].ehlo)
            f->srv.ehlo = cases[i].ehlo;
        if (cases[i].ehlo_tls)
            f->srv.ehlo_tls = cases[i].ehlo_tls;
        f->srv.starttls = cases[i].starttls;
        deliver(f);
        if (f->out.code != cases[i].code || strcmp(f->out.dsn, cases[i].dsn) != 0 ||
            strstr(f->out.reply, cases[i].reply) == NULL ||
            f->out.try_next != cases[i].try_next)
            fail_msg("%s: got %d %s try_next=%d \"%s\"", cases[i].what, f->out.code,
                     f->out.dsn, f->out.try_next, f->out.reply);
        want_log(f, cases[i].log);
        assert_int_equal(f->srv.connects, 1);
        teardown((void **)&f);
    }
}

/* A body of many blocks, written as the other end takes them: over TLS
 * through DATA, and in plaintext through BDAT chunks. */
static char *big_body(size_t *len, size_t lines)
{
    char *b = malloc(lines * 80), *p = b;
    size_t i;

    for (i = 0; i < lines; i++)
        p += sprintf(p, "%sline %zu of the message, long enough to matter\r\n",
                     i % 100 == 0 ? "." : "", i);
    *len = (size_t)(p - b);
    return b;
}

/* RFC 5321 §4.5.2, for comparison: a dot more before each leading dot. */
static char *stuffed(const char *b, size_t len, size_t *out)
{
    char *s = malloc(2 * len + 1), *p = s;
    size_t i;

    for (i = 0; i < len; i++) {
        if (b[i] == '.' && (i == 0 || b[i - 1] == '\n'))
            *p++ = '.';
        *p++ = b[i];
    }
    *out = (size_t)(p - s);
    return s;
}

static void test_large_data_tls(void **state)
{
    struct fixture *f = *state;
    size_t len, want_len;
    char *body = big_body(&len, 8000), *want = stuffed(body, len, &want_len); /* ~450 KB */

    f->msg.data = body;
    f->msg.len = len;
    deliver(f);
    assert_int_equal(f->out.code, 250);
    assert_int_equal(want_len, len + 80);
    assert_int_equal(f->srv.data.len, want_len);
    assert_memory_equal(f->srv.data.data, want, want_len);
    free(body);
    free(want);
}

/* body in plaintext to a server that says `ehlo`: accepted, arrived as it is. */
static void deliver_plain(struct fixture *f, const char *ehlo, const char *body, size_t len)
{
    f->msg.tls = WK_TLS_NONE;
    f->srv.ehlo = ehlo;
    f->msg.data = body;
    f->msg.len = len;
    deliver(f);
    assert_int_equal(f->out.code, 250);
    assert_int_equal(f->srv.data.len, len);
    assert_memory_equal(f->srv.data.data, body, len);
}

static void test_large_bdat(void **state)
{
    struct fixture *f = *state;
    size_t len;
    char *body = big_body(&len, 40000); /* about 2.2 MB: three chunks */

    deliver_plain(f, "250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n", body, len);
    assert_int_equal(f->srv.bdat_chunks, (int)((len + WK_SMTP_BDAT_CHUNK - 1) / WK_SMTP_BDAT_CHUNK));
    free(body);
}

/* A message that needs no stuffing goes from the caller's octets, whole
 * blocks of it, the rest and the terminator from a copy: the same octets
 * whatever the length is against the block (plaintext, where the transport
 * queues what the kernel does not take at once). */
static void test_large_data_as_is(void **state)
{
    struct fixture *f = *state;
    const size_t b = WK_SMTP_DATA_BLOCK;
    const size_t lens[] = {b - 2, b, b + 1, 3 * b - 1, 3 * b, 3 * b + 2, 17 * b + 5};
    size_t i, k, len;
    char *body;

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        if (i > 0)
            setup((void **)&f);
        len = lens[i];
        body = malloc(len);
        for (k = 0; k < len; k++) /* 80-octet lines, "x" to "z", no leading dot */
            body[k] = k % 80 == 78 ? '\r' : k % 80 == 79 ? '\n' : (char)('x' + k / 80 % 3);
        body[len - 2] = '\r';
        body[len - 1] = '\n';
        deliver_plain(f, "250-mx.test\r\n250 PIPELINING\r\n", body, len);
        free(body);
        teardown((void **)&f);
    }
    setup((void **)&f);
    *state = f;
}

/* ---- the connection cache ---- */

static wk_smtp_cache *cache_under_test;
static size_t cache_idle_seen;

/* Once both sessions have reported (each has parked or said QUIT by
 * then), note what is parked and close the cache. */
static void cache_watch(uv_timer_t *t)
{
    struct fixture *f = t->data;

    if (f->out.done < 2)
        return;
    cache_idle_seen = wk_smtp_cache_idle(cache_under_test);
    wk_smtp_cache_close(cache_under_test);
    uv_close((uv_handle_t *)t, NULL);
}

/* Two sessions at once to one server, a cache that keeps one: one
 * connection is parked, the other says QUIT. */
static void test_cache_keeps_max_idle(void **state)
{
    struct fixture *f = *state;
    struct sockaddr_in sin;
    struct wk_smtp_timeouts t;
    uv_timer_t watch;
    wk_smtp *s;
    const char *p;
    int quits = 0;

    f->msg.tls = WK_TLS_NONE;
    cache_under_test = f->msg.cache = wk_smtp_cache_new(60000, 0, 1);
    wk_smtp_timeouts_default(&t);
    uv_ip4_addr("192.0.2.25", 25, &sin);
    assert_int_equal(wk_smtp_start(&f->loop, (struct sockaddr *)&sin, &t, &f->msg, done_cb,
                                   &f->out, 7, &s),
                     0);
    assert_int_equal(wk_smtp_start(&f->loop, (struct sockaddr *)&sin, &t, &f->msg, done_cb,
                                   &f->out, 7, &s),
                     0);
    uv_timer_init(&f->loop, &watch);
    watch.data = f;
    uv_timer_start(&watch, cache_watch, 1, 1);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ms_buf_append(&f->srv.log, "", 1);
    assert_int_equal(f->out.done, 2);
    assert_int_equal(f->out.code, 250);
    assert_int_equal(f->srv.connects, 2);
    assert_int_equal(cache_idle_seen, 1);
    for (p = f->srv.log.data; (p = strstr(p, "QUIT\n")) != NULL; p++)
        quits++;
    assert_int_equal(quits, 1); /* the surplus one; the parked one was just closed */
}

/* ---- duplicate fencing: the gate before DATA ---- */

static int gate_calls;
static uint64_t gate_deadline; /* what the gate answers; 0 refuses */
static int gate_at_once;       /* answer inside the callback, before DATA's reply is read */
static uv_timer_t gate_timer;

static int *gate_outcome_done; /* the fixture's out.done */

static void gate_later(uv_timer_t *t)
{
    (void)t;
    /* As the worker does: a session that has reported is no longer ours
     * to answer (it may be gone). */
    if (!*gate_outcome_done)
        wk_smtp_gate_answer(cur_session, gate_deadline);
    uv_close((uv_handle_t *)&gate_timer, NULL);
}

/* Answers on a later loop turn, as the Redis check does. */
static void gate_cb(void *arg, uint64_t id)
{
    struct fixture *f = (struct fixture *)((char *)arg - offsetof(struct fixture, out));

    assert_int_equal(id, 7);
    gate_calls++;
    /* Called once every RCPT is answered, before any octet of the
     * message; DATA itself went with MAIL and RCPT when pipelined. */
    ms_buf_append(&f->srv.log, "", 1);
    assert_non_null(strstr(f->srv.log.data, "RCPT TO:<u@other.test>\n"));
    if (strstr(f->srv.ehlo, "PIPELINING") && !strstr(f->srv.ehlo, "CHUNKING"))
        assert_non_null(strstr(f->srv.log.data, "RCPT TO:<u@other.test>\nDATA\n"));
    else
        assert_null(strstr(f->srv.log.data, "DATA"));
    f->srv.log.len--;
    assert_int_equal(f->srv.body_seen, 0);
    assert_int_equal(f->srv.data.len, 0);
    if (gate_at_once) {
        wk_smtp_gate_answer(cur_session, gate_deadline);
        return;
    }
    uv_timer_init(&f->loop, &gate_timer);
    uv_timer_start(&gate_timer, gate_later, 0, 0);
}

static void gate_setup(struct fixture *f, uint64_t deadline)
{
    f->msg.tls = WK_TLS_NONE;
    f->msg.gate = gate_cb;
    gate_outcome_done = &f->out.done;
    gate_calls = 0;
    gate_deadline = deadline;
    gate_at_once = 0;
}

/* Refused: every recipient 4.4.0 and res->fenced, no octet of the message.
 * With PIPELINING, DATA went with MAIL and RCPT and its 354 came while the
 * lease was checked: the server waits for message text, so the client
 * closes the connection (no QUIT, which would be text). */
static void test_gate_refuses(void **state)
{
    struct fixture *f = *state;

    gate_setup(f, 0);
    deliver(f);
    assert_int_equal(gate_calls, 1);
    want_log(f, "EHLO worker.test\nMAIL FROM:<a@b.example>\nRCPT TO:<u@other.test>\nDATA\n");
    assert_int_equal(f->out.code, 0);
    assert_string_equal(f->out.dsn, "4.4.0");
    assert_int_equal(f->out.fenced, 1);
    assert_int_equal(f->srv.data.len, 0);
    assert_int_equal(f->srv.body_seen, 0);
}

/* Without PIPELINING nothing but MAIL and RCPT went: QUIT, as before. */
static void test_gate_refuses_unpipelined(void **state)
{
    struct fixture *f = *state;

    gate_setup(f, 0);
    f->srv.ehlo = "250 mx.test\r\n";
    deliver(f);
    assert_int_equal(gate_calls, 1);
    want_log(f, "EHLO worker.test\nMAIL FROM:<a@b.example>\nRCPT TO:<u@other.test>\nQUIT\n");
    assert_int_equal(f->out.fenced, 1);
    assert_int_equal(f->srv.body_seen, 0);
}

/* Let through: the session as usual, whatever came first, and the
 * server's answer to it (250: the message, dot-stuffed, without the
 * terminator; else none of it). */
static void deliver_gated(struct fixture *f, int code)
{
    deliver(f);
    assert_int_equal(gate_calls, 1);
    assert_int_equal(f->out.code, code);
    assert_int_equal(f->out.fenced, 0);
    want_log(f, "EHLO worker.test\nMAIL FROM:<a@b.example>\nRCPT TO:<u@other.test>\nDATA\n"
                "QUIT\n");
    assert_int_equal(f->srv.data.len, code == 250 ? 28 : 0);
    if (code != 250)
        assert_int_equal(f->srv.body_seen, 0);
}

/* The answer after DATA's 354 came: the body follows the answer. */
static void test_gate_lets_through(void **state)
{
    gate_setup(*state, UINT64_MAX);
    deliver_gated(*state, 250);
}

/* The answer before DATA's 354 has been read: the body waits for it. */
static void test_gate_answer_before_354(void **state)
{
    gate_setup(*state, UINT64_MAX);
    gate_at_once = 1;
    deliver_gated(*state, 250);
}

/* Without PIPELINING: DATA is sent after the answer. */
static void test_gate_lets_through_unpipelined(void **state)
{
    struct fixture *f = *state;

    gate_setup(f, UINT64_MAX);
    f->srv.ehlo = "250 mx.test\r\n";
    deliver_gated(f, 250);
}

/* The pipelined DATA refused while the lease is checked: that reply is
 * the outcome, the answer that follows changes nothing, QUIT. */
static void test_gate_data_refused(void **state)
{
    struct fixture *f = *state;

    gate_setup(f, UINT64_MAX);
    f->srv.data_reply = "451 4.3.0 not now\r\n";
    deliver_gated(f, 451);
}

/* A deadline already past when the end of the message would go: the
 * connection is closed without it (DATA and BDAT), reported 4.4.2. */
static void test_gate_deadline_passed(void **state)
{
    struct fixture *f = *state;

    gate_setup(f, 1);
    deliver(f);
    assert_int_equal(f->out.code, 0);
    assert_string_equal(f->out.dsn, "4.4.2");
    assert_non_null(strstr(f->out.reply, "lease ran out"));
    assert_int_equal(f->srv.data.len, 0); /* the server never saw the "." */
    assert_non_null(strstr(f->srv.log.data, "DATA\n"));
}

static void test_gate_deadline_passed_bdat(void **state)
{
    struct fixture *f = *state;

    gate_setup(f, 1);
    f->srv.ehlo = "250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
    deliver(f);
    assert_int_equal(f->out.code, 0);
    assert_string_equal(f->out.dsn, "4.4.2");
    assert_int_equal(f->srv.bdat_chunks, 1); /* the command went, not its last octets */
    assert_true(f->srv.data.len < f->msg.len);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requiretls_table),
        cmocka_unit_test_setup_teardown(test_verify_sni, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encrypt_unverified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_passed_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_may_fallback, setup, teardown),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test_setup_teardown(test_large_data_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_bdat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_data_as_is, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_keeps_max_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_refuses_unpipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_lets_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_answer_before_354, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_lets_through_unpipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_data_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_deadline_passed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gate_deadline_passed_bdat, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
