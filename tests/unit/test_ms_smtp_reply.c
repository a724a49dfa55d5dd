/*
 * test_ms_smtp_reply.c - lib/mail/ms_smtp_reply.c: SMTP reply parser, enhanced status
 * codes, reply formatting and EHLO keywords.  Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_smtp_reply.h"
#include "ms_error.h"

struct parse_case {
    const char *name;
    const char *in;
    int want;            /* bytes consumed, or MS_E* */
    int code;
    const char *dsn;
    size_t nlines;
    const char *first;   /* text of line 0 */
    const char *last;    /* text of the last line */
};

static const struct parse_case parse_cases[] = {
    {"single", "250 OK\r\n", 8, 250, "", 1, "OK", "OK"},
    {"single with dsn", "250 2.1.0 Ok\r\n", 14, 250, "2.1.0", 1, "2.1.0 Ok", "2.1.0 Ok"},
    {"code only", "250\r\n", 5, 250, "", 1, "", ""},
    {"bare LF", "220 hi\n", 7, 220, "", 1, "hi", "hi"},
    {"multi", "250-mx.example\r\n250-SIZE 1000\r\n250 8BITMIME\r\n", 45, 250, "", 3,
     "mx.example", "8BITMIME"},
    {"multi with dsn", "550-5.1.1 No such user\r\n550 5.1.1 see docs\r\n", 44, 550, "5.1.1", 2,
     "5.1.1 No such user", "5.1.1 see docs"},
    {"trailing data kept", "354 go ahead\r\n250 next\r\n", 14, 354, "", 1, "go ahead",
     "go ahead"},
    {"incomplete line", "250 OK", MS_EAGAIN, 0, NULL, 0, NULL, NULL},
    {"incomplete multi", "250-a\r\n250-b\r\n", MS_EAGAIN, 0, NULL, 0, NULL, NULL},
    {"empty", "", MS_EAGAIN, 0, NULL, 0, NULL, NULL},
    {"codes differ", "250-a\r\n251 b\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"bad separator", "250+a\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"short", "25\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"not digits", "abc def\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"class 1", "150 x\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"class 6", "650 x\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"second digit 6", "260 x\r\n", MS_EPROTO, 0, NULL, 0, NULL, NULL},
    {"dsn class mismatch", "250 5.1.1 odd\r\n", 15, 250, "", 1, "5.1.1 odd", "5.1.1 odd"},
    {"dsn glued", "550 5.1.1x\r\n", 12, 550, "", 1, "5.1.1x", "5.1.1x"},
    {"dsn 3-digit parts", "451 4.123.456 busy\r\n", 20, 451, "4.123.456", 1,
     "4.123.456 busy", "4.123.456 busy"},
    {"dsn 4-digit part", "451 4.1234.1 x\r\n", 16, 451, "", 1, "4.1234.1 x", "4.1234.1 x"},
    {"dsn alone", "250 2.0.0\r\n", 11, 250, "2.0.0", 1, "2.0.0", "2.0.0"},
};

static void test_parse_table(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
        const struct parse_case *c = &parse_cases[i];
        struct ms_reply r;
        int n = ms_reply_parse(c->in, strlen(c->in), &r);

        if (n != c->want)
            fail_msg("%s: got %d, want %d", c->name, n, c->want);
        if (n < 0)
            continue;
        assert_int_equal(r.code, c->code);
        assert_string_equal(r.dsn, c->dsn);
        assert_int_equal(r.nlines, c->nlines);
        assert_int_equal(r.text_len[0], strlen(c->first));
        assert_memory_equal(r.text[0], c->first, strlen(c->first));
        assert_int_equal(r.text_len[r.nlines - 1], strlen(c->last));
        assert_memory_equal(r.text[r.nlines - 1], c->last, strlen(c->last));
    }
}

/* Every prefix of a complete reply needs more input; never an error. */
static void test_parse_prefixes(void **state)
{
    const char *in = "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n";
    struct ms_reply r;
    size_t i;

    (void)state;
    for (i = 0; i < strlen(in); i++)
        assert_int_equal(ms_reply_parse(in, i, &r), MS_EAGAIN);
    assert_int_equal(ms_reply_parse(in, strlen(in), &r), (int)strlen(in));
}

