/*
 * test_wk_dotstuff.c - worker/dotstuff.c: RFC 5321 §4.5.2 transparency.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../../worker/dotstuff.h"

static const struct {
    const char *name, *in, *out;
} cases[] = {
    {"empty", "", ".\r\n"},
    {"plain", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
    {"leading dot", ".a\r\n", "..a\r\n.\r\n"},
    {"lone dot line", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
    {"two dots", "..\r\n", "...\r\n.\r\n"},
    {"dot mid-line", "a.b\r\n a.\r\n", "a.b\r\n a.\r\n.\r\n"},
    {"no final CRLF", "a\r\n.b", "a\r\n..b\r\n.\r\n"},
    {"final CR only", "a\r", "a\r\n.\r\n"},
    {"bare LF", "a\n.b\n", "a\r\n..b\r\n.\r\n"},
    {"bare CR is no line end", "a\r.b\r\n", "a\r.b\r\n.\r\n"},
    {"dot after blank line", "h: v\r\n\r\n.\r\n", "h: v\r\n\r\n..\r\n.\r\n"},
    {"only dot", ".", "..\r\n.\r\n"},
};

static void test_table(void **state)
{
    size_t i, n, len;
    char *out;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        len = wk_dotstuff_len(cases[i].in, strlen(cases[i].in));
        if (len != strlen(cases[i].out))
            fail_msg("%s: length %zu, want %zu", cases[i].name, len, strlen(cases[i].out));
        out = malloc(len + 1);
        n = wk_dotstuff(cases[i].in, strlen(cases[i].in), out);
        assert_int_equal(n, len);
        out[n] = '\0';
        if (strcmp(out, cases[i].out) != 0)
            fail_msg("%s: got \"%s\"", cases[i].name, out);
        free(out);
        /* The one-pass form the worker sends gives the same octets. */
        out = wk_dotstuff_alloc(cases[i].in, strlen(cases[i].in), &n);
        assert_int_equal(n, len);
        assert_memory_equal(out, cases[i].out, len);
        free(out);
    }
}

/* Unstuffing what we stuffed gives the original back, and the terminator
 * appears exactly once, at the end. */
static void test_roundtrip(void **state)
{
    const char *in = ".\r\n..\r\nx\r\n.\r\n\r\n.x.\r\n";
    size_t len = wk_dotstuff_len(in, strlen(in)), i, o = 0;
    char *out = malloc(len), back[64];
    int bol = 1;

    (void)state;
    wk_dotstuff(in, strlen(in), out);
    assert_memory_equal(out + len - 5, "\r\n.\r\n", 5);
    for (i = 0; i + 3 < len; i++) {
        if (bol && out[i] == '.') {
            assert_false(out[i + 1] == '\r'); /* never a lone dot before the end */
            i++;
        }
        back[o++] = out[i];
        bol = out[i] == '\n';
    }
    assert_int_equal(o, strlen(in));
    assert_memory_equal(back, in, o);
    free(out);
}

/* BDAT (RFC 3030): line ends only, no dots, no terminator. */
static void test_crlf(void **state)
{
    static const struct {
        const char *name, *in, *out;
    } crlf[] = {
        {"empty", "", ""},
        {"plain", "a\r\nb\r\n", "a\r\nb\r\n"},
        {"dots stay", ".a\r\n.\r\n..\r\n", ".a\r\n.\r\n..\r\n"},
        {"no final CRLF", "a\r\nb", "a\r\nb\r\n"},
        {"final CR only", "a\r", "a\r\n"},
        {"bare LF", "a\nb\n", "a\r\nb\r\n"},
        {"bare CR kept", "a\rb\r\n", "a\rb\r\n"},
    };
    size_t i, n, len;
    char out[64], *a;

    (void)state;
    for (i = 0; i < sizeof(crlf) / sizeof(crlf[0]); i++) {
        len = wk_crlf_len(crlf[i].in, strlen(crlf[i].in));
        if (len != strlen(crlf[i].out))
            fail_msg("%s: length %zu, want %zu", crlf[i].name, len, strlen(crlf[i].out));
        n = wk_crlf(crlf[i].in, strlen(crlf[i].in), out);
        assert_int_equal(n, len);
        out[n] = '\0';
        if (strcmp(out, crlf[i].out) != 0)
            fail_msg("%s: got \"%s\"", crlf[i].name, out);
        a = wk_crlf_alloc(crlf[i].in, strlen(crlf[i].in), &n);
        assert_int_equal(n, len);
        assert_memory_equal(a, crlf[i].out, len);
        free(a);
    }
}

/* The one-pass form outgrows its first guess (len + len/SLACK_DIV +
 * SLACK_MIN) when most lines need a dot or a CR: it grows, the octets are
 * those of the exact two-pass form. */
static void test_alloc_grows(void **state)
{
    size_t k, n, len, want;
    char *in, *out, *exact;

    (void)state;
    for (k = 1; k <= 4096; k *= 4) {
        len = 2 * k;
        in = malloc(len);
        for (size_t i = 0; i < k; i++)
            memcpy(in + 2 * i, k % 2 ? ".\n" : "\n.", 2);
        want = wk_dotstuff_len(in, len);
        assert_true(want > len + len / WK_DOTSTUFF_SLACK_DIV + WK_DOTSTUFF_SLACK_MIN || k < 64);
        exact = malloc(want);
        wk_dotstuff(in, len, exact);
        out = wk_dotstuff_alloc(in, len, &n);
        assert_int_equal(n, want);
        assert_memory_equal(out, exact, n);
        free(out);
        free(exact);
        free(in);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_alloc_grows),
        cmocka_unit_test(test_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
