/*
 * delivery.c - the delivery engine (delivery.h).
 *
 * One `struct msg` (the transaction) per record held.  Its state changes
 * only through msg_enter_state():
 *
 *   CHECK  --markers read-->  SEND  --SMTP outcome-->  RECORD
 *   RECORD --markers and events written--> done, or WAIT --backoff--> CHECK
 *
 * and any state may end in CLOSING (released: done or abandoned).  Replies
 * that arrive after a state was left are recognised and dropped: the SMTP
 * client and the producer report by transaction id, Redis replies by id and
 * a phase number that changes whenever a wait for Redis ends.
 */
#include "delivery.h"
#include "event.h"
#include "ms_buf.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* Largest event record: the reply text dominates. */
#define WK_EVENT_MAX (8 * 1024)
/* Redis ids carry the phase in their low bits. */
#define WK_PHASE_BITS 8

enum msg_state { MSG_CHECK, MSG_SEND, MSG_RECORD, MSG_WAIT, MSG_CLOSING, MSG__NSTATES };

static const char *const msg_state_names[MSG__NSTATES] = {"check", "send", "record", "wait",
                                                         "closing"};

enum rcpt_state { RCPT_PENDING, RCPT_DELIVERED, RCPT_BOUNCED };

struct rcpt {
    const char *addr; /* points into the envelope */
    enum rcpt_state state;
};

struct msg {
    wk_delivery *d;
    uint64_t id;
    size_t slot;
    enum msg_state state;
    struct ms_record *rec;          /* NULL once released */
    ms_envelope *env;
    const char *qid;                /* env->queue_id */
    size_t nrcpts;
    struct rcpt *rcpts;
    size_t *tried;                  /* rcpt indices of the current MGET/attempt */
    size_t ntried;
    unsigned attempt;
    unsigned phase;
    int redis_pending;
    int events_pending;
    wk_smtp *smtp;                  /* the running attempt, or NULL */
    uv_timer_t timer;               /* Redis guard, or the retry backoff */
};

struct wk_delivery {
    uv_loop_t *loop;
    struct wk_delivery_conf conf;
    ms_consumer *consumer;
    ms_producer *producer;
    ms_redis *redis;
    struct msg **slots;
    size_t nslots, nused, nclosing;
    uint64_t seq;
    int paused;
    int draining;
    void (*drained)(void *);
    void *drained_arg;

    ms_counter *m_outcome[WK_OUTCOME__N];
    ms_counter *m_attempts, *m_malformed, *m_skipped, *m_redis_errors, *m_event_errors;
    ms_gauge *m_in_flight;
    ms_histogram *m_latency;
};

static void msg_check(struct msg *m);
static void msg_send(struct msg *m);
static void msg_settle(struct msg *m);