static void test_parse_line_limit(void **state)
{
    size_t len = MS_REPLY_LINE_MAX + 10;
    char *buf = malloc(len + 2);
    struct ms_reply r;

    (void)state;
    memcpy(buf, "250 ", 4);
    memset(buf + 4, 'x', len - 4);
    /* No newline yet, already past the limit: no point waiting. */
    assert_int_equal(ms_reply_parse(buf, len, &r), MS_ETOOBIG);
    /* Exactly at the limit with CRLF: fine. */
    buf[MS_REPLY_LINE_MAX] = '\r';
    buf[MS_REPLY_LINE_MAX + 1] = '\n';
    assert_int_equal(ms_reply_parse(buf, MS_REPLY_LINE_MAX + 2, &r), MS_REPLY_LINE_MAX + 2);
    /* One past the limit. */
    memset(buf + 4, 'x', len - 4);
    buf[MS_REPLY_LINE_MAX + 1] = '\r';
    buf[MS_REPLY_LINE_MAX + 2] = '\n';
    assert_int_equal(ms_reply_parse(buf, MS_REPLY_LINE_MAX + 3, &r), MS_ETOOBIG);
    free(buf);
}

static void test_parse_lines_limit(void **state)
{
    char buf[(MS_REPLY_LINES_MAX + 2) * 8];
    struct ms_reply r;
    size_t n = 0, i;

    (void)state;
    for (i = 0; i < MS_REPLY_LINES_MAX - 1; i++)
        n += (size_t)sprintf(buf + n, "250-k\r\n");
    n += (size_t)sprintf(buf + n, "250 k\r\n");
    assert_int_equal(ms_reply_parse(buf, n, &r), (int)n);
    assert_int_equal(r.nlines, MS_REPLY_LINES_MAX);
    n = 0;
    for (i = 0; i < MS_REPLY_LINES_MAX; i++)
        n += (size_t)sprintf(buf + n, "250-k\r\n");
    n += (size_t)sprintf(buf + n, "250 k\r\n");
    assert_int_equal(ms_reply_parse(buf, n, &r), MS_ETOOBIG);
}

static void test_format(void **state)
{
    const char *in = "550-5.1.1 The account does not exist.\r\n"
                     "550-5.1.1 Please try\r\n"
                     "550 5.1.1 again later\r\n";
    struct ms_reply r;
    char out[256], small[24];
    size_t n;

    (void)state;
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    n = ms_reply_format(&r, out, sizeof(out));
    assert_string_equal(out, "550 5.1.1 The account does not exist. Please try again later");
    assert_int_equal(n, strlen(out));
    /* Cut visibly. */
    n = ms_reply_format(&r, small, sizeof(small));
    assert_int_equal(n, sizeof(small) - 1);
    assert_string_equal(small, "550 5.1.1 The accoun...");
    /* Code only. */
    assert_true(ms_reply_parse("221\r\n", 5, &r) > 0);
    ms_reply_format(&r, out, sizeof(out));
    assert_string_equal(out, "221");
}

static void test_dsn_extract(void **state)
{
    char dsn[MS_REPLY_DSN_MAX + 1];

    (void)state;
    assert_int_equal(ms_reply_dsn_extract(451, "4.7.1 greylisted", 16, dsn), 5);
    assert_string_equal(dsn, "4.7.1");
    assert_int_equal(ms_reply_dsn_extract(451, "5.7.1 wrong class", 17, dsn), 0);
    assert_string_equal(dsn, "");
    assert_int_equal(ms_reply_dsn_extract(250, "2.0", 3, dsn), 0);
    assert_int_equal(ms_reply_dsn_extract(250, "2..0 x", 6, dsn), 0);
    assert_int_equal(ms_reply_dsn_extract(250, "2.0.", 4, dsn), 0);
    assert_int_equal(ms_reply_dsn_extract(550, "5.999.999", 9, dsn), 9);
    assert_string_equal(dsn, "5.999.999");
}

