/*
 * ctl_events.c - `mailstream-ctl events tail`: the `events` topic
 * ([kafka] events_topic), filtered by queue id or recipient, as lines or
 * JSON Lines (--json: each record as it was written).
 *
 * Read with ms_kafka_tail (outside any consumer group: nothing committed).
 * Without --follow it reads every partition to its end and exits (with
 * --qid, in time order: the topic is not partitioned by queue id); with it,
 * it waits for more until interrupted.  Records are the workers' (and the
 * frontend's) flat JSON (worker/event.h); the fields are read with
 * ms_qctl_json_field().
 */
#include "ctl.h"
#include "ms_error.h"
#include "ms_kafka.h"
#include "ms_mem.h"
#include "ms_qctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Waits for the first metadata and each poll. */
#define CTL_KAFKA_TIMEOUT_MS 10000
#define CTL_POLL_MS 1000
/* Longest field shown of one record. */
#define CTL_FIELD_MAX 1024

/* One record kept for sorting (--qid without --follow). */
struct kept {
    char ts[CTL_FIELD_MAX];
    size_t seq; /* topic order, for equal times */
    char *line;
};

static int cmp_ts(const void *a, const void *b)
{
    const struct kept *x = a, *y = b;
    int c = strcmp(x->ts, y->ts);

    return c ? c : x->seq < y->seq ? -1 : 1;
}

static char *format_record(struct ctl *c, const struct ms_record *rec, char f[][CTL_FIELD_MAX])
{
    if (c->json)
        return ms_asprintf("%.*s\n", (int)rec->len, (const char *)rec->value);
    return ms_asprintf("%s %s %s %s %s\n", f[0], f[1][0] ? f[1] : "-", f[3][0] ? f[3] : f[4],
                       f[2][0] ? f[2] : "-", f[5]);
}

static int ev_tail(struct ctl *c, int argc, char **argv)
{
    const char *qid = NULL, *rcpt = NULL;
    char err[512], f[6][CTL_FIELD_MAX];
    static const char *const names[6] = {"ts", "qid", "rcpt", "outcome", "event", "reply"};
    struct ms_record rec;
    ms_kafka_tail *t;
    struct kept *kept = NULL;
    size_t nkept = 0, cap = 0, i;
    int follow = 0, k, r, idle = 0;

    for (k = 0; k < argc; k++) {
        if (strcmp(argv[k], "--follow") == 0 || strcmp(argv[k], "-f") == 0) {
            follow = 1;
        } else if ((strcmp(argv[k], "--qid") == 0 || strcmp(argv[k], "--rcpt") == 0) &&
                   k + 1 < argc) {
            if (argv[k][2] == 'q')
                qid = argv[++k];
            else
                rcpt = argv[++k];
        } else {
            return ctl_fail(CTL_EXIT_USAGE, "events tail: unexpected \"%s\"", argv[k]);
        }
    }
    if ((t = ms_kafka_tail_new(&c->kconf, c->events_topic, 0, follow, CTL_KAFKA_TIMEOUT_MS, err,
                               sizeof(err))) == NULL)
        return ctl_fail(CTL_EXIT_UNREACHABLE, "kafka %s: %s", c->kconf.brokers, err);
    for (;;) {
        r = ms_kafka_tail_next(t, CTL_POLL_MS, &rec, err, sizeof(err));
        if (r == 0)
            break;
        if (r == MS_ETIMEOUT) {
            /* Without --follow, a topic that reports no end for this long
             * is taken as read (an empty partition may say nothing). */
            if (!follow && ++idle * CTL_POLL_MS >= CTL_KAFKA_TIMEOUT_MS)
                break;
            continue;
        }
        if (r < 0) {
            ms_kafka_tail_free(t);
            return ctl_fail(CTL_EXIT_UNREACHABLE, "kafka: %s", err);
        }
        idle = 0;
        for (k = 0; k < 6; k++)
            if (ms_qctl_json_field(rec.value, rec.len, names[k], f[k], sizeof(f[k])) != 1)
                f[k][0] = '\0';
        if (qid && strcmp(f[1], qid) != 0 &&
            !(rec.keylen == strlen(qid) && memcmp(rec.key, qid, rec.keylen) == 0))
            continue;
        if (rcpt && strcasecmp(f[2], rcpt) != 0)
            continue;
        if (qid && !follow) {
            /* The events topic is not partitioned by queue id (frontends
             * and workers write it sticky): one message's records come
             * from several partitions, so they are put in time order. */
            if (nkept == cap)
                kept = ms_realloc(kept, (cap = cap ? 2 * cap : 64) * sizeof(*kept));
            snprintf(kept[nkept].ts, sizeof(kept[nkept].ts), "%s", f[0]);
            kept[nkept].seq = nkept;
            kept[nkept++].line = format_record(c, &rec, f);
            continue;
        }
        {
            char *line = format_record(c, &rec, f);
            fputs(line, stdout);
            free(line);
        }
        if (follow)
            fflush(stdout);
    }
    ms_kafka_tail_free(t);
    if (nkept)
        qsort(kept, nkept, sizeof(*kept), cmp_ts);
    for (i = 0; i < nkept; i++) {
        fputs(kept[i].line, stdout);
        free(kept[i].line);
    }
    free(kept);
    return CTL_EXIT_OK;
}

const struct ctl_cmd ctl_events_cmds[] = {
    {"events", "tail", "[--qid Q] [--rcpt R] [--follow]",
     "the events topic, filtered; --json: the records as written", ev_tail},
    {NULL, NULL, NULL, NULL, NULL}};
