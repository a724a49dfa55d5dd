/*
 * ms_dmarc.c - DMARC evaluation (ms_dmarc.h): policy discovery over the
 * pull-style DNS contract, the Public Suffix List, alignment, and
 * libopendmarc for the record and the policy.  The only file that includes
 * libopendmarc.
 */
#include "ms_dmarc.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <opendmarc/dmarc.h>


int ms_dmarc_available(void)
{
    return 1; /* every binary links libopendmarc (Makefile LDLIBS_ALL) */
}

/* ---- Public Suffix List ---------------------------------------------- */

enum { PSL_NORMAL = 1, PSL_WILDCARD = 2, PSL_EXCEPTION = 4 };

struct psl_rule {
    char *name; /* lower case, no leading "*." or "!" */
    unsigned kinds;
};

struct ms_psl {
    struct psl_rule *tab; /* open addressing, power-of-two size */
    size_t cap, n;
};

static uint64_t hash_name(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    size_t i;

    for (i = 0; i < n; i++) {
        h ^= (unsigned char)tolower((unsigned char)s[i]);
        h *= 1099511628211ull;
    }
    return h;
}

static struct psl_rule *psl_slot(const ms_psl *psl, const char *s, size_t n)
{
    size_t i = (size_t)hash_name(s, n) & (psl->cap - 1);

    while (psl->tab[i].name != NULL) {
        if (strlen(psl->tab[i].name) == n && strncasecmp(psl->tab[i].name, s, n) == 0)
            return &psl->tab[i];
        i = (i + 1) & (psl->cap - 1);
    }
    return &psl->tab[i];
}

static unsigned psl_kinds(const ms_psl *psl, const char *s, size_t n)
{
    const struct psl_rule *r = psl_slot(psl, s, n);

    return r->name ? r->kinds : 0;
}

static void psl_add(ms_psl *psl, const char *s, size_t n, unsigned kind)
{
    struct psl_rule *r = psl_slot(psl, s, n);
    size_t i;

    if (r->name == NULL) {
        r->name = ms_strndup(s, n);
        for (i = 0; i < n; i++)
            r->name[i] = (char)tolower((unsigned char)r->name[i]);
        psl->n++;
    }
    r->kinds |= kind;
}

int ms_psl_parse(const char *data, size_t len, ms_psl **out)
{
    ms_psl *psl;
    size_t pos = 0, lines = 0, cap = 1;
    const char *line, *end;
    size_t n;
    unsigned kind;

    *out = NULL;
    if (len > MS_PSL_FILE_MAX)
        return MS_ETOOBIG;
    for (pos = 0; pos < len; pos++)
        lines += data[pos] == '\n';
    if (lines + 1 > MS_PSL_RULES_MAX)
        return MS_ETOOBIG;
    while (cap < 2 * (lines + 1))
        cap <<= 1;
    psl = ms_calloc(1, sizeof(*psl));
    psl->cap = cap;
    psl->tab = ms_calloc(cap, sizeof(*psl->tab));
    for (pos = 0; pos < len; pos = (size_t)(end - data) + 1) {
        line = data + pos;
        end = memchr(line, '\n', len - pos);
        if (end == NULL)
            end = data + len;
        /* A rule is the first whitespace-delimited word of a line. */
        for (n = 0; line + n < end && !isspace((unsigned char)line[n]); n++)
            ;
        if (n == 0 || (n >= 2 && line[0] == '/' && line[1] == '/'))
            continue;
        kind = PSL_NORMAL;
        if (line[0] == '!') {
            kind = PSL_EXCEPTION;
            line++, n--;
        } else if (n >= 2 && line[0] == '*' && line[1] == '.') {
            kind = PSL_WILDCARD;
            line += 2, n -= 2;
        }
        if (n > 0 && n <= MS_DNS_NAME_MAX)
            psl_add(psl, line, n, kind);
        if (end == data + len)
            break;
    }
    *out = psl;
    return 0;
}

int ms_psl_load(const char *path, ms_psl **out)
{
    FILE *f;
    char *buf;
    size_t n;
    int err;

    *out = NULL;
    if ((f = fopen(path, "rb")) == NULL)
        return MS_EIO;
    buf = ms_malloc(MS_PSL_FILE_MAX + 1);
    n = fread(buf, 1, MS_PSL_FILE_MAX + 1, f);
    err = ferror(f) ? MS_EIO : 0;
    fclose(f);
    if (err == 0)
        err = n > MS_PSL_FILE_MAX ? MS_ETOOBIG : ms_psl_parse(buf, n, out);
    free(buf);
    return err;
}

