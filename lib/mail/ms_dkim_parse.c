/*
 * ms_dkim_parse.c - the pure half of DKIM: tag lists, DKIM-Signature fields,
 * key records, header splitting and canonicalization (RFC 6376 §3).
 *
 * Nothing here allocates (apart from appending to the caller's ms_buf),
 * touches OpenSSL, the clock or the network; every function is fuzzed.
 */
#include "ms_base64.h"
#include "ms_dkim.h"
#include "ms_error.h"

#include <string.h>
#include <strings.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

const char *ms_dkim_result_name(enum ms_dkim_result r)
{
    switch (r) {
    case MS_DKIM_PASS: return "pass";
    case MS_DKIM_FAIL: return "fail";
    case MS_DKIM_NEUTRAL: return "neutral";
    case MS_DKIM_TEMPERROR: return "temperror";
    case MS_DKIM_PERMERROR: return "permerror";
    case MS_DKIM_POLICY: return "policy";
    case MS_DKIM_NONE: break;
    }
    return "none";
}

const char *ms_dkim_alg_name(enum ms_dkim_alg a)
{
    switch (a) {
    case MS_DKIM_RSA_SHA256: return "rsa-sha256";
    case MS_DKIM_ED25519_SHA256: return "ed25519-sha256";
    case MS_DKIM_RSA_SHA1: return "rsa-sha1";
    case MS_DKIM_ALG_UNKNOWN: break;
    }
    return "unknown";
}

static int is_wsp(int c)
{
    return c == ' ' || c == '\t';
}

static int is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

/* Skip FWS (RFC 5322 §3.2.2, without obsolete forms): WSP, or CRLF
 * followed by WSP. */
static size_t skip_fws(const char *s, size_t len, size_t pos)
{
    for (;;) {
        if (pos < len && is_wsp((unsigned char)s[pos]))
            pos++;
        else if (pos + 2 < len && s[pos] == '\r' && s[pos + 1] == '\n' &&
                 is_wsp((unsigned char)s[pos + 2]))
            pos += 3;
        else
            return pos;
    }
}

/* ------------------------------------------------------------------------
 * Tag lists (§3.2)
 * ------------------------------------------------------------------------ */

int ms_dkim_taglist_parse(const char *s, size_t len, struct ms_dkim_tag *tags, size_t max,
                          const char **why)
{
    size_t pos = 0, n = 0;

    if (len > MS_DKIM_TAGLIST_MAX) {
        *why = "tag list too long";
        return MS_ETOOBIG;
    }
    for (;;) {
        size_t nstart, nlen, vstart, vfirst, vlast;

        pos = skip_fws(s, len, pos);
        if (pos == len)
            break;
        /* tag-name = ALPHA *ALNUMPUNC */
        if (!is_alpha((unsigned char)s[pos])) {
            *why = "bad tag name";
            return MS_EPROTO;
        }
        nstart = pos;
        while (pos < len && (is_alpha((unsigned char)s[pos]) || is_digit((unsigned char)s[pos]) ||
                             s[pos] == '_'))
            pos++;
        nlen = pos - nstart;
        pos = skip_fws(s, len, pos);
        if (pos == len || s[pos] != '=') {
            *why = "missing '=' after tag name";
            return MS_EPROTO;
        }
        pos++;
        vstart = pos;
        pos = skip_fws(s, len, pos);
        vfirst = vlast = pos;
        /* tag-value: VALCHARs (%x21-3A / %x3C-7E) separated by FWS. */
        while (pos < len && s[pos] != ';') {
            unsigned char c = (unsigned char)s[pos];

            if (is_wsp(c)) {
                pos++;
            } else if (c == '\r') {
                if (pos + 2 >= len || s[pos + 1] != '\n' || !is_wsp((unsigned char)s[pos + 2])) {
                    *why = "bare CR or LF in tag list";
                    return MS_EPROTO;
                }
                pos += 3;
            } else if (c >= 0x21 && c <= 0x7e) {
                pos++;
                vlast = pos;
            } else {
                *why = "invalid character in tag value";
                return MS_EPROTO;
            }
        }
        for (size_t k = 0; k < n; k++) {
            if (tags[k].name_len == nlen && memcmp(tags[k].name, s + nstart, nlen) == 0) {
                *why = "duplicate tag";
                return MS_EPROTO;
            }
        }
        if (n == max) {
            *why = "too many tags";
            return MS_ETOOBIG;
        }
        tags[n].name = s + nstart;
        tags[n].name_len = nlen;
        tags[n].value = s + vfirst;
        tags[n].value_len = vlast - vfirst;
        tags[n].vstart = vstart;
        tags[n].vend = pos;
        n++;
        if (pos == len)
            break;
        pos++; /* ';' */
    }
    return (int)n;
}

