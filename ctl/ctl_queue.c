/*
 * ctl_queue.c - `mailstream-ctl queue ...`: the deferred and held mail.
 *
 * Reads the index the workers keep in Redis (control.h, ms_keys.h): the
 * queue ids per destination (MS_KEY_RETRY_QUEUE_DEST) or all of them
 * (MS_KEY_RETRY_QUEUE), each with its listing line (MS_KEY_QUEUE_INFO).
 * Actions write one control record per message (MS_KEY_CONTROL) and then
 * bump the control generation (MS_KEY_CONTROL_GEN), which every worker
 * polls: docs/operations.md has the design.
 */
#include "ctl.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_json.h"
#include "ms_keys.h"
#include "ms_mem.h"
#include "ms_qctl.h"
#include "ms_queueid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* qshape's default age buckets, in minutes: 0-5, 5-10, ... 80-160, 160+. */
static const int shape_buckets[] = {5, 10, 20, 40, 80, 160};
#define NBUCKETS (sizeof(shape_buckets) / sizeof(shape_buckets[0]))
/* Destinations idle longer than the longest life of a message ([retry]
 * max_age is at most MS_QCTL_TTL_S) are dropped from the name list. */
#define CTL_DEST_IDLE_S (MS_QCTL_TTL_S + 86400)
/* The listing buffer is written out at this size. */
#define CTL_OUT_FLUSH (64 * 1024)

