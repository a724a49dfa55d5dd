/*
 * smtp_parse.c - SMTP command grammar (see smtp_parse.h).
 */
#include "smtp_parse.h"
#include "ms_error.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static const char *const verb_names[FE_VERB_COUNT] = {
    [FE_VERB_UNKNOWN] = "UNKNOWN", [FE_VERB_HELO] = "HELO",         [FE_VERB_EHLO] = "EHLO",
    [FE_VERB_MAIL] = "MAIL",       [FE_VERB_RCPT] = "RCPT",         [FE_VERB_DATA] = "DATA",
    [FE_VERB_RSET] = "RSET",       [FE_VERB_NOOP] = "NOOP",         [FE_VERB_QUIT] = "QUIT",
    [FE_VERB_VRFY] = "VRFY",       [FE_VERB_EXPN] = "EXPN",         [FE_VERB_HELP] = "HELP",
    [FE_VERB_STARTTLS] = "STARTTLS", [FE_VERB_AUTH] = "AUTH",       [FE_VERB_BDAT] = "BDAT",
};

const char *fe_verb_name(enum fe_verb v)
{
    return (v > FE_VERB_UNKNOWN && v < FE_VERB_COUNT) ? verb_names[v] : "UNKNOWN";
}

int fe_smtp_line(const char *buf, size_t len, size_t max, size_t *content_len)
{
    size_t scan = len < max ? len : max;
    const char *lf = memchr(buf, '\n', scan);
    size_t n;

    if (lf == NULL)
        return len >= max ? MS_ETOOBIG : MS_EAGAIN;
    n = (size_t)(lf - buf);
    *content_len = (n > 0 && buf[n - 1] == '\r') ? n - 1 : n;
    return (int)(n + 1);
}

/* ---- mailboxes (RFC 5321 4.1.2) ---- */

static int is_atext(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    if (c >= 0x80) /* RFC 6531 UTF8-non-ascii; checked against SMTPUTF8 later */
        return 1;
    return strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL && c != '\0';
}

