/* Unit tests for lib/core: buffers, config, HTTP request parser, metrics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ms_base64.h"
#include "ms_buf.h"
#include "ms_config.h"
#include "ms_error.h"
#include "ms_http.h"
#include "ms_log.h"
#include "ms_metrics.h"

#include <pthread.h>
#include "ms_net.h"

static void test_buf_limit(void **state)
{
    struct ms_buf b;

    ms_buf_init(&b, 8);
    assert_int_equal(ms_buf_append(&b, "12345", 5), 0);
    /* Past the maximum: refused, buffer unchanged (never truncated). */
    assert_int_equal(ms_buf_append(&b, "6789", 4), MS_ETOOBIG);
    assert_int_equal(b.len, 5);
    assert_int_equal(ms_buf_append(&b, "678", 3), 0);
    assert_memory_equal(b.data, "12345678", 8);
    ms_buf_consume(&b, 3);
    assert_memory_equal(b.data, "45678", 5);
    assert_int_equal(ms_buf_appendf(&b, "%d", 123), 0);
    assert_int_equal(ms_buf_appendf(&b, "%s", "toolong"), MS_ETOOBIG);
    assert_int_equal(b.len, 8);
    ms_buf_free(&b);
}

static void test_config(void **state)
{
    char path[] = "/tmp/ms_test_configXXXXXX", err[256];
    const char *const *names;
    const char *text = "[node]\nid = fe7\n[listener.mx]\nlisten = 127.0.0.1:25\n"
                       "[kafka]\nbrokers = a:1\n[listener.sub]\nrole=submission\n"
                       "[smtp]\nmax_message_size = 10m\nbad = 12x\n";
    ms_config *cfg;
    int64_t v;
    char list[] = " a.test, ,b.test ,c ";
    char *items[4];
    int fd;

    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    setenv("MAILSTREAM_KAFKA_BROKERS", "env:9", 1);
    setenv("MAILSTREAM_LISTENER_SUB_LISTEN", "127.0.0.1:587", 1);
    cfg = ms_config_load(path, err, sizeof(err));
    assert_non_null(cfg);
    assert_string_equal(ms_config_get(cfg, "node", "id", "x"), "fe7");
    assert_string_equal(ms_config_get(cfg, "node", "missing", "dflt"), "dflt");
    assert_string_equal(ms_config_get(cfg, "kafka", "brokers", NULL), "env:9");
    assert_string_equal(ms_config_get(cfg, "listener.sub", "listen", NULL), "127.0.0.1:587");
    assert_int_equal(ms_config_get_int(cfg, "smtp", "max_message_size", 1, 0, 1 << 30, &v), 0);
    assert_int_equal(v, 10 * 1024 * 1024);
    assert_int_equal(ms_config_get_int(cfg, "smtp", "bad", 1, 0, 100, &v), MS_ECONFIG);
    assert_int_equal(ms_config_get_int(cfg, "smtp", "max_message_size", 1, 0, 100, &v),
                     MS_ECONFIG);
    assert_int_equal(ms_config_sections(cfg, "listener.", &names), 2);
    assert_string_equal(names[0], "listener.mx");
    assert_string_equal(names[1], "listener.sub");
    assert_int_equal(ms_config_split_list(list, items, 4), 3);
    assert_string_equal(items[0], "a.test");
    assert_string_equal(items[1], "b.test");
    assert_string_equal(items[2], "c");
    ms_config_free(cfg);
    unlink(path);
    unsetenv("MAILSTREAM_KAFKA_BROKERS");
    unsetenv("MAILSTREAM_LISTENER_SUB_LISTEN");
    assert_null(ms_config_load("/nonexistent/x.ini", err, sizeof(err)));
}

