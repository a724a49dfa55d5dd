/*
 * delivery.c - the delivery engine (delivery.h).
 *
 * One `struct msg` (the transaction) per record held.  Its state changes
 * only through msg_enter_state():
 *
 *   HOLD   --due-->  CHECK  --markers read-->  SEND  --every destination
 *   answered-->  RECORD  --DSN, retry record, markers, events written-->
 *   done, or WAIT --backoff--> CHECK (only when Kafka refused the retry
 *   record or the DSN)
 *
 * and any state may end in CLOSING (released: done or abandoned).  In SEND
 * the recipients still pending are grouped by destination (`struct dest`),
 * each routed (transport map, relay host or MX through route.h) and handed
 * to an SMTP session, all at once; a destination whose address cannot be
 * reached tries the next one.  A destination's own states go through
 * dest_enter_state() (see enum dest_state).  Replies that arrive after a
 * state was left are recognised and dropped: route jobs, pacing answers and
 * SMTP sessions report by transaction id and destination number, the
 * producer by transaction id and record kind, Redis by transaction id and a
 * phase number that changes whenever a wait for Redis ends.
 *
 * The engine's rooms: pacing.h decides when a destination may connect
 * (dest_rate, dest_concurrency), outcome.h records each recipient's outcome
 * (log, metrics, event, suppression, bounce counter), requeue.h builds the
 * DSN and retry records; this file holds the slots, the consumers, the
 * message state machine, the delivered markers and settling.
 */
#include "delivery.h"
#include "control.h"
#include "dsn_rules.h"
#include "event.h"
#include "fence.h"
#include "mailauth.h"
#include "outcome.h"
#include "pacing.h"
#include "requeue.h"
#include "mtasts.h"
#include "tls_policy.h"
#include "tlsrpt.h"
#include "ms_addr.h"
#include "ms_buf.h"
#include "ms_domainmap.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_net.h"
#include "ms_queueid.h"
#include "ms_time.h"
#include "retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

/* Redis ids carry the phase in their low bits. */
#define WK_PHASE_BITS 8
/* Produce ids carry the kind of record in their low bits. */
#define WK_KIND_BITS 2
enum produce_kind { PRODUCE_EVENT, PRODUCE_RETRY, PRODUCE_DSN };
/* The engine's housekeeping tick (consumer kick, statistics). */
#define WK_TICK_MS 1000
/* How often the retry queue statistics are read. */
#define WK_RETRY_STATS_MS 10000
/* When Kafka refuses a retry record or a DSN, try again in place after this. */
#define WK_PRODUCE_RETRY_MS 5000

enum msg_state { MSG_HOLD, MSG_CHECK, MSG_SEND, MSG_RECORD, MSG_WAIT, MSG_CLOSING, MSG__NSTATES };

static const char *const msg_state_names[MSG__NSTATES] = {"hold", "check", "send", "record",
                                                         "wait", "closing"};

/* A destination's states; it changes them only through dest_enter_state():
 *
 *   NEW --route job--> ROUTE --addresses--> PACE --turn and lease--> SEND
 *   --the session's outcomes--> DONE, or SEND --next address--> PACE
 *
 * (PACE answers at once when pacing is off or already granted) and any
 * state may end in DONE with one result for every recipient: a route
 * verdict, a transport map entry, a refusal to start, a rate deferral. */
enum dest_state { DEST_NEW, DEST_ROUTE, DEST_PACE, DEST_SEND, DEST_DONE, DEST__NSTATES };

static const char *const dest_state_names[DEST__NSTATES] = {"new", "route", "pace", "send",
                                                           "done"};

/* One destination of one attempt: the recipients that share a route. */
struct dest {
    enum dest_state state;
    char key[MS_DNS_NAME_MAX + 8];    /* grouping key */
    char domain[MS_DNS_NAME_MAX + 1];
    const struct ms_transport *t;     /* transport map entry, or NULL */
    int relay;                        /* via [delivery] relay_host */
    size_t *rcpts, n;                 /* indices into msg.rcpts */
    size_t off, cnt;                  /* the transaction under way: rcpts[off .. off + cnt),
                                       * at most the group's recipients per message */
    uint64_t job;                     /* route job while DEST_ROUTE */
    struct wk_route_addr *addrs;
    size_t naddrs, next;              /* addresses and the next to try */
    struct wk_route_tlsa *tlsa;       /* DANE: the records addrs point at */
    uint64_t sts_job;                 /* MTA-STS lookup while DEST_ROUTE */
    struct wk_mtasts_result *sts;     /* the domain's MTA-STS policy, or NULL */
    wk_smtp *smtp;                    /* while DEST_SEND */
    int gate_pending;                 /* fencing: the check before DATA is out */
    uint64_t gate_sent_ms;            /* uv_now when it went */
    int gated;                        /* fencing: passed it (in DATA, outcome due) */
    char relay_str[WK_RELAY_MAX];     /* the address being tried */
    int paced;                        /* asked pacing.h: released with the dest */
    int shaped;                       /* shape is decided (the first address) */
    struct wk_dest_shape shape;       /* its group, limits and key (shaper.h) */
    int session_counted;              /* in the group's sessions gauge */
    ms_gauge *conn_gauge;             /* its destination's connections, while DEST_SEND */
};

struct msg {
    wk_delivery *d;
    uint64_t id;
    size_t slot;
    enum msg_state state;
    struct ms_record *rec;          /* NULL once released */
    uint64_t bytes;                 /* charged to in_flight_bytes (WK_MSG_COPIES) */
    int tier;                       /* 0: the queue topic, else the retry tier */
    ms_envelope *env;
    const char *qid;                /* env->queue_id */
    size_t nrcpts;
    struct wk_rcpt *rcpts;
    size_t *tried;                  /* rcpt indices of the current MGET */
    size_t ntried;
    const char *cur_tls;            /* on_smtp: the TLS of the outcomes being recorded */
    const char *cur_tls_policy;     /* on_smtp: its policy level, or NULL */
    const char *cur_group;          /* the outcomes' destination group label, or NULL */
    int cur_tls_auth;               /* on_smtp: how the server was authenticated */
    unsigned attempt;
    unsigned phase;
    int redis_pending;
    int events_pending;
    int produce_pending;            /* DSN and retry records not yet acknowledged */
    int produce_failed;
    int finalized;                  /* DSN and retry record sent for this round */
    int starting;                   /* msg_send() is starting destinations */
    struct dest *dests;
    size_t ndests, ndests_done;
    uv_timer_t timer;               /* Redis guard, hold, or the retry backoff */
    struct ms_qctl ctl;             /* the operator's action read this round (control.h) */
    int held;                       /* this round: held by the operator, no attempt */
    uint64_t delay_ms;              /* this round's retry delay; 0: the backoff */
    /* Duplicate fencing (fence.h). */
    struct wk_fence_lease fence;    /* the message's delivery lease */
    int take_rc;                    /* split take (MGET follows): 1 taken, 0 held, -1 failed */
    long long fence_prior;          /* the lease's previous holder's destinations in DATA */
    uint64_t fence_wait_ms;         /* held by another: lapses in this many ms */
    unsigned held_rounds;           /* rounds in a row that found it held by another */
    int fenced;                     /* this round: a destination refused at its check */
    int renewing;                   /* a renewal is out */
    uint64_t renew_sent_ms;
    int revoked;                    /* its partition was revoked: finishing only */
    /* Delivered markers the destination's 250 owes Redis (marker_retry). */
    unsigned char *owed;            /* per recipient: delivered here, marker not yet known written */
    int marker_failed;              /* a marker write failed: write the owed ones again */
    uint64_t marker_since_ms;       /* uv_now of the first failure; 0: none */
    int marker_due;                 /* marker_retry_cb is set on the timer */
    /* uv_hrtime when a destination's end of data went out whose delivered
     * outcome is not yet known recorded in Redis (the unavoidable
     * duplicate's window, mailstream_worker_unrecorded_seconds); 0 none. */
    uint64_t unrecorded_since_ns;
};

/* A message whose outcomes are all durable and that waits only for the
 * acknowledgements of its events (msg_park). */
struct parked {
    uint64_t id;             /* the message's id; its place is id % nslots */
    struct ms_record *rec;   /* NULL: the place is free */
    size_t bytes;            /* charged to in_flight_bytes while parked */
    int tier;
    int events;              /* acknowledgements still due */
};

struct wk_delivery {
    uv_loop_t *loop;
    struct wk_delivery_conf conf;
    ms_consumer *consumers[WK_RETRY_TIERS_MAX + 1]; /* [0] queue, [n] tier n */
    int cons_paused[WK_RETRY_TIERS_MAX + 1];
    int held[WK_RETRY_TIERS_MAX + 1];
    ms_producer *producer;
    ms_redis *redis;
    wk_mailauth *mailauth; /* mailauth.h: once per record, before routing; NULL: none */
    wk_pacing *pacing;     /* dest_rate and dest_concurrency (pacing.h) */
    wk_outcomes *outcomes; /* per recipient (outcome.h) */
    wk_control *control;   /* the queue control: index, suspensions (control.h) */
    wk_fence *fence;       /* duplicate fencing (fence.h) */
    struct wk_requeue_conf requeue;
    struct msg **slots;
    size_t nslots, nused, nclosing;
    struct parked *parked; /* nslots places */
    size_t nparked;
    uint64_t bytes, bytes_max; /* charged to records held (WK_MSG_COPIES each) */
    uint64_t seq;
    int draining;
    void (*drained)(void *);
    void *drained_arg;

    ms_counter *m_attempts, *m_malformed, *m_skipped, *m_redis_errors, *m_event_errors;
    /* From the end of data sent to the destination's reply, and to the
     * outcome recorded in Redis (docs/reliability.md, "The one duplicate
     * left"): the difference is this worker's own share. */
    ms_histogram *m_end_reply, *m_unrecorded;
    ms_counter *m_dsn, *m_requeued, *m_expired, *m_suppressed, *m_connect_fallback;
    ms_gauge *m_in_flight, *m_in_flight_bytes, *m_held, *m_connections;
    /* Open connections per destination (dest_name): the first
     * WK_DEST_GAUGES_MAX destinations seen get a series of their own, the
     * rest share dest="other", so the label set stays bounded. */
    struct dest_gauge {
        char name[WK_DEST_GAUGE_NAME_MAX + 1];
        ms_gauge *g;
    } dest_gauges[WK_DEST_GAUGES_MAX];
    size_t ndest_gauges;
    ms_gauge *m_dest_other;
    ms_gauge *m_retry_depth, *m_retry_oldest;
    ms_counter *m_dsn_suppressed[WK_DSN_VERDICT__N]; /* by verdict; [ALLOW] unused */
    ms_counter *m_dsn_notify_skipped, *m_delay_warnings;
    uv_timer_t stats_timer;         /* retry queue statistics from Redis */
    wk_smtp_cache *conn_cache;      /* idle connections for reuse; NULL: off */
    unsigned ticks;
    int stats_timer_open;
};

static void msg_check(struct msg *m);
static void msg_send(struct msg *m);
static const char *dest_name(const wk_delivery *d, const struct dest *ds);

/* The connections gauge of ds's destination (see wk_delivery.dest_gauges). */
static ms_gauge *dest_gauge(wk_delivery *d, const struct dest *ds)
{
    const char *name = dest_name(d, ds);
    char labels[2 * WK_DEST_GAUGE_NAME_MAX + 16], esc[2 * WK_DEST_GAUGE_NAME_MAX + 1];
    struct dest_gauge *dg;
    size_t i;

    if (strlen(name) > WK_DEST_GAUGE_NAME_MAX)
        return d->m_dest_other;
    for (i = 0; i < d->ndest_gauges; i++)
        if (strcmp(d->dest_gauges[i].name, name) == 0)
            return d->dest_gauges[i].g;
    if (d->ndest_gauges == WK_DEST_GAUGES_MAX)
        return d->m_dest_other;
    dg = &d->dest_gauges[d->ndest_gauges++];
    snprintf(dg->name, sizeof(dg->name), "%s", name);
    ms_label_escape(esc, sizeof(esc), name);
    snprintf(labels, sizeof(labels), "dest=\"%s\"", esc);
    dg->g = ms_gauge_new("mailstream_worker_dest_connections",
                         "SMTP and LMTP sessions open, by destination.", labels);
    return dg->g;
}

/* Count ds's session as open (on) or closed (off). */
static void dest_count_connection(wk_delivery *d, struct dest *ds, int on)
{
    if (on && ds->shaped) {
        wk_shaper_session(d->conf.shaper, ds->shape.label, 1);
        ds->session_counted = 1;
    } else if (!on && ds->session_counted) {
        wk_shaper_session(d->conf.shaper, ds->shape.label, 0);
        ds->session_counted = 0;
    }
    if (on) {
        ds->conn_gauge = dest_gauge(d, ds);
        ms_gauge_add(ds->conn_gauge, 1);
        ms_gauge_add(d->m_connections, 1);
    } else if (ds->conn_gauge != NULL) {
        ms_gauge_add(ds->conn_gauge, -1);
        ms_gauge_add(d->m_connections, -1);
        ds->conn_gauge = NULL;
    }
}
static void msg_settle(struct msg *m);
static void update_pauses(wk_delivery *d);

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

/* The destination a route job or SMTP session reports for. */
static struct dest *dest_lookup(wk_delivery *d, uint64_t id, struct msg **mp)
{
    struct msg *m = msg_lookup(d, id >> WK_DEST_BITS);
    size_t k = (size_t)(id & ((1u << WK_DEST_BITS) - 1));

    if (m == NULL || m->state != MSG_SEND || k >= m->ndests)
        return NULL;
    *mp = m;
    return &m->dests[k];
}

static uint64_t dest_id(const struct msg *m, const struct dest *ds)
{
    return (m->id << WK_DEST_BITS) | (uint64_t)(ds - m->dests);
}

static void msg_enter_state(struct msg *m, enum msg_state next)
{
    ms_debug("event=msg_state qid=%s from=%s to=%s", m->qid, msg_state_names[m->state],
             msg_state_names[next]);
    if (m->state == MSG_HOLD && next != MSG_HOLD) {
        m->d->held[m->tier]--;
        ms_gauge_add(m->d->m_held, -1);
    }
    if (next == MSG_HOLD) {
        m->d->held[m->tier]++;
        ms_gauge_add(m->d->m_held, 1);
    }
    m->state = next;
}

static void dest_enter_state(struct msg *m, struct dest *ds, enum dest_state next)
{
    ms_debug("event=dest_state qid=%s dest=%s from=%s to=%s", m->qid, dest_name(m->d, ds),
             dest_state_names[ds->state], dest_state_names[next]);
    ds->state = next;
}

/* ---- pausing the consumers ---- */

