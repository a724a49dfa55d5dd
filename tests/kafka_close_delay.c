/*
 * kafka_close_delay.c - part of tests/kafka_close_probe: holds the calling
 * thread KAFKA_CLOSE_PROBE_DELAY_MS milliseconds (default 0) after each
 * rd_kafka_incremental_assign() returns, as a loaded machine may.  This
 * definition wraps the library's: the calls of ms_kafka.o, linked into the
 * probe statically, bind to it.  (A file of its own: the checker of module
 * cycles sees ms_kafka use this symbol, and the probe's main uses ms_kafka.)
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

typedef rd_kafka_error_t *(*incr_assign_fn)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *);

rd_kafka_error_t *rd_kafka_incremental_assign(rd_kafka_t *rk,
                                              const rd_kafka_topic_partition_list_t *parts)
{
    static incr_assign_fn real;
    const char *env = getenv("KAFKA_CLOSE_PROBE_DELAY_MS");
    long ms = env ? strtol(env, NULL, 10) : 0;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    rd_kafka_error_t *e;

    if (real == NULL) {
        *(void **)&real = dlsym(RTLD_NEXT, "rd_kafka_incremental_assign");
        if (real == NULL) {
            fprintf(stderr, "kafka_close_probe: no rd_kafka_incremental_assign\n");
            exit(1);
        }
    }
    e = real(rk, parts);
    if (ms > 0)
        nanosleep(&ts, NULL);
    return e;
}