static int64_t now_us(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* ---- the slot table: id -> transaction ---- */

static struct msg *msg_lookup(wk_delivery *d, uint64_t id)
{
    struct msg *m;

    if (id == 0)
        return NULL;
    m = d->slots[id % d->nslots];
    return m && m->id == id ? m : NULL;
}

static uint64_t redis_cookie(const struct msg *m)
{
    return (m->id << WK_PHASE_BITS) | (m->phase & ((1u << WK_PHASE_BITS) - 1));
}

/* The transaction a Redis reply belongs to, if it still waits for it. */
static struct msg *msg_lookup_redis(wk_delivery *d, uint64_t cookie)
{
    struct msg *m = msg_lookup(d, cookie >> WK_PHASE_BITS);

    if (m == NULL || (m->phase & ((1u << WK_PHASE_BITS) - 1)) != (cookie & ((1u << WK_PHASE_BITS) - 1)))
        return NULL;
    return m;
}

static void msg_enter_state(struct msg *m, enum msg_state next)
{
    ms_debug("event=msg_state qid=%s from=%s to=%s", m->qid, msg_state_names[m->state],
             msg_state_names[next]);
    m->state = next;
}

static void after_release(wk_delivery *d)
{
    if (d->draining) {
        if (d->nused == 0 && d->nclosing == 0 && d->drained) {
            void (*cb)(void *) = d->drained;
            d->drained = NULL;
            cb(d->drained_arg);
        }
        return;
    }
    if (d->paused && d->nused < d->nslots) {
        d->paused = 0;
        ms_consumer_resume(d->consumer); /* may hand out records at once */
    }
}

static void msg_closed_cb(uv_handle_t *h)
{
    struct msg *m = h->data;
    wk_delivery *d = m->d;

    ms_envelope_free(m->env);
    free(m->rcpts);
    free(m->tried);
    free(m);
    d->nclosing--;
    after_release(d);
}

/* End the transaction: `done` stores the record's offset (its outcome is
 * durable); otherwise the record is abandoned and will be redelivered. */
static void msg_release(struct msg *m, int done)
{
    wk_delivery *d = m->d;

    if (m->state == MSG_CLOSING)
        return;
    if (m->smtp) {
        wk_smtp_cancel(m->smtp);
        m->smtp = NULL;
    }
    if (done)
        ms_consumer_done(d->consumer, m->rec);
    else
        ms_info("event=abandoned qid=%s partition=%d offset=%lld state=%s", m->qid,
                (int)m->rec->partition, (long long)m->rec->offset, msg_state_names[m->state]);
    m->rec = NULL;
    msg_enter_state(m, MSG_CLOSING);
    d->slots[m->slot] = NULL;
    d->nused--;
    d->nclosing++;
    ms_gauge_set(d->m_in_flight, (int64_t)d->nused);
    uv_close((uv_handle_t *)&m->timer, msg_closed_cb);
}

/* ---- outcomes ---- */

static void publish(wk_delivery *d, uint64_t id, const char *key, size_t keylen,
                    const struct ms_buf *json, int *pending)
{
    int err;

    if (d->producer == NULL)
        return;
    err = ms_producer_send(d->producer, d->conf.events_topic, key, keylen, json->data, json->len,
                           id);
    if (err < 0) {
        ms_warn("event=event_publish_failed key=%.*s error=%s", (int)keylen, key,
                ms_err_name(err));
        ms_counter_inc(d->m_event_errors);
        return;
    }
    if (pending)
        (*pending)++;
}

/* Log, count and publish one recipient's outcome for this attempt. */
static enum wk_outcome record_outcome(struct msg *m, size_t i, int code, const char *dsn,
                                      const char *reply)
{
    wk_delivery *d = m->d;
    struct wk_event ev;
    struct ms_buf json;
    char qrcpt[600], qreply[WK_SMTP_REPLY_TEXT_MAX * 2];
    int64_t now = now_us();
    double delay = m->env->received_at_us > 0 ? (double)(now - m->env->received_at_us) / 1e6 : 0;

    memset(&ev, 0, sizeof(ev));
    ev.qid = m->qid;
    ev.rcpt = m->rcpts[i].addr;
    ev.outcome = wk_outcome_of(code);
    ev.code = code;
    ev.dsn = dsn;
    ev.reply = reply;
    ev.relay = d->conf.relay;
    ev.node = d->conf.node_id;
    ev.attempt = m->attempt;
    ev.delay = delay < 0 ? 0 : delay;
    ev.ts_us = now;

    ms_info("event=delivery qid=%s rcpt=%s relay=%s attempt=%u delay=%.3f outcome=%s code=%d "
            "dsn=%s reply=%s",
            m->qid, ms_log_quote(qrcpt, sizeof(qrcpt), ev.rcpt, strlen(ev.rcpt)), ev.relay,
            ev.attempt, ev.delay, wk_outcome_name(ev.outcome), code, dsn,
            ms_log_quote(qreply, sizeof(qreply), reply, strlen(reply)));
    ms_counter_inc(d->m_outcome[ev.outcome]);
    if (ev.outcome == WK_OUTCOME_DELIVERED)
        ms_histogram_observe(d->m_latency, ev.delay);

    ms_buf_init(&json, WK_EVENT_MAX);
    if (wk_event_json(&json, &ev) == 0)
        publish(d, m->id, m->qid, strlen(m->qid), &json, &m->events_pending);
    else
        ms_warn("event=event_too_big qid=%s", m->qid); /* cannot happen: reply is bounded */
    ms_buf_free(&json);
    return ev.outcome;
}

static void apply_outcome(struct msg *m, size_t i, enum wk_outcome o)
{
    if (o == WK_OUTCOME_DELIVERED)
        m->rcpts[i].state = RCPT_DELIVERED;
    else if (o == WK_OUTCOME_BOUNCED)
        /* XXX: no DSN yet; the bounce is only logged and published. */
        m->rcpts[i].state = RCPT_BOUNCED;
}

/* ---- Redis: delivered markers ---- */

static char *marker_key(const struct msg *m, size_t i)
{
    return ms_asprintf("ms:delivered:%s:%s", m->qid, m->rcpts[i].addr);
}

static void redis_failed(wk_delivery *d, const struct msg *m, const char *what,
                         const struct ms_redis_reply *r)
{
    ms_warn("event=redis_failed qid=%s command=%s error=\"%.*s\"", m->qid, what,
            r && r->str ? (int)r->len : 0, r && r->str ? r->str : "");
    ms_counter_inc(d->m_redis_errors);
}

static void on_mget(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup_redis(d, cookie);
    char q[600];
    size_t i, k;

    if (m == NULL || m->state != MSG_CHECK)
        return;
    uv_timer_stop(&m->timer);
    m->phase++;
    if (r->type != MS_REDIS_ARRAY || r->nelem != m->ntried) {
        /* At least once: deliver without knowing. */
        redis_failed(d, m, "MGET", r);
    } else {
        for (k = 0; k < r->nelem; k++) {
            if (r->elem[k].type != MS_REDIS_STR)
                continue;
            i = m->tried[k];
            m->rcpts[i].state = RCPT_DELIVERED;
            ms_counter_inc(d->m_skipped);
            ms_info("event=delivery_skipped qid=%s rcpt=%s reason=already_delivered", m->qid,
                    ms_log_quote(q, sizeof(q), m->rcpts[i].addr, strlen(m->rcpts[i].addr)));
        }
    }
    msg_send(m);
}

static void on_marker_set(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup_redis(d, cookie);

    if (m == NULL || m->state != MSG_RECORD)
        return;
    if (r->type != MS_REDIS_STR)
        redis_failed(d, m, "SET", r);
    if (--m->redis_pending == 0) {
        uv_timer_stop(&m->timer);
        m->phase++;
        msg_settle(m);
    }
}

static void write_marker(struct msg *m, size_t i)
{
    wk_delivery *d = m->d;
    char ttl[24], *key, *value;
    const char *argv[5];
    size_t argvlen[5];
    int k, err;

    if (d->redis == NULL)
        return;
    key = marker_key(m, i);
    value = ms_asprintf("node=%s relay=%s at=%lld", d->conf.node_id, d->conf.relay,
                        (long long)now_us());
    snprintf(ttl, sizeof(ttl), "%d", WK_MARKER_TTL_S);
    argv[0] = "SET";
    argv[1] = key;
    argv[2] = value;
    argv[3] = "EX";
    argv[4] = ttl;
    for (k = 0; k < 5; k++)
        argvlen[k] = strlen(argv[k]);
    err = ms_redis_command(d->redis, on_marker_set, d, redis_cookie(m), 5, argv, argvlen);
    if (err < 0)
        redis_failed(d, m, "SET", NULL);
    else
        m->redis_pending++;
    free(key);
    free(value);
}

static void redis_guard_cb(uv_timer_t *t);

static void arm_redis_guard(struct msg *m)
{
    uv_timer_start(&m->timer, redis_guard_cb, WK_REDIS_TIMEOUT_MS, 0);
}

/* ---- the transaction ---- */

/* Collect the recipients still pending into m->tried. */
static size_t collect_pending(struct msg *m)
{
    size_t i;

    m->ntried = 0;
    for (i = 0; i < m->nrcpts; i++)
        if (m->rcpts[i].state == RCPT_PENDING)
            m->tried[m->ntried++] = i;
    return m->ntried;
}

static void msg_check(struct msg *m)
{
    wk_delivery *d = m->d;
    const char **argv;
    size_t *argvlen, k;
    int err;

    msg_enter_state(m, MSG_CHECK);
    if (collect_pending(m) == 0 || d->redis == NULL) {
        msg_send(m);
        return;
    }
    argv = ms_calloc(m->ntried + 1, sizeof(*argv));
    argvlen = ms_calloc(m->ntried + 1, sizeof(*argvlen));
    argv[0] = "MGET";
    argvlen[0] = 4;
    for (k = 0; k < m->ntried; k++) {
        argv[k + 1] = marker_key(m, m->tried[k]);
        argvlen[k + 1] = strlen(argv[k + 1]);
    }
    m->phase++;
    err = ms_redis_command(d->redis, on_mget, d, redis_cookie(m), (int)m->ntried + 1, argv,
                           argvlen);
    for (k = 1; k <= m->ntried; k++)
        free((char *)argv[k]);
    free(argv);
    free(argvlen);
    if (err < 0) {
        /* Redis is down: deliver anyway (at least once). */
        redis_failed(d, m, "MGET", NULL);
        msg_send(m);
        return;
    }
    arm_redis_guard(m);
}

static void on_smtp(void *arg, uint64_t id, const struct wk_smtp_result *res)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup(d, id);
    enum wk_outcome o;
    size_t k, i;

    if (m == NULL || m->state != MSG_SEND)
        return;
    m->smtp = NULL;
    msg_enter_state(m, MSG_RECORD);
    m->phase++;
    for (k = 0; k < res->nrcpts && k < m->ntried; k++) {
        i = m->tried[k];
        o = record_outcome(m, i, res->rcpts[k].code, res->rcpts[k].dsn, res->rcpts[k].reply);
        apply_outcome(m, i, o);
        /* Right after the remote 250: from now on a redelivery skips it. */
        if (o == WK_OUTCOME_DELIVERED)
            write_marker(m, i);
    }
    if (m->redis_pending > 0)
        arm_redis_guard(m);
    msg_settle(m);
}

