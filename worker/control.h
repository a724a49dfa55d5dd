/*
 * control.h - the worker's side of the queue control (docs/operations.md):
 * what mailstream-ctl writes to Redis reaches every worker through here.
 *
 *   - The deferred-queue index: when the engine defers a message it calls
 *     wk_control_index() (the listing line MS_KEY_QUEUE_INFO and one sorted
 *     set per destination MS_KEY_RETRY_QUEUE_DEST, beside the global
 *     MS_KEY_RETRY_QUEUE the engine keeps); when the message is done,
 *     wk_control_forget() removes it again.
 *   - Suspended destinations (MS_KEY_SUSPEND) and the control generation
 *     (MS_KEY_CONTROL_GEN) are read every WK_CONTROL_POLL_MS; a suspension
 *     therefore reaches every worker within that time, and a change of the
 *     generation (a queue action) calls the engine's `changed` callback, so
 *     it looks again at the retry records it holds in memory.
 *   - Per-message actions (MS_KEY_CONTROL + queue id) are read by the
 *     engine itself with its other keys before each attempt (delivery.c).
 *
 * Names of destinations are the engine's (relay host, transport next hop
 * or recipient domain): wk_control_dest_of() computes one for an address
 * the way the engine groups recipients, so index and suspensions agree.
 *
 * Redis down: the index is written fire-and-forget (failures counted by
 * the caller's counter); the suspension list keeps its last known state
 * (a suspension that cannot be read is not lifted).  One loop thread.
 */
#ifndef WK_CONTROL_H
#define WK_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ms_envelope.h"
#include "ms_qctl.h"
#include "ms_redis.h"
#include "ms_route.h"
#include "outcome.h"

/* How often the suspensions and the control generation are read. */
#define WK_CONTROL_POLL_MS 1000
/* Destinations suspended at once that a worker keeps (more are ignored,
 * logged). */
#define WK_CONTROL_SUSPEND_MAX 1024
/* A held message goes back to the last retry tier and is looked at again
 * after this (release acts at once; this only bounds a missed change). */
#define WK_CONTROL_HOLD_RECHECK_MS (15 * 60 * 1000)

struct wk_control_conf {
    const ms_transport_map *transports; /* NULL: none */
    const char *relay;                  /* "" none */
    int64_t info_ttl_s;                 /* TTL of the listing line */
};

typedef struct wk_control wk_control;
struct ms_counter;

/* changed(arg) runs on the loop when a queue action was taken. */
wk_control *wk_control_new(uv_loop_t *loop, const struct wk_control_conf *conf,
                           void (*changed)(void *arg), void *arg, struct ms_counter *redis_errors);
/* Start polling r (NULL: nothing is read or written). */
void wk_control_attach(wk_control *c, ms_redis *r);
/* Stop polling (draining): closes its timer, so the loop must run once
 * more before wk_control_free().  Freed without a stop, the module closes
 * the timer and frees itself when the loop next runs. */
void wk_control_stop(wk_control *c);
void wk_control_free(wk_control *c);

/* The destination name of recipient addr into buf (size at least
 * MS_DNS_NAME_MAX + 1): the relay, the transport's next hop, or the domain. */
void wk_control_dest_of(const wk_control *c, const char *addr, char *buf, size_t len);

/* Is destination `name` suspended?  1 with *until_us (0: until resumed)
 * and its reason (pointing into the module, valid until the next poll). */
int wk_control_suspended(const wk_control *c, const char *name, int64_t *until_us,
                         const char **reason);

/* The message env is deferred (or held: `held`) with rcpts[i].state
 * PENDING still to do, next attempt at next_attempt_us (record: where in
 * Kafka the message can be read, "topic/partition/offset", or ""): write its listing
 * line and index it under each of its pending recipients' destinations,
 * and take it out of the destinations none of them has any more.  Each
 * sorted set it writes also loses its members older than info_ttl_s and
 * gets that TTL again, so a member whose message never came back (its
 * retry record lost) does not stay for ever. */
void wk_control_index(wk_control *c, const ms_envelope *env, const struct wk_rcpt *rcpts,
                      unsigned attempts, int tier, int64_t next_attempt_us, int held,
                      const char *record);
/* The message is done: out of every index, its listing line and its
 * control record gone. */
void wk_control_forget(wk_control *c, const ms_envelope *env);

/* The time of env's last attempt (0: never attempted), for
 * ms_qctl_retry_applies(). */
int64_t wk_control_last_attempt_us(const ms_envelope *env);

#endif
