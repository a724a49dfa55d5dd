#include "ms_metrics.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

struct series {
    struct series *next;
    char *labels;
    union {
        struct ms_counter *counter;
        struct ms_gauge *gauge;
        struct ms_histogram *histogram;
    } u;
};

struct family {
    struct family *next;
    char *name;
    char *help;
    enum metric_type type;
    struct series *series, **series_tail;
};

struct ms_counter {
    _Atomic uint64_t value;
};

struct ms_gauge {
    _Atomic int64_t value;
};

struct ms_histogram {
    size_t nbounds;
    double bounds[MS_HISTOGRAM_BUCKETS_MAX];
    _Atomic uint64_t buckets[MS_HISTOGRAM_BUCKETS_MAX + 1]; /* last is +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_bits; /* a double, updated with compare-and-swap */
};

const double ms_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,  0.5,    1,     2.5,  5,     10,   30, 60};
const size_t ms_latency_buckets_n = sizeof(ms_latency_buckets) / sizeof(ms_latency_buckets[0]);

/* Most registration happens before the loops start; series with a label
 * learnt at run time (a destination) are added later, from any thread, so
 * the lists are changed and walked under one lock.  Values need none. */
static struct family *families, **families_tail = &families;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

/* Find or create the series; a new one gets its value (histograms: with
 * these bounds) before it is linked in, so the renderer never sees a
 * series without one. */
static struct series *series_get(const char *name, const char *help, const char *labels,
                                 enum metric_type type, const double *bounds, size_t nbounds)
{
    struct family *f;
    struct series *s;
    size_t i;

