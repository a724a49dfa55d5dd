/*
 * test_smtp_data.c - table-driven tests of the DATA reader
 * (frontend/smtp_data.c): dot-unstuffing, the end of data, and the SMTP
 * smuggling variants that must never end a message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_buf.h"
#include "ms_error.h"
#include "../../frontend/smtp_data.h"

#define S(lit) lit, sizeof(lit) - 1

struct data_case {
    const char *name;
    const char *in;
    size_t len;
    int done;                   /* the end of data is in the input */
    size_t consumed;            /* when done */
    enum fe_data_status status; /* when done */
    const char *out;            /* expected message when status OK (NULL: skip) */
    size_t outlen;
};

static const struct data_case cases[] = {
    {"empty message", S(".\r\n"), 1, 3, FE_DATA_OK, S("")},
    {"one line", S("Subject: x\r\n\r\nhello\r\n.\r\n"), 1, 24, FE_DATA_OK,
     S("Subject: x\r\n\r\nhello\r\n")},
    {"trailing input stays", S("a\r\n.\r\nQUIT\r\n"), 1, 6, FE_DATA_OK, S("a\r\n")},
    {"dot stuffing", S("..leading dot\r\n...\r\n.\r\n"), 1, 23, FE_DATA_OK,
     S(".leading dot\r\n..\r\n")},
    {"dot inside a line", S("a.b\r\n.\r\n"), 1, 8, FE_DATA_OK, S("a.b\r\n")},
    {"dot then text", S(".x\r\n.\r\n"), 1, 7, FE_DATA_OK, S("x\r\n")},
    {"not yet", S("hello\r\n."), 0, 0, FE_DATA_OK, NULL, 0},
    {"not yet cr", S("hello\r\n.\r"), 0, 0, FE_DATA_OK, NULL, 0},
    {"no final crlf before dot", S("hello.\r\n"), 0, 0, FE_DATA_OK, NULL, 0},
    /* Smuggling variants: none of these ends the message. */
    {"lf dot lf", S("a\n.\nMAIL FROM:<x@y>\n"), 0, 0, FE_DATA_OK, NULL, 0},
    {"cr dot cr", S("a\r.\rMAIL FROM:<x@y>\r"), 0, 0, FE_DATA_OK, NULL, 0},
    {"crlf dot lf", S("a\r\n.\nMAIL FROM:<x@y>\r\n"), 0, 0, FE_DATA_OK, NULL, 0},
    {"lf dot crlf", S("a\n.\r\nMAIL FROM:<x@y>\r\n"), 0, 0, FE_DATA_OK, NULL, 0},
    {"cr dot crlf", S("a\r.\r\nMAIL FROM:<x@y>\r\n"), 0, 0, FE_DATA_OK, NULL, 0},
    {"crlf dot cr", S("a\r\n.\rMAIL FROM:<x@y>\r\n"), 0, 0, FE_DATA_OK, NULL, 0},
    {"crlf dot cr cr lf", S("a\r\n.\r\r\nMAIL FROM:<x@y>\r\n"), 0, 0, FE_DATA_OK, NULL, 0},
    /* ...and when the real end comes, the message is rejected. */
    {"lf dot lf then end", S("a\n.\nMAIL FROM:<x@y>\r\n.\r\n"), 1, 24, FE_DATA_BARE_LF,
     NULL, 0},
    {"cr dot cr then end", S("a\r.\rb\r\n.\r\n"), 1, 10, FE_DATA_BARE_CR, NULL, 0},
    {"crlf dot lf then end", S("a\r\n.\nb\r\n.\r\n"), 1, 11, FE_DATA_BARE_LF, NULL, 0},
    {"lf dot crlf then end", S("a\n.\r\nb\r\n.\r\n"), 1, 11, FE_DATA_BARE_LF, NULL, 0},
    {"crlf dot cr x then end", S("a\r\n.\rx\r\n.\r\n"), 1, 11, FE_DATA_BARE_CR, NULL, 0},
    {"nul", S("a\0b\r\n.\r\n"), 1, 8, FE_DATA_NUL, NULL, 0},
    {"bare lf first wins", S("a\nb\0\r\n.\r\n"), 1, 9, FE_DATA_BARE_LF, NULL, 0},
    {"bare cr at end of line", S("a\r\r\n.\r\n"), 1, 7, FE_DATA_BARE_CR, NULL, 0},
};

