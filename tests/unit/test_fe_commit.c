/*
 * test_fe_commit.c - group commit bookkeeping (frontend/fe_commit.h): when
 * held records are due, members' windows, the batch limits.  The timer, the
 * producer and the sessions around it run in every integration test (group
 * commit is on by default).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../../frontend/fe_commit.h"

#define US 1000ull
#define MS (1000 * US)
#define WINDOW (600 * US)
#define LINGER (1 * MS)
#define NOT_DUE (-1)

static uint8_t *record(size_t len)
{
    uint8_t *b = malloc(len ? len : 1);

    assert_non_null(b);
    memset(b, 'x', len);
    return b;
}

static void take_and_free(struct fe_commit *c, size_t want)
{
    static struct fe_commit_record out[FE_COMMIT_MAX_RECORDS];
    size_t n = fe_commit_take(c, out);

    assert_int_equal(n, want);
    for (size_t i = 0; i < n; i++)
        free(out[i].buf);
}

/* The members in order (oldest sign of life first), NULL-terminated, and
 * their count. */
static void expect_members(struct fe_commit *c, ...)
{
    struct fe_commit_member *want;
    struct ms_list *n;
    size_t count = 0;
    va_list ap;

    va_start(ap, c);
    ms_list_foreach (n, &c->members) {
        want = va_arg(ap, struct fe_commit_member *);
        assert_ptr_equal(ms_list_entry(n, struct fe_commit_member, node), want);
        count++;
    }
    assert_null(va_arg(ap, struct fe_commit_member *)); /* no member missing */
    va_end(ap);
    assert_int_equal(c->nmembers, count);
}

/* Nothing held: never due, whoever is active. */
static void test_empty_is_never_due(void **state)
{
    struct fe_commit c;
    struct fe_commit_member a = {0};

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 0));
    fe_commit_touch(&c, &a, 0);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 10 * WINDOW));
}

/* A record with no member around goes at once: one session alone never
 * waits for anybody. */
static void test_alone_goes_at_once(void **state)
{
    struct fe_commit c;
    struct fe_commit_member a = {0};

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_touch(&c, &a, 100 * US); /* MAIL ... end of DATA */
    fe_commit_leave(&c, &a);           /* it handed its record over */
    assert_true(fe_commit_can_hold(&c, 21));
    fe_commit_hold(&c, 1, "Q1", 2, record(10), 0, 10, 0);
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, 100 * US));
    take_and_free(&c, 1);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 100 * US));
}

/* The batch waits for the member that is about to add its record, then goes
 * when it has. */
static void test_waits_for_active_member(void **state)
{
    struct fe_commit c;
    struct fe_commit_member a = {0}, b = {0};
    struct fe_commit_record out[FE_COMMIT_MAX_RECORDS];

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_touch(&c, &a, 0);
    fe_commit_touch(&c, &b, 10 * US);
    fe_commit_leave(&c, &a);
    fe_commit_hold(&c, 1, "QA", 2, record(5), 0, 5, 0);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 20 * US)); /* b is in its transaction */
    fe_commit_touch(&c, &b, 300 * US);        /* b's next command */
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 800 * US)); /* 500 us since b's last sign */
    fe_commit_leave(&c, &b);
    fe_commit_hold(&c, 2, "QB", 2, record(10), 3, 7, 0); /* the record after 3 octets */
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, 810 * US));
    assert_int_equal(fe_commit_take(&c, out), 2);
    assert_int_equal(out[0].id, 1);
    assert_string_equal(out[0].key, "QA");
    assert_int_equal(out[1].id, 2);
    assert_int_equal(out[1].off, 3);
    assert_int_equal(out[1].len, 7);
    free(out[0].buf);
    free(out[1].buf);
}

/* A member that goes quiet stops holding the batch once its window passed. */
static void test_quiet_member_expires(void **state)
{
    struct fe_commit c;
    struct fe_commit_member a = {0}, slow = {0};

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_touch(&c, &slow, 0);
    fe_commit_touch(&c, &a, 100 * US);
    fe_commit_leave(&c, &a);
    fe_commit_hold(&c, 1, "Q", 1, record(1), 0, 1, 0);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, WINDOW));     /* exactly the window: still counts */
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, WINDOW + 1));  /* past it: forgotten */
    assert_false(fe_commit_is_member(&slow));
    take_and_free(&c, 1);
    /* A sign of life makes it a member again. */
    fe_commit_touch(&c, &slow, 2 * WINDOW);
    fe_commit_hold(&c, 2, "Q", 1, record(1), 0, 1, 2 * WINDOW);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 2 * WINDOW + 1));
    fe_commit_leave(&c, &slow);
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, 2 * WINDOW + 1));
    take_and_free(&c, 1);
}

/* Touching again moves a member to the end: the list stays ordered, and an
 * old sign of life of another member expires first. */
static void test_touch_reorders(void **state)
{
    struct fe_commit c;
    struct fe_commit_member a = {0}, b = {0};

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_touch(&c, &a, 0);
    fe_commit_touch(&c, &b, 100 * US);
    fe_commit_touch(&c, &a, 500 * US);
    expect_members(&c, &b, &a, NULL);
    fe_commit_hold(&c, 1, "Q", 1, record(1), 0, 1, 0);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 800 * US)); /* b expired, a has not */
    expect_members(&c, &a, NULL);
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, 1200 * US));
    expect_members(&c, NULL);
    assert_false(fe_commit_is_member(&a));
    fe_commit_leave(&c, &a); /* not a member any more: harmless */
    fe_commit_leave(&c, &a);
    take_and_free(&c, 1);
}