    if (labels == NULL)
        labels = "";
    pthread_mutex_lock(&registry_lock);
    for (f = families; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            break;
    if (f == NULL) {
        f = ms_calloc(1, sizeof(*f));
        f->name = ms_strdup(name);
        f->help = ms_strdup(help);
        f->type = type;
        f->series_tail = &f->series;
        *families_tail = f;
        families_tail = &f->next;
    } else if (f->type != type) {
        ms_panic("metric %s registered with two types", name);
    }
    for (s = f->series; s; s = s->next)
        if (strcmp(s->labels, labels) == 0)
            break;
    if (s == NULL) {
        s = ms_calloc(1, sizeof(*s));
        s->labels = ms_strdup(labels);
        switch (type) {
        case METRIC_COUNTER: s->u.counter = ms_calloc(1, sizeof(struct ms_counter)); break;
        case METRIC_GAUGE: s->u.gauge = ms_calloc(1, sizeof(struct ms_gauge)); break;
        case METRIC_HISTOGRAM:
            s->u.histogram = ms_calloc(1, sizeof(struct ms_histogram));
            s->u.histogram->nbounds = nbounds;
            for (i = 0; i < nbounds; i++)
                s->u.histogram->bounds[i] = bounds[i];
            break;
        }
        *f->series_tail = s;
        f->series_tail = &s->next;
    }
    pthread_mutex_unlock(&registry_lock);
    return s;
}

ms_counter *ms_counter_new(const char *name, const char *help, const char *labels)
{
    return series_get(name, help, labels, METRIC_COUNTER, NULL, 0)->u.counter;
}

void ms_counter_add(ms_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

uint64_t ms_counter_value(const ms_counter *c)
{
    return atomic_load_explicit(&((ms_counter *)c)->value, memory_order_relaxed);
}

ms_gauge *ms_gauge_new(const char *name, const char *help, const char *labels)
{
    return series_get(name, help, labels, METRIC_GAUGE, NULL, 0)->u.gauge;
}

void ms_gauge_set(ms_gauge *g, int64_t v)
{
    atomic_store_explicit(&g->value, v, memory_order_relaxed);
}

void ms_gauge_add(ms_gauge *g, int64_t delta)
{
    atomic_fetch_add_explicit(&g->value, delta, memory_order_relaxed);
}

int64_t ms_gauge_value(const ms_gauge *g)
{
    return atomic_load_explicit(&((ms_gauge *)g)->value, memory_order_relaxed);
}

ms_histogram *ms_histogram_new(const char *name, const char *help, const char *labels,
                               const double *bounds, size_t nbounds)
{
    size_t i;

    if (nbounds > MS_HISTOGRAM_BUCKETS_MAX)
        ms_panic("histogram %s: %zu buckets is over MS_HISTOGRAM_BUCKETS_MAX", name, nbounds);
    /* Prometheus reads the buckets as cumulative counts under ascending,
     * distinct bounds, with +Inf its own last bucket. */
    for (i = 0; i < nbounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            ms_panic("histogram %s: bound %zu is not finite and above the one before", name, i);
    return series_get(name, help, labels, METRIC_HISTOGRAM, bounds, nbounds)->u.histogram;
}

void ms_histogram_observe(ms_histogram *h, double v)
{
    uint64_t old, new;
    double sum;
    size_t i;

    for (i = 0; i < h->nbounds; i++)
        if (v <= h->bounds[i])
            break;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    do {
        memcpy(&sum, &old, sizeof(sum));
        sum += v;
        memcpy(&new, &sum, sizeof(new));
    } while (!atomic_compare_exchange_weak_explicit(&h->sum_bits, &old, new,
                                                    memory_order_relaxed, memory_order_relaxed));
}

/* Every integer of smaller magnitude is a double exactly (2^53), so it can
 * be printed with all its digits; past it %.0f would print digits the
 * double does not hold. */
#define METRICS_EXACT_INT_MAX 9007199254740992.0
/* "-1.2345678901234567e-308" and the NUL, with room to spare. */
#define METRICS_DOUBLE_LEN 32

/* Write v so that reading it back (strtod, Go's ParseFloat, Python's float)
 * gives the same double: integers as integers ("1048576", where %g printed
 * "1.04858e+06", i.e. 1048580), otherwise the fewest significant digits
 * that round-trip (17 always do), and the text format's spellings of the
 * infinities and NaN.  A bucket bound is a label value that must name
 * exactly the bound the buckets were counted with, and two close bounds
 * must never print the same. */
static void format_double(char out[METRICS_DOUBLE_LEN], double v)
{
    int prec;

    if (isnan(v)) {
        snprintf(out, METRICS_DOUBLE_LEN, "NaN");
    } else if (isinf(v)) {
        snprintf(out, METRICS_DOUBLE_LEN, "%s", v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < METRICS_EXACT_INT_MAX) {
        snprintf(out, METRICS_DOUBLE_LEN, "%.0f", v);
    } else {
        for (prec = 1; prec < 17; prec++) {
            snprintf(out, METRICS_DOUBLE_LEN, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                return;
        }
        snprintf(out, METRICS_DOUBLE_LEN, "%.17g", v);
    }
}

static int render_labels(struct ms_buf *out, const char *labels, const char *extra)
{
    if (*labels == '\0' && extra == NULL)
        return 0;
    return ms_buf_appendf(out, "{%s%s%s}", labels, *labels && extra ? "," : "",
                          extra ? extra : "");
}

static int render_histogram(struct ms_buf *out, const struct family *f, const struct series *s)
{
    struct ms_histogram *h = s->u.histogram;
    char le[METRICS_DOUBLE_LEN + sizeof("le=\"\"")], num[METRICS_DOUBLE_LEN];
    uint64_t cum = 0, sum_bits;
    double sum;
    size_t i;
    int r = 0;

    for (i = 0; i <= h->nbounds && r == 0; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        format_double(num, i < h->nbounds ? h->bounds[i] : INFINITY);
        snprintf(le, sizeof(le), "le=\"%s\"", num);
        r = ms_buf_appendf(out, "%s_bucket", f->name);
        if (r == 0)
            r = render_labels(out, s->labels, le);
        if (r == 0)
            r = ms_buf_appendf(out, " %llu\n", (unsigned long long)cum);
    }
    sum_bits = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    memcpy(&sum, &sum_bits, sizeof(sum));
    format_double(num, sum);
    if (r == 0)
        r = ms_buf_appendf(out, "%s_sum", f->name);
    if (r == 0)
        r = render_labels(out, s->labels, NULL);
    if (r == 0)
        r = ms_buf_appendf(out, " %s\n%s_count", num, f->name);
    if (r == 0)
        r = render_labels(out, s->labels, NULL);
    if (r == 0)
        r = ms_buf_appendf(out, " %llu\n",
                           (unsigned long long)atomic_load_explicit(&h->count,
                                                                    memory_order_relaxed));
    return r;
}

void ms_label_escape(char *out, size_t outlen, const char *value)
{
    size_t o = 0;

    if (outlen == 0)
        return;
    for (; *value; value++) {
        const char *rep = *value == '\\'   ? "\\\\"
                          : *value == '"'  ? "\\\""
                          : *value == '\n' ? "\\n"
                                           : NULL;
        size_t n = rep ? 2 : 1;
        if (o + n >= outlen)
            break;
        if (rep)
            memcpy(out + o, rep, 2);
        else
            out[o] = *value;
        o += n;
    }
    out[o] = '\0';
}

int ms_metrics_render(struct ms_buf *out)
{
    static const char *type_names[] = {"counter", "gauge", "histogram"};
    const struct family *f;
    const struct series *s;
    int r = 0;

    pthread_mutex_lock(&registry_lock);
    for (f = families; f && r == 0; f = f->next) {
        r = ms_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                           type_names[f->type]);
        for (s = f->series; s && r == 0; s = s->next) {
            switch (f->type) {
            case METRIC_COUNTER:
                r = ms_buf_appendf(out, "%s", f->name);
                if (r == 0)
                    r = render_labels(out, s->labels, NULL);
                if (r == 0)
                    r = ms_buf_appendf(out, " %llu\n",
                                       (unsigned long long)ms_counter_value(s->u.counter));
                break;
            case METRIC_GAUGE:
                r = ms_buf_appendf(out, "%s", f->name);
                if (r == 0)
                    r = render_labels(out, s->labels, NULL);
                if (r == 0)
                    r = ms_buf_appendf(out, " %lld\n", (long long)ms_gauge_value(s->u.gauge));
                break;
            case METRIC_HISTOGRAM:
                r = render_histogram(out, f, s);
                break;
            }
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return r;
}
