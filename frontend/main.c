/*
 * mailstream-frontend - the stateless SMTP node (DESIGN.md "Processes").
 *
 * Usage: mailstream-frontend -c CONFIG
 *
 * Reads the config (docs/config.md) and runs [node] threads libuv loops
 * (default: one per CPU the process may use: online, in its affinity mask
 * and under its cgroup's CPU quota, ms_cpus.h).  Each loop has its own
 * struct fe_server: its own [listener.*] sockets (SO_REUSEPORT, every
 * listener bound once per loop, so the kernel spreads connections over the
 * loops), sessions, Kafka producer and Redis client, so delivery reports
 * and Redis replies come back on the loop that owns the session.  Loop 0
 * is the main loop, which also runs the /metrics, /healthz, /readyz
 * listener and the signal handlers; loops 1..N-1 each run on a thread of
 * their own.  threads = 1 is one loop, as before.
 *
 * Threads: main (loop 0) creates everything before any other thread starts;
 * afterwards a struct fe_loop's server, producer, Redis client and timers
 * are touched only by that loop's thread.  Main talks to a loop only through
 * its `wake` async handle and the atomic `want_*` flags; a loop answers
 * through its atomic `ready` / `done` flags (and `why`, under its mutex)
 * and the main loop's `finished` async.  Shared between loops:
 * struct fe_conn_table (process-wide connection limits) and the published
 * TLS context and password table (under publish_lock, reference-counted).
 *
 * Signals (caught on the main loop, forwarded to every loop): SIGTERM /
 * SIGINT drain (stop accepting, let in-flight transactions get their Kafka
 * report, 421 4.3.2 to everything else, flush the producer; the process
 * exits 0 once every loop has drained; a second signal cuts the grace period
 * short).  SIGHUP reloads the password file, the recipient file
 * ([smtp] recipient_file) and the TLS certificates once
 * and publishes them; each loop then takes the new ones.  So does a change
 * of those files, checked every FE_FILE_CHECK_MS (a renewed Kubernetes
 * Secret, e.g. from cert-manager, reaches the pods without a restart).
 * SIGPIPE is ignored.
 */
#include "fe_conn_table.h"
#include "fe_listen.h"
#include "fe_server.h"
#include "fe_session.h"
#include "fe_settings.h"
#include "ms_config.h"
#include "ms_connect.h"
#include "ms_cpus.h"
#include "ms_error.h"
#include "ms_http.h"
#include "ms_kafka.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_heartbeat.h"
#include "ms_redis.h"
#include "ms_version.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FE_DRAIN_POLL_MS 50
#define FE_READY_POLL_MS 200 /* how often a loop publishes its readiness */
#define FE_PRODUCER_FLUSH_MS 10000
#define FE_THREADS_MAX 256 /* [node] threads */
#define FE_ID_SHIFT 48     /* loop i numbers its ids from i << 48 */

/* One event loop and everything it owns (see the threads note above). */
struct fe_loop {
    int index;
    uv_loop_t own_loop; /* loops 1..N-1; loop 0 is uv_default_loop() */
    uv_loop_t *loop;
    uv_thread_t tid;
    struct fe_server srv;
    uv_async_t wake;                                /* main -> loop: look at want_* */
    atomic_int want_drain, want_abort, want_reload; /* set by main */
    uv_timer_t drain_timer, ready_timer;
    uint64_t drain_started;
    int draining, aborted, finished; /* the loop's own view */
    atomic_int ready;                /* loop -> main: producer (and Redis) usable */
    atomic_int done;                 /* loop -> main: drained, producer flushed */
    pthread_mutex_t why_lock;
    char why[128]; /* why not ready (under why_lock) */
};

static ms_config *cfg;
static ms_http_server *http;
static uv_signal_t sig_term, sig_int, sig_hup;

/* How often the main loop stats the certificate, key and password files.
 * The kubelet updates a mounted Secret by swapping a symlink (..data) to a
 * new directory, so what a path resolves to changes all at once; a stat of
 * each path every few seconds sees it (an inotify watch on the path would
 * be left on the old file) and costs a few system calls. */
