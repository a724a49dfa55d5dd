/*
 * dkim_canon_ref.h - a reference DKIM body canonicalizer for tests: the
 * rules of RFC 6376 §3.4.3 and §3.4.4 applied literally to a whole body in
 * memory, with nothing streamed and nothing clever, so that the streaming
 * canonicalizer of lib/mail/ms_dkim_parse.c (which scans many octets at a
 * time and keeps state across pieces) can be checked against it on random
 * bodies cut at random places (tests/unit/test_ms_dkim.c,
 * tests/fuzz/fuzz_dkim_canon.c).
 *
 * Lines end at CRLF only; a CR or LF on its own is an ordinary octet (as
 * the library treats it).  The steps, in order:
 *   1. split the body into lines at CRLF; a body ending in CRLF has no
 *      unterminated last line, any other non-empty body has one;
 *   2. relaxed only: in each line, every run of WSP (SP, HTAB) becomes one
 *      SP, and a SP at the end of the line is removed (§3.4.4 a, b);
 *   3. empty lines at the end of the body are removed (§3.4.3, §3.4.4 c);
 *   4. every remaining line is written followed by CRLF; simple writes a
 *      lone CRLF for a body left empty, relaxed writes nothing (§3.4.3,
 *      §3.4.4 and erratum 1384).
 *
 * Header-only, static functions; the result is malloc'ed, the caller frees.
 */
#ifndef DKIM_CANON_REF_H
#define DKIM_CANON_REF_H

#include <stdlib.h>
#include <string.h>

#include "ms_dkim.h"

/* The canonical form of in[0..len) under c; *out_len gets its length. */
static char *dkim_canon_ref(enum ms_dkim_canon c, const char *in, size_t len, size_t *out_len)
{
    /* The output is never longer than the input plus one CRLF. */
    char *out = malloc(len + 3);
    size_t o = 0, keep = 0, pos = 0;

    if (out == NULL)
        abort();
    while (pos < len) {
        size_t end = pos, next, start = o;

        /* Step 1: the line runs to the next CRLF or to the end. */
        while (end < len && !(in[end] == '\r' && end + 1 < len && in[end + 1] == '\n'))
            end++;
        next = end < len ? end + 2 : len;
        if (c == MS_DKIM_RELAXED) {
            /* Step 2. */
            int sp = 0;

            for (size_t k = pos; k < end; k++) {
                if (in[k] == ' ' || in[k] == '\t') {
                    sp = 1;
                    continue;
                }
                if (sp)
                    out[o++] = ' ';
                sp = 0;
                out[o++] = in[k];
            }
        } else {
            memcpy(out + o, in + pos, end - pos);
            o += end - pos;
        }
        /* Step 4 for this line; step 3 cuts back to the end of the last
         * non-empty line, which `keep` marks. */
        out[o++] = '\r';
        out[o++] = '\n';
        if (o - 2 > start)
            keep = o;
        pos = next;
    }
    o = keep;
    if (c != MS_DKIM_RELAXED && o == 0) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    *out_len = o;
    return out;
}

#endif
