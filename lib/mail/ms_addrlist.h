/*
 * ms_addrlist.h - the addresses of a header field (RFC 5322 3.4, with the
 * obsolete forms of 4.4 and the UTF-8 of RFC 6532 3.2), a pure parser.
 *
 * Given the unfolded body of a From, Sender or Reply-To field (what follows
 * the colon, CRLFs of folding removed or not), it checks the grammar the
 * field calls for and hands every mailbox's addr-spec, "local@domain" with
 * comments, folding white space and any obsolete route removed, to a
 * callback:
 *
 *   MS_ADDR_MAILBOX       Sender    (3.6.2)  exactly one mailbox
 *   MS_ADDR_MAILBOX_LIST  From      (3.6.2)  one or more mailboxes
 *   MS_ADDR_ADDRESS_LIST  Reply-To  (3.6.2)  one or more mailboxes or groups
 *
 * Obsolete syntax is taken as RFC 5322 4 asks a receiver to: empty list
 * elements ("a@b, , c@d"), CFWS between the atoms and dots of a local part
 * or domain, phrases with dots ("John Q. Public"), routes in angle
 * addresses ("<@relay:joe@example.com>").  Octets >= 0x80 may stand in
 * atoms, quoted strings, comments and domain literals (RFC 6532 3.2);
 * whether 8-bit headers are allowed at all is the caller's rule.
 * XXX: RFC 6854 groups in From and Sender are not taken.
 *
 * An addr-spec is given as it was written (a quoted local part keeps its
 * quotes), at most MS_ADDR_SPEC_MAX octets: a longer one fails the parse.
 * Any thread; no allocation.
 */
#ifndef MS_ADDRLIST_H
#define MS_ADDRLIST_H

#include <stddef.h>

/* Longest addr-spec handed to the callback: a 998-octet line (RFC 5322
 * 2.1.1) cannot hold more. */
#define MS_ADDR_SPEC_MAX 998

enum ms_addr_kind { MS_ADDR_MAILBOX, MS_ADDR_MAILBOX_LIST, MS_ADDR_ADDRESS_LIST };

/* Called once per mailbox, in order, with its NUL-terminated addr-spec; a
 * negative return stops the parse and is returned by ms_addrlist_parse(). */
typedef int (*ms_addr_cb)(void *arg, const char *addr_spec);

/* Parse s[0..n).  Returns the number of mailboxes (a group may hold none),
 * MS_EPROTO when the text is not what `kind` calls for, MS_ETOOBIG for an
 * addr-spec over MS_ADDR_SPEC_MAX, or the callback's negative return.  cb
 * may be NULL (syntax check only). */
int ms_addrlist_parse(const char *s, size_t n, enum ms_addr_kind kind, ms_addr_cb cb, void *arg);

#endif
