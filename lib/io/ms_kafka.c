/*
 * ms_kafka.c - the only file that includes librdkafka (ms_kafka.h).
 *
 * Loop integration: each rd_kafka_t gets a pipe; librdkafka writes a byte to
 * it when its queue goes from empty to non-empty (queue io-event), a uv_poll
 * on the read end serves the queue on the loop thread, and a slow timer serves
 * it again in case an event was coalesced.  Broker reachability is probed by
 * a metadata request on libuv's thread pool so the loop never blocks on it.
 */
#include "ms_kafka.h"
#include "ms_error.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* How often the queues are served without an io-event, and how often and how
 * long broker reachability is probed. */
#define MS_KAFKA_POLL_INTERVAL_MS 100
#define MS_KAFKA_PROBE_INTERVAL_MS 2000
#define MS_KAFKA_PROBE_TIMEOUT_MS 1500
#define MS_KAFKA_DEFAULT_PRODUCE_TIMEOUT_MS 10000
/* The producer's own deadline is message.timeout.ms plus this (see
 * producer_watchdog). */
#define MS_KAFKA_STALL_GRACE_MS 2000
/* Default of ms_kafka_conf.consumer_bytes: librdkafka's prefetch queue and
 * the backlog, 64 MiB each.  One fetch (at most fetch.max.bytes, which
 * librdkafka wants >= message.max.bytes) may overshoot the queue's size. */
#define MS_KAFKA_AHEAD_DEFAULT ((size_t)128 * 1024 * 1024)
/* One fetch response holds at most this (fetch.max.bytes); a record larger
 * than that still comes, alone (KIP-74).  Small because a pause throws away
 * what was fetched: librdkafka drops the records of a paused partition that
 * the application has not taken yet, and those of the fetch still under
 * way, and fetches them again after the resume.  With 50 MiB a worker
 * behind at 50 KiB fetched 3.1 octets for every octet it delivered
 * (docs/scaling.md, "What a pause throws away").  The consumer sends no
 * records, and librdkafka wants message.max.bytes at most this; a larger
 * fetch.min.bytes could never be met (each fetch would wait its longest). */
#define MS_KAFKA_FETCH_MAX (4 * 1024 * 1024)
/* librdkafka's range of queued.max.messages.kbytes is 1..2097151. */
#define MS_KAFKA_QUEUE_KB_MAX ((size_t)2097151)
/* Records taken from librdkafka while the application is paused wait in a
 * backlog; past this many records or octets, fetching itself is paused, so
 * memory stays bounded without pausing the fetcher on every record.  It is
 * resumed once the backlog is below MS_KAFKA_RESUME_PCT of both.  Every pause
 * costs a refetch of what was fetched but not yet taken (MS_KAFKA_FETCH_MAX),
 * so the backlog drains far before fetching resumes: with three quarters,
 * each pause passed a quarter of the backlog on and a worker behind at
 * 50 KiB fetched 3.1 octets per octet delivered; with a quarter, 1.4.  What
 * is left (a quarter: 6 MiB with the defaults, or 1,024 records) lasts
 * longer than the fetch after a resume (wake_fetchers starts it at once). */
#define MS_KAFKA_BACKLOG_MAX 4096
#define MS_KAFKA_RESUME_PCT 25
/* A producer moves on to the next partition after this many octets
 * (sticky_partitioner); a few linger windows' worth at full speed. */
#define MS_KAFKA_STICKY_BYTES (256 * 1024)
/* The first librdkafka whose rd_kafka_destroy() copes with a consumer group
 * joined but never synced (cooperative-sticky; librdkafka #4312, #4381):
 * 2.2.1 as rd_kafka_version() encodes it (0xMMmmrrxx). */
#define MS_RDKAFKA_STICKY_DESTROY_FIXED 0x020201ff
/* How long ms_consumer_free waits for a consumer to leave its group.
 * rd_kafka_consumer_close() waits without limit, and a close that starts
 * while the group's JoinGroup is held by the coordinator (a rebalance in
 * progress, up to the rebalance timeout of minutes) waits for it: a worker
 * SIGTERMed as it joins would not exit.  Past this the consumer is left
 * to the coordinator's session timeout, its records to the next owner. */
#define MS_KAFKA_CLOSE_TIMEOUT_MS 5000
/* How often a consumer with a lag callback gets librdkafka's statistics:
 * often enough for an autoscaler (KEDA polls every 30 s by default), rare
 * enough that building and parsing the JSON costs nothing measurable. */
#define MS_KAFKA_STATS_INTERVAL_MS 5000

/* ---- shared plumbing ---- */

struct probe {
    uv_work_t work;
    rd_kafka_t *rk;
    _Atomic int done;   /* set by the worker thread when it no longer uses rk */
    int result;         /* 0 or an rd_kafka_resp_err_t */
    int orphan;         /* owner is gone: after_work frees the probe only */
    struct kloop *owner;
};

struct kloop {
    uv_loop_t *loop;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue; /* the queue io-events are enabled on */
    int fds[2];
    uv_poll_t poll;
    uv_timer_t timer;
    uv_timer_t probe_timer;
    struct probe *probe;
    int ready;
    char why[128];
    /* The last authentication or TLS failure (error_note), shown by
     * readiness until a probe succeeds again; "" none. */
    char fail_why[96];
    void (*serve)(struct kloop *);
    int handles_open;
};

static void set_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];

    if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK)
        ms_fatal("event=kafka_config_error name=%s value=\"%s\" error=\"%s\"", name, value, err);
}

/* ---- security (docs/security.md) ---- */

/* As set_conf, for a secret: the value is never part of a message. */
static void set_secret(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];

    if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK)
        ms_fatal("event=kafka_config_error name=%s", name);
}

static void set_optional(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    if (value && *value)
        set_conf(conf, name, value);
}

/* security.protocol and what goes with it.  librdkafka on Debian 12 is
 * built with OpenSSL and Cyrus SASL (builtin.features: ssl, sasl_plain,
 * sasl_scram), so every combination of ms_connect.h is available. */
/* librdkafka before 2.6.1 repeats the client nonce in the SCRAM
 * client-final-message (RFC 5802 §5.1 wants the server's nonce as it came;
 * librdkafka PR #4895).  Brokers before Kafka 4.0 let it pass; Kafka 4
 * checks the nonce and refuses every SCRAM login with "invalid
 * credentials".  Debian 12 ships 2.0.2. */
#define MS_KAFKA_SCRAM_FIXED_VERSION 0x020601ff

static int scram_broken(const char *mechanism)
{
    return mechanism && strncasecmp(mechanism, "SCRAM", 5) == 0 &&
           rd_kafka_version() < MS_KAFKA_SCRAM_FIXED_VERSION;
}

static void set_security(rd_kafka_conf_t *conf, const struct ms_kafka_conf *kc)
{
    static atomic_flag warned = ATOMIC_FLAG_INIT;

    if (scram_broken(kc->sasl_mechanism) && !atomic_flag_test_and_set(&warned))
        ms_warn("event=kafka_scram_warning librdkafka=%s mechanism=%s note=\"librdkafka "
                "before 2.6.1 sends a SCRAM nonce that Kafka 4 brokers refuse (older brokers "
                "accept it): against Kafka 4 use PLAIN over sasl_ssl, or mutual TLS\"",
                rd_kafka_version_str(), kc->sasl_mechanism);
    set_optional(conf, "security.protocol", kc->security_protocol);
    set_optional(conf, "sasl.mechanisms", kc->sasl_mechanism);
    set_optional(conf, "sasl.username", kc->sasl_username);
    if (kc->sasl_password && *kc->sasl_password)
        set_secret(conf, "sasl.password", kc->sasl_password);
    set_optional(conf, "ssl.ca.location", kc->ssl_ca_file);
    set_optional(conf, "ssl.certificate.location", kc->ssl_cert_file);
    set_optional(conf, "ssl.key.location", kc->ssl_key_file);
    if (kc->ssl_key_password && *kc->ssl_key_password)
        set_secret(conf, "ssl.key.password", kc->ssl_key_password);
    /* The broker's certificate must name the host we dialled: librdkafka
     * 2.0 defaults to "https" (checked), older ones did not check, so say
     * it rather than depend on the library's version. */
    if (kc->security_protocol && strstr(kc->security_protocol, "ssl"))
        set_conf(conf, "ssl.endpoint.identification.algorithm", "https");
}

static rd_kafka_conf_t *base_conf(const struct ms_kafka_conf *kc)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char num[32];

    set_conf(conf, "bootstrap.servers", kc->brokers ? kc->brokers : "127.0.0.1:9092");
    set_conf(conf, "client.id", kc->client_id ? kc->client_id : "mailstream");
    snprintf(num, sizeof(num), "%d", MS_KAFKA_RECORD_MAX);
    set_conf(conf, "message.max.bytes", num);
    set_conf(conf, "log.connection.close", "false");
    set_security(conf, kc);
    return conf;
}

