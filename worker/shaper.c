/*
 * shaper.c - traffic shaping at run time (shaper.h).
 */
#include "shaper.h"
#include "ms_backoff.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_time.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Metric series of one group label. */
struct label_stats {
    char name[WK_SHAPING_NAME_MAX + 1];
    ms_counter *attempts, *delivered, *suspends, *throttles;
    ms_counter *deferred[WK_CAT__N], *bounced[WK_CAT__N]; /* made on first use */
    ms_gauge *sessions, *factor_pct, *rate_pm, *conn_limit;
};

/* One group's backoff record, as last read or written. */
struct state {
    char key[WK_SHAPE_KEY_MAX + 1];
    struct ms_backoff b;
    int64_t local_us; /* written by this worker at that time; 0: read */
};

struct wk_shaper {
    uv_loop_t *loop;
    struct wk_shaper_conf conf;
    char *shaping_file, *rules_file;
    wk_shaping *shaping;
    wk_classifier *classifier;
    ms_redis *redis;
    uv_timer_t poll;
    int polling;
    int64_t poll_sent_us;
    struct state *states;
    size_t nstates;
    struct label_stats labels[WK_SHAPER_LABELS_MAX];
    size_t nlabels;
    ms_counter *m_redis_errors, *m_reloads, *m_reload_failures;
};

static const char *file_or_null(const char *s)
{
    return s && *s ? s : NULL;
}

