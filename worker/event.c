/*
 * event.c - outcome classification and event JSON (event.h).
 */
#include "event.h"
#include "ms_error.h"
#include "ms_json.h"

#include <stdio.h>
#include <string.h>

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

static int field_str(struct ms_buf *out, const char *name, const char *v, int first)
{
    int err;

    if ((err = ms_buf_appendf(out, "%s\"%s\":", first ? "" : ",", name)) < 0)
        return err;
    if (v == NULL)
        return ms_buf_append(out, "null", 4);
    return ms_json_string(out, v, strlen(v));
}

int wk_event_malformed_json(struct ms_buf *out, const char *key, size_t keylen,
                            int32_t partition, int64_t offset, const char *error,
                            const char *node, int64_t ts_us)
{
    char ts[MS_JSON_TIME_MAX];
    int err;

    ms_json_time(ts, sizeof(ts), ts_us);
    if ((err = ms_buf_appendf(out, "{\"event\":\"malformed\",\"key\":")) < 0)
        return err;
    if ((err = key ? ms_json_string(out, key, keylen) : ms_buf_append(out, "null", 4)) < 0 ||
        (err = ms_buf_appendf(out, ",\"partition\":%d,\"offset\":%lld", (int)partition,
                              (long long)offset)) < 0 ||
        (err = field_str(out, "error", error, 0)) < 0 ||
        (err = field_str(out, "node", node, 0)) < 0 || (err = field_str(out, "ts", ts, 0)) < 0)
        return err;
    return ms_buf_append(out, "}", 1);
}

int wk_event_json(struct ms_buf *out, const struct wk_event *ev)
{
    char ts[MS_JSON_TIME_MAX];
    int err;

    ms_json_time(ts, sizeof(ts), ev->ts_us);
    if ((err = ms_buf_append(out, "{", 1)) < 0 || (err = field_str(out, "qid", ev->qid, 1)) < 0 ||
        (err = field_str(out, "rcpt", ev->rcpt, 0)) < 0 ||
        (err = field_str(out, "outcome", wk_outcome_name(ev->outcome), 0)) < 0 ||
        (err = ms_buf_appendf(out, ",\"code\":%d", ev->code)) < 0 ||
        (err = field_str(out, "dsn", ev->dsn, 0)) < 0 ||
        (err = field_str(out, "reply", ev->reply, 0)) < 0 ||
        (err = field_str(out, "relay", ev->relay, 0)) < 0 ||
        (ev->class_name && (err = field_str(out, "class", ev->class_name, 0)) < 0) ||
        (ev->category && (err = field_str(out, "category", ev->category, 0)) < 0) ||
        (ev->tls && (err = field_str(out, "tls", ev->tls, 0)) < 0) ||
        (ev->tls_policy && (err = field_str(out, "tls_policy", ev->tls_policy, 0)) < 0) ||
        (ev->tls_policy && ev->tls_auth &&
         (err = field_str(out, "tls_auth", ev->tls_auth, 0)) < 0) ||
        (err = field_str(out, "node", ev->node, 0)) < 0 ||
        (err = ms_buf_appendf(out, ",\"attempt\":%u,\"delay\":%.3f", ev->attempt,
                              ev->delay >= 0 ? ev->delay : 0.0)) < 0 ||
        (err = field_str(out, "ts", ts, 0)) < 0)
        return err;
    return ms_buf_append(out, "}", 1);
}
