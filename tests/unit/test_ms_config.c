/*
 * Unit tests for lib/core/ms_config.c: the start-up check (unknown sections
 * and keys named by file and line), the one boolean reader, line numbers and
 * the line limit, and sections by prefix.  (test_core.c covers the plain
 * lookups, integers and lists.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_config.h"
#include "ms_error.h"

/* The file of the current test, removed by teardown. */
static char cfg_path[64];

static ms_config *load_text(const char *text, char *err, size_t errlen)
{
    int fd;

    snprintf(cfg_path, sizeof(cfg_path), "/tmp/ms_test_config_XXXXXX");
    fd = mkstemp(cfg_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return ms_config_load(cfg_path, err, errlen);
}

static ms_config *load_ok(const char *text)
{
    char err[256];
    ms_config *cfg = load_text(text, err, sizeof(err));

    if (cfg == NULL)
        fail_msg("load: %s", err);
    return cfg;
}

/* err must be "<the test's file>:<line>: <what>". */
static void assert_at(const char *err, int line, const char *what)
{
    char want[512];

    snprintf(want, sizeof(want), "%s:%d: %s", cfg_path, line, what);
    assert_string_equal(err, want);
}

/* The start-up check finds `what` at `line` of the test's file. */
static void assert_unknown(const ms_config *cfg, const char *const *scope, int line,
                           const char *what)
{
    char err[256];

    assert_int_equal(ms_config_check_unknown(cfg, scope, err, sizeof(err)), MS_ECONFIG);
    assert_at(err, line, what);
}

static int teardown(void **state)
{
    (void)state;
    if (cfg_path[0])
        unlink(cfg_path);
    cfg_path[0] = '\0';
    return 0;
}

static void test_unknown_key_named_with_its_line(void **state)
{
    ms_config *cfg = load_ok("; generated\n"
                             "[smtp]\n"
                             "max_recipients = 3\n"
                             "\n"
                             "# a comment\n"
                             "max_recipents = 4\n");
    int64_t v;

    assert_int_equal(ms_config_get_int(cfg, "smtp", "max_recipients", 1, 1, 100, &v), 0);
    assert_int_equal(v, 3);
    assert_unknown(cfg, NULL, 6, "unknown key [smtp] max_recipents");
    ms_config_free(cfg);
}

static void test_unknown_section_named_at_its_header(void **state)
{
    ms_config *cfg = load_ok("\xEF\xBB\xBF[node]\n"
                             "id = a\n"
                             "\n"
                             "[smpt]\n"
                             "; the keys come later\n"
                             "max_recipients = 1\n");

    assert_string_equal(ms_config_get(cfg, "node", "id", NULL), "a");
    /* Asking for [smtp] says nothing about [smpt]. */
    assert_null(ms_config_get(cfg, "smtp", "max_recipients", NULL));
    assert_unknown(cfg, NULL, 4, "unknown section [smpt]");
    ms_config_free(cfg);
}

static void test_first_mistake_in_file_order(void **state)
{
    ms_config *cfg = load_ok("[a]\nx = 1\ntypo1 = 2\n[b]\ntypo2 = 3\n");
    char err[256];

    (void)ms_config_get(cfg, "a", "x", NULL);
    (void)ms_config_get(cfg, "b", "y", NULL); /* [b] is known, typo2 is not */
    assert_unknown(cfg, NULL, 3, "unknown key [a] typo1");
    (void)ms_config_get(cfg, "a", "typo1", NULL);
    assert_unknown(cfg, NULL, 5, "unknown key [b] typo2");
    (void)ms_config_get(cfg, "b", "typo2", NULL);
    assert_int_equal(ms_config_check_unknown(cfg, NULL, err, sizeof(err)), 0);
    ms_config_free(cfg);
}

static void test_dynamic_sections(void **state)
{
    ms_config *cfg = load_ok("[listener.mx]\nlisten = 127.0.0.1:25\nproxi = yes\n"
                             "[tls.a]\ncert = a.pem\n"
                             "[listener.sub]\nlisten = 127.0.0.1:587\nrole = submission\n");
    const char *const *names;
    char err[256];
    size_t i, n;
    int proxy;

    /* As the frontend does: every [listener.NAME], every key it knows. */
    n = ms_config_sections(cfg, "listener.", &names);
    assert_int_equal(n, 2);
    for (i = 0; i < n; i++) {
        (void)ms_config_get(cfg, names[i], "listen", NULL);
        (void)ms_config_get(cfg, names[i], "role", "mx");
        assert_int_equal(ms_config_get_bool(cfg, names[i], "proxy", 0, &proxy, err, sizeof(err)),
                         0);
    }
    assert_unknown(cfg, NULL, 3, "unknown key [listener.mx] proxi");
    (void)ms_config_get(cfg, "listener.mx", "proxi", NULL);
    /* Enumerating [tls.*] is not reading it. */
    assert_int_equal(ms_config_sections(cfg, "tls.", &names), 1);
    assert_unknown(cfg, NULL, 4, "unknown section [tls.a]");
    (void)ms_config_get(cfg, names[0], "cert", NULL);
    assert_int_equal(ms_config_check_unknown(cfg, NULL, err, sizeof(err)), 0);
    ms_config_free(cfg);
}

static void test_sections_by_prefix(void **state)
{
    ms_config *cfg = load_ok("[listener.a]\nlisten = 1\n[tls.x]\ncert = c\n[listener.b]\n"
                             "listen = 2\n[listenerx]\nk = v\n[listener.a]\nrole = mx\n");
    const char *const *l1, *const *l2, *const *t;

    assert_int_equal(ms_config_sections(cfg, "listener.", &l1), 2);
    assert_string_equal(l1[0], "listener.a");
    assert_string_equal(l1[1], "listener.b");
    assert_int_equal(ms_config_sections(cfg, "tls.", &t), 1);
    assert_string_equal(t[0], "tls.x");
    /* Asking again (a SIGHUP reload) does not disturb the first answer. */
    assert_int_equal(ms_config_sections(cfg, "listener.", &l2), 2);
    assert_ptr_equal(l1, l2);
    assert_string_equal(l1[0], "listener.a");
    assert_int_equal(ms_config_sections(cfg, "dkim.", &t), 0);
    ms_config_free(cfg);
}

static void test_overridden_and_repeated_keys_are_known(void **state)
{
    ms_config *cfg = load_ok("[kafka]\nbrokers = a:1\ntopic = q1\ntopic = q2\n");
    char err[256];

    setenv("MAILSTREAM_KAFKA_BROKERS", "b:2", 1);
    assert_string_equal(ms_config_get(cfg, "kafka", "brokers", NULL), "b:2");
    unsetenv("MAILSTREAM_KAFKA_BROKERS");
    assert_string_equal(ms_config_get(cfg, "kafka", "topic", NULL), "q2");
    assert_int_equal(ms_config_check_unknown(cfg, NULL, err, sizeof(err)), 0);
    ms_config_free(cfg);
}

static void test_check_in_scope(void **state)
{
    ms_config *cfg = load_ok("[delivery]\nrelay_hots = x\n"
                             "[policy]\ninbound = yes\ninbund = yes\n"
                             "[dkimx]\ndomain = d\n"
                             "[dkim.a]\ndomian = d\n");
    const char *const policy_scope[] = {"policy", "dkim.", NULL};
    const char *const dkim_scope[] = {"dkim.", NULL};
    char err[256];
    int v;

    assert_int_equal(ms_config_get_bool(cfg, "policy", "inbound", 0, &v, err, sizeof(err)), 0);
    assert_int_equal(v, 1);
    /* [delivery] and [dkimx] are another program's business here. */
    assert_unknown(cfg, policy_scope, 5, "unknown key [policy] inbund");
    assert_unknown(cfg, dkim_scope, 8, "unknown section [dkim.a]");
    (void)ms_config_get(cfg, "dkim.a", "domain", NULL);
    assert_unknown(cfg, dkim_scope, 9, "unknown key [dkim.a] domian");
    /* The whole file: the first mistake is the first line. */
    assert_unknown(cfg, NULL, 1, "unknown section [delivery]");
    ms_config_free(cfg);
}

static void test_key_outside_any_section(void **state)
{
    ms_config *cfg = load_ok("\nstray = 1\n[node]\nid = a\n");

    (void)ms_config_get(cfg, "node", "id", NULL);
    assert_unknown(cfg, NULL, 2, "key stray outside any [section]");
    ms_config_free(cfg);
}

static void test_bool_spellings(void **state)
{
    static const struct {
        const char *text;
        int want; /* -1: refused */
    } cases[] = {
        {"yes", 1},   {"YES", 1},         {"True", 1}, {"1", 1},     {"no", 0},  {"No", 0},
        {"false", 0}, {"FALSE", 0},       {"0", 0},    {"ja", -1},   {"on", -1}, {"off", -1},
        {"2", -1},    {"yes please", -1}, {"y", -1},   {"nope", -1}, {"01", -1},
    };
    char text[128], err[256], want[256];
    ms_config *cfg;
    size_t i;
    int v;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), "[policy]\n\ninbound = %s\n", cases[i].text);
        cfg = load_ok(text);
        v = 7;
        err[0] = '\0';
        if (cases[i].want >= 0) {
            assert_int_equal(
                ms_config_get_bool(cfg, "policy", "inbound", !cases[i].want, &v, err, sizeof(err)),
                0);
            assert_int_equal(v, cases[i].want);
        } else {
            assert_int_equal(ms_config_get_bool(cfg, "policy", "inbound", 0, &v, err, sizeof(err)),
                             MS_ECONFIG);
            assert_int_equal(v, 7); /* untouched */
            snprintf(want, sizeof(want),
                     "[policy] inbound: want yes or no (or true/false, 1/0), "
                     "not \"%s\"",
                     cases[i].text);
            assert_at(err, 3, want);
        }
        ms_config_free(cfg);
        teardown(NULL);
    }
}