#define FE_FILE_CHECK_MS 5000
static uv_timer_t file_check;
static uint64_t files_sig; /* files_signature() at the last (re)load */
static uv_async_t finished; /* loop -> main: a loop is done */
static struct fe_loop *loops;
static size_t nloops;
static struct fe_conn_table conns; /* process-wide connection limits */
static struct fe_metrics metrics;  /* registered once, copied into each server */
static int draining, aborted;      /* main's view */
static ms_heartbeat *heartbeat;    /* loop 0's, with its Redis client */

/* The current TLS context and password table, one reference each; loops
 * take their own under the lock. */
static pthread_mutex_t publish_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ms_tls_ctx *cur_tls;
static struct fe_passwd *cur_passwd;
static struct fe_rcpt_table *cur_rcpts;

/* Loop thread: is this loop able to take mail? */
static int loop_ready(struct fe_loop *L, char *why, size_t whylen)
{
    struct fe_server *srv = &L->srv;

    if (srv->producer == NULL) {
        snprintf(why, whylen, "no Kafka producer");
        return 0;
    }
    /* Redis counts only when mail stops without it ([ratelimit]
     * redis_failure = closed); failing open, a frontend without Redis still
     * serves, and taking every frontend out of rotation would not help. */
    if (srv->redis && srv->set.rl_fail_closed && !ms_redis_ready(srv->redis, why, whylen))
        return 0;
    return ms_producer_ready(srv->producer, why, whylen);
}

static void on_ready_timer(uv_timer_t *t)
{
    struct fe_loop *L = t->data;
    char why[sizeof(L->why)] = "";
    int r = loop_ready(L, why, sizeof(why));

    pthread_mutex_lock(&L->why_lock);
    snprintf(L->why, sizeof(L->why), "%s", why);
    pthread_mutex_unlock(&L->why_lock);
    atomic_store(&L->ready, r);
}

/* Main loop: ready when every loop is.  Loop 0 shares the main loop, so its
 * answer is fresh; the others publish theirs every FE_READY_POLL_MS. */
static int ready_cb(void *arg, char *why, size_t whylen)
{
    size_t i;

    (void)arg;
    if (draining) {
        snprintf(why, whylen, "draining");
        return 0;
    }
    if (!loop_ready(&loops[0], why, whylen))
        return 0;
    for (i = 1; i < nloops; i++)
        if (!atomic_load(&loops[i].ready)) {
            pthread_mutex_lock(&loops[i].why_lock);
            snprintf(why, whylen, "loop %zu: %s", i, loops[i].why[0] ? loops[i].why : "starting");
            pthread_mutex_unlock(&loops[i].why_lock);
            return 0;
        }
    return 1;
}

/* [smtp] tls_cert / tls_key is the default certificate; each [tls.NAME]
 * section (cert, key, optional names) adds one chosen by SNI.  On SIGHUP
 * the files are read again (once, on the main loop) and the new context is
 * published; each loop then swaps it in, and sessions keep a reference to
 * the one they started with. */
static void load_tls(int fatal)
{
    const char *cert = ms_config_get(cfg, "smtp", "tls_cert", "");
    const char *key = ms_config_get(cfg, "smtp", "tls_key", "");
    const char *ciphers = ms_config_get(cfg, "smtp", "tls_ciphers", MS_TLS_CIPHERS_DEF);
    const char *const *names;
    struct ms_tls_cert certs[MS_TLS_CERTS_MAX];
    struct ms_tls_ctx *ctx, *old;
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
    if (n + 1 > MS_TLS_CERTS_MAX) {
        snprintf(err, sizeof(err), "more than %d [tls.NAME] sections", MS_TLS_CERTS_MAX - 1);
        goto fail;
    }
    certs[nc++] = (struct ms_tls_cert){"default", cert, key, NULL};
    for (i = 0; i < n; i++) {
        struct ms_tls_cert *tc = &certs[nc++];

        tc->label = names[i];
        tc->cert = ms_config_get(cfg, names[i], "cert", "");
        tc->key = ms_config_get(cfg, names[i], "key", "");
        tc->names = ms_config_get(cfg, names[i], "names", NULL);
        if (*tc->cert == '\0' || *tc->key == '\0') {
            snprintf(err, sizeof(err), "[%s] needs cert and key", names[i]);
            goto fail;
        }
    }
    if ((ctx = ms_tls_ctx_new_server(certs, nc, ciphers, err, sizeof(err))) == NULL)
        goto fail;
    pthread_mutex_lock(&publish_lock);
    old = cur_tls;
    cur_tls = ctx;
    pthread_mutex_unlock(&publish_lock);
    /* Loops and sessions still using the old context hold a reference. */
    ms_tls_ctx_free(old);
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
    struct fe_passwd *pw, *old;
    char err[512];

    if (*path == '\0')
        return;
    if ((pw = fe_passwd_load(path, err, sizeof(err))) == NULL) {
        if (fatal)
            ms_fatal("event=config_error reason=\"%s\"", err);
        ms_warn("event=reload_failed what=passwd_file reason=\"%s\"", err);
        return;
    }
    pthread_mutex_lock(&publish_lock);
    old = cur_passwd;
    cur_passwd = pw;
    pthread_mutex_unlock(&publish_lock);
    /* Sessions hold user names, never entries; loops hold a reference. */
    fe_passwd_free(old);
}

