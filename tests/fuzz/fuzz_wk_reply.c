/*
 * fuzz_wk_reply.c - libFuzzer driver for worker/smtp_reply.c (and the
 * dot-stuffing in worker/dotstuff.c, which takes the same kind of bytes).
 *
 * Feeds the input as a stream of server replies, consuming reply after reply
 * the way the client does, and checks the parser's invariants: consumed
 * bytes are within the input and end at a newline, the code is in range,
 * text stays inside the buffer, formatting is NUL-terminated within its
 * size.  Then stuffs the input as a message and checks length and
 * terminator.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/dotstuff.h"
#include "../../worker/smtp_reply.h"
#include "ms_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct wk_reply r;
    struct wk_ehlo e;
    char out[64];
    size_t pos = 0, i, n;
    char *stuffed;
    int k;

    while (pos < size) {
        k = wk_reply_parse(buf + pos, size - pos, &r);
        if (k == MS_EAGAIN || k == MS_EPROTO || k == MS_ETOOBIG)
            break;
        assert(k > 0 && (size_t)k <= size - pos);
        assert(buf[pos + (size_t)k - 1] == '\n');
        assert(r.code >= 200 && r.code <= 559);
        assert(r.nlines >= 1 && r.nlines <= WK_REPLY_LINES_MAX);
        assert(strlen(r.dsn) <= WK_DSN_MAX);
        for (i = 0; i < r.nlines; i++) {
            assert(r.text[i] >= buf + pos && r.text[i] + r.text_len[i] <= buf + pos + k);
            assert(r.text_len[i] <= WK_REPLY_LINE_MAX);
        }
        n = wk_reply_format(&r, out, sizeof(out));
        assert(n < sizeof(out) && out[n] == '\0');
        wk_ehlo_parse(&r, &e);
        pos += (size_t)k;
    }

    n = wk_dotstuff_len(buf, size);
    assert(n >= size + 3);
    stuffed = malloc(n);
    assert(wk_dotstuff(buf, size, stuffed) == n);
    assert(memcmp(stuffed + n - 3, ".\r\n", 3) == 0);
    assert(n == 3 || memcmp(stuffed + n - 5, "\r\n.\r\n", 5) == 0);
    free(stuffed);
    return 0;
}
