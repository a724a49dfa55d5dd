/*
 * fe_session.c - the SMTP server session (RFC 5321, with RFC 1870 SIZE,
 * RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES, RFC 3207 STARTTLS,
 * RFC 3461 DSN, RFC 4954 AUTH, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3030
 * CHUNKING and BINARYMIME); see fe_session.h.
 *
 * One struct fe_session per connection owns the transport, the buffers, the
 * timer and at most one struct fe_tx (the mail transaction: sender,
 * recipients, message).  Commands come from a table with flags; the state is
 * an enum changed only by enter_state(); replies are appended to s->out and
 * flushed once per input batch or asynchronous completion.
 *
 * While a transaction waits for its Kafka report, or a password for its
 * crypt(3) check, or TLS for its handshake, or a command for Redis to answer
 * its limits check, or a command or the message for the milters' verdict
 * (fe_milter.h), no further command is processed:
 * input stays buffered (and reading stops), so pipelined commands see the
 * outcome of what came before them.
 */
#include "fe_session.h"
#include "fe_access.h"
#include "fe_header.h"
#include "fe_milter.h"
#include "fe_proxy.h"
#include "ms_addr.h"
#include "ms_addrlist.h"
#include "ms_keys.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"
#include "ms_queueid.h"
#include "ms_time.h"
#include "smtp_data.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* The message buffer is the Kafka record's buffer too (msg_begin,
 * submit_tx): room ahead of the message for the record's first octets
 * (the message field's tag and length), and room presized after it for
 * our Received header and the record's other fields.  It is kept as it is
 * until the report, spare capacity included: shrinking it with realloc
 * handed the spare back to the kernel, and a 1 MiB message without SIZE=
 * then took ~230 more page faults (docs/scaling.md). */
#define FE_REC_HEAD MS_ENVELOPE_TX_HEAD_MAX
#define FE_REC_PRESIZE_EXTRA 2048

enum fe_state {
    FE_ST_PROXY,      /* proxy listener: waiting for the PROXY header */
    FE_ST_TLS_WAIT,   /* implicit TLS: handshake before the banner */
    FE_ST_CONNECTED,  /* banner sent, no HELO/EHLO yet */
    FE_ST_READY,      /* greeted, no transaction */
    FE_ST_MAIL,       /* MAIL accepted */
    FE_ST_RCPT,       /* at least one RCPT accepted */
    FE_ST_DATA,       /* reading the message */
    FE_ST_BDAT,       /* reading the octets of a BDAT chunk */
    FE_ST_QUEUEING,   /* waiting for the Kafka report */
    FE_ST_AUTH,       /* reading SASL responses */
    FE_ST_AUTH_CHECK, /* crypt(3) running on the thread pool */
    FE_ST_STARTTLS,   /* TLS handshake after STARTTLS */
    FE_ST_LIMITS,     /* waiting for Redis: rate limits, suppression */
    FE_ST_MILTER,     /* waiting for the milters' verdict (fe_milter.h) */
    FE_ST_CLOSING
};

static const char *const state_names[] = {
    "proxy",    "tls_wait", "connected", "ready", "mail", "rcpt", "data", "bdat",
    "queueing", "auth",      "auth_check", "starttls", "limits", "milter", "closing",
};

enum fe_sasl { SASL_NONE, SASL_PLAIN, SASL_LOGIN_USER, SASL_LOGIN_PASS };

struct auth_job;

/* What a session waits for Redis about, and what it needs to go on. */
enum fe_limits_kind { W_CONN, W_MAIL, W_RCPT, W_AUTH, W_VERIFY };

struct fe_limits_wait {
    enum fe_limits_kind kind;
    uint64_t req;        /* id in srv->limit_checks */
    enum fe_state prev;  /* state to return to */
    struct fe_rl_check c;
    enum fe_rate_kind kinds[FE_RL_BUCKETS_MAX]; /* of each bucket in c */
    char path[MS_SMTP_PATH_MAX + 1];
    struct fe_mail_params mp;  /* W_MAIL */
    unsigned notify;           /* W_RCPT */
    char orcpt[FE_SMTP_ORCPT_MAX + 1];
    int accepted;
    struct auth_job *job;      /* W_AUTH */
    char verify_text[FE_VERIFY_TEXT_MAX]; /* W_VERIFY: the next hop's reply, or why none */
    char qid[MS_QUEUEID_LEN + 1]; /* W_MAIL: the transaction's id once the milters saw it */
};

/* What a session waits for the milters about, and what it needs to go on. */
enum fe_milter_kind { MW_CONN, MW_HELO, MW_MAIL, MW_RCPT, MW_EOM };

struct fe_milter_wait {
    enum fe_milter_kind kind;
    enum fe_state prev;          /* state to return to */
    struct fe_limits_wait w;     /* MW_MAIL, MW_RCPT: the checked command */
    char helo[FE_SMTP_HELO_MAX + 1]; /* MW_HELO */
    int esmtp;
};

struct fe_rcpt {
    char *addr;
    unsigned notify;
    char *orcpt;
};

struct fe_tx {
    char qid[MS_QUEUEID_LEN + 1];
    char *from;
    struct fe_mail_params mp;
    struct fe_rcpt *rcpts;
    size_t nrcpts, caprcpts;
    int relayed;         /* a recipient outside accepted_domains */
    struct ms_buf msg;   /* [room for added fields] Received header + message */
    size_t rec_at;       /* where our Received header starts in msg */
    size_t header_len;   /* where it ends: the client's message starts */
    size_t rec_off;      /* where the Kafka record starts in msg */
    struct fe_hdr hdr;   /* the message's header section (fe_header.h) */
    size_t hdr_at;       /* the next octet of msg for hdr */
    struct fe_data_reader rd;  /* DATA */
    struct fe_bdat_reader bd;  /* BDAT (RFC 3030) */
    int data_tried;            /* DATA was given: no BDAT in this transaction */
    int bdat;                  /* a BDAT chunk was taken: no DATA, no RCPT */
    int bdat_last;             /* the chunk being read is the LAST one */
    uint64_t chunk;            /* its announced size */
    size_t msg_size;     /* octets handed to Kafka */
    uint64_t txn_id;     /* 0 until submitted */
    uint64_t data_end_ns;
    int discard;         /* a milter discarded it: 250, never queued */
    char *quarantine;    /* a milter quarantined it: the reason (the worker holds it) */
    char milter_log[512]; /* what the milters did, for the log line */
};

struct fe_session {
    uint64_t id;
    struct fe_commit_member cm; /* group commit: about to hand a record over */
    struct fe_server *srv;
    struct fe_listener *l;
    struct ms_conn *t;
    struct ms_list live; /* on srv->live */
    enum fe_state state;
    struct fe_tx *tx;
    struct ms_buf in, out;
    uv_timer_t timer;
    int handles; /* transport + timer still open */
    char ip[INET6_ADDRSTRLEN + 8]; /* the real client (after PROXY) */
    int port;
    struct sockaddr_storage client;
    char proxy_peer[INET6_ADDRSTRLEN + 8]; /* the balancer, "" without PROXY */
    int trusted;
    char helo[FE_SMTP_HELO_MAX + 1];
    int esmtp;
    char auth_user[FE_AUTH_USER_MAX + 1];
    enum fe_sasl sasl;
    char sasl_user[FE_AUTH_USER_MAX + 1];
    uint64_t errors;
    int skip_line; /* discarding an overlong line through its LF */
    int peer_eof;  /* the client half-closed while a transaction was queueing */
    uint64_t skip_octets; /* discarding the data of a refused BDAT chunk */
    uint64_t ntx;
    uint64_t ncommands;
    struct fe_limits_wait *limits; /* while FE_ST_LIMITS */
    uint64_t ip_key;      /* srv->conns->per_ip key once counted, else 0 */
    struct fe_milter_set *milters;  /* NULL: no milters on this listener */
    struct fe_milter_wait *mw;      /* while FE_ST_MILTER */
    char milter_refusal[MS_MILTER_TEXT_MAX + 32]; /* refused at connect: MAIL gets this */
};

void fe__session_process(struct fe_session *s);
static void proxy_input(struct fe_session *s);

/* ---- helpers ---- */

static const char *role_name(enum fe_role r)
{
    return r == FE_ROLE_MX ? "mx" : r == FE_ROLE_SUBMISSION ? "submission" : "submissions";
}

static void enter_state(struct fe_session *s, enum fe_state st)
{
    if (s->state == st)
        return;
    ms_debug("event=state sid=%llu from=%s to=%s", (unsigned long long)s->id,
             state_names[s->state], state_names[st]);
    s->state = st;
}

static int busy(const struct fe_session *s)
{
    return s->state == FE_ST_QUEUEING || s->state == FE_ST_AUTH_CHECK ||
           s->state == FE_ST_STARTTLS || s->state == FE_ST_TLS_WAIT ||
           s->state == FE_ST_LIMITS || s->state == FE_ST_MILTER || s->state == FE_ST_CLOSING;
}

static void reply(struct fe_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct fe_session *s, const char *fmt, ...)
{
    va_list ap;
    size_t at = s->out.len;
    char c;

    va_start(ap, fmt);
    if (ms_buf_vappendf(&s->out, fmt, ap) != 0 || ms_buf_append(&s->out, "\r\n", 2) != 0)
        ms_warn("event=reply_overflow sid=%llu", (unsigned long long)s->id);
    va_end(ap);
    /* Count a reply once, at its last line ("250 ", not "250-"). */
    if (s->out.len >= at + 4 && s->out.data[at + 3] != '-') {
        c = s->out.data[at];
        if (c >= '2' && c <= '5')
            ms_counter_inc(s->srv->m.replies[c - '2']);
    }
}

static void close_session(struct fe_session *s);

static void update_reading(struct fe_session *s)
{
    int want;

    if (s->state == FE_ST_CLOSING)
        return;
    /* Back-pressure: while too many messages wait for Kafka, sessions in
     * DATA stop reading instead of buffering more message octets.  A
     * session waiting for its Kafka report keeps reading (what a pipelining
     * client sends meanwhile waits in `in`, bounded like any other input)
     * unless the server is overloaded: stopping and restarting the socket
     * for every message cost two epoll_ctl calls each. */
    want = s->state != FE_ST_AUTH_CHECK && s->state != FE_ST_LIMITS &&
           s->state != FE_ST_MILTER &&
           !((s->state == FE_ST_DATA || s->state == FE_ST_BDAT ||
              s->state == FE_ST_QUEUEING) &&
             s->srv->overloaded) &&
           s->in.len < FE_INPUT_MAX && ms_conn_pending(s->t) < FE_OUTPUT_MAX;
    if (want && !s->t->reading)
        ms_conn_read_start(s->t);
    else if (!want && s->t->reading)
        ms_conn_read_stop(s->t);
}

static void flush(struct fe_session *s)
{
    if (s->out.len > 0 && !s->t->closing) {
        ms_counter_add(s->srv->m.bytes_out, s->out.len);
        if (ms_conn_write(s->t, s->out.data, s->out.len) < 0) {
            ms_buf_reset(&s->out);
            close_session(s);
            return;
        }
    }
    ms_buf_reset(&s->out);
    update_reading(s);
}

static void arm_timer(struct fe_session *s);

/* A 4xx/5xx answer to a command: counts towards max_errors (RFC 5321 does
 * not say, but every MTA cuts off clients that keep failing). */
static void reply_error(struct fe_session *s, const char *line)
{
    reply(s, "%s", line);
    if (++s->errors >= s->srv->set.max_errors) {
        reply(s, "421 4.7.0 %s Error: too many errors", s->srv->set.hostname);
        ms_info("event=too_many_errors sid=%llu client=%s errors=%llu",
                (unsigned long long)s->id, s->ip, (unsigned long long)s->errors);
        close_session(s);
    }
}

static void tx_free(struct fe_tx *tx)
{
    size_t i;

    if (tx == NULL)
        return;
    free(tx->from);
    for (i = 0; i < tx->nrcpts; i++) {
        free(tx->rcpts[i].addr);
        free(tx->rcpts[i].orcpt);
    }
    free(tx->rcpts);
    free(tx->quarantine);
    ms_buf_free(&tx->msg);
    fe_hdr_free(&tx->hdr);
    free(tx);
}

/* A sign of life from a session that is about to hand a record over
 * (fe_commit.h): its batch waits for it a little. */
static void commit_touch(struct fe_session *s)
{
    if (s->srv->commit_on)
        fe_commit_touch(&s->srv->commit, &s->cm, uv_hrtime());
}

/* RSET, EHLO, end of transaction: forget the transaction. */
static void tx_reset(struct fe_session *s)
{
    if (s->tx && s->tx->txn_id)
        ms_idmap_del(&s->srv->pending, s->tx->txn_id);
    if (s->tx && s->milters && s->state != FE_ST_MILTER)
        fe_milter_abort(s->milters);
    tx_free(s->tx);
    s->tx = NULL;
    if (s->state == FE_ST_MAIL || s->state == FE_ST_RCPT || s->state == FE_ST_DATA ||
        s->state == FE_ST_BDAT || s->state == FE_ST_QUEUEING)
        enter_state(s, FE_ST_READY);
}

static void drain_if_needed(struct fe_session *s)
{
    if (!s->srv->draining || s->state == FE_ST_CLOSING)
        return;
    if (s->state == FE_ST_PROXY) { /* not an SMTP client yet */
        close_session(s);
        return;
    }
    /* Between two BDAT chunks the message is under way, as in DATA. */
    if (s->state == FE_ST_RCPT && s->tx && s->tx->bdat)
        return;
    if (s->state == FE_ST_CONNECTED || s->state == FE_ST_READY || s->state == FE_ST_MAIL ||
        s->state == FE_ST_RCPT) {
        reply(s, "421 4.3.2 %s Service shutting down, try again later",
              s->srv->set.hostname);
        close_session(s);
    }
}

/* ---- the Received header (RFC 5321 4.4, RFC 5322 3.6.7) ---- */

/* 1 when h is a Domain or address literal and may follow "from". */
static int helo_is_domain(const char *h)
{
    struct fe_smtp_cmd cmd;
    const char *reply_line;
    char line[FE_SMTP_HELO_MAX + 32];

    if (*h == '\0' || strlen(h) > FE_SMTP_HELO_MAX)
        return 0;
    /* Reuse the path grammar: "x@HELO" must parse as a mailbox. */
    snprintf(line, sizeof(line), "RCPT TO:<x@%s>", h);
    return fe_smtp_parse(line, strlen(line), &cmd, &reply_line) == 0 && cmd.path_domain;
}

static void add_received(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;
    char date[64], ipl[INET6_ADDRSTRLEN + 16], helo[FE_SMTP_HELO_MAX + 1];
    const char *proto;
    struct tm tm;
    time_t now = time(NULL);
    size_t i;

    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    if (strchr(s->ip, ':'))
        snprintf(ipl, sizeof(ipl), "[IPv6:%s]", s->ip);
    else
        snprintf(ipl, sizeof(ipl), "[%s]", s->ip);
    /* RFC 3848 protocol names. */
    if (!s->esmtp)
        proto = "SMTP";
    else if (s->t->tls && s->auth_user[0])
        proto = "ESMTPSA";
    else if (s->t->tls)
        proto = "ESMTPS";
    else if (s->auth_user[0])
        proto = "ESMTPA";
    else
        proto = "ESMTP";
    if (helo_is_domain(s->helo)) {
        ms_buf_appendf(&tx->msg, "Received: from %s (%s)\r\n", s->helo, ipl);
    } else {
        /* Not a domain: keep it, defused, in a comment. */
        for (i = 0; s->helo[i] && i < sizeof(helo) - 1; i++)
            helo[i] = (s->helo[i] == '(' || s->helo[i] == ')' || s->helo[i] == '\\' ||
                       (unsigned char)s->helo[i] >= 0x7f || s->helo[i] < 0x20)
                          ? '?'
                          : s->helo[i];
        helo[i] = '\0';
        ms_buf_appendf(&tx->msg, "Received: from unknown (%s helo=%s)\r\n", ipl, helo);
    }
    ms_buf_appendf(&tx->msg, "\tby %s (Mailstream) with %s id %s\r\n", s->srv->set.hostname,
                   proto, tx->qid);
    if (s->t->tls)
        ms_buf_appendf(&tx->msg, "\t(using %s with cipher %s)\r\n", s->t->tls_version,
                       s->t->tls_cipher);
    if (tx->nrcpts == 1)
        ms_buf_appendf(&tx->msg, "\tfor <%s>; %s\r\n", tx->rcpts[0].addr, date);
    else
        ms_buf_appendf(&tx->msg, "\t; %s\r\n", date);
    tx->header_len = tx->msg.len;
}

/* ---- the header section and the format rules (fe_header.h) ---- */

static const struct fe_format_rules *format_rules(const struct fe_session *s)
{
    return s->l->role == FE_ROLE_MX ? &s->srv->set.format_mx : &s->srv->set.format_submission;
}

/* DATA or the first BDAT: the message buffer is the Kafka record's buffer
 * too (submit_tx): it starts with room for the record's first octets
 * (FE_REC_HEAD), then for the fields a submission may need (RFC 6409 8),
 * then our Received header; the client's octets follow, and the header
 * parser reads them from there.  The record's other fields go after the
 * message. */
static void msg_begin(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;
    const struct fe_format_rules *fr = format_rules(s);
    size_t room = FE_REC_HEAD + (fr->add_date || fr->add_message_id ? FE_HDR_ADDED_MAX : 0);
    char *p;

    ms_buf_free(&tx->msg);
    ms_buf_init(&tx->msg, s->srv->set.max_message_size + 16384);
    /* The declared size, our fields, the Received header and the record's
     * fields in one allocation: no copies while the message streams in
     * (SIZE is at most max_message_size, cmd_mail). */
    if (tx->mp.has_size && tx->mp.size > 0)
        ms_buf_reserve(&tx->msg, room + FE_REC_PRESIZE_EXTRA +
                                     (tx->mp.size < FE_MSG_PRESIZE_MAX ? (size_t)tx->mp.size
                                                                       : FE_MSG_PRESIZE_MAX));
    if ((p = ms_buf_reserve(&tx->msg, room)) != NULL) {
        memset(p, 0, room);
        ms_buf_commit(&tx->msg, room);
    }
    tx->rec_at = tx->rec_off = tx->msg.len;
    add_received(s);
    fe_hdr_free(&tx->hdr);
    fe_hdr_init(&tx->hdr, &s->srv->set.hdr_limits);
    tx->hdr_at = tx->header_len;
}

/* Whether an 8-bit body matters: its rule is on and MAIL FROM did not
 * declare one (the readers then mark 8-bit octets, fe_header.h). */
static int want_8bit(const struct fe_session *s)
{
    return format_rules(s)->eightbit_body && s->tx->mp.body != FE_BODY_8BITMIME &&
           s->tx->mp.body != FE_BODY_BINARYMIME;
}

/* Show the header parser what the DATA or BDAT reader has just added. */
static void hdr_pump(struct fe_tx *tx)
{
    if (!tx->hdr.done && tx->msg.len > tx->hdr_at)
        tx->hdr_at += fe_hdr_feed(&tx->hdr, tx->msg.data + tx->hdr_at, tx->msg.len - tx->hdr_at);
}

static int from_owned_cb(void *arg, const char *addr)
{
    return fe_passwd_sender_ok(arg, addr) ? 0 : MS_ENOTFOUND;
}

/* The whole message is in and its octets are fine: judge its header
 * section by the listener's rules.  Returns FE_FMT_OK or the broken rule
 * (*field for the reply). */
static enum fe_fmt_rule format_judge(struct fe_session *s, enum fe_hdr_field *field)
{
    struct fe_tx *tx = s->tx;
    const struct fe_format_rules *fr = format_rules(s);
    const struct fe_passwd_entry *pe;
    size_t last8 = tx->bdat ? tx->bd.last_8bit : tx->rd.last_8bit;
    int body8, r;
    enum fe_fmt_rule rule;

    hdr_pump(tx);
    fe_hdr_finish(&tx->hdr);
    body8 = last8 > tx->header_len + tx->hdr.section_len &&
            tx->mp.body != FE_BODY_8BITMIME && tx->mp.body != FE_BODY_BINARYMIME;
    rule = fe_hdr_judge(&tx->hdr, fr, tx->mp.smtputf8, body8, field);
    if (rule != FE_FMT_OK || !fr->from_owned || !s->auth_user[0] ||
        tx->hdr.counts[FE_HF_FROM] == 0)
        return rule;
    /* As MAIL FROM must be (cmd_mail): every author an allowed sender.  A
     * From that does not parse cannot be shown to be one. */
    pe = fe_passwd_find(s->srv->passwd, s->auth_user);
    r = pe ? ms_addrlist_parse(tx->hdr.from.data, tx->hdr.from.len, MS_ADDR_MAILBOX_LIST,
                               from_owned_cb, (void *)pe)
           : MS_ENOTFOUND;
    return r < 0 ? FE_FMT_FROM_NOT_OWNED : FE_FMT_OK;
}

/* RFC 6409 8.2, 8.3: a submitted message without Date or Message-ID gets
 * them, between our Received header and the message.  Nothing of the
 * message moves: the fields go into the room msg_begin() kept ahead of the
 * Received header, which moves down to sit on top of them. */
static void format_fix(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;
    const struct fe_format_rules *fr = format_rules(s);
    char add[FE_HDR_ADDED_MAX], date[64];
    size_t n = 0, rlen = tx->header_len - tx->rec_at;
    struct tm tm;
    time_t now;
    int w;

    if (tx->rec_at < FE_REC_HEAD + FE_HDR_ADDED_MAX)
        return; /* no room kept: no fixes on this listener */
    if (fr->add_date && tx->hdr.counts[FE_HF_DATE] == 0) {
        now = time(NULL);
        gmtime_r(&now, &tm);
        strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
        w = snprintf(add + n, sizeof(add) - n, "Date: %s\r\n", date);
        if (w > 0 && (size_t)w < sizeof(add) - n)
            n += (size_t)w;
    }
    if (fr->add_message_id && tx->hdr.counts[FE_HF_MESSAGE_ID] == 0) {
        w = snprintf(add + n, sizeof(add) - n, "Message-ID: <%s@%s>\r\n", tx->qid,
                     s->srv->set.hostname);
        if (w > 0 && (size_t)w < sizeof(add) - n)
            n += (size_t)w; /* fe_settings.c keeps the host name short enough */
    }
    if (n == 0)
        return;
    memmove(tx->msg.data + tx->rec_at - n, tx->msg.data + tx->rec_at, rlen);
    memcpy(tx->msg.data + tx->rec_at - n + rlen, add, n);
    tx->rec_off = tx->rec_at - n;
    ms_debug("event=format_fixed qid=%s sid=%llu date=%d message_id=%d", tx->qid,
             (unsigned long long)s->id, fr->add_date && tx->hdr.counts[FE_HF_DATE] == 0,
             fr->add_message_id && tx->hdr.counts[FE_HF_MESSAGE_ID] == 0);
}

/* ---- end of DATA: the envelope and Kafka ---- */

static size_t tx_size(const struct fe_tx *tx)
{
    return tx->bdat ? (size_t)tx->bd.size : tx->rd.size;
}

static void log_tx(struct fe_session *s, const char *event, const char *extra)
{
    struct fe_tx *tx = s->tx;
    char from[300], helo[300];

    ms_log_quote(from, sizeof(from), tx->from, strlen(tx->from));
    ms_log_quote(helo, sizeof(helo), s->helo, strlen(s->helo));
    ms_info("event=%s qid=%s sid=%llu client=%s port=%d%s%s helo=%s listener=%s tls=%s auth=%s "
            "from=%s nrcpt=%zu size=%zu direction=%s%s%s%s%s",
            event, tx->qid, (unsigned long long)s->id, s->ip, s->port,
            s->proxy_peer[0] ? " proxy=" : "", s->proxy_peer, helo, s->l->name,
            s->t->tls ? s->t->tls_version : "none", s->auth_user[0] ? "yes" : "no", from,
            tx->nrcpts, tx_size(tx), (s->auth_user[0] || s->trusted) ? "outbound" : "inbound",
            tx->milter_log[0] ? " " : "", tx->milter_log, extra ? " " : "", extra ? extra : "");
}

static int submit_tx(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;
    struct ms_envelope_tx et;
    struct ms_envelope_tx_rcpt *rr;
    uint8_t *buf;
    size_t len, i, off, end;
    int r;

    memset(&et, 0, sizeof(et));
    et.client.ip = s->ip;
    et.client.port = (uint32_t)s->port;
    et.client.helo = s->helo;
    et.client.tls_version = s->t->tls ? s->t->tls_version : "";
    et.client.tls_cipher = s->t->tls ? s->t->tls_cipher : "";
    et.client.auth_user = s->auth_user;
    et.client.listener = s->l->name;
    et.client.proxy_peer_ip = s->proxy_peer;
    et.client.listener_role = role_name(s->l->role);
    et.mail_from.address = tx->from;
    et.mail_from.body = tx->mp.body == FE_BODY_8BITMIME     ? MS_ENV_BODY_8BITMIME
                        : tx->mp.body == FE_BODY_7BIT       ? MS_ENV_BODY_7BIT
                        : tx->mp.body == FE_BODY_BINARYMIME ? MS_ENV_BODY_BINARYMIME
                                                            : MS_ENV_BODY_UNSPECIFIED;
    et.mail_from.smtputf8 = tx->mp.smtputf8;
    et.mail_from.size = tx->mp.has_size ? tx->mp.size : 0;
    et.mail_from.ret = tx->mp.ret == FE_RET_FULL   ? MS_ENV_RET_FULL
                       : tx->mp.ret == FE_RET_HDRS ? MS_ENV_RET_HDRS
                                                   : MS_ENV_RET_UNSPECIFIED;
    et.mail_from.envid = tx->mp.envid;
    et.mail_from.requiretls = tx->mp.requiretls;
    rr = ms_calloc(tx->nrcpts, sizeof(*rr));
    for (i = 0; i < tx->nrcpts; i++) {
        rr[i].address = tx->rcpts[i].addr;
        rr[i].notify = tx->rcpts[i].notify;
        rr[i].orcpt = tx->rcpts[i].orcpt;
    }
    et.queue_id = tx->qid;
    et.received_at_us = ms_time_now_us();
    et.frontend_node = s->srv->set.node_id;
    et.rcpts = rr;
    et.nrcpts = tx->nrcpts;
    et.direction = (s->auth_user[0] || s->trusted) ? MS_ENV_DIRECTION_OUTBOUND
                                                   : MS_ENV_DIRECTION_INBOUND;
    et.quarantine = tx->quarantine;
    et.message = tx->msg.data + tx->rec_off;
    et.len = tx->msg.len - tx->rec_off;
    /* The record is built around the message where it lies (the message
     * field's tag and length before it, the other fields after it) and goes
     * to Kafka from this buffer: the message is not copied again.  A
     * message the milters replaced has no room before it, and a buffer at
     * its max cannot take the other fields: those are copied. */
    if (ms_envelope_encode_tx_in(&et, &tx->msg, tx->rec_off, &off, &len) == 0) {
        buf = (uint8_t *)ms_buf_steal(&tx->msg, &end); /* the record ends the buffer */
    } else {
        buf = ms_envelope_encode_tx(&et, &len);
        off = 0;
    }
    free(rr);
    /* The message is in the record now; keep memory low while we wait. */
    ms_buf_free(&tx->msg);
    tx->txn_id = ++s->srv->next_id;
    ms_idmap_put(&s->srv->pending, tx->txn_id, s);
    r = fe_server_submit(s->srv, tx->txn_id, tx->qid, strlen(tx->qid), buf, off, len);
    fe_commit_leave(&s->srv->commit, &s->cm);
    if (r < 0) {
        ms_idmap_del(&s->srv->pending, tx->txn_id);
        tx->txn_id = 0;
    }
    return r;
}

static void data_submit(struct fe_session *s);
static void milter_wait(struct fe_session *s, enum fe_milter_kind kind,
                        const struct fe_limits_wait *w);

/* A milter discarded the message: the client hears it was queued (a 250
 * like any other, so nobody retries), an event says it was not. */
static void tx_discard(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;

    reply(s, "250 2.0.0 Ok: queued as %s", tx->qid);
    log_tx(s, "discarded", NULL);
    fe_server_event(s->srv, "discarded", tx->qid, s->ip, NULL, tx_size(tx), NULL);
    ms_counter_inc(s->srv->m.rejected);
    tx_reset(s);
}

/* The whole message is in (end of DATA, or the LAST BDAT chunk), with
 * `status` from its reader. */
static void data_end(struct fe_session *s, enum fe_data_status status)
{
    struct fe_tx *tx = s->tx;
    const char *why;
    char extra[128], line[256];
    enum fe_fmt_rule rule;
    enum fe_hdr_field field;

    tx->data_end_ns = uv_hrtime();
    if (status != FE_DATA_OK) {
        why = fe_data_reply(status);
        reply(s, "%s", why);
        snprintf(extra, sizeof(extra), "reason=%d", (int)status);
        log_tx(s, "rejected", extra);
        ms_counter_inc(s->srv->m.rejected);
        tx_reset(s);
        return;
    }
    if ((rule = format_judge(s, &field)) != FE_FMT_OK) {
        fe_fmt_reply(rule, field, line, sizeof(line));
        reply(s, "%s", line);
        snprintf(extra, sizeof(extra), "rule=%s%s%s", fe_fmt_rule_name(rule),
                 field != FE_HF_COUNT ? " field=" : "",
                 field != FE_HF_COUNT ? fe_hdr_field_name(field) : "");
        log_tx(s, "rejected", extra);
        ms_counter_inc(s->srv->m.rejected);
        ms_counter_inc(s->srv->m.format_refused[rule]);
        tx_reset(s);
        return;
    }
    format_fix(s);
    if (tx->discard) { /* a milter discarded it at MAIL or RCPT */
        tx_discard(s);
        return;
    }
    if (s->milters) {
        milter_wait(s, MW_EOM, NULL);
        fe_milter_eom(s->milters, tx->msg.data + tx->rec_off, tx->msg.len - tx->rec_off,
                      s->srv->set.max_message_size);
        return;
    }
    data_submit(s);
}

/* The message is final (after the milters): hand it to Kafka. */
static void data_submit(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;
    char extra[128];
    int r;

    tx->msg_size = tx->msg.len - tx->rec_off;
    r = submit_tx(s);
    if (r < 0) {
        ms_counter_inc(s->srv->m.kafka_submit_errors);
        snprintf(extra, sizeof(extra), "error=%s", ms_err_name(r));
        if (r == MS_ETOOBIG) {
            reply(s, "552 5.3.4 Message too big for the queue (%s)", tx->qid);
            log_tx(s, "rejected", extra);
            fe_server_event(s->srv, "refused", tx->qid, s->ip, NULL, 0,
                            "552 5.3.4 Message too big for the queue");
            ms_counter_inc(s->srv->m.rejected);
        } else {
            reply(s, "451 4.3.0 Queue unavailable, try again later (%s)", tx->qid);
            log_tx(s, "tempfail", extra);
            ms_counter_inc(s->srv->m.tempfail);
        }
        tx_reset(s);
        return;
    }
    enter_state(s, FE_ST_QUEUEING);
    if (!s->srv->overloaded && s->srv->set.max_pending &&
        s->srv->pending.count >= s->srv->set.max_pending) {
        s->srv->overloaded = 1;
        ms_counter_inc(s->srv->m.limit_hits[FE_LIMIT_BACKPRESSURE]);
        ms_warn("event=backpressure_on pending=%zu", s->srv->pending.count);
    }
}

/* The report for the session's pending transaction. */
static void session_queued(struct fe_session *s, int err, const char *errstr)
{
    struct fe_tx *tx = s->tx;
    char extra[512], q[400];
    double secs;

    if (tx == NULL || s->state != FE_ST_QUEUEING)
        return;
    tx->txn_id = 0; /* already removed from the pending table */
    secs = (double)(uv_hrtime() - tx->data_end_ns) / 1e9;
    ms_histogram_observe(s->srv->m.queue_latency, secs);
    if (err == 0) {
        reply(s, "250 2.0.0 Ok: queued as %s", tx->qid);
        snprintf(extra, sizeof(extra), "latency_ms=%.1f", secs * 1000);
        log_tx(s, "queued", extra);
        fe_server_event(s->srv, "accepted", tx->qid, s->ip, NULL, tx->msg_size, NULL);
        ms_counter_inc(s->srv->m.queued);
        ms_histogram_observe(s->srv->m.message_size, (double)tx->msg_size);
        s->ntx++;
        commit_touch(s); /* its client is likely to send the next MAIL at once */
    } else {
        ms_counter_inc(s->srv->m.kafka_report_errors);
        reply(s, "451 4.3.0 Queue unavailable, try again later (%s)", tx->qid);
        ms_log_quote(q, sizeof(q), errstr ? errstr : "", errstr ? strlen(errstr) : 0);
        snprintf(extra, sizeof(extra), "error=%s detail=%s", ms_err_name(err), q);
        log_tx(s, "tempfail", extra);
        ms_counter_inc(s->srv->m.tempfail);
    }
    tx_reset(s);
    arm_timer(s);
    drain_if_needed(s);
    if (s->state != FE_ST_CLOSING) {
        fe__session_process(s);
    }
    flush(s);
    if (s->peer_eof && s->state != FE_ST_CLOSING && s->state != FE_ST_QUEUEING)
        close_session(s); /* nothing more will come */
}

/* ---- commands ---- */

static struct fe_limits_wait *limits_wait_new(enum fe_limits_kind kind, enum fe_rl_mode mode);
static void add_rate(struct fe_session *s, struct fe_limits_wait *w, enum fe_rate_kind kind,
                     const char *what, const char *value);
static void limits_check(struct fe_session *s, struct fe_limits_wait *w);
static void rcpt_unknown(struct fe_session *s, const char *path);

#define F_HELO 0x01  /* needs HELO/EHLO first */
#define F_NOTX 0x02  /* not inside a mail transaction */
#define F_TX 0x04    /* needs MAIL first */
#define F_TLS 0x08   /* needs TLS on a submission listener */
#define F_AUTHD 0x10 /* needs AUTH on submission listeners */
#define F_NOARG 0x20 /* takes no argument */
#define F_ARG 0x40   /* needs an argument */
#define F_LAST 0x80  /* last in a pipelining group (RFC 2920 3.1): flush */

struct fe_cmd {
    enum fe_verb verb;
    void (*run)(struct fe_session *s, const struct fe_smtp_cmd *c);
    unsigned flags;
};

static void greet_done(struct fe_session *s, const char *helo, size_t len, int esmtp);

static void greet(struct fe_session *s, const struct fe_smtp_cmd *c, int esmtp)
{
    if (c->argslen > FE_SMTP_HELO_MAX) {
        reply_error(s, "501 5.5.4 HELO/EHLO argument too long");
        return;
    }
    /* RFC 5321 4.1.4: EHLO in a transaction is an implicit RSET. */
    tx_reset(s);
    if (s->milters) {
        milter_wait(s, MW_HELO, NULL);
        memcpy(s->mw->helo, c->args, c->argslen);
        s->mw->helo[c->argslen] = '\0';
        s->mw->esmtp = esmtp;
        fe_milter_macro(s->milters, "{tls_version}", s->t->tls ? s->t->tls_version : NULL);
        fe_milter_macro(s->milters, "{cipher}", s->t->tls ? s->t->tls_cipher : NULL);
        fe_milter_helo(s->milters, s->mw->helo);
        return;
    }
    greet_done(s, c->args, c->argslen, esmtp);
}

/* HELO/EHLO passed (the milters too): the greeting and the extensions. */
static void greet_done(struct fe_session *s, const char *helo, size_t len, int esmtp)
{
    const struct fe_settings *set = &s->srv->set;

    memcpy(s->helo, helo, len);
    s->helo[len] = '\0';
    s->esmtp = esmtp;
    enter_state(s, FE_ST_READY);
    if (!esmtp) {
        reply(s, "250 %s", set->hostname);
        return;
    }
    reply(s, "250-%s Hello %s [%s]", set->hostname, s->helo, s->ip);
    reply(s, "250-PIPELINING");
    reply(s, "250-SIZE %llu", (unsigned long long)set->max_message_size);
    reply(s, "250-8BITMIME");
    reply(s, "250-CHUNKING");
    reply(s, "250-BINARYMIME");
    reply(s, "250-SMTPUTF8");
    reply(s, "250-DSN");
    if (s->srv->tls && !s->t->tls && s->l->role != FE_ROLE_SUBMISSIONS)
        reply(s, "250-STARTTLS");
    if (s->srv->passwd && s->t->tls && !s->auth_user[0])
        reply(s, "250-AUTH PLAIN LOGIN");
    if (s->t->tls) /* RFC 8689 4: only over TLS */
        reply(s, "250-REQUIRETLS");
    reply(s, "250 ENHANCEDSTATUSCODES");
}

static void cmd_helo(struct fe_session *s, const struct fe_smtp_cmd *c) { greet(s, c, 0); }
static void cmd_ehlo(struct fe_session *s, const struct fe_smtp_cmd *c) { greet(s, c, 1); }

static void cmd_mail(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    struct fe_mail_params mp;
    const struct fe_passwd_entry *pe;
    const char *err = NULL;
    struct fe_limits_wait *w;

    if (s->milter_refusal[0]) { /* a milter refused the connection */
        reply_error(s, s->milter_refusal);
        return;
    }
    if (fe_smtp_mail_params(c, &mp, &err) < 0) {
        reply_error(s, err);
        return;
    }
    if (c->path_utf8 && !mp.smtputf8) {
        reply_error(s, "553 5.6.7 Non-ASCII sender address requires SMTPUTF8");
        return;
    }
    if (c->pathlen > 0 && !c->path_domain) {
        reply_error(s, "501 5.1.7 Sender address must contain a domain");
        return;
    }
    if (mp.requiretls && !s->t->tls) {
        reply_error(s, "530 5.7.10 REQUIRETLS needs a TLS connection");
        return;
    }
    if (mp.has_size && mp.size > s->srv->set.max_message_size) {
        reply_error(s, "552 5.3.4 Message size exceeds fixed maximum message size");
        return;
    }
    if (s->auth_user[0]) {
        pe = fe_passwd_find(s->srv->passwd, s->auth_user);
        if (pe == NULL || !fe_passwd_sender_ok(pe, c->path)) {
            char q[300];
            ms_log_quote(q, sizeof(q), c->path, c->pathlen);
            ms_info("event=sender_not_owned sid=%llu client=%s from=%s",
                    (unsigned long long)s->id, s->ip, q);
            reply_error(s, "553 5.7.1 Sender address not owned by the authenticated user");
            return;
        }
    }
    /* Messages per authenticated user and per sender domain (Redis). */
    w = limits_wait_new(W_MAIL, FE_RL_TAKE);
    memcpy(w->path, c->path, c->pathlen + 1);
    w->mp = mp;
    if (s->auth_user[0])
        add_rate(s, w, FE_RATE_MSG_USER, "msg:user:", s->auth_user);
    if (c->path_domain)
        add_rate(s, w, FE_RATE_MSG_DOMAIN, "msg:dom:", ms_addr_domain(c->path));
    limits_check(s, w);
}

/* MAIL passed every check: the transaction starts. */
static void mail_accept(struct fe_session *s, const struct fe_limits_wait *w)
{
    struct fe_tx *tx;

    tx = ms_calloc(1, sizeof(*tx));
    if (w->qid[0])
        memcpy(tx->qid, w->qid, sizeof(tx->qid));
    else
        ms_queueid_new(tx->qid);
    tx->from = ms_strdup(w->path);
    tx->mp = w->mp;
    ms_buf_init(&tx->msg, 0);
    s->tx = tx;
    commit_touch(s);
    ms_counter_inc(s->srv->m.transactions);
    enter_state(s, FE_ST_MAIL);
    reply(s, "250 2.1.0 Ok");
}

static void cmd_rcpt(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    const struct fe_settings *set = &s->srv->set;
    struct fe_tx *tx = s->tx;
    struct fe_rcpt_params rp;
    const char *err = NULL;
    struct fe_limits_wait *w;
    int accepted;

    if (fe_smtp_rcpt_params(c, &rp, &err) < 0) {
        reply_error(s, err);
        return;
    }
    if (tx->bdat) {
        reply_error(s, "503 5.5.1 Error: RCPT after BDAT");
        return;
    }
    if (c->path_utf8 && !tx->mp.smtputf8) {
        reply_error(s, "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8");
        return;
    }
    if (tx->nrcpts >= set->max_recipients) {
        /* RFC 5321 4.5.3.1.10: 452, the client sends the rest later.  Not
         * counted as an error. */
        reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    if (!c->path_domain) {
        if (strcasecmp(c->path, "postmaster") != 0) {
            reply_error(s, "501 5.1.3 Recipient address must contain a domain");
            return;
        }
        accepted = 1; /* RFC 5321 4.5.1: <postmaster> is always accepted */
    } else {
        accepted = ms_domainmap_lookup(set->accepted_domains, ms_addr_domain(c->path)) != NULL;
    }
    /* No open relay (DESIGN.md): other domains need AUTH or a trusted
     * network, and so do local parts that route on by themselves (%-hacks,
     * !-paths, quoted addresses).  A source route was already dropped by
     * the parser (RFC 5321 C), so only the final domain counts. */
    if ((!accepted || fe_addr_routing(c->path)) && !s->trusted && !s->auth_user[0]) {
        char q[300];
        ms_log_quote(q, sizeof(q), c->path, c->pathlen);
        ms_info("event=relay_denied sid=%llu qid=%s client=%s rcpt=%s",
                (unsigned long long)s->id, tx->qid, s->ip, q);
        fe_server_event(s->srv, "refused", tx->qid, s->ip, c->path, 0,
                        "550 5.7.1 Relay not permitted");
        reply_error(s, "550 5.7.1 Relay not permitted");
        return;
    }
    /* The recipient file ([smtp] recipient_file): known at once. */
    if (accepted && c->path_domain &&
        fe_rcpt_table_check(s->srv->rcpts, c->path) == FE_RCPT_UNKNOWN) {
        rcpt_unknown(s, c->path);
        return;
    }
    /* Recipients per client (Redis) and the suppression list (the
     * worker's ms:suppress:<rcpt>), in one round trip. */
    w = limits_wait_new(W_RCPT, FE_RL_TAKE);
    memcpy(w->path, c->path, c->pathlen + 1);
    w->notify = rp.notify;
    memcpy(w->orcpt, rp.orcpt, sizeof(w->orcpt));
    w->accepted = accepted;
    if (s->auth_user[0])
        add_rate(s, w, FE_RATE_RCPT_CLIENT, "rcpt:user:", s->auth_user);
    else
        add_rate(s, w, FE_RATE_RCPT_CLIENT, "rcpt:ip:", s->ip);
    if (set->refuse_suppressed && c->path_domain)
        fe_rl_refuse_key(&w->c, set->suppress_prefix, c->path);
    if (accepted && set->recipient_lists &&
        ms_domainmap_get(set->recipient_lists, ms_addr_domain(c->path)) != NULL) {
        char dom[MS_DOMAINMAP_KEY_MAX + 1];
        if (ms_domainmap_key(ms_addr_domain(c->path), strlen(ms_addr_domain(c->path)), dom,
                             sizeof(dom)) == MS_DOMAINMAP_EXACT)
            fe_rl_member(&w->c, MS_KEY_RECIPIENTS, dom, c->path);
    }
    limits_check(s, w);
}

/* RCPT passed every check: the recipient joins the transaction. */
static void tx_add_rcpt(struct fe_tx *tx, const char *addr, unsigned notify, const char *orcpt)
{
    if (tx->nrcpts == tx->caprcpts) {
        tx->caprcpts = tx->caprcpts ? tx->caprcpts * 2 : 4;
        tx->rcpts = ms_realloc(tx->rcpts, tx->caprcpts * sizeof(*tx->rcpts));
    }
    tx->rcpts[tx->nrcpts].addr = ms_strdup(addr);
    tx->rcpts[tx->nrcpts].notify = notify;
    tx->rcpts[tx->nrcpts].orcpt = ms_strdup(orcpt);
    tx->nrcpts++;
}

static void rcpt_accept(struct fe_session *s, const struct fe_limits_wait *w)
{
    struct fe_tx *tx = s->tx;

    tx_add_rcpt(tx, w->path, w->notify, w->orcpt);
    if (!w->accepted)
        tx->relayed = 1;
    enter_state(s, FE_ST_RCPT);
    reply(s, "250 2.1.5 Ok");
}

static void cmd_data(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    struct fe_tx *tx = s->tx;
    size_t max = s->srv->set.max_message_size;

    /* RFC 3030 2: DATA and BDAT do not mix in one transaction, and a
     * BINARYMIME body can only come in chunks (RFC 3030 3). */
    if (tx->bdat) {
        reply_error(s, "503 5.5.1 Error: DATA after BDAT in the same transaction");
        return;
    }
    if (tx->mp.body == FE_BODY_BINARYMIME) {
        reply_error(s, "503 5.5.1 Error: BODY=BINARYMIME requires BDAT");
        return;
    }
    tx->data_tried = 1;
    if (tx->nrcpts == 0) {
        /* RFC 2920 3.1: with pipelining, DATA after failed RCPTs. */
        reply_error(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    msg_begin(s);
    fe_data_init(&tx->rd, &tx->msg, max);
    tx->rd.want_8bit = want_8bit(s);
    enter_state(s, FE_ST_DATA);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* ---- BDAT (RFC 3030) ---- */

/* The chunk's octets are all in. */
static void bdat_chunk_end(struct fe_session *s)
{
    struct fe_tx *tx = s->tx;
    enum fe_data_status st = tx->bd.status;
    char extra[128];

    if (tx->bdat_last) {
        data_end(s, fe_bdat_finish(&tx->bd));
        return;
    }
    if (st != FE_DATA_OK) {
        /* RFC 3030 2: a failed chunk fails the transaction. */
        reply_error(s, fe_data_reply(st));
        snprintf(extra, sizeof(extra), "reason=%d", (int)st);
        log_tx(s, "rejected", extra);
        ms_counter_inc(s->srv->m.rejected);
        tx_reset(s);
        return;
    }
    enter_state(s, FE_ST_RCPT);
    reply(s, "250 2.0.0 %llu octets received", (unsigned long long)tx->chunk);
}

/* command() has set s->skip_octets to the chunk size: any refusal leaves
 * it so the chunk's octets are thrown away rather than taken as commands.
 * Taking the chunk clears it. */
static void cmd_bdat(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    struct fe_tx *tx = s->tx;
    size_t max = s->srv->set.max_message_size;
    const char *err;
    uint64_t n;
    int last, size_ok;

    if (fe_smtp_bdat_args(c->args, c->argslen, &n, &last, &size_ok, &err) < 0)
        return; /* command() answered already */
    if (tx->data_tried) {
        reply_error(s, "503 5.5.1 Error: BDAT after DATA in the same transaction");
        return;
    }
    if (tx->nrcpts == 0) {
        reply_error(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    if (!tx->bdat) {
        tx->bdat = 1;
        msg_begin(s);
        fe_bdat_init(&tx->bd, &tx->msg, max, tx->mp.body == FE_BODY_BINARYMIME);
        tx->bd.want_8bit = want_8bit(s);
    }
    fe_bdat_chunk(&tx->bd, n);
    tx->chunk = n;
    tx->bdat_last = last;
    s->skip_octets = 0;
    enter_state(s, FE_ST_BDAT);
    if (n == 0)
        bdat_chunk_end(s);
}

static void cmd_rset(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    tx_reset(s);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    reply(s, "221 2.0.0 Bye");
    close_session(s);
}

static void cmd_vrfy(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    /* RFC 5321 3.5.3: we do not disclose, but do not refuse either. */
    reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    reply_error(s, "502 5.5.1 EXPN not implemented");
}

static void cmd_help(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP%s%s",
          s->srv->tls ? " STARTTLS" : "", s->srv->passwd ? " AUTH" : "");
}

static void cmd_starttls(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    if (s->srv->tls == NULL || s->l->role == FE_ROLE_SUBMISSIONS) {
        reply_error(s, "454 4.7.0 TLS not available");
        return;
    }
    if (s->t->tls) {
        reply_error(s, "503 5.5.1 Error: TLS already active");
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    flush(s);
    if (s->state == FE_ST_CLOSING)
        return;
    /* RFC 3207 4 / CVE-2011-0411: anything pipelined after STARTTLS was
     * sent in the clear and must not be taken as coming over TLS. */
    if (s->in.len > 0) {
        ms_info("event=starttls_pipelined_discarded sid=%llu client=%s bytes=%zu",
                (unsigned long long)s->id, s->ip, s->in.len);
        ms_buf_reset(&s->in);
    }
    if (ms_conn_tls_accept(s->t, s->srv->tls) < 0) {
        close_session(s);
        return;
    }
    enter_state(s, FE_ST_STARTTLS);
}

/* ---- AUTH (RFC 4954) ---- */

struct auth_job {
    uv_work_t req;
    struct fe_server *srv;
    uint64_t sid;
    char user[FE_AUTH_USER_MAX + 1];
    char pass[FE_AUTH_PASS_MAX + 1];
    char *hash; /* NULL: unknown user */
    int ok;
};

static void auth_job_free(struct auth_job *j);
static void auth_failed_charge(struct fe_session *s, const char *user);
static void on_timer(uv_timer_t *h);

static void auth_work(uv_work_t *req)
{
    struct auth_job *j = req->data;

    j->ok = fe_passwd_check(j->hash, j->pass);
}

static void auth_after(uv_work_t *req, int status)
{
    struct auth_job *j = req->data;
    struct fe_session *s = ms_idmap_get(&j->srv->sessions, j->sid);
    char q[300];

    if (s != NULL && s->state == FE_ST_AUTH_CHECK) {
        ms_log_quote(q, sizeof(q), j->user, strlen(j->user));
        enter_state(s, FE_ST_READY);
        if (status == 0 && j->ok) {
            snprintf(s->auth_user, sizeof(s->auth_user), "%s", j->user);
            ms_info("event=auth_ok sid=%llu client=%s user=%s", (unsigned long long)s->id,
                    s->ip, q);
            ms_counter_inc(s->srv->m.auth_ok);
            reply(s, "235 2.7.0 Authentication successful");
        } else {
            ms_info("event=auth_failed sid=%llu client=%s user=%s", (unsigned long long)s->id,
                    s->ip, q);
            ms_counter_inc(s->srv->m.auth_fail);
            auth_failed_charge(s, j->user);
            reply_error(s, "535 5.7.8 Authentication credentials invalid");
        }
        arm_timer(s);
        drain_if_needed(s);
        if (s->state != FE_ST_CLOSING) {
                fe__session_process(s);
        }
        flush(s);
    }
    auth_job_free(j);
}

static void auth_job_free(struct auth_job *j)
{
    explicit_bzero(j->pass, sizeof(j->pass));
    if (j->hash) {
        explicit_bzero(j->hash, strlen(j->hash));
        free(j->hash);
    }
    free(j);
}

/* A failed AUTH costs a token from the client's and the user's buckets
 * (nobody waits for the answer). */
static void auth_failed_charge(struct fe_session *s, const char *user)
{
    struct fe_limits_wait *w;

    if (s->srv->rl == NULL)
        return;
    w = limits_wait_new(W_AUTH, FE_RL_CHARGE);
    add_rate(s, w, FE_RATE_AUTHFAIL_IP, "authf:ip:", s->ip);
    add_rate(s, w, FE_RATE_AUTHFAIL_USER, "authf:user:", user);
    if (fe_rl_check_needed(&w->c))
        fe_rl_run(s->srv->rl, &w->c, 0);
    free(w);
}

/* Past the AUTH failure limits: check the password on the thread pool. */
static void auth_run(struct fe_session *s, struct auth_job *j)
{
    if (uv_queue_work(s->srv->loop, &j->req, auth_work, auth_after) < 0) {
        auth_job_free(j);
        enter_state(s, FE_ST_READY);
        reply(s, "454 4.7.0 Temporary authentication failure");
        return;
    }
    enter_state(s, FE_ST_AUTH_CHECK);
}

static void auth_check(struct fe_session *s, const char *user, const char *pass)
{
    struct fe_limits_wait *w;
    struct auth_job *j = ms_calloc(1, sizeof(*j));
    const struct fe_passwd_entry *pe = fe_passwd_find(s->srv->passwd, user);

    j->req.data = j;
    j->srv = s->srv;
    j->sid = s->id;
    snprintf(j->user, sizeof(j->user), "%s", user);
    snprintf(j->pass, sizeof(j->pass), "%s", pass);
    j->hash = pe ? ms_strdup(pe->hash) : NULL;
    s->sasl = SASL_NONE;
    explicit_bzero(s->sasl_user, sizeof(s->sasl_user));
    /* Too many failures from this client or for this user: refuse before
     * even looking at the password, so guessing gains nothing. */
    enter_state(s, FE_ST_READY);
    w = limits_wait_new(W_AUTH, FE_RL_PEEK);
    w->job = j;
    add_rate(s, w, FE_RATE_AUTHFAIL_IP, "authf:ip:", s->ip);
    add_rate(s, w, FE_RATE_AUTHFAIL_USER, "authf:user:", user);
    limits_check(s, w);
}

/* ---- waiting for Redis: rate limits and the suppression list ---- */

static struct fe_limits_wait *limits_wait_new(enum fe_limits_kind kind, enum fe_rl_mode mode)
{
    struct fe_limits_wait *w = ms_calloc(1, sizeof(*w));

    w->kind = kind;
    fe_rl_check_init(&w->c, mode);
    return w;
}

static void limits_wait_free(struct fe_limits_wait *w)
{
    if (w->job)
        auth_job_free(w->job);
    free(w);
}

static void add_rate(struct fe_session *s, struct fe_limits_wait *w, enum fe_rate_kind kind,
                     const char *what, const char *value)
{
    size_t before = w->c.n;

    fe_rl_add(&w->c, s->srv->set.rl_prefix, what, value, s->srv->set.rates[kind], 1,
              fe_limit_name(kind));
    if (w->c.n > before)
        w->kinds[before] = kind;
}

/* Refuse a connection before the banner (nothing said to an implicit-TLS
 * client: it expects a handshake, not text). */
static void refuse_connection(struct fe_session *s, const char *line)
{
    if (s->l->role != FE_ROLE_SUBMISSIONS)
        reply(s, "%s", line);
    close_session(s);
}

static void session_admitted(struct fe_session *s);
static void session_admitted_go(struct fe_session *s);

static void milter_mail(struct fe_session *s, const struct fe_limits_wait *w);
static void milter_rcpt(struct fe_session *s, const struct fe_limits_wait *w);

/* A recipient not on its domain's list (the Redis set or the recipient
 * file): Postfix's wording for relay_recipient_maps. */
static void rcpt_unknown(struct fe_session *s, const char *path)
{
    char line[MS_SMTP_PATH_MAX + 100], q[300];

    ms_log_quote(q, sizeof(q), path, strlen(path));
    ms_info("event=rcpt_unknown sid=%llu qid=%s client=%s rcpt=%s", (unsigned long long)s->id,
            s->tx ? s->tx->qid : "-", s->ip, q);
    snprintf(line, sizeof(line),
             "550 5.1.1 <%s>: Recipient address rejected: User unknown in relay recipient table",
             path);
    fe_server_event(s->srv, "refused", s->tx ? s->tx->qid : "", s->ip, path, 0, line);
    reply_error(s, line);
}

/* The recipient passed the limits, the lists and its verification: the
 * milters (if any) have the last word, else it is taken. */
static void rcpt_checked(struct fe_session *s, const struct fe_limits_wait *w)
{
    if (s->milters)
        milter_rcpt(s, w);
    else
        rcpt_accept(s, w);
}

/* ---- recipient verification (fe_verify.h) ---- */

/* Act on a probe's answer (FE_RL_OK, FE_RL_UNKNOWN, or FE_RL_FAILED: no
 * answer) for w, which the caller then frees.  Postfix's wording for
 * reject_unverified_recipient, with the next hop's own reply. */
static void verify_decide(struct fe_session *s, struct fe_limits_wait *w, int result)
{
    struct fe_server *srv = s->srv;
    char line[FE_VERIFY_TEXT_MAX + MS_SMTP_PATH_MAX + 80], q[300];
    const char *qid = s->tx ? s->tx->qid : "";

    if (result == FE_RL_OK || (result == FE_RL_FAILED && srv->set.verify.tempfail_accept)) {
        rcpt_checked(s, w);
        return;
    }
    ms_log_quote(q, sizeof(q), w->path, strlen(w->path));
    if (result == FE_RL_UNKNOWN)
        snprintf(line, sizeof(line),
                 "550 5.1.1 <%s>: Recipient address rejected: undeliverable address: %s",
                 w->path, w->verify_text);
    else
        snprintf(line, sizeof(line),
                 "450 4.1.1 <%s>: Recipient address rejected: unverified address: %s", w->path,
                 w->verify_text);
    ms_info("event=rcpt_unverified sid=%llu qid=%s client=%s rcpt=%s result=%s",
            (unsigned long long)s->id, qid[0] ? qid : "-", s->ip, q,
            result == FE_RL_UNKNOWN ? "unknown" : "tempfail");
    fe_server_event(srv, "refused", qid, s->ip, w->path, 0, line);
    reply_error(s, line);
}

/* The recipient passed every other check: when [verify] names its domain,
 * ask its next hop first (the session waits in FE_ST_LIMITS).  1 when the
 * answer is under way or given, 0 when there is nothing to verify. */
static int verify_begin(struct fe_session *s, const struct fe_limits_wait *w)
{
    struct fe_server *srv = s->srv;
    struct fe_limits_wait *v;

    if (srv->verify == NULL || !w->accepted || fe_verify_route(&srv->set.verify, w->path) == NULL)
        return 0;
    v = ms_malloc(sizeof(*v));
    *v = *w;
    v->job = NULL;
    v->kind = W_VERIFY;
    v->req = ++srv->next_id;
    if (fe_verify_start(srv->verify, w->path, v->req) < 0) {
        snprintf(v->verify_text, sizeof(v->verify_text), "too many addresses being verified");
        verify_decide(s, v, FE_RL_FAILED);
        limits_wait_free(v);
        return 1;
    }
    ms_idmap_put(&srv->limit_checks, v->req, s);
    v->prev = s->state;
    s->limits = v;
    enter_state(s, FE_ST_LIMITS);
    /* The probe ends within timeout_ms once it runs; a probe waiting for a
     * free slot may take about as long again. */
    uv_timer_start(&s->timer, on_timer, 2 * (uint64_t)srv->set.verify.timeout_ms + 1000, 0);
    return 1;
}

/* Act on the answer (or FE_RL_FAILED) for w, which the caller then frees. */
static void limits_decide(struct fe_session *s, struct fe_limits_wait *w, int result)
{
    struct fe_server *srv = s->srv;
    const char *host = srv->set.hostname, *limit = NULL;
    char line[512], q[300];
    int closed = 0;

    if (w->kind == W_VERIFY) {
        verify_decide(s, w, result);
        return;
    }
    if (result == FE_RL_FAILED) {
        /* A recipient list that cannot be read is no answer: 451, never
         * 250 (nor is the list skipped). */
        closed = srv->set.rl_fail_closed || (w->kind == W_RCPT && w->c.member);
        ms_counter_inc(closed ? srv->m.rl_redis_closed : srv->m.rl_redis_open);
        ms_warn("event=ratelimit_unavailable sid=%llu client=%s action=%s",
                (unsigned long long)s->id, s->ip, closed ? "refused" : "allowed");
        if (!closed)
            result = FE_RL_OK;
    } else if (result > 0) {
        limit = w->c.names[result - 1];
        ms_counter_inc(srv->m.limit_hits[w->kinds[result - 1]]);
        ms_info("event=rate_limited sid=%llu client=%s limit=%s auth=%s",
                (unsigned long long)s->id, s->ip, limit, s->auth_user[0] ? "yes" : "no");
    }
    switch (w->kind) {
    case W_CONN:
        if (result == FE_RL_OK) {
            session_admitted(s);
        } else {
            snprintf(line, sizeof(line),
                     closed ? "421 4.3.0 %s Service temporarily unavailable, try again later"
                            : "421 4.7.0 %s Error: too many connections from your address, "
                              "try again later",
                     host);
            refuse_connection(s, line);
        }
        break;
    case W_MAIL:
        if (result == FE_RL_OK && s->milters)
            milter_mail(s, w);
        else if (result == FE_RL_OK)
            mail_accept(s, w);
        else if (closed)
            reply_error(s, "451 4.3.0 Error: rate-limit service unavailable, try again later");
        else {
            snprintf(line, sizeof(line),
                     "451 4.7.1 Error: message rate limit exceeded (%s), try again later", limit);
            reply_error(s, line);
        }
        break;
    case W_RCPT:
        if (result == FE_RL_OK) {
            if (!verify_begin(s, w))
                rcpt_checked(s, w);
        } else if (result == FE_RL_REFUSED) {
            ms_counter_inc(srv->m.suppressed);
            ms_log_quote(q, sizeof(q), w->path, strlen(w->path));
            ms_info("event=rcpt_suppressed sid=%llu qid=%s client=%s rcpt=%s",
                    (unsigned long long)s->id, s->tx ? s->tx->qid : "-", s->ip, q);
            snprintf(line, sizeof(line),
                     "550 5.1.1 <%s>: Recipient address rejected: on the suppression list",
                     w->path);
            fe_server_event(srv, "refused", s->tx ? s->tx->qid : "", s->ip, w->path, 0, line);
            reply_error(s, line);
        } else if (result == FE_RL_UNKNOWN) {
            rcpt_unknown(s, w->path);
        } else if (closed) {
            reply_error(s, "451 4.3.0 Error: rate-limit service unavailable, try again later");
        } else {
            reply_error(s, "451 4.7.1 Error: recipient rate limit exceeded, try again later");
        }
        break;
    case W_AUTH:
        if (result == FE_RL_OK) {
            auth_run(s, w->job);
            w->job = NULL;
        } else {
            ms_counter_inc(srv->m.auth_fail);
            reply_error(s, closed ? "454 4.7.0 Temporary authentication failure"
                                  : "454 4.7.0 Too many authentication failures, try again later");
        }
        break;
    case W_VERIFY:
        break; /* above */
    }
}

/* Ask Redis when there is anything to ask; else decide now. */
static void limits_check(struct fe_session *s, struct fe_limits_wait *w)
{
    struct fe_server *srv = s->srv;

    if (srv->rl == NULL || !fe_rl_check_needed(&w->c)) {
        limits_decide(s, w, FE_RL_OK);
        limits_wait_free(w);
        return;
    }
    w->req = ++srv->next_id;
    if (fe_rl_run(srv->rl, &w->c, w->req) < 0) {
        limits_decide(s, w, FE_RL_FAILED);
        limits_wait_free(w);
        return;
    }
    ms_idmap_put(&srv->limit_checks, w->req, s);
    w->prev = s->state;
    s->limits = w;
    enter_state(s, FE_ST_LIMITS);
    uv_timer_start(&s->timer, on_timer, srv->set.rl_timeout_ms, 0);
}

/* An asynchronous answer was acted on: the session goes on with what its
 * client pipelined meanwhile. */
static void answered(struct fe_session *s)
{
    if (s->state == FE_ST_CLOSING)
        return;
    arm_timer(s);
    drain_if_needed(s);
    if (s->state != FE_ST_CLOSING)
        fe__session_process(s);
    if (s->state != FE_ST_CLOSING)
        flush(s);
}

/* The answer to the session's limits check (or FE_RL_FAILED: timed out). */
static void limits_answer(struct fe_session *s, int result)
{
    struct fe_limits_wait *w = s->limits;

    if (w == NULL || s->state != FE_ST_LIMITS)
        return;
    s->limits = NULL;
    enter_state(s, w->prev);
    limits_decide(s, w, result);
    limits_wait_free(w);
    answered(s);
}

/* ---- waiting for the milters (fe_milter.h) ---- */

static void milter_wait(struct fe_session *s, enum fe_milter_kind kind,
                        const struct fe_limits_wait *w)
{
    struct fe_milter_wait *mw = ms_calloc(1, sizeof(*mw));

    mw->kind = kind;
    mw->prev = s->state;
    if (w)
        mw->w = *w;
    mw->w.job = NULL; /* never an AUTH check */
    s->mw = mw;
    enter_state(s, FE_ST_MILTER);
}

/* MAIL passed our checks: now the milters (with the queue id the
 * transaction will have, their macro i). */
static void milter_mail(struct fe_session *s, const struct fe_limits_wait *w)
{
    char path[MS_SMTP_PATH_MAX + 3], size[32];
    const char *argv[4];
    size_t argc = 0;

    milter_wait(s, MW_MAIL, w);
    ms_queueid_new(s->mw->w.qid);
    snprintf(path, sizeof(path), "<%s>", w->path);
    argv[argc++] = path;
    if (w->mp.has_size) {
        snprintf(size, sizeof(size), "SIZE=%llu", (unsigned long long)w->mp.size);
        argv[argc++] = size;
    }
    if (w->mp.body != FE_BODY_UNSPEC)
        argv[argc++] = w->mp.body == FE_BODY_7BIT       ? "BODY=7BIT"
                       : w->mp.body == FE_BODY_8BITMIME ? "BODY=8BITMIME"
                                                        : "BODY=BINARYMIME";
    if (w->mp.smtputf8)
        argv[argc++] = "SMTPUTF8";
    fe_milter_macro(s->milters, "i", s->mw->w.qid);
    fe_milter_macro(s->milters, "{mail_addr}", w->path);
    fe_milter_macro(s->milters, "{auth_authen}", s->auth_user);
    fe_milter_macro(s->milters, "{tls_version}", s->t->tls ? s->t->tls_version : NULL);
    fe_milter_macro(s->milters, "{cipher}", s->t->tls ? s->t->tls_cipher : NULL);
    fe_milter_mail(s->milters, argv, argc);
}

static void milter_rcpt(struct fe_session *s, const struct fe_limits_wait *w)
{
    char path[MS_SMTP_PATH_MAX + 3];
    const char *argv[1] = {path};

    milter_wait(s, MW_RCPT, w);
    snprintf(path, sizeof(path), "<%s>", w->path);
    fe_milter_macro(s->milters, "{rcpt_addr}", w->path);
    fe_milter_rcpt(s->milters, argv, 1);
}

/* A milter's "<address>" as we keep addresses: without the brackets, no
 * white space or control octets, not too long.  0 or -1. */
static int milter_addr(const char *in, char *out, size_t outlen)
{
    size_t n = strlen(in), i;

    if (n >= 2 && in[0] == '<' && in[n - 1] == '>')
        in++, n -= 2;
    if (n > MS_SMTP_ADDR_MAX || n >= outlen)
        return -1;
    for (i = 0; i < n; i++)
        if ((unsigned char)in[i] <= ' ' || in[i] == 127 || in[i] == '<' || in[i] == '>')
            return -1;
    memcpy(out, in, n);
    out[n] = '\0';
    return 0;
}

/* The milters' edits: the message they produced, its sender and its
 * recipients.  0, or -1 after answering the client. */
static int milter_apply(struct fe_session *s, const struct fe_milter_result *res)
{
    struct fe_tx *tx = s->tx;
    char addr[MS_SMTP_PATH_MAX + 1], q[300];
    struct ms_buf nb;
    size_t i, j, n;

    if (res->msg && ms_milter_msg_edited(res->msg)) {
        /* The same bound as the client's message (msg_begin). */
        ms_buf_init(&nb, s->srv->set.max_message_size + 16384);
        if (ms_milter_msg_write(res->msg, &nb) < 0) {
            ms_buf_free(&nb);
            reply(s, "552 5.3.4 Message too big after content filtering");
            log_tx(s, "rejected", "reason=milter_message_size");
            ms_counter_inc(s->srv->m.rejected);
            return -1;
        }
        ms_buf_free(&tx->msg);
        tx->msg = nb;
        tx->rec_at = tx->rec_off = 0;
    }
    if (res->chgfrom) {
        if (milter_addr(res->chgfrom, addr, sizeof(addr)) == 0) {
            free(tx->from);
            tx->from = ms_strdup(addr);
        } else {
            ms_warn("event=milter_bad_address qid=%s sid=%llu edit=chgfrom", tx->qid,
                    (unsigned long long)s->id);
        }
    }
    for (j = 0; j < res->ndelrcpt; j++) {
        if (milter_addr(res->delrcpt[j], addr, sizeof(addr)) < 0)
            continue;
        for (i = 0; i < tx->nrcpts; i++)
            if (strcasecmp(tx->rcpts[i].addr, addr) == 0) {
                free(tx->rcpts[i].addr);
                free(tx->rcpts[i].orcpt);
                memmove(tx->rcpts + i, tx->rcpts + i + 1,
                        (tx->nrcpts - i - 1) * sizeof(*tx->rcpts));
                tx->nrcpts--;
                break;
            }
    }
    for (j = 0; j < res->naddrcpt; j++) {
        if (milter_addr(res->addrcpt[j], addr, sizeof(addr)) < 0 || addr[0] == '\0') {
            ms_warn("event=milter_bad_address qid=%s sid=%llu edit=addrcpt", tx->qid,
                    (unsigned long long)s->id);
            continue;
        }
        for (i = 0; i < tx->nrcpts && strcasecmp(tx->rcpts[i].addr, addr) != 0; i++)
            ;
        if (i == tx->nrcpts && tx->nrcpts < s->srv->set.max_recipients)
            tx_add_rcpt(tx, addr, 0, "");
    }
    n = strlen(tx->milter_log);
    if (res->nedits > 0 && n < sizeof(tx->milter_log))
        n += (size_t)snprintf(tx->milter_log + n, sizeof(tx->milter_log) - n, "%smilter_edits=%zu",
                              n ? " " : "", res->nedits);
    if (res->quarantine) {
        free(tx->quarantine);
        tx->quarantine = ms_strdup(res->quarantine[0] ? res->quarantine : "milter");
        ms_log_quote(q, sizeof(q), tx->quarantine, strlen(tx->quarantine));
        if (n < sizeof(tx->milter_log) &&
            snprintf(tx->milter_log + n, sizeof(tx->milter_log) - n, "%squarantine=%s",
                     n ? " " : "", q) < 0)
            tx->milter_log[n] = '\0';
    }
    return 0;
}

/* The milters' verdict on the whole message. */
static void milter_eom_done(struct fe_session *s, const struct fe_milter_result *res)
{
    struct fe_tx *tx = s->tx;

    switch (res->verdict) {
    case FE_MILTER_REJECT:
    case FE_MILTER_TEMPFAIL:
        reply(s, "%s", res->reply);
        log_tx(s, res->verdict == FE_MILTER_REJECT ? "rejected" : "tempfail", NULL);
        fe_server_event(s->srv, "refused", tx->qid, s->ip, NULL, 0, res->reply);
        ms_counter_inc(res->verdict == FE_MILTER_REJECT ? s->srv->m.rejected
                                                        : s->srv->m.tempfail);
        tx_reset(s);
        return;
    case FE_MILTER_DISCARD:
        tx_discard(s);
        return;
    case FE_MILTER_CONTINUE:
        break;
    }
    if (milter_apply(s, res) < 0) {
        tx_reset(s);
        return;
    }
    if (tx->nrcpts == 0) { /* the milters removed every recipient */
        tx_discard(s);
        return;
    }
    data_submit(s);
}

static void milter_answer(struct fe_session *s, const struct fe_milter_result *res)
{
    struct fe_milter_wait *mw = s->mw;
    int refused = res->verdict == FE_MILTER_REJECT || res->verdict == FE_MILTER_TEMPFAIL;
    char q[300];

    s->mw = NULL;
    enter_state(s, mw->prev);
    if (refused && mw->kind != MW_EOM) {
        ms_log_quote(q, sizeof(q), res->reply, strlen(res->reply));
        ms_info("event=milter_refused sid=%llu qid=%s client=%s stage=%s milter=%s "
                "milter_action=%s reply=%s",
                (unsigned long long)s->id,
                mw->kind == MW_MAIL ? mw->w.qid : s->tx ? s->tx->qid : "-", s->ip,
                mw->kind == MW_CONN   ? "connect"
                : mw->kind == MW_HELO ? "helo"
                : mw->kind == MW_MAIL ? "mail"
                                      : "rcpt",
                res->milter ? res->milter : "-", res->action, q);
    }
    if (s->tx && res->milter && (mw->kind == MW_EOM || res->verdict == FE_MILTER_DISCARD))
        snprintf(s->tx->milter_log, sizeof(s->tx->milter_log), "milter_action=%s milter=%s",
                 res->action, res->milter);
    switch (mw->kind) {
    case MW_CONN:
        /* As Postfix does: the session goes on, its transactions get
         * the refusal (MAIL). */
        if (refused)
            snprintf(s->milter_refusal, sizeof(s->milter_refusal), "%s", res->reply);
        session_admitted_go(s);
        break;
    case MW_HELO:
        if (refused)
            reply_error(s, res->reply);
        else
            greet_done(s, mw->helo, strlen(mw->helo), mw->esmtp);
        break;
    case MW_MAIL:
        if (refused) {
            reply_error(s, res->reply);
            break;
        }
        mail_accept(s, &mw->w);
        if (res->verdict == FE_MILTER_DISCARD) {
            s->tx->discard = 1;
            snprintf(s->tx->milter_log, sizeof(s->tx->milter_log), "milter_action=%s milter=%s",
                     res->action, res->milter ? res->milter : "-");
        }
        break;
    case MW_RCPT:
        if (refused) {
            fe_server_event(s->srv, "refused", s->tx ? s->tx->qid : "", s->ip, mw->w.path, 0,
                            res->reply);
            reply_error(s, res->reply);
            break;
        }
        rcpt_accept(s, &mw->w);
        if (res->verdict == FE_MILTER_DISCARD)
            s->tx->discard = 1;
        break;
    case MW_EOM:
        milter_eom_done(s, res);
        break;
    }
    free(mw);
    answered(s);
}

void fe_sessions_milter_answer(void *arg, uint64_t sid, const struct fe_milter_result *res)
{
    struct fe_server *srv = arg;
    struct fe_session *s = ms_idmap_get(&srv->sessions, sid);

    if (s != NULL && s->state == FE_ST_MILTER && s->mw != NULL)
        milter_answer(s, res);
}

/* Back-pressure is over: read again if the session stopped for it. */
static void session_resume(struct fe_session *s)
{
    if (s->state != FE_ST_CLOSING)
        update_reading(s);
}

/* One SASL response (base64 or "*"), for the current mechanism. */
static void sasl_step(struct fe_session *s, const char *b64, size_t n)
{
    char dec[FE_AUTH_RESPONSE_MAX + 1], user[FE_AUTH_USER_MAX + 1], pass[FE_AUTH_PASS_MAX + 1];
    int len;

    if (n == 1 && b64[0] == '*') {
        s->sasl = SASL_NONE;
        enter_state(s, FE_ST_READY);
        reply_error(s, "501 5.0.0 Authentication cancelled");
        return;
    }
    if (n == 1 && b64[0] == '=') /* RFC 4954 4: an empty initial response */
        len = 0, dec[0] = '\0';
    else if ((len = fe_base64_decode(b64, n, dec, sizeof(dec))) < 0) {
        s->sasl = SASL_NONE;
        enter_state(s, FE_ST_READY);
        reply_error(s, "501 5.5.2 Cannot decode response");
        return;
    }
    switch (s->sasl) {
    case SASL_PLAIN:
        if (fe_sasl_plain(dec, (size_t)len, user, sizeof(user), pass, sizeof(pass)) < 0) {
            s->sasl = SASL_NONE;
            enter_state(s, FE_ST_READY);
            ms_counter_inc(s->srv->m.auth_fail);
            reply_error(s, "535 5.7.8 Authentication credentials invalid");
            break;
        }
        auth_check(s, user, pass);
        break;
    case SASL_LOGIN_USER:
        if (len == 0 || (size_t)len > FE_AUTH_USER_MAX || memchr(dec, '\0', (size_t)len)) {
            s->sasl = SASL_NONE;
            enter_state(s, FE_ST_READY);
            reply_error(s, "535 5.7.8 Authentication credentials invalid");
            break;
        }
        memcpy(s->sasl_user, dec, (size_t)len + 1);
        s->sasl = SASL_LOGIN_PASS;
        enter_state(s, FE_ST_AUTH);
        reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
        break;
    case SASL_LOGIN_PASS:
        if ((size_t)len > FE_AUTH_PASS_MAX || memchr(dec, '\0', (size_t)len)) {
            s->sasl = SASL_NONE;
            enter_state(s, FE_ST_READY);
            reply_error(s, "535 5.7.8 Authentication credentials invalid");
            break;
        }
        auth_check(s, s->sasl_user, dec);
        break;
    case SASL_NONE:
        break;
    }
    explicit_bzero(dec, sizeof(dec));
    explicit_bzero(pass, sizeof(pass));
}

static void cmd_auth(struct fe_session *s, const struct fe_smtp_cmd *c)
{
    const char *sp, *ir = NULL;
    size_t mlen, irlen = 0;

    if (s->auth_user[0]) {
        reply_error(s, "503 5.5.1 Error: already authenticated");
        return;
    }
    if (s->srv->passwd == NULL) {
        reply_error(s, "503 5.5.1 Error: authentication not enabled");
        return;
    }
    if (!s->t->tls) {
        reply_error(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return;
    }
    sp = memchr(c->args, ' ', c->argslen);
    mlen = sp ? (size_t)(sp - c->args) : c->argslen;
    if (sp) {
        ir = sp + 1;
        irlen = c->argslen - mlen - 1;
    }
    if (mlen == 5 && strncasecmp(c->args, "PLAIN", 5) == 0) {
        s->sasl = SASL_PLAIN;
    } else if (mlen == 5 && strncasecmp(c->args, "LOGIN", 5) == 0) {
        s->sasl = SASL_LOGIN_USER;
    } else {
        reply_error(s, "504 5.5.4 Unrecognized authentication type");
        return;
    }
    if (ir && irlen > 0) {
        sasl_step(s, ir, irlen);
        return;
    }
    enter_state(s, FE_ST_AUTH);
    reply(s, s->sasl == SASL_PLAIN ? "334 " : "334 VXNlcm5hbWU6"); /* "Username:" */
}

static const struct fe_cmd cmd_table[] = {
    {FE_VERB_HELO, cmd_helo, F_ARG | F_LAST},
    {FE_VERB_EHLO, cmd_ehlo, F_ARG | F_LAST},
    {FE_VERB_MAIL, cmd_mail, F_HELO | F_NOTX | F_TLS | F_AUTHD},
    {FE_VERB_RCPT, cmd_rcpt, F_HELO | F_TX},
    {FE_VERB_DATA, cmd_data, F_HELO | F_TX | F_NOARG | F_LAST},
    {FE_VERB_RSET, cmd_rset, F_NOARG},
    {FE_VERB_NOOP, cmd_noop, F_LAST},
    {FE_VERB_QUIT, cmd_quit, F_NOARG | F_LAST},
    {FE_VERB_VRFY, cmd_vrfy, F_ARG | F_LAST},
    {FE_VERB_EXPN, cmd_expn, F_LAST},
    {FE_VERB_HELP, cmd_help, 0},
    {FE_VERB_STARTTLS, cmd_starttls, F_HELO | F_NOTX | F_NOARG | F_LAST},
    {FE_VERB_AUTH, cmd_auth, F_HELO | F_NOTX | F_ARG | F_LAST},
    {FE_VERB_BDAT, cmd_bdat, F_HELO | F_TX},
};

static void command(struct fe_session *s, const char *line, size_t len)
{
    const struct fe_cmd *ct = NULL;
    struct fe_smtp_cmd c;
    const char *err = NULL;
    size_t i;
    int r;

    r = fe_smtp_parse(line, len, &c, &err);
    ms_counter_inc(s->srv->m.commands[c.verb]);
    if (++s->ncommands > s->srv->set.max_commands && s->srv->set.max_commands) {
        ms_counter_inc(s->srv->m.limit_hits[FE_LIMIT_COMMANDS]);
        ms_info("event=limit limit=max_commands sid=%llu client=%s", (unsigned long long)s->id,
                s->ip);
        reply(s, "421 4.7.0 %s Error: too many commands", s->srv->set.hostname);
        close_session(s);
        return;
    }
    if (r == 0 && c.verb == FE_VERB_BDAT) {
        /* RFC 3030 2: the chunk follows whatever we answer, so frame it
         * first.  Without a size the stream can not be framed: close. */
        uint64_t n;
        int last, size_ok;

        if (fe_smtp_bdat_args(c.args, c.argslen, &n, &last, &size_ok, &err) < 0) {
            if (!size_ok) {
                reply(s, "%s", err);
                reply(s, "421 4.5.0 %s Error: BDAT stream out of sync", s->srv->set.hostname);
                close_session(s);
                return;
            }
            s->skip_octets = n;
            reply_error(s, err);
            return;
        }
        s->skip_octets = n;
    }
    /* Draining: a transaction already sending BDAT chunks may finish. */
    if (s->srv->draining && !(c.verb == FE_VERB_BDAT && s->tx && s->tx->bdat)) {
        reply(s, "421 4.3.2 %s Service shutting down, try again later", s->srv->set.hostname);
        close_session(s);
        return;
    }
    if (r < 0) {
        reply_error(s, err);
        return;
    }
    for (i = 0; i < sizeof(cmd_table) / sizeof(cmd_table[0]); i++)
        if (cmd_table[i].verb == c.verb)
            ct = &cmd_table[i];
    if (ct == NULL) {
        reply_error(s, "500 5.5.1 Error: command not recognized");
        return;
    }
    if ((ct->flags & F_NOARG) && c.argslen > 0) {
        reply_error(s, "501 5.5.4 Syntax error: no parameters allowed");
        return;
    }
    if ((ct->flags & F_ARG) && c.argslen == 0) {
        reply_error(s, "501 5.5.4 Syntax error: argument required");
        return;
    }
    if ((ct->flags & F_HELO) && s->state == FE_ST_CONNECTED) {
        reply_error(s, "503 5.5.1 Error: send HELO/EHLO first");
        return;
    }
    if ((ct->flags & F_TX) && s->tx == NULL) {
        reply_error(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    if ((ct->flags & F_NOTX) && s->tx != NULL) {
        reply_error(s, c.verb == FE_VERB_MAIL ? "503 5.5.1 Error: nested MAIL command"
                                              : "503 5.5.1 Error: MAIL transaction in progress");
        return;
    }
    if ((ct->flags & F_TLS) && s->l->role == FE_ROLE_SUBMISSION && !s->t->tls) {
        reply_error(s, "530 5.7.0 Must issue a STARTTLS command first");
        return;
    }
    if ((ct->flags & F_AUTHD) && s->l->role != FE_ROLE_MX && !s->auth_user[0]) {
        reply_error(s, "530 5.7.0 Authentication required");
        return;
    }
    ct->run(s, &c);
    if ((ct->flags & F_LAST) && s->state != FE_ST_CLOSING)
        flush(s);
}

/* Give message octets buf[0..len) to the DATA or BDAT reader (the session
 * is in FE_ST_DATA or FE_ST_BDAT); returns how many it took, and ends the
 * message or the chunk when it is complete.  from_in: buf is s->in, which
 * loses what was taken before the end is handled, as a command would. */
static size_t body_feed(struct fe_session *s, const char *buf, size_t len, int from_in)
{
    struct fe_tx *tx = s->tx;
    size_t n;
    int r;

    if (s->state == FE_ST_DATA) {
        r = fe_data_feed(&tx->rd, buf, len);
        hdr_pump(tx);
        n = r == MS_EAGAIN ? len : (size_t)r;
        if (from_in)
            ms_buf_consume(&s->in, n);
        if (r != MS_EAGAIN)
            data_end(s, tx->rd.status);
        return n;
    }
    n = fe_bdat_feed(&tx->bd, buf, len);
    hdr_pump(tx);
    if (from_in)
        ms_buf_consume(&s->in, n);
    if (tx->bd.left == 0)
        bdat_chunk_end(s);
    return n;
}

/* Feed buffered input to the DATA reader or the command interpreter until
 * it runs out or the session has to wait. */
void fe__session_process(struct fe_session *s)
{
    static _Thread_local char line[FE_SMTP_AUTH_LINE_MAX + 1]; /* one per loop thread */
    size_t clen, max;
    const char *lf;
    int r;

    while (s->in.len > 0 && !busy(s)) {
        if (s->state == FE_ST_PROXY) {
            proxy_input(s);
            if (s->state == FE_ST_PROXY)
                break;
            continue;
        }
        if (s->skip_octets > 0) {
            clen = s->in.len < s->skip_octets ? s->in.len : (size_t)s->skip_octets;
            ms_buf_consume(&s->in, clen);
            s->skip_octets -= clen;
            continue;
        }
        if (s->state == FE_ST_DATA || s->state == FE_ST_BDAT) {
            body_feed(s, s->in.data, s->in.len, 1);
            continue;
        }
        if (s->skip_line) {
            if ((lf = memchr(s->in.data, '\n', s->in.len)) == NULL) {
                ms_buf_reset(&s->in);
                break;
            }
            ms_buf_consume(&s->in, (size_t)(lf - s->in.data) + 1);
            s->skip_line = 0;
            if (s->state == FE_ST_AUTH) {
                s->sasl = SASL_NONE;
                enter_state(s, FE_ST_READY);
            }
            reply_error(s, FE_REPLY_LINE_TOO_LONG);
            continue;
        }
        /* RFC 4954 4: AUTH lines may be longer than commands. */
        max = (s->state == FE_ST_AUTH ||
               (s->in.len >= 5 && strncasecmp(s->in.data, "AUTH ", 5) == 0))
                  ? FE_SMTP_AUTH_LINE_MAX
                  : FE_SMTP_LINE_MAX;
        r = fe_smtp_line(s->in.data, s->in.len, max, &clen);
        if (r == MS_EAGAIN)
            break;
        if (r == MS_ETOOBIG) {
            s->skip_line = 1;
            continue;
        }
        memcpy(line, s->in.data, clen);
        line[clen] = '\0';
        ms_buf_consume(&s->in, (size_t)r);
        if (s->state == FE_ST_AUTH)
            sasl_step(s, line, clen);
        else
            command(s, line, clen);
        explicit_bzero(line, clen);
    }
}

/* ---- transport callbacks, timer, life cycle ---- */

static void on_timer(uv_timer_t *h)
{
    struct fe_session *s = h->data;

    if (s->state == FE_ST_QUEUEING || s->state == FE_ST_AUTH_CHECK ||
        s->state == FE_ST_MILTER) { /* the milters have their own timeouts */
        arm_timer(s); /* we are the slow one, not the client */
        return;
    }
    if (s->state == FE_ST_LIMITS) {
        /* Redis is too slow: as if it were down ([ratelimit] redis_failure).
         * A verification that took too long has no answer either. */
        ms_idmap_del(&s->srv->limit_checks, s->limits->req);
        ms_warn("event=%s_timeout sid=%llu client=%s",
                s->limits->kind == W_VERIFY ? "verify" : "ratelimit", (unsigned long long)s->id,
                s->ip);
        if (s->limits->kind == W_VERIFY)
            snprintf(s->limits->verify_text, sizeof(s->limits->verify_text),
                     "verification timed out");
        limits_answer(s, FE_RL_FAILED);
        return;
    }
    ms_counter_inc(s->srv->m.timeouts);
    ms_info("event=timeout sid=%llu client=%s state=%s", (unsigned long long)s->id, s->ip,
            state_names[s->state]);
    if (s->state != FE_ST_TLS_WAIT && s->state != FE_ST_STARTTLS && s->state != FE_ST_PROXY)
        reply(s, "421 4.4.2 %s Error: timeout exceeded", s->srv->set.hostname);
    close_session(s);
}

static void arm_timer(struct fe_session *s)
{
    uint64_t ms;

    /* Waiting for Redis or a probe: the wait has its own timer. */
    if (s->state == FE_ST_CLOSING || s->state == FE_ST_LIMITS)
        return;
    /* RFC 5321 4.5.3.2: 5 minutes for commands and data blocks; a shorter
     * limit before the client has even said HELO. */
    ms = (s->state == FE_ST_CONNECTED || s->state == FE_ST_TLS_WAIT || s->state == FE_ST_PROXY)
             ? s->srv->set.greeting_timeout_ms
             : s->srv->set.command_timeout_ms;
    uv_timer_start(&s->timer, on_timer, ms, 0);
}

static void on_read(void *arg, const char *buf, size_t len)
{
    struct fe_session *s = arg;

    if (s->state == FE_ST_CLOSING)
        return;
    ms_counter_add(s->srv->m.bytes_in, len);
    if (fe_commit_is_member(&s->cm) || (s->tx && s->tx->txn_id == 0))
        commit_touch(s);
    /* Message octets with nothing buffered before them go from the
     * transport's read buffer straight to the reader: copied once into the
     * message, not first into `in` (issue 19).  What follows the message or
     * the chunk (the next commands) is buffered as any input. */
    while (len > 0 && s->in.len == 0 && (s->state == FE_ST_DATA || s->state == FE_ST_BDAT)) {
        size_t n = body_feed(s, buf, len, 0);

        if (n == 0)
            break;
        buf += n;
        len -= n;
    }
    if (len > 0 && ms_buf_append(&s->in, buf, len) != 0) {
        reply(s, "421 4.7.0 %s Error: too much unprocessed input", s->srv->set.hostname);
        close_session(s);
        return;
    }
    arm_timer(s);
    fe__session_process(s);
    flush(s);
}

static void banner(struct fe_session *s)
{
    enter_state(s, FE_ST_CONNECTED);
    reply(s, "220 %s ESMTP Mailstream", s->srv->set.hostname);
}

static void on_tls(void *arg, int err)
{
    struct fe_session *s = arg;

    if (s->state == FE_ST_CLOSING)
        return;
    if (err < 0) {
        ms_counter_inc(s->srv->m.tls_fail);
        close_session(s);
        return;
    }
    ms_counter_inc(s->srv->m.tls_ok);
    if (s->state == FE_ST_STARTTLS)
        ms_counter_inc(s->l->m_starttls);
    ms_debug("event=tls sid=%llu version=%s cipher=%s", (unsigned long long)s->id,
             s->t->tls_version, s->t->tls_cipher);
    if (s->state == FE_ST_TLS_WAIT) {
        banner(s);
    } else {
        /* RFC 3207 4.2: forget everything learnt before TLS. */
        s->helo[0] = '\0';
        s->esmtp = 0;
        s->auth_user[0] = '\0';
        enter_state(s, FE_ST_CONNECTED);
    }
    arm_timer(s);
    drain_if_needed(s);
    flush(s);
}

static void on_drain(void *arg)
{
    struct fe_session *s = arg;

    update_reading(s);
}

static void on_error(void *arg, int err)
{
    struct fe_session *s = arg;

    ms_debug("event=disconnect sid=%llu client=%s state=%s error=%s", (unsigned long long)s->id,
             s->ip, state_names[s->state], ms_err_name(err));
    if (err == MS_ECLOSED && s->state == FE_ST_QUEUEING && !s->peer_eof) {
        /* End of input behind a message still being queued: the client
         * half-closed and waits for its replies (RFC 2920 3.1). Answer the
         * message and whatever was pipelined before the end (QUIT), then
         * close (session_queued). Closing now would lose the 250 of a
         * message that is queued: the client would send it again. */
        s->peer_eof = 1;
        return;
    }
    if (s->tx && s->state != FE_ST_QUEUEING)
        ms_info("event=lost qid=%s sid=%llu client=%s state=%s", s->tx->qid,
                (unsigned long long)s->id, s->ip, state_names[s->state]);
    ms_buf_reset(&s->out); /* nobody is listening */
    close_session(s);
}

static void session_free(struct fe_session *s)
{
    struct fe_server *srv = s->srv;

    tx_reset(s);
    fe_commit_leave(&srv->commit, &s->cm);
    ms_idmap_del(&srv->sessions, s->id);
    if (s->ip_key)
        fe_conn_release(srv->conns, s->ip_key);
    ms_list_remove(&s->live);
    ms_buf_free(&s->in);
    ms_buf_free(&s->out);
    ms_gauge_add(srv->m.sessions, -1);
    ms_debug("event=session_end sid=%llu client=%s transactions=%llu", (unsigned long long)s->id,
             s->ip, (unsigned long long)s->ntx);
    free(s);
}

static void on_close(void *arg)
{
    struct fe_session *s = arg;

    if (--s->handles == 0)
        session_free(s);
}

static void timer_close_cb(uv_handle_t *h)
{
    on_close(h->data);
}

static void close_session(struct fe_session *s)
{
    if (s->state == FE_ST_CLOSING)
        return;
    fe_commit_leave(&s->srv->commit, &s->cm); /* it will hand nothing over now */
    /* A transaction awaiting its report is dropped from the pending table;
     * the report, when it comes, finds nobody. */
    if (s->tx && s->tx->txn_id) {
        ms_info("event=disconnect_while_queueing qid=%s sid=%llu client=%s", s->tx->qid,
                (unsigned long long)s->id, s->ip);
        ms_idmap_del(&s->srv->pending, s->tx->txn_id);
        s->tx->txn_id = 0;
    }
    if (s->limits) {
        ms_idmap_del(&s->srv->limit_checks, s->limits->req);
        limits_wait_free(s->limits);
        s->limits = NULL;
    }
    /* The milters' answers find nobody from now on (fe_milter.h). */
    fe_milter_set_free(s->milters);
    s->milters = NULL;
    free(s->mw);
    s->mw = NULL;
    if (s->out.len > 0 && !s->t->closing)
        ms_conn_write(s->t, s->out.data, s->out.len);
    ms_buf_reset(&s->out);
    enter_state(s, FE_ST_CLOSING);
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, timer_close_cb);
    ms_conn_close(s->t);
}

const struct ms_conn_cb fe_session_transport_cb = {
    .on_read = on_read,
    .on_tls = on_tls,
    .on_drain = on_drain,
    .on_error = on_error,
    .on_close = on_close,
};

/* The client's address: the socket peer, or what the PROXY header says. */
static void set_client(struct fe_session *s, const struct sockaddr *sa)
{
    memcpy(&s->client, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    ms_addr_str(sa, s->ip, sizeof(s->ip));
    /* An IPv4-mapped IPv6 peer is an IPv4 client. */
    if (strncmp(s->ip, "::ffff:", 7) == 0 && strchr(s->ip + 7, '.'))
        memmove(s->ip, s->ip + 7, strlen(s->ip + 7) + 1);
    s->port = ms_addr_port(sa);
    s->trusted = fe_cidr_match(s->srv->set.trusted, s->srv->set.ntrusted, sa);
}

/* FNV-1a, never 0: the key of an address in srv->conns->per_ip.  XXX: two
 * addresses with the same 64-bit hash would share a count. */
static uint64_t ip_key(const char *ip)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; *ip; ip++)
        h = (h ^ (unsigned char)*ip) * 0x100000001b3ULL;
    return h | 1;
}

/* The client is known: the named connection limits, back-pressure, then
 * the connection rate in Redis; then session_admitted(). */
static void session_start(struct fe_session *s)
{
    struct fe_server *srv = s->srv;
    const char *host = srv->set.hostname;
    char line[256];
    uint64_t n, key;
    struct fe_limits_wait *w;
    int r;

    /* Both limits are process-wide: the table is shared by every loop. */
    key = ip_key(s->ip);
    r = fe_conn_admit(srv->conns, key, srv->set.max_connections, srv->set.max_connections_per_ip,
                      &n);
    if (r == FE_LIMIT_CONNECTIONS) {
        ms_counter_inc(srv->m.limit_hits[FE_LIMIT_CONNECTIONS]);
        ms_info("event=limit limit=max_connections sid=%llu client=%s",
                (unsigned long long)s->id, s->ip);
        snprintf(line, sizeof(line), "421 4.7.0 %s Error: too many connections, try again later",
                 host);
        refuse_connection(s, line);
        return;
    }
    if (r == FE_LIMIT_CONN_PER_IP) {
        ms_counter_inc(srv->m.limit_hits[FE_LIMIT_CONN_PER_IP]);
        ms_info("event=limit limit=max_connections_per_ip sid=%llu client=%s open=%llu",
                (unsigned long long)s->id, s->ip, (unsigned long long)n);
        snprintf(line, sizeof(line),
                 "421 4.7.0 %s Error: too many connections from your address, try again later",
                 host);
        refuse_connection(s, line);
        return;
    }
    s->ip_key = key;
    /* The queue is backed up: new clients are better off elsewhere. */
    if (srv->set.max_pending && srv->pending.count >= srv->set.max_pending) {
        ms_counter_inc(srv->m.limit_hits[FE_LIMIT_BACKPRESSURE]);
        ms_info("event=limit limit=max_pending_messages sid=%llu client=%s pending=%zu",
                (unsigned long long)s->id, s->ip, srv->pending.count);
        snprintf(line, sizeof(line),
                 "421 4.3.2 %s Service temporarily overloaded, try again later", host);
        refuse_connection(s, line);
        return;
    }
    w = limits_wait_new(W_CONN, FE_RL_TAKE);
    add_rate(s, w, FE_RATE_CONN_IP, "conn:", s->ip);
    limits_check(s, w);
}

/* Admitted: the milters' connect stage first, when the listener has them. */
static void session_admitted(struct fe_session *s)
{
    struct fe_server *srv = s->srv;
    char port[16], name[sizeof(s->ip) + 16];

    if (srv->set.milter.n == 0 || !s->l->milters) {
        session_admitted_go(s);
        return;
    }
    s->milters = fe_milter_set_new(srv->loop, &srv->set.milter, fe_sessions_milter_answer, srv,
                                   s->id);
    /* We do not look client names up: Sendmail's "[addr]" for the
     * connect command, Postfix's "unknown" for {client_name}. */
    snprintf(port, sizeof(port), "%d", s->port);
    snprintf(name, sizeof(name), "unknown [%s]", s->ip);
    fe_milter_macro(s->milters, "j", srv->set.hostname);
    fe_milter_macro(s->milters, "_", name);
    fe_milter_macro(s->milters, "{daemon_name}", s->l->name);
    fe_milter_macro(s->milters, "{client_addr}", s->ip);
    fe_milter_macro(s->milters, "{client_name}", "unknown");
    fe_milter_macro(s->milters, "{client_port}", port);
    snprintf(name, sizeof(name), "[%s]", s->ip);
    milter_wait(s, MW_CONN, NULL);
    fe_milter_connect(s->milters, name, strchr(s->ip, ':') ? '6' : '4', (uint16_t)s->port, s->ip);
}

/* Past the milters: the banner, or the handshake before it. */
static void session_admitted_go(struct fe_session *s)
{
    struct fe_server *srv = s->srv;
    char *early;
    size_t n;

    if (s->l->role == FE_ROLE_SUBMISSIONS) {
        enter_state(s, FE_ST_TLS_WAIT);
        if (srv->tls == NULL || ms_conn_tls_accept(s->t, srv->tls) < 0) {
            close_session(s);
            return;
        }
        arm_timer(s);
        flush(s);
        /* A ClientHello that came with the PROXY header is TLS input. */
        if (s->in.len > 0 && s->state != FE_ST_CLOSING) {
            early = ms_buf_steal(&s->in, &n);
            ms_conn_unread(s->t, early, n);
            free(early);
        }
        return;
    }
    banner(s);
    if (srv->draining) {
        drain_if_needed(s);
        if (s->state == FE_ST_CLOSING)
            return;
    }
    arm_timer(s);
    flush(s);
}

/* The PROXY header (fe_proxy.h), before anything else on a proxy listener. */
static void proxy_input(struct fe_session *s)
{
    struct fe_proxy p;
    int r;

    r = fe_proxy_parse(s->in.data, s->in.len, &p);
    if (r == MS_EAGAIN)
        return;
    if (r < 0) {
        ms_counter_inc(s->srv->m.proxy_bad);
        ms_info("event=proxy_malformed sid=%llu peer=%s listener=%s", (unsigned long long)s->id,
                s->ip, s->l->name);
        ms_buf_reset(&s->in);
        close_session(s);
        return;
    }
    ms_buf_consume(&s->in, (size_t)r);
    ms_counter_inc(s->srv->m.proxy_ok);
    snprintf(s->proxy_peer, sizeof(s->proxy_peer), "%s", s->ip);
    if (!p.local)
        set_client(s, (struct sockaddr *)&p.src);
    ms_debug("event=proxy sid=%llu peer=%s client=%s port=%d version=%d local=%d authority=%s",
             (unsigned long long)s->id, s->proxy_peer, s->ip, s->port, p.version, p.local,
             p.authority[0] ? p.authority : "-");
    session_start(s);
}

struct fe_session *fe_session_new(struct fe_server *srv, struct fe_listener *l,
                                  struct ms_conn *t)
{
    struct fe_session *s = ms_calloc(1, sizeof(*s));

    s->id = ++srv->next_id;
    s->srv = srv;
    s->l = l;
    s->t = t;
    t->cb = fe_session_transport_cb;
    t->arg = s;
    s->handles = 2;
    ms_buf_init(&s->in, FE_INPUT_MAX + MS_CONN_READ_MAX);
    ms_buf_init(&s->out, 1024 * 1024);
    uv_timer_init(srv->loop, &s->timer);
    s->timer.data = s;
    set_client(s, (struct sockaddr *)&t->peer);
    ms_list_insert_head(&srv->live, &s->live);
    ms_idmap_put(&srv->sessions, s->id, s);
    ms_counter_inc(l->m_conn);
    ms_gauge_add(srv->m.sessions, 1);
    ms_debug("event=connect sid=%llu client=%s port=%d listener=%s trusted=%d",
             (unsigned long long)s->id, s->ip, s->port, l->name, s->trusted);
    if (l->proxy) {
        /* Only a balancer we trust may tell us who the client is. */
        if (!fe_cidr_match(srv->set.proxy_trusted, srv->set.nproxy_trusted,
                           (struct sockaddr *)&t->peer)) {
            ms_counter_inc(srv->m.proxy_untrusted);
            ms_warn("event=proxy_untrusted sid=%llu peer=%s listener=%s",
                    (unsigned long long)s->id, s->ip, l->name);
            close_session(s);
            return s;
        }
        s->state = FE_ST_PROXY;
        arm_timer(s);
        flush(s);
        return s;
    }
    session_start(s);
    return s;
}

uint64_t fe_session_id(const struct fe_session *s)
{
    return s->id;
}

/* ---- the server's sessions ---- */

#define SESSION(n) ms_list_entry((n), struct fe_session, live)

void fe_sessions_report(void *arg, uint64_t id, int err, const char *errstr)
{
    struct fe_server *srv = arg;
    struct fe_session *s;
    struct ms_list *n;

    if (id == FE_EVENT_REPORT_ID)
        return; /* an event record (fe_server_event), no transaction */
    s = ms_idmap_del(&srv->pending, id);
    fe_server_reported(srv, id);
    if (s == NULL) {
        /* The client left while we waited: it will send again. */
        ms_info("event=report_without_session txn=%llu result=%s", (unsigned long long)id,
                err == 0 ? "queued" : ms_err_name(err));
        return;
    }
    session_queued(s, err, errstr);
    /* Back-pressure over: let paused sessions read again. */
    if (srv->overloaded && srv->pending.count < srv->set.max_pending) {
        srv->overloaded = 0;
        ms_info("event=backpressure_off pending=%zu", srv->pending.count);
        ms_list_foreach (n, &srv->live)
            session_resume(SESSION(n));
    }
}

void fe_sessions_limits_answer(void *arg, uint64_t id, int result)
{
    struct fe_server *srv = arg;
    struct fe_session *s = ms_idmap_del(&srv->limit_checks, id);

    if (s != NULL) /* else: the session is gone, or it stopped waiting */
        limits_answer(s, result);
}

void fe_sessions_verify_answer(void *arg, uint64_t id, int result, const char *text)
{
    struct fe_server *srv = arg;
    struct fe_session *s = ms_idmap_del(&srv->limit_checks, id);

    if (s == NULL || s->limits == NULL || s->limits->kind != W_VERIFY)
        return; /* the session is gone, or it stopped waiting */
    snprintf(s->limits->verify_text, sizeof(s->limits->verify_text), "%s", text);
    limits_answer(s, result == FE_VERIFY_OK        ? FE_RL_OK
                     : result == FE_VERIFY_UNKNOWN ? FE_RL_UNKNOWN
                                                   : FE_RL_FAILED);
}

void fe_sessions_drain(struct fe_server *srv)
{
    struct ms_list *n;

    srv->draining = 1;
    /* Closing never frees synchronously (only close callbacks do), so the
     * list stays intact while we walk it. */
    ms_list_foreach (n, &srv->live) {
        struct fe_session *s = SESSION(n);

        drain_if_needed(s);
        if (s->state != FE_ST_CLOSING)
            flush(s);
    }
}

void fe_sessions_abort(struct fe_server *srv)
{
    struct ms_list *n;

    ms_list_foreach (n, &srv->live) {
        struct fe_session *s = SESSION(n);

        if (s->state == FE_ST_CLOSING)
            continue;
        if (s->state != FE_ST_TLS_WAIT && s->state != FE_ST_STARTTLS && s->state != FE_ST_PROXY)
            reply(s, "421 4.3.2 %s Service shutting down, try again later", s->srv->set.hostname);
        close_session(s);
    }
}
