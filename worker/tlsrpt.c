/*
 * tlsrpt.c - TLS-RPT counting and the cluster's periodic reports
 * (tlsrpt.h).
 *
 * A run reports one period: lease -> domains -> for each domain: TXT ->
 * hash -> JSON and gzip -> each rua (https: address -> POST; mailto:
 * produce) -> the next domain.  Every reply carries a cookie, (generation
 * << 8 | step << 4 | rua index); the generation changes with every domain
 * and when the run ends, so a late reply finds nothing and is dropped.
 */
#include "tlsrpt.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_mtasts.h"
#include "ms_net.h"
#include "ms_queueid.h"
#include "ms_time.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum step { STEP_LEASE = 1, STEP_MEMBERS, STEP_TXT, STEP_HASH, STEP_ADDR, STEP_POST };

/* The timer looks at most this far apart, and waits this long (at most)
 * after a period ended before reporting it, for the counts of sessions
 * still in flight when it ended. */
#define WK_TLSRPT_TICK_MAX_MS 60000
#define WK_TLSRPT_GRACE_MAX_S 300
/* Domains reported per period (a set larger than this is cut: logged). */
#define WK_TLSRPT_DOMAINS_MAX 100000

struct rua_state {
    char host[MS_HTTPS_HOST_MAX + 1];
    char path[MS_HTTPS_PATH_MAX + 1];
    int port;
};

struct wk_tlsrpt {
    uv_loop_t *loop;
    struct wk_tlsrpt_conf conf; /* strings owned */
    ms_resolver *resolver;
    ms_https *https;
    ms_redis *redis;
    ms_producer *producer;
    uv_timer_t timer;
    int timer_on;
    int stopped;
    int64_t done_begin; /* the last period seen through (ours or not) */
    /* The run, while running. */
    int running;
    uint64_t gen;
    int64_t begin;
    char **domains;
    size_t ndomains, next;
    char domain[MS_DNS_NAME_MAX + 1];
    struct ms_tlsrpt_rua rua;
    struct rua_state rs[MS_TLSRPT_RUA_MAX];
    struct ms_buf gz;
    int pending; /* https: POSTs of this domain in flight */
    ms_counter *m_counted, *m_count_errors, *m_reports[2][2]; /* [https?][sent?] */
};

static char *dup_or(const char *s, const char *def)
{
    return ms_strdup(s && *s ? s : def);
}

static void on_tick(uv_timer_t *h);

wk_tlsrpt *wk_tlsrpt_new(uv_loop_t *loop, const struct wk_tlsrpt_conf *conf, ms_resolver *resolver,
                         ms_https *https)
{
    wk_tlsrpt *t = ms_calloc(1, sizeof(*t));

    t->loop = loop;
    t->conf.node_id = dup_or(conf->node_id, "worker");
    t->conf.submitter = dup_or(conf->submitter, "localhost");
    t->conf.org_name = dup_or(conf->org_name, t->conf.submitter);
    t->conf.contact = dup_or(conf->contact, "postmaster");
    t->conf.from = dup_or(conf->from, "postmaster");
    t->conf.topic = dup_or(conf->topic, "queue");
    t->conf.interval_s = conf->interval_s > 0 ? conf->interval_s : 86400;
    t->resolver = resolver;
    t->https = https;
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    ms_buf_init(&t->gz, MS_TLSRPT_JSON_MAX);
    t->m_counted = ms_counter_new("mailstream_worker_tlsrpt_sessions_total",
                                  "Outbound sessions counted for TLS reports (RFC 8460).", NULL);
    t->m_count_errors = ms_counter_new("mailstream_worker_tlsrpt_count_errors_total",
                                       "TLS report counts Redis did not take.", NULL);
    t->m_reports[0][0] = ms_counter_new("mailstream_worker_tlsrpt_reports_total",
                                        "TLS reports sent, by way and outcome.",
                                        "via=\"mailto\",outcome=\"failed\"");
    t->m_reports[0][1] =
        ms_counter_new("mailstream_worker_tlsrpt_reports_total",
                       "TLS reports sent, by way and outcome.", "via=\"mailto\",outcome=\"sent\"");
    t->m_reports[1][0] =
        ms_counter_new("mailstream_worker_tlsrpt_reports_total",
                       "TLS reports sent, by way and outcome.", "via=\"https\",outcome=\"failed\"");
    t->m_reports[1][1] =
        ms_counter_new("mailstream_worker_tlsrpt_reports_total",
                       "TLS reports sent, by way and outcome.", "via=\"https\",outcome=\"sent\"");
    return t;
}