static void test_bool_default_when_empty_or_absent(void **state)
{
    ms_config *cfg = load_ok("[kafka]\ngroup_commit =\n");
    char err[256];
    int v;

    assert_int_equal(ms_config_get_bool(cfg, "kafka", "group_commit", 1, &v, err, sizeof(err)), 0);
    assert_int_equal(v, 1);
    assert_int_equal(ms_config_get_bool(cfg, "kafka", "group_commit", 0, &v, err, sizeof(err)), 0);
    assert_int_equal(v, 0);
    assert_int_equal(ms_config_get_bool(cfg, "smtp", "refuse_suppressed", 1, &v, err, sizeof(err)),
                     0);
    assert_int_equal(v, 1);
    ms_config_free(cfg);
}

static void test_bool_from_environment_names_the_variable(void **state)
{
    ms_config *cfg = load_ok("[listener.mx]\nproxy = no\n");
    char err[256];
    int v;

    setenv("MAILSTREAM_LISTENER_MX_PROXY", "ja", 1);
    assert_int_equal(ms_config_get_bool(cfg, "listener.mx", "proxy", 0, &v, err, sizeof(err)),
                     MS_ECONFIG);
    assert_string_equal(err, "MAILSTREAM_LISTENER_MX_PROXY: [listener.mx] proxy: want yes or no "
                             "(or true/false, 1/0), not \"ja\"");
    setenv("MAILSTREAM_LISTENER_MX_PROXY", "TRUE", 1);
    assert_int_equal(ms_config_get_bool(cfg, "listener.mx", "proxy", 0, &v, err, sizeof(err)), 0);
    assert_int_equal(v, 1);
    unsetenv("MAILSTREAM_LISTENER_MX_PROXY");
    ms_config_free(cfg);

    /* No file at all: the environment alone, and nothing to check. */
    cfg = ms_config_load(NULL, err, sizeof(err));
    assert_non_null(cfg);
    setenv("MAILSTREAM_POLICY_INBOUND", "nein", 1);
    assert_int_equal(ms_config_get_bool(cfg, "policy", "inbound", 0, &v, err, sizeof(err)),
                     MS_ECONFIG);
    assert_non_null(strstr(err, "MAILSTREAM_POLICY_INBOUND: [policy] inbound"));
    unsetenv("MAILSTREAM_POLICY_INBOUND");
    assert_int_equal(ms_config_check_unknown(cfg, NULL, err, sizeof(err)), 0);
    ms_config_free(cfg);
}