static int is_let_dig(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
 * (RFC 5321 4.1.2), extended with non-ASCII octets for RFC 6531 U-labels.
 * Returns the octets consumed (0: not a domain). */
static size_t scan_domain(const char *s, size_t n)
{
    size_t i = 0, label;

    for (;;) {
        label = 0;
        while (i < n && (is_let_dig((unsigned char)s[i]) || s[i] == '-' ||
                         (unsigned char)s[i] >= 0x80)) {
            i++;
            label++;
        }
        if (label == 0 || label > 63 || s[i - label] == '-' || s[i - 1] == '-')
            return 0;
        if (i < n && s[i] == '.' && i + 1 < n &&
            (is_let_dig((unsigned char)s[i + 1]) || (unsigned char)s[i + 1] >= 0x80)) {
            i++;
            continue;
        }
        return i;
    }
}

/* address-literal = "[" ( IPv4 / "IPv6:" IPv6 / General ) "]".  Returns
 * the octets consumed including the brackets (0: not a literal). */
static size_t scan_literal(const char *s, size_t n)
{
    char tmp[64];
    unsigned char addr[16];
    const char *end;
    size_t len, i;

    if (n < 3 || s[0] != '[' || (end = memchr(s, ']', n)) == NULL)
        return 0;
    len = (size_t)(end - s - 1);
    if (len == 0 || len >= sizeof(tmp))
        return 0;
    memcpy(tmp, s + 1, len);
    tmp[len] = '\0';
    if (strncasecmp(tmp, "IPv6:", 5) == 0)
        return inet_pton(AF_INET6, tmp + 5, addr) == 1 ? len + 2 : 0;
    if (inet_pton(AF_INET, tmp, addr) == 1)
        return len + 2;
    /* General-address-literal: Standardized-tag ":" dcontent. */
    for (i = 0; i < len && (is_let_dig((unsigned char)tmp[i]) || tmp[i] == '-'); i++)
        ;
    if (i == 0 || i >= len || tmp[i] != ':' || i + 1 == len)
        return 0;
    for (i++; i < len; i++)
        if ((unsigned char)tmp[i] < 33 || (unsigned char)tmp[i] > 126 || tmp[i] == '[' ||
            tmp[i] == '\\')
            return 0;
    return len + 2;
}

/* Parse "<...>" at s.  On success returns the octets consumed and fills the
 * path fields of cmd. */
static int parse_path(const char *s, size_t n, struct fe_smtp_cmd *cmd, int is_mail,
                      const char **reply)
{
    const char *bad = is_mail ? "501 5.1.7 Bad sender address syntax"
                              : "501 5.1.3 Bad recipient address syntax";
    const char *p, *end, *mbox;
    size_t i, local, dom, close;

    if (n == 0 || s[0] != '<') {
        *reply = is_mail ? "501 5.5.4 Syntax: MAIL FROM:<address>"
                         : "501 5.5.4 Syntax: RCPT TO:<address>";
        return MS_EPROTO;
    }
    end = memchr(s, '>', n);
    /* A '>' may sit inside a quoted local part: find the real close below. */
    p = s + 1;
    if (end == NULL) {
        *reply = bad;
        return MS_EPROTO;
    }
    cmd->pathlen = 0;
    cmd->path[0] = '\0';
    cmd->path_utf8 = 0;
    cmd->path_domain = 0;
    if (p[0] == '>') {
        if (!is_mail) {
            *reply = bad;
            return MS_EPROTO;
        }
        return 2;
    }
    /* A-d-l (source route): accepted and ignored, RFC 5321 4.1.2 / C. */
    if (p[0] == '@') {
        const char *colon = memchr(p, ':', (size_t)(s + n - p));
        if (colon == NULL) {
            *reply = bad;
            return MS_EPROTO;
        }
        for (const char *q = p; q < colon; q++)
            if (!(is_let_dig((unsigned char)*q) || strchr("@.,-[]:", *q) != NULL)) {
                *reply = bad;
                return MS_EPROTO;
            }
        p = colon + 1;
    }
    mbox = p;
    i = (size_t)(p - s);
    /* Local-part = Dot-string / Quoted-string. */
    if (i < n && s[i] == '"') {
        for (i++; i < n && s[i] != '"'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '\\') {
                i++;
                if (i >= n || (unsigned char)s[i] < 32 || (unsigned char)s[i] == 127) {
                    *reply = bad;
                    return MS_EPROTO;
                }
                continue;
            }
            if (c < 32 || c == 127) {
                *reply = bad;
                return MS_EPROTO;
            }
        }
        if (i >= n) {
            *reply = bad;
            return MS_EPROTO;
        }
        i++;
    } else {
        /* Dot-string; XXX: consecutive, leading and trailing dots are
         * tolerated because real senders use them. */
        while (i < n && (is_atext((unsigned char)s[i]) || s[i] == '.'))
            i++;
    }
    local = (size_t)(s + i - mbox);
    if (local == 0 || local > FE_SMTP_LOCAL_MAX) {
        *reply = bad;
        return MS_EPROTO;
    }
    if (i < n && s[i] == '@') {
        i++;
        if (i < n && s[i] == '[')
            dom = scan_literal(s + i, n - i);
        else
            dom = scan_domain(s + i, n - i);
        if (dom == 0 || dom > FE_SMTP_DOMAIN_MAX) {
            *reply = bad;
            return MS_EPROTO;
        }
        i += dom;
        cmd->path_domain = 1;
    }
    if (i >= n || s[i] != '>') {
        *reply = bad;
        return MS_EPROTO;
    }
    close = i;
    if (close + 1 > MS_SMTP_PATH_MAX) {
        *reply = "501 5.5.4 Path too long";
        return MS_ETOOBIG;
    }
    cmd->pathlen = (size_t)(s + close - mbox);
    memcpy(cmd->path, mbox, cmd->pathlen);
    cmd->path[cmd->pathlen] = '\0';
    for (i = 0; i < cmd->pathlen; i++)
        if ((unsigned char)cmd->path[i] >= 0x80)
            cmd->path_utf8 = 1;
    return (int)(close + 1);
}

/* esmtp-param = esmtp-keyword ["=" esmtp-value] (RFC 5321 4.1.2), values
 * widened to UTF-8 by RFC 6531 3.3. */
