/*
 * main.c - mailstream-worker: the delivery side (docs/config.md).
 *
 *   mailstream-worker -c CONFIG
 *
 * One libuv loop runs the Kafka consumer (`queue` topic), the events
 * producer, the Redis client, the delivery engine (delivery.h) with its SMTP
 * client sessions, and the operations HTTP listener (/metrics, /healthz,
 * /readyz).
 *
 * SIGTERM (or SIGINT) drains: stop consuming, abandon records waiting for a
 * retry, let running attempts finish for up to [delivery] drain_timeout_ms,
 * then abandon the rest (their offsets are not stored, so they are
 * redelivered), commit what is stored, flush the producer and exit 0.  A
 * second signal abandons at once.
 */
#include "delivery.h"
#include "fence.h"
#include "mtasts.h"
#include "tls_policy.h"
#include "tlsrpt.h"
#include "mailauth.h"
#include "ms_config.h"
#include "ms_connect.h"
#include "ms_error.h"
#include "ms_http.h"
#include "ms_kafka.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_net.h"
#include "ms_heartbeat.h"
#include "ms_redis.h"
#include "ms_resolver.h"
#include "ms_route.h"
#include "ms_version.h"
#include "retry.h"
#include "smtp_auth.h"
#include "route.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How long the producer may take to flush event records at exit. */
#define WK_PRODUCER_FLUSH_MS 5000
/* Default of [delivery] drain_timeout_ms: below the launcher's 30 s. */
#define WK_DRAIN_TIMEOUT_MS 20000

/* ---- configuration: each parameter declared once ---- */

/* Defaults of [kafka] linger_ms, fetch_min_bytes, fetch_wait_ms (make bench,
 * 5k-20: worker CPU 0.10 vs 0.15-0.20 ms/msg with librdkafka's 1/1/500).
 * linger 20 rather than 5 since a message waiting only for its events no
 * longer holds a delivery slot (delivery.c, msg_park): librdkafka sends one
 * produce request per partition, so `events`' partitions / linger_ms were
 * ~420 requests a second at 6,000 msg/s (bench/results/20261205-085843:
 * worker 0.058 -> 0.045, Kafka 0.087 -> 0.075 ms/msg). */
#define WK_KAFKA_LINGER_MS 20
/* 1 MiB: every fetch costs the broker a fixed part beside its octets (an
 * idle one ~1 ms of CPU), so fewer, fuller fetches are cheaper: 64 -> 256 KiB
 * (bench/results/20261205-090552: Kafka 0.078 -> 0.066 ms/msg), 256 KiB ->
 * 1 MiB (20261207-194252-s13-fmb-a, -194824-s13-fmb-b, -200130-s13-fmb-d:
 * Kafka -13 % at 5 KiB, Mailstream -6 %; 50 KiB -0 to -6 %; docs/scaling.md,
 * "Fewer fetches").  The price is latency under load: a busy queue's fetch
 * waits until 1 MiB has gathered (~10 ms at 100 MB/s of mail, ~2.5 for
 * 256 KiB), never more than fetch_wait_ms, the bound a delivery had before. */
#define WK_KAFKA_FETCH_MIN_BYTES (1024 * 1024)
#define WK_KAFKA_FETCH_WAIT_MS 20

static const char *var_node_id, *var_hostname, *var_metrics, *var_topic, *var_events_topic,
    *var_group, *var_relay_host, *var_log_level,
    *var_transport_map, *var_transport_map_file, *var_dns_upstream, *var_dns_trust_anchor,
    *var_tls_policy, *var_tls_policy_map, *var_tls_ca_file, *var_relay_user, *var_relay_password,
    *var_relay_password_file, *var_relay_auth_mechanisms, *var_dest_rate, *var_mta_sts_ca_file,
    *var_shaping_file, *var_bounce_rules_file, *var_tlsrpt_org_name, *var_tlsrpt_contact,
    *var_tlsrpt_from, *var_tlsrpt_submitter;
static int64_t var_max_in_flight, var_max_in_flight_bytes, var_retry_min_ms, var_retry_max_ms,
    var_connect_timeout_ms, var_drain_timeout_ms, var_smtp_port, var_retry_tiers, var_max_age_s,
    var_dns_timeout_ms, var_suppress_ttl_s, var_reply_timeout_ms, var_dest_concurrency,
    var_conn_cache_ms, var_max_msgs_per_conn, var_linger_ms, var_fetch_min_bytes,
    var_fetch_wait_ms, var_dest_rate_max_wait_ms, var_delay_warning_s, var_mta_sts_port,
    var_mta_sts_timeout_ms, var_tlsrpt_interval_s, var_fence_lease_ms, var_delivered_ttl_s;

static char default_node_id[256];

