/*
 * ms_json.c - the JSON string writer and time format (ms_json.h).
 */
#include "ms_json.h"

#include <stdio.h>
#include <time.h>

/* Length of the valid UTF-8 sequence at s (RFC 3629 §4), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t need, i;
    unsigned cp;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        need = 2, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        need = 3, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        need = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (n < need)
        return 0;
    for (i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* No overlong forms, no surrogates, nothing past U+10FFFF. */
    if ((need == 3 && cp < 0x800) || (need == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return need;
}

int ms_json_string(struct ms_buf *out, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, k;
    int err;

    if ((err = ms_buf_append(out, "\"", 1)) < 0)
        return err;
    while (i < n) {
        unsigned char c = s[i];

        if (c == '"' || c == '\\')
            err = ms_buf_appendf(out, "\\%c", c);
        else if (c == '\n')
            err = ms_buf_append(out, "\\n", 2);
        else if (c == '\r')
            err = ms_buf_append(out, "\\r", 2);
        else if (c == '\t')
            err = ms_buf_append(out, "\\t", 2);
        else if (c < 0x20 || c == 0x7f)
            err = ms_buf_appendf(out, "\\u%04x", c);
        else if ((k = utf8_seq(s + i, n - i)) == 0) {
            err = ms_buf_append(out, "\\ufffd", 6);
        } else {
            err = ms_buf_append(out, s + i, k);
            i += k;
            if (err < 0)
                return err;
            continue;
        }
        if (err < 0)
            return err;
        i++;
    }
    return ms_buf_append(out, "\"", 1);
}

void ms_json_time(char *ts, size_t len, int64_t ts_us)
{
    struct tm tm;
    time_t sec = (time_t)(ts_us / 1000000);
    size_t n;

    gmtime_r(&sec, &tm);
    n = strftime(ts, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, len - n, ".%03dZ", (int)((ts_us % 1000000) / 1000));
}
