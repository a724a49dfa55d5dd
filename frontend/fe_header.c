/*
 * fe_header.c - the header section as it streams in, and the format rules
 * (see fe_header.h).
 *
 * A byte-level state machine over lines.  A field is open from its name to
 * the next line that does not start with WSP (RFC 5322 2.2.3: unfolding
 * removes a CRLF followed by WSP); it is closed, and its address field
 * checked, when that line starts.  Field bodies are scanned in runs, so a
 * header costs a few instructions per octet.
 */
#include "fe_header.h"
#include "ms_addrlist.h"
#include "smtp_data.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

enum {
    S_BOL = 0, /* at the start of a line, no field open (the first line) */
    S_NAME,    /* in a field name */
    S_NAME_WSP, /* after the name: white space (obs-optional, RFC 5322 4.5), then the colon */
    S_VALUE,   /* in a field body */
    S_VALUE_CR, /* field body, after CR */
    S_EOL,     /* start of a line with a field open: folding or a new line */
    S_END_CR,  /* a line that starts with CR: the empty line, we hope */
    S_DONE
};

static const char *const field_names[FE_HF_COUNT] = {
    "Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID", "In-Reply-To",
    "References", "Subject",
};
static const unsigned char field_name_lens[FE_HF_COUNT] = {4, 4, 6, 8, 2, 2, 3, 10, 11, 10, 7};

static const char *const rule_names[FE_FMT_COUNT] = {
    "ok",
    "header_size",
    "header_fields",
    "field_length",
    "header_octet",
    "header_syntax",
    "eightbit_header",
    "eightbit_body",
    "from_missing",
    "from_duplicate",
    "field_duplicate",
    "address_syntax",
    "from_owned",
};

const char *fe_fmt_rule_name(enum fe_fmt_rule rule)
{
    return (unsigned)rule < FE_FMT_COUNT ? rule_names[rule] : "?";
}

const char *fe_hdr_field_name(enum fe_hdr_field f)
{
    return (unsigned)f < FE_HF_COUNT ? field_names[f] : "?";
}

void fe_hdr_init(struct fe_hdr *h, const struct fe_hdr_limits *lim)
{
    memset(h, 0, sizeof(*h));
    h->lim = *lim;
    /* 0 is no limit (settings made outside the config, in tests). */
    if (h->lim.section_max == 0)
        h->lim.section_max = (size_t)-1 - 1;
    if (h->lim.fields_max == 0)
        h->lim.fields_max = (size_t)-1;
    if (h->lim.field_max == 0)
        h->lim.field_max = (size_t)-1;
    h->bad_addr = FE_HF_COUNT;
    h->_state = S_BOL;
    h->_field = FE_HF_COUNT;
    ms_buf_init(&h->from, h->lim.field_max);
    ms_buf_init(&h->_val, h->lim.field_max);
}

void fe_hdr_free(struct fe_hdr *h)
{
    ms_buf_free(&h->from);
    ms_buf_free(&h->_val);
}

/* printable US-ASCII except ':' (RFC 5322 2.2, ftext 3.6.8). */
static int is_ftext(unsigned char c) { return c >= 33 && c <= 126 && c != ':'; }

static void stop(struct fe_hdr *h, enum fe_fmt_rule why)
{
    if (h->error == FE_FMT_OK)
        h->error = why;
    h->section_len = 0; /* unknown, and of no use: the message is refused */
    h->done = 1;
    h->_state = S_DONE;
}

/* The current line is not a field: the section ended where it began. */
static void not_a_field(struct fe_hdr *h)
{
    if (h->nfields > 0)
        h->malformed = 1; /* else: no header section at all */
    h->section_len = h->_linestart;
    h->done = 1;
    h->_state = S_DONE;
    if (h->section_len > h->lim.section_max)
        stop(h, FE_FMT_HEADER_SIZE);
}

static enum fe_hdr_field classify(const struct fe_hdr *h)
{
    int f;

    if (h->_namelen > sizeof(h->_name))
        return FE_HF_COUNT;
    for (f = 0; f < FE_HF_COUNT; f++)
        if (field_name_lens[f] == h->_namelen &&
            strncasecmp(field_names[f], h->_name, h->_namelen) == 0)
            return (enum fe_hdr_field)f;
    return FE_HF_COUNT;
}

/* The colon: a field begins. */
static void field_start(struct fe_hdr *h)
{
    if (++h->nfields > h->lim.fields_max) {
        stop(h, FE_FMT_HEADER_FIELDS);
        return;
    }
    h->_field = classify(h);
    h->_capture = 0;
    if (h->_field != FE_HF_COUNT) {
        h->counts[h->_field]++;
        if (h->_field == FE_HF_FROM || h->_field == FE_HF_SENDER ||
            h->_field == FE_HF_REPLY_TO) {
            h->_capture = 1;
            ms_buf_reset(&h->_val);
        }
    }
    h->_state = S_VALUE;
}

