/*
 * ms_metrics.h - the process-wide metrics registry (Prometheus text format).
 *
 * Metrics are registered at start-up, or later from any thread (series
 * with a label learnt at run time: keep such label values bounded, see
 * ms_label_escape), and live until exit; the returned handles are never
 * freed.
 * Updates are lock-free C11 atomics and may come from any thread.  A metric
 * family is identified by name; each registration adds one series with a
 * fixed label set given as Prometheus label text, e.g. `result="accepted"`
 * (or NULL / "" for none).  Registering the same name and labels twice
 * returns the same handle.
 */
#ifndef MS_METRICS_H
#define MS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"

typedef struct ms_counter ms_counter;
typedef struct ms_gauge ms_gauge;
typedef struct ms_histogram ms_histogram;

ms_counter *ms_counter_new(const char *name, const char *help, const char *labels);
void ms_counter_add(ms_counter *c, uint64_t n);
#define ms_counter_inc(c) ms_counter_add((c), 1)
uint64_t ms_counter_value(const ms_counter *c);

ms_gauge *ms_gauge_new(const char *name, const char *help, const char *labels);
void ms_gauge_set(ms_gauge *g, int64_t v);
void ms_gauge_add(ms_gauge *g, int64_t delta);
int64_t ms_gauge_value(const ms_gauge *g);

/* `bounds` are the upper bounds of the buckets, finite and strictly
 * ascending (at most MS_HISTOGRAM_BUCKETS_MAX; anything else panics); +Inf
 * is implicit.  Observations are doubles in the metric's base unit (seconds,
 * bytes).  Bounds (the `le` label) and sums are rendered so that they read
 * back as the same double: integers as integers (`le="1048576"`), others
 * with the fewest digits that round-trip (`le="0.0025"`). */
#define MS_HISTOGRAM_BUCKETS_MAX 24
ms_histogram *ms_histogram_new(const char *name, const char *help, const char *labels,
                               const double *bounds, size_t nbounds);
void ms_histogram_observe(ms_histogram *h, double v);
/* Latency buckets in seconds, 1 ms .. 60 s, for histograms of durations. */
extern const double ms_latency_buckets[];
extern const size_t ms_latency_buckets_n;

/* Write `value` as the inside of a Prometheus label value (backslash,
 * double quote and newline escaped; truncated to fit, NUL-terminated). */
void ms_label_escape(char *out, size_t outlen, const char *value);

/* Append the whole registry in Prometheus text exposition format 0.0.4. */
int ms_metrics_render(struct ms_buf *out);

#endif
