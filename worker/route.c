/*
 * route.c - routing jobs on the loop (route.h).
 *
 * A job is MX -> HOSTS -> done, or MX -> HOSTS -> TLSA -> done for DANE
 * (TLSA at a host's CNAME-expanded name first, then at its own name, RFC
 * 7672 §2.2.2).  Resolver replies find their job by a cookie
 * (job id << 8 | query number); a reply for a job that is gone is dropped.
 * Jobs end through job_finish(), which unlinks the job, calls back (unless
 * cancelled) and closes the job's timer; memory is freed in the close
 * callback.
 */
#include "route.h"
#include "ms_dane.h"
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
/* In a TLSA query's cookie, above the host index (< MS_MX_HOSTS_MAX):
 * the query is at the CNAME-expanded name. */
#define TLSA_EXPANDED 0x80u
_Static_assert(MS_MX_HOSTS_MAX < TLSA_EXPANDED, "host index and flag overlap");

enum job_state { JOB_MX, JOB_HOSTS, JOB_TLSA, JOB_DONE };

struct host_addrs {
    struct in_addr v4[WK_ROUTE_ADDRS_MAX];
    struct in6_addr v6[WK_ROUTE_ADDRS_MAX];
    size_t n4, n6;
    int tempfail;
    int insecure;          /* an address answer was not validated */
    char expanded[MS_DNS_NAME_MAX + 1]; /* the name a validated CNAME chain led the
                                         * host name to ("": none, RFC 7672 §2.2.2) */
    enum wk_dane_state dane;
    struct ms_tlsa tlsa[MS_TLS_TLSA_MAX]; /* usable records; data in tlsa_data */
    size_t ntlsa;
    unsigned char *tlsa_data;
};

struct job {
    struct ms_list node;   /* on wk_router.jobs until unlinked */
    wk_router *r;
    uint64_t job_id;
    enum job_state state;
    char host[MS_DNS_NAME_MAX + 1];
    int port, no_mx;
    int implicit;
    int dane;              /* look TLSA records up */
    int mx_secure;         /* the host names came from validated DNS (or the
                            * configuration) */
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

const char *wk_dane_state_name(enum wk_dane_state s)
{
    static const char *const names[] = {"none", "usable", "unusable", "failed"};
    return (unsigned)s < 4 ? names[s] : "none";
}

static void job_closed(uv_handle_t *h)
{
    struct job *j = h->data;
    size_t i;

    for (i = 0; i < MS_MX_HOSTS_MAX; i++)
        free(j->addrs[i].tlsa_data);
    free(j);
}

/* The usable records of every host, in one block. */
static struct wk_route_tlsa *tlsa_pack(const struct ms_tlsa *const *rrs, size_t n)
{
    struct wk_route_tlsa *t;
    size_t i, bytes = 0;
    unsigned char *p;

    for (i = 0; i < n; i++)
        bytes += rrs[i]->len;
    t = ms_malloc(sizeof(*t) + n * sizeof(t->rr[0]) + bytes);
    t->n = n;
    p = (unsigned char *)&t->rr[n];
    for (i = 0; i < n; i++) {
        t->rr[i] = *rrs[i];
        memcpy(p, rrs[i]->data, rrs[i]->len);
        t->rr[i].data = p;
        p += rrs[i]->len;
    }
    return t;
}

struct wk_route_tlsa *wk_route_tlsa_dup(const struct wk_route_tlsa *t)
{
    const struct ms_tlsa *rrs[WK_ROUTE_ADDRS_MAX * MS_TLS_TLSA_MAX];
    size_t i;

    if (t == NULL)
        return NULL;
    for (i = 0; i < t->n && i < sizeof(rrs) / sizeof(rrs[0]); i++)
        rrs[i] = &t->rr[i];
    return tlsa_pack(rrs, i);
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

    const struct ms_tlsa *rrs[MS_MX_HOSTS_MAX * MS_TLS_TLSA_MAX];
    size_t nrrs = 0, first;

