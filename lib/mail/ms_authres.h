/*
 * ms_authres.h - the Authentication-Results header field (RFC 8601): building
 * ours, and removing fields that claim our authserv-id (§5: a forged field
 * with our id must not survive, since downstream agents trust it).
 *
 * Pure functions on (buf, len), no I/O; any thread.  Messages use CRLF line
 * ends.  Errors follow ms_error.h.
 *
 * The field we build puts each result on its own folded line:
 *
 *     Authentication-Results: mx.example.org;
 *     	spf=pass smtp.mailfrom=joe@example.com;
 *     	dkim=pass header.d=example.com header.s=sel header.b="abc/def+";
 *     	dmarc=pass (p=reject dis=none) header.from=example.com
 *
 * Property values are written bare when RFC 8601 §2.2 allows it (a MIME
 * token, or local-part@domain-name with a dot-atom local part) and as a
 * quoted-string otherwise; comments have their parentheses and backslashes
 * escaped; control characters are replaced by '?'.
 */
#ifndef MS_AUTHRES_H
#define MS_AUTHRES_H

#include <stddef.h>

#include "ms_buf.h"

/* Longest Authentication-Results field we build. */
#define MS_AUTHRES_MAX (16 * 1024)
/* Longest authserv-id we read or write. */
#define MS_AUTHRES_ID_MAX 255
/* Header fields examined when stripping (the rest of a longer header
 * section is copied unchanged, never truncated). */
#define MS_AUTHRES_FIELDS_MAX 1000

struct ms_authres_prop {
    const char *name;  /* "smtp.mailfrom", "header.d", ... (ptype.property) */
    const char *value; /* NULL or "": the property is left out */
};

struct ms_authres {
    struct ms_buf buf;
    int n; /* results added */
};

/* Start a field for authserv_id (a host name). */
void ms_authres_init(struct ms_authres *a, const char *authserv_id);
/* Add one resinfo: `method=result (comment) prop=value ...`.  comment may
 * be NULL.  MS_ETOOBIG past MS_AUTHRES_MAX (the field is then unchanged). */
int ms_authres_add(struct ms_authres *a, const char *method, const char *result,
                   const char *comment, const struct ms_authres_prop *props, size_t nprops);
/* The complete field ending in CRLF ("...; none" when nothing was added),
 * NUL-terminated, handed over to the caller (free()); *len (if not NULL)
 * excludes the NUL.  Call ms_authres_init() again before reusing it. */
char *ms_authres_finish(struct ms_authres *a, size_t *len);
void ms_authres_free(struct ms_authres *a);

/* Append v as an RFC 8601 pvalue (bare or quoted) / a comment body. */
int ms_authres_value(struct ms_buf *out, const char *v);
int ms_authres_comment(struct ms_buf *out, const char *c);

/* The authserv-id of an Authentication-Results field *value* (what follows
 * the colon, possibly folded): CFWS skipped, a token or quoted-string.
 * Returns 0, MS_EPROTO (none), MS_ETOOBIG (longer than outlen - 1). */
int ms_authres_id(const char *value, size_t len, char *out, size_t outlen);

/* Copy msg to out without the Authentication-Results fields of its header
 * section whose authserv-id equals authserv_id (case-insensitively).  The
 * body and every other byte are kept.  Returns the number of fields
 * removed, or MS_ETOOBIG from the buffer. */
int ms_authres_strip(const char *msg, size_t len, const char *authserv_id, struct ms_buf *out);

/* Did we already evaluate this message?  True when an
 * Authentication-Results field with our authserv-id comes before the first
 * Received field: the frontend prepends its Received field to everything a
 * client sends, so only we can have put one above it. */
int ms_authres_applied(const char *msg, size_t len, const char *authserv_id);

#endif
