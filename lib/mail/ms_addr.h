/*
 * ms_addr.h - the parts of an RFC 5321 address everything else needs: its
 * domain, and the length limit of a path.  Pure, any thread.
 *
 * The domain of an address is the text after its LAST '@'.  RFC 5321
 * §4.1.2: Mailbox = Local-part "@" ( Domain / address-literal ), and a
 * Local-part may be a Quoted-string, which may itself hold '@'
 * ("\"a@b\"@example.org"); a Domain or address-literal never holds one.
 * So the last '@' is the separator whatever the local part is, and no
 * quote parsing is needed here.  An address without '@' ("postmaster",
 * RFC 5321 §4.5.1, or the empty reverse-path) has no domain; one ending in
 * '@' has an empty domain (the SMTP parser refuses it; callers that take
 * addresses from elsewhere, such as a DKIM i= tag, test for it).
 *
 * Errors: MS_ETOOBIG (ms_error.h) when a copy does not fit.
 */
#ifndef MS_ADDR_H
#define MS_ADDR_H

#include <stddef.h>

/* RFC 5321 §4.5.3.1.3: a reverse-path or forward-path is at most 256
 * octets "including the punctuation and element separators", that is with
 * its angle brackets.  The frontend refuses a longer path with 501 5.5.4;
 * the worker puts no longer one in a command. */
#define MS_SMTP_PATH_MAX 256
/* The longest address that fits a path: MS_SMTP_PATH_MAX without "<>". */
#define MS_SMTP_ADDR_MAX (MS_SMTP_PATH_MAX - 2)

/* The domain of addr: a pointer into addr just after its last '@' (""
 * when addr ends in '@'), or NULL when addr has no '@'.  Not normalised. */
const char *ms_addr_domain(const char *addr);

/* The domain of addr, lower-cased (ASCII) and without a trailing dot (an
 * absolute name is the same domain), copied into out; "" when addr has no
 * '@'.  Returns 0, or MS_ETOOBIG when it does not fit outlen (out is then
 * "" if outlen > 0). */
int ms_addr_domain_copy(const char *addr, char *out, size_t outlen);

#endif
