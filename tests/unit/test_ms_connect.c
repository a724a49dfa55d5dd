/*
 * test_ms_connect.c - the [kafka] and [redis] connection settings
 * (lib/io/ms_connect.h): what each security_protocol needs and refuses,
 * passwords from files (trailing line ends stripped) and from the
 * environment, and that no error message ever holds a password.  The
 * connections themselves are tested against a real broker and Redis in
 * tests/integration/test_kafka_security.py and test_redis_auth.py.
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

#include "ms_connect.h"
#include "ms_error.h"
#include "unit_config.h"

#define SECRET "s3cr3t-Pa55"

static char pwfile[64];

static int setup(void **state)
{
    int fd;

    (void)state;
    snprintf(pwfile, sizeof(pwfile), "/tmp/mailstream_unit_pwXXXXXX");
    fd = mkstemp(pwfile);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, SECRET "\r\n\n", strlen(SECRET) + 3), (ssize_t)strlen(SECRET) + 3);
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(pwfile);
    return 0;
}

/* Load text (with %s replaced by the password file) and read [kafka]. */
static int kafka(const char *text, struct ms_kafka_conf *kc, struct ms_conn_secrets *s,
                 char *err, size_t errlen)
{
    char buf[1024];
    ms_config *cfg;
    int r;

    snprintf(buf, sizeof(buf), text, pwfile);
    cfg = unit_config(buf);
    memset(kc, 0, sizeof(*kc));
    memset(s, 0, sizeof(*s));
    err[0] = '\0';
    r = ms_connect_kafka_conf(cfg, kc, s, err, errlen);
    /* The strings point into the config: compare before freeing it. */
    if (r == 0 && kc->sasl_username)
        assert_true(strlen(kc->sasl_username) > 0);
    assert_null(strstr(err, SECRET));
    ms_config_free(cfg);
    return r;
}

static void test_kafka_default_plaintext(void **state)
{
    struct ms_kafka_conf kc;
    struct ms_conn_secrets s;
    char err[256];

    (void)state;
    assert_int_equal(kafka("[kafka]\nbrokers = b:9092\n", &kc, &s, err, sizeof(err)), 0);
    assert_string_equal(kc.security_protocol, "plaintext");
    assert_null(kc.sasl_mechanism);
    assert_null(kc.sasl_password);
    assert_null(kc.ssl_ca_file);
    ms_conn_secrets_clear(&s);
}

static void test_kafka_sasl_ssl_from_file(void **state)
{
    struct ms_kafka_conf kc;
    struct ms_conn_secrets s;
    char err[256];

    (void)state;
    assert_int_equal(kafka("[kafka]\nsecurity_protocol = SASL_SSL\nsasl_mechanism = scram-sha-256\n"
                           "sasl_username = u\nsasl_password_file = %s\nssl_ca_file = /ca.pem\n",
                           &kc, &s, err, sizeof(err)), 0);
    assert_string_equal(kc.security_protocol, "sasl_ssl");
    assert_string_equal(kc.sasl_mechanism, "SCRAM-SHA-256");
    assert_string_equal(kc.sasl_password, SECRET); /* line ends stripped */
    assert_ptr_equal(kc.sasl_password, s.kafka_sasl_password);
    ms_conn_secrets_clear(&s);
    assert_null(s.kafka_sasl_password);
}

static void test_kafka_password_from_environment(void **state)
{
    struct ms_kafka_conf kc;
    struct ms_conn_secrets s;
    char err[256];

    (void)state;
    setenv("MAILSTREAM_KAFKA_SASL_PASSWORD", "from-env", 1);
    assert_int_equal(kafka("[kafka]\nsecurity_protocol = sasl_plaintext\nsasl_username = u\n",
                           &kc, &s, err, sizeof(err)), 0);
    assert_string_equal(kc.sasl_password, "from-env");
    assert_string_equal(kc.sasl_mechanism, "SCRAM-SHA-512"); /* the default */
    ms_conn_secrets_clear(&s);
    /* Both the variable and a file: refused, naming both keys. */
    assert_int_equal(kafka("[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n"
                           "sasl_password_file = %s\n", &kc, &s, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "sasl_password and sasl_password_file are both set"));
    unsetenv("MAILSTREAM_KAFKA_SASL_PASSWORD");
}

static void test_kafka_mtls(void **state)
{
    struct ms_kafka_conf kc;
    struct ms_conn_secrets s;
    char err[256];

    (void)state;
    assert_int_equal(kafka("[kafka]\nsecurity_protocol = ssl\nssl_cert_file = /c.pem\n"
                           "ssl_key_file = /k.pem\nssl_key_password_file = %s\n",
                           &kc, &s, err, sizeof(err)), 0);
    assert_null(kc.sasl_mechanism);
    assert_string_equal(kc.ssl_key_password, SECRET);
    ms_conn_secrets_clear(&s);
}