static uint64_t tick_ms(const wk_tlsrpt *t)
{
    uint64_t ms = (uint64_t)t->conf.interval_s * 250;

    return ms > WK_TLSRPT_TICK_MAX_MS ? WK_TLSRPT_TICK_MAX_MS : ms < 250 ? 250 : ms;
}

void wk_tlsrpt_attach(wk_tlsrpt *t, ms_redis *redis, ms_producer *producer)
{
    t->redis = redis;
    t->producer = producer;
    if (!t->timer_on && !t->stopped) {
        t->timer_on = 1;
        uv_timer_start(&t->timer, on_tick, tick_ms(t), tick_ms(t));
    }
}

/* ---- counting ---- */

static int64_t now_s(void)
{
    return ms_time_now_us() / 1000000;
}

static int64_t period_of(const wk_tlsrpt *t, int64_t s)
{
    return s - s % t->conf.interval_s;
}

static void sts_lines(const struct ms_mtasts_policy *p, struct ms_buf *b)
{
    size_t i;

    /* §4.3.1: the policy as it was fetched, line by line (§3.2 keys). */
    ms_buf_appendf(b, "version: STSv1\nmode: %s\n", ms_mtasts_mode_name(p->mode));
    for (i = 0; i < p->nmx; i++)
        ms_buf_appendf(b, "mx: %s\n", p->mx[i]);
    ms_buf_appendf(b, "max_age: %u", p->max_age);
}

static void tlsa_lines(const struct ms_tlsa *rr, size_t n, struct ms_buf *b)
{
    size_t i, k;

    /* §4.3.1: the TLSA records in presentation form (RFC 6698 §2.2). */
    for (i = 0; i < n; i++) {
        if (i > 0 && ms_buf_append(b, "\n", 1) < 0)
            return;
        if (ms_buf_appendf(b, "%u %u %u ", rr[i].usage, rr[i].selector, rr[i].mtype) < 0)
            return;
        for (k = 0; k < rr[i].len; k++)
            if (ms_buf_appendf(b, "%02x", rr[i].data[k]) < 0)
                return;
    }
}

static void count(wk_tlsrpt *t, const char *domain, const struct ms_tlsrpt_session *s,
                  const char *lines)
{
    char key[sizeof(MS_KEY_TLSRPT) + 24 + MS_DNS_NAME_MAX],
        dkey[sizeof(MS_KEY_TLSRPT_DOMAINS) + 24];
    char field[MS_TLSRPT_FIELD_MAX + 1], pfield[MS_TLSRPT_FIELD_MAX + 1], ttl[24];
    char low[MS_DNS_NAME_MAX + 1];
    int64_t begin = period_of(t, now_s());
    size_t i;

    if (t->redis == NULL || t->stopped)
        return;
    for (i = 0; domain[i] && i < MS_DNS_NAME_MAX; i++)
        low[i] = (char)tolower((unsigned char)domain[i]);
    low[i] = '\0';
    if (i > 0 && low[i - 1] == '.')
        low[i - 1] = '\0';
    if (ms_tlsrpt_field(s, field) < 0) {
        ms_warn("event=tlsrpt_count_skipped domain=%s reason=\"a name we cannot store\"", low);
        return;
    }
    snprintf(key, sizeof(key), MS_KEY_TLSRPT "%lld:%s", (long long)begin, low);
    snprintf(dkey, sizeof(dkey), MS_KEY_TLSRPT_DOMAINS "%lld", (long long)begin);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(WK_TLSRPT_KEEP * t->conf.interval_s));
    {
        const char *incr[4] = {"HINCRBY", key, field, "1"};
        const char *exp[3] = {"EXPIRE", key, ttl};
        const char *sadd[3] = {"SADD", dkey, low};
        const char *dexp[3] = {"EXPIRE", dkey, ttl};
        ms_redis_fire(t->redis, t->m_count_errors, 4, incr);
        if (lines && lines[0] && ms_tlsrpt_policy_field(s->policy, s->mx, pfield) == 0) {
            const char *hset[4] = {"HSET", key, pfield, lines};
            ms_redis_fire(t->redis, t->m_count_errors, 4, hset);
        }
        ms_redis_fire(t->redis, t->m_count_errors, 3, exp);
        ms_redis_fire(t->redis, t->m_count_errors, 3, sadd);
        ms_redis_fire(t->redis, t->m_count_errors, 3, dexp);
    }
    ms_counter_inc(t->m_counted);
    ms_debug("event=tlsrpt_counted domain=%s policy=%s mx=%s result=%s", low,
             ms_tlsrpt_policy_name(s->policy), s->receiving_mx ? s->receiving_mx : "-",
             ms_tlsrpt_result_name(s->result));
}

