/*
 * ctl_status.c - `mailstream-ctl status`: the cluster at a glance.
 *
 * From Redis: its health, the nodes alive (every frontend with Redis and
 * every worker keeps a heartbeat key, MS_KEY_NODE + its id, with a short
 * TTL: ms_heartbeat.h), the deferred queue (MS_KEY_RETRY_QUEUE: depth and
 * oldest, the destinations seen) and the suspended destinations.  From
 * Kafka: the workers' consumer group (its members, as the group
 * coordinator knows them) and its lag per topic - the queue topic and each
 * retry tier - as high watermarks minus committed offsets, so the figures
 * hold for a cluster of any size and do not depend on any worker being up.
 * The group, the topic and the number of tiers are the worker's ([kafka]
 * group and topic, [retry] tiers) from the file given with -c.
 */
#include "ctl.h"
#include "ms_heartbeat.h"
#include "ms_json.h"
#include "ms_keys.h"
#include "ms_mem.h"
#include "ms_qctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Consumer group members listed; a bigger group is cut (and says so). */
#define CTL_MEMBERS_MAX 1024
/* Retry tiers looked at ([retry] tiers is at most this in the worker). */
#define CTL_TIERS_MAX 16
/* Nodes listed from their heartbeats. */
#define CTL_NODES_MAX 10000

static long long int_reply(struct ms_redis_reply *r)
{
    long long v = r->type == MS_REDIS_INT ? r->integer : 0;

    ms_redis_sync_reply_free(r);
    return v;
}

