/*
 * tls_policy.h - which TLS an outbound connection must have: the worker's
 * per-destination policy map ([tls] policy_map and the default [tls]
 * policy, docs/config.md), with the levels and meanings of Postfix's
 * smtp_tls_policy_maps, and the decision for one connection from its map
 * entry, the server's name, the next hop and what DNSSEC said about the
 * server's TLSA records (DANE, RFC 7672).
 *
 * Levels (Postfix TLS_README, "TLS security levels"):
 *   none       no STARTTLS
 *   may        STARTTLS when offered, certificate not checked; a failed
 *              handshake falls back to plaintext (RFC 7435)
 *   encrypt    STARTTLS required, certificate not checked
 *   dane       DANE when the MX and its TLSA records are DNSSEC-validated
 *              (then as dane-only); TLSA records none of which is usable:
 *              encrypt (RFC 7672 §2.2); no validated TLSA records: may;
 *              a TLSA lookup that failed or was bogus: defer (§2.2.3)
 *   dane-only  DANE required: no usable, validated TLSA records: defer
 *   verify     STARTTLS required, the chain to the CAs and a match= name
 *              (default "hostname": the name connected to)
 *   secure     as verify, default names "nexthop" and "dot-nexthop": the
 *              MX host name from insecure DNS is not trusted
 * match= names (':' separated): "hostname" (the server's name), "nexthop"
 * (the recipient domain, or the relay or transport host), "dot-nexthop"
 * (every name below it), or a literal name (".example.org": every name
 * below example.org).
 *
 * An entry is written "LEVEL [match=NAME:NAME...] [ca_file=PATH]" after
 * its key; keys are ms_domainmap keys (a domain, ".parent", "*", or a next
 * hop "[host]:port"), so a next hop given by the transport map or the
 * relay host is matched by its "[host]:port" key before the recipient
 * domain is looked up.
 *
 * Ownership: the map owns its entries and their strings; a TLS context an
 * entry holds (its ca_file's) is the map's reference, dropped by
 * wk_tls_map_free().  Threads: built at start-up by one thread, then read
 * only.  Errors: MS_EINVAL with the reason in err.
 */
#ifndef WK_TLS_POLICY_H
#define WK_TLS_POLICY_H

#include <stddef.h>

#include "ms_conn.h"
#include "ms_dns.h"
#include "route.h"
#include "smtp_client.h"

enum wk_tls_level {
    WK_TLS_LEVEL_NONE,
    WK_TLS_LEVEL_MAY,
    WK_TLS_LEVEL_ENCRYPT,
    WK_TLS_LEVEL_DANE,
    WK_TLS_LEVEL_DANE_ONLY,
    WK_TLS_LEVEL_VERIFY,
    WK_TLS_LEVEL_SECURE,
};
#define WK_TLS_LEVELS_N 7

/* Longest ca_file path an entry takes. */
#define WK_TLS_PATH_MAX 4096

struct wk_tls_entry {
    enum wk_tls_level level;
    char *match[MS_TLS_MATCH_MAX]; /* as written; nmatch 0: the level's default */
    size_t nmatch;
    char *ca_file;                 /* NULL: [tls] ca_file */
    struct ms_tls_ctx *ctx;        /* ca_file's client context (the loader's); NULL:
                                    * the default one */
};

/* "none" ... "secure" (len octets) -> the level, or -1. */
int wk_tls_level_parse(const char *s, size_t len);
const char *wk_tls_level_name(enum wk_tls_level l);

/* Parse "LEVEL [match=...] [ca_file=...]" into e (which then owns copies;
 * free with wk_tls_entry_clear).  Pure.  0 or MS_EINVAL (err says why): an
 * unknown level or attribute, an empty or over-long name, more than
 * MS_TLS_MATCH_MAX names, match= on a level other than verify and secure
 * (the others check no name, or DANE's, RFC 7672 §3.2.2), a repeated
 * attribute. */
int wk_tls_entry_parse(const char *s, struct wk_tls_entry *e, char *err, size_t errlen);
void wk_tls_entry_clear(struct wk_tls_entry *e);

typedef struct wk_tls_map wk_tls_map;

/* A map whose unlisted destinations get `def` ("LEVEL [attributes]"):
 * NULL and MS_EINVAL's reason in err when def does not parse. */
wk_tls_map *wk_tls_map_new(const char *def, char *err, size_t errlen);
/* Add "KEY LEVEL [attributes]" (KEY and LEVEL separated by blanks or
 * '=').  0, or MS_EINVAL with the map unchanged; a key already there is
 * an error (a map says one thing per destination). */
int wk_tls_map_add(wk_tls_map *m, const char *item, char *err, size_t errlen);
void wk_tls_map_free(wk_tls_map *m);

/* The entry for a connection: the next hop's "[host]:port" key when
 * nexthop_key is not NULL (transport map or relay host), then "[host]"
 * (any port), else the
 * recipient domain by ms_domainmap_lookup's rules, else the default.
 * Never NULL. */
const struct wk_tls_entry *wk_tls_map_find(const wk_tls_map *m, const char *domain,
                                           const char *nexthop_key);
/* The default, and the listed entries in the order added, for the loader
 * (which makes each ca_file's context) and for tls-check. */
const struct wk_tls_entry *wk_tls_map_default(const wk_tls_map *m);
struct wk_tls_entry *wk_tls_map_entry(wk_tls_map *m, size_t i, const char **key);
size_t wk_tls_map_size(const wk_tls_map *m);
/* 1 when some level may use DANE (so the router looks TLSA records up). */
int wk_tls_map_wants_dane(const wk_tls_map *m);

/* The decision for one connection. */
struct wk_tls_decision {
    enum wk_tls_level level;        /* the entry's */
    enum wk_tls_policy tls;         /* what the SMTP client enforces */
    int dane;                       /* hand it the TLSA records */
    const char *defer;              /* not NULL: connect to nothing, defer with
                                     * 4.7.5 and this reason */
    const char *match[MS_TLS_MATCH_MAX + 1]; /* names instead of the host */
    size_t nmatch;
    char dot_nexthop[MS_DNS_NAME_MAX + 2];   /* storage for "dot-nexthop" */
};

/* Decide for a server `host` (a name or IP literal) reached for `nexthop`
 * (the recipient domain, or the relay or transport host) under entry e,
 * given the state of its TLSA records.  Pure.  out's names point into e,
 * host, nexthop and out itself. */
void wk_tls_decide(const struct wk_tls_entry *e, const char *host, const char *nexthop,
                   enum wk_dane_state dane, struct wk_tls_decision *out);

#endif
