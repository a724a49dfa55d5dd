/*
 * test_smtp_parse.c - table-driven tests of the SMTP command grammar
 * (frontend/smtp_parse.c), hostile input included.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ms_error.h"
#include "../../frontend/smtp_parse.h"

struct line_case {
    const char *in;
    size_t len; /* 0: strlen */
    size_t max;
    int want;   /* return value */
    size_t content;
};

static void test_line_framing(void **state)
{
    static char longline[FE_SMTP_LINE_MAX + 10];
    static const struct line_case cases[] = {
        {"NOOP\r\n", 0, FE_SMTP_LINE_MAX, 6, 4},
        {"NOOP\n", 0, FE_SMTP_LINE_MAX, 5, 4},
        {"NOOP", 0, FE_SMTP_LINE_MAX, MS_EAGAIN, 0},
        {"NOOP\r", 0, FE_SMTP_LINE_MAX, MS_EAGAIN, 0},
        {"\r\n", 0, FE_SMTP_LINE_MAX, 2, 0},
        {"NOOP\r\nQUIT\r\n", 0, FE_SMTP_LINE_MAX, 6, 4},
        {"NO\rOP\r\n", 0, FE_SMTP_LINE_MAX, 7, 5},
    };
    size_t i, content;
    int r;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        content = 0;
        r = fe_smtp_line(cases[i].in, cases[i].len ? cases[i].len : strlen(cases[i].in),
                         cases[i].max, &content);
        assert_int_equal(r, cases[i].want);
        if (r > 0)
            assert_int_equal(content, cases[i].content);
    }
    /* Exactly the limit: 510 octets and CRLF fit, 511 without LF do not. */
    memset(longline, 'A', sizeof(longline));
    longline[FE_SMTP_LINE_MAX - 2] = '\r';
    longline[FE_SMTP_LINE_MAX - 1] = '\n';
    assert_int_equal(fe_smtp_line(longline, sizeof(longline), FE_SMTP_LINE_MAX, &content),
                     FE_SMTP_LINE_MAX);
    memset(longline, 'A', sizeof(longline));
    assert_int_equal(fe_smtp_line(longline, FE_SMTP_LINE_MAX - 1, FE_SMTP_LINE_MAX, &content),
                     MS_EAGAIN);
    assert_int_equal(fe_smtp_line(longline, FE_SMTP_LINE_MAX, FE_SMTP_LINE_MAX, &content),
                     MS_ETOOBIG);
    assert_int_equal(fe_smtp_line(longline, sizeof(longline), FE_SMTP_LINE_MAX, &content),
                     MS_ETOOBIG);
}

struct cmd_case {
    const char *in;
    int ok;           /* 1: parse succeeds */
    enum fe_verb verb;
    const char *path; /* expected path when ok and MAIL/RCPT */
    size_t nparams;
    const char *reply_prefix; /* expected reply prefix when !ok */
};

