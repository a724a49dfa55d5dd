/*
 * fe_verify.c - recipient verification probes (see fe_verify.h).
 *
 * A probe goes through these steps, each on the loop:
 *   CACHE    GET MS_KEY_VERIFY<addr>; a hit answers at once
 *   QUEUED   waiting for one of max_probes sessions
 *   RESOLVE  uv_getaddrinfo for a next hop given by name
 *   CONNECT, GREET, HELLO, MAIL, RCPT: the dialogue; RCPT's reply decides
 *   QUIT     the waiters have their answer; QUIT sent, the 221 awaited
 * The probe is on the loop's `probes` list (found by address, for
 * coalescing) from CACHE until it has answered, and freed once its
 * connection and timer have closed.
 */
#include "fe_verify.h"
#include "ms_addr.h"
#include "ms_buf.h"
#include "ms_conn.h"
#include "ms_error.h"
#include "ms_idmap.h"
#include "ms_keys.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"
#include "ms_smtp_reply.h"

#include <ctype.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

/* Longest address probed (RFC 5321 §4.5.3.1.3: a path of 256 octets). */
#define FE_VERIFY_ADDR_MAX 256
/* What a next hop may send before its reply ends (a long EHLO reply). */
#define FE_VERIFY_INPUT_MAX (MS_REPLY_LINE_MAX * MS_REPLY_LINES_MAX)
/* After the answer: how long the 221 to our QUIT may take. */
#define FE_VERIFY_QUIT_MS 2000
/* Default SMTP port of a probed next hop (RFC 5321 §4.5.4.2). */
#define FE_VERIFY_SMTP_PORT 25

enum probe_step {
    P_CACHE,
    P_LOCK,
    P_FOLLOW,
    P_QUEUED,
    P_RESOLVE,
    P_CONNECT,
    P_GREET,
    P_HELLO,
    P_MAIL,
    P_RCPT,
    P_QUIT,
    P_DONE
};

struct fe_verify {
    uv_loop_t *loop;
    ms_redis *redis;
    const struct fe_verify_conf *conf;
    const struct fe_verify_metrics *m;
    fe_verify_cb cb;
    void *arg;
    struct ms_list all;    /* every probe until freed */
    struct ms_list probes; /* not yet answered: coalescing */
    struct ms_list queued; /* P_QUEUED, in order */
    struct ms_idmap by_id; /* cache requests in flight -> probe */
    uint64_t next_id;
    size_t pending; /* on `probes` */
    size_t active;  /* with a session to a next hop */
    size_t alive;   /* allocated */
    int closing;
};

struct probe {
    struct fe_verify *v;
    uint64_t id;
    char addr[FE_VERIFY_ADDR_MAX + 1]; /* lower-cased */
    const struct ms_transport *tr;
    enum probe_step step;
    uint64_t *waiters;
    size_t nwait, capwait;
    struct ms_list alink; /* on v->all */
    struct ms_list link;  /* on v->probes while unanswered */
    struct ms_list qlink; /* on v->queued */
    uv_getaddrinfo_t gai;
    int gai_busy;
    struct ms_conn *t;
    uv_timer_t timer;
    int timer_open, counted_active;
    int redis_busy;    /* a command in flight (v->by_id) */
    int locked;        /* we hold MS_KEY_VERIFY_LOCK<addr> */
    uint64_t deadline; /* P_FOLLOW: uv_now() past which there is no answer */
    struct ms_buf in;
    uint64_t started_ns;
    char why[128]; /* a failure found while starting, answered from the timer */
};

static void probe_answer(struct probe *p, int result, const char *text);
static void probe_next(struct fe_verify *v);

/* ---- configuration ---- */

/* One "domain transport" entry; a transport no probe can ask (an MX
 * lookup, discard, error) is refused: such a domain would never be
 * verified, which is no better than a typo. */