void ms_psl_free(ms_psl *psl)
{
    size_t i;

    if (psl == NULL)
        return;
    for (i = 0; i < psl->cap; i++)
        free(psl->tab[i].name);
    free(psl->tab);
    free(psl);
}

/* Copy `domain` lower-cased without a trailing dot into buf and find its
 * labels: starts[i] is where label i begins.  Returns the label count or
 * MS_EINVAL. */
static int split_labels(const char *domain, char *buf, size_t buflen, size_t *starts,
                        size_t maxlabels)
{
    size_t len = domain ? strlen(domain) : 0, i, n = 0;

    if (len > 0 && domain[len - 1] == '.')
        len--;
    if (len == 0 || len > MS_DNS_NAME_MAX || len >= buflen)
        return MS_EINVAL;
    for (i = 0; i < len; i++)
        buf[i] = (char)tolower((unsigned char)domain[i]);
    buf[len] = '\0';
    for (i = 0; i <= len; i++) {
        if (i == 0 || buf[i - 1] == '.') {
            if (i == len || buf[i] == '.' || n == maxlabels)
                return MS_EINVAL; /* empty label */
            starts[n++] = i;
        }
    }
    for (i = 0; i < n; i++) {
        size_t e = i + 1 < n ? starts[i + 1] - 1 : len;
        if (e - starts[i] > 63)
            return MS_EINVAL;
    }
    return (int)n;
}

int ms_psl_org_domain(const ms_psl *psl, const char *domain, char *out, size_t outlen)
{
    char buf[MS_DNS_NAME_MAX + 1];
    size_t starts[MS_DNS_NAME_MAX / 2 + 1];
    size_t len, i, ps = 0;
    int n;

    if ((n = split_labels(domain, buf, sizeof(buf), starts, sizeof(starts) / sizeof(starts[0]))) <
        0)
        return n;
    len = strlen(buf);
    /* publicsuffix.org algorithm: an exception rule wins and makes the
     * public suffix its name minus the leftmost label; otherwise the rule
     * with the most labels; the implicit rule is "*" (one label).
     * XXX: rules in the list are Unicode; names we see are A-labels, so IDN
     * rules of more than one label never match (the "*" rule takes over). */
    for (i = 0; i < (size_t)n && ps == 0; i++)
        if (psl_kinds(psl, buf + starts[i], len - starts[i]) & PSL_EXCEPTION)
            ps = (size_t)n - i - 1;
    for (i = 0; i < (size_t)n && ps == 0; i++) {
        if (psl_kinds(psl, buf + starts[i], len - starts[i]) & PSL_NORMAL)
            ps = (size_t)n - i;
        else if (i + 1 < (size_t)n &&
                 (psl_kinds(psl, buf + starts[i + 1], len - starts[i + 1]) & PSL_WILDCARD))
            ps = (size_t)n - i;
    }
    if (ps == 0)
        ps = 1;
    if ((size_t)n <= ps)
        return MS_ENOTFOUND;
    i = starts[(size_t)n - ps - 1];
    if (len - i + 1 > outlen)
        return MS_EINVAL;
    memcpy(out, buf + i, len - i + 1);
    return 0;
}

int ms_dmarc_aligned(const ms_psl *psl, const char *a, const char *b, int strict)
{
    char oa[MS_DNS_NAME_MAX + 1], ob[MS_DNS_NAME_MAX + 1];
    size_t la, lb;

    if (a == NULL || b == NULL)
        return 0;
    la = strlen(a);
    lb = strlen(b);
    if (la > 0 && a[la - 1] == '.')
        la--;
    if (lb > 0 && b[lb - 1] == '.')
        lb--;
    if (la == 0 || lb == 0)
        return 0;
    if (la == lb && strncasecmp(a, b, la) == 0)
        return 1;
    if (strict)
        return 0;
    if (ms_psl_org_domain(psl, a, oa, sizeof(oa)) < 0 ||
        ms_psl_org_domain(psl, b, ob, sizeof(ob)) < 0)
        return 0;
    return strcmp(oa, ob) == 0;
}

