/*
 * ctl_status.c - `mailstream-ctl status`: the cluster at a glance, from
 * Redis: its health, the deferred queue (MS_KEY_RETRY_QUEUE: depth and
 * oldest, the destinations seen), and the suspended destinations.  XXX the
 * workers and frontends seen and the consumer lag (Kafka's consumer
 * groups) are not read yet (docs/operations.md, "Not yet").
 */
#include "ctl.h"
#include "ms_json.h"
#include "ms_keys.h"
#include "ms_mem.h"
#include "ms_qctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long int_reply(struct ms_redis_reply *r)
{
    long long v = r->type == MS_REDIS_INT ? r->integer : 0;

    ms_redis_sync_reply_free(r);
    return v;
}

static int st_status(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *r;
    char version[32] = "?", oldest_s[32] = "-";
    long long depth, nsusp = 0, oldest = 0, ndest;
    int64_t now = ms_time_now_us();
    const char *p;
    size_t i;

    (void)argv;
    if (argc > 0)
        return ctl_fail(CTL_EXIT_USAGE, "status: no arguments");
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
    if (c->json) {
        printf("{\"redis\":{\"ok\":true,\"version\":\"%s\",\"address\":\"%s:%d\"},"
               "\"deferred\":{\"messages\":%lld,\"oldest_age_s\":%lld,\"destinations\":%lld},"
               "\"suspended_destinations\":%lld,\"kafka\":{\"brokers\":\"%s\"}}\n",
               version, c->rconf.host, c->rconf.port, depth, depth ? oldest : 0, ndest, nsusp,
               c->kconf.brokers);
    } else {
        printf("redis:      ok (%s:%d, version %s)\n"
               "deferred:   %lld messages, oldest %s, %lld destinations seen\n"
               "suspended:  %lld destinations\n"
               "kafka:      %s\n",
               c->rconf.host, c->rconf.port, version, depth, oldest_s, ndest, nsusp,
               c->kconf.brokers);
    }
    return CTL_EXIT_OK;
}

const struct ctl_cmd ctl_status_cmds[] = {
    {"status", "", "", "Redis health, deferred queue, suspended destinations", st_status},
    {NULL, NULL, NULL, NULL, NULL}};
