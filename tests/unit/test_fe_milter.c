/* test_fe_milter.c - frontend/fe_milter.c: the [milter] section (server
 * forms, defaults, refusals), and one session's stages against a milter on
 * a loopback socket run by the test (accept at connect skips the milter
 * for the session; a reply code at MAIL becomes the SMTP reply; a milter
 * that closes gets default_action). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/un.h>
#include <uv.h>

#include "../../frontend/fe_milter.h"
#include "ms_error.h"
#include "unit_config.h"

static void test_conf(void **state)
{
    struct fe_milter_conf c;
    char err[256];
    ms_config *cfg;

    cfg = unit_config("[node]\nid = x\n");
    assert_int_equal(fe_milter_conf_load(&c, cfg, err, sizeof(err)), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(c.default_action, FE_MILTER_DEF_TEMPFAIL);
    assert_int_equal(c.connect_timeout_ms, 30000);
    assert_int_equal(c.command_timeout_ms, 30000);
    assert_int_equal(c.content_timeout_ms, 300000);
    ms_config_free(cfg);

    cfg = unit_config("[milter]\nservers = inet:127.0.0.1:11332, inet6:[::1]:8891, "
                      "unix:/run/opendkim.sock\ndefault_action = accept\n"
                      "content_timeout = 60\n");
    assert_int_equal(fe_milter_conf_load(&c, cfg, err, sizeof(err)), 0);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.servers[0].spec, "inet:127.0.0.1:11332");
    assert_int_equal(c.servers[0].addr.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&c.servers[0].addr)->sin_port), 11332);
    assert_int_equal(c.servers[1].addr.ss_family, AF_INET6);
    assert_int_equal(c.servers[2].addr.ss_family, AF_UNIX);
    assert_string_equal(((struct sockaddr_un *)&c.servers[2].addr)->sun_path,
                        "/run/opendkim.sock");
    assert_int_equal(c.default_action, FE_MILTER_DEF_ACCEPT);
    assert_int_equal(c.content_timeout_ms, 60000);
    ms_config_free(cfg);

    static const char *const bad[] = {
        "[milter]\nservers = 127.0.0.1:11332\n",
        "[milter]\nservers = inet:127.0.0.1\n",
        "[milter]\nservers = inet:127.0.0.1:\n",
        "[milter]\nservers = unix:\n",
        "[milter]\nservers = inet6:[::1:8891\n",
        "[milter]\ndefault_action = discard\n",
        "[milter]\nprotocol = 2\n",
        "[milter]\ncommand_timeout = 0\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cfg = unit_config(bad[i]);
        assert_int_equal(fe_milter_conf_load(&c, cfg, err, sizeof(err)), MS_ECONFIG);
        assert_non_null(strstr(err, "[milter]"));
        ms_config_free(cfg);
    }
}

/* ---- a milter on a loopback socket ---- */

struct peer {
    uv_tcp_t server, conn;
    int connected;
    char in[4096];
    size_t inlen;
    const char *script; /* per command octet: the answer octet ('x': close) */
    char seen[64];      /* commands received, in order */
    size_t nseen;
};

static struct peer P;
static struct fe_milter_result R;
static int answers;
static uv_loop_t *L;

/* Small replies on an idle loopback socket: the kernel takes them whole. */
static void peer_send(const char *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);

    assert_int_equal(uv_try_write((uv_stream_t *)&P.conn, &b, 1), (int)n);
}

static void peer_reply(char cmd, const char *data, size_t len)
{
    char p[512];
    uint32_t n = htonl((uint32_t)len + 1);

    memcpy(p, &n, 4);
    p[4] = cmd;
    memcpy(p + 5, data, len);
    peer_send(p, len + 5);
}

static void alloc_cb(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    static char buf[4096];
    *b = uv_buf_init(buf, sizeof(buf));
}

static void peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    uint32_t len;
    char cmd;
    const char *a;

    if (n <= 0)
        return;
    memcpy(P.in + P.inlen, b->base, (size_t)n);
    P.inlen += (size_t)n;
    while (P.inlen >= 5) {
        memcpy(&len, P.in, 4);
        len = ntohl(len);
        if (P.inlen < 4 + len)
            return;
        cmd = P.in[4];
        P.seen[P.nseen++] = cmd;
        if (cmd == 'O') {
            static const char opt[12] = {0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 0, 0};
            peer_reply('O', opt, sizeof(opt));
        } else if (cmd != 'D' && cmd != 'A' && cmd != 'Q') {
            a = strchr(P.script, cmd);
            if (a && a[1] == 'x') {
                uv_close((uv_handle_t *)&P.conn, NULL);
                P.inlen = 0;
                return;
            } else if (a && a[1] == 'y') {
                peer_reply('y', "554 5.7.1 No thanks", 20);
            } else {
                peer_reply(a ? a[1] : 'c', "", 0);
            }
        }
        memmove(P.in, P.in + 4 + len, P.inlen - 4 - len);
        P.inlen -= 4 + len;
    }
}

static void on_peer(uv_stream_t *server, int status)
{
    assert_int_equal(status, 0);
    uv_tcp_init(L, &P.conn);
    assert_int_equal(uv_accept(server, (uv_stream_t *)&P.conn), 0);
    P.connected = 1;
    uv_read_start((uv_stream_t *)&P.conn, alloc_cb, peer_read);
}