/* Charge (delta > 0) or credit the octets held; the pauses follow. */
static void bytes_charge(wk_delivery *d, int64_t delta)
{
    d->bytes = (uint64_t)((int64_t)d->bytes + delta);
    ms_gauge_set(d->m_in_flight_bytes, (int64_t)d->bytes);
}

static void update_pauses(wk_delivery *d)
{
    int i, want;

    for (i = 0; i <= WK_RETRY_TIERS_MAX; i++) {
        if (d->consumers[i] == NULL)
            continue;
        want = d->draining || d->nused >= d->nslots || d->bytes >= d->bytes_max ||
               (i > 0 && d->held[i] >= WK_RETRY_HOLD_MAX);
        if (want == d->cons_paused[i])
            continue;
        d->cons_paused[i] = want;
        if (want)
            ms_consumer_pause(d->consumers[i]);
        else
            ms_consumer_resume(d->consumers[i]); /* may hand out records at once */
    }
}

static void after_release(wk_delivery *d)
{
    if (d->draining) {
        if (d->nused == 0 && d->nclosing == 0 && d->nparked == 0 && d->drained) {
            void (*cb)(void *) = d->drained;
            d->drained = NULL;
            cb(d->drained_arg);
        }
        return;
    }
    update_pauses(d);
}

/* Give back ds's turn and connection lease, if it asked for them. */
static void dest_release_pacing(struct msg *m, struct dest *ds)
{
    if (!ds->paced)
        return;
    ds->paced = 0;
    wk_pacing_release(m->d->pacing, dest_id(m, ds));
}

static void dests_free(struct msg *m)
{
    size_t k;

    for (k = 0; k < m->ndests; k++) {
        struct dest *ds = &m->dests[k];
        if (ds->smtp) {
            wk_smtp_cancel(ds->smtp);
            dest_count_connection(m->d, ds, 0);
        }
        if (ds->state == DEST_ROUTE && ds->job)
            wk_router_cancel(m->d->conf.router, ds->job);
        if (ds->state == DEST_ROUTE && ds->sts_job)
            wk_mtasts_cancel(m->d->conf.mtasts, ds->sts_job);
        free(ds->sts);
        dest_release_pacing(m, ds);
        if (ds->shaped)
            wk_shaper_release(&ds->shape);
        free(ds->rcpts);
        free(ds->addrs);
        free(ds->tlsa);
    }
    free(m->dests);
    m->dests = NULL;
    m->ndests = m->ndests_done = 0;
}

static void msg_closed_cb(uv_handle_t *h)
{
    struct msg *m = h->data;
    wk_delivery *d = m->d;

    ms_envelope_free(m->env);
    free(m->rcpts);
    free(m->tried);
    free(m->owed);
    free(m);
    d->nclosing--;
    after_release(d);
}

static void fence_release(struct msg *m);

/* End the transaction: `done` stores the record's offset (its outcome is
 * durable); otherwise the record is abandoned and will be redelivered. */
static void msg_release(struct msg *m, int done)
{
    wk_delivery *d = m->d;

    if (m->state == MSG_CLOSING)
        return;
    fence_release(m);
    dests_free(m);
    if (d->mailauth)
        wk_mailauth_cancel(d->mailauth, m->id);
    if (m->rec == NULL)
        ; /* parked: msg_park keeps the record */
    else if (done)
        ms_consumer_done(d->consumers[m->tier], m->rec);
    else
        ms_info("event=abandoned qid=%s partition=%d offset=%lld state=%s", m->qid,
                (int)m->rec->partition, (long long)m->rec->offset, msg_state_names[m->state]);
    m->rec = NULL;
    bytes_charge(d, -(int64_t)m->bytes);
    m->bytes = 0;
    msg_enter_state(m, MSG_CLOSING);
    d->slots[m->slot] = NULL;
    d->nused--;
    d->nclosing++;
    ms_gauge_set(d->m_in_flight, (int64_t)d->nused);
    uv_close((uv_handle_t *)&m->timer, msg_closed_cb);
}

/* Redis commands nobody waits for (ms_redis_fire), counted when they fail. */
static void redis_fire(wk_delivery *d, int argc, const char **argv)
{
    ms_redis_fire(d->redis, d->m_redis_errors, argc, argv);
}

/* ---- outcomes ---- */

static int publish(wk_delivery *d, uint64_t id, const char *topic, const char *key,
                   size_t keylen, const void *data, size_t len, int *pending)
{
    int err;

    if (d->producer == NULL)
        return MS_EUNAVAIL;
    err = ms_producer_send(d->producer, topic, key, keylen, data, len, id);
    if (err < 0) {
        ms_warn("event=publish_failed topic=%s key=%.*s error=%s", topic, (int)keylen, key,
                ms_err_name(err));
        if (pending == NULL || id == 0 || (id & ((1u << WK_KIND_BITS) - 1)) == PRODUCE_EVENT)
            ms_counter_inc(d->m_event_errors);
        return err;
    }
    if (pending)
        (*pending)++;
    return 0;
}

/* One recipient's outcome for this attempt (outcome.h); `force` >= 0
 * imposes one (an expired message bounces with 4.4.7). */
static enum wk_outcome record_outcome(struct msg *m, size_t i, int code, const char *dsn,
                                      const char *reply, const char *relay, const char *remote,
                                      int force)
{
    struct wk_outcome_msg om;

    om.qid = m->qid;
    om.mail_from = m->env->mail_from ? m->env->mail_from->address : NULL;
    om.received_at_us = m->env->received_at_us;
    om.attempt = m->attempt;
    om.tls = m->cur_tls;
    om.tls_policy = m->cur_tls_policy;
    om.tls_auth = m->cur_tls_auth;
    om.group = m->cur_group;
    om.event_id = m->id << WK_KIND_BITS | PRODUCE_EVENT;
    om.events_pending = &m->events_pending;
    return wk_outcome_record(m->d->outcomes, &om, &m->rcpts[i], code, dsn, reply, relay, remote,
                             force);
}

/* RFC 3461 NOTIFY=SUCCESS: the notice owed for delivered recipient i, if
 * any (dsn_rules.h), goes into this record's DSN. */
static void note_success(struct msg *m, size_t i, int next_hop_dsn, int final)
{
    if (wk_dsn_success(m->env->recipients[i]->notify, next_hop_dsn, final,
                       &m->rcpts[i].dsn_action))
        m->rcpts[i].in_dsn = 1;
}

/* ---- Redis: delivered markers ---- */

static char *marker_key(const struct msg *m, size_t i)
{
    return ms_asprintf(MS_KEY_DELIVERED "%s:%s", m->qid, m->rcpts[i].addr);
}

static void redis_failed(wk_delivery *d, const struct msg *m, const char *what,
                         const struct ms_redis_reply *r)
{
    ms_warn("event=redis_failed qid=%s command=%s error=\"%.*s\"", m->qid, what,
            r && r->str ? (int)r->len : 0, r && r->str ? r->str : "");
    ms_counter_inc(d->m_redis_errors);
}

static void fence_wait(struct msg *m, uint64_t ms, const char *why);
static void fence_note_prior(struct msg *m);

/* The markers, suppression entries and control record read (MGET, or
 * with the lease: MS_SCRIPT_FENCE_TAKE): apply them and send. */
static void apply_checks(struct msg *m, const struct ms_redis_reply *r)
{
    wk_delivery *d = m->d;
    char q[600];
    size_t i, k, want;

    want = m->ntried * (d->conf.suppress_ttl_s > 0 ? 2 : 1) + 1; /* + the control record */
    if (r->type == MS_REDIS_ARRAY && r->nelem == want && r->elem[want - 1].type == MS_REDIS_STR &&
        ms_qctl_parse(r->elem[want - 1].str, r->elem[want - 1].len, &m->ctl) < 0)
        ms_warn("event=bad_control_record qid=%s", m->qid);
    want--;
    if (r->type != MS_REDIS_ARRAY || r->nelem != want + 1) {
        /* At least once: deliver without knowing. */
        redis_failed(d, m, "MGET", r);
    } else {
        for (k = 0; k < m->ntried; k++) {
            i = m->tried[k];
            if (r->elem[k].type == MS_REDIS_STR) {
                m->rcpts[i].state = WK_RCPT_DELIVERED;
                ms_counter_inc(d->m_skipped);
                ms_info("event=delivery_skipped qid=%s rcpt=%s reason=already_delivered",
                        m->qid,
                        ms_log_quote(q, sizeof(q), m->rcpts[i].addr, strlen(m->rcpts[i].addr)));
            } else if (want > m->ntried && r->elem[m->ntried + k].type == MS_REDIS_STR) {
                m->rcpts[i].suppressed = 1;
            }
        }
    }
    m->held_rounds = 0;
    fence_note_prior(m);
    msg_send(m);
}

static void on_mget(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup_redis(d, cookie);

    if (m == NULL || m->state != MSG_CHECK)
        return;
    uv_timer_stop(&m->timer);
    m->phase++;
    if (m->take_rc == 0) {
        fence_wait(m, m->fence_wait_ms, "held");
        return;
    }
    if (m->take_rc < 0) {
        fence_wait(m, 0, "unavailable");
        return;
    }
    apply_checks(m, r);
}

/* The lease's answer (fence.h).  With the keys read in the same script,
 * this is the attempt's only round trip before it starts; a message with
 * more keys than a script call takes has them read by an MGET sent right
 * behind it (take_rc: the lease's answer waits for it in on_mget). */
static void on_take(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup_redis(d, cookie);
    struct ms_redis_reply values;
    int rc;

    if (m == NULL || m->state != MSG_CHECK)
        return;
    rc = wk_fence_parse_take(&m->fence, r, &m->fence_prior, &m->fence_wait_ms, &values);
    if (rc < 0)
        redis_failed(d, m, "EVALSHA fence_take", r);
    if (m->take_rc == -2) { /* split: the MGET's reply follows */
        m->take_rc = rc;
        return;
    }
    uv_timer_stop(&m->timer);
    m->phase++;
    if (rc == 0)
        fence_wait(m, m->fence_wait_ms, "held");
    else if (rc < 0)
        fence_wait(m, 0, "unavailable");
    else
        apply_checks(m, &values);
}

/* A marker write answered (SET: a status; fence_done: an integer): the
 * outcome is durable once the last one is in. */
static void marker_written(wk_delivery *d, uint64_t cookie, const struct ms_redis_reply *r,
                           enum ms_redis_type want, const char *what)
{
    struct msg *m = msg_lookup_redis(d, cookie);

    if (m == NULL || (m->state != MSG_RECORD && m->state != MSG_SEND))
        return;
    if (r->type != want) {
        redis_failed(d, m, what, r);
        m->marker_failed = 1;
    } else if (m->unrecorded_since_ns != 0) {
        /* The first destination's markers are in (with several
         * destinations, the others' windows are not measured). */
        ms_histogram_observe(d->m_unrecorded,
                             (double)(uv_hrtime() - m->unrecorded_since_ns) / 1e9);
        m->unrecorded_since_ns = 0;
    }
    if (--m->redis_pending == 0 && m->state == MSG_RECORD) {
        uv_timer_stop(&m->timer);
        m->phase++;
        msg_settle(m);
    }
}

static void on_marker_set(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    marker_written(arg, cookie, r, MS_REDIS_STR, "SET");
}

static void write_marker(struct msg *m, size_t i, const char *relay)
{
    wk_delivery *d = m->d;
    char ttl[24], *key, *value;
    const char *argv[5];
    size_t argvlen[5];
    int k, err;

    if (d->redis == NULL)
        return;
    key = marker_key(m, i);
    value = ms_asprintf("node=%s relay=%s at=%lld", d->conf.node_id, relay, (long long)ms_time_now_us());
    snprintf(ttl, sizeof(ttl), "%lld", (long long)d->conf.marker_ttl_s);
    argv[0] = "SET";
    argv[1] = key;
    argv[2] = value;
    argv[3] = "EX";
    argv[4] = ttl;
    for (k = 0; k < 5; k++)
        argvlen[k] = strlen(argv[k]);
    err = ms_redis_command(d->redis, on_marker_set, d, redis_cookie(m), 5, argv, argvlen);
    if (err < 0) {
        redis_failed(d, m, "SET", NULL);
        m->marker_failed = 1;
    } else
        m->redis_pending++;
    free(key);
    free(value);
}

static void redis_guard_cb(uv_timer_t *t);

static void arm_redis_guard(struct msg *m)
{
    uv_timer_start(&m->timer, redis_guard_cb, WK_REDIS_TIMEOUT_MS, 0);
}

/* ---- duplicate fencing (fence.h; docs/reliability.md "Nothing twice") ---- */

static void retry_cb(uv_timer_t *t);

/* No attempt this round: another worker holds the lease (`ms` until it
 * lapses: looked at again sooner, wk_fence_held_wait_ms), or it could not
 * be taken or checked (Redis unavailable: ms 0, the lease's renewal
 * period).  The record stays ours and in memory; the next round takes the
 * lease again and reads the markers afresh. */
static void fence_wait(struct msg *m, uint64_t ms, const char *why)
{
    wk_delivery *d = m->d;

    if (strcmp(why, "held") == 0) {
        if (m->held_rounds == 0)
            wk_fence_count_wait(d->fence); /* once per postponed attempt */
        ms = wk_fence_held_wait_ms(ms, wk_fence_lease_ms(d->fence), m->held_rounds++);
    } else {
        ms = wk_fence_lease_ms(d->fence) / 3 + WK_FENCE_MARGIN_MS / 4;
    }
    ms_info("event=lease_wait qid=%s reason=%s wait_ms=%llu", m->qid, why,
            (unsigned long long)ms);
    if (d->draining || m->revoked) {
        msg_release(m, 0);
        return;
    }
    msg_enter_state(m, MSG_WAIT);
    uv_timer_start(&m->timer, retry_cb, ms, 0);
}

/* The lease's previous holder passed the check before DATA and recorded no
 * outcome: it died or stalled after (or while) sending the message, so the
 * recipients still without a marker may get it twice.  Nothing can tell
 * (the destination does not say); count them. */
static void fence_note_prior(struct msg *m)
{
    size_t i, n = 0;

    if (m->fence_prior <= 0)
        return;
    for (i = 0; i < m->nrcpts; i++)
        n += m->rcpts[i].state == WK_RCPT_PENDING;
    if (n > 0) {
        wk_fence_count_unavoidable(m->d->fence, n);
        ms_warn("event=duplicate_risk kind=unavoidable qid=%s rcpts=%zu prior_in_data=%lld "
                "gen=%lld", m->qid, n, m->fence_prior, m->fence.gen);
    }
    m->fence_prior = 0;
}

static void on_fence_released(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;

    (void)cookie;
    if (r->type != MS_REDIS_INT)
        ms_counter_inc(d->m_redis_errors);
}