static void test_ehlo(void **state)
{
    const char *in = "250-mx.example greets you\r\n"
                     "250-PIPELINING\r\n"
                     "250-SIZE 10240000\r\n"
                     "250-8bitmime\r\n"
                     "250-ENHANCEDSTATUSCODES\r\n"
                     "250-SMTPUTF8\r\n"
                     "250-SIZEX\r\n"
                     "250 CHUNKING\r\n";
    struct ms_reply r;
    struct ms_ehlo e;

    (void)state;
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.flags, MS_EHLO_PIPELINING | MS_EHLO_SIZE | MS_EHLO_8BITMIME |
                                  MS_EHLO_ENHANCEDSTATUSCODES | MS_EHLO_SMTPUTF8 |
                                  MS_EHLO_CHUNKING);
    assert_int_equal(e.size_max, 10240000);

    /* SIZE without a number: no fixed limit.  The greeting is no keyword. */
    in = "250-SIZE\r\n250 SIZE\r\n";
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.flags, MS_EHLO_SIZE);
    assert_int_equal(e.size_max, 0);

    in = "250 mx.example\r\n";
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.flags, 0);

    /* RFC 3461 DSN and RFC 8689 REQUIRETLS; a longer word is neither. */
    in = "250-mx\r\n250-DSN\r\n250-REQUIRETLSX\r\n250 requiretls\r\n";
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.flags, MS_EHLO_DSN | MS_EHLO_REQUIRETLS);
    in = "250-mx\r\n250 REQUIRETLSX\r\n";
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.flags, 0);

    /* Overflow: treated as no limit. */
    in = "250-x\r\n250 SIZE 999999999999999999999999\r\n";
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.size_max, 0);
}

/* RFC 4954 §3: "AUTH" SP mechanism *(SP mechanism), names case-insensitive;
 * the old "AUTH=" form; unknown mechanisms ignored; BINARYMIME. */
static void test_ehlo_auth(void **state)
{
    static const struct {
        const char *name, *in;
        unsigned flags, auth;
    } cases[] = {
        {"plain login", "250-mx\r\n250 AUTH PLAIN LOGIN\r\n", MS_EHLO_AUTH,
         MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN},
        {"lower case", "250-mx\r\n250 auth login\r\n", MS_EHLO_AUTH, MS_AUTH_MECH_LOGIN},
        {"others only", "250-mx\r\n250 AUTH CRAM-MD5 SCRAM-SHA-256 XOAUTH2\r\n", MS_EHLO_AUTH,
         0},
        {"mixed, extra spaces", "250-mx\r\n250 AUTH  CRAM-MD5   PLAIN \r\n", MS_EHLO_AUTH,
         MS_AUTH_MECH_PLAIN},
        {"old form", "250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH GSSAPI\r\n", MS_EHLO_AUTH,
         MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN},
        {"no mechanisms", "250-mx\r\n250 AUTH\r\n", MS_EHLO_AUTH, 0},
        {"prefix is not a name", "250-mx\r\n250 AUTH PLAINX LOGINS XPLAIN\r\n", MS_EHLO_AUTH,
         0},
        {"not the keyword", "250-mx\r\n250 AUTHX PLAIN\r\n", 0, 0},
        {"greeting is no keyword", "250 AUTH PLAIN\r\n", 0, 0},
        {"binarymime", "250-mx\r\n250-CHUNKING\r\n250 BINARYMIME\r\n",
         MS_EHLO_CHUNKING | MS_EHLO_BINARYMIME, 0},
    };
    struct ms_reply r;
    struct ms_ehlo e;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_true(ms_reply_parse(cases[i].in, strlen(cases[i].in), &r) > 0);
        ms_ehlo_parse(&r, &e);
        if (e.flags != cases[i].flags || e.auth != cases[i].auth)
            fail_msg("%s: flags %#x auth %#x, want %#x %#x", cases[i].name, e.flags, e.auth,
                     cases[i].flags, cases[i].auth);
    }
}

/* Only the first MS_EHLO_AUTH_MECHS_MAX names of a line are looked at. */
static void test_ehlo_auth_limit(void **state)
{
    char in[2048];
    size_t n = 0, i;
    struct ms_reply r;
    struct ms_ehlo e;

    (void)state;
    n += (size_t)snprintf(in + n, sizeof(in) - n, "250-mx\r\n250 AUTH");
    for (i = 0; i < MS_EHLO_AUTH_MECHS_MAX; i++)
        n += (size_t)snprintf(in + n, sizeof(in) - n, " X%zu", i);
    snprintf(in + n, sizeof(in) - n, " PLAIN\r\n");
    assert_true(ms_reply_parse(in, strlen(in), &r) > 0);
    ms_ehlo_parse(&r, &e);
    assert_int_equal(e.flags, MS_EHLO_AUTH);
    assert_int_equal(e.auth, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),     cmocka_unit_test(test_parse_prefixes),
        cmocka_unit_test(test_parse_line_limit), cmocka_unit_test(test_parse_lines_limit),
        cmocka_unit_test(test_format),          cmocka_unit_test(test_dsn_extract),
        cmocka_unit_test(test_ehlo),            cmocka_unit_test(test_ehlo_auth),
        cmocka_unit_test(test_ehlo_auth_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
