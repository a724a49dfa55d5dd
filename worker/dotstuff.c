/*
 * dotstuff.c - RFC 5321 §4.5.2 transparency (dotstuff.h).
 *
 * One routine serves both the length and the copy so the two can never
 * disagree: with out == NULL it only counts.
 */
#include "dotstuff.h"

/* dots: dot-stuff and append the terminator (DATA); else only the line
 * ends (BDAT). */
static size_t stuff(const char *msg, size_t len, char *out, int dots)
{
    size_t i, n = 0;
    int bol = 1; /* at the beginning of a line */

#define PUT(c)             \
    do {                   \
        if (out)           \
            out[n] = (c);  \
        n++;               \
    } while (0)

    for (i = 0; i < len; i++) {
        char c = msg[i];

        if (dots && bol && c == '.')
            PUT('.');
        if (c == '\n' && (i == 0 || msg[i - 1] != '\r'))
            PUT('\r');
        PUT(c);
        bol = c == '\n';
    }
    /* The message must end in CRLF before the terminator (§4.1.1.4). */
    if (!bol) {
        if (len > 0 && msg[len - 1] != '\r')
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
