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

/* dots: dot-stuff and append the terminator (DATA); else only the line
 * ends (BDAT).  One pass: memchr finds each line end, and octets that go
 * out unchanged are copied in one piece up to the next place that needs an
 * octet added (a line that starts with ".", a bare LF): a message from our
 * frontend, CRLF throughout, is copied with one memcpy.  Line by line (a
 * memcpy per line, then a counting pass and a copying pass) this was 35 %
 * of the worker's instructions at 1 MiB (docs/scaling.md, "per KiB"). */
static void stuff(const char *msg, size_t len, struct sink *o, int dots)
{
    size_t i = 0, seg = 0, end; /* msg[seg..i) is still to be copied */
    const char *nl;

    while (i < len) {
        /* i is at the beginning of a line. */
        if (dots && msg[i] == '.') {
            put(o, msg + seg, i - seg);
            put(o, ".", 1); /* the line's own dot goes with the next piece */
            seg = i;
        }
        nl = memchr(msg + i, '\n', len - i);
        if (nl == NULL)
            break;
        end = (size_t)(nl - msg);
        if (end == 0 || msg[end - 1] != '\r') {
            put(o, msg + seg, end - seg);
            put(o, "\r", 1); /* a bare LF goes as CRLF (§2.3.8) */
            seg = end;
        }
        i = end + 1;
    }
    put(o, msg + seg, len - seg);
    /* The message must end in CRLF before the terminator (§4.1.1.4). */
    if (len > 0 && msg[len - 1] != '\n')
        put(o, msg[len - 1] != '\r' ? "\r\n" : "\n", msg[len - 1] != '\r' ? 2 : 1);
    if (dots)
        put(o, ".\r\n", 3);
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
