/*
 * tlscheck.c - `mailstream-authcheck tls-check`: the outbound TLS policy
 * the worker would apply to a recipient domain, and a test connection.
 *
 *   mailstream-authcheck tls-check [-c WORKER.ini] [--dns IP[@PORT]]
 *                        [--port N] [--no-connect] DOMAIN
 *
 * Prints, from the worker's [tls] and [dns] configuration: the policy
 * level (which policy_map key, or the default); the MX hosts and their
 * addresses with what DNSSEC said about their TLSA records (DANE, RFC 7672)
 * and the usable records; the MTA-STS policy (RFC 8461) when [tls] mta_sts
 * is on (fetched, not from the cluster's cache: the tool has no Redis);
 * the decision for each MX host; then, unless --no-connect, connects to
 * the first address the policy allows, says EHLO, STARTTLS, and reports
 * the TLS version, cipher and whether the server was authenticated (and
 * how), then QUIT.  No mail is sent.  Uses the worker's own pieces
 * (tls_policy.h, route.h, mtasts.h, ms_conn.h) so what it prints is what
 * the worker does.
 *
 * Exit status: 0 when the test connection met the policy (or --no-connect
 * and the policy allows some host), 2 when it did not or no host is
 * allowed, 1 for usage, configuration or I/O errors.
 */
#include "ms_config.h"
#include "ms_conn.h"
#include "ms_error.h"
#include "ms_https.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"
#include "ms_resolver.h"
#include "mtasts.h"
#include "route.h"
#include "tls_policy.h"
#include "tlscheck.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <stdarg.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lines of a reply and their length we look at; more is a broken peer. */
#define TLSCHECK_LINE_MAX 1024
#define TLSCHECK_TIMEOUT_MS 30000

struct check {
    uv_loop_t *loop;
    const char *domain;
    const wk_tls_map *map;
    struct ms_tls_ctx *ctx;
    int sts_on;
    wk_mtasts *mtasts;
    wk_router *router;
    struct wk_mtasts_result sts;
    int no_connect;
    int port;
    /* The test connection. */
    struct ms_conn *t;
    struct wk_route_addr addr;
    struct wk_tls_decision td;
    struct ms_tlsa tlsa[MS_TLS_TLSA_MAX];
    unsigned char tlsa_data[MS_TLS_TLSA_MAX][MS_TLS_TLSA_DATA_MAX];
    size_t ntlsa;
    const char *label;
    char line[TLSCHECK_LINE_MAX];
    size_t linelen;
    int step;          /* 0 banner, 1 EHLO, 2 STARTTLS, 3 TLS, 4 EHLO again, 5 QUIT */
    int starttls;      /* offered */
    uv_timer_t timer;
    int status;        /* the exit status */
};

