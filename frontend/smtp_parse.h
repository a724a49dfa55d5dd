/*
 * smtp_parse.h - the SMTP command grammar as pure functions: command line
 * framing (RFC 5321 2.3.8, 4.5.3.1.4), verbs and arguments (RFC 5321 4.1),
 * MAIL/RCPT paths and ESMTP parameters (RFC 5321 4.1.2, RFC 1870 SIZE,
 * RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3461 DSN) and xtext.
 *
 * Nothing here reads a socket or allocates: every function takes (buf, len)
 * and answers "need more" (MS_EAGAIN), "error, with the reply it deserves"
 * (a negative code and *reply pointing at a static reply line without CRLF),
 * or success.  Safe from any thread.  Unit-tested by tests/unit/
 * test_smtp_parse.c and fuzzed by tests/fuzz/fuzz_fe_command.c.
 *
 * Every limit has a name and a reply:
 *   FE_SMTP_LINE_MAX       command line incl. CRLF     500 5.5.2 Line too long
 *   FE_SMTP_AUTH_LINE_MAX  AUTH / SASL response line   500 5.5.2 Line too long
 *   MS_SMTP_PATH_MAX       reverse/forward path        501 5.5.4 Path too long
 *                          (ms_addr.h, shared with the worker)
 *   FE_SMTP_LOCAL_MAX      local part                  501 5.1.3 / 5.1.7
 *   FE_SMTP_DOMAIN_MAX     domain                      501 5.1.3 / 5.1.7
 *   FE_SMTP_PARAMS_MAX     ESMTP parameters            501 5.5.4 Too many parameters
 *   FE_SMTP_ENVID_MAX      ENVID after decoding        501 5.5.4
 *   FE_SMTP_ORCPT_MAX      ORCPT after decoding        501 5.5.4
 */
#ifndef FE_SMTP_PARSE_H
#define FE_SMTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "ms_addr.h"

#define FE_SMTP_LINE_MAX 512       /* RFC 5321 4.5.3.1.4 */
#define FE_SMTP_AUTH_LINE_MAX 12288 /* RFC 4954 4 */
#define FE_SMTP_LOCAL_MAX 64       /* RFC 5321 4.5.3.1.1 */
#define FE_SMTP_DOMAIN_MAX 255     /* RFC 5321 4.5.3.1.2 */
#define FE_SMTP_PARAMS_MAX 16
#define FE_SMTP_ENVID_MAX 100      /* RFC 3461 4.4 */
#define FE_SMTP_ORCPT_MAX 500      /* RFC 3461 4.2 */
#define FE_SMTP_HELO_MAX 255

#define FE_REPLY_LINE_TOO_LONG "500 5.5.2 Line too long"

enum fe_verb {
    FE_VERB_UNKNOWN = 0,
    FE_VERB_HELO,
    FE_VERB_EHLO,
    FE_VERB_MAIL,
    FE_VERB_RCPT,
    FE_VERB_DATA,
    FE_VERB_RSET,
    FE_VERB_NOOP,
    FE_VERB_QUIT,
    FE_VERB_VRFY,
    FE_VERB_EXPN,
    FE_VERB_HELP,
    FE_VERB_STARTTLS,
    FE_VERB_AUTH,
    FE_VERB_BDAT, /* RFC 3030 CHUNKING */
    FE_VERB_COUNT
};

/* Upper-case name of a verb ("UNKNOWN" for FE_VERB_UNKNOWN). */
const char *fe_verb_name(enum fe_verb v);

struct fe_smtp_param {
    const char *key; /* points into the line */
    size_t keylen;
    const char *value; /* NULL when the parameter has no "=value" */
    size_t valuelen;
};

struct fe_smtp_cmd {
    enum fe_verb verb;
    const char *args; /* after the verb and its separating space; CRLF stripped */
    size_t argslen;
    /* MAIL and RCPT only.  The mailbox without angle brackets or source
     * route, NUL-terminated; "" for the null path <>. */
    char path[MS_SMTP_PATH_MAX + 1];
    size_t pathlen;
    int path_utf8;   /* the mailbox holds non-ASCII octets (RFC 6531) */
    int path_domain; /* the mailbox has an @domain part */
    size_t nparams;
    struct fe_smtp_param params[FE_SMTP_PARAMS_MAX];
};

