/*
 * authcheck.c - mailstream-authcheck, the operators' email authentication
 * tool (like spfquery and opendkim-testmsg), on the worker's own
 * mail-authentication stage (worker/mailauth.h) and resolver.
 *
 *   mailstream-authcheck [-c WORKER.ini] [--dns IP[@PORT]] --ip IP
 *                        [--helo NAME] [--mail-from ADDR] [--authserv-id ID]
 *                        [--now UNIX_TIME] FILE
 *       Evaluates SPF (MAIL FROM and HELO), DKIM and DMARC for the message
 *       in FILE ("-": standard input) as if it had arrived from IP, through
 *       the configured resolver ([dns] upstream of the worker config, or
 *       --dns), and prints the verdict, the action the worker would take and
 *       the Authentication-Results field.
 *
 *   mailstream-authcheck --sign [--now UNIX_TIME] --domain D --selector S
 *                        --key FILE [--domain D --selector S --key FILE ...] FILE
 *       Prints the message signed with every key given (RSA and Ed25519 at
 *       once when both are given), relaxed/relaxed, From oversigned.
 *
 *   mailstream-authcheck --record --key FILE
 *       Prints the DNS TXT record to publish for a key.
 *
 *   mailstream-authcheck --spf-only [-c WORKER.ini] [--dns IP[@PORT]]
 *                        [--timeout MS] [--dns-nodefault ZONE ...] [--trace]
 *                        [--now UNIX_TIME] --ip IP [--helo NAME] [--mail-from ADDR]
 *       Evaluates SPF alone (like spfquery) for the MAIL FROM identity, or
 *       postmaster@HELO for the null reverse-path, through the configured
 *       resolver, and prints "spf: RESULT" then, when there are any,
 *       "explanation:", "mechanism:" and "problem:" lines.  No message is
 *       read.  --trace prints each DNS query and its answer status on
 *       standard error.  --dns-nodefault lets the upstream answer for one of
 *       libunbound's built-in local zones (e.g. 2.0.192.in-addr.arpa).
 *
 *   mailstream-authcheck tls-check [-c WORKER.ini] [--dns IP[@PORT]] [--port N]
 *                        [--no-connect] DOMAIN
 *       The outbound TLS policy the worker would apply to DOMAIN (policy
 *       map, DANE with its TLSA records, MTA-STS) and a test connection
 *       (tools/tlscheck.c).
 *
 * --now UNIX_TIME is a testing aid: everything is done as if the clock said
 * UNIX_TIME (seconds since the epoch) instead of the time of the run: DKIM
 * t= and x= when verifying (so an old corpus whose signatures carry x= can
 * still be checked), SPF %{t}, and t= when signing.  A --helo longer than
 * MS_SPF_HELO_MAX (what an SMTP command line can carry) is a usage error;
 * a shorter one that is not a domain name gives SPF none (RFC 7208 §4.3).
 *
 * Messages may use LF or CRLF line ends (LF is converted).  Exit status:
 * 0 done (whatever the verdict), 1 usage, configuration or I/O error;
 * with --exit-code, 2 when the worker would quarantine, 3 discard.
 */
#include "ms_authres.h"
#include "ms_buf.h"
#include "ms_config.h"
#include "ms_dkim.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_resolver.h"
#include "ms_spf.h"
#include "mailauth.h"
#include "ms_version.h"
#include "tlscheck.h"

#include <arpa/inet.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Largest message read (the frontend's default SIZE limit and then some). */
#define AUTHCHECK_MSG_MAX (64 * 1024 * 1024)
/* Latest --now accepted: 9999-12-31T23:59:59Z, far from int64 overflow in
 * the verifier's t= + skew arithmetic. */
#define AUTHCHECK_NOW_MAX INT64_C(253402300799)

