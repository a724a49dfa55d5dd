/*
 * test_wk_requeue.c - the records worker/requeue.h builds after a delivery
 * round: the DSN envelope (who is reported with which Action, NOTIFY per
 * recipient, the null sender, NOTIFY=NEVER and REQUIRETLS on the notice,
 * RET=HDRS forced by REQUIRETLS), nothing when NOTIFY leaves nobody, the
 * retry record (pending recipients only, attempts appended, due time and
 * tier) and the tier for an attempt number.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ms_envelope.h"
#include "../../worker/requeue.h"

#define NOTIFY_S MS_ENV_NOTIFY_SUCCESS
#define NOTIFY_F MS_ENV_NOTIFY_FAILURE
#define NOTIFY_N MS_ENV_NOTIFY_NEVER

static const char message[] = "From: a@example.org\r\nSubject: hi\r\n\r\nbody line\r\n";

/* An envelope with three recipients and one earlier attempt, encoded and
 * decoded as the engine gets it from Kafka. */
static ms_envelope *make_env(uint32_t n0, uint32_t n1, uint32_t n2, int requiretls)
{
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt r[3] = {
        {"x@dest.example", n0, NULL}, {"y@dest.example", n1, NULL}, {"z@dest.example", n2, NULL}};
    struct ms_envelope_attempt att = {0, "z@dest.example", "node-0", "", 451, "", ""};
    size_t keep[3] = {0, 1, 2};
    char err[128];
    uint8_t *buf;
    size_t len;
    ms_envelope *first, *e;

    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "QID0000000001";
    tx.received_at_us = 1700000000000000LL;
    tx.mail_from.address = "a@example.org";
    tx.mail_from.requiretls = requiretls;
    tx.rcpts = r;
    tx.nrcpts = 3;
    tx.direction = MS_ENV_DIRECTION_OUTBOUND;
    tx.message = message;
    tx.len = strlen(message);
    first = ms_envelope_new_tx(&tx);
    buf = ms_envelope_encode_retry(first, keep, 3, &att, 1, 1, 0, 1, &len);
    ms_envelope_free(first);
    e = ms_envelope_decode(buf, len, err, sizeof(err));
    free(buf);
    assert_non_null(e);
    return e;
}

/* x bounced, y delivered with a success notice owed (relayed), z pending
 * with a delay warning due. */
static void make_rcpts(const ms_envelope *e, struct wk_rcpt rc[3])
{
    size_t i;

    memset(rc, 0, 3 * sizeof(*rc));
    for (i = 0; i < 3; i++) {
        rc[i].addr = e->recipients[i]->address;
        rc[i].tried = 1;
        rc[i].at_us = 1700000100000000LL + (int64_t)i;
        strcpy(rc[i].relay, "mx.dest.example[192.0.2.1]:25");
    }
    rc[0].state = WK_RCPT_BOUNCED;
    rc[0].in_dsn = 1;
    rc[0].code = 550;
    strcpy(rc[0].dsn, "5.1.1");
    strcpy(rc[0].reply, "550 5.1.1 no such user");
    strcpy(rc[0].remote, "mx.dest.example");
    rc[1].state = WK_RCPT_DELIVERED;
    rc[1].in_dsn = 1;
    rc[1].dsn_action = MS_DSN_RELAYED;
    rc[1].code = 250;
    strcpy(rc[1].dsn, "2.0.0");
    strcpy(rc[1].reply, "250 2.0.0 ok");
    rc[2].state = WK_RCPT_PENDING;
    rc[2].warn_in_dsn = 1;
    rc[2].code = 451;
    strcpy(rc[2].dsn, "4.3.0");
    strcpy(rc[2].reply, "451 4.3.0 try later");
}

static const struct wk_requeue_conf conf = {"worker.example", "node-1", 5 * 24 * 3600};

static int contains(const ms_envelope *e, const char *s)
{
    size_t n = strlen(s), i;

    for (i = 0; i + n <= e->message.len; i++)
        if (memcmp(e->message.data + i, s, n) == 0)
            return 1;
    return 0;
}

/* The DSN for make_env(F, S, 0, requiretls) after make_rcpts(): all three
 * owed, decoded. */
static ms_envelope *dsn_of(int requiretls, struct wk_requeue_dsn_counts *c)
{
    ms_envelope *e = make_env(NOTIFY_F, NOTIFY_S, 0, requiretls), *d;
    struct wk_rcpt rc[3];
    char err[128];
    uint8_t *buf;
    size_t len;

    make_rcpts(e, rc);
    assert_int_equal(wk_requeue_dsn_owed(rc, 3), 3);
    assert_int_equal(
        wk_requeue_dsn(&conf, e, rc, "DSNQID0000001", 1700000200000000LL, &buf, &len, c), 1);
    d = ms_envelope_decode(buf, len, err, sizeof(err));
    free(buf);
    ms_envelope_free(e);
    assert_non_null(d);
    return d;
}