/* Full by count or by bytes: due whatever the members, and nothing more can
 * be held until taken. */
static void test_full(void **state)
{
    struct fe_commit c;
    struct fe_commit_member a = {0};

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_touch(&c, &a, 0);
    for (uint64_t i = 0; i < FE_COMMIT_MAX_RECORDS; i++) {
        assert_true(fe_commit_can_hold(&c, 21));
        fe_commit_hold(&c, i, "Q", 1, record(1), 0, 1, 0);
    }
    assert_true(fe_commit_full(&c));
    assert_false(fe_commit_can_hold(&c, 1));
    assert_int_equal(FE_COMMIT_FULL, fe_commit_due(&c, 1)); /* a is still active */
    take_and_free(&c, FE_COMMIT_MAX_RECORDS);
    assert_true(fe_commit_can_hold(&c, 1));

    fe_commit_hold(&c, 1, "Q", 1, record(FE_COMMIT_MAX_BYTES - 1), 0, FE_COMMIT_MAX_BYTES - 1, 0);
    assert_false(fe_commit_full(&c));
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 2));
    fe_commit_hold(&c, 2, "Q", 1, record(1), 0, 1, 0);
    assert_true(fe_commit_full(&c));
    assert_int_equal(FE_COMMIT_FULL, fe_commit_due(&c, 3));
    take_and_free(&c, 2);
    assert_int_equal(c.bytes, 0);
}

/* A member that keeps showing life holds the batch only until the oldest
 * record has waited linger. */
static void test_linger_bounds_the_wait(void **state)
{
    struct fe_commit c;
    struct fe_commit_member busy = {0};

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_hold(&c, 1, "Q", 1, record(1), 0, 1, 10 * MS);
    assert_int_equal(fe_commit_deadline(&c, 10 * MS), 10 * MS + LINGER);
    fe_commit_touch(&c, &busy, 10 * MS + 500 * US);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 10 * MS + 999 * US));
    assert_int_equal(FE_COMMIT_LINGER, fe_commit_due(&c, 11 * MS));
    take_and_free(&c, 1);
    assert_int_equal(fe_commit_deadline(&c, 11 * MS), 0);
}

/* While a batch is in flight the next one gathers, even with nobody left
 * to wait for; its report lets it go.  Past the hold limit it goes anyway. */
static void test_one_batch_in_flight(void **state)
{
    struct fe_commit c;

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    fe_commit_hold(&c, 1, "Q", 1, record(1), 0, 1, 0);
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, 0));
    take_and_free(&c, 1);
    fe_commit_sent(&c, 1);
    fe_commit_hold(&c, 2, "Q", 1, record(1), 0, 1, 100 * US);
    fe_commit_hold(&c, 3, "Q", 1, record(1), 0, 1, 200 * US);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 300 * US));
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 5 * MS)); /* past linger: still in flight */
    assert_int_equal(fe_commit_deadline(&c, 5 * MS), 100 * US + FE_COMMIT_HOLD_MAX_MS * MS);
    fe_commit_reported(&c);
    assert_int_equal(FE_COMMIT_READY, fe_commit_due(&c, 5 * MS));
    take_and_free(&c, 2);
    fe_commit_sent(&c, 2);
    fe_commit_reported(&c);
    fe_commit_hold(&c, 4, "Q", 1, record(1), 0, 1, 10 * MS);
    assert_int_equal(NOT_DUE, fe_commit_due(&c, 10 * MS)); /* one of two still out */
    assert_int_equal(FE_COMMIT_LINGER,
                     fe_commit_due(&c, 10 * MS + FE_COMMIT_HOLD_MAX_MS * MS));
    take_and_free(&c, 1);
    /* More reports than records sent (direct sends before): harmless. */
    fe_commit_reported(&c);
    fe_commit_reported(&c);
    assert_int_equal(c.inflight, 0);
}

/* Keys longer than a queue id are not held (sent directly). */
static void test_key_limit(void **state)
{
    struct fe_commit c;
    char key[FE_COMMIT_KEY_MAX + 1];

    (void)state;
    fe_commit_init(&c, WINDOW, LINGER);
    assert_true(fe_commit_can_hold(&c, FE_COMMIT_KEY_MAX));
    assert_false(fe_commit_can_hold(&c, FE_COMMIT_KEY_MAX + 1));
    memset(key, 'K', FE_COMMIT_KEY_MAX);
    fe_commit_hold(&c, 9, key, FE_COMMIT_KEY_MAX, record(3), 0, 3, 0);
    assert_int_equal(strlen(c.rec[0].key), FE_COMMIT_KEY_MAX);
    take_and_free(&c, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_is_never_due),
        cmocka_unit_test(test_alone_goes_at_once),
        cmocka_unit_test(test_waits_for_active_member),
        cmocka_unit_test(test_quiet_member_expires),
        cmocka_unit_test(test_touch_reorders),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_linger_bounds_the_wait),
        cmocka_unit_test(test_one_batch_in_flight),
        cmocka_unit_test(test_key_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