static void msg_send(struct msg *m)
{
    wk_delivery *d = m->d;
    struct wk_smtp_msg sm;
    const char **rcpts;
    size_t k, i;
    int err;

    if (d->draining) {
        msg_release(m, 0);
        return;
    }
    msg_enter_state(m, MSG_SEND);
    if (collect_pending(m) == 0) {
        msg_enter_state(m, MSG_RECORD);
        msg_settle(m);
        return;
    }
    m->attempt++;
    ms_counter_inc(d->m_attempts);
    rcpts = ms_calloc(m->ntried, sizeof(*rcpts));
    for (k = 0; k < m->ntried; k++)
        rcpts[k] = m->rcpts[m->tried[k]].addr;
    memset(&sm, 0, sizeof(sm));
    sm.log_id = m->qid;
    sm.helo_name = d->conf.helo_name;
    sm.mail_from = m->env->mail_from && m->env->mail_from->address ? m->env->mail_from->address
                                                                    : "";
    sm.body_8bitmime = m->env->mail_from && m->env->mail_from->body == MAILSTREAM__BODY__BODY_8BITMIME;
    sm.smtputf8 = m->env->mail_from && m->env->mail_from->smtputf8;
    sm.rcpts = rcpts;
    sm.nrcpts = m->ntried;
    sm.data = (const char *)m->env->message.data;
    sm.len = m->env->message.len;
    err = wk_smtp_start(d->loop, (const struct sockaddr *)&d->conf.relay_addr, &d->conf.timeouts,
                        &sm, on_smtp, d, m->id, &m->smtp);
    free(rcpts);
    if (err < 0) {
        /* Addresses were checked when the record arrived: only our HELO
         * name can be refused here, which is a configuration problem. */
        msg_enter_state(m, MSG_RECORD);
        for (k = 0; k < m->ntried; k++) {
            i = m->tried[k];
            record_outcome(m, i, 0, "4.3.5", "local configuration error: invalid HELO name");
        }
        msg_settle(m);
    }
}

