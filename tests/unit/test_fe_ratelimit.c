/*
 * test_fe_ratelimit.c - the pure part of the Redis rate limits
 * (frontend/fe_ratelimit.h): "N/PERIOD" parsing, bucket and suppression
 * keys, the EVALSHA / EVAL command line, and reading the script's answer.
 * The script itself runs against a real Redis in
 * tests/integration/test_frontend_limits.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_error.h"
#include "ms_keys.h"
#include "../../frontend/fe_ratelimit.h"

static void test_rate_parse(void **state)
{
    struct fe_rate r;

    assert_int_equal(fe_rate_parse("100/60", &r), 0);
    assert_int_equal(r.n, 100);
    assert_int_equal(r.secs, 60);
    assert_int_equal(fe_rate_parse("30/10m", &r), 0);
    assert_int_equal(r.secs, 600);
    assert_int_equal(fe_rate_parse("5/1h", &r), 0);
    assert_int_equal(r.secs, 3600);
    assert_int_equal(fe_rate_parse("5/2d", &r), 0);
    assert_int_equal(r.secs, 172800);
    assert_int_equal(fe_rate_parse("7/30s", &r), 0);
    assert_int_equal(r.secs, 30);
    assert_int_equal(fe_rate_parse("0", &r), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(fe_rate_parse("", &r), 0);
    assert_int_equal(fe_rate_parse("off", &r), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(fe_rate_parse("100", &r), MS_EINVAL);
    assert_int_equal(fe_rate_parse("100/", &r), MS_EINVAL);
    assert_int_equal(fe_rate_parse("100/0", &r), MS_EINVAL);
    assert_int_equal(fe_rate_parse("0/10", &r), MS_EINVAL);
    assert_int_equal(fe_rate_parse("-1/10", &r), MS_EINVAL);
    assert_int_equal(fe_rate_parse("10/5w", &r), MS_EINVAL);
    assert_int_equal(fe_rate_parse("10/60d", &r), MS_EINVAL); /* over 30 days */
    assert_int_equal(r.n, 0); /* a bad value never leaves a limit behind */
}

static void test_argv(void **state)
{
    struct fe_rl_check c;
    struct fe_rl_scratch sc;
    const char *argv[FE_RL_ARGV_MAX];
    size_t argvlen[FE_RL_ARGV_MAX];
    struct fe_rate r10 = {10, 60}, off = {0, 0};
    int argc;

    fe_rl_check_init(&c, FE_RL_TAKE);
    assert_false(fe_rl_check_needed(&c));
    fe_rl_add(&c, MS_KEY_RATELIMIT, "rcpt:user:", "Alice@Example.ORG", r10, 1,
              "recipients_per_client");
    fe_rl_add(&c, MS_KEY_RATELIMIT, "msg:dom:", "x.example", off, 1,
              "messages_per_domain"); /* off */
    fe_rl_refuse_key(&c, MS_KEY_SUPPRESS, "Bob@Mailstream.TEST");
    assert_true(fe_rl_check_needed(&c));
    assert_int_equal(c.n, 1);
    assert_string_equal(c.keys[0], "ms:rl:rcpt:user:alice@example.org");
    /* The worker's key (worker/delivery.c suppress_key): lower-cased.  The
     * names are a contract with operators (docs/config.md): spelt out. */
    assert_string_equal(c.keys[1], "ms:suppress:bob@mailstream.test");

    argc = fe_rl_argv(&c, &sc, argv, argvlen);
    assert_int_equal(argc, 8);
    assert_string_equal(argv[0], "2"); /* numkeys */
    assert_string_equal(argv[1], "ms:rl:rcpt:user:alice@example.org");
    assert_string_equal(argv[2], "ms:suppress:bob@mailstream.test");
    assert_string_equal(argv[3], "take");
    assert_string_equal(argv[4], "1");
    assert_string_equal(argv[5], "10");
    assert_string_equal(argv[6], "60000");
    assert_string_equal(argv[7], "1");
    assert_int_equal(argvlen[6], 5);

    /* A full check takes no more buckets. */
    fe_rl_check_init(&c, FE_RL_PEEK);
    for (int i = 0; i < FE_RL_BUCKETS_MAX + 2; i++)
        fe_rl_add(&c, "p:", "k:", "v", r10, 1, "x");
    assert_int_equal(c.n, FE_RL_BUCKETS_MAX);
    argc = fe_rl_argv(&c, &sc, argv, argvlen);
    assert_true(argc <= FE_RL_ARGV_MAX);
    assert_string_equal(argv[1 + FE_RL_BUCKETS_MAX], "peek");
}

static void test_result(void **state)
{
    struct ms_redis_reply r;

    memset(&r, 0, sizeof(r));
    r.type = MS_REDIS_INT;
    r.integer = 0;
    assert_int_equal(fe_rl_result(&r, 2), FE_RL_OK);
    r.integer = 2;
    assert_int_equal(fe_rl_result(&r, 2), 2);
    r.integer = 3;
    assert_int_equal(fe_rl_result(&r, 2), FE_RL_FAILED);
    r.integer = -1;
    assert_int_equal(fe_rl_result(&r, 2), FE_RL_REFUSED);
    r.integer = -7;
    assert_int_equal(fe_rl_result(&r, 2), FE_RL_FAILED);
    r.type = MS_REDIS_ERR;
    r.str = "NOSCRIPT No matching script";
    assert_int_equal(fe_rl_result(&r, 2), FE_RL_FAILED);
    r.type = MS_REDIS_FAILED;
    assert_int_equal(fe_rl_result(&r, 2), FE_RL_FAILED);
    assert_int_equal(fe_rl_result(NULL, 2), FE_RL_FAILED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_parse),
        cmocka_unit_test(test_argv),
        cmocka_unit_test(test_result),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
