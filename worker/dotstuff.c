/*
 * dotstuff.c - RFC 5321 §4.5.2 transparency (dotstuff.h).
 *
 * One routine serves both the length and the copy so the two can never
 * disagree: with out == NULL it only counts.
 */
#include "dotstuff.h"

#include <string.h>

/* dots: dot-stuff and append the terminator (DATA); else only the line
 * ends (BDAT).  Line by line with memchr and memcpy: this runs over every
 * octet of every message the worker sends (it was the worker's hottest
 * function, 11% of its CPU, when it went octet by octet). */
static size_t stuff(const char *msg, size_t len, char *out, int dots)
{
    size_t i = 0, n = 0;

#define PUT(c)             \
    do {                   \
        if (out)           \
            out[n] = (c);  \
        n++;               \
    } while (0)

    while (i < len) {
        const char *nl = memchr(msg + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - msg) : len; /* the LF, or the end */

        /* i is at the beginning of a line. */
        if (dots && msg[i] == '.')
            PUT('.');
        if (out)
            memcpy(out + n, msg + i, end - i);
        n += end - i;
        if (nl == NULL) {
            i = len;
            break;
        }
        if (end == 0 || msg[end - 1] != '\r')
            PUT('\r');
        PUT('\n');
        i = end + 1;
    }
    /* The message must end in CRLF before the terminator (§4.1.1.4). */
    if (len > 0 && msg[len - 1] != '\n') {
        if (msg[len - 1] != '\r')
            PUT('\r');
        PUT('\n');
    }
    if (dots) {
        PUT('.');
        PUT('\r');
        PUT('\n');
    }
#undef PUT
    return n;
}

size_t wk_dotstuff_len(const char *msg, size_t len)
{
    return stuff(msg, len, NULL, 1);
}

size_t wk_dotstuff(const char *msg, size_t len, char *out)
{
    return stuff(msg, len, out, 1);
}

size_t wk_crlf_len(const char *msg, size_t len)
{
    return stuff(msg, len, NULL, 0);
}

size_t wk_crlf(const char *msg, size_t len, char *out)
{
    return stuff(msg, len, out, 0);
}
