/*
 * mailauth.c - the mail-authentication stage (mailauth.h).
 *
 * An inbound job drives four pull-style evaluators (SPF MAIL FROM, SPF
 * HELO, DKIM verify, then DMARC) through the resolver: each has at most one
 * query outstanding, and resolver answers find their job by id (job id in
 * the high bits, the evaluator in the low ones).  The job starts on a timer
 * (so the callback never runs inside wk_mailauth_start()); the same timer is
 * then the job's deadline.
 */
#include "mailauth.h"
#include "ms_addr.h"
#include "ms_authres.h"
#include "ms_dkim.h"
#include "dsn_rules.h"
#include "ms_dmarc.h"
#include "ms_error.h"
#include "ms_idmap.h"
#include "ms_json.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"
#include "ms_spf.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum { EV_SPF_MAILFROM, EV_SPF_HELO, EV_DKIM, EV_DMARC, EV__N };
#define EV_BITS 2

static const char *const action_names[WK_MAILAUTH_ACTION__N] = {"deliver", "quarantine",
                                                              "discard"};
static const char *const verdict_names[WK_MAILAUTH_VERDICT__N] = {
    "pass", "dmarc_none", "dmarc_quarantine", "dmarc_reject",
    "spf_fail", "temperror", "signed", "skipped"};

/* Verdicts an operator may configure, and their defaults. */
static const struct {
    enum wk_mailauth_verdict v;
    const char *key;
    enum wk_mailauth_action def;
} action_keys[] = {
    {WK_MAILAUTH_VERDICT_PASS, "action_pass", WK_MAILAUTH_DELIVER},
    {WK_MAILAUTH_VERDICT_DMARC_NONE, "action_dmarc_none", WK_MAILAUTH_DELIVER},
    {WK_MAILAUTH_VERDICT_DMARC_QUARANTINE, "action_dmarc_quarantine", WK_MAILAUTH_QUARANTINE},
    {WK_MAILAUTH_VERDICT_DMARC_REJECT, "action_dmarc_reject", WK_MAILAUTH_DISCARD},
    {WK_MAILAUTH_VERDICT_SPF_FAIL, "action_spf_fail", WK_MAILAUTH_DELIVER},
    {WK_MAILAUTH_VERDICT_TEMPERROR, "action_temperror", WK_MAILAUTH_DELIVER},
};

struct signer_conf {
    char *name, *domain, *selector, *path;
    ms_dkim_privkey *key;
};

struct job {
    struct ms_list link; /* on wk_mailauth.jobs */
    wk_mailauth *p;
    uint64_t id;  /* the caller's */
    uint64_t jid; /* ours, for resolver answers */
    ms_envelope *env;
    wk_mailauth_cb cb;
    void *arg;
    uv_timer_t timer;
    uint64_t t0; /* uv_now() at the start */
    int finished;
    /* evaluators */
    ms_spf *spf[2];
    ms_dkim_verify *dkim;
    ms_dmarc *dmarc;
    int done[EV__N];
    int waiting[EV__N]; /* a query is out */
    char mailfrom[MS_SPF_SENDER_MAX + 1];
    char helo[MS_SPF_HELO_MAX + 1];
    char from[MS_DNS_NAME_MAX + 1];
    int from_err;
};

/* An outbound job: the DKIM signatures of one message, computed on libuv's
 * thread pool so that the loop goes on delivering meanwhile (an RSA-2048
 * signature is ~0.4 ms of CPU).  Between uv_queue_work() and sign_after()
 * the pool thread reads and writes only the fields marked "thread"; the
 * loop touches the others (ids, not pointers: the caller's message may be
 * cancelled and its envelope freed while the signature is computed). */
struct sign_job {
    uv_work_t req;
    struct ms_list link; /* on sign_waiting, then on sign_running_list */
    wk_mailauth *p;      /* NULL: the stage was freed; the job only frees itself */
    uint64_t id;         /* the caller's */
    wk_mailauth_cb cb;
    void *arg;
    ms_envelope *env; /* the caller's, read on the loop until the callback or cancel */
    char *qid;        /* for the log line */
    int running;      /* handed to the pool */
    int cancelled;    /* wk_mailauth_cancel() while running: no callback */
    /* thread: own copies */
    struct ms_dkim_signer signers[MS_DKIM_SIGNERS_MAX]; /* names strdup'ed, keys referenced */
    size_t nsigners;
    char *msg;
    size_t len;
    int64_t now;
    /* thread: results, read by sign_after() */
    int rc;
    uint8_t *out; /* the signature fields + the message */
    size_t outlen;
};

struct wk_mailauth {
    uv_loop_t *loop;
    ms_resolver *resolver;
    int own_resolver;
    ms_psl *psl;
    /* Decoded DKIM public keys across messages (ms_dkim.h): this loop
     * thread's, made with the stage when inbound checking is on. */
    ms_dkim_keycache *dkim_keys;
    int inbound;
    char *authserv_id;
    char *hostname;
    uint64_t timeout_ms;
    int64_t clock; /* wk_mailauth_set_clock(); 0: time() */
    enum wk_mailauth_action actions[WK_MAILAUTH_VERDICT__N];
    struct signer_conf signers[WK_MAILAUTH_SIGNERS_MAX];
    size_t nsigners;
    struct ms_list jobs;   /* running jobs */
    struct ms_idmap by_jid; /* our job id -> job, for resolver answers */
    struct ms_idmap by_id;  /* the caller's id -> job, for cancelling */
    size_t njobs;
    uint64_t seq;
    /* Outbound signing: jobs wait in sign_waiting (FIFO) while sign_max are
     * on the pool, so the loop never waits for a signature. */
    struct ms_list sign_waiting, sign_running_list;
    struct ms_idmap sign_by_id; /* the caller's id -> sign_job, waiting or running */
    size_t nsign;               /* jobs in sign_by_id */
    size_t sign_running, sign_max;

