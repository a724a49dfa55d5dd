/*
 * route.c - routing jobs on the loop (route.h).
 *
 * A job is MX -> HOSTS -> done.  Resolver replies find their job by a cookie
 * (job id << 8 | query number); a reply for a job that is gone is dropped.
 * Jobs end through job_finish(), which unlinks the job, calls back (unless
 * cancelled) and closes the job's timer; memory is freed in the close
 * callback.
 */
#include "route.h"
#include "ms_error.h"
#include "ms_idmap.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QBITS 8

enum job_state { JOB_MX, JOB_HOSTS, JOB_DONE };

struct host_addrs {
    struct in_addr v4[WK_ROUTE_ADDRS_MAX];
    struct in6_addr v6[WK_ROUTE_ADDRS_MAX];
    size_t n4, n6;
    int tempfail;
};

struct job {
    struct ms_list node;   /* on wk_router.jobs until unlinked */
    wk_router *r;
    uint64_t job_id;
    enum job_state state;
    char host[MS_DNS_NAME_MAX + 1];
    int port, no_mx;
    int implicit;
    struct ms_mx_host mx[MS_MX_HOSTS_MAX];
    struct host_addrs addrs[MS_MX_HOSTS_MAX];
    size_t nmx;
    int pending;
    /* The answer when it is known before any query (literal, no resolver). */
    struct wk_route_result early;
    struct wk_route_addr early_addr;
    uv_timer_t timer;
    wk_route_cb cb;
    void *arg;
    uint64_t id;
};

struct wk_router {
    uv_loop_t *loop;
    ms_resolver *resolver;
    struct ms_list jobs;       /* struct job.node, running */
    struct ms_idmap by_id;     /* job_id -> struct job, the same jobs */
    uint64_t seq;
};

static uint32_t route_random(void *arg)
{
    (void)arg;
    return arc4random();
}

wk_router *wk_router_new(uv_loop_t *loop, ms_resolver *resolver)
{
    wk_router *r = ms_calloc(1, sizeof(*r));

    r->loop = loop;
    r->resolver = resolver;
    ms_list_init(&r->jobs);
    ms_idmap_init(&r->by_id);
    return r;
}

size_t wk_router_pending(const wk_router *r)
{
    return r->by_id.count;
}

/* A resolver reply or a cancel finds its job by id (never reused: job ids
 * count up), so one for a job that is gone finds nothing. */
static struct job *job_lookup(wk_router *r, uint64_t job_id)
{
    return ms_idmap_get(&r->by_id, job_id);
}

static void job_closed(uv_handle_t *h)
{
    free(h->data);
}

static void job_unlink(struct job *j)
{
    wk_router *r = j->r;

    ms_list_remove(&j->node);
    ms_idmap_del(&r->by_id, j->job_id);
    j->state = JOB_DONE;
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, job_closed);
}

static void job_finish(struct job *j, const struct wk_route_result *res)
{
    wk_route_cb cb = j->cb;

    job_unlink(j);
    if (cb)
        cb(j->arg, j->id, res);
}

static void job_fail(struct job *j, enum wk_route_status st, int code, const char *dsn,
                     const char *text, int dns_failed)
{
    struct wk_route_result res;

    memset(&res, 0, sizeof(res));
    res.status = st;
    res.code = code;
    res.dsn = dsn;
    res.text = text;
    res.dns_failed = dns_failed;
    job_finish(j, &res);
}

