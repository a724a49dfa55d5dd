/*
 * test_ms_kstats.c - consumer lag from librdkafka's statistics JSON
 * (lib/io/ms_kstats.h): table-driven cases for each rule, and a golden
 * check on a real capture from librdkafka 2.0.2 (the fuzz seed
 * tests/fuzz/corpus/fuzz_kstats/assigned-lag5.json: 7 records on
 * partition 0, two of them stored).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_kstats.h"

#define P(id, body) "\"" #id "\":{" body "}"
#define TOPIC(parts) "{\"topics\":{\"queue\":{\"partitions\":{" parts "}}}}"

struct lag_case {
    const char *name, *json;
    long n;                    /* -1: not JSON */
    struct ms_kafka_lag want[4];
};

static const struct lag_case cases[] = {
    {"stored offset wins", TOPIC(P(0, "\"desired\":true,\"hi_offset\":10,\"stored_offset\":4,"
                                      "\"committed_offset\":2,\"lo_offset\":0")),
     1, {{0, 6}}},
    {"committed when nothing stored",
     TOPIC(P(3, "\"desired\":true,\"hi_offset\":10,\"stored_offset\":-1001,"
                "\"committed_offset\":7,\"lo_offset\":0")),
     1, {{3, 3}}},
    {"lo_offset for a new group",
     TOPIC(P(1, "\"desired\":true,\"hi_offset\":10,\"stored_offset\":-1001,"
                "\"committed_offset\":-1001,\"lo_offset\":4")),
     1, {{1, 6}}},
    {"nothing known but hi: all of it",
     TOPIC(P(1, "\"desired\":true,\"hi_offset\":9")), 1, {{1, 9}}},
    {"not assigned, internal -1, unknown watermark skipped",
     TOPIC(P(0, "\"desired\":false,\"hi_offset\":10") "," P(-1, "\"desired\":true,\"hi_offset\":3")
           "," P(2, "\"desired\":true,\"hi_offset\":-1001") "," P(5, "\"desired\":true,\"hi_offset\":5,\"stored_offset\":5")),
     1, {{5, 0}}},
    {"old watermark is no lag",
     TOPIC(P(0, "\"desired\":true,\"hi_offset\":3,\"stored_offset\":8")), 1, {{0, 0}}},
    {"order of the JSON kept",
     TOPIC(P(2, "\"desired\":true,\"hi_offset\":2") "," P(0, "\"desired\":true,\"hi_offset\":1")),
     2, {{2, 2}, {0, 1}}},
    {"wrong types ignored",
     TOPIC(P(0, "\"desired\":1,\"hi_offset\":3") "," P(x, "\"desired\":true,\"hi_offset\":3") ","
           P(1, "\"desired\":true,\"hi_offset\":\"3\"") "," P(2, "\"desired\":true,\"hi_offset\":4,\"stored_offset\":1.5")),
     1, {{2, 4}}},
    {"partition id out of int32", TOPIC(P(4294967296, "\"desired\":true,\"hi_offset\":3")), 0, {{0, 0}}},
    {"other topic", "{\"topics\":{\"events\":{\"partitions\":{" P(0, "\"desired\":true,\"hi_offset\":3") "}}}}",
     0, {{0, 0}}},
    {"no topics", "{\"name\":\"x\"}", 0, {{0, 0}}},
    {"topics not an object", "{\"topics\":[1,2]}", 0, {{0, 0}}},
    {"not an object", "[1]", -1, {{0, 0}}},
    {"truncated", "{\"topics\":{\"queue\":", -1, {{0, 0}}},
    {"duplicate keys refused", "{\"topics\":{},\"topics\":{}}", -1, {{0, 0}}},
    {"empty", "", -1, {{0, 0}}},
};

static void test_cases(void **state)
{
    struct ms_kafka_lag got[8];
    size_t i;
    long n, k;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(got, 0, sizeof(got));
        n = ms_kstats_lag(cases[i].json, strlen(cases[i].json), "queue", got, 8);
        if (n != cases[i].n)
            fail_msg("%s: %ld partitions, want %ld", cases[i].name, n, cases[i].n);
        for (k = 0; k < n; k++)
            if (got[k].partition != cases[i].want[k].partition ||
                got[k].lag != cases[i].want[k].lag)
                fail_msg("%s: [%ld] = %d/%lld, want %d/%lld", cases[i].name, k,
                         (int)got[k].partition, (long long)got[k].lag,
                         (int)cases[i].want[k].partition, (long long)cases[i].want[k].lag);
    }
}

/* More partitions than room: the count says so, only max are written. */
static void test_max(void **state)
{
    const char *json = TOPIC(P(0, "\"desired\":true,\"hi_offset\":1") ","
                             P(1, "\"desired\":true,\"hi_offset\":2") ","
                             P(2, "\"desired\":true,\"hi_offset\":3"));
    struct ms_kafka_lag got[3] = {{-5, -5}, {-5, -5}, {-5, -5}};

    (void)state;
    assert_int_equal(ms_kstats_lag(json, strlen(json), "queue", got, 2), 3);
    assert_int_equal(got[2].partition, -5);
    assert_int_equal(ms_kstats_lag(json, strlen(json), "queue", NULL, 0), 3);
}

/* The length is honoured: no NUL needed, nothing read past it. */
static void test_length(void **state)
{
    const char *json = TOPIC(P(0, "\"desired\":true,\"hi_offset\":1")) "garbage";
    struct ms_kafka_lag got[1];

    (void)state;
    assert_int_equal(ms_kstats_lag(json, strlen(json) - strlen("garbage"), "queue", got, 1), 1);
    assert_int_equal(ms_kstats_lag(json, strlen(json), "queue", got, 1), -1);
}

static void test_real_capture(void **state)
{
    static char json[64 * 1024];
    FILE *f = fopen("tests/fuzz/corpus/fuzz_kstats/assigned-lag5.json", "rb");
    struct ms_kafka_lag got[4];
    size_t len;

    (void)state;
    if (f == NULL)
        fail_msg("the capture cannot be opened (run from the repository root)");
    len = fread(json, 1, sizeof(json), f);
    fclose(f);
    assert_true(len > 0 && len < sizeof(json));
    /* Partitions 0, 1, 2 assigned (and librdkafka's -1, not reported):
     * partition 0 has hi 7 and stored 2; 1 and 2 are empty. */
    assert_int_equal(ms_kstats_lag(json, len, "queue", got, 4), 3);
    assert_int_equal(got[0].partition, 0);
    assert_int_equal(got[0].lag, 5);
    assert_int_equal(got[1].lag, 0);
    assert_int_equal(got[2].lag, 0);
    assert_int_equal(ms_kstats_lag(json, len, "events", got, 4), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_max),
        cmocka_unit_test(test_length),
        cmocka_unit_test(test_real_capture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