/* Give the lease back, unless a destination may be in DATA (its session
 * cancelled mid-message): then it lapses by itself, and the next holder
 * sees that this one reached DATA (fence_note_prior). */
static void fence_release(struct msg *m)
{
    size_t k;

    /* Given up with its take unanswered (revoked in MSG_CHECK): released
     * too, or the take, if it got the lease, would hold the next owner for
     * the whole lease. */
    if (!m->fence.held && !m->fence.taking)
        return;
    for (k = 0; k < m->ndests; k++)
        if (m->dests[k].gated && m->dests[k].smtp != NULL) {
            m->fence.held = 0;
            return;
        }
    if (wk_fence_done(m->d->fence, &m->fence, m->qid, NULL, 0, "", 0, 1, on_fence_released, m->d,
                      0) < 0)
        ms_counter_inc(m->d->m_redis_errors);
}

static void on_gate_checked(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = NULL;
    struct dest *ds = dest_lookup(d, id, &m);
    uint64_t deadline;

    if (ds == NULL || ds->state != DEST_SEND || !ds->gate_pending || ds->smtp == NULL)
        return;
    ds->gate_pending = 0;
    deadline = wk_fence_parse_check(&m->fence, r, ds->gate_sent_ms);
    if (deadline == 0) {
        const char *why = r->type == MS_REDIS_INT ? "lost" : "unavailable";
        if (r->type != MS_REDIS_INT)
            redis_failed(d, m, "EVALSHA fence_check", r);
        wk_fence_count_fenced(d->fence, why);
        ms_warn("event=fenced qid=%s relay=%s reason=%s gen=%lld", m->qid, ds->relay_str, why,
                m->fence.gen);
        m->fenced = 1;
        wk_smtp_gate_answer(ds->smtp, 0);
        return;
    }
    ds->gated = 1;
    wk_smtp_gate_answer(ds->smtp, deadline);
}

/* The SMTP session has every RCPT answered, some accepted: the last moment
 * before DATA (smtp_client.h).  Is the lease still ours? */
static void on_gate(void *arg, uint64_t id)
{
    wk_delivery *d = arg;
    struct msg *m = NULL;
    struct dest *ds = dest_lookup(d, id, &m);
    const char *why = "lost";

    if (ds == NULL || ds->state != DEST_SEND || ds->smtp == NULL)
        return;
    if (m->fence.held && !m->revoked) {
        ds->gate_sent_ms = uv_now(d->loop);
        if (wk_fence_check(d->fence, &m->fence, m->qid, 1, on_gate_checked, d, id,
                           ds->gate_sent_ms) == 0) {
            ds->gate_pending = 1; /* fence_tick_cb is its guard */
            return;
        }
        why = "unavailable";
        ms_counter_inc(d->m_redis_errors);
    } else if (m->revoked) {
        why = "revoked";
    }
    wk_fence_count_fenced(d->fence, why);
    ms_warn("event=fenced qid=%s relay=%s reason=%s", m->qid, ds->relay_str, why);
    m->fenced = 1;
    wk_smtp_gate_answer(ds->smtp, 0);
}

static void on_fence_renewed(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup_redis(d, cookie);
    uint64_t until;
    size_t k;

    if (m == NULL || !m->renewing)
        return;
    m->renewing = 0;
    if (m->state != MSG_SEND)
        return;
    until = wk_fence_parse_check(&m->fence, r, m->renew_sent_ms);
    if (until == 0) {
        /* Destinations in DATA keep the deadline they have; the others
         * will find the lease gone at their check. */
        ms_warn("event=lease_lost qid=%s gen=%lld reply=%s", m->qid, m->fence.gen,
                r->type == MS_REDIS_INT ? "taken" : "failed");
        return;
    }
    for (k = 0; k < m->ndests; k++)
        if (m->dests[k].gated && m->dests[k].smtp != NULL)
            wk_smtp_extend(m->dests[k].smtp, until);
}

/* While the attempt runs (SEND): renew the lease every third of its life,
 * and give up checks Redis has not answered in WK_REDIS_TIMEOUT_MS. */
static void fence_tick_cb(uv_timer_t *t)
{
    struct msg *m = t->data;
    wk_delivery *d = m->d;
    uint64_t now = uv_now(d->loop), id = m->id;
    size_t k;

    if (m->state != MSG_SEND) {
        uv_timer_stop(t);
        return;
    }
    if (m->fence.held && !m->renewing &&
        now - m->fence.renewed_ms >= wk_fence_lease_ms(d->fence) / 3) {
        m->renew_sent_ms = now;
        if (wk_fence_check(d->fence, &m->fence, m->qid, 0, on_fence_renewed, d, redis_cookie(m),
                           now) == 0)
            m->renewing = 1;
    }
    for (k = 0;; k++) {
        struct dest *ds;
        /* Answering may end the destination, and with the last one the
         * attempt: look the message up again each time. */
        if ((m = msg_lookup(d, id)) == NULL || m->state != MSG_SEND || k >= m->ndests)
            break;
        ds = &m->dests[k];
        if (!ds->gate_pending || ds->smtp == NULL || now - ds->gate_sent_ms < WK_REDIS_TIMEOUT_MS)
            continue;
        ds->gate_pending = 0;
        ms_counter_inc(d->m_redis_errors);
        wk_fence_count_fenced(d->fence, "unavailable");
        ms_warn("event=fenced qid=%s relay=%s reason=unavailable timeout_ms=%d", m->qid,
                ds->relay_str, WK_REDIS_TIMEOUT_MS);
        m->fenced = 1;
        wk_smtp_gate_answer(ds->smtp, 0);
    }
}

static void on_fence_done(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    marker_written(arg, cookie, r, MS_REDIS_INT, "EVALSHA fence_done");
}

/* A destination that passed its check has its outcomes: write its
 * delivered markers and count it out of DATA in one script call, giving
 * the lease back with the attempt's last destination unless `more`
 * transactions of it follow (a group's recipients per message, shaper.h),
 * each checked again before its DATA.  (A destination with more delivered
 * recipients than a script call carries writes them with SETs, as without
 * fencing.) */
static void fence_done(struct msg *m, struct dest *ds, const size_t *delivered, size_t n,
                       int more)
{
    wk_delivery *d = m->d;
    char **keys, *value;
    size_t k;
    int last = !more && m->ndests_done + 1 == m->ndests && !m->starting, err;

    value = ms_asprintf("node=%s relay=%s at=%lld", d->conf.node_id, ds->relay_str,
                        (long long)ms_time_now_us());
    if (n + 1 > WK_FENCE_KEYS_MAX) {
        for (k = 0; k < n; k++)
            write_marker(m, delivered[k], ds->relay_str);
        n = 0;
    }
    keys = ms_calloc(n + 1, sizeof(*keys));
    for (k = 0; k < n; k++)
        keys[k] = marker_key(m, delivered[k]);
    err = wk_fence_done(d->fence, &m->fence, m->qid, keys, n, value, 1, last, on_fence_done, d,
                        redis_cookie(m));
    if (err < 0) {
        redis_failed(d, m, "EVALSHA fence_done", NULL);
        for (k = 0; k < n; k++)
            write_marker(m, delivered[k], ds->relay_str);
    } else {
        m->redis_pending++;
    }
    ds->gated = 0;
    for (k = 0; k < n; k++)
        free(keys[k]);
    free(keys);
    free(value);
}

/* ---- the transaction ---- */

/* Collect the recipients still pending into m->tried. */
static size_t collect_pending(struct msg *m)
{
    size_t i;

    m->ntried = 0;
    for (i = 0; i < m->nrcpts; i++)
        if (m->rcpts[i].state == WK_RCPT_PENDING)
            m->tried[m->ntried++] = i;
    return m->ntried;
}

static void msg_check(struct msg *m)
{
    wk_delivery *d = m->d;
    const char **argv;
    size_t *argvlen, k, nkeys;
    int err, sup = d->conf.suppress_ttl_s > 0;

    msg_enter_state(m, MSG_CHECK);
    memset(&m->ctl, 0, sizeof(m->ctl));
    m->held = 0;
    m->delay_ms = 0;
    if (collect_pending(m) == 0 || d->redis == NULL) {
        msg_send(m);
        return;
    }
    /* The delivered markers, the suppression entries and the operator's
     * control record (control.h), in one round trip. */
    nkeys = m->ntried * (sup ? 2 : 1) + 1;
    argv = ms_calloc(nkeys + 1, sizeof(*argv));
    argvlen = ms_calloc(nkeys + 1, sizeof(*argvlen));
    argv[0] = "MGET";
    argvlen[0] = 4;
    for (k = 0; k < m->ntried; k++) {
        argv[k + 1] = marker_key(m, m->tried[k]);
        if (sup)
            argv[m->ntried + k + 1] = wk_suppress_key(m->rcpts[m->tried[k]].addr);
    }
    argv[nkeys] = ms_asprintf(MS_KEY_CONTROL "%s", m->qid);
    for (k = 1; k <= nkeys; k++)
        argvlen[k] = strlen(argv[k]);
    m->phase++;
    m->take_rc = 1;
    m->fenced = 0;
    if (wk_fence_on(d->fence)) {
        /* Duplicate fencing: the lease, with the reads when they fit in
         * the script call, else with an MGET right behind it (one round
         * trip either way). */
        int split = nkeys + 1 > WK_FENCE_KEYS_MAX;
        wk_fence_new_round(d->fence, &m->fence, m->id);
        err = wk_fence_take(d->fence, &m->fence, m->qid, split ? NULL : (char *const *)argv + 1,
                            split ? 0 : nkeys, on_take, d, redis_cookie(m), uv_now(d->loop));
        if (err == 0 && split) {
            m->take_rc = -2;
            err = ms_redis_command(d->redis, on_mget, d, redis_cookie(m), (int)nkeys + 1, argv,
                                   argvlen);
        }
    } else {
        err = ms_redis_command(d->redis, on_mget, d, redis_cookie(m), (int)nkeys + 1, argv,
                               argvlen);
    }
    for (k = 1; k <= nkeys; k++)
        free((char *)argv[k]);
    free(argv);
    free(argvlen);
    if (err < 0 && wk_fence_on(d->fence)) {
        /* No lease, no attempt: Kafka keeps the record meanwhile.  A take
         * sent before its MGET could not be is given back (fence_release:
         * only a take in flight). */
        redis_failed(d, m, "EVALSHA fence_take", NULL);
        m->phase++;
        fence_release(m);
        fence_wait(m, 0, "unavailable");
        return;
    }
    if (err < 0) {
        /* Redis is down: deliver anyway (at least once). */
        redis_failed(d, m, "MGET", NULL);
        msg_send(m);
        return;
    }
    arm_redis_guard(m);
}

/* Every destination has answered: record. */
static void msg_sent(struct msg *m)
{
    fence_release(m);
    dests_free(m);
    msg_enter_state(m, MSG_RECORD);
    /* Marker writes started in SEND keep their phase. */
    if (m->redis_pending > 0)
        arm_redis_guard(m);
    msg_settle(m);
}

static void dest_done(struct msg *m, struct dest *ds)
{
    dest_enter_state(m, ds, DEST_DONE);
    if (++m->ndests_done == m->ndests && !m->starting)
        msg_sent(m);
}

/* Recipient i's retry schedule is its destination group's (shaper.h). */
static void note_schedule(struct msg *m, const struct dest *ds, size_t i)
{
    m->rcpts[i].retry_min_ms = ds->shaped ? ds->shape.lim.retry_min_ms : 0;
    m->rcpts[i].retry_max_ms = ds->shaped ? ds->shape.lim.retry_max_ms : 0;
}

/* The whole destination ends with one result (a route verdict, a transport
 * map error, a local refusal). */
static void dest_finish_all(struct msg *m, struct dest *ds, int code, const char *dsn,
                            const char *text, const char *relay)
{
    enum wk_outcome o;
    size_t k;

    m->cur_group = ds->shaped ? ds->shape.label : NULL;
    for (k = ds->off; k < ds->n; k++) { /* earlier transactions have theirs */
        o = record_outcome(m, ds->rcpts[k], code, dsn, text, relay, NULL, -1);
        note_schedule(m, ds, ds->rcpts[k]);
        if (o == WK_OUTCOME_DELIVERED) /* the discard transport: final */
            note_success(m, ds->rcpts[k], 0, 1);
    }
    m->cur_group = NULL;
    dest_done(m, ds);
}

static void dest_connect(struct msg *m, struct dest *ds);
static void dest_connect_now(struct msg *m, struct dest *ds);

static int no_server_reply(const struct wk_smtp_result *res)
{
    size_t k;

    if (res->err == 0)
        return 0;
    for (k = 0; k < res->nrcpts; k++)
        if (res->rcpts[k].code != 0)
            return 0;
    return 1;
}