static void on_answer(void *arg, uint64_t sid, const struct fe_milter_result *res)
{
    assert_int_equal(sid, 42);
    R = *res;
    answers++;
}

/* Turn the loop until the n-th answer (NOWAIT: a turn that ran the answer
 * from a timer would otherwise go on to wait for I/O that never comes). */
static void wait_answer(int n)
{
    int turns = 0;

    while (answers < n) {
        uv_run(L, UV_RUN_NOWAIT);
        if (answers < n) {
            assert_true(++turns < 10000); /* 10 s */
            usleep(1000);
        }
    }
}

/* A milter whose script is "Ca" accepts at connect, ... */
static struct fe_milter_set *start(struct fe_milter_conf *c, const char *script,
                                   enum fe_milter_default def)
{
    struct sockaddr_in sa;
    int len = sizeof(sa);

    memset(&P, 0, sizeof(P));
    P.script = script;
    uv_tcp_init(L, &P.server);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&P.server, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&P.server, 8, on_peer), 0);
    uv_tcp_getsockname(&P.server, (struct sockaddr *)&sa, &len);
    memset(c, 0, sizeof(*c));
    c->n = 1;
    snprintf(c->servers[0].spec, sizeof(c->servers[0].spec), "inet:test");
    memcpy(&c->servers[0].addr, &sa, sizeof(sa));
    c->default_action = def;
    c->connect_timeout_ms = c->command_timeout_ms = c->content_timeout_ms = 5000;
    {
        /* Metrics handles, as fe_milter_conf_load registers them. */
        ms_config *cfg = unit_config("[milter]\nservers = inet:127.0.0.1:1\n");
        struct fe_milter_conf tmp;
        char err[256];
        assert_int_equal(fe_milter_conf_load(&tmp, cfg, err, sizeof(err)), 0);
        memcpy(c->servers[0].calls, tmp.servers[0].calls, sizeof(tmp.servers[0].calls));
        memcpy(c->servers[0].actions, tmp.servers[0].actions, sizeof(tmp.servers[0].actions));
        memcpy(c->servers[0].errors, tmp.servers[0].errors, sizeof(tmp.servers[0].errors));
        c->servers[0].latency = tmp.servers[0].latency;
        ms_config_free(cfg);
    }
    answers = 0;
    return fe_milter_set_new(L, c, on_answer, NULL, 42);
}

static void stop(struct fe_milter_set *set)
{
    fe_milter_set_free(set);
    if (P.connected && !uv_is_closing((uv_handle_t *)&P.conn))
        uv_close((uv_handle_t *)&P.conn, NULL);
    uv_close((uv_handle_t *)&P.server, NULL);
    uv_run(L, UV_RUN_DEFAULT);
}

/* Connect, MAIL (its answer in *mail), end of the transaction, then a
 * message (its answer in R). */
static void mail_then_eom(struct fe_milter_set *set, struct fe_milter_result *mail)
{
    static const char msg[] = "Subject: x\r\n\r\nbody\r\n";
    const char *from[] = {"<a@b.example>"};

    fe_milter_connect(set, "[127.0.0.1]", '4', 25, "127.0.0.1");
    assert_int_equal(answers, 0); /* never from inside the call */
    wait_answer(1);
    assert_int_equal(R.verdict, FE_MILTER_CONTINUE);
    fe_milter_mail(set, from, 1);
    wait_answer(2);
    *mail = R;
    fe_milter_abort(set);
    fe_milter_eom(set, msg, sizeof(msg) - 1, 1024);
    wait_answer(3);
}

static void test_stages(void **state)
{
    struct fe_milter_conf c;
    struct fe_milter_set *set;
    struct fe_milter_result mail;

    L = uv_default_loop();
    /* Reply code at MAIL; the message then goes through (T L N B E). */
    set = start(&c, "My", FE_MILTER_DEF_TEMPFAIL);
    mail_then_eom(set, &mail);
    assert_int_equal(mail.verdict, FE_MILTER_REJECT);
    assert_string_equal(mail.reply, "554 5.7.1 No thanks");
    assert_int_equal(R.verdict, FE_MILTER_CONTINUE);
    assert_non_null(strstr(P.seen, "OCMATLNBE"));
    stop(set);

    /* Accepted at connect: not asked again in the session. */
    set = start(&c, "Ca", FE_MILTER_DEF_TEMPFAIL);
    fe_milter_connect(set, "[127.0.0.1]", '4', 25, "127.0.0.1");
    wait_answer(1);
    fe_milter_helo(set, "client.example");
    wait_answer(2);
    assert_int_equal(R.verdict, FE_MILTER_CONTINUE);
    assert_null(strchr(P.seen, 'H'));
    stop(set);

    /* Closes at MAIL: default_action, then for the rest of the session. */
    set = start(&c, "Mx", FE_MILTER_DEF_REJECT);
    mail_then_eom(set, &mail);
    assert_int_equal(mail.verdict, FE_MILTER_REJECT);
    assert_string_equal(mail.action, "default_reject");
    assert_int_equal(R.verdict, FE_MILTER_REJECT);
    stop(set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf),
        cmocka_unit_test(test_stages),
    };
    return cmocka_run_group_tests_name("fe_milter", tests, NULL, NULL);
}