    ms_counter *m_spf[2][MS_SPF_PERMERROR + 1];
    ms_counter *m_dkim[MS_DKIM_POLICY + 1];
    ms_counter *m_dmarc[MS_DMARC_PERMERROR + 1];
    ms_counter *m_action[WK_MAILAUTH_VERDICT__N][WK_MAILAUTH_ACTION__N];
    ms_counter *m_sign_errors, *m_reload_errors;
    ms_histogram *m_latency;
};

const char *wk_mailauth_action_name(enum wk_mailauth_action a)
{
    return (unsigned)a < WK_MAILAUTH_ACTION__N ? action_names[a] : "unknown";
}

const char *wk_mailauth_verdict_name(enum wk_mailauth_verdict v)
{
    return (unsigned)v < WK_MAILAUTH_VERDICT__N ? verdict_names[v] : "unknown";
}

/* ---- keys ---- */

static void signers_free(struct signer_conf *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(s[i].name);
        free(s[i].domain);
        free(s[i].selector);
        free(s[i].path);
        ms_dkim_key_free(s[i].key);
    }
}

/* Load every key of s[0..n); on error nothing changes and err says why. */
static int keys_load(struct signer_conf *s, size_t n, ms_dkim_privkey **keys, char *err,
                     size_t errlen)
{
    const char *why = NULL;
    size_t i;
    int e;

    for (i = 0; i < n; i++) {
        if ((e = ms_dkim_key_load(s[i].path, &keys[i], &why)) < 0) {
            snprintf(err, errlen, "[%s] key %s: %s%s%s", s[i].name, s[i].path, ms_strerror(e),
                     why ? ": " : "", why ? why : "");
            while (i-- > 0)
                ms_dkim_key_free(keys[i]);
            return e;
        }
    }
    return 0;
}

void wk_mailauth_reload(wk_mailauth *p)
{
    ms_dkim_privkey *keys[WK_MAILAUTH_SIGNERS_MAX];
    char err[512];
    size_t i;

    if (p->nsigners == 0)
        return;
    if (keys_load(p->signers, p->nsigners, keys, err, sizeof(err)) < 0) {
        ms_warn("event=dkim_keys_reload_failed error=\"%s\" action=keep_old_keys", err);
        ms_counter_inc(p->m_reload_errors);
        return;
    }
    for (i = 0; i < p->nsigners; i++) {
        ms_dkim_key_free(p->signers[i].key);
        p->signers[i].key = keys[i];
    }
    ms_info("event=dkim_keys_reloaded signers=%zu", p->nsigners);
}

/* ---- construction ---- */

/* Signatures computed at once: one fewer than libuv's thread pool has
 * threads (UV_THREADPOOL_SIZE, default 4, read the way libuv reads it), so
 * one thread stays free for the process's other pool work (the Kafka
 * broker probe); at least 1, at most WK_MAILAUTH_SIGN_JOBS_MAX. */
static size_t sign_jobs_max(void)
{
    const char *v = getenv("UV_THREADPOOL_SIZE");
    long n = v && *v ? strtol(v, NULL, 10) : WK_MAILAUTH_UV_POOL_DEFAULT;

    if (n <= 0)
        n = WK_MAILAUTH_UV_POOL_DEFAULT;
    n -= 1;
    if (n < 1)
        n = 1;
    if (n > WK_MAILAUTH_SIGN_JOBS_MAX)
        n = WK_MAILAUTH_SIGN_JOBS_MAX;
    return (size_t)n;
}

static int parse_action(const char *s, enum wk_mailauth_action *out)
{
    int a;

    for (a = 0; a < WK_MAILAUTH_ACTION__N; a++)
        if (strcasecmp(s, action_names[a]) == 0) {
            *out = (enum wk_mailauth_action)a;
            return 0;
        }
    return MS_ECONFIG;
}

static void register_metrics(wk_mailauth *p)
{
    char labels[128];
    int r, k, v, a;

    for (k = 0; k < 2; k++)
        for (r = 0; r <= MS_SPF_PERMERROR; r++) {
            snprintf(labels, sizeof(labels), "method=\"%s\",result=\"%s\"",
                     k ? "spf_helo" : "spf_mailfrom", ms_spf_result_name((enum ms_spf_result)r));
            p->m_spf[k][r] = ms_counter_new("mailstream_worker_auth_results_total",
                                            "Authentication results by method and verdict.",
                                            labels);
        }
    for (r = MS_DKIM_NONE; r <= MS_DKIM_POLICY; r++) {
        snprintf(labels, sizeof(labels), "method=\"dkim\",result=\"%s\"",
                 ms_dkim_result_name((enum ms_dkim_result)r));
        p->m_dkim[r] = ms_counter_new("mailstream_worker_auth_results_total",
                                      "Authentication results by method and verdict.", labels);
    }
    for (r = MS_DMARC_NONE; r <= MS_DMARC_PERMERROR; r++) {
        snprintf(labels, sizeof(labels), "method=\"dmarc\",result=\"%s\"",
                 ms_dmarc_result_name((enum ms_dmarc_result)r));
        p->m_dmarc[r] = ms_counter_new("mailstream_worker_auth_results_total",
                                       "Authentication results by method and verdict.", labels);
    }
    for (v = 0; v < WK_MAILAUTH_VERDICT__N; v++)
        for (a = 0; a < WK_MAILAUTH_ACTION__N; a++) {
            snprintf(labels, sizeof(labels), "verdict=\"%s\",action=\"%s\"", verdict_names[v],
                     action_names[a]);
            p->m_action[v][a] = ms_counter_new("mailstream_worker_policy_actions_total",
                                               "Policy stage outcomes by verdict and action.",
                                               labels);
        }
    p->m_sign_errors = ms_counter_new("mailstream_worker_dkim_sign_errors_total",
                                      "Outbound messages that could not be signed.", NULL);
    p->m_reload_errors = ms_counter_new("mailstream_worker_dkim_reload_errors_total",
                                        "SIGHUP key reloads that failed (old keys kept).", NULL);
    p->m_latency = ms_histogram_new("mailstream_worker_policy_seconds",
                                    "Time the inbound policy stage took per message.", NULL,
                                    ms_latency_buckets, ms_latency_buckets_n);
}

