/*
 * ms_dsn.h - delivery status notifications (RFC 3464, RFC 3461, RFC 6522)
 * and the classification of remote replies, pure.
 *
 * ms_dsn_build() writes a complete RFC 5322 message: multipart/report
 * (report-type=delivery-status) with a human-readable text/plain part, the
 * message/delivery-status part (per-message fields: Reporting-MTA,
 * Original-Envelope-Id, Arrival-Date; per-recipient fields: Original-
 * Recipient, Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
 * Last-Attempt-Date, Will-Retry-Until) and the returned message.  Actions
 * are failed, delayed, delivered and relayed (RFC 3464 §2.3.3).  A report
 * with a failed recipient returns message/rfc822 for RET=FULL (or no RET,
 * up to MS_DSN_RETURN_FULL_MAX octets) and text/rfc822-headers for
 * RET=HDRS or a bigger message; any other report (delays, successes)
 * returns the headers unless RET=FULL (RFC 3461 §4.3 makes the whole
 * message a matter of "failed" DSNs).  Lines end in CRLF; every line of
 * ours is 7-bit; the returned message is passed through as it is (its
 * 8-bit octets make the DSN 8BITMIME, which the caller declares).
 *
 * The RFC 3461 parameters as they go on to a next hop that offers DSN
 * (§4, §5.2.1): ms_xtext_encode() (§4: xtext) and ms_dsn_notify_param()
 * (§4.1: the NOTIFY value).
 *
 * ms_reply_class() sorts a reply (code, enhanced status code, text) into
 * the classes the worker counts and acts on (bad mailbox, mailbox full,
 * policy, DNS, TLS, too large, other) and says whether it is permanent.
 *
 * No I/O, no clock: the caller passes times.  Any thread.
 */
#ifndef MS_DSN_H
#define MS_DSN_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"

/* Largest message returned whole when RET is not given; beyond it only the
 * headers are returned (RFC 3461 §4.3 leaves the choice to the MTA). */
#define MS_DSN_RETURN_FULL_MAX (512 * 1024)
/* Longest diagnostic kept per recipient; longer ones end in "...". */
#define MS_DSN_DIAG_MAX 512
/* Room for the report parts of a DSN (the returned message comes on top). */
#define MS_DSN_REPORT_MAX (256 * 1024)

/* RFC 3464 §2.3.3.  DELIVERED: final delivery (a mailbox, LMTP, RFC 3461
 * §5.2.3); RELAYED: handed to a next hop that does not offer DSN, which
 * will send no further notice (§5.2.2). */
enum ms_dsn_action { MS_DSN_FAILED, MS_DSN_DELAYED, MS_DSN_DELIVERED, MS_DSN_RELAYED };

/* RFC 3461 §4.1 NOTIFY as a bit mask; the same values as the envelope's
 * Notify (proto/envelope.proto). */
enum {
    MS_DSN_NOTIFY_SUCCESS = 1,
    MS_DSN_NOTIFY_FAILURE = 2,
    MS_DSN_NOTIFY_DELAY = 4,
    MS_DSN_NOTIFY_NEVER = 8
};
/* RFC 3461 §4.3 RET; the same values as the envelope's Ret. */
enum ms_dsn_ret { MS_DSN_RET_NONE = 0, MS_DSN_RET_FULL = 1, MS_DSN_RET_HDRS = 2 };

/* Longest xtext for n octets: every one may become "+XX". */
#define MS_XTEXT_MAX(n) (3 * (n))

struct ms_dsn_rcpt {
    const char *final_rcpt;   /* the address we tried */
    const char *orcpt;        /* ORCPT "type;address" as the client gave it, or NULL */
    enum ms_dsn_action action;
    const char *status;       /* enhanced status code "5.1.1" */
    const char *remote_mta;   /* DNS name of the server that answered, or NULL */
    int code;                 /* its SMTP reply code; 0: our own diagnostic */
    const char *diagnostic;   /* the reply text (with code), or ours */
    int64_t last_attempt_us;  /* 0: not given */
    int64_t will_retry_until_us; /* Action delayed: when we give up (RFC 3464
                                  * §2.3.9 Will-Retry-Until); 0: not given */
};

struct ms_dsn {
    const char *reporting_mta; /* our host name */
    const char *queue_id;      /* the DSN's own id, for Message-ID and the boundary */
    const char *orig_queue_id; /* the message reported on */
    const char *to;            /* the envelope sender of the original */
    const char *envid;         /* RFC 3461 ENVID, or NULL */
    int64_t arrival_us;        /* when the original was accepted */
    int64_t now_us;
    int ret_hdrs;              /* RET=HDRS */
    int ret_full;              /* RET=FULL (else: full up to MS_DSN_RETURN_FULL_MAX) */
    const char *message;       /* the original, CRLF lines */
    size_t message_len;
    const struct ms_dsn_rcpt *rcpts;
    size_t nrcpts;
};

/* Append the DSN to out.  Returns 0, MS_EINVAL (no recipient, or a field
 * with CR/LF), or MS_ETOOBIG from the buffer. */
int ms_dsn_build(const struct ms_dsn *in, struct ms_buf *out);

/* RFC 3461 §4: s as xtext into out (NUL-terminated): "+", "=" and every
 * octet outside "!".."~" become "+XX" (upper-case hex).  Returns the
 * length, or MS_ETOOBIG when out (outlen octets, the NUL included) is too
 * small; out is then "". */
int ms_xtext_encode(const char *s, char *out, size_t outlen);

/* RFC 3461 §4.1: the value of NOTIFY for the bits (MS_DSN_NOTIFY_*):
 * "NEVER", or SUCCESS, FAILURE, DELAY joined by commas in that order.
 * Returns its length, or 0 (out "") for no bits, NEVER with others, or
 * unknown bits (malformed: the parameter is left out).  out needs 24
 * octets. */
size_t ms_dsn_notify_param(uint32_t bits, char *out, size_t outlen);

/* "Mon, 24 Nov 2026 05:00:00 +0000" (RFC 5322 §3.3) for t (UTC) into out. */
void ms_dsn_date(int64_t t_us, char *out, size_t outlen);

enum ms_reply_class {
    MS_CLASS_OK,          /* 2yz */
    MS_CLASS_BAD_MAILBOX, /* 5.1.x: no such user, bad address, bad domain */
    MS_CLASS_MAILBOX_FULL,/* 4.2.2 / 5.2.2, "over quota" */
    MS_CLASS_POLICY,      /* 5.7.x, spam and reputation blocks */
    MS_CLASS_DNS,         /* 4.4.3, 5.1.2, 5.1.10: name resolution */
    MS_CLASS_TLS,         /* TLS required or failed (5.7.10, 5.7.30, 4.7.5 ...) */
    MS_CLASS_TOO_LARGE,   /* 5.3.4, 5.2.3, 552 */
    MS_CLASS_NETWORK,     /* no answer, broken connection (4.4.x) */
    MS_CLASS_OTHER,
    MS_CLASS__N
};

/* "ok", "bad_mailbox", "mailbox_full", "policy", "dns", "tls", "too_large",
 * "network", "other". */
const char *ms_reply_class_name(enum ms_reply_class c);

/* Classify; *hard is set to 1 when the failure is permanent: the reply is
 * 5yz, except that a full mailbox (RFC 3463 5.2.2 is "persistent transient"
 * in spirit) counts as soft.  code 0 (our own diagnostic) goes by the dsn. */
enum ms_reply_class ms_reply_class(int code, const char *dsn, const char *text, int *hard);

#endif