/* [smtp] recipient_file: read at start (a bad file stops the frontend) and
 * again on SIGHUP or when it changes (a bad file then keeps the old list). */
static void load_rcpts(int fatal)
{
    const char *path = ms_config_get(cfg, "smtp", "recipient_file", "");
    struct fe_rcpt_table *t, *old;
    char err[512];

    if (*path == '\0')
        return;
    if ((t = fe_rcpt_table_load(path, err, sizeof(err))) == NULL) {
        if (fatal)
            ms_fatal("event=config_error reason=\"%s\"", err);
        ms_warn("event=reload_failed what=recipient_file reason=\"%s\"", err);
        return;
    }
    pthread_mutex_lock(&publish_lock);
    old = cur_rcpts;
    cur_rcpts = t;
    pthread_mutex_unlock(&publish_lock);
    fe_rcpt_table_free(old);
    ms_info("event=recipient_file_loaded addresses=%zu", fe_rcpt_table_size(t));
}

/* Loop thread: take the published TLS context, password table and
 * recipient file. */
static void loop_take_published(struct fe_loop *L)
{
    struct ms_tls_ctx *tls, *old_tls = L->srv.tls;
    struct fe_passwd *pw, *old_pw = L->srv.passwd;
    struct fe_rcpt_table *rt, *old_rt = L->srv.rcpts;

    pthread_mutex_lock(&publish_lock);
    tls = cur_tls ? ms_tls_ctx_ref(cur_tls) : NULL; /* no TLS configured */
    pw = fe_passwd_ref(cur_passwd);
    rt = fe_rcpt_table_ref(cur_rcpts);
    pthread_mutex_unlock(&publish_lock);
    L->srv.tls = tls;
    L->srv.passwd = pw;
    L->srv.rcpts = rt;
    ms_tls_ctx_free(old_tls);
    fe_passwd_free(old_pw);
    fe_rcpt_table_free(old_rt);
}

/* Main loop: a hash of what the certificate, key and password paths
 * resolve to (device, inode, size, modification time; a missing file
 * counts by its errno).  Any change, a renewal or a new Secret, changes it. */
static uint64_t files_signature(void)
{
    const char *paths[2 * MS_TLS_CERTS_MAX + 2];
    const char *const *names;
    size_t n, i, np = 0;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    struct stat st;

    paths[np++] = ms_config_get(cfg, "smtp", "tls_cert", "");
    paths[np++] = ms_config_get(cfg, "smtp", "tls_key", "");
    paths[np++] = ms_config_get(cfg, "smtp", "passwd_file", "");
    paths[np++] = ms_config_get(cfg, "smtp", "recipient_file", "");
    n = ms_config_sections(cfg, "tls.", &names);
    for (i = 0; i < n && np + 2 <= sizeof(paths) / sizeof(paths[0]); i++) {
        paths[np++] = ms_config_get(cfg, names[i], "cert", "");
        paths[np++] = ms_config_get(cfg, names[i], "key", "");
    }
    for (i = 0; i < np; i++) {
        uint64_t v[5] = {0};
        size_t k;

        if (*paths[i] == '\0')
            continue;
        if (stat(paths[i], &st) == 0) {
            v[0] = (uint64_t)st.st_dev;
            v[1] = (uint64_t)st.st_ino;
            v[2] = (uint64_t)st.st_size;
            v[3] = (uint64_t)st.st_mtim.tv_sec;
            v[4] = (uint64_t)st.st_mtim.tv_nsec;
        } else {
            v[0] = (uint64_t)errno;
        }
        for (k = 0; k < 5; k++) {
            h ^= v[k];
            h *= 1099511628211ULL;
        }
    }
    return h;
}

