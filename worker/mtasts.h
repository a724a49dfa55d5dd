/*
 * mtasts.h - the worker's MTA-STS (RFC 8461) stage: the policy of a
 * recipient domain, from the cluster's cache or fetched, on the loop.
 *
 * One lookup: the _mta-sts TXT record (through the resolver) and the
 * cached policy (Redis key MS_KEY_MTASTS, shared by every worker) at once;
 * when the TXT id differs from the cached one, or nothing is cached, the
 * policy is fetched from https://mta-sts.<domain>/.well-known/mta-sts.txt
 * (lib/io/ms_https.h: the certificate verified, no redirect, text/plain,
 * §3.3), parsed (lib/mail/ms_mtasts.h) and cached for its max_age.  A
 * fetch that fails, or a TXT record that is gone, leaves the cached policy
 * in force until it expires (§5.1: an attacker who blocks the fetch or
 * strips the TXT record does not downgrade us).
 *
 * Ids, not pointers: the callback gets the caller's id back, exactly once
 * and never from inside wk_mtasts_lookup(), unless cancelled.  One loop
 * thread.  Redis may be NULL (no cache: every lookup with a TXT record
 * fetches); the HTTPS client may not.
 */
#ifndef WK_MTASTS_H
#define WK_MTASTS_H

#include <stdint.h>
#include <uv.h>

#include "ms_https.h"
#include "ms_mtasts.h"
#include "ms_redis.h"
#include "ms_resolver.h"
#include "ms_tlsrpt.h"

/* The well-known path (§3.3). */
#define WK_MTASTS_PATH "/.well-known/mta-sts.txt"

struct wk_mtasts_result {
    int have;                      /* a policy applies (else no MTA-STS) */
    const char *source;            /* "cache", "fetched", "stale" (cached, the
                                    * refresh failed), or "none" */
    char id[MS_MTASTS_ID_MAX + 1];
    struct ms_mtasts_policy policy;
    enum ms_tlsrpt_result failure; /* a fetch was due and failed: why, as TLS
                                    * reports say it (RFC 8460 §4.3.2.3);
                                    * MS_TLSRPT_OK: no failure */
};

typedef struct wk_mtasts wk_mtasts;
typedef void (*wk_mtasts_cb)(void *arg, uint64_t id, const struct wk_mtasts_result *res);

wk_mtasts *wk_mtasts_new(uv_loop_t *loop, ms_resolver *resolver, ms_redis *redis,
                         ms_https *https);
/* Set the Redis client once it exists (NULL: no cache). */
void wk_mtasts_attach(wk_mtasts *m, ms_redis *redis);
/* Start a lookup for domain; returns the job (> 0).  The callback follows
 * on a later loop turn. */
uint64_t wk_mtasts_lookup(wk_mtasts *m, const char *domain, wk_mtasts_cb cb, void *arg,
                          uint64_t id);
void wk_mtasts_cancel(wk_mtasts *m, uint64_t job);
/* Cancel every job (no callbacks); the resolver, Redis and HTTPS clients
 * may go after this.  Replies still due find no job. */
void wk_mtasts_stop(wk_mtasts *m);
/* Free, once the loop has run down (Redis replies to cancelled jobs come
 * back through m until then). */
void wk_mtasts_free(wk_mtasts *m);

#endif