/* The open field is complete: check the addresses of an address field
 * (RFC 5322 3.6.2). */
static void field_end(struct fe_hdr *h)
{
    enum ms_addr_kind kind;

    if (!h->_capture)
        return;
    h->_capture = 0;
    kind = h->_field == FE_HF_SENDER  ? MS_ADDR_MAILBOX
           : h->_field == FE_HF_FROM ? MS_ADDR_MAILBOX_LIST
                                      : MS_ADDR_ADDRESS_LIST;
    if (ms_addrlist_parse(h->_val.data, h->_val.len, kind, NULL, NULL) < 0 &&
        h->bad_addr == FE_HF_COUNT)
        h->bad_addr = h->_field;
    if (h->_field == FE_HF_FROM && h->counts[FE_HF_FROM] == 1) {
        /* Keep the first From for the caller (the senders check). */
        struct ms_buf t = h->from;
        h->from = h->_val;
        h->_val = t;
    }
}

/* n more octets of the open field, unfolded. */
static int field_grow(struct fe_hdr *h, size_t n)
{
    h->_fieldlen += n;
    if (h->_fieldlen > h->lim.field_max) {
        stop(h, FE_FMT_FIELD_LENGTH);
        return -1;
    }
    return 0;
}

size_t fe_hdr_feed(struct fe_hdr *h, const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t i = 0, j, lim;
    uint64_t acc;
    unsigned char c;

    if (h->done)
        return 0;
    /* Read no further than one octet past the section limit. */
    lim = h->lim.section_max - h->section_len;
    lim = len <= lim ? len : lim + 1;
    while (i < lim && h->_state != S_DONE) {
        c = p[i];
        switch (h->_state) {
        case S_EOL:
            if (c == ' ' || c == '\t') { /* folding: the field goes on */
                h->_state = S_VALUE;
                continue;
            }
            field_end(h);
            h->_state = S_BOL; /* a new line: read it from its first octet */
            continue;
        case S_BOL:
            h->_linestart = h->section_len + i;
            if (c == '\r') {
                h->_state = S_END_CR;
                i++;
                continue;
            }
            if (!is_ftext(c)) {
                not_a_field(h);
                continue;
            }
            h->_namelen = 0;
            h->_fieldlen = 0;
            h->_state = S_NAME;
            continue;
        case S_NAME:
            for (j = i; j < lim && is_ftext(p[j]); j++)
                ;
            if (j > i) {
                if (h->_namelen < sizeof(h->_name))
                    memcpy(h->_name + h->_namelen, p + i,
                           j - i < sizeof(h->_name) - h->_namelen ? j - i
                                                                  : sizeof(h->_name) - h->_namelen);
                h->_namelen += j - i;
                if (field_grow(h, j - i) < 0)
                    continue;
                i = j;
                continue;
            }
            h->_state = S_NAME_WSP; /* what follows the name, from this octet */
            /* fall through */
        case S_NAME_WSP:
            if (c == ' ' || c == '\t') {
                i++;
                continue;
            }
            if (c == ':') {
                i++;
                if (field_grow(h, 1) == 0)
                    field_start(h);
                continue;
            }
            not_a_field(h);
            continue;
        case S_VALUE:
            /* A run of field body octets, up to the CR (or a bare LF or a
             * NUL), eight at a time as the DATA reader scans the body. */
            acc = 0;
            j = fe_text_run(buf, i, lim, &acc);
            if (j > i) {
                if (acc & FE_TEXT_8BIT)
                    h->eightbit = 1;
                if (field_grow(h, j - i) < 0)
                    continue;
                if (h->_capture && ms_buf_append(&h->_val, buf + i, j - i) != 0) {
                    stop(h, FE_FMT_FIELD_LENGTH);
                    continue;
                }
                i = j;
                continue;
            }
            if (c == '\r') {
                h->_state = S_VALUE_CR;
                i++;
                continue;
            }
            stop(h, FE_FMT_HEADER_OCTET); /* bare LF or NUL */
            continue;
        case S_VALUE_CR:
            if (c == '\n') {
                h->_state = S_EOL;
                i++;
                continue;
            }
            stop(h, FE_FMT_HEADER_OCTET); /* bare CR */
            continue;
        case S_END_CR:
            if (c == '\n') {
                i++;
                h->section_len += i;
                h->done = 1;
                h->_state = S_DONE;
                if (h->section_len > h->lim.section_max)
                    stop(h, FE_FMT_HEADER_SIZE);
                return i;
            }
            stop(h, FE_FMT_HEADER_OCTET);
            continue;
        }
    }
    if (h->_state != S_DONE) {
        h->section_len += i;
        if (h->section_len > h->lim.section_max)
            stop(h, FE_FMT_HEADER_SIZE);
    }
    return i;
}

