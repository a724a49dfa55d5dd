/*
 * smtp_data.c - the DATA reader (see smtp_data.h).
 *
 * A byte-level state machine.  Line boundaries exist only at CRLF: a bare LF
 * or bare CR is recorded as an error and treated as ordinary content, so
 * the state after it is "inside a line" and a following "." can never start
 * the end-of-data line.  Inside a line, runs of ordinary octets are found
 * eight at a time (fe_text_run), and a whole line within the limits is copied
 * with its CRLF at once: the body is most of the frontend's work per octet
 * (docs/scaling.md, "Message format checks").
 */
#include "smtp_data.h"
#include "ms_error.h"

#include <string.h>

enum {
    ST_BOL = 0, /* at the beginning of a line (after CRLF, or at the start) */
    ST_DOT,     /* "." at the beginning of a line */
    ST_DOT_CR,  /* ".\r" at the beginning of a line */
    ST_TEXT,    /* inside a line */
    ST_CR       /* inside a line, after "\r" */
};

void fe_data_init(struct fe_data_reader *r, struct ms_buf *out, size_t max_size)
{
    memset(r, 0, sizeof(*r));
    r->out = out;
    r->max_size = max_size;
    r->_state = ST_BOL;
}

const char *fe_data_reply(enum fe_data_status s)
{
    switch (s) {
    case FE_DATA_OK: return NULL;
    case FE_DATA_BARE_LF:
        return "554 5.6.0 Message rejected: bare LF in message (RFC 5321 2.3.8)";
    case FE_DATA_BARE_CR:
        return "554 5.6.0 Message rejected: bare CR in message (RFC 5321 2.3.8)";
    case FE_DATA_NUL: return "554 5.6.0 Message rejected: NUL octet in message";
    case FE_DATA_LINE_TOO_LONG:
        return "500 5.5.2 Message rejected: line longer than 1000 octets (RFC 5321 4.5.3.1.6)";
    case FE_DATA_TOO_BIG:
        return "552 5.3.4 Message size exceeds fixed maximum message size";
    }
    return "554 5.6.0 Message rejected";
}

/* Word-at-a-time tests on eight octets (exact as to whether one octet
 * matches; only the lowest match is sure to be flagged at its place, as a
 * borrow may flag octets above it). */
#define ONES 0x0101010101010101ULL
#define HIGH_BITS FE_TEXT_8BIT
#define HAS_ZERO(v) (((v) - ONES) & ~(v) & HIGH_BITS)
#define HAS_LESS(v, n) (((v) - ONES * (n)) & ~(v) & HIGH_BITS) /* n <= 128 */

/* Eight octets at a time: a word with no control octet (CR, LF and NUL are
 * all below 0x0e) costs a few instructions, instead of a few per octet, and
 * a message is almost all such runs.  ORing the octets on the way makes the
 * 8-bit mark free: no second pass over the body. */
size_t fe_text_run(const char *p, size_t i, size_t n, uint64_t *acc)
{
    uint64_t v, m, a = 0;

    for (; i + 8 <= n; i += 8) {
        memcpy(&v, p + i, 8);
        if (HAS_LESS(v, 0x0e)) {
            m = HAS_ZERO(v) | HAS_ZERO(v ^ (ONES * '\r')) | HAS_ZERO(v ^ (ONES * '\n'));
            if (m == 0) {
                a |= v; /* a TAB or another control octet: ordinary */
                continue;
            }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* The lowest flagged octet is the first match: p[i] is the
             * word's low octet. */
            m = (uint64_t)__builtin_ctzll(m) >> 3;
            a |= v & ((1ULL << (8 * m)) - 1); /* m < 8: the octets before it */
            *acc |= a;
            return i + m;
#else
            break; /* the octet loop below finds which */
#endif
        }
        a |= v;
    }
    for (; i < n && p[i] != '\r' && p[i] != '\n' && p[i] != '\0'; i++)
        a |= (unsigned char)p[i];
    *acc |= a;
    return i;
}

static void fail(struct fe_data_reader *r, enum fe_data_status s)
{
    if (r->status == FE_DATA_OK)
        r->status = s;
}

/* Copy message octets, enforcing the size limit. */
static void emit(struct fe_data_reader *r, const char *p, size_t n)
{
    r->size += n;
    if (r->status != FE_DATA_OK)
        return;
    if (r->size > r->max_size || ms_buf_append(r->out, p, n) != 0)
        fail(r, FE_DATA_TOO_BIG);
}

static void count_line(struct fe_data_reader *r, size_t n)
{
    r->_linelen += n;
    if (r->_linelen > FE_SMTP_TEXT_LINE_MAX)
        fail(r, FE_DATA_LINE_TOO_LONG);
}

