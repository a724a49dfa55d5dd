/*
 * ms_net.h - address helpers.  Pure functions, any thread.
 */
#ifndef MS_NET_H
#define MS_NET_H

#include <stddef.h>
#include <sys/socket.h>

/* Parse "host:port", "[v6]:port" or ":port" (numeric hosts only) into ss.
 * Returns 0 or MS_EINVAL. */
int ms_parse_hostport(const char *s, struct sockaddr_storage *ss);
/* An IPv4 or IPv6 literal (no brackets) and a port into ss.  Returns 0 or
 * MS_EINVAL when ip is not a numeric address. */
int ms_ip_sockaddr(const char *ip, int port, struct sockaddr_storage *ss);
/* Split "host:port" / "[v6]:port" into host (size hostlen) and port; host
 * names are allowed.  Returns 0 or MS_EINVAL. */
int ms_split_hostport(const char *s, char *host, size_t hostlen, int *port);
/* Format the address (no port) of sa into out; returns out. */
char *ms_addr_str(const struct sockaddr *sa, char *out, size_t outlen);
/* 1 when s is 1 to max octets of letters, digits, '-', '.' and '_': a host
 * name that may go into a URL, a file name or a header as it is. */
int ms_host_chars_ok(const char *s, size_t max);
int ms_addr_port(const struct sockaddr *sa);

#endif