/* Load both files; 0 and the new rules, or the error in err. */
static int load(const wk_shaper *s, wk_shaping **shp, wk_classifier **cls, char *err,
                size_t errlen)
{
    char why[512];
    int rc;

    *shp = NULL;
    *cls = NULL;
    if (s->shaping_file && (rc = wk_shaping_load(s->shaping_file, shp, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "%s: %s", s->shaping_file, why);
        return rc;
    }
    if (s->rules_file && (rc = wk_classifier_load(s->rules_file, cls, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "%s: %s", s->rules_file, why);
        wk_shaping_free(*shp);
        *shp = NULL;
        return rc;
    }
    return 0;
}

static struct label_stats *label_get(wk_shaper *s, const char *name)
{
    char labels[WK_SHAPING_NAME_MAX + 64];
    struct label_stats *l;
    size_t i;

    for (i = 0; i < s->nlabels; i++)
        if (strcmp(s->labels[i].name, name) == 0)
            return &s->labels[i];
    if (s->nlabels == WK_SHAPER_LABELS_MAX)
        return strcmp(name, "default") ? label_get(s, "default") : &s->labels[0];
    l = &s->labels[s->nlabels++];
    snprintf(l->name, sizeof(l->name), "%s", name);
    /* Group names are [A-Za-z0-9._-] (shaping.h): nothing to escape. */
    snprintf(labels, sizeof(labels), "group=\"%s\"", l->name);
    l->attempts = ms_counter_new("mailstream_worker_group_attempts_total",
                                 "Sessions started, by destination group.", labels);
    l->delivered = ms_counter_new("mailstream_worker_group_delivered_total",
                                  "Recipients delivered, by destination group.", labels);
    l->suspends = ms_counter_new("mailstream_worker_group_suspensions_total",
                                 "Backoff suspensions this worker started, by destination group.",
                                 labels);
    l->throttles = ms_counter_new("mailstream_worker_group_throttles_total",
                                  "Backoff throttles this worker started, by destination group.",
                                  labels);
    l->sessions = ms_gauge_new("mailstream_worker_group_connections",
                               "Sessions open on this worker, by destination group.", labels);
    l->factor_pct = ms_gauge_new("mailstream_worker_group_backoff_factor_percent",
                                 "The backoff in force (100: none, 0: suspended), by destination "
                                 "group.",
                                 labels);
    l->rate_pm = ms_gauge_new("mailstream_worker_group_rate_per_minute",
                              "The message rate in force (backoff applied; 0: no limit), by "
                              "destination group.",
                              labels);
    l->conn_limit = ms_gauge_new("mailstream_worker_group_connections_limit",
                                 "The cluster-wide connections in force (backoff applied; 0: no "
                                 "limit), by destination group.",
                                 labels);
    ms_gauge_set(l->factor_pct, 100);
    return l;
}

static ms_counter *category_counter(struct label_stats *l, int bounced, enum wk_category cat)
{
    ms_counter **slot = bounced ? &l->bounced[cat] : &l->deferred[cat];
    char labels[WK_SHAPING_NAME_MAX + 64];

    if (*slot == NULL) {
        snprintf(labels, sizeof(labels), "group=\"%s\",category=\"%s\"", l->name,
                 wk_category_name(cat));
        *slot = ms_counter_new(bounced ? "mailstream_worker_group_bounced_total"
                                       : "mailstream_worker_group_deferred_total",
                               bounced ? "Recipients bounced, by destination group and category."
                                       : "Recipients deferred, by destination group and "
                                         "category.",
                               labels);
    }
    return *slot;
}

static struct state *state_find(const wk_shaper *s, const char *key)
{
    size_t i;

    for (i = 0; i < s->nstates; i++)
        if (strcasecmp(s->states[i].key, key) == 0)
            return &s->states[i];
    return NULL;
}

/* The factor gauges: the named groups' own records; "default" the lowest
 * of the others'. */
static void gauges_update(wk_shaper *s, int64_t now)
{
    size_t i;
    double def = 1;

    for (i = 0; i < s->nlabels; i++) {
        const struct state *st = state_find(s, s->labels[i].name);
        if (strcmp(s->labels[i].name, "default") != 0)
            ms_gauge_set(s->labels[i].factor_pct,
                         st ? (int64_t)floor(ms_backoff_factor(&st->b, now) * 100 + 0.5) : 100);
    }
    for (i = 0; i < s->nstates; i++) {
        double f = ms_backoff_factor(&s->states[i].b, now);
        size_t k;
        for (k = 0; k < s->nlabels && strcasecmp(s->labels[k].name, s->states[i].key); k++)
            ;
        if (k == s->nlabels && f < def)
            def = f;
    }
    ms_gauge_set(label_get(s, "default")->factor_pct, (int64_t)floor(def * 100 + 0.5));
}

static void on_poll(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    wk_shaper *s = arg;
    struct state *next;
    size_t i, n, k = 0;
    int64_t now = ms_time_now_us();

    (void)id;
    if (r->type == MS_REDIS_ERR || r->type == MS_REDIS_FAILED) {
        ms_counter_inc(s->m_redis_errors);
        return;
    }
    if (r->type != MS_REDIS_ARRAY)
        return;
    n = r->nelem / 2;
    if (n > WK_SHAPER_BACKOFF_MAX) {
        ms_warn("event=too_many_backoffs count=%zu kept=%d", n, WK_SHAPER_BACKOFF_MAX);
        n = WK_SHAPER_BACKOFF_MAX;
    }
    next = ms_calloc(n + s->nstates + 1, sizeof(*next));
    for (i = 0; i < n; i++) {
        const struct ms_redis_reply *kr = &r->elem[2 * i], *v = &r->elem[2 * i + 1];
        if (kr->type != MS_REDIS_STR || v->type != MS_REDIS_STR || kr->len > WK_SHAPE_KEY_MAX ||
            ms_backoff_parse(v->str, v->len, &next[k].b) < 0 || ms_backoff_over(&next[k].b, now))
            continue;
        memcpy(next[k].key, kr->str, kr->len);
        next[k].key[kr->len] = '\0';
        k++;
    }
    /* Our own writes newer than the poll are not in its answer yet. */
    for (i = 0; i < s->nstates; i++) {
        size_t j;
        if (s->states[i].local_us < s->poll_sent_us)
            continue;
        for (j = 0; j < k && strcasecmp(next[j].key, s->states[i].key) != 0; j++)
            ;
        if (j == k)
            next[k++] = s->states[i];
    }
    free(s->states);
    s->states = next;
    s->nstates = k;
    gauges_update(s, now);
}

static void poll_cb(uv_timer_t *t)
{
    wk_shaper *s = t->data;
    const char *argv[2] = {"HGETALL", MS_KEY_BACKOFF};
    size_t argvlen[2] = {7, strlen(MS_KEY_BACKOFF)};
    char why[128];

    /* The ramp goes on whether or not Redis answers this poll (or the last
     * one is still out): the gauges follow the records already known. */
    gauges_update(s, ms_time_now_us());
    if (!ms_redis_ready(s->redis, why, sizeof(why)))
        return;
    s->poll_sent_us = ms_time_now_us();
    if (ms_redis_command(s->redis, on_poll, s, 1, 2, argv, argvlen) < 0)
        ms_counter_inc(s->m_redis_errors);
}

wk_shaper *wk_shaper_new(uv_loop_t *loop, const struct wk_shaper_conf *conf, char *err,
                         size_t errlen)
{
    wk_shaper *s = ms_calloc(1, sizeof(*s));

    s->loop = loop;
    s->conf = *conf;
    s->shaping_file = file_or_null(conf->shaping_file) ? ms_strdup(conf->shaping_file) : NULL;
    s->rules_file = file_or_null(conf->rules_file) ? ms_strdup(conf->rules_file) : NULL;
    if (load(s, &s->shaping, &s->classifier, err, errlen) < 0) {
        free(s->shaping_file);
        free(s->rules_file);
        free(s);
        return NULL;
    }
    s->m_redis_errors = ms_counter_new("mailstream_worker_redis_errors_total",
                                       "Redis commands that failed or timed out.", NULL);
    s->m_reloads = ms_counter_new("mailstream_worker_shaping_reloads_total",
                                  "Shaping and bounce rule files loaded again (SIGHUP).", NULL);
    s->m_reload_failures =
        ms_counter_new("mailstream_worker_shaping_reload_failures_total",
                       "SIGHUP reloads refused: a rule file did not load (old rules kept).",
                       NULL);
    label_get(s, "default");
    ms_info("event=shaping_loaded shaping_file=%s groups=%zu backoff_rules=%zu "
            "bounce_rules_file=%s bounce_rules=%zu",
            s->shaping_file ? s->shaping_file : "-", wk_shaping_ngroups(s->shaping),
            wk_shaping_nrules(s->shaping), s->rules_file ? s->rules_file : "-",
            wk_classifier_rules(s->classifier));
    uv_timer_init(loop, &s->poll);
    s->poll.data = s;
    s->polling = 1;
    return s;
}

void wk_shaper_attach(wk_shaper *s, ms_redis *r)
{
    s->redis = r;
    if (r && s->polling)
        uv_timer_start(&s->poll, poll_cb, 0, WK_SHAPER_POLL_MS);
}

int wk_shaper_reload(wk_shaper *s)
{
    wk_shaping *shp;
    wk_classifier *cls;
    char err[768];
    int rc = load(s, &shp, &cls, err, sizeof(err));

    if (rc < 0) {
        ms_warn("event=shaping_reload_failed error=\"%s\" kept=old_rules", err);
        ms_counter_inc(s->m_reload_failures);
        return rc;
    }
    wk_shaping_free(s->shaping);
    wk_classifier_free(s->classifier);
    s->shaping = shp;
    s->classifier = cls;
    ms_counter_inc(s->m_reloads);
    ms_info("event=shaping_reloaded groups=%zu backoff_rules=%zu bounce_rules=%zu",
            wk_shaping_ngroups(shp), wk_shaping_nrules(shp), wk_classifier_rules(cls));
    return 0;
}

void wk_shaper_stop(wk_shaper *s)
{
    if (s->polling) {
        s->polling = 0;
        uv_close((uv_handle_t *)&s->poll, NULL);
    }
}

static void shaper_release(wk_shaper *s)
{
    wk_shaping_free(s->shaping);
    wk_classifier_free(s->classifier);
    free(s->states);
    free(s->shaping_file);
    free(s->rules_file);
    free(s);
}

static void poll_closed_free(uv_handle_t *h)
{
    shaper_release(h->data);
}

void wk_shaper_free(wk_shaper *s)
{
    if (s == NULL)
        return;
    if (s->polling) { /* never stopped: the timer's close frees it */
        s->polling = 0;
        uv_close((uv_handle_t *)&s->poll, poll_closed_free);
        return;
    }
    shaper_release(s);
}

const wk_classifier *wk_shaper_classifier(const wk_shaper *s)
{
    return s ? s->classifier : NULL;
}

void wk_shaper_resolve(const wk_shaper *s, const char *name, const char *domain,
                       const char *const *hosts, size_t n, struct wk_dest_shape *out)
{
    const struct wk_shape_group *g = NULL;

    memset(out, 0, sizeof(*out));
    if (name == NULL)
        g = wk_shaping_group(s->shaping, domain, hosts, n);
    if (g) {
        if (g->has_tls) {
            out->tls = &g->tls;
            out->gen = wk_shaping_ref(s->shaping);
        }
        snprintf(out->key, sizeof(out->key), "%s", g->name);
        snprintf(out->label, sizeof(out->label), "%s", g->name);
        snprintf(out->rules_group, sizeof(out->rules_group), "%s", g->name);
        out->lim = g->lim;
    } else {
        if (name)
            snprintf(out->key, sizeof(out->key), "%s", name);
        else if (n > 0)
            wk_shaping_mx_key(hosts, n, out->key, sizeof(out->key));
        else
            snprintf(out->key, sizeof(out->key), "%s", domain ? domain : "");
        snprintf(out->label, sizeof(out->label), "default");
        if (s->shaping)
            out->lim = *wk_shaping_default(s->shaping);
    }
    wk_shape_limits_inherit(&out->lim, &s->conf.base); /* [delivery] */
}

void wk_shaper_release(struct wk_dest_shape *ds)
{
    wk_shaping_free(ds->gen);
    ds->gen = NULL;
    ds->tls = NULL;
}

int wk_shaper_limits(wk_shaper *s, const struct wk_dest_shape *ds, struct ms_bucket_rate *rate,
                     int *connections, int64_t *until_us, char *why, size_t whylen)
{
    const struct state *st = s->nstates ? state_find(s, ds->key) : NULL;
    int64_t now;
    double f = 1;

    *rate = ds->lim.rate;
    *connections = ds->lim.connections;
    if (st) {
        now = ms_time_now_us();
        if (ms_backoff_suspended(&st->b, now)) {
            *until_us = st->b.until_us;
            snprintf(why, whylen, "%s", st->b.rule);
            return 1;
        }
        f = ms_backoff_factor(&st->b, now);
    }
    if (f < 1) {
        /* Fewer messages: a longer spacing of the one-token bucket. */
        if (rate->capacity > 0) {
            double p = ceil((double)rate->period_ms / f);
            rate->period_ms = p > (double)MS_BUCKET_PERIOD_MAX_S * 1000
                                  ? (uint64_t)MS_BUCKET_PERIOD_MAX_S * 1000
                                  : (uint64_t)p;
        }
        if (*connections > 0) {
            *connections = (int)floor(*connections * f);
            if (*connections < 1)
                *connections = 1;
        }
    }
    if (strcmp(ds->label, "default") != 0 || st == NULL) {
        struct label_stats *l = label_get(s, ds->label);
        ms_gauge_set(l->rate_pm, rate->capacity ? (int64_t)(60000 / rate->period_ms) : 0);
        ms_gauge_set(l->conn_limit, *connections);
    }
    return 0;
}

void wk_shaper_observe(wk_shaper *s, const struct wk_dest_shape *ds, int code, const char *dsn,
                       const char *text, const char *log_id)
{
    const struct wk_backoff_rule *r;
    struct state *st;
    struct ms_backoff b;
    char val[512], q[300];
    int64_t now;
    struct label_stats *l;

    if (s->shaping == NULL || (code >= 200 && code < 300))
        return;
    r = wk_shaping_match(s->shaping, ds->rules_group, code, dsn, text);
    if (r == NULL)
        return;
    now = ms_time_now_us();
    st = state_find(s, ds->key);
    /* Renew only when the record we know would end within half the rule's
     * time: a storm of replies is one write now and then. */
    if (st && strcmp(st->b.rule, r->name) == 0 && st->b.until_us - now > r->for_ms * 500)
        return;
    memset(&b, 0, sizeof(b));
    b.suspend = r->action == WK_BACKOFF_SUSPEND;
    b.factor = r->factor;
    b.until_us = now + r->for_ms * 1000;
    b.ramp_ms = r->ramp_ms;
    b.since_us = st && strcmp(st->b.rule, r->name) == 0 ? st->b.since_us : now;
    snprintf(b.rule, sizeof(b.rule), "%s", r->name);
    snprintf(b.reason, sizeof(b.reason), "%d %s %s", code, dsn && *dsn ? dsn : "-",
             text ? text : "");
    if (ms_backoff_format(&b, val, sizeof(val)) < 0)
        return;
    if (st == NULL) {
        if (s->nstates >= WK_SHAPER_BACKOFF_MAX)
            return;
        s->states = ms_realloc(s->states, (s->nstates + 1) * sizeof(*s->states));
        st = &s->states[s->nstates++];
        memset(st, 0, sizeof(*st));
        snprintf(st->key, sizeof(st->key), "%s", ds->key);
    }
    st->b = b;
    st->local_us = now;
    if (s->redis) {
        const char *argv[4] = {"HSET", MS_KEY_BACKOFF, ds->key, val};
        ms_redis_fire(s->redis, s->m_redis_errors, 4, argv);
    }
    l = label_get(s, ds->label);
    ms_counter_inc(b.suspend ? l->suspends : l->throttles);
    ms_warn("event=backoff qid=%s group=%s label=%s rule=%s action=%s factor=%.2f for_s=%lld "
            "ramp_s=%lld reply=%s",
            log_id, ds->key, ds->label, r->name, b.suspend ? "suspend" : "throttle", b.factor,
            (long long)(r->for_ms / 1000), (long long)(r->ramp_ms / 1000),
            ms_log_quote(q, sizeof(q), b.reason, strlen(b.reason)));
    gauges_update(s, now);
}

void wk_shaper_session(wk_shaper *s, const char *label, int on)
{
    struct label_stats *l = label_get(s, label);

    if (on)
        ms_counter_inc(l->attempts);
    ms_gauge_add(l->sessions, on ? 1 : -1);
}

void wk_shaper_count(wk_shaper *s, const char *label, enum wk_outcome o, enum wk_category cat)
{
    struct label_stats *l;

    if (s == NULL || label == NULL)
        return;
    l = label_get(s, label);
    if (o == WK_OUTCOME_DELIVERED)
        ms_counter_inc(l->delivered);
    else
        ms_counter_inc(category_counter(l, o == WK_OUTCOME_BOUNCED, cat));
}
