/*
 * test_ms_bucket.c - the pure part of lib/io/ms_bucket.h: the
 * [delivery] dest_rate syntax, the script's arguments for a one-bucket
 * "wait", and reading the script's answer.  The script itself runs against a real Redis
 * in tests/integration/test_frontend_limits.py and test_worker_rate.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_bucket.h"
#include "ms_error.h"

static void test_rate_parse(void **state)
{
    struct ms_bucket_rate r;

    (void)state;
    assert_int_equal(ms_bucket_rate_parse("10", &r), 0);
    assert_int_equal(r.capacity, 1);
    assert_int_equal(r.period_ms, 100);
    assert_int_equal(ms_bucket_rate_parse("0.5", &r), 0);
    assert_int_equal(r.period_ms, 2000);
    assert_int_equal(ms_bucket_rate_parse("3", &r), 0);
    assert_int_equal(r.period_ms, 334); /* rounded up: never faster than asked */
    assert_int_equal(ms_bucket_rate_parse("1000", &r), 0);
    assert_int_equal(r.period_ms, 1);
    assert_int_equal(ms_bucket_rate_parse(" 1", &r), 0);
    assert_int_equal(r.period_ms, 1000);
    /* Off. */
    assert_int_equal(ms_bucket_rate_parse("0", &r), 0);
    assert_int_equal(r.capacity, 0);
    assert_int_equal(ms_bucket_rate_parse("0.0", &r), 0);
    assert_int_equal(r.capacity, 0);
    assert_int_equal(ms_bucket_rate_parse("", &r), 0);
    assert_int_equal(ms_bucket_rate_parse("off", &r), 0);
    assert_int_equal(r.capacity, 0);
    /* Refused, leaving no limit behind. */
    assert_int_equal(ms_bucket_rate_parse("1001", &r), MS_EINVAL);
    assert_int_equal(r.capacity, 0);
    assert_int_equal(ms_bucket_rate_parse("-1", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse("1e2", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse("inf", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse("nan", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse("1.2.3", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse("10/s", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse(".5", &r), MS_EINVAL);
    assert_int_equal(ms_bucket_rate_parse("0.00001", &r), MS_EINVAL); /* > a day apart */
    assert_int_equal(r.capacity, 0);
}

static void test_wait_argv(void **state)
{
    struct ms_bucket_rate rate = {1, 250};
    struct ms_bucket_scratch sc;
    const char *argv[MS_BUCKET_WAIT_ARGC];
    size_t argvlen[MS_BUCKET_WAIT_ARGC];
    const char *want[] = {"1", "ms:rate:mx.example.net", "wait", "1", "1", "250", "1"};
    int argc, i;

    (void)state;
    argc = ms_bucket_wait_argv("ms:rate:mx.example.net", rate, &sc, argv, argvlen);
    assert_int_equal(argc, MS_BUCKET_WAIT_ARGC);
    for (i = 0; i < argc; i++) {
        assert_string_equal(argv[i], want[i]);
        assert_int_equal(argvlen[i], strlen(want[i]));
    }
}

static void test_wait_result(void **state)
{
    struct ms_redis_reply r;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.type = MS_REDIS_INT;
    r.integer = 0;
    assert_int_equal(ms_bucket_wait_result(&r), 0);
    r.integer = 137;
    assert_int_equal(ms_bucket_wait_result(&r), 137);
    r.integer = -1; /* the refusing key: never asked for by a wait */
    assert_int_equal(ms_bucket_wait_result(&r), MS_EPROTO);
    r.type = MS_REDIS_ERR; /* NOSCRIPT is the Redis client's (ms_redis_script) */
    r.str = "NOSCRIPT No matching script. Please use EVAL.";
    r.len = strlen(r.str);
    assert_int_equal(ms_bucket_wait_result(&r), MS_EPROTO);
    r.str = "ERR wrong number of arguments";
    r.len = strlen(r.str);
    assert_int_equal(ms_bucket_wait_result(&r), MS_EPROTO);
    r.type = MS_REDIS_FAILED;
    assert_int_equal(ms_bucket_wait_result(&r), MS_EPROTO);
    r.type = MS_REDIS_NIL;
    assert_int_equal(ms_bucket_wait_result(&r), MS_EPROTO);
    assert_int_equal(ms_bucket_wait_result(NULL), MS_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_parse),
        cmocka_unit_test(test_wait_argv),
        cmocka_unit_test(test_wait_result),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
