/*
 * test_ms_mtasts.c - lib/mail/ms_mtasts.c: the _mta-sts TXT record (RFC
 * 8461 §3.1), the TXT answer with one, several or no STS records, the
 * policy file (§3.2, including the RFC's own example) and MX patterns
 * (§4.1).  Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ms_error.h"
#include "ms_mtasts.h"

static const struct {
    const char *txt;
    const char *id; /* NULL: invalid */
} txts[] = {
    {"v=STSv1; id=20160831085700Z;", "20160831085700Z"}, /* §3.1's example */
    {"v=STSv1;id=abc", "abc"},
    {"v=STSv1; ext=1 ; id=X9 ;", "X9"},
    {"v=STSv1 ;\tid=a", "a"},
    {"v=STSv1", NULL},                      /* no id */
    {"id=abc; v=STSv1", NULL},              /* the version first */
    {"v=STSv2; id=abc", NULL},
    {"v=STSv1; id=", NULL},
    {"v=STSv1; id=ab-c", NULL},             /* letters and digits only */
    {"v=STSv1; id=abc; id=def", NULL},
    {"v=STSv1; id=123456789012345678901234567890123", NULL}, /* 33 */
    {"v=STSv1; junk; id=a", NULL},
    {"", NULL},
};

static void test_txt(void **state)
{
    char id[MS_MTASTS_ID_MAX + 1];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(txts) / sizeof(txts[0]); i++) {
        int r = ms_mtasts_txt_parse(txts[i].txt, strlen(txts[i].txt), id);
        if (txts[i].id == NULL ? r != MS_EINVAL : r != 0 || strcmp(id, txts[i].id) != 0)
            fail_msg("\"%s\": %d", txts[i].txt, r);
    }
}

static void test_txt_pick(void **state)
{
    struct ms_dns_rr rr[3];
    struct ms_dns_result res = {.status = MS_DNS_OK, .rr = rr};
    char id[MS_MTASTS_ID_MAX + 1];
    const char *a = "v=spf1 -all", *b = "v=STSv1; id=one", *c = "v=STSv1; id=two";

    (void)state;
    rr[0] = (struct ms_dns_rr){.type = MS_DNS_TXT, .u.txt = {a, strlen(a)}};
    rr[1] = (struct ms_dns_rr){.type = MS_DNS_TXT, .u.txt = {b, strlen(b)}};
    rr[2] = (struct ms_dns_rr){.type = MS_DNS_TXT, .u.txt = {c, strlen(c)}};
    res.n = 2; /* another TXT record beside it is fine */
    assert_int_equal(ms_mtasts_txt_pick(&res, id), 0);
    assert_string_equal(id, "one");
    res.n = 3; /* two STS records: no policy (§3.1) */
    assert_int_equal(ms_mtasts_txt_pick(&res, id), MS_EINVAL);
    res.n = 1;
    assert_int_equal(ms_mtasts_txt_pick(&res, id), MS_EINVAL);
    res.status = MS_DNS_NODATA;
    res.n = 0;
    assert_int_equal(ms_mtasts_txt_pick(&res, id), MS_EINVAL);
}

static const struct {
    const char *text;
    int r;
    enum ms_mtasts_mode mode;
    uint32_t max_age;
    size_t nmx;
} policies[] = {
    /* §3.2's example, CRLF lines. */
    {"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
     "mx: backupmx.example.com\r\nmax_age: 604800\r\n",
     0, MS_MTASTS_ENFORCE, 604800, 3},
    {"version: STSv1\nmode: testing\nmx: mx.example.org\nmax_age: 86400", 0, MS_MTASTS_TESTING,
     86400, 1},
    {"max_age:0\nmode:none\nversion:STSv1\n", 0, MS_MTASTS_NONE, 0, 0},
    {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nfuture_key: x y z\n", 0,
     MS_MTASTS_ENFORCE, 1, 1},
    {"version: STSv1\nmode: enforce\nmax_age: 1\n", MS_EINVAL, 0, 0, 0}, /* no mx */
    {"mode: enforce\nmx: a.example\nmax_age: 1\n", MS_EINVAL, 0, 0, 0}, /* no version */
    {"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", MS_EINVAL, 0, 0, 0},
    {"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", MS_EINVAL, 0, 0, 0},
    {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", MS_EINVAL, 0, 0, 0},
    {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", MS_EINVAL, 0, 0, 0},
    {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nmax_age: 2\n", MS_EINVAL, 0, 0,
     0},
    {"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", MS_EINVAL, 0, 0, 0},
    {"version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", MS_EINVAL, 0, 0, 0},
    {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nno colon\n", MS_EINVAL, 0, 0,
     0},
    {"<html>not found</html>", MS_EINVAL, 0, 0, 0},
    {"", MS_EINVAL, 0, 0, 0},
};

static void test_policy(void **state)
{
    struct ms_mtasts_policy p;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
        int r = ms_mtasts_policy_parse(policies[i].text, strlen(policies[i].text), &p);
        if (r != policies[i].r)
            fail_msg("policy %zu: %d, want %d", i, r, policies[i].r);
        if (r == 0) {
            assert_int_equal(p.mode, policies[i].mode);
            assert_int_equal(p.max_age, policies[i].max_age);
            assert_int_equal(p.nmx, policies[i].nmx);
        }
    }
    {
        static char big[MS_MTASTS_POLICY_MAX + 1];
        memset(big, '\n', sizeof(big));
        assert_int_equal(ms_mtasts_policy_parse(big, sizeof(big), &p), MS_ETOOBIG);
    }
}

static void test_mx_match(void **state)
{
    const char *text = "version: STSv1\nmode: enforce\nmx: Mail.Example.com\n"
                       "mx: *.example.net\nmax_age: 60\n";
    struct ms_mtasts_policy p;

    (void)state;
    assert_int_equal(ms_mtasts_policy_parse(text, strlen(text), &p), 0);
    assert_string_equal(p.mx[0], "mail.example.com");
    assert_true(ms_mtasts_mx_match(&p, "mail.example.com"));
    assert_true(ms_mtasts_mx_match(&p, "MAIL.example.com."));
    assert_false(ms_mtasts_mx_match(&p, "x.mail.example.com"));
    assert_false(ms_mtasts_mx_match(&p, "example.com"));
    /* §4.1: "*.example.net" is one label, not more, not none. */
    assert_true(ms_mtasts_mx_match(&p, "mx1.example.net"));
    assert_false(ms_mtasts_mx_match(&p, "a.b.example.net"));
    assert_false(ms_mtasts_mx_match(&p, "example.net"));
    assert_false(ms_mtasts_mx_match(&p, ".example.net"));
    assert_false(ms_mtasts_mx_match(&p, ""));
    assert_string_equal(ms_mtasts_mode_name(MS_MTASTS_TESTING), "testing");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_txt_pick),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_mx_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
