/*
 * ms_milter.c - the milter protocol's encoder, reply parser and message
 * editor; see ms_milter.h.
 */
#include "ms_milter.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- encoder ---- */

static void put32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static uint32_t get32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;

    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

int ms_milter_put_head(struct ms_buf *out, char cmd, size_t len)
{
    char h[5];

    if (len >= MS_MILTER_PACKET_MAX * 64)
        return MS_ETOOBIG; /* nothing we send is ever near this */
    put32(h, (uint32_t)len + 1);
    h[4] = cmd;
    return ms_buf_append(out, h, sizeof(h));
}

int ms_milter_put(struct ms_buf *out, char cmd, const void *data, size_t len)
{
    size_t at = out->len;
    int r;

    if ((r = ms_milter_put_head(out, cmd, len)) < 0)
        return r;
    if (len > 0 && (r = ms_buf_append(out, data, len)) < 0) {
        out->len = at;
        return r;
    }
    return 0;
}

int ms_milter_put_optneg(struct ms_buf *out, uint32_t version, uint32_t actions,
                         uint32_t protocol)
{
    char d[12];

    put32(d, version);
    put32(d + 4, actions);
    put32(d + 8, protocol);
    return ms_milter_put(out, SMFIC_OPTNEG, d, sizeof(d));
}

/* Append a packet whose data is built after its head: fix the length when
 * done, or undo. */
static size_t open_packet(struct ms_buf *out, char cmd, int *r)
{
    size_t at = out->len;

    *r = ms_milter_put_head(out, cmd, 0);
    return at;
}

static int close_packet(struct ms_buf *out, size_t at, int r)
{
    if (r < 0) {
        out->len = at;
        return r;
    }
    put32(out->data + at, (uint32_t)(out->len - at - 4));
    return 0;
}

static int append_str(struct ms_buf *out, const char *s)
{
    return ms_buf_append(out, s, strlen(s) + 1);
}

int ms_milter_put_macros(struct ms_buf *out, char cmd, const char *const *kv, size_t n)
{
    size_t i;
    int r;
    size_t at = open_packet(out, SMFIC_MACRO, &r);

    if (r == 0)
        r = ms_buf_append(out, &cmd, 1);
    for (i = 0; i < n && r == 0; i++) {
        if (kv[2 * i + 1] == NULL || kv[2 * i + 1][0] == '\0')
            continue;
        if ((r = append_str(out, kv[2 * i])) == 0)
            r = append_str(out, kv[2 * i + 1]);
    }
    return close_packet(out, at, r);
}

int ms_milter_put_connect(struct ms_buf *out, const char *host, char family, uint16_t port,
                          const char *addr)
{
    char p[2];
    int r;
    size_t at = open_packet(out, SMFIC_CONNECT, &r);

    if (r == 0)
        r = append_str(out, host);
    if (r == 0)
        r = ms_buf_append(out, &family, 1);
    if (r == 0 && family != 'U') {
        p[0] = (char)(port >> 8);
        p[1] = (char)port;
        if ((r = ms_buf_append(out, p, 2)) == 0)
            r = append_str(out, addr);
    }
    return close_packet(out, at, r);
}

int ms_milter_put_strings(struct ms_buf *out, char cmd, const char *const *v, size_t n)
{
    size_t i;
    int r;
    size_t at = open_packet(out, cmd, &r);

    for (i = 0; i < n && r == 0; i++)
        r = append_str(out, v[i]);
    return close_packet(out, at, r);
}

int ms_milter_put_header(struct ms_buf *out, const char *name, size_t namelen, const char *value,
                         size_t valuelen, int leadspc)
{
    size_t i = 0, start;
    int r;
    size_t at = open_packet(out, SMFIC_HEADER, &r);

    if (r == 0 && (r = ms_buf_append(out, name, namelen)) == 0)
        r = ms_buf_append(out, "", 1);
    if (!leadspc)
        while (i < valuelen && (value[i] == ' ' || value[i] == '\t'))
            i++;
    /* Folding as bare LF: what Sendmail and Postfix hand their filters. */
    for (start = i; i < valuelen && r == 0; i++) {
        if (value[i] == '\r' && i + 1 < valuelen && value[i + 1] == '\n') {
            r = ms_buf_append(out, value + start, i - start);
            start = i + 1;
        }
    }
    if (r == 0 && (r = ms_buf_append(out, value + start, valuelen - start)) == 0)
        r = ms_buf_append(out, "", 1);
    return close_packet(out, at, r);
}

