/*
 * fe_server.c - one loop's server: metrics, the way records leave (submit and
 * group commit), set-up and release (see fe_server.h).
 */
#include "fe_server.h"
#include "ms_error.h"
#include "ms_json.h"
#include "ms_mem.h"
#include "ms_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fe_metrics_register(struct fe_metrics *m)
{
    char labels[64];
    int v;

    static const double size_buckets[] = {1024,    4096,     16384,    65536,    262144,
                                          1048576, 4194304,  10485760, 26214400, 52428800,
                                          104857600};
    static const char *const classes[FE_REPLY_CLASSES] = {"2xx", "3xx", "4xx", "5xx"};

    for (v = 0; v < FE_REPLY_CLASSES; v++) {
        snprintf(labels, sizeof(labels), "class=\"%s\"", classes[v]);
        m->replies[v] = ms_counter_new("mailstream_smtp_replies_total",
                                       "SMTP replies sent, by code class (multi-line replies "
                                       "once).",
                                       labels);
    }
    m->transactions = ms_counter_new("mailstream_smtp_transactions_total",
                                     "Mail transactions begun (MAIL accepted).", NULL);
    m->bytes_out = ms_counter_new("mailstream_smtp_sent_bytes_total",
                                  "Octets of replies sent to SMTP clients (before TLS).", NULL);
    m->kafka_submit_errors = ms_counter_new(
        "mailstream_smtp_kafka_errors_total",
        "Messages Kafka did not take: refused when produced, or failed in the delivery report.",
        "stage=\"produce\"");
    m->kafka_report_errors = ms_counter_new(
        "mailstream_smtp_kafka_errors_total",
        "Messages Kafka did not take: refused when produced, or failed in the delivery report.",
        "stage=\"report\"");
    m->message_size = ms_histogram_new("mailstream_smtp_message_size_bytes",
                                       "Size of queued messages (with our Received header).",
                                       NULL, size_buckets,
                                       sizeof(size_buckets) / sizeof(size_buckets[0]));
    m->sessions = ms_gauge_new("mailstream_smtp_sessions", "SMTP sessions open.", NULL);
    for (v = 0; v < FE_VERB_COUNT; v++) {
        snprintf(labels, sizeof(labels), "verb=\"%s\"", fe_verb_name((enum fe_verb)v));
        m->commands[v] = ms_counter_new("mailstream_smtp_commands_total",
                                        "SMTP commands received, by verb.", labels);
    }
    m->queued = ms_counter_new("mailstream_smtp_messages_total",
                               "Messages at the end of DATA, by result.", "result=\"queued\"");
    m->rejected = ms_counter_new("mailstream_smtp_messages_total",
                                 "Messages at the end of DATA, by result.", "result=\"rejected\"");
    m->tempfail = ms_counter_new("mailstream_smtp_messages_total",
                                 "Messages at the end of DATA, by result.", "result=\"tempfail\"");
    m->bytes_in = ms_counter_new("mailstream_smtp_received_bytes_total",
                                 "Octets received from SMTP clients (after TLS).", NULL);
    m->auth_ok = ms_counter_new("mailstream_smtp_auth_total", "AUTH attempts, by result.",
                                "result=\"ok\"");
    m->auth_fail = ms_counter_new("mailstream_smtp_auth_total", "AUTH attempts, by result.",
                                  "result=\"failed\"");
    m->tls_ok = ms_counter_new("mailstream_smtp_tls_handshakes_total",
                               "TLS handshakes, by result.", "result=\"ok\"");
    m->tls_fail = ms_counter_new("mailstream_smtp_tls_handshakes_total",
                                 "TLS handshakes, by result.", "result=\"failed\"");
    m->timeouts = ms_counter_new("mailstream_smtp_timeouts_total",
                                 "Sessions closed for idling too long.", NULL);
    m->proxy_ok = ms_counter_new("mailstream_smtp_proxy_headers_total",
                                 "PROXY protocol headers on proxy listeners, by result.",
                                 "result=\"ok\"");
    m->proxy_bad = ms_counter_new("mailstream_smtp_proxy_headers_total",
                                  "PROXY protocol headers on proxy listeners, by result.",
                                  "result=\"malformed\"");
    m->proxy_untrusted = ms_counter_new("mailstream_smtp_proxy_headers_total",
                                        "PROXY protocol headers on proxy listeners, by result.",
                                        "result=\"untrusted_peer\"");
    for (v = 0; v < FE_LIMIT_COUNT; v++) {
        snprintf(labels, sizeof(labels), "limit=\"%s\"", fe_limit_name(v));
        m->limit_hits[v] = ms_counter_new("mailstream_smtp_limit_hits_total",
                                          "Connections, commands and messages refused by a "
                                          "named limit or rate limit.",
                                          labels);
    }
    m->rl_redis_open = ms_counter_new("mailstream_smtp_ratelimit_redis_failures_total",
                                      "Rate-limit or suppression checks Redis could not answer, "
                                      "by what was done ([ratelimit] redis_failure).",
                                      "action=\"allowed\"");
    m->rl_redis_closed = ms_counter_new("mailstream_smtp_ratelimit_redis_failures_total",
                                        "Rate-limit or suppression checks Redis could not "
                                        "answer, by what was done ([ratelimit] redis_failure).",
                                        "action=\"refused\"");
    m->suppressed = ms_counter_new("mailstream_smtp_suppressed_recipients_total",
                                   "Recipients refused at RCPT because they are on the "
                                   "suppression list.",
                                   NULL);
    for (v = 1; v < FE_FMT_COUNT; v++) {
        snprintf(labels, sizeof(labels), "rule=\"%s\"", fe_fmt_rule_name(v));
        m->format_refused[v] = ms_counter_new("mailstream_frontend_format_refused_total",
                                              "Messages refused at the end of DATA or BDAT by "
                                              "a header section limit or format rule.",
                                              labels);
    }
    m->queue_latency = ms_histogram_new(
        "mailstream_smtp_queue_latency_seconds",
        "From the end of DATA to the Kafka delivery report.", NULL, ms_latency_buckets,
        ms_latency_buckets_n);
    {
        static const char *const why[FE_COMMIT_REASONS] = {"ready", "linger", "full", "flush"};
        char clabels[64];

        for (int i = 0; i < FE_COMMIT_REASONS; i++) {
            snprintf(clabels, sizeof(clabels), "reason=\"%s\"", why[i]);
            m->commits[i] = ms_counter_new(
                "mailstream_smtp_group_commits_total",
                "Batches of records handed to Kafka together (group commit), by why they "
                "went: ready (no session left that was about to add one), linger (the "
                "oldest waited [kafka] linger_ms), full, flush (shutdown).",
                clabels);
        }
    }
    m->commit_records = ms_counter_new("mailstream_smtp_group_commit_records_total",
                                       "Records handed to Kafka by group commit.", NULL);
    fe_verify_metrics_register(&m->verify);
}

