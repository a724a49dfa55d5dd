/*
 * ms_tlsrpt.c - TLS-RPT records, counters, reports and report mail
 * (ms_tlsrpt.h).
 */
#include "ms_tlsrpt.h"
#include "ms_base64.h"
#include "ms_error.h"
#include "ms_json.h"
#include "ms_mem.h"
#include "ms_mtasts.h"
#include "ms_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <zlib.h>

static const char *const policy_names[MS_TLSRPT_POLICIES_N] = {"sts", "tlsa", "no-policy-found"};

/* §4.3.2.1, §4.3.2.2, §4.3.2.3, in enum order. */
static const char *const result_names[MS_TLSRPT_RESULTS_N] = {
    "success",
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
};

const char *ms_tlsrpt_policy_name(enum ms_tlsrpt_policy p)
{
    return (unsigned)p < MS_TLSRPT_POLICIES_N ? policy_names[p] : "unknown";
}

const char *ms_tlsrpt_result_name(enum ms_tlsrpt_result r)
{
    return (unsigned)r < MS_TLSRPT_RESULTS_N ? result_names[r] : "unknown";
}

static int name_index(const char *const *names, size_t n, const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return (int)i;
    return -1;
}

int ms_tlsrpt_policy_parse(const char *s, size_t len)
{
    return name_index(policy_names, MS_TLSRPT_POLICIES_N, s, len);
}

int ms_tlsrpt_result_parse(const char *s, size_t len)
{
    return name_index(result_names, MS_TLSRPT_RESULTS_N, s, len);
}

/* ---- §3: the TXT record ---- */

static int is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* One URI of a rua list (surrounding blanks already gone): kept when it is
 * mailto: or https: (case-insensitive schemes, RFC 3986 §3.1) and only
 * printable ASCII without blanks (RFC 3986 §2). */
static int rua_add(struct ms_tlsrpt_rua *out, const char *u, size_t n)
{
    size_t i;

    if (n == 0)
        return MS_EINVAL; /* "rua=a,,b" */
    for (i = 0; i < n; i++)
        if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] >= 0x7f)
            return MS_EINVAL;
    if (!((n > 7 && strncasecmp(u, "mailto:", 7) == 0) ||
          (n > 8 && strncasecmp(u, "https://", 8) == 0)))
        return 0; /* §3: other schemes are not defined: skipped */
    if (n > MS_TLSRPT_URI_MAX || out->n == MS_TLSRPT_RUA_MAX)
        return MS_ETOOBIG;
    memcpy(out->uri[out->n], u, n);
    out->uri[out->n][n] = '\0';
    out->n++;
    return 0;
}

int ms_tlsrpt_txt_parse(const char *txt, size_t len, struct ms_tlsrpt_rua *out)
{
    const char *p = txt, *end = txt + len, *f, *fe, *eq, *u, *ue, *c;
    int first = 1, have_rua = 0, err;

    memset(out, 0, sizeof(*out));
    /* §3: tlsrpt-record = tlsrpt-version 1*(field-delim tlsrpt-field)
     * [field-delim]; field-delim = *WSP ";" *WSP.  A ';' or ',' inside a
     * URI is percent-encoded, so both split safely. */
    while (ms_mtasts_field_next(&p, end, &f, &fe)) {
        if (fe == f) {
            if (first || p < end)
                return MS_EINVAL; /* only one trailing delimiter */
            continue;
        }
        eq = memchr(f, '=', (size_t)(fe - f));
        if (eq == NULL || eq == f)
            return MS_EINVAL;
        if (first) {
            if (fe - f != 10 || memcmp(f, "v=TLSRPTv1", 10) != 0)
                return MS_EINVAL;
            first = 0;
            continue;
        }
        if (eq - f != 3 || memcmp(f, "rua", 3) != 0)
            continue; /* tlsrpt-ext: ignored */
        if (have_rua)
            return MS_EINVAL;
        have_rua = 1;
        /* tlsrpt-rua = "rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri) */
        for (u = eq + 1; u <= fe;) {
            c = memchr(u, ',', (size_t)(fe - u));
            ue = c ? c : fe;
            while (u < ue && is_wsp(*u))
                u++;
            {
                const char *t = ue;
                while (t > u && is_wsp(t[-1]))
                    t--;
                if ((err = rua_add(out, u, (size_t)(t - u))) < 0)
                    return err;
            }
            if (c == NULL)
                break;
            u = c + 1;
        }
    }
    if (first || !have_rua || out->n == 0)
        return MS_EINVAL;
    return 0;
}