/* ---- parser ---- */

/* The next NUL-terminated string of [*p, end): its length, or -1. */
static long take_str(const char **p, const char *end, const char **s)
{
    const char *nul = memchr(*p, '\0', (size_t)(end - *p));

    if (nul == NULL)
        return -1;
    *s = *p;
    *p = nul + 1;
    return nul - *s;
}

/* A field name (RFC 5322 2.2): printable US-ASCII but ':', at least one. */
static int field_name_ok(const char *n, size_t len)
{
    size_t i;

    if (len == 0)
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)n[i] <= 32 || (unsigned char)n[i] >= 127 || n[i] == ':')
            return 0;
    return 1;
}

/* "550 5.7.1 text" (or "550-5.7.1 text\r\n550 ...": the first line). */
static int parse_replycode(const char *s, size_t len, struct ms_milter_reply *r)
{
    size_t i, j, end, n;
    int dots = 0, digits = 0;

    if (len < 3 || (s[0] != '4' && s[0] != '5') || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
        s[2] > '9' || (len > 3 && s[3] != ' ' && s[3] != '-'))
        return MS_EPROTO;
    r->code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    for (end = 0; end < len && s[end] != '\r' && s[end] != '\n'; end++)
        ;
    i = len > 3 ? 4 : 3;
    /* RFC 3463 2: class.subject.detail, the class that of the reply. */
    for (j = i; j < end && j - i < sizeof(r->xcode) - 1; j++) {
        if (s[j] == '.') {
            if (digits == 0)
                break;
            dots++, digits = 0;
        } else if (s[j] >= '0' && s[j] <= '9' && digits < 3) {
            digits++;
        } else {
            break;
        }
    }
    if (dots == 2 && digits > 0 && (j == end || s[j] == ' ') && s[i] == s[0] && s[i + 1] == '.') {
        memcpy(r->xcode, s + i, j - i);
        r->xcode[j - i] = '\0';
        i = j < end ? j + 1 : j;
    }
    for (n = 0; i < end && n < MS_MILTER_TEXT_MAX; i++, n++)
        r->text[n] = ((unsigned char)s[i] < 32 || s[i] == 127) ? '?' : s[i];
    r->text[n] = '\0';
    return 0;
}