void wk_tlsrpt_session(wk_tlsrpt *t, const char *domain, const struct wk_mtasts_result *sts,
                       const struct wk_route_addr *a, const struct wk_route_tlsa *tlsa, int result,
                       int tls_up, const char *local_ip)
{
    struct ms_tlsrpt_session s;
    struct ms_buf lines;
    char rip[INET6_ADDRSTRLEN + 2] = "";
    int have_sts = sts && sts->have && sts->policy.mode != MS_MTASTS_NONE;

    if (t == NULL || (result < 0 && result != WK_TLSRPT_REFUSED))
        return; /* no TLS decision was made: not a TLS session */
    memset(&s, 0, sizeof(s));
    ms_buf_init(&lines, WK_TLSRPT_POLICY_MAX);
    /* RFC 8461 §2: DANE wins where both exist; a TLSA lookup that failed
     * is DANE's too (the records may exist). */
    if (a->dane == WK_DANE_USABLE || a->dane == WK_DANE_UNUSABLE || a->dane == WK_DANE_FAILED) {
        s.policy = MS_TLSRPT_POLICY_TLSA;
        s.mx = a->host;
        if (tlsa && a->ntlsa && (size_t)a->tlsa_first + a->ntlsa <= tlsa->n)
            tlsa_lines(&tlsa->rr[a->tlsa_first], a->ntlsa, &lines);
    } else if (have_sts) {
        s.policy = MS_TLSRPT_POLICY_STS;
        s.mx = ""; /* the policy's patterns are its mx-host (§4.3.1) */
        sts_lines(&sts->policy, &lines);
    } else {
        s.policy = MS_TLSRPT_POLICY_NONE;
        s.mx = a->host;
    }
    if (result == WK_TLSRPT_REFUSED && s.policy == MS_TLSRPT_POLICY_NONE) {
        s.policy = MS_TLSRPT_POLICY_TLSA; /* the map requires DANE: a DANE policy */
        lines.len = 0;
    }
    if (result == WK_TLSRPT_REFUSED)
        s.result = a->dane == WK_DANE_FAILED          ? MS_TLSRPT_DNSSEC_INVALID
                   : s.policy == MS_TLSRPT_POLICY_STS ? MS_TLSRPT_VALIDATION_FAILURE
                                                      : MS_TLSRPT_DANE_REQUIRED;
    else if (s.policy == MS_TLSRPT_POLICY_TLSA && a->dane == WK_DANE_UNUSABLE)
        s.result = MS_TLSRPT_TLSA_INVALID; /* §4.3.2.2: none of the records usable */
    else if (s.policy == MS_TLSRPT_POLICY_NONE && tls_up)
        s.result = MS_TLSRPT_OK; /* no policy: any TLS is what was asked */
    else if (s.policy == MS_TLSRPT_POLICY_STS && !ms_mtasts_mx_match(&sts->policy, a->host))
        s.result = MS_TLSRPT_VALIDATION_FAILURE; /* `testing`: the MX is not the policy's */
    else
        s.result = (enum ms_tlsrpt_result)result;
    if (s.result != MS_TLSRPT_OK) {
        if (a->ss.ss_family == AF_INET || a->ss.ss_family == AF_INET6)
            ms_addr_str((const struct sockaddr *)&a->ss, rip, sizeof(rip));
        s.sending_ip = local_ip;
        s.receiving_mx = a->host;
        s.receiving_ip = rip;
    }
    if (ms_buf_append(&lines, "", 1) < 0) /* NUL-terminate (a cut policy: none) */
        ms_buf_reset(&lines);
    count(t, domain, &s, lines.len ? lines.data : NULL);
    ms_buf_free(&lines);
}

