/*
 * smtp_reply.c - SMTP reply parser (smtp_reply.h).
 */
#include "ms_smtp_reply.h"
#include "ms_error.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int ms_reply_parse(const char *buf, size_t len, struct ms_reply *r)
{
    size_t pos = 0, scan, line_len;
    const char *line, *nl;
    int code;

    r->code = 0;
    r->dsn[0] = '\0';
    r->nlines = 0;
    for (;;) {
        /* Look no further than one maximal line (plus CRLF) ahead. */
        scan = len - pos;
        if (scan > MS_REPLY_LINE_MAX + 2)
            scan = MS_REPLY_LINE_MAX + 2;
        line = buf + pos;
        if ((nl = memchr(line, '\n', scan)) == NULL)
            return len - pos > MS_REPLY_LINE_MAX + 1 ? MS_ETOOBIG : MS_EAGAIN;
        line_len = (size_t)(nl - line);
        if (line_len > 0 && line[line_len - 1] == '\r')
            line_len--;
        if (line_len > MS_REPLY_LINE_MAX)
            return MS_ETOOBIG;
        /* Reply-code = %x32-35 %x30-35 %x30-39 (RFC 5321 §4.2). */
        if (line_len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' ||
            !is_digit(line[2]))
            return MS_EPROTO;
        code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (r->nlines > 0 && code != r->code)
            return MS_EPROTO;
        if (line_len > 3 && line[3] != ' ' && line[3] != '-')
            return MS_EPROTO;
        if (r->nlines == MS_REPLY_LINES_MAX)
            return MS_ETOOBIG;
        r->code = code;
        r->text[r->nlines] = line_len > 4 ? line + 4 : line + line_len;
        r->text_len[r->nlines] = line_len > 4 ? line_len - 4 : 0;
        r->nlines++;
        pos = (size_t)(nl - buf) + 1;
        if (line_len == 3 || line[3] == ' ')
            break;
    }
    ms_reply_dsn_extract(r->code, r->text[0], r->text_len[0], r->dsn);
    return (int)pos;
}

/* 1 to 3 digits at text[*i]; advances *i. */
static int digits3(const char *text, size_t len, size_t *i)
{
    size_t start = *i;

    while (*i < len && is_digit(text[*i]) && *i - start < 3)
        (*i)++;
    return *i > start && (*i == len || !is_digit(text[*i]));
}

size_t ms_reply_dsn_extract(int code, const char *text, size_t len, char dsn[MS_REPLY_DSN_MAX + 1])
{
    size_t i = 1;

    dsn[0] = '\0';
    /* status-code = class "." subject "." detail (RFC 3463 §2). */
    if (len < 5 || text[0] != (char)('0' + code / 100) || text[1] != '.')
        return 0;
    i = 2;
    if (!digits3(text, len, &i) || i >= len || text[i] != '.')
        return 0;
    i++;
    if (!digits3(text, len, &i))
        return 0;
    if (i < len && text[i] != ' ')
        return 0;
    memcpy(dsn, text, i);
    dsn[i] = '\0';
    return i;
}

/* Append n bytes at out[*pos], keeping one byte for the NUL; sets *cut when
 * something did not fit. */
static void append(char *out, size_t outlen, size_t *pos, const char *s, size_t n, int *cut)
{
    size_t room = outlen - 1 - *pos;

    if (n > room) {
        n = room;
        *cut = 1;
    }
    memcpy(out + *pos, s, n);
    *pos += n;
}

size_t ms_reply_format(const struct ms_reply *r, char *out, size_t outlen)
{
    static const char ellipsis[] = "...";
    char dsn[MS_REPLY_DSN_MAX + 1], num[8];
    size_t n = 0, i, skip, tl;
    const char *t;
    int cut = 0;

    if (outlen == 0)
        return 0;
    snprintf(num, sizeof(num), "%d", r->code);
    append(out, outlen, &n, num, strlen(num), &cut);
    for (i = 0; i < r->nlines && !cut; i++) {
        t = r->text[i];
        tl = r->text_len[i];
        /* Continuation lines usually repeat the status code: say it once. */
        if (i > 0 && r->dsn[0] && (skip = ms_reply_dsn_extract(r->code, t, tl, dsn)) > 0 &&
            strcmp(dsn, r->dsn) == 0) {
            t += skip;
            tl -= skip;
            while (tl > 0 && *t == ' ')
                t++, tl--;
        }
        if (tl == 0)
            continue;
        append(out, outlen, &n, " ", 1, &cut);
        append(out, outlen, &n, t, tl, &cut);
    }
    if (cut && outlen > sizeof(ellipsis)) {
        /* Cut visibly: the last bytes that fit become "...". */
        if (n > outlen - sizeof(ellipsis))
            n = outlen - sizeof(ellipsis);
        memcpy(out + n, ellipsis, sizeof(ellipsis) - 1);
        n += sizeof(ellipsis) - 1;
    }
    out[n] = '\0';
    return n;
}