static void kloop_pipe_cb(uv_poll_t *h, int status, int events)
{
    struct kloop *k = h->data;
    char drain[64];

    /* librdkafka writes one octet per wake-up: a short read has emptied
     * the pipe, and anything written after it wakes the poll again (level
     * triggered), so there is no need for a last read that says EAGAIN. */
    while (read(k->fds[0], drain, sizeof(drain)) == (ssize_t)sizeof(drain))
        ;
    k->serve(k);
}

static void kloop_timer_cb(uv_timer_t *t)
{
    struct kloop *k = t->data;
    k->serve(k);
}

static void probe_work(uv_work_t *w)
{
    struct probe *p = w->data;
    const struct rd_kafka_metadata *md = NULL;

    p->result = rd_kafka_metadata(p->rk, 0, NULL, &md, MS_KAFKA_PROBE_TIMEOUT_MS);
    if (md)
        rd_kafka_metadata_destroy(md);
    atomic_store(&p->done, 1);
}

static void probe_after(uv_work_t *w, int status)
{
    struct probe *p = w->data;
    struct kloop *k = p->owner;

    if (p->orphan || k == NULL) {
        free(p);
        return;
    }
    k->probe = NULL;
    if (status == 0 && p->result == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (!k->ready)
            ms_info("event=kafka_reachable");
        k->ready = 1;
        k->why[0] = '\0';
        k->fail_why[0] = '\0';
    } else {
        if (k->ready)
            ms_warn("event=kafka_unreachable error=\"%s\"",
                    rd_kafka_err2str((rd_kafka_resp_err_t)p->result));
        k->ready = 0;
        if (k->fail_why[0])
            snprintf(k->why, sizeof(k->why), "kafka: %s", k->fail_why);
        else
            snprintf(k->why, sizeof(k->why), "kafka: %s",
                     rd_kafka_err2str((rd_kafka_resp_err_t)p->result));
    }
    free(p);
}

static void kloop_probe_cb(uv_timer_t *t)
{
    struct kloop *k = t->data;
    struct probe *p;

    if (k->probe)
        return;
    p = ms_calloc(1, sizeof(*p));
    p->rk = k->rk;
    p->owner = k;
    p->work.data = p;
    k->probe = p;
    if (uv_queue_work(k->loop, &p->work, probe_work, probe_after) != 0) {
        k->probe = NULL;
        free(p);
    }
}

static void kloop_start(struct kloop *k, uv_loop_t *loop, rd_kafka_t *rk, rd_kafka_queue_t *q,
                        void (*serve)(struct kloop *))
{
    k->loop = loop;
    k->rk = rk;
    k->queue = q;
    k->serve = serve;
    snprintf(k->why, sizeof(k->why), "kafka: not yet reached");
    if (pipe2(k->fds, O_NONBLOCK | O_CLOEXEC) != 0)
        ms_fatal("event=kafka_pipe_failed");
    rd_kafka_queue_io_event_enable(q, k->fds[1], "1", 1);
    uv_poll_init(loop, &k->poll, k->fds[0]);
    uv_timer_init(loop, &k->timer);
    uv_timer_init(loop, &k->probe_timer);
    k->poll.data = k->timer.data = k->probe_timer.data = k;
    uv_poll_start(&k->poll, UV_READABLE, kloop_pipe_cb);
    uv_timer_start(&k->timer, kloop_timer_cb, MS_KAFKA_POLL_INTERVAL_MS, MS_KAFKA_POLL_INTERVAL_MS);
    uv_timer_start(&k->probe_timer, kloop_probe_cb, 0, MS_KAFKA_PROBE_INTERVAL_MS);
    k->handles_open = 3;
}

/* Stop the loop plumbing and wait for a running probe, so that rk can be
 * destroyed.  The kloop is freed later by the last close callback
 * (kloop_close). */
static void kloop_stop(struct kloop *k)
{
    uv_poll_stop(&k->poll);
    uv_timer_stop(&k->timer);
    uv_timer_stop(&k->probe_timer);
    if (k->probe) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        /* The probe is bounded by MS_KAFKA_PROBE_TIMEOUT_MS. */
        if (uv_cancel((uv_req_t *)&k->probe->work) != 0)
            while (!atomic_load(&k->probe->done))
                nanosleep(&ts, NULL);
        k->probe->orphan = 1;
        k->probe->owner = NULL;
        k->probe = NULL;
    }
    rd_kafka_queue_io_event_enable(k->queue, -1, NULL, 0);
    rd_kafka_queue_destroy(k->queue);
    k->queue = NULL;
}

static void kloop_free_cb(uv_handle_t *h)
{
    struct kloop *k = h->data;

    if (--k->handles_open == 0) {
        close(k->fds[0]);
        close(k->fds[1]);
        free(k);
    }
}

static void kloop_close(struct kloop *k)
{
    uv_close((uv_handle_t *)&k->poll, kloop_free_cb);
    uv_close((uv_handle_t *)&k->timer, kloop_free_cb);
    uv_close((uv_handle_t *)&k->probe_timer, kloop_free_cb);
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    char q[512];

    ms_log(level <= 3 ? MS_LOG_ERROR : level <= 5 ? MS_LOG_WARN : MS_LOG_INFO,
           "event=kafka_log facility=%s message=%s", fac, ms_log_quote(q, sizeof(q), buf, strlen(buf)));
}

/* Errors that retrying with the same settings cannot cure: a refused
 * SASL login, a TLS handshake that failed.  They are logged as errors each
 * time (librdkafka retries with its reconnect backoff, so the log repeats
 * every few seconds at most, never silently) and kept for readiness. */
static int error_note(struct kloop *k, rd_kafka_t *rk, int err, const char *reason)
{
    char q[512], proto[32] = "", mech[32] = "", brokers[256] = "";
    size_t n;
    int auth = err == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
               err == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED;

    if (!auth && err != RD_KAFKA_RESP_ERR__SSL)
        return 0;
    n = sizeof(proto);
    rd_kafka_conf_get(rd_kafka_conf(rk), "security.protocol", proto, &n);
    n = sizeof(mech);
    rd_kafka_conf_get(rd_kafka_conf(rk), "sasl.mechanisms", mech, &n);
    n = sizeof(brokers);
    rd_kafka_conf_get(rd_kafka_conf(rk), "bootstrap.servers", brokers, &n);
    /* librdkafka's reason starts with the broker ("sasl_ssl://host:port/id:
     * ...") and never holds the password. */
    ms_log(MS_LOG_ERROR, "event=%s brokers=%s protocol=%s mechanism=%s reason=%s%s",
             auth ? "kafka_auth_failed" : "kafka_tls_failed", brokers, proto,
             strstr(proto, "sasl") ? mech : "-", ms_log_quote(q, sizeof(q), reason, strlen(reason)),
             auth && strstr(proto, "sasl") && scram_broken(mech)
                 ? " hint=\"a Kafka 4 broker refuses this librdkafka's SCRAM: see "
                   "event=kafka_scram_warning\""
                 : "");
    if (k) {
        snprintf(k->fail_why, sizeof(k->fail_why), "%s (%s%s%s)",
                 auth ? "authentication failed" : "TLS failed", proto,
                 strstr(proto, "sasl") ? " " : "", strstr(proto, "sasl") ? mech : "");
        if (!k->ready)
            snprintf(k->why, sizeof(k->why), "kafka: %s", k->fail_why);
    }
    return 1;
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    char q[512];

    if (error_note(NULL, rk, err, reason))
        return;
    ms_warn("event=kafka_error error=%s reason=%s", rd_kafka_err2name((rd_kafka_resp_err_t)err),
            ms_log_quote(q, sizeof(q), reason, strlen(reason)));
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        ms_fatal("event=kafka_fatal reason=%s", q);
}

/* ---- producer ---- */

struct ms_producer {
    rd_kafka_t *rk;
    struct kloop *kl;
    ms_produce_cb cb;
    void *arg;
    /* Sticky partitioning (see sticky_partitioner): octets handed to
     * ms_producer_send so far, and where this producer's walk starts.
     * A caller that batches fixes the window at each batch's start
     * (ms_producer_batch_begin); batch_window is that window plus one, 0
     * until the first batch. */
    _Atomic uint64_t sticky_bytes;
    _Atomic uint64_t batch_window;
    uint32_t sticky_base;
    char keyed_topic[MS_KAFKA_TOPIC_MAX + 1]; /* partitioned by key; "" none */
    /* Stall watchdog (producer_watchdog): the timeout, and since when
     * records have been outstanding without any report (0: not stalled). */
    uint64_t stall_limit_ms;
    uint64_t quiet_since_ms;
};

