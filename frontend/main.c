/*
 * mailstream-frontend - the stateless SMTP node (DESIGN.md "Processes").
 *
 * Usage: mailstream-frontend -c CONFIG
 *
 * Reads the config (docs/config.md), opens the [listener.*] sockets with
 * SO_REUSEPORT, and runs one libuv loop: SMTP sessions, the Kafka producer
 * and the /metrics, /healthz, /readyz listener.
 *
 * Signals: SIGTERM / SIGINT drain (stop accepting, let in-flight
 * transactions get their Kafka report, 421 4.3.2 to everything else, flush
 * the producer, exit 0; a second signal cuts the grace period short).  SIGHUP
 * reloads the password file and the TLS certificate.  SIGPIPE is ignored.
 */
#include "fe_server.h"
#include "ms_config.h"
#include "ms_error.h"
#include "ms_http.h"
#include "ms_kafka.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_redis.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FE_DRAIN_POLL_MS 50
#define FE_PRODUCER_FLUSH_MS 10000

static struct fe_server srv;
static ms_config *cfg;
static ms_http_server *http;
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t drain_timer;
static uint64_t drain_started;
static int draining, aborted;

static int ready_cb(void *arg, char *why, size_t whylen)
{
    (void)arg;
    if (srv.draining) {
        snprintf(why, whylen, "draining");
        return 0;
    }
    if (srv.producer == NULL) {
        snprintf(why, whylen, "no Kafka producer");
        return 0;
    }
    /* Redis counts only when mail stops without it ([ratelimit]
     * redis_failure = closed); failing open, a frontend without Redis still
     * serves, and taking every frontend out of rotation would not help. */
    if (srv.redis && srv.set.rl_fail_closed && !ms_redis_ready(srv.redis, why, whylen))
        return 0;
    return ms_producer_ready(srv.producer, why, whylen);
}

/* [smtp] tls_cert / tls_key is the default certificate; each [tls.NAME]
 * section (cert, key, optional names) adds one chosen by SNI.  On SIGHUP
 * the files are read again and the new context replaces the old; sessions
 * keep a reference to the one they started with. */
static void load_tls(int fatal)
{
    const char *cert = ms_config_get(cfg, "smtp", "tls_cert", "");
    const char *key = ms_config_get(cfg, "smtp", "tls_key", "");
    const char *ciphers = ms_config_get(cfg, "smtp", "tls_ciphers", FE_TLS_CIPHERS_DEF);
    const char *const *names;
    struct fe_tls_cert certs[FE_TLS_CERTS_MAX];
    struct fe_tls_ctx *ctx;
    size_t n, i, nc = 0;
    char err[512];

    n = ms_config_sections(cfg, "tls.", &names);
    if (*cert == '\0' && *key == '\0' && n == 0)
        return;
    if (*cert == '\0' || *key == '\0') {
        snprintf(err, sizeof(err), "[smtp] tls_cert and tls_key go together, and [tls.NAME] "
                                   "certificates need them as the default");
        goto fail;
    }
    if (n + 1 > FE_TLS_CERTS_MAX) {
        snprintf(err, sizeof(err), "more than %d [tls.NAME] sections", FE_TLS_CERTS_MAX - 1);
        goto fail;
    }
    certs[nc++] = (struct fe_tls_cert){"default", cert, key, NULL};
    for (i = 0; i < n; i++) {
        struct fe_tls_cert *tc = &certs[nc++];

        tc->label = names[i];
        tc->cert = ms_config_get(cfg, names[i], "cert", "");
        tc->key = ms_config_get(cfg, names[i], "key", "");
        tc->names = ms_config_get(cfg, names[i], "names", NULL);
        if (*tc->cert == '\0' || *tc->key == '\0') {
            snprintf(err, sizeof(err), "[%s] needs cert and key", names[i]);
            goto fail;
        }
    }
    if ((ctx = fe_tls_ctx_new_multi(certs, nc, ciphers, err, sizeof(err))) == NULL)
        goto fail;
    /* Sessions using or negotiating with the old context hold a reference. */
    fe_tls_ctx_free(srv.tls);
    srv.tls = ctx;
    ms_info("event=tls_loaded certificates=%zu", nc);
    return;
fail:
    if (fatal)
        ms_fatal("event=config_error reason=\"%s\"", err);
    ms_warn("event=reload_failed what=tls reason=\"%s\"", err);
}

static void load_passwd(int fatal)
{
    const char *path = ms_config_get(cfg, "smtp", "passwd_file", "");
    struct fe_passwd *pw;
    char err[512];

    if (*path == '\0')
        return;
    if ((pw = fe_passwd_load(path, err, sizeof(err))) == NULL) {
        if (fatal)
            ms_fatal("event=config_error reason=\"%s\"", err);
        ms_warn("event=reload_failed what=passwd_file reason=\"%s\"", err);
        return;
    }
    /* Sessions hold user names, never entries, so the old table can go. */
    fe_passwd_free(srv.passwd);
    srv.passwd = pw;
}

