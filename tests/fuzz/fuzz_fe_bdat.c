/*
 * fuzz_fe_bdat.c - libFuzzer driver for the BDAT reader
 * (frontend/smtp_data.c, RFC 3030).  Input: one flags octet (bit 0: BODY=
 * BINARYMIME), one octet per chunk giving its size (a 0xff octet ends the
 * size list), then the chunk octets.  The message is read twice, once fed
 * in one piece per chunk and once an octet at a time, and the invariants
 * are checked: the same outcome whatever the feeding, every octet of each
 * chunk consumed and none more, nothing past the limit stored, and a text
 * body that is accepted has only CRLF line ends and no NUL, so nothing can
 * be smuggled through Kafka to the next hop.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ms_buf.h"
#include "../../frontend/smtp_data.h"

#define LIMIT 512
#define CHUNKS_MAX 16

static enum fe_data_status run(const uint8_t *sizes, size_t nchunks, const char *buf, size_t len,
                               int binary, int bytewise, struct ms_buf *out)
{
    struct fe_bdat_reader r;
    size_t i, off = 0, n, got;

    fe_bdat_init(&r, out, LIMIT, binary);
    for (i = 0; i < nchunks; i++) {
        n = sizes[i];
        if (n > len - off)
            n = len - off;
        fe_bdat_chunk(&r, n);
        while (r.left > 0) {
            got = fe_bdat_feed(&r, buf + off, bytewise ? 1 : len - off);
            if (got == 0 || got > n)
                __builtin_trap();
            off += got;
            n -= got;
        }
        if (n != 0 || fe_bdat_feed(&r, buf + off, len - off) != 0)
            __builtin_trap();
    }
    return fe_bdat_finish(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_buf a, b;
    enum fe_data_status sa, sb;
    size_t nchunks = 0, i;
    int binary;

    if (size < 1)
        return 0;
    binary = data[0] & 1;
    for (i = 1; i < size && data[i] != 0xff && nchunks < CHUNKS_MAX; i++)
        nchunks++;
    if (i < size && data[i] == 0xff)
        i++;
    ms_buf_init(&a, 1 << 20);
    ms_buf_init(&b, 1 << 20);
    sa = run(data + 1, nchunks, (const char *)data + i, size - i, binary, 0, &a);
    sb = run(data + 1, nchunks, (const char *)data + i, size - i, binary, 1, &b);
    if (sa != sb)
        __builtin_trap();
    if (a.len > LIMIT + 2)
        __builtin_trap();
    if (sa == FE_DATA_OK) {
        /* An empty buffer may have no storage (data NULL): no memcmp on
         * it, its pointers must be valid even for length 0. */
        if (a.len != b.len || (a.len > 0 && memcmp(a.data, b.data, a.len) != 0))
            __builtin_trap();
        if (!binary) {
            for (i = 0; i < a.len; i++) {
                if (a.data[i] == '\0')
                    __builtin_trap();
                if (a.data[i] == '\r' && (i + 1 == a.len || a.data[i + 1] != '\n'))
                    __builtin_trap();
                if (a.data[i] == '\n' && (i == 0 || a.data[i - 1] != '\r'))
                    __builtin_trap();
            }
            if (a.len > 0 && (a.len < 2 || memcmp(a.data + a.len - 2, "\r\n", 2) != 0))
                __builtin_trap();
        }
    }
    ms_buf_free(&a);
    ms_buf_free(&b);
    return 0;
}