static int map_add(struct fe_verify_conf *c, const char *line, size_t len, const char *where,
                   char *err, size_t errlen)
{
    char why[256];
    struct ms_transport t;
    size_t i = len, end;

    if (ms_transport_map_add(c->map, line, len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "[verify] %s: %s", where, why);
        return MS_ECONFIG;
    }
    while (i > 0 && isspace((unsigned char)line[i - 1]))
        i--;
    end = i;
    while (i > 0 && !isspace((unsigned char)line[i - 1]) && line[i - 1] != '=')
        i--;
    if (i == 0 || line[strspn(line, " \t")] == '#')
        return 0; /* blank or a comment: the map took it */
    if (ms_transport_parse(line + i, end - i, &t, why, sizeof(why)) < 0 ||
        (t.kind != MS_TRANSPORT_SMTP && t.kind != MS_TRANSPORT_LMTP) ||
        (t.kind == MS_TRANSPORT_SMTP && !t.no_mx)) {
        snprintf(err, errlen,
                 "[verify] %s: \"%.*s\" cannot be probed (want smtp:[host][:port], "
                 "lmtp:host[:port] or lmtp:unix:/path)",
                 where, (int)(end - i), line + i);
        return MS_ECONFIG;
    }
    return 0;
}

int fe_verify_conf_load(struct fe_verify_conf *c, const ms_config *cfg, const char *helo, char *err,
                        size_t errlen)
{
    const char *map = ms_config_get(cfg, "verify", "map", "");
    const char *file = ms_config_get(cfg, "verify", "map_file", "");
    const char *action = ms_config_get(cfg, "verify", "tempfail_action", "defer");
    char *copy, *items[MS_TRANSPORT_MAP_MAX], line[MS_TRANSPORT_LINE_MAX + 2];
    size_t n, i;
    FILE *f;

    memset(c, 0, sizeof(*c));
    c->helo = helo;
    if (ms_config_get_int(cfg, "verify", "positive_ttl", FE_VERIFY_POSITIVE_TTL_DEF, 1,
                          3650LL * 86400, &c->positive_ttl_s) < 0 ||
        ms_config_get_int(cfg, "verify", "negative_ttl", FE_VERIFY_NEGATIVE_TTL_DEF, 1,
                          3650LL * 86400, &c->negative_ttl_s) < 0 ||
        ms_config_get_int(cfg, "verify", "timeout_ms", FE_VERIFY_TIMEOUT_MS_DEF, 100, 600000,
                          &c->timeout_ms) < 0 ||
        ms_config_get_int(cfg, "verify", "max_probes", FE_VERIFY_MAX_PROBES_DEF, 1,
                          FE_VERIFY_PENDING_MAX, &c->max_probes) < 0) {
        snprintf(err, errlen, "[verify]: a number out of range (see the log)");
        return MS_ECONFIG;
    }
    if (strcmp(action, "defer") == 0)
        c->tempfail_accept = 0;
    else if (strcmp(action, "accept") == 0)
        c->tempfail_accept = 1;
    else {
        snprintf(err, errlen, "[verify] tempfail_action: want defer or accept, not \"%s\"", action);
        return MS_ECONFIG;
    }
    if (*map == '\0' && *file == '\0')
        return 0;
    c->map = ms_transport_map_new();
    copy = ms_strdup(map);
    n = ms_config_split_list(copy, items, MS_TRANSPORT_MAP_MAX);
    for (i = 0; i < n; i++)
        if (map_add(c, items[i], strlen(items[i]), "map", err, errlen) < 0) {
            free(copy);
            return MS_ECONFIG;
        }
    free(copy);
    if (*file) {
        if ((f = fopen(file, "r")) == NULL) {
            snprintf(err, errlen, "[verify] map_file: cannot open %s", file);
            return MS_ECONFIG;
        }
        while (fgets(line, sizeof(line), f)) {
            size_t len = strcspn(line, "\r\n");
            if (len > MS_TRANSPORT_LINE_MAX) {
                snprintf(err, errlen, "[verify] map_file: a line longer than %d octets",
                         MS_TRANSPORT_LINE_MAX);
                fclose(f);
                return MS_ECONFIG;
            }
            if (map_add(c, line, len, "map_file", err, errlen) < 0) {
                fclose(f);
                return MS_ECONFIG;
            }
        }
        fclose(f);
    }
    return 0;
}

void fe_verify_conf_free(struct fe_verify_conf *c)
{
    ms_transport_map_free(c->map);
    c->map = NULL;
}

const struct ms_transport *fe_verify_route(const struct fe_verify_conf *c, const char *addr)
{
    const struct ms_transport *t;
    const char *dom;

    if (c->map == NULL || (dom = ms_addr_domain(addr)) == NULL)
        return NULL;
    t = ms_transport_map_lookup(c->map, dom);
    /* Only a next hop we can ask without an MX lookup (the frontend has
     * no resolver for MX) and that is a mail server at all. */
    if (t == NULL || (t->kind != MS_TRANSPORT_SMTP && t->kind != MS_TRANSPORT_LMTP) ||
        (t->kind == MS_TRANSPORT_SMTP && !t->no_mx))
        return NULL;
    return t;
}

