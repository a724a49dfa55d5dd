/*
 * fence.c - duplicate fencing, the Redis side (fence.h).
 */
#include "fence.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_script.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct wk_fence {
    struct wk_fence_conf conf;
    ms_redis *redis;
    unsigned long long nonce; /* this process: tokens never repeat across restarts */
    unsigned long long round;
    ms_counter *m_unavoidable, *m_waits;
    ms_counter *m_fenced[3]; /* by fenced_reasons */
};

static const char *const fenced_reasons[3] = {"lost", "unavailable", "revoked"};

wk_fence *wk_fence_new(const struct wk_fence_conf *conf)
{
    wk_fence *f = ms_calloc(1, sizeof(*f));
    char labels[64];
    int i;

    f->conf = *conf;
    f->nonce = ((unsigned long long)arc4random() << 32) | arc4random();
    f->m_unavoidable = ms_counter_new(
        "mailstream_worker_duplicate_risk_total",
        "Recipients delivered again after a previous holder of the message's lease passed the "
        "check before DATA and recorded no outcome (it died or stalled after the end of data).",
        "kind=\"unavoidable\"");
    for (i = 0; i < 3; i++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"", fenced_reasons[i]);
        f->m_fenced[i] = ms_counter_new(
            "mailstream_worker_fenced_total",
            "Destinations given up before DATA: the message's delivery lease was taken by "
            "another worker (lost), could not be checked (unavailable), or its partition was "
            "revoked.",
            labels);
    }
    f->m_waits = ms_counter_new("mailstream_worker_fence_waits_total",
                                "Attempts postponed because another worker held the message's "
                                "delivery lease.",
                                NULL);
    return f;
}

void wk_fence_attach(wk_fence *f, ms_redis *r)
{
    f->redis = r;
}

void wk_fence_free(wk_fence *f)
{
    free(f);
}

int wk_fence_on(const wk_fence *f)
{
    return f->conf.lease_ms > 0 && f->redis != NULL;
}

uint64_t wk_fence_lease_ms(const wk_fence *f)
{
    return f->conf.lease_ms;
}

uint64_t wk_fence_held_wait_ms(uint64_t left_ms, uint64_t lease_ms, unsigned rounds)
{
    uint64_t lapse = (left_ms < lease_ms ? left_ms : lease_ms) + WK_FENCE_MARGIN_MS / 4;
    uint64_t poll = (uint64_t)WK_FENCE_HELD_POLL_MS << (rounds < 16 ? rounds : 16);

    return poll < lapse ? poll : lapse;
}

void wk_fence_new_round(wk_fence *f, struct wk_fence_lease *l, uint64_t msg_id)
{
    snprintf(l->tok, sizeof(l->tok), "%.100s/%016llx/%llx/%llu", f->conf.node_id, f->nonce,
             (unsigned long long)msg_id, ++f->round);
    l->held = 0;
    l->taking = 0;
    l->gen = 0;
    l->until_ms = 0;
}

/* EVALSHA s with KEYS = lease key + keys, then ARGV. */
static int run(wk_fence *f, enum ms_script s, const char *qid, char *const *keys, size_t nkeys,
               const char *const *args, size_t nargs, ms_redis_cb cb, void *arg, uint64_t id)
{
    const char *argv[MS_REDIS_SCRIPT_ARGC_MAX];
    size_t argvlen[MS_REDIS_SCRIPT_ARGC_MAX], k, n = 0;
    char numkeys[24], *lease;
    int err;

    if (!wk_fence_on(f))
        return MS_EUNAVAIL;
    if (nkeys + 1 > WK_FENCE_KEYS_MAX || nkeys + nargs + 2 > MS_REDIS_SCRIPT_ARGC_MAX)
        return MS_EINVAL;
    lease = ms_asprintf(MS_KEY_FENCE "%s", qid);
    snprintf(numkeys, sizeof(numkeys), "%zu", nkeys + 1);
    argv[n++] = numkeys;
    argv[n++] = lease;
    for (k = 0; k < nkeys; k++)
        argv[n++] = keys[k];
    for (k = 0; k < nargs; k++)
        argv[n++] = args[k];
    for (k = 0; k < n; k++)
        argvlen[k] = strlen(argv[k]);
    err = ms_redis_script(f->redis, s, cb, arg, id, (int)n, argv, argvlen);
    free(lease);
    return err;
}

