/*
 * ctl_dest.c - `mailstream-ctl dest ...`: suspending a destination on every
 * worker at once.
 *
 * A suspension is one field of the hash MS_KEY_SUSPEND (ms_qctl_suspend_*),
 * which every worker reads each second (worker/control.c): a suspended
 * destination gets no new session and its recipients are deferred without
 * counting an attempt.  Resuming removes the field and makes the mail
 * deferred to the destination due at once (ctl_queue_retry_dest).
 *
 * The workers' own automatic backoffs (worker/shaper.h: a destination
 * group suspended or throttled after a reply matched a backoff rule) are
 * the fields of MS_KEY_BACKOFF (ms_backoff.h): `dest list` shows them
 * beside the operator's suspensions, and `dest resume` ends them too.
 */
#include "ctl.h"
#include "ms_backoff.h"
#include "ms_json.h"
#include "ms_keys.h"
#include "ms_mem.h"
#include "ms_qctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Workers read the suspensions every second (worker/control.c,
 * WK_CONTROL_POLL_MS).  Resume waits this long before it makes the
 * destination's mail due: a record made due while some worker still has
 * the destination suspended would be deferred again at once, and with its
 * retry request spent it would wait for its recheck (15 minutes).  XXX a
 * worker whose poll is late by more than this still does so. */
#define CTL_RESUME_SETTLE_MS 2500

static int dest_ok(const char *s)
{
    if (*s == '\0' || strlen(s) > 255)
        return 0;
    for (; *s; s++)
        if (*s <= ' ' || *s == 0x7f)
            return 0;
    return 1;
}

static int d_suspend(struct ctl *c, int argc, char **argv)
{
    struct ms_qctl_suspend s;
    struct ms_redis_reply *r;
    const char *dest = NULL, *reason = "";
    char val[MS_QCTL_REASON_MAX + 64], *name;
    int64_t secs = 0;
    int k;

    for (k = 0; k < argc; k++) {
        if (strcmp(argv[k], "--for") == 0 || strcmp(argv[k], "--reason") == 0) {
            if (k + 1 >= argc)
                return ctl_fail(CTL_EXIT_USAGE, "dest suspend: %s needs a value", argv[k]);
            if (argv[k][2] == 'f') {
                if (ms_qctl_parse_duration(argv[++k], &secs) < 0 || secs == 0)
                    return ctl_fail(CTL_EXIT_USAGE, "dest suspend: bad duration \"%s\"", argv[k]);
            } else {
                reason = argv[++k];
            }
        } else if (dest == NULL && dest_ok(argv[k])) {
            dest = argv[k];
        } else {
            return ctl_fail(CTL_EXIT_USAGE, "dest suspend: unexpected \"%s\"", argv[k]);
        }
    }
    if (dest == NULL)
        return ctl_fail(CTL_EXIT_USAGE, "dest suspend: which destination?");
    if (strlen(reason) > MS_QCTL_REASON_MAX)
        return ctl_fail(CTL_EXIT_USAGE, "dest suspend: reason longer than %d", MS_QCTL_REASON_MAX);
    memset(&s, 0, sizeof(s));
    s.since_us = ms_time_now_us();
    s.until_us = secs ? s.since_us + secs * 1000000 : 0;
    snprintf(s.reason, sizeof(s.reason), "%s", reason);
    ms_qctl_suspend_format(&s, val, sizeof(val));
    /* Destination names are compared in any case by the workers; stored
     * lower-cased so that one name has one field. */
    name = ctl_lower(dest);
    r = ctl_cmd(c, "HSET", MS_KEY_SUSPEND, name, val, NULL);
    k = r->type == MS_REDIS_INT;
    ms_redis_sync_reply_free(r);
    if (!k) {
        free(name);
        return ctl_fail(CTL_EXIT_FAILED, "dest suspend: Redis refused the write");
    }
    if (c->json)
        printf("{\"suspended\":\"%s\",\"for_s\":%lld}\n", name, (long long)secs);
    else
        printf("dest %s suspended%s\n", name, secs ? "" : " until resumed");
    free(name);
    return CTL_EXIT_OK;
}

