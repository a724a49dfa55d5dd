/*
 * retry.h - when to try a deferred message again, pure.
 *
 * Exponential backoff with "equal jitter": the n-th retry waits a random time
 * between half and all of min(max, min * 2^(n-1)), so workers that failed
 * together do not retry together.  Any thread.
 *
 * Deferred messages are re-produced to retry tier topics (delivery.h): the
 * n-th retry waits wk_backoff_ms(n) in tier min(n, tiers), so the records of
 * one tier (but the last) wait about alike and a tier is consumed roughly in
 * due order.
 */
#ifndef WK_RETRY_H
#define WK_RETRY_H

#include <stdint.h>

/* Defaults of [delivery] retry_min_ms / retry_max_ms and [retry] tiers:
 * 5, 10, 20, 40, 80, 160 minutes (tiers 1-6), then 4 hours (in tier 6), each
 * with equal jitter, until [retry] max_age_s. */
#define WK_RETRY_MIN_MS (5 * 60 * 1000)
#define WK_RETRY_MAX_MS (4 * 3600 * 1000)
#define WK_RETRY_TIERS_DEFAULT 6

/* Delay before retry number `attempt` (1 = first retry), from `rnd` (any
 * uniformly random 32-bit value).  Never more than max_ms, never 0. */
uint64_t wk_backoff_ms(unsigned attempt, uint64_t min_ms, uint64_t max_ms, uint32_t rnd);

#endif