static void test_line_limit(void **state)
{
    char text[512], err[256], want[64], value[MS_CONFIG_LINE_MAX + 2];
    const char *key = "map = ";
    size_t fill = MS_CONFIG_LINE_MAX - strlen(key);
    ms_config *cfg;

    /* The longest line: read whole, with or without a final line end. */
    memset(value, 'x', fill);
    value[fill] = '\0';
    snprintf(text, sizeof(text), "[transport]\n%s%s\n", key, value);
    cfg = load_ok(text);
    assert_string_equal(ms_config_get(cfg, "transport", "map", NULL), value);
    ms_config_free(cfg);
    teardown(NULL);
    snprintf(text, sizeof(text), "[transport]\n%s%s", key, value);
    cfg = load_ok(text);
    assert_string_equal(ms_config_get(cfg, "transport", "map", NULL), value);
    ms_config_free(cfg);
    teardown(NULL);

    /* One more: refused (inih would read the rest as a line of its own),
     * whether the line is the last or not. */
    value[fill] = 'x';
    value[fill + 1] = '\0';
    snprintf(text, sizeof(text), "[transport]\n; fine\n%s%s\n[node]\nid = a\n", key, value);
    assert_null(load_text(text, err, sizeof(err)));
    snprintf(want, sizeof(want), "line longer than %d characters", MS_CONFIG_LINE_MAX);
    assert_at(err, 3, want);
    teardown(NULL);
    snprintf(text, sizeof(text), "[transport]\n%s%s", key, value);
    assert_null(load_text(text, err, sizeof(err)));
    assert_at(err, 2, want);
}

