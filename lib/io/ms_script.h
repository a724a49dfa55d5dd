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
 *
 * Pure and thread-safe: the sources are constants; each digest is computed
 * once (SHA-1 in lower-case hex, as Redis names a script).
 */
#ifndef MS_SCRIPT_H
#define MS_SCRIPT_H

#include <stddef.h>

enum ms_script { MS_SCRIPT_BUCKET, MS_SCRIPT_LEASE, MS_SCRIPT__COUNT };

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