static int parse_params(const char *s, size_t n, struct fe_smtp_cmd *cmd, const char **reply)
{
    size_t i = 0, start;
    struct fe_smtp_param *pm;

    cmd->nparams = 0;
    for (;;) {
        while (i < n && s[i] == ' ')
            i++;
        if (i >= n)
            return 0;
        if (cmd->nparams == FE_SMTP_PARAMS_MAX) {
            *reply = "501 5.5.4 Too many parameters";
            return MS_ETOOBIG;
        }
        pm = &cmd->params[cmd->nparams];
        start = i;
        if (!is_let_dig((unsigned char)s[i])) {
            *reply = "501 5.5.4 Syntax error in parameters";
            return MS_EPROTO;
        }
        while (i < n && (is_let_dig((unsigned char)s[i]) || s[i] == '-'))
            i++;
        pm->key = s + start;
        pm->keylen = i - start;
        pm->value = NULL;
        pm->valuelen = 0;
        if (i < n && s[i] == '=') {
            start = ++i;
            while (i < n && s[i] != ' ') {
                unsigned char c = (unsigned char)s[i];
                if ((c < 33 || c == 127 || c == '=') && c < 0x80) {
                    *reply = "501 5.5.4 Syntax error in parameters";
                    return MS_EPROTO;
                }
                i++;
            }
            if (i == start) {
                *reply = "501 5.5.4 Syntax error in parameters";
                return MS_EPROTO;
            }
            pm->value = s + start;
            pm->valuelen = i - start;
        }
        if (i < n && s[i] != ' ') {
            *reply = "501 5.5.4 Syntax error in parameters";
            return MS_EPROTO;
        }
        cmd->nparams++;
    }
}

static int match_prefix(const char *s, size_t n, const char *word)
{
    size_t wl = strlen(word);
    return n >= wl && strncasecmp(s, word, wl) == 0;
}

int fe_smtp_parse(const char *line, size_t len, struct fe_smtp_cmd *cmd, const char **reply)
{
    size_t i, vlen;
    int v, r;

    cmd->verb = FE_VERB_UNKNOWN;
    cmd->args = NULL;
    cmd->argslen = 0;
    cmd->nparams = 0;
    cmd->pathlen = 0;
    cmd->path[0] = '\0';
    cmd->path_utf8 = cmd->path_domain = 0;

    if (len + 2 > FE_SMTP_AUTH_LINE_MAX) {
        *reply = FE_REPLY_LINE_TOO_LONG;
        return MS_ETOOBIG;
    }
    /* Octets that have no business in a command line: NUL, a bare CR
     * (the framing already removed the terminator) and other controls
     * except HT. */
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 32 && c != '\t') || c == 127) {
            *reply = "501 5.5.2 Invalid character in command";
            return MS_EPROTO;
        }
    }
    /* Trailing white space is tolerated (RFC 5321 4.1.1 asks for none). */
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
        len--;
    for (vlen = 0; vlen < len && line[vlen] != ' '; vlen++)
        ;
    for (v = FE_VERB_UNKNOWN + 1; v < FE_VERB_COUNT; v++)
        if (strlen(verb_names[v]) == vlen && strncasecmp(line, verb_names[v], vlen) == 0)
            break;
    if (v == FE_VERB_COUNT)
        return 0; /* unknown: the caller answers 500 5.5.1 */
    cmd->verb = (enum fe_verb)v;
    i = vlen;
    if (i < len)
        i++;
    cmd->args = line + i;
    cmd->argslen = len - i;

    if (cmd->verb == FE_VERB_MAIL || cmd->verb == FE_VERB_RCPT) {
        const char *kw = cmd->verb == FE_VERB_MAIL ? "FROM:" : "TO:";
        const char *a = cmd->args;
        size_t n = cmd->argslen;

        if (!match_prefix(a, n, kw)) {
            *reply = cmd->verb == FE_VERB_MAIL ? "501 5.5.4 Syntax: MAIL FROM:<address>"
                                               : "501 5.5.4 Syntax: RCPT TO:<address>";
            return MS_EPROTO;
        }
        a += strlen(kw);
        n -= strlen(kw);
        /* XXX: a space after the colon violates RFC 5321 4.1.1.2 but is
         * common enough that every MTA tolerates it. */
        while (n > 0 && *a == ' ') {
            a++;
            n--;
        }
        r = parse_path(a, n, cmd, cmd->verb == FE_VERB_MAIL, reply);
        if (r < 0)
            return r;
        a += r;
        n -= (size_t)r;
        if (n > 0 && *a != ' ') {
            *reply = "501 5.5.4 Syntax error in parameters";
            return MS_EPROTO;
        }
        return parse_params(a, n, cmd, reply);
    }
    return 0;
}

