/*
 * ms_route.h - where mail for a recipient domain goes: the transport map and
 * the MX rules of RFC 5321 §5.1 and RFC 7505, as pure functions.
 *
 * The worker decides a destination per recipient domain in this order
 * (docs/config.md, [transport]): a transport map entry, then the relay
 * host, then MX lookup.  This module holds the two pure halves of that
 * decision; resolving names is the caller's business (worker/route.h does
 * it on the loop through lib/io/ms_resolver.h).
 *
 *  - Transport map: lines "domain transport" (or "domain = transport");
 *    `domain` is a key of lib/mail/ms_domainmap.h: a domain name matched
 *    exactly (case-insensitively), ".domain" for every subdomain of it, or
 *    "*" for everything else (no "[host]:port" keys).  Transports:
 *        smtp:host[:port]     MX lookup on host, then its addresses
 *        smtp:[host][:port]   no MX lookup: host's own addresses (or an IP)
 *        lmtp:host[:port]     LMTP (RFC 2033), default port 24, no MX lookup
 *        lmtp:unix:/path      LMTP over a UNIX-domain socket
 *        discard[:text]       accept and drop (delivered, 250 2.0.0)
 *        error:[X.Y.Z ]text   refuse: 5.Y.Z bounces, 4.Y.Z defers
 *    Parsing never touches the network or the file system.
 *  - MX: from an MX answer, the hosts to try in order: preference ascending,
 *    equal preferences shuffled (§5.1), the null MX of RFC 7505 recognised,
 *    no MX records at all meaning the domain itself ("implicit MX").
 *
 * Errors: parsers return 0 or MS_EINVAL with a reason in err.  Any thread;
 * a map is immutable once built and may be shared by readers.
 */
#ifndef MS_ROUTE_H
#define MS_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "ms_dns.h"
#include "ms_domainmap.h"

/* Longest line of a transport map (file or inline entry). */
#define MS_TRANSPORT_LINE_MAX 1024
/* Entries in one transport map: a bigger map belongs in a real database. */
#define MS_TRANSPORT_MAP_MAX 4096
/* Longest text of an error: transport; longer is refused, not truncated. */
#define MS_TRANSPORT_TEXT_MAX 256
/* Longest UNIX socket path (sun_path is 108 octets on Linux). */
#define MS_TRANSPORT_PATH_MAX 107
/* MX hosts tried per destination; more are ignored (the log says so). */
#define MS_MX_HOSTS_MAX 16
/* MX records looked at in one answer (the resolver keeps at most 64). */
#define MS_MX_RECORDS_MAX 64
/* Enhanced status code "5.123.123" plus NUL. */
#define MS_ROUTE_DSN_MAX 11
/* Default LMTP port (RFC 2033 §5 suggests no port; Dovecot and Cyrus use 24). */
#define MS_LMTP_PORT 24

enum ms_transport_kind {
    MS_TRANSPORT_SMTP,
    MS_TRANSPORT_LMTP,
    MS_TRANSPORT_DISCARD,
    MS_TRANSPORT_ERROR,
};

struct ms_transport {
    enum ms_transport_kind kind;
    char host[MS_DNS_NAME_MAX + 1];   /* SMTP, LMTP: name or IP literal; "" for unix */
    int port;                         /* 0: the default for the kind */
    int no_mx;                        /* SMTP with [host], and always LMTP */
    char path[MS_TRANSPORT_PATH_MAX + 1]; /* lmtp:unix: */
    int code;                         /* ERROR: 550 or 450 */
    char dsn[MS_ROUTE_DSN_MAX];       /* ERROR: enhanced status code */
    char text[MS_TRANSPORT_TEXT_MAX + 1]; /* ERROR, DISCARD: the reply text */
};

/* Parse one transport ("smtp:[mx.example]:2525").  Returns 0 or MS_EINVAL. */
int ms_transport_parse(const char *s, size_t len, struct ms_transport *t, char *err,
                       size_t errlen);

/* "smtp", "lmtp", "discard", "error". */
const char *ms_transport_kind_name(enum ms_transport_kind k);

typedef struct ms_transport_map ms_transport_map;

ms_transport_map *ms_transport_map_new(void);
/* Add one line: "domain transport", "domain = transport", blank, or a
 * comment starting with '#'.  Returns 0, or MS_EINVAL (bad line) /
 * MS_ETOOBIG (MS_TRANSPORT_MAP_MAX entries) with the reason in err.  A later
 * entry for the same key replaces the earlier one. */
int ms_transport_map_add(ms_transport_map *m, const char *line, size_t len, char *err,
                         size_t errlen);
/* Entries in the map. */
size_t ms_transport_map_size(const ms_transport_map *m);
/* The transport for `domain` (ms_domainmap_lookup(): exact, then
 * ".parent" entries from the closest, then "*"), or NULL. */
const struct ms_transport *ms_transport_map_lookup(const ms_transport_map *m, const char *domain);
void ms_transport_map_free(ms_transport_map *m);

/* ---- MX ---- */

enum ms_mx_verdict {
    MS_MX_HOSTS,     /* hosts[] holds the MX hosts in the order to try */
    MS_MX_IMPLICIT,  /* no MX records: hosts[0] is the domain itself (§5.1) */
    MS_MX_NULL,      /* RFC 7505 null MX: the domain accepts no mail (5.1.10) */
    MS_MX_NXDOMAIN,  /* the domain does not exist (5.1.2) */
    MS_MX_TEMPFAIL,  /* try again later (4.4.3) */
};

struct ms_mx_host {
    char name[MS_DNS_NAME_MAX + 1];
    uint16_t preference;
};

/* Turn the MX answer for `domain` into hosts to try.  `rnd` gives uniformly
 * random 32-bit values (to shuffle equal preferences; the caller seeds it,
 * tests make it deterministic).  At most `max` hosts go into `hosts`, the
 * count into *n.  A DNSSEC-bogus answer is a temporary failure. */
enum ms_mx_verdict ms_mx_order(const struct ms_dns_result *res, const char *domain,
                               uint32_t (*rnd)(void *), void *rnd_arg, struct ms_mx_host *hosts,
                               size_t max, size_t *n);


#endif