static const struct {
    const char *section, *key, *def;
    const char **var;
} str_params[] = {
    {"node", "id", default_node_id, &var_node_id},
    {"node", "hostname", "localhost", &var_hostname},
    {"node", "metrics", "127.0.0.1:9201", &var_metrics},
    {"node", "log_level", "info", &var_log_level},
    {"kafka", "topic", "queue", &var_topic},
    {"kafka", "events_topic", "events", &var_events_topic},
    {"kafka", "group", "mailstream-workers", &var_group},
    {"delivery", "relay_host", "", &var_relay_host},
    {"delivery", "relay_user", "", &var_relay_user},
    {"delivery", "relay_password", "", &var_relay_password},
    {"delivery", "relay_password_file", "", &var_relay_password_file},
    {"delivery", "relay_auth_mechanisms", "plain, login", &var_relay_auth_mechanisms},
    {"delivery", "dest_rate", "0", &var_dest_rate},
    {"delivery", "shaping_file", "", &var_shaping_file},
    {"delivery", "bounce_rules_file", "", &var_bounce_rules_file},
    {"transport", "map", "", &var_transport_map},
    {"transport", "map_file", "", &var_transport_map_file},
    {"dns", "upstream", "", &var_dns_upstream},
    {"dns", "trust_anchor", "", &var_dns_trust_anchor},
    {"tls", "policy", "may", &var_tls_policy},
    {"tls", "policy_map", "", &var_tls_policy_map},
    {"tls", "ca_file", "", &var_tls_ca_file},
    {"tls", "mta_sts_ca_file", "", &var_mta_sts_ca_file},
    /* TLS reports (RFC 8460, tlsrpt.h); "": derived from [node] hostname. */
    {"tls", "tlsrpt_org_name", "", &var_tlsrpt_org_name},
    {"tls", "tlsrpt_contact", "", &var_tlsrpt_contact},
    {"tls", "tlsrpt_from", "", &var_tlsrpt_from},
    {"tls", "tlsrpt_submitter", "", &var_tlsrpt_submitter},
};

static const struct {
    const char *section, *key;
    int64_t def, min, max;
    int64_t *var;
} int_params[] = {
    /* The worker's records are not waited for by a client: batch them more
     * (events, retry records, DSNs) and fetch in bigger pieces under load. */
    {"kafka", "linger_ms", WK_KAFKA_LINGER_MS, 1, 1000, &var_linger_ms},
    {"kafka", "fetch_min_bytes", WK_KAFKA_FETCH_MIN_BYTES, 1, 16 * 1024 * 1024,
     &var_fetch_min_bytes},
    {"kafka", "fetch_wait_ms", WK_KAFKA_FETCH_WAIT_MS, 1, 10000, &var_fetch_wait_ms},
    {"delivery", "max_in_flight", WK_MAX_IN_FLIGHT_DEFAULT, 1, 100000, &var_max_in_flight},
    {"delivery", "max_in_flight_bytes", WK_MAX_IN_FLIGHT_BYTES_DEFAULT, 1024 * 1024,
     (int64_t)1 << 40, &var_max_in_flight_bytes},
    {"delivery", "retry_min_ms", WK_RETRY_MIN_MS, 1, 24 * 3600 * 1000, &var_retry_min_ms},
    {"delivery", "retry_max_ms", WK_RETRY_MAX_MS, 1, 24 * 3600 * 1000, &var_retry_max_ms},
    {"delivery", "connect_timeout_ms", WK_SMTP_TIMEOUT_CONNECT_MS, 1, 3600 * 1000,
     &var_connect_timeout_ms},
    {"delivery", "drain_timeout_ms", WK_DRAIN_TIMEOUT_MS, 0, 3600 * 1000, &var_drain_timeout_ms},
    {"delivery", "smtp_port", 25, 1, 65535, &var_smtp_port},
    {"delivery", "reply_timeout_ms", 0, 0, 3600 * 1000, &var_reply_timeout_ms},
    {"delivery", "dest_concurrency", 0, 0, 100000, &var_dest_concurrency},
    {"delivery", "connection_cache_ms", 2000, 0, 600 * 1000, &var_conn_cache_ms},
    {"delivery", "max_msgs_per_conn", WK_SMTP_MAX_MSGS_PER_CONN, 0, 1000000,
     &var_max_msgs_per_conn},
    {"delivery", "dest_rate_max_wait_ms", WK_DEST_RATE_MAX_WAIT_MS, 0, 3600 * 1000,
     &var_dest_rate_max_wait_ms},
    {"delivery", "fence_lease_ms", WK_FENCE_LEASE_MS, 0, WK_FENCE_LEASE_MAX_MS,
     &var_fence_lease_ms},
    {"delivery", "delivered_ttl_s", 0, 0, 365 * 24 * 3600, &var_delivered_ttl_s},
    {"retry", "delay_warning_s", 0, 0, 365 * 24 * 3600, &var_delay_warning_s},
    {"retry", "tiers", WK_RETRY_TIERS_DEFAULT, 0, WK_RETRY_TIERS_MAX, &var_retry_tiers},
    {"retry", "max_age_s", WK_MAX_AGE_S, 1, 365 * 24 * 3600, &var_max_age_s},
    {"dns", "timeout_ms", MS_RESOLVER_TIMEOUT_MS, 100, 600 * 1000, &var_dns_timeout_ms},
    {"suppression", "ttl_s", WK_SUPPRESS_TTL_S, 0, 365 * 24 * 3600, &var_suppress_ttl_s},
    /* RFC 8461 §3.3 fetches from port 443; another port is for tests. */
    {"tls", "mta_sts_port", 443, 1, 65535, &var_mta_sts_port},
    {"tls", "mta_sts_timeout_ms", 10000, 100, 600 * 1000, &var_mta_sts_timeout_ms},
    /* RFC 8460 §4.1 reports UTC days; shorter periods are for tests. */
    {"tls", "tlsrpt_interval_s", 86400, 1, 86400, &var_tlsrpt_interval_s},
};

/* Booleans: yes/no (true/false, 1/0), anything else refused at start. */
static int var_relay_auth_plaintext, var_mta_sts, var_tlsrpt;

