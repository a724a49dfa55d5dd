/*
 * ms_addrlist.c - the addresses of a header field (see ms_addrlist.h).
 *
 * A lexer turns the text into atoms, quoted strings, domain literals and
 * specials, skipping CFWS (RFC 5322 3.2.2) between any two of them, which is
 * what the obsolete grammar of RFC 5322 4.4 allows; a recursive-descent
 * parser with one token of lookahead reads the tokens.  A run of words and
 * dots is a display name or a local part: the token after it decides ('<'
 * or ':' a name, '@' a local part).
 */
#include "ms_addrlist.h"
#include "ms_error.h"

#include <stdint.h>
#include <string.h>

enum tok { T_END, T_ATOM, T_QSTR, T_DLIT, T_SPECIAL, T_ERR };

struct token {
    enum tok t;
    char c;       /* T_SPECIAL: one of < > : ; @ , . */
    size_t start; /* T_ATOM, T_QSTR, T_DLIT: the text as written */
    size_t len;
};

struct parser {
    const unsigned char *s;
    size_t n, i;
    struct token tk; /* the lookahead */
    ms_addr_cb cb;
    void *arg;
    int err;       /* MS_ETOOBIG once an addr-spec overflowed */
    int nmailbox;
    char addr[MS_ADDR_SPEC_MAX + 1];
    size_t alen;
};

/* atext (RFC 5322 3.2.3), and UTF8-non-ascii (RFC 6532 3.2).  The ASCII
 * part as two bit masks, one bit per octet value: ALPHA, DIGIT and
 * !#$%&'*+-/=?^_`{|}~ (a lexer's inner loop). */
static inline int is_atext(unsigned char c)
{
    static const uint64_t atext[2] = {0xa3ffacfa00000000ULL, 0x7fffffffc7fffffeULL};

    return c >= 0x80 || (atext[c >> 6] >> (c & 63)) & 1;
}

