/*
 * outcome.c - one recipient's outcome (outcome.h).
 */
#include "outcome.h"
#include "shaper.h"
#include "tls_policy.h"
#include "ms_addr.h"
#include "ms_buf.h"
#include "ms_error.h"
#include "ms_keys.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_time.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct wk_outcomes {
    struct wk_outcome_conf conf;
    ms_producer *producer;
    ms_redis *redis;
    ms_counter *m_outcome[WK_OUTCOME__N];
    ms_counter *m_class[MS_CLASS__N];
    ms_counter *m_dns_failures, *m_tls_failures, *m_event_errors, *m_redis_errors;
    ms_histogram *m_latency;
    /* Outcomes per TLS policy level, authentication and outcome: made on
     * first use (the label values are bounded: level names only). */
    ms_counter *m_tls[WK_TLS_LEVELS_N + 1][3][WK_OUTCOME__N]; /* + "mta-sts" */
};

static const char *const tls_auth_names[] = {"none", "verified", "dane"};

static void count_tls(wk_outcomes *o, const char *policy, int auth, enum wk_outcome out)
{
    char labels[128];
    int lv = policy ? wk_tls_level_parse(policy, strlen(policy)) : -1;

    if (policy && strcmp(policy, "mta-sts") == 0)
        lv = WK_TLS_LEVELS_N; /* RFC 8461 enforce: a level of its own here */
    if (lv < 0 || auth < 0 || auth > 2)
        return;
    if (o->m_tls[lv][auth][out] == NULL) {
        snprintf(labels, sizeof(labels), "policy=\"%s\",auth=\"%s\",outcome=\"%s\"", policy,
                 tls_auth_names[auth], wk_outcome_name(out));
        o->m_tls[lv][auth][out] = ms_counter_new(
            "mailstream_worker_tls_outcomes_total",
            "Recipient outcomes by outbound TLS policy level and how the server was "
            "authenticated.", labels);
    }
    ms_counter_inc(o->m_tls[lv][auth][out]);
}

wk_outcomes *wk_outcomes_new(const struct wk_outcome_conf *conf)
{
    wk_outcomes *o = ms_calloc(1, sizeof(*o));
    char labels[64];
    int k;

    o->conf = *conf;
    for (k = 0; k < WK_OUTCOME__N; k++) {
        snprintf(labels, sizeof(labels), "outcome=\"%s\"", wk_outcome_name((enum wk_outcome)k));
        o->m_outcome[k] = ms_counter_new("mailstream_worker_deliveries_total",
                                         "Recipient delivery attempts by outcome.", labels);
    }
    for (k = 0; k < MS_CLASS__N; k++) {
        snprintf(labels, sizeof(labels), "class=\"%s\"",
                 ms_reply_class_name((enum ms_reply_class)k));
        o->m_class[k] = ms_counter_new("mailstream_worker_replies_total",
                                       "Recipient outcomes by reply class.", labels);
    }
    o->m_dns_failures = ms_counter_new("mailstream_worker_dns_failures_total",
                                       "Recipients deferred because a DNS lookup failed.", NULL);
    o->m_tls_failures = ms_counter_new("mailstream_worker_tls_failures_total",
                                       "Recipient outcomes caused by TLS.", NULL);
    o->m_event_errors = ms_counter_new("mailstream_worker_event_errors_total",
                                       "Event records that could not be published.", NULL);
    o->m_redis_errors = ms_counter_new("mailstream_worker_redis_errors_total",
                                       "Redis commands that failed or timed out.", NULL);
    o->m_latency = ms_histogram_new("mailstream_worker_delivery_latency_seconds",
                                    "From acceptance by the frontend to delivery.", NULL,
                                    ms_latency_buckets, ms_latency_buckets_n);
    return o;
}

void wk_outcomes_attach(wk_outcomes *o, ms_producer *p, ms_redis *r)
{
    o->producer = p;
    o->redis = r;
}

void wk_outcomes_free(wk_outcomes *o)
{
    free(o);
}

