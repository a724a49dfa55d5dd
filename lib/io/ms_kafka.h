/*
 * ms_kafka.h - Kafka glue: an idempotent producer and a consumer-group
 * member, both driven by a libuv loop.  This module is the only one that
 * includes librdkafka; everyone else sees these types.
 *
 * Threads: create, use and free each object on one loop thread.  librdkafka's
 * own threads signal the loop through a pipe (queue io-event), so every
 * callback below runs on that loop thread.
 *
 * Record sizes: MS_KAFKA_RECORD_MAX is the producer's message.max.bytes and
 * the consumer's fetch limits; topics and the broker are created with the
 * same value (docs/config.md).
 */
#ifndef MS_KAFKA_H
#define MS_KAFKA_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ms_kstats.h"

#define MS_KAFKA_RECORD_MAX (32 * 1024 * 1024)
/* Kafka's own limit on a topic name. */
#define MS_KAFKA_TOPIC_MAX 249

struct ms_kafka_conf {
    const char *brokers;       /* bootstrap.servers */
    const char *client_id;     /* node id */
    int produce_timeout_ms;    /* message.timeout.ms; 0: 10000 */
    int linger_ms;             /* linger.ms; 0: 1 */
    int caller_batches;        /* producer: the caller holds records and sends them
                                * in batches (the frontend's group commit), each
                                * opened by ms_producer_batch_begin: one partition
                                * per batch, linger.ms batch_linger_ms */
    int batch_linger_ms;       /* with caller_batches: linger.ms, 0 sends at once.
                                * librdkafka's broker thread may then start on a
                                * batch before it is all queued and send it as two
                                * requests (two appends; two fsyncs with
                                * flush.messages=1); 1 waits for all of it.
                                * librdkafka waits in whole milliseconds. */
    const char *compression;   /* producer compression.type (none, lz4, zstd, gzip,
                                * snappy); NULL or "": librdkafka's default, none */
    int fetch_min_bytes;       /* consumer fetch.min.bytes; 0: 1 */
    int fetch_wait_ms;         /* consumer fetch.wait.max.ms; 0: librdkafka's 500 */
    const char *keyed_topic;   /* producer: records to this topic are partitioned by
                                * a hash of their key (one key's records stay in
                                * order); every other topic is partitioned sticky
                                * (ms_kafka.c).  NULL: none */
    /* Security (ms_connect.h reads them; docs/security.md).  NULL or "":
     * librdkafka's default.  The two passwords are secrets: never logged. */
    const char *security_protocol; /* plaintext, ssl, sasl_plaintext, sasl_ssl */
    const char *sasl_mechanism;    /* PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 */
    const char *sasl_username;
    const char *sasl_password;
    const char *ssl_ca_file;       /* PEM; NULL: the system's CA store */
    const char *ssl_cert_file;     /* client certificate (mutual TLS) */
    const char *ssl_key_file;
    const char *ssl_key_password;
    /* Consumer: called every MS_KAFKA_STATS_INTERVAL_MS on the loop thread
     * with the lag of each partition of the consumer's topic assigned to
     * it (ms_kstats.h).  NULL: no statistics. */
    ms_lag_cb lag_cb;
    void *lag_arg;
    /* Consumer: octets it may hold ahead of the application, half in
     * librdkafka's prefetch queue (queued.max.messages.kbytes, which one
     * fetch may overshoot) and half in the backlog (ms_kafka.c).  A record larger than
     * that is still fetched alone.  0: 64 MiB each (MS_KAFKA_AHEAD_DEFAULT).
     * A full backlog pauses fetching; below a quarter it resumes (a pause
     * makes librdkafka drop and later fetch again what it had fetched
     * ahead), and the resume seeks each partition to its next record so
     * that librdkafka (< 2.3) fetches at once instead of after up to a
     * second.  One fetch brings at most 4 MiB (a larger record alone). */
    size_t consumer_bytes;
};

/* Authentication and TLS failures (a wrong password, an unknown CA) are
 * not fatal: the client keeps retrying with librdkafka's reconnect backoff
 * (up to 10 s), logs `event=kafka_auth_failed` (or `kafka_tls_failed`) with
 * the broker, the protocol and the mechanism at every failure, and the
 * readiness check (ms_producer_ready, ms_consumer_ready) says why it fails.
 * Kubernetes then sees a pod that is up, not ready, and says why in its
 * log; fixing the Secret and restarting is enough. */

/* ---- producer ---- */

typedef struct ms_producer ms_producer;

/* Called once per produced record, on the loop thread, with the id given to
 * ms_producer_send.  err is 0 when the broker acknowledged the record with
 * acks=all, else a negative MS_E* code and a librdkafka message. */
