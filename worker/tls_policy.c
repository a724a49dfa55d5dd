/*
 * tls_policy.c - the outbound TLS policy map and the decision per
 * connection (tls_policy.h).
 */
#include "tls_policy.h"
#include "ms_domainmap.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct wk_tls_map {
    struct wk_tls_entry def;
    ms_domainmap *map; /* key -> struct wk_tls_entry * */
};

static const char *const level_names[] = {"none", "may", "encrypt", "dane",
                                          "dane-only", "verify", "secure"};
#define NLEVELS (sizeof(level_names) / sizeof(level_names[0]))

int wk_tls_level_parse(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < NLEVELS; i++)
        if (strlen(level_names[i]) == len && memcmp(s, level_names[i], len) == 0)
            return (int)i;
    return -1;
}

const char *wk_tls_level_name(enum wk_tls_level l)
{
    return (unsigned)l < NLEVELS ? level_names[l] : "none";
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return MS_EINVAL;
}

void wk_tls_entry_clear(struct wk_tls_entry *e)
{
    size_t i;

    for (i = 0; i < e->nmatch; i++)
        free(e->match[i]);
    free(e->ca_file);
    ms_tls_ctx_free(e->ctx);
    memset(e, 0, sizeof(*e));
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* match=a:b:c into e->match. */
static int parse_match(const char *v, size_t len, struct wk_tls_entry *e, char *err,
                       size_t errlen)
{
    const char *end = v + len, *p = v, *q;

    if (len == 0)
        return fail(err, errlen, "match= names nothing");
    while (p <= end) {
        q = memchr(p, ':', (size_t)(end - p));
        if (q == NULL)
            q = end;
        if (q == p || (size_t)(q - p) > MS_TLS_HOST_MAX)
            return fail(err, errlen, "match= has an empty or over-long name");
        if (e->nmatch == MS_TLS_MATCH_MAX)
            return fail(err, errlen, "match= has more than %d names", MS_TLS_MATCH_MAX);
        e->match[e->nmatch++] = ms_strndup(p, (size_t)(q - p));
        p = q + 1;
    }
    return 0;
}

int wk_tls_entry_parse(const char *s, struct wk_tls_entry *e, char *err, size_t errlen)
{
    const char *p = s, *w, *eq;
    size_t n;
    int lv, r;

    memset(e, 0, sizeof(*e));
    p += strspn(p, " \t");
    for (w = p; *p && !is_blank(*p); p++)
        ;
    if ((lv = wk_tls_level_parse(w, (size_t)(p - w))) < 0)
        return fail(err, errlen, "unknown level \"%.*s\" (want none, may, encrypt, dane, "
                    "dane-only, verify or secure)", (int)(p - w > 32 ? 32 : p - w), w);
    e->level = (enum wk_tls_level)lv;
    for (;;) {
        p += strspn(p, " \t");
        if (*p == '\0')
            return 0;
        for (w = p; *p && !is_blank(*p); p++)
            ;
        n = (size_t)(p - w);
        eq = memchr(w, '=', n);
        if (eq && eq - w == 5 && memcmp(w, "match", 5) == 0) {
            if (e->level != WK_TLS_LEVEL_VERIFY && e->level != WK_TLS_LEVEL_SECURE) {
                r = fail(err, errlen, "match= is for verify and secure only");
                goto bad;
            }
            if (e->nmatch) {
                r = fail(err, errlen, "match= given twice");
                goto bad;
            }
            if ((r = parse_match(eq + 1, n - 6, e, err, errlen)) < 0)
                goto bad;
        } else if (eq && eq - w == 7 && memcmp(w, "ca_file", 7) == 0) {
            if (e->ca_file) {
                r = fail(err, errlen, "ca_file= given twice");
                goto bad;
            }
            if (n == 8 || n - 8 > WK_TLS_PATH_MAX) {
                r = fail(err, errlen, "ca_file= is empty or too long");
                goto bad;
            }
            e->ca_file = ms_strndup(eq + 1, n - 8);
        } else {
            r = fail(err, errlen, "unknown attribute \"%.*s\"", (int)(n > 32 ? 32 : n), w);
            goto bad;
        }
    }
bad:
    wk_tls_entry_clear(e);
    return r;
}

wk_tls_map *wk_tls_map_new(const char *def, char *err, size_t errlen)
{
    wk_tls_map *m = ms_calloc(1, sizeof(*m));

    if (wk_tls_entry_parse(def, &m->def, err, errlen) < 0) {
        free(m);
        return NULL;
    }
    m->map = ms_domainmap_new();
    return m;
}

int wk_tls_map_add(wk_tls_map *m, const char *item, char *err, size_t errlen)
{
    const char *p = item + strspn(item, " \t"), *k = p;
    char key[MS_DOMAINMAP_KEY_MAX + 1];
    struct wk_tls_entry *e;
    size_t klen;
    int r;

    /* The key ends at a blank or at '=' (the older "domain=level"
     * spelling); a next hop's brackets and port never hold either. */
    klen = strcspn(k, " \t=");
    p = k + klen;
    if (*p == '=')
        p++;
    if (klen == 0 || *p == '\0')
        return fail(err, errlen, "want \"KEY LEVEL [match=...] [ca_file=...]\"");
    if (ms_domainmap_key(k, klen, key, sizeof(key)) < 0)
        return fail(err, errlen, "\"%.*s\" is no domain, .parent, * or [host]:port",
                    (int)(klen > 64 ? 64 : klen), k);
    if (ms_domainmap_get(m->map, key) != NULL)
        return fail(err, errlen, "%s is listed twice", key);
    e = ms_calloc(1, sizeof(*e));
    if ((r = wk_tls_entry_parse(p, e, err, errlen)) < 0) {
        free(e);
        return r;
    }
    if (ms_domainmap_put(m->map, key, strlen(key), e, NULL) < 0) { /* checked above */
        wk_tls_entry_clear(e);
        free(e);
        return fail(err, errlen, "%s: bad key", key);
    }
    return 0;
}

void wk_tls_map_free(wk_tls_map *m)
{
    size_t i;

    if (m == NULL)
        return;
    for (i = 0; i < ms_domainmap_size(m->map); i++) {
        struct wk_tls_entry *e = ms_domainmap_at(m->map, i)->value;
        wk_tls_entry_clear(e);
        free(e);
    }
    ms_domainmap_free(m->map);
    wk_tls_entry_clear(&m->def);
    free(m);
}

const struct wk_tls_entry *wk_tls_map_find(const wk_tls_map *m, const char *domain,
                                           const char *nexthop_key)
{
    const struct ms_domainmap_entry *me = NULL;

    const char *rb;

    if (nexthop_key) {
        me = ms_domainmap_get(m->map, nexthop_key);
        /* "[host]:port" not listed: "[host]" stands for every port. */
        if (me == NULL && (rb = strrchr(nexthop_key, ']')) != NULL && rb[1] == ':') {
            char k[MS_DOMAINMAP_KEY_MAX + 1];
            size_t n = (size_t)(rb - nexthop_key) + 1;
            if (n < sizeof(k)) {
                memcpy(k, nexthop_key, n);
                k[n] = '\0';
                me = ms_domainmap_get(m->map, k);
            }
        }
    }
    if (me == NULL && domain)
        me = ms_domainmap_lookup(m->map, domain);
    return me ? me->value : &m->def;
}

const struct wk_tls_entry *wk_tls_map_default(const wk_tls_map *m)
{
    return &m->def;
}

struct wk_tls_entry *wk_tls_map_entry(wk_tls_map *m, size_t i, const char **key)
{
    const struct ms_domainmap_entry *me = ms_domainmap_at(m->map, i);

    if (key)
        *key = me->key;
    return me->value;
}

size_t wk_tls_map_size(const wk_tls_map *m)
{
    return ms_domainmap_size(m->map);
}

int wk_tls_map_wants_dane(const wk_tls_map *m)
{
    size_t i;

    if (m->def.level == WK_TLS_LEVEL_DANE || m->def.level == WK_TLS_LEVEL_DANE_ONLY)
        return 1;
    for (i = 0; i < ms_domainmap_size(m->map); i++) {
        const struct wk_tls_entry *e = ms_domainmap_at(m->map, i)->value;
        if (e->level == WK_TLS_LEVEL_DANE || e->level == WK_TLS_LEVEL_DANE_ONLY)
            return 1;
    }
    return 0;
}

/* The match= names of verify and secure, expanded. */
static void expand_match(const struct wk_tls_entry *e, const char *host, const char *nexthop,
                         struct wk_tls_decision *out)
{
    static const char *const verify_def[] = {"hostname"};
    static const char *const secure_def[] = {"nexthop", "dot-nexthop"};
    const char *const *names = (const char *const *)e->match;
    size_t n = e->nmatch, i;

    if (n == 0) {
        names = e->level == WK_TLS_LEVEL_SECURE ? secure_def : verify_def;
        n = e->level == WK_TLS_LEVEL_SECURE ? 2 : 1;
    }
    /* Only the server's own name: the transport checks it as the host, IP
     * literals included (RFC 6125 §1.7.2), with no list. */
    if (n == 1 && strcmp(names[0], "hostname") == 0)
        return;
    for (i = 0; i < n; i++) {
        const char *v = names[i];
        if (strcmp(v, "hostname") == 0)
            v = host;
        else if (strcmp(v, "nexthop") == 0)
            v = nexthop;
        else if (strcmp(v, "dot-nexthop") == 0) {
            snprintf(out->dot_nexthop, sizeof(out->dot_nexthop), ".%s", nexthop);
            v = out->dot_nexthop;
        }
        if (v && *v && out->nmatch < MS_TLS_MATCH_MAX)
            out->match[out->nmatch++] = v;
    }
}

void wk_tls_decide(const struct wk_tls_entry *e, const char *host, const char *nexthop,
                   enum wk_dane_state dane, struct wk_tls_decision *out)
{
    memset(out, 0, sizeof(*out));
    out->level = e->level;
    switch (e->level) {
    case WK_TLS_LEVEL_NONE:
        out->tls = WK_TLS_NONE;
        return;
    case WK_TLS_LEVEL_MAY:
        out->tls = WK_TLS_MAY;
        return;
    case WK_TLS_LEVEL_ENCRYPT:
        out->tls = WK_TLS_ENCRYPT;
        return;
    case WK_TLS_LEVEL_DANE:
    case WK_TLS_LEVEL_DANE_ONLY:
        switch (dane) {
        case WK_DANE_USABLE:
            /* RFC 7672 §3.2.2: DANE-TA(2) checks the TLSA base domain (the
             * transport's host) or the next-hop domain. */
            out->tls = WK_TLS_VERIFY;
            out->dane = 1;
            if (nexthop && *nexthop && strcasecmp(nexthop, host) != 0)
                out->match[out->nmatch++] = nexthop;
            return;
        case WK_DANE_FAILED:
            /* §2.2.3: a TLSA answer that failed or is bogus may hide
             * records an attacker removed: never downgrade. */
            out->tls = WK_TLS_VERIFY;
            out->defer = "TLSA lookup failed or not DNSSEC-valid";
            return;
        case WK_DANE_UNUSABLE:
            /* §2.2: records exist but none can be used: TLS is still
             * mandatory, unauthenticated.  dane-only wants authentication. */
            out->tls = WK_TLS_ENCRYPT;
            if (e->level == WK_TLS_LEVEL_DANE_ONLY)
                out->defer = "no usable TLSA records";
            return;
        case WK_DANE_NONE:
            out->tls = WK_TLS_MAY;
            if (e->level == WK_TLS_LEVEL_DANE_ONLY) {
                out->tls = WK_TLS_VERIFY;
                out->defer = "no DNSSEC-validated TLSA records";
            }
            return;
        }
        return;
    case WK_TLS_LEVEL_VERIFY:
    case WK_TLS_LEVEL_SECURE:
        out->tls = WK_TLS_VERIFY;
        expand_match(e, host, nexthop, out);
        return;
    }
}