void fe_verify_metrics_register(struct fe_verify_metrics *m)
{
    static const char *const results[] = {"ok", "unknown", "tempfail"};
    const char *help = "Recipient verification probes to next hops, by their answer.";
    char labels[64];
    int i;

    for (i = 0; i < 3; i++) {
        snprintf(labels, sizeof(labels), "result=\"%s\"", results[i]);
        m->probes[i] = ms_counter_new("mailstream_smtp_verify_probes_total", help, labels);
    }
    help = "Recipient verifications answered from the Redis cache (hit) or needing a probe "
           "(miss).";
    m->cache_hit = ms_counter_new("mailstream_smtp_verify_cache_total", help, "result=\"hit\"");
    m->cache_miss = ms_counter_new("mailstream_smtp_verify_cache_total", help, "result=\"miss\"");
    m->coalesced = ms_counter_new("mailstream_smtp_verify_coalesced_total",
                                  "RCPT commands that joined a verification of the same "
                                  "address already under way.",
                                  NULL);
    m->busy = ms_counter_new("mailstream_smtp_verify_busy_total",
                             "RCPT commands answered 450 because too many addresses were "
                             "being verified.",
                             NULL);
    m->probe_seconds = ms_histogram_new("mailstream_smtp_verify_probe_seconds",
                                        "Duration of a verification probe, connect to the "
                                        "RCPT reply.",
                                        NULL, ms_latency_buckets, ms_latency_buckets_n);
}

/* ---- probes ---- */

struct fe_verify *fe_verify_new(uv_loop_t *loop, ms_redis *redis, const struct fe_verify_conf *conf,
                                const struct fe_verify_metrics *m, fe_verify_cb cb, void *arg)
{
    struct fe_verify *v = ms_calloc(1, sizeof(*v));

    v->loop = loop;
    v->redis = redis;
    v->conf = conf;
    v->m = m;
    v->cb = cb;
    v->arg = arg;
    ms_list_init(&v->all);
    ms_list_init(&v->probes);
    ms_list_init(&v->queued);
    ms_idmap_init(&v->by_id);
    return v;
}

static void verify_maybe_free(struct fe_verify *v)
{
    if (v->closing && v->alive == 0) {
        ms_idmap_free(&v->by_id);
        free(v);
    }
}

static void probe_free(struct probe *p)
{
    struct fe_verify *v = p->v;

    ms_list_remove(&p->alink);
    ms_buf_free(&p->in);
    free(p->waiters);
    free(p);
    v->alive--;
    verify_maybe_free(v);
}

/* Free once nothing of the probe is open any more. */
static void probe_release(struct probe *p)
{
    if (p->t == NULL && !p->timer_open && !p->gai_busy && !p->redis_busy && p->step == P_DONE)
        probe_free(p);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct probe *p = h->data;

    p->timer_open = 0;
    probe_release(p);
}

/* The session is over (answered or failed): close what is open. */
static void probe_end(struct probe *p)
{
    struct fe_verify *v = p->v;

    p->step = P_DONE;
    if (p->locked) {
        char key[sizeof(MS_KEY_VERIFY_LOCK) + FE_VERIFY_ADDR_MAX];
        const char *argv[2] = {"DEL", key};
        snprintf(key, sizeof(key), MS_KEY_VERIFY_LOCK "%s", p->addr);
        p->locked = 0;
        if (!v->closing)
            ms_redis_fire(v->redis, NULL, 2, argv);
    }
    if (p->counted_active) {
        p->counted_active = 0;
        v->active--;
    }
    if (p->timer_open && !uv_is_closing((uv_handle_t *)&p->timer)) {
        uv_timer_stop(&p->timer);
        uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    }
    if (p->t)
        ms_conn_abort(p->t); /* on_close clears p->t */
    probe_release(p);
    if (!v->closing)
        probe_next(v);
}

static void probe_fail(struct probe *p, const char *fmt, const char *detail)
{
    char text[FE_VERIFY_TEXT_MAX];

    snprintf(text, sizeof(text), fmt, detail ? detail : "");
    if (p->step < P_QUIT) {
        ms_counter_inc(p->v->m->probes[FE_VERIFY_TEMP]);
        ms_info("event=verify_probe rcpt=%s result=tempfail reason=\"%s\"", p->addr, text);
        probe_answer(p, FE_VERIFY_TEMP, text);
    }
    probe_end(p);
}