static int usage(void)
{
    fprintf(stderr,
            "usage: mailstream-authcheck [-c WORKER.ini] [--dns IP[@PORT]] --ip IP [--helo NAME]\n"
            "                            [--mail-from ADDR] [--authserv-id ID] [--exit-code]\n"
            "                            [--now UNIX_TIME] FILE\n"
            "       mailstream-authcheck --sign [--now UNIX_TIME] --domain D --selector S\n"
            "                            --key FILE [...] FILE\n"
            "       mailstream-authcheck --record --key FILE\n"
            "       mailstream-authcheck --version\n"
            "       mailstream-authcheck --spf-only [-c WORKER.ini] [--dns IP[@PORT]]\n"
            "                            [--timeout MS] [--dns-nodefault ZONE ...] [--trace]\n"
            "                            [--now UNIX_TIME] --ip IP [--helo NAME] [--mail-from ADDR]\n"
            "       mailstream-authcheck tls-check [-c WORKER.ini] [--dns IP[@PORT]] [--port N]\n"
            "                            [--no-connect] DOMAIN\n"
            "\n"
            "  --now UNIX_TIME  testing aid: act as if the clock said UNIX_TIME (seconds\n"
            "                   since the epoch) for DKIM t=/x= (verifying an old corpus\n"
            "                   whose signatures carry x=), SPF %%{t} and t= when signing\n");
    return 1;
}