/* The names (after MS_KEY_NODE) of every heartbeat key, at most max. */
static size_t node_names(struct ctl *c, char **names, size_t max)
{
    char cursor[32] = "0";
    size_t n = 0, i, plen = strlen(MS_KEY_NODE);

    do {
        struct ms_redis_reply *r =
            ctl_cmd(c, "SCAN", cursor, "MATCH", MS_KEY_NODE "*", "COUNT", "1000", NULL);
        if (r->type != MS_REDIS_ARRAY || r->nelem != 2 || r->elem[0].type != MS_REDIS_STR) {
            ms_redis_sync_reply_free(r);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->elem[0].str);
        for (i = 0; i < r->elem[1].nelem && n < max; i++)
            if (r->elem[1].elem[i].type == MS_REDIS_STR && r->elem[1].elem[i].len > plen)
                names[n++] = ms_strdup(r->elem[1].elem[i].str + plen);
        ms_redis_sync_reply_free(r);
    } while (strcmp(cursor, "0") != 0 && n < max);
    return n;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int st_status(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *r;
    char version[32] = "?", oldest_s[32] = "-", kerr[256] = "", age[32], seen[32];
    long long depth, nsusp = 0, oldest = 0, ndest;
    int64_t now = ms_time_now_us(), tiers;
    const char *p, *group = ms_config_get(c->cfg, "kafka", "group", "mailstream-workers");
    const char *topic = ms_config_get(c->cfg, "kafka", "topic", "queue");
    struct ms_kafka_topic_lag lags[1 + CTL_TIERS_MAX];
    struct ms_kafka_member *members = ms_calloc(CTL_MEMBERS_MAX, sizeof(*members));
    char **names = ms_calloc(CTL_NODES_MAX, sizeof(*names)), **vals, *tnames[CTL_TIERS_MAX];
    size_t nmembers = 0, nnodes, nlags, i, k;
    struct ms_buf out;
    int kafka_ok;

    (void)argv;
    if (argc > 0)
        return ctl_fail(CTL_EXIT_USAGE, "status: no arguments");
    if (ms_config_get_int(c->cfg, "retry", "tiers", 6, 0, CTL_TIERS_MAX, &tiers) < 0)
        return ctl_fail(CTL_EXIT_USAGE, "status: [retry] tiers: want 0 to %d", CTL_TIERS_MAX);
    r = ctl_cmd(c, "INFO", "server", NULL);
    if (r->type == MS_REDIS_STR && (p = strstr(r->str, "redis_version:")) != NULL)
        sscanf(p + 14, "%31[^\r\n]", version);
    ms_redis_sync_reply_free(r);
    depth = int_reply(ctl_cmd(c, "ZCARD", MS_KEY_RETRY_QUEUE, NULL));
    r = ctl_cmd(c, "ZRANGE", MS_KEY_RETRY_QUEUE, "0", "0", "WITHSCORES", NULL);
    if (r->type == MS_REDIS_ARRAY && r->nelem == 2 && r->elem[1].type == MS_REDIS_STR)
        oldest = (now - strtoll(r->elem[1].str, NULL, 10)) / 1000000;
    ms_redis_sync_reply_free(r);
    ndest = int_reply(ctl_cmd(c, "ZCARD", MS_KEY_RETRY_QUEUE_DESTS, NULL));
    r = ctl_cmd(c, "HGETALL", MS_KEY_SUSPEND, NULL);
    for (i = 0; r->type == MS_REDIS_ARRAY && i + 1 < r->nelem; i += 2) {
        struct ms_qctl_suspend s;
        if (r->elem[i + 1].type == MS_REDIS_STR &&
            ms_qctl_suspend_parse(r->elem[i + 1].str, r->elem[i + 1].len, &s) == 0 &&
            ms_qctl_suspend_active(&s, now))
            nsusp++;
    }
    ms_redis_sync_reply_free(r);
    if (depth > 0)
        ctl_fmt_age(oldest_s, sizeof(oldest_s), oldest);

    nnodes = node_names(c, names, CTL_NODES_MAX);
    qsort(names, nnodes, sizeof(*names), cmp_name);
    vals = ms_calloc(nnodes + 1, sizeof(*vals));
    ctl_mget(c, MS_KEY_NODE, names, nnodes, vals);

    /* The workers' consumer group, from Kafka. */
    nlags = 0;
    lags[nlags++] = (struct ms_kafka_topic_lag){.topic = topic};
    for (i = 0; i < (size_t)tiers; i++) {
        tnames[i] = ms_asprintf("%s.retry.%zu", topic, i + 1);
        lags[nlags++] = (struct ms_kafka_topic_lag){.topic = tnames[i]};
    }
    kafka_ok = ms_kafka_group_status(&c->kconf, group, lags, nlags, members, CTL_MEMBERS_MAX,
                                     &nmembers, CTL_REDIS_TIMEOUT_MS, kerr, sizeof(kerr)) == 0;

    ms_buf_init(&out, 1 << 24);
    if (c->json) {
        ms_buf_appendf(&out, "{\"redis\":{\"ok\":true,\"version\":");
        ctl_json_str(&out, version);
        ms_buf_appendf(&out,
                       ",\"address\":\"%s:%d\"},\"kafka\":{\"ok\":%s,\"brokers\":", c->rconf.host,
                       c->rconf.port, kafka_ok ? "true" : "false");
        ctl_json_str(&out, c->kconf.brokers);
        if (!kafka_ok) {
            ms_buf_appendf(&out, ",\"error\":");
            ctl_json_str(&out, kerr);
        }
        ms_buf_appendf(&out, ",\"group\":");
        ctl_json_str(&out, group);
        ms_buf_appendf(&out, ",\"members\":[");
        for (i = 0; i < nmembers; i++) {
            ms_buf_appendf(&out, "%s{\"client_id\":", i ? "," : "");
            ctl_json_str(&out, members[i].client_id);
            ms_buf_appendf(&out, ",\"host\":");
            ctl_json_str(&out, members[i].host);
            ms_buf_appendf(&out, "}");
        }
        ms_buf_appendf(&out, "],\"lag\":[");
        for (i = 0; kafka_ok && i < nlags; i++) {
            ms_buf_appendf(&out, "%s{\"topic\":", i ? "," : "");
            ctl_json_str(&out, lags[i].topic);
            ms_buf_appendf(&out, ",\"partitions\":%d,\"end\":%lld,\"lag\":%lld}",
                           lags[i].partitions, (long long)lags[i].end, (long long)lags[i].lag);
        }
        ms_buf_appendf(&out, "]},\"nodes\":[");
    } else {
        ms_buf_appendf(&out, "redis:      ok (%s:%d, version %s)\n", c->rconf.host, c->rconf.port,
                       version);
        if (kafka_ok)
            ms_buf_appendf(&out, "kafka:      ok (%s), group %s: %zu members\n", c->kconf.brokers,
                           group, nmembers);
        else
            ms_buf_appendf(&out, "kafka:      UNREACHABLE (%s): %s\n", c->kconf.brokers, kerr);
        ms_buf_appendf(&out, "nodes:      %zu\n", nnodes);
    }
    for (i = k = 0; i < nnodes; i++) {
        struct ms_heartbeat_info h;
        int in_group = 0;
        size_t m;
        if (vals[i] == NULL || ms_heartbeat_parse(vals[i], strlen(vals[i]), &h) < 0)
            continue; /* expired between SCAN and MGET, or not ours */
        for (m = 0; m < nmembers; m++)
            in_group |= strcmp(members[m].client_id, names[i]) == 0;
        ctl_fmt_age(age, sizeof(age), (now - h.started_us) / 1000000);
        ctl_fmt_age(seen, sizeof(seen), (now - h.seen_us) / 1000000);
        if (c->json) {
            ms_buf_appendf(&out, "%s{\"node\":", k++ ? "," : "");
            ctl_json_str(&out, names[i]);
            ms_buf_appendf(&out, ",\"role\":");
            ctl_json_str(&out, h.role);
            ms_buf_appendf(&out, ",\"version\":");
            ctl_json_str(&out, h.version);
            ms_buf_appendf(&out, ",\"commit\":");
            ctl_json_str(&out, h.commit);
            ms_buf_appendf(&out, ",\"host\":");
            ctl_json_str(&out, h.host);
            ms_buf_appendf(&out, ",\"up_s\":%lld,\"seen_s_ago\":%lld",
                           (long long)((now - h.started_us) / 1000000),
                           (long long)((now - h.seen_us) / 1000000));
            if (strcmp(h.role, "worker") == 0)
                ms_buf_appendf(&out, ",\"in_group\":%s", in_group ? "true" : "false");
            ms_buf_appendf(&out, "}");
        } else {
            ms_buf_appendf(&out, "  %-24s %-8s %s (%s) on %s, up %s, seen %s ago%s\n", names[i],
                           h.role, h.version, h.commit, h.host, age, seen,
                           strcmp(h.role, "worker") != 0 ? ""
                           : in_group                    ? ", in the group"
                                                         : ", NOT in the group");
        }
    }
    if (c->json) {
        ms_buf_appendf(&out,
                       "],\"deferred\":{\"messages\":%lld,\"oldest_age_s\":%lld,"
                       "\"destinations\":%lld},\"suspended_destinations\":%lld}\n",
                       depth, depth ? oldest : 0, ndest, nsusp);
    } else {
        if (kafka_ok) {
            ms_buf_appendf(&out, "lag:       ");
            for (i = 0; i < nlags; i++) {
                if (lags[i].partitions == 0)
                    ms_buf_appendf(&out, " %s (no such topic)", lags[i].topic);
                else
                    ms_buf_appendf(&out, " %s %lld", lags[i].topic, (long long)lags[i].lag);
                ms_buf_appendf(&out, i + 1 < nlags ? "," : "\n");
            }
        }
        ms_buf_appendf(&out,
                       "deferred:   %lld messages, oldest %s, %lld destinations seen\n"
                       "suspended:  %lld destinations\n",
                       depth, oldest_s, ndest, nsusp);
    }
    ctl_flush(&out);
    ms_buf_free(&out);
    ms_strv_free(names, nnodes);
    for (i = 0; i < nnodes; i++)
        free(vals[i]);
    free(vals);
    for (i = 0; i < (size_t)tiers; i++)
        free(tnames[i]);
    free(members);
    return kafka_ok ? CTL_EXIT_OK : CTL_EXIT_UNREACHABLE;
}

const struct ctl_cmd ctl_status_cmds[] = {
    {"status", "", "", "nodes, consumer group and lag, deferred queue, suspensions", st_status},
    {NULL, NULL, NULL, NULL, NULL}};