typedef void (*ms_produce_cb)(void *arg, uint64_t id, int err, const char *errstr);

ms_producer *ms_producer_new(uv_loop_t *loop, const struct ms_kafka_conf *conf,
                             ms_produce_cb cb, void *arg, char *err, size_t errlen);
/* Queue one record (the payload is copied).  Returns 0, or MS_EAGAIN when the
 * local queue is full (back off), MS_ETOOBIG over MS_KAFKA_RECORD_MAX, or
 * MS_EIO; on error the callback is not called. */
int ms_producer_send(ms_producer *p, const char *topic, const void *key, size_t keylen,
                     const void *value, size_t len, uint64_t id);
/* The same, but `value` is neither copied nor freed: it must stay valid and
 * unchanged until the callback for `id` has run (every record queued gets
 * exactly one, ms_producer_free() included), or until an error return. */
int ms_producer_send_ref(ms_producer *p, const char *topic, const void *key, size_t keylen,
                         const void *value, size_t len, uint64_t id);
/* A caller that batches (ms_kafka_conf.caller_batches) calls this before
 * the records of each batch: they all go to one partition, so the batch is
 * one produce request and one append on the broker (ms_kafka.c,
 * sticky_partitioner).  Loop thread. */
void ms_producer_batch_begin(ms_producer *p);
/* Records queued or in flight, not yet reported. */
int ms_producer_outstanding(ms_producer *p);
/* Last known broker reachability (refreshed in the background every few
 * seconds by a metadata request on the thread pool): 1 reachable. */
int ms_producer_ready(ms_producer *p, char *why, size_t whylen);
/* Wait up to timeout_ms for outstanding records (blocks the loop: call only
 * when shutting down), then free.  Reports still due are delivered as errors
 * through the callback before this returns. */
void ms_producer_free(ms_producer *p, int timeout_ms);

/* ---- consumer ---- */

typedef struct ms_consumer ms_consumer;

/* A record handed to the application.  It stays valid until
 * ms_consumer_done(); the application must call that exactly once, after the
 * record's outcome is durable.  Offsets are stored (for the next commit) only
 * up to the lowest record of each partition not yet done, so records may
 * finish in any order. */
struct ms_record {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const void *key;
    size_t keylen;
    const void *value;
    size_t len;
    void *_msg;          /* private */
    uint64_t _gen;       /* private: assignment generation */
};

typedef void (*ms_consume_cb)(void *arg, struct ms_record *rec);

/* Join `group` and consume `topic`.  enable.auto.offset.store=false,
 * enable.auto.commit=true (commits what was stored). */
ms_consumer *ms_consumer_new(uv_loop_t *loop, const struct ms_kafka_conf *conf,
                             const char *group, const char *topic, ms_consume_cb cb, void *arg,
                             char *err, size_t errlen);
/* Partitions taken away in a rebalance: called on the loop thread from
 * inside librdkafka's rebalance callback, before the partitions are given
 * up, with their numbers.  The application stops the work of those
 * partitions there (duplicate fencing: docs/reliability.md); records it
 * still finishes afterwards are freed by ms_consumer_done without storing
 * an offset.  Offsets already stored are committed right after the call.
 * Never called from ms_consumer_free.  cb NULL: none. */
typedef void (*ms_revoke_cb)(void *arg, ms_consumer *c, const int32_t *partitions, size_t n);
void ms_consumer_on_revoke(ms_consumer *c, ms_revoke_cb cb, void *arg);
/* Stop / resume handing out records (the application's in-flight bound). */
void ms_consumer_pause(ms_consumer *c);
void ms_consumer_resume(ms_consumer *c);
/* The record's outcome is durable: release it and store its offset when
 * allowed.  A record whose partition was revoked meanwhile is just freed (the
 * new owner redelivers it). */
void ms_consumer_done(ms_consumer *c, struct ms_record *rec);
int ms_consumer_ready(ms_consumer *c, char *why, size_t whylen);
/* Records handed out and not yet done. */
int ms_consumer_in_flight(ms_consumer *c);
/* Commit stored offsets, leave the group, free.  Records not yet done are
 * freed without storing their offsets.  Blocks, for at most
 * MS_KAFKA_CLOSE_TIMEOUT_MS in leaving the group: shutdown only.  A consumer
 * that could not leave in that time, or (librdkafka older than 2.2.1) never
 * had an assignment, is left with its librdkafka handle to the process's
 * exit (ms_kafka.c: its destroy would block or abort). */
void ms_consumer_free(ms_consumer *c);

