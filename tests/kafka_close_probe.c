/*
 * kafka_close_probe.c - closes an ms_consumer whose group assignment waits
 * unserved in its queue (used by tests/integration/test_worker_term_rebalance.py).
 *
 *   KAFKA_CLOSE_PROBE_DELAY_MS=D kafka_close_probe BROKERS GROUP TOPIC WAIT_MS
 *
 * The consumer is made on a loop that never runs, so its group's join and
 * sync finish in librdkafka's threads while the assignment waits in the
 * queue: a worker's later consumers are in that state when SIGTERM comes
 * during a rebalance (the loop is held by the earlier consumers' closes).
 * After WAIT_MS, ms_consumer_free().  Its close serves the assignment and
 * the revocation the close itself queued; D milliseconds are added after
 * each rd_kafka_incremental_assign() returns (tests/kafka_close_delay.c),
 * as a loaded machine may hold the thread there, so that the group has
 * ended before the revocation is served.  The log goes to stderr.
 * Exit status: 0 once the consumer is freed, 1 usage or error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <uv.h>

#include "ms_kafka.h"
#include "ms_log.h"

static void on_record(void *arg, struct ms_record *rec)
{
    (void)arg;
    (void)rec;
    fprintf(stderr, "kafka_close_probe: a record handed out from a loop that never ran\n");
    exit(1);
}

int main(int argc, char **argv)
{
    struct ms_kafka_conf kc = {0};
    struct timespec wait;
    uv_loop_t loop;
    ms_consumer *c;
    char err[256];
    long wait_ms;

    if (argc != 5) {
        fprintf(stderr, "usage: kafka_close_probe BROKERS GROUP TOPIC WAIT_MS\n");
        return 1;
    }
    wait_ms = strtol(argv[4], NULL, 10);
    ms_log_init("probe", MS_LOG_INFO);
    kc.brokers = argv[1];
    kc.client_id = "probe";
    uv_loop_init(&loop);
    c = ms_consumer_new(&loop, &kc, argv[2], argv[3], on_record, NULL, err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "kafka_close_probe: %s\n", err);
        return 1;
    }
    wait.tv_sec = wait_ms / 1000;
    wait.tv_nsec = (wait_ms % 1000) * 1000000L;
    nanosleep(&wait, NULL);
    ms_consumer_free(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    fprintf(stderr, "kafka_close_probe: freed\n");
    return 0;
}