static void run_case(const struct data_case *c, size_t chunk)
{
    struct fe_data_reader r;
    struct ms_buf out;
    size_t off = 0, n;
    int ret = MS_EAGAIN, done = 0;

    ms_buf_init(&out, 1 << 20);
    fe_data_init(&r, &out, 1 << 20);
    while (off < c->len) {
        n = c->len - off < chunk ? c->len - off : chunk;
        ret = fe_data_feed(&r, c->in + off, n);
        if (ret >= 0) {
            off += (size_t)ret;
            done = 1;
            break;
        }
        assert_int_equal(ret, MS_EAGAIN);
        off += n;
    }
    if (done != c->done)
        fail_msg("%s (chunk %zu): done=%d", c->name, chunk, done);
    if (done) {
        if (off != c->consumed)
            fail_msg("%s (chunk %zu): consumed %zu", c->name, chunk, off);
        if (r.status != c->status)
            fail_msg("%s (chunk %zu): status %d", c->name, chunk, r.status);
        if (c->out && (out.len != c->outlen || (c->outlen && memcmp(out.data, c->out, c->outlen) != 0)))
            fail_msg("%s (chunk %zu): output differs", c->name, chunk);
        assert_int_equal(r.wire, c->consumed);
    }
    ms_buf_free(&out);
}

static void test_table(void **state)
{
    size_t i, chunk;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        for (chunk = 1; chunk <= 64; chunk = chunk < 4 ? chunk + 1 : chunk * 2)
            run_case(&cases[i], chunk);
}

static void test_line_limit(void **state)
{
    struct fe_data_reader r;
    struct ms_buf out;
    char *msg = malloc(4096);

    (void)state;
    /* 998 octets and CRLF: the longest legal line. */
    memset(msg, 'x', 998);
    memcpy(msg + 998, "\r\n.\r\n", 5);
    ms_buf_init(&out, 1 << 20);
    fe_data_init(&r, &out, 1 << 20);
    assert_int_equal(fe_data_feed(&r, msg, 1003), 1003);
    assert_int_equal(r.status, FE_DATA_OK);
    assert_int_equal(out.len, 1000);
    /* A stuffed dot counts: ".x{998}" is 1001 octets on the wire. */
    msg[0] = '.';
    memset(msg + 1, 'x', 998);
    memcpy(msg + 999, "\r\n.\r\n", 5);
    ms_buf_reset(&out);
    fe_data_init(&r, &out, 1 << 20);
    assert_int_equal(fe_data_feed(&r, msg, 1004), 1004);
    assert_int_equal(r.status, FE_DATA_LINE_TOO_LONG);
    /* 999 octets and CRLF. */
    memset(msg, 'x', 999);
    memcpy(msg + 999, "\r\n.\r\n", 5);
    ms_buf_reset(&out);
    fe_data_init(&r, &out, 1 << 20);
    assert_int_equal(fe_data_feed(&r, msg, 1004), 1004);
    assert_int_equal(r.status, FE_DATA_LINE_TOO_LONG);
    assert_non_null(fe_data_reply(r.status));
    assert_memory_equal(fe_data_reply(r.status), "500 5.5.2", 9);
    ms_buf_free(&out);
    free(msg);
}

static void test_size_limit(void **state)
{
    struct fe_data_reader r;
    struct ms_buf out;
    size_t i;

    (void)state;
    ms_buf_init(&out, 1 << 20);
    fe_data_init(&r, &out, 100);
    /* 10 lines of 10 octets: exactly 100. */
    for (i = 0; i < 10; i++)
        assert_int_equal(fe_data_feed(&r, S("12345678\r\n")), MS_EAGAIN);
    assert_int_equal(fe_data_feed(&r, S(".\r\n")), 3);
    assert_int_equal(r.status, FE_DATA_OK);
    assert_int_equal(out.len, 100);

    ms_buf_reset(&out);
    fe_data_init(&r, &out, 100);
    for (i = 0; i < 11; i++)
        assert_int_equal(fe_data_feed(&r, S("12345678\r\n")), MS_EAGAIN);
    /* Past the limit nothing more is stored, but the end is still found. */
    assert_true(out.len <= 100);
    assert_int_equal(fe_data_feed(&r, S(".\r\nQUIT\r\n")), 3);
    assert_int_equal(r.status, FE_DATA_TOO_BIG);
    assert_int_equal(r.size, 110);
    assert_memory_equal(fe_data_reply(r.status), "552 5.3.4", 9);

    /* The output buffer's own maximum also counts as too big. */
    ms_buf_free(&out);
    ms_buf_init(&out, 5);
    fe_data_init(&r, &out, 100);
    assert_int_equal(fe_data_feed(&r, S("1234567\r\n.\r\n")), 12);
    assert_int_equal(r.status, FE_DATA_TOO_BIG);
    ms_buf_free(&out);
}