wk_mailauth *wk_mailauth_new(uv_loop_t *loop, const ms_config *cfg, const char *hostname,
                             ms_resolver *resolver, char *err, size_t errlen)
{
    wk_mailauth *p = ms_calloc(1, sizeof(*p));
    ms_dkim_privkey *keys[WK_MAILAUTH_SIGNERS_MAX];
    const char *const *sections;
    const char *psl_path, *v;
    size_t nsec, i;
    int64_t timeout, dns_timeout;
    int e;

    p->loop = loop;
    ms_list_init(&p->jobs);
    ms_idmap_init(&p->by_jid);
    ms_idmap_init(&p->by_id);
    ms_list_init(&p->sign_waiting);
    ms_list_init(&p->sign_running_list);
    ms_idmap_init(&p->sign_by_id);
    p->sign_max = sign_jobs_max();
    p->hostname = ms_strdup(hostname && *hostname ? hostname : "localhost");
    p->authserv_id = ms_strdup(ms_config_get(cfg, "policy", "authserv_id", p->hostname));
    if (ms_config_get_bool(cfg, "policy", "inbound", 0, &p->inbound, err, errlen) < 0)
        goto fail;
    /* Read whether inbound checks are on or not: a known key either way
     * (ms_config_check_unknown). */
    psl_path = ms_config_get(cfg, "policy", "psl", MS_PSL_PATH);
    if (ms_config_get_int(cfg, "policy", "timeout_ms", WK_MAILAUTH_TIMEOUT_MS, 100, 3600 * 1000,
                          &timeout) < 0 ||
        ms_config_get_int(cfg, "policy", "dns_timeout_ms", WK_MAILAUTH_DNS_TIMEOUT_MS, 100,
                          600 * 1000, &dns_timeout) < 0) {
        snprintf(err, errlen, "[policy] timeout_ms or dns_timeout_ms out of range");
        goto fail;
    }
    p->timeout_ms = (uint64_t)timeout;
    for (i = 0; i < WK_MAILAUTH_VERDICT__N; i++)
        p->actions[i] = WK_MAILAUTH_DELIVER;
    for (i = 0; i < sizeof(action_keys) / sizeof(action_keys[0]); i++) {
        v = ms_config_get(cfg, "policy", action_keys[i].key, action_names[action_keys[i].def]);
        if (parse_action(v, &p->actions[action_keys[i].v]) < 0) {
            snprintf(err, errlen, "[policy] %s = \"%s\": want deliver, quarantine or discard",
                     action_keys[i].key, v);
            goto fail;
        }
    }

    /* Signers: [dkim.NAME] domain, selector, key. */
    nsec = ms_config_sections(cfg, "dkim.", &sections);
    for (i = 0; i < nsec; i++) {
        struct signer_conf *s;
        const char *name = sections[i];
        if (strncmp(name, "dkim.", 5) != 0)
            continue;
        if (p->nsigners == WK_MAILAUTH_SIGNERS_MAX) {
            snprintf(err, errlen, "more than %d [dkim.*] sections", WK_MAILAUTH_SIGNERS_MAX);
            goto fail;
        }
        s = &p->signers[p->nsigners++];
        s->name = ms_strdup(name);
        s->domain = ms_strdup(ms_config_get(cfg, name, "domain", ""));
        s->selector = ms_strdup(ms_config_get(cfg, name, "selector", ""));
        s->path = ms_strdup(ms_config_get(cfg, name, "key", ""));
        if (!*s->domain || !*s->selector || !*s->path) {
            snprintf(err, errlen, "[%s] needs domain, selector and key", name);
            goto fail;
        }
    }
    if ((e = keys_load(p->signers, p->nsigners, keys, err, errlen)) < 0)
        goto fail;
    for (i = 0; i < p->nsigners; i++)
        p->signers[i].key = keys[i];

    if (p->inbound && !ms_dmarc_available()) {
        snprintf(err, errlen, "[policy] inbound needs DMARC: this worker was built without "
                              "libopendmarc (link with -lopendmarc)");
        goto fail;
    }
    if (p->inbound) {
        p->dkim_keys = ms_dkim_keycache_new(MS_DKIM_KEYCACHE_MAX);
        if ((e = ms_psl_load(psl_path, &p->psl)) < 0) {
            snprintf(err, errlen, "[policy] psl %s: %s", psl_path, ms_strerror(e));
            goto fail;
        }
        if (resolver) {
            p->resolver = resolver;
        } else {
            struct ms_resolver_conf rc;
            memset(&rc, 0, sizeof(rc));
            rc.upstream = ms_config_get(cfg, "policy", "dns", "");
            rc.timeout_ms = (int)dns_timeout;
            if ((p->resolver = ms_resolver_new(loop, &rc, err, errlen)) == NULL)
                goto fail;
            p->own_resolver = 1;
        }
    }
    register_metrics(p);
    return p;

fail:
    signers_free(p->signers, p->nsigners);
    ms_dkim_keycache_free(p->dkim_keys);
    ms_psl_free(p->psl);
    free(p->hostname);
    free(p->authserv_id);
    ms_idmap_free(&p->by_jid);
    ms_idmap_free(&p->by_id);
    ms_idmap_free(&p->sign_by_id);
    free(p);
    return NULL;
}

/* ---- jobs ---- */

static struct job *job_by_jid(wk_mailauth *p, uint64_t jid)
{
    return ms_idmap_get(&p->by_jid, jid);
}

static void job_closed(uv_handle_t *h)
{
    free(h->data);
}

