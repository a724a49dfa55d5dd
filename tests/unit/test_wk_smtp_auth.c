/*
 * test_wk_smtp_auth.c - worker/smtp_auth.c: SMTP AUTH client mechanisms (RFC
 * 4954, PLAIN RFC 4616, LOGIN): choice, field limits, the PLAIN initial
 * response (golden values) and 334 challenges.  Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../../worker/smtp_auth.h"
#include "ms_error.h"

static void test_pick(void **state)
{
    (void)state;
    assert_int_equal(wk_auth_pick(MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN), MS_AUTH_MECH_PLAIN);
    assert_int_equal(wk_auth_pick(MS_AUTH_MECH_LOGIN), MS_AUTH_MECH_LOGIN);
    assert_int_equal(wk_auth_pick(MS_AUTH_MECH_PLAIN), MS_AUTH_MECH_PLAIN);
    assert_int_equal(wk_auth_pick(0), MS_AUTH_MECH_NONE);
    assert_string_equal(wk_auth_mech_name(MS_AUTH_MECH_PLAIN), "PLAIN");
    assert_string_equal(wk_auth_mech_name(MS_AUTH_MECH_LOGIN), "LOGIN");
    assert_string_equal(wk_auth_mech_name(MS_AUTH_MECH_NONE), "none");
}

static void test_mechs_parse(void **state)
{
    (void)state;
    assert_int_equal(wk_auth_mechs_parse("plain, login"), MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN);
    assert_int_equal(wk_auth_mechs_parse("LOGIN"), MS_AUTH_MECH_LOGIN);
    assert_int_equal(wk_auth_mechs_parse(" Plain "), MS_AUTH_MECH_PLAIN);
    assert_int_equal(wk_auth_mechs_parse("login,,plain"), MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN);
    assert_int_equal(wk_auth_mechs_parse(""), MS_EINVAL);
    assert_int_equal(wk_auth_mechs_parse(" , "), MS_EINVAL);
    assert_int_equal(wk_auth_mechs_parse("plain, cram-md5"), MS_EINVAL);
    assert_int_equal(wk_auth_mechs_parse("plainlogin"), MS_EINVAL);
}

static void test_field_limits(void **state)
{
    char s[WK_AUTH_FIELD_MAX + 2];

    (void)state;
    memset(s, 'x', sizeof(s));
    s[WK_AUTH_FIELD_MAX] = '\0';
    assert_true(wk_auth_field_ok(s)); /* exactly the limit */
    s[WK_AUTH_FIELD_MAX] = 'x';
    s[WK_AUTH_FIELD_MAX + 1] = '\0';
    assert_false(wk_auth_field_ok(s)); /* one more: refused, not cut */
    assert_false(wk_auth_field_ok(""));
    assert_false(wk_auth_field_ok("pass\rword"));
    assert_false(wk_auth_field_ok("pass\nword"));
    assert_true(wk_auth_field_ok("p\xc3\xa4ss w\x01rd")); /* UTF-8, spaces, controls ok */
}

static void test_plain(void **state)
{
    static const struct {
        const char *user, *password, *want;
    } cases[] = {
        /* RFC 4616 §4's example without the authzid. */
        {"tim", "tanstaaftanstaaf", "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"},
        {"a", "b", "AGEAYg=="},
        {"relay@mailstream.test", "S3cret-relay-pw",
         "AHJlbGF5QG1haWxzdHJlYW0udGVzdABTM2NyZXQtcmVsYXktcHc="},
    };
    char out[WK_AUTH_PLAIN_MAX], big[WK_AUTH_FIELD_MAX + 1];
    size_t i;
    int n;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        n = wk_auth_plain(cases[i].user, cases[i].password, out, sizeof(out));
        assert_int_equal(n, (int)strlen(cases[i].want));
        assert_string_equal(out, cases[i].want);
    }
    /* The longest fields fit the named buffer. */
    memset(big, 'p', WK_AUTH_FIELD_MAX);
    big[WK_AUTH_FIELD_MAX] = '\0';
    n = wk_auth_plain(big, big, out, sizeof(out));
    assert_int_equal(n, (int)sizeof(out) - 1);
    assert_int_equal(strlen(out), sizeof(out) - 1);
    /* Refusals. */
    assert_int_equal(wk_auth_plain("", "x", out, sizeof(out)), MS_EINVAL);
    assert_int_equal(wk_auth_plain("u", "a\r\nb", out, sizeof(out)), MS_EINVAL);
    assert_int_equal(wk_auth_plain("u", "p", out, sizeof(out) - 1), MS_EINVAL);
}

static void test_challenge(void **state)
{
    static const struct {
        const char *name, *in;
        int want;
        const char *decoded;
    } cases[] = {
        {"username", "334 VXNlcm5hbWU6\r\n", 9, "Username:"},
        {"password", "334 UGFzc3dvcmQ6\r\n", 9, "Password:"},
        {"empty", "334 \r\n", 0, ""},
        {"code only", "334\r\n", 0, ""},
        {"trailing space", "334 VXNlcm5hbWU6  \r\n", 9, "Username:"},
        {"not base64", "334 Username:\r\n", MS_EPROTO, NULL},
        {"bad padding", "334 VXNlcm5hbWU6=\r\n", MS_EPROTO, NULL},
        {"not 334", "235 2.7.0 ok\r\n", MS_EPROTO, NULL},
        {"multi-line", "334-VXNl\r\n334 cm5h\r\n", MS_EPROTO, NULL},
    };
    struct ms_reply r;
    uint8_t out[WK_AUTH_CHALLENGE_MAX];
    size_t i;
    int n;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_true(ms_reply_parse(cases[i].in, strlen(cases[i].in), &r) > 0);
        n = wk_auth_challenge(&r, out, sizeof(out));
        if (n != cases[i].want)
            fail_msg("%s: %d, want %d", cases[i].name, n, cases[i].want);
        if (n > 0)
            assert_memory_equal(out, cases[i].decoded, (size_t)n);
    }
    /* Bigger than the buffer: MS_ETOOBIG, nothing cut. */
    {
        const char *in = "334 QUFBQUFBQUFBQUFB\r\n"; /* 12 octets */
        assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
        assert_int_equal(wk_auth_challenge(&r, out, 8), MS_ETOOBIG);
        assert_int_equal(wk_auth_challenge(&r, out, 12), 12);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_mechs_parse),
        cmocka_unit_test(test_field_limits),
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_challenge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
