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
#include "ms_config.h"
#include "ms_error.h"
#include "ms_http.h"
#include "ms_kafka.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"
#include "ms_redis.h"
#include "retry.h"

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

static const char *var_node_id, *var_hostname, *var_metrics, *var_brokers, *var_topic,
    *var_events_topic, *var_group, *var_redis_host, *var_relay_host, *var_log_level;
static int64_t var_redis_port, var_max_in_flight, var_retry_min_ms, var_retry_max_ms,
    var_connect_timeout_ms, var_drain_timeout_ms;

static char default_node_id[256];

static const struct {
    const char *section, *key, *def;
    const char **var;
} str_params[] = {
    {"node", "id", default_node_id, &var_node_id},
    {"node", "hostname", "localhost", &var_hostname},
    {"node", "metrics", "127.0.0.1:9201", &var_metrics},
    {"node", "log_level", "info", &var_log_level},
    {"kafka", "brokers", "127.0.0.1:9092", &var_brokers},
    {"kafka", "topic", "queue", &var_topic},
    {"kafka", "events_topic", "events", &var_events_topic},
    {"kafka", "group", "mailstream-workers", &var_group},
    {"redis", "host", "127.0.0.1", &var_redis_host},
    {"delivery", "relay_host", "", &var_relay_host},
};

static const struct {
    const char *section, *key;
    int64_t def, min, max;
    int64_t *var;
} int_params[] = {
    {"redis", "port", 6379, 1, 65535, &var_redis_port},
    {"delivery", "max_in_flight", WK_MAX_IN_FLIGHT_DEFAULT, 1, 100000, &var_max_in_flight},
    {"delivery", "retry_min_ms", WK_RETRY_MIN_MS, 1, 24 * 3600 * 1000, &var_retry_min_ms},
    {"delivery", "retry_max_ms", WK_RETRY_MAX_MS, 1, 24 * 3600 * 1000, &var_retry_max_ms},
    {"delivery", "connect_timeout_ms", WK_SMTP_TIMEOUT_CONNECT_MS, 1, 3600 * 1000,
     &var_connect_timeout_ms},
    {"delivery", "drain_timeout_ms", WK_DRAIN_TIMEOUT_MS, 0, 3600 * 1000, &var_drain_timeout_ms},
};

static void load_params(const ms_config *cfg)
{
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
}

/* XXX: the tracer resolves the relay once at start; MX routing will resolve
 * per destination with an asynchronous resolver. */
static void resolve_relay(const char *hostport, struct sockaddr_storage *ss)
{
    struct addrinfo hints, *res = NULL;
    char host[256], port[16];
    int p, err;

    if (*hostport == '\0')
        ms_fatal("event=config_invalid section=delivery key=relay_host reason=\"not set\"");
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

/* ---- the process ---- */

struct worker {
    uv_loop_t *loop;
    ms_consumer *consumer;
    ms_producer *producer;
    ms_redis *redis;
    wk_delivery *delivery;
    ms_http_server *http;
    uv_signal_t sigterm, sigint;
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
    ms_http_stop(w->http);
    /* Commits the stored offsets; records not done are not stored. */
    ms_consumer_free(w->consumer);
    w->consumer = NULL;
    /* Produce reports and Redis replies still due come back through the
     * engine, which is freed last. */
    ms_producer_free(w->producer, WK_PRODUCER_FLUSH_MS);
    w->producer = NULL;
    ms_redis_free(w->redis);
    w->redis = NULL;
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

static void usage(void)
{
    fprintf(stderr, "usage: mailstream-worker [-c CONFIG]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct wk_delivery_conf dc;
    struct ms_kafka_conf kc;
    struct worker w;
    const char *config_path = NULL;
    ms_config *cfg;
    char err[512];
    int opt;

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

    memset(&w, 0, sizeof(w));
    w.loop = uv_default_loop();

    memset(&dc, 0, sizeof(dc));
    dc.node_id = var_node_id;
    dc.helo_name = var_hostname;
    dc.relay = var_relay_host;
    resolve_relay(var_relay_host, &dc.relay_addr);
    dc.events_topic = var_events_topic;
    dc.max_in_flight = (int)var_max_in_flight;
    dc.retry_min_ms = (uint64_t)var_retry_min_ms;
    dc.retry_max_ms = (uint64_t)var_retry_max_ms;
    wk_smtp_timeouts_default(&dc.timeouts);
    dc.timeouts.connect = (uint64_t)var_connect_timeout_ms;
    if (!wk_smtp_path_ok(var_hostname) || strchr(var_hostname, ' '))
        ms_fatal("event=config_invalid section=node key=hostname value=\"%s\"", var_hostname);
    w.delivery = wk_delivery_new(w.loop, &dc);

    memset(&kc, 0, sizeof(kc));
    kc.brokers = var_brokers;
    kc.client_id = var_node_id;
    if ((w.producer = ms_producer_new(w.loop, &kc, wk_delivery_on_produced, w.delivery, err,
                                      sizeof(err))) == NULL)
        ms_fatal("event=kafka_producer_failed error=\"%s\"", err);
    if ((w.consumer = ms_consumer_new(w.loop, &kc, var_group, var_topic, wk_delivery_on_record,
                                      w.delivery, err, sizeof(err))) == NULL)
        ms_fatal("event=kafka_consumer_failed error=\"%s\"", err);
    w.redis = ms_redis_new(w.loop, var_redis_host, (int)var_redis_port);
    wk_delivery_attach(w.delivery, w.consumer, w.producer, w.redis);

    if ((w.http = ms_http_start(w.loop, var_metrics, ready_cb, &w)) == NULL)
        ms_fatal("event=metrics_listen_failed listen=%s", var_metrics);
    uv_timer_init(w.loop, &w.drain_timer);
    uv_signal_init(w.loop, &w.sigterm);
    uv_signal_init(w.loop, &w.sigint);
    w.drain_timer.data = w.sigterm.data = w.sigint.data = &w;
    uv_signal_start(&w.sigterm, signal_cb, SIGTERM);
    uv_signal_start(&w.sigint, signal_cb, SIGINT);

    ms_info("event=started topic=%s group=%s events_topic=%s relay=%s max_in_flight=%lld "
            "metrics=%s",
            var_topic, var_group, var_events_topic, var_relay_host,
            (long long)var_max_in_flight, var_metrics);
    uv_run(w.loop, UV_RUN_DEFAULT);

    wk_delivery_free(w.delivery);
    if (uv_loop_close(w.loop) != 0)
        ms_warn("event=loop_not_closed");
    ms_config_free(cfg);
    ms_info("event=stopped");
    return 0;
}
