/*
 * fe_commit.h - group commit: a loop's Kafka records go out together when
 * every session that is about to hand one over has done so.
 *
 * A client's 250 after DATA waits for Kafka's acknowledgement, so a record
 * should leave at once; but each produce request costs the broker far more
 * than a record in it, so records should leave together.  librdkafka's
 * linger.ms trades one for the other with a fixed delay counted from the
 * first record.  The frontend knows more: which sessions are in the middle of
 * a transaction, or were just answered and are likely to start the next one.
 * It holds the records and lets them go as soon as none of those sessions is
 * left (the batch cannot grow soon), or when the oldest has waited [kafka]
 * linger_ms, or when the batch is full - the idea of PostgreSQL's
 * commit_delay/commit_siblings, driven by the sessions' state.
 *
 * One batch per loop is in flight at a time: while the previous one waits
 * for its acknowledgements, records gather (except past FE_COMMIT_HOLD_MAX_MS
 * or a full batch).  Under load this makes each batch what arrived during one
 * round trip; sent at once, batches were small and the broker's CPU per
 * message grew by a third (docs/scaling.md, "group commit", has the
 * measurements).  It also keeps a batch from queueing behind
 * its predecessor inside librdkafka (ms_kafka.c, sticky partitioning).
 *
 * A session counts as "about to hand over" (a member) from its last sign of
 * life until `window_ns` later: a command or data of an open transaction, or
 * the 250 that ended one.  A client that goes quiet stops holding the others
 * back once its window has passed.
 *
 * Pure bookkeeping: no I/O, no clock (callers pass `now`, in ns), one loop
 * thread.  fe_server.c owns the timer and the producer.
 */
#ifndef FE_COMMIT_H
#define FE_COMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "ms_list.h"
#include "ms_queueid.h"

#define FE_COMMIT_MAX_RECORDS 256                /* held at once, per loop */
#define FE_COMMIT_MAX_BYTES (8u * 1024 * 1024)   /* held at once: then they go */
#define FE_COMMIT_KEY_MAX MS_QUEUEID_LEN         /* keys are queue ids */
#define FE_COMMIT_WINDOW_US_DEF 600              /* [kafka] group_commit_window_us */
#define FE_COMMIT_HOLD_MAX_MS 100                /* held this long, a record goes whatever
                                                  * is in flight */

/* Why held records went (mailstream_smtp_group_commits_total). */
enum fe_commit_reason {
    FE_COMMIT_READY,  /* no session left that was about to add one */
    FE_COMMIT_LINGER, /* the oldest waited [kafka] linger_ms */
    FE_COMMIT_FULL,   /* FE_COMMIT_MAX_RECORDS or FE_COMMIT_MAX_BYTES */
    FE_COMMIT_FLUSH,  /* the loop is finishing */
    FE_COMMIT_REASONS
};

/* Embedded in a session; zeroed, it is not a member. */
struct fe_commit_member {
    struct ms_list node; /* on fe_commit.members while a member */
    uint64_t last_ns;
};

struct fe_commit_record {
    uint64_t id;
    char key[FE_COMMIT_KEY_MAX + 1];
    size_t keylen;
    uint8_t *buf; /* owned while held */
    size_t off;   /* the record is buf[off..off + len) */
    size_t len;
};

struct fe_commit {
    uint64_t window_ns, linger_ns;
    struct ms_list members; /* of fe_commit_member, oldest sign of life first */
    size_t nmembers;
    struct fe_commit_record rec[FE_COMMIT_MAX_RECORDS];
    size_t nrec, bytes;
    uint64_t first_ns; /* when the oldest held record came */
    size_t inflight;   /* records sent, not yet reported */
};

void fe_commit_init(struct fe_commit *c, uint64_t window_ns, uint64_t linger_ns);

/* A sign of life from a session that is about to hand over a record. */
void fe_commit_touch(struct fe_commit *c, struct fe_commit_member *m, uint64_t now);
/* It handed its record over, or left.  Harmless when not a member. */
void fe_commit_leave(struct fe_commit *c, struct fe_commit_member *m);
/* 1 while `m` is a member (touched, not yet left nor forgotten). */
int fe_commit_is_member(const struct fe_commit_member *m);

/* Can a record of keylen octets be held?  No once the batch is full: then
 * send it directly. */
int fe_commit_can_hold(const struct fe_commit *c, size_t keylen);
/* Hold the record buf[off..off + len); takes `buf`.  Needs
 * fe_commit_can_hold(). */
void fe_commit_hold(struct fe_commit *c, uint64_t id, const char *key, size_t keylen,
                    uint8_t *buf, size_t off, size_t len, uint64_t now);
/* FE_COMMIT_MAX_RECORDS or FE_COMMIT_MAX_BYTES reached. */
int fe_commit_full(const struct fe_commit *c);

/* n records went to the producer; one report came back. */
void fe_commit_sent(struct fe_commit *c, size_t n);
void fe_commit_reported(struct fe_commit *c);

/* Should the held records go now, and why: FE_COMMIT_FULL; FE_COMMIT_LINGER
 * past FE_COMMIT_HOLD_MAX_MS; otherwise only with nothing in flight:
 * FE_COMMIT_READY when no member has shown life within the window,
 * FE_COMMIT_LINGER when the oldest has waited linger.  -1: not now.  Forgets
 * members whose window has passed. */
int fe_commit_due(struct fe_commit *c, uint64_t now);
/* When waiting alone may make the held records due (for a timer); 0 when
 * nothing is held. */
uint64_t fe_commit_deadline(const struct fe_commit *c, uint64_t now);

/* Move the held records (and their buffers) into out[], which has room for
 * FE_COMMIT_MAX_RECORDS; returns how many.  Nothing is held afterwards. */
size_t fe_commit_take(struct fe_commit *c, struct fe_commit_record *out);

#endif