static const struct {
    const char *section, *key;
    int def;
    int *var;
} bool_params[] = {
    {"delivery", "relay_auth_plaintext", 0, &var_relay_auth_plaintext},
    {"tls", "mta_sts", 0, &var_mta_sts},
    {"tls", "tlsrpt", 0, &var_tlsrpt},
};

static void load_params(const ms_config *cfg)
{
    char err[512];
    size_t i;
    int bad = 0;

    if (gethostname(default_node_id, sizeof(default_node_id) - 1) != 0)
        snprintf(default_node_id, sizeof(default_node_id), "worker");
    for (i = 0; i < sizeof(str_params) / sizeof(str_params[0]); i++)
        *str_params[i].var = ms_config_get(cfg, str_params[i].section, str_params[i].key,
                                           str_params[i].def);
    for (i = 0; i < sizeof(int_params) / sizeof(int_params[0]); i++)
        if (ms_config_get_int(cfg, int_params[i].section, int_params[i].key, int_params[i].def,
                              int_params[i].min, int_params[i].max, int_params[i].var) < 0)
            bad = 1;
    if (bad)
        ms_fatal("event=config_invalid");
    for (i = 0; i < sizeof(bool_params) / sizeof(bool_params[0]); i++)
        if (ms_config_get_bool(cfg, bool_params[i].section, bool_params[i].key,
                               bool_params[i].def, bool_params[i].var, err, sizeof(err)) < 0)
            ms_fatal("event=config_invalid error=\"%s\"", err);
}

/* The transport map: [transport] map (comma-separated entries) and then
 * [transport] map_file (one entry per line), later entries winning. */
static ms_transport_map *load_transports(void)
{
    ms_transport_map *m = ms_transport_map_new();
    char *copy, *items[MS_TRANSPORT_MAP_MAX], err[256], line[MS_TRANSPORT_LINE_MAX + 2];
    size_t i, n;
    FILE *f;
    int lineno = 0;

    copy = ms_strdup(var_transport_map);
    n = ms_config_split_list(copy, items, MS_TRANSPORT_MAP_MAX);
    for (i = 0; i < n; i++)
        if (ms_transport_map_add(m, items[i], strlen(items[i]), err, sizeof(err)) < 0)
            ms_fatal("event=config_invalid section=transport key=map entry=\"%s\" error=\"%s\"",
                     items[i], err);
    free(copy);
    if (*var_transport_map_file) {
        if ((f = fopen(var_transport_map_file, "r")) == NULL)
            ms_fatal("event=config_invalid section=transport key=map_file path=%s error=\"%s\"",
                     var_transport_map_file, strerror(errno));
        while (fgets(line, sizeof(line), f)) {
            lineno++;
            if (ms_transport_map_add(m, line, strlen(line), err, sizeof(err)) < 0)
                ms_fatal("event=config_invalid section=transport key=map_file path=%s line=%d "
                         "error=\"%s\"", var_transport_map_file, lineno, err);
        }
        fclose(f);
    }
    return m;
}

/* [tls]: the default level, the per-destination policy map
 * (tls_policy.h: "KEY LEVEL [match=...] [ca_file=...]" entries, comma
 * separated) and the CAs for verify/secure.  Each entry's ca_file gets its
 * own client context; entries that name the same file share one. */
static wk_tls_map *tls_map;

static void load_tls(struct wk_delivery_conf *dc)
{
    char *items[MS_TRANSPORT_MAP_MAX], err[256], *copy;
    size_t i, j, n;
    int any = 0;

    if ((tls_map = wk_tls_map_new(var_tls_policy, err, sizeof(err))) == NULL)
        ms_fatal("event=config_invalid section=tls key=policy value=\"%s\" error=\"%s\"",
                 var_tls_policy, err);
    if (wk_tls_map_default(tls_map)->ca_file || wk_tls_map_default(tls_map)->nmatch)
        ms_fatal("event=config_invalid section=tls key=policy value=\"%s\" error=\"the "
                 "default takes a level only (ca_file and the match names of verify and "
                 "secure have keys of their own)\"", var_tls_policy);
    copy = ms_strdup(var_tls_policy_map);
    n = ms_config_split_list(copy, items, MS_TRANSPORT_MAP_MAX);
    for (i = 0; i < n; i++)
        if (wk_tls_map_add(tls_map, items[i], err, sizeof(err)) < 0)
            ms_fatal("event=config_invalid section=tls key=policy_map entry=\"%s\" "
                     "error=\"%s\"", items[i], err);
    free(copy);
    for (i = 0; i < wk_tls_map_size(tls_map); i++) {
        const char *key;
        struct wk_tls_entry *e = wk_tls_map_entry(tls_map, i, &key), *o;
        any |= e->level != WK_TLS_LEVEL_NONE;
        if (e->ca_file == NULL)
            continue;
        for (j = 0; j < i && !e->ctx; j++)
            if ((o = wk_tls_map_entry(tls_map, j, NULL))->ca_file &&
                strcmp(o->ca_file, e->ca_file) == 0)
                e->ctx = ms_tls_ctx_ref(o->ctx);
        if (!e->ctx && (e->ctx = ms_tls_ctx_new_client(e->ca_file, err, sizeof(err))) == NULL)
            ms_fatal("event=config_invalid section=tls key=policy_map entry=%s ca_file=%s "
                     "error=\"%s\"", key, e->ca_file, err);
    }
    dc->tls_map = tls_map;
    if (wk_tls_map_default(tls_map)->level == WK_TLS_LEVEL_NONE && !any)
        return;
    if ((dc->tls_ctx = ms_tls_ctx_new_client(var_tls_ca_file, err, sizeof(err))) == NULL)
        ms_fatal("event=config_invalid section=tls key=ca_file error=\"%s\"", err);
    if (wk_tls_map_wants_dane(tls_map) && !*var_dns_trust_anchor)
        ms_warn("event=config_warning section=tls key=policy error=\"dane needs [dns] "
                "trust_anchor: without DNSSEC validation no TLSA record is used\"");
}