/* Every waiter gets the answer; the address is free for a new probe. */
static void probe_answer(struct probe *p, int result, const char *text)
{
    struct fe_verify *v = p->v;
    uint64_t *w = p->waiters;
    size_t n = p->nwait, i;

    if (ms_list_linked(&p->link)) {
        ms_list_remove(&p->link);
        v->pending--;
    }
    p->waiters = NULL;
    p->nwait = p->capwait = 0;
    /* A callback may start another lookup: the probe is off the lists. */
    for (i = 0; i < n && !v->closing; i++)
        v->cb(v->arg, w[i], result, text);
    free(w);
}

static void cache_store(struct probe *p, int result, const char *text)
{
    struct fe_verify *v = p->v;
    char key[sizeof(MS_KEY_VERIFY) + FE_VERIFY_ADDR_MAX], val[FE_VERIFY_TEXT_MAX + 4], ttl[24];
    const char *argv[5];

    snprintf(key, sizeof(key), MS_KEY_VERIFY "%s", p->addr);
    snprintf(val, sizeof(val), "%d %s", result == FE_VERIFY_OK, text);
    snprintf(
        ttl, sizeof(ttl), "%lld",
        (long long)(result == FE_VERIFY_OK ? v->conf->positive_ttl_s : v->conf->negative_ttl_s));
    argv[0] = "SET";
    argv[1] = key;
    argv[2] = val;
    argv[3] = "EX";
    argv[4] = ttl;
    ms_redis_fire(v->redis, NULL, 5, argv);
}

static void send_line(struct probe *p, const char *fmt, const char *arg)
{
    char line[FE_VERIFY_ADDR_MAX + 300];
    int n = snprintf(line, sizeof(line), fmt, arg);

    if (ms_conn_write(p->t, line, (size_t)n) < 0)
        probe_fail(p, "450 4.1.1 probe failed: cannot write to the next hop%s", NULL);
}

/* One complete reply from the next hop, in the current step. */
static void on_timeout(uv_timer_t *t);

static void on_reply(struct probe *p, const struct ms_reply *r)
{
    struct fe_verify *v = p->v;
    char text[FE_VERIFY_TEXT_MAX];
    int result;

    ms_reply_format(r, text, sizeof(text));
    switch (p->step) {
    case P_GREET:
    case P_HELLO:
    case P_MAIL:
        if (r->code / 100 != 2) {
            /* The next hop would not talk: no answer about the address. */
            probe_fail(p, "450 4.1.1 probe failed: next hop said: %s", text);
            return;
        }
        if (p->step == P_GREET) {
            p->step = P_HELLO;
            send_line(p, p->tr->kind == MS_TRANSPORT_LMTP ? "LHLO %s\r\n" : "EHLO %s\r\n",
                      v->conf->helo);
        } else if (p->step == P_HELLO) {
            p->step = P_MAIL;
            send_line(p, "MAIL FROM:<>%s\r\n", "");
        } else {
            p->step = P_RCPT;
            send_line(p, "RCPT TO:<%s>\r\n", p->addr);
        }
        return;
    case P_RCPT:
        result = r->code / 100 == 2   ? FE_VERIFY_OK
                 : r->code / 100 == 5 ? FE_VERIFY_UNKNOWN
                                      : FE_VERIFY_TEMP;
        ms_counter_inc(v->m->probes[result]);
        ms_histogram_observe(v->m->probe_seconds, (double)(uv_hrtime() - p->started_ns) / 1e9);
        ms_info("event=verify_probe rcpt=%s result=%s reply=\"%s\"", p->addr,
                result == FE_VERIFY_OK        ? "ok"
                : result == FE_VERIFY_UNKNOWN ? "unknown"
                                              : "tempfail",
                text);
        if (result != FE_VERIFY_TEMP)
            cache_store(p, result, text);
        p->step = P_QUIT;
        probe_answer(p, result, text);
        if (p->t == NULL)
            return;
        send_line(p, "QUIT\r\n%s", "");
        if (p->timer_open && p->step == P_QUIT)
            uv_timer_start(&p->timer, on_timeout, FE_VERIFY_QUIT_MS, 0);
        return;
    case P_QUIT: probe_end(p); return;
    default: return;
    }
}

