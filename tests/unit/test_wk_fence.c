/*
 * test_wk_fence.c - worker/fence.c: how long an attempt waits before it
 * takes again a lease another holder has (wk_fence_held_wait_ms).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../worker/fence.h"

#define LAPSE_MARGIN (WK_FENCE_MARGIN_MS / 4)

/* A lease with all of its 15 s left: looked at again after 250 ms, then
 * twice as long each round, until the doubling passes the lapse. */
static void test_held_wait_doubles(void **state)
{
    uint64_t lease = WK_FENCE_LEASE_MS;

    (void)state;
    assert_int_equal(wk_fence_held_wait_ms(lease, lease, 0), WK_FENCE_HELD_POLL_MS);
    assert_int_equal(wk_fence_held_wait_ms(lease, lease, 1), 2 * WK_FENCE_HELD_POLL_MS);
    assert_int_equal(wk_fence_held_wait_ms(lease, lease, 2), 4 * WK_FENCE_HELD_POLL_MS);
    assert_int_equal(wk_fence_held_wait_ms(lease, lease, 5), 32 * WK_FENCE_HELD_POLL_MS);
    /* 64 x 250 ms = 16 s: past the lapse, which bounds it. */
    assert_int_equal(wk_fence_held_wait_ms(lease, lease, 6), lease + LAPSE_MARGIN);
    assert_int_equal(wk_fence_held_wait_ms(lease, lease, 1000), lease + LAPSE_MARGIN);
}

/* Never past the lapse: a lease about to lapse is waited out, and what the
 * hash says beyond lease_ms is not believed (a live holder renews by no
 * more than that). */
static void test_held_wait_bounded_by_lapse(void **state)
{
    (void)state;
    assert_int_equal(wk_fence_held_wait_ms(100, 15000, 2), 100 + LAPSE_MARGIN);
    assert_int_equal(wk_fence_held_wait_ms(100, 15000, 0), WK_FENCE_HELD_POLL_MS);
    assert_int_equal(wk_fence_held_wait_ms(1, 15000, 3), 1 + LAPSE_MARGIN);
    assert_int_equal(wk_fence_held_wait_ms(UINT64_MAX / 2, 3000, 10), 3000 + LAPSE_MARGIN);
    assert_int_equal(wk_fence_held_wait_ms(UINT64_MAX / 2, 600000, 0), WK_FENCE_HELD_POLL_MS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_wait_doubles),
        cmocka_unit_test(test_held_wait_bounded_by_lapse),
    };
    return cmocka_run_group_tests_name("wk_fence", tests, NULL, NULL);
}
