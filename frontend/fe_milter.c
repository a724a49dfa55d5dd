/*
 * fe_milter.c - the milter client of a session (see fe_milter.h).
 *
 * One stage at a time runs over the milters in order (set->cur); the one
 * being asked gets its packets step by step (set->step), and a step that
 * wants an answer waits for it (set->waiting) under the set's one timer.
 * Whatever goes wrong with a milter (connect, timeout, a packet the
 * protocol does not allow now) ends in mc_fail(): the milter is closed and
 * from then on stands for [milter] default_action.
 */
#include "fe_milter.h"
#include "ms_conn.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

/* ---- configuration ---- */

static const char *const stage_names[MS_MILTER_STAGES] = {"connect", "helo", "mail", "rcpt",
                                                          "data",    "eom",  "eoh"};
static const char *const action_names[FE_MILTER_ACT_COUNT] = {
    "continue", "accept", "reject", "tempfail", "discard", "quarantine", "edit", "default"};
static const char *const error_names[FE_MILTER_ERR_COUNT] = {"connect", "timeout", "protocol",
                                                             "closed"};

const char *fe_milter_action_name(enum fe_milter_action a)
{
    return a < FE_MILTER_ACT_COUNT ? action_names[a] : "?";
}

const char *fe_milter_error_name(enum fe_milter_error e)
{
    return e < FE_MILTER_ERR_COUNT ? error_names[e] : "?";
}

/* "inet:HOST:PORT", "inet6:[ADDR]:PORT" or "unix:/path" (Postfix's
 * smtpd_milters forms; "inet6:ADDR:PORT" is taken too). */
static int parse_server(const char *spec, struct sockaddr_storage *ss)
{
    char host[FE_MILTER_SPEC_MAX], *port;
    struct addrinfo hints, *res = NULL;
    int family, r;

    memset(ss, 0, sizeof(*ss));
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        if (spec[5] == '\0' || strlen(spec + 5) >= sizeof(un->sun_path))
            return -1;
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, spec + 5, strlen(spec + 5) + 1);
        return 0;
    }
    if (strncmp(spec, "inet:", 5) == 0) {
        family = AF_INET;
        snprintf(host, sizeof(host), "%s", spec + 5);
    } else if (strncmp(spec, "inet6:", 6) == 0) {
        family = AF_INET6;
        snprintf(host, sizeof(host), "%s", spec + 6);
    } else {
        return -1;
    }
    if ((port = strrchr(host, ':')) == NULL || port == host || port[1] == '\0')
        return -1;
    *port++ = '\0';
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n < 3 || host[n - 1] != ']')
            return -1;
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if ((r = getaddrinfo(host, port, &hints, &res)) != 0 || res == NULL)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static void register_metrics(struct fe_milter_server *sv)
{
    char esc[FE_MILTER_SPEC_MAX * 2], labels[FE_MILTER_SPEC_MAX * 2 + 64];
    int i;

    ms_label_escape(esc, sizeof(esc), sv->spec);
    for (i = 0; i < MS_MILTER_STAGES; i++) {
        snprintf(labels, sizeof(labels), "milter=\"%s\",stage=\"%s\"", esc, stage_names[i]);
        sv->calls[i] = ms_counter_new("mailstream_frontend_milter_calls_total",
                                      "Milter stages called, by milter and stage.", labels);
    }
    for (i = 0; i < FE_MILTER_ACT_COUNT; i++) {
        snprintf(labels, sizeof(labels), "milter=\"%s\",action=\"%s\"", esc, action_names[i]);
        sv->actions[i] = ms_counter_new("mailstream_frontend_milter_actions_total",
                                        "What milters answered, by milter and action "
                                        "(default: default_action after an error).",
                                        labels);
    }
    for (i = 0; i < FE_MILTER_ERR_COUNT; i++) {
        snprintf(labels, sizeof(labels), "milter=\"%s\",reason=\"%s\"", esc, error_names[i]);
        sv->errors[i] = ms_counter_new("mailstream_frontend_milter_errors_total",
                                       "Milters closed for an error, by milter and reason.",
                                       labels);
    }
    snprintf(labels, sizeof(labels), "milter=\"%s\"", esc);
    sv->latency = ms_histogram_new("mailstream_frontend_milter_latency_seconds",
                                   "Time one milter took for one stage.", labels,
                                   ms_latency_buckets, ms_latency_buckets_n);
}

static int get_secs(const ms_config *cfg, const char *key, int64_t def, uint64_t *ms, char *err,
                    size_t errlen)
{
    int64_t v;

    if (ms_config_get_int(cfg, "milter", key, def, 1, 3600, &v) < 0) {
        snprintf(err, errlen, "[milter] %s: want seconds in [1, 3600]", key);
        return MS_ECONFIG;
    }
    *ms = (uint64_t)v * 1000;
    return 0;
}