static void retry_cb(uv_timer_t *t)
{
    msg_check(t->data);
}

static void msg_settle(struct msg *m)
{
    wk_delivery *d = m->d;
    uint64_t delay;
    size_t i;
    int pending = 0;

    if (m->state != MSG_RECORD || m->redis_pending > 0 || m->events_pending > 0)
        return;
    for (i = 0; i < m->nrcpts; i++)
        pending += m->rcpts[i].state == RCPT_PENDING;
    if (pending == 0) {
        msg_release(m, 1);
        return;
    }
    if (d->draining) {
        msg_release(m, 0);
        return;
    }
    /* XXX: in memory for the tracer; the record stays in flight and its
     * partition's offsets stay behind until it is done. */
    delay = wk_backoff_ms(m->attempt, d->conf.retry_min_ms, d->conf.retry_max_ms, arc4random());
    ms_info("event=retry_scheduled qid=%s attempt=%u pending=%d delay_ms=%llu", m->qid,
            m->attempt, pending, (unsigned long long)delay);
    msg_enter_state(m, MSG_WAIT);
    uv_timer_start(&m->timer, retry_cb, delay, 0);
}

static void redis_guard_cb(uv_timer_t *t)
{
    struct msg *m = t->data;

    ms_warn("event=redis_timeout qid=%s state=%s timeout_ms=%d", m->qid,
            msg_state_names[m->state], WK_REDIS_TIMEOUT_MS);
    ms_counter_inc(m->d->m_redis_errors);
    m->phase++; /* late replies are dropped */
    if (m->state == MSG_CHECK) {
        msg_send(m);
    } else if (m->state == MSG_RECORD) {
        m->redis_pending = 0;
        msg_settle(m);
    }
}