char *wk_suppress_key(const char *addr)
{
    char *k = ms_asprintf(MS_KEY_SUPPRESS "%s", addr), *p;

    for (p = k; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return k;
}

static void publish_event(wk_outcomes *o, const struct wk_outcome_msg *msg,
                          const struct ms_buf *json)
{
    int err;

    if (o->producer == NULL)
        return;
    err = ms_producer_send(o->producer, o->conf.events_topic, msg->qid, strlen(msg->qid),
                           json->data, json->len, msg->event_id);
    if (err < 0) {
        ms_warn("event=publish_failed topic=%s key=%s error=%s", o->conf.events_topic, msg->qid,
                ms_err_name(err));
        ms_counter_inc(o->m_event_errors);
        return;
    }
    (*msg->events_pending)++;
}

enum wk_outcome wk_outcome_record(wk_outcomes *o, const struct wk_outcome_msg *msg,
                                  struct wk_rcpt *rc, int code, const char *dsn, const char *reply,
                                  const char *relay, const char *remote, int force)
{
    struct wk_event ev;
    struct ms_buf json;
    char qrcpt[600], qreply[WK_SMTP_REPLY_TEXT_MAX * 2];
    int64_t now = ms_time_now_us();
    double delay = msg->received_at_us > 0 ? (double)(now - msg->received_at_us) / 1e6 : 0;
    enum ms_reply_class cls;
    enum wk_category cat;
    const wk_classifier *classifier = wk_shaper_classifier(o->conf.shaper);
    int hard;

    memset(&ev, 0, sizeof(ev));
    ev.qid = msg->qid;
    ev.rcpt = rc->addr;
    ev.outcome = wk_verdict(code, dsn, reply, &cls, &hard);
    if (force >= 0)
        ev.outcome = (enum wk_outcome)force;
    ev.code = code;
    ev.dsn = dsn;
    ev.reply = reply;
    ev.relay = relay;
    ev.node = o->conf.node_id;
    ev.attempt = msg->attempt;
    ev.delay = delay < 0 ? 0 : delay;
    ev.ts_us = now;
    ev.class_name = ms_reply_class_name(cls);
    cat = wk_classify(classifier, code, dsn, reply);
    ev.category = wk_category_name(cat);
    ev.tls = msg->tls && *msg->tls ? msg->tls : NULL;
    ev.tls_policy = msg->tls_policy && *msg->tls_policy ? msg->tls_policy : NULL;
    ev.tls_auth = tls_auth_names[msg->tls_auth >= 0 && msg->tls_auth <= 2 ? msg->tls_auth : 0];

    rc->tried = 1;
    rc->category = cat;
    rc->code = code;
    if (dsn != rc->dsn)
        snprintf(rc->dsn, sizeof(rc->dsn), "%s", dsn);
    if (reply != rc->reply)
        snprintf(rc->reply, sizeof(rc->reply), "%s", reply);
    if (relay != rc->relay)
        snprintf(rc->relay, sizeof(rc->relay), "%s", relay);
    if (remote != rc->remote)
        snprintf(rc->remote, sizeof(rc->remote), "%s", remote ? remote : "");
    rc->at_us = now;
    if (ev.outcome == WK_OUTCOME_DELIVERED) {
        rc->state = WK_RCPT_DELIVERED;
    } else if (ev.outcome == WK_OUTCOME_BOUNCED) {
        rc->state = WK_RCPT_BOUNCED;
        rc->in_dsn = 1;
    }

    ms_info("event=delivery qid=%s rcpt=%s relay=%s tls=\"%s\" tls_policy=%s tls_auth=%s "
            "attempt=%u delay=%.3f outcome=%s code=%d dsn=%s class=%s category=%s reply=%s",
            msg->qid, ms_log_quote(qrcpt, sizeof(qrcpt), ev.rcpt, strlen(ev.rcpt)), ev.relay,
            ev.tls ? ev.tls : "none", ev.tls_policy ? ev.tls_policy : "-", ev.tls_auth,
            ev.attempt, ev.delay, wk_outcome_name(ev.outcome), code, dsn,
            ev.class_name, ev.category, ms_log_quote(qreply, sizeof(qreply), reply, strlen(reply)));
    ms_counter_inc(o->m_outcome[ev.outcome]);
    count_tls(o, ev.tls_policy, msg->tls_auth, ev.outcome);
    ms_counter_inc(o->m_class[cls]);
    if (cls == MS_CLASS_DNS && ev.outcome == WK_OUTCOME_DEFERRED)
        ms_counter_inc(o->m_dns_failures);
    if (cls == MS_CLASS_TLS)
        ms_counter_inc(o->m_tls_failures);
    if (ev.outcome == WK_OUTCOME_DELIVERED)
        ms_histogram_observe(o->m_latency, ev.delay);

    ms_buf_init(&json, WK_EVENT_MAX);
    if (wk_event_json(&json, &ev) == 0)
        publish_event(o, msg, &json);
    else
        ms_warn("event=event_too_big qid=%s", msg->qid); /* cannot happen: reply is bounded */
    ms_buf_free(&json);

    if (msg->group)
        wk_shaper_count(o->conf.shaper, msg->group, ev.outcome, cat);
    /* Hard bounces of the categories the rules name (a mailbox or a
     * domain, by default) feed the suppression list: a policy block says
     * something about us, not about the recipient. */
    if (ev.outcome == WK_OUTCOME_BOUNCED && hard && !rc->suppressed && o->conf.suppress_ttl_s > 0 &&
        wk_classifier_suppresses(classifier, cat)) {
        char ttl[24], *key = wk_suppress_key(rc->addr), *val = ms_asprintf("%s %s", dsn, reply);
        const char *argv[5] = {"SET", key, val, "EX", ttl};
        snprintf(ttl, sizeof(ttl), "%lld", (long long)o->conf.suppress_ttl_s);
        ms_redis_fire(o->redis, o->m_redis_errors, 5, argv);
        free(key);
        free(val);
    }
    /* Bounce counters per sender domain and class (a sender whose lists
     * bounce a lot shows up here; the relay control CLI reads them). */
    if (ev.outcome == WK_OUTCOME_BOUNCED && msg->mail_from && msg->mail_from[0]) {
        char sdom[MS_DNS_NAME_MAX + 1], *key;
        if (ms_addr_domain_copy(msg->mail_from, sdom, sizeof(sdom)) == 0 && sdom[0]) {
            key = ms_asprintf(MS_KEY_BOUNCES "%s", sdom);
            const char *argv[4] = {"HINCRBY", key, ev.class_name, "1"};
            const char *exp[3] = {"EXPIRE", key, WK_BOUNCE_COUNTER_TTL};
            ms_redis_fire(o->redis, o->m_redis_errors, 4, argv);
            ms_redis_fire(o->redis, o->m_redis_errors, 3, exp);
            free(key);
        }
    }
    return ev.outcome;
}
