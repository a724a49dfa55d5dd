/*
 * fence.h - duplicate fencing: a message's delivery lease in Redis, taken
 * before an attempt and checked at the last moment before DATA, so that a
 * worker that lost the message to another (a rebalance, a SIGSTOP past the
 * group's session timeout, a partition from Redis or Kafka, plain
 * slowness) never sends it again.  docs/reliability.md ("Nothing twice")
 * has the reasoning; this module has the Redis side, delivery.c the
 * states.
 *
 * The lease: one hash per queue id (MS_KEY_FENCE, ms_keys.h), only ever
 * changed by the MS_SCRIPT_FENCE_* scripts (ms_script.h), which Redis runs
 * atomically on its own clock.  A holder names itself by a token unique to
 * the worker process, the message and the attempt, so equality of tokens
 * is the fence: a check passes only if nobody took the lease since.
 *
 *   take    before the attempt, in the round trip that reads the delivered
 *           markers (wk_fence_take: the markers' keys ride along).  Held by
 *           another holder and not lapsed: the attempt waits until it lapses.
 *           Lapsed with destinations of the previous holder past the DATA
 *           check and no outcome recorded: that holder may have delivered
 *           (it died or stalled after the "."): the redelivery is counted
 *           (mailstream_worker_duplicate_risk_total{kind="unavoidable"}).
 *   check   after the RCPT replies, before the message's first octet (the
 *           body of DATA, which may be pipelined ahead, or the first BDAT:
 *           smtp_client.h's gate): still ours -> lasts lease_ms more; the
 *           SMTP session may end the message until then (minus
 *           WK_FENCE_MARGIN_MS), never after.  Lost, or Redis unavailable,
 *           or no answer within WK_REDIS_TIMEOUT_MS: not one octet of it.
 *   renew   every lease_ms / 3 while the attempt runs (wk_fence_renew), so
 *           a live holder keeps its lease through a long transfer and a dead
 *           one loses it within lease_ms.
 *   done    the outcome of a destination that passed the check is recorded
 *           (its delivered markers written in the same script), and the
 *           lease given back when the attempt ends.
 *
 * Answers come back through the engine's ms_redis_cb with the engine's id
 * (STYLE.md 7); the parse functions turn them into numbers.  One loop
 * thread.  Errors: the send functions return MS_EUNAVAIL (no Redis, not
 * connected) or MS_EINVAL (too many keys for one script call).
 */
#ifndef WK_FENCE_H
#define WK_FENCE_H

#include <stddef.h>
#include <stdint.h>

#include "ms_redis.h"

/* Default of [delivery] fence_lease_ms, and its bounds: the time a holder
 * that stopped (killed, frozen, cut off) keeps others waiting, and the
 * renewal period (a third of it) of a live one. */
#define WK_FENCE_LEASE_MS 15000
#define WK_FENCE_LEASE_MIN_MS 3000
#define WK_FENCE_LEASE_MAX_MS (10 * 60 * 1000)
/* What a holder subtracts from the time the check granted: the reply's
 * transit and the clocks' rates (the grant is measured from when the check
 * was sent, so the holder's deadline is always before Redis's lapse). */
#define WK_FENCE_MARGIN_MS 1000
/* Most keys one script call carries (the lease and the keys read or
 * written with it); a message with more recipients reads its markers with
 * a separate MGET in the same round trip, and writes them with SETs. */
#define WK_FENCE_KEYS_MAX 48
/* While an attempt runs: how often renewals and unanswered checks are
 * looked at. */
#define WK_FENCE_TICK_MS 1000
/* A lease held by another holder is looked at again after this, then after
 * twice as long each time it is still held (wk_fence_held_wait_ms). */
#define WK_FENCE_HELD_POLL_MS 250
/* A holder's token: node id, process nonce, message id, round. */
#define WK_FENCE_TOKEN_MAX 160

/* Defaults of [delivery] delivered_ttl_s: how long a delivered marker (and
 * a lapsed lease) outlives the moment it was written.  A record can be
 * redelivered after its marker was written only until its offset is
 * committed: settling (events acknowledged, at most the producer's
 * message.timeout.ms, WK_FENCE_SETTLE_S) plus the commit interval, then,
 * had the worker died before the commit, the group's session timeout and
 * the rebalance; WK_FENCE_MARGIN_S covers a slow rebalance and a restart. */
