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

/*
 * Lifetimes.  Redis holds what is in flight and what operators keep, not
 * the history of the mail: every key has a TTL, or an owner that deletes
 * it, so that its memory is bounded by the mail in flight, the retry
 * horizon ([retry] max_age_s) and the operators' own lists
 * (docs/reliability.md, "What Redis holds and for how long").
 *
 * The table below is read by tests/integration/test_key_lifetimes.py,
 * which runs a workload and then walks Redis with SCAN: a key without a
 * TTL must match an `owned` row, and every MS_KEY_* defined in this file
 * must have a row.  A row: the key (a prefix when it ends in ':', the whole
 * name otherwise), `ttl` or `owned`, then how long and who deletes it.
 *
 *   ms:delivered:      ttl    set with the marker by the worker
 *                             (docs/reliability.md: how long a record can
 *                             still come back)
 *   ms:retry:          ttl    [retry] max_age_s + 1 d, renewed at each
 *                             deferral; the worker deletes it once the
 *                             recipient is delivered or bounced
 *   ms:retryq          ttl    [retry] max_age_s + 1 d, renewed at each
 *                             deferral; the worker removes a queue id when
 *                             the message is done and, at each deferral,
 *                             members accepted longer ago than the TTL
 *   ms:retryq:dest:    ttl    as ms:retryq
 *   ms:retryq:dests    ttl    as ms:retryq, members by their last deferral
 *                             (mailstream-ctl also drops idle names)
 *   ms:qinfo:          ttl    [retry] max_age_s + 1 d; the worker deletes
 *                             it when the message is done
 *   ms:ctl:            ttl    MS_QCTL_TTL_S (30 d); mailstream-ctl deletes
 *                             it on release, the worker once a bounce or
 *                             delete is done and when the message is done
 *   ms:suppress:       owned  [suppression] ttl_s when the worker writes
 *                             it, --for when mailstream-ctl does; without
 *                             --for the operator's list, kept until
 *                             `suppress remove` (the test checks that a
 *                             key without a TTL says source=ctl|import)
 *   ms:bounces:        ttl    WK_BOUNCE_COUNTER_TTL (30 d), renewed at each
 *                             bounce of that sender domain
 *   ms:lease:          ttl    the lease lifetime (WK_LEASE_TTL_MS), renewed
 *                             at each lease taken
 *   ms:rate:           ttl    one refill period of the bucket, renewed at
 *                             each token taken (ms_bucket.h)
 *   ms:rl:             ttl    as ms:rate: ([ratelimit] N/PERIOD)
 *   ms:mtasts:         ttl    the policy's max_age (RFC 8461 §3.2)
 *   ms:ctlgen          owned  one counter for the cluster, never grows;
 *                             nobody deletes it (if gone, the workers see
 *                             a change and look at their records again)
 *   ms:suspend         owned  one hash; `dest resume` deletes an entry and
 *                             `dest list` the entries past their --for
 *   ms:rcpts:          owned  the operator's recipient lists, until
 *                             `recipients remove` empties a set
 *   ms:fence:          ttl    the lease, [delivery] delivered_ttl_s past
 *                             its lapse; its holder deletes it when the
 *                             message's attempt ends
 *   ms:tlsrpt:         ttl    WK_TLSRPT_KEEP report periods
 *   ms:tlsrptd:        ttl    as ms:tlsrpt:
 *   ms:tlsrptl:        ttl    WK_TLSRPT_KEEP + 1 periods (a period is
 *                             reported once)
 *   ms:backoff         owned  one hash, a field per group under an
 *                             automatic backoff (bounded by the groups);
 *                             `dest resume` deletes a field, `dest list`
 *                             the fields that are over
 *   ms:verify:         ttl    [verify] positive_ttl / negative_ttl
 *   ms:verifying:      ttl    [verify] timeout_ms + 2 s; the prober deletes
 *                             it with its answer
 *   ms:node:           ttl    15 s, renewed every 5 s by the node (its
 *                             heartbeat); deleted by the node when it stops
 */

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