int ms_milter_parse(const char *buf, size_t len, int optneg, struct ms_milter_reply *r)
{
    uint32_t plen;
    const char *p, *end;
    long a, b;

    if (len < 4)
        return MS_EAGAIN;
    plen = get32(buf);
    if (plen == 0 || plen > MS_MILTER_PACKET_MAX)
        return MS_EPROTO;
    if (len - 4 < plen)
        return MS_EAGAIN;
    memset(r, 0, sizeof(*r));
    r->cmd = buf[4];
    p = buf + 5;
    end = buf + 4 + plen;
    if (optneg != (r->cmd == SMFIC_OPTNEG))
        return MS_EPROTO;
    switch (r->cmd) {
    case SMFIC_OPTNEG:
        if (end - p < 12)
            return MS_EPROTO;
        r->version = get32(p);
        r->actions = get32(p + 4);
        r->protocol = get32(p + 8);
        r->symlist = p + 12;
        r->symlistlen = (size_t)(end - p - 12);
        /* Pairs of a 32-bit stage and a string. */
        for (p += 12; p < end;) {
            const char *m;
            if (end - p < 4 || get32(p) >= MS_MILTER_STAGES)
                return MS_EPROTO;
            p += 4;
            if (take_str(&p, end, &m) < 0)
                return MS_EPROTO;
        }
        break;
    case SMFIR_ACCEPT:
    case SMFIR_CONTINUE:
    case SMFIR_DISCARD:
    case SMFIR_REJECT:
    case SMFIR_TEMPFAIL:
    case SMFIR_PROGRESS:
    case SMFIR_SKIP:
    case SMFIR_CONN_FAIL:
    case SMFIR_SHUTDOWN:
        if (p != end)
            return MS_EPROTO;
        break;
    case SMFIR_REPLYCODE:
        if ((a = take_str(&p, end, &r->name)) < 0 || p != end)
            return MS_EPROTO;
        if (parse_replycode(r->name, (size_t)a, r) < 0)
            return MS_EPROTO;
        break;
    case SMFIR_INSHEADER:
    case SMFIR_CHGHEADER:
        if (end - p < 4)
            return MS_EPROTO;
        r->index = get32(p);
        p += 4;
        /* fall through */
    case SMFIR_ADDHEADER:
        if ((a = take_str(&p, end, &r->name)) < 0 || (b = take_str(&p, end, &r->value)) < 0 ||
            p != end || !field_name_ok(r->name, (size_t)a))
            return MS_EPROTO;
        r->namelen = (size_t)a;
        r->valuelen = (size_t)b;
        break;
    case SMFIR_CHGFROM:
    case SMFIR_ADDRCPT_PAR:
    case SMFIR_ADDRCPT:
    case SMFIR_DELRCPT:
    case SMFIR_QUARANTINE:
        if ((a = take_str(&p, end, &r->name)) < 0 || a == 0)
            return MS_EPROTO;
        r->namelen = (size_t)a;
        r->value = "";
        if (p < end && r->cmd != SMFIR_ADDRCPT && r->cmd != SMFIR_DELRCPT &&
            r->cmd != SMFIR_QUARANTINE) {
            if ((b = take_str(&p, end, &r->value)) < 0)
                return MS_EPROTO;
            r->valuelen = (size_t)b;
        }
        if (p != end)
            return MS_EPROTO;
        break;
    case SMFIR_REPLBODY:
        r->data = p;
        r->len = (size_t)(end - p);
        break;
    default:
        return MS_EPROTO;
    }
    return (int)(plen + 4);
}

const char *ms_milter_symlist(const struct ms_milter_reply *r, enum ms_milter_stage stage)
{
    const char *p = r->symlist, *end = r->symlist + r->symlistlen, *m;

    while (p != NULL && end - p >= 4) {
        uint32_t st = get32(p);
        p += 4;
        if (take_str(&p, end, &m) < 0)
            return NULL;
        if (st == (uint32_t)stage)
            return m;
    }
    return NULL;
}

const char *ms_milter_reply_name(char cmd)
{
    switch (cmd) {
    case SMFIR_ACCEPT: return "accept";
    case SMFIR_CONTINUE: return "continue";
    case SMFIR_DISCARD: return "discard";
    case SMFIR_REJECT: return "reject";
    case SMFIR_TEMPFAIL: return "tempfail";
    case SMFIR_REPLYCODE: return "replycode";
    case SMFIR_ADDHEADER: return "addheader";
    case SMFIR_INSHEADER: return "insheader";
    case SMFIR_CHGHEADER: return "chgheader";
    case SMFIR_REPLBODY: return "replbody";
    case SMFIR_CHGFROM: return "chgfrom";
    case SMFIR_ADDRCPT: return "addrcpt";
    case SMFIR_ADDRCPT_PAR: return "addrcpt_par";
    case SMFIR_DELRCPT: return "delrcpt";
    case SMFIR_QUARANTINE: return "quarantine";
    case SMFIR_PROGRESS: return "progress";
    case SMFIR_SKIP: return "skip";
    case SMFIR_CONN_FAIL: return "conn_fail";
    case SMFIR_SHUTDOWN: return "shutdown";
    default: return "?";
    }
}

/* ---- editor ---- */