/* All address queries answered: list the addresses, hosts in order. */
static void job_hosts_done(struct job *j)
{
    struct wk_route_addr *out = ms_calloc(WK_ROUTE_ADDRS_MAX, sizeof(*out));
    struct wk_route_result res;
    char text[MS_DNS_NAME_MAX + 128];
    size_t h, k, n = 0;
    int tempfail = 0, dropped = 0;

    for (h = 0; h < j->nmx; h++) {
        struct host_addrs *a = &j->addrs[h];
        tempfail |= a->tempfail;
        for (k = 0; k < a->n4 + a->n6; k++) {
            struct wk_route_addr *o;
            if (n == WK_ROUTE_ADDRS_MAX) {
                dropped++;
                continue;
            }
            o = &out[n++];
            snprintf(o->host, sizeof(o->host), "%s", j->mx[h].name);
            o->preference = j->mx[h].preference;
            if (k < a->n4) {
                struct sockaddr_in *sin = (struct sockaddr_in *)&o->ss;
                sin->sin_family = AF_INET;
                sin->sin_addr = a->v4[k];
                sin->sin_port = htons((uint16_t)j->port);
            } else {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&o->ss;
                sin6->sin6_family = AF_INET6;
                sin6->sin6_addr = a->v6[k - a->n4];
                sin6->sin6_port = htons((uint16_t)j->port);
            }
        }
    }
    if (dropped)
        ms_warn("event=route_addresses_dropped host=%s kept=%d dropped=%d", j->host,
                WK_ROUTE_ADDRS_MAX, dropped);
    if (n > 0) {
        memset(&res, 0, sizeof(res));
        res.status = WK_ROUTE_OK;
        res.n = n;
        res.addrs = out;
        res.dns_failed = tempfail;
        job_finish(j, &res);
    } else if (tempfail) {
        snprintf(text, sizeof(text), "temporary failure looking up the addresses of %s%s",
                 j->nmx > 1 || !j->implicit ? "the mail hosts of " : "", j->host);
        job_fail(j, WK_ROUTE_DEFER, 0, "4.4.3", text, 1);
    } else if (j->implicit) {
        snprintf(text, sizeof(text), "Host or domain name not found: %s has no MX, A or AAAA "
                 "records", j->host);
        job_fail(j, WK_ROUTE_BOUNCE, 550, "5.1.2", text, 0);
    } else {
        snprintf(text, sizeof(text), "no mail host of %s has an address", j->host);
        job_fail(j, WK_ROUTE_DEFER, 0, "4.4.3", text, 0);
    }
    free(out);
}

static void on_addr(void *arg, uint64_t cookie, const struct ms_dns_result *res)
{
    wk_router *r = arg;
    struct job *j = job_lookup(r, cookie >> QBITS);
    unsigned q = (unsigned)(cookie & ((1u << QBITS) - 1));
    struct host_addrs *a;
    size_t i;

    if (j == NULL || j->state != JOB_HOSTS || q / 2 >= j->nmx)
        return;
    a = &j->addrs[q / 2];
    if (res->status == MS_DNS_TEMPFAIL || res->status == MS_DNS_BOGUS)
        a->tempfail = 1;
    else if (res->status == MS_DNS_OK)
        for (i = 0; i < res->n; i++) {
            if (res->rr[i].type == MS_DNS_A && a->n4 < WK_ROUTE_ADDRS_MAX)
                a->v4[a->n4++] = res->rr[i].u.a;
            else if (res->rr[i].type == MS_DNS_AAAA && a->n6 < WK_ROUTE_ADDRS_MAX)
                a->v6[a->n6++] = res->rr[i].u.aaaa;
        }
    if (--j->pending == 0)
        job_hosts_done(j);
}

static void hosts_done_cb(uv_timer_t *t)
{
    job_hosts_done(t->data);
}

/* Ask for A and AAAA of every host at once. */
static void job_query_hosts(struct job *j)
{
    size_t h;
    int t;

    j->state = JOB_HOSTS;
    for (h = 0; h < j->nmx; h++)
        for (t = 0; t < 2; t++) {
            if (ms_resolver_query(j->r->resolver, j->mx[h].name, t ? MS_DNS_AAAA : MS_DNS_A,
                                  on_addr, j->r, j->job_id << QBITS | (h * 2 + (size_t)t)) < 0)
                j->addrs[h].tempfail = 1;
            else
                j->pending++;
        }
    if (j->pending == 0) /* never call back from inside wk_router_resolve() */
        uv_timer_start(&j->timer, hosts_done_cb, 0, 0);
}

