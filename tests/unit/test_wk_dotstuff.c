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

/* The rules octet by octet, as RFC 5321 §4.5.2 and §2.3.8 state them: the
 * reference the one-pass scan (sixteen octets at a time) must agree with. */
static size_t naive(const char *m, size_t len, int dots, char *out)
{
    size_t i, n = 0;
    int bol = 1;

    for (i = 0; i < len; i++) {
        if (dots && bol && m[i] == '.')
            out[n++] = '.';
        if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
            out[n++] = '\r';
        out[n++] = m[i];
        bol = m[i] == '\n';
    }
    if (len > 0 && m[len - 1] == '\r')
        out[n++] = '\n';
    else if (len > 0 && m[len - 1] != '\n') {
        out[n++] = '\r';
        out[n++] = '\n';
    }
    if (dots) {
        memcpy(out + n, ".\r\n", 3);
        n += 3;
    }
    return n;
}

/* Random messages over the octets that matter, at every length up to a few
 * blocks of sixteen and at every offset in them: DATA and BDAT forms equal
 * the reference (a stop missed or invented by the block scan, at a block's
 * edge or in the tail after the last block, would differ). */
static void test_matches_reference(void **state)
{
    static const char alphabet[] = ".\r\nxx";
    char in[80], want[3 * 80 + 8], *got;
    size_t len, n, w, i;
    unsigned seed = 12345;
    int round, dots;

    (void)state;
    for (round = 0; round < 20000; round++) {
        len = (size_t)round % sizeof(in);
        for (i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            /* mostly CRLF text, so that long clean runs reach the blocks */
            in[i] = (seed >> 16) % 8 < 6 ? "ab\r\nc.\r\n"[i % 9] : alphabet[(seed >> 20) % 5];
        }
        for (dots = 0; dots <= 1; dots++) {
            w = naive(in, len, dots, want);
            got = dots ? wk_dotstuff_alloc(in, len, &n) : wk_crlf_alloc(in, len, &n);
            assert_int_equal(n, w);
            assert_memory_equal(got, want, n);
            assert_int_equal(dots ? wk_dotstuff_len(in, len) : wk_crlf_len(in, len), w);
            /* As it is exactly when stuffing only appends the terminator
             * (it never takes octets away, so the length tells). */
            assert_int_equal(dots ? wk_dotstuff_as_is(in, len) : wk_crlf_as_is(in, len),
                             w == len + (dots ? 3 : 0));
            free(got);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_alloc_grows),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
