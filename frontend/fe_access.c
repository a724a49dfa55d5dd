/*
 * fe_access.c - trusted networks, accepted domains and routing local parts
 * (see fe_access.h).
 */
#include "fe_access.h"
#include "ms_addr.h"
#include "ms_error.h"

#include "ms_mem.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fe_cidr_parse(const char *s, struct fe_cidr *c)
{
    char tmp[64], *slash, *end;
    long p;

    if (strlen(s) >= sizeof(tmp))
        return MS_EINVAL;
    strcpy(tmp, s);
    memset(c, 0, sizeof(*c));
    if ((slash = strchr(tmp, '/')) != NULL)
        *slash++ = '\0';
    if (inet_pton(AF_INET, tmp, c->addr) == 1) {
        c->family = AF_INET;
        c->prefix = 32;
    } else if (inet_pton(AF_INET6, tmp, c->addr) == 1) {
        c->family = AF_INET6;
        c->prefix = 128;
    } else {
        return MS_EINVAL;
    }
    if (slash) {
        p = strtol(slash, &end, 10);
        if (*slash == '\0' || *end != '\0' || p < 0 || p > (long)c->prefix)
            return MS_EINVAL;
        c->prefix = (unsigned)p;
    }
    return 0;
}

static int prefix_eq(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned full = bits / 8, rem = bits % 8;

    if (memcmp(a, b, full) != 0)
        return 0;
    if (rem == 0)
        return 1;
    return ((a[full] ^ b[full]) & (0xff << (8 - rem))) == 0;
}

int fe_cidr_match(const struct fe_cidr *nets, size_t n, const struct sockaddr *sa)
{
    unsigned char a4[4], a6[16];
    int has4 = 0, has6 = 0;
    size_t i;

    if (sa->sa_family == AF_INET) {
        memcpy(a4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        has4 = 1;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        memcpy(a6, in6, 16);
        has6 = 1;
        if (IN6_IS_ADDR_V4MAPPED(in6)) {
            memcpy(a4, a6 + 12, 4);
            has4 = 1;
        }
    }
    for (i = 0; i < n; i++) {
        if (nets[i].family == AF_INET && has4 && prefix_eq(nets[i].addr, a4, nets[i].prefix))
            return 1;
        if (nets[i].family == AF_INET6 && has6 && prefix_eq(nets[i].addr, a6, nets[i].prefix))
            return 1;
    }
    return 0;
}

int fe_addr_routing(const char *addr)
{
    const char *dom = ms_addr_domain(addr), *p;

    if (dom == NULL)
        return 0;
    for (p = addr; p < dom - 1; p++)
        if (*p == '%' || *p == '!' || *p == '@')
            return 1;
    return 0;
}

/* ---- the recipient file ---- */

struct fe_rcpt_table {
    atomic_int refs;
    char **addrs; /* lower-cased, sorted */
    size_t naddrs;
    char **domains; /* lower-cased, sorted, unique */
    size_t ndomains;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void push(char ***v, size_t *n, size_t *cap, char *s)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *v = ms_realloc(*v, *cap * sizeof(**v));
    }
    (*v)[(*n)++] = s;
}

struct fe_rcpt_table *fe_rcpt_table_load(const char *path, char *err, size_t errlen)
{
    struct fe_rcpt_table *t = ms_calloc(1, sizeof(*t));
    char line[FE_RCPT_LINE_MAX + 2];
    size_t capa = 0, capd = 0, lineno = 0, i, j;
    FILE *f;

    atomic_init(&t->refs, 1);
    if ((f = fopen(path, "r")) == NULL) {
        snprintf(err, errlen, "[smtp] recipient_file: cannot open %s", path);
        fe_rcpt_table_free(t);
        return NULL;
    }
    while (fgets(line, sizeof(line), f)) {
        char *p = line, *end, *at;
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "%s:%zu: longer than %d octets", path, lineno,
                     FE_RCPT_LINE_MAX);
            goto fail;
        }
        if ((end = strchr(p, '#')) != NULL)
            *end = '\0';
        while (isspace((unsigned char)*p))
            p++;
        end = p + strlen(p);
        while (end > p && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (*p == '\0')
            continue;
        for (i = 0; p[i]; i++)
            p[i] = (char)tolower((unsigned char)p[i]);
        at = strrchr(p, '@');
        if (at == NULL || at[1] == '\0' || strpbrk(p, " \t<>") != NULL) {
            snprintf(err, errlen, "%s:%zu: want an address or @domain", path, lineno);
            goto fail;
        }
        if (t->naddrs + t->ndomains >= FE_RCPT_FILE_MAX) {
            snprintf(err, errlen, "%s: more than %d lines", path, FE_RCPT_FILE_MAX);
            goto fail;
        }
        push(&t->domains, &t->ndomains, &capd, ms_strdup(at + 1));
        if (at != p)
            push(&t->addrs, &t->naddrs, &capa, ms_strdup(p));
    }
    fclose(f);
    qsort(t->addrs, t->naddrs, sizeof(*t->addrs), cmp_str);
    qsort(t->domains, t->ndomains, sizeof(*t->domains), cmp_str);
    for (i = j = 0; i < t->ndomains; i++) {
        if (j > 0 && strcmp(t->domains[j - 1], t->domains[i]) == 0)
            free(t->domains[i]);
        else
            t->domains[j++] = t->domains[i];
    }
    t->ndomains = j;
    return t;
fail:
    fclose(f);
    fe_rcpt_table_free(t);
    return NULL;
}

struct fe_rcpt_table *fe_rcpt_table_ref(struct fe_rcpt_table *t)
{
    if (t)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void fe_rcpt_table_free(struct fe_rcpt_table *t)
{
    if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    ms_strv_free(t->addrs, t->naddrs);
    ms_strv_free(t->domains, t->ndomains);
    free(t);
}

size_t fe_rcpt_table_size(const struct fe_rcpt_table *t)
{
    return t ? t->naddrs : 0;
}

enum fe_rcpt_verdict fe_rcpt_table_check(const struct fe_rcpt_table *t, const char *addr)
{
    char lower[FE_RCPT_LINE_MAX + 1], *key = lower;
    const char *dom;
    size_t i, n = strlen(addr);

    if (t == NULL || n > FE_RCPT_LINE_MAX || (dom = ms_addr_domain(addr)) == NULL)
        return FE_RCPT_NOT_COVERED;
    for (i = 0; i <= n; i++)
        lower[i] = (char)tolower((unsigned char)addr[i]);
    key = lower + (size_t)(dom - addr);
    if (bsearch(&key, t->domains, t->ndomains, sizeof(*t->domains), cmp_str) == NULL)
        return FE_RCPT_NOT_COVERED;
    key = lower;
    return bsearch(&key, t->addrs, t->naddrs, sizeof(*t->addrs), cmp_str) ? FE_RCPT_KNOWN
                                                                           : FE_RCPT_UNKNOWN;
}