/*
 * Records go to one partition until MS_KAFKA_STICKY_BYTES have been produced,
 * then to the next one, instead of hashing the key (the queue id).  Nothing
 * needs a queue id on a particular partition: each record is a whole message.
 * Hashing put every record of a linger window on a different partition, so
 * the broker appended one-record batches (and the produce latency the 250
 * waits for grew with its CPU); sticking to a partition makes each linger
 * window one batch (the same idea as Kafka's own producer, KIP-480/KIP-794).
 * Over time every partition gets the same share, so a consumer group still
 * spreads the work.  A partition without a leader is skipped.
 *
 * A caller that batches records itself (ms_kafka_conf.caller_batches: the
 * frontend's group commit) says where each batch starts
 * (ms_producer_batch_begin), and the walk moves on only there: librdkafka
 * sends one produce request per partition, and with a topic that fsyncs every
 * append each request is an fsync, so a batch that straddled two windows cost
 * two requests and two fsyncs (at 50 KiB, five records filled a window).
 * Such a caller should send a batch only once the previous one is
 * acknowledged, as the frontend does.  An idempotent
 * librdkafka (2.0.2, and still so upstream) sends no further request for a
 * partition while five or more of its *records* are in flight
 * (rd_kafka_toppar_producer_serve: RD_KAFKA_IDEMP_MAX_INFLIGHT minus the
 * records in flight), so a batch behind another on the same partition waits a
 * whole round trip, and with linger.ms 0 the broker thread polls without
 * sleeping meanwhile (measured: ten times the poll calls, four times its CPU).
 *
 * The producer's keyed topic (ms_kafka_conf.keyed_topic: the worker's
 * `events`) is the exception: its records are hashed by key as librdkafka
 * would, so the events of one queue id stay on one partition, in order.
 *
 * librdkafka may call this from its own threads (records produced before the
 * topic's metadata was known are partitioned later), hence the atomic.
 */
static int32_t sticky_partitioner(const rd_kafka_topic_t *rkt, const void *key, size_t keylen,
                                  int32_t partition_cnt, void *rkt_opaque, void *msg_opaque)
{
    ms_producer *p = rkt_opaque;
    uint64_t batch = atomic_load(&p->batch_window);
    uint64_t window = batch ? batch - 1 : atomic_load(&p->sticky_bytes) / MS_KAFKA_STICKY_BYTES;
    int32_t first = (int32_t)((window + p->sticky_base) % (uint64_t)partition_cnt);

    if (p->keyed_topic[0] && strcmp(rd_kafka_topic_name(rkt), p->keyed_topic) == 0)
        return rd_kafka_msg_partitioner_consistent_random(rkt, key, keylen, partition_cnt,
                                                          rkt_opaque, msg_opaque);

    for (int32_t i = 0; i < partition_cnt; i++) {
        int32_t part = (first + i) % partition_cnt;
        if (rd_kafka_topic_partition_available(rkt, part))
            return part;
    }
    return first; /* none available: wait in this one's queue */
}

/* error_cb, keeping an authentication or TLS failure for readiness. */
static void producer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    ms_producer *p = opaque;

    if (!error_note(p->kl, rk, err, reason))
        error_cb(rk, err, reason, opaque);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    ms_producer *p = opaque;
    uint64_t id = (uint64_t)(uintptr_t)m->_private;

    p->quiet_since_ms = 0;

    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        p->cb(p->arg, id, 0, NULL);
    else
        p->cb(p->arg, id, m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT ? MS_ETIMEOUT : MS_EUNAVAIL,
              rd_kafka_err2str(m->err));
}

/*
 * librdkafka does not always enforce message.timeout.ms while the partition
 * leader is unreachable: records already moved to a broker's transmit queue
 * wait for that broker to come back (confluentinc/librdkafka#1432, #2226),
 * and the client waiting for our 250 would wait as long.  So the glue keeps
 * its own deadline: when records have been outstanding for the timeout plus
 * MS_KAFKA_STALL_GRACE_MS without a single delivery report, and the broker
 * probe says Kafka is unreachable, every queued and in-flight record is
 * purged and reported as failed (MS_EUNAVAIL).  XXX: a purged in-flight
 * record may still have reached the broker; the frontend answers 451 and the
 * client retries, so such a message can arrive twice (at least once).
 */
static void producer_watchdog(ms_producer *p)
{
    uint64_t now = uv_now(p->kl->loop);

    if (rd_kafka_outq_len(p->rk) == 0) {
        p->quiet_since_ms = 0;
        return;
    }
    if (p->quiet_since_ms == 0) {
        p->quiet_since_ms = now;
        return;
    }
    if (now - p->quiet_since_ms < p->stall_limit_ms || p->kl->ready)
        return;
    ms_warn("event=kafka_produce_stalled outstanding=%d quiet_ms=%llu action=purge",
            rd_kafka_outq_len(p->rk), (unsigned long long)(now - p->quiet_since_ms));
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                              RD_KAFKA_PURGE_F_NON_BLOCKING);
    p->quiet_since_ms = now;
}

static void producer_serve(struct kloop *k)
{
    while (rd_kafka_poll(k->rk, 0) > 0)
        ;
    producer_watchdog(rd_kafka_opaque(k->rk));
}

ms_producer *ms_producer_new(uv_loop_t *loop, const struct ms_kafka_conf *kc, ms_produce_cb cb,
                             void *arg, char *err, size_t errlen)
{
    ms_producer *p = ms_calloc(1, sizeof(*p));
    rd_kafka_conf_t *conf = base_conf(kc);
    rd_kafka_topic_conf_t *tconf;
    int timeout_ms = kc->produce_timeout_ms > 0 ? kc->produce_timeout_ms
                                                : MS_KAFKA_DEFAULT_PRODUCE_TIMEOUT_MS;
    char num[32];

    /* acks=all and idempotence: a 250 means the record is on every in-sync
     * replica, exactly once per send (DESIGN.md, "Accepted means durable"). */
    set_conf(conf, "enable.idempotence", "true");
    set_conf(conf, "acks", "all");
    snprintf(num, sizeof(num), "%d", timeout_ms);
    set_conf(conf, "message.timeout.ms", num);
    if (kc->keyed_topic) {
        if (strlen(kc->keyed_topic) > MS_KAFKA_TOPIC_MAX) {
            snprintf(err, errlen, "topic name longer than %d octets", MS_KAFKA_TOPIC_MAX);
            rd_kafka_conf_destroy(conf);
            free(p);
            return NULL;
        }
        snprintf(p->keyed_topic, sizeof(p->keyed_topic), "%s", kc->keyed_topic);
    }
    p->stall_limit_ms = (uint64_t)timeout_ms + MS_KAFKA_STALL_GRACE_MS;
    snprintf(num, sizeof(num), "%d",
             kc->caller_batches ? kc->batch_linger_ms : kc->linger_ms > 0 ? kc->linger_ms : 1);
    set_conf(conf, "linger.ms", num);
    set_conf(conf, "queue.buffering.max.kbytes", "1048576");
    /* Whole batches are compressed by the producer and stored so by the
     * broker (topic compression.type=producer): less disk and network per
     * record, paid for in producer CPU (bench/README.md, "compression"). */
    if (kc->compression && *kc->compression)
        set_conf(conf, "compression.type", kc->compression);
    tconf = rd_kafka_topic_conf_new();
    rd_kafka_topic_conf_set_partitioner_cb(tconf, sticky_partitioner);
    rd_kafka_topic_conf_set_opaque(tconf, p);
    rd_kafka_conf_set_default_topic_conf(conf, tconf);
    /* Producers of one process and of several nodes start their walks at
     * different partitions. */
    p->sticky_base = (uint32_t)((uint64_t)getpid() * 2654435761u ^ (uint64_t)(uintptr_t)p >> 4 ^
                                (uint64_t)time(NULL));
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, producer_error_cb);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
    if (p->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        free(p);
        return NULL;
    }
    p->cb = cb;
    p->arg = arg;
    p->kl = ms_calloc(1, sizeof(*p->kl));
    kloop_start(p->kl, loop, p->rk, rd_kafka_queue_get_main(p->rk), producer_serve);
    return p;
}

static int produce(ms_producer *p, const char *topic, const void *key, size_t keylen,
                   void *value, size_t len, uint64_t id, int flags)
{
    rd_kafka_resp_err_t err;

    if (len > MS_KAFKA_RECORD_MAX)
        return MS_ETOOBIG;
    atomic_fetch_add(&p->sticky_bytes, len);
    err = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, keylen),
                            RD_KAFKA_V_VALUE(value, len), RD_KAFKA_V_MSGFLAGS(flags),
                            RD_KAFKA_V_OPAQUE((void *)(uintptr_t)id), RD_KAFKA_V_END);
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR: return 0;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL: return MS_EAGAIN;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: return MS_ETOOBIG;
    default:
        ms_warn("event=kafka_produce_failed topic=%s error=\"%s\"", topic, rd_kafka_err2str(err));
        return MS_EIO;
    }
}