static void on_smtp(void *arg, uint64_t id, const struct wk_smtp_result *res)
{
    wk_delivery *d = arg;
    struct msg *m = NULL;
    struct dest *ds = dest_lookup(d, id, &m);
    const char *remote;
    enum wk_outcome o;
    size_t k, i, *delivered, ndelivered = 0;
    int taken = 0; /* a recipient of this transaction was delivered or bounced */
    int more;      /* another transaction follows for the rest */

    if (ds == NULL || ds->state != DEST_SEND)
        return;
    ds->smtp = NULL;
    dest_count_connection(d, ds, 0);
    /* RFC 8460: each session to an MX host counts for its policy domain. */
    if (d->conf.tlsrpt && !ds->relay && !ds->t && ds->next > 0 && !res->reused)
        wk_tlsrpt_session(d->conf.tlsrpt, ds->domain, ds->sts, &ds->addrs[ds->next - 1],
                          ds->tlsa, res->tls_result, res->tls && res->tls[0], res->local_ip);
    /* RFC 5321 §5.1: when a host cannot be reached, try the next address
     * (of this MX host, then of the next ones) before deferring. */
    if (no_server_reply(res) && res->reused) {
        /* The server dropped a parked connection as we reused it: same
         * address again (the cache hands out another one, or a fresh one). */
        ds->next--;
        dest_connect(m, ds);
        return;
    }
    /* try_next: this server cannot take the message (REQUIRETLS), another
     * may (RFC 8689, X.7.30: "none of the SMTP servers"; smtp_client.h). */
    if ((no_server_reply(res) || res->try_next) && ds->next < ds->naddrs) {
        ms_info("event=smtp_next_address qid=%s relay=%s reply=\"%s\"", m->qid, ds->relay_str,
                res->nrcpts ? res->rcpts[0].reply : "");
        ms_counter_inc(d->m_connect_fallback);
        dest_connect(m, ds);
        return;
    }
    remote = ds->addrs && ds->next > 0 ? ds->addrs[ds->next - 1].host : NULL;
    if (res->fenced) {
        /* Another worker owns the message now (or the lease could not be
         * checked): no outcome, the recipients stay pending for a later
         * round, which finds them delivered or takes the lease again. */
        dest_release_pacing(m, ds);
        dest_done(m, ds);
        return;
    }
    m->cur_tls = res->tls;
    m->cur_tls_policy = res->tls_policy;
    m->cur_tls_auth = res->tls_auth;
    m->cur_group = ds->shaped ? ds->shape.label : NULL;
    /* The backoff rules hear what the server said: its first refusal (a
     * 421 applies to the whole session alike). */
    for (k = 0; ds->shaped && k < res->nrcpts; k++)
        if (res->rcpts[k].code < 200 || res->rcpts[k].code >= 300) {
            wk_shaper_observe(d->conf.shaper, &ds->shape, res->rcpts[k].code, res->rcpts[k].dsn,
                              res->rcpts[k].reply, m->qid);
            break;
        }
    if (res->end_sent_ns != 0 && res->nrcpts > 0 && res->rcpts[0].code >= 200 &&
        res->rcpts[0].code < 300) {
        ms_histogram_observe(d->m_end_reply, (double)(uv_hrtime() - res->end_sent_ns) / 1e9);
        if (m->unrecorded_since_ns == 0)
            m->unrecorded_since_ns = res->end_sent_ns;
    }
    delivered = ms_calloc(ds->cnt + 1, sizeof(*delivered));
    for (k = 0; k < res->nrcpts && k < ds->cnt; k++) {
        i = ds->rcpts[ds->off + k];
        o = record_outcome(m, i, res->rcpts[k].code, res->rcpts[k].dsn, res->rcpts[k].reply,
                           ds->relay_str, remote, -1);
        note_schedule(m, ds, i);
        taken |= o != WK_OUTCOME_DEFERRED;
        /* Right after the remote 250: from now on a redelivery skips it
         * (XXX and a success notice not yet produced is lost with it). */
        if (o == WK_OUTCOME_DELIVERED) {
            m->owed[i] = 1;
            if (ds->gated)
                delivered[ndelivered++] = i;
            else
                write_marker(m, i, ds->relay_str);
            note_success(m, i, res->dsn_offered, ds->t && ds->t->kind == MS_TRANSPORT_LMTP);
        }
    }
    ds->off += ds->cnt;
    more = ds->off < ds->n && taken;
    if (ds->gated) /* markers and the lease in one round trip */
        fence_done(m, ds, delivered, ndelivered, more);
    free(delivered);
    if (more) {
        /* The group takes fewer recipients per message: the next ones in
         * another transaction to the same server (its parked connection),
         * under the same turn and lease. */
        m->cur_tls = NULL;
        m->cur_tls_policy = NULL;
        m->cur_tls_auth = 0;
        m->cur_group = NULL;
        ds->next--;
        dest_connect_now(m, ds);
        return;
    }
    /* A server that took none of them (a 421, a full queue) would say the
     * same to the rest: they are deferred alike, without asking. */
    for (k = ds->off; k < ds->n && res->nrcpts > 0; k++) {
        record_outcome(m, ds->rcpts[k], res->rcpts[0].code, res->rcpts[0].dsn,
                       res->rcpts[0].reply, ds->relay_str, remote, -1);
        note_schedule(m, ds, ds->rcpts[k]);
    }
    dest_release_pacing(m, ds);
    m->cur_tls = NULL;
    m->cur_tls_policy = NULL;
    m->cur_tls_auth = 0;
    m->cur_group = NULL;
    dest_done(m, ds);
}

/* The name rates and leases are kept under: the relay host, the transport
 * map's next hop (host or socket path), or the recipient domain (MX). */
static const char *dest_name(const wk_delivery *d, const struct dest *ds)
{
    return ds->relay ? d->conf.relay
         : ds->t    ? (ds->t->path[0] ? ds->t->path : ds->t->host)
                    : ds->domain;
}

/* ---- pacing (pacing.h): [delivery] dest_rate and dest_concurrency ---- */

/* Waited too long for its turn (or the worker is draining): defer the
 * destination's recipients like any temporary failure; the retry record
 * keeps them. */
static void rate_defer(struct msg *m, struct dest *ds, uint64_t waited_ms, int64_t next_turn_ms)
{
    wk_delivery *d = m->d;
    char text[256];

    ms_info("event=dest_rate_deferred qid=%s dest=%s waited_ms=%llu next_turn_ms=%lld "
            "draining=%d",
            m->qid, dest_name(d, ds), (unsigned long long)waited_ms, (long long)next_turn_ms,
            d->draining);
    snprintf(text, sizeof(text),
             "destination over its rate ([delivery] dest_rate): waited %llu ms for its turn",
             (unsigned long long)waited_ms);
    /* RFC 3463 X.4.5: mail system congestion. */
    dest_finish_all(m, ds, 0, "4.4.5", text, dest_name(d, ds));
}

static void on_paced(void *arg, uint64_t id, enum wk_pace_answer a, uint64_t waited_ms,
                     int64_t next_turn_ms)
{
    wk_delivery *d = arg;
    struct msg *m = NULL;
    struct dest *ds = dest_lookup(d, id, &m);

    if (ds == NULL || ds->state != DEST_PACE)
        return;
    if (a == WK_PACE_DEFER) {
        ds->paced = 0; /* pacing forgot it */
        rate_defer(m, ds, waited_ms, next_turn_ms);
    } else {
        dest_connect_now(m, ds);
    }
}

/* Decide ds's group and limits (shaper.h) from its route: the relay host
 * and transport next hops by their names, MX routing by the MX hosts. */
static void dest_shape(wk_delivery *d, struct dest *ds)
{
    const char **hosts = ms_calloc(ds->naddrs ? ds->naddrs : 1, sizeof(*hosts));
    size_t k;

    for (k = 0; k < ds->naddrs; k++)
        hosts[k] = ds->addrs[k].host;
    wk_shaper_resolve(d->conf.shaper, ds->relay || ds->t ? dest_name(d, ds) : NULL, ds->domain,
                      hosts, ds->naddrs, &ds->shape);
    free(hosts);
    ds->shaped = 1;
}

/* Connect to the next address once pacing lets it (at once when it is off
 * or the turn and lease are held already), under the limits of ds's group
 * with its backoff applied; a suspended group defers without a session. */
static void dest_connect(struct msg *m, struct dest *ds)
{
    wk_delivery *d = m->d;
    struct wk_pace_limits lim;
    int64_t until = 0;
    const char *opwhy;
    char why[MS_QCTL_REASON_MAX + 1], text[MS_QCTL_REASON_MAX + WK_SHAPE_KEY_MAX + 96];

    if (!ds->shaped)
        dest_shape(d, ds);
    if (wk_shaper_limits(d->conf.shaper, &ds->shape, &lim.rate, &lim.connections, &until, why,
                         sizeof(why))) {
        ms_info("event=dest_backoff_deferred qid=%s group=%s rule=%s", m->qid, ds->shape.key,
                why);
        snprintf(text, sizeof(text),
                 "destination group %s suspended by backoff rule %s for %lld s more", ds->shape.key,
                 why, (long long)((until - ms_time_now_us()) / 1000000 + 1));
        /* RFC 3463 X.4.5: mail system congestion (theirs, as they said). */
        dest_release_pacing(m, ds);
        dest_finish_all(m, ds, 0, "4.4.5", text, ds->shape.key);
        return;
    }
    if (!ds->paced && strcmp(ds->shape.key, dest_name(d, ds)) != 0 &&
        wk_control_suspended(d->control, ds->shape.key, &until, &opwhy)) {
        ms_info("event=dest_suspended_deferred qid=%s dest=%s", m->qid, ds->shape.key);
        snprintf(text, sizeof(text), "destination group %s suspended by the operator: %s",
                 ds->shape.key, opwhy);
        dest_finish_all(m, ds, 0, "4.3.0", text, ds->shape.key); /* as msg_send does */
        return;
    }
    dest_enter_state(m, ds, DEST_PACE);
    ds->paced = 1;
    if (wk_pacing_acquire(d->pacing, dest_id(m, ds), ds->shape.key, &lim, m->qid))
        dest_connect_now(m, ds);
}

/* The next hop's TLS policy entry (tls_policy.h): a transport's or the
 * relay's "[host]:port" first, then the recipient domain.  *nexthop: the
 * name "nexthop" in match= stands for. */
static const struct wk_tls_entry *dest_tls_entry(wk_delivery *d, const struct dest *ds,
                                                 const char **nexthop)
{
    char key[MS_DOMAINMAP_KEY_MAX + 1], host[MS_DNS_NAME_MAX + 1];
    int port = 0;

    *nexthop = ds->domain;
    if (ds->relay && ms_split_hostport(d->conf.relay, host, sizeof(host), &port) == 0) {
        snprintf(key, sizeof(key), "[%s]:%d", host, port ? port : d->conf.smtp_port);
        *nexthop = d->conf.relay;
        return wk_tls_map_find(d->conf.tls_map, ds->domain, key);
    }
    if (ds->t && ds->t->host[0]) {
        port = ds->t->port ? ds->t->port
               : ds->t->kind == MS_TRANSPORT_LMTP ? MS_LMTP_PORT : d->conf.smtp_port;
        snprintf(key, sizeof(key), "[%s]:%d", ds->t->host, port);
        *nexthop = ds->t->host;
        return wk_tls_map_find(d->conf.tls_map, ds->domain, key);
    }
    return wk_tls_map_find(d->conf.tls_map, ds->domain, NULL);
}

/* The TLS this connection must have, into sm (pointing into td): -1 when
 * the policy forbids trying this address (DANE, RFC 7672 §2.2), after
 * moving on to the next address or, at the last, deferring the
 * destination with 4.7.5. */
static int dest_tls(struct msg *m, struct dest *ds, const struct wk_route_addr *a,
                    struct wk_smtp_msg *sm, struct wk_tls_decision *td)
{
    static const struct wk_tls_entry dane_only = {.level = WK_TLS_LEVEL_DANE_ONLY};
    wk_delivery *d = m->d;
    const char *nexthop;
    const struct wk_tls_entry *e = dest_tls_entry(d, ds, &nexthop);
    const char *label;
    char why[WK_SMTP_REPLY_TEXT_MAX];

    /* The group's policy where the map names neither domain nor next hop. */
    if (ds->shape.tls && e == wk_tls_map_default(d->conf.tls_map))
        e = ds->shape.tls;
    label = wk_tls_level_name(e->level);

    if (ds->sts && a->dane == WK_DANE_USABLE) {
        /* RFC 8461 §2: DANE wins where both exist. */
        e = &dane_only;
        label = wk_tls_level_name(e->level);
        wk_tls_decide(e, a->host, nexthop, WK_DANE_USABLE, td);
    } else if (ds->sts && ds->sts->policy.mode == MS_MTASTS_ENFORCE) {
        /* §4.2: only to an MX host the policy names, over TLS verified
         * for that name; never in plaintext. */
        memset(td, 0, sizeof(*td));
        td->level = WK_TLS_LEVEL_VERIFY;
        td->tls = WK_TLS_VERIFY;
        label = "mta-sts";
        if (!ms_mtasts_mx_match(&ds->sts->policy, a->host))
            td->defer = "MX host not named by the MTA-STS policy";
    } else {
        wk_tls_decide(e, a->host, nexthop, (enum wk_dane_state)a->dane, td);
    }
    if (td->defer) {
        snprintf(why, sizeof(why), "TLS policy %s for %.255s: %s", label, a->host, td->defer);
        ms_info("event=tls_policy_defer qid=%s relay=%s policy=%s dane=%s reason=\"%s\"", m->qid,
                ds->relay_str, label, wk_dane_state_name((enum wk_dane_state)a->dane),
                td->defer);
        if (d->conf.tlsrpt && !ds->relay && !ds->t)
            wk_tlsrpt_session(d->conf.tlsrpt, ds->domain, ds->sts, a, ds->tlsa,
                              WK_TLSRPT_REFUSED, 0, NULL);
        if (ds->next < ds->naddrs) {
            dest_connect_now(m, ds); /* RFC 7672 §2.2: the next MX host may do */
            return -1;
        }
        dest_release_pacing(m, ds);
        dest_finish_all(m, ds, 0, "4.7.5", why, ds->relay_str);
        return -1;
    }
    sm->tls = td->tls;
    sm->tls_ctx = e->ctx ? e->ctx : d->conf.tls_ctx;
    sm->tls_name = a->host; /* the MX host name, the relay's host, or an IP literal */
    sm->tls_label = label;
    sm->tls_match = td->match;
    sm->tls_nmatch = td->nmatch;
    if (td->dane && ds->tlsa) {
        sm->tlsa = &ds->tlsa->rr[a->tlsa_first];
        sm->ntlsa = a->ntlsa;
    }
    return 0;
}