/* [delivery] relay_user and its password (relay_password, or the first
 * line of relay_password_file so the secret need not be in the config or
 * the environment).  The password is never logged. */
static char relay_password_buf[WK_AUTH_FIELD_MAX + 3];

static void load_relay_auth(struct wk_delivery_conf *dc)
{
    const char *pw = var_relay_password;
    size_t n;
    int mechs;
    FILE *f;

    if (*var_relay_user == '\0') {
        if (*var_relay_password || *var_relay_password_file)
            ms_fatal("event=config_invalid section=delivery key=relay_password "
                     "error=\"a password without relay_user\"");
        return;
    }
    if (*var_relay_host == '\0')
        ms_fatal("event=config_invalid section=delivery key=relay_user "
                 "error=\"relay_user needs relay_host\"");
    if (*var_relay_password && *var_relay_password_file)
        ms_fatal("event=config_invalid section=delivery key=relay_password_file "
                 "error=\"relay_password and relay_password_file are both set\"");
    if (*var_relay_password_file) {
        if ((f = fopen(var_relay_password_file, "r")) == NULL)
            ms_fatal("event=config_invalid section=delivery key=relay_password_file path=%s "
                     "error=\"%s\"", var_relay_password_file, strerror(errno));
        if (fgets(relay_password_buf, sizeof(relay_password_buf), f) == NULL)
            relay_password_buf[0] = '\0';
        fclose(f);
        n = strcspn(relay_password_buf, "\r\n");
        if (relay_password_buf[n] == '\0' && n > WK_AUTH_FIELD_MAX)
            relay_password_buf[0] = '\0'; /* too long: refused below, not cut */
        relay_password_buf[n] = '\0';
        pw = relay_password_buf;
    }
    if (!wk_auth_field_ok(var_relay_user))
        ms_fatal("event=config_invalid section=delivery key=relay_user error=\"1 to %d octets, "
                 "no CR or LF\"", WK_AUTH_FIELD_MAX);
    if (!wk_auth_field_ok(pw))
        ms_fatal("event=config_invalid section=delivery key=%s error=\"the password must be 1 "
                 "to %d octets, no CR or LF\"",
                 *var_relay_password_file ? "relay_password_file" : "relay_password",
                 WK_AUTH_FIELD_MAX);
    dc->relay_user = var_relay_user;
    dc->relay_password = pw;
    dc->relay_auth_plaintext = var_relay_auth_plaintext;
    if ((mechs = wk_auth_mechs_parse(var_relay_auth_mechanisms)) < 0)
        ms_fatal("event=config_invalid section=delivery key=relay_auth_mechanisms value=\"%s\" "
                 "want=\"plain and/or login\"", var_relay_auth_mechanisms);
    dc->relay_auth_mechs = (unsigned)mechs;
}

/* The relay host is resolved once at start (a smarthost is configuration,
 * not a destination); destinations go through the asynchronous router. */
static void resolve_relay(const char *hostport, struct sockaddr_storage *ss)
{
    struct addrinfo hints, *res = NULL;
    char host[256], port[16];
    int p, err;
    if (ms_split_hostport(hostport, host, sizeof(host), &p) < 0)
        ms_fatal("event=config_invalid section=delivery key=relay_host value=\"%s\"", hostport);
    snprintf(port, sizeof(port), "%d", p);
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if ((err = getaddrinfo(host, port, &hints, &res)) != 0 || res == NULL)
        ms_fatal("event=relay_unresolvable relay=%s error=\"%s\"", hostport, gai_strerror(err));
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
}

/* ---- consumer lag: mailstream_worker_consumer_lag{topic,partition} ---- */

/* Per consumer, the gauges of the partitions it has reported, by partition
 * id.  A partition not in the latest report (moved to another worker) is
 * set back to 0, so the sum over the workers stays the topic's lag. */
struct wk_lag {
    ms_gauge **g;       /* NULL: never reported */
    uint64_t *round;    /* the report that last named it */
    size_t n;
    uint64_t rounds;
};