void ms_producer_batch_begin(ms_producer *p)
{
    atomic_store(&p->batch_window, atomic_load(&p->sticky_bytes) / MS_KAFKA_STICKY_BYTES + 1);
}

int ms_producer_send(ms_producer *p, const char *topic, const void *key, size_t keylen,
                     const void *value, size_t len, uint64_t id)
{
    return produce(p, topic, key, keylen, (void *)value, len, id, RD_KAFKA_MSG_F_COPY);
}

int ms_producer_send_ref(ms_producer *p, const char *topic, const void *key, size_t keylen,
                         const void *value, size_t len, uint64_t id)
{
    return produce(p, topic, key, keylen, (void *)value, len, id, 0); /* neither F_COPY nor F_FREE */
}

int ms_producer_outstanding(ms_producer *p)
{
    return rd_kafka_outq_len(p->rk);
}

int ms_producer_ready(ms_producer *p, char *why, size_t whylen)
{
    if (!p->kl->ready)
        snprintf(why, whylen, "%s", p->kl->why);
    return p->kl->ready;
}

void ms_producer_free(ms_producer *p, int timeout_ms)
{
    if (p == NULL)
        return;
    kloop_stop(p->kl);
    if (rd_kafka_flush(p->rk, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ms_warn("event=kafka_flush_incomplete outstanding=%d", rd_kafka_outq_len(p->rk));
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, 1000); /* serves the purged reports as errors */
    }
    kloop_close(p->kl);
    rd_kafka_destroy(p->rk);
    free(p);
}

/* ---- consumer ---- */

/* Offsets handed out and not yet done, per partition, in ascending order
 * (Kafka delivers a partition in order). */
struct ptrack {
    int assigned;
    uint64_t gen;
    int64_t *offsets;
    size_t n, cap;
    int64_t next_store; /* highest offset stored so far (the next to consume) */
    int64_t last_taken; /* highest offset taken from librdkafka */
};

struct rec_node {
    struct ms_record rec;   /* first: ms_record * converts to rec_node * */
    struct ms_list out;       /* on ms_consumer.out: every record not yet done */
    struct ms_list backlog;   /* on ms_consumer.backlog while not handed out */
};

struct ms_consumer {
    rd_kafka_t *rk;
    struct kloop *kl;
    char *topic;
    ms_consume_cb cb;
    void *arg;
    ms_revoke_cb revoke_cb; /* ms_consumer_on_revoke: NULL none */
    void *revoke_arg;
    ms_lag_cb lag_cb;   /* statistics (consumer_stats_cb): NULL none */
    void *lag_arg;
    uint64_t gen;
    /* A rebalance callback assigned partitions (possibly none) at least
     * once: the group's SyncGroup completed, so the assignor has a state
     * (see ms_consumer_free). */
    int synced;
    int paused;         /* the application wants no records */
    int fetch_paused;   /* librdkafka's fetchers are paused too */
    struct ptrack *parts;
    size_t nparts;
    struct ms_list out;       /* rec_node.out: handed out or in backlog */
    struct ms_list backlog;   /* rec_node.backlog, oldest first */
    size_t nbacklog;
    size_t backlog_bytes;
    size_t backlog_bytes_max; /* half of ms_kafka_conf.consumer_bytes */
    int in_flight;
};

static void backlog_take(ms_consumer *c, const struct rec_node *n)
{
    c->nbacklog--;
    c->backlog_bytes -= n->rec.len;
}

static int backlog_full(const ms_consumer *c)
{
    return c->nbacklog >= MS_KAFKA_BACKLOG_MAX || c->backlog_bytes >= c->backlog_bytes_max;
}

static int backlog_low(const ms_consumer *c)
{
    return c->nbacklog < MS_KAFKA_BACKLOG_MAX * MS_KAFKA_RESUME_PCT / 100 &&
           c->backlog_bytes < c->backlog_bytes_max / 100 * MS_KAFKA_RESUME_PCT;
}

static struct ptrack *ptrack_get(ms_consumer *c, int32_t partition)
{
    if (partition < 0)
        return NULL;
    if ((size_t)partition >= c->nparts) {
        size_t n = (size_t)partition + 1;
        c->parts = ms_realloc(c->parts, n * sizeof(*c->parts));
        memset(c->parts + c->nparts, 0, (n - c->nparts) * sizeof(*c->parts));
        c->nparts = n;
    }
    return &c->parts[partition];
}

