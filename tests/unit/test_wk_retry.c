/*
 * test_wk_retry.c - worker/retry.c: exponential backoff with equal jitter,
 * capped, never 0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../worker/retry.h"

static void test_backoff(void **state)
{
    unsigned a;
    uint64_t d;

    (void)state;
    /* Equal jitter: between half and all of the exponential delay. */
    assert_int_equal(wk_backoff_ms(1, 1000, 300000, 0), 500);
    assert_int_equal(wk_backoff_ms(1, 1000, 300000, 500), 1000);
    assert_int_equal(wk_backoff_ms(1, 1000, 300000, 501), 500);
    assert_int_equal(wk_backoff_ms(2, 1000, 300000, 0), 1000);
    assert_int_equal(wk_backoff_ms(3, 1000, 300000, 2000), 4000);
    /* Capped, also for absurd attempt counts. */
    for (a = 1; a < 200; a++) {
        d = wk_backoff_ms(a, 1000, 300000, 0xffffffffu);
        assert_true(d >= 1 && d <= 300000);
    }
    assert_int_equal(wk_backoff_ms(100000, 1000, 300000, 0), 150000);
    /* Degenerate settings still give a positive delay. */
    assert_int_equal(wk_backoff_ms(1, 0, 0, 7), 1);
    assert_int_equal(wk_backoff_ms(5, 5000, 10, 0), 2500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