static void test_dsn(void **state)
{
    struct wk_requeue_dsn_counts c;
    ms_envelope *d = dsn_of(0, &c);

    assert_int_equal(c.rcpts, 3);
    assert_int_equal(c.delayed, 1);
    assert_int_equal(c.success, 1);
    assert_string_equal(d->queue_id, "DSNQID0000001");
    assert_string_equal(d->dsn_for, "QID0000000001");
    assert_string_equal(d->frontend_node, "node-1");
    assert_int_equal(d->received_at_us, 1700000200000000LL);
    assert_string_equal(d->mail_from->address, "");
    assert_int_equal(d->mail_from->requiretls, 0);
    assert_int_equal(d->n_recipients, 1);
    assert_string_equal(d->recipients[0]->address, "a@example.org");
    assert_int_equal(d->recipients[0]->notify, NOTIFY_N);
    assert_int_equal(d->direction, MS_ENV_DIRECTION_OUTBOUND);
    assert_true(contains(d, "Reporting-MTA: dns; worker.example"));
    assert_true(contains(d, "Final-Recipient: rfc822; x@dest.example"));
    assert_true(contains(d, "Action: failed"));
    assert_true(contains(d, "Status: 5.1.1"));
    assert_true(contains(d, "Final-Recipient: rfc822; y@dest.example"));
    assert_true(contains(d, "Action: relayed"));
    assert_true(contains(d, "Final-Recipient: rfc822; z@dest.example"));
    assert_true(contains(d, "Action: delayed"));
    assert_true(contains(d, "Status: 4.3.0"));
    assert_true(contains(d, "Remote-MTA: dns; mx.dest.example"));
    assert_true(contains(d, "body line")); /* RET not given: the whole message */
    ms_envelope_free(d);
}

/* NOTIFY=NEVER on the bounced one: it is left out; a notice already
 * acknowledged (dsn_done) is not owed again. */
static void test_dsn_notify(void **state)
{
    ms_envelope *e = make_env(NOTIFY_N, NOTIFY_S, 0, 0);
    struct wk_rcpt rc[3];
    struct wk_requeue_dsn_counts c;
    uint8_t *buf;
    size_t len;

    make_rcpts(e, rc);
    rc[2].warn_in_dsn = 0;
    rc[1].dsn_done = 1;
    assert_int_equal(wk_requeue_dsn_owed(rc, 3), 1);
    assert_int_equal(
        wk_requeue_dsn(&conf, e, rc, "DSNQID0000002", 1700000200000000LL, &buf, &len, &c), 0);
    assert_null(buf);
    assert_int_equal(c.rcpts, 0);
    rc[1].dsn_done = 0;
    assert_int_equal(
        wk_requeue_dsn(&conf, e, rc, "DSNQID0000002", 1700000200000000LL, &buf, &len, &c), 1);
    assert_int_equal(c.rcpts, 1);
    assert_int_equal(c.success, 1);
    free(buf);
    ms_envelope_free(e);
}

/* RFC 8689: the notice on a REQUIRETLS message requires TLS too and
 * returns the headers only. */
static void test_dsn_requiretls(void **state)
{
    struct wk_requeue_dsn_counts c;
    ms_envelope *d = dsn_of(1, &c);

    assert_int_equal(d->mail_from->requiretls, 1);
    assert_true(contains(d, "Subject: hi"));
    assert_false(contains(d, "body line"));
    ms_envelope_free(d);
}

static void test_retry(void **state)
{
    ms_envelope *e = make_env(0, 0, 0, 0), *r;
    struct wk_rcpt rc[3];
    char err[128];
    uint8_t *buf;
    size_t len;

    make_rcpts(e, rc);
    rc[0].tried = 0; /* no result this round: no attempt for it */
    rc[0].state = WK_RCPT_PENDING;
    buf = wk_requeue_retry(&conf, e, rc, 2, 1700000999000000LL, 2, &len);
    r = ms_envelope_decode(buf, len, err, sizeof(err));
    free(buf);
    assert_non_null(r);
    assert_string_equal(r->queue_id, "QID0000000001");
    assert_string_equal(r->mail_from->address, "a@example.org");
    assert_int_equal(r->n_recipients, 2);
    assert_string_equal(r->recipients[0]->address, "x@dest.example");
    assert_string_equal(r->recipients[1]->address, "z@dest.example");
    assert_int_equal(r->attempt_count, 2);
    assert_int_equal(r->next_attempt_us, 1700000999000000LL);
    assert_int_equal(r->retry_tier, 2);
    assert_int_equal(r->n_attempts, 3); /* the old one, then y and z */
    assert_int_equal(r->attempts[0]->code, 451);
    assert_string_equal(r->attempts[1]->recipient, "y@dest.example");
    assert_int_equal(r->attempts[1]->code, 250);
    assert_string_equal(r->attempts[1]->worker_node, "node-1");
    assert_string_equal(r->attempts[1]->relay, "mx.dest.example[192.0.2.1]:25");
    assert_string_equal(r->attempts[2]->recipient, "z@dest.example");
    assert_string_equal(r->attempts[2]->dsn, "4.3.0");
    assert_string_equal(r->attempts[2]->reply, "451 4.3.0 try later");
    assert_int_equal(r->attempts[2]->at_us, 1700000100000002LL);
    assert_int_equal(r->message.len, strlen(message));
    ms_envelope_free(r);
    /* The envelope it came from is unchanged. */
    assert_int_equal(e->n_recipients, 3);
    assert_int_equal(e->n_attempts, 1);
    ms_envelope_free(e);
}

static void test_tier(void **state)
{
    static const struct {
        unsigned attempt;
        int tiers, want;
    } cases[] = {
        {0, 6, 1}, {1, 6, 1}, {2, 6, 2}, {6, 6, 6}, {7, 6, 6}, {100, 6, 6}, {3, 1, 1},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(wk_requeue_tier(cases[i].attempt, cases[i].tiers), cases[i].want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dsn),
        cmocka_unit_test(test_dsn_notify),
        cmocka_unit_test(test_dsn_requiretls),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_tier),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