static void store_offset(ms_consumer *c, int32_t partition, int64_t offset)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_resp_err_t err;

    rd_kafka_topic_partition_list_add(l, c->topic, partition)->offset = offset;
    err = rd_kafka_offsets_store(c->rk, l);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        ms_warn("event=kafka_offset_store_failed partition=%d offset=%lld error=\"%s\"",
                (int)partition, (long long)offset, rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

static void set_paused(ms_consumer *c, rd_kafka_topic_partition_list_t *parts, int pause)
{
    if (parts->cnt == 0)
        return;
    if (pause)
        rd_kafka_pause_partitions(c->rk, parts);
    else
        rd_kafka_resume_partitions(c->rk, parts);
}

/* Pause fetching for every assigned partition (resume_fetch_if_low undoes it). */
static void pause_all(ms_consumer *c)
{
    rd_kafka_topic_partition_list_t *l = NULL;

    if (rd_kafka_assignment(c->rk, &l) == RD_KAFKA_RESP_ERR_NO_ERROR && l) {
        set_paused(c, l, 1);
        rd_kafka_topic_partition_list_destroy(l);
    }
}

/* Wake the fetchers of the partitions just resumed.  librdkafka before
 * 2.3.0 (Debian 12 ships 2.0.2) does not wake a broker thread when its
 * partitions are resumed: the thread sleeps on until its next periodic
 * turn, up to a second (rd_kafka_max_block_ms), before it decides to fetch
 * again (upstream issue #2879; 2.3.0 added fetch.queue.backoff.ms).  With
 * a backlog that lasts less than that, delivery stopped for the rest of
 * every second: at 50 KiB a worker delivered in waves, ~0.4 s on and
 * ~0.6 s idle (docs/scaling.md, "Fetching after a pause").  A seek wakes
 * the thread ("seek done"), and seeking to the record after the last one
 * taken is where the resume starts anyway (a pause keeps the application's
 * position); consumer_take drops any record at or below that position. */
static void wake_fetchers(ms_consumer *c, const rd_kafka_topic_partition_list_t *l)
{
    rd_kafka_topic_partition_list_t *seek;
    rd_kafka_error_t *e;
    struct ptrack *t;
    int i;

    seek = rd_kafka_topic_partition_list_new(l->cnt > 0 ? l->cnt : 1);
    for (i = 0; i < l->cnt; i++) {
        t = ptrack_get(c, l->elems[i].partition);
        if (t == NULL || !t->assigned || t->last_taken < 0)
            continue;
        rd_kafka_topic_partition_list_add(seek, l->elems[i].topic, l->elems[i].partition)->offset =
            t->last_taken + 1;
    }
    /* timeout 0: queued, not waited for (the loop must not block). */
    if (seek->cnt > 0 && (e = rd_kafka_seek_partitions(c->rk, seek, 0)) != NULL) {
        ms_warn("event=kafka_seek_failed topic=%s error=\"%s\"", c->topic,
                rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(seek);
}

/* Fetching was paused for a full backlog: resume it once the backlog is low. */
static void resume_fetch_if_low(ms_consumer *c)
{
    rd_kafka_topic_partition_list_t *l = NULL;

    if (!c->fetch_paused || !backlog_low(c))
        return;
    c->fetch_paused = 0;
    ms_debug("event=kafka_fetch_resumed topic=%s backlog=%zu backlog_bytes=%zu", c->topic,
             c->nbacklog, c->backlog_bytes);
    if (rd_kafka_assignment(c->rk, &l) == RD_KAFKA_RESP_ERR_NO_ERROR && l) {
        set_paused(c, l, 0);
        wake_fetchers(c, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
}

static void rec_unlink(ms_consumer *c, struct rec_node *n)
{
    ms_list_remove(&n->out);
    ms_list_remove(&n->backlog);
    rd_kafka_message_destroy(n->rec._msg);
    free(n);
}

/* Drop backlog records of the partitions in `parts` (all of them when parts
 * is NULL); the new owner of those partitions redelivers them. */
static void drop_backlog(ms_consumer *c, const rd_kafka_topic_partition_list_t *parts)
{
    struct ms_list *pos, *tmp;
    int i, drop;

    ms_list_foreach_safe(pos, tmp, &c->backlog) {
        struct rec_node *n = ms_list_entry(pos, struct rec_node, backlog);

        drop = parts == NULL;
        for (i = 0; !drop && i < parts->cnt; i++)
            drop = parts->elems[i].partition == n->rec.partition;
        if (drop) {
            backlog_take(c, n);
            rec_unlink(c, n);
        }
    }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    ms_consumer *c = opaque;
    /* NULL once the consumer's group has terminated.  A close that starts
     * while an assignment waits unserved in the queue (SIGTERM during a
     * rebalance) revokes it again at once: the queue then holds the
     * assignment and its revocation.  The assignment's callback below is
     * turned into an unassign by librdkafka (closing), the group leaves and
     * terminates, and the revocation is served after that: asking the group
     * for anything then gets no answer.  strcmp() on that NULL was a worker's
     * SIGSEGV at shutdown (test_worker_term_rebalance in CI, 2026-12-06). */
    const char *protocol = rd_kafka_rebalance_protocol(rk);
    int gone = protocol == NULL;
    /* cooperative-sticky: only the partitions that move are revoked, so a
     * worker joining or leaving does not make every worker drop (and later
     * redeliver, and possibly deliver twice) everything it has in flight. */
    int incremental = !gone && strcmp(protocol, "COOPERATIVE") == 0;
    rd_kafka_error_t *e = NULL;
    struct ptrack *t;
    int i;

    c->gen++;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && gone) {
        /* Nothing to take: the group this came from is gone. */
        ms_info("event=kafka_assign_ignored partitions=%d reason=group_closed", parts->cnt);
    } else if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        c->synced = 1;
        for (i = 0; i < parts->cnt; i++) {
            if ((t = ptrack_get(c, parts->elems[i].partition)) == NULL)
                continue;
            t->assigned = 1;
            t->gen = c->gen;
            t->n = 0;
            t->next_store = -1;
            t->last_taken = -1;
        }
        ms_info("event=kafka_assigned partitions=%d incremental=%d", parts->cnt, incremental);
        if (incremental)
            e = rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
        if (c->fetch_paused)
            set_paused(c, parts, 1);
    } else {
        /* The application stops those partitions' work first (no new
         * DATA for them), so what it finished is stored and committed
         * below; records still in flight are redelivered to their next
         * owner: their offsets were never stored. */
        if (c->revoke_cb && parts->cnt > 0) {
            int32_t *nums = ms_calloc((size_t)parts->cnt, sizeof(*nums));
            for (i = 0; i < parts->cnt; i++)
                nums[i] = parts->elems[i].partition;
            c->revoke_cb(c->revoke_arg, c, nums, (size_t)parts->cnt);
            free(nums);
        }
        /* A group that is gone committed what was stored as it closed. */
        if (!gone)
            rd_kafka_commit(rk, NULL, 0);
        for (i = 0; i < parts->cnt; i++)
            if ((t = ptrack_get(c, parts->elems[i].partition)) != NULL) {
                t->assigned = 0;
                t->n = 0;
            }
        drop_backlog(c, parts);
        ms_info("event=kafka_revoked partitions=%d incremental=%d%s", parts->cnt, incremental,
                gone ? " reason=group_closed" : "");
        /* A group that is gone has nothing assigned in librdkafka. */
        if (!gone && incremental)
            e = rd_kafka_incremental_unassign(rk, parts);
        else if (!gone)
            rd_kafka_assign(rk, NULL);
        /* A backlog that paused fetching may be gone with the partitions;
         * fetching must resume, or the partitions assigned next would stay
         * paused for good. */
        resume_fetch_if_low(c);
    }
    if (e) {
        ms_warn("event=kafka_rebalance_error error=\"%s\"", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
}

static void consumer_hand_out(ms_consumer *c, struct rec_node *n)
{
    c->in_flight++;
    c->cb(c->arg, &n->rec);
}

static void consumer_serve(struct kloop *k);

static void consumer_take(ms_consumer *c, rd_kafka_message_t *m)
{
    struct rec_node *n;
    struct ptrack *t;

    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            ms_warn("event=kafka_consume_error error=\"%s\"", rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
        return;
    }
    /* At or below the last offset taken: fetched again after a seek of
     * wake_fetchers() raced a fetch of the same records (taken once). */
    if ((t = ptrack_get(c, m->partition)) == NULL || !t->assigned || m->offset <= t->last_taken) {
        rd_kafka_message_destroy(m);
        return;
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->offsets = ms_realloc(t->offsets, t->cap * sizeof(int64_t));
    }
    t->offsets[t->n++] = m->offset;
    t->last_taken = m->offset;
    n = ms_calloc(1, sizeof(*n));
    n->rec.topic = c->topic;
    n->rec.partition = m->partition;
    n->rec.offset = m->offset;
    n->rec.key = m->key;
    n->rec.keylen = m->key_len;
    n->rec.value = m->payload;
    n->rec.len = m->len;
    n->rec._msg = m;
    n->rec._gen = t->gen;
    ms_list_insert_head(&c->out, &n->out);
    if (c->paused || c->nbacklog > 0) {
        ms_list_insert_tail(&c->backlog, &n->backlog);
        c->nbacklog++;
        c->backlog_bytes += n->rec.len;
        if (backlog_full(c) && !c->fetch_paused) {
            c->fetch_paused = 1;
            pause_all(c);
        }
        return;
    }
    consumer_hand_out(c, n);
}

static void consumer_serve(struct kloop *k)
{
    ms_consumer *c = NULL;
    rd_kafka_message_t *m;

    c = rd_kafka_opaque(k->rk);
    while ((m = rd_kafka_consumer_poll(k->rk, 0)) != NULL)
        consumer_take(c, m);
}

static void consumer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    ms_consumer *c = opaque;

    if (!error_note(c->kl, rk, err, reason))
        error_cb(rk, err, reason, opaque);
}

/* Statistics (every MS_KAFKA_STATS_INTERVAL_MS, on the loop thread like
 * every callback here): the lag of this consumer's partitions.  librdkafka
 * frees the JSON when this returns 0. */
static int consumer_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    ms_consumer *c = opaque;
    struct ms_kafka_lag lags[MS_KSTATS_PARTITIONS_MAX];
    long n = ms_kstats_lag(json, len, c->topic, lags, MS_KSTATS_PARTITIONS_MAX);

    if (n < 0) {
        ms_warn("event=kafka_stats_unreadable topic=%s", c->topic);
        return 0;
    }
    if (n > MS_KSTATS_PARTITIONS_MAX)
        n = MS_KSTATS_PARTITIONS_MAX;
    c->lag_cb(c->lag_arg, c->topic, lags, (size_t)n);
    return 0;
}

ms_consumer *ms_consumer_new(uv_loop_t *loop, const struct ms_kafka_conf *kc, const char *group,
                             const char *topic, ms_consume_cb cb, void *arg, char *err,
                             size_t errlen)
{
    ms_consumer *c = ms_calloc(1, sizeof(*c));
    rd_kafka_conf_t *conf = base_conf(kc);
    rd_kafka_topic_partition_list_t *subs;
    rd_kafka_resp_err_t e;
    char num[32];
    size_t ahead, kb;

    set_conf(conf, "group.id", group);
    set_conf(conf, "enable.auto.offset.store", "false");
    set_conf(conf, "enable.auto.commit", "true");
    set_conf(conf, "auto.commit.interval.ms", "1000");
    set_conf(conf, "auto.offset.reset", "earliest");
    ahead = kc->consumer_bytes > 0 ? kc->consumer_bytes : MS_KAFKA_AHEAD_DEFAULT;
    snprintf(num, sizeof(num), "%d", MS_KAFKA_FETCH_MAX);
    set_conf(conf, "message.max.bytes", num);
    set_conf(conf, "fetch.max.bytes", num);
    if (kc->fetch_min_bytes > 0) {
        snprintf(num, sizeof(num), "%d",
                 kc->fetch_min_bytes < MS_KAFKA_FETCH_MAX ? kc->fetch_min_bytes : MS_KAFKA_FETCH_MAX);
        set_conf(conf, "fetch.min.bytes", num);
    }
    if (kc->fetch_wait_ms > 0) {
        snprintf(num, sizeof(num), "%d", kc->fetch_wait_ms);
        set_conf(conf, "fetch.wait.max.ms", num);
    }
    kb = ahead / 2 / 1024;
    kb = kb < 1 ? 1 : kb > MS_KAFKA_QUEUE_KB_MAX ? MS_KAFKA_QUEUE_KB_MAX : kb;
    snprintf(num, sizeof(num), "%zu", kb);
    set_conf(conf, "queued.max.messages.kbytes", num);
    /* A worker that stops polling this long is presumed dead; we keep
     * polling while paused, so only a stuck loop hits it. */
    set_conf(conf, "max.poll.interval.ms", "300000");
    set_conf(conf, "partition.assignment.strategy", "cooperative-sticky");
    /* A dead worker's partitions move to the others after this long (the
     * broker's group.min.session.timeout.ms is 6 s by default). */
    set_conf(conf, "session.timeout.ms", "10000");
    set_conf(conf, "heartbeat.interval.ms", "2000");
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, consumer_error_cb);
    if (kc->lag_cb) {
        snprintf(num, sizeof(num), "%d", MS_KAFKA_STATS_INTERVAL_MS);
        set_conf(conf, "statistics.interval.ms", num);
        rd_kafka_conf_set_stats_cb(conf, consumer_stats_cb);
        c->lag_cb = kc->lag_cb;
        c->lag_arg = kc->lag_arg;
    }
    rd_kafka_conf_set_opaque(conf, c);
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen);
    if (c->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        free(c);
        return NULL;
    }
    rd_kafka_poll_set_consumer(c->rk);
    c->topic = ms_strdup(topic);
    ms_list_init(&c->out);
    ms_list_init(&c->backlog);
    c->backlog_bytes_max = ahead / 2;
    c->cb = cb;
    c->arg = arg;
    subs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subs, topic, RD_KAFKA_PARTITION_UA);
    e = rd_kafka_subscribe(c->rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "subscribe %s: %s", topic, rd_kafka_err2str(e));
        rd_kafka_destroy(c->rk);
        free(c->topic);
        free(c);
        return NULL;
    }
    c->kl = ms_calloc(1, sizeof(*c->kl));
    kloop_start(c->kl, loop, c->rk, rd_kafka_queue_get_consumer(c->rk), consumer_serve);
    return c;
}

