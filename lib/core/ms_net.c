#include "ms_net.h"
#include "ms_error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ms_split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon, *hstart = s, *hend;
    char *end;
    long p;

    if (s == NULL || *s == '\0')
        return MS_EINVAL;
    if (*s == '[') {
        hstart = s + 1;
        if ((hend = strchr(hstart, ']')) == NULL || hend[1] != ':')
            return MS_EINVAL;
        colon = hend + 1;
    } else {
        if ((colon = strrchr(s, ':')) == NULL)
            return MS_EINVAL;
        hend = colon;
    }
    if ((size_t)(hend - hstart) >= hostlen)
        return MS_EINVAL;
    memcpy(host, hstart, (size_t)(hend - hstart));
    host[hend - hstart] = '\0';
    p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || p < 0 || p > 65535)
        return MS_EINVAL;
    *port = (int)p;
    return 0;
}

int ms_ip_sockaddr(const char *ip, int port, struct sockaddr_storage *ss)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    return MS_EINVAL;
}

int ms_parse_hostport(const char *s, struct sockaddr_storage *ss)
{
    char host[64];
    int port;

    if (ms_split_hostport(s, host, sizeof(host), &port) != 0)
        return MS_EINVAL;
    if (*host == '\0' || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    return ms_ip_sockaddr(host, port, ss);
}

char *ms_addr_str(const struct sockaddr *sa, char *out, size_t outlen)
{
    const void *a = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (inet_ntop(sa->sa_family, a, out, (socklen_t)outlen) == NULL)
        snprintf(out, outlen, "unknown");
    return out;
}

int ms_addr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

int ms_host_chars_ok(const char *s, size_t max)
{
    size_t n = strlen(s), i;

    if (n == 0 || n > max)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return 0;
    }
    return 1;
}