static void on_lag(void *arg, const char *topic, const struct ms_kafka_lag *lags, size_t n)
{
    struct wk_lag *v = arg;
    char labels[MS_KAFKA_TOPIC_MAX * 2 + 64], esc[MS_KAFKA_TOPIC_MAX * 2 + 1];
    size_t i, p;

    v->rounds++;
    for (i = 0; i < n; i++) {
        if (lags[i].partition < 0 || lags[i].partition >= MS_KSTATS_PARTITIONS_MAX)
            continue;
        p = (size_t)lags[i].partition;
        if (p >= v->n) {
            v->g = ms_realloc(v->g, (p + 1) * sizeof(*v->g));
            v->round = ms_realloc(v->round, (p + 1) * sizeof(*v->round));
            memset(v->g + v->n, 0, (p + 1 - v->n) * sizeof(*v->g));
            memset(v->round + v->n, 0, (p + 1 - v->n) * sizeof(*v->round));
            v->n = p + 1;
        }
        if (v->g[p] == NULL) {
            ms_label_escape(esc, sizeof(esc), topic);
            snprintf(labels, sizeof(labels), "topic=\"%s\",partition=\"%zu\"", esc, p);
            v->g[p] = ms_gauge_new("mailstream_worker_consumer_lag",
                                   "Records not yet done behind the high watermark, per "
                                   "assigned partition (librdkafka statistics, every 5 s).",
                                   labels);
        }
        ms_gauge_set(v->g[p], lags[i].lag);
        v->round[p] = v->rounds;
    }
    for (p = 0; p < v->n; p++)
        if (v->g[p] && v->round[p] != v->rounds)
            ms_gauge_set(v->g[p], 0);
}

static void lag_free(struct wk_lag *v)
{
    free(v->g);
    free(v->round);
}

/* ---- the process ---- */

struct worker {
    uv_loop_t *loop;
    ms_consumer *consumer;
    ms_consumer *retry_consumers[WK_RETRY_TIERS_MAX];
    ms_resolver *resolver;
    wk_router *router;
    ms_https *https;                /* MTA-STS policy fetches, TLS report POSTs;
                                     * NULL: neither */
    wk_mtasts *mtasts;
    wk_tlsrpt *tlsrpt;              /* NULL: [tls] tlsrpt off */
    ms_transport_map *transports;
    char *retry_topics[WK_RETRY_TIERS_MAX];
    char *retry_groups[WK_RETRY_TIERS_MAX];
    ms_producer *producer;
    ms_redis *redis;
    ms_heartbeat *heartbeat; /* ms:node:<id> for mailstream-ctl status */
    struct wk_lag lag[1 + WK_RETRY_TIERS_MAX]; /* [0] queue, [i] tier i */
    wk_delivery *delivery;
    wk_mailauth *mailauth;
    wk_shaper *shaper;
    ms_http_server *http;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain_timer;
    int draining;
    int stopped;
};

static int ready_cb(void *arg, char *why, size_t whylen)
{
    struct worker *w = arg;

    if (w->draining) {
        snprintf(why, whylen, "draining");
        return 0;
    }
    return ms_consumer_ready(w->consumer, why, whylen) &&
           ms_producer_ready(w->producer, why, whylen);
}

static void shutdown_now(void *arg)
{
    struct worker *w = arg;

    if (w->stopped)
        return;
    w->stopped = 1;
    ms_info("event=drained");
    uv_timer_stop(&w->drain_timer);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_close((uv_handle_t *)&w->sigterm, NULL);
    uv_close((uv_handle_t *)&w->sigint, NULL);
    uv_close((uv_handle_t *)&w->sighup, NULL);
    ms_http_stop(w->http);
    /* Commits the stored offsets; records not done are not stored. */
    ms_consumer_free(w->consumer);
    w->consumer = NULL;
    for (int i = 0; i < WK_RETRY_TIERS_MAX; i++) {
        if (w->retry_consumers[i])
            ms_consumer_free(w->retry_consumers[i]);
        w->retry_consumers[i] = NULL;
    }
    wk_router_free(w->router);
    w->router = NULL;
    wk_shaper_stop(w->shaper);
    wk_mtasts_stop(w->mtasts);
    wk_tlsrpt_stop(w->tlsrpt);
    ms_https_free(w->https);
    w->https = NULL;
    ms_resolver_free(w->resolver);
    w->resolver = NULL;
    /* Produce reports and Redis replies still due come back through the
     * engine, which is freed last. */
    ms_producer_free(w->producer, WK_PRODUCER_FLUSH_MS);
    w->producer = NULL;
    ms_heartbeat_stop(w->heartbeat);
    w->heartbeat = NULL;
    ms_redis_free(w->redis);
    w->redis = NULL;
}

/* The producer's delivery reports: a TLS report's (tlsrpt.h), or the
 * engine's. */
static void on_produced(void *arg, uint64_t id, int err, const char *errstr)
{
    struct worker *w = arg;

    if (id == WK_TLSRPT_PRODUCE_ID && w->tlsrpt)
        wk_tlsrpt_on_produced(w->tlsrpt, err, errstr);
    else
        wk_delivery_on_produced(w->delivery, id, err, errstr);
}

/* [tls] tlsrpt: the reporter, its names derived from [node] hostname
 * unless given (docs/config.md). */
static wk_tlsrpt *new_tlsrpt(struct worker *w)
{
    struct wk_tlsrpt_conf tc;
    char contact[300], from[300];
    wk_tlsrpt *t;

    snprintf(contact, sizeof(contact), "postmaster@%s", var_hostname);
    /* The sender large reporters use: replies are not read. */
    snprintf(from, sizeof(from), "noreply-smtp-tls-reporting@%s", var_hostname);
    memset(&tc, 0, sizeof(tc));
    tc.node_id = var_node_id;
    tc.submitter = *var_tlsrpt_submitter ? var_tlsrpt_submitter : var_hostname;
    tc.org_name = *var_tlsrpt_org_name ? var_tlsrpt_org_name : tc.submitter;
    tc.contact = *var_tlsrpt_contact ? var_tlsrpt_contact : contact;
    tc.from = *var_tlsrpt_from ? var_tlsrpt_from : from;
    tc.topic = var_topic;
    tc.interval_s = var_tlsrpt_interval_s;
    if (!wk_smtp_path_ok(tc.from) || strchr(tc.from, '@') == NULL)
        ms_fatal("event=config_invalid section=tls key=tlsrpt_from value=\"%s\"", tc.from);
    t = wk_tlsrpt_new(w->loop, &tc, w->resolver, w->https);
    ms_info("event=tlsrpt_on submitter=%s from=%s interval_s=%lld", tc.submitter, tc.from,
            (long long)tc.interval_s);
    return t;
}

