/*
 * classify.c - bounce classification and reply patterns (classify.h).
 */
#include "classify.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const category_names[WK_CAT__N] = {
#define X(name, str) str,
    WK_CATEGORY_MAP(X)
#undef X
};

const char *wk_category_name(enum wk_category c)
{
    return (unsigned)c < WK_CAT__N ? category_names[c] : "other";
}

int wk_category_parse(const char *s)
{
    int i;

    for (i = 0; i < WK_CAT__N; i++)
        if (strcmp(s, category_names[i]) == 0)
            return i;
    return -1;
}

/* ---- reply patterns ---- */

/* 1-3 digits into *v; the characters used, or 0. */
static int digits(const char *s, int *v)
{
    int n = 0;

    *v = 0;
    while (n < 3 && isdigit((unsigned char)s[n]))
        *v = *v * 10 + (s[n++] - '0');
    return n;
}

int wk_enhanced_split(const char *dsn, int enh[3])
{
    const char *s = dsn;
    int k, n;

    for (k = 0; k < 3 && s; k++) {
        if ((n = digits(s, &enh[k])) == 0 || (k < 2 && s[n] != '.'))
            break;
        s += n + (k < 2);
    }
    if (k == 3 && (*s == '\0' || *s == ' '))
        return 0;
    enh[0] = enh[1] = enh[2] = -1;
    return -1;
}

/* "550", "55x", "5xx" (x or X). */
static int code_parse(const char *s, int *value, int *ndig)
{
    int n = digits(s, value), k;

    if (n == 0 || strlen(s) != 3 || *s < '2' || *s > '5')
        return -1;
    for (k = n; k < 3; k++)
        if (s[k] != 'x' && s[k] != 'X')
            return -1;
    *ndig = n;
    return 0;
}

/* "5.1.1", "*.1.1", "5.7.*". */
static int enh_parse(const char *s, int enh[3])
{
    int k, n;

    for (k = 0; k < 3; k++) {
        if (*s == '*') {
            enh[k] = -1;
            n = 1;
        } else if ((n = digits(s, &enh[k])) == 0) {
            return -1;
        }
        s += n;
        if (k < 2 && *s++ != '.')
            return -1;
    }
    return *s == '\0' ? 0 : -1;
}

/* A scalar or a sequence of scalars: each through one(). */
static int alts(const struct ms_yaml_node *v, const char *field, int *count, char *err,
                size_t errlen, int (*one)(const char *, void *, int), void *dst)
{
    const struct ms_yaml_node *const *items = &v;
    size_t n = 1, i;

    if (v->kind == MS_YAML_SEQ) {
        items = (const struct ms_yaml_node *const *)v->items;
        n = v->n;
    }
    if (n == 0 || n > WK_PAT_ALTS_MAX) {
        snprintf(err, errlen, "line %d: %s: 1 to %d values", v->line, field, WK_PAT_ALTS_MAX);
        return MS_EINVAL;
    }
    for (i = 0; i < n; i++) {
        if (items[i]->kind != MS_YAML_SCALAR || one(items[i]->str, dst, (int)i) < 0) {
            snprintf(err, errlen, "line %d: %s: bad value", items[i]->line, field);
            return MS_EINVAL;
        }
    }
    *count = (int)n;
    return 0;
}

static int one_code(const char *s, void *dst, int i)
{
    struct wk_reply_pat *p = dst;

    return code_parse(s, &p->code[i].value, &p->code[i].digits);
}

static int one_enh(const char *s, void *dst, int i)
{
    struct wk_reply_pat *p = dst;

    return enh_parse(s, p->enh[i]);
}

int wk_reply_pat_parse(const struct ms_yaml_node *m, struct wk_reply_pat *p, char *err,
                       size_t errlen)
{
    const struct ms_yaml_node *v;
    int rc;

    memset(p, 0, sizeof(*p));
    if ((v = ms_yaml_get(m, "code")) != NULL &&
        (rc = alts(v, "code", &p->ncode, err, errlen, one_code, p)) < 0)
        return rc;
    if ((v = ms_yaml_get(m, "enhanced")) != NULL &&
        (rc = alts(v, "enhanced", &p->nenh, err, errlen, one_enh, p)) < 0)
        return rc;
    if ((v = ms_yaml_get(m, "text")) != NULL) {
        char why[128];
        if (v->kind != MS_YAML_SCALAR || v->len == 0 || v->len > WK_PAT_REGEX_MAX ||
            strlen(v->str) != v->len) {
            snprintf(err, errlen, "line %d: text: a regular expression of 1 to %d bytes",
                     v->line, WK_PAT_REGEX_MAX);
            return MS_EINVAL;
        }
        /* Compiled here, once: matching a reply never compiles. */
        if ((rc = regcomp(&p->re, v->str, REG_EXTENDED | REG_ICASE | REG_NOSUB)) != 0) {
            regerror(rc, &p->re, why, sizeof(why));
            snprintf(err, errlen, "line %d: text: %s", v->line, why);
            return MS_EINVAL;
        }
        p->has_re = 1;
    }
    return 0;
}