void wk_tlsrpt_sts_failure(wk_tlsrpt *t, const char *domain, enum ms_tlsrpt_result r)
{
    struct ms_tlsrpt_session s;

    if (t == NULL)
        return;
    memset(&s, 0, sizeof(s));
    s.policy = MS_TLSRPT_POLICY_STS;
    s.mx = "";
    s.result = r;
    count(t, domain, &s, NULL);
}

/* ---- reporting ---- */

static void run_end(wk_tlsrpt *t, const char *why)
{
    size_t i;

    ms_info("event=tlsrpt_period_done begin=%lld domains=%zu%s%s%s", (long long)t->begin,
            t->ndomains, why ? " error=\"" : "", why ? why : "", why ? "\"" : "");
    for (i = 0; i < t->ndomains; i++)
        free(t->domains[i]);
    free(t->domains);
    t->domains = NULL;
    t->ndomains = t->next = 0;
    t->running = 0;
    t->gen++;
    if (why == NULL)
        t->done_begin = t->begin;
}

static uint64_t cookie(const wk_tlsrpt *t, enum step s, unsigned idx)
{
    return t->gen << 8 | (uint64_t)s << 4 | idx;
}

/* The reply belongs to the current step of the run. */
static int cookie_ok(const wk_tlsrpt *t, uint64_t c, enum step s)
{
    return t->running && !t->stopped && c >> 8 == t->gen && ((c >> 4) & 0xf) == (uint64_t)s;
}

static void next_domain(wk_tlsrpt *t);

static void on_txt(void *arg, uint64_t c, const struct ms_dns_result *res);

/* Walk on to the next domain with a TXT query under way, or end the run. */
static void next_domain(wk_tlsrpt *t)
{
    char name[MS_DNS_NAME_MAX + 16];

    while (t->next < t->ndomains) {
        snprintf(t->domain, sizeof(t->domain), "%s", t->domains[t->next++]);
        t->gen++;
        t->pending = 0;
        ms_buf_reset(&t->gz);
        /* §3: the policy domain's _smtp._tls TXT record. */
        if ((size_t)snprintf(name, sizeof(name), "_smtp._tls.%s", t->domain) < sizeof(name) &&
            t->resolver &&
            ms_resolver_query(t->resolver, name, MS_DNS_TXT, on_txt, t, cookie(t, STEP_TXT, 0)) ==
                0)
            return;
    }
    run_end(t, NULL);
}

/* Split an https: rua into host, port and path (RFC 3986 §3: no
 * userinfo, a name or IPv4 literal, an optional port). */
static int https_split(const char *uri, struct rua_state *rs)
{
    const char *h = uri + 8, *he = h, *p;
    size_t n;

    while (*he && *he != '/' && *he != ':' && *he != '?')
        he++;
    n = (size_t)(he - h);
    if (n == 0 || n > MS_HTTPS_HOST_MAX || memchr(h, '@', n))
        return MS_EINVAL;
    memcpy(rs->host, h, n);
    rs->host[n] = '\0';
    rs->port = 443;
    p = he;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535)
            return MS_EINVAL;
        rs->port = (int)port;
        p = end;
    }
    if (*p == '\0')
        p = "/";
    if (*p != '/' || strlen(p) > MS_HTTPS_PATH_MAX)
        return MS_EINVAL;
    snprintf(rs->path, sizeof(rs->path), "%s", p);
    return 0;
}

/* RFC 6068: the first address of a mailto: URI, %-decoded, without its
 * query.  0 or MS_EINVAL. */
