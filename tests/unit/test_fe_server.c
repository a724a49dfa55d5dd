/*
 * test_fe_server.c - how one loop's records leave (frontend/fe_server.h):
 * straight to `submit` without group commit; held and handed to `submit`
 * together with it, after the loop's I/O, in order; one batch in flight at
 * a time; a record that fails to go reported through the commit's
 * callback; what is held flushed when the loop finishes; a record's buffer
 * kept, read where it lies, until its report, freed at once when it cannot
 * go.  The bookkeeping alone is test_fe_commit.c; real Kafka is in
 * tests/integration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ms_error.h"
#include "ms_log.h"
#include "../../frontend/fe_server.h"

#define MAX_SEEN 16

/* What the fake producer and the report callback saw. */
struct seen {
    int fail_id; /* submit refuses this id with MS_EAGAIN */
    size_t nsubmit, nreports, nreported; /* nreported: fe_server_reported calls made */
    const void *values[MAX_SEEN];
    uint64_t ids[MAX_SEEN];
    char keys[MAX_SEEN][8];
    uint64_t report_ids[MAX_SEEN];
    int report_errs[MAX_SEEN];
};

static struct seen seen;
static struct fe_metrics metrics;

static int fake_submit(void *arg, uint64_t id, const char *key, size_t keylen, const void *value,
                       size_t len)
{
    (void)arg;
    if ((int)id == seen.fail_id)
        return MS_EAGAIN; /* no report will come */
    assert_true(seen.nsubmit < MAX_SEEN);
    assert_int_equal(len, 16);
    assert_int_equal(((const uint8_t *)value)[0], 'r'); /* the record, where it lies */
    snprintf(seen.keys[seen.nsubmit], sizeof(seen.keys[0]), "%.*s", (int)keylen, key);
    seen.values[seen.nsubmit] = value;
    seen.ids[seen.nsubmit++] = id;
    return 0;
}

static void report(void *arg, uint64_t id, int err, const char *errstr)
{
    (void)errstr;
    assert_non_null(arg);
    seen.report_ids[seen.nreports] = id;
    seen.report_errs[seen.nreports++] = err;
}

/* A record of 16 octets 'r' after OFF octets 'h' of something else. */
#define OFF 5
static uint8_t *record(void)
{
    uint8_t *b = malloc(OFF + 16);

    assert_non_null(b);
    memset(b, 'h', OFF);
    memset(b + OFF, 'r', 16);
    return b;
}

