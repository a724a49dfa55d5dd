/*
 * mtasts.c - MTA-STS lookups on the loop (mtasts.h).
 *
 * A job is (TXT and cache at once) -> [address of mta-sts.<domain> ->
 * HTTPS GET -> cache it] -> done.  Replies find their job by a cookie (job
 * id << 2 | step); a reply for a job that is gone is dropped.  Jobs end
 * through job_finish(), which unlinks the job, calls back and closes the
 * job's timer; memory is freed in the close callback.
 */
#include "mtasts.h"
#include "ms_error.h"
#include "ms_idmap.h"
#include "ms_keys.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum step { STEP_TXT, STEP_CACHE, STEP_ADDR, STEP_FETCH };

struct job {
    struct ms_list node;             /* on wk_mtasts.list until unlinked */
    wk_mtasts *m;
    uint64_t job_id;
    char domain[MS_DNS_NAME_MAX + 1];
    int pending;                     /* TXT and cache answers still due */
    int txt_ok;                      /* one valid STS TXT record */
    char txt_id[MS_MTASTS_ID_MAX + 1];
    int cached;                      /* a policy came from the cache */
    struct wk_mtasts_result cache;
    int done;
    uv_timer_t timer;
    wk_mtasts_cb cb;
    void *arg;
    uint64_t id;
};

struct wk_mtasts {
    uv_loop_t *loop;
    ms_resolver *resolver;
    ms_redis *redis;
    ms_https *https;
    struct ms_idmap jobs;
    struct ms_list list;             /* the same jobs */
    uint64_t seq;
};

wk_mtasts *wk_mtasts_new(uv_loop_t *loop, ms_resolver *resolver, ms_redis *redis,
                         ms_https *https)
{
    wk_mtasts *m = ms_calloc(1, sizeof(*m));

    m->loop = loop;
    m->resolver = resolver;
    m->redis = redis;
    m->https = https;
    ms_idmap_init(&m->jobs);
    ms_list_init(&m->list);
    return m;
}

void wk_mtasts_attach(wk_mtasts *m, ms_redis *redis)
{
    m->redis = redis;
}

static void job_closed(uv_handle_t *h)
{
    free(h->data);
}

static void job_unlink(struct job *j)
{
    ms_idmap_del(&j->m->jobs, j->job_id);
    ms_list_remove(&j->node);
    if (j->m->https)
        ms_https_cancel(j->m->https, j->job_id << 2 | STEP_FETCH);
    j->done = 1;
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, job_closed);
}

static void job_finish(struct job *j, const struct wk_mtasts_result *res)
{
    wk_mtasts_cb cb = j->cb;

    job_unlink(j);
    ms_debug("event=mta_sts domain=%s source=%s mode=%s id=%s", j->domain, res->source,
             res->have ? ms_mtasts_mode_name(res->policy.mode) : "-", res->have ? res->id : "-");
    if (cb)
        cb(j->arg, j->id, res);
}

/* No fresh policy: the cached one while it lasts (§5.1), else none.
 * failure: why a fetch failed (RFC 8460 §4.3.2.3), MS_TLSRPT_OK: none. */
static void job_finish_cached(struct job *j, const char *source, enum ms_tlsrpt_result failure)
{
    struct wk_mtasts_result none = {.source = "none", .failure = failure};

    if (j->cached) {
        j->cache.source = source;
        j->cache.failure = failure;
        job_finish(j, &j->cache);
    } else {
        job_finish(j, &none);
    }
}

static struct job *job_of(wk_mtasts *m, uint64_t cookie)
{
    struct job *j = ms_idmap_get(&m->jobs, cookie >> 2);

    return j && !j->done ? j : NULL;
}

/* "<id>\n<policy file>" from the cache. */
static int cache_parse(const char *s, size_t len, struct wk_mtasts_result *out)
{
    const char *nl = memchr(s, '\n', len);
    size_t n;

    if (nl == NULL || (n = (size_t)(nl - s)) == 0 || n > MS_MTASTS_ID_MAX)
        return MS_EINVAL;
    memset(out, 0, sizeof(*out));
    memcpy(out->id, s, n);
    out->id[n] = '\0';
    if (ms_mtasts_policy_parse(nl + 1, len - n - 1, &out->policy) < 0)
        return MS_EINVAL;
    out->have = out->policy.mode != MS_MTASTS_NONE;
    return 0;
}