/* ---- The From field -------------------------------------------------- */

/* Is this byte allowed in a domain we hand on (letters, digits, '-', '.',
 * '_' and UTF-8 for internationalized names)? */
static int domain_byte(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80;
}

/* The domain of one address (a mailbox without the display name decoded):
 * s[0..n) is the text between top-level commas.  Returns 0, MS_ENOTFOUND
 * (empty: e.g. an empty group) or MS_EPROTO. */
static int address_domain(const char *s, size_t n, char *out, size_t outlen)
{
    /* Collect the addr-spec: the content of the last <...> if any, else
     * everything outside comments and quoted strings. */
    char spec[1024];
    size_t o = 0, i, at;
    int depth = 0, quoted = 0, angle = 0, had_angle = 0;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (quoted) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '"')
                quoted = 0;
            continue;
        }
        if (depth > 0) {
            if (c == '\\' && i + 1 < n)
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            continue;
        }
        if (c == '(') {
            depth = 1;
        } else if (c == '"') {
            quoted = 1;
            if (angle && o < sizeof(spec) - 1)
                spec[o++] = '"'; /* a quoted local part: keep a marker */
        } else if (c == '<') {
            angle = 1;
            had_angle = 1;
            o = 0;
        } else if (c == '>') {
            angle = 0;
        } else if (c == ':' && !had_angle) {
            o = 0; /* "group:" or a stray label ("Mail From:") */
        } else if (c == ';' && !angle) {
            /* end of a group */
        } else if ((angle || !had_angle) && !isspace(c)) {
            if (o >= sizeof(spec) - 1)
                return MS_EPROTO;
            spec[o++] = (char)c;
        }
    }
    if (quoted || depth > 0)
        return MS_EPROTO;
    spec[o] = '\0';
    if (o == 0)
        return MS_ENOTFOUND;
    at = o;
    for (i = 0; i < o; i++)
        if (spec[i] == '@')
            at = i;
    if (at == o || at + 1 == o)
        return MS_EPROTO;
    n = o - at - 1;
    if (spec[o - 1] == '.')
        n--;
    if (n == 0 || n >= outlen || n > MS_DNS_NAME_MAX)
        return MS_EPROTO;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)spec[at + 1 + i];
        if (!domain_byte(c))
            return MS_EPROTO; /* domain literals and junk */
        out[i] = (char)tolower(c);
    }
    out[n] = '\0';
    return 0;
}

int ms_dmarc_from_domain(const char *msg, size_t len, char *out, size_t outlen)
{
    size_t pos = 0, eol, fstart, fend = 0, nfrom = 0, vs = 0, i, start;
    char dom[MS_DNS_NAME_MAX + 1];
    char *val;
    size_t vlen = 0;
    int depth, quoted, angle, err, found = 0;

    /* Find the From fields of the header section. */
    while (pos < len) {
        fstart = pos;
        /* One field: this line and its continuation lines. */
        do {
            const char *nl = memchr(msg + pos, '\n', len - pos);
            eol = nl ? (size_t)(nl - msg) + 1 : len;
            pos = eol;
        } while (pos < len && (msg[pos] == ' ' || msg[pos] == '\t'));
        if (msg[fstart] == '\r' || msg[fstart] == '\n')
            break; /* end of the header section */
        for (i = fstart; i < pos && msg[i] != ':' && msg[i] != ' ' && msg[i] != '\t'; i++)
            ;
        if (i - fstart == 4 && strncasecmp(msg + fstart, "From", 4) == 0) {
            while (i < pos && (msg[i] == ' ' || msg[i] == '\t'))
                i++;
            if (i < pos && msg[i] == ':') {
                nfrom++;
                vs = i + 1;
                fend = pos;
            }
        }
    }
    if (nfrom == 0)
        return MS_ENOTFOUND;
    if (nfrom > 1)
        return MS_EPROTO;
    /* Unfold: drop CR and LF. */
    val = ms_malloc(fend - vs + 1);
    for (i = vs; i < fend; i++)
        if (msg[i] != '\r' && msg[i] != '\n')
            val[vlen++] = msg[i];
    val[vlen] = '\0';
    /* Split at top-level commas. */
    depth = quoted = angle = 0;
    err = MS_ENOTFOUND;
    for (start = 0, i = 0; i <= vlen; i++) {
        char c = i < vlen ? val[i] : ',';
        if (quoted) {
            if (c == '\\')
                i++;
            else if (c == '"')
                quoted = 0;
            continue;
        }
        if (depth > 0) {
            if (c == '\\')
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            if (i < vlen)
                continue;
        }
        if (c == '"')
            quoted = 1;
        else if (c == '(')
            depth = 1;
        else if (c == '<')
            angle = 1;
        else if (c == '>')
            angle = 0;
        else if (c == ',' && !angle) {
            int e = address_domain(val + start, i - start, dom, sizeof(dom));
            start = i + 1;
            if (e == MS_ENOTFOUND)
                continue;
            if (e < 0) {
                err = e;
                break;
            }
            if (found && strcmp(dom, out) != 0) {
                err = MS_EPROTO; /* several authors in different domains */
                break;
            }
            if (strlen(dom) >= outlen) {
                err = MS_EPROTO;
                break;
            }
            strcpy(out, dom);
            found = 1;
            err = 0;
        }
    }
    if (quoted || (depth > 0 && err == 0))
        err = MS_EPROTO;
    free(val);
    return err;
}