struct fixture {
    uv_loop_t loop;
    struct fe_server srv;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    memset(&seen, 0, sizeof(seen));
    uv_loop_init(&f->loop);
    fe_server_init(&f->srv, &f->loop);
    f->srv.set.kafka_linger_ms = 50;
    f->srv.set.group_commit_window_us = 600;
    f->srv.submit = fake_submit;
    f->srv.submit_arg = &f->srv;
    f->srv.m = metrics;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    fe_server_commit_stop(&f->srv);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    fe_server_free(&f->srv);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* Without group commit every record goes at once, through `submit`. */
static void test_direct(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(fe_server_submit(&f->srv, 1, "K1", 2, record(), OFF, 16), 0);
    assert_int_equal(fe_server_submit(&f->srv, 2, "K2", 2, record(), OFF, 16), 0);
    assert_int_equal(seen.nsubmit, 2);
    assert_int_equal(seen.ids[1], 2);
    assert_string_equal(seen.keys[0], "K1");
}

/* A record's buffer is the server's until its report: the producer reads
 * the record where it lies (after OFF octets), the buffer is kept until the
 * report (a duplicate or unknown report frees nothing), freed at once when
 * the record cannot go, and what is never reported freed with the server
 * (the ASan build checks each: a leak, a use after free, a double free). */
static void test_buffer_until_report(void **state)
{
    struct fixture *f = *state;
    uint8_t *b1 = record();

    assert_int_equal(fe_server_submit(&f->srv, 1, "K1", 2, b1, OFF, 16), 0);
    assert_ptr_equal(seen.values[0], b1 + OFF);
    assert_int_equal(f->srv.sent.count, 1);
    seen.fail_id = 2;
    assert_int_equal(fe_server_submit(&f->srv, 2, "K2", 2, record(), OFF, 16), MS_EAGAIN);
    assert_int_equal(f->srv.sent.count, 1); /* freed, not kept */
    assert_int_equal(fe_server_submit(&f->srv, 3, "K3", 2, record(), OFF, 16), 0);
    assert_int_equal(f->srv.sent.count, 2);
    fe_server_reported(&f->srv, 1);
    assert_int_equal(f->srv.sent.count, 1);
    fe_server_reported(&f->srv, 1); /* a duplicate */
    fe_server_reported(&f->srv, 2); /* never sent */
    assert_int_equal(f->srv.sent.count, 1);
    /* Record 3 is never reported: teardown's fe_server_free frees it. */
}

/* Records submitted during one loop iteration leave together after its
 * I/O (nobody else about to hand one over), in order, counted as one
 * "ready" batch. */
static void test_batch_after_io(void **state)
{
    struct fixture *f = *state;
    uint64_t batches = ms_counter_value(metrics.commits[FE_COMMIT_READY]),
             records = ms_counter_value(metrics.commit_records);

    fe_server_commit_start(&f->srv, report);
    assert_int_equal(fe_server_submit(&f->srv, 1, "K1", 2, record(), OFF, 16), 0);
    assert_int_equal(fe_server_submit(&f->srv, 2, "K2", 2, record(), OFF, 16), 0);
    assert_int_equal(fe_server_submit(&f->srv, 3, "K3", 2, record(), OFF, 16), 0);
    assert_int_equal(seen.nsubmit, 0); /* held */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(seen.nsubmit, 3);
    assert_int_equal(seen.ids[0], 1);
    assert_int_equal(seen.ids[2], 3);
    assert_string_equal(seen.keys[1], "K2");
    assert_int_equal(ms_counter_value(metrics.commits[FE_COMMIT_READY]) - batches, 1);
    assert_int_equal(ms_counter_value(metrics.commit_records) - records, 3);
    assert_int_equal(seen.nreports, 0);
}

/* While a batch waits for its reports the next one gathers; the last
 * report lets it go. */
static void test_one_batch_in_flight(void **state)
{
    struct fixture *f = *state;

    fe_server_commit_start(&f->srv, report);
    fe_server_submit(&f->srv, 1, "K1", 2, record(), OFF, 16);
    fe_server_submit(&f->srv, 2, "K2", 2, record(), OFF, 16);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(seen.nsubmit, 2);
    fe_server_submit(&f->srv, 3, "K3", 2, record(), OFF, 16);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(seen.nsubmit, 2); /* two in flight: record 3 waits */
    fe_server_reported(&f->srv, seen.ids[seen.nreported++]);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(seen.nsubmit, 2); /* one still in flight */
    fe_server_reported(&f->srv, seen.ids[seen.nreported++]);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(seen.nsubmit, 3);
    assert_int_equal(seen.ids[2], 3);
}

/* A held record the producer refuses comes back as a report, after the
 * rest of its batch went, and its buffer is freed (the ASan build checks). */
static void test_failure_reported(void **state)
{
    struct fixture *f = *state;

    fe_server_commit_start(&f->srv, report);
    seen.fail_id = 2;
    fe_server_submit(&f->srv, 1, "K1", 2, record(), OFF, 16);
    fe_server_submit(&f->srv, 2, "K2", 2, record(), OFF, 16);
    fe_server_submit(&f->srv, 3, "K3", 2, record(), OFF, 16);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(seen.nsubmit, 2);
    assert_int_equal(seen.ids[1], 3);
    assert_int_equal(seen.nreports, 1);
    assert_int_equal(seen.report_ids[0], 2);
    assert_int_equal(seen.report_errs[0], MS_EAGAIN);
}

/* The loop finishing hands over what is still held, as a "flush". */
static void test_stop_flushes(void **state)
{
    struct fixture *f = *state;
    uint64_t flushes = ms_counter_value(metrics.commits[FE_COMMIT_FLUSH]);

    fe_server_commit_start(&f->srv, report);
    fe_server_submit(&f->srv, 1, "K1", 2, record(), OFF, 16);
    fe_server_commit_stop(&f->srv);
    assert_int_equal(seen.nsubmit, 1);
    assert_int_equal(ms_counter_value(metrics.commits[FE_COMMIT_FLUSH]) - flushes, 1);
    /* After the stop, records go straight to `submit` again. */
    fe_server_submit(&f->srv, 2, "K2", 2, record(), OFF, 16);
    assert_int_equal(seen.nsubmit, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_buffer_until_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_after_io, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_batch_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_flushes, setup, teardown),
    };

    ms_log_init("test", MS_LOG_WARN);
    fe_metrics_register(&metrics);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
