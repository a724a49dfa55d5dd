/*
 * fe_server.c - settings, listeners, delivery reports and draining for the
 * frontend (see fe_server.h).
 */
#include "fe_server.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- settings ---- */

static int get_u64(const ms_config *cfg, const char *sec, const char *key, int64_t def,
                   int64_t min, int64_t max, uint64_t *out, char *err, size_t errlen)
{
    int64_t v;

    if (ms_config_get_int(cfg, sec, key, def, min, max, &v) < 0) {
        snprintf(err, errlen, "[%s] %s: want an integer in [%lld, %lld]", sec, key,
                 (long long)min, (long long)max);
        return MS_ECONFIG;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Config key and default of each enum fe_rate_kind, in order. */
static const char *const rate_keys[FE_RATE_COUNT] = {
    "connections_per_ip", "messages_per_user",    "messages_per_domain",
    "recipients_per_client", "auth_failures_per_ip", "auth_failures_per_user",
};
static const char *const rate_defaults[FE_RATE_COUNT] = {"0", "0", "0", "0", "30/10m", "10/10m"};
static const char *const local_limit_names[FE_LIMIT_COUNT - FE_RATE_COUNT] = {
    "max_connections", "max_connections_per_ip", "max_commands", "max_pending_messages"};

const char *fe_limit_name(int limit)
{
    if (limit >= 0 && limit < FE_RATE_COUNT)
        return rate_keys[limit];
    if (limit >= FE_RATE_COUNT && limit < FE_LIMIT_COUNT)
        return local_limit_names[limit - FE_RATE_COUNT];
    return "?";
}

int fe_settings_need_redis(const struct fe_settings *set)
{
    int i;

    for (i = 0; i < FE_RATE_COUNT; i++)
        if (set->rates[i].n > 0)
            return 1;
    return set->refuse_suppressed;
}

int fe_settings_load(struct fe_settings *set, const ms_config *cfg, char *err, size_t errlen)
{
    const char *v;
    static char host[256];
    char *copy, *items[FE_TRUSTED_NETWORKS_MAX > FE_ACCEPTED_DOMAINS_MAX
                           ? FE_TRUSTED_NETWORKS_MAX
                           : FE_ACCEPTED_DOMAINS_MAX];
    size_t n, i;
    uint64_t secs;

    memset(set, 0, sizeof(*set));
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "frontend");
    host[sizeof(host) - 1] = '\0';
    set->node_id = ms_config_get(cfg, "node", "id", host);
    set->hostname = ms_config_get(cfg, "node", "hostname", "localhost");
    set->topic = ms_config_get(cfg, "kafka", "topic", "queue");
    /* The Kafka record holds the message and its envelope. */
    if (get_u64(cfg, "kafka", "linger_ms", FE_LINGER_MS_DEF, 1, 1000, &set->kafka_linger_ms, err,
                errlen) < 0 ||
        get_u64(cfg, "kafka", "group_commit_window_us", FE_COMMIT_WINDOW_US_DEF, 1, 1000000,
                &set->group_commit_window_us, err, errlen) < 0)
        return MS_ECONFIG;
    if (ms_config_get_bool(cfg, "kafka", "group_commit", 1, &set->group_commit, err, errlen) < 0)
        return MS_ECONFIG;
    if (get_u64(cfg, "smtp", "max_message_size", 26214400, 1024,
                MS_KAFKA_RECORD_MAX - FE_ENVELOPE_HEADROOM, &set->max_message_size, err,
                errlen) < 0 ||
        get_u64(cfg, "smtp", "max_recipients", FE_MAX_RECIPIENTS_DEF, 1, 100000,
                &set->max_recipients, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_errors", FE_MAX_ERRORS_DEF, 1, 1000, &set->max_errors, err,
                errlen) < 0)
        return MS_ECONFIG;
    if (get_u64(cfg, "smtp", "command_timeout", FE_COMMAND_TIMEOUT_DEF, 1, 3600, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->command_timeout_ms = secs * 1000;
    if (get_u64(cfg, "smtp", "greeting_timeout", FE_GREETING_TIMEOUT_DEF, 1, 3600, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->greeting_timeout_ms = secs * 1000;
    if (get_u64(cfg, "smtp", "drain_timeout", FE_DRAIN_TIMEOUT_DEF, 1, 3600, &secs, err,
                errlen) < 0)
        return MS_ECONFIG;
    set->drain_timeout_ms = secs * 1000;

    copy = ms_strdup(ms_config_get(cfg, "smtp", "accepted_domains", "mailstream.test"));
    n = ms_config_split_list(copy, items, FE_ACCEPTED_DOMAINS_MAX);
    set->accepted_domains = ms_calloc(n ? n : 1, sizeof(char *));
    for (i = 0; i < n; i++)
        set->accepted_domains[i] = ms_strdup(items[i]);
    set->naccepted = n;
    free(copy);

    copy = ms_strdup(ms_config_get(cfg, "smtp", "trusted_networks", ""));
    n = ms_config_split_list(copy, items, FE_TRUSTED_NETWORKS_MAX);
    set->trusted = ms_calloc(n ? n : 1, sizeof(*set->trusted));
    for (i = 0; i < n; i++)
        if (fe_cidr_parse(items[i], &set->trusted[i]) < 0) {
            snprintf(err, errlen, "[smtp] trusted_networks: bad network \"%s\"", items[i]);
            free(copy);
            return MS_ECONFIG;
        }
    set->ntrusted = n;
    free(copy);

    copy = ms_strdup(ms_config_get(cfg, "smtp", "proxy_trusted_networks", ""));
    n = ms_config_split_list(copy, items, FE_TRUSTED_NETWORKS_MAX);
    set->proxy_trusted = ms_calloc(n ? n : 1, sizeof(*set->proxy_trusted));
    for (i = 0; i < n; i++)
        if (fe_cidr_parse(items[i], &set->proxy_trusted[i]) < 0) {
            snprintf(err, errlen, "[smtp] proxy_trusted_networks: bad network \"%s\"", items[i]);
            free(copy);
            return MS_ECONFIG;
        }
    set->nproxy_trusted = n;
    free(copy);

    if (get_u64(cfg, "smtp", "max_connections", FE_MAX_CONNECTIONS_DEF, 1, 10000000,
                &set->max_connections, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_connections_per_ip", FE_MAX_CONN_PER_IP_DEF, 1, 10000000,
                &set->max_connections_per_ip, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_commands", FE_MAX_COMMANDS_DEF, 10, 100000000,
                &set->max_commands, err, errlen) < 0 ||
        get_u64(cfg, "smtp", "max_pending_messages", FE_MAX_PENDING_DEF, 1, 10000000,
                &set->max_pending, err, errlen) < 0 ||
        get_u64(cfg, "ratelimit", "timeout_ms", FE_RL_TIMEOUT_DEF, 10, 600000,
                &set->rl_timeout_ms, err, errlen) < 0)
        return MS_ECONFIG;
    for (i = 0; i < FE_RATE_COUNT; i++) {
        v = ms_config_get(cfg, "ratelimit", rate_keys[i], rate_defaults[i]);
        if (fe_rate_parse(v, &set->rates[i]) < 0) {
            snprintf(err, errlen, "[ratelimit] %s: want N/PERIOD (e.g. 100/1h) or 0, not \"%s\"",
                     rate_keys[i], v);
            return MS_ECONFIG;
        }
    }
    set->rl_prefix = ms_config_get(cfg, "ratelimit", "key_prefix", "ms:rl:");
    v = ms_config_get(cfg, "ratelimit", "redis_failure", "open");
    if (strcmp(v, "open") == 0)
        set->rl_fail_closed = 0;
    else if (strcmp(v, "closed") == 0)
        set->rl_fail_closed = 1;
    else {
        snprintf(err, errlen, "[ratelimit] redis_failure: want open or closed");
        return MS_ECONFIG;
    }
    if (ms_config_get_bool(cfg, "smtp", "refuse_suppressed", 0, &set->refuse_suppressed, err,
                           errlen) < 0)
        return MS_ECONFIG;
    /* worker/delivery.c suppress_key(): the same key, lower-cased. */
    set->suppress_prefix = "ms:suppress:";
    return 0;
}

void fe_settings_free(struct fe_settings *set)
{
    size_t i;

    for (i = 0; i < set->naccepted; i++)
        free(set->accepted_domains[i]);
    free(set->accepted_domains);
    free(set->trusted);
    free(set->proxy_trusted);
    memset(set, 0, sizeof(*set));
}

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

static int producer_submit(void *arg, uint64_t id, const char *key, size_t keylen,
                           const void *value, size_t len)
{
    struct fe_server *srv = arg;

    if (srv->producer == NULL)
        return MS_EUNAVAIL;
    return ms_producer_send(srv->producer, srv->set.topic, key, keylen, value, len, id);
}

static int producer_submit_owned(void *arg, uint64_t id, const char *key, size_t keylen,
                                 void *value, size_t len)
{
    struct fe_server *srv = arg;

    if (srv->producer == NULL)
        return MS_EUNAVAIL;
    return ms_producer_send_owned(srv->producer, srv->set.topic, key, keylen, value, len, id);
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
    for (i = 0; i < n; i++) {
        struct fe_commit_record *r = &srv->sending[i];
        int e = srv->submit_owned(srv->submit_arg, r->id, r->key, r->keylen, r->buf, r->len);

        if (e < 0) {
            free(r->buf);
            failed[nfailed] = r->id;
            errs[nfailed++] = e;
        }
    }
    /* Reports only after the whole batch is out: a report runs the session,
     * which may hold its next record. */
    for (i = 0; i < nfailed; i++)
        fe_server_submitted(srv, failed[i], errs[i], ms_err_name(errs[i]));
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

void fe_server_commit_start(struct fe_server *srv)
{
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

int fe_server_submit(struct fe_server *srv, uint64_t id, const char *key, size_t keylen,
                     uint8_t *buf, size_t len)
{
    int r;

    if (!srv->commit_on || !fe_commit_can_hold(&srv->commit, keylen)) {
        r = srv->submit(srv->submit_arg, id, key, keylen, buf, len);
        free(buf);
        if (r == 0 && srv->commit_on)
            fe_commit_sent(&srv->commit, 1);
        return r;
    }
    /* Held records go from the timer or the check callback, never from
     * here: a failure to send is reported to its session, and this session
     * is still in the middle of its DATA. */
    fe_commit_hold(&srv->commit, id, key, keylen, buf, len, uv_hrtime());
    if (srv->commit.nrec == 1)
        commit_arm(srv);
    return 0;
}

void fe_server_init(struct fe_server *srv, uv_loop_t *loop)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->submit = producer_submit;
    srv->submit_owned = producer_submit_owned;
    srv->submit_arg = srv;
    fe_idmap_init(&srv->sessions);
    fe_idmap_init(&srv->pending);
    fe_idmap_init(&srv->policy);
    fe_conn_table_init(&srv->own_conns);
    srv->conns = &srv->own_conns;
}

void fe_conn_table_init(struct fe_conn_table *ct)
{
    pthread_mutex_init(&ct->lock, NULL);
    ct->nconns = 0;
    fe_idmap_init(&ct->per_ip);
}

void fe_conn_table_free(struct fe_conn_table *ct)
{
    fe_idmap_free(&ct->per_ip);
    pthread_mutex_destroy(&ct->lock);
}

int fe_conn_admit(struct fe_conn_table *ct, uint64_t key, uint64_t max_total, uint64_t max_per_ip,
                  uint64_t *open)
{
    uintptr_t n;
    int r = 0;

    pthread_mutex_lock(&ct->lock);
    n = (uintptr_t)fe_idmap_get(&ct->per_ip, key);
    *open = n;
    if (max_total && ct->nconns >= max_total)
        r = FE_LIMIT_CONNECTIONS;
    else if (max_per_ip && n >= max_per_ip)
        r = FE_LIMIT_CONN_PER_IP;
    else {
        fe_idmap_put(&ct->per_ip, key, (void *)(n + 1));
        ct->nconns++;
    }
    pthread_mutex_unlock(&ct->lock);
    return r;
}

void fe_conn_release(struct fe_conn_table *ct, uint64_t key)
{
    uintptr_t n;

    pthread_mutex_lock(&ct->lock);
    n = (uintptr_t)fe_idmap_get(&ct->per_ip, key);
    if (n <= 1)
        fe_idmap_del(&ct->per_ip, key);
    else
        fe_idmap_put(&ct->per_ip, key, (void *)(n - 1));
    ct->nconns--;
    pthread_mutex_unlock(&ct->lock);
}

void fe_server_policy_result(void *arg, uint64_t id, int result)
{
    struct fe_server *srv = arg;
    struct fe_session *s = fe_idmap_del(&srv->policy, id);

    if (s != NULL) /* else: the session is gone, or it stopped waiting */
        fe_session_policy(s, result);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct fe_listener *l = server->data;
    struct fe_transport *t;

    if (status < 0) {
        ms_warn("event=accept_error listener=%s error=\"%s\"", l->name, uv_strerror(status));
        return;
    }
    if ((t = fe_transport_tcp_accept(server, &fe_session_transport_cb, NULL)) == NULL)
        return;
    fe_session_new(l->srv, l, t);
}

/* SO_REUSEPORT before bind, so several frontend processes share the port
 * and the kernel spreads connections over them. */
static int open_listener(struct fe_listener *l, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    int fd, one = 1, r;

    if (ms_parse_hostport(l->listen, &ss) < 0) {
        snprintf(err, errlen, "[listener.%s] listen: bad address \"%s\"", l->name, l->listen);
        return MS_ECONFIG;
    }
    slen = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, slen) < 0) {
        snprintf(err, errlen, "[listener.%s] %s: %s", l->name, l->listen, strerror(errno));
        if (fd >= 0)
            close(fd);
        return MS_EIO;
    }
    uv_tcp_init(l->srv->loop, &l->tcp);
    l->tcp.data = l;
    l->open = 1;
    if ((r = uv_tcp_open(&l->tcp, fd)) < 0 ||
        (r = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection)) < 0) {
        snprintf(err, errlen, "[listener.%s] %s: %s", l->name, l->listen, uv_strerror(r));
        return MS_EIO;
    }
    ms_info("event=listening listener=%s listen=%s role=%s proxy=%s", l->name, l->listen,
            l->role == FE_ROLE_MX ? "mx" : l->role == FE_ROLE_SUBMISSION ? "submission"
                                                                         : "submissions",
            l->proxy ? "yes" : "no");
    return 0;
}

int fe_server_listen(struct fe_server *srv, const ms_config *cfg, char *err, size_t errlen)
{
    const char *const *names;
    const char *role, *listen;
    size_t n, i;
    int r;

    n = ms_config_sections(cfg, "listener.", &names);
    if (n == 0) {
        snprintf(err, errlen, "no [listener.NAME] section");
        return MS_ECONFIG;
    }
    srv->listeners = ms_calloc(n, sizeof(*srv->listeners));
    for (i = 0; i < n; i++) {
        struct fe_listener *l = &srv->listeners[i];

        l->srv = srv;
        l->name = ms_strdup(names[i] + strlen("listener."));
        srv->nlisteners++;
        listen = ms_config_get(cfg, names[i], "listen", NULL);
        role = ms_config_get(cfg, names[i], "role", "mx");
        if (listen == NULL || *listen == '\0') {
            snprintf(err, errlen, "[%s] listen is required", names[i]);
            return MS_ECONFIG;
        }
        l->listen = ms_strdup(listen);
        if (strcmp(role, "mx") == 0)
            l->role = FE_ROLE_MX;
        else if (strcmp(role, "submission") == 0)
            l->role = FE_ROLE_SUBMISSION;
        else if (strcmp(role, "submissions") == 0)
            l->role = FE_ROLE_SUBMISSIONS;
        else {
            snprintf(err, errlen, "[%s] role: want mx, submission or submissions", names[i]);
            return MS_ECONFIG;
        }
        if ((r = ms_config_get_bool(cfg, names[i], "proxy", 0, &l->proxy, err, errlen)) < 0)
            return r;
        if (l->proxy && srv->set.nproxy_trusted == 0)
            ms_warn("event=config_warning listener=%s reason=\"proxy = yes without "
                    "[smtp] proxy_trusted_networks: every connection will be refused\"",
                    l->name);
        if (l->role != FE_ROLE_MX && srv->tls == NULL) {
            snprintf(err, errlen, "[%s] role %s needs [smtp] tls_cert and tls_key", names[i],
                     role);
            return MS_ECONFIG;
        }
        if (l->role != FE_ROLE_MX && srv->passwd == NULL)
            ms_warn("event=config_warning listener=%s reason=\"role %s without passwd_file: "
                    "nobody can authenticate\"",
                    l->name, role);
        fe_metrics_listener(l);
        if ((r = open_listener(l, err, errlen)) < 0)
            return r;
    }
    return 0;
}

void fe_server_submitted(void *arg, uint64_t id, int err, const char *errstr)
{
    struct fe_server *srv = arg;
    struct fe_session *s = fe_idmap_del(&srv->pending, id);

    if (srv->commit_on)
        fe_commit_reported(&srv->commit); /* the next batch may go */

    if (s == NULL) {
        /* The client left while we waited: it will send again. */
        ms_info("event=report_without_session txn=%llu result=%s", (unsigned long long)id,
                err == 0 ? "queued" : ms_err_name(err));
        return;
    }
    fe_session_queued(s, err, errstr);
    /* Back-pressure over: let paused sessions read again. */
    if (srv->overloaded && srv->pending.count < srv->set.max_pending) {
        struct fe_session *x;

        srv->overloaded = 0;
        ms_info("event=backpressure_off pending=%zu", srv->pending.count);
        for (x = srv->head; x; x = fe_session_next(x))
            fe_session_resume(x);
    }
}

static void listener_closed(uv_handle_t *h)
{
    (void)h;
}

void fe_server_close_listeners(struct fe_server *srv)
{
    size_t i;

    for (i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i].open && !uv_is_closing((uv_handle_t *)&srv->listeners[i].tcp)) {
            uv_close((uv_handle_t *)&srv->listeners[i].tcp, listener_closed);
            srv->listeners[i].open = 0;
        }
}

void fe_server_drain(struct fe_server *srv)
{
    struct fe_session *s;

    srv->draining = 1;
    fe_server_close_listeners(srv);
    /* Closing never frees synchronously (only close callbacks do), so the
     * list stays intact while we walk it. */
    for (s = srv->head; s; s = fe_session_next(s))
        fe_session_drain(s);
}

void fe_server_abort(struct fe_server *srv)
{
    struct fe_session *s;

    for (s = srv->head; s; s = fe_session_next(s))
        fe_session_abort(s);
}

int fe_server_idle(const struct fe_server *srv)
{
    return srv->head == NULL;
}

void fe_server_free(struct fe_server *srv)
{
    size_t i;

    for (i = 0; i < srv->nlisteners; i++) {
        free(srv->listeners[i].name);
        free(srv->listeners[i].listen);
    }
    free(srv->listeners);
    fe_idmap_free(&srv->sessions);
    fe_idmap_free(&srv->pending);
    fe_idmap_free(&srv->policy);
    fe_conn_table_free(&srv->own_conns);
    fe_settings_free(&srv->set);
}