int wk_fence_take(wk_fence *f, struct wk_fence_lease *l, const char *qid, char *const *keys,
                  size_t nkeys, ms_redis_cb cb, void *arg, uint64_t id, uint64_t now_ms)
{
    char lease[24], keep[24];
    const char *args[3] = {l->tok, lease, keep};
    int err;

    snprintf(lease, sizeof(lease), "%llu", (unsigned long long)f->conf.lease_ms);
    snprintf(keep, sizeof(keep), "%lld", (long long)f->conf.marker_ttl_s * 1000);
    err = run(f, MS_SCRIPT_FENCE_TAKE, qid, keys, nkeys, args, 3, cb, arg, id);
    if (err == 0) {
        l->renewed_ms = now_ms;
        l->taking = 1;
    }
    return err;
}

int wk_fence_parse_take(struct wk_fence_lease *l, const struct ms_redis_reply *r,
                        long long *prior, uint64_t *wait_ms, struct ms_redis_reply *values)
{
    l->taking = 0;
    if (r->type != MS_REDIS_ARRAY || r->nelem < 2 || r->elem[0].type != MS_REDIS_INT ||
        r->elem[1].type != MS_REDIS_INT)
        return -1;
    if (r->elem[0].integer == 0) {
        *wait_ms = r->elem[1].integer > 0 ? (uint64_t)r->elem[1].integer : 1;
        return 0;
    }
    l->held = 1;
    l->gen = r->elem[0].integer;
    /* Lapses lease_ms after the take was sent at the earliest. */
    *prior = r->elem[1].integer;
    memset(values, 0, sizeof(*values));
    values->type = MS_REDIS_ARRAY;
    values->nelem = r->nelem - 2;
    values->elem = r->elem + 2;
    return 1;
}

int wk_fence_check(wk_fence *f, struct wk_fence_lease *l, const char *qid, int count_data,
                   ms_redis_cb cb, void *arg, uint64_t id, uint64_t now_ms)
{
    char lease[24], keep[24];
    const char *args[4] = {l->tok, lease, keep, count_data ? "1" : "0"};
    int err;

    snprintf(lease, sizeof(lease), "%llu", (unsigned long long)f->conf.lease_ms);
    snprintf(keep, sizeof(keep), "%lld", (long long)f->conf.marker_ttl_s * 1000);
    err = run(f, MS_SCRIPT_FENCE_CHECK, qid, NULL, 0, args, 4, cb, arg, id);
    if (err == 0)
        l->renewed_ms = now_ms;
    return err;
}

uint64_t wk_fence_parse_check(struct wk_fence_lease *l, const struct ms_redis_reply *r,
                              uint64_t sent_ms)
{
    uint64_t until;

    if (r->type != MS_REDIS_INT || r->integer <= WK_FENCE_MARGIN_MS) {
        if (r->type == MS_REDIS_INT)
            l->held = 0; /* taken by another holder: ours no more */
        return 0;
    }
    until = sent_ms + (uint64_t)r->integer - WK_FENCE_MARGIN_MS;
    if (until > l->until_ms)
        l->until_ms = until;
    return l->until_ms;
}

int wk_fence_done(wk_fence *f, struct wk_fence_lease *l, const char *qid, char *const *keys,
                  size_t nkeys, const char *value, int data_done, int release, ms_redis_cb cb,
                  void *arg, uint64_t id)
{
    char ttl[24];
    const char *args[5] = {l->tok, value, ttl, release ? "1" : "0", data_done ? "1" : "0"};
    int err;

    snprintf(ttl, sizeof(ttl), "%lld", (long long)f->conf.marker_ttl_s);
    err = run(f, MS_SCRIPT_FENCE_DONE, qid, keys, nkeys, args, 5, cb, arg, id);
    if (release) {
        l->held = 0; /* given back, or lapsing by itself if the call failed */
        l->taking = 0;
        l->until_ms = 0;
    }
    return err;
}

void wk_fence_count_unavoidable(wk_fence *f, size_t nrcpts)
{
    ms_counter_add(f->m_unavoidable, (uint64_t)nrcpts);
}

void wk_fence_count_fenced(wk_fence *f, const char *why)
{
    int i;

    for (i = 0; i < 2 && strcmp(why, fenced_reasons[i]) != 0; i++)
        ;
    ms_counter_inc(f->m_fenced[i]); /* an unknown reason counts as the last */
}

void wk_fence_count_wait(wk_fence *f)
{
    ms_counter_inc(f->m_waits);
}
