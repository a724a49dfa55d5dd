/*
 * ms_bucket.h - token buckets in Redis, shared by the frontend's rate limits
 * (frontend/fe_ratelimit.h) and the worker's per-destination message rate
 * (worker/delivery.h, [delivery] dest_rate).
 *
 * A bucket is a Redis hash {tok, ts}: `tok` tokens at time `ts` (ms, Redis's
 * own clock, so that nodes need not agree on the time), refilled at
 * capacity / period_ms per ms up to capacity.  One Lua script
 * (MS_SCRIPT_BUCKET, ms_script.h) checks and charges up to several buckets
 * atomically; callers run it with ms_redis_script(), which runs it by its
 * digest and loads it again when Redis has forgotten it.
 *
 * Script interface: KEYS[1..n] buckets, KEYS[n+1] (optional) a key whose
 * existence refuses, then (optional) a set that must hold ARGV[3n+3];
 * ARGV[1] the mode, ARGV[2] n, then capacity, period_ms and cost per
 * bucket, then (optional) that member.  Modes and answers:
 *   take    every bucket must hold `cost` tokens; then all are charged.
 *           0, or i >= 1: bucket i (1-based) is short (nothing charged)
 *   peek    every bucket must hold one token; nothing is charged.  0 or i
 *   charge  charge all, never refuse.  0
 *   wait    like take, but the answer to a short bucket is the number of
 *           milliseconds (>= 1) until every bucket will hold `cost` tokens
 *           (nothing charged); 0 when charged
 * and -1 in every mode when the refusing key exists, -2 when the set does
 * not hold the member (the frontend's recipient lists).
 *
 * The pure part here (the rate syntax of [delivery] dest_rate, the script's
 * arguments for a one-bucket "wait", reading its answer) is unit-tested by
 * tests/unit/test_ms_bucket.c; the script runs against a real Redis in
 * tests/integration/test_frontend_limits.py and test_worker_rate.py.
 * Any thread.
 */
#ifndef MS_BUCKET_H
#define MS_BUCKET_H

#include <stddef.h>
#include <stdint.h>

#include "ms_redis.h"

/* A message rate as [delivery] dest_rate gives it: messages per second, a
 * decimal number ("10", "0.5"); "0", "" or "off" is no limit.  It becomes a
 * bucket of capacity 1 refilled every period_ms: an even spacing of
 * 1/rate seconds, no bursts (Postfix's destination rate delay). */
struct ms_bucket_rate {
    uint32_t capacity;  /* 0: no limit */
    uint64_t period_ms; /* time to refill the whole capacity */
};
/* Rates above this many per second are refused (1 ms spacing). */
#define MS_BUCKET_RATE_MAX 1000
/* Rates below one per this many seconds are refused. */
#define MS_BUCKET_PERIOD_MAX_S 86400
/* 0 or MS_EINVAL (r is then "no limit"). */
int ms_bucket_rate_parse(const char *s, struct ms_bucket_rate *r);

/* The script's arguments for "wait" on one bucket `key` with cost 1 (for
 * ms_redis_script(MS_SCRIPT_BUCKET)): 1, key, "wait", 1, capacity,
 * period_ms, 1.  argv/argvlen point into key, scratch and static strings;
 * returns argc. */
#define MS_BUCKET_WAIT_ARGC 7
struct ms_bucket_scratch {
    char num[3][24];
};
int ms_bucket_wait_argv(const char *key, struct ms_bucket_rate rate, struct ms_bucket_scratch *sc,
                        const char **argv, size_t *argvlen);

/* The answer to a "wait": 0 (charged), > 0 (ms to wait), MS_EPROTO (an
 * error reply, a lost connection or anything unexpected). */
int64_t ms_bucket_wait_result(const struct ms_redis_reply *r);

#endif