    for (h = 0; h < j->nmx; h++) {
        struct host_addrs *a = &j->addrs[h];
        tempfail |= a->tempfail;
        first = nrrs;
        for (k = 0; k < a->ntlsa; k++)
            rrs[nrrs++] = &a->tlsa[k];
        for (k = 0; k < a->n4 + a->n6; k++) {
            struct wk_route_addr *o;
            if (n == WK_ROUTE_ADDRS_MAX) {
                dropped++;
                continue;
            }
            o = &out[n++];
            snprintf(o->host, sizeof(o->host), "%s", j->mx[h].name);
            o->preference = j->mx[h].preference;
            o->dane = (uint8_t)a->dane;
            o->tlsa_first = (uint16_t)first;
            o->ntlsa = (uint16_t)a->ntlsa;
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
        res.tlsa = nrrs ? tlsa_pack(rrs, nrrs) : NULL;
        job_finish(j, &res);
        free((void *)res.tlsa);
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

static void job_query_tlsa(struct job *j);
static void on_tlsa(void *arg, uint64_t cookie, const struct ms_dns_result *res);

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
    if (!res->secure)
        a->insecure = 1;
    if (res->status == MS_DNS_TEMPFAIL || res->status == MS_DNS_BOGUS)
        a->tempfail = 1;
    else if (res->status == MS_DNS_OK) {
        if (res->secure && res->canonical && !a->expanded[0])
            snprintf(a->expanded, sizeof(a->expanded), "%s", res->canonical);
        for (i = 0; i < res->n; i++) {
            if (res->rr[i].type == MS_DNS_A && a->n4 < WK_ROUTE_ADDRS_MAX)
                a->v4[a->n4++] = res->rr[i].u.a;
            else if (res->rr[i].type == MS_DNS_AAAA && a->n6 < WK_ROUTE_ADDRS_MAX)
                a->v6[a->n6++] = res->rr[i].u.aaaa;
        }
    }
    if (--j->pending == 0)
        job_query_tlsa(j);
}

static void hosts_done_cb(uv_timer_t *t)
{
    job_hosts_done(t->data);
}

/* The TLSA query of host h: at the CNAME-expanded name (TLSA_EXPANDED in
 * the cookie) or the host's own.  0, or MS_E* (no callback). */
static int tlsa_query(struct job *j, size_t h, int expanded)
{
    char name[MS_DNS_NAME_MAX + 1];

    if ((size_t)snprintf(name, sizeof(name), "_%d._tcp.%s", j->port,
                         expanded ? j->addrs[h].expanded : j->mx[h].name) >= sizeof(name))
        return MS_EINVAL; /* a name too long to ask about */
    return ms_resolver_query(j->r->resolver, name, MS_DNS_TLSA, on_tlsa, j->r,
                             j->job_id << QBITS | h | (expanded ? TLSA_EXPANDED : 0));
}

/* RFC 7672 §2.2: the answer for _port._tcp.host. */
static void on_tlsa(void *arg, uint64_t cookie, const struct ms_dns_result *res)
{
    wk_router *r = arg;
    struct job *j = job_lookup(r, cookie >> QBITS);
    unsigned h = (unsigned)(cookie & (TLSA_EXPANDED - 1));
    struct host_addrs *a;
    size_t i, bytes = 0;
    unsigned char *p;

    if (j == NULL || j->state != JOB_TLSA || h >= j->nmx)
        return;
    a = &j->addrs[h];
    if ((cookie & TLSA_EXPANDED) &&
        (res->status == MS_DNS_NXDOMAIN || res->status == MS_DNS_NODATA ||
         (res->status == MS_DNS_OK && !res->secure))) {
        /* §2.2.2: none at the expanded name: then at the original one. */
        ms_debug("event=tlsa host=%s expanded=%s records=none", j->mx[h].name, a->expanded);
        if (tlsa_query(j, h, 0) == 0)
            return; /* still pending */
        a->dane = WK_DANE_FAILED;
        if (--j->pending == 0)
            job_hosts_done(j);
        return;
    }
    if (res->status == MS_DNS_TEMPFAIL || res->status == MS_DNS_BOGUS) {
        a->dane = WK_DANE_FAILED; /* §2.2: never treated as "no records" */
    } else if (res->status != MS_DNS_OK || !res->secure) {
        a->dane = WK_DANE_NONE;   /* no records, or insecure ones (§2.2) */
    } else {
        for (i = 0; i < res->n; i++)
            if (ms_dane_tlsa_usable(&res->rr[i]) && a->ntlsa < MS_TLS_TLSA_MAX) {
                bytes += res->rr[i].u.tlsa.len;
                a->ntlsa++;
            }
        a->dane = a->ntlsa ? WK_DANE_USABLE : WK_DANE_UNUSABLE;
        a->tlsa_data = p = ms_malloc(bytes ? bytes : 1);
        a->ntlsa = 0;
        for (i = 0; i < res->n && a->ntlsa < MS_TLS_TLSA_MAX; i++) {
            const struct ms_dns_rr *rr = &res->rr[i];
            struct ms_tlsa *t;
            if (!ms_dane_tlsa_usable(rr))
                continue;
            t = &a->tlsa[a->ntlsa++];
            t->usage = rr->u.tlsa.usage;
            t->selector = rr->u.tlsa.selector;
            t->mtype = rr->u.tlsa.mtype;
            memcpy(p, rr->u.tlsa.data, rr->u.tlsa.len);
            t->data = p;
            t->len = rr->u.tlsa.len;
            p += rr->u.tlsa.len;
        }
    }
    ms_debug("event=tlsa host=%s secure=%d state=%s records=%zu", j->mx[h].name, res->secure,
             wk_dane_state_name(a->dane), a->ntlsa);
    if (--j->pending == 0)
        job_hosts_done(j);
}

/* Addresses known: for a DANE job, the TLSA records of every host whose
 * name and addresses were validated (RFC 7672 §2.2.1, §2.2.2); then done. */
static void job_query_tlsa(struct job *j)
{
    size_t h;

    j->state = JOB_TLSA;
    if (j->dane && j->mx_secure)
        for (h = 0; h < j->nmx; h++) {
            struct host_addrs *a = &j->addrs[h];
            if (a->insecure || a->n4 + a->n6 == 0)
                continue;
            /* §2.2.2: a host name that is a CNAME, validated all the way:
             * the expanded name first. */
            if (tlsa_query(j, h, a->expanded[0] != '\0') < 0)
                a->dane = WK_DANE_FAILED;
            else
                j->pending++;
        }
    if (j->pending == 0)
        job_hosts_done(j);
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
    j->mx_secure = res->secure; /* RFC 7672 §2.2.1: the MX RRset, or its denial */
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

static uint64_t router_start(wk_router *r, const char *host, int port, int no_mx, int dane,
                             wk_route_cb cb, void *arg, uint64_t id);

uint64_t wk_router_resolve(wk_router *r, const char *host, int port, int no_mx, wk_route_cb cb,
                           void *arg, uint64_t id)
{
    return router_start(r, host, port, no_mx, 0, cb, arg, id);
}

uint64_t wk_router_resolve_dane(wk_router *r, const char *host, int port, int no_mx,
                                wk_route_cb cb, void *arg, uint64_t id)
{
    return router_start(r, host, port, no_mx, 1, cb, arg, id);
}

static uint64_t router_start(wk_router *r, const char *host, int port, int no_mx, int dane,
                             wk_route_cb cb, void *arg, uint64_t id)
{
    struct job *j = ms_calloc(1, sizeof(*j));

    j->r = r;
    j->job_id = ++r->seq;
    j->state = JOB_MX;
    snprintf(j->host, sizeof(j->host), "%s", host);
    j->port = port;
    j->no_mx = no_mx;
    j->dane = dane;
    /* A next hop from the configuration is not an MX answer: its name is
     * as trustworthy as the file it came from (RFC 7672 §2.2.1 asks for a
     * secure MX RRset only when there was an MX lookup). */
    j->mx_secure = no_mx;
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