static void dest_connect_now(struct msg *m, struct dest *ds)
{
    wk_delivery *d = m->d;
    const struct wk_route_addr *a = &ds->addrs[ds->next++];
    struct wk_smtp_msg sm;
    struct wk_smtp_timeouts timeouts;
    struct wk_tls_decision td;
    const char **rcpts, **orcpt;
    uint32_t *notify;
    char ip[INET6_ADDRSTRLEN + 2];
    size_t k;
    int err;

    ms_addr_str((const struct sockaddr *)&a->ss, ip, sizeof(ip));
    if (a->ss.ss_family == AF_UNIX)
        snprintf(ds->relay_str, sizeof(ds->relay_str), "unix:%s", a->host);
    else if (ds->relay)
        snprintf(ds->relay_str, sizeof(ds->relay_str), "%s", d->conf.relay);
    else
        snprintf(ds->relay_str, sizeof(ds->relay_str), "%s[%s]:%d", a->host, ip,
                 ms_addr_port((const struct sockaddr *)&a->ss));
    memset(&sm, 0, sizeof(sm));
    /* The TLS policy first: it may skip this address (nothing to free). */
    if (d->conf.tls_ctx && d->conf.tls_map && a->ss.ss_family != AF_UNIX) {
        if (dest_tls(m, ds, a, &sm, &td) < 0)
            return;
    } else if (d->conf.tls_ctx) {
        sm.tls = WK_TLS_MAY;
        sm.tls_ctx = d->conf.tls_ctx;
        sm.tls_name = a->host; /* the MX host name, the relay's host, or an IP literal */
    }
    /* This transaction's recipients: the group's recipients per message
     * from where the last one stopped. */
    ds->cnt = ds->n - ds->off;
    if (ds->shape.lim.rcpts_per_msg > 0 && ds->cnt > ds->shape.lim.rcpts_per_msg)
        ds->cnt = ds->shape.lim.rcpts_per_msg;
    rcpts = ms_calloc(ds->cnt, sizeof(*rcpts));
    notify = ms_calloc(ds->cnt, sizeof(*notify));
    orcpt = ms_calloc(ds->cnt, sizeof(*orcpt));
    for (k = 0; k < ds->cnt; k++) {
        size_t i = ds->rcpts[ds->off + k];
        rcpts[k] = m->rcpts[i].addr;
        notify[k] = m->env->recipients[i]->notify;
        orcpt[k] = m->env->recipients[i]->orcpt;
    }
    sm.log_id = m->qid;
    sm.helo_name = d->conf.helo_name;
    sm.mail_from = m->env->mail_from && m->env->mail_from->address ? m->env->mail_from->address
                                                                    : "";
    sm.body_8bitmime = m->env->mail_from && m->env->mail_from->body == MS_ENV_BODY_8BITMIME;
    sm.body_binarymime = m->env->mail_from &&
                         m->env->mail_from->body == MS_ENV_BODY_BINARYMIME;
    sm.smtputf8 = m->env->mail_from && m->env->mail_from->smtputf8;
    if (m->env->mail_from) { /* RFC 8689, RFC 3461: smtp_client.h */
        sm.requiretls = m->env->mail_from->requiretls;
        sm.dsn_ret = (int)m->env->mail_from->ret;
        sm.dsn_envid = m->env->mail_from->envid;
    }
    sm.dsn_notify = notify;
    sm.dsn_orcpt = orcpt;
    if (ds->relay && d->conf.relay_user) {
        /* RFC 4954 AUTH to the smarthost only (smtp_client.h). */
        sm.auth_user = d->conf.relay_user;
        sm.auth_password = d->conf.relay_password;
        sm.auth_plaintext = d->conf.relay_auth_plaintext;
        sm.auth_mechs = d->conf.relay_auth_mechs;
    }
    sm.lmtp = ds->t && ds->t->kind == MS_TRANSPORT_LMTP;
    sm.cache = d->conn_cache;
    sm.max_msgs = ds->shape.lim.msgs_per_conn;
    sm.rcpts = rcpts;
    sm.nrcpts = ds->cnt;
    sm.data = (const char *)m->env->message.data;
    sm.len = m->env->message.len;
    if (m->fence.held) /* duplicate fencing: the check before DATA */
        sm.gate = on_gate;
    dest_enter_state(m, ds, DEST_SEND);
    /* The group's connect and end-of-data timeouts (RFC 5321 §4.5.3.2). */
    timeouts = d->conf.timeouts;
    timeouts.connect = ds->shape.lim.connect_timeout_ms;
    timeouts.dot = ds->shape.lim.data_timeout_ms;
    err = wk_smtp_start(d->loop, (const struct sockaddr *)&a->ss, &timeouts, &sm, on_smtp, d,
                        dest_id(m, ds), &ds->smtp);
    free(rcpts);
    free(notify);
    free(orcpt);
    if (err < 0) {
        /* Addresses were checked when the record arrived: only our HELO
         * name can be refused here, which is a configuration problem. */
        dest_finish_all(m, ds, 0, "4.3.5", "local configuration error: invalid HELO name",
                        ds->relay_str);
        return;
    }
    dest_count_connection(d, ds, 1);
}

static void on_route(void *arg, uint64_t id, const struct wk_route_result *res)
{
    wk_delivery *d = arg;
    struct msg *m = NULL;
    struct dest *ds = dest_lookup(d, id, &m);
    char where[MS_DNS_NAME_MAX + 8];

    if (ds == NULL || ds->state != DEST_ROUTE)
        return;
    ds->job = 0;
    if (res->status != WK_ROUTE_OK) {
        snprintf(where, sizeof(where), "%s", ds->t ? ds->t->host : ds->domain);
        dest_finish_all(m, ds, res->code, res->dsn, res->text, where);
        return;
    }
    ds->addrs = ms_calloc(res->n, sizeof(*ds->addrs));
    memcpy(ds->addrs, res->addrs, res->n * sizeof(*ds->addrs));
    ds->naddrs = res->n;
    ds->tlsa = wk_route_tlsa_dup(res->tlsa);
    ds->next = 0;
    dest_connect(m, ds);
}

static void on_sts(void *arg, uint64_t id, const struct wk_mtasts_result *res);
static void dest_route(struct msg *m, struct dest *ds);

/* Route one destination: everything its recipients share is decided here. */
static void dest_start(struct msg *m, struct dest *ds)
{
    wk_delivery *d = m->d;
    const struct ms_transport *t = ds->t;
    char text[MS_TRANSPORT_TEXT_MAX + 64];
    int port;

    if (t && t->kind == MS_TRANSPORT_DISCARD) {
        snprintf(text, sizeof(text), "250 2.0.0 %s", t->text);
        dest_finish_all(m, ds, 250, "2.0.0", text, "discard");
        return;
    }
    if (t && t->kind == MS_TRANSPORT_ERROR) {
        snprintf(text, sizeof(text), "%d %s %s", t->code, t->dsn, t->text);
        dest_finish_all(m, ds, t->code, t->dsn, text, "error");
        return;
    }
    if (t && t->kind == MS_TRANSPORT_LMTP && t->path[0]) {
        /* LMTP over a UNIX-domain socket: one "address", the path (the
         * client connects with uv_pipe_t and keys reuse on the path). */
        struct sockaddr_un *sun;
        ds->addrs = ms_calloc(1, sizeof(*ds->addrs));
        sun = (struct sockaddr_un *)&ds->addrs[0].ss;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", t->path);
        snprintf(ds->addrs[0].host, sizeof(ds->addrs[0].host), "%s", t->path);
        ds->naddrs = 1;
        dest_connect(m, ds);
        return;
    }
    if (ds->relay) {
        ds->addrs = ms_calloc(1, sizeof(*ds->addrs));
        ds->addrs[0].ss = d->conf.relay_addr;
        if (ms_split_hostport(d->conf.relay, ds->addrs[0].host, sizeof(ds->addrs[0].host),
                              &port) < 0)
            snprintf(ds->addrs[0].host, sizeof(ds->addrs[0].host), "%s", d->conf.relay);
        ds->naddrs = 1;
        dest_connect(m, ds);
        return;
    }
    dest_enter_state(m, ds, DEST_ROUTE);
    if (!t && d->conf.mtasts && d->conf.tls_ctx && d->conf.tls_map) {
        /* RFC 8461: a recipient domain the policy map does not name may
         * publish an MTA-STS policy; route once it is known. */
        const char *nexthop;
        if (dest_tls_entry(d, ds, &nexthop) == wk_tls_map_default(d->conf.tls_map)) {
            ds->sts_job = wk_mtasts_lookup(d->conf.mtasts, ds->domain, on_sts, d, dest_id(m, ds));
            return;
        }
    }
    dest_route(m, ds);
}

/* The domain's MTA-STS policy is known (or that it has none). */
static void on_sts(void *arg, uint64_t id, const struct wk_mtasts_result *res)
{
    wk_delivery *d = arg;
    struct msg *m = NULL;
    struct dest *ds = dest_lookup(d, id, &m);

    if (ds == NULL || ds->state != DEST_ROUTE || ds->sts_job == 0)
        return;
    ds->sts_job = 0;
    if (res->failure != MS_TLSRPT_OK) /* RFC 8460 §4.3.2.3 */
        wk_tlsrpt_sts_failure(d->conf.tlsrpt, ds->domain, res->failure);
    if (res->have && res->policy.mode != MS_MTASTS_NONE) {
        ds->sts = ms_malloc(sizeof(*ds->sts));
        *ds->sts = *res;
    }
    dest_route(m, ds);
}

/* Resolve the next hop: MX routing, or a transport's host. */
static void dest_route(struct msg *m, struct dest *ds)
{
    wk_delivery *d = m->d;
    const struct ms_transport *t = ds->t;
    int port = t && t->port ? t->port
               : t && t->kind == MS_TRANSPORT_LMTP ? MS_LMTP_PORT
                                                    : d->conf.smtp_port;

    {
        /* DANE needs the TLSA records, looked up with the addresses. */
        const char *nexthop;
        const struct wk_tls_entry *e =
            d->conf.tls_ctx && d->conf.tls_map ? dest_tls_entry(d, ds, &nexthop) : NULL;
        int dane = e && (e->level == WK_TLS_LEVEL_DANE || e->level == WK_TLS_LEVEL_DANE_ONLY ||
                         ds->sts != NULL); /* DANE wins over MTA-STS (RFC 8461 §2) */
        ds->job = (dane ? wk_router_resolve_dane : wk_router_resolve)(
            d->conf.router, t ? t->host : ds->domain, port, t ? t->no_mx : 0, on_route, d,
            dest_id(m, ds));
    }
}

/* A milter quarantined the message at SMTP time (the envelope's
 * `quarantine`, docs/config.md): held as if an operator had said
 * `mailstream-ctl queue hold`, with the milter's reason, so that `queue
 * list` shows it and `queue release` (a retry record in place of the hold)
 * lets it go.  Only while no control record exists: after a release the
 * record says retry, and the envelope's mark no longer counts.  The record
 * is written fire-and-forget (NX: an operator's own wins); when it is lost
 * the next look writes it again. */
static void msg_quarantine(struct msg *m)
{
    char value[MS_QCTL_REASON_MAX + 64], ttl[24], *key;
    const char *argv[6];
    int n;

    m->ctl.action = MS_QCTL_HOLD;
    m->ctl.at_us = ms_time_now_us();
    snprintf(m->ctl.reason, sizeof(m->ctl.reason), "quarantine: %s", m->env->quarantine);
    if (m->d->redis == NULL || (n = ms_qctl_format(&m->ctl, value, sizeof(value))) < 0)
        return;
    key = ms_asprintf(MS_KEY_CONTROL "%s", m->qid);
    snprintf(ttl, sizeof(ttl), "%d", MS_QCTL_TTL_S);
    argv[0] = "SET";
    argv[1] = key;
    argv[2] = value;
    argv[3] = "EX";
    argv[4] = ttl;
    argv[5] = "NX";
    ms_redis_fire(m->d->redis, m->d->m_redis_errors, 6, argv);
    free(key);
}

/* The operator's action read with the markers (control.h), in place of
 * an attempt: held mail goes back to the last retry tier untouched;
 * bounced mail bounces every pending recipient (the DSN by the usual
 * rules), deleted mail drops them without a DSN (an event each).  A retry
 * needs nothing here: this is the attempt it asked for.  Returns 1 when it
 * replaced the attempt. */
static int msg_control(struct msg *m)
{
    char text[MS_QCTL_REASON_MAX + 80], q[300];
    size_t k, i;

    if (m->ctl.action == MS_QCTL_NONE && m->env->quarantine && m->env->quarantine[0])
        msg_quarantine(m);
    if (m->ctl.action != MS_QCTL_HOLD && m->ctl.action != MS_QCTL_BOUNCE &&
        m->ctl.action != MS_QCTL_DELETE)
        return 0;
    ms_info("event=queue_control qid=%s action=%s pending=%zu reason=%s", m->qid,
            ms_qctl_action_name(m->ctl.action), m->ntried,
            ms_log_quote(q, sizeof(q), m->ctl.reason, strlen(m->ctl.reason)));
    if (m->ctl.action == MS_QCTL_HOLD) {
        m->held = 1;
        m->delay_ms = WK_CONTROL_HOLD_RECHECK_MS;
        msg_sent(m); /* pending: a retry record, no attempt counted */
        return 1;
    }
    /* RFC 3463 X.0.0: no more precise code says "an operator". */
    snprintf(text, sizeof(text), "550 5.0.0 %s by the operator%s%s",
             m->ctl.action == MS_QCTL_BOUNCE ? "bounced" : "deleted",
             m->ctl.reason[0] ? ": " : "", m->ctl.reason);
    for (k = 0; k < m->ntried; k++) {
        i = m->tried[k];
        record_outcome(m, i, 550, "5.0.0", text, "mailstream-ctl", NULL, WK_OUTCOME_BOUNCED);
        if (m->ctl.action == MS_QCTL_DELETE)
            m->rcpts[i].in_dsn = 0; /* gone without a DSN */
    }
    msg_sent(m);
    return 1;
}

/* Group the pending recipients by destination and start them all. */
static void msg_send(struct msg *m)
{
    wk_delivery *d = m->d;
    char domain[MS_DNS_NAME_MAX + 1], key[MS_DNS_NAME_MAX + 8], q[600];
    const struct ms_transport *t;
    struct dest *ds;
    size_t k, i, j, nsusp;
    int64_t until = 0;
    const char *why;

    if (d->draining) {
        msg_release(m, 0);
        return;
    }
    msg_enter_state(m, MSG_SEND);
    if (collect_pending(m) == 0) {
        msg_sent(m);
        return;
    }
    if (msg_control(m))
        return;
    m->renewing = 0;
    if (m->fence.held) /* renewals and the checks' guard, while in SEND */
        uv_timer_start(&m->timer, fence_tick_cb, WK_FENCE_TICK_MS, WK_FENCE_TICK_MS);
    m->attempt++;
    m->dests = ms_calloc(m->ntried, sizeof(*m->dests));
    m->ndests = m->ndests_done = 0;
    m->starting = 1;
    for (k = 0; k < m->ntried; k++) {
        i = m->tried[k];
        if (m->rcpts[i].suppressed) {
            /* A recent hard bounce: no connection attempt. */
            ms_counter_inc(d->m_suppressed);
            ms_info("event=delivery_suppressed qid=%s rcpt=%s", m->qid,
                    ms_log_quote(q, sizeof(q), m->rcpts[i].addr, strlen(m->rcpts[i].addr)));
            record_outcome(m, i, 550, "5.1.1",
                           "550 5.1.1 recipient is on the suppression list after a recent "
                           "hard bounce",
                           "suppressed", NULL, -1);
            continue;
        }
        if (ms_addr_domain_copy(m->rcpts[i].addr, domain, sizeof(domain)) < 0)
            domain[0] = '\0';
        t = ms_transport_map_lookup(d->conf.transports, domain);
        if (t)
            snprintf(key, sizeof(key), "t:%p", (const void *)t);
        else if (d->conf.relay[0])
            snprintf(key, sizeof(key), "relay");
        else
            snprintf(key, sizeof(key), "mx:%s", domain);
        for (j = 0; j < m->ndests && strcmp(m->dests[j].key, key) != 0; j++)
            ;
        ds = &m->dests[j];
        if (j == m->ndests) {
            m->ndests++;
            snprintf(ds->key, sizeof(ds->key), "%s", key);
            snprintf(ds->domain, sizeof(ds->domain), "%s", domain);
            ds->t = t;
            ds->relay = !t && d->conf.relay[0];
            ds->rcpts = ms_calloc(m->ntried, sizeof(*ds->rcpts));
        }
        ds->rcpts[ds->n++] = i;
    }
    /* Suspended destinations defer without a connection; when that is all
     * of them, the round is no attempt (its number does not move). */
    for (j = 0, nsusp = 0; j < m->ndests; j++)
        nsusp += wk_control_suspended(d->control, dest_name(d, &m->dests[j]), &until, &why);
    if (nsusp > 0 && nsusp == m->ndests) {
        /* At most the longest delay a retry tier is kept for (the larger
         * of retry_max_ms and the hold recheck: docs/reliability.md, "What
         * Kafka holds"): a longer suspension looks again then, rather
         * than wait in a record its topic's retention could delete. */
        uint64_t cap = d->conf.retry_max_ms > WK_CONTROL_HOLD_RECHECK_MS ? d->conf.retry_max_ms
                                                                         : WK_CONTROL_HOLD_RECHECK_MS;
        m->attempt--;
        m->delay_ms = until > 0 ? (uint64_t)(until - ms_time_now_us()) / 1000 + 1
                                : WK_CONTROL_HOLD_RECHECK_MS;
        if (m->delay_ms > cap)
            m->delay_ms = cap;
    } else {
        ms_counter_inc(d->m_attempts);
    }
    for (j = 0; j < m->ndests; j++) {
        ds = &m->dests[j];
        if (wk_control_suspended(d->control, dest_name(d, ds), &until, &why)) {
            char text[MS_QCTL_REASON_MAX + MS_DNS_NAME_MAX + 64];
            ms_info("event=dest_suspended_deferred qid=%s dest=%s", m->qid, dest_name(d, ds));
            snprintf(text, sizeof(text), "destination %s suspended by the operator: %s",
                     dest_name(d, ds), why);
            /* RFC 3463 X.3.0: other or undefined mail system status. */
            dest_finish_all(m, ds, 0, "4.3.0", text, dest_name(d, ds));
            continue;
        }
        dest_start(m, ds);
    }
    m->starting = 0;
    if (m->ndests_done == m->ndests)
        msg_sent(m);
}

