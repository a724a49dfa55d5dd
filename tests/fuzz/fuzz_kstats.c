/*
 * libFuzzer target: consumer lag from librdkafka's statistics JSON
 * (lib/io/ms_kstats.h) on arbitrary bytes.  The seeds are real captures
 * from librdkafka 2.0.2.  Every reported lag must be >= 0 and every
 * partition id >= 0: anything else would reach a Prometheus gauge.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ms_kstats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_kafka_lag lags[16];
    long n = ms_kstats_lag((const char *)data, size, "queue", lags, 16);
    long i;

    for (i = 0; i < n && i < 16; i++)
        if (lags[i].lag < 0 || lags[i].partition < 0)
            abort();
    return 0;
}