static int keyword_is(const char *t, size_t len, const char *kw, const char **param,
                      size_t *plen)
{
    size_t k = strlen(kw);

    if (len < k || strncasecmp(t, kw, k) != 0 || (len > k && t[k] != ' '))
        return 0;
    *param = len > k ? t + k + 1 : t + len;
    *plen = len > k ? len - k - 1 : 0;
    return 1;
}

/* The mechanisms we know in a space-separated list (RFC 4954 §3; names are
 * case-insensitive, RFC 4422 §3.1). */
static unsigned auth_mechs(const char *p, size_t len)
{
    static const struct {
        const char *name;
        unsigned bit;
    } known[] = {{"PLAIN", MS_AUTH_MECH_PLAIN}, {"LOGIN", MS_AUTH_MECH_LOGIN}};
    size_t i = 0, start, n, k, seen = 0;
    unsigned mask = 0;

    while (i < len && seen < MS_EHLO_AUTH_MECHS_MAX) {
        while (i < len && p[i] == ' ')
            i++;
        start = i;
        while (i < len && p[i] != ' ')
            i++;
        n = i - start;
        if (n == 0)
            break;
        seen++;
        for (k = 0; k < sizeof(known) / sizeof(known[0]); k++)
            if (n == strlen(known[k].name) && strncasecmp(p + start, known[k].name, n) == 0)
                mask |= known[k].bit;
    }
    return mask;
}

void ms_ehlo_parse(const struct ms_reply *r, struct ms_ehlo *e)
{
    static const struct {
        const char *kw;
        unsigned flag;
    } table[] = {
        {"SIZE", MS_EHLO_SIZE},
        {"8BITMIME", MS_EHLO_8BITMIME},
        {"SMTPUTF8", MS_EHLO_SMTPUTF8},
        {"PIPELINING", MS_EHLO_PIPELINING},
        {"ENHANCEDSTATUSCODES", MS_EHLO_ENHANCEDSTATUSCODES},
        {"STARTTLS", MS_EHLO_STARTTLS},
        {"CHUNKING", MS_EHLO_CHUNKING},
        {"DSN", MS_EHLO_DSN},
        {"BINARYMIME", MS_EHLO_BINARYMIME},
        {"AUTH", MS_EHLO_AUTH},
        {"REQUIRETLS", MS_EHLO_REQUIRETLS},
    };
    const char *param;
    size_t i, j, plen, k;
    uint64_t v;

    e->flags = 0;
    e->size_max = 0;
    e->auth = 0;
    /* Line 0 is "domain [greeting]", not a keyword. */
    for (i = 1; i < r->nlines; i++) {
        if (r->text_len[i] > 5 && strncasecmp(r->text[i], "AUTH=", 5) == 0) {
            /* The pre-RFC 4954 form some servers still send as well. */
            e->flags |= MS_EHLO_AUTH;
            e->auth |= auth_mechs(r->text[i] + 5, r->text_len[i] - 5);
            continue;
        }
        for (j = 0; j < sizeof(table) / sizeof(table[0]); j++) {
            if (!keyword_is(r->text[i], r->text_len[i], table[j].kw, &param, &plen))
                continue;
            e->flags |= table[j].flag;
            if (table[j].flag == MS_EHLO_AUTH)
                e->auth |= auth_mechs(param, plen);
            if (table[j].flag != MS_EHLO_SIZE)
                break;
            /* RFC 1870 §4: "SIZE" [SP number]; 0 or absent means no limit.
             * A number too large to hold is treated as no limit too. */
            for (k = 0, v = 0; k < plen && is_digit(param[k]); k++) {
                if (v > (UINT64_MAX - 9) / 10) {
                    v = 0;
                    break;
                }
                v = v * 10 + (uint64_t)(param[k] - '0');
            }
            e->size_max = v;
            break;
        }
    }
}