void wk_reply_pat_free(struct wk_reply_pat *p)
{
    if (p->has_re)
        regfree(&p->re);
    p->has_re = 0;
}

int wk_reply_pat_match(const struct wk_reply_pat *p, int code, const int enh[3],
                       const char *text)
{
    int i, k, ok;

    if (p->ncode > 0) {
        for (i = 0, ok = 0; i < p->ncode && !ok; i++) {
            int v = code;
            for (k = p->code[i].digits; k < 3; k++)
                v /= 10;
            ok = code >= 100 && code <= 999 && v == p->code[i].value;
        }
        if (!ok)
            return 0;
    }
    if (p->nenh > 0) {
        for (i = 0, ok = 0; i < p->nenh && !ok; i++)
            for (k = 0, ok = enh[0] >= 0; k < 3 && ok; k++)
                ok = p->enh[i][k] < 0 || p->enh[i][k] == enh[k];
        if (!ok)
            return 0;
    }
    return !p->has_re || regexec(&p->re, text ? text : "", 0, NULL, 0) == 0;
}

/* ---- the classifier ---- */

struct rule {
    enum wk_category cat;
    struct wk_reply_pat pat;
};

struct wk_classifier {
    struct rule *rules;
    size_t n;
    unsigned suppress; /* bit per category */
};

#define DEFAULT_SUPPRESS ((1u << WK_CAT_BAD_MAILBOX) | (1u << WK_CAT_BAD_DOMAIN))

void wk_classifier_free(wk_classifier *c)
{
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < c->n; i++)
        wk_reply_pat_free(&c->rules[i].pat);
    free(c->rules);
    free(c);
}

size_t wk_classifier_rules(const wk_classifier *c)
{
    return c ? c->n : 0;
}

static int bad(char *err, size_t errlen, int line, const char *what)
{
    snprintf(err, errlen, "line %d: %s", line, what);
    return MS_EINVAL;
}

static int classifier_build(const struct ms_yaml_node *root, wk_classifier *c, char *err,
                            size_t errlen)
{
    static const char *const top_keys[] = {"suppress", "rules", NULL};
    static const char *const rule_keys[] = {"category", "code", "enhanced", "text", NULL};
    const struct ms_yaml_node *sup, *rules, *r, *cat;
    size_t i;
    int rc, k;

    if (root->kind != MS_YAML_MAP)
        return bad(err, errlen, root->line, "want a mapping with suppress and rules");
    if ((rc = ms_yaml_check_keys(root, top_keys, err, errlen)) < 0)
        return rc;
    c->suppress = DEFAULT_SUPPRESS;
    if ((sup = ms_yaml_get(root, "suppress")) != NULL) {
        if (sup->kind != MS_YAML_SEQ)
            return bad(err, errlen, sup->line, "suppress: a list of categories");
        c->suppress = 0;
        for (i = 0; i < sup->n; i++) {
            if (sup->items[i]->kind != MS_YAML_SCALAR ||
                (k = wk_category_parse(sup->items[i]->str)) <= WK_CAT_NONE)
                return bad(err, errlen, sup->items[i]->line, "suppress: unknown category");
            c->suppress |= 1u << k;
        }
    }
    if ((rules = ms_yaml_get(root, "rules")) == NULL)
        return 0;
    if (rules->kind != MS_YAML_SEQ)
        return bad(err, errlen, rules->line, "rules: a list");
    if (rules->n > WK_CLASSIFY_RULES_MAX) {
        snprintf(err, errlen, "line %d: more than %d rules", rules->line, WK_CLASSIFY_RULES_MAX);
        return MS_ETOOBIG;
    }
    c->rules = ms_calloc(rules->n ? rules->n : 1, sizeof(*c->rules));
    for (i = 0; i < rules->n; i++) {
        r = rules->items[i];
        if (r->kind != MS_YAML_MAP)
            return bad(err, errlen, r->line, "a rule is a mapping");
        if ((rc = ms_yaml_check_keys(r, rule_keys, err, errlen)) < 0)
            return rc;
        cat = ms_yaml_get(r, "category");
        if (cat == NULL || cat->kind != MS_YAML_SCALAR ||
            (k = wk_category_parse(cat->str)) <= WK_CAT_NONE)
            return bad(err, errlen, r->line, "rule without a known category");
        if ((rc = wk_reply_pat_parse(r, &c->rules[c->n].pat, err, errlen)) < 0)
            return rc;
        c->rules[c->n++].cat = (enum wk_category)k;
    }
    return 0;
}

