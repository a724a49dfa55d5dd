/*
 * test_ms_addrlist.c - table-driven tests of the header address parser
 * (lib/mail/ms_addrlist.c): the RFC 5322 3.4 grammar, its obsolete forms
 * (4.4), UTF-8 (RFC 6532), and the addr-specs it hands on.  Many inputs
 * are the examples of RFC 5322 Appendix A.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ms_addrlist.h"
#include "ms_error.h"

struct seen {
    int n;
    char addrs[4][MS_ADDR_SPEC_MAX + 1];
    int stop_at; /* 1-based mailbox whose callback fails, 0: none */
};

static int collect(void *arg, const char *addr)
{
    struct seen *s = arg;

    if (s->n < 4)
        snprintf(s->addrs[s->n], sizeof(s->addrs[0]), "%s", addr);
    s->n++;
    return s->stop_at && s->n == s->stop_at ? MS_ENOTFOUND : 0;
}

struct addr_case {
    const char *in;
    enum ms_addr_kind kind;
    int want;            /* mailbox count, or the error */
    const char *first;   /* the first addr-spec (NULL: none checked) */
    const char *second;
};

#define MB MS_ADDR_MAILBOX
#define ML MS_ADDR_MAILBOX_LIST
#define AL MS_ADDR_ADDRESS_LIST

static const struct addr_case cases[] = {
    /* RFC 5322 A.1.1, A.1.2, A.1.3 */
    {"John Doe <jdoe@machine.example>", ML, 1, "jdoe@machine.example", NULL},
    {"Mary Smith <mary@example.net>", MB, 1, "mary@example.net", NULL},
    {"\"Joe Q. Public\" <john.q.public@example.com>", ML, 1, "john.q.public@example.com", NULL},
    {"Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>", AL, 3, "mary@x.test",
     "jdoe@example.org"},
    {"<boss@nil.test>, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>", AL, 2,
     "boss@nil.test", "sysservices@example.net"},
    {"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;", AL, 3, "c@a.test",
     "joe@where.test"},
    {"Undisclosed recipients:;", AL, 0, NULL, NULL},
    /* A.5: comments everywhere. */
    {"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", ML, 1, "pete@silly.test",
     NULL},
    {"A Group(Some people)\r\n     :Chris Jones <c@(Chris's host.)public.example>,\r\n"
     "         joe@example.org,\r\n  John <jdoe@one.test> (my dear friend); (the end of the "
     "group)",
     AL, 3, "c@public.example", "joe@example.org"},
    /* Obsolete forms (4.4). */
    {"Joe Q. Public <john.q.public@example.com>", ML, 1, "john.q.public@example.com", NULL},
    {"a@b.example, , c@d.example,", ML, 2, "a@b.example", "c@d.example"},
    {"<@relay.test,@other.test:joe@example.com>", MB, 1, "joe@example.com", NULL},
    {"joe . public @ example . com", MB, 1, "joe.public@example.com", NULL},
    {"\"quoted\".part@example.com", MB, 1, "\"quoted\".part@example.com", NULL},
    {"joe@[192.0.2.1]", MB, 1, "joe@[192.0.2.1]", NULL},
    /* RFC 6532 3.2: UTF-8 in names and addresses. */
    {"J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbcro.example>", ML, 1, "j\xc3\xb6rg@b\xc3\xbcro.example",
     NULL},
    /* Not addresses. */
    {"", ML, MS_EPROTO, NULL, NULL},
    {"   (only a comment)  ", ML, MS_EPROTO, NULL, NULL},
    {"John Doe jdoe@example.com", ML, MS_EPROTO, NULL, NULL},
    {"jdoe@example.com <jdoe@example.com>", ML, MS_EPROTO, NULL, NULL},
    {"John Doe", ML, MS_EPROTO, NULL, NULL},
    {"<>", ML, MS_EPROTO, NULL, NULL},
    {"<jdoe@example.com", ML, MS_EPROTO, NULL, NULL},
    {"jdoe@", ML, MS_EPROTO, NULL, NULL},
    {"@example.com", ML, MS_EPROTO, NULL, NULL},
    {"a..b@example.com", ML, MS_EPROTO, NULL, NULL},
    {".a@example.com", ML, MS_EPROTO, NULL, NULL},
    {"a.@example.com", ML, MS_EPROTO, NULL, NULL},
    {"a@example..com", ML, MS_EPROTO, NULL, NULL},
    {"a@example.com.", ML, MS_EPROTO, NULL, NULL},
    {"(unclosed a@b.example", ML, MS_EPROTO, NULL, NULL},
    {"\"unclosed@b.example", ML, MS_EPROTO, NULL, NULL},
    {"a@[1.2.3.4", ML, MS_EPROTO, NULL, NULL},
    {"a\x01@b.example", ML, MS_EPROTO, NULL, NULL},
    {"a@b.example; c@d.example", ML, MS_EPROTO, NULL, NULL},
    /* Groups are for address lists only (XXX: RFC 6854). */
    {"Group: a@b.example;", ML, MS_EPROTO, NULL, NULL},
    {"Group: a@b.example;", MB, MS_EPROTO, NULL, NULL},
    {"Outer: Inner: a@b.example;;", AL, MS_EPROTO, NULL, NULL},
    /* Sender is one mailbox. */
    {"a@b.example, c@d.example", MB, MS_EPROTO, NULL, NULL},
    {"a@b.example,", MB, MS_EPROTO, NULL, NULL},
};