void fe_hdr_finish(struct fe_hdr *h)
{
    if (h->done)
        return;
    switch (h->_state) {
    case S_EOL:
    case S_VALUE:
        /* The message ends in a field (no empty line, no body): RFC 5322
         * 3.5 makes the body, and the CRLF before it, optional. */
        field_end(h);
        break;
    case S_VALUE_CR:
    case S_END_CR:
        stop(h, FE_FMT_HEADER_OCTET); /* ends in a bare CR */
        return;
    case S_NAME:
    case S_NAME_WSP:
        not_a_field(h);
        return;
    default:
        break;
    }
    h->done = 1;
    h->_state = S_DONE;
}

enum fe_fmt_rule fe_hdr_judge(const struct fe_hdr *h, const struct fe_format_rules *r,
                              int smtputf8, int body_8bit, enum fe_hdr_field *field)
{
    int f;

    *field = FE_HF_COUNT;
    if (h->error != FE_FMT_OK)
        return h->error;
    if (h->malformed && r->header_syntax)
        return FE_FMT_HEADER_SYNTAX;
    /* RFC 6532 3: UTF-8 in header fields only with SMTPUTF8 (RFC 6531);
     * RFC 6152 2: 8-bit body octets only with BODY=8BITMIME. */
    if (h->eightbit && !smtputf8 && r->eightbit_header)
        return FE_FMT_EIGHTBIT_HEADER;
    if (body_8bit && r->eightbit_body)
        return FE_FMT_EIGHTBIT_BODY;
    /* RFC 5322 3.6: From exactly once; the others of its table at most
     * once. */
    if (h->counts[FE_HF_FROM] > 1 && r->from_duplicate)
        return FE_FMT_FROM_DUPLICATE;
    if (h->counts[FE_HF_FROM] == 0 && r->from_missing)
        return FE_FMT_FROM_MISSING;
    if (r->field_duplicate)
        for (f = 0; f < FE_HF_COUNT; f++)
            if (f != FE_HF_FROM && h->counts[f] > 1) {
                *field = (enum fe_hdr_field)f;
                return FE_FMT_FIELD_DUPLICATE;
            }
    if (h->bad_addr != FE_HF_COUNT && r->address_syntax) {
        *field = h->bad_addr;
        return FE_FMT_ADDRESS_SYNTAX;
    }
    return FE_FMT_OK;
}

void fe_fmt_reply(enum fe_fmt_rule rule, enum fe_hdr_field field, char *out, size_t outlen)
{
    const char *name = fe_hdr_field_name(field);

    switch (rule) {
    case FE_FMT_OK:
        snprintf(out, outlen, "250 2.0.0 Ok");
        return;
    case FE_FMT_HEADER_SIZE:
        snprintf(out, outlen, "552 5.3.4 Message rejected: header section too big");
        return;
    case FE_FMT_HEADER_FIELDS:
        snprintf(out, outlen, "552 5.3.4 Message rejected: too many header fields");
        return;
    case FE_FMT_FIELD_LENGTH:
        snprintf(out, outlen, "552 5.3.4 Message rejected: header field too long");
        return;
    case FE_FMT_HEADER_OCTET:
        snprintf(out, outlen,
                 "554 5.6.0 Message rejected: bare CR, bare LF or NUL in a header field "
                 "(RFC 5322 2.2)");
        return;
    case FE_FMT_HEADER_SYNTAX:
        snprintf(out, outlen,
                 "554 5.6.0 Message rejected: a header line that is not a field (RFC 5322 2.2)");
        return;
    case FE_FMT_EIGHTBIT_HEADER:
        snprintf(out, outlen,
                 "550 5.6.0 Message rejected: 8-bit header needs SMTPUTF8 (RFC 6532 3)");
        return;
    case FE_FMT_EIGHTBIT_BODY:
        snprintf(out, outlen,
                 "550 5.6.0 Message rejected: 8-bit body needs BODY=8BITMIME (RFC 6152)");
        return;
    case FE_FMT_FROM_MISSING:
        snprintf(out, outlen, "550 5.6.0 Message rejected: no From field (RFC 5322 3.6)");
        return;
    case FE_FMT_FROM_DUPLICATE:
        snprintf(out, outlen,
                 "550 5.6.0 Message rejected: more than one From field (RFC 5322 3.6)");
        return;
    case FE_FMT_FIELD_DUPLICATE:
        snprintf(out, outlen, "550 5.6.0 Message rejected: more than one %s field (RFC 5322 3.6)",
                 name);
        return;
    case FE_FMT_ADDRESS_SYNTAX:
        snprintf(out, outlen,
                 "550 5.1.7 Message rejected: invalid address in the %s field (RFC 5322 3.4)",
                 name);
        return;
    case FE_FMT_FROM_NOT_OWNED:
        snprintf(out, outlen,
                 "550 5.7.1 Message rejected: From address not owned by the authenticated user");
        return;
    case FE_FMT_COUNT:
        break;
    }
    snprintf(out, outlen, "554 5.6.0 Message rejected");
}