int fe_milter_conf_load(struct fe_milter_conf *c, const ms_config *cfg, char *err,
                        size_t errlen)
{
    char *copy, *items[FE_MILTERS_MAX + 1];
    const char *v;
    size_t n, i;
    int64_t proto;

    memset(c, 0, sizeof(*c));
    v = ms_config_get(cfg, "milter", "default_action", "tempfail");
    if (strcmp(v, "tempfail") == 0)
        c->default_action = FE_MILTER_DEF_TEMPFAIL;
    else if (strcmp(v, "accept") == 0)
        c->default_action = FE_MILTER_DEF_ACCEPT;
    else if (strcmp(v, "reject") == 0)
        c->default_action = FE_MILTER_DEF_REJECT;
    else {
        snprintf(err, errlen, "[milter] default_action: want tempfail, accept or reject");
        return MS_ECONFIG;
    }
    if (get_secs(cfg, "connect_timeout", FE_MILTER_CONNECT_TIMEOUT_DEF, &c->connect_timeout_ms,
                 err, errlen) < 0 ||
        get_secs(cfg, "command_timeout", FE_MILTER_COMMAND_TIMEOUT_DEF, &c->command_timeout_ms,
                 err, errlen) < 0 ||
        get_secs(cfg, "content_timeout", FE_MILTER_CONTENT_TIMEOUT_DEF, &c->content_timeout_ms,
                 err, errlen) < 0)
        return MS_ECONFIG;
    if (ms_config_get_int(cfg, "milter", "protocol", MS_MILTER_VERSION, MS_MILTER_VERSION,
                          MS_MILTER_VERSION, &proto) < 0) {
        snprintf(err, errlen, "[milter] protocol: only %d is spoken", MS_MILTER_VERSION);
        return MS_ECONFIG;
    }
    copy = ms_strdup(ms_config_get(cfg, "milter", "servers", ""));
    n = ms_config_split_list(copy, items, FE_MILTERS_MAX + 1);
    if (n > FE_MILTERS_MAX) {
        snprintf(err, errlen, "[milter] servers: at most %d", FE_MILTERS_MAX);
        free(copy);
        return MS_ECONFIG;
    }
    for (i = 0; i < n; i++) {
        struct fe_milter_server *sv = &c->servers[i];
        if (strlen(items[i]) >= sizeof(sv->spec) || parse_server(items[i], &sv->addr) < 0) {
            snprintf(err, errlen, "[milter] servers: bad server \"%s\" (want inet:HOST:PORT, "
                     "inet6:[ADDR]:PORT or unix:/path)", items[i]);
            free(copy);
            return MS_ECONFIG;
        }
        snprintf(sv->spec, sizeof(sv->spec), "%s", items[i]);
        register_metrics(sv);
    }
    c->n = n;
    free(copy);
    return 0;
}

/* ---- the macros we send (docs/config.md) ---- */

#define M_CONNECT (1u << MS_MILTER_CONNECT)
#define M_HELO (1u << MS_MILTER_HELO)
#define M_MAIL (1u << MS_MILTER_MAIL)
#define M_RCPT (1u << MS_MILTER_RCPT)
#define M_DATA (1u << MS_MILTER_DATA)
#define M_EOM (1u << MS_MILTER_EOM)

static const struct {
    const char *name;
    unsigned stages;
} macro_defs[] = {
    {"j", M_CONNECT},
    {"_", M_CONNECT},
    {"{daemon_name}", M_CONNECT},
    {"{client_addr}", M_CONNECT},
    {"{client_name}", M_CONNECT},
    {"{client_port}", M_CONNECT},
    {"{tls_version}", M_HELO | M_MAIL},
    {"{cipher}", M_HELO | M_MAIL},
    {"i", M_MAIL | M_DATA | M_EOM},
    {"{auth_authen}", M_MAIL},
    {"{mail_addr}", M_MAIL},
    {"{rcpt_addr}", M_RCPT},
};
#define NMACROS (sizeof(macro_defs) / sizeof(macro_defs[0]))

/* ---- per-milter connections and the set ---- */

enum mc_state { MC_IDLE, MC_CONNECTING, MC_OPTNEG, MC_READY, MC_DEAD };

struct fe_milter_set;

struct mconn {
    struct fe_milter_set *set; /* NULL once the set is gone: only on_close is left */
    const struct fe_milter_server *sv;
    struct ms_conn *t;         /* NULL: none (idle, dead and closed) */
    enum mc_state st;
    uint32_t actions, proto;   /* negotiated */
    int session_skip;          /* accepted at connect or HELO */
    int tx_skip;               /* accepted for this transaction */
    int in_tx;                 /* got MAIL: ABORT at the end of the transaction */
    struct ms_buf in;
};

/* Steps of the end of message. */
enum { ST_DATA, ST_HEADERS, ST_EOH, ST_BODY, ST_EOB, ST_DONE };

#define STAGE_NONE (-1)

struct fe_milter_set {
    uv_loop_t *loop;
    const struct fe_milter_conf *conf;
    fe_milter_cb cb;
    void *arg;
    uint64_t sid;
    uv_timer_t timer;
    int kick;      /* the timer runs the stage on the next turn */
    int closing;
    struct mconn *m[FE_MILTERS_MAX];
    char *mval[NMACROS];
    struct ms_buf out;
    /* The stage under way. */
    int stage;     /* enum ms_milter_stage or STAGE_NONE */
    size_t cur;    /* the milter being asked */
    int started;   /* the current milter got its first packet */
    uint64_t t0;   /* when (uv_hrtime) */
    int step;      /* end of message: ST_* */
    size_t hi;     /* the next header field */
    size_t boff;   /* the next body octet */
    int waiting;   /* for an answer */
    char asked;    /* to what: the SMFIC_* last sent */
    int failed;    /* the current milter failed during this stage */
    int draining;  /* for the socket to drain */
    /* The stage's arguments (copies) and the message. */
    char *argv[8];
    size_t argc;
    char family;
    uint16_t port;
    int have_msg;
    struct ms_milter_msg msg;
    int body_by;   /* the milter whose REPLBODY fills msg.newbody, or -1 */
    /* Envelope edits of this message. */
    char *chgfrom;
    char **addrcpt, **delrcpt;
    size_t naddrcpt, ndelrcpt;
    char *quarantine;
    size_t nenv;
    struct fe_milter_result res;
};

