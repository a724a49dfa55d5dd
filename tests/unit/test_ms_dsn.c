/*
 * test_ms_dsn.c - lib/mail/ms_dsn.c: the RFC 3464 report and the reply
 * classes that decide hard vs soft.  Golden fragments and a table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_buf.h"
#include "ms_dsn.h"
#include "ms_error.h"

static const char msg[] = "From: a@example.org\r\nSubject: hi\r\n\r\nbody line\r\n";

static void build(struct ms_dsn *in, struct ms_buf *out)
{
    ms_buf_init(out, 1 << 20);
    assert_int_equal(ms_dsn_build(in, out), 0);
    assert_int_equal(ms_buf_append(out, "", 1), 0); /* NUL for strstr */
}

static void base(struct ms_dsn *in, struct ms_dsn_rcpt *r)
{
    memset(in, 0, sizeof(*in));
    memset(r, 0, 2 * sizeof(*r));
    r[0].final_rcpt = "nobody@example.net";
    r[0].orcpt = "rfc822;Nobody@Example.NET";
    r[0].action = MS_DSN_FAILED;
    r[0].status = "5.1.1";
    r[0].remote_mta = "mx.example.net";
    r[0].code = 550;
    r[0].diagnostic = "550 5.1.1 <nobody@example.net>: User unknown";
    r[0].last_attempt_us = 1795000000000000LL;
    r[1].final_rcpt = "late@example.com";
    r[1].action = MS_DSN_FAILED;
    r[1].status = "4.4.7";
    r[1].diagnostic = "message expired";
    in->reporting_mta = "relay.example.org";
    in->queue_id = "DSNQID";
    in->orig_queue_id = "ORIGQID";
    in->to = "a@example.org";
    in->envid = "ENV-42";
    in->arrival_us = 1795000000000000LL;
    in->now_us = 1795000100000000LL;
    in->message = msg;
    in->message_len = sizeof(msg) - 1;
    in->rcpts = r;
    in->nrcpts = 2;
}

static void test_dsn_full(void **state)
{
    struct ms_dsn in;
    struct ms_dsn_rcpt r[2];
    struct ms_buf out;
    const char *s;

    (void)state;
    base(&in, r);
    build(&in, &out);
    s = out.data;
    assert_non_null(strstr(s, "To: <a@example.org>\r\n"));
    assert_non_null(strstr(s, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                              "\tboundary=\"DSNQID/relay.example.org\"\r\n"));
    assert_non_null(strstr(s, "Auto-Submitted: auto-replied\r\n"));
    assert_non_null(strstr(s, "Content-Type: message/delivery-status\r\n\r\n"
                              "Reporting-MTA: dns; relay.example.org\r\n"));
    assert_non_null(strstr(s, "Original-Envelope-Id: ENV-42\r\n"));
    assert_non_null(strstr(s, "Arrival-Date: "));
    assert_non_null(strstr(s, "\r\n\r\nOriginal-Recipient: rfc822;Nobody@Example.NET\r\n"
                              "Final-Recipient: rfc822; nobody@example.net\r\n"
                              "Action: failed\r\nStatus: 5.1.1\r\n"
                              "Remote-MTA: dns; mx.example.net\r\n"
                              "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>: User "
                              "unknown\r\n"));
    assert_non_null(strstr(s, "Final-Recipient: rfc822; late@example.com\r\nAction: failed\r\n"
                              "Status: 4.4.7\r\nDiagnostic-Code: X-Mailstream; message expired"));
    assert_non_null(strstr(s, "Content-Type: message/rfc822\r\n\r\n"
                              "From: a@example.org\r\nSubject: hi\r\n\r\nbody line\r\n"
                              "\r\n--DSNQID/relay.example.org--\r\n"));
    ms_buf_free(&out);
}

static void test_dsn_hdrs(void **state)
{
    struct ms_dsn in;
    struct ms_dsn_rcpt r[2];
    struct ms_buf out;

    (void)state;
    base(&in, r);
    in.ret_hdrs = 1;
    in.envid = NULL;
    build(&in, &out);
    assert_non_null(strstr(out.data, "Content-Type: text/rfc822-headers\r\n\r\n"
                                     "From: a@example.org\r\nSubject: hi\r\n\r\n\r\n--"));
    assert_null(strstr(out.data, "body line"));
    assert_null(strstr(out.data, "Original-Envelope-Id"));
    ms_buf_free(&out);
}

