/*
 * fe_header.h - the header section of a message as it streams in (RFC 5322
 * 2.2, 3.6, obsolete syntax per 4), and the format rules judged on it at
 * the end of DATA or BDAT; a pure, incremental parser.
 *
 * The session feeds it the message octets the DATA or BDAT reader has just
 * appended to the transaction's buffer (unstuffed, as they go to Kafka),
 * until the header section is over; the body is never shown to it, nothing
 * is copied but the value of the address fields it checks.  It reads each
 * octet of the header section once and records facts: fields seen by name,
 * 8-bit octets, a malformed line, a limit passed, bad addresses.  The
 * judgement (fe_hdr_judge) applies the rules of the listener's role to those
 * facts once the whole message is in; nothing stops the reading early, and
 * nothing is truncated: a message over a limit is refused whole.
 *
 * Named limits (config in parentheses, docs/config.md), refused with
 * 552 5.3.4:
 *   header section octets, empty line included (max_header_size)
 *   header fields (max_header_fields)
 *   one field, unfolded, name included (max_header_field_length)
 *
 * The header section ends at its empty line, or at the end of the message.
 * A first line that is not a field means the message has no header section
 * (it is all body); a later line that is neither a field nor a continuation
 * ends the section and is recorded as malformed (rule header_syntax).  A
 * field name is printable US-ASCII but ':' (2.2); white space before the
 * colon is obsolete syntax and taken (4.5).  A bare CR, a bare LF or a NUL
 * inside a field (only reachable with BODY=BINARYMIME: the DATA and text
 * BDAT readers refuse them first) is always refused, 554 5.6.0.
 *
 * Ownership: the caller embeds struct fe_hdr and releases it with
 * fe_hdr_free(); `from` belongs to it.  Any thread.  Unit tests:
 * tests/unit/test_fe_header.c; fuzzed by tests/fuzz/fuzz_fe_header.c.
 */
#ifndef FE_HEADER_H
#define FE_HEADER_H

#include <stddef.h>

#include "ms_buf.h"

#define FE_HDR_SECTION_MAX_DEF (256 * 1024) /* as Exchange's 256 KB header limit */
#define FE_HDR_FIELDS_MAX_DEF 1000
#define FE_HDR_FIELD_MAX_DEF (100 * 1024) /* as Postfix's header_size_limit */
/* Room the session keeps ahead of its Received field for the fields a
 * submission gets (RFC 6409 8.2, 8.3): Date and a Message-ID with our host
 * name (at most 255 octets) in it. */
#define FE_HDR_ADDED_MAX 512

/* The fields RFC 5322 3.6 allows at most once. */
enum fe_hdr_field {
    FE_HF_DATE,
    FE_HF_FROM,
    FE_HF_SENDER,
    FE_HF_REPLY_TO,
    FE_HF_TO,
    FE_HF_CC,
    FE_HF_BCC,
    FE_HF_MESSAGE_ID,
    FE_HF_IN_REPLY_TO,
    FE_HF_REFERENCES,
    FE_HF_SUBJECT,
    FE_HF_COUNT /* any other field */
};

/* The format rules, each a label of mailstream_frontend_format_refused_total
 * and, from FE_FMT_HEADER_SYNTAX on, a key of [format.mx] and
 * [format.submission] (FE_FMT_HEADER_SIZE to FE_FMT_HEADER_OCTET are always
 * on). */
