/*
 * ms_resolver.c - the only file that includes libunbound (ms_resolver.h).
 *
 * libunbound runs its resolver in a background thread (ub_ctx_async) and
 * signals completions on ub_fd(); a uv_poll on that fd calls ub_process(),
 * which runs our callbacks on the loop thread.
 */
#include "ms_resolver.h"
#include "ms_dane.h"
#include "ms_error.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unbound.h>

struct query {
    struct ms_list node;   /* on ms_resolver.queries until finished */
    ms_resolver *r;
    ms_resolve_cb cb;
    void *arg;
    uint64_t id;
    int async_id;
    enum ms_dns_type type;
    uv_timer_t timer;
    int done;
};

struct ms_resolver {
    uv_loop_t *loop;
    struct ub_ctx *ctx;
    uv_poll_t poll;
    int timeout_ms;
    struct ms_list queries;   /* struct query.node, unanswered */
    int pending;
    int closing;
};

static void query_closed(uv_handle_t *h)
{
    free(h->data);
}

static void query_finish(struct query *q)
{
    ms_resolver *r = q->r;

    ms_list_remove(&q->node);
    r->pending--;
    uv_timer_stop(&q->timer);
    uv_close((uv_handle_t *)&q->timer, query_closed);
}

/* Read a wire-format domain name (uncompressed, as libunbound hands rdata
 * out) into presentation form without the trailing dot. */
static int wire_name(const unsigned char *p, size_t len, char *out, size_t outlen)
{
    size_t i = 0, o = 0;
    unsigned lab;

    while (i < len) {
        lab = p[i++];
        if (lab == 0) {
            out[o] = '\0';
            return (int)i;
        }
        if (lab > 63 || i + lab > len || o + lab + 2 > outlen)
            return -1;
        if (o > 0)
            out[o++] = '.';
        memcpy(out + o, p + i, lab);
        o += lab;
        i += lab;
    }
    return -1;
}

static void deliver(struct query *q, struct ub_result *res, int err)
{
    struct ms_dns_rr rrs[MS_RESOLVER_RR_MAX];
    char names[MS_RESOLVER_RR_MAX][MS_DNS_NAME_MAX + 1];
    char canon[MS_DNS_NAME_MAX + 1];
    char *txt[MS_RESOLVER_RR_MAX];
    struct ms_dns_result out;
    size_t n = 0, i, j, tl;
    const unsigned char *d;
    int k;

    memset(&out, 0, sizeof(out));
    memset(txt, 0, sizeof(txt));
    if (err != 0 || res == NULL) {
        out.status = MS_DNS_TEMPFAIL;
    } else if (res->bogus) {
        out.status = MS_DNS_BOGUS;
    } else if (res->nxdomain) {
        /* A validated denial is secure too: DANE (RFC 7672 §2.2.1) needs to
         * know that "no MX" or "no TLSA" came from signed data. */
        out.status = MS_DNS_NXDOMAIN;
        out.secure = res->secure;
    } else if (res->rcode != 0) {
        out.status = MS_DNS_TEMPFAIL;
    } else if (!res->havedata) {
        out.status = MS_DNS_NODATA;
        out.secure = res->secure;
    } else {
        out.status = MS_DNS_OK;
        out.secure = res->secure;
        if (res->canonname && res->qname) {
            /* libunbound names the end of a CNAME chain (with its trailing
             * dot); a name that only differs by case or the dot is none. */
            size_t cl = strlen(res->canonname), ql = strlen(res->qname);
            while (cl > 0 && res->canonname[cl - 1] == '.')
                cl--;
            while (ql > 0 && res->qname[ql - 1] == '.')
                ql--;
            if (cl > 0 && cl <= MS_DNS_NAME_MAX &&
                (cl != ql || strncasecmp(res->canonname, res->qname, cl) != 0)) {
                memcpy(canon, res->canonname, cl);
                canon[cl] = '\0';
                out.canonical = canon;
            }
        }
        for (k = 0; res->data[k] && n < MS_RESOLVER_RR_MAX; k++) {
            d = (const unsigned char *)res->data[k];
            size_t len = (size_t)res->len[k];
            struct ms_dns_rr *rr = &rrs[n];
            rr->type = q->type;
            switch (q->type) {
            case MS_DNS_A:
                if (len != 4)
                    continue;
                memcpy(&rr->u.a, d, 4);
                break;
            case MS_DNS_AAAA:
                if (len != 16)
                    continue;
                memcpy(&rr->u.aaaa, d, 16);
                break;
            case MS_DNS_MX:
                if (len < 3 || wire_name(d + 2, len - 2, names[n], sizeof(names[n])) < 0)
                    continue;
                rr->u.mx.preference = (uint16_t)(d[0] << 8 | d[1]);
                rr->u.mx.host = names[n];
                break;
            case MS_DNS_PTR:
                if (wire_name(d, len, names[n], sizeof(names[n])) < 0)
                    continue;
                rr->u.ptr = names[n];
                break;
            case MS_DNS_TXT:
                /* Concatenate the character-strings (RFC 7208 §3.3). */
                txt[n] = ms_malloc(len + 1);
                for (i = 0, tl = 0; i < len; i += j + 1) {
                    j = d[i];
                    if (i + 1 + j > len)
                        break;
                    memcpy(txt[n] + tl, d + i + 1, j);
                    tl += j;
                }
                txt[n][tl] = '\0';
                rr->u.txt.data = txt[n];
                rr->u.txt.len = tl;
                break;
            case MS_DNS_TLSA:
                /* Pointing into res, which outlives the callback. */
                if (ms_dane_tlsa_parse(d, len, rr) < 0)
                    continue;
                break;
            }
            n++;
        }
        if (res->data[k])
            ms_warn("event=dns_answer_truncated name=%s kept=%d", res->qname,
                    MS_RESOLVER_RR_MAX);
        out.n = n;
        out.rr = rrs;
    }
    q->cb(q->arg, q->id, &out);
    for (i = 0; i < n; i++)
        free(txt[i]);
}