static void advance(struct fe_milter_set *set);
static void mc_fail(struct mconn *mc, enum fe_milter_error why, const char *detail);

static int tx_stage(int stage)
{
    return stage == MS_MILTER_MAIL || stage == MS_MILTER_RCPT || stage == MS_MILTER_EOM;
}

static void on_timer(uv_timer_t *h);

/* Wait at most `ms` for what the current milter owes us. */
static void arm(struct fe_milter_set *set, uint64_t ms)
{
    set->kick = 0;
    uv_timer_start(&set->timer, on_timer, ms, 0);
}

static uint64_t stage_timeout(const struct fe_milter_set *set)
{
    return set->stage == MS_MILTER_EOM ? set->conf->content_timeout_ms
                                       : set->conf->command_timeout_ms;
}

/* Send what set->out holds to mc. */
static int mc_flush(struct mconn *mc)
{
    struct fe_milter_set *set = mc->set;
    int r = 0;

    if (set->out.len > 0)
        r = ms_conn_write(mc->t, set->out.data, set->out.len);
    ms_buf_reset(&set->out);
    if (r < 0) {
        mc_fail(mc, FE_MILTER_ERR_CLOSED, mc->t->error[0] ? mc->t->error : ms_err_name(r));
        return -1;
    }
    return 0;
}

static void put_macros(struct fe_milter_set *set, int stage, char cmd)
{
    const char *kv[2 * NMACROS];
    size_t i, n = 0;

    for (i = 0; i < NMACROS; i++)
        if ((macro_defs[i].stages & (1u << stage)) && set->mval[i]) {
            kv[2 * n] = macro_defs[i].name;
            kv[2 * n + 1] = set->mval[i];
            n++;
        }
    if (n > 0)
        (void)ms_milter_put_macros(&set->out, cmd, kv, n);
}

/* The stage is over: tell the session (on this turn: we are in a loop
 * callback, never inside a stage call). */
static void finish(struct fe_milter_set *set, enum fe_milter_verdict v, const char *milter,
                   const char *action, const char *reply)
{
    struct fe_milter_result *res = &set->res;

    uv_timer_stop(&set->timer);
    memset(res, 0, sizeof(*res));
    res->verdict = v;
    res->milter = milter;
    res->action = action ? action : "continue";
    if (reply)
        snprintf(res->reply, sizeof(res->reply), "%s", reply);
    if (set->stage == MS_MILTER_EOM && v == FE_MILTER_CONTINUE) {
        res->msg = set->have_msg ? &set->msg : NULL;
        res->chgfrom = set->chgfrom;
        res->addrcpt = set->addrcpt;
        res->naddrcpt = set->naddrcpt;
        res->delrcpt = set->delrcpt;
        res->ndelrcpt = set->ndelrcpt;
        res->quarantine = set->quarantine;
        res->nedits = set->nenv + (set->have_msg ? set->msg.nedits + set->msg.body_replaced : 0);
    }
    set->stage = STAGE_NONE;
    set->waiting = 0;
    set->cb(set->arg, set->sid, res);
}

/* The current milter is done with this stage. */
static void next_milter(struct fe_milter_set *set)
{
    struct mconn *mc = set->m[set->cur];

    if (set->started)
        ms_histogram_observe(mc->sv->latency, (double)(uv_hrtime() - set->t0) / 1e9);
    set->cur++;
    set->started = 0;
    set->step = ST_DATA;
    set->hi = 0;
    set->boff = 0;
    set->waiting = 0;
    set->draining = 0;
    set->failed = 0;
}

/* ---- transport callbacks ---- */

static void mc_on_read(void *arg, const char *buf, size_t len);

static void mc_on_connect(void *arg, int err)
{
    struct mconn *mc = arg;
    struct fe_milter_set *set = mc->set;

    if (set == NULL)
        return;
    if (err < 0) {
        mc_fail(mc, FE_MILTER_ERR_CONNECT, mc->t->error[0] ? mc->t->error : ms_err_name(err));
        return;
    }
    mc->st = MC_OPTNEG;
    if (ms_conn_read_start(mc->t) < 0) {
        mc_fail(mc, FE_MILTER_ERR_CONNECT, mc->t->error);
        return;
    }
    (void)ms_milter_put_optneg(&set->out, MS_MILTER_VERSION, MS_MILTER_ACTIONS_ALL,
                               MS_MILTER_PROTO_OFFER);
    if (mc_flush(mc) < 0)
        return;
    arm(set, set->conf->command_timeout_ms);
}

