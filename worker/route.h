/*
 * route.h - resolving a destination into the addresses to try, on the loop.
 *
 * A routing job takes a next hop (a recipient domain for MX routing, or the
 * host of a transport-map entry) and answers once with the addresses to try
 * in order: for MX routing the MX hosts in RFC 5321 §5.1 order
 * (lib/mail/ms_route.h: preference, equal preferences shuffled, implicit MX,
 * null MX), each host's IPv4 addresses and then its IPv6 addresses; every
 * host is listed, so the caller can try each before deferring.  Queries go
 * through lib/io/ms_resolver.h (libunbound: caching, configurable
 * upstream); the A and AAAA queries for all MX hosts run at once.
 *
 * Outcome: WK_ROUTE_OK with at least one address, or a final verdict:
 *   bounce  the domain does not exist (5.1.2) or has a null MX (RFC 7505
 *           §4.2: 556 5.1.10);
 *   defer   a lookup failed temporarily, or no MX host has an address
 *           (4.4.3; XXX: Postfix bounces MX hosts that do not exist, we
 *           wait for the operator to fix the zone until the message expires).
 *
 * DANE (RFC 7672 §2.2): a job started by wk_router_resolve_dane() also
 * says, per MX host, what DNSSEC said about its TLSA records: they are
 * looked up (_port._tcp.host) only for a host whose MX answer (or, for a
 * next hop taken from the configuration or an implicit MX, its own name)
 * and whose address answers were all validated; an insecure answer means
 * no DANE, a failed or bogus one means the host may not be used without
 * it (the TLS policy decides, tls_policy.h).  XXX the TLSA base domain is
 * the MX host name, not its CNAME-expanded name (§2.2.2 prefers the
 * expanded one when it is secure).
 *
 * Ids, not pointers: the callback gets the caller's 64-bit id back; a job is
 * cancelled by its own id and a cancelled job never calls back.  The
 * callback is never called from inside wk_router_resolve().  One loop thread.
 */
#ifndef WK_ROUTE_H
#define WK_ROUTE_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_conn.h"
#include "ms_dns.h"
#include "ms_resolver.h"
#include "ms_route.h"

/* Addresses handed back per destination: MS_MX_HOSTS_MAX hosts with a few
 * addresses each is plenty; the rest are dropped (and logged). */
#define WK_ROUTE_ADDRS_MAX 32

/* What DNSSEC said about a server's TLSA records (RFC 7672 §2.2). */
enum wk_dane_state {
    WK_DANE_NONE,     /* not looked up (no DANE asked, or the MX or address
                       * answer was insecure), no TLSA records, or an
                       * insecure TLSA answer (which counts as none) */
    WK_DANE_USABLE,   /* validated records, some usable (DANE-TA, DANE-EE) */
    WK_DANE_UNUSABLE, /* validated records, none usable */
    WK_DANE_FAILED,   /* the TLSA lookup failed or was bogus */
};
const char *wk_dane_state_name(enum wk_dane_state s);

struct wk_route_addr {
    char host[MS_DNS_NAME_MAX + 1];     /* the MX host (or next hop) name */
    struct sockaddr_storage ss;         /* address and port */
    uint16_t preference;
    uint8_t dane;                       /* enum wk_dane_state of host */
    uint16_t tlsa_first, ntlsa;         /* its usable records in the result's tlsa */
};

/* Usable TLSA records of a result's hosts, in one allocation (the array
 * and every record's data): what a caller keeps past the callback. */
struct wk_route_tlsa {
    size_t n;
    struct ms_tlsa rr[]; /* data points after the array, in the same block */
};

enum wk_route_status { WK_ROUTE_OK, WK_ROUTE_BOUNCE, WK_ROUTE_DEFER };

struct wk_route_result {
    enum wk_route_status status;
    int code;                           /* BOUNCE: 550 or 556; DEFER: 0 */
    const char *dsn;                    /* BOUNCE, DEFER */
    const char *text;                   /* BOUNCE, DEFER: our diagnostic */
    int dns_failed;                     /* a lookup failed temporarily */
    size_t n;
    const struct wk_route_addr *addrs;  /* OK: n >= 1 addresses, in order */
    const struct wk_route_tlsa *tlsa;   /* DANE jobs: the records addrs point at;
                                         * NULL: none */
};

/* A copy of t for the caller to keep (free() it), or NULL for NULL. */
struct wk_route_tlsa *wk_route_tlsa_dup(const struct wk_route_tlsa *t);

typedef struct wk_router wk_router;
typedef void (*wk_route_cb)(void *arg, uint64_t id, const struct wk_route_result *res);

/* resolver may be NULL: then every name lookup defers (IP literals work). */
wk_router *wk_router_new(uv_loop_t *loop, ms_resolver *resolver);
/* Start a job for `host` (a domain or host name, or an IP literal) and
 * `port`; no_mx skips the MX lookup.  Returns the job id (> 0); the
 * callback follows exactly once, on a later loop iteration, unless the job
 * is cancelled. */
uint64_t wk_router_resolve(wk_router *r, const char *host, int port, int no_mx, wk_route_cb cb,
                           void *arg, uint64_t id);
/* The same, and the TLSA records of every host whose names and addresses
 * DNSSEC validated (see DANE above). */
uint64_t wk_router_resolve_dane(wk_router *r, const char *host, int port, int no_mx,
                                wk_route_cb cb, void *arg, uint64_t id);
/* Forget a job (unknown ids are ignored): no callback. */
void wk_router_cancel(wk_router *r, uint64_t job);
/* Jobs running. */
size_t wk_router_pending(const wk_router *r);
/* Cancel every job and free; on the loop, handles closed asynchronously. */
void wk_router_free(wk_router *r);

#endif
