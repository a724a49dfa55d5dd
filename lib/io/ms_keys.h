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
 * 250).  Written by the worker; a redelivered record skips it.  TTL
 * [delivery] delivered_ttl_s: as long as a record can still be redelivered
 * after its marker was written (docs/reliability.md, "Nothing twice"). */
#define MS_KEY_DELIVERED "ms:delivered:"

/* + queue id: hash, the delivery lease of that message (duplicate
 * fencing, docs/reliability.md): who (the holder's unique token), exp (when
 * it lapses, Redis ms), gen (fencing generation, incremented per taking),
 * data (destinations past the DATA check without a recorded outcome).
 * Written only by the worker's MS_SCRIPT_FENCE_* scripts (ms_script.h);
 * deleted by its holder when the message's attempt ends, else expires
 * [delivery] delivered_ttl_s after it lapses (so a new owner can still see
 * that a dead holder reached DATA). */
#define MS_KEY_FENCE "ms:fence:"

/* + queue id ":" recipient: hash of the recipient's retry state (attempts,
 * next_attempt_us, last_reply, first_seen_us, delay_warned_us).  Written
 * and removed by the worker, for operators. */
#define MS_KEY_RETRY "ms:retry:"

/* Sorted set of queue ids with deferred recipients, scored by when the
 * message was accepted.  The worker's retry queue depth and oldest age. */
#define MS_KEY_RETRY_QUEUE "ms:retryq"

/* + lower-cased address: string "<dsn> <reply>", with a TTL ([delivery]
 * suppress_ttl_s).  The suppression list: written by the worker after a
 * hard bounce of a mailbox or domain, and by mailstream-ctl (value
 * "source=ctl|import <reason>", TTL --for or none: until `suppress
 * remove`); read by the worker (bounce without a connection) and by the
 * frontend ([smtp] refuse_suppressed), which look only at existence. */
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

/* ---- the queue control (docs/operations.md, ms_qctl.h) ---- */

/* + destination name (as MS_KEY_LEASE): sorted set of the queue ids with
 * recipients deferred to that destination, scored like MS_KEY_RETRY_QUEUE
 * (when the message was accepted, so that ages are score ranges).  Written
 * by the worker when it defers (ZADD) and when the message is done with
 * that destination (ZREM); read by mailstream-ctl. */
#define MS_KEY_RETRY_QUEUE_DEST "ms:retryq:dest:"

/* Sorted set of the destination names that had deferred mail, scored by
 * the last time the worker deferred to them.  Written by the worker;
 * mailstream-ctl enumerates it and removes names idle longer than the
 * longest a message stays queued (WK_MAX_AGE_S and a day). */
#define MS_KEY_RETRY_QUEUE_DESTS "ms:retryq:dests"

/* + queue id: string, the listing line of a deferred or held message
 * (ms_qinfo_format: state, times, sender, pending recipients, their
 * destinations, attempts, last reply).  Written by the worker with every
 * retry record, TTL [retry] max_age + a day; deleted by the worker when the
 * message is done. */
#define MS_KEY_QUEUE_INFO "ms:qinfo:"

/* + queue id: string, an operator's action on that message (ms_qctl_format:
 * hold, retry, bounce or delete, when, why).  Written by mailstream-ctl
 * (TTL MS_QCTL_TTL_S); read by the worker before every attempt and when a
 * held retry record is consumed; deleted by mailstream-ctl (release) or by
 * the worker once a bounce or delete is done. */
#define MS_KEY_CONTROL "ms:ctl:"

/* Counter: incremented by mailstream-ctl after every queue action, polled
 * by every worker each second; a change makes it look again at the retry
 * records it holds in memory (so `retry` and `release` act at once). */
#define MS_KEY_CONTROL_GEN "ms:ctlgen"

/* Hash: destination name -> suspension (ms_qctl_suspend_format: until,
 * since, reason).  Written by mailstream-ctl (dest suspend / resume), read
 * every second by every worker; an entry past its `until` is ignored by
 * the workers and removed by mailstream-ctl. */
#define MS_KEY_SUSPEND "ms:suspend"

/* + lower-cased domain: set of the lower-cased addresses that exist at
 * that accepted domain (Postfix's relay_recipient_maps).  Written by
 * mailstream-ctl (recipients add/remove/import), kept until removed; read
 * by the frontend at RCPT for the domains of [smtp] recipient_lists. */
#define MS_KEY_RECIPIENTS "ms:rcpts:"

#endif