static void mc_on_drain(void *arg)
{
    struct mconn *mc = arg;
    struct fe_milter_set *set = mc->set;

    if (set == NULL || !set->draining || set->stage == STAGE_NONE || set->cur >= set->conf->n ||
        set->m[set->cur] != mc)
        return;
    set->draining = 0;
    advance(set);
}

static void mc_on_error(void *arg, int err)
{
    struct mconn *mc = arg;

    if (mc->set == NULL)
        return;
    mc_fail(mc, FE_MILTER_ERR_CLOSED, err == MS_ECLOSED ? "closed by the milter" : mc->t->error);
}

static void mc_on_close(void *arg)
{
    struct mconn *mc = arg;

    if (mc->set == NULL) {
        ms_buf_free(&mc->in);
        free(mc);
        return;
    }
    mc->t = NULL;
}

static const struct ms_conn_cb mc_cb = {
    .on_connect = mc_on_connect,
    .on_read = mc_on_read,
    .on_drain = mc_on_drain,
    .on_error = mc_on_error,
    .on_close = mc_on_close,
};

static void mc_connect(struct mconn *mc)
{
    struct fe_milter_set *set = mc->set;
    char err[128];

    mc->st = MC_CONNECTING;
    if (ms_conn_connect(set->loop, (const struct sockaddr *)&mc->sv->addr, &mc_cb, mc, &mc->t,
                        err, sizeof(err)) < 0) {
        mc->t = NULL;
        mc_fail(mc, FE_MILTER_ERR_CONNECT, err);
        return;
    }
    arm(set, set->conf->connect_timeout_ms);
}

/* Close a milter for good: it stands for default_action from now on.  When
 * it was the one being asked, the stage goes on without it. */
static void mc_fail(struct mconn *mc, enum fe_milter_error why, const char *detail)
{
    struct fe_milter_set *set = mc->set;
    int current = set->stage != STAGE_NONE && set->cur < set->conf->n && set->m[set->cur] == mc;

    if (mc->st == MC_DEAD)
        return;
    ms_counter_inc(mc->sv->errors[why]);
    ms_warn("event=milter_error sid=%llu milter=%s reason=%s stage=%s detail=\"%s\"",
            (unsigned long long)set->sid, mc->sv->spec, error_names[why],
            set->stage == STAGE_NONE ? "none" : stage_names[set->stage], detail ? detail : "");
    mc->st = MC_DEAD;
    if (mc->t)
        ms_conn_abort(mc->t);
    ms_buf_reset(&mc->in);
    if (current) {
        set->waiting = 0;
        set->draining = 0;
        set->failed = 1;
        advance(set);
    }
}

/* ---- the answers ---- */

static int edit_allowed(const struct mconn *mc, char cmd)
{
    switch (cmd) {
    case SMFIR_ADDHEADER:
    case SMFIR_INSHEADER: return (mc->actions & SMFIF_ADDHDRS) != 0;
    case SMFIR_CHGHEADER: return (mc->actions & SMFIF_CHGHDRS) != 0;
    case SMFIR_REPLBODY: return (mc->actions & SMFIF_CHGBODY) != 0;
    case SMFIR_CHGFROM: return (mc->actions & SMFIF_CHGFROM) != 0;
    case SMFIR_ADDRCPT: return (mc->actions & SMFIF_ADDRCPT) != 0;
    case SMFIR_ADDRCPT_PAR: return (mc->actions & SMFIF_ADDRCPT_PAR) != 0;
    case SMFIR_DELRCPT: return (mc->actions & SMFIF_DELRCPT) != 0;
    case SMFIR_QUARANTINE: return (mc->actions & SMFIF_QUARANTINE) != 0;
    default: return 0;
    }
}

static void push(char ***v, size_t *n, const char *s, size_t len)
{
    *v = ms_realloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = ms_strndup(s, len);
}

/* An edit at the end of the message: 0, or <0 (a protocol error). */
static int apply_edit(struct fe_milter_set *set, const struct ms_milter_reply *r)
{
    if (r->cmd == SMFIR_ADDHEADER)
        return ms_milter_msg_add(&set->msg, r->name, r->namelen, r->value, r->valuelen);
    if (r->cmd == SMFIR_INSHEADER)
        return ms_milter_msg_insert(&set->msg, r->index, r->name, r->namelen, r->value,
                                    r->valuelen);
    if (r->cmd == SMFIR_CHGHEADER)
        return ms_milter_msg_change(&set->msg, r->index, r->name, r->namelen, r->value,
                                    r->valuelen);
    if (r->cmd == SMFIR_REPLBODY) {
        /* A later milter's new body replaces an earlier one's. */
        if (set->body_by != (int)set->cur) {
            set->msg.body_replaced = 0;
            set->body_by = (int)set->cur;
        }
        return ms_milter_msg_body(&set->msg, r->data, r->len);
    }
    if (set->nenv >= MS_MILTER_EDITS_MAX)
        return MS_ETOOBIG;
    set->nenv++;
    switch (r->cmd) {
    case SMFIR_CHGFROM:
        free(set->chgfrom);
        set->chgfrom = ms_strndup(r->name, r->namelen);
        break;
    case SMFIR_ADDRCPT:
    case SMFIR_ADDRCPT_PAR:
        push(&set->addrcpt, &set->naddrcpt, r->name, r->namelen);
        break;
    case SMFIR_DELRCPT:
        push(&set->delrcpt, &set->ndelrcpt, r->name, r->namelen);
        break;
    case SMFIR_QUARANTINE:
        free(set->quarantine);
        set->quarantine = ms_strndup(r->name, r->namelen);
        break;
    }
    return 0;
}