void fe_metrics_listener(struct fe_listener *l)
{
    char labels[256];

    snprintf(labels, sizeof(labels), "listener=\"%s\",tls=\"%s\"", l->name,
             l->role == FE_ROLE_SUBMISSIONS ? "yes" : "no");
    l->m_conn = ms_counter_new("mailstream_smtp_connections_total",
                               "SMTP connections accepted, by listener and whether TLS "
                               "started at once (implicit TLS).",
                               labels);
    snprintf(labels, sizeof(labels), "listener=\"%s\"", l->name);
    l->m_starttls = ms_counter_new("mailstream_smtp_starttls_total",
                                   "Connections upgraded by STARTTLS, by listener.", labels);
}

/* ---- server ---- */

/* The record is read where it lies (the buffer is the server's until the
 * report): a 1 MiB message is not copied into librdkafka. */
static int producer_submit(void *arg, uint64_t id, const char *key, size_t keylen,
                           const void *value, size_t len)
{
    struct fe_server *srv = arg;

    if (srv->producer == NULL)
        return MS_EUNAVAIL;
    return ms_producer_send_ref(srv->producer, srv->set.topic, key, keylen, value, len, id);
}

/* ---- records' buffers, from the producer's taking them to their report ---- */

struct fe_sent {
    struct ms_list node; /* on srv->sent_list */
    uint8_t *buf;
};

/* Send record buf[off..off + len) and keep buf until its report; freed at
 * once when it could not go. */
