/*
 * fuzz_dkim_canon.c - libFuzzer driver for the header splitter and the
 * header and body canonicalizers (lib/mail/ms_dkim_parse.c).  Checks that
 * relaxed output never grows, that the body canonicalizer gives the same
 * octets whatever the piece sizes, and that l= never emits past the limit.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_buf.h"
#include "ms_dkim.h"
#include "ms_error.h"

struct sink {
    uint64_t n;
    uint32_t sum; /* order-sensitive checksum of the octets */
};

static void emit(void *ctx, const void *p, size_t n)
{
    struct sink *s = ctx;
    const uint8_t *b = p;

    for (size_t k = 0; k < n; k++)
        s->sum = s->sum * 31 + b[k];
    s->n += n;
}

static void body(enum ms_dkim_canon c, int64_t limit, const char *p, size_t n, size_t step,
                 struct sink *s, uint64_t *total)
{
    struct ms_dkim_body b;

    memset(s, 0, sizeof(*s));
    ms_dkim_body_init(&b, c, limit, emit, s);
    for (size_t off = 0; off < n; off += step)
        ms_dkim_body_update(&b, p + off, n - off < step ? n - off : step);
    ms_dkim_body_final(&b);
    *total = b.total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ms_dkim_hdr hdrs[MS_DKIM_HEADERS_MAX];
    const char *msg = (const char *)data;
    struct ms_buf out;
    size_t body_off;
    int n;

    ms_buf_init(&out, MS_DKIM_FIELD_MAX);
    n = ms_dkim_headers_split(msg, size, hdrs, MS_DKIM_HEADERS_MAX, &body_off);
    if (body_off > size)
        abort();
    for (int k = 0; k < n; k++) {
        if (hdrs[k].off + hdrs[k].len > size || hdrs[k].name_len == 0 ||
            hdrs[k].name_len > hdrs[k].len)
            abort();
        ms_buf_reset(&out);
        if (ms_dkim_canon_header(MS_DKIM_RELAXED, msg + hdrs[k].off, hdrs[k].len, &out) != 0 ||
            out.len > hdrs[k].len)
            abort();
        ms_buf_reset(&out);
        if (ms_dkim_canon_header(MS_DKIM_SIMPLE, msg + hdrs[k].off, hdrs[k].len, &out) != 0 ||
            out.len != hdrs[k].len)
            abort();
    }
    /* The whole input as one field, too (no colon is an error, not a crash). */
    ms_buf_reset(&out);
    (void)ms_dkim_canon_header(MS_DKIM_RELAXED, msg, size, &out);
    ms_buf_free(&out);

    if (n >= 0) {
        for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
            struct sink a, b;
            uint64_t ta, tb;
            int64_t limit = size > 0 ? data[0] : 0;

            body(c, -1, msg + body_off, size - body_off, size ? size : 1, &a, &ta);
            body(c, -1, msg + body_off, size - body_off, 1 + (size % 7), &b, &tb);
            if (a.n != b.n || a.sum != b.sum || ta != tb || a.n != ta)
                abort();
            body(c, limit, msg + body_off, size - body_off, 3, &b, &tb);
            if (tb != ta || b.n != (ta < (uint64_t)limit ? ta : (uint64_t)limit))
                abort();
        }
    }
    return 0;
}