static int classifier_from(struct ms_yaml_node *root, int rc, wk_classifier **out, char *err,
                           size_t errlen)
{
    wk_classifier *c;

    *out = NULL;
    if (rc < 0)
        return rc;
    c = ms_calloc(1, sizeof(*c));
    rc = classifier_build(root, c, err, errlen);
    ms_yaml_free(root);
    if (rc < 0) {
        wk_classifier_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int wk_classifier_parse(const char *buf, size_t len, wk_classifier **out, char *err,
                        size_t errlen)
{
    struct ms_yaml_node *root = NULL;
    int rc = ms_yaml_parse(buf, len, &root, err, errlen);

    return classifier_from(root, rc, out, err, errlen);
}

int wk_classifier_load(const char *path, wk_classifier **out, char *err, size_t errlen)
{
    struct ms_yaml_node *root = NULL;
    int rc = ms_yaml_load(path, &root, err, errlen);

    return classifier_from(root, rc, out, err, errlen);
}

/* RFC 3463 §3 subjects and details, for replies no rule names. */
static enum wk_category fallback(int code, const int e[3])
{
    int subject = e[1], detail = e[2];

    if (subject == 1 && (detail == 2 || detail == 10))
        return WK_CAT_BAD_DOMAIN; /* X.1.2 bad destination system, X.1.10 null MX */
    if (subject == 1)
        return WK_CAT_BAD_MAILBOX; /* X.1.x addressing status */
    if (subject == 2 && detail == 2)
        return WK_CAT_QUOTA; /* X.2.2 mailbox full */
    if (subject == 2 && detail == 3)
        return WK_CAT_CONTENT; /* X.2.3 message length exceeds administrative limit */
    if (subject == 2)
        return WK_CAT_BAD_MAILBOX; /* X.2.x mailbox status (disabled, ...) */
    if (subject == 3 && detail == 4)
        return WK_CAT_CONTENT; /* X.3.4 message too big for system */
    if (subject == 4 && (detail == 3 || detail == 1 || detail == 2 || detail == 7))
        return WK_CAT_NETWORK; /* X.4.1 no answer, X.4.2 bad connection, X.4.3 DNS */
    if (subject == 4 && (detail == 4 || detail == 6 || detail == 0))
        return WK_CAT_ROUTING; /* X.4.4 unable to route, X.4.6 routing loop */
    if (subject == 4 && detail == 5)
        return WK_CAT_RATE_LIMIT; /* X.4.5 mail system congestion */
    if (subject == 6)
        return WK_CAT_CONTENT; /* X.6.x message content or media */
    if (subject == 7 && (detail == 10 || detail == 11 || detail == 30 || detail == 4 ||
                         detail == 5))
        return WK_CAT_TLS; /* X.7.10/11 encryption, X.7.30 REQUIRETLS, X.7.4/5 */
    if (subject == 7)
        return WK_CAT_POLICY; /* X.7.x security or policy status */
    if (code == 0)
        return WK_CAT_NETWORK; /* no reply at all: our own diagnostic */
    if (code >= 400 && code < 500)
        return WK_CAT_TRANSIENT;
    return WK_CAT_OTHER;
}

enum wk_category wk_classify(const wk_classifier *c, int code, const char *dsn, const char *text)
{
    int enh[3];
    size_t i;

    if (code >= 200 && code < 300)
        return WK_CAT_NONE;
    wk_enhanced_split(dsn ? dsn : "", enh);
    for (i = 0; c && i < c->n; i++)
        if (wk_reply_pat_match(&c->rules[i].pat, code, enh, text))
            return c->rules[i].cat;
    return fallback(code, enh);
}

int wk_classifier_suppresses(const wk_classifier *c, enum wk_category cat)
{
    unsigned mask = c ? c->suppress : DEFAULT_SUPPRESS;

    return (unsigned)cat < WK_CAT__N && (mask >> cat & 1u);
}