static void drain_timeout_cb(uv_timer_t *t)
{
    struct worker *w = t->data;

    ms_warn("event=drain_timeout in_flight=%d", wk_delivery_in_flight(w->delivery));
    wk_delivery_abandon_all(w->delivery);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct worker *w = h->data;

    if (w->draining) {
        ms_warn("event=signal signal=%d action=abandon in_flight=%d", signum,
                wk_delivery_in_flight(w->delivery));
        wk_delivery_abandon_all(w->delivery);
        return;
    }
    w->draining = 1;
    ms_info("event=draining signal=%d in_flight=%d timeout_ms=%lld", signum,
            wk_delivery_in_flight(w->delivery), (long long)var_drain_timeout_ms);
    uv_timer_start(&w->drain_timer, drain_timeout_cb, (uint64_t)var_drain_timeout_ms, 0);
    wk_delivery_drain(w->delivery, shutdown_now, w);
}

/* SIGHUP: re-read the DKIM keys (Kubernetes updates mounted Secrets in
 * place), the shaping file and the bounce rules (a file that does not load
 * leaves its old rules in force: shaper.h). */
static void sighup_cb(uv_signal_t *h, int signum)
{
    struct worker *w = h->data;

    wk_mailauth_reload(w->mailauth);
    wk_shaper_reload(w->shaper);
}

