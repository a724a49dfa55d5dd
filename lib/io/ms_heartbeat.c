/*
 * ms_heartbeat.c - a node's heartbeat key (see ms_heartbeat.h).
 */
#include "ms_heartbeat.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_mem.h"
#include "ms_time.h"
#include "ms_version.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ms_heartbeat {
    uv_timer_t timer;
    ms_redis *redis;
    struct ms_counter *errors;
    char key[sizeof(MS_KEY_NODE) + MS_HEARTBEAT_FIELD_MAX];
    struct ms_heartbeat_info info;
};

int ms_heartbeat_format(const struct ms_heartbeat_info *h, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s %s %s %" PRId64 " %" PRId64 " %s", h->role, h->version,
                     h->commit, h->started_us, h->seen_us, h->host);

    return n < 0 || (size_t)n >= len ? MS_ETOOBIG : n;
}

int ms_heartbeat_parse(const char *s, size_t len, struct ms_heartbeat_info *out)
{
    char line[6 * (MS_HEARTBEAT_FIELD_MAX + 1)], *f[6], *save = NULL, *p;
    size_t n = 0;

    if (len >= sizeof(line))
        return MS_EINVAL;
    memcpy(line, s, len);
    line[len] = '\0';
    for (p = strtok_r(line, " ", &save); p && n < 6; p = strtok_r(NULL, " ", &save))
        f[n++] = p;
    if (n != 6 || p != NULL || strlen(f[0]) >= sizeof(out->role) ||
        strlen(f[1]) > MS_HEARTBEAT_FIELD_MAX || strlen(f[2]) > MS_HEARTBEAT_FIELD_MAX ||
        strlen(f[5]) > MS_HEARTBEAT_FIELD_MAX)
        return MS_EINVAL;
    memset(out, 0, sizeof(*out));
    strcpy(out->role, f[0]);
    strcpy(out->version, f[1]);
    strcpy(out->commit, f[2]);
    strcpy(out->host, f[5]);
    out->started_us = strtoll(f[3], &p, 10);
    if (*p != '\0')
        return MS_EINVAL;
    out->seen_us = strtoll(f[4], &p, 10);
    return *p == '\0' ? 0 : MS_EINVAL;
}

static void beat(uv_timer_t *t)
{
    ms_heartbeat *h = t->data;
    char val[sizeof(h->info) + 64], ttl[16];
    const char *argv[5] = {"SET", h->key, val, "EX", ttl};

    h->info.seen_us = ms_time_now_us();
    if (ms_heartbeat_format(&h->info, val, sizeof(val)) < 0)
        return;
    snprintf(ttl, sizeof(ttl), "%d", MS_HEARTBEAT_TTL_S);
    ms_redis_fire(h->redis, h->errors, 5, argv);
}

ms_heartbeat *ms_heartbeat_start(uv_loop_t *loop, ms_redis *redis, const char *role,
                                 const char *node_id, struct ms_counter *errors)
{
    ms_heartbeat *h = ms_calloc(1, sizeof(*h));

    h->redis = redis;
    h->errors = errors;
    snprintf(h->key, sizeof(h->key), MS_KEY_NODE "%.*s", MS_HEARTBEAT_FIELD_MAX, node_id);
    snprintf(h->info.role, sizeof(h->info.role), "%s", role);
    snprintf(h->info.version, sizeof(h->info.version), "%s", ms_version());
    snprintf(h->info.commit, sizeof(h->info.commit), "%s", ms_version_commit());
    if (gethostname(h->info.host, sizeof(h->info.host) - 1) != 0 || h->info.host[0] == '\0')
        snprintf(h->info.host, sizeof(h->info.host), "-");
    h->info.host[strcspn(h->info.host, " ")] = '\0';
    h->info.started_us = ms_time_now_us();
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_start(&h->timer, beat, 0, MS_HEARTBEAT_MS);
    return h;
}

static void on_closed(uv_handle_t *t)
{
    free(t->data);
}

void ms_heartbeat_stop(ms_heartbeat *h)
{
    const char *argv[2];

    if (h == NULL)
        return;
    argv[0] = "DEL";
    argv[1] = h->key;
    ms_redis_fire(h->redis, NULL, 2, argv);
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, on_closed);
}