static const struct cmd_case cmd_cases[] = {
    {"EHLO client.example", 1, FE_VERB_EHLO, NULL, 0, NULL},
    {"ehlo client.example", 1, FE_VERB_EHLO, NULL, 0, NULL},
    {"HELO x", 1, FE_VERB_HELO, NULL, 0, NULL},
    {"NOOP", 1, FE_VERB_NOOP, NULL, 0, NULL},
    {"QUIT  ", 1, FE_VERB_QUIT, NULL, 0, NULL},
    {"STARTTLS", 1, FE_VERB_STARTTLS, NULL, 0, NULL},
    {"AUTH PLAIN AGJvYgBzZWNyZXQ=", 1, FE_VERB_AUTH, NULL, 0, NULL},
    {"FOO bar", 1, FE_VERB_UNKNOWN, NULL, 0, NULL},
    {"MAILFROM:<a@b.c>", 1, FE_VERB_UNKNOWN, NULL, 0, NULL},
    {"", 1, FE_VERB_UNKNOWN, NULL, 0, NULL},
    {"MAIL FROM:<a@b.example>", 1, FE_VERB_MAIL, "a@b.example", 0, NULL},
    {"mail from:<a@b.example>", 1, FE_VERB_MAIL, "a@b.example", 0, NULL},
    {"MAIL FROM: <a@b.example>", 1, FE_VERB_MAIL, "a@b.example", 0, NULL},
    {"MAIL FROM:<>", 1, FE_VERB_MAIL, "", 0, NULL},
    {"MAIL FROM:<> SIZE=100 BODY=8BITMIME", 1, FE_VERB_MAIL, "", 2, NULL},
    {"MAIL FROM:<a@b.example> SMTPUTF8", 1, FE_VERB_MAIL, "a@b.example", 1, NULL},
    {"MAIL FROM:<\"john doe\"@b.example>", 1, FE_VERB_MAIL, "\"john doe\"@b.example", 0, NULL},
    {"MAIL FROM:<\"a>b\"@b.example>", 1, FE_VERB_MAIL, "\"a>b\"@b.example", 0, NULL},
    {"MAIL FROM:<@relay1.example,@relay2.example:u@b.example>", 1, FE_VERB_MAIL,
     "u@b.example", 0, NULL},
    {"MAIL FROM:<u@[192.0.2.1]>", 1, FE_VERB_MAIL, "u@[192.0.2.1]", 0, NULL},
    {"MAIL FROM:<u@[IPv6:2001:db8::1]>", 1, FE_VERB_MAIL, "u@[IPv6:2001:db8::1]", 0, NULL},
    {"MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8", 1, FE_VERB_MAIL, "j\xc3\xb6rg@b.example", 1,
     NULL},
    {"RCPT TO:<postmaster>", 1, FE_VERB_RCPT, "postmaster", 0, NULL},
    {"RCPT TO:<u@mailstream.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+40x.example", 1,
     FE_VERB_RCPT, "u@mailstream.test", 2, NULL},
    /* errors */
    {"MAIL", 0, FE_VERB_MAIL, NULL, 0, "501 5.5.4"},
    {"MAIL TO:<a@b.example>", 0, FE_VERB_MAIL, NULL, 0, "501 5.5.4"},
    {"MAIL FROM:a@b.example", 0, FE_VERB_MAIL, NULL, 0, "501 5.5.4"},
    {"MAIL FROM:<a@b.example", 0, FE_VERB_MAIL, NULL, 0, "501 5.1.7"},
    {"MAIL FROM:<a b@b.example>", 0, FE_VERB_MAIL, NULL, 0, "501 5.1.7"},
    {"MAIL FROM:<a@b..example>", 0, FE_VERB_MAIL, NULL, 0, "501 5.1.7"},
    {"MAIL FROM:<a@-b.example>", 0, FE_VERB_MAIL, NULL, 0, "501 5.1.7"},
    {"MAIL FROM:<a@b.example>x", 0, FE_VERB_MAIL, NULL, 0, "501 5.5.4"},
    {"MAIL FROM:<a@[300.1.1.1]>", 0, FE_VERB_MAIL, NULL, 0, "501 5.1.7"},
    {"MAIL FROM:<a@b.example> =x", 0, FE_VERB_MAIL, NULL, 0, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> SIZE=", 0, FE_VERB_MAIL, NULL, 0, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> A=1 B=2 C=3 D=4 E=5 F=6 G=7 H=8 I=9 J=1 K=1 L=1 M=1 N=1 O=1 "
     "P=1 Q=1",
     0, FE_VERB_MAIL, NULL, 0, "501 5.5.4 Too many"},
    {"RCPT TO:<>", 0, FE_VERB_RCPT, NULL, 0, "501 5.1.3"},
    {"RCPT TO:<a@b.example\r>", 0, FE_VERB_RCPT, NULL, 0, "501 5.5.2"},
    {"RCPT TO:<\"unterminated@b.example>", 0, FE_VERB_RCPT, NULL, 0, "501 5.1.3"},
    {"RCPT TO:<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@b.example>", 0,
     FE_VERB_RCPT, NULL, 0, "501 5.1.3"},
    {"NOOP\x01", 0, FE_VERB_UNKNOWN, NULL, 0, "501 5.5.2"},
};

static void test_commands(void **state)
{
    struct fe_smtp_cmd cmd;
    const char *reply;
    char msg[256];
    size_t i, len;
    int r;

    (void)state;
    for (i = 0; i < sizeof(cmd_cases) / sizeof(cmd_cases[0]); i++) {
        const struct cmd_case *c = &cmd_cases[i];

        len = strlen(c->in);
        reply = NULL;
        r = fe_smtp_parse(c->in, len, &cmd, &reply);
        snprintf(msg, sizeof(msg), "case %zu: %s", i, c->in);
        if (c->ok) {
            if (r != 0)
                fail_msg("%s: unexpected error %d %s", msg, r, reply);
            if (cmd.verb != c->verb)
                fail_msg("%s: verb %d", msg, cmd.verb);
            if (c->path && strcmp(cmd.path, c->path) != 0)
                fail_msg("%s: path '%s'", msg, cmd.path);
            if (c->path && cmd.nparams != c->nparams)
                fail_msg("%s: nparams %zu", msg, cmd.nparams);
        } else {
            if (r >= 0)
                fail_msg("%s: accepted", msg);
            if (reply == NULL || strncmp(reply, c->reply_prefix, strlen(c->reply_prefix)) != 0)
                fail_msg("%s: reply '%s'", msg, reply ? reply : "(null)");
        }
    }
}