/* ---- parameters ---- */

static int key_is(const struct fe_smtp_param *p, const char *name)
{
    return p->keylen == strlen(name) && strncasecmp(p->key, name, p->keylen) == 0;
}

static int value_is(const struct fe_smtp_param *p, const char *v)
{
    return p->value && p->valuelen == strlen(v) && strncasecmp(p->value, v, p->valuelen) == 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1; /* RFC 3461 4: xtext hex digits are upper case */
}

int fe_xtext_decode(const char *in, size_t n, char *out, size_t outlen)
{
    size_t i, o = 0;
    int c, h, l;

    if (outlen == 0)
        return MS_ETOOBIG;
    for (i = 0; i < n; i++) {
        c = (unsigned char)in[i];
        if (c == '+') {
            if (i + 2 >= n)
                return MS_EPROTO;
            h = hexval(in[i + 1]);
            l = hexval(in[i + 2]);
            if (h < 0 || l < 0)
                return MS_EPROTO;
            c = h * 16 + l;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return MS_EPROTO;
        }
        /* RFC 3461 4: any octet may come as hexchar. UTF-8 octets do: Postfix
         * sends the ORCPT of an SMTPUTF8 recipient as rfc822 xtext
         * ("zo+C3+AB@..."), and refusing it cost the whole RCPT (issue 24).
         * Controls stay refused: they would end up in DSN fields. */
        if (c < 32 || c == 127)
            return MS_EPROTO;
        if (o + 1 >= outlen)
            return MS_ETOOBIG;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

int fe_smtp_mail_params(const struct fe_smtp_cmd *cmd, struct fe_mail_params *mp,
                        const char **reply)
{
    unsigned seen = 0;
    size_t i, j;

    memset(mp, 0, sizeof(*mp));
    for (i = 0; i < cmd->nparams; i++) {
        const struct fe_smtp_param *p = &cmd->params[i];
        unsigned bit;

        if (key_is(p, "SIZE")) {
            bit = 1;
            if (!p->value || p->valuelen > 20)
                goto bad;
            mp->size = 0;
            for (j = 0; j < p->valuelen; j++) {
                if (p->value[j] < '0' || p->value[j] > '9')
                    goto bad;
                if (mp->size > (UINT64_MAX - 9) / 10)
                    mp->size = UINT64_MAX;
                else
                    mp->size = mp->size * 10 + (uint64_t)(p->value[j] - '0');
            }
            mp->has_size = 1;
        } else if (key_is(p, "BODY")) {
            bit = 2;
            if (value_is(p, "7BIT"))
                mp->body = FE_BODY_7BIT;
            else if (value_is(p, "8BITMIME"))
                mp->body = FE_BODY_8BITMIME;
            else if (value_is(p, "BINARYMIME"))
                mp->body = FE_BODY_BINARYMIME;
            else {
                *reply = "555 5.5.4 Unsupported BODY type";
                return MS_EPROTO;
            }
        } else if (key_is(p, "SMTPUTF8")) {
            bit = 4;
            if (p->value)
                goto bad;
            mp->smtputf8 = 1;
        } else if (key_is(p, "RET")) {
            bit = 8;
            if (value_is(p, "FULL"))
                mp->ret = FE_RET_FULL;
            else if (value_is(p, "HDRS"))
                mp->ret = FE_RET_HDRS;
            else
                goto bad;
        } else if (key_is(p, "ENVID")) {
            bit = 16;
            if (!p->value ||
                fe_xtext_decode(p->value, p->valuelen, mp->envid, sizeof(mp->envid)) < 0)
                goto bad;
        } else if (key_is(p, "AUTH")) {
            /* RFC 4954 5: accepted; we do not trust it from peers. */
            bit = 32;
            if (!p->value)
                goto bad;
        } else if (key_is(p, "REQUIRETLS")) {
            /* RFC 8689 4; whether TLS is up is the session's business. */
            bit = 64;
            if (p->value)
                goto bad;
            mp->requiretls = 1;
        } else {
            *reply = "555 5.5.4 Unsupported MAIL parameter";
            return MS_EPROTO;
        }
        if (seen & bit) {
            *reply = "501 5.5.4 Duplicate MAIL parameter";
            return MS_EPROTO;
        }
        seen |= bit;
    }
    return 0;
bad:
    *reply = "501 5.5.4 Invalid MAIL parameter value";
    return MS_EPROTO;
}

int fe_smtp_rcpt_params(const struct fe_smtp_cmd *cmd, struct fe_rcpt_params *rp,
                        const char **reply)
{
    unsigned seen = 0;
    size_t i, j, k, tl;

    memset(rp, 0, sizeof(*rp));
    for (i = 0; i < cmd->nparams; i++) {
        const struct fe_smtp_param *p = &cmd->params[i];
        unsigned bit;

        if (key_is(p, "NOTIFY")) {
            bit = 1;
            if (!p->value)
                goto bad;
            /* NOTIFY=NEVER / 1#( SUCCESS / FAILURE / DELAY ), RFC 3461 4.1 */
            for (j = 0; j < p->valuelen; j = k + 1) {
                for (k = j; k < p->valuelen && p->value[k] != ','; k++)
                    ;
                tl = k - j;
                unsigned b;
                if (tl == 5 && strncasecmp(p->value + j, "NEVER", 5) == 0)
                    b = FE_NOTIFY_NEVER;
                else if (tl == 7 && strncasecmp(p->value + j, "SUCCESS", 7) == 0)
                    b = FE_NOTIFY_SUCCESS;
                else if (tl == 7 && strncasecmp(p->value + j, "FAILURE", 7) == 0)
                    b = FE_NOTIFY_FAILURE;
                else if (tl == 5 && strncasecmp(p->value + j, "DELAY", 5) == 0)
                    b = FE_NOTIFY_DELAY;
                else
                    goto bad;
                if (rp->notify & b)
                    goto bad;
                rp->notify |= b;
            }
            if ((rp->notify & FE_NOTIFY_NEVER) && rp->notify != FE_NOTIFY_NEVER)
                goto bad;
        } else if (key_is(p, "ORCPT")) {
            const char *semi;
            size_t atl;
            int r;

            bit = 2;
            if (!p->value || (semi = memchr(p->value, ';', p->valuelen)) == NULL)
                goto bad;
            atl = (size_t)(semi - p->value);
            if (atl == 0 || atl + 2 > sizeof(rp->orcpt))
                goto bad;
            for (j = 0; j < atl; j++)
                if (!is_let_dig((unsigned char)p->value[j]) && p->value[j] != '-')
                    goto bad;
            memcpy(rp->orcpt, p->value, atl);
            rp->orcpt[atl] = ';';
            r = fe_xtext_decode(semi + 1, p->valuelen - atl - 1, rp->orcpt + atl + 1,
                                sizeof(rp->orcpt) - atl - 1);
            if (r <= 0)
                goto bad;
        } else {
            *reply = "555 5.5.4 Unsupported RCPT parameter";
            return MS_EPROTO;
        }
        if (seen & bit) {
            *reply = "501 5.5.4 Duplicate RCPT parameter";
            return MS_EPROTO;
        }
        seen |= bit;
    }
    return 0;
bad:
    *reply = "501 5.5.4 Invalid RCPT parameter value";
    return MS_EPROTO;
}

/* ---- BDAT (RFC 3030 2) ---- */

#define BDAT_SYNTAX "501 5.5.4 Syntax: BDAT chunk-size [LAST]"

int fe_smtp_bdat_args(const char *args, size_t len, uint64_t *size, int *last, int *size_ok,
                      const char **reply)
{
    size_t i = 0;
    uint64_t n = 0;

    *size = 0;
    *last = 0;
    *size_ok = 0;
    /* chunk-size = 1*DIGIT; more than 19 digits can not be a size we take
     * and could overflow, so the stream is lost (the caller closes). */
    while (i < len && args[i] >= '0' && args[i] <= '9') {
        if (i >= 19) {
            *reply = BDAT_SYNTAX;
            return MS_EPROTO;
        }
        n = n * 10 + (uint64_t)(args[i] - '0');
        i++;
    }
    if (i == 0 || (i < len && args[i] != ' ')) {
        *reply = BDAT_SYNTAX;
        return MS_EPROTO;
    }
    *size = n;
    *size_ok = 1;
    if (i == len)
        return 0;
    i++; /* the SP */
    if (len - i == 4 && strncasecmp(args + i, "LAST", 4) == 0) {
        *last = 1;
        return 0;
    }
    *reply = BDAT_SYNTAX;
    return MS_EPROTO;
}
