/*
 * control.c - the worker's side of the queue control (control.h).
 */
#include "control.h"
#include "ms_addr.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One suspended destination, as last read. */
struct suspended {
    char *name;
    struct ms_qctl_suspend s;
};

struct wk_control {
    uv_loop_t *loop;
    struct wk_control_conf conf;
    ms_redis *redis;
    ms_counter *redis_errors;
    void (*changed)(void *);
    void *arg;
    uv_timer_t poll;
    int polling;
    long long gen; /* last generation seen; -1: none yet */
    struct suspended *susp;
    size_t nsusp;
};

static void suspensions_clear(wk_control *c)
{
    size_t i;

    for (i = 0; i < c->nsusp; i++)
        free(c->susp[i].name);
    free(c->susp);
    c->susp = NULL;
    c->nsusp = 0;
}

/* Cookies of the two poll commands. */
enum { POLL_GEN = 1, POLL_SUSPEND = 2 };

static void on_poll(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    wk_control *c = arg;
    long long gen = 0;
    size_t i, n;

    if (r->type == MS_REDIS_ERR || r->type == MS_REDIS_FAILED) {
        ms_counter_inc(c->redis_errors);
        return;
    }
    if (id == POLL_GEN) {
        if (r->type == MS_REDIS_STR)
            gen = strtoll(r->str, NULL, 10);
        if (gen != c->gen) {
            if (c->gen >= 0)
                ms_info("event=queue_control_changed gen=%lld", gen);
            c->gen = gen;
            c->changed(c->arg);
        }
        return;
    }
    if (r->type != MS_REDIS_ARRAY)
        return;
    suspensions_clear(c);
    n = r->nelem / 2;
    if (n > WK_CONTROL_SUSPEND_MAX) {
        ms_warn("event=too_many_suspensions count=%zu kept=%d", n, WK_CONTROL_SUSPEND_MAX);
        n = WK_CONTROL_SUSPEND_MAX;
    }
    c->susp = ms_calloc(n ? n : 1, sizeof(*c->susp));
    for (i = 0; i < n; i++) {
        const struct ms_redis_reply *k = &r->elem[2 * i], *v = &r->elem[2 * i + 1];
        struct suspended *s = &c->susp[c->nsusp];
        if (k->type != MS_REDIS_STR || v->type != MS_REDIS_STR ||
            ms_qctl_suspend_parse(v->str, v->len, &s->s) < 0)
            continue;
        s->name = ms_strndup(k->str, k->len);
        c->nsusp++;
    }
}

static void poll_cb(uv_timer_t *t)
{
    wk_control *c = t->data;
    const char *gen[2] = {"GET", MS_KEY_CONTROL_GEN};
    const char *all[2] = {"HGETALL", MS_KEY_SUSPEND};
    size_t l1[2] = {3, strlen(MS_KEY_CONTROL_GEN)}, l2[2] = {7, strlen(MS_KEY_SUSPEND)};
    char why[128];

    /* Not connected (yet): nothing to count, the next poll asks again and
     * the last suspensions read stay in force. */
    if (!ms_redis_ready(c->redis, why, sizeof(why)))
        return;
    if (ms_redis_command(c->redis, on_poll, c, POLL_GEN, 2, gen, l1) < 0 ||
        ms_redis_command(c->redis, on_poll, c, POLL_SUSPEND, 2, all, l2) < 0)
        ms_counter_inc(c->redis_errors);
}

wk_control *wk_control_new(uv_loop_t *loop, const struct wk_control_conf *conf,
                           void (*changed)(void *arg), void *arg, ms_counter *redis_errors)
{
    wk_control *c = ms_calloc(1, sizeof(*c));

    c->loop = loop;
    c->conf = *conf;
    if (c->conf.relay == NULL)
        c->conf.relay = "";
    c->changed = changed;
    c->arg = arg;
    c->redis_errors = redis_errors;
    c->gen = -1;
    uv_timer_init(loop, &c->poll);
    c->poll.data = c;
    c->polling = 1;
    return c;
}

void wk_control_attach(wk_control *c, ms_redis *r)
{
    c->redis = r;
    if (r && c->polling)
        uv_timer_start(&c->poll, poll_cb, 0, WK_CONTROL_POLL_MS);
}

void wk_control_stop(wk_control *c)
{
    if (c->polling) {
        c->polling = 0;
        uv_close((uv_handle_t *)&c->poll, NULL);
    }
}

static void poll_closed_free(uv_handle_t *h)
{
    free(h->data);
}