/* ---- TLS reports (RFC 8460, worker/tlsrpt.h) ---- */

/* + period start (seconds since the epoch, a multiple of [tls]
 * tlsrpt_interval_s) ":" lower-cased policy domain: hash of that period's
 * TLS session counts (fields ms_tlsrpt_field(): successes, failures by
 * result type and failure details, and the policy-strings).  Written
 * (HINCRBY, HSET) by every worker after each outbound session; read by the
 * worker that holds the period's lease.  TTL WK_TLSRPT_KEEP periods. */
#define MS_KEY_TLSRPT "ms:tlsrpt:"

/* + period start: set of the policy domains counted in that period.
 * Written by every worker with the counts, read by the lease holder; TTL
 * WK_TLSRPT_KEEP periods. */
#define MS_KEY_TLSRPT_DOMAINS "ms:tlsrptd:"

/* + period start: string, the node id of the worker that reports that
 * period (SET NX).  TTL WK_TLSRPT_KEEP + 1 periods, longer than the counts,
 * so the period is reported once; nobody deletes it. */
#define MS_KEY_TLSRPT_LEASE "ms:tlsrptl:"

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
 * destinations, attempts, last reply, the Kafka record holding it).  Written by the worker with every
 * retry record, TTL [retry] max_age + a day; deleted by the worker when the
 * message is done. */
#define MS_KEY_QUEUE_INFO "ms:qinfo:"

/* + queue id: string, an operator's action on that message (ms_qctl_format:
 * hold, retry, bounce or delete, when, why).  Written by mailstream-ctl
 * (TTL MS_QCTL_TTL_S), and by the worker as a hold for a message a milter
 * quarantined (SET NX, same TTL; worker/delivery.c); read by the worker before every attempt and when a
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

/* Hash: destination group (worker/shaper.h: a group of the shaping file,
 * an "mx:" set, or a next hop) -> its automatic backoff
 * (ms_backoff_format: suspend or throttle, factor, until, ramp, since,
 * rule, reply).  Written by the worker whose delivery got a reply matching
 * a backoff rule, read every second by every worker; deleted by
 * mailstream-ctl (dest resume, or dest list once a record is over: the
 * workers ignore it by then). */
#define MS_KEY_BACKOFF "ms:backoff"

/* + lower-cased domain: set of the lower-cased addresses that exist at
 * that accepted domain (Postfix's relay_recipient_maps).  Written by
 * mailstream-ctl (recipients add/remove/import), kept until removed; read
 * by the frontend at RCPT for the domains of [smtp] recipient_lists. */
#define MS_KEY_RECIPIENTS "ms:rcpts:"

/* + lower-cased address: string, the cached answer of a recipient
 * verification probe (frontend/fe_verify.h): "1 <reply>" (the next hop
 * accepted RCPT TO) or "0 <reply>" (it refused it with 5yz).  Written by
 * the frontend with a TTL ([verify] positive_ttl / negative_ttl), read by
 * every frontend at RCPT; deleted by nobody (it expires). */
#define MS_KEY_VERIFY "ms:verify:"

/* + lower-cased address: string, "a frontend is probing this address
 * now" (SET NX), so that one probe runs per address in the whole cluster
 * while the other frontends poll MS_KEY_VERIFY for its answer.  Written by
 * the prober with a TTL of [verify] timeout_ms + 2 s, deleted by it when the
 * probe ends. */
#define MS_KEY_VERIFY_LOCK "ms:verifying:"

/* + node id ([node] id): string, a node's heartbeat (ms_heartbeat.h: role,
 * version, start time, last beat, host).  Written by every frontend (with
 * Redis) and worker every 5 s with a TTL of 15 s, deleted by the node when
 * it stops; read by `mailstream-ctl status`. */
#define MS_KEY_NODE "ms:node:"

#endif