static void count_action(struct mconn *mc, enum fe_milter_action a)
{
    ms_counter_inc(mc->sv->actions[a]);
}

/* One packet from the milter being asked (or an answer to OPTNEG). */
static void handle(struct mconn *mc, const struct ms_milter_reply *r)
{
    struct fe_milter_set *set = mc->set;
    char line[MS_MILTER_TEXT_MAX + 32];
    int eob;

    if (mc->st == MC_OPTNEG) {
        /* Versions 2 to 6 share what we use.  Some filters answer with
         * their own masks whatever we offered (rspamd sets its "no reply"
         * steps): what we did not offer is left out, as Postfix does, so
         * a step we cannot skip is sent and larger buffers are not used. */
        if (r->version < 2 || r->version > MS_MILTER_VERSION) {
            mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "option negotiation refused");
            return;
        }
        mc->actions = r->actions & MS_MILTER_ACTIONS_ALL;
        mc->proto = r->protocol & MS_MILTER_PROTO_OFFER;
        mc->st = MC_READY;
        advance(set);
        return;
    }
    if (set->stage == STAGE_NONE || set->cur >= set->conf->n || set->m[set->cur] != mc ||
        !set->waiting) {
        mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "unexpected packet");
        return;
    }
    eob = set->asked == SMFIC_BODYEOB;
    switch (r->cmd) {
    case SMFIR_PROGRESS:
        arm(set, stage_timeout(set));
        return;
    case SMFIR_ADDHEADER:
    case SMFIR_INSHEADER:
    case SMFIR_CHGHEADER:
    case SMFIR_REPLBODY:
    case SMFIR_CHGFROM:
    case SMFIR_ADDRCPT:
    case SMFIR_ADDRCPT_PAR:
    case SMFIR_DELRCPT:
    case SMFIR_QUARANTINE:
        if (!eob || !edit_allowed(mc, r->cmd)) {
            mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "edit not negotiated or not at end of message");
            return;
        }
        if (apply_edit(set, r) < 0) {
            mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "edit refused (malformed or over a limit)");
            return;
        }
        count_action(mc, r->cmd == SMFIR_QUARANTINE ? FE_MILTER_ACT_QUARANTINE
                                                    : FE_MILTER_ACT_EDIT);
        return;
    case SMFIR_SKIP:
        if (set->asked != SMFIC_BODY || !(mc->proto & SMFIP_SKIP)) {
            mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "skip outside the body");
            return;
        }
        set->step = ST_EOB;
        set->waiting = 0;
        advance(set);
        return;
    case SMFIR_CONTINUE:
        count_action(mc, FE_MILTER_ACT_CONTINUE);
        set->waiting = 0;
        if (set->stage == MS_MILTER_EOM) {
            if (eob) {
                mc->in_tx = 0; /* the milter's transaction ends with its answer */
                next_milter(set);
            }
        } else {
            next_milter(set);
        }
        advance(set);
        return;
    case SMFIR_ACCEPT:
        count_action(mc, FE_MILTER_ACT_ACCEPT);
        if (tx_stage(set->stage))
            mc->tx_skip = 1;
        else
            mc->session_skip = 1;
        if (eob)
            mc->in_tx = 0;
        next_milter(set);
        advance(set);
        return;
    case SMFIR_DISCARD:
        if (!tx_stage(set->stage)) {
            mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "discard before MAIL");
            return;
        }
        count_action(mc, FE_MILTER_ACT_DISCARD);
        next_milter(set);
        finish(set, FE_MILTER_DISCARD, mc->sv->spec, "discard", NULL);
        return;
    case SMFIR_REJECT:
        count_action(mc, FE_MILTER_ACT_REJECT);
        next_milter(set);
        finish(set, FE_MILTER_REJECT, mc->sv->spec, "reject", "550 5.7.1 Command rejected");
        return;
    case SMFIR_TEMPFAIL:
        count_action(mc, FE_MILTER_ACT_TEMPFAIL);
        next_milter(set);
        finish(set, FE_MILTER_TEMPFAIL, mc->sv->spec, "tempfail",
               "451 4.7.1 Service unavailable - try again later");
        return;
    case SMFIR_REPLYCODE:
        /* RFC 3463: the enhanced code's class is the reply's (checked by
         * the parser); none given: ours. */
        snprintf(line, sizeof(line), "%d %s %s", r->code,
                 r->xcode[0] ? r->xcode : r->code >= 500 ? "5.7.1" : "4.7.1",
                 r->text[0] ? r->text : r->code >= 500 ? "Command rejected"
                                                       : "Service unavailable - try again later");
        count_action(mc, r->code >= 500 ? FE_MILTER_ACT_REJECT : FE_MILTER_ACT_TEMPFAIL);
        next_milter(set);
        finish(set, r->code >= 500 ? FE_MILTER_REJECT : FE_MILTER_TEMPFAIL, mc->sv->spec,
               r->code >= 500 ? "reject" : "tempfail", line);
        return;
    default: /* SMFIR_CONN_FAIL, SMFIR_SHUTDOWN: the milter gives up */
        mc_fail(mc, FE_MILTER_ERR_CLOSED, ms_milter_reply_name(r->cmd));
        return;
    }
}