static void on_read(void *arg, const char *buf, size_t len)
{
    struct probe *p = arg;
    struct ms_reply r;
    int n;

    if (p->step == P_DONE)
        return;
    if (ms_buf_append(&p->in, buf, len) != 0) {
        probe_fail(p, "450 4.1.1 probe failed: %s", "the next hop's reply is too long");
        return;
    }
    while (p->step != P_DONE && p->t && (n = ms_reply_parse(p->in.data, p->in.len, &r)) != 0) {
        if (n == MS_EAGAIN)
            return;
        if (n < 0) {
            probe_fail(p, "450 4.1.1 probe failed: %s", "a malformed reply from the next hop");
            return;
        }
        on_reply(p, &r);
        if (p->step != P_DONE)
            ms_buf_consume(&p->in, (size_t)n);
    }
}

static void on_error(void *arg, int err)
{
    struct probe *p = arg;

    if (p->step == P_QUIT) /* it closed after our QUIT */
        probe_end(p);
    else
        probe_fail(p, "450 4.1.1 probe failed: %s",
                   p->t && p->t->error[0] ? p->t->error : "the next hop closed the connection");
}

static void on_close(void *arg)
{
    struct probe *p = arg;

    p->t = NULL;
    if (p->step != P_DONE)
        probe_fail(p, "450 4.1.1 probe failed: %s", "connection closed");
    else
        probe_release(p);
}

static void on_connect(void *arg, int err)
{
    struct probe *p = arg;

    if (err < 0) {
        probe_fail(p, "450 4.1.1 probe failed: cannot connect to the next hop%s", "");
        return;
    }
    p->step = P_GREET;
    if (ms_conn_read_start(p->t) < 0)
        probe_fail(p, "450 4.1.1 probe failed: %s", p->t->error);
}

static const struct ms_conn_cb probe_cb = {
    .on_connect = on_connect,
    .on_read = on_read,
    .on_error = on_error,
    .on_close = on_close,
};

static void on_timeout(uv_timer_t *t)
{
    struct probe *p = t->data;

    if (p->step == P_QUIT)
        probe_end(p);
    else if (p->why[0])
        probe_fail(p, "450 4.1.1 probe failed: %s", p->why);
    else {
        ms_info("event=verify_timeout rcpt=%s", p->addr);
        probe_fail(p, "450 4.1.1 probe failed: %s", "the next hop did not answer in time");
    }
}

/* A failure before any callback: answered from the timer, so that
 * fe_verify_start() never calls back from within. */
static void probe_fail_later(struct probe *p, const char *why)
{
    snprintf(p->why, sizeof(p->why), "%s", why);
    uv_timer_start(&p->timer, on_timeout, 0, 0);
}

static void probe_connect(struct probe *p, const struct sockaddr *sa)
{
    char err[128];

    p->step = P_CONNECT;
    if (ms_conn_connect(p->v->loop, sa, &probe_cb, p, &p->t, err, sizeof(err)) < 0) {
        p->t = NULL;
        probe_fail_later(p, err);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct probe *p = req->data;

    p->gai_busy = 0;
    if (p->step == P_DONE) { /* stopped meanwhile */
        uv_freeaddrinfo(res);
        probe_release(p);
        return;
    }
    if (status < 0 || res == NULL) {
        uv_freeaddrinfo(res);
        probe_fail(p, "450 4.1.1 probe failed: cannot resolve %s", p->tr->host);
        return;
    }
    probe_connect(p, res->ai_addr);
    uv_freeaddrinfo(res);
}

/* A session slot is free: ask the next hop. */
static void probe_run(struct probe *p)
{
    struct fe_verify *v = p->v;
    const struct ms_transport *tr = p->tr;
    struct sockaddr_storage ss;
    struct addrinfo hints;
    char port[8];
    int portn = tr->port                        ? tr->port
                : tr->kind == MS_TRANSPORT_LMTP ? MS_LMTP_PORT
                                                : FE_VERIFY_SMTP_PORT;

    v->active++;
    p->counted_active = 1;
    p->started_ns = uv_hrtime();
    uv_timer_start(&p->timer, on_timeout, (uint64_t)v->conf->timeout_ms, 0);
    memset(&ss, 0, sizeof(ss));
    if (tr->path[0]) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof(un->sun_path), "%s", tr->path);
        probe_connect(p, (struct sockaddr *)&ss);
    } else if (ms_ip_sockaddr(tr->host, portn, &ss) == 0) {
        probe_connect(p, (struct sockaddr *)&ss);
    } else {
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(port, sizeof(port), "%d", portn);
        p->step = P_RESOLVE;
        p->gai.data = p;
        p->gai_busy = 1;
        if (uv_getaddrinfo(v->loop, &p->gai, on_resolved, tr->host, port, &hints) < 0) {
            p->gai_busy = 0;
            probe_fail_later(p, "cannot resolve the next hop");
        }
    }
}

