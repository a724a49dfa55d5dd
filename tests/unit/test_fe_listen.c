/*
 * test_fe_listen.c - a loop's listeners (frontend/fe_listen.h): every
 * [listener.*] section refused with its reason when it is wrong, and a
 * connection to a bound listener becoming a session that greets the client.
 * The SMTP dialogues over real listeners are in tests/integration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ms_error.h"
#include "ms_log.h"
#include "unit_config.h"
#include "../../frontend/fe_listen.h"
#include "../../frontend/fe_session.h"

static struct fe_metrics metrics; /* registered once: handles live forever */

static void server_init(struct fe_server *srv, uv_loop_t *loop)
{
    fe_server_init(srv, loop);
    srv->set.hostname = "mx.test";
    srv->set.max_errors = 5;
    srv->set.command_timeout_ms = 300000;
    srv->set.greeting_timeout_ms = 60000;
    srv->m = metrics;
}

/* Close what was opened and let the loop finish before freeing. */
static void server_done(struct fe_server *srv, uv_loop_t *loop)
{
    fe_listen_close(srv);
    fe_sessions_abort(srv);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_true(fe_server_idle(srv));
    srv->set.hostname = NULL; /* not the settings' own */
    fe_server_free(srv);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_bad_sections(void **state)
{
    static const struct {
        const char *text;
        int err;
        const char *why;
    } cases[] = {
        {"[smtp]\nx = 1\n", MS_ECONFIG, "no [listener.NAME] section"},
        {"[listener.mx]\nrole = mx\n", MS_ECONFIG, "listen is required"},
        {"[listener.mx]\nlisten = 127.0.0.1:0\nrole = relay\n", MS_ECONFIG,
         "role: want mx, submission or submissions"},
        {"[listener.mx]\nlisten = 127.0.0.1:0\nproxy = maybe\n", MS_ECONFIG, "proxy: want"},
        {"[listener.sub]\nlisten = 127.0.0.1:0\nrole = submission\n", MS_ECONFIG,
         "needs [smtp] tls_cert and tls_key"},
        {"[listener.mx]\nlisten = nowhere\n", MS_ECONFIG, "bad address \"nowhere\""},
        /* bind() fails: an address that is not this machine's. */
        {"[listener.mx]\nlisten = 192.0.2.1:25\n", MS_EIO, "[listener.mx] 192.0.2.1:25: "},
    };
    char err[256];
    size_t i;
    int r;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_config *cfg = unit_config(cases[i].text);
        struct fe_server srv;
        uv_loop_t loop;

        uv_loop_init(&loop);
        server_init(&srv, &loop);
        err[0] = '\0';
        r = fe_listen_open(&srv, cfg, err, sizeof(err));
        if (r != cases[i].err || strstr(err, cases[i].why) == NULL)
            fail_msg("%s: %d \"%s\", want %d \"%s\"", cases[i].text, r, err, cases[i].err,
                     cases[i].why);
        server_done(&srv, &loop);
        ms_config_free(cfg);
    }
}

/* Two listeners bound; a client of the first gets a session and its
 * banner, which names no STARTTLS (no TLS configured). */
static void test_accept(void **state)
{
    ms_config *cfg = unit_config("[listener.a]\nlisten = 127.0.0.1:0\n"
                                 "[listener.b]\nlisten = 127.0.0.1:0\nrole = mx\nproxy = no\n");
    struct fe_server srv;
    uv_loop_t loop;
    struct sockaddr_storage ss;
    int len = sizeof(ss), fd, i;
    struct pollfd pfd;
    char err[256] = "", buf[128];
    ssize_t n = 0;

    (void)state;
    uv_loop_init(&loop);
    server_init(&srv, &loop);
    if (fe_listen_open(&srv, cfg, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_int_equal(srv.nlisteners, 2);
    assert_string_equal(srv.listeners[0].name, "a");
    assert_string_equal(srv.listeners[1].name, "b");
    assert_int_equal(srv.listeners[1].role, FE_ROLE_MX);
    assert_true(srv.listeners[0].open && srv.listeners[1].open);
    assert_true(fe_server_idle(&srv));

    assert_int_equal(uv_tcp_getsockname(&srv.listeners[0].tcp, (struct sockaddr *)&ss, &len), 0);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
    /* The loop accepts and the session greets at once. */
    pfd = (struct pollfd){.fd = fd, .events = POLLIN};
    for (i = 0; i < 200 && n <= 0; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (poll(&pfd, 1, 10) == 1)
            n = recv(fd, buf, sizeof(buf) - 1, 0);
    }
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "220 mx.test ESMTP Mailstream\r\n");
    assert_false(fe_server_idle(&srv));
    assert_true(ms_counter_value(srv.listeners[0].m_conn) >= 1);

    /* Draining closes the listeners: a new client is refused. */
    fe_listen_close(&srv);
    assert_false(srv.listeners[0].open);
    uv_run(&loop, UV_RUN_NOWAIT);
    {
        int fd2 = socket(AF_INET, SOCK_STREAM, 0);

        assert_true(connect(fd2, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) < 0);
        close(fd2);
    }
    close(fd);
    server_done(&srv, &loop);
    ms_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_sections),
        cmocka_unit_test(test_accept),
    };

    ms_log_init("test", MS_LOG_WARN);
    fe_metrics_register(&metrics);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
