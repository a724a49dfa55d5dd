/*
 * ms_milter.h - the Sendmail milter protocol, version 6, as spoken by the
 * MTA side: the encoder of its commands, a bounded parser of the filter's
 * replies, and the header/body editor that applies what the filters asked
 * for to a message.  Pure: no sockets, no clock (frontend/fe_milter.c does
 * the I/O).
 *
 * The wire format (libmilter's mfdef.h, Postfix's milter8.c describe the
 * same thing): every packet is a 4-octet length in network order, counting
 * the command octet and the data that follow it, then the command, then the
 * data.  Strings are NUL-terminated; integers are 32-bit network order
 * except the port of SMFIC_CONNECT (16-bit).
 *
 * Parser: ms_milter_parse() looks at the start of a buffer and answers
 * MS_EAGAIN (not a whole packet yet; nothing consumed), MS_EPROTO (a length
 * of 0 or over MS_MILTER_PACKET_MAX, an unknown reply, a malformed payload)
 * or the octets of one packet, with the reply decoded into a struct whose
 * strings point into the buffer (valid until the caller consumes them).
 * The caller never needs to hold more than MS_MILTER_PACKET_MAX + 4 octets
 * of input to make progress: anything longer is refused by its length.
 *
 * Editor: struct ms_milter_msg splits a message into header fields and body
 * without copying it, records the edits (SMFIR_ADDHEADER, INSHEADER,
 * CHGHEADER, REPLBODY) in order, and writes the edited message out.  Limits:
 * MS_MILTER_EDITS_MAX edits per message, the caller's buffer maximum for
 * the result (nothing is truncated: MS_ETOOBIG).
 *
 * Ownership: struct ms_milter_msg references the message it was given (which
 * must outlive it) and owns copies of the edits until ms_milter_msg_free().
 * Any thread.  Unit tests: tests/unit/test_ms_milter.c; fuzzed by
 * tests/fuzz/fuzz_milter.c.
 */
#ifndef MS_MILTER_H
#define MS_MILTER_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"

#define MS_MILTER_VERSION 6
/* Largest body chunk we send (libmilter's MILTER_CHUNK_SIZE): a filter
 * that did not negotiate larger buffers refuses more. */
#define MS_MILTER_CHUNK_MAX 65535
/* Largest reply packet we take (length field, command octet included).  We
 * never offer SMFIP_MDS_256K/1M, so a filter's REPLBODY chunks are at most
 * 64 KiB; the rest is headroom for long header values and symbol lists. */
#define MS_MILTER_PACKET_MAX (256 * 1024)
/* Header edits per message, over all filters: a filter that floods gets
 * MS_ETOOBIG (its default action). */
#define MS_MILTER_EDITS_MAX 1000
/* Longest reply text we relay from SMFIR_REPLYCODE (one SMTP line). */
#define MS_MILTER_TEXT_MAX 400

/* Commands (MTA -> filter). */
#define SMFIC_ABORT 'A'
#define SMFIC_BODY 'B'
#define SMFIC_CONNECT 'C'
#define SMFIC_MACRO 'D'
#define SMFIC_BODYEOB 'E'
#define SMFIC_HELO 'H'
#define SMFIC_HEADER 'L'
#define SMFIC_MAIL 'M'
#define SMFIC_EOH 'N'
#define SMFIC_OPTNEG 'O'
#define SMFIC_QUIT 'Q'
#define SMFIC_RCPT 'R'
#define SMFIC_DATA 'T'

/* Replies (filter -> MTA). */
#define SMFIR_ADDRCPT '+'
#define SMFIR_DELRCPT '-'
#define SMFIR_ADDRCPT_PAR '2'
#define SMFIR_ACCEPT 'a'
#define SMFIR_REPLBODY 'b'
#define SMFIR_CONTINUE 'c'
#define SMFIR_DISCARD 'd'
#define SMFIR_CHGFROM 'e'
#define SMFIR_CONN_FAIL 'f'
#define SMFIR_ADDHEADER 'h'
#define SMFIR_INSHEADER 'i'
#define SMFIR_CHGHEADER 'm'
#define SMFIR_PROGRESS 'p'
#define SMFIR_QUARANTINE 'q'
#define SMFIR_REJECT 'r'
#define SMFIR_SKIP 's'
#define SMFIR_TEMPFAIL 't'
#define SMFIR_REPLYCODE 'y'
#define SMFIR_SHUTDOWN '4'

