/*
 * retry.c - backoff delays (retry.h).
 */
#include "retry.h"

uint64_t wk_backoff_ms(unsigned attempt, uint64_t min_ms, uint64_t max_ms, uint32_t rnd)
{
    uint64_t d = min_ms > 0 ? min_ms : 1, half;
    unsigned i;

    if (max_ms < d)
        max_ms = d;
    /* Double without overflowing: stop as soon as the cap is reached. */
    for (i = 1; i < attempt && d < max_ms; i++)
        d = d > max_ms / 2 ? max_ms : d * 2;
    if (d > max_ms)
        d = max_ms;
    half = d / 2;
    return d - half + (half > 0 ? (uint64_t)rnd % (half + 1) : 0);
}
