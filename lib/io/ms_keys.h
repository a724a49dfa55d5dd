/*
 * ms_keys.h - the name of every Redis key Mailstream reads or writes.
 *
 * Frontends and workers share one Redis, and operators (and the tests) read
 * the keys directly, so the names are a contract: docs/config.md documents
 * them, and every C file builds them from these prefixes, never from a
 * string literal of its own.  A prefix is followed by the part named in the
 * comment; addresses are lower-cased where the comment says so, so that
 * writer and reader meet on the same key.
 *
 * Each entry says what the value is, who writes it and who reads it.
 * Header only: string literals, so that they concatenate with a format
 * ("MS_KEY_SUPPRESS "%s"").
 */
#ifndef MS_KEYS_H
#define MS_KEYS_H

/* + queue id ":" recipient: string, the recipient was served (the remote
 * 250).  Written by the worker; a redelivered record skips it. */
#define MS_KEY_DELIVERED "ms:delivered:"

/* + queue id ":" recipient: hash of the recipient's retry state (attempts,
 * next_attempt_us, last_reply, first_seen_us, delay_warned_us).  Written
 * and removed by the worker, for operators. */
#define MS_KEY_RETRY "ms:retry:"

/* Sorted set of queue ids with deferred recipients, scored by when the
 * message was accepted.  The worker's retry queue depth and oldest age. */
#define MS_KEY_RETRY_QUEUE "ms:retryq"

/* + lower-cased address: string "<dsn> <reply>", with a TTL ([delivery]
 * suppress_ttl_s).  The suppression list: written by the worker after a
 * hard bounce of a mailbox or domain, read by the worker (bounce without
 * a connection) and by the frontend ([smtp] refuse_suppressed). */
#define MS_KEY_SUPPRESS "ms:suppress:"

/* + sender domain: hash, bounces per reply class.  Written by the worker,
 * for operators. */
#define MS_KEY_BOUNCES "ms:bounces:"

/* + destination name (relay host, transport next hop or recipient
 * domain): sorted set of connection leases ([delivery] dest_concurrency),
 * one member per connection scored by when it lapses.  Worker only. */
#define MS_KEY_LEASE "ms:lease:"

/* + destination name: token bucket ([delivery] dest_rate, ms_bucket.h).
 * Worker only. */
#define MS_KEY_RATE "ms:rate:"

/* + policy domain: its MTA-STS policy (RFC 8461 §5), shared by every
 * worker: "<id>\n<policy file>", expiring after the policy's max_age.
 * Worker only (worker/mtasts.h). */
#define MS_KEY_MTASTS "ms:mtasts:"

/* Default of the frontend's [ratelimit] key_prefix, followed by the kind of
 * limit and its subject: its token buckets (ms_bucket.h). */
#define MS_KEY_RATELIMIT "ms:rl:"

#endif