int ms_tlsrpt_txt_pick(const struct ms_dns_result *res, struct ms_tlsrpt_rua *out)
{
    size_t i, found = 0;
    int r = MS_EINVAL;

    memset(out, 0, sizeof(*out));
    if (res->status != MS_DNS_OK)
        return MS_EINVAL;
    for (i = 0; i < res->n; i++) {
        const struct ms_dns_rr *rr = &res->rr[i];
        if (rr->type != MS_DNS_TXT || rr->u.txt.len < 10 ||
            memcmp(rr->u.txt.data, "v=TLSRPTv1", 10) != 0)
            continue; /* §3: discarded */
        if (++found > 1)
            break;
        r = ms_tlsrpt_txt_parse(rr->u.txt.data, rr->u.txt.len, out);
    }
    if (found != 1 || r < 0) {
        memset(out, 0, sizeof(*out));
        return MS_EINVAL;
    }
    return 0;
}

/* ---- counters ---- */

/* A name that may go into a field: no tab (the separator), no CR or LF. */
static int field_ok(const char *s)
{
    return s == NULL || strpbrk(s, "\t\r\n") == NULL;
}

#define STR(s) ((s) ? (s) : "")

int ms_tlsrpt_field(const struct ms_tlsrpt_session *s, char *out)
{
    int n;

    if ((unsigned)s->policy >= MS_TLSRPT_POLICIES_N || (unsigned)s->result >= MS_TLSRPT_RESULTS_N ||
        !field_ok(s->mx) || !field_ok(s->sending_ip) || !field_ok(s->receiving_mx) ||
        !field_ok(s->receiving_ip))
        return MS_EINVAL;
    if (s->result == MS_TLSRPT_OK)
        n = snprintf(out, MS_TLSRPT_FIELD_MAX + 1, "S\t%s\t%s", policy_names[s->policy],
                     STR(s->mx));
    else
        n = snprintf(out, MS_TLSRPT_FIELD_MAX + 1, "F\t%s\t%s\t%s\t%s\t%s\t%s",
                     policy_names[s->policy], STR(s->mx), result_names[s->result],
                     STR(s->sending_ip), STR(s->receiving_mx), STR(s->receiving_ip));
    return n < 0 || n > MS_TLSRPT_FIELD_MAX ? MS_ETOOBIG : 0;
}

int ms_tlsrpt_policy_field(enum ms_tlsrpt_policy p, const char *mx, char *out)
{
    int n;

    if ((unsigned)p >= MS_TLSRPT_POLICIES_N || !field_ok(mx))
        return MS_EINVAL;
    n = snprintf(out, MS_TLSRPT_FIELD_MAX + 1, "P\t%s\t%s", policy_names[p], STR(mx));
    return n < 0 || n > MS_TLSRPT_FIELD_MAX ? MS_ETOOBIG : 0;
}

/* ---- the report ---- */

/* A field split at its tabs: at most 7 parts. */
struct parts {
    size_t n;
    const char *p[7];
    size_t len[7];
};

static void split_tabs(const char *s, size_t len, struct parts *out)
{
    const char *end = s + len, *t;

    out->n = 0;
    while (out->n < 7) {
        t = memchr(s, '\t', (size_t)(end - s));
        out->p[out->n] = s;
        out->len[out->n] = (size_t)((t ? t : end) - s);
        out->n++;
        if (t == NULL)
            return;
        s = t + 1;
    }
    out->n = 8; /* too many: not ours */
}

struct pol {
    int type;
    const char *mx;
    size_t mxlen;
    uint64_t ok, failed;
    const char *lines; /* the policy-string, LF-separated; NULL: none */
    size_t lineslen;
};

struct detail {
    size_t pol;
    int result;
    struct parts f;
    uint64_t count;
};

/* A count: a positive decimal integer. */
static int count_parse(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (len == 0 || len > 18)
        return -1;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v == 0)
        return -1;
    *out = v;
    return 0;
}

static int pol_find(struct pol *pols, size_t *npols, int type, const char *mx, size_t mxlen)
{
    size_t i;

    for (i = 0; i < *npols; i++)
        if (pols[i].type == type && pols[i].mxlen == mxlen && memcmp(pols[i].mx, mx, mxlen) == 0)
            return (int)i;
    if (*npols == MS_TLSRPT_POLICIES_MAX)
        return MS_ETOOBIG;
    memset(&pols[*npols], 0, sizeof(pols[*npols]));
    pols[*npols].type = type;
    pols[*npols].mx = mx;
    pols[*npols].mxlen = mxlen;
    return (int)(*npols)++;
}