static void probe_next(struct fe_verify *v)
{
    while (!ms_list_empty(&v->queued) && v->active < (size_t)v->conf->max_probes) {
        struct probe *p = ms_list_entry(ms_list_first(&v->queued), struct probe, qlink);
        ms_list_remove(&p->qlink);
        probe_run(p);
    }
}

static void probe_queue(struct probe *p)
{
    ms_counter_inc(p->v->m->cache_miss);
    p->step = P_QUEUED;
    ms_list_insert_tail(&p->v->queued, &p->qlink);
    probe_next(p->v);
}

static void on_redis(void *arg, uint64_t id, const struct ms_redis_reply *r);

/* Send one command for p (its reply to on_redis); 0, or MS_EUNAVAIL. */
static int probe_redis(struct probe *p, int argc, const char **argv)
{
    struct fe_verify *v = p->v;

    p->id = ++v->next_id;
    if (v->redis == NULL || ms_redis_command(v->redis, on_redis, v, p->id, argc, argv, NULL) < 0)
        return MS_EUNAVAIL;
    ms_idmap_put(&v->by_id, p->id, p);
    p->redis_busy = 1;
    return 0;
}

/* Look in the cache (GET), or, following another frontend's probe, in the
 * cache and at its lock (MGET). */
static void probe_lookup(struct probe *p)
{
    char key[sizeof(MS_KEY_VERIFY) + FE_VERIFY_ADDR_MAX],
        lock[sizeof(MS_KEY_VERIFY_LOCK) + FE_VERIFY_ADDR_MAX];
    const char *argv[3] = {p->step == P_FOLLOW ? "MGET" : "GET", key, lock};

    snprintf(key, sizeof(key), MS_KEY_VERIFY "%s", p->addr);
    snprintf(lock, sizeof(lock), MS_KEY_VERIFY_LOCK "%s", p->addr);
    if (probe_redis(p, p->step == P_FOLLOW ? 3 : 2, argv) < 0)
        probe_queue(p); /* no cache: ask the next hop */
}

/* Nothing cached: take the cluster's lock on the address, so that one
 * frontend probes it while the others wait for its answer in the cache. */
static void probe_lock(struct probe *p)
{
    char key[sizeof(MS_KEY_VERIFY_LOCK) + FE_VERIFY_ADDR_MAX], px[24];
    const char *argv[6] = {"SET", key, "1", "NX", "PX", px};

    snprintf(key, sizeof(key), MS_KEY_VERIFY_LOCK "%s", p->addr);
    /* It lapses by itself if we die: a probe takes at most timeout_ms. */
    snprintf(px, sizeof(px), "%lld", (long long)p->v->conf->timeout_ms + FE_VERIFY_QUIT_MS);
    p->step = P_LOCK;
    if (probe_redis(p, 6, argv) < 0)
        probe_queue(p);
}

static void on_poll(uv_timer_t *t)
{
    probe_lookup(t->data);
}

/* A cached answer ("1 reply" / "0 reply"): 1 when r is one, answered. */
static int cache_answer(struct probe *p, const struct ms_redis_reply *r)
{
    char text[FE_VERIFY_TEXT_MAX];
    size_t n;

    if (r->type != MS_REDIS_STR || r->len < 2 || (r->str[0] != '0' && r->str[0] != '1') ||
        r->str[1] != ' ')
        return 0;
    n = r->len - 2 < sizeof(text) - 1 ? r->len - 2 : sizeof(text) - 1;
    memcpy(text, r->str + 2, n);
    text[n] = '\0';
    ms_counter_inc(p->v->m->cache_hit);
    probe_answer(p, r->str[0] == '1' ? FE_VERIFY_OK : FE_VERIFY_UNKNOWN, text);
    probe_end(p);
    return 1;
}

