/*
 * ms_smtp_reply.h - pure parsers for what an SMTP server says to us: replies
 * (RFC 5321 §4.2), enhanced status codes (RFC 3463, RFC 2034) and the EHLO
 * keyword list (RFC 5321 §4.1.1.1).
 *
 * No I/O: ms_reply_parse() takes the bytes received so far and answers
 * "need more", "error" or "one complete reply, n bytes consumed".  The parsed
 * reply points into the caller's buffer and is valid until that buffer is
 * changed.  Any thread.
 *
 * Limits: a reply line longer than MS_REPLY_LINE_MAX octets or a reply of more
 * than MS_REPLY_LINES_MAX lines is MS_ETOOBIG; the client treats that like a
 * broken connection (a temporary failure), never truncates it silently.
 */
#ifndef MS_SMTP_REPLY_H
#define MS_SMTP_REPLY_H

#include <stddef.h>
#include <stdint.h>

/* RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers exceed
 * it, so we accept a generous multiple. */
#define MS_REPLY_LINE_MAX 2048
/* EHLO replies are the longest in practice: a few dozen keywords. */
#define MS_REPLY_LINES_MAX 64
/* Longest enhanced status code: "5.123.123". */
#define MS_REPLY_DSN_MAX 10

struct ms_reply {
    int code;                          /* 200..599 */
    char dsn[MS_REPLY_DSN_MAX + 1];          /* enhanced status code, or "" */
    size_t nlines;
    const char *text[MS_REPLY_LINES_MAX]; /* each line after "NNN-" / "NNN ", */
    size_t text_len[MS_REPLY_LINES_MAX];  /* without CRLF; not NUL-terminated */
};

/* Parse one complete reply at the start of buf.  Returns the bytes consumed
 * (> 0), MS_EAGAIN when the reply is not complete yet, MS_EPROTO for a
 * malformed line (bad code, codes differing between lines, bad separator),
 * MS_ETOOBIG past the limits above.  Lines end with CRLF; a bare LF is
 * accepted too. */
int ms_reply_parse(const char *buf, size_t len, struct ms_reply *r);

/* Find an enhanced status code "class.subject.detail" at the start of text
 * (RFC 3463 §2; the class must match the reply code's first digit).  Writes
 * it NUL-terminated into dsn and returns its length (the text after it starts
 * at that offset plus one space), or 0 if there is none. */
size_t ms_reply_dsn_extract(int code, const char *text, size_t len, char dsn[MS_REPLY_DSN_MAX + 1]);

/* Format the reply for logs and events: "550 5.1.1 text of line one text of
 * line two" (lines joined by one space) into out (always NUL-terminated).
 * Output that does not fit ends in "..." so a cut is visible.  Returns the
 * length written. */
size_t ms_reply_format(const struct ms_reply *r, char *out, size_t outlen);

/* What the server advertised in its EHLO reply (RFC 5321 §4.1.1.1: the first
 * line is the greeting, each further line one keyword and its parameters). */
enum {
    MS_EHLO_SIZE = 1 << 0,                /* RFC 1870 */
    MS_EHLO_8BITMIME = 1 << 1,            /* RFC 6152 */
    MS_EHLO_SMTPUTF8 = 1 << 2,            /* RFC 6531 */
    MS_EHLO_PIPELINING = 1 << 3,          /* RFC 2920 */
    MS_EHLO_ENHANCEDSTATUSCODES = 1 << 4, /* RFC 2034 */
    MS_EHLO_STARTTLS = 1 << 5,            /* RFC 3207 */
    MS_EHLO_CHUNKING = 1 << 6,            /* RFC 3030 */
    MS_EHLO_DSN = 1 << 7,                 /* RFC 3461 */
    MS_EHLO_BINARYMIME = 1 << 8,          /* RFC 3030 §3 */
    MS_EHLO_AUTH = 1 << 9,                /* RFC 4954 (mechanisms in .auth) */
    MS_EHLO_REQUIRETLS = 1 << 10          /* RFC 8689 */
};

/* SASL mechanisms the worker's client can use (worker/smtp_auth.h), as a mask. */
enum ms_auth_mech { MS_AUTH_MECH_NONE = 0, MS_AUTH_MECH_PLAIN = 1 << 0, MS_AUTH_MECH_LOGIN = 1 << 1 };

/* Mechanism names looked at per AUTH line; more are ignored. */
#define MS_EHLO_AUTH_MECHS_MAX 32

struct ms_ehlo {
    unsigned flags;
    uint64_t size_max; /* SIZE parameter; 0: none given (no fixed limit) */
    unsigned auth;     /* MS_AUTH_MECH_* mask of the AUTH mechanisms we know (RFC
                        * 4954 §3: "AUTH" SP mech *(SP mech); the old
                        * "AUTH=mech ..." form is accepted too) */
};

void ms_ehlo_parse(const struct ms_reply *r, struct ms_ehlo *e);

#endif