static void on_https(void *arg, uint64_t cookie, const struct ms_https_result *res);

static void on_addr(void *arg, uint64_t cookie, const struct ms_dns_result *res)
{
    wk_mtasts *m = arg;
    struct job *j = job_of(m, cookie);
    char host[MS_DNS_NAME_MAX + 16], ip[INET_ADDRSTRLEN];
    size_t i;

    if (j == NULL)
        return;
    for (i = 0; res->status == MS_DNS_OK && i < res->n; i++)
        if (res->rr[i].type == MS_DNS_A)
            break;
    if (res->status != MS_DNS_OK || i == res->n) {
        ms_warn("event=mta_sts_fetch_failed domain=%s error=\"no address for mta-sts.%s\"",
                j->domain, j->domain);
        job_finish_cached(j, "stale", MS_TLSRPT_STS_FETCH_ERROR);
        return;
    }
    inet_ntop(AF_INET, &res->rr[i].u.a, ip, sizeof(ip));
    snprintf(host, sizeof(host), "mta-sts.%s", j->domain);
    if (ms_https_get(m->https, host, ip, WK_MTASTS_PATH, on_https, m,
                     j->job_id << 2 | STEP_FETCH) < 0) {
        ms_warn("event=mta_sts_fetch_failed domain=%s error=\"cannot start the fetch\"",
                j->domain);
        job_finish_cached(j, "stale", MS_TLSRPT_STS_FETCH_ERROR);
    }
}

static void on_https(void *arg, uint64_t cookie, const struct ms_https_result *res)
{
    wk_mtasts *m = arg;
    struct job *j = job_of(m, cookie);
    struct wk_mtasts_result out;
    const char *why = NULL;
    enum ms_tlsrpt_result failure = MS_TLSRPT_STS_FETCH_ERROR;
    char key[sizeof(MS_KEY_MTASTS) + MS_DNS_NAME_MAX], age[16], *val;

    if (j == NULL)
        return;
    memset(&out, 0, sizeof(out));
    if (res->err < 0) {
        why = res->why;
        if (res->cert)
            failure = MS_TLSRPT_STS_WEBPKI_INVALID;
    } else if (res->status != 200) {
        why = "HTTP status not 200"; /* §3.3: no redirects, only 200 */
    } else if (res->content_type == NULL ||
               strncasecmp(res->content_type, "text/plain", 10) != 0) {
        why = "media type not text/plain";
        failure = MS_TLSRPT_STS_INVALID;
    } else if (ms_mtasts_policy_parse(res->body, res->len, &out.policy) < 0) {
        why = "not a valid policy";
        failure = MS_TLSRPT_STS_INVALID;
    }
    if (why) {
        ms_warn("event=mta_sts_fetch_failed domain=%s status=%ld error=\"%s\"", j->domain,
                res->status, why);
        job_finish_cached(j, "stale", failure);
        return;
    }
    memcpy(out.id, j->txt_id, sizeof(out.id));
    out.have = out.policy.mode != MS_MTASTS_NONE;
    out.source = "fetched";
    /* §5: cached for max_age, for the whole cluster. */
    if (m->redis && out.policy.max_age > 0) {
        const char *argv[5] = {"SET", key, NULL, "EX", age};
        size_t idl = strlen(j->txt_id);
        val = ms_malloc(idl + 1 + res->len + 1);
        memcpy(val, j->txt_id, idl);
        val[idl] = '\n';
        memcpy(val + idl + 1, res->body, res->len);
        val[idl + 1 + res->len] = '\0';
        snprintf(key, sizeof(key), MS_KEY_MTASTS "%s", j->domain);
        snprintf(age, sizeof(age), "%u", out.policy.max_age);
        argv[2] = val;
        /* A policy holding a NUL is cut there, and then fails to parse
         * when read back: it is fetched again. */
        ms_redis_fire(m->redis, NULL, 5, argv);
        free(val);
    }
    ms_info("event=mta_sts_fetched domain=%s id=%s mode=%s max_age=%u mx=%zu", j->domain,
            out.id, ms_mtasts_mode_name(out.policy.mode), out.policy.max_age, out.policy.nmx);
    job_finish(j, &out);
}