static struct ms_milter_field *field_slot(struct ms_milter_msg *m, size_t at)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 32;
        m->f = ms_realloc(m->f, m->cap * sizeof(*m->f));
    }
    memmove(m->f + at + 1, m->f + at, (m->n - at) * sizeof(*m->f));
    m->n++;
    memset(&m->f[at], 0, sizeof(m->f[at]));
    return &m->f[at];
}

void ms_milter_msg_init(struct ms_milter_msg *m, const char *msg, size_t len, size_t bodymax)
{
    const char *p = msg, *end = msg + len, *lf, *colon;
    struct ms_milter_field *f = NULL;

    memset(m, 0, sizeof(*m));
    ms_buf_init(&m->newbody, bodymax);
    m->body = msg;
    m->bodylen = len;
    while (p < end) {
        const char *le; /* past the line's end */

        lf = memchr(p, '\n', (size_t)(end - p));
        le = lf ? lf + 1 : end; /* a last line without its LF: as if it had one */
        if (lf != NULL && (lf == p || (lf == p + 1 && *p == '\r'))) { /* the empty line */
            p = le;
            m->has_header = 1;
            break;
        }
        if ((*p == ' ' || *p == '\t') && f != NULL) {
            /* A continuation: the field's value grows to include it. */
            f->valuelen = (size_t)(le - f->value);
        } else if ((colon = memchr(p, ':', (size_t)(le - p))) != NULL) {
            /* Obsolete white space before the colon stays in the name
             * (RFC 5322 4.5); filters see it as the message has it. */
            f = field_slot(m, m->n);
            f->name = p;
            f->namelen = (size_t)(colon - p);
            f->value = colon + 1;
            f->valuelen = (size_t)(le - f->value);
        } else {
            break; /* not a field: the body starts here */
        }
        p = le;
    }
    if (m->n == 0 && !m->has_header) {
        m->body = msg; /* no header section: it is all body */
        m->bodylen = len;
        return;
    }
    /* Values end before their line's CRLF. */
    for (size_t i = 0; i < m->n; i++) {
        size_t v = m->f[i].valuelen;
        if (v > 0 && m->f[i].value[v - 1] == '\n')
            v--;
        if (v > 0 && m->f[i].value[v - 1] == '\r')
            v--;
        m->f[i].valuelen = v;
    }
    m->has_header = 1;
    m->body = p;
    m->bodylen = (size_t)(end - m->body);
}

void ms_milter_msg_free(struct ms_milter_msg *m)
{
    size_t i;

    for (i = 0; i < m->n; i++)
        if (m->f[i].owned) {
            free((char *)m->f[i].name);
            free((char *)m->f[i].value);
        }
    free(m->f);
    ms_buf_free(&m->newbody);
    memset(m, 0, sizeof(*m));
}

/* A filter's value as we write it: LF folding becomes CRLF; every line
 * after the first must start with white space (else it would be a field
 * of its own); no bare CR, no NUL.  NULL when it breaks those rules. */
static char *value_copy(const char *v, size_t len, size_t *outlen)
{
    char *o = ms_malloc(2 * len + 2);
    size_t i, n = 0;
    int leading = !(len > 0 && (v[0] == ' ' || v[0] == '\t'));

    if (leading && len > 0)
        o[n++] = ' '; /* "Name: value" */
    for (i = 0; i < len; i++) {
        if (v[i] == '\0' || (v[i] == '\r' && (i + 1 == len || v[i + 1] != '\n')))
            goto bad;
        if (v[i] == '\r')
            continue; /* CRLF: the LF writes both */
        if (v[i] == '\n') {
            if (i + 1 == len || (v[i + 1] != ' ' && v[i + 1] != '\t'))
                goto bad;
            o[n++] = '\r';
        }
        o[n++] = v[i];
    }
    *outlen = n;
    return o;
bad:
    free(o);
    return NULL;
}

