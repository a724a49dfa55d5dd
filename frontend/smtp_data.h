/*
 * smtp_data.h - the DATA reader (RFC 5321 4.1.1.4, 4.5.2), a pure parser.
 *
 * Fed the octets that follow the 354 reply, it removes dot-stuffing, copies
 * the message into the caller's buffer and finds the end of data.  The end is
 * only ever <CRLF>.<CRLF> (the DATA command's own CRLF counts as the first
 * one): "\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n" and friends are message
 * content, never an end, so no SMTP smuggling is possible through us.
 *
 * Problems do not stop reading: the reader keeps looking for the real end and
 * remembers the first problem; the session then rejects the whole message
 * with fe_data_reply().  Nothing is silently truncated: once a limit is
 * passed the reader stops copying and the message is rejected.
 *
 *   FE_SMTP_TEXT_LINE_MAX  line incl. CRLF (RFC 5321 4.5.3.1.6)  500 5.5.2
 *   max_size               unstuffed message octets (SIZE)       552 5.3.4
 *   bare LF, bare CR, NUL  RFC 5321 2.3.8, 4.1.1.4               554 5.6.0
 *
 * Asked to (want_8bit = 1 after init), both readers note where the last
 * octet >= 0x80 went (last_8bit, 0 when none), so that the caller can tell
 * an 8-bit body from an 8-bit header (fe_header.h) without reading the
 * message again.
 *
 * The caller owns the reader and the output buffer; any thread; unit-tested
 * by tests/unit/test_smtp_data.c, fuzzed by tests/fuzz/fuzz_fe_data.c and
 * tests/fuzz/fuzz_fe_bdat.c.
 */
#ifndef FE_SMTP_DATA_H
#define FE_SMTP_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"

#define FE_SMTP_TEXT_LINE_MAX 1000 /* octets including CRLF */

enum fe_data_status {
    FE_DATA_OK = 0,
    FE_DATA_BARE_LF,
    FE_DATA_BARE_CR,
    FE_DATA_NUL,
    FE_DATA_LINE_TOO_LONG,
    FE_DATA_TOO_BIG
};

struct fe_data_reader {
    struct ms_buf *out;         /* message octets are appended here */
    size_t max_size;            /* message size limit (unstuffed octets) */
    size_t size;                /* unstuffed octets seen, counted past the limit too */
    uint64_t wire;              /* octets consumed from the wire */
    enum fe_data_status status; /* the first problem, FE_DATA_OK if none */
    int want_8bit;              /* note last_8bit (the caller sets it) */
    size_t last_8bit;           /* out->len past the last line piece with an octet >= 0x80 */
    int _state;
    size_t _linelen;
};

void fe_data_init(struct fe_data_reader *r, struct ms_buf *out, size_t max_size);

/* Consume input.  Returns the octets consumed through the end-of-data line
 * when it was found (then r->status tells whether the message is good), or
 * MS_EAGAIN when all of buf was consumed and more is needed. */
int fe_data_feed(struct fe_data_reader *r, const char *buf, size_t len);

/* The reply line (no CRLF) that rejects a message with this status; NULL for
 * FE_DATA_OK. */
const char *fe_data_reply(enum fe_data_status s);

/*
 * The BDAT reader (RFC 3030 2): the same checks on a message that comes in
 * chunks of exact octet counts.  Octets are taken as they are: no
 * dot-stuffing, no end-of-data line.  For a text body (BODY=7BIT, 8BITMIME
 * or none) line ends must still be CRLF (a CRLF may straddle two chunks),
 * with no NUL and no line over FE_SMTP_TEXT_LINE_MAX, so that nothing handed
 * on differs from what DATA would accept; BODY=BINARYMIME (binary = 1) is
 * taken as it is, only the size counts.
 *
 * fe_bdat_chunk() announces the next chunk; fe_bdat_feed() consumes at most
 * what is left of it; fe_bdat_finish() after the LAST chunk.  As with DATA,
 * problems are remembered in r->status and the caller rejects the message.
 * The size limit is checked on the announced size, so a chunk that would go
 * over is known before its octets arrive (they must still be consumed).
 */
struct fe_bdat_reader {
    struct ms_buf *out;
    size_t max_size;
    uint64_t size;              /* octets announced so far, all chunks */
    int binary;                 /* BODY=BINARYMIME: no line checks */
    enum fe_data_status status; /* the first problem, FE_DATA_OK if none */
    int want_8bit;              /* as in fe_data_reader (text bodies only) */
    size_t last_8bit;
    uint64_t left;              /* octets of the current chunk still to come */
    int _cr;                    /* the last octet was a CR */
    size_t _linelen;
};

void fe_bdat_init(struct fe_bdat_reader *r, struct ms_buf *out, size_t max_size, int binary);
/* A chunk of n octets follows.  Returns FE_DATA_TOO_BIG (also set in
 * r->status) when the message would pass max_size, else r->status. */
enum fe_data_status fe_bdat_chunk(struct fe_bdat_reader *r, uint64_t n);
/* Consume up to min(len, r->left) octets; returns how many. */
size_t fe_bdat_feed(struct fe_bdat_reader *r, const char *buf, size_t len);
/* After the LAST chunk: a text body ending in a bare CR is rejected, one
 * whose last line has no CRLF gets one (as Postfix does: a message is made
 * of CRLF-terminated lines, RFC 5322 2.1).  Returns r->status. */
enum fe_data_status fe_bdat_finish(struct fe_bdat_reader *r);

/* The end of the run of ordinary octets buf[i..n): the first CR, LF or NUL
 * at or after i, else n.  The octets before it are OR-ed into *acc: one of
 * them is >= 0x80 iff *acc & FE_TEXT_8BIT.  Word at a time; the readers'
 * and the header parser's (fe_header.c) scan. */
#define FE_TEXT_8BIT 0x8080808080808080ULL
size_t fe_text_run(const char *buf, size_t i, size_t n, uint64_t *acc);

#endif
