/*
 * delivery.h - the worker's delivery engine: one transaction per record of
 * the `queue` topic, from the Kafka record to a durable outcome.
 *
 * For each record: decode the envelope (a malformed one is logged, counted,
 * published as an event and released at once); look up the Redis
 * "delivered" markers ms:delivered:<qid>:<rcpt> and skip those recipients;
 * deliver the rest through the SMTP client (smtp_client.h) to the route
 * (the tracer: [delivery] relay_host for everyone); for every recipient and
 * attempt write one log line and one `events` record; set the marker with a
 * TTL for every recipient the server accepted; then, once the marker writes
 * and the event records have completed (or failed), either release the
 * record (ms_consumer_done: every recipient is delivered or bounced) or try
 * again after a backoff (retry.h).  The Kafka offset of a record is thus
 * stored only once its outcome is durable; a crash or rebalance redelivers
 * it and the markers keep already-delivered recipients from a second copy.
 * If Redis is unavailable, mail is delivered anyway (at least once).
 *
 * Bounded: at most max_in_flight records are held; the consumer is paused
 * while all are taken.  Asynchronous replies (SMTP outcome, Redis replies,
 * produce reports) find their transaction by a 64-bit id in a slot table; a
 * missing id means the transaction is gone and the reply is dropped.
 *
 * XXX: deferred records stay in memory and in flight (retry scheduling in
 * Redis comes later); bounced recipients get no DSN yet.
 *
 * One loop thread: create, feed and free the engine on the loop that runs
 * the consumer, the producer and the Redis client.
 */
#ifndef WK_DELIVERY_H
#define WK_DELIVERY_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_kafka.h"
#include "ms_redis.h"
#include "smtp_client.h"

/* Default of [delivery] max_in_flight. */
#define WK_MAX_IN_FLIGHT_DEFAULT 64
/* How long delivered markers live: longer than any redelivery can take. */
#define WK_MARKER_TTL_S (7 * 24 * 3600)
/* A Redis command not answered in this time is treated as failed. */
#define WK_REDIS_TIMEOUT_MS 5000

struct wk_delivery_conf {
    const char *node_id;
    const char *helo_name;
    const char *relay;                  /* host:port as configured, for logs */
    struct sockaddr_storage relay_addr; /* resolved */
    const char *events_topic;
    int max_in_flight;
    uint64_t retry_min_ms, retry_max_ms;
    struct wk_smtp_timeouts timeouts;
};

typedef struct wk_delivery wk_delivery;

/* The strings in conf must outlive the engine. */
wk_delivery *wk_delivery_new(uv_loop_t *loop, const struct wk_delivery_conf *conf);
/* Set the peers once they exist (they take the engine as callback arg). */
void wk_delivery_attach(wk_delivery *d, ms_consumer *c, ms_producer *p, ms_redis *r);

/* The consumer and producer callbacks: pass `d` as their arg. */
void wk_delivery_on_record(void *d, struct ms_record *rec);
void wk_delivery_on_produced(void *d, uint64_t id, int err, const char *errstr);

/* Records held right now. */
int wk_delivery_in_flight(const wk_delivery *d);

/* Shutdown, first step: stop taking records, abandon those waiting for a
 * retry, let running attempts finish.  `drained` is called (once, on the
 * loop) when no record is held any more. */
void wk_delivery_drain(wk_delivery *d, void (*drained)(void *arg), void *arg);
/* Shutdown, when draining takes too long: abandon everything now (the
 * records are redelivered since their offsets are not stored). */
void wk_delivery_abandon_all(wk_delivery *d);
/* Free the engine; only once drained (no record held). */
void wk_delivery_free(wk_delivery *d);

#endif