static const struct ms_dkim_tag *tag_find(const struct ms_dkim_tag *tags, int n, const char *name)
{
    size_t l = strlen(name);

    for (int k = 0; k < n; k++)
        if (tags[k].name_len == l && memcmp(tags[k].name, name, l) == 0)
            return &tags[k];
    return NULL;
}

static int tag_is(const struct ms_dkim_tag *t, const char *v)
{
    return t->value_len == strlen(v) && strncasecmp(t->value, v, t->value_len) == 0;
}

/* Does a colon-separated list (FWS allowed around items) contain `word`
 * (case-insensitively)? */
static int list_has(const char *s, size_t len, const char *word)
{
    size_t wl = strlen(word), pos = 0;

    while (pos <= len) {
        size_t a, b;

        a = pos;
        while (pos < len && s[pos] != ':')
            pos++;
        b = pos;
        while (a < b && (is_wsp((unsigned char)s[a]) || s[a] == '\r' || s[a] == '\n'))
            a++;
        while (b > a && (is_wsp((unsigned char)s[b - 1]) || s[b - 1] == '\r' || s[b - 1] == '\n'))
            b--;
        if (b - a == wl && strncasecmp(s + a, word, wl) == 0)
            return 1;
        pos++;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Base64 with FWS (§2.4, §3.5 b=)
 * ------------------------------------------------------------------------ */

int ms_dkim_base64_decode(const char *s, size_t len, uint8_t *out, size_t max)
{
    return ms_base64_decode(s, len, out, max, MS_BASE64_SKIP_FWS | MS_BASE64_PAD_OPTIONAL);
}

/* ------------------------------------------------------------------------
 * DKIM-Signature (§3.5)
 * ------------------------------------------------------------------------ */

/* A domain name as DKIM uses it: LDH labels (and '_'), no empty label. */
static int domain_ok(const char *s, size_t len)
{
    size_t label = 0;

    if (len == 0 || len > 253)
        return 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];

        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if (is_alpha(c) || is_digit(c) || c == '-' || c == '_') {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0;
}

static int copy_value(char *dst, size_t size, const struct ms_dkim_tag *t, int lower)
{
    if (t->value_len >= size)
        return -1;
    for (size_t k = 0; k < t->value_len; k++) {
        char c = t->value[k];

        dst[k] = (char)(lower && c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    dst[t->value_len] = '\0';
    return 0;
}

/* Decimal with at most 18 digits (fits int64; RFC 6376 allows 12 for
 * t=/x= and 76 for l=, but nothing longer than 18 can be honest). */
static int parse_uint(const struct ms_dkim_tag *t, int64_t *out)
{
    int64_t v = 0;

    if (t->value_len == 0 || t->value_len > 18)
        return -1;
    for (size_t k = 0; k < t->value_len; k++) {
        if (!is_digit((unsigned char)t->value[k]))
            return -1;
        v = v * 10 + (t->value[k] - '0');
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------
 * dkim-quoted-printable (§2.11) and the AUID (§3.5 i=)
 * ------------------------------------------------------------------------ */

/* An upper-case hex digit's value, or -1: §2.11 takes the digits from the
 * alphabet "0123456789ABCDEF", "no lowercase characters permitted". */
static int hex_upper(int c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int ms_dkim_qp_decode(const char *s, size_t len, char *out, size_t max)
{
    size_t pos = 0, n = 0;

    while (pos < len) {
        unsigned char c = (unsigned char)s[pos];
        int hi, lo;

        /* FWS "is NOT part of the value, and MUST be removed before
         * decoding". */
        if (is_wsp(c)) {
            pos++;
            continue;
        }
        if (c == '\r') {
            if (pos + 2 >= len || s[pos + 1] != '\n' || !is_wsp((unsigned char)s[pos + 2]))
                return MS_EPROTO;
            pos += 3;
            continue;
        }
        if (c == '=') {
            /* hex-octet, nothing else: no FWS inside it and no soft line
             * break (§2.11 informative note, item 3). */
            if (len - pos < 3 || (hi = hex_upper((unsigned char)s[pos + 1])) < 0 ||
                (lo = hex_upper((unsigned char)s[pos + 2])) < 0)
                return MS_EPROTO;
            c = (unsigned char)(hi << 4 | lo);
            pos += 3;
        } else if (c < 0x21 || c > 0x7e || c == ';') {
            return MS_EPROTO; /* not a dkim-safe-char */
        } else {
            pos++;
        }
        if (n == max)
            return MS_ETOOBIG;
        out[n++] = (char)c;
    }
    return (int)n;
}

/* The form of an AUID, i[0..len): no NUL or other control octet (it goes
 * into logs and Authentication-Results), an "@", and a domain name after
 * the last one.  Returns that domain, or NULL. */
static const char *identity_domain(const char *i, size_t len)
{
    const char *at = NULL;

    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)i[k];

        if (c < 0x20 || c == 0x7f)
            return NULL;
        if (c == '@')
            at = i + k;
    }
    if (at == NULL || !domain_ok(at + 1, len - (size_t)(at + 1 - i)))
        return NULL;
    return at + 1;
}

/* Is domain `dom` equal to d or a subdomain of it? */
static int domain_within(const char *dom, const char *d)
{
    size_t il = strlen(dom), dl = strlen(d);

    if (il == dl)
        return strcasecmp(dom, d) == 0;
    return il > dl && dom[il - dl - 1] == '.' && strcasecmp(dom + il - dl, d) == 0;
}

int ms_dkim_identity_ok(const char *i, const char *d)
{
    const char *dom = identity_domain(i, strlen(i));

    return dom != NULL && domain_within(dom, d);
}

static int parse_h(const struct ms_dkim_tag *t, struct ms_dkim_sig *sig, const char **why)
{
    const char *s = t->value;
    size_t len = t->value_len, pos = 0;
    int from = 0;

    sig->nh = 0;
    while (pos <= len) {
        size_t a = pos, b;

        while (pos < len && s[pos] != ':')
            pos++;
        b = pos;
        while (a < b && (is_wsp((unsigned char)s[a]) || s[a] == '\r' || s[a] == '\n'))
            a++;
        while (b > a && (is_wsp((unsigned char)s[b - 1]) || s[b - 1] == '\r' || s[b - 1] == '\n'))
            b--;
        if (a == b) {
            *why = "empty name in h=";
            return MS_EPROTO;
        }
        for (size_t k = a; k < b; k++) {
            if (is_wsp((unsigned char)s[k]) || s[k] == '\r') {
                *why = "bad name in h=";
                return MS_EPROTO;
            }
        }
        if (b - a > MS_DKIM_HNAME_MAX) {
            *why = "name in h= too long";
            return MS_ETOOBIG;
        }
        if (sig->nh == MS_DKIM_H_MAX) {
            *why = "too many names in h=";
            return MS_ETOOBIG;
        }
        memcpy(sig->h[sig->nh], s + a, b - a);
        sig->h[sig->nh][b - a] = '\0';
        if (b - a == 4 && strncasecmp(s + a, "from", 4) == 0)
            from = 1;
        sig->nh++;
        pos++;
    }
    if (!from) {
        *why = "From not signed (h=)";
        return MS_EPROTO;
    }
    return 0;
}

int ms_dkim_sig_parse(const char *s, size_t len, struct ms_dkim_sig *sig, const char **why)
{
    struct ms_dkim_tag tags[MS_DKIM_TAGS_MAX];
    const struct ms_dkim_tag *t;
    const char *dom;
    int n, rc;

    memset(sig, 0, sizeof(*sig));
    sig->l = sig->t = sig->x = -1;
    n = ms_dkim_taglist_parse(s, len, tags, MS_DKIM_TAGS_MAX, why);
    if (n < 0)
        return n;

    /* Report material first, so that errors can still name d=, s=, a=. */
    if ((t = tag_find(tags, n, "d")) != NULL) {
        if (copy_value(sig->d, sizeof(sig->d), t, 1) < 0 || !domain_ok(t->value, t->value_len)) {
            sig->d[0] = '\0';
            *why = "bad d=";
            return MS_EPROTO;
        }
    }
    if ((t = tag_find(tags, n, "s")) != NULL) {
        if (copy_value(sig->s, sizeof(sig->s), t, 0) < 0 || !domain_ok(t->value, t->value_len)) {
            sig->s[0] = '\0';
            *why = "bad s=";
            return MS_EPROTO;
        }
    }
    if ((t = tag_find(tags, n, "a")) != NULL) {
        size_t l = t->value_len < sizeof(sig->a) - 1 ? t->value_len : sizeof(sig->a) - 1;

        memcpy(sig->a, t->value, l);
        sig->a[l] = '\0';
        if (tag_is(t, "rsa-sha256"))
            sig->alg = MS_DKIM_RSA_SHA256;
        else if (tag_is(t, "ed25519-sha256"))
            sig->alg = MS_DKIM_ED25519_SHA256;
        else if (tag_is(t, "rsa-sha1"))
            sig->alg = MS_DKIM_RSA_SHA1;
    }
    if ((t = tag_find(tags, n, "b")) != NULL) {
        size_t k, m = 0;

        for (k = 0; k < t->value_len && m < MS_DKIM_BPREFIX_LEN; k++)
            if (!is_wsp((unsigned char)t->value[k]) && t->value[k] != '\r' && t->value[k] != '\n')
                sig->b_prefix[m++] = t->value[k];
        sig->b_prefix[m] = '\0';
        sig->b_vstart = t->vstart;
        sig->b_vend = t->vend;
        rc = ms_dkim_base64_decode(t->value, t->value_len, sig->b, sizeof(sig->b));
        if (rc <= 0) {
            *why = rc == 0 ? "empty b=" : "bad b=";
            return rc == 0 ? MS_EPROTO : rc;
        }
        sig->b_len = (size_t)rc;
    }

    /* Required tags (§3.5). */
    if ((t = tag_find(tags, n, "v")) == NULL) {
        *why = "missing v=";
        return MS_EPROTO;
    }
    if (!tag_is(t, "1")) {
        *why = "unsupported version v=";
        return MS_EPROTO;
    }
    if (tag_find(tags, n, "a") == NULL) {
        *why = "missing a=";
        return MS_EPROTO;
    }
    if (tag_find(tags, n, "b") == NULL) {
        *why = "missing b=";
        return MS_EPROTO;
    }
    if (tag_find(tags, n, "d") == NULL) {
        *why = "missing d=";
        return MS_EPROTO;
    }
    if (tag_find(tags, n, "s") == NULL) {
        *why = "missing s=";
        return MS_EPROTO;
    }
    if ((t = tag_find(tags, n, "bh")) == NULL) {
        *why = "missing bh=";
        return MS_EPROTO;
    }
    rc = ms_dkim_base64_decode(t->value, t->value_len, sig->bh, sizeof(sig->bh));
    if (rc <= 0) {
        *why = "bad bh=";
        return MS_EPROTO;
    }
    sig->bh_len = (size_t)rc;
    if ((t = tag_find(tags, n, "h")) == NULL) {
        *why = "missing h=";
        return MS_EPROTO;
    }
    if ((rc = parse_h(t, sig, why)) < 0)
        return rc;

    /* Optional tags. */
    sig->hcanon = sig->bcanon = MS_DKIM_SIMPLE;
    if ((t = tag_find(tags, n, "c")) != NULL) {
        const char *slash = memchr(t->value, '/', t->value_len);
        size_t hl = slash ? (size_t)(slash - t->value) : t->value_len;
        size_t bl = slash ? t->value_len - hl - 1 : 0;

        if (hl == 6 && strncasecmp(t->value, "simple", 6) == 0)
            sig->hcanon = MS_DKIM_SIMPLE;
        else if (hl == 7 && strncasecmp(t->value, "relaxed", 7) == 0)
            sig->hcanon = MS_DKIM_RELAXED;
        else {
            *why = "unknown canonicalization c=";
            return MS_EPROTO;
        }
        if (slash) {
            if (bl == 6 && strncasecmp(slash + 1, "simple", 6) == 0)
                sig->bcanon = MS_DKIM_SIMPLE;
            else if (bl == 7 && strncasecmp(slash + 1, "relaxed", 7) == 0)
                sig->bcanon = MS_DKIM_RELAXED;
            else {
                *why = "unknown canonicalization c=";
                return MS_EPROTO;
            }
        }
    }
    if ((t = tag_find(tags, n, "q")) != NULL && !list_has(t->value, t->value_len, "dns/txt")) {
        *why = "no supported query method q=";
        return MS_EPROTO;
    }
    if ((t = tag_find(tags, n, "l")) != NULL && parse_uint(t, &sig->l) < 0) {
        *why = "bad l=";
        return MS_EPROTO;
    }
    if ((t = tag_find(tags, n, "t")) != NULL && parse_uint(t, &sig->t) < 0) {
        *why = "bad t=";
        return MS_EPROTO;
    }
    if ((t = tag_find(tags, n, "x")) != NULL && parse_uint(t, &sig->x) < 0) {
        *why = "bad x=";
        return MS_EPROTO;
    }
    if (sig->t >= 0 && sig->x >= 0 && sig->x < sig->t) {
        *why = "x= before t=";
        return MS_EPROTO;
    }
    if ((t = tag_find(tags, n, "i")) != NULL) {
        /* §3.5: i= is dkim-quoted-printable, so "jlong=40messiah.edu" and
         * "jlong@messiah=2Eedu" both name jlong@messiah.edu.  Every check
         * is on the decoded value; a malformed encoding is a syntax error
         * (permerror, §6.1.1). */
        rc = ms_dkim_qp_decode(t->value, t->value_len, sig->i, sizeof(sig->i) - 1);
        if (rc < 0) {
            sig->i[0] = '\0';
            *why = rc == MS_ETOOBIG ? "i= too long" : "bad i= (dkim-quoted-printable)";
            return rc;
        }
        sig->i[rc] = '\0';
        if ((dom = identity_domain(sig->i, (size_t)rc)) == NULL) {
            sig->i[0] = '\0';
            *why = "bad i=";
            return MS_EPROTO;
        }
        if (!domain_within(dom, sig->d)) {
            *why = "i= not within d=";
            return MS_EPROTO;
        }
    } else {
        sig->i[0] = '@';
        memcpy(sig->i + 1, sig->d, strlen(sig->d) + 1);
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Key records (§3.6.1)
 * ------------------------------------------------------------------------ */

int ms_dkim_keyrec_parse(const char *s, size_t len, struct ms_dkim_keyrec *key, const char **why)
{
    struct ms_dkim_tag tags[MS_DKIM_TAGS_MAX];
    const struct ms_dkim_tag *t;
    int n, rc;

    memset(key, 0, sizeof(*key));
    n = ms_dkim_taglist_parse(s, len, tags, MS_DKIM_TAGS_MAX, why);
    if (n < 0)
        return n;
    if ((t = tag_find(tags, n, "v")) != NULL) {
        /* v= must be the first tag and exactly "DKIM1" (case-sensitive). */
        if (t != &tags[0] || t->value_len != 5 || memcmp(t->value, "DKIM1", 5) != 0) {
            *why = "bad key record version v=";
            return MS_EPROTO;
        }
    }
    key->k = MS_DKIM_KEY_RSA;
    if ((t = tag_find(tags, n, "k")) != NULL) {
        if (tag_is(t, "rsa"))
            key->k = MS_DKIM_KEY_RSA;
        else if (tag_is(t, "ed25519"))
            key->k = MS_DKIM_KEY_ED25519;
        else {
            *why = "unknown key type k=";
            return MS_EPROTO;
        }
    }
    key->h_sha256 = 1;
    if ((t = tag_find(tags, n, "h")) != NULL)
        key->h_sha256 = list_has(t->value, t->value_len, "sha256");
    key->s_email = 1;
    if ((t = tag_find(tags, n, "s")) != NULL)
        key->s_email =
            list_has(t->value, t->value_len, "*") || list_has(t->value, t->value_len, "email");
    if ((t = tag_find(tags, n, "t")) != NULL) {
        key->testing = list_has(t->value, t->value_len, "y");
        key->strict = list_has(t->value, t->value_len, "s");
    }
    if ((t = tag_find(tags, n, "p")) == NULL) {
        *why = "missing p=";
        return MS_EPROTO;
    }
    rc = ms_dkim_base64_decode(t->value, t->value_len, key->p, sizeof(key->p));
    if (rc < 0) {
        *why = rc == MS_ETOOBIG ? "p= too long" : "bad base64 in p=";
        return rc;
    }
    key->p_len = (size_t)rc;
    return 0;
}

/* ------------------------------------------------------------------------
 * Header fields (RFC 5322 §2.2) and canonicalization (§3.4)
 * ------------------------------------------------------------------------ */

int ms_dkim_headers_split(const char *msg, size_t len, struct ms_dkim_hdr *out, size_t max,
                          size_t *body_off)
{
    size_t pos = 0, n = 0;

    *body_off = len;
    while (pos < len) {
        size_t start = pos, end, colon, nl;
        const char *lf;

        if (pos + 1 < len && msg[pos] == '\r' && msg[pos + 1] == '\n') {
            *body_off = pos + 2;
            return (int)n;
        }
        if (is_wsp((unsigned char)msg[pos]))
            return MS_EPROTO; /* continuation without a field */
        for (;;) {
            size_t from = pos;

            /* The line ends at the first CRLF; a lone LF is content. */
            lf = NULL;
            while (from < len) {
                const char *q = memchr(msg + from, '\n', len - from);

                if (q == NULL)
                    break;
                if ((size_t)(q - msg) > pos && q[-1] == '\r') {
                    lf = q;
                    break;
                }
                from = (size_t)(q - msg) + 1;
            }
            if (lf == NULL) {
                end = pos = len;
                break;
            }
            end = (size_t)(lf - msg) - 1;
            pos = (size_t)(lf - msg) + 1;
            if (pos < len && is_wsp((unsigned char)msg[pos]))
                continue; /* folded */
            break;
        }
        colon = start;
        while (colon < end && msg[colon] != ':')
            colon++;
        if (colon == end)
            return MS_EPROTO;
        nl = colon - start;
        while (nl > 0 && is_wsp((unsigned char)msg[start + nl - 1]))
            nl--;
        if (nl == 0)
            return MS_EPROTO;
        for (size_t k = 0; k < nl; k++) {
            unsigned char c = (unsigned char)msg[start + k];

            if (c < 0x21 || c > 0x7e)
                return MS_EPROTO;
        }
        if (end - start > MS_DKIM_FIELD_MAX || n == max)
            return MS_ETOOBIG;
        out[n].off = start;
        out[n].len = end - start;
        out[n].name_len = nl;
        n++;
    }
    return (int)n;
}

int ms_dkim_canon_header(enum ms_dkim_canon c, const char *field, size_t len, struct ms_buf *out)
{
    const char *colon;
    char *w;
    size_t nl, k, m = 0;
    int sp = 0, any = 0;

    if (c != MS_DKIM_RELAXED)
        return ms_buf_append(out, field, len);
    colon = memchr(field, ':', len);
    if (colon == NULL)
        return MS_EPROTO;
    if ((w = ms_buf_reserve(out, len)) == NULL)
        return MS_ETOOBIG;
    /* §3.4.2: lower-case the name, delete WSP before and after the colon,
     * unfold, reduce WSP runs to one SP, delete trailing WSP. */
    nl = (size_t)(colon - field);
    while (nl > 0 && is_wsp((unsigned char)field[nl - 1]))
        nl--;
    for (k = 0; k < nl; k++) {
        char ch = field[k];

        w[m++] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
    }
    w[m++] = ':';
    for (k = (size_t)(colon - field) + 1; k < len; k++) {
        char ch = field[k];

        if (ch == '\r' && k + 1 < len && field[k + 1] == '\n') {
            k++;
            continue;
        }
        if (is_wsp((unsigned char)ch)) {
            sp = 1;
            continue;
        }
        if (sp && any)
            w[m++] = ' ';
        sp = 0;
        any = 1;
        w[m++] = ch;
    }
    ms_buf_commit(out, m);
    return 0;
}

/* ------------------------------------------------------------------------
 * Body canonicalization (§3.4.3, §3.4.4) and l= (§3.5)
 *
 * Most of a body is already canonical: under simple everything but empty
 * lines at the very end; under relaxed also every single SP between two
 * non-WSP octets.  So the canonicalizer looks for the octets where the
 * canonical form can differ from the input and passes everything between
 * them to emit() as it is, straight from the caller's buffer: one call for
 * a run of many lines instead of one (and, in the signer, one
 * EVP_DigestUpdate) per word and per space.  Those octets ("stops", see
 * body_scan) get the octet-at-a-time state machine of body_step, which
 * also carries the state across pieces: a piece may end anywhere, inside a
 * CRLF or a WSP run included.
 * ------------------------------------------------------------------------ */

static void body_out(struct ms_dkim_body *b, const void *p, size_t n)
{
    b->total += n;
    if (b->limit >= 0) {
        uint64_t room = (uint64_t)b->limit > b->emitted ? (uint64_t)b->limit - b->emitted : 0;

        if (n > room)
            n = (size_t)room;
    }
    if (n > 0) {
        b->emit(b->ctx, p, n);
        b->emitted += n;
    }
}

static void body_content(struct ms_dkim_body *b, const char *p, size_t n)
{
    static const char crlfs[] = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

    while (b->empty_lines > 0) {
        uint64_t k = b->empty_lines < 16 ? b->empty_lines : 16;

        body_out(b, crlfs, (size_t)k * 2);
        b->empty_lines -= k;
    }
    if (b->wsp) {
        body_out(b, " ", 1);
        b->wsp = 0;
    }
    body_out(b, p, n);
    b->line = 1;
}

static void body_eol(struct ms_dkim_body *b)
{
    b->wsp = 0; /* relaxed: trailing WSP is deleted */
    if (b->line) {
        body_out(b, "\r\n", 2);
        b->line = 0;
    } else {
        b->empty_lines++;
    }
}

void ms_dkim_body_init(struct ms_dkim_body *b, enum ms_dkim_canon c, int64_t limit,
                       void (*emit)(void *ctx, const void *p, size_t n), void *ctx)
{
    memset(b, 0, sizeof(*b));
    b->c = c == MS_DKIM_RELAXED ? MS_DKIM_RELAXED : MS_DKIM_SIMPLE;
    b->limit = limit;
    b->emit = emit;
    b->ctx = ctx;
}

/* Does the octet at p[k] stop a verbatim run?  p[k - 1] is known when
 * k > i (i: where this run started); at k == i, `bol` says whether the
 * octet before, in this piece or an earlier one, ended a line.
 *   - CR at the end of the piece: is it a line end?  The next piece says.
 *   - CR after LF (or at the start of a line): maybe an empty line, which
 *     must wait until the body goes on (§3.4.3: none at the end).  LF then
 *     CR also stops after a lone LF: over-cautious, and exact all the same.
 *   - relaxed: HTAB, and SP before WSP or CR or at the end of the piece
 *     (§3.4.4: a WSP run becomes one SP, and none at a line's end).
 * A run's last octet is never a pending CR or SP: a CR that is not a stop
 * has a next octet (its own fate is known), and an SP that is not one is
 * followed by an octet that is not one either. */
static int body_stop(const char *p, size_t i, size_t k, size_t n, int relaxed, int bol)
{
    unsigned char c = (unsigned char)p[k];

    if (c == '\r')
        return k + 1 == n || (k > i ? p[k - 1] == '\n' : bol);
    if (!relaxed)
        return 0;
    if (c == '\t')
        return 1;
    if (c == ' ') {
        unsigned char d;

        if (k + 1 == n)
            return 1;
        d = (unsigned char)p[k + 1];
        return d == ' ' || d == '\t' || d == '\r';
    }
    return 0;
}

/* The first stop at or after p[i] (n when there is none).  Sixteen octets
 * at a time where SSE2 is there (every x86-64): three unaligned loads (the
 * octets, the ones after them, the ones before) and a compare per kind
 * give a mask whose lowest bit is the first stop; the octet loop does the
 * first octet (its predecessor may be in an earlier piece), the last
 * sixteen (whose successors are not all in this piece) and other targets. */
static size_t body_scan(const char *p, size_t i, size_t n, int relaxed, int bol)
{
    size_t k = i;

    if (k < n && body_stop(p, i, k, n, relaxed, bol))
        return k;
    k++;
#ifdef __SSE2__
    {
        const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'), sp = _mm_set1_epi8(' '),
                      tab = _mm_set1_epi8('\t');

        for (; k + 17 <= n; k += 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + k));
            __m128i prev = _mm_loadu_si128((const __m128i *)(const void *)(p + k - 1));
            __m128i stop = _mm_and_si128(_mm_cmpeq_epi8(x, cr), _mm_cmpeq_epi8(prev, lf));
            unsigned m;

            if (relaxed) {
                __m128i next = _mm_loadu_si128((const __m128i *)(const void *)(p + k + 1));
                __m128i wsp_cr =
                    _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(next, sp), _mm_cmpeq_epi8(next, tab)),
                                 _mm_cmpeq_epi8(next, cr));

                stop =
                    _mm_or_si128(stop, _mm_or_si128(_mm_cmpeq_epi8(x, tab),
                                                    _mm_and_si128(_mm_cmpeq_epi8(x, sp), wsp_cr)));
            }
            m = (unsigned)_mm_movemask_epi8(stop);
            if (m != 0)
                return k + (size_t)__builtin_ctz(m);
        }
    }
#endif
    for (; k < n; k++)
        if (body_stop(p, i, k, n, relaxed, bol))
            return k;
    return n;
}

/* One octet through the state machine. */
static void body_step(struct ms_dkim_body *b, char c)
{
    if (b->cr) {
        b->cr = 0;
        if (c == '\n') {
            body_eol(b);
            return;
        }
        body_content(b, "\r", 1); /* a lone CR is ordinary content */
    }
    if (c == '\r')
        b->cr = 1;
    else if (b->c == MS_DKIM_RELAXED && is_wsp((unsigned char)c))
        b->wsp = 1;
    else
        body_content(b, &c, 1);
}

void ms_dkim_body_update(struct ms_dkim_body *b, const char *p, size_t n)
{
    int relaxed = b->c == MS_DKIM_RELAXED;
    size_t i = 0;

    while (i < n) {
        /* Nothing pending (no CR, no WSP, no empty lines): a verbatim run
         * can start here.  b->line is 0 exactly when the last octet taken
         * ended a line (or nothing was taken yet). */
        if (!b->cr && !b->wsp && b->empty_lines == 0) {
            size_t j = body_scan(p, i, n, relaxed, !b->line);

            if (j > i) {
                body_out(b, p + i, j - i);
                b->line = !(j - i >= 2 && p[j - 2] == '\r' && p[j - 1] == '\n');
                i = j;
                continue;
            }
        }
        body_step(b, p[i++]);
    }
}

void ms_dkim_body_final(struct ms_dkim_body *b)
{
    if (b->cr) {
        b->cr = 0;
        body_content(b, "\r", 1);
    }
    b->wsp = 0;
    if (b->line) {
        body_out(b, "\r\n", 2); /* a non-empty body ends with CRLF */
        b->line = 0;
    }
    b->empty_lines = 0;
    /* Simple: an empty body is one CRLF; relaxed: it stays empty. */
    if (b->c == MS_DKIM_SIMPLE && b->total == 0)
        body_out(b, "\r\n", 2);
}

/* §3.7 and §5.4.2: each listed name takes the last instance not yet used,
 * walking upwards; a name with no instance left (oversigning) contributes
 * nothing.  Then the signature field itself, without its final CRLF. */
int ms_dkim_header_data(const char *msg, const struct ms_dkim_hdr *hdrs, size_t nhdr,
                        enum ms_dkim_canon c, const char *const *names, size_t nnames,
                        const char *sigfield, size_t siglen,
                        void (*emit)(void *ctx, const void *p, size_t n), void *ctx)
{
    uint8_t used[MS_DKIM_HEADERS_MAX] = {0};
    struct ms_buf cb;
    int rc = 0;

    if (nhdr > MS_DKIM_HEADERS_MAX)
        return MS_ETOOBIG;
    ms_buf_init(&cb, MS_DKIM_FIELD_MAX + 2);
    for (size_t k = 0; k < nnames; k++) {
        size_t nl = strlen(names[k]);

        for (size_t j = nhdr; j-- > 0;) {
            const struct ms_dkim_hdr *h = &hdrs[j];

            if (used[j] || h->name_len != nl || strncasecmp(msg + h->off, names[k], nl) != 0)
                continue;
            used[j] = 1;
            ms_buf_reset(&cb);
            if ((rc = ms_dkim_canon_header(c, msg + h->off, h->len, &cb)) < 0 ||
                (rc = ms_buf_append(&cb, "\r\n", 2)) < 0)
                goto out;
            emit(ctx, cb.data, cb.len);
            break;
        }
    }
    ms_buf_reset(&cb);
    if ((rc = ms_dkim_canon_header(c, sigfield, siglen, &cb)) < 0)
        goto out;
    emit(ctx, cb.data, cb.len);
out:
    ms_buf_free(&cb);
    return rc;
}
