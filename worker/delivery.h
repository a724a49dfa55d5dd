/*
 * delivery.h - the worker's delivery engine: one transaction per record of
 * the `queue` topic (or of a retry tier topic), from the Kafka record to a
 * durable outcome.
 *
 * For each record: decode the envelope (a malformed one is logged, counted,
 * published as an event and released at once); if it is a retry record not
 * yet due, hold it until it is; look up the Redis "delivered" markers
 * ms:delivered:<qid>:<rcpt> and skip those recipients; bounce recipients on
 * the suppression list (ms:suppress:<rcpt>) without connecting; apply the
 * operator's action read in the same round trip (ms:ctl:<qid>: hold,
 * bounce, delete instead of an attempt; control.h, docs/operations.md);
 * group the rest by destination, defer those of suspended destinations
 * without a session (no attempt counted when that is all of them), and
 * deliver to every other destination at once:
 *
 *   route      per recipient domain: the transport map, then [delivery]
 *              relay_host, then MX (route.h: RFC 5321 §5.1 order, every
 *              address of every MX host tried before deferring);
 *   shape      (shaper.h) name the destination's group once its route is
 *              known: a group of the shaping file by MX host or domain,
 *              else its MX set (the relay host and transport next hops
 *              keep their names); its limits, scaled down by a backoff in
 *              force; a group suspended by a backoff (or by the operator,
 *              under the group's name) is deferred (4.4.5) without a
 *              session.  Every server reply is offered to the backoff
 *              rules (wk_shaper_observe);
 *   pace       (pacing.h) when [delivery] dest_rate is set, wait for the destination's
 *              turn: a token bucket per destination in Redis
 *              (ms:rate:<name>, lib/io/ms_bucket.h; <name> is the relay
 *              host, the transport next hop or the recipient domain, as for
 *              leases), one message per 1/dest_rate seconds cluster-wide.
 *              A message over the rate waits in memory for the time the
 *              bucket names; only when its waits would pass [delivery]
 *              dest_rate_max_wait_ms are its recipients deferred (4.4.5)
 *              like any other deferral.  Redis unavailable: no wait
 *              (fail-open, counted);
 *   connect    with a cluster-wide lease per destination when [delivery]
 *              dest_concurrency is set (Redis sorted set ms:lease:<name>,
 *              leases lapse by themselves if a worker dies), STARTTLS by
 *              the [tls] policy of the recipient domain (smtp_client.h),
 *              AUTH to the relay host when [delivery] relay_user is set,
 *              lmtp:unix: transports over a UNIX-domain socket;
 *   outcome    per recipient (outcome.h): delivered, deferred or bounced;
 *              one log line and one `events` record per recipient and
 *              attempt; a delivered marker with a TTL right after the 250.
 *
 * Then the outcome is made durable before the record's offset is stored
 * (ms_consumer_done):
 *   - bounced recipients whose NOTIFY allows it (RFC 3461 §4.1: absent
 *     means FAILURE) and pending recipients whose delay warning is due
 *     ([retry] delay_warning_s: once per recipient, NOTIFY absent or with
 *     DELAY) get one RFC 3464 DSN (ms_dsn.h; Action failed / delayed),
 *     produced to the queue topic with the null sender, if the backscatter
 *     rule allows (dsn_rules.h; built by requeue.h): never to the null sender; always for mail
 *     accepted for relaying (direction outbound); for inbound mail only
 *     when the mail-authentication stage found SPF pass for the MAIL FROM domain or a
 *     DKIM pass aligned with it (env->auth); a DSN refused by the rule is
 *     logged (event=dsn_skipped) and counted.  A delay warning counts as
 *     sent once decided: the time goes into the recipient of the retry
 *     record (delay_warned_us) and into its Redis retry state;
 *   - pending (deferred) recipients go, with the attempts appended, to the
 *     retry tier topic for their attempt number, due after an exponential
 *     backoff with jitter (retry.h); past [retry] max_age they bounce with
 *     4.4.7 instead; per-recipient retry state goes to Redis
 *     (ms:retry:<qid>:<rcpt>: attempts, next, last reply, first seen,
 *     delay warning sent), and the message into the deferred-queue index
 *     for mailstream-ctl (control.h), out of it again once it is done;
 *   - hard bounces add the recipient to the suppression list with a TTL.
 * Once the DSN and retry records are acknowledged by Kafka (and the events
 * and markers written or failed), the record is done.  If a retry record
 * cannot be produced, the record is kept in memory and retried in place
 * (its offset stays behind until then).
 *
 * Bounded: at most max_in_flight records are held, and at most
 * max_in_flight_bytes octets of them counted WK_MSG_COPIES times (the Kafka
 * record, which the envelope borrows the message from, and the wire copy:
 * see WK_MSG_COPIES); every
 * consumer is paused while either is reached (a record alone over the
 * budget is still taken, so nothing is stuck), and a retry tier consumer also while it holds
 * WK_RETRY_HOLD_MAX records that are not due.  Asynchronous replies (route
 * jobs, SMTP outcomes, Redis replies, produce reports) find their
 * transaction by a 64-bit id in a slot table; a missing id means the
 * transaction is gone and the reply is dropped.  If Redis is unavailable,
 * mail is delivered anyway (at least once).
 *
 * One loop thread: create, feed and free the engine on the loop that runs
 * the consumers, the producer, the Redis client and the resolver.
 */