void wk_control_free(wk_control *c)
{
    if (c == NULL)
        return;
    suspensions_clear(c);
    if (c->polling) { /* never stopped: the timer's close frees it */
        c->polling = 0;
        uv_close((uv_handle_t *)&c->poll, poll_closed_free);
        return;
    }
    free(c);
}

void wk_control_dest_of(const wk_control *c, const char *addr, char *buf, size_t len)
{
    char domain[MS_DNS_NAME_MAX + 1];
    const struct ms_transport *t;

    if (ms_addr_domain_copy(addr, domain, sizeof(domain)) < 0)
        domain[0] = '\0';
    /* As delivery.c groups recipients and names a destination (dest_name). */
    t = ms_transport_map_lookup(c->conf.transports, domain);
    if (t)
        snprintf(buf, len, "%s", t->path[0] ? t->path : t->host);
    else if (c->conf.relay[0])
        snprintf(buf, len, "%s", c->conf.relay);
    else
        snprintf(buf, len, "%s", domain);
}

int wk_control_suspended(const wk_control *c, const char *name, int64_t *until_us,
                         const char **reason)
{
    int64_t now = ms_time_now_us();
    size_t i;

    for (i = 0; i < c->nsusp; i++)
        if (strcasecmp(c->susp[i].name, name) == 0 && ms_qctl_suspend_active(&c->susp[i].s, now)) {
            *until_us = c->susp[i].s.until_us;
            *reason = c->susp[i].s.reason;
            return 1;
        }
    return 0;
}

static void fire(wk_control *c, int argc, const char **argv)
{
    ms_redis_fire(c->redis, c->redis_errors, argc, argv);
}

/*
 * Bound one of the deferred-queue index's sorted sets (MS_KEY_RETRY_QUEUE,
 * MS_KEY_RETRY_QUEUE_DEST + name, MS_KEY_RETRY_QUEUE_DESTS), which the
 * worker writes as it defers.  Their members normally leave through
 * wk_control_forget(), but a message whose retry record is gone without
 * being consumed (past a retry tier's retention, a topic deleted, a worker
 * that died between two writes) never gets there.  So every write also
 * drops the members scored before `stale` and renews the set's TTL to
 * `ttl`: a set nothing deferred to for that long holds only such members,
 * and Redis drops it whole (docs/reliability.md, "What Redis holds").
 */
static void index_bound(wk_control *c, const char *key, const char *stale, const char *ttl)
{
    const char *trim[4] = {"ZREMRANGEBYSCORE", key, "-inf", stale};
    const char *exp[3] = {"EXPIRE", key, ttl};

    fire(c, 4, trim);
    fire(c, 3, exp);
}

/* The distinct destinations of env's recipients (dests[i] for recipient
 * i, NULL for a repeat of an earlier one); a malloc'd block. */
static char **dests_of(const wk_control *c, const ms_envelope *env)
{
    size_t i, j, n = env->n_recipients;
    char **d = ms_calloc(n ? n : 1, sizeof(*d));

    for (i = 0; i < n; i++) {
        char name[MS_DNS_NAME_MAX + MS_TRANSPORT_PATH_MAX + 2];
        wk_control_dest_of(c, env->recipients[i]->address ? env->recipients[i]->address : "", name,
                           sizeof(name));
        for (j = 0; j < i && (d[j] == NULL || strcasecmp(d[j], name) != 0); j++)
            ;
        d[i] = j < i ? NULL : ms_strdup(name);
    }
    return d;
}