static void mc_on_read(void *arg, const char *buf, size_t len)
{
    struct mconn *mc = arg;
    struct ms_milter_reply r;
    int n;

    if (mc->set == NULL || mc->st == MC_DEAD)
        return;
    if (ms_buf_append(&mc->in, buf, len) != 0) {
        mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "input over the packet limit");
        return;
    }
    while (mc->set != NULL && mc->st != MC_DEAD && mc->in.len > 0) {
        n = ms_milter_parse(mc->in.data, mc->in.len, mc->st == MC_OPTNEG, &r);
        if (n == MS_EAGAIN)
            break;
        if (n < 0) {
            mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "malformed or oversized packet");
            return;
        }
        /* handle() may start the next stage's packets, never free mc (a
         * session's answer may free the set: then mc->set is NULL). */
        {
            struct ms_milter_reply copy = r;
            handle(mc, &copy);
        }
        if (mc->set == NULL || mc->st == MC_DEAD)
            return;
        ms_buf_consume(&mc->in, (size_t)n);
    }
}

/* ---- running a stage ---- */

enum { STEP_WAIT, STEP_MORE, STEP_DONE, STEP_FAILED };

/* Send the current milter its next packet(s) of the stage. */
static int send_step(struct fe_milter_set *set, struct mconn *mc)
{
    static const uint32_t no_step[MS_MILTER_STAGES] = {SMFIP_NOCONNECT, SMFIP_NOHELO,
                                                       SMFIP_NOMAIL, SMFIP_NORCPT, 0, 0, 0};
    static const uint32_t no_reply[MS_MILTER_STAGES] = {SMFIP_NR_CONN, SMFIP_NR_HELO,
                                                        SMFIP_NR_MAIL, SMFIP_NR_RCPT, 0, 0, 0};
    static const char cmds[MS_MILTER_STAGES] = {SMFIC_CONNECT, SMFIC_HELO, SMFIC_MAIL,
                                                SMFIC_RCPT, 0, 0, 0};
    int reply = 1, stage = set->stage;
    char asked = 0;
    size_t chunk;

    if (!set->started) {
        set->started = 1;
        set->t0 = uv_hrtime();
        ms_counter_inc(mc->sv->calls[stage]);
        if ((mc->proto & no_step[stage]) && stage != MS_MILTER_EOM)
            return STEP_DONE;
    }
    if (stage == MS_MILTER_MAIL)
        mc->in_tx = 1;
    if (stage != MS_MILTER_EOM) {
        put_macros(set, stage, cmds[stage]);
        if (stage == MS_MILTER_CONNECT)
            (void)ms_milter_put_connect(&set->out, set->argv[0], set->family, set->port,
                                        set->argv[1]);
        else
            (void)ms_milter_put_strings(&set->out, cmds[stage], (const char *const *)set->argv,
                                        set->argc);
        reply = !(mc->proto & no_reply[stage]);
        if (mc_flush(mc) < 0)
            return STEP_FAILED;
        if (!reply)
            return STEP_DONE;
        set->waiting = 1;
        set->asked = cmds[stage];
        arm(set, set->conf->command_timeout_ms);
        return STEP_WAIT;
    }
    mc->in_tx = 1;
    switch (set->step) {
    case ST_DATA:
        set->step = ST_HEADERS;
        if (mc->proto & SMFIP_NODATA)
            return STEP_MORE;
        put_macros(set, MS_MILTER_DATA, SMFIC_DATA);
        (void)ms_milter_put(&set->out, SMFIC_DATA, NULL, 0);
        asked = SMFIC_DATA;
        reply = !(mc->proto & SMFIP_NR_DATA);
        break;
    case ST_HEADERS:
        if ((mc->proto & SMFIP_NOHDRS) || set->hi >= set->msg.n) {
            set->step = ST_EOH;
            return STEP_MORE;
        }
        {
            const struct ms_milter_field *f = &set->msg.f[set->hi++];
            if (ms_milter_put_header(&set->out, f->name, f->namelen, f->value, f->valuelen,
                                     (mc->proto & SMFIP_HDR_LEADSPC) != 0) < 0) {
                mc_fail(mc, FE_MILTER_ERR_PROTOCOL, "header too long to send");
                return STEP_FAILED;
            }
        }
        reply = !(mc->proto & SMFIP_NR_HDR);
        asked = SMFIC_HEADER;
        break;
    case ST_EOH:
        set->step = ST_BODY;
        if (mc->proto & SMFIP_NOEOH)
            return STEP_MORE;
        (void)ms_milter_put(&set->out, SMFIC_EOH, NULL, 0);
        asked = SMFIC_EOH;
        reply = !(mc->proto & SMFIP_NR_EOH);
        break;
    case ST_BODY:
        if ((mc->proto & SMFIP_NOBODY) || set->boff >= set->msg.bodylen) {
            set->step = ST_EOB;
            return STEP_MORE;
        }
        if (ms_conn_pending(mc->t) > FE_MILTER_WRITE_AHEAD) {
            set->draining = 1; /* mc_on_drain goes on */
            arm(set, set->conf->content_timeout_ms);
            return STEP_WAIT;
        }
        chunk = set->msg.bodylen - set->boff;
        if (chunk > MS_MILTER_CHUNK_MAX)
            chunk = MS_MILTER_CHUNK_MAX;
        (void)ms_milter_put_head(&set->out, SMFIC_BODY, chunk);
        if (mc_flush(mc) < 0)
            return STEP_FAILED;
        if (ms_conn_write(mc->t, set->msg.body + set->boff, chunk) < 0) {
            mc_fail(mc, FE_MILTER_ERR_CLOSED, mc->t->error);
            return STEP_FAILED;
        }
        set->boff += chunk;
        reply = !(mc->proto & SMFIP_NR_BODY);
        asked = SMFIC_BODY;
        break;
    case ST_EOB:
        put_macros(set, MS_MILTER_EOM, SMFIC_BODYEOB);
        (void)ms_milter_put(&set->out, SMFIC_BODYEOB, NULL, 0);
        asked = SMFIC_BODYEOB;
        break; /* always answered */
    default:
        return STEP_DONE;
    }
    if (mc_flush(mc) < 0)
        return STEP_FAILED;
    if (!reply)
        return STEP_MORE;
    set->waiting = 1;
    set->asked = asked;
    arm(set, set->conf->content_timeout_ms);
    return STEP_WAIT;
}

