/*
 * test_ms_qctl.c - lib/mail/ms_qctl.c: the queue control's records (control
 * values, listing lines, suspensions), durations and listing filters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ms_error.h"
#include "ms_qctl.h"

static void test_duration(void **state)
{
    static const struct {
        const char *in;
        int64_t s; /* -1: refused */
    } cases[] = {
        {"0", 0},
        {"90", 90},
        {"90s", 90},
        {"15m", 900},
        {"2h", 7200},
        {"3d", 259200},
        {"1w", 604800},
        {"", -1},
        {"m", -1},
        {"-5m", -1},
        {"5x", -1},
        {"5mm", -1},
        {" 5m", -1},
        {"5 m", -1},
        {"1.5h", -1},
        {"99999999999999999999", -1},
        {"520w", 520LL * 604800},
        {"523w", -1}, /* past ten years */
    };
    size_t i;
    int64_t v;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int r = ms_qctl_parse_duration(cases[i].in, &v);
        if (cases[i].s < 0) {
            assert_int_equal(r, MS_EINVAL);
        } else {
            assert_int_equal(r, 0);
            assert_int_equal(v, cases[i].s);
        }
    }
}

static void test_control_roundtrip(void **state)
{
    struct ms_qctl c = {MS_QCTL_BOUNCE, 1700000000123456, "spam\trun\nlate"}, d;
    char buf[300];
    int n;

    (void)state;
    n = ms_qctl_format(&c, buf, sizeof(buf));
    assert_true(n > 0);
    assert_string_equal(buf, "bounce 1700000000123456 spam run late");
    assert_int_equal(ms_qctl_parse(buf, (size_t)n, &d), 0);
    assert_int_equal(d.action, MS_QCTL_BOUNCE);
    assert_int_equal(d.at_us, 1700000000123456);
    assert_string_equal(d.reason, "spam run late");
    /* No reason at all. */
    assert_int_equal(ms_qctl_parse("hold 5", 6, &d), 0);
    assert_int_equal(d.action, MS_QCTL_HOLD);
    assert_string_equal(d.reason, "");
    /* Not NUL-terminated: only len bytes count. */
    assert_int_equal(ms_qctl_parse("retry 12xyz", 8, &d), 0);
    assert_int_equal(d.at_us, 12);
    /* Refused. */
    assert_int_equal(ms_qctl_parse("frob 5 x", 8, &d), MS_EINVAL);
    assert_int_equal(ms_qctl_parse("hold", 4, &d), MS_EINVAL);
    assert_int_equal(ms_qctl_parse("hold x", 6, &d), MS_EINVAL);
    assert_int_equal(ms_qctl_parse("hold 5x y", 9, &d), MS_EINVAL);
    assert_int_equal(ms_qctl_parse("none 5", 6, &d), MS_EINVAL);
    assert_int_equal(ms_qctl_format(&c, buf, 10), MS_ETOOBIG);
}

static void test_retry_applies(void **state)
{
    (void)state;
    /* Asked after the last attempt: due now; once attempted: spent. */
    assert_true(ms_qctl_retry_applies(200, 100));
    assert_false(ms_qctl_retry_applies(100, 200));
    assert_false(ms_qctl_retry_applies(100, 100));
    assert_true(ms_qctl_retry_applies(1, 0)); /* never attempted */
}

/* The record field: written, read back, absent from an older line, and
 * split into topic, partition and offset. */
static void test_qinfo_record(void **state)
{
    struct ms_qinfo q = {"held", 1, 2, 1, 1, 10, "", "a@b.example", "b.example", "", "queue.retry.2/3/42"},
                    p;
    char *line = ms_qinfo_format(&q), old[] = "deferred\t1\t2\t1\t1\t10\t\ta@b\tb\t451 x",
         topic[64];
    int32_t part;
    int64_t off;

    (void)state;
    assert_int_equal(ms_qinfo_parse(line, &p), 0);
    assert_string_equal(p.record, "queue.retry.2/3/42");
    assert_int_equal(ms_qinfo_record_parse(p.record, topic, sizeof(topic), &part, &off), 0);
    assert_string_equal(topic, "queue.retry.2");
    assert_int_equal(part, 3);
    assert_int_equal(off, 42);
    assert_int_equal(ms_qinfo_parse(old, &p), 0);
    assert_string_equal(p.record, "");
    assert_int_equal(ms_qinfo_record_parse("", topic, sizeof(topic), &part, &off), MS_EINVAL);
    assert_int_equal(ms_qinfo_record_parse("q/x/1", topic, sizeof(topic), &part, &off), MS_EINVAL);
    assert_int_equal(ms_qinfo_record_parse("q/1/", topic, sizeof(topic), &part, &off), MS_EINVAL);
    assert_int_equal(ms_qinfo_record_parse("/1/2", topic, sizeof(topic), &part, &off), MS_EINVAL);
    assert_int_equal(ms_qinfo_record_parse("q/-1/2", topic, sizeof(topic), &part, &off), MS_EINVAL);
    assert_int_equal(ms_qinfo_record_parse("toolongtopicname/1/2", topic, 8, &part, &off),
                     MS_EINVAL);
    free(line);
}