static void test_syntax_error_line(void **state)
{
    char err[256];

    assert_null(load_text("[node]\nid = a\n\n[smtp\nx = 1\n", err, sizeof(err)));
    assert_at(err, 4, "syntax error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_unknown_key_named_with_its_line, teardown),
        cmocka_unit_test_teardown(test_unknown_section_named_at_its_header, teardown),
        cmocka_unit_test_teardown(test_first_mistake_in_file_order, teardown),
        cmocka_unit_test_teardown(test_dynamic_sections, teardown),
        cmocka_unit_test_teardown(test_sections_by_prefix, teardown),
        cmocka_unit_test_teardown(test_overridden_and_repeated_keys_are_known, teardown),
        cmocka_unit_test_teardown(test_check_in_scope, teardown),
        cmocka_unit_test_teardown(test_key_outside_any_section, teardown),
        cmocka_unit_test_teardown(test_bool_spellings, teardown),
        cmocka_unit_test_teardown(test_bool_default_when_empty_or_absent, teardown),
        cmocka_unit_test_teardown(test_bool_from_environment_names_the_variable, teardown),
        cmocka_unit_test_teardown(test_line_limit, teardown),
        cmocka_unit_test_teardown(test_syntax_error_line, teardown),
    };
    return cmocka_run_group_tests_name("ms_config", tests, NULL, NULL);
}
