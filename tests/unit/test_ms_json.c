/*
 * test_ms_json.c - lib/core/ms_json.c: the JSON string writer (escapes,
 * UTF-8 passed through or replaced by U+FFFD, the buffer's limit) and the
 * RFC 3339 time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_buf.h"
#include "ms_error.h"
#include "ms_json.h"

/* Each input (n bytes) and the literal written for it. */
static void test_strings(void **state)
{
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"", 0, "\"\""},
        {"plain text", 10, "\"plain text\""},
        {"q\"b\\", 4, "\"q\\\"b\\\\\""},
        {"a\r\nb\tc", 6, "\"a\\r\\nb\\tc\""},
        {"\x01\x1f", 2, "\"\\u0001\\u001f\""},
        {"a\0b", 3, "\"a\\u0000b\""}, /* a NUL inside the n bytes is written */
        {"\x7f", 1, "\"\\u007f\""},
        /* UTF-8 passes through when valid (RFC 3629 §4), else U+FFFD. */
        {"\xe2\x82\xac", 3, "\"\xe2\x82\xac\""},                     /* euro sign */
        {"\xf0\x9f\x98\x80", 4, "\"\xf0\x9f\x98\x80\""},             /* emoji */
        {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\""},                       /* overlong */
        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""},            /* surrogate */
        {"\xe2\x82", 2, "\"\\ufffd\\ufffd\""},                       /* truncated */
        {"\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* past U+10FFFF */
    };
    struct ms_buf b;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_buf_init(&b, 256);
        assert_int_equal(ms_json_string(&b, cases[i].in, cases[i].n), 0);
        assert_int_equal(ms_buf_append(&b, "", 1), 0);
        assert_string_equal(b.data, cases[i].out);
        ms_buf_free(&b);
    }
}

static void test_limit(void **state)
{
    struct ms_buf b;

    (void)state;
    ms_buf_init(&b, 8);
    assert_int_equal(ms_json_string(&b, "0123456789", 10), MS_ETOOBIG);
    ms_buf_free(&b);
}

static void test_time(void **state)
{
    char ts[MS_JSON_TIME_MAX];

    (void)state;
    ms_json_time(ts, sizeof(ts), 0);
    assert_string_equal(ts, "1970-01-01T00:00:00.000Z");
    ms_json_time(ts, sizeof(ts), 1764565200123456LL);
    assert_string_equal(ts, "2025-12-01T05:00:00.123Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
