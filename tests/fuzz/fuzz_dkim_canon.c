/*
 * fuzz_dkim_canon.c - libFuzzer driver for the header splitter and the
 * header and body canonicalizers (lib/mail/ms_dkim_parse.c).  Checks that
 * relaxed output never grows, that the body canonicalizer gives exactly the
 * octets of the reference canonicalizer (tests/unit/dkim_canon_ref.h, the
 * RFC's steps applied to the whole body) fed whole, fed in pieces cut where
 * the input says (inside CRLF and WSP runs too), and that l= never emits
 * past the limit.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/dkim_canon_ref.h"
#include "ms_buf.h"
#include "ms_dkim.h"
#include "ms_error.h"

static void emit(void *ctx, const void *p, size_t n)
{
    if (ms_buf_append(ctx, p, n) != 0)
        abort();
}

/* Canonicalize p[0..n) into out, in pieces whose sizes come from `cuts`
 * (each octet a piece of 0-15 octets, then the rest whole; no cuts: whole). */
static void body(enum ms_dkim_canon c, int64_t limit, const char *p, size_t n, const uint8_t *cuts,
                 size_t ncuts, struct ms_buf *out, uint64_t *total)
{
    struct ms_dkim_body b;
    size_t off = 0;

    ms_buf_reset(out);
    ms_dkim_body_init(&b, c, limit, emit, out);
    for (size_t k = 0; k < ncuts && off < n; k++) {
        size_t step = cuts[k] % 16;

        step = step < n - off ? step : n - off;
        ms_dkim_body_update(&b, p + off, step);
        off += step;
    }
    ms_dkim_body_update(&b, p + off, n - off);
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
        const char *bp = msg + body_off;
        size_t blen = size - body_off;
        struct ms_buf got;

        ms_buf_init(&got, 2 * size + 4);
        for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
            size_t rlen;
            char *ref = dkim_canon_ref((enum ms_dkim_canon)c, bp, blen, &rlen);
            uint64_t total;
            int64_t limit = size > 0 ? data[0] : 0;

            /* Whole; in pieces cut by the body's own octets (whatever they
             * are: the cuts fall everywhere), then by the whole input's. */
            body(c, -1, bp, blen, NULL, 0, &got, &total);
            if (total != rlen || got.len != rlen || memcmp(got.data, ref, rlen) != 0)
                abort();
            body(c, -1, bp, blen, (const uint8_t *)bp, blen, &got, &total);
            if (total != rlen || got.len != rlen || memcmp(got.data, ref, rlen) != 0)
                abort();
            body(c, -1, bp, blen, data, size, &got, &total);
            if (total != rlen || got.len != rlen || memcmp(got.data, ref, rlen) != 0)
                abort();
            body(c, limit, bp, blen, data + size / 2, size - size / 2, &got, &total);
            if (total != rlen || got.len != (rlen < (uint64_t)limit ? rlen : (size_t)limit) ||
                memcmp(got.data, ref, got.len) != 0)
                abort();
            free(ref);
        }
        ms_buf_free(&got);
    }
    return 0;
}