static void handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void finish(void)
{
    ms_info("event=drained");
    uv_timer_stop(&drain_timer);
    uv_close((uv_handle_t *)&drain_timer, handle_closed);
    uv_close((uv_handle_t *)&sig_term, handle_closed);
    uv_close((uv_handle_t *)&sig_int, handle_closed);
    uv_close((uv_handle_t *)&sig_hup, handle_closed);
    if (http)
        ms_http_stop(http);
    http = NULL;
    if (srv.redis) {
        ms_redis_free(srv.redis); /* pending checks fail; no session is left */
        srv.redis = NULL;
    }
    if (srv.producer) {
        /* Blocks up to the timeout: nothing else is left to serve. */
        ms_producer_free(srv.producer, FE_PRODUCER_FLUSH_MS);
        srv.producer = NULL;
    }
    uv_stop(srv.loop);
}

static void on_drain_timer(uv_timer_t *t)
{
    (void)t;
    if (fe_server_idle(&srv)) {
        finish();
        return;
    }
    if (!aborted && uv_now(srv.loop) - drain_started >= srv.set.drain_timeout_ms) {
        ms_warn("event=drain_timeout sessions_left=1");
        aborted = 1;
        fe_server_abort(&srv);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    if (signum == SIGHUP) {
        ms_info("event=reload");
        load_tls(0);
        load_passwd(0);
        return;
    }
    if (draining) {
        if (!aborted) {
            ms_info("event=drain_abort signal=%d", signum);
            aborted = 1;
            fe_server_abort(&srv);
        }
        return;
    }
    draining = 1;
    ms_info("event=draining signal=%d", signum);
    drain_started = uv_now(srv.loop);
    fe_server_drain(&srv);
    uv_timer_start(&drain_timer, on_drain_timer, 0, FE_DRAIN_POLL_MS);
}

static void usage(void)
{
    fprintf(stderr, "usage: mailstream-frontend -c CONFIG\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct ms_kafka_conf kconf;
    const char *path = NULL, *level;
    char err[512];
    int opt;
    uv_loop_t *loop = uv_default_loop();

    while ((opt = getopt(argc, argv, "c:h")) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        default: usage();
        }
    }
    if (path == NULL || optind != argc)
        usage();
    signal(SIGPIPE, SIG_IGN);

    if ((cfg = ms_config_load(path, err, sizeof(err))) == NULL)
        ms_fatal("event=config_error reason=\"%s\"", err);
    fe_server_init(&srv, loop);
    if (fe_settings_load(&srv.set, cfg, err, sizeof(err)) < 0)
        ms_fatal("event=config_error reason=\"%s\"", err);
    level = ms_config_get(cfg, "node", "log_level", "info");
    ms_log_init(srv.set.node_id, strcmp(level, "debug") == 0  ? MS_LOG_DEBUG
                                 : strcmp(level, "warn") == 0 ? MS_LOG_WARN
                                                              : MS_LOG_INFO);
    fe_metrics_register(&srv.m);
    load_tls(1);
    load_passwd(1);

    memset(&kconf, 0, sizeof(kconf));
    kconf.brokers = ms_config_get(cfg, "kafka", "brokers", "127.0.0.1:9092");
    kconf.client_id = srv.set.node_id;
    srv.producer = ms_producer_new(loop, &kconf, fe_server_submitted, &srv, err, sizeof(err));
    if (srv.producer == NULL)
        ms_fatal("event=kafka_error reason=\"%s\"", err);

    if (fe_settings_need_redis(&srv.set)) {
        int64_t rport;

        if (ms_config_get_int(cfg, "redis", "port", 6379, 1, 65535, &rport) < 0)
            ms_fatal("event=config_error reason=\"[redis] port\"");
        srv.redis = ms_redis_new(loop, ms_config_get(cfg, "redis", "host", "127.0.0.1"),
                                 (int)rport);
        srv.rl = fe_rl_new(srv.redis, fe_server_policy_result, &srv);
    }

    http = ms_http_start(loop, ms_config_get(cfg, "node", "metrics", "127.0.0.1:9101"),
                         ready_cb, NULL);
    if (http == NULL)
        ms_fatal("event=metrics_listen_failed");
    if (fe_server_listen(&srv, cfg, err, sizeof(err)) < 0)
        ms_fatal("event=listen_failed reason=\"%s\"", err);

    uv_timer_init(loop, &drain_timer);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    ms_info("event=started hostname=%s topic=%s max_message_size=%llu", srv.set.hostname,
            srv.set.topic, (unsigned long long)srv.set.max_message_size);

    uv_run(loop, UV_RUN_DEFAULT);
    /* Let the close callbacks run; anything still open is not ours to wait
     * for, the process is exiting. */
    uv_run(loop, UV_RUN_NOWAIT);
    fe_rl_free(srv.rl);
    ms_info("event=exit");
    return 0;
}
