/*
 * shaping.c - the shaping file: groups, limits, backoff rules (shaping.h).
 */
#include "shaping.h"
#include "ms_error.h"
#include "ms_mem.h"
#include "ms_qctl.h"
#include "ms_yaml.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct wk_shaping {
    unsigned refs;
    struct wk_shape_limits def;
    struct wk_shape_group *groups;
    size_t ngroups;
    struct wk_backoff_rule *rules;
    size_t nrules;
};

static int bad(char *err, size_t errlen, int line, const char *what)
{
    snprintf(err, errlen, "line %d: %s", line, what);
    return MS_EINVAL;
}

static const char *scalar(const struct ms_yaml_node *v)
{
    return v && v->kind == MS_YAML_SCALAR && strlen(v->str) == v->len ? v->str : NULL;
}

/* An integer in [lo, hi]. */
static int get_int(const struct ms_yaml_node *m, const char *key, long lo, long hi, long *out,
                   char *err, size_t errlen)
{
    const struct ms_yaml_node *v = ms_yaml_get(m, key);
    const char *s = scalar(v);
    char *end;
    long n;

    if (v == NULL)
        return 0;
    if (s == NULL || !isdigit((unsigned char)*s) || (n = strtol(s, &end, 10), *end) || n < lo ||
        n > hi) {
        snprintf(err, errlen, "line %d: %s: a whole number from %ld to %ld", v->line, key, lo, hi);
        return MS_EINVAL;
    }
    *out = n;
    return 1;
}

/* A duration ("90", "30s", "15m", "2h") in ms, in [1 s, max_s]; 1 set. */
static int get_duration(const struct ms_yaml_node *m, const char *key, int64_t max_s,
                        int64_t *out_ms, char *err, size_t errlen)
{
    const struct ms_yaml_node *v = ms_yaml_get(m, key);
    const char *s = scalar(v);
    int64_t secs;

    if (v == NULL)
        return 0;
    if (s == NULL || ms_qctl_parse_duration(s, &secs) < 0 || secs > max_s) {
        snprintf(err, errlen, "line %d: %s: a duration (\"90s\", \"15m\", \"2h\") up to %llds",
                 v->line, key, (long long)max_s);
        return MS_EINVAL;
    }
    *out_ms = secs * 1000;
    return 1;
}

static int limits_parse(const struct ms_yaml_node *m, struct wk_shape_limits *l, char *err,
                        size_t errlen)
{
    const struct ms_yaml_node *v;
    long n;
    int64_t ms;
    int rc;

    if ((rc = get_int(m, "connections", 1, WK_SHAPING_CONNECTIONS_MAX, &n, err, errlen)) < 0)
        return rc;
    if (rc)
        l->connections = (int)n;
    if ((rc = get_int(m, "messages_per_connection", 1, WK_SHAPING_MSGS_MAX, &n, err, errlen)) < 0)
        return rc;
    if (rc)
        l->msgs_per_conn = (unsigned)n;
    if ((rc = get_duration(m, "connect_timeout", WK_SHAPING_TIMEOUT_MAX_S, &ms, err, errlen)) < 0)
        return rc;
    if (rc)
        l->connect_timeout_ms = (uint64_t)ms;
    if ((rc = get_duration(m, "data_timeout", WK_SHAPING_TIMEOUT_MAX_S, &ms, err, errlen)) < 0)
        return rc;
    if (rc)
        l->data_timeout_ms = (uint64_t)ms;
    if ((rc = get_int(m, "recipients_per_message", 1, WK_SHAPING_RCPTS_MAX, &n, err, errlen)) < 0)
        return rc;
    if (rc)
        l->rcpts_per_msg = (unsigned)n;
    if ((rc = get_duration(m, "retry_min", WK_SHAPING_RETRY_MAX_S, &ms, err, errlen)) < 0)
        return rc;
    if (rc)
        l->retry_min_ms = (uint64_t)ms;
    if ((rc = get_duration(m, "retry_max", WK_SHAPING_RETRY_MAX_S, &ms, err, errlen)) < 0)
        return rc;
    if (rc)
        l->retry_max_ms = (uint64_t)ms;
    if ((v = ms_yaml_get(m, "rate")) != NULL) {
        if (scalar(v) == NULL || ms_bucket_rate_parse(v->str, &l->rate) < 0)
            return bad(err, errlen, v->line,
                       "rate: messages per second (\"10\", \"0.5\"; \"off\": no limit)");
        l->has_rate = 1;
    }
    return 0;
}

