/*
 * redis_batch_probe.c - sends commands through ms_redis from loop
 * iterations of their own and counts the writes that carried them, for
 * tests/integration/test_redis_batching.py ([redis] linger_ms,
 * lib/io/ms_redis.c).
 *
 *   redis_batch_probe PORT LINGER_MS N
 *
 * Once the client is ready: N PINGs, one per loop iteration (a uv_idle
 * handle), then waits for every reply.  Prints "pongs=K writes=W": K the
 * PINGs answered PONG, W this process's write calls from the first PING to
 * the last reply (/proc/self/io syscw; hiredis writes with write(2), and
 * nothing else here writes meanwhile).
 * Exit status: 0 every reply came, 1 usage, a refused command, a wrong
 * reply, or a reply missing after PROBE_DEADLINE_MS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "ms_redis.h"

#define PROBE_READY_POLL_MS 5
#define PROBE_DEADLINE_MS 10000

static ms_redis *client;
static uv_timer_t ready, deadline;
static uv_idle_t idle;
static int n_pings, sent, pongs;
static long long writes_before;

/* syscw of /proc/self/io, or -1. */
static long long write_calls(void)
{
    char line[128];
    long long v = -1;
    FILE *f = fopen("/proc/self/io", "r");

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "syscw: %lld", &v) == 1)
            break;
    fclose(f);
    return v;
}

static void finish(int rc)
{
    long long after = write_calls();

    uv_timer_stop(&ready);
    uv_timer_stop(&deadline);
    uv_idle_stop(&idle);
    if (rc == 0)
        printf("pongs=%d writes=%lld\n", pongs, after - writes_before);
    fflush(stdout);
    ms_redis_free(client);
    uv_close((uv_handle_t *)&ready, NULL);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_close((uv_handle_t *)&idle, NULL);
    if (rc != 0)
        exit(rc);
}

static void on_pong(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    (void)arg;
    (void)id;
    if (r->type != MS_REDIS_STR || r->len != 4 || memcmp(r->str, "PONG", 4) != 0) {
        fprintf(stderr, "redis_batch_probe: PING answered type %d\n", (int)r->type);
        finish(1);
        return;
    }
    if (++pongs == n_pings)
        finish(0);
}

static void ping_once(uv_idle_t *h)
{
    const char *argv[] = {"PING"};
    size_t argvlen[] = {4};

    if (ms_redis_command(client, on_pong, NULL, 0, 1, argv, argvlen) != 0) {
        fprintf(stderr, "redis_batch_probe: PING refused\n");
        finish(1);
        return;
    }
    if (++sent == n_pings)
        uv_idle_stop(h);
}

static void ready_tick(uv_timer_t *t)
{
    char why[256];

    if (!ms_redis_ready(client, why, sizeof(why)))
        return;
    uv_timer_stop(t);
    writes_before = write_calls();
    uv_idle_start(&idle, ping_once);
}

static void on_deadline(uv_timer_t *t)
{
    (void)t;
    fprintf(stderr, "redis_batch_probe: %d of %d PONGs\n", pongs, n_pings);
    finish(1);
}

int main(int argc, char **argv)
{
    struct ms_redis_conf conf = {.host = "127.0.0.1"};
    uv_loop_t loop;

    if (argc != 4 || (conf.port = atoi(argv[1])) <= 0 || (conf.linger_ms = atoi(argv[2])) < 0 ||
        conf.linger_ms > MS_REDIS_LINGER_MAX_MS || (n_pings = atoi(argv[3])) <= 0) {
        fprintf(stderr, "usage: redis_batch_probe PORT LINGER_MS N\n");
        return 1;
    }
    if (write_calls() < 0) {
        fprintf(stderr, "redis_batch_probe: no /proc/self/io\n");
        return 1;
    }
    uv_loop_init(&loop);
    client = ms_redis_new(&loop, &conf);
    uv_timer_init(&loop, &ready);
    uv_timer_init(&loop, &deadline);
    uv_idle_init(&loop, &idle);
    uv_timer_start(&ready, ready_tick, PROBE_READY_POLL_MS, PROBE_READY_POLL_MS);
    uv_timer_start(&deadline, on_deadline, PROBE_DEADLINE_MS, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 0;
}