static void test_cases(void **state)
{
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct addr_case *c = &cases[i];
        struct seen s;
        int r;

        memset(&s, 0, sizeof(s));
        r = ms_addrlist_parse(c->in, strlen(c->in), c->kind, collect, &s);
        if (r != c->want)
            fail_msg("case %zu \"%s\": got %d, want %d", i, c->in, r, c->want);
        if (c->want >= 0)
            assert_int_equal(s.n, c->want);
        if (c->first)
            assert_string_equal(s.addrs[0], c->first);
        if (c->second)
            assert_string_equal(s.addrs[1], c->second);
        /* The same without a callback. */
        assert_int_equal(ms_addrlist_parse(c->in, strlen(c->in), c->kind, NULL, NULL), c->want);
    }
}

/* The callback's error stops the parse and comes back. */
static void test_callback_stops(void **state)
{
    const char *in = "a@b.example, c@d.example, e@f.example";
    struct seen s;

    memset(&s, 0, sizeof(s));
    s.stop_at = 2;
    assert_int_equal(ms_addrlist_parse(in, strlen(in), ML, collect, &s), MS_ENOTFOUND);
    assert_int_equal(s.n, 2);
}

/* An addr-spec longer than MS_ADDR_SPEC_MAX fails rather than being cut. */
static void test_too_long(void **state)
{
    char in[MS_ADDR_SPEC_MAX + 64];
    size_t n = MS_ADDR_SPEC_MAX + 1 - strlen("@b.example");

    memset(in, 'x', n);
    strcpy(in + n, "@b.example");
    assert_int_equal(ms_addrlist_parse(in, strlen(in), MB, NULL, NULL), MS_ETOOBIG);
    in[0] = '\0';
    memset(in, 'x', n - 1);
    strcpy(in + n - 1, "@b.example");
    assert_int_equal(ms_addrlist_parse(in, strlen(in), MB, NULL, NULL), 1);
}

/* Lengths are honoured: nothing past n is read. */
static void test_length_bound(void **state)
{
    const char *in = "a@b.example, garbage <";

    assert_int_equal(ms_addrlist_parse(in, strlen("a@b.example"), ML, NULL, NULL), 1);
    assert_int_equal(ms_addrlist_parse(in, strlen(in), ML, NULL, NULL), MS_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_length_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