static void on_mx(void *arg, uint64_t cookie, const struct ms_dns_result *res)
{
    wk_router *r = arg;
    struct job *j = job_lookup(r, cookie >> QBITS);
    char text[MS_DNS_NAME_MAX + 128];
    enum ms_mx_verdict v;

    if (j == NULL || j->state != JOB_MX)
        return;
    j->pending = 0;
    v = ms_mx_order(res, j->host, route_random, NULL, j->mx, MS_MX_HOSTS_MAX, &j->nmx);
    switch (v) {
    case MS_MX_NULL:
        /* RFC 7505 §4.2. */
        snprintf(text, sizeof(text), "%s does not accept mail (null MX)", j->host);
        job_fail(j, WK_ROUTE_BOUNCE, 556, "5.1.10", text, 0);
        return;
    case MS_MX_NXDOMAIN:
        snprintf(text, sizeof(text), "Host or domain name not found: %s", j->host);
        job_fail(j, WK_ROUTE_BOUNCE, 550, "5.1.2", text, 0);
        return;
    case MS_MX_TEMPFAIL:
        snprintf(text, sizeof(text), "temporary failure looking up the MX records of %s",
                 j->host);
        job_fail(j, WK_ROUTE_DEFER, 0, "4.4.3", text, 1);
        return;
    case MS_MX_IMPLICIT:
        j->implicit = 1;
        break;
    case MS_MX_HOSTS:
        break;
    }
    ms_debug("event=mx host=%s hosts=%zu implicit=%d first=%s", j->host, j->nmx, j->implicit,
             j->mx[0].name);
    job_query_hosts(j);
}

static void early_cb(uv_timer_t *t)
{
    struct job *j = t->data;

    if (j->early.status == WK_ROUTE_OK)
        j->early.addrs = &j->early_addr;
    job_finish(j, &j->early);
}

uint64_t wk_router_resolve(wk_router *r, const char *host, int port, int no_mx, wk_route_cb cb,
                           void *arg, uint64_t id)
{
    struct job *j = ms_calloc(1, sizeof(*j));

    j->r = r;
    j->job_id = ++r->seq;
    j->state = JOB_MX;
    snprintf(j->host, sizeof(j->host), "%s", host);
    j->port = port;
    j->no_mx = no_mx;
    j->cb = cb;
    j->arg = arg;
    j->id = id;
    uv_timer_init(r->loop, &j->timer);
    j->timer.data = j;
    ms_list_insert_head(&r->jobs, &j->node);
    ms_idmap_put(&r->by_id, j->job_id, j);

    if (ms_ip_sockaddr(host, port, &j->early_addr.ss) == 0) {
        snprintf(j->early_addr.host, sizeof(j->early_addr.host), "%s", host);
        j->early.status = WK_ROUTE_OK;
        j->early.n = 1;
        uv_timer_start(&j->timer, early_cb, 0, 0);
    } else if (r->resolver == NULL || strlen(host) == 0) {
        j->early.status = WK_ROUTE_DEFER;
        j->early.dsn = "4.4.3";
        j->early.text = "no DNS resolver configured";
        j->early.dns_failed = 1;
        uv_timer_start(&j->timer, early_cb, 0, 0);
    } else if (no_mx) {
        j->nmx = 1;
        j->implicit = 0;
        snprintf(j->mx[0].name, sizeof(j->mx[0].name), "%s", host);
        job_query_hosts(j);
    } else if (ms_resolver_query(r->resolver, host, MS_DNS_MX, on_mx, r, j->job_id << QBITS) <
               0) {
        j->early.status = WK_ROUTE_DEFER;
        j->early.dsn = "4.4.3";
        j->early.text = "cannot start the MX lookup";
        j->early.dns_failed = 1;
        uv_timer_start(&j->timer, early_cb, 0, 0);
    }
    return j->job_id;
}

void wk_router_cancel(wk_router *r, uint64_t job)
{
    struct job *j = job_lookup(r, job);

    if (j)
        job_unlink(j);
}

void wk_router_free(wk_router *r)
{
    if (r == NULL)
        return;
    while (!ms_list_empty(&r->jobs))
        job_unlink(ms_list_entry(ms_list_first(&r->jobs), struct job, node));
    ms_idmap_free(&r->by_id);
    free(r);
}