static int mailto_addr(const char *uri, char *out, size_t outlen)
{
    const char *p = uri + 7;
    size_t n = 0;

    for (; *p && *p != '?' && *p != ','; p++) {
        char c = *p;
        if (c == '%') {
            if (!isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2]))
                return MS_EINVAL;
            char hex[3] = {p[1], p[2], '\0'};
            c = (char)strtol(hex, NULL, 16);
            p += 2;
        }
        if ((unsigned char)c <= 0x20 || (unsigned char)c >= 0x7f || c == '<' || c == '>')
            return MS_EINVAL;
        if (n + 1 >= outlen)
            return MS_EINVAL;
        out[n++] = c;
    }
    out[n] = '\0';
    return n > 2 && strchr(out, '@') && out[0] != '@' && out[n - 1] != '@' ? 0 : MS_EINVAL;
}

static void report_done(wk_tlsrpt *t, int https, int ok, const char *to, const char *why)
{
    ms_counter_inc(t->m_reports[https][ok]);
    if (ok)
        ms_info("event=tlsrpt_sent domain=%s via=%s to=\"%s\" begin=%lld bytes=%zu", t->domain,
                https ? "https" : "mailto", to, (long long)t->begin, t->gz.len);
    else
        ms_warn("event=tlsrpt_failed domain=%s via=%s to=\"%s\" begin=%lld error=\"%s\"", t->domain,
                https ? "https" : "mailto", to, (long long)t->begin, why);
}

static void send_mail(wk_tlsrpt *t, const char *uri, const char *report_id, const char *qid,
                      const char *filename)
{
    struct ms_tlsrpt_mail m;
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt rc;
    struct ms_buf msg;
    char to[MS_TLSRPT_URI_MAX + 1];
    uint8_t *buf;
    size_t len;
    int err;

    if (mailto_addr(uri, to, sizeof(to)) < 0) {
        report_done(t, 0, 0, uri, "not a mailto: address we take");
        return;
    }
    if (t->producer == NULL) {
        report_done(t, 0, 0, uri, "no Kafka producer");
        return;
    }
    memset(&m, 0, sizeof(m));
    m.from = t->conf.from;
    m.to = to;
    m.domain = t->domain;
    m.submitter = t->conf.submitter;
    m.report_id = report_id;
    m.now = now_s();
    m.filename = filename;
    m.gz = t->gz.data;
    m.gzlen = t->gz.len;
    ms_buf_init(&msg, MS_TLSRPT_JSON_MAX * 2);
    if ((err = ms_tlsrpt_mail_build(&m, &msg)) < 0) {
        ms_buf_free(&msg);
        report_done(t, 0, 0, uri, ms_strerror(err));
        return;
    }
    /* Through our own queue like any message (docs/architecture.md): the
     * worker that consumes it routes it by MX and applies the same TLS
     * policy.  NOTIFY=NEVER: a report is never bounced back to us (RFC
     * 8460 §5.3 leaves it to the sender; DMARC reporters do the same). */
    memset(&tx, 0, sizeof(tx));
    memset(&rc, 0, sizeof(rc));
    rc.address = to;
    rc.notify = MS_ENV_NOTIFY_NEVER;
    tx.queue_id = qid;
    tx.received_at_us = ms_time_now_us();
    tx.frontend_node = t->conf.node_id;
    tx.mail_from.address = t->conf.from;
    tx.mail_from.body = MS_ENV_BODY_7BIT;
    tx.rcpts = &rc;
    tx.nrcpts = 1;
    tx.direction = MS_ENV_DIRECTION_OUTBOUND;
    tx.message = msg.data;
    tx.len = msg.len;
    buf = ms_envelope_encode_tx(&tx, &len);
    ms_buf_free(&msg);
    err = ms_producer_send(t->producer, t->conf.topic, qid, strlen(qid), buf, len,
                           WK_TLSRPT_PRODUCE_ID);
    free(buf);
    if (err < 0) {
        report_done(t, 0, 0, uri, ms_strerror(err));
        return;
    }
    ms_info("event=tlsrpt_queued domain=%s qid=%s to=<%s>", t->domain, qid, to);
    report_done(t, 0, 1, uri, NULL);
}

void wk_tlsrpt_on_produced(wk_tlsrpt *t, int err, const char *errstr)
{
    if (err < 0)
        ms_warn("event=tlsrpt_publish_failed error=%s reason=\"%s\"", ms_err_name(err),
                errstr ? errstr : "");
}