static void ub_callback(void *mydata, int err, struct ub_result *res)
{
    struct query *q = mydata;

    if (!q->done) {
        /* Unlink first: the callback may free the resolver.  q itself lives
         * until its timer's close callback. */
        q->done = 1;
        query_finish(q);
        deliver(q, res, err);
    }
    if (res)
        ub_resolve_free(res);
}

static void timeout_cb(uv_timer_t *t)
{
    struct query *q = t->data;
    ms_resolver *r = q->r;

    if (q->done)
        return;
    /* ub_cancel guarantees the callback will not be called for it. */
    ub_cancel(r->ctx, q->async_id);
    q->done = 1;
    query_finish(q);
    deliver(q, NULL, 1);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    ms_resolver *r = h->data;

    if (ub_process(r->ctx) != 0)
        ms_warn("event=dns_process_failed");
}

ms_resolver *ms_resolver_new(uv_loop_t *loop, const struct ms_resolver_conf *conf, char *err,
                             size_t errlen)
{
    ms_resolver *r = ms_calloc(1, sizeof(*r));
    int e;

    r->loop = loop;
    ms_list_init(&r->queries);
    r->timeout_ms = conf->timeout_ms > 0 ? conf->timeout_ms : MS_RESOLVER_TIMEOUT_MS;
    if ((r->ctx = ub_ctx_create()) == NULL) {
        snprintf(err, errlen, "ub_ctx_create failed");
        free(r);
        return NULL;
    }
    /* Never read the host's resolv.conf or hosts: tests and operators say
     * exactly where DNS comes from. */
    if ((e = ub_ctx_async(r->ctx, 1)) != 0 ||
        (conf->upstream && *conf->upstream && (e = ub_ctx_set_fwd(r->ctx, conf->upstream)) != 0) ||
        (conf->trust_anchor && *conf->trust_anchor &&
         (e = ub_ctx_add_ta_file(r->ctx, conf->trust_anchor)) != 0)) {
        snprintf(err, errlen, "libunbound: %s", ub_strerror(e));
        ub_ctx_delete(r->ctx);
        free(r);
        return NULL;
    }
    /* A forwarder on loopback that does not do DNSSEC must still answer. */
    ub_ctx_set_option(r->ctx, "do-not-query-localhost:", "no");
    /* Built-in local zones the upstream is to answer for instead: removed
     * (this finalizes the configuration, so it comes after every option). */
    for (size_t i = 0; i < conf->nnodefault; i++)
        if ((e = ub_ctx_zone_remove(r->ctx, conf->nodefault[i])) != 0) {
            snprintf(err, errlen, "libunbound: local zone %s: %s", conf->nodefault[i],
                     ub_strerror(e));
            ub_ctx_delete(r->ctx);
            free(r);
            return NULL;
        }
    uv_poll_init(loop, &r->poll, ub_fd(r->ctx));
    r->poll.data = r;
    uv_poll_start(&r->poll, UV_READABLE, poll_cb);
    return r;
}

int ms_resolver_query(ms_resolver *r, const char *name, enum ms_dns_type type, ms_resolve_cb cb,
                      void *arg, uint64_t id)
{
    struct query *q;
    int e;

    if (r->closing || strlen(name) > MS_DNS_NAME_MAX)
        return MS_EINVAL;
    q = ms_calloc(1, sizeof(*q));
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->id = id;
    q->type = type;
    uv_timer_init(r->loop, &q->timer);
    q->timer.data = q;
    if ((e = ub_resolve_async(r->ctx, name, (int)type, 1 /* IN */, q, ub_callback,
                              &q->async_id)) != 0) {
        ms_warn("event=dns_query_failed name=%s error=\"%s\"", name, ub_strerror(e));
        uv_close((uv_handle_t *)&q->timer, query_closed);
        return MS_EIO;
    }
    ms_list_insert_head(&r->queries, &q->node);
    r->pending++;
    uv_timer_start(&q->timer, timeout_cb, (uint64_t)r->timeout_ms, 0);
    return 0;
}

int ms_resolver_pending(ms_resolver *r)
{
    return r->pending;
}

static void resolver_closed(uv_handle_t *h)
{
    ms_resolver *r = h->data;

    ub_ctx_delete(r->ctx);
    free(r);
}

void ms_resolver_free(ms_resolver *r)
{
    if (r == NULL)
        return;
    r->closing = 1;
    while (!ms_list_empty(&r->queries)) {
        struct query *q = ms_list_entry(ms_list_first(&r->queries), struct query, node);
        ub_cancel(r->ctx, q->async_id);
        q->done = 1;
        query_finish(q);
    }
    uv_poll_stop(&r->poll);
    uv_close((uv_handle_t *)&r->poll, resolver_closed);
}
