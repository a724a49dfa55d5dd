/*
 * fe_ratelimit.h - rate limits and the suppression list in Redis.
 *
 * Every limit is a token bucket kept in a Redis hash and updated atomically
 * by one Lua script (MS_SCRIPT_BUCKET, shared with the worker: ms_bucket.h;
 * run by digest through ms_redis_script(), which loads it again when Redis
 * has forgotten it).  One call checks up to
 * FE_RL_BUCKETS_MAX buckets at once and, optionally, whether a "refusing"
 * key exists (the suppression list, worker/delivery.h: ms:suppress:<rcpt>,
 * lower-cased), so RCPT costs one round trip.
 *
 * Modes:
 *   FE_RL_TAKE    every bucket must hold `cost` tokens; then all are charged
 *   FE_RL_PEEK    every bucket must hold one token; nothing is charged
 *                 (AUTH: refuse before checking the password)
 *   FE_RL_CHARGE  charge all, never refuse (AUTH failures are recorded)
 * The script answers 0 (allowed), i >= 1 (bucket i, 1-based, is empty) or
 * -1 (the refusing key exists).
 *
 * The pure part (rate parsing, the script's arguments, reading the answer) is
 * unit-tested by tests/unit/test_fe_ratelimit.c; the Redis part runs against
 * a real Redis in tests/integration/test_frontend_limits.py.
 *
 * Threads: an fe_rl lives on one loop, with that loop's ms_redis.  Results
 * come back through the callback with the caller's 64-bit id (STYLE.md 7);
 * fe_rl_run() that returns an error never calls it.
 */
#ifndef FE_RATELIMIT_H
#define FE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ms_redis.h"

#define FE_RL_BUCKETS_MAX 4
#define FE_RL_KEY_MAX 400 /* prefix + kind + an address of up to 256 octets */

/* "N/S": N events per S seconds, a burst of N (S may end in s, m, h or d).
 * n == 0: no limit. */
struct fe_rate {
    uint32_t n;
    uint32_t secs;
};

/* "0", "" or "off": no limit.  0 or MS_EINVAL. */
int fe_rate_parse(const char *s, struct fe_rate *r);

enum fe_rl_mode { FE_RL_TAKE, FE_RL_PEEK, FE_RL_CHARGE };

struct fe_rl_check {
    enum fe_rl_mode mode;
    size_t n;                          /* buckets */
    char keys[FE_RL_BUCKETS_MAX + 2][FE_RL_KEY_MAX];
    struct fe_rate rates[FE_RL_BUCKETS_MAX];
    unsigned cost[FE_RL_BUCKETS_MAX];
    const char *names[FE_RL_BUCKETS_MAX]; /* for logs and metrics */
    int refuse;                        /* keys[n] is a refusing key */
    int member;                        /* the last key is a set that must hold member_value */
    char member_value[FE_RL_KEY_MAX];
};

/* Outcome of a check. */
#define FE_RL_OK 0
#define FE_RL_REFUSED (-1) /* the refusing key exists */
#define FE_RL_FAILED (-2)  /* Redis unreachable, an error reply, or a timeout */
#define FE_RL_UNKNOWN (-3) /* the required set does not hold the member */
/* > 0: that bucket (1-based) is over its limit. */

void fe_rl_check_init(struct fe_rl_check *c, enum fe_rl_mode mode);
/* Add a bucket `prefix kind value` (value lower-cased, like the worker's
 * suppression keys).  Ignored when the rate is off or the check is full. */
void fe_rl_add(struct fe_rl_check *c, const char *prefix, const char *kind, const char *value,
               struct fe_rate rate, unsigned cost, const char *name);
/* The refusing key, used verbatim after lower-casing `addr`. */
void fe_rl_refuse_key(struct fe_rl_check *c, const char *prefix, const char *addr);
/* Require set `prefix``domain` to hold `addr` (both lower-cased): the
 * recipient lists ([smtp] recipient_lists).  After any refusing key. */
void fe_rl_member(struct fe_rl_check *c, const char *prefix, const char *domain,
                  const char *addr);
/* 1 when there is anything to ask Redis. */
int fe_rl_check_needed(const struct fe_rl_check *c);

/* The script's arguments for a check: numkeys, keys, mode, n, then
 * capacity, period_ms and cost per bucket.  Fills argv/argvlen (at most
 * FE_RL_ARGV_MAX) with pointers into c and `scratch`; returns argc. */
#define FE_RL_ARGV_MAX (2 + FE_RL_BUCKETS_MAX + 2 + 2 + 3 * FE_RL_BUCKETS_MAX + 1)
struct fe_rl_scratch {
    char num[2 + 3 * FE_RL_BUCKETS_MAX][24];
};
int fe_rl_argv(const struct fe_rl_check *c, struct fe_rl_scratch *scratch, const char **argv,
               size_t *argvlen);
/* The outcome an integer reply means (FE_RL_FAILED for anything else). */
int fe_rl_result(const struct ms_redis_reply *r, size_t nbuckets);

/* ---- the Redis client side ---- */

typedef void (*fe_rl_cb)(void *arg, uint64_t id, int result);

struct fe_rl;
struct fe_rl *fe_rl_new(ms_redis *redis, fe_rl_cb cb, void *arg);
/* Run a check; the outcome comes to cb(arg, id, result).  0, or
 * MS_EUNAVAIL (Redis not connected: decide now, no callback). */
int fe_rl_run(struct fe_rl *rl, const struct fe_rl_check *c, uint64_t id);
void fe_rl_free(struct fe_rl *rl);

#endif