/* RFC 3464 §2.3.3 Action: delayed and §2.3.9 Will-Retry-Until; a report
 * with only delayed recipients says the mail is still being retried. */
static void test_dsn_delayed(void **state)
{
    struct ms_dsn in;
    struct ms_dsn_rcpt r[2];
    struct ms_buf out;

    (void)state;
    base(&in, r);
    r[0].action = MS_DSN_DELAYED;
    r[0].status = "4.4.1";
    r[0].will_retry_until_us = 1795432000000000LL;
    in.nrcpts = 1;
    build(&in, &out);
    assert_non_null(strstr(out.data, "Subject: Delayed Mail (still being retried)\r\n"));
    assert_non_null(strstr(out.data, "Action: delayed\r\nStatus: 4.4.1\r\n"));
    assert_non_null(strstr(out.data, "Will-Retry-Until: "));
    ms_buf_free(&out);

    /* Mixed with a failure: a bounce; Will-Retry-Until only for delayed. */
    r[0].action = MS_DSN_FAILED;
    r[1].will_retry_until_us = 1795432000000000LL;
    r[1].action = MS_DSN_DELAYED;
    in.nrcpts = 2;
    build(&in, &out);
    assert_non_null(strstr(out.data, "Subject: Undelivered Mail Returned to Sender\r\n"));
    assert_non_null(strstr(out.data, "Action: failed\r\n"));
    assert_non_null(strstr(out.data, "late@example.com\r\nAction: delayed\r\n"));
    assert_non_null(strstr(out.data, "Will-Retry-Until: "));
    ms_buf_free(&out);
    r[0].will_retry_until_us = 1795432000000000LL;
    r[1].will_retry_until_us = 0;
    r[1].action = MS_DSN_FAILED;
    build(&in, &out);
    assert_null(strstr(out.data, "Will-Retry-Until: "));
    ms_buf_free(&out);
}

/* RFC 3461 §5.2.2 / §5.2.3 and RFC 3464 §2.3.3: a success report says so,
 * per recipient, and returns the headers unless RET=FULL (§4.3 speaks of
 * failed DSNs only), even without RET and for a small message. */
static void test_dsn_success(void **state)
{
    struct ms_dsn in;
    struct ms_dsn_rcpt r[2];
    struct ms_buf out;

    (void)state;
    base(&in, r);
    r[0].action = MS_DSN_RELAYED;
    r[0].status = "2.0.0";
    r[0].code = 250;
    r[0].diagnostic = "250 2.0.0 Ok: queued as 4711";
    r[1].action = MS_DSN_DELIVERED;
    r[1].status = "2.1.5";
    r[1].code = 250;
    r[1].diagnostic = "250 2.1.5 <late@example.com> delivered";
    build(&in, &out);
    assert_non_null(strstr(out.data, "Subject: Successful Mail Delivery Report\r\n"));
    assert_non_null(strstr(out.data, "Final-Recipient: rfc822; nobody@example.net\r\n"
                                     "Action: relayed\r\nStatus: 2.0.0\r\n"
                                     "Remote-MTA: dns; mx.example.net\r\n"
                                     "Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as 4711\r\n"));
    assert_non_null(strstr(out.data, "Final-Recipient: rfc822; late@example.com\r\n"
                                     "Action: delivered\r\nStatus: 2.1.5\r\n"));
    assert_non_null(strstr(out.data, "<nobody@example.net>: relayed; host mx.example.net said"));
    assert_non_null(strstr(out.data, "Content-Description: Delivered Message Headers\r\n"
                                     "Content-Type: text/rfc822-headers\r\n"));
    assert_null(strstr(out.data, "body line"));
    assert_null(strstr(out.data, "Will-Retry-Until"));
    ms_buf_free(&out);

    /* RET=FULL asks for the message with any report. */
    in.ret_full = 1;
    build(&in, &out);
    assert_non_null(strstr(out.data, "Content-Type: message/rfc822\r\n"));
    assert_non_null(strstr(out.data, "body line"));
    ms_buf_free(&out);

    /* A failure among them: a bounce, the whole message without RET. */
    in.ret_full = 0;
    r[1].action = MS_DSN_FAILED;
    r[1].status = "5.1.1";
    build(&in, &out);
    assert_non_null(strstr(out.data, "Subject: Undelivered Mail Returned to Sender\r\n"));
    assert_non_null(strstr(out.data, "Action: relayed\r\n"));
    assert_non_null(strstr(out.data, "Content-Description: Undelivered Message\r\n"
                                     "Content-Type: message/rfc822\r\n"));
    ms_buf_free(&out);
}