static int qid_ok(const char *s)
{
    size_t i;

    if (strlen(s) != MS_QUEUEID_LEN)
        return 0;
    for (i = 0; s[i]; i++)
        if (!strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", s[i]))
            return 0;
    return 1;
}

/* The members of a sorted set, in score order (oldest first); with
 * max_score >= 0 only those scored up to it. */
static char **zmembers(struct ctl *c, const char *key, int64_t max_score, size_t *n)
{
    struct ms_redis_reply *r;
    char maxs[24];
    char **out;
    size_t i;

    snprintf(maxs, sizeof(maxs), "%lld", (long long)max_score);
    r = max_score >= 0 ? ctl_cmd(c, "ZRANGEBYSCORE", key, "-inf", maxs, NULL)
                       : ctl_cmd(c, "ZRANGE", key, "0", "-1", NULL);
    *n = 0;
    if (r->type != MS_REDIS_ARRAY) {
        ms_redis_sync_reply_free(r);
        return ms_calloc(1, sizeof(char *));
    }
    out = ms_calloc(r->nelem + 1, sizeof(*out));
    for (i = 0; i < r->nelem; i++)
        if (r->elem[i].type == MS_REDIS_STR)
            out[(*n)++] = ms_strndup(r->elem[i].str, r->elem[i].len);
    ms_redis_sync_reply_free(r);
    return out;
}

/* The state to show: the operator's pending action, else the worker's. */
static const char *shown_state(const struct ms_qinfo *q, const char *ctlv)
{
    struct ms_qctl k;

    if (ctlv == NULL || ms_qctl_parse(ctlv, strlen(ctlv), &k) < 0)
        return q->state;
    switch (k.action) {
    case MS_QCTL_HOLD: return "held";
    case MS_QCTL_BOUNCE: return "bouncing";
    case MS_QCTL_DELETE: return "deleting";
    default: return q->state;
    }
}

static void json_list(struct ms_buf *b, const char *name, const char *csv)
{
    char *copy = ms_strdup(csv), *p = copy, *e;
    int first = 1;

    ms_buf_appendf(b, "\"%s\":[", name);
    while (*p) {
        if ((e = strchr(p, ',')) != NULL)
            *e = '\0';
        ms_buf_appendf(b, "%s", first ? "" : ",");
        ctl_json_str(b, p);
        first = 0;
        if (e == NULL)
            break;
        p = e + 1;
    }
    ms_buf_append(b, "]", 1);
    free(copy);
}

static int q_list(struct ctl *c, int argc, char **argv)
{
    struct ms_qinfo_filter f;
    char **qids, **infos, **ctls, *key, age[32], next[32], t1[MS_JSON_TIME_MAX],
        t2[MS_JSON_TIME_MAX];
    size_t n, i, shown = 0, stale = 0;
    int64_t now = ms_time_now_us();
    struct ms_buf out;
    int k;

    memset(&f, 0, sizeof(f));
    for (k = 0; k < argc; k++) {
        if (k + 1 >= argc)
            return ctl_fail(CTL_EXIT_USAGE, "queue list: %s needs a value", argv[k]);
        if (strcmp(argv[k], "--dest") == 0)
            f.dest = argv[++k];
        else if (strcmp(argv[k], "--sender") == 0)
            f.sender = argv[++k];
        else if (strcmp(argv[k], "--rcpt") == 0)
            f.rcpt = argv[++k];
        else if (strcmp(argv[k], "--older-than") == 0) {
            if (ms_qctl_parse_duration(argv[++k], &f.older_than_s) < 0)
                return ctl_fail(CTL_EXIT_USAGE, "queue list: bad duration \"%s\"", argv[k]);
        } else
            return ctl_fail(CTL_EXIT_USAGE, "queue list: unknown option %s", argv[k]);
    }
    key =
        f.dest ? ms_asprintf(MS_KEY_RETRY_QUEUE_DEST "%s", f.dest) : ms_strdup(MS_KEY_RETRY_QUEUE);
    /* Scores are acceptance times: --older-than is a score range. */
    qids = zmembers(c, key, f.older_than_s > 0 ? now - f.older_than_s * 1000000 : -1, &n);
    free(key);
    infos = ms_calloc(n + 1, sizeof(*infos));
    ctls = ms_calloc(n + 1, sizeof(*ctls));
    ctl_mget(c, MS_KEY_QUEUE_INFO, qids, n, infos);
    ctl_mget(c, MS_KEY_CONTROL, qids, n, ctls);
    ms_buf_init(&out, 2 * CTL_OUT_FLUSH);
    if (c->json)
        ms_buf_append(&out, "[", 1);
    else
        ms_buf_appendf(&out, "%-21s %-9s %8s %4s %8s  %s\n", "QUEUE-ID", "STATE", "AGE", "TRY",
                       "NEXT", "SENDER -> RECIPIENTS (DESTINATIONS) LAST-REPLY");
    for (i = 0; i < n; i++) {
        struct ms_qinfo q;
        const char *state;
        if (infos[i] == NULL || ms_qinfo_parse(infos[i], &q) < 0) {
            stale++; /* done meanwhile, or its line expired */
            continue;
        }
        if (!ms_qinfo_match(&q, &f, now))
            continue;
        state = shown_state(&q, ctls[i]);
        if (c->json) {
            ms_json_time(t1, sizeof(t1), q.received_us);
            ms_json_time(t2, sizeof(t2), q.next_attempt_us);
            ms_buf_appendf(&out, "%s{\"qid\":", shown ? "," : "");
            ctl_json_str(&out, qids[i]);
            ms_buf_appendf(&out,
                           ",\"state\":\"%s\",\"received\":\"%s\",\"age_s\":%lld,"
                           "\"attempts\":%u,\"next_attempt\":\"%s\",\"tier\":%d,"
                           "\"size\":%llu,\"sender\":",
                           state, t1, (long long)((now - q.received_us) / 1000000), q.attempts, t2,
                           q.tier, (unsigned long long)q.size);
            ctl_json_str(&out, q.sender);
            ms_buf_append(&out, ",", 1);
            json_list(&out, "recipients", q.rcpts);
            ms_buf_append(&out, ",", 1);
            json_list(&out, "destinations", q.dests);
            ms_buf_appendf(&out, ",\"last_reply\":");
            ctl_json_str(&out, q.last_reply);
            ms_buf_append(&out, "}", 1);
        } else {
            ctl_fmt_age(age, sizeof(age), (now - q.received_us) / 1000000);
            if (q.next_attempt_us > now)
                ctl_fmt_age(next, sizeof(next), (q.next_attempt_us - now) / 1000000);
            else
                snprintf(next, sizeof(next), "due");
            ms_buf_appendf(&out, "%-21s %-9s %8s %4u %8s  <%s> -> %s (%s) %s\n", qids[i], state,
                           age, q.attempts, next, q.sender, q.rcpts, q.dests, q.last_reply);
        }
        shown++;
        if (out.len > CTL_OUT_FLUSH)
            ctl_flush(&out);
    }
    if (c->json)
        ms_buf_append(&out, "]\n", 2);
    else
        ms_buf_appendf(&out, "-- %zu message%s\n", shown, shown == 1 ? "" : "s");
    ctl_flush(&out);
    ms_buf_free(&out);
    (void)stale;
    ms_strv_free(infos, n);
    ms_strv_free(ctls, n);
    ms_strv_free(qids, n);
    return CTL_EXIT_OK;
}

static int cmp_total(const void *a, const void *b)
{
    const long long *x = *(long long *const *)a, *y = *(long long *const *)b;

    return x[0] < y[0] ? 1 : x[0] > y[0] ? -1 : 0;
}

static int q_shape(struct ctl *c, int argc, char **argv)
{
    ms_redis_sync *r = ctl_redis(c);
    char **dests, *key, lo[24], hi[24], idle[24];
    const char *av[4];
    size_t n, i, j, lens[4];
    int64_t now = ms_time_now_us();
    long long **rows, totals[NBUCKETS + 2] = {0};
    struct ms_buf out;

    (void)argv;
    if (argc > 0)
        return ctl_fail(CTL_EXIT_USAGE, "queue shape: no arguments");
    snprintf(idle, sizeof(idle), "(%lld", (long long)(now - (int64_t)CTL_DEST_IDLE_S * 1000000));
    ms_redis_sync_reply_free(
        ctl_cmd(c, "ZREMRANGEBYSCORE", MS_KEY_RETRY_QUEUE_DESTS, "-inf", idle, NULL));
    dests = zmembers(c, MS_KEY_RETRY_QUEUE_DESTS, -1, &n);
    rows = ms_calloc(n + 1, sizeof(*rows));
    /* Per destination: ZCARD, then one ZCOUNT per bucket, all pipelined. */
    for (i = 0; i < n; i++) {
        key = ms_asprintf(MS_KEY_RETRY_QUEUE_DEST "%s", dests[i]);
        av[0] = "ZCARD";
        av[1] = key;
        lens[0] = 5;
        lens[1] = strlen(key);
        ms_redis_sync_append(r, 2, av, lens);
        for (j = 0; j <= NBUCKETS; j++) {
            /* Accepted in (now - upper, now - lower]. */
            int64_t lower = j == 0 ? 0 : shape_buckets[j - 1],
                    upper = j < NBUCKETS ? shape_buckets[j] : -1;
            snprintf(hi, sizeof(hi), "%lld", (long long)(now - lower * 60000000));
            if (upper < 0)
                snprintf(lo, sizeof(lo), "-inf");
            else
                snprintf(lo, sizeof(lo), "(%lld", (long long)(now - upper * 60000000));
            av[0] = "ZCOUNT";
            av[2] = lo;
            av[3] = hi;
            lens[0] = 6;
            lens[2] = strlen(lo);
            lens[3] = strlen(hi);
            ms_redis_sync_append(r, 4, av, lens);
        }
        free(key);
    }
    for (i = 0; i < n; i++) {
        rows[i] = ms_calloc(NBUCKETS + 2, sizeof(**rows));
        for (j = 0; j < NBUCKETS + 2; j++) {
            struct ms_redis_reply *rep = ms_redis_sync_read(r);
            if (rep == NULL)
                exit(ctl_fail(CTL_EXIT_UNREACHABLE, "redis: %s", ms_redis_sync_error(r)));
            rows[i][j] = rep->type == MS_REDIS_INT ? rep->integer : 0;
            totals[j] += rows[i][j];
            ms_redis_sync_reply_free(rep);
        }
        /* The name goes with the row when sorting. */
        rows[i] = ms_realloc(rows[i], (NBUCKETS + 2) * sizeof(**rows) + sizeof(char *));
        memcpy(&rows[i][NBUCKETS + 2], &dests[i], sizeof(char *));
    }
    qsort(rows, n, sizeof(*rows), cmp_total);
    ms_buf_init(&out, 1 << 24);
    if (c->json) {
        ms_buf_appendf(&out, "{\"buckets_minutes\":[");
        for (j = 0; j < NBUCKETS; j++)
            ms_buf_appendf(&out, "%s%d", j ? "," : "", shape_buckets[j]);
        ms_buf_appendf(&out, "],\"total\":%lld,\"destinations\":[", totals[0]);
    } else {
        ms_buf_appendf(&out, "%-32s %7s", "DESTINATION", "T");
        for (j = 0; j < NBUCKETS; j++)
            ms_buf_appendf(&out, " %6d", shape_buckets[j]);
        ms_buf_appendf(&out, " %6d+\n%-32s %7lld", shape_buckets[NBUCKETS - 1], "TOTAL", totals[0]);
        for (j = 1; j < NBUCKETS + 2; j++)
            ms_buf_appendf(&out, " %6lld", totals[j]);
        ms_buf_append(&out, "\n", 1);
    }
    for (i = 0, j = 0; i < n; i++) {
        char *name;
        size_t b;
        memcpy(&name, &rows[i][NBUCKETS + 2], sizeof(char *));
        if (rows[i][0] == 0)
            continue;
        if (c->json) {
            ms_buf_appendf(&out, "%s{\"destination\":", j++ ? "," : "");
            ctl_json_str(&out, name);
            ms_buf_appendf(&out, ",\"total\":%lld,\"counts\":[", rows[i][0]);
            for (b = 1; b < NBUCKETS + 2; b++)
                ms_buf_appendf(&out, "%s%lld", b > 1 ? "," : "", rows[i][b]);
            ms_buf_append(&out, "]}", 2);
        } else {
            ms_buf_appendf(&out, "%-32s %7lld", name, rows[i][0]);
            for (b = 1; b < NBUCKETS + 2; b++)
                ms_buf_appendf(&out, " %6lld", rows[i][b]);
            ms_buf_append(&out, "\n", 1);
        }
    }
    if (c->json)
        ms_buf_append(&out, "]}\n", 3);
    ctl_flush(&out);
    ms_buf_free(&out);
    for (i = 0; i < n; i++)
        free(rows[i]);
    free(rows);
    ms_strv_free(dests, n);
    return CTL_EXIT_OK;
}

/* The message itself, read back from the Kafka record the listing line
 * names (ms_kafka_read_at): a malloc'd envelope, or NULL after a one-line
 * error and *code set. */
static ms_envelope *read_message(struct ctl *c, const char *qid, const struct ms_qinfo *q,
                                 int *code)
{
    char topic[MS_QINFO_RECORD_MAX], err[512];
    int32_t part;
    int64_t off;
    void *val = NULL;
    size_t len = 0;
    ms_envelope *env;
    int r;

    if (ms_qinfo_record_parse(q->record, topic, sizeof(topic), &part, &off) < 0) {
        *code = ctl_fail(CTL_EXIT_NOTFOUND,
                         "queue show: %s: where its record is is not known "
                         "(deferred by an older worker)",
                         qid);
        return NULL;
    }
    r = ms_kafka_read_at(&c->kconf, topic, part, off, CTL_REDIS_TIMEOUT_MS, &val, &len, err,
                         sizeof(err));
    if (r < 0) {
        *code = ctl_fail(r == MS_ENOTFOUND ? CTL_EXIT_NOTFOUND : CTL_EXIT_UNREACHABLE,
                         "queue show: %s: %s", qid, err);
        return NULL;
    }
    env = ms_envelope_decode(val, len, err, sizeof(err));
    free(val);
    if (env == NULL || env->queue_id == NULL || strcmp(env->queue_id, qid) != 0) {
        *code = ctl_fail(CTL_EXIT_FAILED, "queue show: %s: the record at %s is %s", qid, q->record,
                         env ? "another message's" : err);
        ms_envelope_free(env);
        return NULL;
    }
    return env;
}

static int q_show(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *sc, *rep;
    char *info = NULL, *ctlv = NULL, *names[1], *key, t[MS_JSON_TIME_MAX], *rcpts, *p, *e;
    struct ms_qinfo q;
    struct ms_qctl k;
    struct ms_buf out;
    int64_t now = ms_time_now_us();
    int first = 1, want_message = 0, code = 0;
    ms_envelope *env = NULL;

    if (argc == 2 && strcmp(argv[0], "--message") == 0) {
        want_message = 1;
        argv++;
        argc--;
    } else if (argc == 2 && strcmp(argv[1], "--message") == 0) {
        want_message = 1;
        argc--;
    }
    if (argc != 1)
        return ctl_fail(CTL_EXIT_USAGE, "queue show: one queue id [--message]");
    if (!qid_ok(argv[0]))
        return ctl_fail(CTL_EXIT_USAGE, "queue show: \"%s\" is not a queue id", argv[0]);
    names[0] = argv[0];
    ctl_mget(c, MS_KEY_QUEUE_INFO, names, 1, &info);
    ctl_mget(c, MS_KEY_CONTROL, names, 1, &ctlv);
    sc = ctl_cmd(c, "ZSCORE", MS_KEY_RETRY_QUEUE, argv[0], NULL);
    if (info == NULL || ms_qinfo_parse(info, &q) < 0) {
        int indexed = sc->type == MS_REDIS_STR;
        ms_redis_sync_reply_free(sc);
        free(info);
        free(ctlv);
        return ctl_fail(CTL_EXIT_NOTFOUND, "queue show: %s: %s", argv[0],
                        indexed ? "deferred, but its listing line is gone (a worker of an "
                                  "older version?)"
                                : "not in the deferred queue");
    }
    ms_redis_sync_reply_free(sc);
    if (want_message && (env = read_message(c, argv[0], &q, &code)) == NULL) {
        free(info);
        free(ctlv);
        return code;
    }
    ms_buf_init(&out, 1 << 20);
    ms_json_time(t, sizeof(t), q.received_us);
    if (c->json) {
        ms_buf_appendf(&out,
                       "{\"qid\":\"%s\",\"state\":\"%s\",\"received\":\"%s\",\"sender\":", argv[0],
                       q.state, t);
        ctl_json_str(&out, q.sender);
        ms_buf_appendf(&out, ",\"size\":%llu,\"attempts\":%u,\"tier\":%d,",
                       (unsigned long long)q.size, q.attempts, q.tier);
        json_list(&out, "destinations", q.dests);
        ms_json_time(t, sizeof(t), q.next_attempt_us);
        ms_buf_appendf(&out, ",\"next_attempt\":\"%s\",\"control\":", t);
        if (ctlv && ms_qctl_parse(ctlv, strlen(ctlv), &k) == 0) {
            ms_json_time(t, sizeof(t), k.at_us);
            ms_buf_appendf(&out, "{\"action\":\"%s\",\"at\":\"%s\",\"reason\":",
                           ms_qctl_action_name(k.action), t);
            ctl_json_str(&out, k.reason);
            ms_buf_append(&out, "}", 1);
        } else {
            ms_buf_appendf(&out, "null");
        }
        ms_buf_appendf(&out, ",\"recipients\":[");
    } else {
        ms_buf_appendf(&out,
                       "queue id:     %s\nstate:        %s\nreceived:     %s\nsender:       "
                       "<%s>\nsize:         %llu\nattempts:     %u (retry tier %d)\n"
                       "destinations: %s\n",
                       argv[0], q.state, t, q.sender, (unsigned long long)q.size, q.attempts,
                       q.tier, q.dests);
        ms_json_time(t, sizeof(t), q.next_attempt_us);
        ms_buf_appendf(&out, "next attempt: %s%s\n", t, q.next_attempt_us <= now ? " (due)" : "");
        if (ctlv && ms_qctl_parse(ctlv, strlen(ctlv), &k) == 0) {
            ms_json_time(t, sizeof(t), k.at_us);
            ms_buf_appendf(&out, "control:      %s at %s%s%s\n", ms_qctl_action_name(k.action), t,
                           k.reason[0] ? ": " : "", k.reason);
        }
    }
    /* Each pending recipient's retry state (MS_KEY_RETRY). */
    rcpts = ms_strdup(q.rcpts);
    for (p = rcpts; *p; p = e + 1) {
        if ((e = strchr(p, ',')) != NULL)
            *e = '\0';
        key = ms_asprintf(MS_KEY_RETRY "%s:%s", argv[0], p);
        rep = ctl_cmd(c, "HGETALL", key, NULL);
        free(key);
        if (c->json) {
            ms_buf_appendf(&out, "%s{\"address\":", first ? "" : ",");
            ctl_json_str(&out, p);
        } else {
            ms_buf_appendf(&out, "recipient:    <%s>\n", p);
        }
        for (size_t i = 0; rep->type == MS_REDIS_ARRAY && i + 1 < rep->nelem; i += 2) {
            if (rep->elem[i].type != MS_REDIS_STR || rep->elem[i + 1].type != MS_REDIS_STR)
                continue;
            if (c->json) {
                ms_buf_append(&out, ",", 1);
                ctl_json_str(&out, rep->elem[i].str);
                ms_buf_append(&out, ":", 1);
                ctl_json_str(&out, rep->elem[i + 1].str);
            } else {
                ms_buf_appendf(&out, "  %-16s %s\n", rep->elem[i].str, rep->elem[i + 1].str);
            }
        }
        if (c->json)
            ms_buf_append(&out, "}", 1);
        ms_redis_sync_reply_free(rep);
        first = 0;
        if (e == NULL)
            break;
    }
    if (c->json)
        ms_buf_appendf(&out, "],\"last_reply\":");
    if (c->json) {
        ctl_json_str(&out, q.last_reply);
        ms_buf_appendf(&out, ",\"record\":");
        ctl_json_str(&out, q.record);
        if (env) {
            char *msg = ms_strndup((const char *)env->message.data, env->message.len);
            ms_buf_appendf(&out, ",\"message\":");
            ctl_json_str(&out, msg);
            free(msg);
        }
        ms_buf_append(&out, "}\n", 2);
    } else {
        ms_buf_appendf(&out,
                       "last reply:   %s\nrecord:       %s\n(the attempt history: "
                       "mailstream-ctl events tail --qid %s)\n",
                       q.last_reply, q.record[0] ? q.record : "-", argv[0]);
        if (env) {
            /* The message as queued, after a blank line (postcat's -b). */
            ms_buf_appendf(&out, "\n");
            ctl_flush(&out);
            fwrite(env->message.data, 1, env->message.len, stdout);
        }
    }
    ctl_flush(&out);
    ms_buf_free(&out);
    ms_envelope_free(env);
    free(rcpts);
    free(info);
    free(ctlv);
    return CTL_EXIT_OK;
}

/* ---- actions ---- */

struct target_set {
    char **qids;
    size_t n;
    char **missing; /* named but not in the queue */
    size_t nmissing;
};

/* The messages an action names: queue ids, or --dest D (everything
 * deferred to D).  Returns 0 or an exit code. */
static int targets(struct ctl *c, const char *what, int argc, char **argv, const char **reason,
                   struct target_set *ts)
{
    const char *dest = NULL;
    char **named = ms_calloc((size_t)argc + 1, sizeof(*named)), **infos;
    size_t nn = 0, i;
    int k;

    memset(ts, 0, sizeof(*ts));
    *reason = "";
    for (k = 0; k < argc; k++) {
        if (strcmp(argv[k], "--dest") == 0 || strcmp(argv[k], "--reason") == 0) {
            if (k + 1 >= argc) {
                free(named);
                return ctl_fail(CTL_EXIT_USAGE, "queue %s: %s needs a value", what, argv[k]);
            }
            if (argv[k][2] == 'd')
                dest = argv[++k];
            else
                *reason = argv[++k];
        } else if (qid_ok(argv[k])) {
            named[nn++] = argv[k];
        } else {
            free(named);
            return ctl_fail(CTL_EXIT_USAGE, "queue %s: \"%s\" is not a queue id", what, argv[k]);
        }
    }
    if (strlen(*reason) > MS_QCTL_REASON_MAX) {
        free(named);
        return ctl_fail(CTL_EXIT_USAGE, "queue %s: reason longer than %d", what,
                        MS_QCTL_REASON_MAX);
    }
    if ((dest != NULL) == (nn > 0)) {
        free(named);
        return ctl_fail(CTL_EXIT_USAGE, "queue %s: give queue ids or --dest D", what);
    }
    if (dest != NULL) {
        char *key = ms_asprintf(MS_KEY_RETRY_QUEUE_DEST "%s", dest);
        ts->qids = zmembers(c, key, -1, &ts->n);
        free(key);
        free(named);
        return 0;
    }
    /* Named ids must be deferred or held now: a message the index does not
     * know is delivered, gone, or never was. */
    infos = ms_calloc(nn + 1, sizeof(*infos));
    ctl_mget(c, MS_KEY_QUEUE_INFO, named, nn, infos);
    ts->qids = ms_calloc(nn + 1, sizeof(char *));
    ts->missing = ms_calloc(nn + 1, sizeof(char *));
    for (i = 0; i < nn; i++) {
        if (infos[i])
            ts->qids[ts->n++] = ms_strdup(named[i]);
        else
            ts->missing[ts->nmissing++] = ms_strdup(named[i]);
    }
    ms_strv_free(infos, nn);
    free(named);
    return 0;
}

static void print_ids(struct ms_buf *b, int json, const char *name, char **ids, size_t n)
{
    size_t i;

    if (json) {
        ms_buf_appendf(b, ",\"%s\":[", name);
        for (i = 0; i < n; i++) {
            ms_buf_appendf(b, "%s", i ? "," : "");
            ctl_json_str(b, ids[i]);
        }
        ms_buf_append(b, "]", 1);
        return;
    }
    for (i = 0; i < n; i++)
        ms_buf_appendf(b, "%s %s\n", name, ids[i]);
}

/* Write control record `action` (with reason) for qids[0..n), except
 * those skip[] marks, pipelined; the ids not written go to failed[]
 * (*nfailed).  Then bump the generation the workers poll.  Returns how
 * many were written. */
static size_t write_controls(struct ctl *c, enum ms_qctl_action action, const char *reason,
                             char **qids, size_t n, const char *skip, char **failed,
                             size_t *nfailed)
{
    ms_redis_sync *r = ctl_redis(c);
    char val[MS_QCTL_REASON_MAX + 64], ttl[24];
    size_t i, lens[5], nsent = 0, napplied = 0, *sent = ms_calloc(n + 1, sizeof(*sent));
    const char *av[5];
    struct ms_qctl k;

    memset(&k, 0, sizeof(k));
    k.action = action;
    k.at_us = ms_time_now_us();
    snprintf(k.reason, sizeof(k.reason), "%s", reason);
    ms_qctl_format(&k, val, sizeof(val));
    snprintf(ttl, sizeof(ttl), "%d", MS_QCTL_TTL_S);
    for (i = 0; i < n; i++) {
        char *key;
        if (skip && skip[i])
            continue;
        key = ms_asprintf(MS_KEY_CONTROL "%s", qids[i]);
        av[0] = "SET";
        av[1] = key;
        av[2] = val;
        av[3] = "EX";
        av[4] = ttl;
        for (int j = 0; j < 5; j++)
            lens[j] = strlen(av[j]);
        if (ms_redis_sync_append(r, 5, av, lens) < 0)
            exit(ctl_fail(CTL_EXIT_UNREACHABLE, "redis: %s", ms_redis_sync_error(r)));
        sent[nsent++] = i;
        free(key);
    }
    for (i = 0; i < nsent; i++) {
        struct ms_redis_reply *rep = ms_redis_sync_read(r);
        if (rep == NULL) {
            /* The connection broke: the rest are not known to be applied. */
            for (; i < nsent; i++)
                failed[(*nfailed)++] = qids[sent[i]];
            break;
        }
        if (rep->type == MS_REDIS_STR)
            napplied++;
        else
            failed[(*nfailed)++] = qids[sent[i]];
        ms_redis_sync_reply_free(rep);
    }
    free(sent);
    if (napplied > 0)
        ms_redis_sync_reply_free(ctl_cmd(c, "INCR", MS_KEY_CONTROL_GEN, NULL));
    return napplied;
}

static int q_action(struct ctl *c, enum ms_qctl_action action, const char *what, int argc,
                    char **argv)
{
    struct target_set ts;
    const char *reason;
    char **ctls = NULL, **failed, **skipped, *skip;
    size_t i, nfailed = 0, nskipped = 0, napplied;
    struct ms_buf out;
    int rc;

    if ((rc = targets(c, what, argc, argv, &reason, &ts)) != 0)
        return rc;
    failed = ms_calloc(ts.n + 1, sizeof(*failed));
    skipped = ms_calloc(ts.n + 1, sizeof(*skipped));
    skip = ms_calloc(ts.n + 1, 1);
    if (strcmp(what, "release") == 0) {
        /* Only held mail is released. */
        ctls = ms_calloc(ts.n + 1, sizeof(*ctls));
        ctl_mget(c, MS_KEY_CONTROL, ts.qids, ts.n, ctls);
        for (i = 0; i < ts.n; i++) {
            struct ms_qctl cur;
            if (ctls[i] == NULL || ms_qctl_parse(ctls[i], strlen(ctls[i]), &cur) < 0 ||
                cur.action != MS_QCTL_HOLD) {
                skip[i] = 1;
                skipped[nskipped++] = ts.qids[i];
            }
        }
    }
    napplied = write_controls(c, action, reason, ts.qids, ts.n, skip, failed, &nfailed);
    ms_buf_init(&out, 1 << 26);
    if (c->json) {
        ms_buf_appendf(&out, "{\"action\":\"%s\",\"applied\":%zu", what, napplied);
        print_ids(&out, 1, "not_found", ts.missing, ts.nmissing);
        print_ids(&out, 1, "not_held", skipped, nskipped);
        print_ids(&out, 1, "failed", failed, nfailed);
        ms_buf_append(&out, "}\n", 2);
    } else {
        print_ids(&out, 0, "not-found", ts.missing, ts.nmissing);
        print_ids(&out, 0, "not-held", skipped, nskipped);
        print_ids(&out, 0, "failed", failed, nfailed);
        ms_buf_appendf(&out, "queue %s: %zu message%s\n", what, napplied, napplied == 1 ? "" : "s");
    }
    ctl_flush(&out);
    ms_buf_free(&out);
    rc = nfailed ? CTL_EXIT_FAILED : ts.nmissing ? CTL_EXIT_NOTFOUND : CTL_EXIT_OK;
    if (ctls)
        ms_strv_free(ctls, ts.n);
    free(failed);
    free(skipped);
    free(skip);
    ms_strv_free(ts.qids, ts.n);
    ms_strv_free(ts.missing, ts.nmissing);
    return rc;
}

static int q_retry(struct ctl *c, int argc, char **argv)
{
    return q_action(c, MS_QCTL_RETRY, "retry", argc, argv);
}

static int q_hold(struct ctl *c, int argc, char **argv)
{
    return q_action(c, MS_QCTL_HOLD, "hold", argc, argv);
}

/* Released mail is due at once (a retry record replaces the hold). */
static int q_release(struct ctl *c, int argc, char **argv)
{
    return q_action(c, MS_QCTL_RETRY, "release", argc, argv);
}

static int q_bounce(struct ctl *c, int argc, char **argv)
{
    return q_action(c, MS_QCTL_BOUNCE, "bounce", argc, argv);
}

static int q_delete(struct ctl *c, int argc, char **argv)
{
    return q_action(c, MS_QCTL_DELETE, "delete", argc, argv);
}

const struct ctl_cmd ctl_queue_cmds[] = {
    {"queue", "list", "[--dest D] [--sender S] [--rcpt R] [--older-than T]",
     "deferred and held messages", q_list},
    {"queue", "shape", "", "deferred messages per destination by age (like qshape)", q_shape},
    {"queue", "show", "QID [--message]",
     "one message: envelope, recipients, retry state (and the message itself)", q_show},
    {"queue", "retry", "QID...|--dest D", "due now, on every worker", q_retry},
    {"queue", "hold", "QID...|--dest D [--reason TEXT]", "never attempted until released", q_hold},
    {"queue", "release", "QID...|--dest D", "held mail goes again, now", q_release},
    {"queue", "bounce", "QID...|--dest D [--reason TEXT]",
     "a DSN to the sender now (backscatter rule), recipients done", q_bounce},
    {"queue", "delete", "QID...|--dest D [--reason TEXT]", "gone without a DSN, an event each",
     q_delete},
    {NULL, NULL, NULL, NULL, NULL}};

size_t ctl_queue_retry_dest(struct ctl *c, const char *dest)
{
    char *av[2] = {"--dest", (char *)dest}, *why, **failed;
    struct target_set ts;
    const char *reason;
    size_t n, nfailed = 0;

    if (targets(c, "retry", 2, av, &reason, &ts) != 0)
        return 0;
    why = ms_asprintf("destination %s resumed", dest);
    failed = ms_calloc(ts.n + 1, sizeof(*failed));
    n = write_controls(c, MS_QCTL_RETRY, why, ts.qids, ts.n, NULL, failed, &nfailed);
    free(failed);
    free(why);
    ms_strv_free(ts.qids, ts.n);
    ms_strv_free(ts.missing, ts.nmissing);
    return n;
}