static int send_record(struct fe_server *srv, uint64_t id, const char *key, size_t keylen,
                       uint8_t *buf, size_t off, size_t len)
{
    struct fe_sent *t;
    int r = srv->submit(srv->submit_arg, id, key, keylen, buf + off, len);

    if (r < 0) {
        free(buf);
        return r;
    }
    t = ms_malloc(sizeof(*t));
    t->buf = buf;
    ms_list_insert_tail(&srv->sent_list, &t->node);
    ms_idmap_put(&srv->sent, id, t);
    return 0;
}

static void sent_drop(struct fe_sent *t)
{
    ms_list_remove(&t->node);
    free(t->buf);
    free(t);
}

void fe_server_sent_free(struct fe_server *srv)
{
    struct ms_list *n;

    while ((n = ms_list_first(&srv->sent_list)) != NULL) {
        struct fe_sent *t = ms_list_entry(n, struct fe_sent, node);

        sent_drop(t);
    }
    ms_idmap_free(&srv->sent);
    ms_idmap_init(&srv->sent);
}

void fe_server_event(struct fe_server *srv, const char *event, const char *qid,
                     const char *client, const char *rcpt, size_t size, const char *reply)
{
    char ts[MS_JSON_TIME_MAX];
    struct ms_buf b;

    if (srv->producer == NULL || srv->set.events_topic[0] == '\0')
        return;
    ms_json_time(ts, sizeof(ts), ms_time_now_us());
    /* The reply is bounded by the SMTP line limit: the buffer cannot fill. */
    ms_buf_init(&b, 4096);
    ms_buf_appendf(&b, "{\"event\":\"%s\",\"qid\":", event);
    ms_json_string(&b, qid, strlen(qid));
    ms_buf_appendf(&b, ",\"client\":");
    ms_json_string(&b, client, strlen(client));
    if (rcpt) {
        ms_buf_appendf(&b, ",\"rcpt\":");
        ms_json_string(&b, rcpt, strlen(rcpt));
    }
    if (reply) {
        ms_buf_appendf(&b, ",\"reply\":");
        ms_json_string(&b, reply, strlen(reply));
    } else {
        ms_buf_appendf(&b, ",\"size\":%zu", size);
    }
    ms_buf_appendf(&b, ",\"node\":");
    ms_json_string(&b, srv->set.node_id, strlen(srv->set.node_id));
    ms_buf_appendf(&b, ",\"ts\":\"%s\"}", ts);
    if (ms_producer_send(srv->producer, srv->set.events_topic, qid, strlen(qid), b.data, b.len,
                         FE_EVENT_REPORT_ID) < 0)
        ms_counter_inc(srv->m.kafka_submit_errors);
    ms_buf_free(&b);
}

/* ---- group commit (fe_commit.h) ---- */

static void commit_release(struct fe_server *srv, enum fe_commit_reason why)
{
    uint64_t failed[FE_COMMIT_MAX_RECORDS];
    int errs[FE_COMMIT_MAX_RECORDS];
    size_t i, n, nfailed = 0;

    uv_timer_stop(&srv->commit_timer);
    n = fe_commit_take(&srv->commit, srv->sending);
    if (n == 0)
        return;
    ms_counter_inc(srv->m.commits[why]);
    ms_counter_add(srv->m.commit_records, n);
    fe_commit_sent(&srv->commit, n); /* failures come back as reports below */
    if (srv->producer)
        ms_producer_batch_begin(srv->producer); /* one partition, one request */
    for (i = 0; i < n; i++) {
        struct fe_commit_record *r = &srv->sending[i];
        int e = send_record(srv, r->id, r->key, r->keylen, r->buf, r->off, r->len);

        if (e < 0) {
            failed[nfailed] = r->id;
            errs[nfailed++] = e;
        }
    }
    /* Reports only after the whole batch is out: a report runs the session,
     * which may hold its next record. */
    for (i = 0; i < nfailed; i++)
        srv->commit_report(srv, failed[i], errs[i], ms_err_name(errs[i]));
}

/* Release what is due; returns 1 when records are still held. */
static int commit_check(struct fe_server *srv)
{
    int why;

    if (srv->commit.nrec == 0)
        return 0;
    why = fe_commit_due(&srv->commit, uv_hrtime());
    if (why < 0)
        return 1;
    commit_release(srv, (enum fe_commit_reason)why);
    return 0;
}

