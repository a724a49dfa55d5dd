/*
 * outcome.h - one recipient's outcome of one delivery attempt, and
 * everything that follows from it at once: the recipient's last result
 * (struct wk_rcpt, read later by the DSN and retry builders, requeue.h),
 * the log line (event=delivery), the metrics, the record on the `events`
 * topic (event.h), and in Redis the suppression entry for a hard bounce of
 * a category the bounce rules name (classify.h: by default bad_mailbox
 * and bad_domain; ms:suppress:<rcpt>, [suppression] ttl_s) and the bounce
 * counter of the sender domain (ms:bounces:<domain>).  The reply's bounce
 * category (classify.h) goes into the recipient, the log line and the
 * event.
 *
 * The verdict (delivered, deferred, bounced) comes from wk_verdict()
 * (event.h) unless the caller forces one (an expired message bounces).
 *
 * Ownership: the module owns its metrics; the producer and the Redis client
 * belong to the caller and must outlive it.  Event acknowledgements come
 * back to the producer's callback with the id the caller chose; the module
 * only counts them into the caller's *events_pending.  Errors: a record or
 * command that cannot be sent is logged and counted, never returned.
 *
 * One loop thread: the one that runs the producer and the Redis client.
 */
#ifndef WK_OUTCOME_H
#define WK_OUTCOME_H

#include <stddef.h>
#include <netinet/in.h>
#include <stdint.h>

#include "classify.h"
#include "event.h"
#include "ms_dns.h"
#include "ms_dsn.h"
#include "ms_kafka.h"
#include "ms_redis.h"
#include "smtp_client.h"

/* "host[address]:port" */
#define WK_RELAY_MAX (MS_DNS_NAME_MAX + INET6_ADDRSTRLEN + 16)
/* Largest event record: the reply text dominates. */
#define WK_EVENT_MAX (8 * 1024)
/* Bounce counters per sender domain live this long after the last bounce. */
#define WK_BOUNCE_COUNTER_TTL "2592000"

/* REQUEUED: pending, and the retry record carrying it is acknowledged. */
enum wk_rcpt_state { WK_RCPT_PENDING, WK_RCPT_DELIVERED, WK_RCPT_BOUNCED, WK_RCPT_REQUEUED };

/* One recipient of a message being delivered, and its last result. */
struct wk_rcpt {
    const char *addr; /* points into the envelope */
    enum wk_rcpt_state state;
    int suppressed;                /* found on the suppression list */
    int in_dsn;                    /* bounced here, or delivered with NOTIFY=SUCCESS
                                    * (dsn_action): goes into this record's DSN */
    enum ms_dsn_action dsn_action; /* with in_dsn: failed, delivered or relayed */
    int dsn_done;                  /* the DSN with it was acknowledged */
    int warn_in_dsn;               /* a delay warning for it is in the DSN on its way */
    int64_t delay_warned_us;       /* when its delay warning went out; 0: not yet */
    int tried;                     /* has a last result */
    enum wk_category category;     /* of its last result (classify.h) */
    uint64_t retry_min_ms, retry_max_ms; /* its destination group's retry schedule
                                          * (shaper.h); 0: [delivery]'s */
    int code;
    char dsn[MS_REPLY_DSN_MAX + 1];
    char reply[WK_SMTP_REPLY_TEXT_MAX];
    char remote[MS_DNS_NAME_MAX + 1]; /* the MX host that answered, or "" */
    char relay[WK_RELAY_MAX];
    int64_t at_us;
};

/* The message the outcome belongs to. */
struct wk_outcome_msg {
    const char *qid;
    const char *mail_from;  /* NULL or "": the null sender (no bounce counter) */
    int64_t received_at_us; /* for the delay; 0: unknown */
    unsigned attempt;
    const char *tls;     /* the session's TLS, or NULL/"" */
    const char *tls_policy; /* the TLS policy level that applied, or NULL */
    int tls_auth;        /* the peer authenticated: 0 no, 1 chain and name, 2 DANE */
    const char *group;   /* the destination group's metric label (shaper.h); NULL: none */
    uint64_t event_id;   /* producer id of the event record */
    int *events_pending; /* incremented when the event is on its way */
};

struct wk_outcome_conf {
    const char *node_id;
    const char *events_topic;
    int64_t suppress_ttl_s; /* 0: no suppression list */
    struct wk_shaper *shaper; /* the bounce classifier and the per-group metrics
                               * (shaper.h); NULL: the RFC 3463 fallback */
};

typedef struct wk_outcomes wk_outcomes;

/* The strings in conf must outlive the module. */
wk_outcomes *wk_outcomes_new(const struct wk_outcome_conf *conf);
/* The peers, once they exist (either may be NULL: nothing sent there). */
void wk_outcomes_attach(wk_outcomes *o, ms_producer *p, ms_redis *r);
void wk_outcomes_free(wk_outcomes *o);

/* Record the outcome of one attempt for rc (the reply code, enhanced status
 * code, reply text, relay and the MX host that answered, NULL: none): its
 * last result and state (delivered, bounced with in_dsn set, or still
 * pending), the log line, metrics, event and Redis entries.  force >= 0
 * imposes that outcome (enum wk_outcome) instead of wk_verdict()'s.
 * Returns the outcome. */
enum wk_outcome wk_outcome_record(wk_outcomes *o, const struct wk_outcome_msg *msg,
                                  struct wk_rcpt *rc, int code, const char *dsn, const char *reply,
                                  const char *relay, const char *remote, int force);

/* The suppression-list key of addr (lower case), malloc'd. */
char *wk_suppress_key(const char *addr);

#endif
