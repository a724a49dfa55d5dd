/*
 * ms_route.c - transport map and MX ordering (ms_route.h).
 */
#include "ms_route.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Keys and lookup order are the domain map's (ms_domainmap.h); each value
 * is an ms_transport of our own. */
struct ms_transport_map {
    ms_domainmap *dm;
};

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *ms_transport_kind_name(enum ms_transport_kind k)
{
    switch (k) {
    case MS_TRANSPORT_SMTP: return "smtp";
    case MS_TRANSPORT_LMTP: return "lmtp";
    case MS_TRANSPORT_DISCARD: return "discard";
    case MS_TRANSPORT_ERROR: return "error";
    }
    return "unknown";
}

/* A host name or IP literal: letters, digits, '-', '.', '_' and (inside
 * brackets only) ':'.  No empty labels at the ends. */
static int host_ok(const char *h, size_t len, int bracketed)
{
    size_t i;

    if (len == 0 || len > MS_DNS_NAME_MAX)
        return 0;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || (bracketed && c == ':')))
            return 0;
    }
    return 1;
}

static int parse_port(const char *s, size_t len, int *port)
{
    int p = 0;
    size_t i;

    if (len == 0 || len > 5)
        return -1;
    for (i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        p = p * 10 + (s[i] - '0');
    }
    if (p < 1 || p > 65535)
        return -1;
    *port = p;
    return 0;
}

/* "host", "host:port", "[host]", "[host]:port" (the brackets may hold an IPv6
 * literal, with an optional "IPv6:" tag as in RFC 5321 §4.1.3). */
static int parse_nexthop(const char *s, size_t len, struct ms_transport *t, char *err,
                         size_t errlen)
{
    const char *h = s, *end = s + len, *colon;
    size_t hl;

    if (len > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (rb == NULL)
            return fail(err, errlen, MS_EINVAL, "missing ']'");
        h = s + 1;
        hl = (size_t)(rb - h);
        if (hl > 5 && strncasecmp(h, "ipv6:", 5) == 0) {
            h += 5;
            hl -= 5;
        }
        t->no_mx = 1;
        if (rb + 1 < end) {
            if (rb[1] != ':' || parse_port(rb + 2, (size_t)(end - rb - 2), &t->port) < 0)
                return fail(err, errlen, MS_EINVAL, "bad port");
        }
        if (!host_ok(h, hl, 1))
            return fail(err, errlen, MS_EINVAL, "bad host");
    } else {
        colon = memchr(s, ':', len);
        hl = colon ? (size_t)(colon - s) : len;
        if (colon && parse_port(colon + 1, (size_t)(end - colon - 1), &t->port) < 0)
            return fail(err, errlen, MS_EINVAL, "bad port");
        if (!host_ok(h, hl, 0))
            return fail(err, errlen, MS_EINVAL, "bad host");
    }
    memcpy(t->host, h, hl);
    t->host[hl] = '\0';
    return 0;
}

/* Copy reply text: printable ASCII only, so it can go into an SMTP reply. */
static int copy_text(char *out, const char *s, size_t len, char *err, size_t errlen)
{
    size_t i;

    if (len > MS_TRANSPORT_TEXT_MAX)
        return fail(err, errlen, MS_EINVAL, "text longer than %d", MS_TRANSPORT_TEXT_MAX);
    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return fail(err, errlen, MS_EINVAL, "text with control or non-ASCII octets");
    memcpy(out, s, len);
    out[len] = '\0';
    return 0;
}

