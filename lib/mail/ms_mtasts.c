/*
 * ms_mtasts.c - MTA-STS TXT records, policy files and MX patterns
 * (ms_mtasts.h).
 */
#include "ms_mtasts.h"
#include "ms_domainmap.h"
#include "ms_error.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

static int is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

int ms_mtasts_field_next(const char **p, const char *end, const char **f, const char **fe)
{
    const char *s = *p;

    if (s >= end)
        return 0;
    while (s < end && is_wsp(*s))
        s++;
    *f = s;
    while (s < end && *s != ';')
        s++;
    *fe = s;
    while (*fe > *f && is_wsp((*fe)[-1]))
        (*fe)--;
    *p = s < end ? s + 1 : s; /* past the ';' */
    return 1;
}

int ms_mtasts_txt_parse(const char *txt, size_t len, char *id)
{
    const char *p = txt, *end = txt + len, *f, *fe, *eq;
    int first = 1, have_id = 0;

    /* §3.1: sts-text-record = sts-version 1*(sts-field-delim sts-field)
     * [sts-field-delim]; sts-field-delim = *WSP ";" *WSP; the version
     * "v=STSv1" comes first. */
    while (ms_mtasts_field_next(&p, end, &f, &fe)) {
        if (fe == f) {
            if (first)
                return MS_EINVAL;
            continue; /* a trailing delimiter */
        }
        eq = memchr(f, '=', (size_t)(fe - f));
        if (eq == NULL || eq == f)
            return MS_EINVAL;
        if (first) {
            if (fe - f != 7 || memcmp(f, "v=STSv1", 7) != 0)
                return MS_EINVAL;
            first = 0;
            continue;
        }
        if (eq - f == 2 && memcmp(f, "id", 2) == 0) {
            size_t n = (size_t)(fe - eq - 1), i;
            if (have_id || n == 0 || n > MS_MTASTS_ID_MAX)
                return MS_EINVAL;
            for (i = 0; i < n; i++)
                if (!isalnum((unsigned char)eq[1 + i]))
                    return MS_EINVAL;
            memcpy(id, eq + 1, n);
            id[n] = '\0';
            have_id = 1;
        }
        /* Other fields (sts-ext-name "=" sts-ext-value) are ignored. */
    }
    return !first && have_id ? 0 : MS_EINVAL;
}

int ms_mtasts_txt_pick(const struct ms_dns_result *res, char *id)
{
    size_t i, found = 0;
    char tmp[MS_MTASTS_ID_MAX + 1];
    int r = MS_EINVAL;

    if (res->status != MS_DNS_OK)
        return MS_EINVAL;
    for (i = 0; i < res->n; i++) {
        const struct ms_dns_rr *rr = &res->rr[i];
        if (rr->type != MS_DNS_TXT || rr->u.txt.len < 7 ||
            memcmp(rr->u.txt.data, "v=STSv1", 7) != 0)
            continue; /* §3.1: records not starting so are not ours */
        found++;
        r = ms_mtasts_txt_parse(rr->u.txt.data, rr->u.txt.len, tmp);
    }
    if (found != 1 || r < 0)
        return MS_EINVAL;
    memcpy(id, tmp, strlen(tmp) + 1);
    return 0;
}

/* A pattern for mx: a domain name, "*." allowed before it (§3.2:
 * sts-policy-mx-value = ["*."] Domain). */
static int mx_pattern_ok(const char *v, size_t n)
{
    char key[MS_DOMAINMAP_KEY_MAX + 1];

    if (n >= 2 && v[0] == '*' && v[1] == '.') {
        v += 2;
        n -= 2;
    }
    return n > 0 && n <= MS_DNS_NAME_MAX && v[n - 1] != '.' &&
           ms_domainmap_key(v, n, key, sizeof(key)) == MS_DOMAINMAP_EXACT;
}