static void job_free(struct job *j)
{
    wk_mailauth *p = j->p;

    ms_list_remove(&j->link);
    ms_idmap_del(&p->by_jid, j->jid);
    ms_idmap_del(&p->by_id, j->id);
    p->njobs--;
    ms_spf_free(j->spf[0]);
    ms_spf_free(j->spf[1]);
    ms_dkim_verify_free(j->dkim);
    ms_dmarc_free(j->dmarc);
    j->spf[0] = j->spf[1] = NULL;
    j->dkim = NULL;
    j->dmarc = NULL;
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, job_closed);
}

/* head + body in a new buffer with a NUL after them (not part of the
 * message; for C-string readers).  Any thread: touches only its arguments. */
static uint8_t *join(const char *head, size_t hlen, const char *body, size_t blen)
{
    uint8_t *n = ms_malloc(hlen + blen + 1);

    memcpy(n, head, hlen);
    memcpy(n + hlen, body, blen);
    n[hlen + blen] = '\0';
    return n;
}

/* Replace the envelope's message by head + body (body may be the old data;
 * the old message may be the record's: ms_envelope_set_message knows). */
static void set_message(ms_envelope *env, const char *head, size_t hlen, const char *body,
                        size_t blen)
{
    ms_envelope_set_message(env, join(head, hlen, body, blen), hlen + blen);
}

static void drive(struct job *j);
static void job_finish(struct job *j);

static void on_dns(void *arg, uint64_t id, const struct ms_dns_result *res)
{
    wk_mailauth *p = arg;
    struct job *j = job_by_jid(p, id >> EV_BITS);
    int ev = (int)(id & ((1u << EV_BITS) - 1));

    if (j == NULL || j->finished || !j->waiting[ev])
        return;
    j->waiting[ev] = 0;
    switch (ev) {
    case EV_SPF_MAILFROM:
    case EV_SPF_HELO: ms_spf_answer(j->spf[ev], res); break;
    case EV_DKIM: ms_dkim_verify_answer(j->dkim, res); break;
    case EV_DMARC: ms_dmarc_answer(j->dmarc, res); break;
    }
    drive(j);
}

/* Ask q for evaluator ev; 0 if the answer will come, else a failure was fed
 * in already (the caller steps again). */
static int ask(struct job *j, int ev, const struct ms_dns_query *q)
{
    static const struct ms_dns_result fail = {MS_DNS_TEMPFAIL, 0, 0, NULL, NULL};

    if (ms_resolver_query(j->p->resolver, q->name, q->type, on_dns, j->p,
                          (j->jid << EV_BITS) | (uint64_t)ev) == 0) {
        j->waiting[ev] = 1;
        return 0;
    }
    switch (ev) {
    case EV_SPF_MAILFROM:
    case EV_SPF_HELO: ms_spf_answer(j->spf[ev], &fail); break;
    case EV_DKIM: ms_dkim_verify_answer(j->dkim, &fail); break;
    case EV_DMARC: ms_dmarc_answer(j->dmarc, &fail); break;
    }
    return -1;
}

static void start_dmarc(struct job *j)
{
    struct ms_dmarc_request req;
    struct ms_dmarc_dkim dk[MS_DMARC_DKIM_MAX];
    const char *dom = ms_addr_domain(j->mailfrom);
    size_t i, n = 0;

    memset(&req, 0, sizeof(req));
    req.psl = j->p->psl;
    req.from_domain = j->from;
    req.from_error = j->from_err;
    if (j->mailfrom[0] && dom) {
        req.spf_domain = dom;
        req.spf = j->spf[0] ? ms_spf_result(j->spf[0]) : MS_SPF_NONE;
    } else if (j->helo[0]) {
        /* RFC 7489 §3.1.2: the null reverse-path uses the HELO identity. */
        req.spf_domain = j->helo;
        req.spf = j->spf[1] ? ms_spf_result(j->spf[1]) : MS_SPF_NONE;
        req.spf_helo = 1;
    }
    for (i = 0; j->dkim && i < ms_dkim_verify_count(j->dkim) && n < MS_DMARC_DKIM_MAX; i++) {
        const struct ms_dkim_sigresult *r = ms_dkim_verify_sig(j->dkim, i);
        dk[n].domain = r->d;
        dk[n].selector = r->s;
        dk[n].result = r->result;
        n++;
    }
    req.dkim = dk;
    req.ndkim = n;
    req.sample = arc4random_uniform(100);
    if (ms_dmarc_new(&j->dmarc, &req) < 0)
        j->done[EV_DMARC] = 1;
}

/* Step every evaluator that is not waiting until it waits or is done. */
static void drive(struct job *j)
{
    struct ms_dns_query q;
    int k, more;

    if (j->finished)
        return;
    for (k = 0; k < 2; k++)
        while (!j->done[k] && !j->waiting[k]) {
            if (ms_spf_step(j->spf[k], &q) == MS_SPF_DONE)
                j->done[k] = 1;
            else if (ask(j, k, &q) == 0)
                break;
        }
    while (!j->done[EV_DKIM] && !j->waiting[EV_DKIM]) {
        if (ms_dkim_verify_step(j->dkim, &q) != MS_DKIM_NEED_DNS)
            j->done[EV_DKIM] = 1;
        else if (ask(j, EV_DKIM, &q) == 0)
            break;
    }
    if (!j->done[EV_SPF_MAILFROM] || !j->done[EV_SPF_HELO] || !j->done[EV_DKIM])
        return;
    if (j->dmarc == NULL && !j->done[EV_DMARC])
        start_dmarc(j);
    more = 1;
    while (more && !j->done[EV_DMARC] && !j->waiting[EV_DMARC]) {
        if (ms_dmarc_step(j->dmarc, &q) == MS_DMARC_DONE)
            j->done[EV_DMARC] = 1;
        else if (ask(j, EV_DMARC, &q) == 0)
            more = 0;
    }
    if (j->done[EV_DMARC])
        job_finish(j);
}