/* A failed milter gives its default action where it failed and at every
 * later MAIL, RCPT and end of message; at connect and HELO the session
 * goes on (a refusal at connect reaches MAIL, fe_session.c). */
static int skipped(const struct fe_milter_set *set, const struct mconn *mc)
{
    if (mc->st == MC_DEAD)
        return set->conf->default_action == FE_MILTER_DEF_ACCEPT ||
               (!tx_stage(set->stage) && !set->failed);
    return mc->session_skip || (tx_stage(set->stage) && mc->tx_skip);
}

static void advance(struct fe_milter_set *set)
{
    struct mconn *mc;
    int r;

    while (set->stage != STAGE_NONE && !set->closing) {
        if (set->cur >= set->conf->n) {
            finish(set, FE_MILTER_CONTINUE, NULL, "continue", NULL);
            return;
        }
        mc = set->m[set->cur];
        if (skipped(set, mc)) {
            next_milter(set);
            continue;
        }
        if (mc->st == MC_DEAD) {
            int rej = set->conf->default_action == FE_MILTER_DEF_REJECT;
            count_action(mc, FE_MILTER_ACT_DEFAULT);
            next_milter(set);
            finish(set, rej ? FE_MILTER_REJECT : FE_MILTER_TEMPFAIL, mc->sv->spec,
                   rej ? "default_reject" : "default_tempfail",
                   rej ? "550 5.7.1 Command rejected"
                       : "451 4.7.1 Service unavailable - try again later");
            return;
        }
        if (mc->st == MC_IDLE) {
            mc_connect(mc);
            continue; /* failed at once: dead; else wait */
        }
        if (mc->st != MC_READY || set->waiting || set->draining)
            return;
        r = send_step(set, mc);
        if (r == STEP_WAIT || r == STEP_FAILED)
            return; /* mc_fail() went on already */
        if (r == STEP_DONE)
            next_milter(set);
    }
}

static void on_timer(uv_timer_t *h)
{
    struct fe_milter_set *set = h->data;
    struct mconn *mc;

    if (set->kick) {
        set->kick = 0;
        advance(set);
        return;
    }
    if (set->stage == STAGE_NONE || set->cur >= set->conf->n)
        return;
    mc = set->m[set->cur];
    mc_fail(mc, FE_MILTER_ERR_TIMEOUT,
            mc->st == MC_CONNECTING ? "connect" : mc->st == MC_OPTNEG ? "negotiation" : "answer");
}

/* ---- the set ---- */

struct fe_milter_set *fe_milter_set_new(uv_loop_t *loop, const struct fe_milter_conf *conf,
                                        fe_milter_cb cb, void *arg, uint64_t sid)
{
    struct fe_milter_set *set = ms_calloc(1, sizeof(*set));
    size_t i;

    set->loop = loop;
    set->conf = conf;
    set->cb = cb;
    set->arg = arg;
    set->sid = sid;
    set->stage = STAGE_NONE;
    set->body_by = -1;
    ms_buf_init(&set->out, 2 * MS_MILTER_PACKET_MAX);
    uv_timer_init(loop, &set->timer);
    set->timer.data = set;
    for (i = 0; i < conf->n; i++) {
        struct mconn *mc = ms_calloc(1, sizeof(*mc));
        mc->set = set;
        mc->sv = &conf->servers[i];
        ms_buf_init(&mc->in, MS_MILTER_PACKET_MAX + 4 + MS_CONN_READ_MAX);
        set->m[i] = mc;
    }
    return set;
}

static void tx_clear(struct fe_milter_set *set)
{
    size_t i;

    if (set->have_msg)
        ms_milter_msg_free(&set->msg);
    set->have_msg = 0;
    set->body_by = -1;
    free(set->chgfrom);
    set->chgfrom = NULL;
    for (i = 0; i < set->naddrcpt; i++)
        free(set->addrcpt[i]);
    for (i = 0; i < set->ndelrcpt; i++)
        free(set->delrcpt[i]);
    free(set->addrcpt);
    free(set->delrcpt);
    set->addrcpt = set->delrcpt = NULL;
    set->naddrcpt = set->ndelrcpt = 0;
    free(set->quarantine);
    set->quarantine = NULL;
    set->nenv = 0;
}