static void conn_close(struct check *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conn_close(struct check *c, int status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    c->status = status;
    uv_timer_stop(&c->timer);
    if (c->t)
        ms_conn_abort(c->t);
}

static void send_line(struct check *c, const char *s)
{
    printf("  > %s\n", s);
    (void)ms_conn_write(c->t, s, strlen(s));
    (void)ms_conn_write(c->t, "\r\n", 2);
}

/* One complete reply line (without CRLF). */
static void on_line(struct check *c, const char *l, size_t n)
{
    int last = n < 4 || l[3] != '-';

    printf("  < %.*s\n", (int)n, l);
    if (n >= 4 && strncasecmp(l + 4, "STARTTLS", 8) == 0)
        c->starttls = 1;
    if (!last)
        return;
    if (n < 3 || l[0] != '2') {
        conn_close(c, 2, "result: the server refused (%.3s)", l);
        return;
    }
    switch (c->step) {
    case 0:
        c->step = 1;
        send_line(c, "EHLO tls-check.invalid");
        break;
    case 1:
        if (!c->starttls) {
            if (c->td.tls == WK_TLS_MAY || c->td.tls == WK_TLS_NONE)
                conn_close(c, 0, "result: no STARTTLS offered; policy %s sends in plaintext",
                           c->label);
            else
                conn_close(c, 2, "result: no STARTTLS offered; policy %s defers (4.7.4)",
                           c->label);
            return;
        }
        c->step = 2;
        send_line(c, "STARTTLS");
        break;
    case 2: {
        struct ms_tls_policy p = {
            .host = c->addr.host,
            .verify = c->td.tls == WK_TLS_VERIFY ? MS_TLS_VERIFY_PEER : MS_TLS_VERIFY_NONE,
            .match = c->td.match,
            .nmatch = c->td.nmatch,
            .tlsa = c->td.dane ? c->tlsa : NULL,
            .ntlsa = c->td.dane ? c->ntlsa : 0,
        };
        c->step = 3;
        if (ms_conn_tls_connect(c->t, c->ctx, &p) < 0)
            conn_close(c, 2, "result: TLS could not start: %s", c->t->error);
        break;
    }
    case 4:
        c->step = 5;
        send_line(c, "QUIT");
        break;
    default:
        conn_close(c, c->status, "done");
        break;
    }
}

static void on_read(void *arg, const char *buf, size_t len)
{
    struct check *c = arg;
    size_t i;

    for (i = 0; i < len && c->t; i++) {
        if (buf[i] == '\n') {
            size_t n = c->linelen;
            if (n > 0 && c->line[n - 1] == '\r')
                n--;
            c->linelen = 0;
            on_line(c, c->line, n);
        } else if (c->linelen < sizeof(c->line)) {
            c->line[c->linelen++] = buf[i];
        }
    }
}

static void on_tls(void *arg, int err)
{
    struct check *c = arg;

    if (err < 0) {
        conn_close(c, 2, "result: TLS %s: %s; policy %s defers (4.7.5)",
                   err == MS_ECERT ? "certificate refused" : "handshake failed", c->t->error,
                   c->label);
        return;
    }
    printf("tls: %s %s, authenticated: %s%s%s\n", c->t->tls_version, c->t->tls_cipher,
           c->t->tls_dane ? "dane" : c->t->tls_verified ? "verified" : "no",
           c->t->tls_verified ? "" : " (", c->t->tls_verified ? "" : c->t->error);
    if (!c->t->tls_verified)
        printf(")\n");
    c->status = 0;
    c->step = 4;
    send_line(c, "EHLO tls-check.invalid");
}

static void on_connect(void *arg, int err)
{
    struct check *c = arg;

    if (err < 0) {
        conn_close(c, 2, "result: cannot connect: %s", c->t->error);
        return;
    }
    (void)ms_conn_read_start(c->t);
}

static void on_error(void *arg, int err)
{
    struct check *c = arg;

    conn_close(c, c->step >= 5 ? c->status : 2, "result: connection ended (%s)",
               ms_strerror(err));
}

static void on_close(void *arg)
{
    struct check *c = arg;

    c->t = NULL;
    uv_close((uv_handle_t *)&c->timer, NULL);
    uv_stop(c->loop); /* the resolver's handles would keep the loop running */
}

static void on_timeout(uv_timer_t *t)
{
    struct check *c = t->data;

    conn_close(c, 2, "result: no answer in %d ms", TLSCHECK_TIMEOUT_MS);
}

static const struct ms_conn_cb conn_cb = {
    .on_connect = on_connect,
    .on_read = on_read,
    .on_tls = on_tls,
    .on_error = on_error,
    .on_close = on_close,
};

static void print_tlsa(const struct ms_tlsa *a)
{
    size_t i;

    printf("      TLSA %u %u %u ", a->usage, a->selector, a->mtype);
    for (i = 0; i < a->len && i < 64; i++)
        printf("%02x", a->data[i]);
    printf("%s\n", a->len > 64 ? "..." : "");
}

static void on_route(void *arg, uint64_t id, const struct wk_route_result *res)
{
    static const struct wk_tls_entry dane_only = {.level = WK_TLS_LEVEL_DANE_ONLY};
    struct check *c = arg;
    const struct wk_tls_entry *e = wk_tls_map_find(c->map, c->domain, NULL);
    char ip[INET6_ADDRSTRLEN];
    size_t i, k, chosen = res->n;

    (void)id;
    if (res->status != WK_ROUTE_OK) {
        printf("route: %s %s\n", res->dsn, res->text);
        c->status = 2;
        uv_stop(c->loop);
        return;
    }
    for (i = 0; i < res->n; i++) {
        const struct wk_route_addr *a = &res->addrs[i];
        struct wk_tls_decision td;
        const char *label = wk_tls_level_name(e->level);

        ms_addr_str((const struct sockaddr *)&a->ss, ip, sizeof(ip));
        if (c->sts.have && a->dane == WK_DANE_USABLE) {
            wk_tls_decide(&dane_only, a->host, c->domain, WK_DANE_USABLE, &td);
            label = "dane-only";
        } else if (c->sts.have && c->sts.policy.mode == MS_MTASTS_ENFORCE) {
            memset(&td, 0, sizeof(td));
            td.tls = WK_TLS_VERIFY;
            label = "mta-sts";
            if (!ms_mtasts_mx_match(&c->sts.policy, a->host))
                td.defer = "MX host not named by the MTA-STS policy";
        } else {
            wk_tls_decide(e, a->host, c->domain, (enum wk_dane_state)a->dane, &td);
        }
        printf("mx %u %s [%s]: dane %s, policy %s: %s%s%s\n", a->preference, a->host, ip,
               wk_dane_state_name((enum wk_dane_state)a->dane), label,
               td.defer ? "defer: " : wk_tls_policy_name(td.tls), td.defer ? td.defer : "",
               td.dane ? " (DANE)" : "");
        for (k = 0; res->tlsa && k < a->ntlsa; k++)
            print_tlsa(&res->tlsa->rr[a->tlsa_first + k]);
        if (!td.defer && chosen == res->n) {
            chosen = i;
            c->addr = *a;
            c->td = td;
            c->label = label;
            /* td.match points into e (the map's) and c->domain: both live. */
            for (k = 0; res->tlsa && k < a->ntlsa && k < MS_TLS_TLSA_MAX; k++) {
                c->tlsa[k] = res->tlsa->rr[a->tlsa_first + k];
                memcpy(c->tlsa_data[k], c->tlsa[k].data, c->tlsa[k].len);
                c->tlsa[k].data = c->tlsa_data[k];
            }
            c->ntlsa = k;
        }
    }
    if (chosen == res->n) {
        printf("result: no MX host is allowed by the policy: deferred (4.7.5)\n");
        c->status = 2;
        uv_stop(c->loop);
        return;
    }
    if (c->no_connect) {
        c->status = 0;
        uv_stop(c->loop);
        return;
    }
    ms_addr_str((const struct sockaddr *)&c->addr.ss, ip, sizeof(ip));
    printf("connect: %s [%s]:%d\n", c->addr.host, ip, c->port);
    {
        char err[256];
        if (ms_conn_connect(c->loop, (const struct sockaddr *)&c->addr.ss, &conn_cb, c, &c->t,
                            err, sizeof(err)) < 0) {
            printf("result: cannot connect: %s\n", err);
            c->status = 2;
            uv_stop(c->loop);
            return;
        }
    }
    uv_timer_init(c->loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_timeout, TLSCHECK_TIMEOUT_MS, 0);
}

static void route(struct check *c)
{
    /* Always look TLSA records up, to show them; the decision in on_route
     * uses them only where the level (or MTA-STS) says so. */
    wk_router_resolve_dane(c->router, c->domain, c->port, 0, on_route, c, 1);
}

static void on_sts(void *arg, uint64_t id, const struct wk_mtasts_result *res)
{
    struct check *c = arg;
    size_t i;

    (void)id;
    c->sts = *res;
    if (!res->have) {
        printf("mta-sts: none (%s)\n", res->source);
    } else {
        printf("mta-sts: mode %s, id %s, max_age %u (%s)\n",
               ms_mtasts_mode_name(res->policy.mode), res->id, res->policy.max_age,
               res->source);
        for (i = 0; i < res->policy.nmx; i++)
            printf("  mx: %s\n", res->policy.mx[i]);
    }
    route(c);
}

static int usage(void)
{
    fprintf(stderr, "usage: mailstream-authcheck tls-check [-c WORKER.ini] [--dns IP[@PORT]]\n"
                    "                            [--port N] [--no-connect] DOMAIN\n");
    return 1;
}

int tlscheck_main(int argc, char **argv)
{
    enum { O_DNS = 256, O_PORT, O_NOCONNECT };
    static const struct option opts[] = {
        {"dns", required_argument, NULL, O_DNS},
        {"port", required_argument, NULL, O_PORT},
        {"no-connect", no_argument, NULL, O_NOCONNECT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *dns = NULL;
    char err[512], *copy, *items[1024];
    struct ms_resolver_conf rc;
    ms_resolver *res;
    ms_config *cfg;
    ms_https *https = NULL;
    wk_tls_map *map;
    struct check *c = ms_calloc(1, sizeof(*c));
    const char *key = NULL;
    size_t i, n;
    int opt, status;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case O_DNS: dns = optarg; break;
        case O_PORT: c->port = atoi(optarg); break;
        case O_NOCONNECT: c->no_connect = 1; break;
        default: free(c); return usage();
        }
    }
    if (optind != argc - 1 || c->port < 0 || c->port > 65535) {
        free(c);
        return usage();
    }
    c->domain = argv[optind];
    c->loop = uv_default_loop();
    if ((cfg = ms_config_load(config, err, sizeof(err))) == NULL) {
        fprintf(stderr, "%s: %s\n", config, err);
        return 1;
    }
    if (c->port == 0) {
        int64_t p;
        if (ms_config_get_int(cfg, "delivery", "smtp_port", 25, 1, 65535, &p) < 0)
            return 1;
        c->port = (int)p;
    }
    /* The same map the worker builds (worker/main.c load_tls). */
    if ((map = wk_tls_map_new(ms_config_get(cfg, "tls", "policy", "may"), err, sizeof(err))) ==
        NULL) {
        fprintf(stderr, "[tls] policy: %s\n", err);
        return 1;
    }
    copy = ms_strdup(ms_config_get(cfg, "tls", "policy_map", ""));
    n = ms_config_split_list(copy, items, sizeof(items) / sizeof(items[0]));
    for (i = 0; i < n; i++)
        if (wk_tls_map_add(map, items[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "[tls] policy_map \"%s\": %s\n", items[i], err);
            return 1;
        }
    free(copy);
    c->map = map;
    for (i = 0; i < wk_tls_map_size(map); i++) {
        const char *k;
        struct wk_tls_entry *e = wk_tls_map_entry(map, i, &k);
        if (e == wk_tls_map_find(map, c->domain, NULL))
            key = k;
        if (e->ca_file && (e->ctx = ms_tls_ctx_new_client(e->ca_file, err, sizeof(err))) == NULL) {
            fprintf(stderr, "[tls] policy_map %s ca_file: %s\n", k, err);
            return 1;
        }
    }
    printf("domain: %s\npolicy: %s (%s)\n", c->domain,
           wk_tls_level_name(wk_tls_map_find(map, c->domain, NULL)->level),
           key ? key : "the default, [tls] policy");
    if ((c->ctx = ms_tls_ctx_new_client(ms_config_get(cfg, "tls", "ca_file", ""), err,
                                        sizeof(err))) == NULL) {
        fprintf(stderr, "[tls] ca_file: %s\n", err);
        return 1;
    }
    if (wk_tls_map_find(map, c->domain, NULL)->ctx) { /* the entry's ca_file */
        ms_tls_ctx_free(c->ctx);
        c->ctx = ms_tls_ctx_ref(wk_tls_map_find(map, c->domain, NULL)->ctx);
    }
    memset(&rc, 0, sizeof(rc));
    rc.upstream = dns ? dns : ms_config_get(cfg, "dns", "upstream", "");
    rc.trust_anchor = ms_config_get(cfg, "dns", "trust_anchor", "");
    rc.timeout_ms = 5000;
    if ((res = ms_resolver_new(c->loop, &rc, err, sizeof(err))) == NULL) {
        fprintf(stderr, "resolver: %s\n", err);
        return 1;
    }
    printf("dnssec: %s\n", *rc.trust_anchor ? "validating" : "off (no [dns] trust_anchor)");
    c->router = wk_router_new(c->loop, res);
    if (ms_config_get_bool(cfg, "tls", "mta_sts", 0, &c->sts_on, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (c->sts_on && wk_tls_map_find(map, c->domain, NULL) == wk_tls_map_default(map)) {
        int64_t port, tmo;
        struct ms_https_conf hc = {.ca_file = ms_config_get(cfg, "tls", "mta_sts_ca_file", "")};
        if (ms_config_get_int(cfg, "tls", "mta_sts_port", 443, 1, 65535, &port) < 0 ||
            ms_config_get_int(cfg, "tls", "mta_sts_timeout_ms", 10000, 100, 600000, &tmo) < 0)
            return 1;
        hc.port = (int)port;
        hc.timeout_ms = (uint64_t)tmo;
        hc.max_bytes = MS_MTASTS_POLICY_MAX;
        if ((https = ms_https_new(c->loop, &hc, err, sizeof(err))) == NULL) {
            fprintf(stderr, "https: %s\n", err);
            return 1;
        }
        c->mtasts = wk_mtasts_new(c->loop, res, NULL, https);
        wk_mtasts_lookup(c->mtasts, c->domain, on_sts, c, 1);
    } else {
        printf("mta-sts: %s\n", c->sts_on ? "not used (the policy map names the domain)"
                                          : "off ([tls] mta_sts)");
        route(c);
    }
    c->status = 2; /* until a result says otherwise */
    uv_run(c->loop, UV_RUN_DEFAULT);
    status = c->status;
    wk_mtasts_stop(c->mtasts);
    ms_https_free(https);
    wk_router_free(c->router);
    ms_resolver_free(res);
    uv_run(c->loop, UV_RUN_DEFAULT);
    wk_mtasts_free(c->mtasts);
    ms_tls_ctx_free(c->ctx);
    wk_tls_map_free(map);
    ms_config_free(cfg);
    free(c);
    return status;
}