/* §4.4's time form, "2016-04-01T00:00:00Z". */
static void utc_time(int64_t t, char *out, size_t outlen)
{
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int json_key_str(struct ms_buf *b, const char *key, const char *s, size_t n)
{
    int err;

    if ((err = ms_buf_appendf(b, "\"%s\":", key)) < 0)
        return err;
    return ms_json_string(b, s, n);
}

/* The policy-string lines (LF-separated) as a JSON array; with mx_only,
 * only the values of its "mx:" lines (an MTA-STS policy's mx-host). */
static int json_lines(struct ms_buf *b, const char *s, size_t len, int mx_only)
{
    const char *end = s + len, *nl;
    int err, first = 1;

    if ((err = ms_buf_append(b, "[", 1)) < 0)
        return err;
    while (s < end) {
        nl = memchr(s, '\n', (size_t)(end - s));
        const char *le = nl ? nl : end, *v = s;
        if (le > s && le[-1] == '\r')
            le--;
        if (mx_only) {
            if (le - s < 3 || strncmp(s, "mx:", 3) != 0)
                goto next;
            v = s + 3;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
        }
        if (le > v) {
            if ((!first && (err = ms_buf_append(b, ",", 1)) < 0) ||
                (err = ms_json_string(b, v, (size_t)(le - v))) < 0)
                return err;
            first = 0;
        }
    next:
        s = nl ? nl + 1 : end;
    }
    return ms_buf_append(b, "]", 1);
}

static int json_policy(struct ms_buf *b, const struct ms_tlsrpt_report *r, const struct pol *p,
                       const struct detail *dets, size_t ndets, size_t idx)
{
    static const char *const dnames[] = {
        NULL, NULL, NULL, NULL, "sending-mta-ip", "receiving-mx-hostname", "receiving-ip"};
    size_t i, k;
    int err, first = 1;

    if ((err = ms_buf_appendf(b, "{\"policy\":{\"policy-type\":\"%s\",", policy_names[p->type])) <
        0)
        return err;
    if (p->lines) {
        if ((err = ms_buf_append(b, "\"policy-string\":", 16)) < 0 ||
            (err = json_lines(b, p->lines, p->lineslen, 0)) < 0 ||
            (err = ms_buf_append(b, ",", 1)) < 0)
            return err;
    }
    if ((err = json_key_str(b, "policy-domain", r->domain, strlen(r->domain))) < 0)
        return err;
    if (p->type == MS_TLSRPT_POLICY_STS && p->lines) {
        if ((err = ms_buf_append(b, ",\"mx-host\":", 11)) < 0 ||
            (err = json_lines(b, p->lines, p->lineslen, 1)) < 0)
            return err;
    } else if (p->mxlen > 0) {
        if ((err = ms_buf_append(b, ",\"mx-host\":[", 12)) < 0 ||
            (err = ms_json_string(b, p->mx, p->mxlen)) < 0 || (err = ms_buf_append(b, "]", 1)) < 0)
            return err;
    }
    if ((err = ms_buf_appendf(b,
                              "},\"summary\":{\"total-successful-session-count\":%llu,"
                              "\"total-failure-session-count\":%llu}",
                              (unsigned long long)p->ok, (unsigned long long)p->failed)) < 0)
        return err;
    if (p->failed == 0)
        return ms_buf_append(b, "}", 1);
    if ((err = ms_buf_append(b, ",\"failure-details\":[", 20)) < 0)
        return err;
    for (i = 0; i < ndets; i++) {
        const struct detail *d = &dets[i];
        if (d->pol != idx)
            continue;
        if ((!first && (err = ms_buf_append(b, ",", 1)) < 0) ||
            (err = ms_buf_appendf(b, "{\"result-type\":\"%s\"", result_names[d->result])) < 0)
            return err;
        first = 0;
        for (k = 4; k < 7; k++) { /* §4.3.2: optional, so only when known */
            if (d->f.len[k] == 0)
                continue;
            if ((err = ms_buf_append(b, ",", 1)) < 0 ||
                (err = json_key_str(b, dnames[k], d->f.p[k], d->f.len[k])) < 0)
                return err;
        }
        if ((err = ms_buf_appendf(b, ",\"failed-session-count\":%llu}",
                                  (unsigned long long)d->count)) < 0)
            return err;
    }
    return ms_buf_append(b, "]}", 2);
}

int ms_tlsrpt_report_json(const struct ms_tlsrpt_report *r, struct ms_buf *out)
{
    struct pol *pols = ms_calloc(MS_TLSRPT_POLICIES_MAX, sizeof(*pols));
    struct detail *dets = ms_calloc(MS_TLSRPT_DETAILS_MAX, sizeof(*dets));
    size_t npols = 0, ndets = 0, i;
    char t0[32], t1[32];
    int err = 0, pi, type, res;
    struct parts f;
    uint64_t n;

    /* Pass 1: the policies and the counts (the policy-strings after, so
     * that a policy-string alone, with no session, makes no entry). */
    for (i = 0; i < r->nfields && err == 0; i++) {
        const struct ms_tlsrpt_kv *kv = &r->fields[i];
        split_tabs(kv->key, kv->klen, &f);
        if (f.n < 3 || f.len[0] != 1 || (f.p[0][0] != 'S' && f.p[0][0] != 'F') ||
            count_parse(kv->value, kv->vlen, &n) < 0 ||
            (type = ms_tlsrpt_policy_parse(f.p[1], f.len[1])) < 0)
            continue;
        if (f.p[0][0] == 'S' && f.n != 3)
            continue;
        res = 0;
        if (f.p[0][0] == 'F' && (f.n != 7 || (res = ms_tlsrpt_result_parse(f.p[3], f.len[3])) <= 0))
            continue;
        if ((pi = pol_find(pols, &npols, type, f.p[2], f.len[2])) < 0) {
            err = pi;
            break;
        }
        if (f.p[0][0] == 'S') {
            pols[pi].ok += n;
            continue;
        }
        if (ndets == MS_TLSRPT_DETAILS_MAX) {
            err = MS_ETOOBIG;
            break;
        }
        pols[pi].failed += n;
        dets[ndets].pol = (size_t)pi;
        dets[ndets].result = res;
        dets[ndets].f = f;
        dets[ndets].count = n;
        ndets++;
    }
    for (i = 0; i < r->nfields && err == 0; i++) {
        const struct ms_tlsrpt_kv *kv = &r->fields[i];
        size_t k;
        split_tabs(kv->key, kv->klen, &f);
        if (f.n != 3 || f.len[0] != 1 || f.p[0][0] != 'P' ||
            (type = ms_tlsrpt_policy_parse(f.p[1], f.len[1])) < 0)
            continue;
        for (k = 0; k < npols; k++)
            if (pols[k].type == type && pols[k].mxlen == f.len[2] &&
                memcmp(pols[k].mx, f.p[2], f.len[2]) == 0) {
                pols[k].lines = kv->value;
                pols[k].lineslen = kv->vlen;
            }
    }
    if (err == 0 && npols == 0)
        err = MS_EINVAL;
    if (err == 0) {
        utc_time(r->begin, t0, sizeof(t0));
        utc_time(r->end - 1, t1, sizeof(t1)); /* §4.4: the last second */
        if ((err = ms_buf_append(out, "{", 1)) < 0 ||
            (err = json_key_str(out, "organization-name", r->organization,
                                strlen(r->organization))) < 0 ||
            (err = ms_buf_appendf(out,
                                  ",\"date-range\":{\"start-datetime\":\"%s\","
                                  "\"end-datetime\":\"%s\"},",
                                  t0, t1)) < 0 ||
            (err = json_key_str(out, "contact-info", r->contact, strlen(r->contact))) < 0 ||
            (err = ms_buf_append(out, ",", 1)) < 0 ||
            (err = json_key_str(out, "report-id", r->report_id, strlen(r->report_id))) < 0 ||
            (err = ms_buf_append(out, ",\"policies\":[", 13)) < 0)
            goto done;
        for (i = 0; i < npols; i++)
            if ((i > 0 && (err = ms_buf_append(out, ",", 1)) < 0) ||
                (err = json_policy(out, r, &pols[i], dets, ndets, i)) < 0)
                goto done;
        err = ms_buf_append(out, "]}", 2);
    }
done:
    free(pols);
    free(dets);
    return err < 0 ? err : 0;
}

int ms_tlsrpt_gzip(const void *in, size_t len, struct ms_buf *out)
{
    z_stream z;
    char *p;
    size_t room;
    int rc;

    memset(&z, 0, sizeof(z));
    /* windowBits 15 + 16: a gzip header and trailer (RFC 1952). */
    if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return MS_ENOMEM;
    room = deflateBound(&z, (uLong)len);
    if ((p = ms_buf_reserve(out, room)) == NULL) {
        deflateEnd(&z);
        return MS_ETOOBIG;
    }
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)p;
    z.avail_out = (uInt)room;
    rc = deflate(&z, Z_FINISH);
    ms_buf_commit(out, room - z.avail_out);
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : MS_ETOOBIG;
}