static void test_nul_in_command(void **state)
{
    static const char line[] = "RCPT TO:<a@b.example>\0 NOTIFY=NEVER";
    struct fe_smtp_cmd cmd;
    const char *reply = NULL;

    (void)state;
    assert_int_equal(fe_smtp_parse(line, sizeof(line) - 1, &cmd, &reply), MS_EPROTO);
    assert_string_equal(reply, "501 5.5.2 Invalid character in command");
}

static void test_path_too_long(void **state)
{
    char line[600], local[70];
    struct fe_smtp_cmd cmd;
    const char *reply = NULL;
    size_t i;
    int n;

    (void)state;
    memset(local, 'a', 60);
    local[60] = '\0';
    /* 60 + '@' + 4 labels of 60 + dots: over 256 with the brackets. */
    n = snprintf(line, sizeof(line), "RCPT TO:<%s@", local);
    for (i = 0; i < 4; i++)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%s%s", i ? "." : "", local);
    snprintf(line + n, sizeof(line) - (size_t)n, ">");
    assert_true(fe_smtp_parse(line, strlen(line), &cmd, &reply) < 0);
    assert_non_null(reply);
    assert_true(strncmp(reply, "501 5.5.4 Path too long", 23) == 0 ||
                strncmp(reply, "501 5.1.3", 9) == 0);
}

/* RFC 5321 §4.5.3.1.3: a path of MS_SMTP_PATH_MAX octets with its angle
 * brackets is taken, one more is "Path too long".  The local part (64) and
 * domain (labels of 60) stay within their own limits. */
static void test_path_limit(void **state)
{
    char line[600], addr[MS_SMTP_PATH_MAX + 2];
    struct fe_smtp_cmd cmd;
    const char *reply;
    size_t len;

    (void)state;
    for (len = MS_SMTP_ADDR_MAX; len <= MS_SMTP_ADDR_MAX + 1; len++) {
        size_t i;

        memset(addr, 'a', len);
        addr[64] = '@';
        for (i = 65 + 60; i < len - 1; i += 61)
            addr[i] = '.';
        addr[len] = '\0';
        snprintf(line, sizeof(line), "RCPT TO:<%s>", addr);
        reply = NULL;
        if (len == MS_SMTP_ADDR_MAX) {
            assert_int_equal(fe_smtp_parse(line, strlen(line), &cmd, &reply), 0);
            assert_int_equal(cmd.pathlen, MS_SMTP_ADDR_MAX);
            assert_string_equal(cmd.path, addr);
        } else {
            assert_int_equal(fe_smtp_parse(line, strlen(line), &cmd, &reply), MS_ETOOBIG);
            assert_string_equal(reply, "501 5.5.4 Path too long");
        }
    }
}

struct mail_case {
    const char *in;
    int ok;
    int has_size;
    uint64_t size;
    enum fe_body body;
    int smtputf8;
    enum fe_ret ret;
    const char *envid;
    const char *reply_prefix;
};