/* The A-R field and the verdict; unfinished evaluations are temperror. */
static char *build_results(struct job *j, enum wk_mailauth_verdict *verdict, char *reason,
                           size_t reasonlen)
{
    wk_mailauth *p = j->p;
    struct ms_authres ar;
    struct ms_authres_prop props[5];
    enum ms_spf_result spf[2] = {MS_SPF_NONE, MS_SPF_NONE};
    const struct ms_dmarc_outcome *o = NULL;
    enum ms_dmarc_result dres = MS_DMARC_TEMPERROR;
    char comment[128];
    size_t i, n;
    int k;

    ms_authres_init(&ar, p->authserv_id);
    for (k = 0; k < 2; k++) {
        const char *why = NULL;
        if (j->spf[k] == NULL)
            continue;
        spf[k] = j->done[k] ? ms_spf_result(j->spf[k]) : MS_SPF_TEMPERROR;
        why = j->done[k] ? ms_spf_problem(j->spf[k]) : "timed out";
        ms_counter_inc(p->m_spf[k][spf[k]]);
        props[0].name = k ? "smtp.helo" : "smtp.mailfrom";
        props[0].value = k ? j->helo : j->mailfrom;
        ms_authres_add(&ar, "spf", ms_spf_result_name(spf[k]), why, props, 1);
    }
    n = j->dkim && j->done[EV_DKIM] ? ms_dkim_verify_count(j->dkim) : 0;
    if (j->dkim && !j->done[EV_DKIM]) {
        ms_counter_inc(p->m_dkim[MS_DKIM_TEMPERROR]);
        ms_authres_add(&ar, "dkim", "temperror", "timed out", NULL, 0);
    } else if (n == 0) {
        ms_counter_inc(p->m_dkim[MS_DKIM_NONE]);
        ms_authres_add(&ar, "dkim", "none", NULL, NULL, 0);
    }
    for (i = 0; i < n; i++) {
        const struct ms_dkim_sigresult *r = ms_dkim_verify_sig(j->dkim, i);
        ms_counter_inc(p->m_dkim[r->result]);
        props[0] = (struct ms_authres_prop){"header.d", r->d};
        props[1] = (struct ms_authres_prop){"header.i", r->i};
        props[2] = (struct ms_authres_prop){"header.s", r->s};
        props[3] = (struct ms_authres_prop){"header.a", r->a};
        props[4] = (struct ms_authres_prop){"header.b", r->b_prefix};
        ms_authres_add(&ar, "dkim", ms_dkim_result_name(r->result),
                       r->result == MS_DKIM_PASS ? NULL : r->reason, props, 5);
    }
    if (j->dmarc && j->done[EV_DMARC]) {
        o = ms_dmarc_outcome(j->dmarc);
        dres = o->result;
    }
    ms_counter_inc(p->m_dmarc[dres]);
    comment[0] = '\0';
    if (o && o->policy != MS_DMARC_POLICY_UNSET)
        snprintf(comment, sizeof(comment), "%s=%s dis=%s%s", o->used_sp ? "sp" : "p",
                 ms_dmarc_policy_name(o->policy), ms_dmarc_policy_name(o->disposition),
                 o->sampled_out ? " pct" : "");
    else if (o && o->problem)
        snprintf(comment, sizeof(comment), "%s", o->problem);
    else if (!o)
        snprintf(comment, sizeof(comment), "timed out");
    props[0] = (struct ms_authres_prop){"header.from", j->from};
    ms_authres_add(&ar, "dmarc", ms_dmarc_result_name(dres), comment, props, 1);

    /* The verdict. */
    *verdict = WK_MAILAUTH_VERDICT_PASS;
    if (dres == MS_DMARC_FAIL) {
        if (o->disposition == MS_DMARC_POLICY_REJECT)
            *verdict = WK_MAILAUTH_VERDICT_DMARC_REJECT;
        else if (o->disposition == MS_DMARC_POLICY_QUARANTINE)
            *verdict = WK_MAILAUTH_VERDICT_DMARC_QUARANTINE;
        else
            *verdict = WK_MAILAUTH_VERDICT_DMARC_NONE;
    } else if (dres == MS_DMARC_TEMPERROR) {
        *verdict = WK_MAILAUTH_VERDICT_TEMPERROR;
    } else if (dres == MS_DMARC_NONE && spf[0] == MS_SPF_FAIL) {
        *verdict = WK_MAILAUTH_VERDICT_SPF_FAIL;
    }
    snprintf(reason, reasonlen, "spf=%s dkim=%s dmarc=%s%s%s%s from=%s",
             ms_spf_result_name(spf[j->mailfrom[0] ? 0 : 1]),
             n ? ms_dkim_result_name(ms_dkim_verify_sig(j->dkim, 0)->result) : "none",
             ms_dmarc_result_name(dres), comment[0] ? " (" : "", comment, comment[0] ? ")" : "",
             j->from[0] ? j->from : "-");
    return ms_authres_finish(&ar, NULL);
}

/* Keep what the DSN decision (dsn_rules.h) needs in the envelope, so the
 * retry records carry it: SPF pass for MAIL FROM, and the d= of a DKIM pass
 * aligned (relaxed) with the MAIL FROM domain (ms_envelope_set_auth). */
static void record_auth(struct job *j)
{
    const char *aligned = NULL;
    size_t i, n;
    int spf_pass = j->spf[0] && j->done[0] && ms_spf_result(j->spf[0]) == MS_SPF_PASS;

    n = j->dkim && j->done[EV_DKIM] ? ms_dkim_verify_count(j->dkim) : 0;
    for (i = 0; i < n; i++) {
        const struct ms_dkim_sigresult *r = ms_dkim_verify_sig(j->dkim, i);
        if (r->result == MS_DKIM_PASS && wk_dkim_aligned(j->p->psl, j->mailfrom, r->d)) {
            aligned = r->d;
            break;
        }
    }
    ms_envelope_set_auth(j->env, spf_pass, aligned);
}