/* ---- BDAT (RFC 3030) ---- */

/* Feed `in` as chunks of the given sizes (LAST after the final one), each
 * chunk in pieces of `piece` octets. */
static enum fe_data_status bdat_run(const char *in, const size_t *chunks, size_t nchunks,
                                    size_t piece, size_t max, int binary, struct ms_buf *out)
{
    struct fe_bdat_reader r;
    size_t i, off = 0, n, got;

    fe_bdat_init(&r, out, max, binary);
    for (i = 0; i < nchunks; i++) {
        fe_bdat_chunk(&r, chunks[i]);
        while (r.left > 0) {
            n = r.left < piece ? (size_t)r.left : piece;
            got = fe_bdat_feed(&r, in + off, n);
            assert_int_equal(got, n);
            off += got;
        }
        assert_int_equal(fe_bdat_feed(&r, in + off, 5), 0);
    }
    return fe_bdat_finish(&r);
}

static void test_bdat(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        size_t len;
        size_t chunks[3];
        size_t nchunks;
        int binary;
        enum fe_data_status status;
        const char *out; /* when OK */
        size_t outlen;
    } bcases[] = {
        {"one chunk", S("Subject: x\r\n\r\nhi\r\n"), {18}, 1, 0, FE_DATA_OK,
         S("Subject: x\r\n\r\nhi\r\n")},
        {"no unstuffing", S("..x\r\n.\r\n"), {8}, 1, 0, FE_DATA_OK, S("..x\r\n.\r\n")},
        {"crlf across chunks", S("a\r\nb\r\n"), {2, 4}, 2, 0, FE_DATA_OK, S("a\r\nb\r\n")},
        {"empty", S(""), {0}, 1, 0, FE_DATA_OK, S("")},
        {"empty chunks", S("a\r\n"), {0, 3, 0}, 3, 0, FE_DATA_OK, S("a\r\n")},
        {"final crlf added", S("a\r\nb"), {4}, 1, 0, FE_DATA_OK, S("a\r\nb\r\n")},
        {"bare lf", S("a\nb\r\n"), {5}, 1, 0, FE_DATA_BARE_LF, NULL, 0},
        {"bare cr", S("a\rb\r\n"), {5}, 1, 0, FE_DATA_BARE_CR, NULL, 0},
        {"bare cr at a chunk end", S("a\rb\r\n"), {2, 3}, 2, 0, FE_DATA_BARE_CR, NULL, 0},
        {"bare cr at the end", S("a\r\nb\r"), {5}, 1, 0, FE_DATA_BARE_CR, NULL, 0},
        {"nul", S("a\0b\r\n"), {5}, 1, 0, FE_DATA_NUL, NULL, 0},
        {"smuggling lf.lf", S("a\n.\nMAIL FROM:<x@y>\n"), {20}, 1, 0, FE_DATA_BARE_LF, NULL, 0},
        {"binary keeps everything", S("a\n\0\rb"), {5}, 1, 1, FE_DATA_OK, S("a\n\0\rb")},
        {"too big", S("0123456789abcdefghijklmnop"), {13, 13}, 2, 0, FE_DATA_TOO_BIG, NULL, 0},
        {"too big binary", S("0123456789abcdefghijklmnop"), {26}, 1, 1, FE_DATA_TOO_BIG, NULL,
         0},
    };
    struct ms_buf out;
    size_t i, piece;
    enum fe_data_status st;

    (void)state;
    for (i = 0; i < sizeof(bcases) / sizeof(bcases[0]); i++)
        for (piece = 1; piece <= 32; piece *= 2) {
            ms_buf_init(&out, 1 << 16);
            st = bdat_run(bcases[i].in, bcases[i].chunks, bcases[i].nchunks, piece, 20, bcases[i].binary,
                          &out);
            if (st != bcases[i].status)
                fail_msg("%s (piece %zu): status %d", bcases[i].name, piece, (int)st);
            if (st == FE_DATA_OK &&
                (out.len != bcases[i].outlen ||
                 (out.len > 0 && memcmp(out.data, bcases[i].out, out.len) != 0)))
                fail_msg("%s (piece %zu): wrong message", bcases[i].name, piece);
            if (st == FE_DATA_TOO_BIG)
                assert_true(out.len <= 20);
            ms_buf_free(&out);
        }
}

/* A chunk announced past the limit is known at once, and its octets are
 * still consumed (and dropped). */