static void retry_cb(uv_timer_t *t)
{
    struct msg *m = t->data;

    m->fenced = 0;
    m->finalized = 0;
    m->produce_failed = 0;
    msg_check(m);
}

/* ---- durable outcomes: DSN and retry records ---- */

/* The bounce categories (classify.h) of the recipients in m's DSN, each
 * once, comma-separated, for its log line. */
static const char *dsn_categories(const struct msg *m, char *buf, size_t len)
{
    unsigned seen = 0;
    size_t i, used = 0;

    buf[0] = '\0';
    for (i = 0; i < m->nrcpts; i++) {
        const struct wk_rcpt *rc = &m->rcpts[i];
        if (!(rc->in_dsn && !rc->dsn_done) && !rc->warn_in_dsn)
            continue;
        if (seen >> rc->category & 1u || used >= len)
            continue;
        seen |= 1u << rc->category;
        used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? "," : "",
                                 wk_category_name(rc->category));
    }
    return buf[0] ? buf : "-";
}

/* Produce one DSN for the recipients bounced in this record (Action:
 * failed), delivered with NOTIFY=SUCCESS and those whose delay warning is
 * due (Action: delayed), if the rules allow one (dsn_rules.h: the
 * backscatter rule, then NOTIFY per recipient; requeue.h builds it).
 * Returns 1 when a DSN is on its way. */
static int send_dsn(struct msg *m)
{
    wk_delivery *d = m->d;
    const ms_envelope_mail_from *mf = m->env->mail_from;
    struct wk_requeue_dsn_counts counts;
    struct wk_dsn_facts facts;
    enum wk_dsn_verdict verdict;
    char qid[MS_QUEUEID_LEN + 1], cats[WK_CAT__N * 16];
    uint8_t *buf;
    size_t i, len;
    int err;

    if (wk_requeue_dsn_owed(m->rcpts, m->nrcpts) == 0)
        return 0;
    wk_dsn_facts_of(m->env, &facts);
    if ((verdict = wk_dsn_decide(&facts)) != WK_DSN_ALLOW) {
        /* RFC 5321 §4.5.5: never bounce the null sender; DESIGN.md: no
         * backscatter to senders we cannot tell were not forged. */
        ms_info("event=dsn_skipped qid=%s reason=%s direction=%s spf_mailfrom=%s dkim_aligned=%s",
                m->qid, wk_dsn_verdict_name(verdict),
                m->env->direction == MS_ENV_DIRECTION_INBOUND    ? "inbound"
                : m->env->direction == MS_ENV_DIRECTION_OUTBOUND ? "outbound"
                                                                                : "unknown",
                !facts.auth_evaluated ? "unknown" : facts.spf_mailfrom_pass ? "pass" : "no",
                facts.dkim_aligned && facts.dkim_aligned[0] ? facts.dkim_aligned : "none");
        ms_counter_inc(d->m_dsn_suppressed[verdict]);
        goto none;
    }
    ms_queueid_new(qid);
    err = wk_requeue_dsn(&d->requeue, m->env, m->rcpts, qid, ms_time_now_us(), &buf, &len, &counts);
    if (err == 0) {
        ms_info("event=dsn_skipped qid=%s reason=notify", m->qid);
        ms_counter_inc(d->m_dsn_notify_skipped);
        goto none;
    }
    if (err < 0) {
        ms_warn("event=dsn_failed qid=%s error=%s", m->qid, ms_err_name(err));
        goto none;
    }
    if (publish(d, m->id << WK_KIND_BITS | PRODUCE_DSN, d->conf.topic, qid, strlen(qid), buf,
                len, &m->produce_pending) < 0)
        m->produce_failed = 1;
    free(buf);
    ms_info("event=dsn qid=%s dsn_qid=%s to=%s rcpts=%zu delayed=%zu success=%zu requiretls=%d "
            "categories=%s",
            m->qid, qid, mf->address, counts.rcpts, counts.delayed, counts.success,
            mf->requiretls, dsn_categories(m, cats, sizeof(cats)));
    ms_counter_inc(d->m_dsn);
    if (counts.delayed > 0)
        ms_counter_add(d->m_delay_warnings, counts.delayed);
    return 1;
none:
    for (i = 0; i < m->nrcpts; i++) {
        if (m->rcpts[i].in_dsn)
            m->rcpts[i].dsn_done = 1;
        m->rcpts[i].warn_in_dsn = 0;
    }
    return 0;
}

/* The retry schedule of m's pending recipients: their groups' (shaper.h)
 * or [delivery]'s, the slowest of them, so that no group is tried again
 * sooner than it asked. */
static void retry_schedule(const struct msg *m, uint64_t *rmin, uint64_t *rmax)
{
    const wk_delivery *d = m->d;
    size_t i;

    *rmin = 0;
    *rmax = 0;
    for (i = 0; i < m->nrcpts; i++) {
        const struct wk_rcpt *rc = &m->rcpts[i];
        uint64_t lo = rc->retry_min_ms ? rc->retry_min_ms : d->conf.retry_min_ms;
        uint64_t hi = rc->retry_max_ms ? rc->retry_max_ms : d->conf.retry_max_ms;
        if (rc->state != WK_RCPT_PENDING)
            continue;
        *rmin = lo > *rmin ? lo : *rmin;
        *rmax = hi > *rmax ? hi : *rmax;
    }
    if (*rmin == 0) { /* none pending (held mail): the defaults */
        *rmin = d->conf.retry_min_ms;
        *rmax = d->conf.retry_max_ms;
    }
}

/* Re-produce the message with its pending recipients to the retry tier for
 * its attempt number (requeue.h builds the record). */
static void send_retry(struct msg *m, int pending)
{
    wk_delivery *d = m->d;
    uint8_t *buf;
    size_t i, len;
    uint64_t delay, rmin, rmax;
    int tier, before;
    int64_t next_attempt_us;

    if (d->conf.retry_tiers <= 0 || d->producer == NULL)
        return;
    /* Held mail goes to the last tier, whose records wait longest, so it
     * delays little else there (the XXX below). */
    tier = m->held ? d->conf.retry_tiers : wk_requeue_tier(m->attempt, d->conf.retry_tiers);
    /* The delay keeps growing up to retry_max_ms in the last tier, whose
     * records therefore do not all wait alike: XXX a record due early may
     * wait behind WK_RETRY_HOLD_MAX held ones due later (at most the
     * difference between the last tier's delay and retry_max_ms). */
    retry_schedule(m, &rmin, &rmax);
    delay = m->delay_ms ? m->delay_ms
                        : wk_backoff_ms(m->attempt, rmin, rmax,
                                        arc4random());
    next_attempt_us = ms_time_now_us() + (int64_t)delay * 1000;
    buf = wk_requeue_retry(&d->requeue, m->env, m->rcpts, m->attempt, next_attempt_us, tier, &len);
    before = m->produce_pending;
    publish(d, m->id << WK_KIND_BITS | PRODUCE_RETRY, d->conf.retry_topics[tier - 1], m->qid,
            strlen(m->qid), buf, len, &m->produce_pending);
    free(buf);
    if (m->produce_pending == before)
        return;
    ms_info("event=retry_scheduled qid=%s attempt=%u pending=%d tier=%d delay_ms=%llu", m->qid,
            m->attempt, pending, tier, (unsigned long long)delay);
    {
        /* The retry queue for metrics: qid scored by when it was accepted. */
        char first[24];
        const char *argv[4] = {"ZADD", MS_KEY_RETRY_QUEUE, first, m->qid};
        snprintf(first, sizeof(first), "%lld", (long long)m->env->received_at_us);
        redis_fire(d, 4, argv);
    }
    {
        /* The record being attempted holds the message (queue show --message). */
        char where[MS_QINFO_RECORD_MAX] = "";
        if (m->rec)
            snprintf(where, sizeof(where), "%s/%d/%lld", m->rec->topic, (int)m->rec->partition,
                     (long long)m->rec->offset);
        wk_control_index(d->control, m->env, m->rcpts, m->attempt, tier, next_attempt_us,
                         m->held, where);
    }
    ms_counter_inc(d->m_requeued);

    /* Per-recipient retry state, for operators and the relay control CLI. */
    for (i = 0; i < m->nrcpts; i++) {
        char *key, att_s[16], next_s[24], first_s[24], ttl[24], warned_s[24];
        if (m->rcpts[i].state != WK_RCPT_PENDING)
            continue;
        key = ms_asprintf(MS_KEY_RETRY "%s:%s", m->qid, m->rcpts[i].addr);
        snprintf(att_s, sizeof(att_s), "%u", m->attempt);
        snprintf(next_s, sizeof(next_s), "%lld", (long long)next_attempt_us);
        snprintf(first_s, sizeof(first_s), "%lld", (long long)m->env->received_at_us);
        snprintf(ttl, sizeof(ttl), "%lld", (long long)d->conf.max_age_s + 86400);
        snprintf(warned_s, sizeof(warned_s), "%lld", (long long)m->rcpts[i].delay_warned_us);
        {
            const char *argv[12] = {"HSET", key, "attempts", att_s, "next_attempt_us", next_s,
                                    "last_reply", m->rcpts[i].reply, "first_seen_us", first_s,
                                    "delay_warned_us", warned_s};
            const char *exp[3] = {"EXPIRE", key, ttl};
            redis_fire(d, 12, argv);
            redis_fire(d, 3, exp);
        }
        free(key);
    }
}

/*
 * Every outcome of m is durable (delivered, retry record or DSN written) and
 * only the acknowledgements of its events are still due.  Its record's
 * offset may be stored only after those, but nothing else needs the
 * message: give its delivery slot and envelope back now and keep just the
 * record in the parking place id % nslots until the last acknowledgement
 * (parked_event_done).  So the worker's [kafka] linger_ms, which batches the
 * events, does not also hold delivery slots.  Returns 0 when that place is
 * taken (the message then waits in its slot); at most nslots are parked.
 */
static int msg_park(struct msg *m)
{
    wk_delivery *d = m->d;
    struct parked *p = &d->parked[m->id % d->nslots];

    if (p->rec != NULL)
        return 0;
    p->id = m->id;
    p->rec = m->rec;
    p->tier = m->tier;
    p->events = m->events_pending;
    p->bytes = m->rec->len;
    bytes_charge(d, (int64_t)p->bytes);
    d->nparked++;
    m->rec = NULL;
    msg_release(m, 1);
    return 1;
}

static void parked_closed_cb(uv_handle_t *h)
{
    wk_delivery *d = h->data;

    free(h);
    d->nclosing--;
    after_release(d);
}

/* An event of parked message `id` is acknowledged (or failed: counted). */
static void parked_event_done(wk_delivery *d, uint64_t id)
{
    struct parked *p = &d->parked[id % d->nslots];
    uv_timer_t *t;

    if (p->rec == NULL || p->id != id || --p->events > 0)
        return;
    ms_consumer_done(d->consumers[p->tier], p->rec);
    p->rec = NULL;
    d->nparked--;
    bytes_charge(d, -(int64_t)p->bytes);
    if (!d->draining) {
        update_pauses(d); /* parking counts for the byte budget only */
        return;
    }
    /* This runs inside the producer's delivery report, and the drained
     * callback frees the producer: see to the drain from the loop instead,
     * the way a released message does (msg_closed_cb). */
    t = ms_malloc(sizeof(*t));
    uv_timer_init(d->loop, t);
    t->data = d;
    d->nclosing++;
    uv_close((uv_handle_t *)t, parked_closed_cb);
}

static void marker_retry_cb(uv_timer_t *t)
{
    struct msg *m = t->data;
    size_t i;

    m->marker_due = 0;
    m->marker_failed = 0;
    for (i = 0; i < m->nrcpts; i++)
        if (m->owed[i])
            write_marker(m, i, m->rcpts[i].relay);
    if (m->redis_pending > 0)
        arm_redis_guard(m);
    else
        msg_settle(m); /* every write refused at once: again, or give up */
}

/* A recipient the destination accepted whose delivered marker could not be
 * written (Redis lost its primary as the 250 came, or did not answer): the
 * marker is what keeps a replay of the record (a rebalance before the
 * offset commit, a revoke) from delivering it again, and only this worker
 * knows it is owed.  So the record is not let go: the marker is written
 * again every WK_MARKER_RETRY_MS until Redis takes it (a Sentinel failover
 * takes seconds) or WK_MARKER_RETRY_MAX_MS have passed.  Returns 1 while a
 * write is due. */