/*
 * Frame one command line.  Returns the octets to consume (line and its
 * terminator) when buf holds a line ending in LF within `max` octets, with
 * *content_len the length without CRLF (or a bare LF, tolerated in commands;
 * DATA has its own strict reader).  MS_EAGAIN: need more input.
 * MS_ETOOBIG: no LF within `max` octets; the caller discards through the next
 * LF and answers FE_REPLY_LINE_TOO_LONG.
 */
int fe_smtp_line(const char *buf, size_t len, size_t max, size_t *content_len);

/*
 * Parse a command line (without its terminator).  Returns 0 with cmd filled
 * (verb FE_VERB_UNKNOWN for a verb we do not know), or MS_EPROTO / MS_ETOOBIG
 * with *reply set.  cmd keeps pointers into line.
 */
int fe_smtp_parse(const char *line, size_t len, struct fe_smtp_cmd *cmd, const char **reply);

/* MAIL FROM parameters we understand. */
enum fe_body {
    FE_BODY_UNSPEC = 0,
    FE_BODY_7BIT = 1,
    FE_BODY_8BITMIME = 2,
    FE_BODY_BINARYMIME = 3 /* RFC 3030 3: only with BDAT */
};
enum fe_ret { FE_RET_UNSPEC = 0, FE_RET_FULL = 1, FE_RET_HDRS = 2 };
enum fe_notify {
    FE_NOTIFY_SUCCESS = 1,
    FE_NOTIFY_FAILURE = 2,
    FE_NOTIFY_DELAY = 4,
    FE_NOTIFY_NEVER = 8
};

struct fe_mail_params {
    enum fe_body body;
    int smtputf8;
    int has_size;
    uint64_t size; /* UINT64_MAX when the number does not fit */
    enum fe_ret ret;
    char envid[FE_SMTP_ENVID_MAX + 1]; /* xtext-decoded, "" when absent */
    int requiretls;                    /* RFC 8689 REQUIRETLS */
};

struct fe_rcpt_params {
    unsigned notify;                   /* fe_notify bits, 0 when absent */
    char orcpt[FE_SMTP_ORCPT_MAX + 1]; /* "addr-type;decoded", "" when absent */
};

/* Interpret the ESMTP parameters of a parsed MAIL / RCPT command.  Returns 0
 * or a negative code with *reply (555 5.5.4 for an unknown parameter, 501
 * 5.5.4 for a bad or repeated one). */
int fe_smtp_mail_params(const struct fe_smtp_cmd *cmd, struct fe_mail_params *mp,
                        const char **reply);
int fe_smtp_rcpt_params(const struct fe_smtp_cmd *cmd, struct fe_rcpt_params *rp,
                        const char **reply);

/* BDAT arguments (RFC 3030 2): "chunk-size [SP end-marker]", chunk-size
 * 1*DIGIT, end-marker "LAST" (any case).  Returns 0 with *size and *last,
 * or MS_EPROTO with *reply (501 5.5.4).  *size_ok says whether *size could
 * be read even though the rest is bad: then the caller can still skip the
 * chunk's octets (RFC 3030 2: a rejected BDAT's data must be consumed);
 * when 0, the stream can not be framed any more. */
int fe_smtp_bdat_args(const char *args, size_t len, uint64_t *size, int *last, int *size_ok,
                      const char **reply);

/* Decode RFC 3461 4 xtext into out (size outlen, NUL-terminated).  Returns
 * the decoded length, MS_EPROTO for malformed xtext or a decoded control
 * octet (below 0x20, or 0x7f; octets from 0x80 up, UTF-8, are kept),
 * MS_ETOOBIG when it does not fit. */
int fe_xtext_decode(const char *in, size_t n, char *out, size_t outlen);

#endif
