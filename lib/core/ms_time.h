/*
 * ms_time.h - the wall clock, read one way by every module.
 *
 * Wall-clock time (gettimeofday), for what is stored or sent: envelope and
 * event times, Redis scores and expiries shared by the cluster.  Durations
 * on one loop use the loop's monotonic clock (uv_now, uv_hrtime) instead.
 * Pure apart from reading the clock; any thread.
 */
#ifndef MS_TIME_H
#define MS_TIME_H

#include <stdint.h>

/* Microseconds since the Unix epoch. */
int64_t ms_time_now_us(void);

#endif