static void args_clear(struct fe_milter_set *set)
{
    size_t i;

    for (i = 0; i < set->argc; i++)
        free(set->argv[i]);
    set->argc = 0;
}

static void timer_closed(uv_handle_t *h)
{
    struct fe_milter_set *set = h->data;
    size_t i;

    args_clear(set);
    tx_clear(set);
    for (i = 0; i < NMACROS; i++)
        free(set->mval[i]);
    ms_buf_free(&set->out);
    free(set);
}

void fe_milter_set_free(struct fe_milter_set *set)
{
    size_t i;

    if (set == NULL)
        return;
    set->closing = 1;
    set->stage = STAGE_NONE;
    for (i = 0; i < set->conf->n; i++) {
        struct mconn *mc = set->m[i];
        mc->set = NULL;
        if (mc->t == NULL) {
            ms_buf_free(&mc->in);
            free(mc);
        } else if (mc->st == MC_READY && !mc->t->closing) {
            /* Say goodbye: the milter frees its context at once. */
            ms_buf_reset(&set->out);
            (void)ms_milter_put(&set->out, SMFIC_QUIT, NULL, 0);
            (void)ms_conn_write(mc->t, set->out.data, set->out.len);
            ms_conn_close(mc->t);
        } else if (!mc->t->closing) {
            ms_conn_abort(mc->t);
        }
        set->m[i] = NULL;
    }
    uv_timer_stop(&set->timer);
    uv_close((uv_handle_t *)&set->timer, timer_closed);
}

void fe_milter_macro(struct fe_milter_set *set, const char *name, const char *value)
{
    size_t i;

    for (i = 0; i < NMACROS; i++)
        if (strcmp(macro_defs[i].name, name) == 0) {
            free(set->mval[i]);
            set->mval[i] = value && value[0] ? ms_strndup(value, strnlen(value,
                                                                           FE_MILTER_MACRO_MAX))
                                             : NULL;
            return;
        }
    ms_panic("fe_milter_macro: %s is not among the macros we send", name);
}

/* Start a stage: it runs from the next turn of the loop. */
static void stage_start(struct fe_milter_set *set, int stage, const char *const *argv,
                        size_t argc)
{
    size_t i;

    if (set->stage != STAGE_NONE)
        ms_panic("fe_milter: stage %s while %s runs", stage_names[stage],
                 stage_names[set->stage]);
    args_clear(set);
    for (i = 0; i < argc && i < sizeof(set->argv) / sizeof(set->argv[0]); i++)
        set->argv[i] = ms_strdup(argv[i] ? argv[i] : "");
    set->argc = i;
    set->stage = stage;
    set->cur = 0;
    set->started = 0;
    set->step = ST_DATA;
    set->hi = set->boff = 0;
    set->waiting = set->draining = set->failed = 0;
    set->kick = 1;
    uv_timer_start(&set->timer, on_timer, 0, 0);
}

void fe_milter_connect(struct fe_milter_set *set, const char *host, char family, uint16_t port,
                       const char *addr)
{
    const char *argv[2] = {host, addr ? addr : ""};

    set->family = family;
    set->port = port;
    stage_start(set, MS_MILTER_CONNECT, argv, 2);
}

void fe_milter_helo(struct fe_milter_set *set, const char *helo)
{
    stage_start(set, MS_MILTER_HELO, &helo, 1);
}

/* The end of a transaction for every milter: ABORT to those in one
 * (libmilter then forgets the message), the per-transaction accepts
 * forgotten. */
static void tx_end(struct fe_milter_set *set)
{
    size_t i;

    for (i = 0; i < set->conf->n; i++) {
        struct mconn *mc = set->m[i];
        if (mc->st == MC_READY && mc->in_tx) {
            (void)ms_milter_put(&set->out, SMFIC_ABORT, NULL, 0);
            (void)mc_flush(mc);
        }
        mc->in_tx = 0;
        mc->tx_skip = 0;
    }
    tx_clear(set);
}

void fe_milter_mail(struct fe_milter_set *set, const char *const *argv, size_t argc)
{
    /* A MAIL the milters refused left no transaction to end: end it. */
    tx_end(set);
    stage_start(set, MS_MILTER_MAIL, argv, argc);
}

void fe_milter_rcpt(struct fe_milter_set *set, const char *const *argv, size_t argc)
{
    stage_start(set, MS_MILTER_RCPT, argv, argc);
}

void fe_milter_eom(struct fe_milter_set *set, const char *msg, size_t len, size_t bodymax)
{
    tx_clear(set);
    ms_milter_msg_init(&set->msg, msg, len, bodymax);
    set->have_msg = 1;
    stage_start(set, MS_MILTER_EOM, NULL, 0);
}

void fe_milter_abort(struct fe_milter_set *set)
{
    if (set->stage != STAGE_NONE)
        ms_panic("fe_milter_abort while stage %s runs", stage_names[set->stage]);
    tx_end(set);
}
