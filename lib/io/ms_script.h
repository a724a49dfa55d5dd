/*
 * ms_script.h - the Lua scripts Mailstream runs in Redis, all of them in
 * one place (ms_script.c), and the digest each is run by.
 *
 * Redis runs a script atomically, so a check-and-update on shared state
 * (a token bucket, a lease set) is one round trip with no race between
 * nodes.  Scripts are never sent with EVAL on the hot path: the Redis
 * client (ms_redis.h) loads every script here with SCRIPT LOAD each time it
 * connects, runs them with EVALSHA by the digest below, and when Redis
 * answers NOSCRIPT all the same (SCRIPT FLUSH, or a failover behind an
 * address the connection survived) loads the script again and sends the
 * same command once more: ms_redis_script().
 *
 * The scripts and their interfaces (KEYS, ARGV, answers):
 *   MS_SCRIPT_BUCKET  token buckets: ms_bucket.h says how to call it.
 *   MS_SCRIPT_LEASE   connection leases ([delivery] dest_concurrency):
 *                     KEYS[1] the lease set (MS_KEY_LEASE, ms_keys.h),
 *                     ARGV[1] now (ms), ARGV[2] lease lifetime (ms),
 *                     ARGV[3] most leases at once, ARGV[4] this lease's
 *                     member.  Drops lapsed leases, then takes one if
 *                     fewer than ARGV[3] are held: 1 taken, 0 all taken.
 *   MS_SCRIPT_FENCE_TAKE   a message's delivery lease (duplicate fencing,
 *                     docs/reliability.md): KEYS[1] the lease (MS_KEY_FENCE),
 *                     KEYS[2..] keys to GET with it; ARGV[1] the holder's
 *                     token (unique per holder and attempt), ARGV[2] lease
 *                     lifetime (ms), ARGV[3] how long the hash outlives its
 *                     lapse (ms).  Taken: {gen, prior, values of KEYS[2..]}
 *                     (gen >= 1 the new fencing generation; prior: how many
 *                     destinations a lapsed previous holder had past the
 *                     DATA check without a recorded outcome).  Held by
 *                     another holder and not lapsed: {0, ms until it lapses}.
 *   MS_SCRIPT_FENCE_CHECK  the check before DATA (ARGV[4] "1") or a renewal
 *                     ("0"): KEYS[1] the lease, ARGV[1] the token, ARGV[2]
 *                     how long the lease must last from now (ms), ARGV[3]
 *                     as for TAKE.  Still ours: the ms it now lasts (>=
 *                     ARGV[2]; a check counts one more destination in
 *                     DATA); taken by another or gone: 0.
 *   MS_SCRIPT_FENCE_DONE   outcomes recorded: KEYS[1] the lease, KEYS[2..]
 *                     delivered markers to SET (ARGV[2] value, ARGV[3] TTL
 *                     in s; written whoever holds the lease); ARGV[1] the
 *                     token, ARGV[4] "1" give the lease back, ARGV[5] "1" one
 *                     destination fewer in DATA.  1: the lease was ours, 0:
 *                     it was not (nothing changed but the markers).
 *
 * Pure and thread-safe: the sources are constants; each digest is computed
 * once (SHA-1 in lower-case hex, as Redis names a script).
 */
#ifndef MS_SCRIPT_H
#define MS_SCRIPT_H

#include <stddef.h>

enum ms_script {
    MS_SCRIPT_BUCKET,
    MS_SCRIPT_LEASE,
    MS_SCRIPT_FENCE_TAKE,
    MS_SCRIPT_FENCE_CHECK,
    MS_SCRIPT_FENCE_DONE,
    MS_SCRIPT__COUNT
};

/* Length of a digest in hex, without the NUL. */
#define MS_SCRIPT_SHA_LEN 40

/* The script's Lua source (NUL-terminated) and its name for logs. */
const char *ms_script_source(enum ms_script s);
const char *ms_script_name(enum ms_script s);

/* The digest EVALSHA names the script by: MS_SCRIPT_SHA_LEN lower-case hex
 * digits.  Panics if OpenSSL cannot compute SHA-1 (a broken invariant:
 * nothing could run). */
const char *ms_script_sha(enum ms_script s);

#endif