int ms_mtasts_policy_parse(const char *text, size_t len, struct ms_mtasts_policy *p)
{
    const char *s = text, *end = text + len, *line, *le, *colon, *v, *ve;
    int have_version = 0, have_mode = 0, have_age = 0;

    if (len > MS_MTASTS_POLICY_MAX)
        return MS_ETOOBIG;
    memset(p, 0, sizeof(*p));
    while (s < end) {
        line = s;
        le = memchr(s, '\n', (size_t)(end - s));
        if (le == NULL)
            le = end; /* the last line need not end (§3.2: [sts-policy-term]) */
        s = le < end ? le + 1 : end;
        if (le > line && le[-1] == '\r')
            le--;
        if (le == line)
            continue; /* an empty line, such as a final CRLF */
        colon = memchr(line, ':', (size_t)(le - line));
        if (colon == NULL || colon == line)
            return MS_EINVAL;
        for (v = colon + 1; v < le && is_wsp(*v); v++)
            ;
        for (ve = le; ve > v && is_wsp(ve[-1]); ve--)
            ;
#define KEY_IS(k) ((size_t)(colon - line) == sizeof(k) - 1 && memcmp(line, k, sizeof(k) - 1) == 0)
#define VAL_IS(k) ((size_t)(ve - v) == sizeof(k) - 1 && memcmp(v, k, sizeof(k) - 1) == 0)
        if (KEY_IS("version")) {
            if (have_version++ || !VAL_IS("STSv1"))
                return MS_EINVAL;
        } else if (KEY_IS("mode")) {
            if (have_mode++)
                return MS_EINVAL;
            if (VAL_IS("enforce"))
                p->mode = MS_MTASTS_ENFORCE;
            else if (VAL_IS("testing"))
                p->mode = MS_MTASTS_TESTING;
            else if (VAL_IS("none"))
                p->mode = MS_MTASTS_NONE;
            else
                return MS_EINVAL;
        } else if (KEY_IS("max_age")) {
            uint64_t a = 0;
            const char *d;
            if (have_age++ || ve == v || ve - v > 10)
                return MS_EINVAL;
            for (d = v; d < ve; d++) {
                if (!isdigit((unsigned char)*d))
                    return MS_EINVAL;
                a = a * 10 + (uint64_t)(*d - '0');
            }
            if (a > MS_MTASTS_MAX_AGE_MAX)
                return MS_EINVAL;
            p->max_age = (uint32_t)a;
        } else if (KEY_IS("mx")) {
            size_t n = (size_t)(ve - v), i;
            if (!mx_pattern_ok(v, n) || p->nmx == MS_MTASTS_MX_MAX)
                return MS_EINVAL;
            for (i = 0; i < n; i++)
                p->mx[p->nmx][i] = (char)tolower((unsigned char)v[i]);
            p->mx[p->nmx][n] = '\0';
            p->nmx++;
        }
        /* Anything else is an extension: ignored (§3.2). */
#undef KEY_IS
#undef VAL_IS
    }
    if (!have_version || !have_mode || !have_age || (p->mode != MS_MTASTS_NONE && p->nmx == 0))
        return MS_EINVAL;
    return 0;
}

int ms_mtasts_mx_match(const struct ms_mtasts_policy *p, const char *host)
{
    size_t hl = strlen(host), i;
    const char *dot;

    if (hl > 0 && host[hl - 1] == '.')
        hl--;
    if (hl == 0)
        return 0;
    for (i = 0; i < p->nmx; i++) {
        const char *pat = p->mx[i];
        size_t pl = strlen(pat);
        if (pat[0] == '*' && pat[1] == '.') {
            /* §4.1: the wildcard stands for exactly the leftmost label. */
            dot = memchr(host, '.', hl);
            if (dot == NULL || dot == host)
                continue;
            if ((size_t)(host + hl - dot) == pl - 1 && strncasecmp(dot, pat + 1, pl - 1) == 0)
                return 1;
        } else if (hl == pl && strncasecmp(host, pat, pl) == 0) {
            return 1;
        }
    }
    return 0;
}

const char *ms_mtasts_mode_name(enum ms_mtasts_mode m)
{
    static const char *const names[] = {"none", "testing", "enforce"};
    return (unsigned)m < 3 ? names[m] : "none";
}