static void on_post(void *arg, uint64_t c, const struct ms_https_result *res)
{
    wk_tlsrpt *t = arg;
    unsigned idx = (unsigned)(c & 0xf);
    char why[128];

    if (!cookie_ok(t, c, STEP_POST) || idx >= t->rua.n)
        return;
    /* §5.4: a 2xx accepted it; anything else is a failed delivery. */
    if (res->err == 0 && res->status >= 200 && res->status < 300) {
        report_done(t, 1, 1, t->rua.uri[idx], NULL);
    } else {
        snprintf(why, sizeof(why), "%s (HTTP %ld)", res->err ? res->why : "refused", res->status);
        report_done(t, 1, 0, t->rua.uri[idx], why);
    }
    if (--t->pending == 0)
        next_domain(t);
}

static int post(wk_tlsrpt *t, unsigned idx, const char *ip)
{
    const struct rua_state *rs = &t->rs[idx];

    return ms_https_post(t->https, rs->host, rs->port, ip, rs->path, MS_TLSRPT_MEDIA_GZIP,
                         t->gz.data, t->gz.len, on_post, t, cookie(t, STEP_POST, idx));
}

static void on_addr(void *arg, uint64_t c, const struct ms_dns_result *res)
{
    wk_tlsrpt *t = arg;
    unsigned idx = (unsigned)(c & 0xf);
    char ip[INET_ADDRSTRLEN];
    size_t i;

    if (!cookie_ok(t, c, STEP_ADDR) || idx >= t->rua.n)
        return;
    for (i = 0; res->status == MS_DNS_OK && i < res->n; i++)
        if (res->rr[i].type == MS_DNS_A)
            break;
    if (res->status != MS_DNS_OK || i == res->n) {
        report_done(t, 1, 0, t->rua.uri[idx], "no address for the host");
    } else {
        inet_ntop(AF_INET, &res->rr[i].u.a, ip, sizeof(ip));
        if (post(t, idx, ip) == 0)
            return; /* on_post follows */
        report_done(t, 1, 0, t->rua.uri[idx], "cannot start the POST");
    }
    if (--t->pending == 0)
        next_domain(t);
}

/* Send the gzipped report to every rua; next_domain once all are done. */
static void deliver(wk_tlsrpt *t, const char *report_id, const char *qid, const char *filename)
{
    struct in_addr a4;
    size_t i;

    t->pending = 1; /* held while starting, so no callback ends the domain early */
    for (i = 0; i < t->rua.n; i++) {
        const char *uri = t->rua.uri[i];
        if (strncasecmp(uri, "mailto:", 7) == 0) {
            send_mail(t, uri, report_id, qid, filename);
            continue;
        }
        if (t->https == NULL || https_split(uri, &t->rs[i]) < 0) {
            report_done(t, 1, 0, uri, t->https ? "not an https: URI we take" : "no HTTPS client");
            continue;
        }
        t->pending++;
        if (inet_pton(AF_INET, t->rs[i].host, &a4) == 1) {
            if (post(t, (unsigned)i, t->rs[i].host) == 0)
                continue;
        } else if (t->resolver && ms_resolver_query(t->resolver, t->rs[i].host, MS_DNS_A, on_addr,
                                                    t, cookie(t, STEP_ADDR, (unsigned)i)) == 0) {
            continue;
        }
        t->pending--;
        report_done(t, 1, 0, uri, "cannot start the POST");
    }
    if (--t->pending == 0)
        next_domain(t);
}