void wk_control_index(wk_control *c, const ms_envelope *env, const struct wk_rcpt *rcpts,
                      unsigned attempts, int tier, int64_t next_attempt_us, int held,
                      const char *record)
{
    size_t i, j, n = env->n_recipients;
    char **d, *line, *key, score[24], now_s[24], ttl[24], stale[24];
    struct ms_buf rl, dl;
    struct ms_qinfo q;

    if (c->redis == NULL)
        return;
    d = dests_of(c, env);
    ms_buf_init(&rl, 1 << 20);
    ms_buf_init(&dl, 1 << 20);
    snprintf(score, sizeof(score), "%lld", (long long)env->received_at_us);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)ms_time_now_us());
    /* Members scored before `stale` cannot be queued any more: accepted
     * (or, in MS_KEY_RETRY_QUEUE_DESTS, last deferred to) more than
     * info_ttl_s = [retry] max_age_s + a day ago, so [retry] max_age_s has
     * bounced them.  "(" makes the bound exclusive (ZREMRANGEBYSCORE).
     * XXX: held mail does not bounce for age; held that long it leaves the
     * index, as its listing line (same TTL) already did, until released. */
    snprintf(stale, sizeof(stale), "(%lld",
             (long long)(ms_time_now_us() - c->conf.info_ttl_s * 1000000));
    snprintf(ttl, sizeof(ttl), "%lld", (long long)c->conf.info_ttl_s);
    index_bound(c, MS_KEY_RETRY_QUEUE, stale, ttl);
    for (i = 0; i < n; i++) {
        int pending = 0;
        if (rcpts[i].state == WK_RCPT_PENDING || rcpts[i].state == WK_RCPT_REQUEUED)
            ms_buf_appendf(&rl, "%s%s", rl.len ? "," : "", rcpts[i].addr);
        if (d[i] == NULL)
            continue;
        /* Recipient i names a destination first: does any pending one go there? */
        for (j = i; j < n && !pending; j++) {
            char name[MS_DNS_NAME_MAX + MS_TRANSPORT_PATH_MAX + 2];
            if (rcpts[j].state != WK_RCPT_PENDING && rcpts[j].state != WK_RCPT_REQUEUED)
                continue;
            wk_control_dest_of(c, rcpts[j].addr, name, sizeof(name));
            pending = strcasecmp(name, d[i]) == 0;
        }
        key = ms_asprintf(MS_KEY_RETRY_QUEUE_DEST "%s", d[i]);
        if (pending) {
            const char *zadd[4] = {"ZADD", key, score, env->queue_id};
            const char *dadd[4] = {"ZADD", MS_KEY_RETRY_QUEUE_DESTS, now_s, d[i]};
            fire(c, 4, zadd);
            fire(c, 4, dadd);
            index_bound(c, key, stale, ttl);
            index_bound(c, MS_KEY_RETRY_QUEUE_DESTS, stale, ttl);
            ms_buf_appendf(&dl, "%s%s", dl.len ? "," : "", d[i]);
        } else {
            const char *zrem[3] = {"ZREM", key, env->queue_id};
            fire(c, 3, zrem);
        }
        free(key);
    }
    ms_buf_append(&rl, "", 1);
    ms_buf_append(&dl, "", 1);
    memset(&q, 0, sizeof(q));
    q.state = held ? "held" : "deferred";
    q.received_us = env->received_at_us;
    q.next_attempt_us = next_attempt_us;
    q.attempts = attempts;
    q.tier = tier;
    q.size = env->message.len;
    q.sender = env->mail_from && env->mail_from->address ? env->mail_from->address : "";
    q.rcpts = rl.data ? rl.data : "";
    q.dests = dl.data ? dl.data : "";
    q.last_reply = "";
    q.record = record ? record : "";
    for (i = 0; i < n; i++)
        if ((rcpts[i].state == WK_RCPT_PENDING || rcpts[i].state == WK_RCPT_REQUEUED) &&
            rcpts[i].tried)
            q.last_reply = rcpts[i].reply;
    line = ms_qinfo_format(&q);
    key = ms_asprintf(MS_KEY_QUEUE_INFO "%s", env->queue_id);
    {
        const char *set[5] = {"SET", key, line, "EX", ttl};
        fire(c, 5, set);
    }
    free(key);
    free(line);
    ms_buf_free(&rl);
    ms_buf_free(&dl);
    ms_strv_free(d, n);
}

void wk_control_forget(wk_control *c, const ms_envelope *env)
{
    size_t i, n = env->n_recipients;
    char **d, *key;

    if (c->redis == NULL)
        return;
    d = dests_of(c, env);
    for (i = 0; i < n; i++) {
        if (d[i] == NULL)
            continue;
        key = ms_asprintf(MS_KEY_RETRY_QUEUE_DEST "%s", d[i]);
        {
            const char *zrem[3] = {"ZREM", key, env->queue_id};
            fire(c, 3, zrem);
        }
        free(key);
    }
    key = ms_asprintf(MS_KEY_QUEUE_INFO "%s", env->queue_id);
    {
        const char *del[2] = {"DEL", key};
        fire(c, 2, del);
    }
    free(key);
    key = ms_asprintf(MS_KEY_CONTROL "%s", env->queue_id);
    {
        const char *del[2] = {"DEL", key};
        fire(c, 2, del);
    }
    free(key);
    ms_strv_free(d, n);
}

int64_t wk_control_last_attempt_us(const ms_envelope *env)
{
    int64_t last = 0;
    size_t i;

    for (i = 0; i < env->n_attempts; i++)
        if (env->attempts[i]->at_us > last)
            last = env->attempts[i]->at_us;
    return last;
}
