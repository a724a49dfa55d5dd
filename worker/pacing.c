/*
 * pacing.c - destination rate and connection leases (pacing.h).
 *
 * One `struct pace` per destination that asked, found by its id in an id
 * map; it owns the timer that is either the wait for the next turn, the
 * wait before asking for a lease again, or the guard on a Redis reply
 * (waiting_reply).  Redis replies come back with the id and are dropped
 * when the id is gone or no longer waits for them.
 */
#include "pacing.h"
#include "ms_idmap.h"
#include "ms_dns.h"
#include "ms_keys.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pace_state { PACE_IDLE, PACE_RATE, PACE_LEASE };

struct pace {
    uv_timer_t t; /* first member: the close callback frees the pace */
    wk_pacing *p;
    uint64_t id;
    struct ms_list link; /* on wk_pacing.all */
    enum pace_state state;
    int waiting_reply;       /* the script is out (the timer is its guard) */
    int rated;               /* its turn came (or dest_rate is off, or failed open) */
    int leased;              /* holds a lease in ms:lease:<name> */
    uint64_t rate_waited_ms; /* waited for its turn so far */
    struct wk_pace_limits lim;
    char name[MS_DNS_NAME_MAX + 1];
    char log_id[64];
    char rate_key[MS_DNS_NAME_MAX + 32];
    char lease_key[MS_DNS_NAME_MAX + 32];
    char lease_member[64];
};

struct wk_pacing {
    uv_loop_t *loop;
    struct wk_pacing_conf conf;
    wk_pacing_cb cb;
    void *arg;
    ms_redis *redis;
    struct ms_idmap paces; /* id -> struct pace */
    struct ms_list all;    /* every pace, for the drain */
    int draining;
    ms_counter *m_redis_errors, *m_lease_waits, *m_rate_waits, *m_rate_deferred, *m_rate_unchecked;
};

static int64_t now_ms(void)
{
    return ms_time_now_us() / 1000;
}

static void pace_closed(uv_handle_t *h)
{
    free(h);
}

/* Forget e (its timer is closed; the memory goes in the close callback). */
static void pace_forget(wk_pacing *p, struct pace *e)
{
    ms_idmap_del(&p->paces, e->id);
    ms_list_remove(&e->link);
    uv_close((uv_handle_t *)&e->t, pace_closed);
}

static void redis_failed(wk_pacing *p, const struct pace *e, const char *what,
                         const struct ms_redis_reply *r)
{
    ms_warn("event=redis_failed qid=%s command=%s error=\"%.*s\"", e->log_id, what,
            r && r->str ? (int)r->len : 0, r && r->str ? r->str : "");
    ms_counter_inc(p->m_redis_errors);
}

static void pace_timer_cb(uv_timer_t *t);
static void on_rate(void *arg, uint64_t id, const struct ms_redis_reply *r);
static void on_lease(void *arg, uint64_t id, const struct ms_redis_reply *r);

static int lease_request(wk_pacing *p, struct pace *e)
{
    char now[24], ttl[24], max[24];
    const char *argv[6];
    size_t argvlen[6];
    int k;

    snprintf(now, sizeof(now), "%lld", (long long)now_ms());
    snprintf(ttl, sizeof(ttl), "%d", WK_LEASE_TTL_MS);
    snprintf(max, sizeof(max), "%d", e->lim.connections);
    argv[0] = "1";
    argv[1] = e->lease_key;
    argv[2] = now;
    argv[3] = ttl;
    argv[4] = max;
    argv[5] = e->lease_member;
    for (k = 0; k < 6; k++)
        argvlen[k] = strlen(argv[k]);
    e->state = PACE_LEASE;
    if (ms_redis_script(p->redis, MS_SCRIPT_LEASE, on_lease, p, e->id, 6, argv, argvlen) < 0) {
        redis_failed(p, e, "EVALSHA lease", NULL);
        e->state = PACE_IDLE;
        return 1; /* without a lease */
    }
    e->waiting_reply = 1;
    uv_timer_start(&e->t, pace_timer_cb, WK_REDIS_TIMEOUT_MS, 0);
    return 0;
}

static int pace_step(wk_pacing *p, struct pace *e);

/* The rate could not be checked: go on as if its turn had come. */
static int rate_fail_open(wk_pacing *p, struct pace *e, const struct ms_redis_reply *r)
{
    redis_failed(p, e, "EVALSHA dest_rate", r);
    ms_counter_inc(p->m_rate_unchecked);
    e->rated = 1;
    return pace_step(p, e);
}

