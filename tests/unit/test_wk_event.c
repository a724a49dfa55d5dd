/*
 * test_wk_event.c - worker/event.c: the verdict on a recipient from its
 * reply (table-driven) and the event JSON.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../worker/event.h"
#include "ms_buf.h"
#include "ms_error.h"

/* wk_verdict(): the code first, then the class on a 5yz.  Each row is
 * what the delivery engine decided before the verdict had one home. */
static void test_verdict(void **state)
{
    static const struct {
        int code;
        const char *dsn, *reply;
        enum wk_outcome want;
        enum ms_reply_class cls;
        int hard;
    } cases[] = {
        {250, "2.0.0", "250 2.0.0 ok", WK_OUTCOME_DELIVERED, MS_CLASS_OK, 0},
        {251, "", "251 will forward", WK_OUTCOME_DELIVERED, MS_CLASS_OK, 0},
        {451, "4.3.0", "451 4.3.0 try later", WK_OUTCOME_DEFERRED, MS_CLASS_OTHER, 0},
        {421, "", "421 closing", WK_OUTCOME_DEFERRED, MS_CLASS_OTHER, 0},
        {354, "", "354 go ahead", WK_OUTCOME_DEFERRED, MS_CLASS_OTHER, 0},
        /* Our own code 0: no server reply (timeout, broken connection). */
        {0, "4.4.1", "connection timed out", WK_OUTCOME_DEFERRED, MS_CLASS_NETWORK, 0},
        {0, "4.4.3", "MX lookup failed", WK_OUTCOME_DEFERRED, MS_CLASS_DNS, 0},
        {0, "4.4.5", "destination over its rate", WK_OUTCOME_DEFERRED, MS_CLASS_NETWORK, 0},
        /* A 5.x.x status without a server reply is deferred all the same. */
        {0, "5.7.10", "REQUIRETLS: no TLS", WK_OUTCOME_DEFERRED, MS_CLASS_TLS, 1},
        {550, "5.1.1", "550 5.1.1 no such user", WK_OUTCOME_BOUNCED, MS_CLASS_BAD_MAILBOX, 1},
        {550, "5.1.2", "550 5.1.2 no such domain", WK_OUTCOME_BOUNCED, MS_CLASS_DNS, 1},
        {554, "5.7.1", "554 5.7.1 rejected", WK_OUTCOME_BOUNCED, MS_CLASS_POLICY, 1},
        {552, "", "552 message too large", WK_OUTCOME_BOUNCED, MS_CLASS_TOO_LARGE, 1},
        {550, "", "550 user unknown", WK_OUTCOME_BOUNCED, MS_CLASS_BAD_MAILBOX, 1},
        /* The override: a soft 5yz (a full mailbox) is retried. */
        {552, "5.2.2", "552 5.2.2 mailbox full", WK_OUTCOME_DEFERRED, MS_CLASS_MAILBOX_FULL, 0},
        {550, "", "550 over quota", WK_OUTCOME_DEFERRED, MS_CLASS_MAILBOX_FULL, 0},
        {452, "4.2.2", "452 4.2.2 mailbox full", WK_OUTCOME_DEFERRED, MS_CLASS_MAILBOX_FULL, 0},
    };
    enum ms_reply_class cls;
    size_t i;
    int hard;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cls = MS_CLASS__N;
        hard = -1;
        assert_int_equal(wk_verdict(cases[i].code, cases[i].dsn, cases[i].reply, &cls, &hard),
                         cases[i].want);
        assert_int_equal(cls, cases[i].cls);
        assert_int_equal(hard, cases[i].hard);
        assert_int_equal(wk_verdict(cases[i].code, cases[i].dsn, cases[i].reply, NULL, NULL),
                         cases[i].want);
    }
    assert_string_equal(wk_outcome_name(WK_OUTCOME_BOUNCED), "bounced");
}

static void test_json(void **state)
{
    struct wk_event ev = {
        .qid = "01ABC",
        .rcpt = "b\"o\\b@example.org",
        .outcome = WK_OUTCOME_DEFERRED,
        .code = 451,
        .dsn = "4.7.1",
        .reply = "451 4.7.1 try\r\nlater \x01 \xc3\xa9 \xff",
        .relay = "127.0.0.1:25",
        .node = "wk1",
        .attempt = 2,
        .delay = 1.5,
        .ts_us = 1764000000123456LL,
    };
    struct ms_buf b;

    (void)state;
    ms_buf_init(&b, 4096);
    assert_int_equal(wk_event_json(&b, &ev), 0);
    assert_int_equal(ms_buf_append(&b, "", 1), 0);
    assert_string_equal(b.data,
                        "{\"qid\":\"01ABC\",\"rcpt\":\"b\\\"o\\\\b@example.org\","
                        "\"outcome\":\"deferred\",\"code\":451,\"dsn\":\"4.7.1\","
                        "\"reply\":\"451 4.7.1 try\\r\\nlater \\u0001 \xc3\xa9 \\ufffd\","
                        "\"relay\":\"127.0.0.1:25\",\"node\":\"wk1\",\"attempt\":2,"
                        "\"delay\":1.500,\"ts\":\"2025-11-24T16:00:00.123Z\"}");
    ms_buf_free(&b);

    /* The TLS of the session, its policy level and how the server was
     * authenticated (tls_auth only with a policy). */
    ms_buf_reset(&b);
    ev.tls = "TLSv1.3 TLS_AES_128_GCM_SHA256 dane";
    ev.tls_auth = "dane";
    assert_int_equal(wk_event_json(&b, &ev), 0);
    assert_int_equal(ms_buf_append(&b, "", 1), 0);
    assert_null(strstr(b.data, "tls_auth"));
    ms_buf_reset(&b);
    ev.tls_policy = "dane-only";
    assert_int_equal(wk_event_json(&b, &ev), 0);
    assert_int_equal(ms_buf_append(&b, "", 1), 0);
    assert_non_null(strstr(b.data, ",\"tls\":\"TLSv1.3 TLS_AES_128_GCM_SHA256 dane\","
                                   "\"tls_policy\":\"dane-only\",\"tls_auth\":\"dane\","
                                   "\"node\":"));
    ms_buf_free(&b);

    /* A buffer too small fails, it does not cut. */
    ms_buf_init(&b, 16);
    assert_int_equal(wk_event_json(&b, &ev), MS_ETOOBIG);
    ms_buf_free(&b);
}

static void test_malformed_json(void **state)
{
    struct ms_buf b;

    (void)state;
    ms_buf_init(&b, 1024);
    assert_int_equal(wk_event_malformed_json(&b, NULL, 0, 3, 42, "bad \"x\"", "wk1", 0), 0);
    assert_int_equal(ms_buf_append(&b, "", 1), 0);
    assert_string_equal(b.data, "{\"event\":\"malformed\",\"key\":null,\"partition\":3,"
                                "\"offset\":42,\"error\":\"bad \\\"x\\\"\",\"node\":\"wk1\","
                                "\"ts\":\"1970-01-01T00:00:00.000Z\"}");
    ms_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdict),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_malformed_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