#ifndef WK_DELIVERY_H
#define WK_DELIVERY_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_bucket.h"
#include "ms_kafka.h"
#include "ms_redis.h"
#include "ms_route.h"
#include "pacing.h"
#include "route.h"
#include "shaper.h"
#include "smtp_client.h"

/* Default of [delivery] max_in_flight. */
#define WK_MAX_IN_FLIGHT_DEFAULT 256
/* Default of [delivery] max_in_flight_bytes: with the Kafka glue's share
 * (WK_KAFKA_AHEAD_*) a worker stays under 256 MiB whatever the message
 * sizes (docs/config.md has the sum). */
#define WK_MAX_IN_FLIGHT_BYTES_DEFAULT (96LL * 1024 * 1024)
/* Copies of a message's octets a record in flight is charged for: the Kafka
 * record (the decoded envelope borrows its message from it,
 * ms_envelope_decode_borrow) and the dot-stuffed (or CRLF) wire copy an
 * SMTP session holds while it sends (a large message that needs no octet
 * changed goes from the record with at most a block copied: charged high,
 * on the safe side); a rewrite by mailauth (Authentication-Results) is
 * brief and stands in for the record's. */
#define WK_MSG_COPIES 2
/* What each consumer may hold ahead of the engine (librdkafka's prefetch
 * plus the backlog, ms_kafka_conf.consumer_bytes), as a fraction of
 * max_in_flight_bytes: 1/DIV of it for the queue topic's consumer, which
 * must keep the engine busy while fetching resumes, 1/DIV for each retry
 * tier's. */
#define WK_KAFKA_AHEAD_QUEUE_DIV 2
#define WK_KAFKA_AHEAD_TIER_DIV 16
/* Retry tier topics: "<topic>.retry.<n>", n = 1..tiers. */
#define WK_RETRY_TIERS_MAX 16
/* Records not yet due a tier consumer may hold before it is paused. */
#define WK_RETRY_HOLD_MAX 8
/* Default of [retry] max_age_s: RFC 5321 §4.5.4.1 suggests 4-5 days. */
#define WK_MAX_AGE_S (5 * 24 * 3600)
/* Default of [suppression] ttl_s: how long a hard bounce suppresses. */
#define WK_SUPPRESS_TTL_S (7 * 24 * 3600)
/* Default of [delivery] dest_rate_max_wait_ms: how long a message may wait
 * in memory for its destination's turn before it is deferred instead. */
#define WK_DEST_RATE_MAX_WAIT_MS 60000
/* A delivered marker Redis did not take (its primary lost as the 250 came:
 * docs/reliability.md "Nothing twice") is written again this often, for up
 * to this long: Sentinel's failover takes its down-after-milliseconds (30 s
 * by default) plus an election, and until the marker is in Redis the record
 * stays in memory, uncommitted.  After that, the duplicate risk is logged
 * (event=marker_lost) and the record let go as before. */
#define WK_MARKER_RETRY_MS 500
#define WK_MARKER_RETRY_MAX_MS 60000
/* Destinations with a series of their own in
 * mailstream_worker_dest_connections{dest="..."}; the others (and names
 * longer than WK_DEST_GAUGE_NAME_MAX) are counted under dest="other". */
#define WK_DEST_GAUGES_MAX 64
#define WK_DEST_GAUGE_NAME_MAX 255
/* Destinations (routes) per message: recipients are grouped by them. */
#define WK_DEST_BITS 16

