/*
 * ms_spf.c - RFC 7208 check_host() as a pull-style evaluator.
 *
 * Layout: ASCII helpers; the macro tokenizer shared by the syntax checks and
 * the expander (§7); the record parser (§4.5, §4.6, §5, §6); the evaluation
 * (§4, §5, §6), which runs as ordinary recursive code over a cache of DNS
 * answers and unwinds with EV_NEED at the first question it cannot answer;
 * the public step/answer API that replays it.  See ms_spf.h for why replay.
 */
#include "ms_spf.h"
#include "ms_addr.h"

#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* RFC 1035 §2.3.4 as RFC 7208 §7.3 applies it: names are cut to 253 octets
 * (no trailing dot), labels are 1 to 63 octets. */
#define SPF_NAME_MAX 253
#define SPF_LABEL_MAX 63

/* Room for one macro value before transformation: the sender is the
 * longest (local-part, "@", domain; "postmaster" may replace an empty
 * local-part, and the HELO name the domain). */
#define SPF_VALUE_MAX (MS_SPF_SENDER_MAX + 16)
_Static_assert(MS_SPF_HELO_MAX + sizeof("postmaster@") <= SPF_VALUE_MAX,
               "postmaster@<helo> must fit a macro value");

/* Internal outcomes of a step of evaluation.  EV_NEED unwinds everything:
 * the run is replayed once the question is answered. */
enum ev {
    EV_NOMATCH = 0,
    EV_MATCH = 1,
    EV_NEED = -1,
    EV_TEMP = -2,
    EV_PERM = -3,
};

/* The expander's signal that %{p} is wanted but not yet known. */
#define SPF_NEED_P 1

/* ------------------------------------------------------------------------ */
/* ASCII helpers (no locale). */

static int a_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int a_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int a_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int a_alnum(int c)
{
    return a_alpha(c) || a_digit(c);
}

/* Case-insensitive equality of s (length n) with the NUL-terminated lit. */
static int a_ieq(const char *s, size_t n, const char *lit)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (lit[i] == '\0' || a_lower((unsigned char)s[i]) != a_lower((unsigned char)lit[i]))
            return 0;
    return lit[n] == '\0';
}

