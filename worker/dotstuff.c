/*
 * dotstuff.c - RFC 5321 §4.5.2 transparency (dotstuff.h).
 *
 * One routine serves the length, the copy into a caller's buffer and the
 * one-pass copy into a buffer it grows, so they can never disagree.
 */
#include "dotstuff.h"
#include "ms_mem.h"

#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Where stuff() writes: nothing (p NULL, count only), a caller's buffer
 * with room enough (grow 0), or a malloc'd buffer it grows. */
struct sink {
    char *p;
    size_t n, cap;
    int grow;
};

static void put(struct sink *o, const char *s, size_t k)
{
    if (o->p == NULL && !o->grow) {
        o->n += k;
        return;
    }
    if (o->grow && o->cap - o->n < k) {
        /* Stuffing added more than the slack: rare (a dot or a bare LF
         * per line), so doubling keeps it to a few moves. */
        size_t want = o->n + k, cap = o->cap ? o->cap : WK_DOTSTUFF_SLACK_MIN;

        while (cap < want)
            cap *= 2;
        o->p = ms_realloc(o->p, cap);
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, k);
    o->n += k;
}

/* The first LF at or after k where an octet must be added: a bare one (CR
 * goes before it) or, with dots, one followed by "." (a dot goes after
 * it); len if there is none. */
static size_t next_stop(const char *msg, size_t len, size_t k, int dots)
{
    const char *nl;

#ifdef __SSE2__
    /* Sixteen LFs at a time where SSE2 is there (every x86-64), each
     * compared with the octets before and after it: a message from our
     * frontend (CRLF throughout, few lines that start with ".") is one
     * scan instead of a memchr per line (docs/scaling.md, "Instructions per
     * octet": 20 % less time in this file at 50 KiB and 1 MiB). */
    if (k == 0 && len > 0) {
        if (msg[0] == '\n')
            return 0;
        k = 1;
    }
    {
        const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r'), dot = _mm_set1_epi8('.');
        __m128i at, before, after, hit;
        unsigned m;

        for (; k + 17 <= len; k += 16) {
            at = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(msg + k)), lf);
            before = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(msg + k - 1)), cr);
            hit = _mm_andnot_si128(before, at);
            if (dots) {
                after = _mm_loadu_si128((const __m128i *)(const void *)(msg + k + 1));
                hit = _mm_or_si128(hit, _mm_and_si128(at, _mm_cmpeq_epi8(after, dot)));
            }
            m = (unsigned)_mm_movemask_epi8(hit);
            if (m != 0)
                return k + (size_t)__builtin_ctz(m);
        }
    }
#endif
    while (k < len && (nl = memchr(msg + k, '\n', len - k)) != NULL) {
        k = (size_t)(nl - msg);
        if (k == 0 || msg[k - 1] != '\r' || (dots && k + 1 < len && msg[k + 1] == '.'))
            return k;
        k++;
    }
    return len;
}

/* dots: dot-stuff and append the terminator (DATA); else only the line
 * ends (BDAT).  One pass: octets that go out unchanged are copied in one
 * piece up to the next place that needs an octet added (a line that starts
 * with ".", a bare LF), which next_stop() finds: a message from our
 * frontend, CRLF throughout, is one scan and one memcpy.  Line by line (a
 * memcpy per line, then a counting pass and a copying pass) this was 35 %
 * of the worker's instructions at 1 MiB (docs/scaling.md, "per KiB"). */
static void stuff(const char *msg, size_t len, struct sink *o, int dots)
{
    size_t seg = 0, k = 0; /* msg[seg..) is still to be copied */

    if (dots && len > 0 && msg[0] == '.')
        put(o, ".", 1); /* the first line's own dot goes with the next piece */
    while ((k = next_stop(msg, len, k, dots)) < len) {
        if (k == 0 || msg[k - 1] != '\r') {
            put(o, msg + seg, k - seg);
            put(o, "\r", 1); /* a bare LF goes as CRLF (§2.3.8) */
            seg = k;
        }
        if (dots && k + 1 < len && msg[k + 1] == '.') {
            put(o, msg + seg, k + 1 - seg);
            put(o, ".", 1); /* the line's own dot goes with the next piece */
            seg = k + 1;
        }
        k++;
    }
    put(o, msg + seg, len - seg);
    /* The message must end in CRLF before the terminator (§4.1.1.4). */
    if (len > 0 && msg[len - 1] != '\n')
        put(o, msg[len - 1] != '\r' ? "\r\n" : "\n", msg[len - 1] != '\r' ? 2 : 1);
    if (dots)
        put(o, WK_DOTSTUFF_END, WK_DOTSTUFF_END_LEN);
}

static size_t run(const char *msg, size_t len, char *out, int dots)
{
    struct sink o = {out, 0, 0, 0};

    stuff(msg, len, &o, dots);
    return o.n;
}

static char *run_alloc(const char *msg, size_t len, int dots, size_t *outlen)
{
    struct sink o = {NULL, 0, 0, 1};

    o.cap = len + len / WK_DOTSTUFF_SLACK_DIV + WK_DOTSTUFF_SLACK_MIN;
    o.p = ms_malloc(o.cap);
    stuff(msg, len, &o, dots);
    *outlen = o.n;
    return o.p;
}

size_t wk_dotstuff_len(const char *msg, size_t len)
{
    return run(msg, len, NULL, 1);
}

size_t wk_dotstuff(const char *msg, size_t len, char *out)
{
    return run(msg, len, out, 1);
}

char *wk_dotstuff_alloc(const char *msg, size_t len, size_t *outlen)
{
    return run_alloc(msg, len, 1, outlen);
}

size_t wk_crlf_len(const char *msg, size_t len)
{
    return run(msg, len, NULL, 0);
}

size_t wk_crlf(const char *msg, size_t len, char *out)
{
    return run(msg, len, out, 0);
}

char *wk_crlf_alloc(const char *msg, size_t len, size_t *outlen)
{
    return run_alloc(msg, len, 0, outlen);
}

/* What stuff() would change is nothing but the terminator it appends. */
static int as_is(const char *msg, size_t len, int dots)
{
    if (len == 0)
        return 1;
    if (dots && msg[0] == '.')
        return 0;
    return msg[len - 1] == '\n' && next_stop(msg, len, 0, dots) == len;
}

int wk_dotstuff_as_is(const char *msg, size_t len)
{
    return as_is(msg, len, 1);
}

int wk_crlf_as_is(const char *msg, size_t len)
{
    return as_is(msg, len, 0);
}
