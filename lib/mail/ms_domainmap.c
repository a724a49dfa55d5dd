/*
 * ms_domainmap.c - a table keyed by mail domain (ms_domainmap.h).
 *
 * Entries sit in an array in the order they were added; an open-addressing
 * hash table (linear probing, at most half full) holds their index + 1.
 * Nothing is ever removed, so no tombstones are needed.
 */
#include "ms_domainmap.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Slots of a new table; it doubles whenever it would be more than half full. */
#define SLOTS_MIN 16

struct ms_domainmap {
    struct ms_domainmap_entry *e;
    size_t n, cap;
    uint32_t *slot;   /* 0: empty; otherwise an index into e, plus one */
    size_t nslots;    /* a power of two */
};

/* ---- keys ---- */

/* A name: letters, digits, '-', '_', '.' (and ':' inside brackets for IPv6
 * literals), no empty label (RFC 1035 §2.3.1). */
static int name_ok(const char *h, size_t len, int bracketed)
{
    size_t i;

    if (len == 0 || len > MS_DNS_NAME_MAX || h[0] == '.' || h[len - 1] == '.')
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || (bracketed && c == ':')) ||
            (c == '.' && h[i + 1] == '.'))
            return 0;
    }
    return 1;
}

static void lower_copy(char *out, const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[len] = '\0';
}

/* "[host]" or "[host]:port" (port 1..65535, no leading zero). */
static int nexthop_key(const char *s, size_t len, char *out, size_t outlen)
{
    const char *rb = memchr(s, ']', len), *h = s + 1, *port;
    size_t hl, pl = 0, i;
    unsigned long p = 0;

    if (rb == NULL)
        return MS_EINVAL;
    hl = (size_t)(rb - h);
    if (hl > 5 && strncasecmp(h, "ipv6:", 5) == 0) {
        h += 5;
        hl -= 5;
    }
    if (!name_ok(h, hl, 1))
        return MS_EINVAL;
    port = rb + 1;
    if (port < s + len) {
        if (*port++ != ':')
            return MS_EINVAL;
        pl = (size_t)(s + len - port);
        if (pl == 0 || pl > 5 || port[0] == '0')
            return MS_EINVAL;
        for (i = 0; i < pl; i++) {
            if (!isdigit((unsigned char)port[i]))
                return MS_EINVAL;
            p = p * 10 + (unsigned long)(port[i] - '0');
        }
        if (p > 65535)
            return MS_EINVAL;
    }
    if (hl + 2 + (pl ? pl + 1 : 0) >= outlen)
        return MS_ETOOBIG;
    out[0] = '[';
    lower_copy(out + 1, h, hl);
    out[hl + 1] = ']';
    out[hl + 2] = '\0';
    if (pl) {
        out[hl + 2] = ':';
        memcpy(out + hl + 3, port, pl);
        out[hl + 3 + pl] = '\0';
    }
    return MS_DOMAINMAP_NEXTHOP;
}

int ms_domainmap_key(const char *s, size_t len, char *out, size_t outlen)
{
    int parent;

    if (len == 1 && s[0] == '*') {
        if (outlen < 2)
            return MS_ETOOBIG;
        memcpy(out, "*", 2);
        return MS_DOMAINMAP_ANY;
    }
    if (len > 0 && s[0] == '[')
        return nexthop_key(s, len, out, outlen);
    if (len > 1 && s[len - 1] == '.')
        len--; /* an absolute name is the same domain */
    parent = len > 0 && s[0] == '.';
    if (!name_ok(s + parent, len - (size_t)parent, 0))
        return MS_EINVAL;
    if (len >= outlen)
        return MS_ETOOBIG;
    lower_copy(out, s, len);
    return parent ? MS_DOMAINMAP_PARENT : MS_DOMAINMAP_EXACT;
}

/* ---- the table ---- */

/* FNV-1a, 32 bits: keys are short and already lower-case. */
static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* The slot holding key, or the empty slot where it would go. */
static size_t probe(const ms_domainmap *m, const char *key)
{
    size_t mask = m->nslots - 1, i = hash(key) & mask;

    while (m->slot[i] != 0 && strcmp(m->e[m->slot[i] - 1].key, key) != 0)
        i = (i + 1) & mask;
    return i;
}

static void grow(ms_domainmap *m)
{
    size_t i;

    free(m->slot);
    m->nslots = m->nslots ? m->nslots * 2 : SLOTS_MIN;
    m->slot = ms_calloc(m->nslots, sizeof(*m->slot));
    for (i = 0; i < m->n; i++)
        m->slot[probe(m, m->e[i].key)] = (uint32_t)(i + 1);
}