#define WK_FENCE_SESSION_TIMEOUT_S 10
#define WK_FENCE_COMMIT_INTERVAL_S 1
#define WK_FENCE_SETTLE_S 300
#define WK_FENCE_MARGIN_S 3600
#define WK_DELIVERED_TTL_S                                                                     \
    (WK_FENCE_SETTLE_S + WK_FENCE_COMMIT_INTERVAL_S + WK_FENCE_SESSION_TIMEOUT_S +             \
     WK_FENCE_MARGIN_S)

struct wk_fence_conf {
    const char *node_id;
    uint64_t lease_ms;   /* 0: no fencing (markers only, at least once) */
    int64_t marker_ttl_s;
};

/* One message's lease, embedded in the engine's transaction. */
struct wk_fence_lease {
    char tok[WK_FENCE_TOKEN_MAX]; /* "" before the first take */
    int held;                     /* taken this round and not given back */
    int taking;                   /* a take sent and not answered yet */
    long long gen;                /* the fencing generation it was taken at */
    uint64_t renewed_ms;          /* uv_now of the last take, check or renewal sent */
    uint64_t until_ms;            /* uv_now until which it is surely ours; 0 unknown */
};

typedef struct wk_fence wk_fence;

wk_fence *wk_fence_new(const struct wk_fence_conf *conf);
void wk_fence_attach(wk_fence *f, ms_redis *r);
void wk_fence_free(wk_fence *f);
/* Fencing configured and a Redis client attached. */
int wk_fence_on(const wk_fence *f);
uint64_t wk_fence_lease_ms(const wk_fence *f);

/* A new token for the next round of message `msg_id` (the old one can
 * never match again). */
void wk_fence_new_round(wk_fence *f, struct wk_fence_lease *l, uint64_t msg_id);

/* Take the lease of `qid` and GET keys[0..nkeys) with it.  The answer:
 * wk_fence_parse_take. */
int wk_fence_take(wk_fence *f, struct wk_fence_lease *l, const char *qid, char *const *keys,
                  size_t nkeys, ms_redis_cb cb, void *arg, uint64_t id, uint64_t now_ms);
/* 1 taken: *prior as in MS_SCRIPT_FENCE_TAKE, *values the GETs' replies (an
 * array of nkeys); 0 held by another for *wait_ms more; -1 a failure (the
 * reply is not the script's).  Until the answer l->taking is set: a lease
 * given up meanwhile (wk_fence_done with release) is deleted if the take
 * got it, since Redis runs the two in the order they were sent. */
int wk_fence_parse_take(struct wk_fence_lease *l, const struct ms_redis_reply *r,
                        long long *prior, uint64_t *wait_ms, struct ms_redis_reply *values);

/* How long an attempt waits before it takes again a lease that another
 * holder has for `left_ms` more (wk_fence_parse_take's wait_ms), after
 * `rounds` earlier rounds that found it held: WK_FENCE_HELD_POLL_MS,
 * doubling each round, and never past the lapse (left_ms, capped at
 * lease_ms since a live holder renews by no more than that, plus a quarter
 * of WK_FENCE_MARGIN_MS).  A holder finishing a message whose partition
 * moved while it was in DATA gives the lease back within moments: waiting
 * out the whole lease would hold the message up to lease_ms for nothing,
 * while a dead holder's lease costs a few more takes. */
uint64_t wk_fence_held_wait_ms(uint64_t left_ms, uint64_t lease_ms, unsigned rounds);

/* The check before DATA (count_data 1) or a renewal (0). */
int wk_fence_check(wk_fence *f, struct wk_fence_lease *l, const char *qid, int count_data,
                   ms_redis_cb cb, void *arg, uint64_t id, uint64_t now_ms);
/* The deadline its answer grants (uv_now ms; sent_ms: when it was sent),
 * or 0: lost or failed. */
uint64_t wk_fence_parse_check(struct wk_fence_lease *l, const struct ms_redis_reply *r,
                              uint64_t sent_ms);

/* Outcomes recorded: SET the delivered markers keys[0..nkeys) to `value`
 * (TTL marker_ttl_s), one destination fewer in DATA (data_done), and give
 * the lease back (release; l->held is cleared).  Answered with an integer. */
int wk_fence_done(wk_fence *f, struct wk_fence_lease *l, const char *qid, char *const *keys,
                  size_t nkeys, const char *value, int data_done, int release, ms_redis_cb cb,
                  void *arg, uint64_t id);

/* Counted: recipients delivered again after a holder reached DATA without
 * a recorded outcome; destinations given up at the check. */
void wk_fence_count_unavoidable(wk_fence *f, size_t nrcpts);
void wk_fence_count_fenced(wk_fence *f, const char *why); /* "lost", "unavailable", "revoked" */
void wk_fence_count_wait(wk_fence *f);

#endif
