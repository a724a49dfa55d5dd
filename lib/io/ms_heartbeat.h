/*
 * ms_heartbeat.h - "this node is alive": every frontend and worker writes a
 * key of its own to Redis every MS_HEARTBEAT_MS, with a TTL of
 * MS_HEARTBEAT_TTL_S, so `mailstream-ctl status` lists the nodes of a
 * cluster of any size (a node that died drops out by itself within the
 * TTL), with no registry to keep up to date.
 *
 * The key is MS_KEY_NODE + node id ([node] id); the value one line,
 *   ROLE VERSION COMMIT STARTED_US SEEN_US HOST
 * (ms_heartbeat_format / ms_heartbeat_parse, pure).  Two nodes given the
 * same id share a key: ids must be unique, as they already must for Kafka's
 * client ids and the logs.
 *
 * Threads: the writer lives on one loop with that loop's Redis client; the
 * pure functions anywhere.  Redis down: a beat is lost (fire-and-forget,
 * counted in `errors` when given); the node reappears with the next one.
 */
#ifndef MS_HEARTBEAT_H
#define MS_HEARTBEAT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ms_redis.h"

#define MS_HEARTBEAT_MS 5000
/* Three beats: one lost write does not make a node vanish. */
#define MS_HEARTBEAT_TTL_S 15
/* Longest node id, host name and version word kept. */
#define MS_HEARTBEAT_FIELD_MAX 255

struct ms_heartbeat_info {
    char role[16]; /* "frontend", "worker" */
    char version[MS_HEARTBEAT_FIELD_MAX + 1];
    char commit[MS_HEARTBEAT_FIELD_MAX + 1];
    int64_t started_us, seen_us;
    char host[MS_HEARTBEAT_FIELD_MAX + 1];
};

/* The value into buf; its length, or MS_ETOOBIG. */
int ms_heartbeat_format(const struct ms_heartbeat_info *h, char *buf, size_t len);
/* Parse a value (not NUL-terminated); 0 or MS_EINVAL. */
int ms_heartbeat_parse(const char *s, size_t len, struct ms_heartbeat_info *out);

typedef struct ms_heartbeat ms_heartbeat;
struct ms_counter;
/* Beat now and every MS_HEARTBEAT_MS on `loop` through `redis` (which must
 * outlive it).  node_id longer than MS_HEARTBEAT_FIELD_MAX is cut. */
ms_heartbeat *ms_heartbeat_start(uv_loop_t *loop, ms_redis *redis, const char *role,
                                 const char *node_id, struct ms_counter *errors);
/* Stop beating and delete the key (a node that leaves in order is gone at
 * once); frees itself once its timer has closed. */
void ms_heartbeat_stop(ms_heartbeat *h);

#endif
