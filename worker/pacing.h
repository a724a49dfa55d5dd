/*
 * pacing.h - when the delivery engine may connect to a destination: its
 * turn under [delivery] dest_rate and a connection lease under [delivery]
 * dest_concurrency, both cluster-wide through Redis.
 *
 * Limits come with each request (struct wk_pace_limits): the engine takes
 * them from the destination's group and its backoff (shaper.h), so they
 * may differ from one request to the next; <name> is the group's key.
 *
 * Rate: a token bucket per destination (ms:rate:<name>, ms_bucket.h),
 * capacity one, refilled every 1/rate seconds: one message per destination
 * and period, cluster-wide, evenly spaced (what Postfix's
 * default_destination_rate_delay does on one host).  A destination whose
 * turn has not come waits in memory for the time the bucket names and asks
 * again; only when its waits would pass dest_rate_max_wait_ms (or the worker
 * drains) is it told to defer, so a slow destination cannot hold every
 * in-flight slot.  The turn comes before the lease, so a waiting
 * destination holds no lease.
 *
 * Leases: a sorted set per destination (ms:lease:<name>) holds one member
 * per connection, scored by when it lapses: a worker that dies leaves
 * leases that expire by themselves after WK_LEASE_TTL_MS.  Taken atomically
 * by MS_SCRIPT_LEASE (ms_script.h); scores are the workers' clocks (XXX:
 * assumes clocks agree to well within the TTL).  A lease is held across the
 * destination's addresses until wk_pacing_release().
 *
 * Redis unavailable, an error or no answer within WK_REDIS_TIMEOUT_MS: go
 * anyway (fail-open: at least once beats never), counted.
 *
 * Answering by id (STYLE.md 7): the engine names each destination by a
 * 64-bit id it never reuses while the destination lives; the answer comes
 * back through the callback with that id, and an id the engine released is
 * simply forgotten.  The module owns its waits (timers, Redis cookies); the
 * engine owns nothing of it but the ids.
 *
 * One loop thread: create, use and free on the engine's loop.
 */
#ifndef WK_PACING_H
#define WK_PACING_H

#include <stdint.h>
#include <uv.h>

#include "ms_bucket.h"
#include "ms_redis.h"

/* A Redis command not answered in this time is treated as failed. */
#define WK_REDIS_TIMEOUT_MS 5000
/* Connection leases: how long one lives unless released, and how soon a
 * destination whose leases are all taken asks again. */
#define WK_LEASE_TTL_MS (10 * 60 * 1000)
#define WK_LEASE_RETRY_MS 250

enum wk_pace_answer {
    WK_PACE_GO,   /* connect now (its turn came, a lease is held or not needed) */
    WK_PACE_DEFER /* waited too long for its turn, or draining: defer (4.4.5) */
};

/* The answer for destination `id`.  With WK_PACE_DEFER, waited_ms is how
 * long it waited for its turn and next_turn_ms how much longer it would
 * have (0 when draining); the id is forgotten before the call. */
typedef void (*wk_pacing_cb)(void *arg, uint64_t id, enum wk_pace_answer a, uint64_t waited_ms,
                             int64_t next_turn_ms);

struct wk_pacing_conf {
    const char *node_id; /* in lease members: "<node>:<id>" */
    uint64_t dest_rate_max_wait_ms;
};

/* One destination's limits, as the request names them. */
struct wk_pace_limits {
    int connections;            /* cluster-wide connections; 0: no leases */
    struct ms_bucket_rate rate; /* capacity 0: no rate */
};

typedef struct wk_pacing wk_pacing;

/* The strings in conf must outlive the module. */
wk_pacing *wk_pacing_new(uv_loop_t *loop, const struct wk_pacing_conf *conf, wk_pacing_cb cb,
                         void *arg);
/* The Redis client, once it exists (NULL: nothing is paced, counted). */
void wk_pacing_attach(wk_pacing *p, ms_redis *r);
/* May destination `id`, named `name` (its group's key, shaper.h), connect
 * under limits `lim`?  1: yes, now (no callback); 0: the answer comes
 * later through the callback.  Called again for the next address of the
 * same destination, it answers 1 at once (the turn and lease are kept;
 * the limits of the first call stay).  log_id (the queue id) goes into log
 * lines; both strings are copied. */
int wk_pacing_acquire(wk_pacing *p, uint64_t id, const char *name, const struct wk_pace_limits *lim,
                      const char *log_id);
/* Forget `id`: give its lease back and drop any wait (no callback). */
void wk_pacing_release(wk_pacing *p, uint64_t id);
/* Shutdown: no new waits for a turn; destinations sleeping until their turn
 * are told to defer now (callbacks run before this returns). */
void wk_pacing_drain(wk_pacing *p);
/* Free; every id must be released. */
void wk_pacing_free(wk_pacing *p);

#endif