static void test_http_parse(void **state)
{
    struct ms_http_request req;
    static const struct {
        const char *in;
        int want; /* >0: consumed length expected = strlen(in) */
        const char *path;
    } cases[] = {
        {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1, "/metrics"},
        {"GET /readyz HTTP/1.0\n\n", 1, "/readyz"},
        {"GET /metrics HTTP/1.1\r\nHost: x\r\n", MS_EAGAIN, NULL},
        {"GET  /x HTTP/1.1\r\n\r\n", MS_EPROTO, NULL},
        {"get /x HTTP/1.1\r\n\r\n", MS_EPROTO, NULL},
        {"GET /x\r\n\r\n", MS_EPROTO, NULL},
        {"GET /x SMTP/1.1\r\n\r\n", MS_EPROTO, NULL},
        {"GET /\x01 HTTP/1.1\r\n\r\n", MS_EPROTO, NULL},
    };
    size_t i;
    int r;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        r = ms_http_parse_request(cases[i].in, strlen(cases[i].in), &req);
        if (cases[i].want > 0) {
            assert_int_equal(r, (int)strlen(cases[i].in));
            assert_int_equal(req.path_len, strlen(cases[i].path));
            assert_memory_equal(req.path, cases[i].path, req.path_len);
        } else {
            assert_int_equal(r, cases[i].want);
        }
    }
    {
        char *big = malloc(MS_HTTP_REQUEST_MAX + 10);
        memset(big, 'a', MS_HTTP_REQUEST_MAX + 10);
        assert_int_equal(ms_http_parse_request(big, MS_HTTP_REQUEST_MAX + 10, &req), MS_ETOOBIG);
        free(big);
    }
}