void wk_shape_limits_inherit(struct wk_shape_limits *l, const struct wk_shape_limits *def)
{
    if (l->connections == 0)
        l->connections = def->connections;
    if (!l->has_rate) {
        l->has_rate = def->has_rate;
        l->rate = def->rate;
    }
    if (l->msgs_per_conn == 0)
        l->msgs_per_conn = def->msgs_per_conn;
    if (l->connect_timeout_ms == 0)
        l->connect_timeout_ms = def->connect_timeout_ms;
    if (l->data_timeout_ms == 0)
        l->data_timeout_ms = def->data_timeout_ms;
    if (l->rcpts_per_msg == 0)
        l->rcpts_per_msg = def->rcpts_per_msg;
    if (l->retry_min_ms == 0)
        l->retry_min_ms = def->retry_min_ms;
    if (l->retry_max_ms == 0)
        l->retry_max_ms = def->retry_max_ms;
}

static int name_parse(const struct ms_yaml_node *m, const char *key, char *out, int required,
                      char *err, size_t errlen)
{
    const struct ms_yaml_node *v = ms_yaml_get(m, key);
    const char *s = scalar(v), *p;

    if (v == NULL && !required)
        return 0;
    if (s == NULL || *s == '\0' || strlen(s) > WK_SHAPING_NAME_MAX)
        return bad(err, errlen, v ? v->line : m->line, "name: 1 to 63 characters");
    /* A name goes into Redis keys, metric labels and log lines. */
    for (p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-_.", *p))
            return bad(err, errlen, v->line, "name: letters, digits, '-', '_' and '.' only");
    snprintf(out, WK_SHAPING_NAME_MAX + 1, "%s", s);
    return 0;
}

/* A list of host or domain names, lower-cased; "*." allowed when wild. */
static int names_parse(const struct ms_yaml_node *m, const char *key, int wild, char ***out,
                       size_t *n, char *err, size_t errlen)
{
    const struct ms_yaml_node *v = ms_yaml_get(m, key);
    size_t i;
    char *p;

    if (v == NULL)
        return 0;
    if (v->kind != MS_YAML_SEQ || v->n > WK_SHAPING_PATTERNS_MAX)
        return bad(err, errlen, v->line, "want a list of names (at most 64)");
    *out = ms_calloc(v->n ? v->n : 1, sizeof(**out));
    for (i = 0; i < v->n; i++) {
        const char *s = scalar(v->items[i]);
        if (s == NULL || *s == '\0' || strlen(s) > MS_DNS_NAME_MAX ||
            (strchr(s, '*') && (!wild || s[0] != '*' || s[1] != '.' || strchr(s + 1, '*'))))
            return bad(err, errlen, v->items[i]->line,
                       wild ? "a host name, or \"*.\" and a domain" : "a domain name");
        (*out)[(*n)++] = p = ms_strdup(s);
        for (; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (p > (*out)[*n - 1] && p[-1] == '.')
            p[-1] = '\0'; /* "google.com." is google.com */
    }
    return 0;
}

static void group_free(struct wk_shape_group *g)
{
    size_t i;

    for (i = 0; i < g->nmx; i++)
        free(g->mx[i]);
    for (i = 0; i < g->ndomains; i++)
        free(g->domains[i]);
    free(g->mx);
    free(g->domains);
    if (g->has_tls)
        wk_tls_entry_clear(&g->tls);
}

/* A group's TLS policy: a level the group can decide alone (shaping.h). */
static int tls_parse(const struct ms_yaml_node *g, struct wk_shape_group *o, char *err,
                     size_t errlen)
{
    const struct ms_yaml_node *v = ms_yaml_get(g, "tls");
    char why[256];

    if (v == NULL)
        return 0;
    if (scalar(v) == NULL || wk_tls_entry_parse(v->str, &o->tls, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "line %d: tls: %s", v->line, scalar(v) ? why : "a policy");
        return MS_EINVAL;
    }
    o->has_tls = 1;
    if (o->tls.level == WK_TLS_LEVEL_DANE || o->tls.level == WK_TLS_LEVEL_DANE_ONLY ||
        o->tls.ca_file)
        return bad(err, errlen, v->line,
                   "tls: DANE levels and ca_file belong in [tls] policy_map");
    return 0;
}

wk_shaping *wk_shaping_ref(wk_shaping *s)
{
    if (s)
        s->refs++;
    return s;
}

void wk_shaping_free(wk_shaping *s)
{
    size_t i;

    if (s == NULL || --s->refs > 0)
        return;
    for (i = 0; i < s->ngroups; i++)
        group_free(&s->groups[i]);
    for (i = 0; i < s->nrules; i++)
        wk_reply_pat_free(&s->rules[i].pat);
    free(s->groups);
    free(s->rules);
    free(s);
}

static int groups_parse(const struct ms_yaml_node *gs, wk_shaping *s, char *err, size_t errlen)
{
    static const char *const keys[] = {"name", "mx", "domains", "connections", "rate",
                                       "messages_per_connection", "recipients_per_message",
                                       "connect_timeout", "data_timeout", "retry_min",
                                       "retry_max", "tls", NULL};
    size_t i, j;
    int rc;

    if (gs->kind != MS_YAML_SEQ)
        return bad(err, errlen, gs->line, "groups: a list");
    if (gs->n > WK_SHAPING_GROUPS_MAX) {
        snprintf(err, errlen, "line %d: more than %d groups", gs->line, WK_SHAPING_GROUPS_MAX);
        return MS_ETOOBIG;
    }
    s->groups = ms_calloc(gs->n ? gs->n : 1, sizeof(*s->groups));
    for (i = 0; i < gs->n; i++) {
        const struct ms_yaml_node *g = gs->items[i];
        struct wk_shape_group *o = &s->groups[s->ngroups++];
        if (g->kind != MS_YAML_MAP)
            return bad(err, errlen, g->line, "a group is a mapping");
        if ((rc = ms_yaml_check_keys(g, keys, err, errlen)) < 0 ||
            (rc = name_parse(g, "name", o->name, 1, err, errlen)) < 0 ||
            (rc = names_parse(g, "mx", 1, &o->mx, &o->nmx, err, errlen)) < 0 ||
            (rc = names_parse(g, "domains", 0, &o->domains, &o->ndomains, err, errlen)) < 0 ||
            (rc = limits_parse(g, &o->lim, err, errlen)) < 0 ||
            (rc = tls_parse(g, o, err, errlen)) < 0)
            return rc;
        if (o->nmx == 0 && o->ndomains == 0)
            return bad(err, errlen, g->line, "a group needs mx or domains");
        for (j = 0; j + 1 < s->ngroups; j++)
            if (strcasecmp(s->groups[j].name, o->name) == 0)
                return bad(err, errlen, g->line, "a second group of that name");
        wk_shape_limits_inherit(&o->lim, &s->def);
    }
    return 0;
}

static int rules_parse(const struct ms_yaml_node *rs, wk_shaping *s, char *err, size_t errlen)
{
    static const char *const keys[] = {"name", "group", "code", "enhanced", "text", "action",
                                       "factor", "for", "ramp", NULL};
    size_t i, j;
    int rc;

    if (rs->kind != MS_YAML_SEQ)
        return bad(err, errlen, rs->line, "backoff: a list");
    if (rs->n > WK_SHAPING_RULES_MAX) {
        snprintf(err, errlen, "line %d: more than %d backoff rules", rs->line,
                 WK_SHAPING_RULES_MAX);
        return MS_ETOOBIG;
    }
    s->rules = ms_calloc(rs->n ? rs->n : 1, sizeof(*s->rules));
    for (i = 0; i < rs->n; i++) {
        const struct ms_yaml_node *r = rs->items[i], *v;
        struct wk_backoff_rule *o = &s->rules[i];
        const char *a, *f;
        char *end;
        if (r->kind != MS_YAML_MAP)
            return bad(err, errlen, r->line, "a backoff rule is a mapping");
        if ((rc = ms_yaml_check_keys(r, keys, err, errlen)) < 0 ||
            (rc = name_parse(r, "name", o->name, 1, err, errlen)) < 0 ||
            (rc = name_parse(r, "group", o->group, 0, err, errlen)) < 0)
            return rc;
        if (o->group[0]) {
            for (j = 0; j < s->ngroups && strcasecmp(s->groups[j].name, o->group) != 0; j++)
                ;
            if (j == s->ngroups)
                return bad(err, errlen, r->line, "group: no such group");
        }
        if (!ms_yaml_get(r, "code") && !ms_yaml_get(r, "enhanced") && !ms_yaml_get(r, "text"))
            return bad(err, errlen, r->line, "a backoff rule needs code, enhanced or text");
        if ((rc = wk_reply_pat_parse(r, &o->pat, err, errlen)) < 0)
            return rc;
        s->nrules++; /* owns its pattern from here */
        a = scalar(ms_yaml_get(r, "action"));
        if (a && strcmp(a, "suspend") == 0)
            o->action = WK_BACKOFF_SUSPEND;
        else if (a && strcmp(a, "throttle") == 0)
            o->action = WK_BACKOFF_THROTTLE;
        else
            return bad(err, errlen, r->line, "action: throttle or suspend");
        o->factor = o->action == WK_BACKOFF_SUSPEND ? 0.25 : 0.5;
        if ((v = ms_yaml_get(r, "factor")) != NULL) {
            f = scalar(v);
            if (f == NULL || !isdigit((unsigned char)*f) ||
                (o->factor = strtod(f, &end), *end) || !(o->factor >= MS_BACKOFF_FACTOR_MIN) ||
                !(o->factor < 1))
                return bad(err, errlen, v->line, "factor: a number from 0.01 to below 1");
        }
        if ((rc = get_duration(r, "for", WK_SHAPING_FOR_MAX_S, &o->for_ms, err, errlen)) < 0)
            return rc;
        if (rc == 0)
            return bad(err, errlen, r->line, "for: how long the backoff lasts");
        if (o->for_ms == 0)
            return bad(err, errlen, r->line, "for: at least one second");
        if ((rc = get_duration(r, "ramp", WK_SHAPING_FOR_MAX_S, &o->ramp_ms, err, errlen)) < 0)
            return rc;
    }
    return 0;
}

static int shaping_build(const struct ms_yaml_node *root, wk_shaping *s, char *err,
                         size_t errlen)
{
    static const char *const top[] = {"default", "groups", "backoff", NULL};
    static const char *const def_keys[] = {"connections", "rate", "messages_per_connection",
                                           "recipients_per_message", "connect_timeout",
                                           "data_timeout", "retry_min", "retry_max", NULL};
    const struct ms_yaml_node *v;
    int rc;

    if (root->kind != MS_YAML_MAP)
        return bad(err, errlen, root->line, "want a mapping with default, groups and backoff");
    if ((rc = ms_yaml_check_keys(root, top, err, errlen)) < 0)
        return rc;
    if ((v = ms_yaml_get(root, "default")) != NULL) {
        if (v->kind != MS_YAML_MAP)
            return bad(err, errlen, v->line, "default: a mapping");
        if ((rc = ms_yaml_check_keys(v, def_keys, err, errlen)) < 0 ||
            (rc = limits_parse(v, &s->def, err, errlen)) < 0)
            return rc;
    }
    if ((v = ms_yaml_get(root, "groups")) != NULL && (rc = groups_parse(v, s, err, errlen)) < 0)
        return rc;
    if ((v = ms_yaml_get(root, "backoff")) != NULL && (rc = rules_parse(v, s, err, errlen)) < 0)
        return rc;
    return 0;
}

static int shaping_from(struct ms_yaml_node *root, int rc, wk_shaping **out, char *err,
                        size_t errlen)
{
    wk_shaping *s;

    *out = NULL;
    if (rc < 0)
        return rc;
    s = ms_calloc(1, sizeof(*s));
    s->refs = 1;
    rc = shaping_build(root, s, err, errlen);
    ms_yaml_free(root);
    if (rc < 0) {
        wk_shaping_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int wk_shaping_parse(const char *buf, size_t len, wk_shaping **out, char *err, size_t errlen)
{
    struct ms_yaml_node *root = NULL;
    int rc = ms_yaml_parse(buf, len, &root, err, errlen);

    return shaping_from(root, rc, out, err, errlen);
}

int wk_shaping_load(const char *path, wk_shaping **out, char *err, size_t errlen)
{
    struct ms_yaml_node *root = NULL;
    int rc = ms_yaml_load(path, &root, err, errlen);

    return shaping_from(root, rc, out, err, errlen);
}

size_t wk_shaping_ngroups(const wk_shaping *s)
{
    return s ? s->ngroups : 0;
}

size_t wk_shaping_nrules(const wk_shaping *s)
{
    return s ? s->nrules : 0;
}

const struct wk_shape_group *wk_shaping_group_at(const wk_shaping *s, size_t i)
{
    return s && i < s->ngroups ? &s->groups[i] : NULL;
}

const struct wk_shape_limits *wk_shaping_default(const wk_shaping *s)
{
    return &s->def;
}

/* Does host (any case, maybe with a trailing dot) match pattern? */
static int host_match(const char *pattern, const char *host)
{
    size_t hl = strlen(host), pl;

    if (hl > 0 && host[hl - 1] == '.')
        hl--;
    if (pattern[0] == '*') {
        pl = strlen(pattern + 1); /* ".google.com" */
        return hl > pl && strncasecmp(host + hl - pl, pattern + 1, pl) == 0;
    }
    return strlen(pattern) == hl && strncasecmp(pattern, host, hl) == 0;
}

const struct wk_shape_group *wk_shaping_group(const wk_shaping *s, const char *domain,
                                              const char *const *hosts, size_t n)
{
    size_t g, i, k;

    for (g = 0; s && g < s->ngroups; g++) {
        const struct wk_shape_group *gr = &s->groups[g];
        for (i = 0; domain && i < gr->ndomains; i++)
            if (host_match(gr->domains[i], domain))
                return gr;
        for (i = 0; i < gr->nmx; i++)
            for (k = 0; k < n; k++)
                if (host_match(gr->mx[i], hosts[k]))
                    return gr;
    }
    return NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

/* Equal names, trailing dots aside. */
static int same_host(const char *a, const char *b)
{
    size_t al = strlen(a), bl = strlen(b);

    al -= al > 0 && a[al - 1] == '.';
    bl -= bl > 0 && b[bl - 1] == '.';
    return al == bl && strncasecmp(a, b, al) == 0;
}

void wk_shaping_mx_key(const char *const *hosts, size_t n, char *buf, size_t len)
{
    const char **sorted;
    size_t i, k = 0, used;
    char *p;

    if (len == 0)
        return;
    buf[0] = '\0';
    if (n == 0)
        return;
    sorted = ms_calloc(n, sizeof(*sorted));
    memcpy(sorted, hosts, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_str);
    used = (size_t)snprintf(buf, len, "mx:");
    for (i = 0; i < n && used < len; i++) {
        size_t hl = strlen(sorted[i]);
        if (hl > 0 && sorted[i][hl - 1] == '.')
            hl--;
        if (i > 0 && same_host(sorted[i], sorted[i - 1]))
            continue; /* a repeat (each address of a host is listed) */
        if (used + hl + (k > 0) >= len) {
            used = len;
            break;
        }
        used += (size_t)snprintf(buf + used, len - used, "%s%.*s", k > 0 ? "," : "", (int)hl,
                                 sorted[i]);
        k++;
    }
    if (used >= len) /* too long: the most preferred host alone */
        snprintf(buf, len, "mx:%s", hosts[0]);
    free(sorted);
    for (p = buf; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (p > buf && p[-1] == '.')
        p[-1] = '\0';
}

const struct wk_backoff_rule *wk_shaping_match(const wk_shaping *s, const char *group, int code,
                                               const char *dsn, const char *text)
{
    int enh[3];
    size_t i;

    if (s == NULL || s->nrules == 0 || (code >= 200 && code < 300))
        return NULL;
    wk_enhanced_split(dsn ? dsn : "", enh);
    for (i = 0; i < s->nrules; i++) {
        const struct wk_backoff_rule *r = &s->rules[i];
        if (r->group[0] && (group == NULL || strcasecmp(r->group, group) != 0))
            continue;
        if (wk_reply_pat_match(&r->pat, code, enh, text))
            return r;
    }
    return NULL;
}