void ms_consumer_pause(ms_consumer *c)
{
    c->paused = 1;
}

void ms_consumer_resume(ms_consumer *c)
{
    struct ms_list *first;

    if (!c->paused && !c->fetch_paused)
        return;
    c->paused = 0;
    /* Hand out the backlog oldest first; a handler may pause us again. */
    while (!c->paused && (first = ms_list_first(&c->backlog)) != NULL) {
        struct rec_node *n = ms_list_entry(first, struct rec_node, backlog);

        ms_list_remove(first);
        backlog_take(c, n);
        consumer_hand_out(c, n);
    }
    resume_fetch_if_low(c);
    /* Serve what librdkafka has queued on the next loop turn rather than
     * recursing into the application from here. */
    if (!c->paused)
        uv_timer_start(&c->kl->timer, kloop_timer_cb, 0, MS_KAFKA_POLL_INTERVAL_MS);
}

void ms_consumer_on_revoke(ms_consumer *c, ms_revoke_cb cb, void *arg)
{
    c->revoke_cb = cb;
    c->revoke_arg = arg;
}

void ms_consumer_done(ms_consumer *c, struct ms_record *rec)
{
    struct rec_node *n = (struct rec_node *)rec;
    struct ptrack *t = ptrack_get(c, rec->partition);
    int64_t store;
    size_t i;

    c->in_flight--;
    if (t && t->assigned && t->gen == rec->_gen) {
        for (i = 0; i < t->n; i++)
            if (t->offsets[i] == rec->offset)
                break;
        if (i < t->n) {
            memmove(&t->offsets[i], &t->offsets[i + 1], (t->n - i - 1) * sizeof(int64_t));
            t->n--;
        }
        /* Next to consume: the lowest offset still in flight, or just past
         * the last one taken when none is. */
        store = t->n > 0 ? t->offsets[0] : t->last_taken + 1;
        if (store > t->next_store) {
            t->next_store = store;
            store_offset(c, rec->partition, store);
        }
    }
    rec_unlink(c, n);
}

int ms_consumer_ready(ms_consumer *c, char *why, size_t whylen)
{
    if (!c->kl->ready)
        snprintf(why, whylen, "%s", c->kl->why);
    return c->kl->ready;
}

int ms_consumer_in_flight(ms_consumer *c)
{
    return c->in_flight;
}

/* rd_kafka_consumer_close() with a time limit (MS_KAFKA_CLOSE_TIMEOUT_MS):
 * the close runs in librdkafka's background, its rebalance callbacks are
 * served here.  Returns 1 once closed (or the close could not start, as
 * rd_kafka_consumer_close() would return), 0 when it timed out.
 *
 * The close forwards the group's queue, where fetched records also arrive,
 * to q.  It is served with rd_kafka_consume_queue(), which runs the
 * callbacks and returns a record, never with rd_kafka_queue_poll_callback():
 * that one asserts on a record it cannot hand to a consume callback
 * (rd_kafka_q_serve: res != RD_KAFKA_OP_RES_PASS) and aborted a worker
 * whose fetch landed during its close.  A record returned here is dropped
 * unstored (enable.auto.offset.store is false): its partition's next owner
 * delivers it, as rd_kafka_consumer_close() itself would drop it. */
static int consumer_close_bounded(ms_consumer *c)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(c->rk, q);
    uint64_t end = uv_hrtime() / 1000000 + MS_KAFKA_CLOSE_TIMEOUT_MS;
    int closed;

    if (e != NULL) {
        ms_warn("event=kafka_consumer_close_failed topic=%s error=\"%s\"", c->topic,
                rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rd_kafka_queue_destroy(q);
        return 1;
    }
    while (!(closed = rd_kafka_consumer_closed(c->rk)) && uv_hrtime() / 1000000 < end) {
        rd_kafka_message_t *m = rd_kafka_consume_queue(q, 100);
        if (m != NULL)
            rd_kafka_message_destroy(m);
    }
    if (!closed) {
        /* The close goes on in librdkafka's threads and may still post
         * to q: left, with the handle, to the process's exit. */
        ms_warn("event=kafka_consumer_close_timeout topic=%s timeout_ms=%d", c->topic,
                MS_KAFKA_CLOSE_TIMEOUT_MS);
        ms_mem_keep(q);
        return 0;
    }
    rd_kafka_queue_destroy(q);
    return 1;
}

void ms_consumer_free(ms_consumer *c)
{
    struct ms_list *first;
    const char *leave = NULL; /* why the handle is left to the process's exit */
    size_t i;

    if (c == NULL)
        return;
    c->revoke_cb = NULL; /* the application is shutting down */
    kloop_stop(c->kl);
    drop_backlog(c, NULL);
    if (!consumer_close_bounded(c))
        leave = "close_timeout";
    while ((first = ms_list_first(&c->out)) != NULL)
        rec_unlink(c, ms_list_entry(first, struct rec_node, out));
    kloop_close(c->kl);
    /* librdkafka before 2.2.1 aborts in rd_kafka_destroy() when the group
     * was joined but no SyncGroup ever completed (a rebalance in progress
     * since this consumer started): the cooperative-sticky assignor's state
     * is still NULL and its destroy asserts it (librdkafka #4312, fixed by
     * #4381).  Such a consumer is closed (group left, offsets committed);
     * only the handle's memory is left to the process's exit, which
     * follows. */
    if (leave == NULL && !c->synced && rd_kafka_version() < MS_RDKAFKA_STICKY_DESTROY_FIXED)
        leave = "never_assigned";
    if (leave != NULL) {
        /* Not freed either: the handle's threads may still call back
         * with it as their opaque. */
        ms_info("event=kafka_destroy_skipped topic=%s reason=%s", c->topic, leave);
        ms_mem_keep(c); /* and c->rk with all it holds */
        return;
    }
    rd_kafka_destroy(c->rk);
    for (i = 0; i < c->nparts; i++)
        free(c->parts[i].offsets);
    free(c->parts);
    free(c->topic);
    free(c);
}

/* ---- administration ---- */

/* retention.ms and segment.ms (ms_kafka.h) as strings of 24 bytes. */
static void retention_strings(int64_t retention_ms, char *ret_s, char *seg_s)
{
    int64_t seg = retention_ms / MS_KAFKA_SEGMENTS_PER_RETENTION;

    snprintf(ret_s, 24, "%lld", (long long)retention_ms);
    snprintf(seg_s, 24, "%lld", (long long)(seg > 0 ? seg : 1));
}

/* One admin request on its own queue: its result event (the caller
 * destroys it), or NULL with err set. */
static rd_kafka_event_t *admin_wait(rd_kafka_t *rk, rd_kafka_queue_t *q, int timeout_ms,
                                    const char *brokers, char *err, size_t errlen)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 5000);

    if (ev == NULL) {
        snprintf(err, errlen, "no answer from %s within %d ms", brokers, timeout_ms);
        return NULL;
    }
    if (rd_kafka_event_error(ev)) {
        snprintf(err, errlen, "%s", rd_kafka_event_error_string(ev));
        rd_kafka_event_destroy(ev);
        return NULL;
    }
    (void)rk;
    return ev;
}

/*
 * Give an existing topic the retention.ms and segment.ms `ret_s`/`seg_s`.
 * librdkafka 2.0.2 has only the non-incremental AlterConfigs, which
 * replaces every dynamic config of the topic: so the topic's own dynamic
 * configs are read first (DescribeConfigs) and sent back with the two
 * changed.  A sensitive one (its value is never returned) cannot be kept:
 * the topic is then left alone, with an error.  XXX: a change made by
 * someone else between the two requests is lost.
 */