static void test_kafka_refused(void **state)
{
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"[kafka]\nsecurity_protocol = tls\n", "want plaintext, ssl, sasl_plaintext or sasl_ssl"},
        {"[kafka]\nsecurity_protocol = sasl_ssl\nsasl_mechanism = GSSAPI\nsasl_username = u\n"
         "sasl_password_file = %s\n", "want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"},
        {"[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n", "needs sasl_username and"},
        {"[kafka]\nsecurity_protocol = sasl_ssl\nsasl_password_file = %s\n", "needs sasl_username"},
        {"[kafka]\nsasl_username = u\nsasl_password_file = %s\n", "need security_protocol sasl_"},
        {"[kafka]\nsecurity_protocol = sasl_plaintext\nsasl_username = u\nsasl_password_file = %s\n"
         "ssl_ca_file = /ca\n", "ssl_* settings need security_protocol ssl or sasl_ssl"},
        {"[kafka]\nsecurity_protocol = ssl\nssl_cert_file = /c\n", "go together"},
        {"[kafka]\nsecurity_protocol = ssl\nssl_key_password_file = %s\n", "without ssl_key_file"},
        {"[kafka]\nsecurity_protocol = sasl_ssl\nsasl_username = u\n"
         "sasl_password_file = /nonexistent/pw\n", "/nonexistent/pw: No such file"},
    };
    struct ms_kafka_conf kc;
    struct ms_conn_secrets s;
    char err[256];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (kafka(bad[i].text, &kc, &s, err, sizeof(err)) != MS_ECONFIG)
            fail_msg("accepted: %s", bad[i].text);
        if (strstr(err, bad[i].why) == NULL)
            fail_msg("%s: error \"%s\", want \"%s\"", bad[i].text, err, bad[i].why);
        assert_null(s.kafka_sasl_password); /* nothing left to wipe on failure */
    }
}

static void test_redis(void **state)
{
    struct ms_redis_conf rc;
    struct ms_conn_secrets s;
    char err[256], buf[256];
    ms_config *cfg;

    (void)state;
    memset(&s, 0, sizeof(s));
    cfg = unit_config("[redis]\nhost = r\nport = 6380\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_string_equal(rc.host, "r");
    assert_int_equal(rc.port, 6380);
    assert_null(rc.password);
    assert_null(rc.username);
    ms_config_free(cfg);

    /* Sentinel mode: read with the rest and checked (ms_redis_conf_check). */
    cfg = unit_config("[redis]\nsentinels = s1:26379,s2:26380\nmaster_name = mail\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_string_equal(rc.sentinels, "s1:26379,s2:26380");
    assert_string_equal(rc.master_name, "mail");
    ms_config_free(cfg);
    cfg = unit_config("[redis]\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_string_equal(rc.sentinels, "");
    assert_string_equal(rc.master_name, MS_REDIS_MASTER_NAME);
    assert_int_equal(rc.linger_ms, MS_REDIS_LINGER_DEFAULT_MS);
    ms_config_free(cfg);

    /* linger_ms: 0 (write each loop iteration's commands) to the limit. */
    cfg = unit_config("[redis]\nlinger_ms = 0\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_int_equal(rc.linger_ms, 0);
    ms_config_free(cfg);
    snprintf(buf, sizeof(buf), "[redis]\nlinger_ms = %d\n", MS_REDIS_LINGER_MAX_MS);
    cfg = unit_config(buf);
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_int_equal(rc.linger_ms, MS_REDIS_LINGER_MAX_MS);
    ms_config_free(cfg);
    snprintf(buf, sizeof(buf), "[redis]\nlinger_ms = %d\n", MS_REDIS_LINGER_MAX_MS + 1);
    cfg = unit_config(buf);
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "[redis] linger_ms"));
    ms_config_free(cfg);
    cfg = unit_config("[redis]\nlinger_ms = -1\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), MS_ECONFIG);
    ms_config_free(cfg);
    cfg = unit_config("[redis]\nsentinels = s1\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "[redis] sentinels"));
    ms_config_free(cfg);

    snprintf(buf, sizeof(buf), "[redis]\nusername = ms\npassword_file = %s\n", pwfile);
    cfg = unit_config(buf);
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_string_equal(rc.username, "ms");
    assert_string_equal(rc.password, SECRET);
    ms_conn_secrets_clear(&s);
    ms_config_free(cfg);

    cfg = unit_config("[redis]\nusername = ms\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "username needs password"));
    ms_config_free(cfg);

    setenv("MAILSTREAM_REDIS_PASSWORD", "env-pw", 1);
    cfg = unit_config("[redis]\n");
    assert_int_equal(ms_connect_redis_conf(cfg, &rc, &s, err, sizeof(err)), 0);
    assert_string_equal(rc.password, "env-pw");
    ms_conn_secrets_clear(&s);
    ms_config_free(cfg);
    unsetenv("MAILSTREAM_REDIS_PASSWORD");
}

static void test_secret_file_limits(void **state)
{
    char path[] = "/tmp/mailstream_unit_secXXXXXX", err[256], *p;
    int fd = mkstemp(path);

    (void)state;
    assert_true(fd >= 0);
    /* Exactly the limit, plus a line end: taken. */
    assert_int_equal(write(fd, "abcd\n", 5), 5);
    assert_non_null(p = ms_secret_read_file(path, 4, err, sizeof(err)));
    assert_string_equal(p, "abcd");
    free(p);
    /* One more octet: refused, not cut. */
    assert_null(ms_secret_read_file(path, 3, err, sizeof(err)));
    assert_non_null(strstr(err, "longer than allowed"));
    assert_null(strstr(err, "abc"));
    /* Empty, or only a line end. */
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, "\n", 1, 0), 1);
    assert_null(ms_secret_read_file(path, 4, err, sizeof(err)));
    assert_non_null(strstr(err, "empty"));
    /* A NUL inside. */
    assert_int_equal(pwrite(fd, "a\0b", 3, 0), 3);
    assert_null(ms_secret_read_file(path, 4, err, sizeof(err)));
    assert_non_null(strstr(err, "NUL"));
    close(fd);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kafka_default_plaintext),
        cmocka_unit_test(test_kafka_sasl_ssl_from_file),
        cmocka_unit_test(test_kafka_password_from_environment),
        cmocka_unit_test(test_kafka_mtls),
        cmocka_unit_test(test_kafka_refused),
        cmocka_unit_test(test_redis),
        cmocka_unit_test(test_secret_file_limits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