/* RFC 3461 §4: xtext, "+" and "=" and everything outside "!".."~" as +XX;
 * a result that does not fit (a +XX not whole either) is MS_ETOOBIG and "". */
static void test_xtext(void **state)
{
    static const struct {
        const char *in;
        size_t outlen;
        int want;
        const char *out;
    } cases[] = {
        {"rcpt@example.net", 64, 16, "rcpt@example.net"},
        {"a+b=c d\x7f\xc3\xa9", 64, 22, "a+2Bb+3Dc+20d+7F+C3+A9"},
        {"", 64, 0, ""},
        {"ab", 3, 2, "ab"},
        {"abc", 3, MS_ETOOBIG, ""},
        {"a+", 4, MS_ETOOBIG, ""},
        {"a+", 5, 4, "a+2B"},
    };
    char out[64];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = ms_xtext_encode(cases[i].in, out, cases[i].outlen);
        if (got != cases[i].want || strcmp(out, cases[i].out) != 0)
            fail_msg("case %zu: got %d \"%s\", want %d \"%s\"", i, got, out, cases[i].want,
                     cases[i].out);
    }
    assert_int_equal(ms_xtext_encode("x", out, 0), MS_ETOOBIG);
}

/* RFC 3461 §4.1: the NOTIFY value; NEVER alone; malformed masks: none. */
static void test_notify_param(void **state)
{
    char out[24];

    (void)state;
    assert_int_equal(ms_dsn_notify_param(MS_DSN_NOTIFY_SUCCESS, out, sizeof(out)), 7);
    assert_string_equal(out, "SUCCESS");
    assert_int_equal(ms_dsn_notify_param(MS_DSN_NOTIFY_DELAY | MS_DSN_NOTIFY_SUCCESS |
                                             MS_DSN_NOTIFY_FAILURE,
                                         out, sizeof(out)),
                     21);
    assert_string_equal(out, "SUCCESS,FAILURE,DELAY");
    assert_int_equal(ms_dsn_notify_param(MS_DSN_NOTIFY_FAILURE | MS_DSN_NOTIFY_DELAY, out,
                                         sizeof(out)),
                     13);
    assert_string_equal(out, "FAILURE,DELAY");
    assert_int_equal(ms_dsn_notify_param(MS_DSN_NOTIFY_NEVER, out, sizeof(out)), 5);
    assert_string_equal(out, "NEVER");
    assert_int_equal(ms_dsn_notify_param(0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(ms_dsn_notify_param(MS_DSN_NOTIFY_NEVER | MS_DSN_NOTIFY_DELAY, out,
                                         sizeof(out)),
                     0);
    assert_int_equal(ms_dsn_notify_param(16, out, sizeof(out)), 0);
    assert_int_equal(ms_dsn_notify_param(MS_DSN_NOTIFY_SUCCESS | MS_DSN_NOTIFY_FAILURE, out, 10),
                     0); /* does not fit: nothing, not half */
    assert_string_equal(out, "");
}

static void test_dsn_refuses_injection(void **state)
{
    struct ms_dsn in;
    struct ms_dsn_rcpt r[2];
    struct ms_buf out;

    (void)state;
    base(&in, r);
    in.to = "a@example.org\r\nBcc: x@y";
    ms_buf_init(&out, 1 << 20);
    assert_int_equal(ms_dsn_build(&in, &out), MS_EINVAL);
    base(&in, r);
    in.nrcpts = 0;
    assert_int_equal(ms_dsn_build(&in, &out), MS_EINVAL);
    /* Reply text is cleaned, never a new line. */
    base(&in, r);
    r[0].diagnostic = "550 bad\r\nInjected: yes \xff";
    ms_buf_reset(&out);
    assert_int_equal(ms_dsn_build(&in, &out), 0);
    assert_int_equal(ms_buf_append(&out, "", 1), 0);
    assert_null(strstr(out.data, "\r\nInjected"));
    assert_non_null(strstr(out.data, "550 bad??Injected: yes ?"));
    ms_buf_free(&out);
}

struct ccase {
    int code;
    const char *dsn, *text;
    enum ms_reply_class cls;
    int hard;
};

static const struct ccase ccases[] = {
    {250, "2.0.0", "ok", MS_CLASS_OK, 0},
    {550, "5.1.1", "User unknown", MS_CLASS_BAD_MAILBOX, 1},
    {550, "5.0.0", "No such user here", MS_CLASS_BAD_MAILBOX, 1},
    {552, "5.2.2", "Mailbox full", MS_CLASS_MAILBOX_FULL, 0},
    {452, "4.2.2", "Over quota", MS_CLASS_MAILBOX_FULL, 0},
    {550, "5.0.0", "user is over quota", MS_CLASS_MAILBOX_FULL, 0},
    {554, "5.7.1", "Message rejected as spam", MS_CLASS_POLICY, 1},
    {550, "5.0.0", "blocked by policy", MS_CLASS_POLICY, 1},
    {556, "5.1.10", "null MX", MS_CLASS_DNS, 1},
    {550, "5.1.2", "Host not found", MS_CLASS_DNS, 1},
    {0, "4.4.3", "temporary DNS failure", MS_CLASS_DNS, 0},
    {530, "5.7.10", "Must issue a STARTTLS command first", MS_CLASS_TLS, 1},
    {550, "5.7.30", "REQUIRETLS support required", MS_CLASS_TLS, 1},
    {0, "4.7.5", "TLS handshake failed", MS_CLASS_TLS, 0},
    {552, "5.3.4", "Message too big", MS_CLASS_TOO_LARGE, 1},
    {552, "", "size limit", MS_CLASS_TOO_LARGE, 1},
    {0, "4.4.1", "connect to 127.0.0.1:25: connection refused", MS_CLASS_NETWORK, 0},
    {421, "4.4.2", "timeout", MS_CLASS_NETWORK, 0},
    {451, "4.3.0", "Queue trouble", MS_CLASS_OTHER, 0},
    {554, "5.0.0", "Transaction failed", MS_CLASS_OTHER, 1},
};

static void test_reply_class(void **state)
{
    size_t i;
    int hard;

    (void)state;
    for (i = 0; i < sizeof(ccases) / sizeof(ccases[0]); i++) {
        const struct ccase *c = &ccases[i];
        enum ms_reply_class got = ms_reply_class(c->code, c->dsn, c->text, &hard);
        if (got != c->cls || hard != c->hard)
            fail_msg("case %zu (%d %s %s): class %s hard %d, want %s %d", i, c->code, c->dsn,
                     c->text, ms_reply_class_name(got), hard, ms_reply_class_name(c->cls),
                     c->hard);
    }
}

static void test_date(void **state)
{
    char d[64];

    (void)state;
    ms_dsn_date(0, d, sizeof(d));
    assert_string_equal(d, "Thu, 01 Jan 1970 00:00:00 +0000");
    ms_dsn_date(1795000000000000LL, d, sizeof(d));
    assert_string_equal(d, "Wed, 18 Nov 2026 11:06:40 +0000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dsn_full),
        cmocka_unit_test(test_dsn_hdrs),
        cmocka_unit_test(test_dsn_delayed),
        cmocka_unit_test(test_dsn_success),
        cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_notify_param),
        cmocka_unit_test(test_dsn_refuses_injection),
        cmocka_unit_test(test_reply_class),
        cmocka_unit_test(test_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