/* --now: decimal seconds since the epoch, 1 to AUTHCHECK_NOW_MAX. */
static int parse_now(const char *s, int64_t *out)
{
    int64_t v = 0;

    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (AUTHCHECK_NOW_MAX - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    if (v == 0)
        return -1;
    *out = v;
    return 0;
}

/* The whole file with CRLF line ends; NULL on error (printed). */
static char *read_crlf(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    struct ms_buf raw, out;
    char chunk[65536], *data;
    size_t n, i;

    if (f == NULL) {
        perror(path);
        return NULL;
    }
    ms_buf_init(&raw, AUTHCHECK_MSG_MAX);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (ms_buf_append(&raw, chunk, n) < 0) {
            fprintf(stderr, "%s: larger than %d bytes\n", path, AUTHCHECK_MSG_MAX);
            ms_buf_free(&raw);
            if (f != stdin)
                fclose(f);
            return NULL;
        }
    if (f != stdin)
        fclose(f);
    ms_buf_init(&out, 2 * (size_t)AUTHCHECK_MSG_MAX);
    for (i = 0; i < raw.len; i++) {
        if (raw.data[i] == '\n' && (i == 0 || raw.data[i - 1] != '\r'))
            (void)ms_buf_append(&out, "\r", 1);
        (void)ms_buf_append(&out, raw.data + i, 1);
    }
    (void)ms_buf_append(&out, "", 1); /* a NUL after the data */
    ms_buf_free(&raw);
    data = ms_buf_steal(&out, len);
    (*len)--;
    return data;
}

struct check {
    int done;
    struct wk_mailauth_result res;
    char reason[512];
};

static void on_mailauth(void *arg, uint64_t id, const struct wk_mailauth_result *res)
{
    struct check *c = arg;

    c->res = *res;
    snprintf(c->reason, sizeof(c->reason), "%s", res->reason ? res->reason : "");
    c->res.reason = c->reason;
    c->done = 1;
}

/* Print our Authentication-Results field (the first field of the message)
 * and the quarantine marker if any. */
static void print_added_fields(const char *msg, size_t len)
{
    size_t i = 0;

    while (i < len) {
        const char *nl = memchr(msg + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - msg) + 1 : len;
        if (i > 0 && msg[i] != ' ' && msg[i] != '\t' &&
            strncasecmp(msg + i, "Authentication-Results:", 23) != 0 &&
            strncasecmp(msg + i, WK_MAILAUTH_QUARANTINE_HEADER ":",
                        sizeof(WK_MAILAUTH_QUARANTINE_HEADER)) != 0)
            break;
        fwrite(msg + i, 1, e - i, stdout);
        i = e;
    }
}

/* The sections of a worker's config that wk_mailauth_new() reads every key
 * of (ms_config_check_unknown). */
static const char *const mailauth_sections[] = {"policy", "dkim.", NULL};

static int cmd_check(const char *config, const char *dns, const char *ip, const char *helo,
                     const char *mail_from, const char *authserv_id, int exit_code, int64_t now,
                     const char *path)
{
    struct ms_resolver_conf rc;
    struct check c;
    struct ms_envelope_tx tx;
    ms_envelope *env;
    ms_resolver *res;
    wk_mailauth *p;
    ms_config *cfg;
    struct ms_buf clean;
    char err[512], host[256];
    const char *hostname;
    size_t len;
    char *msg;
    int rc_start;

    if (ip == NULL)
        return usage();
    if ((msg = read_crlf(path, &len)) == NULL)
        return 1;
    /* The tool always evaluates: inbound checks on, whatever the file says. */
    setenv("MAILSTREAM_POLICY_INBOUND", "yes", 1);
    if (authserv_id)
        setenv("MAILSTREAM_POLICY_AUTHSERV_ID", authserv_id, 1);
    if ((cfg = ms_config_load(config, err, sizeof(err))) == NULL) {
        fprintf(stderr, "%s: %s\n", config, err);
        return 1;
    }
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    hostname = ms_config_get(cfg, "node", "hostname", host);
    memset(&rc, 0, sizeof(rc));
    rc.upstream = dns ? dns : ms_config_get(cfg, "dns", "upstream", "");
    rc.trust_anchor = ms_config_get(cfg, "dns", "trust_anchor", "");
    rc.timeout_ms = 5000;
    if ((res = ms_resolver_new(uv_default_loop(), &rc, err, sizeof(err))) == NULL) {
        fprintf(stderr, "resolver: %s\n", err);
        return 1;
    }
    if ((p = wk_mailauth_new(uv_default_loop(), cfg, hostname, res, err, sizeof(err))) == NULL) {
        fprintf(stderr, "policy: %s\n", err);
        return 1;
    }
    if (now > 0)
        wk_mailauth_set_clock(p, now);
    /* The file is a worker's: only the sections the mail-authentication
     * stage reads in full are ours to check; the worker checks the rest at
     * its start. */
    if (ms_config_check_unknown(cfg, mailauth_sections, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    /* A message we delivered carries our field on top: evaluate afresh. */
    ms_buf_init(&clean, len + 1);
    (void)ms_authres_strip(msg, len, ms_config_get(cfg, "policy", "authserv_id", hostname),
                           &clean);
    free(msg);
    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "authcheck";
    tx.direction = MS_ENV_DIRECTION_INBOUND;
    tx.client.ip = ip;
    tx.client.helo = helo;
    tx.mail_from.address = mail_from;
    tx.message = clean.data;
    tx.len = clean.len;
    env = ms_envelope_new_tx(&tx);
    ms_buf_free(&clean);

    memset(&c, 0, sizeof(c));
    rc_start = wk_mailauth_start(p, env, on_mailauth, &c, 1, &c.res);
    if (rc_start < 0) {
        fprintf(stderr, "policy: %s\n", ms_strerror(rc_start));
        return 1;
    }
    while (rc_start == 0 && !c.done)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    printf("verdict: %s\naction: %s\nreason: %s\n", wk_mailauth_verdict_name(c.res.verdict),
           wk_mailauth_action_name(c.res.action), c.res.reason ? c.res.reason : "");
    print_added_fields((const char *)env->message.data, env->message.len);
    ms_envelope_free(env);
    wk_mailauth_free(p);
    ms_resolver_free(res);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT); /* close handles */
    ms_config_free(cfg);
    if (exit_code && c.res.action == WK_MAILAUTH_QUARANTINE)
        return 2;
    if (exit_code && c.res.action == WK_MAILAUTH_DISCARD)
        return 3;
    return 0;
}

struct spf_wait {
    ms_spf *s;
    int waiting;
    int trace;
};

static void on_spf_dns(void *arg, uint64_t id, const struct ms_dns_result *res)
{
    struct spf_wait *w = arg;

    (void)id;
    if (w->trace)
        fprintf(stderr, "  -> status %d, %zu records\n", (int)res->status, res->n);
    (void)ms_spf_answer(w->s, res);
    w->waiting = 0;
}

#define NODEFAULT_MAX 16

static int cmd_spf(const char *config, const char *dns, int timeout_ms, const char **nodefault,
                   size_t nnodefault, const char *ip, const char *helo, const char *mail_from,
                   int trace, int64_t now)
{
    static const struct ms_dns_result fail = {MS_DNS_TEMPFAIL, 0, 0, NULL, NULL};
    struct ms_resolver_conf rc;
    struct ms_spf_request req;
    struct ms_dns_query q;
    struct spf_wait w;
    ms_resolver *res;
    ms_config *cfg;
    char err[512], host[256];
    const char *s;
    int e;

    if (ip == NULL)
        return usage();
    memset(&req, 0, sizeof(req));
    if (inet_pton(AF_INET, ip, &req.ip.v4) == 1) {
        req.family = AF_INET;
    } else if (inet_pton(AF_INET6, ip, &req.ip.v6) == 1) {
        req.family = AF_INET6;
    } else {
        fprintf(stderr, "--ip %s: not an IP address\n", ip);
        return 1;
    }
    if ((cfg = ms_config_load(config, err, sizeof(err))) == NULL) {
        fprintf(stderr, "%s: %s\n", config, err);
        return 1;
    }
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    memset(&rc, 0, sizeof(rc));
    rc.upstream = dns ? dns : ms_config_get(cfg, "dns", "upstream", "");
    rc.trust_anchor = ms_config_get(cfg, "dns", "trust_anchor", "");
    rc.timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    rc.nodefault = nodefault;
    rc.nnodefault = nnodefault;
    if ((res = ms_resolver_new(uv_default_loop(), &rc, err, sizeof(err))) == NULL) {
        fprintf(stderr, "resolver: %s\n", err);
        return 1;
    }
    req.identity = MS_SPF_MAILFROM;
    req.helo = helo && *helo ? helo : NULL;
    req.mail_from = mail_from ? mail_from : "";
    req.receiver = ms_config_get(cfg, "node", "hostname", host);
    req.now = now > 0 ? now : (int64_t)time(NULL);
    if ((e = ms_spf_new(&w.s, &req)) < 0) {
        fprintf(stderr, "spf: %s\n", ms_strerror(e));
        return 1;
    }
    w.trace = trace;
    while (ms_spf_step(w.s, &q) == MS_SPF_NEED_DNS) {
        if (trace)
            fprintf(stderr, "query %s type %d\n", q.name, (int)q.type);
        w.waiting = 1;
        if (ms_resolver_query(res, q.name, q.type, on_spf_dns, &w, 0) < 0) {
            (void)ms_spf_answer(w.s, &fail);
            continue;
        }
        while (w.waiting)
            uv_run(uv_default_loop(), UV_RUN_ONCE);
    }
    printf("spf: %s\n", ms_spf_result_name(ms_spf_result(w.s)));
    if ((s = ms_spf_explanation(w.s)) != NULL)
        printf("explanation: %s\n", s);
    if ((s = ms_spf_mechanism(w.s)) != NULL)
        printf("mechanism: %s\n", s);
    if ((s = ms_spf_problem(w.s)) != NULL)
        printf("problem: %s\n", s);
    ms_spf_free(w.s);
    ms_resolver_free(res);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT); /* close handles */
    ms_config_free(cfg);
    return 0;
}

#define SIGNERS_MAX MS_DKIM_SIGNERS_MAX

static int cmd_sign(const char **domains, const char **selectors, const char **keys, size_t n,
                    int64_t now, const char *path)
{
    struct ms_dkim_signer s[SIGNERS_MAX];
    ms_dkim_privkey *k[SIGNERS_MAX];
    const char *why = NULL;
    char *msg, *hdrs = NULL;
    size_t len, i;
    int e;

    if (n == 0)
        return usage();
    if ((msg = read_crlf(path, &len)) == NULL)
        return 1;
    memset(s, 0, sizeof(s));
    for (i = 0; i < n; i++) {
        if (!domains[i] || !selectors[i]) {
            fprintf(stderr, "every --key needs a --domain and a --selector\n");
            return 1;
        }
        if ((e = ms_dkim_key_load(keys[i], &k[i], &why)) < 0) {
            fprintf(stderr, "%s: %s%s%s\n", keys[i], ms_strerror(e), why ? ": " : "",
                    why ? why : "");
            return 1;
        }
        s[i].domain = domains[i];
        s[i].selector = selectors[i];
        s[i].key = k[i];
    }
    if ((e = ms_dkim_sign_all(msg, len, s, n, now > 0 ? now : (int64_t)time(NULL), &hdrs)) < 0) {
        fprintf(stderr, "signing failed: %s\n", ms_strerror(e));
        return 1;
    }
    fputs(hdrs, stdout);
    fwrite(msg, 1, len, stdout);
    free(hdrs);
    free(msg);
    for (i = 0; i < n; i++)
        ms_dkim_key_free(k[i]);
    return 0;
}

static int cmd_record(const char *key)
{
    ms_dkim_privkey *k;
    const char *why = NULL;
    char *rec;
    int e;

    if (key == NULL)
        return usage();
    if ((e = ms_dkim_key_load(key, &k, &why)) < 0 || (e = ms_dkim_key_record(k, &rec)) < 0) {
        fprintf(stderr, "%s: %s%s%s\n", key, ms_strerror(e), why ? ": " : "", why ? why : "");
        return 1;
    }
    printf("%s\n", rec);
    free(rec);
    ms_dkim_key_free(k);
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_DNS = 256, O_IP, O_HELO, O_MAILFROM, O_AUTHSERV, O_SIGN, O_RECORD, O_DOMAIN,
           O_SELECTOR, O_KEY, O_EXITCODE, O_SPFONLY, O_TIMEOUT, O_NODEFAULT, O_TRACE, O_NOW };
    static const struct option opts[] = {
        {"dns", required_argument, NULL, O_DNS},
        {"ip", required_argument, NULL, O_IP},
        {"helo", required_argument, NULL, O_HELO},
        {"mail-from", required_argument, NULL, O_MAILFROM},
        {"authserv-id", required_argument, NULL, O_AUTHSERV},
        {"sign", no_argument, NULL, O_SIGN},
        {"record", no_argument, NULL, O_RECORD},
        {"domain", required_argument, NULL, O_DOMAIN},
        {"selector", required_argument, NULL, O_SELECTOR},
        {"key", required_argument, NULL, O_KEY},
        {"exit-code", no_argument, NULL, O_EXITCODE},
        {"spf-only", no_argument, NULL, O_SPFONLY},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"dns-nodefault", required_argument, NULL, O_NODEFAULT},
        {"trace", no_argument, NULL, O_TRACE},
        {"now", required_argument, NULL, O_NOW},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *dns = NULL, *ip = NULL, *helo = NULL, *mail_from = NULL,
               *authserv = NULL;
    const char *domains[SIGNERS_MAX] = {0}, *selectors[SIGNERS_MAX] = {0},
               *keys[SIGNERS_MAX] = {0};
    const char *nodefault[NODEFAULT_MAX] = {0};
    size_t nd = 0, ns = 0, nk = 0, nn = 0;
    int opt, sign = 0, record = 0, exit_code = 0, spf_only = 0, timeout_ms = 0,
        trace = 0;
    int64_t now = 0; /* --now; 0: the real clock */

    ms_version_option(argc, argv, "mailstream-authcheck");
    ms_log_init("authcheck", MS_LOG_WARN);
    if (argc > 1 && strcmp(argv[1], "tls-check") == 0)
        return tlscheck_main(argc - 1, argv + 1);
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case O_DNS: dns = optarg; break;
        case O_IP: ip = optarg; break;
        case O_HELO: helo = optarg; break;
        case O_MAILFROM: mail_from = optarg; break;
        case O_AUTHSERV: authserv = optarg; break;
        case O_SIGN: sign = 1; break;
        case O_RECORD: record = 1; break;
        case O_EXITCODE: exit_code = 1; break;
        case O_SPFONLY: spf_only = 1; break;
        case O_TRACE: trace = 1; break;
        case O_NOW:
            if (parse_now(optarg, &now) < 0) {
                fprintf(stderr, "--now %s: not a Unix time (1 to %lld)\n", optarg,
                        (long long)AUTHCHECK_NOW_MAX);
                return usage();
            }
            break;
        case O_TIMEOUT:
            if ((timeout_ms = atoi(optarg)) <= 0)
                return usage();
            break;
        case O_NODEFAULT:
            if (nn == NODEFAULT_MAX)
                return usage();
            nodefault[nn++] = optarg;
            break;
        case O_DOMAIN:
            if (nd == SIGNERS_MAX)
                return usage();
            domains[nd++] = optarg;
            break;
        case O_SELECTOR:
            if (ns == SIGNERS_MAX)
                return usage();
            selectors[ns++] = optarg;
            break;
        case O_KEY:
            if (nk == SIGNERS_MAX)
                return usage();
            keys[nk++] = optarg;
            break;
        default: return usage();
        }
    }
    /* The worker would drop such a name, and no SMTP client can send one. */
    if (helo && strlen(helo) > MS_SPF_HELO_MAX) {
        fprintf(stderr, "--helo: longer than %d octets\n", MS_SPF_HELO_MAX);
        return usage();
    }
    if (record)
        return optind == argc ? cmd_record(keys[0]) : usage();
    if (spf_only)
        return optind == argc ? cmd_spf(config, dns, timeout_ms, nodefault, nn, ip, helo, mail_from,
                                        trace, now)
                              : usage();
    if (optind + 1 != argc)
        return usage();
    if (sign)
        return cmd_sign(domains, selectors, keys, nk, now, argv[optind]);
    return cmd_check(config, dns, ip, helo, mail_from, authserv, exit_code, now, argv[optind]);
}
