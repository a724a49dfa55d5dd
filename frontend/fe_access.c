/*
 * fe_access.c - trusted networks, accepted domains and routing local parts
 * (see fe_access.h).
 */
#include "fe_access.h"
#include "ms_addr.h"
#include "ms_error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
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