static int a_ieqn(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i;

    if (an != bn)
        return 0;
    for (i = 0; i < an; i++)
        if (a_lower((unsigned char)a[i]) != a_lower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* A bounded output string; always NUL-terminated. */
struct sb {
    char *p;
    size_t len;
    size_t max; /* capacity - 1 */
};

static void sb_init(struct sb *b, char *mem, size_t cap)
{
    b->p = mem;
    b->len = 0;
    b->max = cap - 1;
    mem[0] = '\0';
}

static int sb_add(struct sb *b, const char *s, size_t n)
{
    if (n > b->max - b->len)
        return MS_ETOOBIG;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------ */
/* What the evaluation knows of the request. */

struct spf_ctx {
    int family;
    struct in_addr ip4;
    struct in6_addr ip6;
    char sender[SPF_VALUE_MAX]; /* %{s} */
    char local[SPF_VALUE_MAX];  /* %{l} */
    char domain[SPF_VALUE_MAX]; /* %{o}, and the initial <domain> */
    char helo[MS_SPF_HELO_MAX + 1];
    char receiver[MS_DNS_NAME_MAX + 1];
    int64_t now;
};

static int ctx_init(struct spf_ctx *c, const struct ms_spf_request *req)
{
    const char *mf = req->mail_from, *at, *helo = req->helo ? req->helo : "";
    size_t n, ll, dl;

    memset(c, 0, sizeof(*c));
    if (req->family == AF_INET) {
        c->family = AF_INET;
        c->ip4 = req->ip.v4;
    } else if (req->family == AF_INET6) {
        /* §5: an IPv4-mapped IPv6 address is an IPv4 address. */
        if (IN6_IS_ADDR_V4MAPPED(&req->ip.v6)) {
            c->family = AF_INET;
            memcpy(&c->ip4, &req->ip.v6.s6_addr[12], 4);
        } else {
            c->family = AF_INET6;
            c->ip6 = req->ip.v6;
        }
    } else {
        return MS_EINVAL;
    }
    if (strlen(helo) > MS_SPF_HELO_MAX)
        return MS_ETOOBIG;
    memcpy(c->helo, helo, strlen(helo) + 1);
    if (req->receiver) {
        if (strlen(req->receiver) > MS_DNS_NAME_MAX)
            return MS_ETOOBIG;
        memcpy(c->receiver, req->receiver, strlen(req->receiver) + 1);
    } else {
        memcpy(c->receiver, "unknown", sizeof("unknown"));
    }
    c->now = req->now;

    if (req->identity == MS_SPF_HELO || mf == NULL || mf[0] == '\0') {
        /* §2.3, §2.4: the HELO identity, sender postmaster@<helo>. */
        if (req->identity == MS_SPF_HELO && helo[0] == '\0')
            return MS_EINVAL;
        memcpy(c->local, "postmaster", sizeof("postmaster"));
        memcpy(c->domain, helo, strlen(helo) + 1);
    } else if (req->identity == MS_SPF_MAILFROM) {
        if ((n = strlen(mf)) > MS_SPF_SENDER_MAX)
            return MS_ETOOBIG;
        /* The domain follows the last "@" (ms_addr.h: a quoted
         * local-part may hold one); §4.3: a missing local-part becomes
         * "postmaster". */
        at = ms_addr_domain(mf);
        at = at ? at - 1 : NULL;
        if (at == NULL || at == mf) {
            memcpy(c->local, "postmaster", sizeof("postmaster"));
        } else {
            memcpy(c->local, mf, (size_t)(at - mf));
            c->local[at - mf] = '\0';
        }
        at = at ? at + 1 : mf;
        memcpy(c->domain, at, strlen(at) + 1);
    } else {
        return MS_EINVAL;
    }
    ll = strlen(c->local);
    dl = strlen(c->domain);
    if (ll + 1 + dl >= sizeof(c->sender))
        return MS_ETOOBIG;
    memcpy(c->sender, c->local, ll);
    c->sender[ll] = '@';
    memcpy(c->sender + ll + 1, c->domain, dl + 1);
    return 0;
}

/* %{i}: dotted quad, or 32 dot-separated nibbles (upper case, as in the
 * examples of §7.4). */
static void ip_dotted(const struct spf_ctx *c, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *b;
    size_t i, o = 0;

    if (c->family == AF_INET) {
        b = (const unsigned char *)&c->ip4;
        snprintf(out, outlen, "%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
        return;
    }
    b = c->ip6.s6_addr;
    for (i = 0; i < 16 && o + 4 < outlen; i++) {
        out[o++] = hex[b[i] >> 4];
        out[o++] = '.';
        out[o++] = hex[b[i] & 15];
        out[o++] = i == 15 ? '\0' : '.';
    }
}

/* The reverse-lookup name of the client address (§5.5). */
static void ip_reverse_name(const struct spf_ctx *c, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *b;
    size_t o = 0;
    int i;

    if (c->family == AF_INET) {
        b = (const unsigned char *)&c->ip4;
        snprintf(out, outlen, "%u.%u.%u.%u.in-addr.arpa", b[3], b[2], b[1], b[0]);
        return;
    }
    b = c->ip6.s6_addr;
    for (i = 15; i >= 0 && o + 4 < outlen; i--) {
        out[o++] = hex[b[i] & 15];
        out[o++] = '.';
        out[o++] = hex[b[i] >> 4];
        out[o++] = '.';
    }
    snprintf(out + o, outlen - o, "ip6.arpa");
}

/* ------------------------------------------------------------------------ */
/* Macros (§7.1, §7.3). */

enum mtok_kind { MT_LIT, MT_ESC, MT_MACRO };

struct mtok {
    enum mtok_kind kind;
    const char *str; /* MT_LIT: the character; MT_ESC: its replacement */
    size_t str_len;
    char letter; /* lower case */
    int upper;
    unsigned keep; /* rightmost parts to keep; 0: all */
    int reverse;
    char delims[8];
    size_t ndelims;
};

static int macro_delim(int c)
{
    return c == '.' || c == '-' || c == '+' || c == ',' || c == '/' || c == '_' || c == '=';
}

/*
 * Next token of a macro-string at s[*i] (§7.1).  `explain` allows the
 * explanation-only letters c, r, t and spaces (explain-string).  Returns 0
 * or MS_EPROTO.
 */
static int macro_next(const char *s, size_t n, size_t *i, int explain, struct mtok *t)
{
    size_t k = *i;
    unsigned long keep = 0;
    int c, digits = 0;

    c = (unsigned char)s[k];
    if (c != '%') {
        /* macro-literal = %x21-24 / %x26-7E; explain-string adds SP. */
        if (c < 0x20 || c > 0x7e || (c == 0x20 && !explain))
            return MS_EPROTO;
        t->kind = MT_LIT;
        t->str = s + k;
        t->str_len = 1;
        *i = k + 1;
        return 0;
    }
    if (k + 1 >= n)
        return MS_EPROTO;
    switch (s[k + 1]) {
    case '%':
        t->kind = MT_ESC, t->str = "%", t->str_len = 1;
        *i = k + 2;
        return 0;
    case '_':
        t->kind = MT_ESC, t->str = " ", t->str_len = 1;
        *i = k + 2;
        return 0;
    case '-':
        t->kind = MT_ESC, t->str = "%20", t->str_len = 3;
        *i = k + 2;
        return 0;
    case '{': break;
    default: return MS_EPROTO; /* §7.1: "%" not followed by {, %, -, _ */
    }
    k += 2;
    if (k >= n)
        return MS_EPROTO;
    c = (unsigned char)s[k++];
    t->kind = MT_MACRO;
    t->upper = c >= 'A' && c <= 'Z';
    t->letter = (char)a_lower(c);
    if (strchr("slodiphv", t->letter) == NULL || t->letter == '\0') {
        if (!explain || strchr("crt", t->letter) == NULL || t->letter == '\0')
            return MS_EPROTO;
    }
    while (k < n && a_digit(s[k])) {
        keep = keep * 10 + (unsigned long)(s[k] - '0');
        if (keep > 1000)
            keep = 1000; /* more parts than any value has: "all" */
        digits = 1;
        k++;
    }
    if (digits && keep == 0)
        return MS_EPROTO; /* §7.3: the DIGIT transformer must be nonzero */
    t->keep = (unsigned)keep;
    t->reverse = 0;
    if (k < n && (s[k] == 'r' || s[k] == 'R')) {
        t->reverse = 1;
        k++;
    }
    t->ndelims = 0;
    while (k < n && macro_delim(s[k])) {
        if (t->ndelims < sizeof(t->delims) && !memchr(t->delims, s[k], t->ndelims))
            t->delims[t->ndelims++] = s[k];
        k++;
    }
    if (k >= n || s[k] != '}')
        return MS_EPROTO;
    *i = k + 1;
    return 0;
}

/* Check a macro-string; *ends_macro says whether its last token is a
 * macro-expand (for domain-end, §7.1). */
static int macro_check(const char *s, size_t n, int explain, int *ends_macro)
{
    struct mtok t;
    size_t i = 0;
    int last_macro = 0;

    while (i < n) {
        if (macro_next(s, n, &i, explain, &t) < 0)
            return MS_EPROTO;
        last_macro = t.kind != MT_LIT;
    }
    if (ends_macro)
        *ends_macro = last_macro;
    return 0;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) /
 *            ( 1*alphanum "-" *( alphanum / "-" ) alphanum )   (§7.1) */
static int toplabel_ok(const char *s, size_t n)
{
    size_t i;
    int alpha = 0, dash = 0;

    if (n == 0 || s[0] == '-' || s[n - 1] == '-')
        return 0;
    for (i = 0; i < n; i++) {
        if (s[i] == '-')
            dash = 1;
        else if (a_alpha(s[i]))
            alpha = 1;
        else if (!a_digit(s[i]))
            return 0;
    }
    return alpha || dash;
}

/* domain-spec = macro-string domain-end;
 * domain-end  = ( "." toplabel [ "." ] ) / macro-expand   (§7.1) */
static int domain_spec_ok(const char *s, size_t n)
{
    size_t m, j;
    int ends_macro;

    if (n == 0 || macro_check(s, n, 0, &ends_macro) < 0)
        return 0;
    if (ends_macro)
        return 1;
    m = s[n - 1] == '.' ? n - 1 : n;
    for (j = m; j > 0 && s[j - 1] != '.'; j--)
        ;
    if (j == 0)
        return 0;
    return toplabel_ok(s + j, m - j);
}

/* The value of a macro letter before transformation. */
static void macro_value(const struct spf_ctx *c, const char *domain, const char *p, char letter,
                        char *out, size_t outlen)
{
    const char *v = "";

    switch (letter) {
    case 's': v = c->sender; break;
    case 'l': v = c->local; break;
    case 'o': v = c->domain; break;
    case 'd': v = domain; break;
    case 'h': v = c->helo; break;
    case 'p': v = p; break;
    case 'r': v = c->receiver; break;
    case 'v': v = c->family == AF_INET ? "in-addr" : "ip6"; break;
    case 'i': ip_dotted(c, out, outlen); return;
    case 'c':
        if (c->family == AF_INET)
            inet_ntop(AF_INET, &c->ip4, out, (socklen_t)outlen);
        else
            inet_ntop(AF_INET6, &c->ip6, out, (socklen_t)outlen);
        return;
    case 't': snprintf(out, outlen, "%" PRId64, c->now); return;
    }
    snprintf(out, outlen, "%s", v);
}

/* Append one expanded macro: split on the delimiters, reverse, keep the
 * rightmost parts, join with "." (§7.3), then URL-escape for an upper-case
 * letter (§7.3: all but the unreserved characters of RFC 3986). */
static int macro_emit(const struct mtok *t, const char *val, struct sb *out)
{
    unsigned short st[SPF_VALUE_MAX + 1], ln[SPF_VALUE_MAX + 1];
    const char *delims = t->ndelims ? t->delims : ".";
    size_t nd = t->ndelims ? t->ndelims : 1;
    size_t len = strlen(val), np = 0, i, first, k, from;
    char tmp[4];

    from = 0;
    for (i = 0; i <= len; i++) {
        if (i == len || memchr(delims, val[i], nd)) {
            st[np] = (unsigned short)from;
            ln[np] = (unsigned short)(i - from);
            np++;
            from = i + 1;
        }
    }
    first = t->keep && t->keep < np ? np - t->keep : 0;
    for (k = first; k < np; k++) {
        /* After reversal the rightmost parts are the leftmost ones. */
        i = t->reverse ? np - 1 - k : k;
        if (k > first && sb_add(out, ".", 1) < 0)
            return MS_ETOOBIG;
        if (!t->upper) {
            if (sb_add(out, val + st[i], ln[i]) < 0)
                return MS_ETOOBIG;
            continue;
        }
        for (from = st[i]; from < (size_t)st[i] + ln[i]; from++) {
            unsigned char ch = (unsigned char)val[from];
            if (a_alnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
                if (sb_add(out, (const char *)&val[from], 1) < 0)
                    return MS_ETOOBIG;
            } else {
                snprintf(tmp, sizeof(tmp), "%%%02X", ch);
                if (sb_add(out, tmp, 3) < 0)
                    return MS_ETOOBIG;
            }
        }
    }
    return 0;
}

/* Expand; p == NULL means %{p} is not known yet (returns SPF_NEED_P). */
static int expand(const struct spf_ctx *c, const char *domain, const char *p, const char *s,
                  size_t n, int explain, struct sb *out)
{
    char val[SPF_VALUE_MAX];
    struct mtok t;
    size_t i = 0;
    int rc;

    while (i < n) {
        if (macro_next(s, n, &i, explain, &t) < 0)
            return MS_EPROTO;
        if (t.kind != MT_MACRO) {
            if (sb_add(out, t.str, t.str_len) < 0)
                return MS_ETOOBIG;
            continue;
        }
        if (t.letter == 'p' && p == NULL)
            return SPF_NEED_P;
        macro_value(c, domain, p, t.letter, val, sizeof(val));
        if ((rc = macro_emit(&t, val, out)) < 0)
            return rc;
    }
    return 0;
}

int ms_spf_expand(const struct ms_spf_request *req, const char *domain, const char *p,
                  const char *spec, size_t len, int explain, char *out, size_t outlen)
{
    struct spf_ctx *c;
    struct sb b;
    int rc;

    if (outlen == 0)
        return MS_ETOOBIG;
    c = ms_malloc(sizeof(*c));
    if ((rc = ctx_init(c, req)) == 0) {
        sb_init(&b, out, outlen);
        rc = expand(c, domain, p ? p : "unknown", spec, len, explain, &b);
        if (rc == 0)
            rc = (int)b.len;
    }
    free(c);
    return rc;
}

/*
 * Turn an expanded domain into a query name in place: drop a trailing dot,
 * cut labels from the left to 253 octets (§7.3), then check the labels.
 * Returns the length, or -1 for a name DNS cannot ask (treated as
 * non-existent, §4.3 and §4.8).
 */
static int name_finish(char *s, size_t len)
{
    size_t i, lab = 0;
    char *dot;

    if (len > 0 && s[len - 1] == '.')
        s[--len] = '\0';
    while (len > SPF_NAME_MAX) {
        if ((dot = memchr(s, '.', len)) == NULL)
            return -1;
        len -= (size_t)(dot + 1 - s);
        memmove(s, dot + 1, len + 1);
    }
    if (len == 0)
        return -1;
    for (i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (lab == 0 || lab > SPF_LABEL_MAX)
                return -1;
            lab = 0;
        } else if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) {
            return -1;
        } else {
            lab++;
        }
    }
    return (int)len;
}

/* §4.3: the initial <domain> must be a well-formed, multi-label name (one
 * trailing dot allowed); a domain literal or a dotted quad is not one. */
static int initial_domain_ok(const char *d)
{
    char tmp[MS_DNS_NAME_MAX + 2];
    size_t n = strlen(d), i, last;

    if (n == 0 || n > MS_DNS_NAME_MAX || d[0] == '[')
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)d[i] <= 0x20 || (unsigned char)d[i] > 0x7e)
            return 0;
    memcpy(tmp, d, n + 1);
    if (tmp[n - 1] == '.')
        tmp[--n] = '\0';
    /* name_finish() would strip a second dot and cut long names: rule both
     * out first, so that it only checks the labels. */
    if (n == 0 || n > SPF_NAME_MAX || tmp[n - 1] == '.' || name_finish(tmp, n) < 0 ||
        strchr(tmp, '.') == NULL)
        return 0;
    last = (size_t)(strrchr(tmp, '.') - tmp) + 1;
    for (i = last; i < n && a_digit(tmp[i]); i++)
        ;
    return i < n;
}

