/*
 * fuzz_fe_data.c - libFuzzer driver for the DATA reader
 * (frontend/smtp_data.c).  Feeds the input in two chunks split by the first
 * byte and checks the invariants: the end is found identically whatever the
 * chunking, only right after <CRLF>.<CRLF>, and nothing past the limit is
 * stored.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ms_buf.h"
#include "ms_error.h"
#include "../../frontend/smtp_data.h"

#define LIMIT 4096

static int run(const char *buf, size_t size, size_t split, struct ms_buf *out,
               enum fe_data_status *st)
{
    struct fe_data_reader r;
    int ret;

    fe_data_init(&r, out, LIMIT);
    if (split > size)
        split = size;
    ret = fe_data_feed(&r, buf, split);
    if (ret < 0) {
        ret = fe_data_feed(&r, buf + split, size - split);
        if (ret >= 0)
            ret += (int)split;
    }
    if (out->len > LIMIT)
        __builtin_trap();
    *st = r.status;
    return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_buf a, b;
    enum fe_data_status sa, sb;
    int ra, rb;

    if (size < 1)
        return 0;
    ms_buf_init(&a, 1 << 20);
    ms_buf_init(&b, 1 << 20);
    ra = run((const char *)data + 1, size - 1, data[0], &a, &sa);
    rb = run((const char *)data + 1, size - 1, size, &b, &sb);
    if (ra != rb || (ra >= 0 && sa != sb))
        __builtin_trap();
    if (ra >= 0) {
        const char *p = (const char *)data + 1;
        /* The end line is ".\r\n", at the start or after CRLF. */
        if (ra < 3 || memcmp(p + ra - 3, ".\r\n", 3) != 0)
            __builtin_trap();
        if (ra > 3 && memcmp(p + ra - 5, "\r\n", 2) != 0)
            __builtin_trap();
        /* An empty buffer may have no storage (data NULL): no memcmp or
         * memchr on it, their pointers must be valid even for length 0. */
        if (sa == FE_DATA_OK &&
            (a.len != b.len || (a.len > 0 && memcmp(a.data, b.data, a.len) != 0)))
            __builtin_trap();
        if (sa == FE_DATA_OK && a.len > 0 && memchr(a.data, '\0', a.len) != NULL)
            __builtin_trap();
    }
    ms_buf_free(&a);
    ms_buf_free(&b);
    return 0;
}
