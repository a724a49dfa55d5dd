/*
 * retry.h - when to try a deferred message again, pure.
 *
 * Exponential backoff with "equal jitter": the n-th retry waits a random time
 * between half and all of min(max, min * 2^(n-1)), so workers that failed
 * together do not retry together.  Any thread.
 *
 * XXX: the tracer keeps deferred messages in memory (in flight, offsets not
 * stored).  Redis-based retry scheduling replaces this; the delay function
 * stays.
 */
#ifndef WK_RETRY_H
#define WK_RETRY_H

#include <stdint.h>

/* Defaults of [delivery] retry_min_ms / retry_max_ms. */
#define WK_RETRY_MIN_MS 1000
#define WK_RETRY_MAX_MS (5 * 60 * 1000)

/* Delay before retry number `attempt` (1 = first retry), from `rnd` (any
 * uniformly random 32-bit value).  Never more than max_ms, never 0. */
uint64_t wk_backoff_ms(unsigned attempt, uint64_t min_ms, uint64_t max_ms, uint32_t rnd);

#endif
