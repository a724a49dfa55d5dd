/*
 * fe_access.h - the frontend's access rules as pure functions: who may relay
 * and who may speak for the client.  Trusted networks and the balancers
 * allowed to send a PROXY header are CIDR lists; accepted domains are a
 * domain map (lib/mail/ms_domainmap.h, looked up by fe_session.c); a local part that routes on by itself counts as relaying (DESIGN.md "No
 * open relay").  The lists are built once from the config (fe_settings.h),
 * then read-only; every function is pure and may run on any thread.  Errors:
 * fe_cidr_parse() answers MS_EINVAL; the others cannot fail.
 */
#ifndef FE_ACCESS_H
#define FE_ACCESS_H

#include <stddef.h>
#include <sys/socket.h>

struct fe_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    unsigned prefix;
};

/* Parse "192.0.2.0/24", "2001:db8::/32" or a bare address.  0 or MS_EINVAL. */
int fe_cidr_parse(const char *s, struct fe_cidr *c);
/* 1 when sa (IPv4, IPv6 or IPv4-mapped IPv6) lies in one of the n networks. */
int fe_cidr_match(const struct fe_cidr *nets, size_t n, const struct sockaddr *sa);

/* 1 when the local part of a mailbox routes mail on by itself: a %-hack
 * ("u%other.example@ours"), a UUCP !-path ("other!u@ours") or a quoted
 * local part hiding an address ("\"u@other.example\"@ours").  Mail for an
 * accepted domain with such a local part could be relayed by whatever reads
 * it next, so it needs AUTH or a trusted network like any relaying. */
int fe_addr_routing(const char *addr);

#endif