static int alter_retention(rd_kafka_t *rk, const struct ms_kafka_conf *kc, const char *topic,
                           const char *ret_s, const char *seg_s, int timeout_ms, char *err,
                           size_t errlen)
{
    rd_kafka_ConfigResource_t *desc = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
    rd_kafka_ConfigResource_t *alt = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    const rd_kafka_ConfigResource_t **res;
    const rd_kafka_ConfigEntry_t **ents;
    rd_kafka_event_t *ev;
    size_t nres, nents, i;
    int ret = 0;

    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, NULL, 0);
    rd_kafka_DescribeConfigs(rk, &desc, 1, opts, q);
    if ((ev = admin_wait(rk, q, timeout_ms, kc->brokers, err, errlen)) == NULL) {
        ret = MS_EUNAVAIL;
        goto out;
    }
    res = rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev),
                                                    &nres);
    if (nres != 1 || rd_kafka_ConfigResource_error(res[0]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s: %s", topic,
                 nres == 1 ? rd_kafka_ConfigResource_error_string(res[0]) : "no description");
        rd_kafka_event_destroy(ev);
        ret = MS_EIO;
        goto out;
    }
    ents = rd_kafka_ConfigResource_configs(res[0], &nents);
    for (i = 0; i < nents && ret == 0; i++) {
        const char *name = rd_kafka_ConfigEntry_name(ents[i]);
        if (rd_kafka_ConfigEntry_source(ents[i]) != RD_KAFKA_CONFIG_SOURCE_DYNAMIC_TOPIC_CONFIG ||
            strcmp(name, "retention.ms") == 0 || strcmp(name, "segment.ms") == 0)
            continue;
        if (rd_kafka_ConfigEntry_is_sensitive(ents[i]) || !rd_kafka_ConfigEntry_value(ents[i])) {
            snprintf(err, errlen, "%s: its config %s is sensitive and would be lost", topic, name);
            ret = MS_EINVAL;
            break;
        }
        rd_kafka_ConfigResource_set_config(alt, name, rd_kafka_ConfigEntry_value(ents[i]));
    }
    rd_kafka_event_destroy(ev);
    if (ret != 0)
        goto out;
    rd_kafka_ConfigResource_set_config(alt, "retention.ms", ret_s);
    rd_kafka_ConfigResource_set_config(alt, "segment.ms", seg_s);
    rd_kafka_AlterConfigs(rk, &alt, 1, opts, q);
    if ((ev = admin_wait(rk, q, timeout_ms, kc->brokers, err, errlen)) == NULL) {
        ret = MS_EUNAVAIL;
        goto out;
    }
    res = rd_kafka_AlterConfigs_result_resources(rd_kafka_event_AlterConfigs_result(ev), &nres);
    if (nres != 1 || rd_kafka_ConfigResource_error(res[0]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s: %s", topic,
                 nres == 1 ? rd_kafka_ConfigResource_error_string(res[0]) : "no answer");
        ret = MS_EIO;
    }
    rd_kafka_event_destroy(ev);
out:
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_ConfigResource_destroy(desc);
    rd_kafka_ConfigResource_destroy(alt);
    return ret;
}

int ms_kafka_create_topics(const struct ms_kafka_conf *kc, const struct ms_topic_spec *topics,
                           size_t ntopics, const char *const *configs, size_t nconfigs,
                           int timeout_ms, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = base_conf(kc);
    rd_kafka_NewTopic_t **nt = ms_calloc(ntopics, sizeof(*nt));
    rd_kafka_AdminOptions_t *opts = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;
    const rd_kafka_CreateTopics_result_t *res;
    const rd_kafka_topic_result_t **tr;
    char num[32], key[128], ret_s[24], seg_s[24];
    const char *eq;
    rd_kafka_t *rk;
    size_t i, j, n;
    int ret = 0;

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        free(nt);
        return MS_ECONFIG;
    }
    snprintf(num, sizeof(num), "%d", MS_KAFKA_RECORD_MAX);
    for (i = 0; i < ntopics; i++) {
        nt[i] = rd_kafka_NewTopic_new(topics[i].name, topics[i].partitions,
                                      topics[i].replication > 0 ? topics[i].replication : -1,
                                      err, errlen);
        if (nt[i] == NULL) {
            ret = MS_EINVAL;
            goto out;
        }
        rd_kafka_NewTopic_set_config(nt[i], "max.message.bytes", num);
        if (topics[i].retention_ms > 0) {
            retention_strings(topics[i].retention_ms, ret_s, seg_s);
            rd_kafka_NewTopic_set_config(nt[i], "retention.ms", ret_s);
            rd_kafka_NewTopic_set_config(nt[i], "segment.ms", seg_s);
        }
        for (j = 0; j < nconfigs; j++) {
            if ((eq = strchr(configs[j], '=')) == NULL ||
                (size_t)(eq - configs[j]) >= sizeof(key)) {
                snprintf(err, errlen, "topic config \"%s\" is not key=value", configs[j]);
                ret = MS_EINVAL;
                goto out;
            }
            memcpy(key, configs[j], (size_t)(eq - configs[j]));
            key[eq - configs[j]] = '\0';
            if (topics[i].retention_ms > 0 &&
                (strcmp(key, "retention.ms") == 0 || strcmp(key, "segment.ms") == 0))
                continue;
            rd_kafka_NewTopic_set_config(nt[i], key, eq + 1);
        }
    }
    opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, NULL, 0);
    rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, NULL, 0);
    q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, nt, ntopics, opts, q);
    ev = rd_kafka_queue_poll(q, timeout_ms + 5000);
    if (ev == NULL) {
        snprintf(err, errlen, "no answer from %s within %d ms", kc->brokers, timeout_ms);
        ret = MS_ETIMEOUT;
        goto out;
    }
    if (rd_kafka_event_error(ev)) {
        snprintf(err, errlen, "%s", rd_kafka_event_error_string(ev));
        ret = MS_EUNAVAIL;
        goto out;
    }
    res = rd_kafka_event_CreateTopics_result(ev);
    tr = rd_kafka_CreateTopics_result_topics(res, &n);
    for (i = 0; i < n; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            snprintf(err, errlen, "%s: %s", rd_kafka_topic_result_name(tr[i]),
                     rd_kafka_topic_result_error_string(tr[i]));
            ret = MS_EIO;
        }
    }
    /* An existing topic keeps its partitions and replicas but gets the
     * retention asked for: the retention follows the settings it derives
     * from (docs/reliability.md), also on an upgrade. */
    for (i = 0; i < n && ret == 0; i++) {
        const char *name = rd_kafka_topic_result_name(tr[i]);
        if (rd_kafka_topic_result_error(tr[i]) != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            continue;
        for (j = 0; j < ntopics && strcmp(topics[j].name, name) != 0; j++)
            ;
        if (j == ntopics || topics[j].retention_ms <= 0)
            continue;
        retention_strings(topics[j].retention_ms, ret_s, seg_s);
        ret = alter_retention(rk, kc, name, ret_s, seg_s, timeout_ms, err, errlen);
    }
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    if (q)
        rd_kafka_queue_destroy(q);
    if (opts)
        rd_kafka_AdminOptions_destroy(opts);
    for (i = 0; i < ntopics; i++)
        if (nt[i])
            rd_kafka_NewTopic_destroy(nt[i]);
    free(nt);
    rd_kafka_destroy(rk);
    return ret;
}

/* ---- the blocking topic reader (ms_kafka.h) ---- */

struct ms_kafka_tail {
    rd_kafka_t *rk;
    rd_kafka_message_t *last; /* the record handed out, freed on the next call */
    int follow;
    int npart;
    int neof;        /* partitions read to their end */
    uint8_t *at_eof; /* [partition id]: reached its end once */
    char *topic;
};

/* A consumer handle for tools: a group id is required by the consumer API,
 * but assign() (never subscribe) keeps us out of its membership, and
 * nothing is committed. */
static rd_kafka_t *tool_consumer(const struct ms_kafka_conf *kc, const char *group, char *err,
                                 size_t errlen)
{
    rd_kafka_conf_t *conf = base_conf(kc);
    rd_kafka_t *rk;

    set_conf(conf, "group.id", group);
    set_conf(conf, "enable.auto.commit", "false");
    set_conf(conf, "enable.auto.offset.store", "false");
    set_conf(conf, "enable.partition.eof", "true");
    if ((rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen)) == NULL)
        rd_kafka_conf_destroy(conf);
    return rk;
}