struct wk_delivery_conf {
    const char *node_id;
    const char *helo_name;
    const char *relay;                  /* host:port as configured, for logs; "" none */
    struct sockaddr_storage relay_addr; /* resolved */
    const ms_transport_map *transports; /* NULL: none */
    wk_router *router;                  /* MX and host lookups */
    int smtp_port;                      /* port of MX hosts (25) */
    const char *topic;                  /* the queue topic: DSNs are produced to it */
    const char *events_topic;
    int retry_tiers;                    /* 0: deferred mail stays in memory */
    const char *retry_topics[WK_RETRY_TIERS_MAX]; /* tier n is retry_topics[n - 1] */
    int max_in_flight;
    int64_t max_in_flight_bytes;        /* 0: WK_MAX_IN_FLIGHT_BYTES_DEFAULT */
    uint64_t retry_min_ms, retry_max_ms;
    int64_t max_age_s;
    int64_t suppress_ttl_s;             /* 0: no suppression list */
    uint64_t conn_cache_ms;             /* keep idle connections this long; 0: never */
    unsigned max_msgs_per_conn;         /* then QUIT instead of parking; 0: no limit */
    int dest_concurrency;               /* connections per destination, cluster-wide
                                         * (Redis leases); 0: no limit.  With
                                         * dest_rate, max_msgs_per_conn and the
                                         * timeouts: what the shaping file leaves
                                         * unset (shaper.h, whose base they are) */
    const char *relay_user;             /* AUTH to relay_host as this user; NULL: none */
    const char *relay_password;         /* with relay_user */
    int relay_auth_plaintext;           /* AUTH allowed without TLS */
    unsigned relay_auth_mechs;          /* MS_AUTH_MECH_* mask; 0: PLAIN and LOGIN */
    struct ms_bucket_rate dest_rate;    /* messages per destination, cluster-wide
                                         * (Redis token bucket); capacity 0: no limit */
    uint64_t dest_rate_max_wait_ms;     /* a destination waiting longer for its turn
                                         * is deferred (4.4.5) to a retry tier */
    int64_t delay_warning_s;            /* delay-warning DSNs after this; 0: none */
    struct ms_tls_ctx *tls_ctx;         /* NULL: no STARTTLS at all */
    struct wk_mtasts *mtasts;           /* MTA-STS for domains policy_map does not
                                         * name (mtasts.h); NULL: off */
    const struct wk_tls_map *tls_map;   /* [tls] policy and policy_map (tls_policy.h);
                                         * an entry's own context, if any, instead
                                         * of tls_ctx; NULL: `may` everywhere */
    struct wk_tlsrpt *tlsrpt;           /* TLS reports (tlsrpt.h): every MX session's
                                         * TLS result is counted; NULL: off */
    struct wk_smtp_timeouts timeouts;
    wk_shaper *shaper;                  /* groups, their limits and backoff, the
                                         * bounce classifier (shaper.h); required */
    uint64_t fence_lease_ms;            /* duplicate fencing (fence.h); 0: off */
    int64_t marker_ttl_s;               /* delivered markers' TTL; 0: WK_DELIVERED_TTL_S */
};

typedef struct wk_delivery wk_delivery;

/* The strings in conf must outlive the engine. */
wk_delivery *wk_delivery_new(uv_loop_t *loop, const struct wk_delivery_conf *conf);
/* Set the peers once they exist (they take the engine as callback arg). */
void wk_delivery_attach(wk_delivery *d, ms_consumer *c, ms_producer *p, ms_redis *r);
/* The consumer of retry tier `tier` (1-based); its callback is
 * wk_delivery_on_record too. */
void wk_delivery_attach_retry(wk_delivery *d, int tier, ms_consumer *c);
/* The mail-authentication stage (mailauth.h), run once per record before routing. */
struct wk_mailauth;
void wk_delivery_attach_mailauth(wk_delivery *d, struct wk_mailauth *p);

/* The consumer and producer callbacks: pass `d` as their arg. */
void wk_delivery_on_record(void *d, struct ms_record *rec);
void wk_delivery_on_produced(void *d, uint64_t id, int err, const char *errstr);

/* Records held right now. */
int wk_delivery_in_flight(const wk_delivery *d);

/* Shutdown, first step: stop taking records, abandon those waiting for a
 * retry, defer (to a retry tier) destinations sleeping until their
 * dest_rate turn, let running attempts finish.  `drained` is called (once, on the
 * loop) when no record is held any more. */
void wk_delivery_drain(wk_delivery *d, void (*drained)(void *arg), void *arg);
/* Shutdown, when draining takes too long: abandon everything now (the
 * records are redelivered since their offsets are not stored). */
void wk_delivery_abandon_all(wk_delivery *d);
/* Free the engine; only once drained (no record held). */
void wk_delivery_free(wk_delivery *d);

#endif