enum fe_fmt_rule {
    FE_FMT_OK = 0,
    FE_FMT_HEADER_SIZE,      /* 552 5.3.4 */
    FE_FMT_HEADER_FIELDS,    /* 552 5.3.4 */
    FE_FMT_FIELD_LENGTH,     /* 552 5.3.4 */
    FE_FMT_HEADER_OCTET,     /* 554 5.6.0 bare CR, bare LF, NUL in a field */
    FE_FMT_HEADER_SYNTAX,    /* 554 5.6.0 a line neither field nor continuation */
    FE_FMT_EIGHTBIT_HEADER,  /* 550 5.6.0 8-bit header without SMTPUTF8 */
    FE_FMT_EIGHTBIT_BODY,    /* 550 5.6.0 8-bit body without 8BITMIME/BINARYMIME */
    FE_FMT_FROM_MISSING,     /* 550 5.6.0 */
    FE_FMT_FROM_DUPLICATE,   /* 550 5.6.0 */
    FE_FMT_FIELD_DUPLICATE,  /* 550 5.6.0 another field of 3.6 twice */
    FE_FMT_ADDRESS_SYNTAX,   /* 550 5.1.7 From, Sender, Reply-To */
    FE_FMT_FROM_NOT_OWNED,   /* 550 5.7.1 judged by the session (AUTH senders) */
    FE_FMT_COUNT
};

struct fe_hdr_limits {
    size_t section_max, fields_max, field_max; /* 0: no limit */
};

/* The rules of one listener role: 1 = refuse (or, for the add_* fixes,
 * add the field).  Defaults in fe_settings.c and docs/config.md. */
struct fe_format_rules {
    int header_syntax, eightbit_header, eightbit_body, from_missing, from_duplicate,
        field_duplicate, address_syntax, from_owned;
    int add_date, add_message_id; /* RFC 6409 8.2, 8.3 */
};

struct fe_hdr {
    struct fe_hdr_limits lim;
    int done;                 /* the header section is over: feed takes no more */
    enum fe_fmt_rule error;   /* a limit or FE_FMT_HEADER_OCTET; ends the parse */
    int malformed;            /* a line neither field nor continuation ended it */
    int eightbit;             /* an octet >= 0x80 in a field */
    size_t section_len;       /* octets of the header section, empty line included
                               * (0 after an error) */
    size_t nfields;
    unsigned counts[FE_HF_COUNT];
    enum fe_hdr_field bad_addr; /* first address field that does not parse, or FE_HF_COUNT */
    struct ms_buf from;       /* the first From field's body, unfolded */
    /* private */
    int _state;
    enum fe_hdr_field _field;
    int _capture;             /* the field's body goes to _val or from */
    size_t _fieldlen, _linestart;
    char _name[12];           /* the field name, while it may still be one we know */
    size_t _namelen;
    struct ms_buf _val;
};

void fe_hdr_init(struct fe_hdr *h, const struct fe_hdr_limits *lim);
void fe_hdr_free(struct fe_hdr *h);
/* Read message octets; returns how many were taken: all of len until the
 * section is over (h->done), then up to its end (through the empty line);
 * 0 once done. */
size_t fe_hdr_feed(struct fe_hdr *h, const char *buf, size_t len);
/* The message is complete: close a section that had no empty line. */
void fe_hdr_finish(struct fe_hdr *h);

/* The first rule of `r` the finished message breaks, FE_FMT_OK if none
 * (FE_FMT_FROM_NOT_OWNED is the caller's).  smtputf8: MAIL FROM had
 * SMTPUTF8; body_8bit: the body holds an octet >= 0x80 and MAIL FROM did not
 * declare BODY=8BITMIME or BINARYMIME.  For FE_FMT_FIELD_DUPLICATE and
 * FE_FMT_ADDRESS_SYNTAX *field names the field. */
enum fe_fmt_rule fe_hdr_judge(const struct fe_hdr *h, const struct fe_format_rules *r,
                              int smtputf8, int body_8bit, enum fe_hdr_field *field);

/* The rule's name (metric label, log, config key). */
const char *fe_fmt_rule_name(enum fe_fmt_rule rule);
/* The field's name as RFC 5322 spells it ("Message-ID"). */
const char *fe_hdr_field_name(enum fe_hdr_field f);
/* The reply line (no CRLF) refusing a message for `rule` into out. */
void fe_fmt_reply(enum fe_fmt_rule rule, enum fe_hdr_field field, char *out, size_t outlen);

#endif