static void on_hash(void *arg, uint64_t c, const struct ms_redis_reply *r)
{
    wk_tlsrpt *t = arg;
    struct ms_tlsrpt_kv *kv;
    struct ms_tlsrpt_report rep;
    struct ms_buf json;
    char qid[MS_QUEUEID_LEN + 1], report_id[MS_QUEUEID_LEN + MS_DNS_NAME_MAX + 2];
    char filename[2 * MS_DNS_NAME_MAX + MS_QUEUEID_LEN + 64];
    size_t i, n;
    int err;

    if (!cookie_ok(t, c, STEP_HASH))
        return;
    if (r->type != MS_REDIS_ARRAY || r->nelem == 0) {
        if (r->type != MS_REDIS_ARRAY)
            ms_warn("event=tlsrpt_failed domain=%s error=\"counts not read: %.*s\"", t->domain,
                    (int)r->len, r->str ? r->str : "");
        next_domain(t);
        return;
    }
    n = r->nelem / 2;
    kv = ms_calloc(n ? n : 1, sizeof(*kv));
    for (i = 0; i < n; i++) {
        kv[i].key = r->elem[2 * i].str;
        kv[i].klen = r->elem[2 * i].len;
        kv[i].value = r->elem[2 * i + 1].str;
        kv[i].vlen = r->elem[2 * i + 1].len;
        if (kv[i].key == NULL || kv[i].value == NULL)
            kv[i].klen = kv[i].vlen = 0;
    }
    ms_queueid_new(qid);
    /* The report-id is a msg-id (§5.3's Subject); the queue id makes it
     * unique, and is the file name's unique-id. */
    snprintf(report_id, sizeof(report_id), "%s@%s", qid, t->conf.submitter);
    memset(&rep, 0, sizeof(rep));
    rep.organization = t->conf.org_name;
    rep.contact = t->conf.contact;
    rep.report_id = report_id;
    rep.begin = t->begin;
    rep.end = t->begin + t->conf.interval_s;
    rep.domain = t->domain;
    rep.fields = kv;
    rep.nfields = n;
    ms_buf_init(&json, MS_TLSRPT_JSON_MAX);
    err = ms_tlsrpt_report_json(&rep, &json);
    free(kv);
    if (err == 0)
        err = ms_tlsrpt_gzip(json.data, json.len, &t->gz);
    if (err == 0)
        err = ms_tlsrpt_filename(t->conf.submitter, t->domain, rep.begin, rep.end, qid, filename,
                                 sizeof(filename));
    ms_buf_free(&json);
    if (err < 0) {
        ms_warn("event=tlsrpt_failed domain=%s begin=%lld error=\"report not built: %s\"",
                t->domain, (long long)t->begin, ms_strerror(err));
        next_domain(t);
        return;
    }
    deliver(t, report_id, qid, filename);
}

static void on_txt(void *arg, uint64_t c, const struct ms_dns_result *res)
{
    wk_tlsrpt *t = arg;
    char key[sizeof(MS_KEY_TLSRPT) + 24 + MS_DNS_NAME_MAX];
    const char *argv[2] = {"HGETALL", key};
    size_t lens[2];

    if (!cookie_ok(t, c, STEP_TXT))
        return;
    if (ms_tlsrpt_txt_pick(res, &t->rua) < 0) {
        /* §3: no record, several, or an invalid one: no reports wanted. */
        ms_debug("event=tlsrpt_no_record domain=%s", t->domain);
        next_domain(t);
        return;
    }
    snprintf(key, sizeof(key), MS_KEY_TLSRPT "%lld:%s", (long long)t->begin, t->domain);
    lens[0] = 7;
    lens[1] = strlen(key);
    if (t->redis == NULL ||
        ms_redis_command(t->redis, on_hash, t, cookie(t, STEP_HASH, 0), 2, argv, lens) < 0) {
        run_end(t, "Redis unavailable");
        return;
    }
}

static void on_members(void *arg, uint64_t c, const struct ms_redis_reply *r)
{
    wk_tlsrpt *t = arg;
    size_t i, n;

    if (!cookie_ok(t, c, STEP_MEMBERS))
        return;
    if (r->type != MS_REDIS_ARRAY) {
        /* The lease is ours and stays: this period goes unreported (XXX). */
        run_end(t, "domains not read");
        t->done_begin = t->begin;
        return;
    }
    n = r->nelem;
    if (n > WK_TLSRPT_DOMAINS_MAX) {
        ms_warn("event=tlsrpt_domains_cut begin=%lld domains=%zu kept=%d", (long long)t->begin, n,
                WK_TLSRPT_DOMAINS_MAX);
        n = WK_TLSRPT_DOMAINS_MAX;
    }
    t->domains = ms_calloc(n ? n : 1, sizeof(*t->domains));
    for (i = 0; i < n; i++)
        if (r->elem[i].type == MS_REDIS_STR && r->elem[i].len > 0 &&
            r->elem[i].len <= MS_DNS_NAME_MAX)
            t->domains[t->ndomains++] = ms_strndup(r->elem[i].str, r->elem[i].len);
    ms_info("event=tlsrpt_period begin=%lld end=%lld domains=%zu", (long long)t->begin,
            (long long)(t->begin + t->conf.interval_s), t->ndomains);
    next_domain(t);
}