int fe_data_feed(struct fe_data_reader *r, const char *buf, size_t len)
{
    size_t i = 0, j;
    uint64_t acc;
    unsigned char c;

    while (i < len) {
        c = (unsigned char)buf[i];
        switch (r->_state) {
        case ST_BOL:
            if (c == '.') {
                count_line(r, 1);
                r->_state = ST_DOT;
                i++;
                continue;
            }
            r->_state = ST_TEXT;
            continue;
        case ST_DOT:
            if (c == '\r') {
                r->_state = ST_DOT_CR;
                i++;
                continue;
            }
            /* Dot-stuffing (RFC 5321 4.5.2): drop the leading dot. */
            r->_state = ST_TEXT;
            continue;
        case ST_DOT_CR:
            if (c == '\n') {
                i++;
                r->wire += i;
                r->_state = ST_BOL;
                r->_linelen = 0;
                return (int)i;
            }
            /* ".\r" then something else: a bare CR after a stuffed dot. */
            fail(r, FE_DATA_BARE_CR);
            emit(r, "\r", 1);
            count_line(r, 1);
            r->_state = ST_TEXT;
            continue;
        case ST_TEXT:
            /* Fast path: a run of ordinary octets. */
            acc = 0;
            j = fe_text_run(buf, i, len, &acc);
            if (j + 1 < len && buf[j] == '\r' && buf[j + 1] == '\n' &&
                r->status == FE_DATA_OK && r->size + (j + 2 - i) <= r->max_size &&
                r->_linelen + (j + 2 - i) <= FE_SMTP_TEXT_LINE_MAX) {
                /* The run and its CRLF, a whole line within the limits: one
                 * copy, and no limit to check octet by octet (the same result
                 * as the steps below, which take a line that breaks one). */
                emit(r, buf + i, j + 2 - i);
                if (r->want_8bit && (acc & HIGH_BITS))
                    r->last_8bit = r->out->len - 2;
                r->_linelen = 0;
                r->_state = ST_BOL;
                i = j + 2;
                continue;
            }
            if (j > i) {
                emit(r, buf + i, j - i);
                if (r->want_8bit && (acc & HIGH_BITS))
                    r->last_8bit = r->out->len;
                count_line(r, j - i);
                i = j;
                continue;
            }
            if (c == '\r') {
                r->_state = ST_CR;
            } else if (c == '\n') {
                fail(r, FE_DATA_BARE_LF);
                emit(r, "\n", 1);
                count_line(r, 1);
            } else { /* NUL */
                fail(r, FE_DATA_NUL);
                emit(r, "", 1);
                count_line(r, 1);
            }
            i++;
            continue;
        case ST_CR:
            if (c == '\n') {
                count_line(r, 2);
                emit(r, "\r\n", 2);
                r->_linelen = 0;
                r->_state = ST_BOL;
                i++;
                continue;
            }
            fail(r, FE_DATA_BARE_CR);
            emit(r, "\r", 1);
            count_line(r, 1);
            r->_state = ST_TEXT;
            continue;
        }
    }
    r->wire += len;
    return MS_EAGAIN;
}

/* ---- BDAT (RFC 3030) ---- */

void fe_bdat_init(struct fe_bdat_reader *r, struct ms_buf *out, size_t max_size, int binary)
{
    memset(r, 0, sizeof(*r));
    r->out = out;
    r->max_size = max_size;
    r->binary = binary;
}

static void bdat_fail(struct fe_bdat_reader *r, enum fe_data_status s)
{
    if (r->status == FE_DATA_OK)
        r->status = s;
}

enum fe_data_status fe_bdat_chunk(struct fe_bdat_reader *r, uint64_t n)
{
    if (n > r->max_size || r->size + n > r->max_size) {
        r->size = r->max_size + 1; /* stays over, whatever follows */
        bdat_fail(r, FE_DATA_TOO_BIG);
    } else {
        r->size += n;
    }
    r->left = n;
    return r->status;
}

static void bdat_line(struct fe_bdat_reader *r, size_t n)
{
    r->_linelen += n;
    if (r->_linelen > FE_SMTP_TEXT_LINE_MAX)
        bdat_fail(r, FE_DATA_LINE_TOO_LONG);
}

/* The line checks of a text body over n octets (no copying). */
static void bdat_check(struct fe_bdat_reader *r, const char *p, size_t n)
{
    size_t i, j;
    uint64_t acc;
    unsigned char c;

    for (i = 0; i < n;) {
        if (r->_cr) {
            r->_cr = 0;
            if (p[i] == '\n') {
                bdat_line(r, 2);
                r->_linelen = 0;
                i++;
                continue;
            }
            bdat_fail(r, FE_DATA_BARE_CR);
            bdat_line(r, 1);
        }
        acc = 0;
        j = fe_text_run(p, i, n, &acc);
        if (j > i) {
            /* Checked before the chunk is appended: where it will end. */
            if (r->want_8bit && (acc & HIGH_BITS))
                r->last_8bit = r->out->len + j;
            bdat_line(r, j - i);
            i = j;
            continue;
        }
        c = (unsigned char)p[i++];
        if (c == '\r') {
            r->_cr = 1;
        } else {
            bdat_fail(r, c == '\n' ? FE_DATA_BARE_LF : FE_DATA_NUL);
            bdat_line(r, 1);
        }
    }
}

size_t fe_bdat_feed(struct fe_bdat_reader *r, const char *buf, size_t len)
{
    size_t n = len < r->left ? len : (size_t)r->left;

    r->left -= n;
    if (r->status != FE_DATA_OK)
        return n; /* rejected already: consume, keep nothing */
    if (!r->binary)
        bdat_check(r, buf, n);
    if (r->status == FE_DATA_OK && ms_buf_append(r->out, buf, n) != 0)
        bdat_fail(r, FE_DATA_TOO_BIG);
    return n;
}

enum fe_data_status fe_bdat_finish(struct fe_bdat_reader *r)
{
    if (r->binary || r->status != FE_DATA_OK)
        return r->status;
    if (r->_cr)
        bdat_fail(r, FE_DATA_BARE_CR);
    else if (r->_linelen > 0 && ms_buf_append(r->out, "\r\n", 2) != 0)
        bdat_fail(r, FE_DATA_TOO_BIG);
    return r->status;
}