static void usage(void)
{
    fprintf(stderr, "usage: mailstream-worker [-c CONFIG] | --version\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct wk_delivery_conf dc;
    struct ms_kafka_conf kc;
    struct ms_redis_conf rconf;
    struct ms_conn_secrets secrets = {0};
    struct worker w;
    const char *config_path = NULL;
    ms_config *cfg;
    char err[512];
    int opt;

    ms_version_option(argc, argv, "mailstream-worker");
    while ((opt = getopt(argc, argv, "c:h")) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    /* Writes to a closed peer must fail with EPIPE, not kill us. */
    signal(SIGPIPE, SIG_IGN);

    ms_log_init("-", MS_LOG_INFO);
    if ((cfg = ms_config_load(config_path, err, sizeof(err))) == NULL)
        ms_fatal("event=config_error path=%s error=\"%s\"", config_path ? config_path : "-", err);
    load_params(cfg);
    if (strcmp(var_log_level, "debug") != 0 && strcmp(var_log_level, "info") != 0)
        ms_fatal("event=config_invalid section=node key=log_level value=\"%s\" want=\"info or "
                 "debug\"", var_log_level);
    ms_log_init(var_node_id, strcmp(var_log_level, "debug") == 0 ? MS_LOG_DEBUG : MS_LOG_INFO);
    /* [kafka] and [redis]: where, and how securely (docs/security.md). */
    memset(&kc, 0, sizeof(kc));
    if (ms_connect_kafka_conf(cfg, &kc, &secrets, err, sizeof(err)) < 0 ||
        ms_connect_redis_conf(cfg, &rconf, &secrets, err, sizeof(err)) < 0)
        ms_fatal("event=config_invalid error=\"%s\"", err);

    memset(&w, 0, sizeof(w));
    w.loop = uv_default_loop();

    memset(&dc, 0, sizeof(dc));
    dc.node_id = var_node_id;
    dc.helo_name = var_hostname;
    dc.relay = var_relay_host;
    if (*var_relay_host)
        resolve_relay(var_relay_host, &dc.relay_addr);
    load_relay_auth(&dc);
    w.transports = load_transports();
    dc.transports = w.transports;
    {
        struct ms_resolver_conf rc;
        memset(&rc, 0, sizeof(rc));
        rc.upstream = *var_dns_upstream ? var_dns_upstream : NULL;
        rc.trust_anchor = *var_dns_trust_anchor ? var_dns_trust_anchor : NULL;
        rc.timeout_ms = (int)var_dns_timeout_ms;
        if ((w.resolver = ms_resolver_new(w.loop, &rc, err, sizeof(err))) == NULL)
            ms_fatal("event=dns_init_failed upstream=%s error=\"%s\"", var_dns_upstream, err);
    }
    w.router = wk_router_new(w.loop, w.resolver);
    dc.router = w.router;
    dc.smtp_port = (int)var_smtp_port;
    dc.topic = var_topic;
    dc.retry_tiers = (int)var_retry_tiers;
    for (int i = 0; i < dc.retry_tiers; i++) {
        w.retry_topics[i] = ms_asprintf("%s.retry.%d", var_topic, i + 1);
        w.retry_groups[i] = ms_asprintf("%s.retry.%d", var_group, i + 1);
        dc.retry_topics[i] = w.retry_topics[i];
    }
    dc.max_age_s = var_max_age_s;
    dc.suppress_ttl_s = var_suppress_ttl_s;
    if (var_fence_lease_ms > 0 && var_fence_lease_ms < WK_FENCE_LEASE_MIN_MS)
        ms_fatal("event=config_invalid section=delivery key=fence_lease_ms value=%lld "
                 "want=\"0 (no fencing) or %d to %d\"",
                 (long long)var_fence_lease_ms, WK_FENCE_LEASE_MIN_MS, WK_FENCE_LEASE_MAX_MS);
    dc.fence_lease_ms = (uint64_t)var_fence_lease_ms;
    /* docs/reliability.md: a delivered marker must outlive every
     * redelivery of its record.  Records are committed in offset order, so
     * one held back (a retry record waiting for its time, at most the
     * longest tier delay; with no tiers, deferred mail in memory up to
     * max_age_s) keeps the records after it redeliverable that long. */
    dc.marker_ttl_s = var_delivered_ttl_s > 0 ? var_delivered_ttl_s
                      : var_retry_tiers > 0   ? WK_DELIVERED_TTL_S + var_retry_max_ms / 1000
                                              : WK_DELIVERED_TTL_S + var_max_age_s;
    dc.dest_concurrency = (int)var_dest_concurrency;
    if (ms_bucket_rate_parse(var_dest_rate, &dc.dest_rate) < 0)
        ms_fatal("event=config_invalid section=delivery key=dest_rate value=\"%s\" "
                 "want=\"messages per second, 0 to %d (0: no limit)\"",
                 var_dest_rate, MS_BUCKET_RATE_MAX);
    dc.dest_rate_max_wait_ms = (uint64_t)var_dest_rate_max_wait_ms;
    dc.delay_warning_s = var_delay_warning_s;
    dc.conn_cache_ms = (uint64_t)var_conn_cache_ms;
    dc.max_msgs_per_conn = (unsigned)var_max_msgs_per_conn;
    load_tls(&dc);
    if ((var_mta_sts && dc.tls_ctx) || var_tlsrpt) {
        struct ms_https_conf hc = {.ca_file = var_mta_sts_ca_file,
                                   .port = (int)var_mta_sts_port,
                                   .timeout_ms = (uint64_t)var_mta_sts_timeout_ms,
                                   .max_bytes = MS_MTASTS_POLICY_MAX};
        if ((w.https = ms_https_new(w.loop, &hc, err, sizeof(err))) == NULL)
            ms_fatal("event=config_invalid section=tls key=%s error=\"%s\"",
                     var_mta_sts ? "mta_sts" : "tlsrpt", err);
    }
    if (var_mta_sts && dc.tls_ctx) {
        w.mtasts = wk_mtasts_new(w.loop, w.resolver, NULL, w.https);
        dc.mtasts = w.mtasts;
    } else if (var_mta_sts) {
        ms_warn("event=config_warning section=tls key=mta_sts error=\"STARTTLS is off (policy "
                "none everywhere): MTA-STS is not used\"");
    }
    if (var_tlsrpt)
        dc.tlsrpt = w.tlsrpt = new_tlsrpt(&w);
    dc.events_topic = var_events_topic;
    dc.max_in_flight = (int)var_max_in_flight;
    dc.max_in_flight_bytes = var_max_in_flight_bytes;
    dc.retry_min_ms = (uint64_t)var_retry_min_ms;
    dc.retry_max_ms = (uint64_t)var_retry_max_ms;
    wk_smtp_timeouts_default(&dc.timeouts);
    dc.timeouts.connect = (uint64_t)var_connect_timeout_ms;
    if (var_reply_timeout_ms > 0) {
        /* A cap on RFC 5321 §4.5.3.2's waits (for tests and impatient
         * operators); QUIT keeps its own. */
        uint64_t cap = (uint64_t)var_reply_timeout_ms, *t[] = {
            &dc.timeouts.banner, &dc.timeouts.helo, &dc.timeouts.mail, &dc.timeouts.rcpt,
            &dc.timeouts.data, &dc.timeouts.block, &dc.timeouts.dot};
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
            if (*t[i] > cap)
                *t[i] = cap;
    }
    if (!wk_smtp_path_ok(var_hostname) || strchr(var_hostname, ' '))
        ms_fatal("event=config_invalid section=node key=hostname value=\"%s\"", var_hostname);
    {
        /* [delivery] is the base a shaping file's limits fall back to. */
        struct wk_shaper_conf sc;
        memset(&sc, 0, sizeof(sc));
        sc.shaping_file = var_shaping_file;
        sc.rules_file = var_bounce_rules_file;
        sc.base.connections = dc.dest_concurrency;
        sc.base.has_rate = 1;
        sc.base.rate = dc.dest_rate;
        sc.base.msgs_per_conn = dc.max_msgs_per_conn;
        sc.base.connect_timeout_ms = dc.timeouts.connect;
        sc.base.data_timeout_ms = dc.timeouts.dot;
        sc.base.retry_min_ms = (uint64_t)var_retry_min_ms;
        sc.base.retry_max_ms = (uint64_t)var_retry_max_ms;
        if ((w.shaper = wk_shaper_new(w.loop, &sc, err, sizeof(err))) == NULL)
            ms_fatal("event=config_invalid section=delivery key=shaping_file error=\"%s\"", err);
        dc.shaper = w.shaper;
    }
    w.delivery = wk_delivery_new(w.loop, &dc);
    if ((w.mailauth = wk_mailauth_new(w.loop, cfg, var_hostname, w.resolver, err, sizeof(err))) ==
        NULL)
        ms_fatal("event=config_invalid section=policy error=\"%s\"", err);
    wk_delivery_attach_mailauth(w.delivery, w.mailauth);
    /* Every setting has been read: what the file holds beyond them is a
     * typo (docs/config.md). */
    if (ms_config_check_unknown(cfg, NULL, err, sizeof(err)) < 0)
        ms_fatal("event=config_invalid error=\"%s\"", err);

    kc.client_id = var_node_id;
    kc.linger_ms = (int)var_linger_ms;
    kc.fetch_min_bytes = (int)var_fetch_min_bytes;
    kc.fetch_wait_ms = (int)var_fetch_wait_ms;
    kc.keyed_topic = var_events_topic; /* one queue id's events in order */
    if ((w.producer = ms_producer_new(w.loop, &kc, on_produced, &w, err, sizeof(err))) == NULL)
        ms_fatal("event=kafka_producer_failed error=\"%s\"", err);
    kc.lag_cb = on_lag;
    kc.consumer_bytes = (size_t)(var_max_in_flight_bytes / WK_KAFKA_AHEAD_QUEUE_DIV);
    kc.lag_arg = &w.lag[0];
    if ((w.consumer = ms_consumer_new(w.loop, &kc, var_group, var_topic, wk_delivery_on_record,
                                      w.delivery, err, sizeof(err))) == NULL)
        ms_fatal("event=kafka_consumer_failed error=\"%s\"", err);
    w.redis = ms_redis_new(w.loop, &rconf);
    w.heartbeat = ms_heartbeat_start(w.loop, w.redis, "worker", var_node_id, NULL);
    wk_delivery_attach(w.delivery, w.consumer, w.producer, w.redis);
    wk_shaper_attach(w.shaper, w.redis);
    if (w.mtasts)
        wk_mtasts_attach(w.mtasts, w.redis);
    if (w.tlsrpt)
        wk_tlsrpt_attach(w.tlsrpt, w.redis, w.producer);
    /* Retry tier consumers are idle most of the time and never in a hurry:
     * librdkafka's fetch defaults (a fetch waits up to 500 ms on the broker)
     * instead of the queue consumer's, so idle tiers cost the broker ~2
     * requests a second each rather than 1000 / fetch_wait_ms. */
    struct ms_kafka_conf rkc = kc;
    rkc.fetch_min_bytes = 0;
    rkc.fetch_wait_ms = 0;
    rkc.consumer_bytes = (size_t)(var_max_in_flight_bytes / WK_KAFKA_AHEAD_TIER_DIV);
    for (int i = 0; i < dc.retry_tiers; i++) {
        rkc.lag_arg = &w.lag[i + 1];
        if ((w.retry_consumers[i] = ms_consumer_new(w.loop, &rkc, w.retry_groups[i],
                                                    w.retry_topics[i], wk_delivery_on_record,
                                                    w.delivery, err, sizeof(err))) == NULL)
            ms_fatal("event=kafka_consumer_failed topic=%s error=\"%s\"", w.retry_topics[i], err);
        wk_delivery_attach_retry(w.delivery, i + 1, w.retry_consumers[i]);
    }
    ms_conn_secrets_clear(&secrets); /* the clients hold their own copies */

    if ((w.http = ms_http_start(w.loop, var_metrics, ready_cb, &w)) == NULL)
        ms_fatal("event=metrics_listen_failed listen=%s", var_metrics);
    uv_timer_init(w.loop, &w.drain_timer);
    uv_signal_init(w.loop, &w.sigterm);
    uv_signal_init(w.loop, &w.sigint);
    w.drain_timer.data = w.sigterm.data = w.sigint.data = &w;
    uv_signal_start(&w.sigterm, signal_cb, SIGTERM);
    uv_signal_start(&w.sigint, signal_cb, SIGINT);
    uv_signal_init(w.loop, &w.sighup);
    w.sighup.data = &w;
    uv_signal_start(&w.sighup, sighup_cb, SIGHUP);

    ms_info("event=started topic=%s group=%s events_topic=%s relay=%s transports=%zu "
            "dns_upstream=%s smtp_port=%lld retry_tiers=%lld max_in_flight=%lld metrics=%s",
            var_topic, var_group, var_events_topic, *var_relay_host ? var_relay_host : "-",
            ms_transport_map_size(w.transports), *var_dns_upstream ? var_dns_upstream : "-",
            (long long)var_smtp_port, (long long)var_retry_tiers, (long long)var_max_in_flight,
            var_metrics);
    uv_run(w.loop, UV_RUN_DEFAULT);

    wk_delivery_free(w.delivery);
    wk_shaper_free(w.shaper);
    wk_mtasts_free(w.mtasts);
    wk_tlsrpt_free(w.tlsrpt);
    wk_mailauth_free(w.mailauth);
    ms_transport_map_free(w.transports);
    ms_tls_ctx_free(dc.tls_ctx);
    wk_tls_map_free(tls_map);
    for (int i = 0; i < WK_RETRY_TIERS_MAX; i++) {
        free(w.retry_topics[i]);
        free(w.retry_groups[i]);
    }
    for (int i = 0; i <= WK_RETRY_TIERS_MAX; i++)
        lag_free(&w.lag[i]);
    if (uv_loop_close(w.loop) != 0)
        ms_warn("event=loop_not_closed");
    ms_config_free(cfg);
    ms_info("event=stopped");
    return 0;
}