static void on_lease(void *arg, uint64_t c, const struct ms_redis_reply *r)
{
    wk_tlsrpt *t = arg;
    char dkey[sizeof(MS_KEY_TLSRPT_DOMAINS) + 24];
    const char *argv[2] = {"SMEMBERS", dkey};
    size_t lens[2];

    if (!cookie_ok(t, c, STEP_LEASE))
        return;
    if (r->type == MS_REDIS_NIL) {
        /* Another worker has (or had) this period. */
        ms_debug("event=tlsrpt_lease_taken begin=%lld", (long long)t->begin);
        t->running = 0;
        t->gen++;
        t->done_begin = t->begin;
        return;
    }
    if (r->type != MS_REDIS_STR) {
        t->running = 0; /* try again on the next tick */
        t->gen++;
        return;
    }
    snprintf(dkey, sizeof(dkey), MS_KEY_TLSRPT_DOMAINS "%lld", (long long)t->begin);
    lens[0] = 8;
    lens[1] = strlen(dkey);
    if (ms_redis_command(t->redis, on_members, t, cookie(t, STEP_MEMBERS, 0), 2, argv, lens) < 0)
        run_end(t, "Redis unavailable");
}

static void on_tick(uv_timer_t *h)
{
    wk_tlsrpt *t = h->data;
    int64_t now = now_s(), cur = period_of(t, now), prev = cur - t->conf.interval_s;
    int64_t grace = t->conf.interval_s / 10;
    char key[sizeof(MS_KEY_TLSRPT_LEASE) + 24], ttl[24];
    const char *argv[6] = {"SET", key, t->conf.node_id, "NX", "EX", ttl};
    size_t lens[6];
    int i;

    if (t->running || t->stopped || t->redis == NULL || prev <= t->done_begin)
        return;
    if (grace > WK_TLSRPT_GRACE_MAX_S)
        grace = WK_TLSRPT_GRACE_MAX_S;
    if (now - cur < grace)
        return;
    /* One worker per period: the lease outlives the counts, so a late
     * worker never reports the period again. */
    snprintf(key, sizeof(key), MS_KEY_TLSRPT_LEASE "%lld", (long long)prev);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)((WK_TLSRPT_KEEP + 1) * t->conf.interval_s));
    for (i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    t->running = 1;
    t->begin = prev;
    t->gen++;
    if (ms_redis_command(t->redis, on_lease, t, cookie(t, STEP_LEASE, 0), 6, argv, lens) < 0) {
        t->running = 0;
        t->gen++;
    }
}

void wk_tlsrpt_stop(wk_tlsrpt *t)
{
    size_t i;

    if (t == NULL || t->stopped)
        return;
    t->stopped = 1;
    if (t->running) {
        for (i = 0; i < t->ndomains; i++)
            free(t->domains[i]);
        free(t->domains);
        t->domains = NULL;
        t->ndomains = 0;
        t->running = 0;
    }
    t->gen++;
    if (t->https)
        for (i = 0; i < MS_TLSRPT_RUA_MAX; i++)
            ms_https_cancel(t->https, (t->gen - 1) << 8 | (uint64_t)STEP_POST << 4 | i);
    uv_timer_stop(&t->timer);
    uv_close((uv_handle_t *)&t->timer, NULL);
    t->redis = NULL;
    t->producer = NULL;
    t->https = NULL;
    t->resolver = NULL;
}

void wk_tlsrpt_free(wk_tlsrpt *t)
{
    if (t == NULL)
        return;
    wk_tlsrpt_stop(t);
    ms_buf_free(&t->gz);
    free((char *)t->conf.node_id);
    free((char *)t->conf.org_name);
    free((char *)t->conf.contact);
    free((char *)t->conf.submitter);
    free((char *)t->conf.from);
    free((char *)t->conf.topic);
    free(t);
}