/* ------------------------------------------------------------------------ */
/* The record parser (§4.5, §4.6, §5, §6). */

int ms_spf_is_record(const char *txt, size_t len)
{
    return len >= 6 && a_ieqn(txt, 6, "v=spf1", 6) && (len == 6 || txt[6] == ' ');
}

/* A prefix length: 1*DIGIT without leading zeros (RFC 7208 prohibits them
 * in ip4-network; the suite reads that for CIDR too). */
static int cidr_parse(const char *s, size_t n, int max)
{
    int v = 0;
    size_t i;

    if (n == 0 || n > 3 || (n > 1 && s[0] == '0'))
        return -1;
    for (i = 0; i < n; i++) {
        if (!a_digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

/* ip4-network = qnum "." qnum "." qnum "." qnum, qnum 0-255 without leading
 * zeros (§5.6). */
static int ip4_parse(const char *s, size_t n, struct in_addr *out)
{
    unsigned char b[4];
    size_t i = 0, k, start;
    int q, v;

    for (q = 0; q < 4; q++) {
        if (q > 0) {
            if (i >= n || s[i] != '.')
                return -1;
            i++;
        }
        start = i;
        v = 0;
        for (k = 0; i < n && a_digit(s[i]) && k < 4; k++, i++)
            v = v * 10 + (s[i] - '0');
        if (i == start || i - start > 3 || (i - start > 1 && s[start] == '0') || v > 255)
            return -1;
        b[q] = (unsigned char)v;
    }
    if (i != n)
        return -1;
    memcpy(out, b, 4);
    return 0;
}

static int ip6_parse(const char *s, size_t n, struct in6_addr *out)
{
    char tmp[INET6_ADDRSTRLEN];

    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return inet_pton(AF_INET6, tmp, out) == 1 ? 0 : -1;
}

static const struct {
    const char *name;
    enum ms_spf_mech kind;
} mech_names[] = {
    {"all", MS_SPF_MECH_ALL}, {"include", MS_SPF_MECH_INCLUDE}, {"a", MS_SPF_MECH_A},
    {"mx", MS_SPF_MECH_MX},   {"ptr", MS_SPF_MECH_PTR},         {"ip4", MS_SPF_MECH_IP4},
    {"ip6", MS_SPF_MECH_IP6}, {"exists", MS_SPF_MECH_EXISTS},
};

/* "/" ip4-cidr and/or "//" ip6-cidr at the end of rest (§5.3, §5.4);
 * shortens *rn past them. */
static int dual_cidr(const char *rest, size_t *rn, struct ms_spf_term *t)
{
    size_t e = *rn, k;

    for (k = e; k > 0 && a_digit(rest[k - 1]); k--)
        ;
    if (k < e && k >= 2 && rest[k - 1] == '/' && rest[k - 2] == '/') {
        if ((t->cidr6 = cidr_parse(rest + k, e - k, 128)) < 0)
            return -1;
        e = k - 2;
    }
    for (k = e; k > 0 && a_digit(rest[k - 1]); k--)
        ;
    if (k < e && k >= 1 && rest[k - 1] == '/') {
        if ((t->cidr4 = cidr_parse(rest + k, e - k, 32)) < 0)
            return -1;
        e = k - 1;
    }
    *rn = e;
    return 0;
}

/* ":" domain-spec, optional or required. */
static int colon_domain(const char *rest, size_t rn, int required, struct ms_spf_term *t)
{
    if (rn == 0)
        return required ? -1 : 0;
    if (rest[0] != ':' || !domain_spec_ok(rest + 1, rn - 1))
        return -1;
    t->spec = rest + 1;
    t->spec_len = rn - 1;
    return 0;
}

static int term_parse(const char *s, size_t n, struct ms_spf_term *t, const char **why)
{
    const char *p = s, *end = s + n, *nm, *rest;
    size_t nmlen, rn, i;
    int slash;

    memset(t, 0, sizeof(*t));
    t->text = s;
    t->text_len = n;
    t->cidr4 = 32;
    t->cidr6 = 128;
    t->qualifier = MS_SPF_PASS;
    switch (*p) {
    case '+': t->qualifier = MS_SPF_PASS, p++; break;
    case '-': t->qualifier = MS_SPF_FAIL, p++; break;
    case '~': t->qualifier = MS_SPF_SOFTFAIL, p++; break;
    case '?': t->qualifier = MS_SPF_NEUTRAL, p++; break;
    }
    for (nm = p; p < end && *p != ':' && *p != '/' && *p != '='; p++)
        ;
    nmlen = (size_t)(p - nm);

    if (p < end && *p == '=') {
        /* modifier = name "=" macro-string; name = ALPHA *( ALPHA / DIGIT /
         * "-" / "_" / "." ) (§4.6.1, §6). */
        *why = "invalid modifier name";
        if (nm != s || nmlen == 0 || !a_alpha(nm[0]))
            return MS_EPROTO;
        for (i = 1; i < nmlen; i++)
            if (!a_alnum(nm[i]) && nm[i] != '-' && nm[i] != '_' && nm[i] != '.')
                return MS_EPROTO;
        t->name = nm;
        t->name_len = nmlen;
        t->spec = p + 1;
        t->spec_len = (size_t)(end - p - 1);
        if (a_ieq(nm, nmlen, "redirect") || a_ieq(nm, nmlen, "exp")) {
            /* Known modifiers are not "unknown-modifier" when malformed. */
            t->kind = nm[0] == 'r' || nm[0] == 'R' ? MS_SPF_MOD_REDIRECT : MS_SPF_MOD_EXP;
            *why =
                t->kind == MS_SPF_MOD_REDIRECT ? "invalid redirect= domain" : "invalid exp= domain";
            return domain_spec_ok(t->spec, t->spec_len) ? 0 : MS_EPROTO;
        }
        t->kind = MS_SPF_MOD_UNKNOWN;
        *why = "invalid macro in unknown modifier";
        return macro_check(t->spec, t->spec_len, 1, NULL) < 0 ? MS_EPROTO : 0;
    }

    t->kind = MS_SPF_MECH_NONE;
    for (i = 0; i < sizeof(mech_names) / sizeof(mech_names[0]); i++)
        if (a_ieq(nm, nmlen, mech_names[i].name))
            t->kind = mech_names[i].kind;
    if (t->kind == MS_SPF_MECH_NONE) {
        *why = "unknown mechanism";
        return MS_EPROTO;
    }
    t->name = nm;
    t->name_len = nmlen;
    rest = p;
    rn = (size_t)(end - p);
    *why = "invalid mechanism syntax";
    switch (t->kind) {
    case MS_SPF_MECH_ALL: return rn == 0 ? 0 : MS_EPROTO;
    case MS_SPF_MECH_INCLUDE:
    case MS_SPF_MECH_EXISTS: return colon_domain(rest, rn, 1, t) < 0 ? MS_EPROTO : 0;
    case MS_SPF_MECH_PTR: return colon_domain(rest, rn, 0, t) < 0 ? MS_EPROTO : 0;
    case MS_SPF_MECH_A:
    case MS_SPF_MECH_MX:
        if (dual_cidr(rest, &rn, t) < 0) {
            *why = "invalid CIDR length";
            return MS_EPROTO;
        }
        return colon_domain(rest, rn, 0, t) < 0 ? MS_EPROTO : 0;
    case MS_SPF_MECH_IP4:
    case MS_SPF_MECH_IP6:
        if (rn < 2 || rest[0] != ':')
            return MS_EPROTO;
        rest++, rn--;
        for (i = rn, slash = 0; i > 0; i--)
            if (rest[i - 1] == '/') {
                slash = 1;
                break;
            }
        t->spec = rest;
        t->spec_len = slash ? i - 1 : rn;
        if (slash) {
            int v = cidr_parse(rest + i, rn - i, t->kind == MS_SPF_MECH_IP4 ? 32 : 128);
            if (v < 0) {
                *why = "invalid CIDR length";
                return MS_EPROTO;
            }
            if (t->kind == MS_SPF_MECH_IP4)
                t->cidr4 = v;
            else
                t->cidr6 = v;
        }
        *why = "invalid IP address";
        if (t->kind == MS_SPF_MECH_IP4)
            return ip4_parse(t->spec, t->spec_len, &t->ip4) < 0 ? MS_EPROTO : 0;
        return ip6_parse(t->spec, t->spec_len, &t->ip6) < 0 ? MS_EPROTO : 0;
    default: return MS_EPROTO;
    }
}

void ms_spf_record_free(struct ms_spf_record *r)
{
    free(r->terms);
    r->terms = NULL;
    r->n = 0;
    r->redirect = r->exp = -1;
}

int ms_spf_parse_record(const char *rec, size_t len, struct ms_spf_record *out, const char **why)
{
    const char *dummy, *s;
    size_t i, n = 0, start;
    int rc = 0;

    if (why == NULL)
        why = &dummy;
    *why = NULL;
    out->n = 0;
    out->terms = NULL;
    out->redirect = out->exp = -1;
    if (len > MS_SPF_RECORD_MAX) {
        *why = "record too long";
        return MS_ETOOBIG;
    }
    if (!ms_spf_is_record(rec, len)) {
        *why = "not an SPF record";
        return MS_EPROTO;
    }
    /* §3.1, §4.6.1: 7-bit printable ASCII, terms separated by spaces only
     * (any other control character is an error). */
    for (i = 0; i < len; i++) {
        if ((unsigned char)rec[i] < 0x20 || (unsigned char)rec[i] > 0x7e) {
            *why = "invalid character in record";
            return MS_EPROTO;
        }
    }
    for (i = 6; i < len; i++)
        if (rec[i] != ' ' && (i == 6 || rec[i - 1] == ' '))
            n++;
    if (n > MS_SPF_TERMS_MAX) {
        *why = "too many terms";
        return MS_ETOOBIG;
    }
    out->terms = n ? ms_calloc(n, sizeof(*out->terms)) : NULL;
    for (i = 6; i < len && rc == 0;) {
        if (rec[i] == ' ') {
            i++;
            continue;
        }
        for (start = i; i < len && rec[i] != ' '; i++)
            ;
        s = rec + start;
        rc = term_parse(s, i - start, &out->terms[out->n], why);
        if (rc < 0)
            break;
        /* §6: redirect= and exp= at most once each. */
        if (out->terms[out->n].kind == MS_SPF_MOD_REDIRECT) {
            if (out->redirect >= 0) {
                *why = "redirect= more than once";
                rc = MS_EPROTO;
            }
            out->redirect = (int)out->n;
        } else if (out->terms[out->n].kind == MS_SPF_MOD_EXP) {
            if (out->exp >= 0) {
                *why = "exp= more than once";
                rc = MS_EPROTO;
            }
            out->exp = (int)out->n;
        }
        out->n++;
    }
    if (rc < 0) {
        ms_spf_record_free(out);
        return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Evaluation. */

/* One cached DNS answer; records and their strings live in the same block. */
struct spf_ent {
    char name[MS_DNS_NAME_MAX + 1];
    enum ms_dns_type type;
    enum ms_dns_status status; /* BOGUS is stored as TEMPFAIL */
    size_t n;
    struct ms_dns_rr *rr;
};

struct ms_spf {
    struct spf_ctx c;
    int domain_ok; /* §4.3 check of the initial domain */
    struct spf_ent **ents;
    size_t nents;
    unsigned nqueries;
    int pending;
    struct ms_dns_query pq;
    int done;
    enum ms_spf_result result;
    enum ms_spf_mech kind;
    char *mech;
    char *explanation;
    char *decided;
    const char *problem;
};

/* How a check_host() ended. */
struct spf_out {
    enum ms_spf_result res;
    enum ms_spf_mech kind;
    const char *term; /* into cached answer memory */
    size_t term_len;
    const char *exp; /* exp= domain-spec of the deciding record */
    size_t exp_len;
    char domain[MS_DNS_NAME_MAX + 1]; /* the deciding record's <domain> */
};

/* State of one replay. */
struct spf_run {
    ms_spf *s;
    int lookups;
    int voids;
    const char *problem;
    char p[MS_DNS_NAME_MAX + 1]; /* %{p}, valid for p_domain */
    char p_domain[MS_DNS_NAME_MAX + 1];
    int p_known;
};

/* The cached answer to (name, type), or EV_NEED after recording the
 * question. */
static int run_query(struct spf_run *r, const char *name, enum ms_dns_type type,
                     const struct spf_ent **out)
{
    ms_spf *s = r->s;
    size_t i;

    for (i = 0; i < s->nents; i++) {
        if (s->ents[i]->type == type && strcasecmp(s->ents[i]->name, name) == 0) {
            *out = s->ents[i];
            return 0;
        }
    }
    if (s->nents >= MS_SPF_QUERIES_MAX) {
        r->problem = "too many DNS queries";
        return EV_PERM;
    }
    snprintf(s->pq.name, sizeof(s->pq.name), "%s", name);
    s->pq.type = type;
    return EV_NEED;
}

static int ent_void(const struct spf_ent *e)
{
    return e->status == MS_DNS_NXDOMAIN || e->status == MS_DNS_NODATA ||
           (e->status == MS_DNS_OK && e->n == 0);
}

/* §4.6.4: each mechanism or modifier that looks something up counts. */
static int run_count(struct spf_run *r)
{
    if (++r->lookups > MS_SPF_DNS_LOOKUPS_MAX) {
        r->problem = "too many DNS lookups";
        return EV_PERM;
    }
    return 0;
}

static int run_void(struct spf_run *r)
{
    if (++r->voids > MS_SPF_VOID_LOOKUPS_MAX) {
        r->problem = "too many void DNS lookups";
        return EV_PERM;
    }
    return EV_NOMATCH;
}

static int addr_match(const struct ms_dns_rr *rr, const struct spf_ctx *c, int cidr4, int cidr6)
{
    const unsigned char *a, *b;
    int bits, i;

    if (c->family == AF_INET && rr->type == MS_DNS_A) {
        a = (const unsigned char *)&rr->u.a;
        b = (const unsigned char *)&c->ip4;
        bits = cidr4;
    } else if (c->family == AF_INET6 && rr->type == MS_DNS_AAAA) {
        a = rr->u.aaaa.s6_addr;
        b = c->ip6.s6_addr;
        bits = cidr6;
    } else {
        return 0;
    }
    for (i = 0; bits >= 8; i++, bits -= 8)
        if (a[i] != b[i])
            return 0;
    return bits == 0 || ((a[i] ^ b[i]) & (0xff00 >> bits) & 0xff) == 0;
}

static int ent_has_ip(const struct spf_ent *e, const struct spf_ctx *c)
{
    size_t i;

    if (e->status != MS_DNS_OK)
        return 0;
    for (i = 0; i < e->n; i++)
        if (addr_match(&e->rr[i], c, 32, 128))
            return 1;
    return 0;
}

static enum ms_dns_type addr_type(const struct spf_ctx *c)
{
    return c->family == AF_INET ? MS_DNS_A : MS_DNS_AAAA;
}

/* Does name equal target or end in "." target (case-insensitively)? */
static int name_within(const char *name, const char *target)
{
    size_t n = strlen(name), t = strlen(target);

    if (n > 0 && name[n - 1] == '.')
        n--;
    if (t > 0 && target[t - 1] == '.')
        t--;
    if (n < t || t == 0)
        return 0;
    if (n > t && name[n - t - 1] != '.')
        return 0;
    return a_ieqn(name + n - t, t, target, t);
}

/*
 * %{p} (§7.3): a validated name of the client, preferring <domain> itself,
 * then a subdomain of it, then any; "unknown" when none validates or on a
 * DNS error.  Not counted against the lookup limits (§4.6.4 names only
 * mechanisms and modifiers); at most MS_SPF_PTR_NAMES_MAX names are tried.
 */
static int run_p(struct spf_run *r, const char *domain)
{
    const struct spf_ctx *c = &r->s->c;
    const struct spf_ent *e, *a;
    char rev[80];
    size_t i, n;
    int pass, rc;

    if (r->p_known && strcasecmp(r->p_domain, domain) == 0)
        return 0;
    r->p_known = 0;
    snprintf(r->p_domain, sizeof(r->p_domain), "%s", domain);
    snprintf(r->p, sizeof(r->p), "unknown");
    ip_reverse_name(c, rev, sizeof(rev));
    if ((rc = run_query(r, rev, MS_DNS_PTR, &e)) == EV_NEED)
        return rc;
    if (rc == 0 && e->status == MS_DNS_OK) {
        n = e->n < MS_SPF_PTR_NAMES_MAX ? e->n : MS_SPF_PTR_NAMES_MAX;
        for (pass = 0; pass < 3; pass++) {
            for (i = 0; i < n; i++) {
                const char *nm = e->rr[i].u.ptr;
                int exact = strcasecmp(nm, domain) == 0;
                int sub = !exact && name_within(nm, domain);
                if ((pass == 0 && !exact) || (pass == 1 && !sub) || (pass == 2 && (exact || sub)))
                    continue;
                if (nm[0] == '\0' || strlen(nm) > SPF_NAME_MAX)
                    continue;
                if ((rc = run_query(r, nm, addr_type(c), &a)) == EV_NEED)
                    return rc;
                if (rc == 0 && ent_has_ip(a, c)) {
                    snprintf(r->p, sizeof(r->p), "%s", nm);
                    pass = 3;
                    break;
                }
            }
        }
    }
    r->p_known = 1;
    return 0;
}

/* %{p} for <domain> if known, else NULL (expand() then asks for it). */
static const char *run_p_for(const struct spf_run *r, const char *domain)
{
    return r->p_known && strcasecmp(r->p_domain, domain) == 0 ? r->p : NULL;
}

/*
 * Expand a domain-spec into a query name.  Returns 0 (*valid says whether
 * DNS can ask it), EV_NEED (for %{p}) or EV_PERM.
 */
static int run_target(struct spf_run *r, const char *domain, const char *spec, size_t len,
                      char out[MS_DNS_NAME_MAX + 1], int *valid)
{
    char buf[MS_SPF_EXPAND_MAX + 1];
    struct sb b;
    int rc, n;

    for (;;) {
        sb_init(&b, buf, sizeof(buf));
        rc = expand(&r->s->c, domain, run_p_for(r, domain), spec, len, 0, &b);
        if (rc != SPF_NEED_P)
            break;
        if ((rc = run_p(r, domain)) < 0)
            return rc;
    }
    if (rc < 0) {
        r->problem = rc == MS_ETOOBIG ? "macro expansion too long" : "macro syntax error";
        return EV_PERM;
    }
    n = name_finish(buf, b.len); /* at most SPF_NAME_MAX when valid */
    *valid = n >= 0;
    if (n >= 0)
        memcpy(out, buf, (size_t)n + 1);
    else
        out[0] = '\0';
    return 0;
}

static int check_host(struct spf_run *r, const char *domain, struct spf_out *out);

/* The target of a mechanism: its domain-spec expanded, or <domain>. */
static int mech_target(struct spf_run *r, const char *domain, const struct ms_spf_term *t,
                       char out[MS_DNS_NAME_MAX + 1], int *valid)
{
    if (t->spec == NULL) {
        snprintf(out, MS_DNS_NAME_MAX + 1, "%s", domain);
        *valid = 1;
        return 0;
    }
    return run_target(r, domain, t->spec, t->spec_len, out, valid);
}

/* A lookup for a mechanism: EV_TEMP on a DNS error, the void count on no
 * answer, else 0 with *e set. */
static int mech_lookup(struct spf_run *r, const char *name, enum ms_dns_type type,
                       const struct spf_ent **e)
{
    int rc;

    if ((rc = run_query(r, name, type, e)) < 0)
        return rc;
    if ((*e)->status == MS_DNS_TEMPFAIL) {
        r->problem = "DNS error";
        return EV_TEMP;
    }
    if (ent_void(*e))
        return run_void(r) < 0 ? EV_PERM : 1;
    return 0;
}

static int mech_eval(struct spf_run *r, const char *domain, const struct ms_spf_term *t)
{
    const struct spf_ctx *c = &r->s->c;
    char target[MS_DNS_NAME_MAX + 1], rev[80];
    const struct spf_ent *e, *a;
    struct spf_out sub;
    size_t i, n;
    int rc, valid;

    switch (t->kind) {
    case MS_SPF_MECH_ALL: return EV_MATCH;
    case MS_SPF_MECH_IP4:
        if (c->family != AF_INET)
            return EV_NOMATCH;
        {
            struct ms_dns_rr rr = {.type = MS_DNS_A, .u.a = t->ip4};
            return addr_match(&rr, c, t->cidr4, 128) ? EV_MATCH : EV_NOMATCH;
        }
    case MS_SPF_MECH_IP6:
        if (c->family != AF_INET6)
            return EV_NOMATCH;
        {
            struct ms_dns_rr rr = {.type = MS_DNS_AAAA, .u.aaaa = t->ip6};
            return addr_match(&rr, c, 32, t->cidr6) ? EV_MATCH : EV_NOMATCH;
        }
    default: break;
    }

    if ((rc = run_count(r)) < 0)
        return rc;
    if ((rc = mech_target(r, domain, t, target, &valid)) < 0)
        return rc;

    switch (t->kind) {
    case MS_SPF_MECH_INCLUDE:
        /* §5.2: pass matches; fail, softfail, neutral do not; errors and
         * none are errors. */
        if (!valid) {
            r->problem = "include target malformed";
            return EV_PERM;
        }
        if ((rc = check_host(r, target, &sub)) < 0)
            return rc;
        switch (sub.res) {
        case MS_SPF_PASS: return EV_MATCH;
        case MS_SPF_FAIL:
        case MS_SPF_SOFTFAIL:
        case MS_SPF_NEUTRAL: return EV_NOMATCH;
        case MS_SPF_TEMPERROR: return EV_TEMP;
        case MS_SPF_NONE: r->problem = "include target has no SPF record"; return EV_PERM;
        default: return EV_PERM;
        }

    case MS_SPF_MECH_A:
    case MS_SPF_MECH_EXISTS:
        if (!valid)
            return run_void(r);
        /* §5.7: exists always asks for A, whatever the client's family. */
        rc = mech_lookup(r, target, t->kind == MS_SPF_MECH_EXISTS ? MS_DNS_A : addr_type(c), &e);
        if (rc != 0)
            return rc > 0 ? EV_NOMATCH : rc;
        if (t->kind == MS_SPF_MECH_EXISTS)
            return EV_MATCH;
        for (i = 0; i < e->n; i++)
            if (addr_match(&e->rr[i], c, t->cidr4, t->cidr6))
                return EV_MATCH;
        return EV_NOMATCH;

    case MS_SPF_MECH_MX:
        if (!valid)
            return run_void(r);
        if ((rc = mech_lookup(r, target, MS_DNS_MX, &e)) != 0)
            return rc > 0 ? EV_NOMATCH : rc;
        if (e->n > MS_SPF_MX_NAMES_MAX) {
            r->problem = "too many MX records";
            return EV_PERM;
        }
        /* §5.4: no fallback to the A of the target; a null MX (RFC 7505,
         * host ".") names nothing. */
        for (i = 0; i < e->n; i++) {
            const char *host = e->rr[i].u.mx.host;
            if (host[0] == '\0' || strlen(host) > SPF_NAME_MAX)
                continue;
            if ((rc = run_query(r, host, addr_type(c), &a)) < 0)
                return rc;
            if (a->status == MS_DNS_TEMPFAIL) {
                r->problem = "DNS error";
                return EV_TEMP;
            }
            for (n = 0; a->status == MS_DNS_OK && n < a->n; n++)
                if (addr_match(&a->rr[n], c, t->cidr4, t->cidr6))
                    return EV_MATCH;
        }
        return EV_NOMATCH;

    case MS_SPF_MECH_PTR:
        /* §5.5: a DNS error on the PTR lookup is no match; errors on the
         * validating lookups skip that name. */
        if (!valid)
            return EV_NOMATCH;
        ip_reverse_name(c, rev, sizeof(rev));
        if ((rc = run_query(r, rev, MS_DNS_PTR, &e)) < 0)
            return rc;
        if (e->status == MS_DNS_TEMPFAIL)
            return EV_NOMATCH;
        if (ent_void(e))
            return run_void(r);
        n = e->n < MS_SPF_PTR_NAMES_MAX ? e->n : MS_SPF_PTR_NAMES_MAX;
        for (i = 0; i < n; i++) {
            const char *nm = e->rr[i].u.ptr;
            if (!name_within(nm, target) || strlen(nm) > SPF_NAME_MAX)
                continue;
            if ((rc = run_query(r, nm, addr_type(c), &a)) < 0)
                return rc;
            if (ent_has_ip(a, c))
                return EV_MATCH;
        }
        return EV_NOMATCH;

    default: return EV_PERM;
    }
}

/* Pick the one SPF record among the TXT records (§4.5). */
static int select_record(const struct spf_ent *e, const struct ms_dns_rr **rec)
{
    size_t i, found = 0;

    *rec = NULL;
    for (i = 0; i < e->n; i++) {
        if (ms_spf_is_record(e->rr[i].u.txt.data, e->rr[i].u.txt.len)) {
            *rec = &e->rr[i];
            found++;
        }
    }
    return (int)found;
}

/* check_host(<ip>, <domain>, <sender>) of §4.  Returns 0 with *out set, or
 * EV_NEED. */
static int check_host(struct spf_run *r, const char *domain, struct spf_out *out)
{
    const struct ms_dns_rr *txt;
    const struct spf_ent *e;
    struct ms_spf_record rec;
    const struct ms_spf_term *t;
    char target[MS_DNS_NAME_MAX + 1];
    const char *why;
    size_t i;
    int rc, valid, found;

    memset(out, 0, sizeof(*out));
    snprintf(out->domain, sizeof(out->domain), "%s", domain);
    out->res = MS_SPF_NONE;

    /* §4.4: a DNS error is temperror; no record is none. */
    if ((rc = run_query(r, domain, MS_DNS_TXT, &e)) == EV_NEED)
        return rc;
    if (rc < 0) {
        out->res = MS_SPF_PERMERROR;
        return 0;
    }
    if (e->status == MS_DNS_TEMPFAIL) {
        r->problem = "DNS error looking up the SPF record";
        out->res = MS_SPF_TEMPERROR;
        return 0;
    }
    if (e->status != MS_DNS_OK || (found = select_record(e, &txt)) == 0)
        return 0;
    if (found > 1) {
        r->problem = "multiple SPF records";
        out->res = MS_SPF_PERMERROR;
        return 0;
    }
    if (ms_spf_parse_record(txt->u.txt.data, txt->u.txt.len, &rec, &why) < 0) {
        r->problem = why;
        out->res = MS_SPF_PERMERROR;
        return 0;
    }

    /* §4.6.2: mechanisms left to right; the first match decides. */
    for (i = 0; i < rec.n; i++) {
        t = &rec.terms[i];
        if (t->kind >= MS_SPF_MOD_REDIRECT)
            continue;
        rc = mech_eval(r, domain, t);
        if (rc == EV_NOMATCH)
            continue;
        if (rc == EV_NEED)
            goto need;
        if (rc == EV_MATCH) {
            out->res = t->qualifier;
            out->kind = t->kind;
            out->term = t->text;
            out->term_len = t->text_len;
        } else {
            out->res = rc == EV_TEMP ? MS_SPF_TEMPERROR : MS_SPF_PERMERROR;
        }
        goto done;
    }

    /* §6.1: redirect= applies only when no mechanism matched, and the
     * target's result (with its own exp=) replaces ours. */
    if (rec.redirect >= 0) {
        t = &rec.terms[rec.redirect];
        if ((rc = run_count(r)) < 0 ||
            (rc = run_target(r, domain, t->spec, t->spec_len, target, &valid)) < 0) {
            if (rc == EV_NEED)
                goto need;
            out->res = MS_SPF_PERMERROR;
            goto done;
        }
        if (!valid) {
            r->problem = "redirect target malformed";
            out->res = MS_SPF_PERMERROR;
            goto done;
        }
        if ((rc = check_host(r, target, out)) < 0)
            goto need;
        if (out->res == MS_SPF_NONE) {
            r->problem = "redirect target has no SPF record";
            out->res = MS_SPF_PERMERROR;
        }
        ms_spf_record_free(&rec);
        return 0;
    }
    out->res = MS_SPF_NEUTRAL; /* §4.7 */

done:
    if (rec.exp >= 0 && out->res == MS_SPF_FAIL) {
        out->exp = rec.terms[rec.exp].spec;
        out->exp_len = rec.terms[rec.exp].spec_len;
    }
    ms_spf_record_free(&rec);
    return 0;
need:
    ms_spf_record_free(&rec);
    return EV_NEED;
}

/*
 * §6.2: the explanation for a fail.  Any problem (bad name, DNS error, not
 * exactly one TXT record, bad syntax, too long) means no explanation.
 * Returns 0 (*text set or NULL) or EV_NEED.
 */
static int run_explain(struct spf_run *r, const struct spf_out *o, char **text)
{
    char name[MS_DNS_NAME_MAX + 1], buf[MS_SPF_EXPLANATION_MAX + 1];
    const struct spf_ent *e;
    struct sb b;
    int rc, valid;

    *text = NULL;
    rc = run_target(r, o->domain, o->exp, o->exp_len, name, &valid);
    if (rc == EV_NEED)
        return rc;
    if (rc < 0 || !valid)
        return 0;
    if ((rc = run_query(r, name, MS_DNS_TXT, &e)) == EV_NEED)
        return rc;
    if (rc < 0 || e->status != MS_DNS_OK || e->n != 1)
        return 0;
    for (;;) {
        sb_init(&b, buf, sizeof(buf));
        rc = expand(&r->s->c, o->domain, run_p_for(r, o->domain), e->rr[0].u.txt.data,
                    e->rr[0].u.txt.len, 1, &b);
        if (rc != SPF_NEED_P)
            break;
        if ((rc = run_p(r, o->domain)) < 0)
            return rc;
    }
    if (rc == 0)
        *text = ms_strndup(buf, b.len);
    return 0;
}

static int run(ms_spf *s)
{
    struct spf_run r;
    struct spf_out o;
    char *exp = NULL;
    int rc;

    memset(&r, 0, sizeof(r));
    r.s = s;
    if (!s->domain_ok) {
        s->result = MS_SPF_NONE;
        s->problem = "malformed domain";
        return 0;
    }
    if ((rc = check_host(&r, s->c.domain, &o)) < 0)
        return rc;
    if (o.res == MS_SPF_FAIL && o.exp && (rc = run_explain(&r, &o, &exp)) < 0)
        return rc;
    s->result = o.res;
    s->kind = o.kind;
    s->mech = o.term ? ms_strndup(o.term, o.term_len) : NULL;
    s->decided = o.res != MS_SPF_NONE && o.res != MS_SPF_TEMPERROR && o.res != MS_SPF_PERMERROR
                     ? ms_strdup(o.domain)
                     : NULL;
    s->explanation = exp;
    s->problem = o.res == MS_SPF_TEMPERROR || o.res == MS_SPF_PERMERROR ? r.problem : NULL;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The API. */

int ms_spf_new(ms_spf **out, const struct ms_spf_request *req)
{
    ms_spf *s;
    int rc;

    *out = NULL;
    s = ms_calloc(1, sizeof(*s));
    if ((rc = ctx_init(&s->c, req)) < 0) {
        free(s);
        return rc;
    }
    s->domain_ok = initial_domain_ok(s->c.domain);
    if (s->domain_ok) {
        size_t n = strlen(s->c.domain);
        if (s->c.domain[n - 1] == '.')
            s->c.domain[n - 1] = '\0';
    }
    s->ents = ms_calloc(MS_SPF_QUERIES_MAX, sizeof(*s->ents));
    *out = s;
    return 0;
}

static void ents_free(ms_spf *s)
{
    size_t i;

    for (i = 0; i < s->nents; i++)
        free(s->ents[i]);
    free(s->ents);
    s->ents = NULL;
    s->nents = 0;
}

int ms_spf_step(ms_spf *s, struct ms_dns_query *q)
{
    if (s->done)
        return MS_SPF_DONE;
    if (!s->pending) {
        if (run(s) == EV_NEED) {
            s->pending = 1;
        } else {
            s->done = 1;
            ents_free(s);
            return MS_SPF_DONE;
        }
    }
    *q = s->pq;
    return MS_SPF_NEED_DNS;
}

static size_t txt_len(const struct ms_dns_rr *rr)
{
    return rr->u.txt.data ? rr->u.txt.len : 0;
}

/* Strip one trailing dot from a copied name. */
static void copy_name(char **dst, const char *src)
{
    size_t n = src ? strlen(src) : 0;

    if (n > 0 && src[n - 1] == '.')
        n--;
    memcpy(*dst, src ? src : "", n);
    (*dst)[n] = '\0';
    *dst += n + 1;
}

int ms_spf_answer(ms_spf *s, const struct ms_dns_result *res)
{
    struct spf_ent *e;
    enum ms_dns_type type = s->pq.type;
    enum ms_dns_status status = res->status;
    size_t i, n = 0, bytes = 0, k, sz;
    char *str;

    if (!s->pending || s->done)
        return MS_EINVAL;
    s->pending = 0;
    if (status == MS_DNS_BOGUS)
        status = MS_DNS_TEMPFAIL;
    if (status == MS_DNS_OK) {
        for (i = 0; i < res->n; i++) {
            const struct ms_dns_rr *rr = &res->rr[i];
            if (rr->type != type)
                continue;
            n++;
            sz = 0;
            if (type == MS_DNS_TXT)
                sz = txt_len(rr) + 1;
            else if (type == MS_DNS_MX)
                sz = (rr->u.mx.host ? strnlen(rr->u.mx.host, MS_SPF_ANSWER_MAX) : 0) + 1;
            else if (type == MS_DNS_PTR)
                sz = (rr->u.ptr ? strnlen(rr->u.ptr, MS_SPF_ANSWER_MAX) : 0) + 1;
            if (n > MS_SPF_ANSWER_RR_MAX || sz > MS_SPF_ANSWER_MAX - bytes) {
                bytes = MS_SPF_ANSWER_MAX + 1;
                break;
            }
            bytes += sz;
        }
        /* An answer over our limits counts as a DNS error, not a truncated
         * answer: a shortened record set could change the result. */
        if (n > MS_SPF_ANSWER_RR_MAX || bytes > MS_SPF_ANSWER_MAX) {
            status = MS_DNS_TEMPFAIL;
            n = bytes = 0;
        }
    }
    if (status != MS_DNS_OK)
        n = bytes = 0;
    e = ms_calloc(1, sizeof(*e) + n * sizeof(struct ms_dns_rr) + bytes);
    memcpy(e->name, s->pq.name, sizeof(e->name));
    e->type = type;
    e->status = status;
    e->rr = (struct ms_dns_rr *)(e + 1);
    str = (char *)(e->rr + n);
    for (i = 0, k = 0; k < n && i < res->n; i++) {
        const struct ms_dns_rr *rr = &res->rr[i];
        struct ms_dns_rr *d = &e->rr[k];
        if (rr->type != type)
            continue;
        *d = *rr;
        switch (type) {
        case MS_DNS_TXT:
            d->u.txt.len = txt_len(rr);
            if (d->u.txt.len)
                memcpy(str, rr->u.txt.data, d->u.txt.len);
            str[d->u.txt.len] = '\0';
            d->u.txt.data = str;
            str += d->u.txt.len + 1;
            break;
        case MS_DNS_MX:
            d->u.mx.host = str;
            copy_name(&str, rr->u.mx.host);
            break;
        case MS_DNS_PTR:
            d->u.ptr = str;
            copy_name(&str, rr->u.ptr);
            break;
        default: break;
        }
        k++;
    }
    e->n = n;
    if (s->nents >= MS_SPF_QUERIES_MAX)
        ms_panic("spf: answer past MS_SPF_QUERIES_MAX");
    s->ents[s->nents++] = e;
    s->nqueries++;
    return 0;
}

enum ms_spf_result ms_spf_result(const ms_spf *s)
{
    return s->result;
}

const char *ms_spf_explanation(const ms_spf *s)
{
    return s->explanation;
}

const char *ms_spf_mechanism(const ms_spf *s)
{
    return s->mech;
}

enum ms_spf_mech ms_spf_mechanism_kind(const ms_spf *s)
{
    return s->kind;
}

const char *ms_spf_domain(const ms_spf *s)
{
    return s->decided;
}

const char *ms_spf_problem(const ms_spf *s)
{
    return s->problem;
}

unsigned ms_spf_queries(const ms_spf *s)
{
    return s->nqueries;
}

void ms_spf_free(ms_spf *s)
{
    if (s == NULL)
        return;
    ents_free(s);
    free(s->mech);
    free(s->explanation);
    free(s->decided);
    free(s);
}

const char *ms_spf_result_name(enum ms_spf_result r)
{
    switch (r) {
    case MS_SPF_NONE: return "none";
    case MS_SPF_NEUTRAL: return "neutral";
    case MS_SPF_PASS: return "pass";
    case MS_SPF_FAIL: return "fail";
    case MS_SPF_SOFTFAIL: return "softfail";
    case MS_SPF_TEMPERROR: return "temperror";
    case MS_SPF_PERMERROR: return "permerror";
    }
    return "unknown";
}

const char *ms_spf_mech_name(enum ms_spf_mech m)
{
    switch (m) {
    case MS_SPF_MECH_NONE: return "default";
    case MS_SPF_MECH_ALL: return "all";
    case MS_SPF_MECH_INCLUDE: return "include";
    case MS_SPF_MECH_A: return "a";
    case MS_SPF_MECH_MX: return "mx";
    case MS_SPF_MECH_PTR: return "ptr";
    case MS_SPF_MECH_IP4: return "ip4";
    case MS_SPF_MECH_IP6: return "ip6";
    case MS_SPF_MECH_EXISTS: return "exists";
    case MS_SPF_MOD_REDIRECT: return "redirect";
    case MS_SPF_MOD_EXP: return "exp";
    case MS_SPF_MOD_UNKNOWN: return "unknown";
    }
    return "unknown";
}