static void on_redis(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    struct fe_verify *v = arg;
    struct probe *p = ms_idmap_del(&v->by_id, id);

    if (p == NULL)
        return;
    p->redis_busy = 0;
    if (v->closing || p->step == P_DONE) {
        probe_end(p);
        return;
    }
    switch (p->step) {
    case P_CACHE:
        if (!cache_answer(p, r))
            probe_lock(p); /* nothing cached, or Redis failed */
        return;
    case P_LOCK:
        if (r->type == MS_REDIS_NIL) {
            /* Another frontend (or loop) is probing it: wait for its answer. */
            ms_counter_inc(v->m->coalesced);
            p->step = P_FOLLOW;
            p->deadline = uv_now(v->loop) + (uint64_t)v->conf->timeout_ms + FE_VERIFY_QUIT_MS;
            uv_timer_start(&p->timer, on_poll, FE_VERIFY_POLL_MS, 0);
            return;
        }
        p->locked = r->type == MS_REDIS_STR;
        probe_queue(p); /* ours, or Redis failed: ask the next hop */
        return;
    case P_FOLLOW:
        if (r->type == MS_REDIS_ARRAY && r->nelem == 2) {
            if (cache_answer(p, &r->elem[0]))
                return;
            if (r->elem[1].type == MS_REDIS_NIL) {
                /* The other probe ended without an answer worth caching
                 * (or its frontend died): try ourselves. */
                probe_lock(p);
                return;
            }
        }
        if (uv_now(v->loop) >= p->deadline) {
            probe_fail(p, "450 4.1.1 probe failed: %s", "another frontend's probe did not answer");
            return;
        }
        uv_timer_start(&p->timer, on_poll, FE_VERIFY_POLL_MS, 0);
        return;
    default: return;
    }
}

static void waiter_add(struct probe *p, uint64_t id)
{
    if (p->nwait == p->capwait) {
        p->capwait = p->capwait ? p->capwait * 2 : 2;
        p->waiters = ms_realloc(p->waiters, p->capwait * sizeof(*p->waiters));
    }
    p->waiters[p->nwait++] = id;
}

int fe_verify_start(struct fe_verify *v, const char *addr, uint64_t id)
{
    const struct ms_transport *tr = fe_verify_route(v->conf, addr);
    char lower[FE_VERIFY_ADDR_MAX + 1];
    struct ms_list *n;
    struct probe *p;
    size_t i, len = strlen(addr);

    if (tr == NULL || len > FE_VERIFY_ADDR_MAX || v->closing)
        return MS_EINVAL;
    for (i = 0; i <= len; i++)
        lower[i] = (char)tolower((unsigned char)addr[i]);
    ms_list_foreach(n, &v->probes) {
        p = ms_list_entry(n, struct probe, link);
        if (strcmp(p->addr, lower) == 0)
            goto join;
    }
    if (v->pending >= FE_VERIFY_PENDING_MAX) {
        ms_counter_inc(v->m->busy);
        return MS_EAGAIN;
    }
    p = ms_calloc(1, sizeof(*p));
    p->v = v;
    memcpy(p->addr, lower, len + 1);
    p->tr = tr;
    ms_buf_init(&p->in, FE_VERIFY_INPUT_MAX);
    ms_list_insert_tail(&v->all, &p->alink);
    ms_list_insert_tail(&v->probes, &p->link);
    v->pending++;
    v->alive++;
    uv_timer_init(v->loop, &p->timer);
    p->timer.data = p;
    p->timer_open = 1;
    waiter_add(p, id);
    p->step = P_CACHE;
    probe_lookup(p);
    return 0;
join:
    ms_counter_inc(v->m->coalesced);
    waiter_add(p, id);
    return 0;
}

void fe_verify_free(struct fe_verify *v)
{
    struct ms_list *n, *tmp;

    if (v == NULL)
        return;
    v->closing = 1;
    v->alive++; /* not freed while walking */
    ms_list_foreach_safe(n, tmp, &v->all) {
        struct probe *p = ms_list_entry(n, struct probe, alink);
        if (ms_list_linked(&p->link))
            ms_list_remove(&p->link);
        if (ms_list_linked(&p->qlink))
            ms_list_remove(&p->qlink);
        if (p->redis_busy || p->step == P_DONE)
            continue; /* its reply comes (or fails) and frees it; or closing */
        probe_end(p);
    }
    v->alive--;
    verify_maybe_free(v);
}