/* ---- administration ---- */

struct ms_topic_spec {
    const char *name;
    int partitions;
    int replication;      /* 0: the broker's default */
    int64_t retention_ms; /* 0: the broker's log.retention.* */
};

/* A topic with its own retention also rolls its segments at this fraction
 * of it (segment.ms = retention.ms / MS_KAFKA_SEGMENTS_PER_RETENTION):
 * Kafka deletes only whole closed segments, so a quiet topic with the
 * default segment.ms (7 days) would keep records up to 7 days past their
 * retention.  With 4, nothing outlives 1.25 times the retention. */
#define MS_KAFKA_SEGMENTS_PER_RETENTION 4

/* Create the topics that do not exist yet, each with max.message.bytes =
 * MS_KAFKA_RECORD_MAX, its retention.ms and segment.ms when it has a
 * retention_ms, and the extra topic configs given as "key=value" strings
 * (a topic's own retention wins over a retention.ms or segment.ms among
 * them).  A topic that exists keeps its partitions, replicas and configs,
 * except that one with a retention_ms gets that retention.ms and segment.ms
 * (its other dynamic configs are kept; one of them sensitive: MS_EINVAL,
 * nothing changed).  Synchronous: for tools and start-up, never on a loop
 * that serves clients.  Returns 0 or MS_E* with err set. */
int ms_kafka_create_topics(const struct ms_kafka_conf *conf, const struct ms_topic_spec *topics,
                           size_t ntopics, const char *const *configs, size_t nconfigs,
                           int timeout_ms, char *err, size_t errlen);

/* ---- a blocking reader of one topic, for tools (mailstream-ctl events) ----
 *
 * Reads every partition of `topic` from the beginning (from_end: only what
 * arrives from now on), outside any consumer group: nothing is committed
 * and no worker's assignment changes.  ms_kafka_tail_next() returns 1 with
 * the record (valid until the next call), 0 once every partition is read
 * to its end as of the call that reached it (never with `follow`),
 * MS_ETIMEOUT when nothing came within timeout_ms, or MS_EIO / MS_ENOTFOUND
 * (no such topic) with the reason in err.  One thread. */
typedef struct ms_kafka_tail ms_kafka_tail;
ms_kafka_tail *ms_kafka_tail_new(const struct ms_kafka_conf *conf, const char *topic,
                                 int from_end, int follow, int timeout_ms, char *err,
                                 size_t errlen);
int ms_kafka_tail_next(ms_kafka_tail *t, int timeout_ms, struct ms_record *rec, char *err,
                       size_t errlen);
void ms_kafka_tail_free(ms_kafka_tail *t);

/* Read the one record at topic/partition/offset (a deferred message's
 * record, for `mailstream-ctl queue show --message`), outside any consumer
 * group: 0 with a malloc'd copy of its value in *value (*len octets),
 * MS_ENOTFOUND when there is no such record any more (past retention, or
 * beyond the end), MS_ETIMEOUT, or MS_EIO with the reason in err. */
int ms_kafka_read_at(const struct ms_kafka_conf *conf, const char *topic, int32_t partition,
                     int64_t offset, int timeout_ms, void **value, size_t *len, char *err,
                     size_t errlen);

/* ---- a consumer group at a glance, for tools (mailstream-ctl status) ---- */

#define MS_KAFKA_MEMBER_NAME_MAX 255

struct ms_kafka_member {
    char client_id[MS_KAFKA_MEMBER_NAME_MAX + 1]; /* the worker's [node] id */
    char host[MS_KAFKA_MEMBER_NAME_MAX + 1];      /* "/10.0.0.7" as Kafka says */
};

struct ms_kafka_topic_lag {
    const char *topic;  /* given by the caller */
    int partitions;     /* 0: no such topic */
    int64_t end;        /* records ever written (high watermarks, summed) */
    int64_t lag;        /* records the group has not committed yet, summed */
};

/* The group's members (rd_kafka_list_groups: whatever broker coordinates
 * it) and, for each topic of lags[0..ntopics), the sum over its partitions
 * of high watermark minus the group's committed offset (a partition with
 * nothing committed counts from its low watermark).  Outside the group:
 * nothing joins, nothing is committed.  At most maxmembers are kept, the
 * count in *nmembers.  0 or MS_EIO with the reason in err. */
int ms_kafka_group_status(const struct ms_kafka_conf *conf, const char *group,
                          struct ms_kafka_topic_lag *lags, size_t ntopics,
                          struct ms_kafka_member *members, size_t maxmembers, size_t *nmembers,
                          int timeout_ms, char *err, size_t errlen);

#endif