ms_domainmap *ms_domainmap_new(void)
{
    ms_domainmap *m = ms_calloc(1, sizeof(*m));

    grow(m);
    return m;
}

void ms_domainmap_free(ms_domainmap *m)
{
    size_t i;

    if (m == NULL)
        return;
    for (i = 0; i < m->n; i++)
        free((char *)m->e[i].key);
    free(m->e);
    free(m->slot);
    free(m);
}

int ms_domainmap_put(ms_domainmap *m, const char *key, size_t len, void *value, void **old)
{
    char k[MS_DOMAINMAP_KEY_MAX + 1];
    int kind = ms_domainmap_key(key, len, k, sizeof(k));
    size_t s;

    if (kind < 0)
        return kind;
    if (old)
        *old = NULL;
    s = probe(m, k);
    if (m->slot[s] != 0) {
        struct ms_domainmap_entry *e = &m->e[m->slot[s] - 1];
        if (old)
            *old = e->value;
        e->value = value;
        return kind;
    }
    if (m->n == UINT32_MAX - 1)
        return MS_ETOOBIG;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->e = ms_realloc(m->e, m->cap * sizeof(*m->e));
    }
    m->e[m->n].key = ms_strdup(k);
    m->e[m->n].value = value;
    m->n++;
    if (m->n * 2 > m->nslots)
        grow(m);
    else
        m->slot[s] = (uint32_t)m->n;
    return kind;
}

static const struct ms_domainmap_entry *find(const ms_domainmap *m, const char *key)
{
    size_t s = probe(m, key);

    return m->slot[s] ? &m->e[m->slot[s] - 1] : NULL;
}

const struct ms_domainmap_entry *ms_domainmap_get(const ms_domainmap *m, const char *key)
{
    char k[MS_DOMAINMAP_KEY_MAX + 1];

    if (m == NULL || ms_domainmap_key(key, strlen(key), k, sizeof(k)) < 0)
        return NULL;
    return find(m, k);
}

/* domain, lower-cased and without a trailing dot, into key (MS_DNS_NAME_MAX
 * + 1 octets); -1 when it is too long to be a name. */
static int lookup_name(const char *domain, char *key)
{
    size_t len = strlen(domain);

    if (len > MS_DNS_NAME_MAX)
        return -1;
    if (len > 0 && domain[len - 1] == '.')
        len--;
    lower_copy(key, domain, len);
    return 0;
}

/* The candidate keys for a normalised name, in the order they are tried:
 * the name, each ".parent" from the closest, then "*".  *state starts at
 * NULL; NULL when there are no more.  An empty name, or one in brackets
 * (a next-hop key is never a domain's), is no candidate itself. */
static const char any_key[] = "*";

static const char *next_candidate(const char *name, const char **state)
{
    const char *p = *state;

    if (p == NULL && name[0] != '\0' && name[0] != '[')
        return *state = name;
    if (p == NULL)
        p = *state = name;
    if (p == any_key)
        return NULL;
    if (p[0] != '\0' && (p = strchr(p + 1, '.')) != NULL && p[1] != '\0')
        return *state = p;
    return *state = any_key;
}

const struct ms_domainmap_entry *ms_domainmap_lookup(const ms_domainmap *m, const char *domain)
{
    char name[MS_DNS_NAME_MAX + 1];
    const struct ms_domainmap_entry *e;
    const char *c, *st = NULL;

    if (m == NULL || m->n == 0 || lookup_name(domain, name) < 0)
        return NULL;
    while ((c = next_candidate(name, &st)) != NULL)
        if ((e = find(m, c)) != NULL)
            return e;
    return NULL;
}

size_t ms_domainmap_size(const ms_domainmap *m)
{
    return m ? m->n : 0;
}

const struct ms_domainmap_entry *ms_domainmap_at(const ms_domainmap *m, size_t i)
{
    return i < m->n ? &m->e[i] : NULL;
}

int ms_domain_match(const char *const *keys, size_t n, const char *domain)
{
    char name[MS_DNS_NAME_MAX + 1];
    const char *c, *st = NULL;
    size_t i;

    if (lookup_name(domain, name) < 0)
        return -1;
    while ((c = next_candidate(name, &st)) != NULL)
        for (i = 0; i < n; i++)
            if (strcmp(keys[i], c) == 0)
                return (int)i;
    return -1;
}