/* TXT and cache both answered. */
static void job_decide(struct job *j)
{
    char host[MS_DNS_NAME_MAX + 1];

    if (!j->txt_ok) {
        job_finish_cached(j, "cache", MS_TLSRPT_OK); /* §5.1: the TXT record may be stripped */
        return;
    }
    if (j->cached && strcmp(j->cache.id, j->txt_id) == 0) {
        job_finish_cached(j, "cache", MS_TLSRPT_OK);
        return;
    }
    /* A new id, or nothing cached: fetch (§3.3). */
    if ((size_t)snprintf(host, sizeof(host), "mta-sts.%s", j->domain) >= sizeof(host) ||
        ms_resolver_query(j->m->resolver, host, MS_DNS_A, on_addr, j->m,
                          j->job_id << 2 | STEP_ADDR) < 0)
        job_finish_cached(j, "stale", MS_TLSRPT_STS_FETCH_ERROR);
}

static void on_txt(void *arg, uint64_t cookie, const struct ms_dns_result *res)
{
    wk_mtasts *m = arg;
    struct job *j = job_of(m, cookie);

    if (j == NULL)
        return;
    j->txt_ok = ms_mtasts_txt_pick(res, j->txt_id) == 0;
    if (--j->pending == 0)
        job_decide(j);
}

static void on_cache(void *arg, uint64_t cookie, const struct ms_redis_reply *r)
{
    wk_mtasts *m = arg;
    struct job *j = job_of(m, cookie);

    if (j == NULL)
        return;
    if (r->type == MS_REDIS_STR && cache_parse(r->str, r->len, &j->cache) == 0)
        j->cached = 1;
    if (--j->pending == 0)
        job_decide(j);
}

static void early_cb(uv_timer_t *t)
{
    struct job *j = t->data;

    if (!j->done && j->pending == 0)
        job_decide(j);
}

uint64_t wk_mtasts_lookup(wk_mtasts *m, const char *domain, wk_mtasts_cb cb, void *arg,
                          uint64_t id)
{
    struct job *j = ms_calloc(1, sizeof(*j));
    char name[MS_DNS_NAME_MAX + 1], key[sizeof(MS_KEY_MTASTS) + MS_DNS_NAME_MAX];

    j->m = m;
    j->job_id = ++m->seq;
    snprintf(j->domain, sizeof(j->domain), "%s", domain);
    j->cb = cb;
    j->arg = arg;
    j->id = id;
    uv_timer_init(m->loop, &j->timer);
    j->timer.data = j;
    ms_idmap_put(&m->jobs, j->job_id, j);
    ms_list_insert_head(&m->list, &j->node);
    if (m->resolver && (size_t)snprintf(name, sizeof(name), "_mta-sts.%s", domain) < sizeof(name) &&
        ms_resolver_query(m->resolver, name, MS_DNS_TXT, on_txt, m,
                          j->job_id << 2 | STEP_TXT) == 0)
        j->pending++;
    if (m->redis) {
        const char *argv[2] = {"GET", key};
        size_t lens[2];
        snprintf(key, sizeof(key), MS_KEY_MTASTS "%s", domain);
        lens[0] = 3;
        lens[1] = strlen(key);
        if (ms_redis_command(m->redis, on_cache, m, j->job_id << 2 | STEP_CACHE, 2, argv,
                             lens) == 0)
            j->pending++;
    }
    if (j->pending == 0) /* never call back from inside the lookup */
        uv_timer_start(&j->timer, early_cb, 0, 0);
    return j->job_id;
}

void wk_mtasts_cancel(wk_mtasts *m, uint64_t job)
{
    struct job *j = ms_idmap_get(&m->jobs, job);

    if (j && !j->done)
        job_unlink(j);
}

void wk_mtasts_stop(wk_mtasts *m)
{
    if (m == NULL)
        return;
    while (!ms_list_empty(&m->list))
        job_unlink(ms_list_entry(ms_list_first(&m->list), struct job, node));
    m->resolver = NULL;
    m->redis = NULL;
    m->https = NULL;
}

void wk_mtasts_free(wk_mtasts *m)
{
    if (m == NULL)
        return;
    wk_mtasts_stop(m);
    ms_idmap_free(&m->jobs);
    free(m);
}