/* A domain name as it may appear in a file name or header. */
static int domain_ok(const char *s)
{
    return ms_host_chars_ok(s, MS_DNS_NAME_MAX);
}

int ms_tlsrpt_filename(const char *submitter, const char *domain, int64_t begin, int64_t end,
                       const char *unique_id, char *out, size_t outlen)
{
    size_t i;
    int n;

    if (!domain_ok(submitter) || !domain_ok(domain) || unique_id[0] == '\0')
        return MS_EINVAL;
    for (i = 0; unique_id[i]; i++) /* §5.3: unique-id = 1*(ALPHA / DIGIT) */
        if (!((unique_id[i] >= 'a' && unique_id[i] <= 'z') ||
              (unique_id[i] >= 'A' && unique_id[i] <= 'Z') ||
              (unique_id[i] >= '0' && unique_id[i] <= '9')))
            return MS_EINVAL;
    n = snprintf(out, outlen, "%s!%s!%lld!%lld!%s.json.gz", submitter, domain, (long long)begin,
                 (long long)(end - 1), unique_id);
    return n < 0 || (size_t)n >= outlen ? MS_ETOOBIG : 0;
}

/* Printable ASCII, no blanks or angle brackets: what goes into a header
 * as an address or id. */
static int hdr_token_ok(const char *s)
{
    size_t i;

    if (s == NULL || s[0] == '\0')
        return 0;
    for (i = 0; s[i]; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f || s[i] == '<' ||
            s[i] == '>')
            return 0;
    return 1;
}

