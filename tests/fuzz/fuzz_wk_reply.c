/*
 * fuzz_wk_reply.c - libFuzzer driver for lib/mail/ms_smtp_reply.c, the AUTH
 * mechanism list of EHLO and the 334 challenges of worker/smtp_auth.c (and
 * the dot-stuffing and BDAT line ends of worker/dotstuff.c, which take the
 * same kind of bytes).
 *
 * Feeds the input as a stream of server replies, consuming reply after reply
 * the way the client does, and checks the parser's invariants: consumed
 * bytes are within the input and end at a newline, the code is in range,
 * text stays inside the buffer, formatting is NUL-terminated within its
 * size, AUTH mechanisms are only the known bits, a decoded challenge fits
 * its buffer.  Then stuffs the input as a message and checks length and
 * terminator, and normalises it for BDAT and checks the line ends.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/dotstuff.h"
#include "../../worker/smtp_auth.h"
#include "ms_smtp_reply.h"
#include "ms_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct ms_reply r;
    struct ms_ehlo e;
    char out[64];
    uint8_t challenge[WK_AUTH_CHALLENGE_MAX];
    size_t pos = 0, i, n, n1;
    char *stuffed, *once;
    int k, c;

    while (pos < size) {
        k = ms_reply_parse(buf + pos, size - pos, &r);
        if (k == MS_EAGAIN || k == MS_EPROTO || k == MS_ETOOBIG)
            break;
        assert(k > 0 && (size_t)k <= size - pos);
        assert(buf[pos + (size_t)k - 1] == '\n');
        assert(r.code >= 200 && r.code <= 559);
        assert(r.nlines >= 1 && r.nlines <= MS_REPLY_LINES_MAX);
        assert(strlen(r.dsn) <= MS_REPLY_DSN_MAX);
        for (i = 0; i < r.nlines; i++) {
            assert(r.text[i] >= buf + pos && r.text[i] + r.text_len[i] <= buf + pos + k);
            assert(r.text_len[i] <= MS_REPLY_LINE_MAX);
        }
        n = ms_reply_format(&r, out, sizeof(out));
        assert(n < sizeof(out) && out[n] == '\0');
        ms_ehlo_parse(&r, &e);
        assert((e.auth & ~(unsigned)(MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN)) == 0);
        assert(e.auth == 0 || (e.flags & MS_EHLO_AUTH));
        c = wk_auth_challenge(&r, challenge, sizeof(challenge));
        assert(c == MS_EPROTO || c == MS_ETOOBIG || (c >= 0 && (size_t)c <= sizeof(challenge)));
        assert(c < 0 || r.code == 334);
        pos += (size_t)k;
    }

    n = wk_dotstuff_len(buf, size);
    assert(n >= size + 3);
    stuffed = malloc(n);
    assert(wk_dotstuff(buf, size, stuffed) == n);
    assert(memcmp(stuffed + n - 3, ".\r\n", 3) == 0);
    assert(n == 3 || memcmp(stuffed + n - 5, "\r\n.\r\n", 5) == 0);
    once = wk_dotstuff_alloc(buf, size, &n1); /* the worker's one pass: the same */
    assert(n1 == n && memcmp(once, stuffed, n) == 0);
    free(once);
    free(stuffed);

    n = wk_crlf_len(buf, size);
    assert(n >= size && (size == 0 || n >= 2));
    stuffed = malloc(n ? n : 1);
    assert(wk_crlf(buf, size, stuffed) == n);
    assert(n == 0 || memcmp(stuffed + n - 2, "\r\n", 2) == 0);
    for (i = 0; i < n; i++)
        assert(stuffed[i] != '\n' || (i > 0 && stuffed[i - 1] == '\r'));
    once = wk_crlf_alloc(buf, size, &n1);
    assert(n1 == n && memcmp(once, stuffed, n) == 0);
    free(once);
    free(stuffed);
    return 0;
}
