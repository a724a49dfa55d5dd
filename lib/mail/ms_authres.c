/*
 * ms_authres.c - Authentication-Results fields (ms_authres.h).
 */
#include "ms_authres.h"
#include "ms_addr.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FIELD_NAME "Authentication-Results"

void ms_authres_init(struct ms_authres *a, const char *authserv_id)
{
    /* The slack keeps room for the end ("; none" and CRLF): results may
     * only take the field up to MS_AUTHRES_MAX. */
    ms_buf_init(&a->buf, MS_AUTHRES_MAX + 16);
    a->n = 0;
    (void)ms_buf_append(&a->buf, FIELD_NAME ": ", sizeof(FIELD_NAME) + 1);
    (void)ms_authres_value(&a->buf, authserv_id && *authserv_id ? authserv_id : "localhost");
}

void ms_authres_free(struct ms_authres *a)
{
    ms_buf_free(&a->buf);
}

/* RFC 2045 token characters. */
static int token_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

static int atext(unsigned char c)
{
    return isalnum(c) || (c < 0x7f && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL) || c >= 0x80;
}

/* local-part "@" domain-name with a dot-atom local part (or none). */
static int address_form(const char *v)
{
    const char *dom = ms_addr_domain(v), *at, *p;
    int prev_dot = 1;

    if (dom == NULL || dom[0] == '\0')
        return 0;
    at = dom - 1;
    for (p = v; p < at; p++) {
        if (*p == '.') {
            if (prev_dot)
                return 0;
            prev_dot = 1;
        } else if (atext((unsigned char)*p)) {
            prev_dot = 0;
        } else {
            return 0;
        }
    }
    if (p > v && prev_dot)
        return 0;
    for (p = at + 1; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.' || (unsigned char)*p >= 0x80))
            return 0;
    return 1;
}

int ms_authres_value(struct ms_buf *out, const char *v)
{
    size_t len = out->len, i;
    int bare = *v != '\0', err = 0;

    for (i = 0; v[i] && bare; i++)
        bare = token_char((unsigned char)v[i]);
    if (bare || address_form(v))
        return ms_buf_append(out, v, strlen(v));
    err |= ms_buf_append(out, "\"", 1);
    for (i = 0; v[i] && err == 0; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '"' || c == '\\')
            err |= ms_buf_append(out, "\\", 1);
        if (c < 0x20 || c == 0x7f)
            c = '?';
        err |= ms_buf_append(out, &c, 1);
    }
    err |= ms_buf_append(out, "\"", 1);
    if (err) {
        out->len = len;
        return MS_ETOOBIG;
    }
    return 0;
}

int ms_authres_comment(struct ms_buf *out, const char *c)
{
    size_t len = out->len, i;
    int err = 0;

    err |= ms_buf_append(out, "(", 1);
    for (i = 0; c[i] && err == 0; i++) {
        unsigned char ch = (unsigned char)c[i];
        if (ch == '(' || ch == ')' || ch == '\\')
            err |= ms_buf_append(out, "\\", 1);
        if (ch < 0x20 || ch == 0x7f)
            ch = '?';
        err |= ms_buf_append(out, &ch, 1);
    }
    err |= ms_buf_append(out, ")", 1);
    if (err) {
        out->len = len;
        return MS_ETOOBIG;
    }
    return 0;
}

int ms_authres_add(struct ms_authres *a, const char *method, const char *result,
                   const char *comment, const struct ms_authres_prop *props, size_t nprops)
{
    size_t len = a->buf.len, i;
    int err = 0;

    err |= ms_buf_appendf(&a->buf, ";\r\n\t%s=%s", method, result);
    if (comment && *comment) {
        err |= ms_buf_append(&a->buf, " ", 1);
        err |= ms_authres_comment(&a->buf, comment);
    }
    for (i = 0; i < nprops && err == 0; i++) {
        if (props[i].value == NULL || props[i].value[0] == '\0')
            continue;
        err |= ms_buf_appendf(&a->buf, " %s=", props[i].name);
        err |= ms_authres_value(&a->buf, props[i].value);
    }
    if (err || a->buf.len > MS_AUTHRES_MAX) {
        a->buf.len = len;
        return MS_ETOOBIG;
    }
    a->n++;
    return 0;
}

char *ms_authres_finish(struct ms_authres *a, size_t *len)
{
    char *s;

    if (a->n == 0)
        (void)ms_buf_append(&a->buf, "; none", 6);
    (void)ms_buf_append(&a->buf, "\r\n", 3); /* NUL-terminated */
    s = ms_buf_steal(&a->buf, len);
    if (len)
        (*len)--;
    a->n = 0;
    return s;
}