static void commit_timer_cb(uv_timer_t *t);

static void commit_arm(struct fe_server *srv)
{
    uint64_t now = uv_hrtime(), at = fe_commit_deadline(&srv->commit, now);

    if (at > 0)
        uv_timer_start(&srv->commit_timer, commit_timer_cb,
                       at > now ? (at - now + 999999) / 1000000 : 0, 0);
}

static void commit_timer_cb(uv_timer_t *t)
{
    struct fe_server *srv = t->data;

    /* Still held (a batch in flight): the next report or the hold limit. */
    if (commit_check(srv))
        commit_arm(srv);
}

static void commit_check_cb(uv_check_t *c)
{
    commit_check(c->data);
}

void fe_server_commit_start(struct fe_server *srv, ms_produce_cb report)
{
    srv->commit_report = report;
    fe_commit_init(&srv->commit, srv->set.group_commit_window_us * 1000,
                   srv->set.kafka_linger_ms * 1000000);
    uv_timer_init(srv->loop, &srv->commit_timer);
    srv->commit_timer.data = srv;
    uv_check_init(srv->loop, &srv->commit_check);
    srv->commit_check.data = srv;
    uv_check_start(&srv->commit_check, commit_check_cb);
    uv_unref((uv_handle_t *)&srv->commit_check);
    srv->commit_on = 1;
}

static void commit_handle_closed(uv_handle_t *h)
{
    (void)h;
}

void fe_server_commit_stop(struct fe_server *srv)
{
    if (!srv->commit_on)
        return;
    commit_release(srv, FE_COMMIT_FLUSH);
    srv->commit_on = 0;
    uv_close((uv_handle_t *)&srv->commit_timer, commit_handle_closed);
    uv_close((uv_handle_t *)&srv->commit_check, commit_handle_closed);
}

void fe_server_reported(struct fe_server *srv, uint64_t id)
{
    struct fe_sent *t = ms_idmap_del(&srv->sent, id);

    if (t != NULL) /* librdkafka is done with it */
        sent_drop(t);
    if (srv->commit_on)
        fe_commit_reported(&srv->commit); /* the next batch may go */
}

int fe_server_submit(struct fe_server *srv, uint64_t id, const char *key, size_t keylen,
                     uint8_t *buf, size_t off, size_t len)
{
    int r;

    if (!srv->commit_on || !fe_commit_can_hold(&srv->commit, keylen)) {
        r = send_record(srv, id, key, keylen, buf, off, len);
        if (r == 0 && srv->commit_on)
            fe_commit_sent(&srv->commit, 1);
        return r;
    }
    /* Held records go from the timer or the check callback, never from
     * here: a failure to send is reported to its session, and this session
     * is still in the middle of its DATA. */
    fe_commit_hold(&srv->commit, id, key, keylen, buf, off, len, uv_hrtime());
    if (srv->commit.nrec == 1)
        commit_arm(srv);
    return 0;
}

void fe_server_init(struct fe_server *srv, uv_loop_t *loop)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->submit = producer_submit;
    srv->submit_arg = srv;
    ms_idmap_init(&srv->sent);
    ms_list_init(&srv->sent_list);
    ms_idmap_init(&srv->sessions);
    ms_idmap_init(&srv->pending);
    ms_idmap_init(&srv->limit_checks);
    ms_list_init(&srv->live);
    fe_conn_table_init(&srv->own_conns);
    srv->conns = &srv->own_conns;
}

int fe_server_idle(const struct fe_server *srv)
{
    return ms_list_empty(&srv->live);
}

void fe_server_free(struct fe_server *srv)
{
    size_t i;

    for (i = 0; i < srv->nlisteners; i++) {
        free(srv->listeners[i].name);
        free(srv->listeners[i].listen);
    }
    free(srv->listeners);
    ms_idmap_free(&srv->sessions);
    ms_idmap_free(&srv->pending);
    ms_idmap_free(&srv->limit_checks);
    fe_server_sent_free(srv); /* main.c freed the producer first: nothing reads them */
    ms_idmap_free(&srv->sent);
    fe_conn_table_free(&srv->own_conns);
    fe_settings_free(&srv->set);
}