/* ---- records ---- */

static void record_malformed(wk_delivery *d, struct ms_record *rec, const char *why)
{
    struct ms_buf json;
    char q[300];

    ms_log(MS_LOG_ERROR, "event=malformed_record topic=%s partition=%d offset=%lld error=%s",
           rec->topic, (int)rec->partition, (long long)rec->offset,
           ms_log_quote(q, sizeof(q), why, strlen(why)));
    ms_counter_inc(d->m_malformed);
    ms_buf_init(&json, WK_EVENT_MAX);
    if (wk_event_malformed_json(&json, rec->key, rec->keylen, rec->partition, rec->offset, why,
                                d->conf.node_id, now_us()) == 0)
        publish(d, 0, rec->key ? rec->key : "", rec->key ? rec->keylen : 0, &json, NULL);
    ms_buf_free(&json);
    /* Nothing to deliver: its fate is settled. */
    ms_consumer_done(d->consumer, rec);
}

void wk_delivery_on_record(void *arg, struct ms_record *rec)
{
    wk_delivery *d = arg;
    ms_envelope *env;
    struct msg *m;
    char err[256];
    size_t i, slot;
    int bad_sender;

    if (d->draining)
        return; /* not done: redelivered to whoever takes the partition */
    if ((env = ms_envelope_decode(rec->value, rec->len, err, sizeof(err))) == NULL) {
        record_malformed(d, rec, err);
        return;
    }
    if (d->nused == d->nslots)
        ms_panic("event=in_flight_overrun in_flight=%zu", d->nused);
    for (slot = 0; d->slots[slot] != NULL; slot++)
        ;
    m = ms_calloc(1, sizeof(*m));
    m->d = d;
    m->id = ++d->seq * d->nslots + slot;
    m->slot = slot;
    m->state = MSG_CHECK;
    m->rec = rec;
    m->env = env;
    m->qid = env->queue_id;
    m->nrcpts = env->n_recipients;
    m->rcpts = ms_calloc(m->nrcpts, sizeof(*m->rcpts));
    m->tried = ms_calloc(m->nrcpts, sizeof(*m->tried));
    uv_timer_init(d->loop, &m->timer);
    m->timer.data = m;
    d->slots[slot] = m;
    d->nused++;
    ms_gauge_set(d->m_in_flight, (int64_t)d->nused);
    if (d->nused == d->nslots && !d->paused) {
        d->paused = 1;
        ms_consumer_pause(d->consumer);
    }
    ms_debug("event=record qid=%s partition=%d offset=%lld rcpts=%zu size=%zu", m->qid,
             (int)rec->partition, (long long)rec->offset, m->nrcpts, env->message.len);

    /* Addresses that cannot go into an SMTP command are permanent failures
     * (the frontend should never have accepted them). */
    bad_sender = env->mail_from && env->mail_from->address &&
                 !wk_smtp_path_ok(env->mail_from->address);
    for (i = 0; i < m->nrcpts; i++) {
        m->rcpts[i].addr = env->recipients[i]->address ? env->recipients[i]->address : "";
        if (bad_sender || !wk_smtp_path_ok(m->rcpts[i].addr) || !*m->rcpts[i].addr) {
            m->attempt = 1;
            apply_outcome(m, i,
                          record_outcome(m, i, 553, bad_sender ? "5.1.7" : "5.1.3",
                                         bad_sender ? "553 5.1.7 invalid sender address"
                                                    : "553 5.1.3 invalid recipient address"));
        }
    }
    m->attempt = 0;
    msg_check(m);
}