/* Main loop: read the certificates and the password file again, publish
 * them and tell every loop (SIGHUP, or the files changed). */
static void reload_published(void)
{
    size_t i;

    files_sig = files_signature();
    load_tls(0);
    load_passwd(0);
    load_rcpts(0);
    for (i = 0; i < nloops; i++) {
        atomic_store(&loops[i].want_reload, 1);
        uv_async_send(&loops[i].wake);
    }
}

static void on_file_check(uv_timer_t *t)
{
    (void)t;
    if (files_signature() == files_sig)
        return;
    ms_info("event=reload reason=files_changed");
    reload_published();
}

static void handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* Main loop: every loop is done; stop serving /metrics and leave. */
static void on_finished(uv_async_t *a)
{
    size_t i;

    (void)a;
    for (i = 0; i < nloops; i++)
        if (!atomic_load(&loops[i].done))
            return;
    ms_info("event=drained");
    /* `finished` stays open: a loop may still be sending on it. */
    uv_close((uv_handle_t *)&sig_term, handle_closed);
    uv_close((uv_handle_t *)&sig_int, handle_closed);
    uv_close((uv_handle_t *)&sig_hup, handle_closed);
    uv_close((uv_handle_t *)&file_check, handle_closed);
    if (http)
        ms_http_stop(http);
    http = NULL;
    uv_stop(uv_default_loop());
}

/* Loop thread: no session is left.  Flush the producer, tell main.  The
 * wake handle stays open (main may still signal it) until the process
 * exits. */
static void loop_finish(struct fe_loop *L)
{
    struct fe_server *srv = &L->srv;

    L->finished = 1;
    ms_info("event=loop_drained loop=%d", L->index);
    uv_timer_stop(&L->drain_timer);
    uv_close((uv_handle_t *)&L->drain_timer, handle_closed);
    uv_close((uv_handle_t *)&L->ready_timer, handle_closed);
    fe_verify_free(srv->verify); /* before its Redis client */
    srv->verify = NULL;
    if (L->index == 0) {
        ms_heartbeat_stop(heartbeat);
        heartbeat = NULL;
    }
    if (srv->redis) {
        ms_redis_free(srv->redis); /* pending checks fail; no session is left */
        srv->redis = NULL;
    }
    fe_server_commit_stop(srv); /* hands over what it still holds */
    if (srv->producer) {
        /* Blocks this loop up to the timeout: nothing else is left on it. */
        ms_producer_free(srv->producer, FE_PRODUCER_FLUSH_MS);
        srv->producer = NULL;
    }
    fe_server_sent_free(srv); /* every report came (ms_producer_free); none can now */
    atomic_store(&L->ready, 0);
    atomic_store(&L->done, 1);
    uv_async_send(&finished);
    if (L->index != 0)
        uv_stop(L->loop);
}

static void on_drain_timer(uv_timer_t *t)
{
    struct fe_loop *L = t->data;

    if (fe_server_idle(&L->srv)) {
        loop_finish(L);
        return;
    }
    if (!L->aborted && uv_now(L->loop) - L->drain_started >= L->srv.set.drain_timeout_ms) {
        ms_warn("event=drain_timeout loop=%d sessions_left=1", L->index);
        L->aborted = 1;
        fe_sessions_abort(&L->srv);
    }
}

