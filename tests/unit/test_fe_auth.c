/*
 * test_fe_auth.c - AUTH building blocks (frontend/fe_auth.c): base64, SASL
 * PLAIN, the password file with its sender lists, crypt(3) checks.
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

#include "ms_error.h"
#include "../../frontend/fe_auth.h"

static void test_base64(void **state)
{
    static const struct {
        const char *in;
        int want;
        const char *out;
    } cases[] = {
        {"", 0, ""},
        {"Zg==", 1, "f"},
        {"Zm8=", 2, "fo"},
        {"Zm9v", 3, "foo"},
        {"Zm9vYg==", 4, "foob"},
        {"Zm9vYg=", MS_EPROTO, NULL},
        {"Zm9v YQ==", MS_EPROTO, NULL},
        {"Zg==Zg==", MS_EPROTO, NULL},
        {"Z===", MS_EPROTO, NULL},
        {"Zm!v", MS_EPROTO, NULL},
    };
    char out[16], enc[16];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int r = fe_base64_decode(cases[i].in, strlen(cases[i].in), out, sizeof(out));
        if (r != cases[i].want)
            fail_msg("case %s: %d", cases[i].in, r);
        if (r >= 0) {
            assert_string_equal(out, cases[i].out);
            assert_int_equal(fe_base64_encode(out, (size_t)r, enc, sizeof(enc)),
                             strlen(cases[i].in));
            assert_string_equal(enc, cases[i].in);
        }
    }
    assert_int_equal(fe_base64_decode("Zm9vYmFy", 8, out, 6), MS_ETOOBIG);
}

static void test_sasl_plain(void **state)
{
    char user[32], pass[32];

    (void)state;
    assert_int_equal(fe_sasl_plain("\0bob\0secret", 11, user, sizeof(user), pass, sizeof(pass)), 0);
    assert_string_equal(user, "bob");
    assert_string_equal(pass, "secret");
    assert_int_equal(fe_sasl_plain("bob\0bob\0secret", 14, user, sizeof(user), pass, sizeof(pass)),
                     0);
    assert_int_equal(
        fe_sasl_plain("root\0bob\0secret", 15, user, sizeof(user), pass, sizeof(pass)), MS_EPROTO);
    assert_int_equal(fe_sasl_plain("\0\0secret", 8, user, sizeof(user), pass, sizeof(pass)),
                     MS_EPROTO);
    assert_int_equal(fe_sasl_plain("\0bob", 4, user, sizeof(user), pass, sizeof(pass)), MS_EPROTO);
    assert_int_equal(fe_sasl_plain("\0bob\0se\0cret", 12, user, sizeof(user), pass, sizeof(pass)),
                     MS_EPROTO);
    assert_int_equal(fe_sasl_plain("\0bob\0", 5, user, sizeof(user), pass, sizeof(pass)), 0);
    assert_string_equal(pass, "");
}

/* "secret": openssl passwd -6 -salt abcdefgh secret */
#define HASH                                                                                   \
    "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6" \
    "IND4WQhG."

static void test_passwd_file(void **state)
{
    char path[] = "/tmp/test_fe_auth_XXXXXX", err[256];
    const struct fe_passwd_entry *e;
    struct fe_passwd *pw;
    FILE *f;
    int fd;

    (void)state;
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fprintf(f, "# comment\n\n"
               "joe@example.com:" HASH ":example.com, @example.org ,boss@corp.example\n"
               "any:" HASH "\n");
    fclose(f);
    pw = fe_passwd_load(path, err, sizeof(err));
    assert_non_null(pw);
    e = fe_passwd_find(pw, "joe@example.com");
    assert_non_null(e);
    assert_null(fe_passwd_find(pw, "JOE@example.com"));
    assert_true(fe_passwd_sender_ok(e, "joe@example.com"));
    assert_true(fe_passwd_sender_ok(e, "other@EXAMPLE.com"));
    assert_true(fe_passwd_sender_ok(e, "x@example.org"));
    assert_true(fe_passwd_sender_ok(e, "boss@corp.example"));
    assert_false(fe_passwd_sender_ok(e, "peon@corp.example"));
    assert_false(fe_passwd_sender_ok(e, "x@sub.example.com"));
    assert_false(fe_passwd_sender_ok(e, "example.com"));
    assert_true(fe_passwd_sender_ok(e, "")); /* null sender */
    assert_true(fe_passwd_sender_ok(fe_passwd_find(pw, "any"), "who@ever.example"));
    assert_true(fe_passwd_check(e->hash, "secret"));
    assert_false(fe_passwd_check(e->hash, "Secret"));
    assert_false(fe_passwd_check(e->hash, ""));
    assert_false(fe_passwd_check(NULL, "secret"));
    assert_false(fe_passwd_check("*", "secret"));
    fe_passwd_free(pw);

    f = fopen(path, "w");
    fprintf(f, "no-colon-here\n");
    fclose(f);
    assert_null(fe_passwd_load(path, err, sizeof(err)));
    assert_non_null(strstr(err, ":1:"));
    unlink(path);
    assert_null(fe_passwd_load(path, err, sizeof(err)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_sasl_plain),
        cmocka_unit_test(test_passwd_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