/* WSP, and the CR and LF of folding the caller may have left in. */
static int is_fws(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Skip CFWS.  Comments nest and take quoted-pairs (3.2.2); an unclosed one
 * is an error (-1). */
static int skip_cfws(struct parser *p)
{
    size_t depth = 0;

    while (p->i < p->n) {
        unsigned char c = p->s[p->i];
        if (depth == 0 && is_fws(c)) {
            p->i++;
        } else if (c == '(') {
            depth++;
            p->i++;
        } else if (depth > 0 && c == ')') {
            depth--;
            p->i++;
        } else if (depth > 0 && c == '\\') {
            p->i += p->i + 1 < p->n ? 2 : 1;
        } else if (depth > 0) {
            p->i++; /* ctext, FWS, obs-ctext */
        } else {
            break;
        }
    }
    return depth == 0 ? 0 : -1;
}

/* A quoted string from '"' or a domain literal from '[' through its close
 * (3.2.4, 3.4.1), with quoted-pairs; -1 when it does not close. */
static int skip_quoted(struct parser *p, unsigned char close)
{
    p->i++; /* the opening quote or bracket */
    while (p->i < p->n) {
        unsigned char c = p->s[p->i];
        if (c == '\\') {
            p->i += 2;
            continue;
        }
        p->i++;
        if (c == close)
            return 0;
        if (close == ']' && c == '[')
            return -1; /* dtext excludes '[' */
    }
    return -1;
}

static void next(struct parser *p)
{
    struct token *t = &p->tk;
    unsigned char c;

    memset(t, 0, sizeof(*t));
    if (skip_cfws(p) < 0) {
        t->t = T_ERR;
        return;
    }
    if (p->i >= p->n) {
        t->t = T_END;
        return;
    }
    c = p->s[p->i];
    t->start = p->i;
    if (is_atext(c)) {
        while (p->i < p->n && is_atext(p->s[p->i]))
            p->i++;
        t->t = T_ATOM;
    } else if (c == '"' || c == '[') {
        t->t = skip_quoted(p, c == '"' ? '"' : ']') == 0 ? (c == '"' ? T_QSTR : T_DLIT) : T_ERR;
    } else if (c == '<' || c == '>' || c == ':' || c == ';' || c == '@' || c == ',' || c == '.') {
        t->t = T_SPECIAL;
        t->c = (char)c;
        p->i++;
    } else {
        t->t = T_ERR; /* ')', ']', '\\' or a control character out of place */
    }
    t->len = p->i > p->n ? p->n - t->start : p->i - t->start;
}

static int is_special(const struct parser *p, char c)
{
    return p->tk.t == T_SPECIAL && p->tk.c == c;
}

static void addr_put(struct parser *p, const char *s, size_t n)
{
    if (p->alen + n > MS_ADDR_SPEC_MAX) {
        p->err = MS_ETOOBIG;
        return;
    }
    memcpy(p->addr + p->alen, s, n);
    p->alen += n;
}

static void addr_put_token(struct parser *p)
{
    addr_put(p, (const char *)p->s + p->tk.start, p->tk.len);
}

/* domain = dot-atom / domain-literal / obs-domain (3.4.1, 4.4). */
static int parse_domain(struct parser *p)
{
    if (p->tk.t == T_DLIT) {
        addr_put_token(p);
        next(p);
        return 0;
    }
    if (p->tk.t != T_ATOM)
        return -1;
    addr_put_token(p);
    next(p);
    while (is_special(p, '.')) {
        addr_put(p, ".", 1);
        next(p);
        if (p->tk.t != T_ATOM)
            return -1;
        addr_put_token(p);
        next(p);
    }
    return 0;
}

/* The addr-spec is complete in p->addr. */
static int emit(struct parser *p)
{
    int r;

    if (p->err)
        return p->err;
    p->addr[p->alen] = '\0';
    p->nmailbox++;
    if (p->cb && (r = p->cb(p->arg, p->addr)) < 0)
        return r;
    return 0;
}

/* angle-addr after its '<' (3.4, obs-angle-addr 4.4): [obs-route]
 * addr-spec ">". */
static int parse_angle(struct parser *p)
{
    /* obs-route = obs-domain-list ":" ; obs-domain-list = *(CFWS / ",")
     * "@" domain *("," [CFWS] ["@" domain]).  Routes are dropped. */
    if (is_special(p, '@') || is_special(p, ',')) {
        while (is_special(p, ','))
            next(p);
        if (!is_special(p, '@'))
            return -1;
        while (is_special(p, '@') || is_special(p, ',')) {
            if (is_special(p, ',')) {
                next(p);
                continue;
            }
            next(p);
            p->alen = 0;
            if (parse_domain(p) < 0)
                return -1;
        }
        if (!is_special(p, ':'))
            return -1;
        next(p);
    }
    /* local-part = dot-atom / quoted-string / obs-local-part (word
     * *("." word)). */
    p->alen = 0;
    for (;;) {
        if (p->tk.t != T_ATOM && p->tk.t != T_QSTR)
            return -1;
        addr_put_token(p);
        next(p);
        if (!is_special(p, '.'))
            break;
        addr_put(p, ".", 1);
        next(p);
    }
    if (!is_special(p, '@'))
        return -1;
    addr_put(p, "@", 1);
    next(p);
    if (parse_domain(p) < 0 || !is_special(p, '>'))
        return -1;
    next(p);
    return emit(p);
}

/* address = mailbox / group; mailbox = name-addr / addr-spec (3.4). */
static int parse_address(struct parser *p, int allow_group)
{
    int words = 0, last_dot = 0, local_ok = 1, r;

    /* A run of words and dots: display-name (phrase, obs-phrase) or
     * local-part, decided by what follows. */
    p->alen = 0;
    while (p->tk.t == T_ATOM || p->tk.t == T_QSTR || is_special(p, '.')) {
        if (p->tk.t == T_SPECIAL) {
            if (words == 0)
                return -1; /* neither may start with a dot */
            if (last_dot)
                local_ok = 0;
            last_dot = 1;
            addr_put(p, ".", 1);
        } else {
            if (words > 0 && !last_dot)
                local_ok = 0; /* two words: a phrase */
            words++;
            last_dot = 0;
            addr_put_token(p);
        }
        next(p);
    }
    if (last_dot)
        local_ok = 0;
    if (is_special(p, '@')) {
        if (words == 0 || !local_ok)
            return -1;
        addr_put(p, "@", 1);
        next(p);
        if (parse_domain(p) < 0)
            return -1;
        return emit(p);
    }
    if (is_special(p, '<')) {
        next(p);
        return parse_angle(p);
    }
    if (is_special(p, ':') && allow_group && words > 0) {
        /* group = display-name ":" [group-list] ";" [CFWS], where
         * group-list = mailbox-list / CFWS / obs-group-list. */
        next(p);
        for (;;) {
            if (is_special(p, ';')) {
                next(p);
                return 0;
            }
            if (is_special(p, ',')) {
                next(p);
                continue;
            }
            if ((r = parse_address(p, 0)) < 0)
                return r;
            if (!is_special(p, ',') && !is_special(p, ';'))
                return -1;
        }
    }
    return -1;
}

int ms_addrlist_parse(const char *s, size_t n, enum ms_addr_kind kind, ms_addr_cb cb, void *arg)
{
    struct parser p;
    int count = 0, r;

    /* Not memset: addr is written before it is read. */
    p.s = (const unsigned char *)s;
    p.n = n;
    p.i = 0;
    p.cb = cb;
    p.arg = arg;
    p.err = 0;
    p.nmailbox = 0;
    p.alen = 0;
    next(&p);
    if (kind == MS_ADDR_MAILBOX) {
        if ((r = parse_address(&p, 0)) < 0)
            goto fail;
        if (p.tk.t != T_END)
            goto bad;
        return p.nmailbox;
    }
    /* obs-mbox-list and obs-addr-list (4.4): empty elements are allowed,
     * so long as one address is there. */
    for (;;) {
        if (is_special(&p, ',')) {
            next(&p);
            continue;
        }
        if (p.tk.t == T_END)
            break;
        if ((r = parse_address(&p, kind == MS_ADDR_ADDRESS_LIST)) < 0)
            goto fail;
        count++;
        if (is_special(&p, ','))
            next(&p);
        else if (p.tk.t != T_END)
            goto bad;
    }
    if (count == 0)
        goto bad;
    return p.nmailbox;
fail:
    if (r != -1)
        return r; /* the callback's, or MS_ETOOBIG */
bad:
    return p.err ? p.err : MS_EPROTO;
}
