/*
 * ms_resolver.h - asynchronous DNS on a libuv loop, through libunbound.
 * This module is the only one that includes the DNS library.
 *
 * Answers arrive on the loop thread as struct ms_dns_result (lib/mail/
 * ms_dns.h), valid only during the callback.  libunbound caches answers and
 * validates DNSSEC when a trust anchor is configured; queries are bounded by
 * our own timeout (MS_EUNAVAIL-free: a timeout is reported as
 * MS_DNS_TEMPFAIL through the callback).  Callers find their state by the
 * 64-bit id they passed.
 */
#ifndef MS_RESOLVER_H
#define MS_RESOLVER_H

#include <stdint.h>
#include <uv.h>

#include "ms_dns.h"

struct ms_resolver_conf {
    const char *upstream;      /* "ip" or "ip@port"; NULL: full recursion */
    const char *trust_anchor;  /* file for DNSSEC validation; NULL: none */
    int timeout_ms;            /* per query; 0: MS_RESOLVER_TIMEOUT_MS */
    /* Names of libunbound built-in local zones (RFC 6761/6303 names such as
     * 2.0.192.in-addr.arpa, otherwise answered NXDOMAIN locally) to remove,
     * so the upstream is asked for them; for tests whose DNS server serves
     * documentation names.  NULL/0: none. */
    const char *const *nodefault;
    size_t nnodefault;
};

#define MS_RESOLVER_TIMEOUT_MS 10000
/* Records kept from one answer; more are dropped (and the result says so in
 * the log): a name with hundreds of A records is an attack, not a mail host. */
#define MS_RESOLVER_RR_MAX 64

typedef struct ms_resolver ms_resolver;
typedef void (*ms_resolve_cb)(void *arg, uint64_t id, const struct ms_dns_result *res);

ms_resolver *ms_resolver_new(uv_loop_t *loop, const struct ms_resolver_conf *conf, char *err,
                             size_t errlen);
/* Start a query; the callback is called exactly once, later, unless this
 * returns an error (then never). */
int ms_resolver_query(ms_resolver *r, const char *name, enum ms_dns_type type, ms_resolve_cb cb,
                      void *arg, uint64_t id);
/* Queries in flight. */
int ms_resolver_pending(ms_resolver *r);
/* Cancel everything (no callbacks) and free. */
void ms_resolver_free(ms_resolver *r);

#endif