/* ---- The evaluator --------------------------------------------------- */

enum dstate { D_START, D_ASK_FROM, D_ASK_ORG, D_DONE };

struct ms_dmarc {
    enum dstate state;
    int outstanding;
    const ms_psl *psl;
    char from[MS_DNS_NAME_MAX + 1];
    char org[MS_DNS_NAME_MAX + 1];
    char rdomain[MS_DNS_NAME_MAX + 1];
    int from_error;
    char *spf_domain;
    enum ms_spf_result spf;
    int spf_helo;
    struct ms_dmarc_dkim *dkim;
    size_t ndkim;
    unsigned sample;
    char *record;
    struct ms_dmarc_outcome out;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init(void)
{
    OPENDMARC_LIB_T lib;

    /* No TLD file: libopendmarc's PSL lookup is not used (see ms_dmarc.h);
     * no name servers: it never queries DNS. */
    memset(&lib, 0, sizeof(lib));
    lib.tld_type = OPENDMARC_TLD_TYPE_NONE;
    (void)opendmarc_policy_library_init(&lib);
}

const char *ms_dmarc_result_name(enum ms_dmarc_result r)
{
    static const char *const names[] = {"none", "pass", "fail", "temperror", "permerror"};

    return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "none";
}

const char *ms_dmarc_policy_name(enum ms_dmarc_policy p)
{
    static const char *const names[] = {"", "none", "quarantine", "reject"};

    return (unsigned)p < sizeof(names) / sizeof(names[0]) ? names[p] : "";
}

int ms_dmarc_new(ms_dmarc **out, const struct ms_dmarc_request *req)
{
    ms_dmarc *d;
    size_t i, n;

    *out = NULL;
    if (req == NULL || req->psl == NULL)
        return MS_EINVAL;
    if (!ms_dmarc_available())
        return MS_EUNAVAIL;
    pthread_once(&lib_once, lib_init);
    d = ms_calloc(1, sizeof(*d));
    d->psl = req->psl;
    d->from_error = req->from_error;
    if (req->from_domain && strlen(req->from_domain) < sizeof(d->from))
        snprintf(d->from, sizeof(d->from), "%s", req->from_domain);
    d->spf_domain = ms_strdup(req->spf_domain ? req->spf_domain : "");
    d->spf = req->spf;
    d->spf_helo = req->spf_helo;
    n = req->ndkim < MS_DMARC_DKIM_MAX ? req->ndkim : MS_DMARC_DKIM_MAX;
    d->dkim = ms_calloc(n ? n : 1, sizeof(*d->dkim));
    for (i = 0; i < n; i++) {
        d->dkim[i].domain = ms_strdup(req->dkim[i].domain ? req->dkim[i].domain : "");
        d->dkim[i].selector = ms_strdup(req->dkim[i].selector ? req->dkim[i].selector : "");
        d->dkim[i].result = req->dkim[i].result;
    }
    d->ndkim = n;
    d->sample = req->sample;
    d->out.from_domain = d->from;
    d->out.org_domain = d->org;
    d->out.record_domain = d->rdomain;
    d->out.pct = 100;
    *out = d;
    return 0;
}

void ms_dmarc_free(ms_dmarc *d)
{
    size_t i;

    if (d == NULL)
        return;
    for (i = 0; i < d->ndkim; i++) {
        free((char *)d->dkim[i].domain);
        free((char *)d->dkim[i].selector);
    }
    free(d->dkim);
    free(d->spf_domain);
    free(d->record);
    free(d);
}

static void finish(ms_dmarc *d, enum ms_dmarc_result r, const char *problem)
{
    d->out.result = r;
    d->out.problem = problem;
    d->state = D_DONE;
}

/* q := TXT _dmarc.<domain>; MS_ETOOBIG when the name is too long. */
static int set_query(struct ms_dns_query *q, const char *domain)
{
    size_t n = strlen(domain);

    if (n + 7 > MS_DNS_NAME_MAX)
        return MS_ETOOBIG;
    memcpy(q->name, "_dmarc.", 7);
    memcpy(q->name + 7, domain, n + 1);
    q->type = MS_DNS_TXT;
    return 0;
}

static int ask(ms_dmarc *d, const char *domain, enum dstate st, struct ms_dns_query *q)
{
    if (set_query(q, domain) < 0) {
        finish(d, MS_DMARC_NONE, NULL);
        return MS_DMARC_DONE;
    }
    d->state = st;
    d->outstanding = 1;
    return MS_DMARC_NEED_DNS;
}

/* Does this TXT string start a DMARC record ("v" *WSP "=" *WSP "DMARC1",
 * then the end, WSP or ";"; RFC 7489 §6.4)? */
static int is_dmarc_record(const char *s, size_t n)
{
    size_t i = 0;

    if (n == 0 || s[0] != 'v')
        return 0;
    for (i = 1; i < n && (s[i] == ' ' || s[i] == '\t'); i++)
        ;
    if (i == n || s[i] != '=')
        return 0;
    for (i++; i < n && (s[i] == ' ' || s[i] == '\t'); i++)
        ;
    if (n - i < 6 || memcmp(s + i, "DMARC1", 6) != 0)
        return 0;
    i += 6;
    return i == n || s[i] == ' ' || s[i] == '\t' || s[i] == ';';
}

static int spf_outcome(enum ms_spf_result r)
{
    switch (r) {
    case MS_SPF_PASS: return DMARC_POLICY_SPF_OUTCOME_PASS;
    case MS_SPF_FAIL:
    case MS_SPF_SOFTFAIL:
    case MS_SPF_PERMERROR: return DMARC_POLICY_SPF_OUTCOME_FAIL;
    case MS_SPF_TEMPERROR: return DMARC_POLICY_SPF_OUTCOME_TMPFAIL;
    default: return DMARC_POLICY_SPF_OUTCOME_NONE;
    }
}

static int dkim_outcome(enum ms_dkim_result r)
{
    switch (r) {
    case MS_DKIM_PASS: return DMARC_POLICY_DKIM_OUTCOME_PASS;
    case MS_DKIM_TEMPERROR: return DMARC_POLICY_DKIM_OUTCOME_TMPFAIL;
    case MS_DKIM_NONE: return DMARC_POLICY_DKIM_OUTCOME_NONE;
    default: return DMARC_POLICY_DKIM_OUTCOME_FAIL;
    }
}

static enum ms_dmarc_policy policy_of(int p)
{
    switch (p) {
    case DMARC_RECORD_P_NONE: return MS_DMARC_POLICY_NONE;
    case DMARC_RECORD_P_QUARANTINE: return MS_DMARC_POLICY_QUARANTINE;
    case DMARC_RECORD_P_REJECT: return MS_DMARC_POLICY_REJECT;
    default: return MS_DMARC_POLICY_UNSET;
    }
}

/* The record is known: let libopendmarc parse it and pick the policy. */
static void evaluate(ms_dmarc *d, int at_org)
{
    DMARC_POLICY_T *pctx;
    OPENDMARC_STATUS_T st;
    u_char *orgd = at_org ? (u_char *)d->org : NULL;
    int adkim = 0, aspf = 0, pct = 100, p = 0, sp = 0, pol, aligned;
    size_t i;

    if ((pctx = opendmarc_policy_connect_init((u_char *)"0.0.0.0", 0)) == NULL) {
        finish(d, MS_DMARC_TEMPERROR, "out of memory");
        return;
    }
    st = opendmarc_policy_store_dmarc(pctx, (u_char *)d->record, (u_char *)d->from, orgd);
    if (st == DMARC_PARSE_ERROR_NO_REQUIRED_P && strstr(d->record, "rua=") != NULL) {
        /* §6.6.3 step 6: no valid p= but a rua= tag: treat as p=none. */
        char *fixed = ms_asprintf("%s; p=none", d->record);
        pctx = opendmarc_policy_connect_shutdown(pctx);
        if ((pctx = opendmarc_policy_connect_init((u_char *)"0.0.0.0", 0)) == NULL) {
            free(fixed);
            finish(d, MS_DMARC_TEMPERROR, "out of memory");
            return;
        }
        st = opendmarc_policy_store_dmarc(pctx, (u_char *)fixed, (u_char *)d->from, orgd);
        free(fixed);
    }
    if (st != DMARC_PARSE_OKAY) {
        opendmarc_policy_connect_shutdown(pctx);
        finish(d, MS_DMARC_PERMERROR, opendmarc_policy_status_to_str(st));
        return;
    }
    opendmarc_policy_fetch_adkim(pctx, &adkim);
    opendmarc_policy_fetch_aspf(pctx, &aspf);
    opendmarc_policy_fetch_pct(pctx, &pct);
    opendmarc_policy_fetch_p(pctx, &p);
    opendmarc_policy_fetch_sp(pctx, &sp);
    d->out.adkim_strict = adkim == DMARC_RECORD_A_STRICT;
    d->out.aspf_strict = aspf == DMARC_RECORD_A_STRICT;
    d->out.pct = pct < 0 || pct > 100 ? 100 : pct;

    /* Alignment is ours (PSL-based); aligned passes are given to the
     * library under the From domain and unaligned ones as failures, so its
     * own check (exact match) agrees with RFC 7489 §3.1. */
    if (d->spf_domain[0]) {
        aligned = d->spf == MS_SPF_PASS &&
                  ms_dmarc_aligned(d->psl, d->spf_domain, d->from, d->out.aspf_strict);
        d->out.spf_aligned = aligned;
        opendmarc_policy_store_spf(
            pctx, (u_char *)(aligned ? d->from : d->spf_domain),
            aligned ? DMARC_POLICY_SPF_OUTCOME_PASS
                    : (d->spf == MS_SPF_PASS ? DMARC_POLICY_SPF_OUTCOME_FAIL : spf_outcome(d->spf)),
            d->spf_helo ? DMARC_POLICY_SPF_ORIGIN_HELO : DMARC_POLICY_SPF_ORIGIN_MAILFROM, NULL);
    }
    for (i = 0; i < d->ndkim; i++) {
        if (!d->dkim[i].domain[0])
            continue;
        aligned = d->dkim[i].result == MS_DKIM_PASS &&
                  ms_dmarc_aligned(d->psl, d->dkim[i].domain, d->from, d->out.adkim_strict);
        d->out.dkim_aligned |= aligned;
        opendmarc_policy_store_dkim(
            pctx, (u_char *)(aligned ? d->from : d->dkim[i].domain),
            (u_char *)d->dkim[i].selector,
            aligned ? DMARC_POLICY_DKIM_OUTCOME_PASS
                    : (d->dkim[i].result == MS_DKIM_PASS ? DMARC_POLICY_DKIM_OUTCOME_FAIL
                                                          : dkim_outcome(d->dkim[i].result)),
            NULL);
    }
    pol = opendmarc_get_policy_to_enforce(pctx);
    d->out.used_sp = opendmarc_get_policy_token_used(pctx) == DMARC_USED_POLICY_IS_SP;
    d->out.policy = policy_of(d->out.used_sp ? sp : p);
    if (d->out.policy == MS_DMARC_POLICY_UNSET)
        d->out.policy = policy_of(p);
    opendmarc_policy_connect_shutdown(pctx);

    switch (pol) {
    case DMARC_POLICY_PASS:
        d->out.disposition = MS_DMARC_POLICY_NONE;
        finish(d, MS_DMARC_PASS, NULL);
        return;
    case DMARC_POLICY_REJECT:
    case DMARC_POLICY_QUARANTINE:
    case DMARC_POLICY_NONE:
        break;
    default:
        finish(d, MS_DMARC_PERMERROR, opendmarc_policy_status_to_str(pol));
        return;
    }
    if (d->out.spf_aligned || d->out.dkim_aligned) {
        /* Cannot happen: an aligned pass was stored as a pass. */
        d->out.disposition = MS_DMARC_POLICY_NONE;
        finish(d, MS_DMARC_PASS, NULL);
        return;
    }
    d->out.disposition = d->out.policy;
    /* §6.6.4: a message not sampled gets the next weaker policy. */
    if (d->sample >= (unsigned)d->out.pct && d->out.disposition > MS_DMARC_POLICY_NONE) {
        d->out.disposition--;
        d->out.sampled_out = 1;
    }
    finish(d, MS_DMARC_FAIL, NULL);
}

int ms_dmarc_step(ms_dmarc *d, struct ms_dns_query *q)
{
    switch (d->state) {
    case D_START:
        if (d->from_error == MS_EPROTO) {
            finish(d, MS_DMARC_PERMERROR, "unusable From field");
            return MS_DMARC_DONE;
        }
        if (!d->from[0]) {
            finish(d, MS_DMARC_NONE, NULL);
            return MS_DMARC_DONE;
        }
        if (ms_psl_org_domain(d->psl, d->from, d->org, sizeof(d->org)) < 0)
            snprintf(d->org, sizeof(d->org), "%s", d->from);
        return ask(d, d->from, D_ASK_FROM, q);
    case D_ASK_FROM:
        if (d->outstanding) {
            set_query(q, d->from);
            return MS_DMARC_NEED_DNS;
        }
        if (d->record)
            return MS_DMARC_DONE;
        if (strcasecmp(d->org, d->from) == 0) {
            finish(d, MS_DMARC_NONE, NULL);
            return MS_DMARC_DONE;
        }
        return ask(d, d->org, D_ASK_ORG, q);
    case D_ASK_ORG:
        if (d->outstanding) {
            set_query(q, d->org);
            return MS_DMARC_NEED_DNS;
        }
        return MS_DMARC_DONE;
    case D_DONE:
        break;
    }
    return MS_DMARC_DONE;
}

int ms_dmarc_answer(ms_dmarc *d, const struct ms_dns_result *r)
{
    size_t i, found = 0, which = 0;
    int at_org = d->state == D_ASK_ORG;

    if (!d->outstanding || (d->state != D_ASK_FROM && d->state != D_ASK_ORG))
        return MS_EINVAL;
    d->outstanding = 0;
    if (r->status == MS_DNS_TEMPFAIL || r->status == MS_DNS_BOGUS) {
        finish(d, MS_DMARC_TEMPERROR, "DNS failure");
        return 0;
    }
    if (r->status == MS_DNS_OK) {
        for (i = 0; i < r->n; i++) {
            if (r->rr[i].type != MS_DNS_TXT)
                continue;
            if (is_dmarc_record(r->rr[i].u.txt.data, r->rr[i].u.txt.len)) {
                found++;
                which = i;
            }
        }
    }
    if (found > 1) {
        /* §6.6.3 step 5: several records end discovery: no DMARC. */
        finish(d, MS_DMARC_NONE, "multiple DMARC records");
        return 0;
    }
    if (found == 0) {
        if (at_org)
            finish(d, MS_DMARC_NONE, NULL);
        return 0; /* D_ASK_FROM: the next step falls back */
    }
    if (r->rr[which].u.txt.len > MS_DMARC_RECORD_MAX ||
        memchr(r->rr[which].u.txt.data, '\0', r->rr[which].u.txt.len) != NULL) {
        finish(d, MS_DMARC_PERMERROR, "record too long or malformed");
        return 0;
    }
    d->record = ms_strndup(r->rr[which].u.txt.data, r->rr[which].u.txt.len);
    snprintf(d->rdomain, sizeof(d->rdomain), "%s", at_org ? d->org : d->from);
    evaluate(d, at_org);
    return 0;
}

const struct ms_dmarc_outcome *ms_dmarc_outcome(const ms_dmarc *d)
{
    return &d->out;
}