static int rate_request(wk_pacing *p, struct pace *e)
{
    struct ms_bucket_scratch sc;
    const char *argv[MS_BUCKET_WAIT_ARGC];
    size_t argvlen[MS_BUCKET_WAIT_ARGC];
    int argc;

    argc = ms_bucket_wait_argv(e->rate_key, e->lim.rate, &sc, argv, argvlen);
    e->state = PACE_RATE;
    if (ms_redis_script(p->redis, MS_SCRIPT_BUCKET, on_rate, p, e->id, argc, argv, argvlen) < 0)
        return rate_fail_open(p, e, NULL);
    e->waiting_reply = 1;
    uv_timer_start(&e->t, pace_timer_cb, WK_REDIS_TIMEOUT_MS, 0);
    return 0;
}

/* The next step for e: first its turn when dest_rate is on, then a lease
 * when dest_concurrency is.  1: it may go now; 0: a request is out. */
static int pace_step(wk_pacing *p, struct pace *e)
{
    if (e->lim.rate.capacity > 0 && !e->rated) {
        if (p->redis == NULL) {
            ms_counter_inc(p->m_rate_unchecked);
            e->rated = 1;
        } else {
            return rate_request(p, e);
        }
    }
    e->state = PACE_IDLE;
    if (e->lim.connections <= 0 || p->redis == NULL || e->leased)
        return 1;
    return lease_request(p, e);
}

/* Continue after an answer or a timer: tell the engine when e may go. */
static void pace_continue(wk_pacing *p, struct pace *e)
{
    if (pace_step(p, e))
        p->cb(p->arg, e->id, WK_PACE_GO, 0, 0);
}

/* Waited too long for its turn (or draining): forget it and say defer. */
static void pace_defer(wk_pacing *p, struct pace *e, int64_t next_turn_ms)
{
    uint64_t id = e->id, waited = e->rate_waited_ms;

    ms_counter_inc(p->m_rate_deferred);
    pace_forget(p, e); /* holds no lease: the turn comes before it */
    p->cb(p->arg, id, WK_PACE_DEFER, waited, next_turn_ms);
}

static void on_rate(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    wk_pacing *p = arg;
    struct pace *e = ms_idmap_get(&p->paces, id);
    int64_t wait;

    if (e == NULL || e->state != PACE_RATE || !e->waiting_reply)
        return;
    e->waiting_reply = 0;
    uv_timer_stop(&e->t);
    wait = ms_bucket_wait_result(r);
    if (wait < 0) {
        if (rate_fail_open(p, e, r))
            p->cb(p->arg, id, WK_PACE_GO, 0, 0);
        return;
    }
    if (wait == 0) {
        if (e->rate_waited_ms > 0)
            ms_debug("event=dest_rate_turn qid=%s dest=%s waited_ms=%llu", e->log_id, e->name,
                     (unsigned long long)e->rate_waited_ms);
        e->rated = 1;
        pace_continue(p, e);
        return;
    }
    if (e->rate_waited_ms == 0)
        ms_counter_inc(p->m_rate_waits);
    /* Draining (SIGTERM): no new waits; the retry record keeps the mail. */
    if (p->draining || e->rate_waited_ms + (uint64_t)wait > p->conf.dest_rate_max_wait_ms) {
        pace_defer(p, e, wait);
        return;
    }
    e->rate_waited_ms += (uint64_t)wait;
    uv_timer_start(&e->t, pace_timer_cb, (uint64_t)wait, 0);
}

static void on_lease(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    wk_pacing *p = arg;
    struct pace *e = ms_idmap_get(&p->paces, id);

    if (e == NULL || e->state != PACE_LEASE || !e->waiting_reply)
        return;
    e->waiting_reply = 0;
    uv_timer_stop(&e->t);
    if (r->type == MS_REDIS_INT && r->integer == 1) {
        e->leased = 1;
    } else if (r->type == MS_REDIS_INT) {
        /* Every lease is taken: ask again a little later. */
        ms_counter_inc(p->m_lease_waits);
        uv_timer_start(&e->t, pace_timer_cb, WK_LEASE_RETRY_MS, 0);
        return;
    } else {
        redis_failed(p, e, "EVALSHA lease", r);
    }
    e->state = PACE_IDLE;
    p->cb(p->arg, id, WK_PACE_GO, 0, 0);
}

static void pace_timer_cb(uv_timer_t *t)
{
    struct pace *e = (struct pace *)t;
    wk_pacing *p = e->p;

    if (e->state == PACE_RATE) {
        if (e->waiting_reply) {
            /* Redis did not answer in time: go without the check. */
            e->waiting_reply = 0;
            if (rate_fail_open(p, e, NULL))
                p->cb(p->arg, e->id, WK_PACE_GO, 0, 0);
            return;
        }
        if (rate_request(p, e) == 1) /* its turn should have come: ask again */
            p->cb(p->arg, e->id, WK_PACE_GO, 0, 0);
        return;
    }
    if (e->state != PACE_LEASE)
        return;
    if (e->waiting_reply) {
        /* Redis did not answer in time: go without a lease. */
        e->waiting_reply = 0;
        e->state = PACE_IDLE;
        ms_counter_inc(p->m_redis_errors);
        p->cb(p->arg, e->id, WK_PACE_GO, 0, 0);
        return;
    }
    if (lease_request(p, e))
        p->cb(p->arg, e->id, WK_PACE_GO, 0, 0);
}