ms_kafka_tail *ms_kafka_tail_new(const struct ms_kafka_conf *kc, const char *topic,
                                 int from_end, int follow, int timeout_ms, char *err,
                                 size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts;
    rd_kafka_topic_t *rkt;
    rd_kafka_resp_err_t e;
    ms_kafka_tail *t;
    rd_kafka_t *rk;
    int i;

    if ((rk = tool_consumer(kc, "mailstream-ctl-tail", err, errlen)) == NULL)
        return NULL;
    rkt = rd_kafka_topic_new(rk, topic, NULL);
    e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
    rd_kafka_topic_destroy(rkt);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err ||
        md->topics[0].partition_cnt == 0) {
        snprintf(err, errlen, "topic %s: %s", topic,
                 e ? rd_kafka_err2str(e)
                   : md->topic_cnt == 1 && md->topics[0].err ? rd_kafka_err2str(md->topics[0].err)
                                                             : "no partitions");
        if (md)
            rd_kafka_metadata_destroy(md);
        rd_kafka_destroy(rk);
        return NULL;
    }
    t = ms_calloc(1, sizeof(*t));
    t->rk = rk;
    t->follow = follow;
    t->npart = md->topics[0].partition_cnt;
    t->topic = ms_strdup(topic);
    t->at_eof = ms_calloc((size_t)t->npart, 1);
    parts = rd_kafka_topic_partition_list_new(t->npart);
    for (i = 0; i < t->npart; i++)
        rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[i].id)->offset =
            from_end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_metadata_destroy(md);
    rd_kafka_poll_set_consumer(rk);
    e = rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "assign %s: %s", topic, rd_kafka_err2str(e));
        ms_kafka_tail_free(t);
        return NULL;
    }
    return t;
}

int ms_kafka_tail_next(ms_kafka_tail *t, int timeout_ms, struct ms_record *rec, char *err,
                       size_t errlen)
{
    rd_kafka_message_t *m;

    if (t->last) {
        rd_kafka_message_destroy(t->last);
        t->last = NULL;
    }
    for (;;) {
        if (!t->follow && t->neof >= t->npart)
            return 0;
        if ((m = rd_kafka_consumer_poll(t->rk, timeout_ms)) == NULL)
            return MS_ETIMEOUT;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* A partition reports its end again after new records. */
            if (m->partition >= 0 && m->partition < t->npart && !t->at_eof[m->partition]) {
                t->at_eof[m->partition] = 1;
                t->neof++;
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err) {
            snprintf(err, errlen, "%s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            return MS_EIO;
        }
        memset(rec, 0, sizeof(*rec));
        rec->topic = t->topic;
        rec->partition = m->partition;
        rec->offset = m->offset;
        rec->key = m->key;
        rec->keylen = m->key_len;
        rec->value = m->payload;
        rec->len = m->len;
        t->last = m;
        return 1;
    }
}

void ms_kafka_tail_free(ms_kafka_tail *t)
{
    if (t == NULL)
        return;
    if (t->last)
        rd_kafka_message_destroy(t->last);
    rd_kafka_consumer_close(t->rk);
    rd_kafka_destroy(t->rk);
    free(t->at_eof);
    free(t->topic);
    free(t);
}

/* ---- reading one record; a group's state (tools) ---- */

int ms_kafka_read_at(const struct ms_kafka_conf *kc, const char *topic, int32_t partition,
                     int64_t offset, int timeout_ms, void **value, size_t *len, char *err,
                     size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts;
    rd_kafka_message_t *m;
    rd_kafka_resp_err_t e;
    int64_t lo = 0, hi = 0;
    rd_kafka_t *rk;
    int r = MS_ETIMEOUT;

    if ((rk = tool_consumer(kc, "mailstream-ctl-show", err, errlen)) == NULL)
        return MS_EIO;
    e = rd_kafka_query_watermark_offsets(rk, topic, partition, &lo, &hi, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s/%d: %s", topic, (int)partition, rd_kafka_err2str(e));
        rd_kafka_destroy(rk);
        return e == RD_KAFKA_RESP_ERR__TIMED_OUT ? MS_ETIMEOUT : MS_EIO;
    }
    if (offset < lo || offset >= hi) {
        snprintf(err, errlen, "%s/%d@%lld: no such record (the partition holds %lld..%lld)",
                 topic, (int)partition, (long long)offset, (long long)lo, (long long)hi - 1);
        rd_kafka_destroy(rk);
        return MS_ENOTFOUND;
    }
    parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, partition)->offset = offset;
    rd_kafka_poll_set_consumer(rk);
    e = rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "assign %s/%d: %s", topic, (int)partition, rd_kafka_err2str(e));
        rd_kafka_destroy(rk);
        return MS_EIO;
    }
    while ((m = rd_kafka_consumer_poll(rk, timeout_ms)) != NULL) {
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            snprintf(err, errlen, "%s/%d@%lld: no such record", topic, (int)partition,
                     (long long)offset);
            r = MS_ENOTFOUND;
        } else if (m->err) {
            snprintf(err, errlen, "%s", rd_kafka_message_errstr(m));
            r = MS_EIO;
        } else if (m->offset < offset) {
            rd_kafka_message_destroy(m);
            continue;
        } else if (m->offset > offset) {
            /* Compacted away, or a transaction marker stood there. */
            snprintf(err, errlen, "%s/%d@%lld: no such record", topic, (int)partition,
                     (long long)offset);
            r = MS_ENOTFOUND;
        } else {
            *value = ms_malloc(m->len ? m->len : 1);
            memcpy(*value, m->payload, m->len);
            *len = m->len;
            r = 0;
        }
        rd_kafka_message_destroy(m);
        break;
    }
    if (r == MS_ETIMEOUT)
        snprintf(err, errlen, "%s/%d@%lld: nothing read in %d ms", topic, (int)partition,
                 (long long)offset, timeout_ms);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return r;
}

int ms_kafka_group_status(const struct ms_kafka_conf *kc, const char *group,
                          struct ms_kafka_topic_lag *lags, size_t ntopics,
                          struct ms_kafka_member *members, size_t maxmembers, size_t *nmembers,
                          int timeout_ms, char *err, size_t errlen)
{
    const struct rd_kafka_group_list *gl = NULL;
    rd_kafka_resp_err_t e;
    rd_kafka_t *rk;
    size_t i;
    int g, k;

    *nmembers = 0;
    if ((rk = tool_consumer(kc, group, err, errlen)) == NULL)
        return MS_EIO;
    e = rd_kafka_list_groups(rk, group, &gl, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "consumer group %s: %s", group, rd_kafka_err2str(e));
        rd_kafka_destroy(rk);
        return MS_EIO;
    }
    for (g = 0; g < gl->group_cnt; g++) {
        if (strcmp(gl->groups[g].group, group) != 0)
            continue;
        for (k = 0; k < gl->groups[g].member_cnt && *nmembers < maxmembers; k++) {
            struct ms_kafka_member *mb = &members[(*nmembers)++];
            snprintf(mb->client_id, sizeof(mb->client_id), "%s",
                     gl->groups[g].members[k].client_id);
            snprintf(mb->host, sizeof(mb->host), "%s", gl->groups[g].members[k].client_host);
        }
    }
    rd_kafka_group_list_destroy(gl);
    for (i = 0; i < ntopics; i++) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_topic_partition_list_t *parts;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, lags[i].topic, NULL);

        lags[i].partitions = 0;
        lags[i].end = lags[i].lag = 0;
        e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
        rd_kafka_topic_destroy(rkt);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(err, errlen, "topic %s: %s", lags[i].topic, rd_kafka_err2str(e));
            rd_kafka_destroy(rk);
            return MS_EIO;
        }
        if (md->topic_cnt != 1 || md->topics[0].err) {
            rd_kafka_metadata_destroy(md);
            continue; /* no such topic */
        }
        lags[i].partitions = md->topics[0].partition_cnt;
        parts = rd_kafka_topic_partition_list_new(lags[i].partitions);
        for (k = 0; k < lags[i].partitions; k++)
            rd_kafka_topic_partition_list_add(parts, lags[i].topic,
                                              md->topics[0].partitions[k].id);
        rd_kafka_metadata_destroy(md);
        e = rd_kafka_committed(rk, parts, timeout_ms);
        for (k = 0; e == RD_KAFKA_RESP_ERR_NO_ERROR && k < parts->cnt; k++) {
            int64_t lo = 0, hi = 0, at = parts->elems[k].offset;
            e = rd_kafka_query_watermark_offsets(rk, lags[i].topic, parts->elems[k].partition,
                                                 &lo, &hi, timeout_ms);
            lags[i].end += hi;
            lags[i].lag += hi - (at >= 0 ? at : lo);
        }
        rd_kafka_topic_partition_list_destroy(parts);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(err, errlen, "topic %s: %s", lags[i].topic, rd_kafka_err2str(e));
            rd_kafka_destroy(rk);
            return MS_EIO;
        }
    }
    rd_kafka_destroy(rk);
    return 0;
}