static int d_resume(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *r;
    char *name;
    long long n;
    size_t due;

    if (argc != 1 || !dest_ok(argv[0]))
        return ctl_fail(CTL_EXIT_USAGE, "dest resume: one destination");
    name = ctl_lower(argv[0]);
    r = ctl_cmd(c, "HDEL", MS_KEY_SUSPEND, name, NULL);
    n = r->type == MS_REDIS_INT ? r->integer : -1;
    ms_redis_sync_reply_free(r);
    if (n >= 0) {
        /* A backoff the workers started ends too (its name as they wrote it). */
        r = ctl_cmd(c, "HDEL", MS_KEY_BACKOFF, argv[0], NULL);
        n = r->type == MS_REDIS_INT ? n + r->integer : -1;
        ms_redis_sync_reply_free(r);
        if (n >= 0 && strcmp(name, argv[0]) != 0) {
            r = ctl_cmd(c, "HDEL", MS_KEY_BACKOFF, name, NULL);
            n = r->type == MS_REDIS_INT ? n + r->integer : -1;
            ms_redis_sync_reply_free(r);
        }
    }
    if (n < 0) {
        free(name);
        return ctl_fail(CTL_EXIT_FAILED, "dest resume: Redis refused the write");
    }
    /* What waited for the suspension goes now, not at its next retry;
     * once every worker has seen the resumption. */
    if (n > 0) {
        struct timespec ts = {CTL_RESUME_SETTLE_MS / 1000,
                              (CTL_RESUME_SETTLE_MS % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    due = ctl_queue_retry_dest(c, name);
    if (c->json)
        printf("{\"resumed\":\"%s\",\"was_suspended\":%s,\"messages_due\":%zu}\n", name,
               n ? "true" : "false", due);
    else
        printf("dest %s %s; %zu message%s due now\n", name, n ? "resumed" : "was not suspended",
               due, due == 1 ? "" : "s");
    free(name);
    return n ? CTL_EXIT_OK : CTL_EXIT_NOTFOUND;
}

/* The workers' backoffs in force (the lapsed ones are removed), after
 * `before` entries already listed; how many. */
static size_t list_backoffs(struct ctl *c, struct ms_buf *out, int64_t now, size_t before)
{
    struct ms_redis_reply *r = ctl_cmd(c, "HGETALL", MS_KEY_BACKOFF, NULL);
    char t1[MS_JSON_TIME_MAX], t2[MS_JSON_TIME_MAX];
    size_t i, shown = 0;

    for (i = 0; r->type == MS_REDIS_ARRAY && i + 1 < r->nelem; i += 2) {
        struct ms_backoff b;
        const char *name = r->elem[i].str;
        if (r->elem[i].type != MS_REDIS_STR || r->elem[i + 1].type != MS_REDIS_STR ||
            ms_backoff_parse(r->elem[i + 1].str, r->elem[i + 1].len, &b) < 0)
            continue;
        if (ms_backoff_over(&b, now)) {
            ms_redis_sync_reply_free(ctl_cmd(c, "HDEL", MS_KEY_BACKOFF, name, NULL));
            continue;
        }
        ms_json_time(t1, sizeof(t1), b.since_us);
        ms_json_time(t2, sizeof(t2), b.until_us);
        if (c->json) {
            ms_buf_appendf(out, "%s{\"destination\":", before + shown ? "," : "");
            ctl_json_str(out, name);
            ms_buf_appendf(out,
                           ",\"backoff\":\"%s\",\"factor\":%.2f,\"factor_now\":%.2f,"
                           "\"since\":\"%s\",\"until\":\"%s\",\"ramp_s\":%lld,\"rule\":",
                           b.suspend ? "suspend" : "throttle", b.factor,
                           ms_backoff_factor(&b, now), t1, t2, (long long)(b.ramp_ms / 1000));
            ctl_json_str(out, b.rule);
            ms_buf_appendf(out, ",\"reason\":");
            ctl_json_str(out, b.reason);
            ms_buf_append(out, "}", 1);
        } else {
            ms_buf_appendf(out, "%-32s backoff %s factor %.2f (now %.2f) since %s until %s ramp %llds "
                                "rule %s  %s\n",
                           name, b.suspend ? "suspend" : "throttle", b.factor,
                           ms_backoff_factor(&b, now), t1, t2, (long long)(b.ramp_ms / 1000),
                           b.rule, b.reason);
        }
        shown++;
    }
    ms_redis_sync_reply_free(r);
    return shown;
}

static int d_list(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *r;
    struct ms_buf out;
    int64_t now = ms_time_now_us();
    char t1[MS_JSON_TIME_MAX], t2[MS_JSON_TIME_MAX];
    size_t i, shown = 0, nback;

    (void)argv;
    if (argc > 0)
        return ctl_fail(CTL_EXIT_USAGE, "dest list: no arguments");
    r = ctl_cmd(c, "HGETALL", MS_KEY_SUSPEND, NULL);
    ms_buf_init(&out, 1 << 24);
    ms_buf_append(&out, c->json ? "[" : "", c->json ? 1 : 0);
    for (i = 0; r->type == MS_REDIS_ARRAY && i + 1 < r->nelem; i += 2) {
        struct ms_qctl_suspend s;
        const char *name = r->elem[i].str;
        if (r->elem[i].type != MS_REDIS_STR || r->elem[i + 1].type != MS_REDIS_STR ||
            ms_qctl_suspend_parse(r->elem[i + 1].str, r->elem[i + 1].len, &s) < 0)
            continue;
        if (!ms_qctl_suspend_active(&s, now)) {
            /* Lapsed: the workers ignore it already; tidy it away. */
            ms_redis_sync_reply_free(ctl_cmd(c, "HDEL", MS_KEY_SUSPEND, name, NULL));
            continue;
        }
        ms_json_time(t1, sizeof(t1), s.since_us);
        ms_json_time(t2, sizeof(t2), s.until_us);
        if (c->json) {
            ms_buf_appendf(&out, "%s{\"destination\":", shown ? "," : "");
            ctl_json_str(&out, name);
            ms_buf_appendf(&out, ",\"since\":\"%s\",\"until\":", t1);
            if (s.until_us)
                ms_buf_appendf(&out, "\"%s\"", t2);
            else
                ms_buf_appendf(&out, "null");
            ms_buf_appendf(&out, ",\"reason\":");
            ctl_json_str(&out, s.reason);
            ms_buf_append(&out, "}", 1);
        } else {
            ms_buf_appendf(&out, "%-32s since %s until %s  %s\n", name, t1,
                           s.until_us ? t2 : "resumed", s.reason);
        }
        shown++;
    }
    ms_redis_sync_reply_free(r);
    nback = list_backoffs(c, &out, now, shown);
    if (c->json)
        ms_buf_append(&out, "]\n", 2);
    else if (nback > 0)
        ms_buf_appendf(&out, "-- %zu suspended, %zu backing off\n", shown, nback);
    else
        ms_buf_appendf(&out, "-- %zu suspended\n", shown);
    ctl_flush(&out);
    ms_buf_free(&out);
    return CTL_EXIT_OK;
}

const struct ctl_cmd ctl_dest_cmds[] = {
    {"dest", "suspend", "D [--for T] [--reason TEXT]",
     "no session to D on any worker; its mail deferred, no attempt counted", d_suspend},
    {"dest", "resume", "D", "sessions again; D's deferred mail due now", d_resume},
    {"dest", "list", "", "suspended destinations, and groups the workers backed off", d_list},
    {NULL, NULL, NULL, NULL, NULL}};