static void job_finish(struct job *j)
{
    wk_mailauth *p = j->p;
    struct wk_mailauth_result res;
    struct ms_buf body, head;
    enum wk_mailauth_verdict verdict;
    char reason[512], *arfield;
    wk_mailauth_cb cb = j->cb;
    void *arg = j->arg;
    uint64_t id = j->id;
    ms_envelope *env = j->env;
    int stripped;

    j->finished = 1;
    arfield = build_results(j, &verdict, reason, sizeof(reason));
    record_auth(j);
    memset(&res, 0, sizeof(res));
    res.verdict = verdict;
    res.action = p->actions[verdict];
    res.reason = reason;

    /* The verifier points into the message: free it before replacing. */
    ms_dkim_verify_free(j->dkim);
    j->dkim = NULL;

    ms_buf_init(&head, MS_AUTHRES_MAX + 1024);
    (void)ms_buf_append(&head, arfield, strlen(arfield));
    if (res.action == WK_MAILAUTH_QUARANTINE)
        (void)ms_buf_appendf(&head, WK_MAILAUTH_QUARANTINE_HEADER ": %s\r\n",
                             verdict_names[verdict]);
    ms_buf_init(&body, env->message.len + 1);
    stripped = ms_authres_strip((const char *)env->message.data, env->message.len,
                                p->authserv_id, &body);
    if (stripped < 0)
        set_message(env, head.data, head.len, (const char *)env->message.data, env->message.len);
    else
        set_message(env, head.data, head.len, body.data, body.len);
    res.modified = 1;
    ms_buf_free(&head);
    ms_buf_free(&body);
    free(arfield);

    ms_histogram_observe(p->m_latency, (double)(uv_now(p->loop) - j->t0) / 1e3);
    ms_counter_inc(p->m_action[verdict][res.action]);
    job_free(j);
    cb(arg, id, &res);
}

static void deadline_cb(uv_timer_t *t)
{
    struct job *j = t->data;

    ms_warn("event=policy_timeout qid=%s timeout_ms=%llu", j->env->queue_id,
            (unsigned long long)j->p->timeout_ms);
    job_finish(j);
}

static void kickoff_cb(uv_timer_t *t)
{
    struct job *j = t->data;

    uv_timer_start(&j->timer, deadline_cb, j->p->timeout_ms, 0);
    drive(j);
}

static int parse_ip(const char *s, struct ms_spf_request *req)
{
    if (inet_pton(AF_INET, s, &req->ip.v4) == 1) {
        req->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &req->ip.v6) == 1) {
        req->family = AF_INET6;
        return 0;
    }
    return MS_EINVAL;
}

static int start_inbound(wk_mailauth *p, ms_envelope *env, wk_mailauth_cb cb, void *arg,
                         uint64_t id)
{
    struct ms_spf_request req;
    struct job *j;
    const ms_envelope_client *cl = env->client;
    const char *msg = (const char *)env->message.data;
    size_t len = env->message.len;
    int64_t now = p->clock ? p->clock : (int64_t)time(NULL);
    int k;

    j = ms_calloc(1, sizeof(*j));
    j->p = p;
    j->id = id;
    j->jid = ++p->seq;
    j->env = env;
    j->cb = cb;
    j->arg = arg;
    if (env->mail_from && env->mail_from->address &&
        strlen(env->mail_from->address) <= MS_SPF_SENDER_MAX)
        snprintf(j->mailfrom, sizeof(j->mailfrom), "%s", env->mail_from->address);
    if (cl && cl->helo && strlen(cl->helo) <= MS_SPF_HELO_MAX)
        snprintf(j->helo, sizeof(j->helo), "%s", cl->helo);
    j->from_err = ms_dmarc_from_domain(msg, len, j->from, sizeof(j->from));
    if (j->from_err < 0)
        j->from[0] = '\0';

    memset(&req, 0, sizeof(req));
    if (cl && cl->ip && parse_ip(cl->ip, &req) == 0) {
        req.helo = j->helo[0] ? j->helo : NULL;
        req.mail_from = j->mailfrom;
        req.receiver = p->hostname;
        req.now = now;
        for (k = 0; k < 2; k++) {
            req.identity = k ? MS_SPF_HELO : MS_SPF_MAILFROM;
            if (k == 1 && !j->helo[0])
                continue;
            if (k == 0 && !j->mailfrom[0])
                continue; /* the null path: the HELO check stands for it (§2.4) */
            if (ms_spf_new(&j->spf[k], &req) < 0)
                j->spf[k] = NULL;
        }
    }
    for (k = 0; k < 2; k++)
        j->done[k] = j->spf[k] == NULL;
    j->dkim = ms_dkim_verify_new(msg, len, now);
    ms_dkim_verify_use_keycache(j->dkim, p->dkim_keys);

    uv_timer_init(p->loop, &j->timer);
    j->timer.data = j;
    j->t0 = uv_now(p->loop);
    ms_list_insert_head(&p->jobs, &j->link);
    ms_idmap_put(&p->by_jid, j->jid, j);
    ms_idmap_put(&p->by_id, id, j);
    p->njobs++;
    uv_timer_start(&j->timer, kickoff_cb, 0, 0);
    return 0;
}

/* ---- outbound ---- */

/* Is there a DKIM-Signature by domain/selector above the first Received? */
static int signed_by_us(const char *msg, size_t len, const struct signer_conf *s)
{
    struct ms_dkim_hdr hdrs[64];
    struct ms_dkim_sig *sig;
    const char *why;
    size_t body, i;
    int n, found = 0;

    /* The top of the header section is enough: split a bounded prefix. */
    n = ms_dkim_headers_split(msg, len, hdrs, 64, &body);
    if (n < 0 && n != MS_ETOOBIG)
        return 0;
    if (n < 0)
        n = 64;
    sig = ms_malloc(sizeof(*sig));
    for (i = 0; i < (size_t)n && !found; i++) {
        const char *f = msg + hdrs[i].off;
        if (hdrs[i].name_len == 8 && strncasecmp(f, "Received", 8) == 0)
            break;
        if (hdrs[i].name_len != 14 || strncasecmp(f, "DKIM-Signature", 14) != 0)
            continue;
        const char *colon = memchr(f, ':', hdrs[i].len);
        if (colon == NULL)
            continue;
        if (ms_dkim_sig_parse(colon + 1, hdrs[i].len - (size_t)(colon + 1 - f), sig, &why) == 0 &&
            strcasecmp(sig->d, s->domain) == 0 && strcmp(sig->s, s->selector) == 0)
            found = 1;
    }
    free(sig);
    return found;
}

