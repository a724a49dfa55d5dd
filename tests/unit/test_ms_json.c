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

static void test_escapes(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", "\"\""},
        {"plain text", "\"plain text\""},
        {"q\"b\\", "\"q\\\"b\\\\\""},
        {"a\r\nb\tc", "\"a\\r\\nb\\tc\""},
        {"\x01\x1f", "\"\\u0001\\u001f\""},
    };
    struct ms_buf b;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_buf_init(&b, 256);
        assert_int_equal(ms_json_string(&b, cases[i].in, strlen(cases[i].in)), 0);
        assert_int_equal(ms_buf_append(&b, "", 1), 0);
        assert_string_equal(b.data, cases[i].out);
        ms_buf_free(&b);
    }
    /* A NUL inside the n bytes is written, not an end. */
    ms_buf_init(&b, 256);
    assert_int_equal(ms_json_string(&b, "a\0b", 3), 0);
    assert_int_equal(ms_buf_append(&b, "", 1), 0);
    assert_string_equal(b.data, "\"a\\u0000b\"");
    ms_buf_free(&b);
}

static void test_utf8(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"\xe2\x82\xac", "\"\xe2\x82\xac\""},          /* euro sign */
        {"\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\""},  /* emoji */
        {"\xc0\xaf", "\"\\ufffd\\ufffd\""},            /* overlong */
        {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""}, /* surrogate */
        {"\xe2\x82", "\"\\ufffd\\ufffd\""},            /* truncated */
        {"\x7f", "\"\\u007f\""},
    };
    struct ms_buf b;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms_buf_init(&b, 256);
        assert_int_equal(ms_json_string(&b, cases[i].in, strlen(cases[i].in)), 0);
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
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
