/*
 * Unit tests for lib/mail/ms_authres: building the field (value quoting,
 * comments, folding, "none"), reading the authserv-id (RFC 8601 §2.2 with
 * CFWS), stripping fields that claim our id, and the "already applied"
 * check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ms_authres.h"
#include "ms_buf.h"
#include "ms_error.h"

static void test_build(void **state)
{
    struct ms_authres a;
    struct ms_authres_prop spf[] = {{"smtp.mailfrom", "joe@example.com"}};
    struct ms_authres_prop dkim[] = {
        {"header.d", "example.com"}, {"header.s", "sel"}, {"header.b", "ab/c+="},
        {"header.i", ""}};
    struct ms_authres_prop odd[] = {{"smtp.mailfrom", "\"odd local\"@example.com"},
                                    {"smtp.helo", "bad\r\nname"}};
    char *s;
    size_t len;

    ms_authres_init(&a, "mx.example.org");
    assert_int_equal(ms_authres_add(&a, "spf", "pass", NULL, spf, 1), 0);
    assert_int_equal(ms_authres_add(&a, "dkim", "pass", NULL, dkim, 4), 0);
    assert_int_equal(ms_authres_add(&a, "dmarc", "fail", "p=reject (dis=reject)", NULL, 0), 0);
    assert_int_equal(ms_authres_add(&a, "spf", "none", NULL, odd, 2), 0);
    s = ms_authres_finish(&a, &len);
    assert_string_equal(s, "Authentication-Results: mx.example.org;\r\n"
                           "\tspf=pass smtp.mailfrom=joe@example.com;\r\n"
                           "\tdkim=pass header.d=example.com header.s=sel header.b=\"ab/c+=\";\r\n"
                           "\tdmarc=fail (p=reject \\(dis=reject\\));\r\n"
                           "\tspf=none smtp.mailfrom=\"\\\"odd local\\\"@example.com\" "
                           "smtp.helo=\"bad??name\"\r\n");
    assert_int_equal(len, strlen(s));
    free(s);
    ms_authres_free(&a);

    ms_authres_init(&a, "mx");
    s = ms_authres_finish(&a, NULL);
    assert_string_equal(s, "Authentication-Results: mx; none\r\n");
    free(s);
    ms_authres_free(&a);
}

static void test_build_limit(void **state)
{
    struct ms_authres a;
    char big[2000];
    struct ms_authres_prop p[] = {{"header.d", big}};
    char *s;
    int i, ok = 0;

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ms_authres_init(&a, "mx");
    for (i = 0; i < 20; i++)
        if (ms_authres_add(&a, "dkim", "pass", NULL, p, 1) == 0)
            ok++;
        else
            break;
    assert_true(ok > 0 && ok < 20);
    s = ms_authres_finish(&a, NULL);
    assert_true(strlen(s) <= MS_AUTHRES_MAX + 16);
    assert_memory_equal(s + strlen(s) - 2, "\r\n", 2);
    free(s);
    ms_authres_free(&a);
}

static void test_id(void **state)
{
    static const struct {
        const char *value, *id;
        int rc;
    } cases[] = {
        {" mx.example.org; spf=pass", "mx.example.org", 0},
        {"mx.example.org 1; none", "mx.example.org", 0},
        {" (comment (nested)) \r\n\t mx.example.org;", "mx.example.org", 0},
        {" \"quoted.id\"; none", "quoted.id", 0},
        {"mx.example.org", "mx.example.org", 0},
        {" ;", NULL, MS_EPROTO},
        {"", NULL, MS_EPROTO},
        {" (unclosed mx.example.org;", NULL, MS_EPROTO},
        {" \"unclosed", NULL, MS_EPROTO},
    };
    char out[64];
    size_t i;
    int rc;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rc = ms_authres_id(cases[i].value, strlen(cases[i].value), out, sizeof(out));
        if (rc != cases[i].rc || (rc == 0 && strcmp(out, cases[i].id) != 0))
            fail_msg("%zu: rc %d id %s", i, rc, rc == 0 ? out : "-");
    }
    assert_int_equal(ms_authres_id(" abcdefgh;", 10, out, 4), MS_ETOOBIG);
}

static void test_strip(void **state)
{
    const char *msg = "Received: from x by mx\r\n"
                      "Authentication-Results: MX.example.org; spf=pass\r\n"
                      "Subject: hi\r\n"
                      "authentication-results : (forged)\r\n mx.example.org; dkim=pass\r\n"
                      "Authentication-Results: other.example; dmarc=pass\r\n"
                      "Authentication-Results: mx.example.org.evil; dmarc=pass\r\n"
                      "\r\n"
                      "Authentication-Results: mx.example.org; in the body\r\n";
    const char *want = "Received: from x by mx\r\n"
                       "Subject: hi\r\n"
                       "Authentication-Results: other.example; dmarc=pass\r\n"
                       "Authentication-Results: mx.example.org.evil; dmarc=pass\r\n"
                       "\r\n"
                       "Authentication-Results: mx.example.org; in the body\r\n";
    struct ms_buf out;

    ms_buf_init(&out, 1 << 20);
    assert_int_equal(ms_authres_strip(msg, strlen(msg), "mx.example.org", &out), 2);
    assert_int_equal(out.len, strlen(want));
    assert_memory_equal(out.data, want, out.len);
    ms_buf_reset(&out);
    /* nothing to strip; no header/body separator; empty message */
    assert_int_equal(ms_authres_strip(want, strlen(want), "none.example", &out), 0);
    assert_memory_equal(out.data, want, out.len);
    ms_buf_reset(&out);
    assert_int_equal(ms_authres_strip("Authentication-Results: mx; x", 29, "mx", &out), 1);
    assert_int_equal(out.len, 0);
    assert_int_equal(ms_authres_strip("", 0, "mx", &out), 0);
    ms_buf_free(&out);
}

static void test_applied(void **state)
{
    const char *ours = "Authentication-Results: mx; none\r\nReceived: x\r\n\r\n";
    const char *below = "Received: x\r\nAuthentication-Results: mx; none\r\n\r\n";
    const char *sig = "DKIM-Signature: v=1\r\nAuthentication-Results: mx; none\r\n"
                      "Received: x\r\n\r\n";

    assert_true(ms_authres_applied(ours, strlen(ours), "mx"));
    assert_true(ms_authres_applied(sig, strlen(sig), "MX"));
    assert_false(ms_authres_applied(below, strlen(below), "mx"));
    assert_false(ms_authres_applied(ours, strlen(ours), "other"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build), cmocka_unit_test(test_build_limit),
        cmocka_unit_test(test_id),    cmocka_unit_test(test_strip),
        cmocka_unit_test(test_applied),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