/* "X.Y.Z" with X 4 or 5, Y and Z 1-3 digits (RFC 3463 §2): its length, or 0. */
static size_t dsn_len(const char *s, size_t len)
{
    size_t i = 0, part, digits;

    if (len < 5 || (s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    i = 2;
    for (part = 0; part < 2; part++) {
        for (digits = 0; i < len && isdigit((unsigned char)s[i]) && digits < 3; i++)
            digits++;
        if (digits == 0)
            return 0;
        if (part == 0) {
            if (i >= len || s[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < len && s[i] != ' ')
        return 0;
    return i;
}

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

int ms_transport_parse(const char *s, size_t len, struct ms_transport *t, char *err,
                       size_t errlen)
{
    const char *colon;
    size_t kl, rl, dl;
    const char *rest;

    memset(t, 0, sizeof(*t));
    trim(&s, &len);
    colon = memchr(s, ':', len);
    kl = colon ? (size_t)(colon - s) : len;
    rest = colon ? colon + 1 : s + len;
    rl = (size_t)(s + len - rest);
    if (kl == 4 && strncasecmp(s, "smtp", 4) == 0) {
        t->kind = MS_TRANSPORT_SMTP;
        if (rl == 0)
            return fail(err, errlen, MS_EINVAL, "smtp: needs a next hop");
        return parse_nexthop(rest, rl, t, err, errlen);
    }
    if (kl == 4 && strncasecmp(s, "lmtp", 4) == 0) {
        t->kind = MS_TRANSPORT_LMTP;
        t->no_mx = 1;
        if (rl > 5 && strncasecmp(rest, "unix:", 5) == 0) {
            if (rl - 5 > MS_TRANSPORT_PATH_MAX || rest[5] != '/')
                return fail(err, errlen, MS_EINVAL, "lmtp:unix: needs an absolute path of at "
                            "most %d octets", MS_TRANSPORT_PATH_MAX);
            memcpy(t->path, rest + 5, rl - 5);
            t->path[rl - 5] = '\0';
            return 0;
        }
        if (rl == 0)
            return fail(err, errlen, MS_EINVAL, "lmtp: needs a next hop");
        if (parse_nexthop(rest, rl, t, err, errlen) < 0)
            return MS_EINVAL;
        t->no_mx = 1;
        return 0;
    }
    if (kl == 7 && strncasecmp(s, "discard", 7) == 0) {
        t->kind = MS_TRANSPORT_DISCARD;
        trim(&rest, &rl);
        if (rl == 0) {
            snprintf(t->text, sizeof(t->text), "discarded by the transport map");
            return 0;
        }
        return copy_text(t->text, rest, rl, err, errlen);
    }
    if (kl == 5 && strncasecmp(s, "error", 5) == 0) {
        t->kind = MS_TRANSPORT_ERROR;
        trim(&rest, &rl);
        if ((dl = dsn_len(rest, rl)) > 0) {
            memcpy(t->dsn, rest, dl);
            t->dsn[dl] = '\0';
            rest += dl;
            rl -= dl;
            trim(&rest, &rl);
        } else {
            snprintf(t->dsn, sizeof(t->dsn), "5.0.0");
        }
        t->code = t->dsn[0] == '4' ? 450 : 550;
        if (rl == 0) {
            snprintf(t->text, sizeof(t->text), "delivery refused by the transport map");
            return 0;
        }
        return copy_text(t->text, rest, rl, err, errlen);
    }
    return fail(err, errlen, MS_EINVAL, "unknown transport \"%.*s\"", (int)(kl > 20 ? 20 : kl),
                s);
}

/* ---- the map ---- */

ms_transport_map *ms_transport_map_new(void)
{
    ms_transport_map *m = ms_calloc(1, sizeof(*m));

    m->dm = ms_domainmap_new();
    return m;
}

size_t ms_transport_map_size(const ms_transport_map *m)
{
    return ms_domainmap_size(m->dm);
}

int ms_transport_map_add(ms_transport_map *m, const char *line, size_t len, char *err,
                         size_t errlen)
{
    struct ms_transport t, *val;
    const char *k, *v;
    size_t kl, vl;
    char key[MS_DOMAINMAP_KEY_MAX + 1];
    void *old;
    int kind;

    if (len > MS_TRANSPORT_LINE_MAX)
        return fail(err, errlen, MS_EINVAL, "line longer than %d", MS_TRANSPORT_LINE_MAX);
    trim(&line, &len);
    if (len == 0 || line[0] == '#')
        return 0;
    k = line;
    for (kl = 0; kl < len && !isspace((unsigned char)k[kl]) && k[kl] != '='; kl++)
        ;
    v = k + kl;
    vl = len - kl;
    trim(&v, &vl);
    if (vl > 0 && v[0] == '=') {
        v++;
        vl--;
        trim(&v, &vl);
    }
    if (kl == 0 || vl == 0)
        return fail(err, errlen, MS_EINVAL, "want \"domain transport\"");
    /* A domain, ".parent" or "*": a next hop ("[host]:port") is no key of
     * a map looked up by recipient domain. */
    kind = ms_domainmap_key(k, kl, key, sizeof(key));
    if (kind < 0 || kind == MS_DOMAINMAP_NEXTHOP)
        return fail(err, errlen, MS_EINVAL, "bad domain \"%.*s\"", (int)(kl > 64 ? 64 : kl), k);
    if (ms_transport_parse(v, vl, &t, err, errlen) < 0)
        return MS_EINVAL;
    if (ms_domainmap_get(m->dm, key) == NULL &&
        ms_domainmap_size(m->dm) >= MS_TRANSPORT_MAP_MAX)
        return fail(err, errlen, MS_ETOOBIG, "more than %d entries", MS_TRANSPORT_MAP_MAX);
    val = ms_malloc(sizeof(*val));
    *val = t;
    /* A later entry for the same key replaces the earlier one. */
    if (ms_domainmap_put(m->dm, key, strlen(key), val, &old) < 0)
        ms_panic("ms_transport_map_add: normalised key \"%s\" refused", key);
    free(old);
    return 0;
}

const struct ms_transport *ms_transport_map_lookup(const ms_transport_map *m, const char *domain)
{
    const struct ms_domainmap_entry *e;

    if (m == NULL || (e = ms_domainmap_lookup(m->dm, domain)) == NULL)
        return NULL;
    return e->value;
}

void ms_transport_map_free(ms_transport_map *m)
{
    size_t i;

    if (m == NULL)
        return;
    for (i = 0; i < ms_domainmap_size(m->dm); i++)
        free(ms_domainmap_at(m->dm, i)->value);
    ms_domainmap_free(m->dm);
    free(m);
}

/* ---- MX ---- */

enum ms_mx_verdict ms_mx_order(const struct ms_dns_result *res, const char *domain,
                               uint32_t (*rnd)(void *), void *rnd_arg, struct ms_mx_host *hosts,
                               size_t max, size_t *n)
{
    struct ms_mx_host all[MS_MX_RECORDS_MAX];
    struct ms_mx_host tmp;
    size_t i, j, k, na = 0, lo, hi;

    *n = 0;
    switch (res->status) {
    case MS_DNS_OK:
        break;
    case MS_DNS_NXDOMAIN:
        return MS_MX_NXDOMAIN;
    case MS_DNS_NODATA:
        goto implicit;
    case MS_DNS_TEMPFAIL:
    case MS_DNS_BOGUS:
    default:
        return MS_MX_TEMPFAIL;
    }
    for (i = 0; i < res->n && na < MS_MX_RECORDS_MAX; i++) {
        if (res->rr[i].type != MS_DNS_MX || res->rr[i].u.mx.host == NULL)
            continue;
        /* RFC 7505 §3: "0 ." - and a root target at any preference can
         * only mean "no mail here". */
        if (res->rr[i].u.mx.host[0] == '\0' || strcmp(res->rr[i].u.mx.host, ".") == 0)
            return MS_MX_NULL;
        if (strlen(res->rr[i].u.mx.host) > MS_DNS_NAME_MAX)
            continue;
        snprintf(all[na].name, sizeof(all[na].name), "%s", res->rr[i].u.mx.host);
        all[na].preference = res->rr[i].u.mx.preference;
        na++;
    }
    if (na == 0)
        goto implicit;
    /* Insertion sort by preference (a few records), stable. */
    for (i = 1; i < na; i++) {
        tmp = all[i];
        for (j = i; j > 0 && all[j - 1].preference > tmp.preference; j--)
            all[j] = all[j - 1];
        all[j] = tmp;
    }
    /* §5.1: "randomize them to spread the load" among equal preferences
     * (Fisher-Yates within each run). */
    for (lo = 0; lo < na; lo = hi) {
        for (hi = lo + 1; hi < na && all[hi].preference == all[lo].preference; hi++)
            ;
        for (k = hi - lo; k > 1; k--) {
            j = lo + (rnd ? rnd(rnd_arg) % k : 0);
            tmp = all[lo + k - 1];
            all[lo + k - 1] = all[j];
            all[j] = tmp;
        }
    }
    for (i = 0; i < na && *n < max; i++)
        hosts[(*n)++] = all[i];
    return MS_MX_HOSTS;

implicit:
    /* §5.1: no MX records: the domain is its own mail host (preference 0). */
    if (max == 0 || strlen(domain) > MS_DNS_NAME_MAX)
        return MS_MX_NXDOMAIN;
    snprintf(hosts[0].name, sizeof(hosts[0].name), "%s", domain);
    hosts[0].preference = 0;
    *n = 1;
    return MS_MX_IMPLICIT;
}