/* ---- reading ---- */

/* Skip CFWS from p; returns the new position (end when a comment is not
 * closed). */
static size_t skip_cfws(const char *s, size_t len, size_t p)
{
    int depth = 0;

    while (p < len) {
        char c = s[p];
        if (depth > 0) {
            if (c == '\\')
                p++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            p++;
        } else if (c == '(') {
            depth = 1;
            p++;
        } else {
            break;
        }
    }
    return p > len ? len : p;
}

int ms_authres_id(const char *value, size_t len, char *out, size_t outlen)
{
    size_t p = skip_cfws(value, len, 0), o = 0;

    if (p >= len || outlen == 0)
        return MS_EPROTO;
    if (value[p] == '"') {
        for (p++; p < len && value[p] != '"'; p++) {
            if (value[p] == '\\' && p + 1 < len)
                p++;
            if (value[p] == '\r' || value[p] == '\n')
                continue;
            if (o + 1 >= outlen)
                return MS_ETOOBIG;
            out[o++] = value[p];
        }
        if (p >= len)
            return MS_EPROTO;
    } else {
        for (; p < len && token_char((unsigned char)value[p]); p++) {
            if (o + 1 >= outlen)
                return MS_ETOOBIG;
            out[o++] = value[p];
        }
    }
    if (o == 0)
        return MS_EPROTO;
    out[o] = '\0';
    return 0;
}

/* One header field: [start, end) including its CRLF; name length. */
struct field {
    size_t start, end, name_len, colon;
};

/* The next field from pos; 0 at the end of the header section (the empty
 * line, or a line that is not a field). */
static int next_field(const char *msg, size_t len, size_t pos, struct field *f)
{
    const char *nl;
    size_t i;

    if (pos >= len || msg[pos] == '\r' || msg[pos] == '\n' || msg[pos] == ' ' || msg[pos] == '\t')
        return 0;
    f->start = pos;
    do {
        nl = memchr(msg + pos, '\n', len - pos);
        pos = nl ? (size_t)(nl - msg) + 1 : len;
    } while (pos < len && (msg[pos] == ' ' || msg[pos] == '\t'));
    f->end = pos;
    for (i = f->start; i < f->end && msg[i] != ':' && msg[i] != ' ' && msg[i] != '\t' &&
                       msg[i] != '\r' && msg[i] != '\n';
         i++)
        ;
    f->name_len = i - f->start;
    while (i < f->end && (msg[i] == ' ' || msg[i] == '\t'))
        i++;
    if (i >= f->end || msg[i] != ':' || f->name_len == 0)
        return 0;
    f->colon = i;
    return 1;
}

static int field_is(const char *msg, const struct field *f, const char *name)
{
    size_t n = strlen(name);

    return f->name_len == n && strncasecmp(msg + f->start, name, n) == 0;
}

static int ours(const char *msg, const struct field *f, const char *authserv_id)
{
    char id[MS_AUTHRES_ID_MAX + 1];

    if (!field_is(msg, f, FIELD_NAME))
        return 0;
    if (ms_authres_id(msg + f->colon + 1, f->end - f->colon - 1, id, sizeof(id)) < 0)
        return 0;
    return strcasecmp(id, authserv_id) == 0;
}

int ms_authres_strip(const char *msg, size_t len, const char *authserv_id, struct ms_buf *out)
{
    struct field f;
    size_t pos = 0, copied = 0, nfields = 0;
    int removed = 0;

    while (nfields < MS_AUTHRES_FIELDS_MAX && next_field(msg, len, pos, &f)) {
        nfields++;
        if (ours(msg, &f, authserv_id)) {
            if (ms_buf_append(out, msg + copied, f.start - copied) < 0)
                return MS_ETOOBIG;
            copied = f.end;
            removed++;
        }
        pos = f.end;
    }
    if (ms_buf_append(out, msg + copied, len - copied) < 0)
        return MS_ETOOBIG;
    return removed;
}

int ms_authres_applied(const char *msg, size_t len, const char *authserv_id)
{
    struct field f;
    size_t pos = 0, nfields = 0;

    while (nfields++ < MS_AUTHRES_FIELDS_MAX && next_field(msg, len, pos, &f)) {
        if (field_is(msg, &f, "Received"))
            return 0;
        if (ours(msg, &f, authserv_id))
            return 1;
        pos = f.end;
    }
    return 0;
}