/* Actions a filter may ask for (SMFIC_OPTNEG, second word). */
#define SMFIF_ADDHDRS 0x01
#define SMFIF_CHGBODY 0x02
#define SMFIF_ADDRCPT 0x04
#define SMFIF_DELRCPT 0x08
#define SMFIF_CHGHDRS 0x10
#define SMFIF_QUARANTINE 0x20
#define SMFIF_CHGFROM 0x40
#define SMFIF_ADDRCPT_PAR 0x80
#define SMFIF_SETSYMLIST 0x100
#define MS_MILTER_ACTIONS_ALL 0x1ff

/* Protocol steps (SMFIC_OPTNEG, third word): stages the filter does not
 * want, stages it will not answer (NR_*), and extensions. */
#define SMFIP_NOCONNECT 0x01
#define SMFIP_NOHELO 0x02
#define SMFIP_NOMAIL 0x04
#define SMFIP_NORCPT 0x08
#define SMFIP_NOBODY 0x10
#define SMFIP_NOHDRS 0x20
#define SMFIP_NOEOH 0x40
#define SMFIP_NR_HDR 0x80
#define SMFIP_NOUNKNOWN 0x100
#define SMFIP_NODATA 0x200
#define SMFIP_SKIP 0x400
#define SMFIP_RCPT_REJ 0x800
#define SMFIP_NR_CONN 0x1000
#define SMFIP_NR_HELO 0x2000
#define SMFIP_NR_MAIL 0x4000
#define SMFIP_NR_RCPT 0x8000
#define SMFIP_NR_DATA 0x10000
#define SMFIP_NR_UNKN 0x20000
#define SMFIP_NR_EOH 0x40000
#define SMFIP_NR_BODY 0x80000
#define SMFIP_HDR_LEADSPC 0x100000
/* What we offer: every step may be left out or left unanswered, SKIP, and
 * header values with their leading space.  Not RCPT_REJ (we do not call a
 * filter for recipients we refused) nor the larger buffers. */
#define MS_MILTER_PROTO_OFFER (0x1fffff & ~SMFIP_RCPT_REJ)

/* Macro stages of SMFIR_SETSYMLIST (and of SMFIC_MACRO's command octet). */
enum ms_milter_stage {
    MS_MILTER_CONNECT,
    MS_MILTER_HELO,
    MS_MILTER_MAIL,
    MS_MILTER_RCPT,
    MS_MILTER_DATA,
    MS_MILTER_EOM,
    MS_MILTER_EOH,
    MS_MILTER_STAGES
};

/* ---- encoder: each appends one packet to `out`; 0 or MS_ETOOBIG ---- */

/* A packet with raw data (data may be NULL when len is 0). */
int ms_milter_put(struct ms_buf *out, char cmd, const void *data, size_t len);
/* Only the 5-octet head of a packet whose `len` data octets the caller
 * sends itself (a body chunk, straight from the message). */
int ms_milter_put_head(struct ms_buf *out, char cmd, size_t len);
int ms_milter_put_optneg(struct ms_buf *out, uint32_t version, uint32_t actions,
                         uint32_t protocol);
/* SMFIC_MACRO for command `cmd`: n name/value pairs (kv[2i], kv[2i+1]);
 * pairs with a NULL or empty value are left out. */
int ms_milter_put_macros(struct ms_buf *out, char cmd, const char *const *kv, size_t n);
/* SMFIC_CONNECT: family '4', '6', 'L' (unix) or 'U' (unknown: no port, no
 * address). */
int ms_milter_put_connect(struct ms_buf *out, const char *host, char family, uint16_t port,
                          const char *addr);
/* A packet of n NUL-terminated strings (SMFIC_HELO, MAIL, RCPT). */
int ms_milter_put_strings(struct ms_buf *out, char cmd, const char *const *v, size_t n);
/* SMFIC_HEADER from a field as it is in the message: `value` is what
 * follows the colon, folding CRLFs included.  Sent as libmilter filters
 * expect it: folding as bare LF, the leading white space removed unless
 * `leadspc` (SMFIP_HDR_LEADSPC). */