static void test_qinfo(void **state)
{
    struct ms_qinfo q = {"deferred",
                         1000000,
                         5000000,
                         3,
                         2,
                         1234,
                         "s@x.example",
                         "a@y.example,B@z.example",
                         "y.example,relay:25",
                         "451 4.3.0\tbusy",
                         ""},
                    p;
    struct ms_qinfo_filter f;
    char *line = ms_qinfo_format(&q), bad[] = "deferred\t1\t2";

    (void)state;
    assert_non_null(line);
    assert_int_equal(ms_qinfo_parse(line, &p), 0);
    assert_string_equal(p.state, "deferred");
    assert_int_equal(p.received_us, 1000000);
    assert_int_equal(p.next_attempt_us, 5000000);
    assert_int_equal(p.attempts, 3);
    assert_int_equal(p.tier, 2);
    assert_int_equal(p.size, 1234);
    assert_string_equal(p.rcpts, "a@y.example,B@z.example");
    assert_string_equal(p.last_reply, "451 4.3.0 busy"); /* the tab is gone */

    memset(&f, 0, sizeof(f));
    assert_true(ms_qinfo_match(&p, &f, 0));
    f.dest = "RELAY:25";
    assert_true(ms_qinfo_match(&p, &f, 0));
    f.dest = "relay";
    assert_false(ms_qinfo_match(&p, &f, 0)); /* whole names only */
    f.dest = NULL;
    f.rcpt = "b@Z";
    assert_true(ms_qinfo_match(&p, &f, 0));
    f.rcpt = "c@";
    assert_false(ms_qinfo_match(&p, &f, 0));
    f.rcpt = NULL;
    f.sender = "S@X";
    assert_true(ms_qinfo_match(&p, &f, 0));
    f.sender = NULL;
    f.older_than_s = 10;
    assert_false(ms_qinfo_match(&p, &f, 10999999));
    assert_true(ms_qinfo_match(&p, &f, 11000000));
    free(line);

    assert_int_equal(ms_qinfo_parse(bad, &p), MS_EINVAL);
    {
        char extra[] = "held\t1\t2\t3\t4\t5\ts\tr\td\tl\tt/0/1\tmore";
        char nonum[] = "held\tx\t2\t3\t4\t5\ts\tr\td\tl";
        assert_int_equal(ms_qinfo_parse(extra, &p), MS_EINVAL);
        assert_int_equal(ms_qinfo_parse(nonum, &p), MS_EINVAL);
    }
}

static void test_suspend(void **state)
{
    struct ms_qctl_suspend s = {0, 100, "blocking us"}, t;
    char buf[300];
    int n;

    (void)state;
    n = ms_qctl_suspend_format(&s, buf, sizeof(buf));
    assert_string_equal(buf, "0 100 blocking us");
    assert_int_equal(ms_qctl_suspend_parse(buf, (size_t)n, &t), 0);
    assert_int_equal(t.until_us, 0);
    assert_int_equal(t.since_us, 100);
    assert_string_equal(t.reason, "blocking us");
    assert_true(ms_qctl_suspend_active(&t, 1LL << 62)); /* until resumed */
    t.until_us = 500;
    assert_true(ms_qctl_suspend_active(&t, 499));
    assert_false(ms_qctl_suspend_active(&t, 500));
    assert_int_equal(ms_qctl_suspend_parse("x 100 r", 7, &t), MS_EINVAL);
    assert_int_equal(ms_qctl_suspend_parse("-1 100 r", 8, &t), MS_EINVAL);
}

static void test_list_has(void **state)
{
    (void)state;
    assert_true(ms_qctl_list_has("a,b.example,c", "B.example"));
    assert_true(ms_qctl_list_has("a", "a"));
    assert_false(ms_qctl_list_has("ab,c", "a"));
    assert_false(ms_qctl_list_has("", "a"));
    assert_true(ms_qctl_list_has("a,", ""));
}

static void test_json_field(void **state)
{
    static const char ev[] = "{\"qid\":\"Q1\",\"rcpt\":\"a\\\"b@x\",\"code\":451,"
                             "\"reply\":\"no \\\"rcpt\\\":\\\"x\\\" \\u00e9\\u0041\\n\"}";
    char out[64], small[3];

    (void)state;
    assert_int_equal(ms_qctl_json_field(ev, strlen(ev), "qid", out, sizeof(out)), 1);
    assert_string_equal(out, "Q1");
    assert_int_equal(ms_qctl_json_field(ev, strlen(ev), "rcpt", out, sizeof(out)), 1);
    assert_string_equal(out, "a\"b@x");
    /* A key's name inside a value is not the key. */
    assert_int_equal(ms_qctl_json_field(ev, strlen(ev), "reply", out, sizeof(out)), 1);
    assert_string_equal(out, "no \"rcpt\":\"x\" ?A\n");
    assert_int_equal(ms_qctl_json_field(ev, strlen(ev), "code", out, sizeof(out)), 0);
    assert_int_equal(ms_qctl_json_field(ev, strlen(ev), "node", out, sizeof(out)), 0);
    assert_int_equal(ms_qctl_json_field(ev, strlen(ev), "rcpt", small, sizeof(small)), MS_ETOOBIG);
    /* Cut short: no closing quote. */
    assert_int_equal(ms_qctl_json_field(ev, 10, "qid", out, sizeof(out)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration),      cmocka_unit_test(test_control_roundtrip),
        cmocka_unit_test(test_retry_applies), cmocka_unit_test(test_qinfo), cmocka_unit_test(test_qinfo_record),
        cmocka_unit_test(test_suspend),       cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_json_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