/* Loop thread: main asked for something. */
static void on_wake(uv_async_t *a)
{
    struct fe_loop *L = a->data;

    if (L->finished)
        return;
    if (atomic_exchange(&L->want_reload, 0))
        loop_take_published(L);
    if (atomic_load(&L->want_drain) && !L->draining) {
        L->draining = 1;
        L->drain_started = uv_now(L->loop);
        fe_listen_close(&L->srv);
        fe_sessions_drain(&L->srv);
        uv_timer_start(&L->drain_timer, on_drain_timer, 0, FE_DRAIN_POLL_MS);
    }
    if (atomic_load(&L->want_abort) && L->draining && !L->aborted) {
        L->aborted = 1;
        fe_sessions_abort(&L->srv);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    size_t i;

    (void)h;
    if (signum == SIGHUP) {
        ms_info("event=reload");
        reload_published();
        return;
    }
    if (draining) {
        if (!aborted) {
            ms_info("event=drain_abort signal=%d", signum);
            aborted = 1;
            for (i = 0; i < nloops; i++) {
                atomic_store(&loops[i].want_abort, 1);
                uv_async_send(&loops[i].wake);
            }
        }
        return;
    }
    draining = 1;
    ms_info("event=draining signal=%d loops=%zu", signum, nloops);
    for (i = 0; i < nloops; i++) {
        atomic_store(&loops[i].want_drain, 1);
        uv_async_send(&loops[i].wake);
    }
}

/* Main thread, before any loop runs: loop i's server, producer, Redis
 * client and listeners. */
static void loop_setup(struct fe_loop *L, int index, size_t n)
{
    struct fe_server *srv = &L->srv;
    struct ms_kafka_conf kconf;
    struct ms_redis_conf rconf;
    struct ms_conn_secrets secrets = {0};
    char err[512];

    L->index = index;
    if (index == 0)
        L->loop = uv_default_loop();
    else {
        uv_loop_init(&L->own_loop);
        L->loop = &L->own_loop;
    }
    pthread_mutex_init(&L->why_lock, NULL);
    snprintf(L->why, sizeof(L->why), "starting");
    fe_server_init(srv, L->loop);
    if (fe_settings_load(&srv->set, cfg, err, sizeof(err)) < 0)
        ms_fatal("event=config_error reason=\"%s\"", err);
    /* Back-pressure is per producer, so per loop: each gets its share of
     * max_pending_messages and the process total stays what was asked. */
    srv->set.max_pending = (srv->set.max_pending + n - 1) / n;
    srv->conns = &conns;
    srv->next_id = (uint64_t)index << FE_ID_SHIFT;
    srv->m = metrics;
    loop_take_published(L);

    memset(&kconf, 0, sizeof(kconf));
    if (ms_connect_kafka_conf(cfg, &kconf, &secrets, err, sizeof(err)) < 0)
        ms_fatal("event=config_invalid error=\"%s\"", err);
    kconf.client_id = srv->set.node_id;
    kconf.linger_ms = (int)srv->set.kafka_linger_ms;
    kconf.compression = srv->set.kafka_compression;
    kconf.caller_batches = srv->set.group_commit;
    kconf.batch_linger_ms = (int)srv->set.batch_linger_ms;
    srv->producer = ms_producer_new(L->loop, &kconf, fe_sessions_report, srv, err, sizeof(err));
    if (srv->producer == NULL)
        ms_fatal("event=kafka_error reason=\"%s\"", err);
    if (srv->set.group_commit)
        fe_server_commit_start(srv, fe_sessions_report);

    /* Read even when no limit needs Redis: they are settings all the same,
     * and the start-up check must know them (ms_config.h). */
    if (ms_connect_redis_conf(cfg, &rconf, &secrets, err, sizeof(err)) < 0)
        ms_fatal("event=config_invalid error=\"%s\"", err);
    if (fe_settings_need_redis(&srv->set)) {
        srv->redis = ms_redis_new(L->loop, &rconf);
        srv->rl = fe_rl_new(srv->redis, fe_sessions_limits_answer, srv);
    }
    /* One heartbeat per process, when it has Redis at all (ms_heartbeat.h). */
    if (index == 0 && srv->redis)
        heartbeat = ms_heartbeat_start(L->loop, srv->redis, "frontend", srv->set.node_id, NULL);
    if (srv->set.verify.map)
        srv->verify = fe_verify_new(L->loop, srv->redis, &srv->set.verify, &srv->m.verify,
                                    fe_sessions_verify_answer, srv);
    ms_conn_secrets_clear(&secrets); /* the clients hold their own copies */
    if (fe_listen_open(srv, cfg, err, sizeof(err)) < 0)
        ms_fatal("event=listen_failed reason=\"%s\"", err);

    uv_async_init(L->loop, &L->wake, on_wake);
    L->wake.data = L;
    uv_timer_init(L->loop, &L->drain_timer);
    L->drain_timer.data = L;
    uv_timer_init(L->loop, &L->ready_timer);
    L->ready_timer.data = L;
    /* Loop 0 is the main loop: ready_cb asks it directly. */
    if (index != 0)
        uv_timer_start(&L->ready_timer, on_ready_timer, 0, FE_READY_POLL_MS);
}

/* Loops 1..N-1: the thread's whole life. */
static void loop_thread(void *arg)
{
    struct fe_loop *L = arg;

    uv_run(L->loop, UV_RUN_DEFAULT);
    uv_run(L->loop, UV_RUN_NOWAIT);
    fe_rl_free(L->srv.rl);
}

static void usage(void)
{
    fprintf(stderr, "usage: mailstream-frontend -c CONFIG | --version\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *path = NULL, *level;
    char err[512];
    int opt;
    int64_t nthreads;
    size_t i;
    struct fe_settings set;
    uv_loop_t *loop = uv_default_loop();

    ms_version_option(argc, argv, "mailstream-frontend");
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
    /* Checked once here, so that the log is set up before any loop. */
    if (fe_settings_load(&set, cfg, err, sizeof(err)) < 0)
        ms_fatal("event=config_error reason=\"%s\"", err);
    level = ms_config_get(cfg, "node", "log_level", "info");
    ms_log_init(set.node_id, strcmp(level, "debug") == 0  ? MS_LOG_DEBUG
                             : strcmp(level, "warn") == 0 ? MS_LOG_WARN
                                                          : MS_LOG_INFO);
    {
        long cpus = ms_cpus_available(); /* a pod's CPU limit, not the node's CPUs */

        if (cpus > FE_THREADS_MAX)
            cpus = FE_THREADS_MAX;
        if (ms_config_get_int(cfg, "node", "threads", cpus, 1, FE_THREADS_MAX, &nthreads) < 0)
            ms_fatal("event=config_error reason=\"[node] threads: want an integer in [1, %d]\"",
                     FE_THREADS_MAX);
    }
    fe_metrics_register(&metrics);
    files_sig = files_signature();
    load_tls(1);
    load_passwd(1);
    load_rcpts(1);
    fe_conn_table_init(&conns);

    nloops = (size_t)nthreads;
    loops = ms_calloc(nloops, sizeof(*loops));
    for (i = 0; i < nloops; i++)
        loop_setup(&loops[i], (int)i, nloops);

    http = ms_http_start(loop, ms_config_get(cfg, "node", "metrics", "127.0.0.1:9101"),
                         ready_cb, NULL);
    if (http == NULL)
        ms_fatal("event=metrics_listen_failed");
    /* Every setting has been read: what the file holds beyond them is a
     * typo (docs/config.md). */
    if (ms_config_check_unknown(cfg, NULL, err, sizeof(err)) < 0)
        ms_fatal("event=config_error reason=\"%s\"", err);

    uv_async_init(loop, &finished, on_finished);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    uv_timer_init(loop, &file_check);
    uv_timer_start(&file_check, on_file_check, FE_FILE_CHECK_MS, FE_FILE_CHECK_MS);
    for (i = 1; i < nloops; i++)
        if (uv_thread_create(&loops[i].tid, loop_thread, &loops[i]) != 0)
            ms_fatal("event=thread_create_failed loop=%zu", i);
    ms_info("event=started hostname=%s topic=%s max_message_size=%llu threads=%zu",
            set.hostname, set.topic, (unsigned long long)set.max_message_size, nloops);

    uv_run(loop, UV_RUN_DEFAULT);
    /* Let the close callbacks run; anything still open is not ours to wait
     * for, the process is exiting. */
    uv_run(loop, UV_RUN_NOWAIT);
    for (i = 1; i < nloops; i++)
        uv_thread_join(&loops[i].tid);
    fe_rl_free(loops[0].srv.rl);
    fe_settings_free(&set);
    ms_info("event=exit");
    return 0;
}