int ms_tlsrpt_mail_build(const struct ms_tlsrpt_mail *m, struct ms_buf *out)
{
    char date[64], boundary[64];
    char *b64;
    size_t b64cap, b64len, i;
    time_t t = (time_t)m->now;
    struct tm tm;
    int err;

    if (!hdr_token_ok(m->from) || !hdr_token_ok(m->to) || !domain_ok(m->domain) ||
        !domain_ok(m->submitter) || !hdr_token_ok(m->report_id) ||
        strchr(m->report_id, '@') == NULL || !hdr_token_ok(m->filename) ||
        strchr(m->filename, '"') || strchr(m->filename, '\\'))
        return MS_EINVAL;
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm); /* RFC 5322 §3.3 */
    /* A boundary that cannot occur in base64 or in the text part (RFC 2046
     * §5.1.1): '=' and '_' next to each other never appear in either. */
    snprintf(boundary, sizeof(boundary), "=_tlsrpt_%lld", (long long)m->now);
    if ((err = ms_buf_appendf(
             out,
             "From: <%s>\r\n"
             "To: <%s>\r\n"
             "Date: %s\r\n"
             "Message-ID: <%s>\r\n"
             /* §5.3: the Subject's form, and its two header fields. */
             "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n"
             "TLS-Report-Domain: %s\r\n"
             "TLS-Report-Submitter: %s\r\n"
             "MIME-Version: 1.0\r\n"
             "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
             "\tboundary=\"%s\"\r\n"
             "\r\n"
             "This is a MIME-formatted message.\r\n"
             "\r\n"
             "--%s\r\n"
             "Content-Type: text/plain; charset=us-ascii\r\n"
             "\r\n"
             "This is an aggregate TLS report (RFC 8460) from %s about mail to %s.\r\n"
             "\r\n"
             "--%s\r\n"
             "Content-Type: " MS_TLSRPT_MEDIA_GZIP "\r\n"
             "Content-Transfer-Encoding: base64\r\n"
             "Content-Disposition: attachment;\r\n"
             "\tfilename=\"%s\"\r\n"
             "\r\n",
             m->from, m->to, date, m->report_id, m->domain, m->submitter, m->report_id, m->domain,
             m->submitter, boundary, boundary, m->submitter, m->domain, boundary, m->filename)) < 0)
        return err;
    b64cap = ((m->gzlen + 2) / 3) * 4 + 1;
    b64 = ms_malloc(b64cap);
    b64len = ms_base64_encode(m->gz, m->gzlen, b64, b64cap);
    /* RFC 2045 §6.8: lines of at most 76 characters. */
    for (i = 0; i < b64len && err == 0; i += 76) {
        size_t n = b64len - i < 76 ? b64len - i : 76;
        if ((err = ms_buf_append(out, b64 + i, n)) == 0)
            err = ms_buf_append(out, "\r\n", 2);
    }
    free(b64);
    if (err < 0)
        return err;
    return ms_buf_appendf(out, "\r\n--%s--\r\n", boundary) < 0 ? MS_ETOOBIG : 0;
}
