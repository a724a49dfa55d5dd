/*
 * fe_access.h - the frontend's access rules as pure functions: who may relay
 * and who may speak for the client.  Trusted networks and the balancers
 * allowed to send a PROXY header are CIDR lists; accepted domains are a
 * domain map (lib/mail/ms_domainmap.h, looked up by fe_session.c); a local part that routes on by itself counts as relaying (DESIGN.md "No
 * open relay").  The lists are built once from the config (fe_settings.h),
 * then read-only; every function is pure and may run on any thread.
 *
 * The recipient file ([smtp] recipient_file, Postfix's relay_recipient_maps
 * as a file) is the exception: main.c loads it at start and again on SIGHUP
 * (or when the file changes) and publishes it; a table is immutable once
 * loaded and reference-counted atomically, so each loop holds its own
 * reference and swaps it on its own thread, as with the password table.
 *
 * Errors: fe_cidr_parse() answers MS_EINVAL; fe_rcpt_table_load() NULL
 * with the reason; the others cannot fail.
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

/* ---- the recipient file ---- */

/* Lines in a recipient file; a bigger list belongs in the Redis sets
 * (`mailstream-ctl recipients import`). */
#define FE_RCPT_FILE_MAX 1000000
/* Longest line: an address (RFC 5321 4.5.3.1.3) and a comment. */
#define FE_RCPT_LINE_MAX 1024

/* One address per line ("jane@example.com"), or "@example.com" for a
 * domain covered with no address listed yet; '#' starts a comment.  The
 * file covers the domains of its lines: a recipient at such a domain must
 * be listed, other domains are not its business.  Case is ignored. */
struct fe_rcpt_table;
struct fe_rcpt_table *fe_rcpt_table_load(const char *path, char *err, size_t errlen);
/* Another reference (NULL stays NULL); fe_rcpt_table_free() drops one. */
struct fe_rcpt_table *fe_rcpt_table_ref(struct fe_rcpt_table *t);
void fe_rcpt_table_free(struct fe_rcpt_table *t);
/* Addresses listed. */
size_t fe_rcpt_table_size(const struct fe_rcpt_table *t);

enum fe_rcpt_verdict { FE_RCPT_NOT_COVERED, FE_RCPT_KNOWN, FE_RCPT_UNKNOWN };
enum fe_rcpt_verdict fe_rcpt_table_check(const struct fe_rcpt_table *t, const char *addr);

#endif
