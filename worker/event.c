/*
 * event.c - outcome classification and event JSON (event.h).
 */
#include "event.h"
#include "ms_error.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

enum wk_outcome wk_verdict(int code, const char *dsn, const char *reply, enum ms_reply_class *cls,
                           int *hard)
{
    enum ms_reply_class c;
    int h;

    c = ms_reply_class(code, dsn, reply, &h);
    if (cls)
        *cls = c;
    if (hard)
        *hard = h;
    if (code >= 200 && code < 300)
        return WK_OUTCOME_DELIVERED;
    /* A 5yz the class counts as soft (a full mailbox) is retried. */
    if (code >= 500 && code < 600 && h)
        return WK_OUTCOME_BOUNCED;
    return WK_OUTCOME_DEFERRED;
}

const char *wk_outcome_name(enum wk_outcome o)
{
    static const char *names[WK_OUTCOME__N] = {"delivered", "deferred", "bounced"};

    return (unsigned)o < WK_OUTCOME__N ? names[o] : "unknown";
}

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

int wk_json_string(struct ms_buf *out, const char *str, size_t n)
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

static int field_str(struct ms_buf *out, const char *name, const char *v, int first)
{
    int err;

    if ((err = ms_buf_appendf(out, "%s\"%s\":", first ? "" : ",", name)) < 0)
        return err;
    if (v == NULL)
        return ms_buf_append(out, "null", 4);
    return wk_json_string(out, v, strlen(v));
}

/* RFC 3339 UTC time with milliseconds, like the log lines. */
static void format_ts(char *ts, size_t len, int64_t ts_us)
{
    struct tm tm;
    time_t sec = (time_t)(ts_us / 1000000);
    size_t n;

    gmtime_r(&sec, &tm);
    n = strftime(ts, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, len - n, ".%03dZ", (int)((ts_us % 1000000) / 1000));
}

int wk_event_malformed_json(struct ms_buf *out, const char *key, size_t keylen,
                            int32_t partition, int64_t offset, const char *error,
                            const char *node, int64_t ts_us)
{
    char ts[40];
    int err;

    format_ts(ts, sizeof(ts), ts_us);
    if ((err = ms_buf_appendf(out, "{\"event\":\"malformed\",\"key\":")) < 0)
        return err;
    if ((err = key ? wk_json_string(out, key, keylen) : ms_buf_append(out, "null", 4)) < 0 ||
        (err = ms_buf_appendf(out, ",\"partition\":%d,\"offset\":%lld", (int)partition,
                              (long long)offset)) < 0 ||
        (err = field_str(out, "error", error, 0)) < 0 ||
        (err = field_str(out, "node", node, 0)) < 0 || (err = field_str(out, "ts", ts, 0)) < 0)
        return err;
    return ms_buf_append(out, "}", 1);
}

int wk_event_json(struct ms_buf *out, const struct wk_event *ev)
{
    char ts[40];
    int err;

    format_ts(ts, sizeof(ts), ev->ts_us);
    if ((err = ms_buf_append(out, "{", 1)) < 0 || (err = field_str(out, "qid", ev->qid, 1)) < 0 ||
        (err = field_str(out, "rcpt", ev->rcpt, 0)) < 0 ||
        (err = field_str(out, "outcome", wk_outcome_name(ev->outcome), 0)) < 0 ||
        (err = ms_buf_appendf(out, ",\"code\":%d", ev->code)) < 0 ||
        (err = field_str(out, "dsn", ev->dsn, 0)) < 0 ||
        (err = field_str(out, "reply", ev->reply, 0)) < 0 ||
        (err = field_str(out, "relay", ev->relay, 0)) < 0 ||
        (ev->class_name && (err = field_str(out, "class", ev->class_name, 0)) < 0) ||
        (ev->tls && (err = field_str(out, "tls", ev->tls, 0)) < 0) ||
        (err = field_str(out, "node", ev->node, 0)) < 0 ||
        (err = ms_buf_appendf(out, ",\"attempt\":%u,\"delay\":%.3f", ev->attempt,
                              ev->delay >= 0 ? ev->delay : 0.0)) < 0 ||
        (err = field_str(out, "ts", ts, 0)) < 0)
        return err;
    return ms_buf_append(out, "}", 1);
}