static size_t find_signers(wk_mailauth *p, const char *domain, size_t *out)
{
    size_t i, n = 0;

    for (i = 0; i < p->nsigners && n < MS_DKIM_SIGNERS_MAX; i++)
        if (strcasecmp(p->signers[i].domain, domain) == 0)
            out[n++] = i;
    return n;
}

static void sign_job_free(struct sign_job *j)
{
    size_t i;

    for (i = 0; i < j->nsigners; i++) {
        free((char *)j->signers[i].domain);
        free((char *)j->signers[i].selector);
        ms_dkim_key_free((ms_dkim_privkey *)j->signers[i].key);
    }
    free(j->qid);
    free(j->msg);
    free(j->out);
    free(j);
}

/* On a pool thread: touches only the job's own copies (the message, the
 * signers' names and key references); writes rc and out for sign_after(). */
static void sign_work(uv_work_t *req)
{
    struct sign_job *j = req->data;
    char *hdrs = NULL;
    size_t hl;

    j->rc = ms_dkim_sign_all(j->msg, j->len, j->signers, j->nsigners, j->now, &hdrs);
    if (j->rc == 0) {
        /* The signed message is built here too, so the loop only swaps it in. */
        hl = strlen(hdrs);
        j->out = join(hdrs, hl, j->msg, j->len);
        j->outlen = hl + j->len;
    }
    free(hdrs);
    free(j->msg);
    j->msg = NULL;
}

static void sign_after(uv_work_t *req, int status);

/* Hand waiting jobs to the pool while fewer than sign_max are there. */
static void sign_dispatch(wk_mailauth *p)
{
    while (p->sign_running < p->sign_max && !ms_list_empty(&p->sign_waiting)) {
        struct sign_job *j = ms_list_entry(ms_list_first(&p->sign_waiting), struct sign_job, link);
        int e;

        ms_list_remove(&j->link);
        /* The thread's own copy: the caller may cancel and free the
         * envelope while the signature is computed.  XXX one copy of the
         * message on the loop per signed message (~0.1 ms per MiB). */
        j->len = j->env->message.len;
        j->msg = ms_malloc(j->len + 1);
        memcpy(j->msg, j->env->message.data, j->len);
        j->msg[j->len] = '\0';
        j->req.data = j;
        j->running = 1;
        if ((e = uv_queue_work(p->loop, &j->req, sign_work, sign_after)) < 0)
            ms_panic("event=dkim_sign_queue_failed error=%s", uv_strerror(e));
        ms_list_insert_tail(&p->sign_running_list, &j->link);
        p->sign_running++;
    }
}

/* Back on the loop: swap the signed message in and call back, unless the
 * job was cancelled or the stage freed meanwhile (then only free it). */
static void sign_after(uv_work_t *req, int status)
{
    struct sign_job *j = req->data;
    wk_mailauth *p = j->p;
    struct wk_mailauth_result res;
    wk_mailauth_cb cb;
    void *arg;
    uint64_t id;

    if (p == NULL) { /* wk_mailauth_free() left it to finish alone */
        sign_job_free(j);
        return;
    }
    ms_list_remove(&j->link);
    p->sign_running--;
    if (j->cancelled) {
        sign_job_free(j);
        sign_dispatch(p);
        return;
    }
    ms_idmap_del(&p->sign_by_id, j->id);
    p->nsign--;
    memset(&res, 0, sizeof(res));
    res.action = WK_MAILAUTH_DELIVER;
    if (status < 0 || j->rc < 0) {
        ms_warn("event=dkim_sign_failed qid=%s domain=%s error=%s", j->qid,
                j->signers[0].domain, status < 0 ? uv_err_name(status) : ms_err_name(j->rc));
        ms_counter_inc(p->m_sign_errors);
        res.verdict = WK_MAILAUTH_VERDICT_SKIPPED;
        res.reason = "signing failed";
    } else {
        /* The old message may be the Kafka record's (borrowed). */
        ms_envelope_set_message(j->env, j->out, j->outlen);
        j->out = NULL;
        res.verdict = WK_MAILAUTH_VERDICT_SIGNED;
        res.reason = "signed";
        res.modified = 1;
    }
    ms_counter_inc(p->m_action[res.verdict][res.action]);
    cb = j->cb;
    arg = j->arg;
    id = j->id;
    sign_job_free(j);
    sign_dispatch(p); /* before the callback, which may free the stage */
    cb(arg, id, &res);
}

/* 1 with res filled when there is nothing to sign, else 0: the job waits
 * for a place on the thread pool and calls back from sign_after(). */