static const struct mail_case mail_cases[] = {
    {"MAIL FROM:<a@b.example>", 1, 0, 0, FE_BODY_UNSPEC, 0, FE_RET_UNSPEC, "", NULL},
    {"MAIL FROM:<a@b.example> SIZE=12345", 1, 1, 12345, FE_BODY_UNSPEC, 0, FE_RET_UNSPEC, "",
     NULL},
    {"MAIL FROM:<a@b.example> size=99999999999999999999", 1, 1, UINT64_MAX, FE_BODY_UNSPEC, 0,
     FE_RET_UNSPEC, "", NULL},
    {"MAIL FROM:<a@b.example> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1", 1, 0, 0,
     FE_BODY_8BITMIME, 1, FE_RET_HDRS, "QQ+1", NULL},
    {"MAIL FROM:<a@b.example> BODY=7bit RET=full", 1, 0, 0, FE_BODY_7BIT, 0, FE_RET_FULL, "",
     NULL},
    {"MAIL FROM:<a@b.example> AUTH=<>", 1, 0, 0, FE_BODY_UNSPEC, 0, FE_RET_UNSPEC, "", NULL},
    {"MAIL FROM:<a@b.example> SIZE=1x", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> SIZE", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4 Duplicate"},
    {"MAIL FROM:<a@b.example> BODY=BINARYMIME", 1, 0, 0, FE_BODY_BINARYMIME, 0, FE_RET_UNSPEC,
     "", NULL},
    {"MAIL FROM:<a@b.example> BODY=9BIT", 0, 0, 0, 0, 0, 0, NULL, "555 5.5.4"},
    {"MAIL FROM:<a@b.example> REQUIRETLS", 1, 0, 0, FE_BODY_UNSPEC, 0, FE_RET_UNSPEC, "", NULL},
    {"MAIL FROM:<a@b.example> REQUIRETLS=yes", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> REQUIRETLS REQUIRETLS", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> SMTPUTF8=yes", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> RET=ALL", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> ENVID=a+0A", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> ENVID=a+4", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
    {"MAIL FROM:<a@b.example> ENVID=a+zz", 0, 0, 0, 0, 0, 0, NULL, "501 5.5.4"},
};

static void test_mail_params(void **state)
{
    struct fe_smtp_cmd cmd;
    struct fe_mail_params mp;
    const char *reply;
    size_t i;
    int r;

    (void)state;
    for (i = 0; i < sizeof(mail_cases) / sizeof(mail_cases[0]); i++) {
        const struct mail_case *c = &mail_cases[i];

        reply = NULL;
        r = fe_smtp_parse(c->in, strlen(c->in), &cmd, &reply);
        if (r == 0)
            r = fe_smtp_mail_params(&cmd, &mp, &reply);
        if (c->ok) {
            if (r != 0)
                fail_msg("case %zu %s: %s", i, c->in, reply);
            assert_int_equal(mp.has_size, c->has_size);
            assert_true(mp.size == c->size);
            assert_int_equal(mp.body, c->body);
            assert_int_equal(mp.smtputf8, c->smtputf8);
            assert_int_equal(mp.ret, c->ret);
            assert_string_equal(mp.envid, c->envid);
            assert_int_equal(mp.requiretls, strstr(c->in, "REQUIRETLS") != NULL);
        } else {
            if (r == 0)
                fail_msg("case %zu %s: accepted", i, c->in);
            if (strncmp(reply, c->reply_prefix, strlen(c->reply_prefix)) != 0)
                fail_msg("case %zu %s: reply %s", i, c->in, reply);
        }
    }
}

struct rcpt_case {
    const char *in;
    int ok;
    unsigned notify;
    const char *orcpt;
};

static const struct rcpt_case rcpt_cases[] = {
    {"RCPT TO:<u@x.example>", 1, 0, ""},
    {"RCPT TO:<u@x.example> NOTIFY=NEVER", 1, FE_NOTIFY_NEVER, ""},
    {"RCPT TO:<u@x.example> NOTIFY=success,DELAY", 1, FE_NOTIFY_SUCCESS | FE_NOTIFY_DELAY, ""},
    {"RCPT TO:<u@x.example> ORCPT=rfc822;Joe+20Bloggs+40x.example", 1, 0,
     "rfc822;Joe Bloggs@x.example"},
    {"RCPT TO:<u@x.example> NOTIFY=NEVER,SUCCESS", 0, 0, NULL},
    {"RCPT TO:<u@x.example> NOTIFY=SUCCESS,SUCCESS", 0, 0, NULL},
    {"RCPT TO:<u@x.example> NOTIFY=", 0, 0, NULL},
    {"RCPT TO:<u@x.example> NOTIFY=SOMETIMES", 0, 0, NULL},
    {"RCPT TO:<u@x.example> ORCPT=rfc822", 0, 0, NULL},
    {"RCPT TO:<u@x.example> ORCPT=;x", 0, 0, NULL},
    {"RCPT TO:<u@x.example> ORCPT=rfc822;", 0, 0, NULL},
    {"RCPT TO:<u@x.example> FOO=BAR", 0, 0, NULL},
};

static void test_rcpt_params(void **state)
{
    struct fe_smtp_cmd cmd;
    struct fe_rcpt_params rp;
    const char *reply;
    size_t i;
    int r;

    (void)state;
    for (i = 0; i < sizeof(rcpt_cases) / sizeof(rcpt_cases[0]); i++) {
        const struct rcpt_case *c = &rcpt_cases[i];

        reply = NULL;
        r = fe_smtp_parse(c->in, strlen(c->in), &cmd, &reply);
        if (r == 0)
            r = fe_smtp_rcpt_params(&cmd, &rp, &reply);
        if (c->ok) {
            if (r != 0)
                fail_msg("case %zu %s: %s", i, c->in, reply);
            assert_int_equal(rp.notify, c->notify);
            assert_string_equal(rp.orcpt, c->orcpt);
        } else {
            if (r == 0)
                fail_msg("case %zu %s: accepted", i, c->in);
            assert_true(reply[0] == '5');
        }
    }
}

static void test_xtext(void **state)
{
    char out[8];

    (void)state;
    assert_int_equal(fe_xtext_decode("abc", 3, out, sizeof(out)), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(fe_xtext_decode("a+2Bb", 5, out, sizeof(out)), 3);
    assert_string_equal(out, "a+b");
    assert_int_equal(fe_xtext_decode("a+2b", 4, out, sizeof(out)), MS_EPROTO);
    assert_int_equal(fe_xtext_decode("a+2", 3, out, sizeof(out)), MS_EPROTO);
    assert_int_equal(fe_xtext_decode("a+", 2, out, sizeof(out)), MS_EPROTO);
    assert_int_equal(fe_xtext_decode("a=b", 3, out, sizeof(out)), MS_EPROTO);
    assert_int_equal(fe_xtext_decode("+00", 3, out, sizeof(out)), MS_EPROTO);
    assert_int_equal(fe_xtext_decode("+7F", 3, out, sizeof(out)), MS_EPROTO);
    /* Postfix's ORCPT for an SMTPUTF8 recipient: UTF-8 octets as hexchars. */
    assert_int_equal(fe_xtext_decode("zo+C3+AB", 8, out, sizeof(out)), 4);
    assert_string_equal(out, "zo\xc3\xab");
    assert_int_equal(fe_xtext_decode("12345678", 8, out, sizeof(out)), MS_ETOOBIG);
    assert_int_equal(fe_xtext_decode("1234567", 7, out, sizeof(out)), 7);
}

/* RFC 3030 2: "BDAT" SP chunk-size [SP end-marker]. */
static void test_bdat_args(void **state)
{
    static const struct {
        const char *in;
        int ok;
        uint64_t size;
        int last;
        int size_ok;
    } cases[] = {
        {"BDAT 100", 1, 100, 0, 1},
        {"BDAT 0 LAST", 1, 0, 1, 1},
        {"bdat 7 last", 1, 7, 1, 1},
        {"BDAT 00000000000000000000012", 1, 12, 0, 0}, /* 23 digits: too many */
        {"BDAT 9999999999999999999", 1, 9999999999999999999ULL, 0, 1},
        {"BDAT 5 FIRST", 0, 5, 0, 1},
        {"BDAT 5 LAST x", 0, 5, 0, 1},
        {"BDAT 5  LAST", 0, 5, 0, 1},
        {"BDAT x", 0, 0, 0, 0},
        {"BDAT -1", 0, 0, 0, 0},
        {"BDAT 5x", 0, 0, 0, 0},
        {"BDAT", 0, 0, 0, 0},
        {"BDAT LAST", 0, 0, 0, 0},
    };
    struct fe_smtp_cmd cmd;
    const char *reply;
    uint64_t size;
    size_t i;
    int last, size_ok, r;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        reply = NULL;
        assert_int_equal(fe_smtp_parse(cases[i].in, strlen(cases[i].in), &cmd, &reply), 0);
        assert_int_equal(cmd.verb, FE_VERB_BDAT);
        r = fe_smtp_bdat_args(cmd.args, cmd.argslen, &size, &last, &size_ok, &reply);
        if (i == 3) { /* overlong count: not ok, stream lost */
            assert_int_equal(r, MS_EPROTO);
            assert_int_equal(size_ok, 0);
            continue;
        }
        if (cases[i].ok) {
            if (r != 0)
                fail_msg("case %s: %s", cases[i].in, reply);
            assert_true(size == cases[i].size);
            assert_int_equal(last, cases[i].last);
        } else {
            if (r == 0)
                fail_msg("case %s: accepted", cases[i].in);
            assert_int_equal(strncmp(reply, "501 5.5.4", 9), 0);
            assert_int_equal(size_ok, cases[i].size_ok);
            if (size_ok)
                assert_true(size == cases[i].size);
        }
    }
}

static void test_verb_name(void **state)
{
    (void)state;
    assert_string_equal(fe_verb_name(FE_VERB_STARTTLS), "STARTTLS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_framing), cmocka_unit_test(test_commands),
        cmocka_unit_test(test_nul_in_command),
        cmocka_unit_test(test_path_too_long),
        cmocka_unit_test(test_path_limit), cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_rcpt_params),   cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_verb_name),        cmocka_unit_test(test_bdat_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
