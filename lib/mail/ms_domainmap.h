/*
 * ms_domainmap.h - a table keyed by mail domain: the one map behind the
 * worker's transport map (ms_route.h), the frontend's accepted domains
 * (frontend/fe_settings.h) and, later, a TLS policy map.
 *
 * Keys, written as in the configuration and stored normalised (ASCII
 * lower case, a trailing dot dropped: an absolute name is the same domain):
 *    example.org      that domain only (MS_DOMAINMAP_EXACT)
 *    .example.org     every name below example.org, not example.org itself
 *                     (MS_DOMAINMAP_PARENT)
 *    *                every domain no other key matches (MS_DOMAINMAP_ANY)
 *    [host]:port      a next hop, matched only by ms_domainmap_get() with
 *    [host]           the same key, never by a domain (MS_DOMAINMAP_NEXTHOP);
 *                     host is a name or an IP literal (an "IPv6:" tag,
 *                     RFC 5321 §4.1.3, is dropped)
 * A domain is looked up as Postfix looks up a transport(5) table when
 * parent_domain_matches_subdomains does not name it: the exact name first,
 * then ".parent" keys from the closest parent to the top-level domain,
 * then "*".  So "example.org" does not cover "mx.example.org"; a table that
 * wants both lists both.  Each caller decides which kinds it takes (the
 * frontend refuses "*" and next hops in accepted_domains: accepting mail
 * for every domain would make an open relay).
 *
 * Names are checked, not resolved: letters, digits, '-', '_' and '.', no
 * empty label at either end, at most MS_DNS_NAME_MAX octets (and ':' inside
 * brackets).  Internationalised names come as A-labels.
 *
 * Lookups hash the candidate keys (at most one per label plus two), so a
 * lookup costs the same for ten entries as for ten thousand.
 *
 * Ownership: the map copies keys and owns them; it stores values and never
 * frees them (the caller walks the entries with ms_domainmap_at() first).
 * Threads: no lock; a map is built by one thread and, once built, may be
 * read by any number.  Errors: MS_EINVAL for a key that is not one of the
 * forms above, MS_ETOOBIG when a key does not fit; allocation failure
 * aborts (ms_mem.h).
 */
#ifndef MS_DOMAINMAP_H
#define MS_DOMAINMAP_H

#include <stddef.h>

#include "ms_dns.h"

/* Longest normalised key: "[" name "]:65535", or "." name. */
#define MS_DOMAINMAP_KEY_MAX (MS_DNS_NAME_MAX + 8)

enum ms_domainmap_kind {
    MS_DOMAINMAP_EXACT,
    MS_DOMAINMAP_PARENT,
    MS_DOMAINMAP_ANY,
    MS_DOMAINMAP_NEXTHOP,
};

struct ms_domainmap_entry {
    const char *key;   /* normalised */
    void *value;       /* as given; may be NULL */
};

typedef struct ms_domainmap ms_domainmap;

/* Check the key s (len octets, no surrounding blanks) and write its
 * normalised form into out (MS_DOMAINMAP_KEY_MAX + 1 octets always do).
 * Returns its kind (>= 0), MS_EINVAL or MS_ETOOBIG. */
int ms_domainmap_key(const char *s, size_t len, char *out, size_t outlen);

ms_domainmap *ms_domainmap_new(void);
/* Frees the map and its keys, not the values. */
void ms_domainmap_free(ms_domainmap *m);

/* Add key (any spelling ms_domainmap_key() takes) with value.  A key that
 * is there already keeps its place and gets the new value; *old (if old is
 * not NULL) receives the value it had, or NULL for a new key.  Returns the
 * key's kind (>= 0), or MS_EINVAL / MS_ETOOBIG with the map unchanged. */
int ms_domainmap_put(ms_domainmap *m, const char *key, size_t len, void *value, void **old);

/* The entry for `domain` by the rules above (exact, closest ".parent",
 * "*"), or NULL.  domain is a name, any case, with or without a trailing
 * dot; a string that is no domain name (too long, empty) matches only "*"
 * when it is no longer than MS_DNS_NAME_MAX, nothing otherwise. */
const struct ms_domainmap_entry *ms_domainmap_lookup(const ms_domainmap *m, const char *domain);

/* The entry whose key is exactly `key` (normalised first), or NULL: for
 * next-hop keys, and for callers that want no parent or "*" match. */
const struct ms_domainmap_entry *ms_domainmap_get(const ms_domainmap *m, const char *key);

/* Entries in the map; entry i (0 <= i < size) in the order keys were
 * first added. */
size_t ms_domainmap_size(const ms_domainmap *m);
const struct ms_domainmap_entry *ms_domainmap_at(const ms_domainmap *m, size_t i);

/* The same rules over n normalised keys in an array, for a table too small
 * for a map (the worker's per-domain TLS settings): the index of the key
 * that applies to `domain`, or -1. */
int ms_domain_match(const char *const *keys, size_t n, const char *domain);

#endif