int ms_milter_put_header(struct ms_buf *out, const char *name, size_t namelen, const char *value,
                         size_t valuelen, int leadspc);

/* ---- parser ---- */

struct ms_milter_reply {
    char cmd;                 /* SMFIR_* (or SMFIC_OPTNEG) */
    uint32_t version, actions, protocol; /* SMFIC_OPTNEG */
    const char *symlist;      /* SMFIC_OPTNEG: the SETSYMLIST pairs, raw */
    size_t symlistlen;
    uint32_t index;           /* INSHEADER, CHGHEADER */
    const char *name;         /* header name; CHGFROM, ADDRCPT*, DELRCPT address;
                               * QUARANTINE reason (NUL-terminated in the buffer) */
    size_t namelen;
    const char *value;        /* header value; CHGFROM, ADDRCPT_PAR ESMTP args ("" if none) */
    size_t valuelen;
    const char *data;         /* REPLBODY */
    size_t len;
    int code;                 /* REPLYCODE: 4xx or 5xx */
    char xcode[16];           /* REPLYCODE: "5.7.1", or "" */
    char text[MS_MILTER_TEXT_MAX + 1]; /* REPLYCODE: first line's text, control
                                        * octets replaced by '?' */
};

/* One packet from buf (see the top).  `optneg`: expect the answer to
 * SMFIC_OPTNEG (the only reply with that command octet). */
int ms_milter_parse(const char *buf, size_t len, int optneg, struct ms_milter_reply *r);
/* The macros a SETSYMLIST asks for at `stage`, or NULL (points into the
 * reply's buffer, NUL-terminated). */
const char *ms_milter_symlist(const struct ms_milter_reply *r, enum ms_milter_stage stage);
/* "reply", "accept", ...: the name of a reply command for logs and metrics
 * ("?" for others). */
const char *ms_milter_reply_name(char cmd);

/* ---- editor ---- */

struct ms_milter_field {
    const char *name;    /* into the message, or owned (edit) */
    size_t namelen;
    const char *value;   /* after the colon, as it will be written */
    size_t valuelen;
    int owned;           /* name and value are malloc'd copies */
    int deleted;
};

struct ms_milter_msg {
    struct ms_milter_field *f;
    size_t n, cap;
    size_t nedits;
    int has_header;        /* the message had a header section */
    const char *body;      /* after the empty line (or the whole message) */
    size_t bodylen;
    struct ms_buf newbody; /* REPLBODY, once replaced */
    int body_replaced;
};

/* Split a message (CRLF lines, as it goes to Kafka).  The fields must have
 * passed the header checks (fe_header.h); a line that is neither a field
 * nor a continuation ends the header section.  `bodymax`: the largest
 * replacement body taken. */
void ms_milter_msg_init(struct ms_milter_msg *m, const char *msg, size_t len, size_t bodymax);
void ms_milter_msg_free(struct ms_milter_msg *m);
/* The edits, as the filters sent them (values with LF or CRLF folding and no
 * leading space: written "Name: value").  0, MS_EPROTO (a name that is no
 * field name, a value with a bare CR or NUL), or MS_ETOOBIG. */
int ms_milter_msg_add(struct ms_milter_msg *m, const char *name, size_t namelen,
                      const char *value, size_t valuelen);
/* Insert at `index` (0: before the first field; past the end: at the end). */
int ms_milter_msg_insert(struct ms_milter_msg *m, uint32_t index, const char *name,
                         size_t namelen, const char *value, size_t valuelen);
/* The index-th (from 1) field named `name` gets `value`; an empty value
 * deletes it; no such field: added (as libmilter's smfi_chgheader says). */
int ms_milter_msg_change(struct ms_milter_msg *m, uint32_t index, const char *name,
                         size_t namelen, const char *value, size_t valuelen);
/* Append a REPLBODY chunk (the first one starts the new body). */
int ms_milter_msg_body(struct ms_milter_msg *m, const char *data, size_t len);
/* 1 when anything was edited. */
int ms_milter_msg_edited(const struct ms_milter_msg *m);
/* Write the edited message to out: 0 or MS_ETOOBIG. */
int ms_milter_msg_write(const struct ms_milter_msg *m, struct ms_buf *out);

#endif