static int marker_retry(struct msg *m)
{
    wk_delivery *d = m->d;
    uint64_t now = uv_now(d->loop);
    size_t i, n = 0;

    for (i = 0; i < m->nrcpts; i++)
        n += m->owed[i];
    if (!m->marker_failed || n == 0 || d->redis == NULL) {
        memset(m->owed, 0, m->nrcpts);
        m->marker_failed = 0;
        m->marker_since_ms = 0;
        return 0;
    }
    if (m->marker_due)
        return 1; /* a write is already due */
    if (m->marker_since_ms == 0) {
        m->marker_since_ms = now;
        ms_info("event=marker_retry qid=%s rcpts=%zu every_ms=%d", m->qid, n,
                WK_MARKER_RETRY_MS);
    }
    if (now - m->marker_since_ms >= WK_MARKER_RETRY_MAX_MS) {
        ms_warn("event=marker_lost qid=%s rcpts=%zu waited_ms=%llu", m->qid, n,
                (unsigned long long)(now - m->marker_since_ms));
        memset(m->owed, 0, m->nrcpts);
        m->marker_failed = 0;
        m->marker_since_ms = 0;
        return 0;
    }
    m->marker_due = 1;
    uv_timer_start(&m->timer, marker_retry_cb, WK_MARKER_RETRY_MS, 0);
    return 1;
}

static void msg_settle(struct msg *m)
{
    wk_delivery *d = m->d;
    uint64_t delay;
    size_t i;
    int pending = 0;
    int64_t age_s;

    /* The outcomes are durable once Redis has them; the events are waited
     * for below (or parked). */
    if (m->state != MSG_RECORD || m->redis_pending > 0)
        return;
    if (marker_retry(m))
        return;
    if (m->revoked) {
        /* Its partition has a new owner, which redoes what no marker
         * records (no DSN or retry record from here). */
        msg_release(m, 0);
        return;
    }
    for (i = 0; i < m->nrcpts; i++)
        pending += m->rcpts[i].state == WK_RCPT_PENDING;
    if (!m->finalized) {
        m->finalized = 1;
        age_s = m->env->received_at_us > 0 ? (ms_time_now_us() - m->env->received_at_us) / 1000000 : 0;
        /* Held mail does not bounce for age while held (as Postfix's hold
         * queue): the first attempt after its release decides. */
        if (pending > 0 && age_s >= d->conf.max_age_s && !m->held) {
            /* RFC 5321 §4.5.4.1: give up; 4.4.7 "delivery time expired". */
            char text[WK_SMTP_REPLY_TEXT_MAX + 64];
            for (i = 0; i < m->nrcpts; i++) {
                struct wk_rcpt *rc = &m->rcpts[i];
                if (rc->state != WK_RCPT_PENDING)
                    continue;
                snprintf(text, sizeof(text), "message expired after %lld s; last: %s",
                         (long long)age_s, rc->tried ? rc->reply : "no attempt");
                ms_counter_inc(d->m_expired);
                record_outcome(m, i, rc->code, "4.4.7", text, rc->relay, rc->remote,
                               WK_OUTCOME_BOUNCED);
            }
            pending = 0;
        }
        if (pending > 0 && d->conf.delay_warning_s > 0) {
            /* RFC 3464 Action: delayed, once per recipient ([retry]
             * delay_warning_s); the retry record carries the time. */
            int64_t now = ms_time_now_us();
            for (i = 0; i < m->nrcpts; i++) {
                struct wk_rcpt *rc = &m->rcpts[i];
                if (rc->state != WK_RCPT_PENDING ||
                    !wk_delay_warning_due(d->conf.delay_warning_s, m->env->received_at_us, now,
                                          rc->delay_warned_us, m->env->recipients[i]->notify))
                    continue;
                rc->warn_in_dsn = 1;
                rc->delay_warned_us = now;
                m->env->recipients[i]->delay_warned_us = now;
            }
        }
        /* Recipients done now lose their retry state (MS_KEY_RETRY), which
         * exists once the message came back from a retry tier: also when
         * no attempt was counted (an operator's bounce or delete). */
        for (i = 0; i < m->nrcpts && (m->attempt > 1 || m->tier > 0); i++)
            if (m->rcpts[i].state != WK_RCPT_PENDING && m->rcpts[i].tried) {
                char *key = ms_asprintf(MS_KEY_RETRY "%s:%s", m->qid, m->rcpts[i].addr);
                const char *argv[2] = {"DEL", key};
                redis_fire(d, 2, argv);
                free(key);
            }
        send_dsn(m);
        if (pending > 0 && m->fenced) {
            ; /* another worker has them: look again here (below) */
        } else if (pending > 0) {
            send_retry(m, pending);
        } else if (m->attempt > 1 || m->tier > 0) {
            const char *argv[3] = {"ZREM", MS_KEY_RETRY_QUEUE, m->qid};
            redis_fire(d, 3, argv);
            wk_control_forget(d->control, m->env);
        }
    }
    if (m->produce_pending > 0)
        return;
    if (!m->produce_failed && pending == 0) {
        /* Done; if only its events are still due, parked until they are. */
        if (m->events_pending == 0)
            msg_release(m, 1);
        else
            msg_park(m);
        return;
    }
    if (m->events_pending > 0)
        return;
    if (d->draining) {
        msg_release(m, 0);
        return;
    }
    /* Kafka refused the retry record or the DSN (or there are no retry
     * tiers): keep the record and try again here; its partition's offsets
     * stay behind until it is done. */
    delay = m->produce_failed ? WK_PRODUCE_RETRY_MS
          : m->fenced         ? wk_fence_lease_ms(d->fence) + WK_FENCE_MARGIN_MS
          : m->delay_ms       ? m->delay_ms /* held, or every destination suspended */
                              : wk_backoff_ms(m->attempt, d->conf.retry_min_ms,
                                              d->conf.retry_max_ms, arc4random());
    ms_info("event=retry_scheduled qid=%s attempt=%u pending=%d delay_ms=%llu in_memory=1",
            m->qid, m->attempt, pending, (unsigned long long)delay);
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
    if (m->state == MSG_CHECK && wk_fence_on(m->d->fence)) {
        /* The take may have got the lease with this round's token, which
         * the next round does not share: give it back, or that round would
         * wait for the lease to lapse. */
        fence_release(m);
        fence_wait(m, 0, "unavailable"); /* no lease, no attempt */
    } else if (m->state == MSG_CHECK) {
        msg_send(m);
    } else if (m->state == MSG_RECORD) {
        m->redis_pending = 0;
        m->marker_failed = 1; /* unanswered: not known written */
        msg_settle(m);
    }
}

/* ---- records ---- */

static void record_malformed(wk_delivery *d, int tier, struct ms_record *rec, const char *why)
{
    struct ms_buf json;
    char q[300];

    ms_log(MS_LOG_ERROR, "event=malformed_record topic=%s partition=%d offset=%lld error=%s",
           rec->topic, (int)rec->partition, (long long)rec->offset,
           ms_log_quote(q, sizeof(q), why, strlen(why)));
    ms_counter_inc(d->m_malformed);
    ms_buf_init(&json, WK_EVENT_MAX);
    if (wk_event_malformed_json(&json, rec->key, rec->keylen, rec->partition, rec->offset, why,
                                d->conf.node_id, ms_time_now_us()) == 0)
        publish(d, 0, d->conf.events_topic, rec->key ? rec->key : "", rec->key ? rec->keylen : 0,
                json.data, json.len, NULL);
    ms_buf_free(&json);
    /* Nothing to deliver: its fate is settled. */
    ms_consumer_done(d->consumers[tier], rec);
}

static void hold_cb(uv_timer_t *t)
{
    struct msg *m = t->data;

    msg_check(m);
    update_pauses(m->d);
}

/* A retry record held until it is due: does the operator want it now
 * (retry, release, bounce, delete)?  Asked when it arrives and whenever a
 * queue action was taken (control_changed). */
static void on_recheck(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    struct msg *m = msg_lookup_redis(d, cookie);
    struct ms_qctl c;

    if (m == NULL || m->state != MSG_HOLD)
        return;
    m->phase++;
    if (r->type != MS_REDIS_STR || ms_qctl_parse(r->str, r->len, &c) < 0 ||
        c.action == MS_QCTL_HOLD ||
        (c.action == MS_QCTL_RETRY &&
         !ms_qctl_retry_applies(c.at_us, wk_control_last_attempt_us(m->env))))
        return;
    ms_info("event=queue_control_due qid=%s action=%s", m->qid, ms_qctl_action_name(c.action));
    uv_timer_stop(&m->timer);
    hold_cb(&m->timer);
}

static void msg_recheck(struct msg *m)
{
    char *key;
    const char *argv[2];
    size_t argvlen[2];

    if (m->d->redis == NULL)
        return;
    key = ms_asprintf(MS_KEY_CONTROL "%s", m->qid);
    argv[0] = "GET";
    argv[1] = key;
    argvlen[0] = 3;
    argvlen[1] = strlen(key);
    if (ms_redis_command(m->d->redis, on_recheck, m->d, redis_cookie(m), 2, argv, argvlen) < 0)
        ms_counter_inc(m->d->m_redis_errors);
    free(key);
}

/* A queue action was taken somewhere (control.h): look again at every
 * retry record held in memory. */
static void control_changed(void *arg)
{
    wk_delivery *d = arg;
    size_t i;

    for (i = 0; i < d->nslots; i++)
        if (d->slots[i] && d->slots[i]->state == MSG_HOLD)
            msg_recheck(d->slots[i]);
}

static int record_tier(const wk_delivery *d, const struct ms_record *rec)
{
    int i;

    for (i = 1; i <= d->conf.retry_tiers; i++)
        if (strcmp(rec->topic, d->conf.retry_topics[i - 1]) == 0)
            return i;
    return 0;
}

/* ---- the mail-authentication stage (mailauth.h): authentication results and DKIM
 * signing, once per record before routing; then the (possibly modified)
 * message goes on, or is discarded with an event and never bounced. ---- */

static void mailauth_done(struct msg *m, const struct wk_mailauth_result *res)
{
    wk_delivery *d = m->d;
    struct ms_buf json;
    char q[600];

    if (res->verdict != WK_MAILAUTH_VERDICT_SKIPPED)
        ms_info("event=policy qid=%s verdict=%s action=%s reason=%s", m->qid,
                wk_mailauth_verdict_name(res->verdict), wk_mailauth_action_name(res->action),
                ms_log_quote(q, sizeof(q), res->reason, strlen(res->reason)));
    if (res->action != WK_MAILAUTH_DISCARD) {
        msg_check(m);
        return;
    }
    ms_buf_init(&json, WK_EVENT_MAX);
    if (wk_mailauth_event_json(&json, m->qid, res, d->conf.node_id, ms_time_now_us()) == 0)
        publish(d, 0, d->conf.events_topic, m->qid, strlen(m->qid), json.data, json.len, NULL);
    ms_buf_free(&json);
    msg_release(m, 1);
}

static void on_mailauth(void *arg, uint64_t id, const struct wk_mailauth_result *res)
{
    struct msg *m = msg_lookup(arg, id);

    if (m != NULL && m->state == MSG_CHECK)
        mailauth_done(m, res);
}

static void msg_mailauth(struct msg *m)
{
    struct wk_mailauth_result res;

    if (m->d->mailauth == NULL)
        msg_check(m);
    else if (wk_mailauth_start(m->d->mailauth, m->env, on_mailauth, m->d, m->id, &res) != 0)
        mailauth_done(m, &res); /* nothing to do, or failed: res says deliver */
}

void wk_delivery_attach_mailauth(wk_delivery *d, wk_mailauth *p)
{
    d->mailauth = p;
}