static int sign_outbound(wk_mailauth *p, ms_envelope *env, wk_mailauth_cb cb, void *arg,
                         uint64_t id, struct wk_mailauth_result *res)
{
    size_t idx[MS_DKIM_SIGNERS_MAX], n = 0, i;
    char from[MS_DNS_NAME_MAX + 1];
    const char *msg = (const char *)env->message.data, *dom;
    size_t len = env->message.len;
    struct sign_job *j;

    res->verdict = WK_MAILAUTH_VERDICT_SKIPPED;
    res->reason = "no signing key for the sender domain";
    if (p->nsigners == 0)
        return 1;
    if (ms_dmarc_from_domain(msg, len, from, sizeof(from)) == 0)
        n = find_signers(p, from, idx);
    if (n == 0 && env->mail_from && env->mail_from->address &&
        (dom = ms_addr_domain(env->mail_from->address)) != NULL)
        n = find_signers(p, dom, idx);
    if (n == 0)
        return 1;
    if (signed_by_us(msg, len, &p->signers[idx[0]])) {
        res->reason = "signed before";
        return 1;
    }
    j = ms_calloc(1, sizeof(*j));
    j->p = p;
    j->id = id;
    j->cb = cb;
    j->arg = arg;
    j->env = env;
    j->qid = ms_strdup(env->queue_id ? env->queue_id : "-");
    j->now = p->clock ? p->clock : (int64_t)time(NULL);
    for (i = 0; i < n; i++) {
        const struct signer_conf *s = &p->signers[idx[i]];

        j->signers[i].domain = ms_strdup(s->domain);
        j->signers[i].selector = ms_strdup(s->selector);
        j->signers[i].key = ms_dkim_key_ref(s->key); /* a reload may replace s->key */
    }
    j->nsigners = n;
    ms_idmap_put(&p->sign_by_id, id, j);
    p->nsign++;
    ms_list_insert_tail(&p->sign_waiting, &j->link);
    sign_dispatch(p);
    return 0;
}

int wk_mailauth_start(wk_mailauth *p, ms_envelope *env, wk_mailauth_cb cb, void *arg,
                      uint64_t id, struct wk_mailauth_result *res)
{
    memset(res, 0, sizeof(*res));
    res->action = WK_MAILAUTH_DELIVER;
    res->verdict = WK_MAILAUTH_VERDICT_SKIPPED;
    res->reason = "not checked";
    if (env->message.data == NULL || env->message.len == 0)
        return 1;
    if (ms_idmap_get(&p->by_id, id) != NULL || ms_idmap_get(&p->sign_by_id, id) != NULL)
        ms_panic("event=mailauth_duplicate_id id=%llu", (unsigned long long)id);
    if (env->direction == MS_ENV_DIRECTION_OUTBOUND) {
        if (sign_outbound(p, env, cb, arg, id, res) == 0)
            return 0;
        ms_counter_inc(p->m_action[res->verdict][res->action]);
        return 1;
    }
    if (env->direction != MS_ENV_DIRECTION_INBOUND || !p->inbound)
        return 1;
    if (ms_authres_applied((const char *)env->message.data, env->message.len, p->authserv_id)) {
        res->reason = "checked before";
        return 1;
    }
    return start_inbound(p, env, cb, arg, id);
}

void wk_mailauth_set_clock(wk_mailauth *p, int64_t now)
{
    p->clock = now;
}

void wk_mailauth_cancel(wk_mailauth *p, uint64_t id)
{
    struct job *j = ms_idmap_get(&p->by_id, id);
    struct sign_job *sj = ms_idmap_del(&p->sign_by_id, id);

    if (j != NULL && !j->finished) {
        j->finished = 1;
        job_free(j);
    }
    if (sj != NULL) {
        p->nsign--;
        if (!sj->running) { /* still waiting: not on the pool */
            ms_list_remove(&sj->link);
            sign_job_free(sj);
        } else {
            sj->cancelled = 1; /* the thread owns what it reads; sign_after() frees */
            sj->env = NULL;
        }
    }
}

size_t wk_mailauth_pending(const wk_mailauth *p)
{
    return p->njobs + p->nsign;
}

void wk_mailauth_free(wk_mailauth *p)
{
    if (p == NULL)
        return;
    while (!ms_list_empty(&p->jobs)) {
        struct job *j = ms_list_entry(ms_list_first(&p->jobs), struct job, link);
        j->finished = 1;
        job_free(j);
    }
    while (!ms_list_empty(&p->sign_waiting)) {
        struct sign_job *j = ms_list_entry(ms_list_first(&p->sign_waiting), struct sign_job, link);
        ms_list_remove(&j->link);
        sign_job_free(j);
    }
    /* Signatures being computed cannot be stopped: each job now owns all it
     * touches and frees itself in sign_after(), on this loop, which must
     * run until then (as for any libuv request; the worker's uv_run()
     * returns only after). */
    while (!ms_list_empty(&p->sign_running_list)) {
        struct sign_job *j =
            ms_list_entry(ms_list_first(&p->sign_running_list), struct sign_job, link);
        ms_list_remove(&j->link);
        j->p = NULL;
        j->env = NULL;
        (void)uv_cancel((uv_req_t *)&j->req);
    }
    ms_idmap_free(&p->sign_by_id);
    ms_idmap_free(&p->by_jid);
    ms_idmap_free(&p->by_id);
    if (p->own_resolver)
        ms_resolver_free(p->resolver);
    signers_free(p->signers, p->nsigners);
    /* After the jobs: their verifiers borrowed it. */
    ms_dkim_keycache_free(p->dkim_keys);
    ms_psl_free(p->psl);
    free(p->hostname);
    free(p->authserv_id);
    free(p);
}

/* ---- the discard event ---- */

int wk_mailauth_event_json(struct ms_buf *out, const char *qid,
                           const struct wk_mailauth_result *r, const char *node, int64_t ts_us)
{
    char ts[MS_JSON_TIME_MAX];
    int err = 0;

    ms_json_time(ts, sizeof(ts), ts_us);
    err |= ms_buf_appendf(out, "{\"event\":\"discarded\",\"qid\":");
    err |= ms_json_string(out, qid, strlen(qid));
    err |= ms_buf_appendf(out, ",\"verdict\":\"%s\",\"action\":\"%s\",\"reason\":",
                          wk_mailauth_verdict_name(r->verdict), wk_mailauth_action_name(r->action));
    err |= ms_json_string(out, r->reason ? r->reason : "", r->reason ? strlen(r->reason) : 0);
    err |= ms_buf_appendf(out, ",\"node\":");
    err |= ms_json_string(out, node ? node : "", node ? strlen(node) : 0);
    err |= ms_buf_appendf(out, ",\"ts\":\"%s\"}", ts);
    return err ? MS_ETOOBIG : 0;
}
