/*
 * ms_kstats.h - consumer lag from librdkafka's statistics JSON: a pure
 * parser (bytes in, numbers out; no Kafka, no I/O), so that it is unit-tested
 * and fuzzed alone.  The only file that includes jansson is ms_kstats.c.
 *
 * librdkafka emits the statistics every `statistics.interval.ms`
 * (STATISTICS.md in librdkafka): topics -> <name> -> partitions -> <id>
 * with, per partition, `desired` (the application has it assigned),
 * `hi_offset` (the high watermark, from the last fetch), `lo_offset`, and
 * the consumer's `stored_offset` and `committed_offset` (-1: none yet).
 *
 * The lag of a partition is hi_offset minus the first offset not yet done:
 * the stored offset when there is one (records done since the last commit
 * count as done), else the committed one, else lo_offset (a new group
 * starts from the earliest record).  Only partitions with desired = true and
 * an id >= 0 are reported (-1 is librdkafka's internal "unassigned"
 * partition); one without a known hi_offset is skipped.  A negative
 * difference (a watermark older than the stored offset) is 0.
 *
 * Threads: any; no state.
 */
#ifndef MS_KSTATS_H
#define MS_KSTATS_H

#include <stddef.h>
#include <stdint.h>

/* Partitions of one topic reported at most (beyond it the rest are left
 * out and the count says so); a topic of ours has far fewer. */
#define MS_KSTATS_PARTITIONS_MAX 1024

struct ms_kafka_lag {
    int32_t partition;
    int64_t lag;
};

/* Called by the consumer with the lag of each partition of its topic that
 * it is assigned (ms_kafka.h).  lags is valid during the call only. */
typedef void (*ms_lag_cb)(void *arg, const char *topic, const struct ms_kafka_lag *lags,
                          size_t n);

/* Parse `json` (len octets, no NUL needed) and fill out[0..max) with the
 * lag of topic's assigned partitions, in the order the JSON lists them.
 * Returns the number found (which may exceed max: only max are written),
 * or -1 when json is not a JSON object.  A topic absent from the statistics
 * is 0 partitions. */
long ms_kstats_lag(const char *json, size_t len, const char *topic, struct ms_kafka_lag *out,
                   size_t max);

#endif