void wk_delivery_on_produced(void *arg, uint64_t id, int err, const char *errstr)
{
    wk_delivery *d = arg;
    struct msg *m;

    if (err < 0) {
        ms_warn("event=event_publish_failed error=%s reason=\"%s\"", ms_err_name(err),
                errstr ? errstr : "");
        ms_counter_inc(d->m_event_errors);
    }
    if ((m = msg_lookup(d, id)) == NULL || m->events_pending == 0)
        return;
    m->events_pending--;
    msg_settle(m);
}

/* ---- engine ---- */

wk_delivery *wk_delivery_new(uv_loop_t *loop, const struct wk_delivery_conf *conf)
{
    wk_delivery *d = ms_calloc(1, sizeof(*d));
    int o;

    d->loop = loop;
    d->conf = *conf;
    d->nslots = conf->max_in_flight > 0 ? (size_t)conf->max_in_flight : WK_MAX_IN_FLIGHT_DEFAULT;
    d->slots = ms_calloc(d->nslots, sizeof(*d->slots));
    for (o = 0; o < WK_OUTCOME__N; o++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "outcome=\"%s\"", wk_outcome_name((enum wk_outcome)o));
        d->m_outcome[o] = ms_counter_new("mailstream_worker_deliveries_total",
                                         "Recipient delivery attempts by outcome.", labels);
    }
    d->m_attempts = ms_counter_new("mailstream_worker_attempts_total",
                                   "SMTP transactions started (one per message and attempt).",
                                   NULL);
    d->m_malformed = ms_counter_new("mailstream_worker_malformed_records_total",
                                    "Queue records that were not a valid envelope.", NULL);
    d->m_skipped = ms_counter_new("mailstream_worker_skipped_delivered_total",
                                  "Recipients skipped because a delivered marker exists.", NULL);
    d->m_redis_errors = ms_counter_new("mailstream_worker_redis_errors_total",
                                       "Redis commands that failed or timed out.", NULL);
    d->m_event_errors = ms_counter_new("mailstream_worker_event_errors_total",
                                       "Event records that could not be published.", NULL);
    d->m_in_flight = ms_gauge_new("mailstream_worker_in_flight",
                                  "Queue records held (delivering, recording or waiting).", NULL);
    d->m_latency = ms_histogram_new("mailstream_worker_delivery_latency_seconds",
                                    "From acceptance by the frontend to delivery.", NULL,
                                    ms_latency_buckets, ms_latency_buckets_n);
    return d;
}

void wk_delivery_attach(wk_delivery *d, ms_consumer *c, ms_producer *p, ms_redis *r)
{
    d->consumer = c;
    d->producer = p;
    d->redis = r;
}

int wk_delivery_in_flight(const wk_delivery *d)
{
    return (int)d->nused;
}

void wk_delivery_drain(wk_delivery *d, void (*drained)(void *arg), void *arg)
{
    size_t i;

    d->draining = 1;
    d->drained = drained;
    d->drained_arg = arg;
    if (!d->paused && d->consumer) {
        d->paused = 1;
        ms_consumer_pause(d->consumer);
    }
    for (i = 0; i < d->nslots; i++)
        if (d->slots[i] && d->slots[i]->state == MSG_WAIT)
            msg_release(d->slots[i], 0);
    after_release(d);
}

void wk_delivery_abandon_all(wk_delivery *d)
{
    size_t i;

    d->draining = 1;
    for (i = 0; i < d->nslots; i++)
        if (d->slots[i])
            msg_release(d->slots[i], 0);
}

void wk_delivery_free(wk_delivery *d)
{
    if (d == NULL)
        return;
    if (d->nused > 0 || d->nclosing > 0)
        ms_panic("event=delivery_free_busy in_flight=%zu closing=%zu", d->nused, d->nclosing);
    free(d->slots);
    free(d);
}