wk_pacing *wk_pacing_new(uv_loop_t *loop, const struct wk_pacing_conf *conf, wk_pacing_cb cb,
                         void *arg)
{
    wk_pacing *p = ms_calloc(1, sizeof(*p));

    p->loop = loop;
    p->conf = *conf;
    p->cb = cb;
    p->arg = arg;
    ms_idmap_init(&p->paces);
    ms_list_init(&p->all);
    p->m_redis_errors = ms_counter_new("mailstream_worker_redis_errors_total",
                                       "Redis commands that failed or timed out.", NULL);
    p->m_lease_waits = ms_counter_new("mailstream_worker_lease_waits_total",
                                      "Connections delayed: the destination's leases were all "
                                      "taken.",
                                      NULL);
    p->m_rate_waits =
        ms_counter_new("mailstream_worker_dest_rate_waits_total",
                       "Destination deliveries held back by [delivery] dest_rate.", NULL);
    p->m_rate_deferred = ms_counter_new("mailstream_worker_dest_rate_deferred_total",
                                        "Destination deliveries deferred after waiting longer "
                                        "than [delivery] dest_rate_max_wait_ms.",
                                        NULL);
    p->m_rate_unchecked = ms_counter_new("mailstream_worker_dest_rate_unchecked_total",
                                         "Destination deliveries sent without a rate check "
                                         "(Redis unavailable: fail-open).",
                                         NULL);
    return p;
}

void wk_pacing_attach(wk_pacing *p, ms_redis *r)
{
    p->redis = r;
}

int wk_pacing_acquire(wk_pacing *p, uint64_t id, const char *name, const struct wk_pace_limits *lim,
                      const char *log_id)
{
    struct pace *e;

    if ((e = ms_idmap_get(&p->paces, id)) == NULL) {
        if (lim->rate.capacity == 0 && lim->connections <= 0)
            return 1;
        e = ms_calloc(1, sizeof(*e));
        e->lim = *lim;
        uv_timer_init(p->loop, &e->t);
        e->p = p;
        e->id = id;
        snprintf(e->name, sizeof(e->name), "%s", name);
        snprintf(e->log_id, sizeof(e->log_id), "%s", log_id);
        snprintf(e->lease_key, sizeof(e->lease_key), MS_KEY_LEASE "%s", name);
        snprintf(e->lease_member, sizeof(e->lease_member), "%s:%llu", p->conf.node_id,
                 (unsigned long long)id);
        snprintf(e->rate_key, sizeof(e->rate_key), MS_KEY_RATE "%s", name);
        ms_idmap_put(&p->paces, id, e);
        ms_list_insert_tail(&p->all, &e->link);
    }
    return pace_step(p, e);
}

void wk_pacing_release(wk_pacing *p, uint64_t id)
{
    struct pace *e = ms_idmap_get(&p->paces, id);

    if (e == NULL)
        return;
    if (e->leased) {
        const char *argv[3] = {"ZREM", e->lease_key, e->lease_member};
        ms_redis_fire(p->redis, p->m_redis_errors, 3, argv);
    }
    pace_forget(p, e);
}

void wk_pacing_drain(wk_pacing *p)
{
    struct ms_list *pos;
    uint64_t *ids;
    size_t n = 0, k;

    p->draining = 1;
    if (p->paces.count == 0)
        return;
    /* Collect first: a deferral may end a message and release other ids. */
    ids = ms_calloc(p->paces.count, sizeof(*ids));
    ms_list_foreach(pos, &p->all)
        ids[n++] = ms_list_entry(pos, struct pace, link)->id;
    for (k = 0; k < n; k++) {
        struct pace *e = ms_idmap_get(&p->paces, ids[k]);
        if (e == NULL || e->state != PACE_RATE || e->waiting_reply)
            continue;
        uv_timer_stop(&e->t);
        pace_defer(p, e, 0);
    }
    free(ids);
}

void wk_pacing_free(wk_pacing *p)
{
    if (p == NULL)
        return;
    if (p->paces.count > 0)
        ms_panic("event=pacing_free_busy waits=%zu", p->paces.count);
    ms_idmap_free(&p->paces);
    free(p);
}