void wk_delivery_on_record(void *arg, struct ms_record *rec)
{
    wk_delivery *d = arg;
    ms_envelope *env;
    struct msg *m;
    char err[256];
    size_t i, slot;
    int bad_sender, tier = record_tier(d, rec);
    int64_t now = ms_time_now_us();

    if (d->draining)
        return; /* not done: redelivered to whoever takes the partition */
    /* The message stays in the record, which is kept until the envelope is
     * done with (msg_release, msg_closed_cb). */
    if ((env = ms_envelope_decode_borrow(rec->value, rec->len, err, sizeof(err))) == NULL) {
        record_malformed(d, tier, rec, err);
        return;
    }
    if (env->n_recipients >= (1u << WK_DEST_BITS)) {
        ms_envelope_free(env);
        record_malformed(d, tier, rec, "too many recipients");
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
    m->bytes = (uint64_t)rec->len * WK_MSG_COPIES;
    bytes_charge(d, (int64_t)m->bytes);
    m->tier = tier;
    m->env = env;
    m->qid = env->queue_id;
    m->nrcpts = env->n_recipients;
    m->rcpts = ms_calloc(m->nrcpts, sizeof(*m->rcpts));
    m->tried = ms_calloc(m->nrcpts, sizeof(*m->tried));
    m->owed = ms_calloc(m->nrcpts, 1);
    uv_timer_init(d->loop, &m->timer);
    m->timer.data = m;
    d->slots[slot] = m;
    d->nused++;
    ms_gauge_set(d->m_in_flight, (int64_t)d->nused);
    ms_debug("event=record qid=%s topic=%s partition=%d offset=%lld rcpts=%zu size=%zu", m->qid,
             rec->topic, (int)rec->partition, (long long)rec->offset, m->nrcpts,
             env->message.len);

    /* Addresses that cannot go into an SMTP command are permanent failures
     * (the frontend should never have accepted them). */
    m->attempt = env->attempt_count + 1;
    bad_sender = env->mail_from && env->mail_from->address &&
                 !wk_smtp_path_ok(env->mail_from->address);
    for (i = 0; i < m->nrcpts; i++) {
        m->rcpts[i].addr = env->recipients[i]->address ? env->recipients[i]->address : "";
        m->rcpts[i].delay_warned_us = env->recipients[i]->delay_warned_us;
        if (bad_sender || !wk_smtp_path_ok(m->rcpts[i].addr) || !*m->rcpts[i].addr)
            record_outcome(m, i, 553, bad_sender ? "5.1.7" : "5.1.3",
                           bad_sender ? "553 5.1.7 invalid sender address"
                                      : "553 5.1.3 invalid recipient address",
                           "local", NULL, -1);
    }
    m->attempt = env->attempt_count;
    if (tier > 0 && env->next_attempt_us > now) {
        /* A retry record that is not due: hold it (its tier consumer is
         * paused once it holds WK_RETRY_HOLD_MAX). */
        msg_enter_state(m, MSG_HOLD);
        uv_timer_start(&m->timer, hold_cb, (uint64_t)((env->next_attempt_us - now) / 1000) + 1, 0);
        update_pauses(d);
        msg_recheck(m); /* an operator may want it now */
        return;
    }
    update_pauses(d);
    if (d->slots[slot] == m)
        msg_mailauth(m);
}

void wk_delivery_on_produced(void *arg, uint64_t id, int err, const char *errstr)
{
    wk_delivery *d = arg;
    enum produce_kind kind = (enum produce_kind)(id & ((1u << WK_KIND_BITS) - 1));
    struct msg *m;
    size_t i;

    if (err < 0) {
        ms_warn("event=publish_failed kind=%s error=%s reason=\"%s\"",
                kind == PRODUCE_EVENT ? "event" : kind == PRODUCE_RETRY ? "retry" : "dsn",
                ms_err_name(err), errstr ? errstr : "");
        if (kind == PRODUCE_EVENT)
            ms_counter_inc(d->m_event_errors);
    }
    if ((m = msg_lookup(d, id >> WK_KIND_BITS)) == NULL) {
        if (kind == PRODUCE_EVENT)
            parked_event_done(d, id >> WK_KIND_BITS);
        return;
    }
    switch (kind) {
    case PRODUCE_EVENT:
        if (m->events_pending == 0)
            return;
        m->events_pending--;
        break;
    case PRODUCE_RETRY:
    case PRODUCE_DSN:
        if (m->produce_pending == 0)
            return;
        m->produce_pending--;
        if (err < 0) {
            m->produce_failed = 1;
        } else if (kind == PRODUCE_RETRY) {
            for (i = 0; i < m->nrcpts; i++)
                if (m->rcpts[i].state == WK_RCPT_PENDING)
                    m->rcpts[i].state = WK_RCPT_REQUEUED;
        } else {
            for (i = 0; i < m->nrcpts; i++) {
                if (m->rcpts[i].in_dsn)
                    m->rcpts[i].dsn_done = 1;
                m->rcpts[i].warn_in_dsn = 0;
            }
        }
        break;
    }
    msg_settle(m);
}

/* ---- engine ---- */

wk_delivery *wk_delivery_new(uv_loop_t *loop, const struct wk_delivery_conf *conf)
{
    wk_delivery *d = ms_calloc(1, sizeof(*d));
    struct wk_pacing_conf pc;
    struct wk_outcome_conf oc;
    char labels[64];
    int o;

    d->loop = loop;
    d->conf = *conf;
    if (d->conf.relay == NULL)
        d->conf.relay = "";
    if (d->conf.retry_tiers > WK_RETRY_TIERS_MAX)
        d->conf.retry_tiers = WK_RETRY_TIERS_MAX;
    if (d->conf.max_age_s <= 0)
        d->conf.max_age_s = WK_MAX_AGE_S;
    d->nslots = conf->max_in_flight > 0 ? (size_t)conf->max_in_flight : WK_MAX_IN_FLIGHT_DEFAULT;
    d->slots = ms_calloc(d->nslots, sizeof(*d->slots));
    d->parked = ms_calloc(d->nslots, sizeof(*d->parked));
    d->bytes_max = conf->max_in_flight_bytes > 0 ? (uint64_t)conf->max_in_flight_bytes
                                                 : (uint64_t)WK_MAX_IN_FLIGHT_BYTES_DEFAULT;
    pc.node_id = conf->node_id;
    pc.dest_rate_max_wait_ms = conf->dest_rate_max_wait_ms;
    d->pacing = wk_pacing_new(loop, &pc, on_paced, d);
    oc.node_id = conf->node_id;
    oc.events_topic = conf->events_topic;
    oc.suppress_ttl_s = conf->suppress_ttl_s;
    oc.shaper = conf->shaper;
    d->outcomes = wk_outcomes_new(&oc);
    {
        struct wk_fence_conf fc = {conf->node_id, conf->fence_lease_ms, conf->marker_ttl_s};
        if (d->conf.marker_ttl_s <= 0)
            d->conf.marker_ttl_s = fc.marker_ttl_s = WK_DELIVERED_TTL_S;
        d->fence = wk_fence_new(&fc);
    }
    d->requeue.helo_name = conf->helo_name;
    d->requeue.node_id = conf->node_id;
    d->requeue.max_age_s = d->conf.max_age_s;
    d->m_attempts = ms_counter_new("mailstream_worker_attempts_total",
                                   "Delivery attempts started (one per message and attempt).",
                                   NULL);
    d->m_malformed = ms_counter_new("mailstream_worker_malformed_records_total",
                                    "Queue records that were not a valid envelope.", NULL);
    d->m_skipped = ms_counter_new("mailstream_worker_skipped_delivered_total",
                                  "Recipients skipped because a delivered marker exists.", NULL);
    d->m_redis_errors = ms_counter_new("mailstream_worker_redis_errors_total",
                                       "Redis commands that failed or timed out.", NULL);
    d->m_event_errors = ms_counter_new("mailstream_worker_event_errors_total",
                                       "Event records that could not be published.", NULL);
    d->m_end_reply = ms_histogram_new(
        "mailstream_worker_end_reply_seconds",
        "From the end of a message's data sent (the \".\" or BDAT LAST) to the destination's "
        "positive reply.",
        NULL, ms_latency_buckets, ms_latency_buckets_n);
    d->m_unrecorded = ms_histogram_new(
        "mailstream_worker_unrecorded_seconds",
        "From the end of a message's data sent to its delivered outcome recorded in Redis: the "
        "window in which a worker's death leaves a delivery that is made again.",
        NULL, ms_latency_buckets, ms_latency_buckets_n);
    d->m_dsn = ms_counter_new("mailstream_worker_dsn_total",
                              "Delivery status notifications produced.", NULL);
    d->m_requeued = ms_counter_new("mailstream_worker_retry_records_total",
                                   "Deferred messages produced to a retry tier topic.", NULL);
    d->m_expired = ms_counter_new("mailstream_worker_expired_total",
                                  "Recipients bounced because the message got too old.", NULL);
    d->m_suppressed = ms_counter_new("mailstream_worker_suppressed_total",
                                     "Recipients bounced from the suppression list.", NULL);
    d->m_connect_fallback = ms_counter_new("mailstream_worker_next_address_total",
                                           "Addresses given up for the next one (RFC 5321 5.1).",
                                           NULL);
    d->m_in_flight = ms_gauge_new("mailstream_worker_in_flight",
                                  "Queue records held (delivering, recording or waiting).", NULL);
    d->m_in_flight_bytes = ms_gauge_new(
        "mailstream_worker_in_flight_bytes",
        "Octets charged to the records held, WK_MSG_COPIES per octet (max_in_flight_bytes).",
        NULL);
    d->m_held = ms_gauge_new("mailstream_worker_retry_held",
                             "Retry records held in memory until they are due.", NULL);
    d->m_connections = ms_gauge_new("mailstream_worker_connections",
                                    "SMTP and LMTP sessions open.", NULL);
    d->m_dest_other = ms_gauge_new("mailstream_worker_dest_connections",
                                   "SMTP and LMTP sessions open, by destination.",
                                   "dest=\"other\"");
    d->m_retry_depth = ms_gauge_new("mailstream_worker_retry_queue_depth",
                                    "Messages with deferred recipients (cluster-wide, Redis).",
                                    NULL);
    d->m_retry_oldest = ms_gauge_new("mailstream_worker_retry_queue_oldest_age_seconds",
                                     "Age of the oldest deferred message (cluster-wide, Redis).",
                                     NULL);
    for (o = 1; o < WK_DSN_VERDICT__N; o++) {
        snprintf(labels, sizeof(labels), "reason=\"%s\"",
                 wk_dsn_verdict_name((enum wk_dsn_verdict)o));
        d->m_dsn_suppressed[o] = ms_counter_new(
            "mailstream_worker_dsn_suppressed_total",
            "DSNs not sent by the backscatter rule (null sender, inbound mail without SPF or "
            "aligned DKIM pass, ...).", labels);
    }
    d->m_dsn_notify_skipped = ms_counter_new("mailstream_worker_dsn_notify_skipped_total",
                                             "DSNs not sent because NOTIFY asked for none.", NULL);
    d->m_delay_warnings = ms_counter_new("mailstream_worker_delay_warnings_total",
                                         "Recipients reported in delay-warning DSNs "
                                         "(Action: delayed).", NULL);
    if (conf->conn_cache_ms > 0)
        /* As many as the window runs sessions at once (smtp_client.h). */
        d->conn_cache =
            wk_smtp_cache_new(conf->conn_cache_ms, conf->max_msgs_per_conn, d->nslots);
    {
        struct wk_control_conf cc = {conf->transports, d->conf.relay, d->conf.max_age_s + 86400};
        d->control = wk_control_new(loop, &cc, control_changed, d, d->m_redis_errors);
    }
    uv_timer_init(loop, &d->stats_timer);
    d->stats_timer.data = d;
    d->stats_timer_open = 1;
    return d;
}

/* ---- retry queue statistics ---- */

static void on_stats(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_delivery *d = arg;
    long long first;

    if (cookie == 1 && r->type == MS_REDIS_INT) {
        ms_gauge_set(d->m_retry_depth, r->integer);
    } else if (cookie == 2 && r->type == MS_REDIS_ARRAY) {
        if (r->nelem == 2 && r->elem[1].type == MS_REDIS_STR &&
            sscanf(r->elem[1].str, "%lld", &first) == 1)
            ms_gauge_set(d->m_retry_oldest, (ms_time_now_us() - first) / 1000000);
        else
            ms_gauge_set(d->m_retry_oldest, 0);
    }
}

static void stats_cb(uv_timer_t *t)
{
    wk_delivery *d = t->data;
    const char *zcard[2] = {"ZCARD", MS_KEY_RETRY_QUEUE};
    const char *zrange[5] = {"ZRANGE", MS_KEY_RETRY_QUEUE, "0", "0", "WITHSCORES"};
    size_t l1[2], l2[5];
    int k;

    if (d->redis == NULL || ++d->ticks % (WK_RETRY_STATS_MS / WK_TICK_MS) != 1)
        return;
    for (k = 0; k < 2; k++)
        l1[k] = strlen(zcard[k]);
    for (k = 0; k < 5; k++)
        l2[k] = strlen(zrange[k]);
    ms_redis_command(d->redis, on_stats, d, 1, 2, zcard, l1);
    ms_redis_command(d->redis, on_stats, d, 2, 5, zrange, l2);
}

/* Partitions revoked (ms_kafka.h): their new owner redelivers every record
 * of them not yet done, so stop their work before they go.  A message none
 * of whose destinations is past its check before DATA is abandoned now
 * (sessions closed, lease given back: the new owner need not wait for it
 * to lapse).  One with a destination in DATA cannot take the message back:
 * it finishes that and records the outcome (its lease keeps the new owner
 * waiting meanwhile), starts no other DATA (on_gate), and is then released
 * without DSN or retry record (msg_settle). */
static void on_revoked(void *arg, ms_consumer *c, const int32_t *parts, size_t nparts)
{
    wk_delivery *d = arg;
    size_t i, j, k, abandoned = 0, finishing = 0;
    int in_data;

    for (i = 0; i < d->nslots; i++) {
        struct msg *m = d->slots[i];
        if (m == NULL || m->rec == NULL || d->consumers[m->tier] != c)
            continue;
        for (j = 0; j < nparts && parts[j] != m->rec->partition; j++)
            ;
        if (j == nparts)
            continue;
        in_data = 0;
        for (k = 0; m->state == MSG_SEND && k < m->ndests; k++)
            in_data |= m->dests[k].gated && m->dests[k].smtp != NULL;
        /* Recording delivered markers (or writing them again): the new
         * owner needs them, so they are finished too. */
        for (k = 0; m->state == MSG_RECORD && k < m->nrcpts; k++)
            in_data |= m->owed[k] && (m->redis_pending > 0 || m->marker_failed);
        if (in_data) {
            m->revoked = 1;
            finishing++;
            ms_info("event=revoked_in_data qid=%s partition=%d", m->qid, (int)m->rec->partition);
        } else {
            msg_release(m, 0);
            abandoned++;
        }
    }
    ms_info("event=partitions_revoked topic=%s partitions=%zu abandoned=%zu finishing=%zu",
            d->consumers[0] == c ? "queue" : "retry", nparts, abandoned, finishing);
}

void wk_delivery_attach(wk_delivery *d, ms_consumer *c, ms_producer *p, ms_redis *r)
{
    d->consumers[0] = c;
    d->producer = p;
    d->redis = r;
    wk_pacing_attach(d->pacing, r);
    wk_fence_attach(d->fence, r);
    if (c)
        ms_consumer_on_revoke(c, on_revoked, d);
    wk_outcomes_attach(d->outcomes, p, r);
    wk_control_attach(d->control, r);
    if (r && d->stats_timer_open)
        uv_timer_start(&d->stats_timer, stats_cb, WK_TICK_MS, WK_TICK_MS);
}

void wk_delivery_attach_retry(wk_delivery *d, int tier, ms_consumer *c)
{
    if (tier < 1 || tier > WK_RETRY_TIERS_MAX)
        ms_panic("event=bad_retry_tier tier=%d", tier);
    d->consumers[tier] = c;
    if (c)
        ms_consumer_on_revoke(c, on_revoked, d);
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
    if (d->stats_timer_open) {
        d->stats_timer_open = 0;
        uv_close((uv_handle_t *)&d->stats_timer, NULL);
        wk_control_stop(d->control);
    }
    wk_smtp_cache_close(d->conn_cache); /* running sessions QUIT when done */
    d->conn_cache = NULL;
    update_pauses(d);
    for (i = 0; i < d->nslots; i++)
        if (d->slots[i] && (d->slots[i]->state == MSG_WAIT || d->slots[i]->state == MSG_HOLD))
            msg_release(d->slots[i], 0);
    /* Destinations sleeping until their dest_rate turn stop waiting: they
     * are deferred (on_paced), so the drain does not wait for their turn. */
    wk_pacing_drain(d->pacing);
    after_release(d);
}

void wk_delivery_abandon_all(wk_delivery *d)
{
    size_t i;

    d->draining = 1;
    for (i = 0; i < d->nslots; i++) {
        if (d->slots[i])
            msg_release(d->slots[i], 0);
        if (d->parked[i].rec) { /* redelivered; its recipients are marked delivered */
            d->parked[i].rec = NULL;
            d->nparked--;
            bytes_charge(d, -(int64_t)d->parked[i].bytes);
        }
    }
}

void wk_delivery_free(wk_delivery *d)
{
    if (d == NULL)
        return;
    if (d->nused > 0 || d->nclosing > 0 || d->nparked > 0)
        ms_panic("event=delivery_free_busy in_flight=%zu closing=%zu parked=%zu", d->nused,
                 d->nclosing, d->nparked);
    wk_pacing_free(d->pacing);
    wk_outcomes_free(d->outcomes);
    wk_control_free(d->control);
    wk_fence_free(d->fence);
    free(d->parked);
    free(d->slots);
    free(d);
}