static void test_metrics_render(void **state)
{
    static const double bounds[] = {0.1, 1};
    ms_counter *c = ms_counter_new("t_messages_total", "Messages.", "result=\"ok\"");
    ms_counter *c2 = ms_counter_new("t_messages_total", "Messages.", "result=\"ok\"");
    ms_gauge *g = ms_gauge_new("t_in_flight", "In flight.", NULL);
    ms_histogram *h = ms_histogram_new("t_latency_seconds", "Latency.", "", bounds, 2);
    struct ms_buf out;

    assert_ptr_equal(c, c2);
    ms_counter_add(c, 3);
    ms_gauge_set(g, -2);
    ms_histogram_observe(h, 0.05);
    ms_histogram_observe(h, 0.5);
    ms_histogram_observe(h, 5);
    ms_buf_init(&out, 1 << 20);
    assert_int_equal(ms_metrics_render(&out), 0);
    assert_int_equal(ms_buf_append(&out, "", 1), 0);
    assert_non_null(strstr(out.data, "# TYPE t_messages_total counter\n"));
    assert_non_null(strstr(out.data, "t_messages_total{result=\"ok\"} 3\n"));
    assert_non_null(strstr(out.data, "t_in_flight -2\n"));
    assert_non_null(strstr(out.data, "t_latency_seconds_bucket{le=\"0.1\"} 1\n"));
    assert_non_null(strstr(out.data, "t_latency_seconds_bucket{le=\"1\"} 2\n"));
    assert_non_null(strstr(out.data, "t_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(out.data, "t_latency_seconds_count 3\n"));
    assert_non_null(strstr(out.data, "t_latency_seconds_sum 5.55\n"));
    ms_buf_free(&out);
}

/* Bucket bounds and sums read back as the very doubles they were (issue 23:
 * %g printed 1048576 as "1.04858e+06", which is 1048580, and 1048577 the
 * same way). */
static void test_metrics_bounds_exact(void **state)
{
    static const double bounds[] = {1e-7,    0.0025,  0.1,         0.1 + 0.2, 1,
                                    1048576, 1048577, 104857600.5, 1e300};
    static const char *const want[] = {"1e-07",  "0.0025",  "0.1",     "0.30000000000000004",
                                       "1",      "1048576", "1048577", "104857600.5",
                                       "1e+300", "+Inf"};
    const size_t n = sizeof(bounds) / sizeof(bounds[0]);
    ms_histogram *h = ms_histogram_new("t_exact_bytes", "Exact.", "", bounds, n);
    char prefix[64];
    const char *p;
    struct ms_buf out;
    size_t i = 0;

    ms_histogram_observe(h, 0.1);
    ms_histogram_observe(h, 0.2);
    ms_buf_init(&out, 1 << 20);
    assert_int_equal(ms_metrics_render(&out), 0);
    assert_int_equal(ms_buf_append(&out, "", 1), 0);
    /* Each bucket line in order: the text we expect, and strtod of it gives
     * the bound back bit for bit. */
    for (p = strstr(out.data, "t_exact_bytes_bucket{le=\""); p;
         p = strstr(p, "t_exact_bytes_bucket{le=\"")) {
        p += strlen("t_exact_bytes_bucket{le=\"");
        assert_true(i < n + 1);
        snprintf(prefix, sizeof(prefix), "%s\"}", want[i]);
        assert_memory_equal(p, prefix, strlen(prefix));
        if (i < n)
            assert_true(strtod(p, NULL) == bounds[i]);
        i++;
    }
    assert_int_equal(i, n + 1);
    /* 0.1 + 0.2 is not 0.3; %.9g said it was. */
    assert_non_null(strstr(out.data, "t_exact_bytes_sum 0.30000000000000004\n"));
    ms_buf_free(&out);
}

/* Bounds that are not strictly ascending would make two buckets of one
 * bound: a broken invariant, so registration panics (in a child here). */
static void test_metrics_bounds_checked(void **state)
{
    static const double dup[] = {1, 2, 2}, nan_bound[] = {1, NAN};
    const double *bad[] = {dup, nan_bound};
    const size_t nbad[] = {3, 2};
    int status;
    pid_t pid;

    for (size_t i = 0; i < 2; i++) {
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            ms_histogram_new("t_bad_bounds", "Bad.", "", bad[i], nbad[i]);
            _exit(0);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    }
}

/* Label values learnt at run time: escaped, and a series registered from
 * another thread while the registry is rendered shows up whole. */
static void *register_dests(void *arg)
{
    char labels[64];

    for (int i = 0; i < 200; i++) {
        snprintf(labels, sizeof(labels), "dest=\"d%d\"", i);
        ms_gauge_add(ms_gauge_new("t_dest_connections", "By destination.", labels), i);
    }
    return arg;
}

static void test_metrics_runtime_labels(void **state)
{
    char esc[16];
    struct ms_buf out;
    pthread_t t;

    ms_label_escape(esc, sizeof(esc), "a\"b\\c\nd");
    assert_string_equal(esc, "a\\\"b\\\\c\\nd");
    ms_label_escape(esc, 4, "ab\"c");      /* an escape never cut in half */
    assert_string_equal(esc, "ab");
    ms_label_escape(esc, 4, "abcdef");
    assert_string_equal(esc, "abc");

    assert_int_equal(pthread_create(&t, NULL, register_dests, NULL), 0);
    for (int i = 0; i < 50; i++) {
        ms_buf_init(&out, 1 << 20);
        assert_int_equal(ms_metrics_render(&out), 0);
        ms_buf_free(&out);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    ms_buf_init(&out, 1 << 20);
    assert_int_equal(ms_metrics_render(&out), 0);
    assert_int_equal(ms_buf_append(&out, "", 1), 0);
    assert_non_null(strstr(out.data, "t_dest_connections{dest=\"d0\"} 0\n"));
    assert_non_null(strstr(out.data, "t_dest_connections{dest=\"d199\"} 199\n"));
    ms_buf_free(&out);
}

static void test_hostport(void **state)
{
    struct sockaddr_storage ss;
    char host[64], addr[64];
    int port;

    assert_int_equal(ms_parse_hostport("127.0.0.1:2525", &ss), 0);
    assert_string_equal(ms_addr_str((struct sockaddr *)&ss, addr, sizeof(addr)), "127.0.0.1");
    assert_int_equal(ms_addr_port((struct sockaddr *)&ss), 2525);
    assert_int_equal(ms_parse_hostport("[::1]:25", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ms_parse_hostport("localhost:25", &ss), MS_EINVAL);
    assert_int_equal(ms_parse_hostport("127.0.0.1:99999", &ss), MS_EINVAL);
    assert_int_equal(ms_parse_hostport("127.0.0.1", &ss), MS_EINVAL);
    assert_int_equal(ms_split_hostport("mx.example:26", host, sizeof(host), &port), 0);
    assert_string_equal(host, "mx.example");
    assert_int_equal(port, 26);
    /* An IP literal alone (the router's "[192.0.2.1]" next hops). */
    assert_int_equal(ms_ip_sockaddr("192.0.2.1", 25, &ss), 0);
    assert_string_equal(ms_addr_str((struct sockaddr *)&ss, addr, sizeof(addr)), "192.0.2.1");
    assert_int_equal(ms_addr_port((struct sockaddr *)&ss), 25);
    assert_int_equal(ms_ip_sockaddr("2001:db8::1", 587, &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ms_addr_port((struct sockaddr *)&ss), 587);
    assert_int_equal(ms_ip_sockaddr("mx.example", 25, &ss), MS_EINVAL);
    assert_int_equal(ms_ip_sockaddr("[::1]", 25, &ss), MS_EINVAL);
}

static void test_log_quote(void **state)
{
    char out[32];

    assert_string_equal(ms_log_quote(out, sizeof(out), "a \"b\"\r\n", 7), "\"a \\\"b\\\"\\x0d\\x0a\"");
    ms_log_quote(out, sizeof(out), "0123456789012345678901234567890123456789", 40);
    assert_true(strlen(out) < sizeof(out));
    assert_non_null(strstr(out, "...\""));
}

static void test_base64(void **state)
{
    static const struct {
        const char *in;
        int flags;
        int want; /* length, or an error */
        const char *out;
    } cases[] = {
        {"YWJj", 0, 3, "abc"},
        {"YWI=", 0, 2, "ab"},
        {"YQ==", 0, 1, "a"},
        {"", 0, 0, ""},
        {"YQ", 0, MS_EPROTO, NULL},              /* padding required */
        {"YQ", MS_BASE64_PAD_OPTIONAL, 1, "a"},
        {"YQ=", 0, MS_EPROTO, NULL},
        {"Y===", 0, MS_EPROTO, NULL},
        {"YQ==YQ==", 0, MS_EPROTO, NULL},        /* data after padding */
        {"YW Jj", 0, MS_EPROTO, NULL},           /* no white space unless asked */
        {"YW J\r\n\tj", MS_BASE64_SKIP_FWS, 3, "abc"},
        {"YW*j", MS_BASE64_SKIP_FWS, MS_EPROTO, NULL},
    };
    uint8_t out[8];
    char enc[16];
    size_t i;
    int r;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        r = ms_base64_decode(cases[i].in, strlen(cases[i].in), out, sizeof(out), cases[i].flags);
        assert_int_equal(r, cases[i].want);
        if (r > 0)
            assert_memory_equal(out, cases[i].out, (size_t)r);
    }
    assert_int_equal(ms_base64_decode("YWJjZGVmZ2hp", 12, out, 8, 0), MS_ETOOBIG);
    assert_int_equal(ms_base64_encode("ab", 2, enc, sizeof(enc)), 4);
    assert_string_equal(enc, "YWI=");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_limit),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_http_parse),
        cmocka_unit_test(test_metrics_render),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_log_quote),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_metrics_runtime_labels),
        cmocka_unit_test(test_metrics_bounds_exact),
        cmocka_unit_test(test_metrics_bounds_checked),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
