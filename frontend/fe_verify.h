/*
 * fe_verify.h - recipient address verification at RCPT, as Postfix's
 * reject_unverified_recipient and verify(8): for the accepted domains named
 * in [verify] map, the frontend asks the domain's next hop whether a
 * recipient exists before it answers the client.
 *
 * A probe is one SMTP (or LMTP, RFC 2033) session to the next hop the map
 * names - the worker's transport for that domain, so `[verify] map_file`
 * may be the worker's `[transport] map_file` - that says EHLO (LHLO),
 * `MAIL FROM:<>` (a null sender, RFC 5321 §4.5.5, so a refusal cannot
 * bounce) and `RCPT TO:<addr>`, then QUIT; no message is ever sent.  Its
 * answer:
 *   2yz   FE_VERIFY_OK       the recipient exists: 250 to the client
 *   5yz   FE_VERIFY_UNKNOWN  550 5.1.1 with the next hop's own text
 *   else  FE_VERIFY_TEMP     a 4yz, no connection, a timeout, a broken
 *                            session: 450 4.1.1 (never 250, unless
 *                            [verify] tempfail_action = accept)
 * OK and UNKNOWN are cached in Redis (MS_KEY_VERIFY + the lower-cased
 * address, "1 reply" or "0 reply") for positive_ttl and negative_ttl, so the
 * next RCPT for that address costs one GET, on every frontend of the
 * cluster.  TEMP is never cached: the next RCPT probes again.
 *
 * Bounds.  One probe per address at a time in the whole cluster: an RCPT
 * for an address this loop is already looking up (in Redis, waiting or
 * probing) joins that lookup and gets the same answer; a lookup that finds
 * the address locked by another loop or frontend (MS_KEY_VERIFY_LOCK, SET
 * NX with a TTL) polls the cache every FE_VERIFY_POLL_MS for that probe's
 * answer, and probes itself if the lock goes without one.  At most
 * [verify] max_probes sessions to next hops at once per loop; further
 * addresses wait in order, up to FE_VERIFY_PENDING_MAX addresses in all,
 * beyond which fe_verify_start() answers MS_EAGAIN and the session says
 * 450 at once.  Every probe ends within [verify] timeout_ms (its session's
 * timer covers a wait for a free slot too).
 *
 * Threads: an fe_verify lives on one loop (one per struct fe_server), with
 * that loop's Redis client; every call and callback on that loop.  Answers
 * reach the sessions by their 64-bit wait id (STYLE.md 7): a session that
 * has gone finds nobody.  The map (struct fe_verify_conf, in each loop's
 * settings) is immutable once loaded.
 *
 * Errors: fe_verify_conf_load() returns MS_ECONFIG with the reason;
 * fe_verify_start() returns 0 (the answer comes later through the callback,
 * never from within the call) or MS_EAGAIN (too many addresses pending; no
 * callback).
 */
#ifndef FE_VERIFY_H
#define FE_VERIFY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ms_config.h"
#include "ms_metrics.h"
#include "ms_redis.h"
#include "ms_route.h"

/* How often a lookup that found another frontend probing its address
 * looks in the cache for that probe's answer. */
#define FE_VERIFY_POLL_MS 200
/* Addresses looked up or probed at once per loop (waiting included). */
#define FE_VERIFY_PENDING_MAX 1024
/* Longest text kept from the next hop's reply ("550 5.1.1 ..."). */
#define FE_VERIFY_TEXT_MAX 400
/* Defaults ([verify], docs/config.md): Postfix's address_verify_*. */
#define FE_VERIFY_POSITIVE_TTL_DEF (31 * 86400)
#define FE_VERIFY_NEGATIVE_TTL_DEF (3 * 86400)
#define FE_VERIFY_TIMEOUT_MS_DEF 10000
#define FE_VERIFY_MAX_PROBES_DEF 16

enum fe_verify_result { FE_VERIFY_OK, FE_VERIFY_UNKNOWN, FE_VERIFY_TEMP };

struct fe_verify_conf {
    ms_transport_map *map; /* NULL: no verification */
    int64_t positive_ttl_s, negative_ttl_s;
    int64_t timeout_ms;
    int64_t max_probes;
    int tempfail_accept; /* tempfail_action = accept: 250 when no answer */
    const char *helo;    /* our name in EHLO/LHLO ([smtp] hostname) */
};

/* Process-wide series, registered once (fe_metrics_register). */
struct fe_verify_metrics {
    ms_counter *probes[3]; /* by result */
    ms_counter *cache_hit, *cache_miss, *coalesced, *busy;
    ms_histogram *probe_seconds;
};
void fe_verify_metrics_register(struct fe_verify_metrics *m);

/* Read [verify]: map (comma-separated "domain transport" entries, as
 * [transport] map), map_file, positive_ttl, negative_ttl, timeout_ms,
 * max_probes, tempfail_action.  Only smtp:[host][:port] (no MX lookup),
 * lmtp:host[:port] and lmtp:unix:/path can be asked; another transport is
 * refused.  Every key is looked up whether or not a map is set
 * (ms_config.h).  0 or MS_ECONFIG. */
int fe_verify_conf_load(struct fe_verify_conf *c, const ms_config *cfg, const char *helo, char *err,
                        size_t errlen);
void fe_verify_conf_free(struct fe_verify_conf *c);
/* The next hop for addr when its domain is to be verified, else NULL. */
const struct ms_transport *fe_verify_route(const struct fe_verify_conf *c, const char *addr);

/* The answer for wait `id`: result and, for OK and UNKNOWN, the next hop's
 * reply ("550 5.1.1 <x@example.com>: no such user"); for TEMP, why. */
typedef void (*fe_verify_cb)(void *arg, uint64_t id, int result, const char *text);

struct fe_verify;
/* conf and m must outlive it; redis may be NULL (no cache: every RCPT
 * probes). */
struct fe_verify *fe_verify_new(uv_loop_t *loop, ms_redis *redis, const struct fe_verify_conf *conf,
                                const struct fe_verify_metrics *m, fe_verify_cb cb, void *arg);
/* Look addr up (its domain has a route, fe_verify_route()).  0 or
 * MS_EAGAIN. */
int fe_verify_start(struct fe_verify *v, const char *addr, uint64_t id);
/* Stop: every probe is aborted, no callback runs any more; the module
 * frees itself once its handles have closed.  Before the loop's Redis
 * client is freed. */
void fe_verify_free(struct fe_verify *v);

#endif