static int edit_field(struct ms_milter_msg *m, struct ms_milter_field *f, const char *name,
                      size_t namelen, const char *value, size_t valuelen)
{
    size_t vlen;
    char *v;

    if (!field_name_ok(name, namelen) || (v = value_copy(value, valuelen, &vlen)) == NULL)
        return MS_EPROTO;
    if (f->owned) {
        free((char *)f->name);
        free((char *)f->value);
    }
    f->name = ms_strndup(name, namelen);
    f->namelen = namelen;
    f->value = v;
    f->valuelen = vlen;
    f->owned = 1;
    return 0;
}

static int count_edit(struct ms_milter_msg *m)
{
    if (m->nedits >= MS_MILTER_EDITS_MAX)
        return MS_ETOOBIG;
    m->nedits++;
    return 0;
}

int ms_milter_msg_insert(struct ms_milter_msg *m, uint32_t index, const char *name,
                         size_t namelen, const char *value, size_t valuelen)
{
    size_t at, i, live = 0;
    int r;

    if ((r = count_edit(m)) < 0)
        return r;
    if (!field_name_ok(name, namelen))
        return MS_EPROTO;
    /* The index counts the fields a reader sees, not deleted ones. */
    for (at = 0; at < m->n; at++) {
        if (m->f[at].deleted)
            continue;
        if (live == index)
            break;
        live++;
    }
    i = at;
    if ((r = edit_field(m, field_slot(m, i), name, namelen, value, valuelen)) < 0) {
        memmove(m->f + i, m->f + i + 1, (m->n - i - 1) * sizeof(*m->f));
        m->n--;
        return r;
    }
    m->has_header = 1;
    return 0;
}

int ms_milter_msg_add(struct ms_milter_msg *m, const char *name, size_t namelen,
                      const char *value, size_t valuelen)
{
    return ms_milter_msg_insert(m, UINT32_MAX, name, namelen, value, valuelen);
}

int ms_milter_msg_change(struct ms_milter_msg *m, uint32_t index, const char *name,
                         size_t namelen, const char *value, size_t valuelen)
{
    size_t i;
    uint32_t seen = 0;
    int r;

    if (!field_name_ok(name, namelen))
        return MS_EPROTO;
    for (i = 0; i < m->n; i++) {
        struct ms_milter_field *f = &m->f[i];
        if (f->deleted || f->namelen != namelen || strncasecmp(f->name, name, namelen) != 0)
            continue;
        if (++seen < (index ? index : 1))
            continue;
        if ((r = count_edit(m)) < 0)
            return r;
        if (valuelen == 0) {
            f->deleted = 1;
            return 0;
        }
        return edit_field(m, f, f->name, f->namelen, value, valuelen);
    }
    if (valuelen == 0)
        return 0; /* nothing to delete */
    return ms_milter_msg_add(m, name, namelen, value, valuelen);
}

int ms_milter_msg_body(struct ms_milter_msg *m, const char *data, size_t len)
{
    if (!m->body_replaced) {
        m->body_replaced = 1;
        ms_buf_reset(&m->newbody);
    }
    return ms_buf_append(&m->newbody, data, len);
}

int ms_milter_msg_edited(const struct ms_milter_msg *m)
{
    return m->nedits > 0 || m->body_replaced;
}

int ms_milter_msg_write(const struct ms_milter_msg *m, struct ms_buf *out)
{
    size_t i;
    int r = 0;

    for (i = 0; i < m->n && r == 0; i++) {
        const struct ms_milter_field *f = &m->f[i];
        if (f->deleted)
            continue;
        if ((r = ms_buf_append(out, f->name, f->namelen)) == 0 &&
            (r = ms_buf_append(out, ":", 1)) == 0 &&
            (r = ms_buf_append(out, f->value, f->valuelen)) == 0)
            r = ms_buf_append(out, "\r\n", 2);
    }
    if (r == 0 && m->has_header)
        r = ms_buf_append(out, "\r\n", 2);
    if (r == 0 && m->body_replaced)
        r = ms_buf_append(out, m->newbody.data, m->newbody.len);
    else if (r == 0)
        r = ms_buf_append(out, m->body, m->bodylen);
    return r;
}