static void test_bdat_huge_chunk(void **state)
{
    struct fe_bdat_reader r;
    struct ms_buf out;
    char junk[4096];

    (void)state;
    memset(junk, 'x', sizeof(junk));
    ms_buf_init(&out, 1 << 16);
    fe_bdat_init(&r, &out, 1000, 0);
    assert_int_equal(fe_bdat_chunk(&r, UINT64_MAX / 2), FE_DATA_TOO_BIG);
    assert_int_equal(fe_bdat_feed(&r, junk, sizeof(junk)), sizeof(junk));
    assert_true(r.left == UINT64_MAX / 2 - sizeof(junk));
    assert_int_equal(out.len, 0);
    assert_int_equal(fe_bdat_chunk(&r, 1), FE_DATA_TOO_BIG); /* stays over */
    ms_buf_free(&out);
}

/* want_8bit: last_8bit is where the line piece holding the last octet >=
 * 0x80 ends in the output: past the octet, not past its line's end (a piece
 * ends with a chunk too), whatever the octet's place in the eight-octet
 * words the readers scan; TAB and the other control octets stay ordinary
 * text. */
static void test_eightbit(void **state)
{
    char line[64], msg[256];
    size_t len, k, n, chunk, off;
    struct fe_data_reader r;
    struct fe_bdat_reader b;
    struct ms_buf out;
    int ret;

    (void)state;
    for (len = 1; len <= 40; len++)
        for (k = 0; k < len; k++)
            for (chunk = 1; chunk <= 64; chunk *= 4) {
                memset(line, 'x', len);
                line[len / 2] = '\t';
                line[len / 3] = '\x0b';
                line[k] = (char)0xe9;
                /* "Subject: a\r\n\r\n" + line + "\r\nplain\r\n.\r\n" */
                memcpy(msg, "Subject: a\r\n\r\n", 14);
                n = 14;
                memcpy(msg + n, line, len);
                n += len;
                memcpy(msg + n, "\r\nplain\r\n.\r\n", 12);
                n += 12;
                ms_buf_init(&out, 1 << 16);
                fe_data_init(&r, &out, 1 << 16);
                r.want_8bit = 1;
                ret = MS_EAGAIN;
                for (off = 0; off < n && ret < 0; off += chunk)
                    ret = fe_data_feed(&r, msg + off, n - off < chunk ? n - off : chunk);
                assert_true(ret >= 0);
                assert_int_equal(r.status, FE_DATA_OK);
                if (r.last_8bit <= 14 + k || r.last_8bit > 14 + len)
                    fail_msg("DATA len %zu octet %zu chunk %zu: last_8bit %zu", len, k, chunk,
                             r.last_8bit);
                assert_int_equal(out.len, n - 3);
                assert_memory_equal(out.data + 14, line, len);
                ms_buf_free(&out);

                ms_buf_init(&out, 1 << 16);
                fe_bdat_init(&b, &out, 1 << 16, 0);
                b.want_8bit = 1;
                fe_bdat_chunk(&b, n - 3);
                for (off = 0; off < n - 3; off += chunk)
                    fe_bdat_feed(&b, msg + off, n - 3 - off < chunk ? n - 3 - off : chunk);
                assert_int_equal(fe_bdat_finish(&b), FE_DATA_OK);
                if (b.last_8bit <= 14 + k || b.last_8bit > 14 + len)
                    fail_msg("BDAT len %zu octet %zu chunk %zu: last_8bit %zu", len, k, chunk,
                             b.last_8bit);
                ms_buf_free(&out);
            }
    /* Not asked: not noted.  Seven-bit only: 0. */
    ms_buf_init(&out, 1 << 16);
    fe_data_init(&r, &out, 1 << 16);
    assert_int_equal(fe_data_feed(&r, S("caf\xc3\xa9\r\n.\r\n")), 10);
    assert_int_equal(r.last_8bit, 0);
    ms_buf_reset(&out);
    fe_data_init(&r, &out, 1 << 16);
    r.want_8bit = 1;
    assert_int_equal(fe_data_feed(&r, S("a\tb\x7f\x01" "c\r\nnothing high here, at all\r\n.\r\n")),
                     38);
    assert_int_equal(r.status, FE_DATA_OK);
    assert_int_equal(r.last_8bit, 0);
    ms_buf_free(&out);
}

static void test_replies(void **state)
{
    (void)state;
    assert_null(fe_data_reply(FE_DATA_OK));
    assert_memory_equal(fe_data_reply(FE_DATA_BARE_LF), "554 5.6.0", 9);
    assert_memory_equal(fe_data_reply(FE_DATA_BARE_CR), "554 5.6.0", 9);
    assert_memory_equal(fe_data_reply(FE_DATA_NUL), "554 5.6.0", 9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_bdat_huge_chunk),
        cmocka_unit_test(test_eightbit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
