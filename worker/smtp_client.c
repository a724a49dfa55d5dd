/*
 * smtp_client.c - asynchronous SMTP client transaction (smtp_client.h).
 *
 * One session struct owns the transport (ms_conn.h: the socket and
 * TLS), the timer, the input buffer and the stuffed message; all state
 * changes go through smtp_enter_state(), which also arms the state's
 * timeout.  Replies are parsed by ms_reply_parse() (smtp_reply.c) and
 * dispatched on the state.  Memory is released only in the close
 * callbacks (the timer's and the transport's on_close).
 */
#include "smtp_client.h"
#include "dotstuff.h"
#include "smtp_auth.h"
#include "ms_base64.h"
#include "ms_buf.h"
#include "ms_conn.h"
#include "ms_dsn.h"
#include "ms_error.h"
#include "ms_list.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_tlsrpt.h"
#include "ms_net.h"

#include <arpa/inet.h>
#include <sys/un.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for the longest complete reply the parser accepts. */
#define WK_SMTP_INPUT_MAX (MS_REPLY_LINES_MAX * (MS_REPLY_LINE_MAX + 2))
/* Longest TLS name (a DNS name, an IP literal, or a socket path). */
#define WK_SMTP_TLS_NAME_MAX 255
/* "unix:" and the longest sun_path, or "[v6]:port". */
#define WK_SMTP_PEER_MAX 128
/* What a parked connection is found by: address or socket path, TLS
 * policy with its label (WK_SMTP_TLS_LABEL_MAX) and counts of names and
 * TLSA records, protocol, TLS name (WK_SMTP_TLS_NAME_MAX), HELO name (checked
 * against MS_SMTP_PATH_MAX) and AUTH user (WK_AUTH_FIELD_MAX), with
 * separators: every key fits, none is cut (two keys cut alike could hand a
 * connection authenticated as one user to another). */
#define WK_SMTP_CACHE_KEY_MAX                                                          \
    (WK_SMTP_PEER_MAX + WK_SMTP_TLS_NAME_MAX + MS_SMTP_PATH_MAX + WK_AUTH_FIELD_MAX +      \
     WK_SMTP_TLS_LABEL_MAX + 2 * 20 + 32)
/* The RFC 3461 parameters of one RCPT (" NOTIFY=... ORCPT=type;xtext") and
 * of MAIL (" RET=HDRS ENVID=xtext"), their terminating NUL included. */
#define WK_SMTP_RCPT_DSN_MAX                                                         \
    (sizeof(" NOTIFY=SUCCESS,FAILURE,DELAY") + sizeof(" ORCPT=;") +                  \
     WK_SMTP_ORCPT_TYPE_MAX + MS_XTEXT_MAX(WK_SMTP_ORCPT_MAX))
#define WK_SMTP_MAIL_DSN_MAX                                                         \
    (sizeof(" RET=HDRS") + sizeof(" ENVID=") + MS_XTEXT_MAX(WK_SMTP_ENVID_MAX))
/* The other MAIL parameters: " SIZE=<20 digits> BODY=BINARYMIME SMTPUTF8
 * REQUIRETLS" with room to spare. */
#define WK_SMTP_MAIL_PARAMS_MAX (96 + WK_SMTP_MAIL_DSN_MAX)
/* Longest command we send: "AUTH PLAIN <response>\r\n" (RFC 4954 §4 allows
 * 12288 octets; ours are bounded by WK_AUTH_FIELD_MAX), or "RCPT
 * TO:<path> NOTIFY=... ORCPT=...\r\n", "MAIL FROM:<path> SIZE=...\r\n". */
#define WK_SMTP_LINE_MAX_                                                        \
    (MS_SMTP_PATH_MAX + 32 +                                                     \
     (WK_SMTP_RCPT_DSN_MAX > WK_SMTP_MAIL_PARAMS_MAX ? WK_SMTP_RCPT_DSN_MAX       \
                                                     : WK_SMTP_MAIL_PARAMS_MAX))
#define WK_SMTP_COMMAND_MAX                                                      \
    (WK_AUTH_PLAIN_MAX + 16 > WK_SMTP_LINE_MAX_ ? WK_AUTH_PLAIN_MAX + 16         \
                                                : WK_SMTP_LINE_MAX_)

enum smtp_state {
    SMTP_CONNECT,
    SMTP_BANNER,
    SMTP_EHLO,
    SMTP_STARTTLS,
    SMTP_TLS,
    SMTP_HELO,
    SMTP_AUTH,
    SMTP_MAIL,
    SMTP_RCPT,
    SMTP_GATE,
    SMTP_DATA,
    SMTP_BODY,
    SMTP_BDAT,
    SMTP_DOT,
    SMTP_QUIT,
    SMTP_RSET,
    SMTP_IDLE,
    SMTP_CLOSED,
    SMTP__NSTATES
};

static const char *const state_names[SMTP__NSTATES] = {
    "connect", "banner", "ehlo", "starttls", "tls", "helo", "auth", "mail", "rcpt",
    "gate", "data", "body", "bdat", "dot", "quit", "rset", "idle", "closed",
};

struct wk_smtp {
    /* The connection: TCP, or a UNIX-domain socket for lmtp:unix:; NULL
     * when connecting failed at once, and once it has closed. */
    struct ms_conn *t;
    ms_conn_connect_fn *connect;
    uv_timer_t timer;
    struct sockaddr_storage addr;   /* AF_INET, AF_INET6 or AF_UNIX */
    uv_loop_t *loop;
    int timer_open;                 /* the timer's close callback is still due */
    int connect_err;                /* connecting failed at once: connect_why */
    char connect_why[MS_CONN_ERROR_MAX];
    int reconnecting;               /* t is closing for a plaintext retry */
    int tls_fallback;               /* `may`: TLS failed, now in plaintext */
    enum smtp_state state;
    uint64_t timeout_ms[SMTP__NSTATES];
    char peer[WK_SMTP_PEER_MAX];    /* ip:port or unix:/path, for diagnostics */
    char log_id[64];

    /* AUTH (RFC 4954), per connection: a reused one is authenticated. */
    char *auth_user, *auth_password;
    int auth_plaintext;
    unsigned auth_mechs;            /* allowed (WK_AUTH_* mask) */
    enum ms_auth_mech auth_mech;
    int auth_step;                  /* LOGIN: 334 answered so far */
    int auth_done;

    /* The transaction. */
    char *helo_name;
    char *mail_from;
    int body_8bitmime, body_binarymime, smtputf8;
    int requiretls;                 /* RFC 8689 */
    int try_next;                   /* refused for REQUIRETLS: another address may do */
    char *mail_dsn;                 /* RFC 3461 RET and ENVID for MAIL, or NULL */
    char **rcpt_dsn;                /* per recipient NOTIFY and ORCPT, or NULL */
    int chunking;                   /* BDAT (RFC 3030) for this message */
    size_t chunk_end;               /* BDAT: end of the chunk being written */
    int lmtp;
    size_t lmtp_next;               /* LMTP: next recipient whose data reply is due */
    int pipelined;                  /* RCPTs and DATA went with MAIL (RFC 2920) */
    void (*gate)(void *, uint64_t); /* duplicate fencing: asked before DATA */
    uint64_t deadline_ms;           /* its answer: end of data no later (uv_now) */
    int fenced;                     /* the gate refused */
    int data_ready;                 /* the pipelined DATA's 354 came while the gate
                                     * was out: the body waits for the answer */
    uint64_t end_sent_ns;           /* uv_hrtime when the end of data was written; 0 not yet */
    /* Connection reuse. */
    wk_smtp_cache *cache;
    char cache_key[WK_SMTP_CACHE_KEY_MAX];
    struct ms_list idle_node;       /* on the cache's idle list while SMTP_IDLE */
    int reused;
    unsigned nmsgs;                 /* transactions finished on this connection */
    unsigned max_msgs;              /* the last message's limit (wk_smtp_msg); 0: the cache's */
    int rset_due;                   /* reused: send RSET on the next loop turn */
    int rset_pipelined;             /* reused: MAIL, RCPT, DATA went with RSET */
    /* Commands of a pipelined group wait here and go out in one write. */
    char *cork;
    size_t cork_len, cork_cap;
    int corked;                     /* smtp_cork() depth */
    int abort_data;                 /* pipelined DATA with no recipient accepted */
    /* TLS, through the transport. */
    enum wk_tls_policy tls_policy;
    struct ms_tls_ctx *tls_ctx;
    char *tls_name;
    char tls_info[WK_SMTP_TLS_INFO_MAX];
    char tls_label[WK_SMTP_TLS_LABEL_MAX];
    char **tls_match;               /* owned copies (ms_tls_policy.match) */
    size_t tls_nmatch;
    struct ms_tlsa *tlsa;           /* owned copies, data included */
    size_t ntlsa;
    int tls_auth;                   /* as in wk_smtp_result */
    int tls_result;                 /* as in wk_smtp_result */
    char local_ip[INET6_ADDRSTRLEN + 2]; /* as in wk_smtp_result */
    size_t nrcpts;
    char **rcpts;
    size_t msg_len;                 /* unstuffed, for SIZE= */
    const char *src;                /* the caller's message until MAIL (not ours) */
    size_t src_len;
    /* From MAIL on, the message as it goes on the wire (body_len octets):
     * stuffed with the terminator (DATA), or with CRLF line ends (BDAT), or
     * as given (BINARYMIME).  Its first body_ref_len octets are the
     * caller's (src, not copied: smtp_body_prepare), the rest are body. */
    const char *body_ref;
    size_t body_ref_len;
    char *body;
    int body_ready;
    size_t body_len, body_off;

    /* Progress. */
    struct ms_buf in;
    struct ms_ehlo ehlo;
    size_t rcpt_next;               /* next RCPT to send / being answered */
    size_t naccepted;               /* RCPTs answered 2yz */
    int *final;                     /* per recipient: result is final */
    struct wk_smtp_rcpt_result *results;

    wk_smtp_cb cb;
    void *arg;
    uint64_t id;
};

struct wk_smtp_cache {
    uint64_t idle_ms;
    unsigned max_msgs;              /* transactions per connection; 0: no limit */
    struct ms_list idle;            /* wk_smtp.idle_node, most recently parked first */
    size_t nidle, max_idle;
    size_t refs;                    /* sessions created with it, not yet freed */
    int closing;
};

int wk_tls_policy_parse(const char *name)
{
    static const char *const names[] = {"none", "may", "encrypt", "verify"};
    int i;

    for (i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *wk_tls_policy_name(enum wk_tls_policy p)
{
    static const char *const names[] = {"none", "may", "encrypt", "verify"};
    return (unsigned)p < 4 ? names[p] : "none";
}

static void smtp_timeout_cb(uv_timer_t *t);
static int tls_may_fallback(wk_smtp *s, const char *why);

/* TLS is up (the handshake done, the certificate accepted by policy). */
static int tls_up(const wk_smtp *s)
{
    return s->t && s->t->tls;
}

void wk_smtp_timeouts_default(struct wk_smtp_timeouts *t)
{
    t->connect = WK_SMTP_TIMEOUT_CONNECT_MS;
    t->banner = WK_SMTP_TIMEOUT_BANNER_MS;
    t->helo = WK_SMTP_TIMEOUT_HELO_MS;
    t->mail = WK_SMTP_TIMEOUT_MAIL_MS;
    t->rcpt = WK_SMTP_TIMEOUT_RCPT_MS;
    t->data = WK_SMTP_TIMEOUT_DATA_MS;
    t->block = WK_SMTP_TIMEOUT_BLOCK_MS;
    t->dot = WK_SMTP_TIMEOUT_DOT_MS;
    t->quit = WK_SMTP_TIMEOUT_QUIT_MS;
}

int wk_smtp_path_ok(const char *addr)
{
    const unsigned char *p;

    if (strlen(addr) > MS_SMTP_ADDR_MAX)
        return 0;
    for (p = (const unsigned char *)addr; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '<' || *p == '>')
            return 0;
    return 1;
}

static int has_non_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 1;
    return 0;
}

enum wk_requiretls wk_requiretls_check(int local, int lmtp, int tls_verified, unsigned ehlo_flags)
{
    /* The message leaves no network hop behind: nothing to protect. */
    if (local)
        return WK_REQUIRETLS_OK;
    /* §4.2.1 step 4: tls_verified is 1 for a chain that verified for the
     * name and for a DANE TLSA match (RFC 7672) alike.  XXX step 2 (the MX
     * lookup validated by DNSSEC or MTA-STS) is not yet an input: an MX
     * host from insecure DNS whose certificate names it passes. */
    if (!tls_verified)
        return WK_REQUIRETLS_NO_TLS;
    /* Step 5.  An LMTP server delivers to the mailbox and relays nothing:
     * the requirement ends with it (§4.4), so it need not say REQUIRETLS. */
    if (!(ehlo_flags & MS_EHLO_REQUIRETLS) && !lmtp)
        return WK_REQUIRETLS_NOT_OFFERED;
    return WK_REQUIRETLS_OK;
}

/* RFC 3461 §5.2.1 (d), (c): RET and ENVID for MAIL, as they came, for a
 * server that offers DSN; NULL when there are none. */
static char *dsn_mail_params(const struct wk_smtp_msg *msg, const char *log_id)
{
    char out[WK_SMTP_MAIL_DSN_MAX], env[MS_XTEXT_MAX(WK_SMTP_ENVID_MAX) + 1];
    size_t n = 0;

    if (msg->dsn_ret == MS_DSN_RET_FULL || msg->dsn_ret == MS_DSN_RET_HDRS)
        n += (size_t)snprintf(out + n, sizeof(out) - n, " RET=%s",
                              msg->dsn_ret == MS_DSN_RET_FULL ? "FULL" : "HDRS");
    if (msg->dsn_envid && *msg->dsn_envid) {
        if (strlen(msg->dsn_envid) > WK_SMTP_ENVID_MAX ||
            ms_xtext_encode(msg->dsn_envid, env, sizeof(env)) < 0)
            ms_warn("event=smtp_dsn_param_dropped qid=%s param=ENVID reason=too_long", log_id);
        else
            n += (size_t)snprintf(out + n, sizeof(out) - n, " ENVID=%s", env);
    }
    return n ? ms_strdup(out) : NULL;
}

/* An ORCPT address type (RFC 3461 §4.2: an atom such as "rfc822"). */
static int orcpt_type_ok(const char *t, size_t n)
{
    size_t i;

    if (n == 0 || n > WK_SMTP_ORCPT_TYPE_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return 0;
    }
    return 1;
}

/* RFC 3461 §5.2.1 (a), (b): NOTIFY and ORCPT of recipient i, as they came,
 * for a server that offers DSN; NULL when there are none. */
static char *dsn_rcpt_params(const struct wk_smtp_msg *msg, size_t i, const char *log_id)
{
    char out[WK_SMTP_RCPT_DSN_MAX], notify[32], addr[MS_XTEXT_MAX(WK_SMTP_ORCPT_MAX) + 1];
    const char *orcpt = msg->dsn_orcpt ? msg->dsn_orcpt[i] : NULL, *semi;
    uint32_t bits = msg->dsn_notify ? msg->dsn_notify[i] : 0;
    size_t n = 0;

    if (bits) {
        if (ms_dsn_notify_param(bits, notify, sizeof(notify)) == 0)
            ms_warn("event=smtp_dsn_param_dropped qid=%s param=NOTIFY reason=malformed "
                    "bits=%u", log_id, (unsigned)bits);
        else
            n += (size_t)snprintf(out + n, sizeof(out) - n, " NOTIFY=%s", notify);
    }
    if (orcpt && *orcpt) {
        semi = strchr(orcpt, ';');
        if (semi == NULL || !orcpt_type_ok(orcpt, (size_t)(semi - orcpt)) ||
            strlen(semi + 1) > WK_SMTP_ORCPT_MAX ||
            ms_xtext_encode(semi + 1, addr, sizeof(addr)) <= 0)
            ms_warn("event=smtp_dsn_param_dropped qid=%s param=ORCPT reason=malformed", log_id);
        else
            n += (size_t)snprintf(out + n, sizeof(out) - n, " ORCPT=%.*s;%s",
                                  (int)(semi - orcpt), orcpt, addr);
    }
    return n ? ms_strdup(out) : NULL;
}

/* ---- lifetime ---- */

/* Forget the transaction (the connection, TLS and EHLO stay). */
static void tx_free(wk_smtp *s)
{
    size_t i;

    for (i = 0; i < s->nrcpts; i++) {
        free(s->rcpts[i]);
        if (s->rcpt_dsn)
            free(s->rcpt_dsn[i]);
    }
    free(s->rcpts);
    free(s->rcpt_dsn);
    free(s->mail_dsn);
    free(s->final);
    free(s->results);
    free(s->body);
    free(s->mail_from);
    s->body_ref = NULL;
    s->body_ref_len = 0;
    s->body_ready = 0;
    s->rcpt_dsn = NULL;
    s->mail_dsn = NULL;
    s->requiretls = s->try_next = 0;
    s->rcpts = NULL;
    s->final = NULL;
    s->results = NULL;
    s->body = NULL;
    s->src = NULL;
    s->src_len = 0;
    s->mail_from = NULL;
    s->nrcpts = s->rcpt_next = s->naccepted = s->lmtp_next = 0;
    s->body_len = s->body_off = s->msg_len = 0;
    s->pipelined = s->abort_data = s->rset_pipelined = s->data_ready = 0;
    s->gate = NULL;
    s->deadline_ms = 0;
    s->fenced = 0;
    s->end_sent_ns = 0;
    s->chunking = 0;
    s->chunk_end = 0;
    s->cb = NULL;
}

static void tx_setup(wk_smtp *s, const struct wk_smtp_msg *msg)
{
    size_t i;

    snprintf(s->log_id, sizeof(s->log_id), "%s", msg->log_id ? msg->log_id : "-");
    s->max_msgs = msg->max_msgs;
    s->mail_from = ms_strdup(msg->mail_from);
    s->body_8bitmime = msg->body_8bitmime;
    s->body_binarymime = msg->body_binarymime;
    s->smtputf8 = msg->smtputf8;
    s->requiretls = msg->requiretls;
    s->try_next = 0;
    s->mail_dsn = dsn_mail_params(msg, s->log_id);
    s->nrcpts = msg->nrcpts;
    s->rcpts = ms_calloc(msg->nrcpts, sizeof(*s->rcpts));
    s->rcpt_dsn = ms_calloc(msg->nrcpts, sizeof(*s->rcpt_dsn));
    for (i = 0; i < msg->nrcpts; i++) {
        s->rcpts[i] = ms_strdup(msg->rcpts[i]);
        s->rcpt_dsn[i] = dsn_rcpt_params(msg, i, s->log_id);
    }
    s->final = ms_calloc(msg->nrcpts, sizeof(*s->final));
    s->results = ms_calloc(msg->nrcpts, sizeof(*s->results));
    s->msg_len = msg->len;
    /* Borrowed: DATA or BDAT is chosen after EHLO (smtp_body_prepare). */
    s->src = msg->data;
    s->src_len = msg->len;
    s->gate = msg->gate;
    s->deadline_ms = 0;
    s->fenced = 0;
    s->end_sent_ns = 0;
}

/* The message as it goes on the wire, once DATA or BDAT is chosen.  A
 * message that needs no octet changed (CRLF throughout, no line that starts
 * with "." for DATA: what our frontend stores, mostly) is sent from the
 * caller's octets (smtp_client.h: they stay until the outcome), in the
 * same WK_SMTP_DATA_BLOCK writes as a copy would be: with BDAT all of it;
 * with DATA all of it too, the terminator following the last part in the
 * same write (ms_conn_write2_ref: a separate three-octet write could wait
 * on Nagle, which the worker's client sockets keep).  At 1 MiB the copy had
 * been ~17 % of the worker's CPU and a third of its peak memory
 * (docs/scaling.md, "Sending from the record"); below a block, where it was
 * kept until 2026-12-07, it was a malloc and a copy of every message. */
static void smtp_body_prepare(wk_smtp *s)
{
    size_t n = 0, ref = 0;

    if (s->body_ready)
        return; /* prepared for this transaction already */
    s->body_ready = 1;
    if (s->chunking && (s->body_binarymime || wk_crlf_as_is(s->src, s->src_len))) {
        /* RFC 3030 §3: BINARYMIME goes octet for octet */
        ref = n = s->src_len;
    } else if (s->chunking) {
        s->body = wk_crlf_alloc(s->src, s->src_len, &n);
    } else if (s->src_len > 0 && wk_dotstuff_as_is(s->src, s->src_len)) {
        ref = s->src_len;
        s->body = ms_malloc(WK_DOTSTUFF_END_LEN);
        memcpy(s->body, WK_DOTSTUFF_END, WK_DOTSTUFF_END_LEN);
        n = s->src_len + WK_DOTSTUFF_END_LEN;
    } else {
        s->body = wk_dotstuff_alloc(s->src, s->src_len, &n);
    }
    s->body_ref = s->src;
    s->body_ref_len = ref;
    s->src = NULL;
    s->src_len = 0;
    s->body_len = n;
}

/* Octets [off, off + n) of the wire form, not copied, in one write
 * (smtp_write_body). */
static int smtp_body_write(wk_smtp *s, size_t off, size_t n)
{
    size_t k;

    if (off >= s->body_ref_len)
        return ms_conn_write_ref(s->t, s->body + (off - s->body_ref_len), n);
    k = n < s->body_ref_len - off ? n : s->body_ref_len - off;
    if (k == n)
        return ms_conn_write_ref(s->t, s->body_ref + off, k);
    return ms_conn_write2_ref(s->t, s->body_ref + off, k, s->body, n - k);
}

static void cache_unlink(wk_smtp *s)
{
    ms_list_remove(&s->idle_node);
    s->cache->nidle--;
}

static void smtp_free(wk_smtp *s)
{
    if (s->cache && --s->cache->refs == 0 && s->cache->closing)
        free(s->cache);

    tx_free(s);
    free(s->cork);
    free(s->tls_name);
    for (size_t i = 0; i < s->tls_nmatch; i++)
        free(s->tls_match[i]);
    free(s->tls_match);
    for (size_t i = 0; i < s->ntlsa; i++)
        free((void *)s->tlsa[i].data);
    free(s->tlsa);
    if (s->auth_password) {
        OPENSSL_cleanse(s->auth_password, strlen(s->auth_password));
        free(s->auth_password);
    }
    free(s->auth_user);
    free(s->helo_name);
    ms_buf_free(&s->in);
    free(s);
}

/* Free the session once the timer and the transport have both closed. */
static void smtp_free_if_closed(wk_smtp *s)
{
    if (!s->timer_open && s->t == NULL)
        smtp_free(s);
}

static void smtp_timer_close_cb(uv_handle_t *h)
{
    wk_smtp *s = h->data;

    s->timer_open = 0;
    smtp_free_if_closed(s);
}

/* The one place states change; arms the new state's timeout. */
static void smtp_enter_state(wk_smtp *s, enum smtp_state next);

/* Close without a word more: the outcome is known or no longer wanted,
 * and QUIT (when due) has been answered. */
static void smtp_close(wk_smtp *s)
{
    if (s->state == SMTP_CLOSED)
        return;
    smtp_enter_state(s, SMTP_CLOSED);
    uv_close((uv_handle_t *)&s->timer, smtp_timer_close_cb);
    if (s->t)
        ms_conn_abort(s->t); /* smtp_on_close finishes */
}

static void smtp_timeout_cb(uv_timer_t *t);

static void smtp_enter_state(wk_smtp *s, enum smtp_state next)
{
    ms_debug("event=smtp_state qid=%s peer=%s from=%s to=%s", s->log_id, s->peer,
             state_names[s->state], state_names[next]);
    if (s->state == SMTP_IDLE && next != SMTP_IDLE)
        cache_unlink(s);
    s->state = next;
    if (next == SMTP_CLOSED)
        uv_timer_stop(&s->timer);
    else
        uv_timer_start(&s->timer, smtp_timeout_cb, s->timeout_ms[next], 0);
}

/* ---- results ---- */

static void set_result(struct wk_smtp_rcpt_result *r, int code, const char *dsn,
                       const char *text)
{
    r->code = code;
    if (dsn && *dsn)
        snprintf(r->dsn, sizeof(r->dsn), "%s", dsn);
    else
        /* RFC 3463 §3.1: X.0.0 when nothing more specific is known. */
        snprintf(r->dsn, sizeof(r->dsn), "%c.0.0", code >= 500 ? '5' : code >= 400 ? '4' : '2');
    snprintf(r->reply, sizeof(r->reply), "%s", text);
}

static void set_result_reply(struct wk_smtp_rcpt_result *r, const struct ms_reply *reply)
{
    char text[WK_SMTP_REPLY_TEXT_MAX];

    ms_reply_format(reply, text, sizeof(text));
    set_result(r, reply->code, reply->dsn, text);
}

/* The TLS outcome of the session for TLS reports (smtp_client.h,
 * tls_result): the first one noted stands (a `may` session that falls back
 * to plaintext keeps its handshake failure). */
static void tls_note(wk_smtp *s, enum ms_tlsrpt_result r)
{
    if (s->tls_result < 0)
        s->tls_result = (int)r;
}

/* Report the outcome (once).  Every recipient without a final result gets
 * `reply`, or our diagnostic (code 0, `dsn`, `why`) when reply is NULL. */
static void smtp_report(wk_smtp *s, int err, const struct ms_reply *reply, const char *dsn,
                        const char *why)
{
    struct wk_smtp_result res;
    wk_smtp_cb cb = s->cb;
    size_t i;

    if (cb == NULL)
        return;
    s->cb = NULL;
    /* The caller may free the message octets once told (smtp_client.h):
     * a transport still holding some of them unsent is dropped first.  (Every
     * path here with body octets queued closes the session right after.) */
    if (s->body_ref_len > 0 && s->body_off > 0 && s->t != NULL && ms_conn_pending(s->t) > 0)
        ms_conn_abort(s->t);
    for (i = 0; i < s->nrcpts; i++) {
        if (s->final[i])
            continue;
        if (reply)
            set_result_reply(&s->results[i], reply);
        else {
            set_result(&s->results[i], 0, dsn, why);
        }
        s->final[i] = 1;
    }
    res.err = err;
    res.tls = s->tls_info;
    res.tls_policy = s->tls_label;
    res.tls_auth = s->tls_auth;
    res.tls_result = s->tls_result;
    res.local_ip = s->local_ip;
    res.tls_fallback = s->tls_fallback;
    res.dsn_offered = (s->ehlo.flags & MS_EHLO_DSN) != 0;
    res.try_next = s->try_next;
    res.fenced = s->fenced;
    res.reused = s->reused;
    res.end_sent_ns = s->end_sent_ns;
    res.nrcpts = s->nrcpts;
    res.rcpts = s->results;
    cb(s->arg, s->id, &res);
}

/* The connection is unusable: report what is left and close. */
static void smtp_fail(wk_smtp *s, int err, const char *dsn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void smtp_fail(wk_smtp *s, int err, const char *dsn, const char *fmt, ...)
{
    char why[WK_SMTP_REPLY_TEXT_MAX];
    va_list ap;

    if (s->state == SMTP_CLOSED)
        return;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (s->state != SMTP_QUIT)
        ms_info("event=smtp_failed qid=%s peer=%s state=%s error=%s", s->log_id, s->peer,
                state_names[s->state], ms_err_name(err));
    smtp_report(s, err, NULL, dsn, why);
    smtp_close(s);
}

/* ---- output ---- */

/* The transport refused a write (r): the connection is unusable. */
static void smtp_write_failed(wk_smtp *s, int r, const char *what)
{
    smtp_fail(s, MS_EIO, "4.4.2", "cannot send %sto %s: %s", what, s->peer,
              s->t->error[0] ? s->t->error : ms_strerror(r));
}

/* Put n octets on the wire (through TLS once it is up) in one write. */
static void smtp_write_raw(wk_smtp *s, const char *data, size_t n)
{
    int r = ms_conn_write(s->t, data, n);

    if (r < 0)
        smtp_write_failed(s, r, "");
}

/* A pipelined group (RFC 2920): the commands sent between smtp_cork() and
 * the matching smtp_uncork() leave in one write, so the server reads them
 * in one go (and the kernel carries them in one segment). */
static void smtp_cork(wk_smtp *s)
{
    s->corked++;
}

static void smtp_uncork(wk_smtp *s)
{
    size_t n = s->cork_len;

    if (--s->corked > 0)
        return;
    s->cork_len = 0;
    if (n > 0 && s->state != SMTP_CLOSED)
        smtp_write_raw(s, s->cork, n);
}

static void smtp_vsend(wk_smtp *s, int secret, const char *fmt, va_list ap)
{
    char line[WK_SMTP_COMMAND_MAX];
    int n, r;

    if (s->corked && !secret) {
        if (s->cork_cap - s->cork_len < WK_SMTP_COMMAND_MAX) {
            s->cork_cap = s->cork_cap * 2 + WK_SMTP_COMMAND_MAX;
            s->cork = ms_realloc(s->cork, s->cork_cap);
        }
        n = vsnprintf(s->cork + s->cork_len, WK_SMTP_COMMAND_MAX, fmt, ap);
        if (n < 0 || (size_t)n >= WK_SMTP_COMMAND_MAX)
            ms_panic("event=smtp_command_too_long qid=%s", s->log_id);
        s->cork_len += (size_t)n;
        return;
    }
    n = vsnprintf(line, sizeof(line), fmt, ap);
    /* Paths are checked by wk_smtp_path_ok() and credentials by
     * wk_auth_field_ok() at start: a command that does not fit is a bug. */
    if (n < 0 || (size_t)n >= sizeof(line))
        ms_panic("event=smtp_command_too_long qid=%s", s->log_id);
    /* Credentials: the transport wipes any copy it keeps, we wipe ours. */
    r = secret ? ms_conn_write_secret(s->t, line, (size_t)n)
               : ms_conn_write(s->t, line, (size_t)n);
    if (secret)
        OPENSSL_cleanse(line, (size_t)n);
    if (r < 0)
        smtp_write_failed(s, r, "");
}

static void smtp_send(wk_smtp *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void smtp_send(wk_smtp *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    smtp_vsend(s, 0, fmt, ap);
    va_end(ap);
}

static void smtp_send_secret(wk_smtp *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void smtp_send_secret(wk_smtp *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    smtp_vsend(s, 1, fmt, ap);
    va_end(ap);
}

/* Duplicate fencing: the octets that end the message may not go after the
 * gate's deadline (smtp_client.h).  Past it, close without them: a server
 * discards a transaction whose data never ended.  Returns 1 then. */
static int smtp_lease_ran_out(wk_smtp *s)
{
    if (s->deadline_ms == 0)
        return 0;
    uv_update_time(s->loop);
    if (uv_now(s->loop) < s->deadline_ms)
        return 0;
    ms_warn("event=smtp_lease_ran_out qid=%s peer=%s late_ms=%llu", s->log_id, s->peer,
            (unsigned long long)(uv_now(s->loop) - s->deadline_ms));
    smtp_fail(s, MS_ETIMEOUT, "4.4.2",
              "delivery lease ran out before the end of the data to %s", s->peer);
    return 1;
}

/* Write the body (or the current BDAT chunk) in WK_SMTP_DATA_BLOCK
 * blocks, each with its own timeout (RFC 5321 §4.5.3.2.5), straight from
 * where the wire form is (no copy: it stays until the transport has sent
 * it, or until smtp_report() has dropped the transport).  While the
 * kernel takes them at once this goes on; when some are left queued,
 * smtp_on_drain() comes back here once they are out. */
static void smtp_write_body(wk_smtp *s)
{
    size_t end = s->chunking ? s->chunk_end : s->body_len, n;
    int r;

    while (s->state == SMTP_BODY && s->body_off < end) {
        n = end - s->body_off;
        if (n > WK_SMTP_DATA_BLOCK)
            n = WK_SMTP_DATA_BLOCK;
        if (s->body_off + n == s->body_len && smtp_lease_ran_out(s))
            return;
        uv_timer_start(&s->timer, smtp_timeout_cb, s->timeout_ms[SMTP_BODY], 0);
        if ((r = smtp_body_write(s, s->body_off, n)) < 0) {
            smtp_write_failed(s, r, "message ");
            return;
        }
        s->body_off += n;
        if (s->body_off == s->body_len)
            s->end_sent_ns = uv_hrtime(); /* the "." or BDAT LAST's last octet */
        if (ms_conn_pending(s->t) > 0)
            return;
    }
    if (s->state != SMTP_BODY)
        return;
    if (s->chunking && s->chunk_end < s->body_len)
        smtp_enter_state(s, SMTP_BDAT); /* the reply to this chunk, then the next */
    else
        smtp_enter_state(s, SMTP_DOT);  /* the reply to "." or to BDAT LAST */
}

/* RFC 3030 §2: the next chunk, "BDAT <size>" and exactly that many octets;
 * the last one says LAST.  Written in WK_SMTP_DATA_BLOCK blocks. */
static void smtp_send_chunk(wk_smtp *s)
{
    size_t n = s->body_len - s->body_off;
    int last;

    if (n > WK_SMTP_BDAT_CHUNK)
        n = WK_SMTP_BDAT_CHUNK;
    last = s->body_off + n == s->body_len;
    if (last && n == 0 && smtp_lease_ran_out(s))
        return; /* "BDAT 0 LAST" alone ends the message */
    s->chunk_end = s->body_off + n;
    smtp_enter_state(s, SMTP_BODY);
    smtp_send(s, "BDAT %zu%s\r\n", n, last ? " LAST" : "");
    if (s->state != SMTP_BODY)
        return;
    if (n == 0) {
        s->end_sent_ns = uv_hrtime();
        smtp_enter_state(s, SMTP_DOT); /* an empty message: "BDAT 0 LAST" */
    }
    else
        smtp_write_body(s);
}

/* ---- TLS (RFC 3207) ---- */

static void smtp_quit(wk_smtp *s);

static void smtp_send_ehlo(wk_smtp *s)
{
    smtp_enter_state(s, SMTP_EHLO);
    smtp_send(s, "%s %s\r\n", s->lmtp ? "LHLO" : "EHLO", s->helo_name);
}

/* The server said 220 to STARTTLS: the handshake, by the destination's
 * policy.  The name checked (and sent as SNI) is tls_name; `verify`
 * refuses a certificate that does not chain to our CAs or name it
 * (smtp_on_tls), the other policies only note whether it did. */
static void tls_start(wk_smtp *s)
{
    struct ms_tls_policy policy = {
        .host = s->tls_name,
        .verify = s->tls_policy == WK_TLS_VERIFY ? MS_TLS_VERIFY_PEER : MS_TLS_VERIFY_NONE,
        .match = (const char *const *)s->tls_match,
        .nmatch = s->tls_nmatch,
        .tlsa = s->tlsa,
        .ntlsa = s->ntlsa,
    };
    int r;

    smtp_enter_state(s, SMTP_TLS);
    if ((r = ms_conn_tls_connect(s->t, s->tls_ctx, &policy)) < 0) {
        const char *why = s->t->error[0] ? s->t->error : ms_strerror(r);
        if (tls_may_fallback(s, why))
            return;
        smtp_fail(s, MS_EPROTO, "4.7.5", "TLS handshake with %s failed: %s", s->peer, why);
    }
}

/* RFC 8689: this server cannot take the REQUIRETLS message (v; `said`:
 * its reply to STARTTLS, if that was the refusal).  A permanent failure
 * of this server only: try_next lets the caller try the next address
 * (smtp_client.h). */
static void requiretls_refuse(wk_smtp *s, enum wk_requiretls v, const struct ms_reply *said)
{
    struct ms_reply r = {.nlines = 1};
    char text[WK_SMTP_REPLY_TEXT_MAX], reply[WK_SMTP_REPLY_TEXT_MAX / 2];

    r.code = 550;
    if (v == WK_REQUIRETLS_NOT_OFFERED) {
        /* RFC 8689 registers X.7.30 "REQUIRETLS support required". */
        snprintf(r.dsn, sizeof(r.dsn), "5.7.30");
        snprintf(text, sizeof(text), "5.7.30 REQUIRETLS support required: %s does not offer "
                 "REQUIRETLS", s->peer);
    } else {
        /* RFC 3463 X.7.10 (RFC 5248): encryption needed. */
        if (said)
            ms_reply_format(said, reply, sizeof(reply));
        snprintf(r.dsn, sizeof(r.dsn), "5.7.10");
        snprintf(text, sizeof(text), "5.7.10 REQUIRETLS: %s %s%s", s->peer,
                 said                ? "refused STARTTLS: "
                 : tls_up(s)         ? "presented a certificate that is not verified"
                 : !(s->ehlo.flags & MS_EHLO_STARTTLS) ? "did not offer STARTTLS"
                                                        : "could not be reached over TLS",
                 said ? reply : "");
    }
    ms_info("event=smtp_requiretls_refused qid=%s peer=%s dsn=%s", s->log_id, s->peer, r.dsn);
    r.text[0] = text;
    r.text_len[0] = strlen(text);
    s->try_next = 1;
    smtp_report(s, 0, &r, NULL, NULL);
    smtp_quit(s);
}

/* TLS is required and the server cannot do it: say so and QUIT. */
static void tls_required(wk_smtp *s)
{
    char why[WK_SMTP_REPLY_TEXT_MAX];

    if (s->requiretls) {
        requiretls_refuse(s, WK_REQUIRETLS_NO_TLS, NULL);
        return;
    }

    snprintf(why, sizeof(why), "TLS is required (policy %s), but %s did not offer STARTTLS",
             wk_tls_policy_name(s->tls_policy), s->peer);
    smtp_report(s, 0, NULL, "4.7.4", why);
    smtp_quit(s);
}

/* ---- connection reuse ---- */

wk_smtp_cache *wk_smtp_cache_new(uint64_t idle_ms, unsigned max_msgs, size_t max_idle)
{
    wk_smtp_cache *c = ms_calloc(1, sizeof(*c));

    c->idle_ms = idle_ms;
    c->max_msgs = max_msgs;
    c->max_idle = max_idle;
    ms_list_init(&c->idle);
    return c;
}

size_t wk_smtp_cache_idle(const wk_smtp_cache *c)
{
    return c->nidle;
}

void wk_smtp_cache_close(wk_smtp_cache *c)
{
    struct ms_list *n;

    if (c == NULL)
        return;
    c->closing = 1;
    while ((n = ms_list_first(&c->idle)) != NULL)
        smtp_close(ms_list_entry(n, wk_smtp, idle_node)); /* leaves IDLE: unlinks */
    /* Sessions still running park nowhere now; the last one frees it. */
    if (c->refs == 0)
        free(c);
}

/* The message is done and the connection healthy: keep it for the next
 * message to the same place, or say QUIT. */
static void smtp_park(wk_smtp *s)
{
    wk_smtp_cache *c = s->cache;

    s->nmsgs++;
    /* Like Postfix's smtp_connection_reuse_count_limit: a connection that
     * carried enough messages is closed, so no one server process (or
     * its memory leaks) keeps us forever. */
    if (c == NULL || c->closing || c->nidle >= c->max_idle ||
        (s->max_msgs > 0 && s->nmsgs >= s->max_msgs) ||
        (s->max_msgs == 0 && c->max_msgs > 0 && s->nmsgs >= c->max_msgs)) {
        smtp_quit(s);
        return;
    }
    tx_free(s);
    snprintf(s->log_id, sizeof(s->log_id), "-");
    s->timeout_ms[SMTP_IDLE] = c->idle_ms;
    ms_list_insert_head(&c->idle, &s->idle_node);
    c->nidle++;
    smtp_enter_state(s, SMTP_IDLE);
}

/* ---- the dialogue ---- */

static void smtp_quit(wk_smtp *s)
{
    smtp_enter_state(s, SMTP_QUIT);
    smtp_send(s, "QUIT\r\n");
}

/* RCPT for recipient i, with NOTIFY and ORCPT when the server offers DSN
 * (RFC 3461 §5.2.1). */
static void smtp_send_rcpt(wk_smtp *s, size_t i)
{
    const char *dsn = s->rcpt_dsn && s->rcpt_dsn[i] && (s->ehlo.flags & MS_EHLO_DSN)
                          ? s->rcpt_dsn[i]
                          : "";

    smtp_send(s, "RCPT TO:<%s>%s\r\n", s->rcpts[i], dsn);
}

static void smtp_send_mail(wk_smtp *s)
{
    char params[WK_SMTP_MAIL_PARAMS_MAX] = "";
    size_t n = 0;

    /* RFC 3030 §4: BDAT whenever the server takes it (smtp_refuse_locally
     * has made sure a BINARYMIME body only goes where it can). */
    s->chunking = (s->ehlo.flags & MS_EHLO_CHUNKING) != 0;
    smtp_body_prepare(s);
    if (s->ehlo.flags & MS_EHLO_SIZE)
        n += (size_t)snprintf(params + n, sizeof(params) - n, " SIZE=%zu", s->msg_len);
    if (s->body_binarymime)
        n += (size_t)snprintf(params + n, sizeof(params) - n, " BODY=BINARYMIME");
    else if (s->body_8bitmime && (s->ehlo.flags & MS_EHLO_8BITMIME))
        n += (size_t)snprintf(params + n, sizeof(params) - n, " BODY=8BITMIME");
    if (s->smtputf8 && (s->ehlo.flags & MS_EHLO_SMTPUTF8))
        n += (size_t)snprintf(params + n, sizeof(params) - n, " SMTPUTF8");
    /* RFC 8689 §4.2.1: smtp_refuse_locally has made sure the server can
     * take it (or needs not: a local socket, LMTP). */
    if (s->requiretls && (s->ehlo.flags & MS_EHLO_REQUIRETLS))
        n += (size_t)snprintf(params + n, sizeof(params) - n, " REQUIRETLS");
    if (s->mail_dsn && (s->ehlo.flags & MS_EHLO_DSN))
        snprintf(params + n, sizeof(params) - n, "%s", s->mail_dsn);
    ms_debug("event=smtp_mail qid=%s peer=%s via=%s size=%zu tls=%s auth=%s requiretls=%d "
             "dsn=%d", s->log_id, s->peer, s->chunking ? "bdat" : "data", s->body_len,
             tls_up(s) ? "yes" : "no", s->auth_done ? "yes" : "no", s->requiretls,
             (s->ehlo.flags & MS_EHLO_DSN) != 0);
    smtp_enter_state(s, SMTP_MAIL);
    if (!(s->ehlo.flags & MS_EHLO_PIPELINING)) {
        smtp_send(s, "MAIL FROM:<%s>%s\r\n", s->mail_from, params);
        return;
    }
    /* RFC 2920 §3.1: MAIL, every RCPT and DATA in one go; the replies
     * come back in order and are taken one by one below. */
    s->pipelined = 1;
    smtp_cork(s);
    smtp_send(s, "MAIL FROM:<%s>%s\r\n", s->mail_from, params);
    for (size_t i = 0; i < s->nrcpts; i++)
        smtp_send_rcpt(s, i);
    /* BDAT waits for the RCPT replies: a chunk cannot be taken back
     * once sent (RFC 3030 §4.2 would allow pipelining it; we do not).
     * DATA goes along even when the lease is checked before the message
     * (s->gate): it commits nothing, only the end of the data makes the
     * server process the transaction (RFC 5321 §4.1.1.4), so its 354
     * comes back while the lease is checked, not one round trip after. */
    if (!s->chunking)
        smtp_send(s, "DATA\r\n");
    smtp_uncork(s);
}

/* What we know before MAIL FROM that makes the message undeliverable to this
 * server: report it as the server would have (permanent) and QUIT. */
static int smtp_refuse_locally(wk_smtp *s)
{
    struct ms_reply r = {.nlines = 1};
    char text[WK_SMTP_REPLY_TEXT_MAX];
    size_t i;
    int utf8 = 0;
    enum wk_requiretls v;

    /* RFC 8689 §4.2.1: first, since nothing else matters if the message
     * may not go here at all. */
    if (s->requiretls &&
        (v = wk_requiretls_check(s->addr.ss_family == AF_UNIX, s->lmtp,
                                 tls_up(s) && s->t->tls_verified, s->ehlo.flags)) !=
            WK_REQUIRETLS_OK) {
        requiretls_refuse(s, v, NULL);
        return 1;
    }
    if (s->body_binarymime &&
        (s->ehlo.flags & (MS_EHLO_CHUNKING | MS_EHLO_BINARYMIME)) !=
            (MS_EHLO_CHUNKING | MS_EHLO_BINARYMIME)) {
        /* RFC 3030 §3: a BINARYMIME message goes only to a server with
         * CHUNKING and BINARYMIME; we do not convert it, so it is returned
         * (554 5.6.3, "conversion required but not supported"). */
        r.code = 554;
        snprintf(r.dsn, sizeof(r.dsn), "5.6.3");
        snprintf(text, sizeof(text), "5.6.3 %s does not support BINARYMIME%s", s->peer,
                 s->ehlo.flags & MS_EHLO_CHUNKING ? "" : " and CHUNKING");
    } else if (s->ehlo.size_max > 0 && s->msg_len > s->ehlo.size_max) {
        /* RFC 1870 §6.1: do not send what the server said it will refuse. */
        r.code = 552;
        snprintf(r.dsn, sizeof(r.dsn), "5.3.4");
        snprintf(text, sizeof(text), "5.3.4 message size %zu exceeds the limit %llu of %s",
                 s->msg_len, (unsigned long long)s->ehlo.size_max, s->peer);
    } else if (s->smtputf8 && !(s->ehlo.flags & MS_EHLO_SMTPUTF8)) {
        /* RFC 6531 §3.2: non-ASCII addresses need SMTPUTF8 at the server.
         * XXX: headers with UTF-8 are sent as they are (no downgrade). */
        utf8 = has_non_ascii(s->mail_from);
        for (i = 0; i < s->nrcpts && !utf8; i++)
            utf8 = has_non_ascii(s->rcpts[i]);
        if (!utf8)
            return 0;
        r.code = 553;
        snprintf(r.dsn, sizeof(r.dsn), "5.6.7");
        snprintf(text, sizeof(text), "5.6.7 %s does not support SMTPUTF8", s->peer);
    } else {
        return 0;
    }
    r.text[0] = text;
    r.text_len[0] = strlen(text);
    smtp_report(s, 0, &r, NULL, NULL);
    smtp_quit(s);
    return 1;
}

/* ---- AUTH (RFC 4954) ---- */

/* Not the message's fault: defer everyone with our diagnostic, QUIT. */
static void auth_defer(wk_smtp *s, const char *dsn, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void auth_defer(wk_smtp *s, const char *dsn, const char *fmt, ...)
{
    char why[WK_SMTP_REPLY_TEXT_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    ms_warn("event=smtp_auth_failed qid=%s peer=%s user=\"%s\" dsn=%s why=\"%s\"", s->log_id,
            s->peer, s->auth_user, dsn, why);
    smtp_report(s, 0, NULL, dsn, why);
    smtp_quit(s);
}

static void auth_start(wk_smtp *s)
{
    char resp[WK_AUTH_PLAIN_MAX];

    if (!tls_up(s) && !s->auth_plaintext) {
        /* RFC 4954 §4 and §14: PLAIN and LOGIN expose the password; it
         * only goes over TLS unless the operator allowed otherwise. */
        auth_defer(s, "4.7.11",
                   "refusing to send AUTH credentials to %s without TLS (%s)", s->peer,
                   s->tls_fallback                  ? "the TLS handshake failed"
                   : s->tls_policy == WK_TLS_NONE   ? "TLS policy none"
                   : (s->ehlo.flags & MS_EHLO_STARTTLS) ? "STARTTLS refused"
                                                    : "STARTTLS not offered");
        return;
    }
    if ((s->auth_mech = wk_auth_pick(s->ehlo.auth & s->auth_mechs)) == MS_AUTH_MECH_NONE) {
        auth_defer(s, "4.7.0", "%s offers no AUTH mechanism we may use (%s%s%s)%s", s->peer,
                   s->auth_mechs & MS_AUTH_MECH_PLAIN ? "PLAIN" : "",
                   s->auth_mechs == (MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN) ? ", " : "",
                   s->auth_mechs & MS_AUTH_MECH_LOGIN ? "LOGIN" : "",
                   s->ehlo.flags & MS_EHLO_AUTH ? "" : ": no AUTH at all");
        return;
    }
    smtp_enter_state(s, SMTP_AUTH);
    s->auth_step = 0;
    if (s->auth_mech == MS_AUTH_MECH_PLAIN) {
        /* RFC 4954 §4: the initial response saves a round trip. */
        if (wk_auth_plain(s->auth_user, s->auth_password, resp, sizeof(resp)) < 0)
            ms_panic("event=smtp_auth_fields_unchecked"); /* checked at start */
        smtp_send_secret(s, "AUTH PLAIN %s\r\n", resp);
        OPENSSL_cleanse(resp, sizeof(resp));
    } else {
        smtp_send(s, "AUTH LOGIN\r\n");
    }
}

/* A reply in SMTP_AUTH. */
static void auth_reply(wk_smtp *s, const struct ms_reply *r)
{
    uint8_t challenge[WK_AUTH_CHALLENGE_MAX];
    char b64[WK_AUTH_FIELD_B64_MAX], text[WK_SMTP_REPLY_TEXT_MAX], dsn[MS_REPLY_DSN_MAX + 1];
    const char *field;
    int n;

    if (r->code == 235) {
        /* RFC 4954 §6: authenticated; the EHLO answer still holds. */
        s->auth_done = 1;
        ms_info("event=smtp_auth qid=%s peer=%s user=\"%s\" mech=%s", s->log_id, s->peer,
                s->auth_user, wk_auth_mech_name(s->auth_mech));
        smtp_send_mail(s);
        return;
    }
    if (r->code == 334) {
        /* LOGIN: the server asks for the user name, then the password; the
         * prompts' texts are not standard, so only their form is checked. */
        n = wk_auth_challenge(r, challenge, sizeof(challenge));
        OPENSSL_cleanse(challenge, sizeof(challenge));
        if (n < 0 || s->auth_mech != MS_AUTH_MECH_LOGIN || s->auth_step >= 2) {
            smtp_fail(s, MS_EPROTO, "4.7.0", "%s from %s during AUTH %s",
                      n < 0 ? "malformed 334 challenge" : "unexpected 334 challenge", s->peer,
                      wk_auth_mech_name(s->auth_mech));
            return;
        }
        field = s->auth_step == 0 ? s->auth_user : s->auth_password;
        ms_base64_encode(field, strlen(field), b64, sizeof(b64));
        smtp_enter_state(s, SMTP_AUTH); /* re-arm the timeout */
        if (s->auth_step++ == 0)
            smtp_send(s, "%s\r\n", b64);
        else
            smtp_send_secret(s, "%s\r\n", b64);
        OPENSSL_cleanse(b64, sizeof(b64));
        return;
    }
    /* Refused.  A 5yz (535 5.7.8: bad credentials; 534: mechanism too weak)
     * means our configuration is wrong, which retrying will not fix but the
     * operator will: defer like Postfix with smtp_sasl_auth_soft_bounce=yes
     * (the default), never bounce the mail for it. */
    ms_reply_format(r, text, sizeof(text));
    if (r->dsn[0])
        snprintf(dsn, sizeof(dsn), "4%s", r->dsn + 1);
    else
        snprintf(dsn, sizeof(dsn), "%s", r->code == 535 || r->code >= 500 ? "4.7.8" : "4.7.0");
    ms_warn("event=smtp_auth_failed qid=%s peer=%s user=\"%s\" mech=%s dsn=%s reply=\"%s\"",
            s->log_id, s->peer, s->auth_user, wk_auth_mech_name(s->auth_mech), dsn, text);
    {
        char why[WK_SMTP_REPLY_TEXT_MAX];
        snprintf(why, sizeof(why), "SASL authentication (%s) to %s failed: %.300s",
                 wk_auth_mech_name(s->auth_mech), s->peer, text);
        smtp_report(s, 0, NULL, dsn, why);
    }
    if (r->code == 421)
        smtp_close(s);
    else
        smtp_quit(s);
}

/* EHLO (and STARTTLS) done: a local refusal, AUTH when due, then MAIL. */
static void smtp_ready(wk_smtp *s)
{
    if (smtp_refuse_locally(s))
        return;
    if (s->auth_user && !s->auth_done) {
        auth_start(s);
        return;
    }
    smtp_send_mail(s);
}


static void smtp_handle_reply(wk_smtp *s, const struct ms_reply *r)
{
    int ok = r->code >= 200 && r->code < 300;
    size_t i;

    switch (s->state) {
    case SMTP_BANNER:
        if (!ok)
            break;
        smtp_send_ehlo(s);
        return;
    case SMTP_EHLO:
        if (ok) {
            ms_ehlo_parse(r, &s->ehlo);
            if (!tls_up(s) && s->tls_policy != WK_TLS_NONE) {
                if (s->ehlo.flags & MS_EHLO_STARTTLS) {
                    smtp_enter_state(s, SMTP_STARTTLS);
                    smtp_send(s, "STARTTLS\r\n");
                    return;
                }
                tls_note(s, MS_TLSRPT_STARTTLS_NOT_SUPPORTED);
                if (s->tls_policy >= WK_TLS_ENCRYPT) {
                    tls_required(s);
                    return;
                }
            }
        } else if (r->code >= 500 && !s->lmtp) {
            /* RFC 5321 §3.2: an old server; fall back to HELO. */
            smtp_enter_state(s, SMTP_HELO);
            smtp_send(s, "HELO %s\r\n", s->helo_name);
            return;
        } else {
            break;
        }
        smtp_ready(s);
        return;
    case SMTP_STARTTLS:
        if (r->code == 220) {
            tls_start(s);
            return;
        }
        tls_note(s, MS_TLSRPT_STARTTLS_NOT_SUPPORTED);
        if (r->code == 421 && tls_may_fallback(s, "STARTTLS refused with 421"))
            return; /* the server is closing this connection */
        if (s->tls_policy == WK_TLS_MAY) {
            /* Opportunistic, and the session is as before STARTTLS (RFC
             * 3207 §4): go on in plaintext on this connection. */
            smtp_ready(s);
            return;
        }
        if (s->requiretls && r->code >= 500) {
            /* It says it will not do TLS: for REQUIRETLS, that is this
             * server refusing the message (a 4yz is temporary: below). */
            requiretls_refuse(s, WK_REQUIRETLS_NO_TLS, r);
            return;
        }
        break;
    case SMTP_HELO:
        if (!ok)
            break;
        memset(&s->ehlo, 0, sizeof(s->ehlo));
        if (s->tls_policy >= WK_TLS_ENCRYPT) {
            tls_required(s);
            return;
        }
        smtp_ready(s);
        return;
    case SMTP_AUTH:
        auth_reply(s, r);
        return;
    case SMTP_MAIL:
        if (!ok)
            break;
        smtp_enter_state(s, SMTP_RCPT);
        s->rcpt_next = 0;
        if (!s->pipelined)
            smtp_send_rcpt(s, s->rcpt_next);
        return;
    case SMTP_RCPT:
        i = s->rcpt_next;
        if (ok) {
            s->naccepted++;
        } else {
            /* Final for this recipient; the others go on. */
            set_result_reply(&s->results[i], r);
            s->final[i] = 1;
        }
        if (++s->rcpt_next < s->nrcpts) {
            /* Re-arm the RCPT timeout for the next command. */
            smtp_enter_state(s, SMTP_RCPT);
            if (!s->pipelined)
                smtp_send_rcpt(s, s->rcpt_next);
            return;
        }
        if (s->naccepted == 0) {
            smtp_report(s, 0, NULL, NULL, NULL); /* every recipient is final */
            if (!s->pipelined || s->chunking) {
                smtp_quit(s);
                return;
            }
            /* DATA is on its way: wait for its reply (and end an empty
             * message if the server accepts it anyway, RFC 2920 §3.1). */
            s->abort_data = 1;
            smtp_enter_state(s, SMTP_DATA);
            return;
        }
        if (s->gate) {
            /* Duplicate fencing: the caller checks its lease now, after
             * the RCPT replies and before any octet of the message. */
            smtp_enter_state(s, SMTP_GATE);
            s->data_ready = 0;
            s->gate(s->arg, s->id);
            return;
        }
        if (s->chunking) {
            smtp_send_chunk(s);
            return;
        }
        smtp_enter_state(s, SMTP_DATA);
        if (!s->pipelined)
            smtp_send(s, "DATA\r\n");
        return;
    case SMTP_GATE:
        /* While the lease is checked, only the pipelined DATA's reply is
         * outstanding: a 354 waits for the answer (wk_smtp_gate_answer);
         * anything else (a refused DATA, a 421 before the server goes
         * away) ends the transaction. */
        if (s->pipelined && !s->chunking && !s->data_ready && r->code == 354) {
            s->data_ready = 1;
            return;
        }
        break;
    case SMTP_BDAT:
        /* RFC 3030 §2: each chunk is answered; a refused one ends the
         * transaction (what was sent is discarded by the server). */
        if (!ok)
            break;
        smtp_send_chunk(s);
        return;
    case SMTP_DATA:
        if (s->abort_data) {
            if (r->code == 354) {
                smtp_enter_state(s, SMTP_DOT);
                smtp_send(s, WK_DOTSTUFF_END);
            } else {
                smtp_quit(s);
            }
            return;
        }
        if (r->code != 354)
            break;
        smtp_enter_state(s, SMTP_BODY);
        smtp_write_body(s);
        return;
    case SMTP_DOT:
        if (s->abort_data) {
            smtp_quit(s);
            return;
        }
        if (s->lmtp) {
            /* RFC 2033 §4.2 (and RFC 3030 §4 for BDAT LAST): one reply per
             * accepted recipient, in order. */
            while (s->lmtp_next < s->nrcpts && s->final[s->lmtp_next])
                s->lmtp_next++;
            if (s->lmtp_next < s->nrcpts) {
                set_result_reply(&s->results[s->lmtp_next], r);
                s->final[s->lmtp_next] = 1;
            }
            while (s->lmtp_next < s->nrcpts && s->final[s->lmtp_next])
                s->lmtp_next++;
            if (s->lmtp_next < s->nrcpts) {
                smtp_enter_state(s, SMTP_DOT); /* re-arm for the next reply */
                return;
            }
            smtp_report(s, 0, NULL, NULL, NULL);
            smtp_park(s);
            return;
        }
        /* fall through */
    case SMTP_BODY:
        /* The reply to the end of data (or an early one while we still
         * write: the server gave up on the message). */
        smtp_report(s, 0, r, NULL, NULL);
        if (s->state == SMTP_BODY)
            smtp_close(s);
        else if (r->code == 421)
            smtp_close(s); /* RFC 5321 §3.8 */
        else
            smtp_park(s);
        return;
    case SMTP_RSET:
        if (!ok)
            break;
        if (s->rset_pipelined) {
            /* MAIL and the rest are on their way: their replies follow. */
            s->rset_pipelined = 0;
            smtp_enter_state(s, SMTP_MAIL);
            return;
        }
        smtp_ready(s); /* authenticated already, if at all */
        return;
    case SMTP_IDLE:
        /* A parked connection the server talks on (a 421 before it goes
         * away, most likely): not worth keeping. */
        smtp_close(s);
        return;
    case SMTP_QUIT:
        smtp_close(s);
        return;
    default:
        ms_panic("event=smtp_reply_in_state state=%s", state_names[s->state]);
    }
    /* A refusal that ends the transaction for everyone left. */
    smtp_report(s, 0, r, NULL, NULL);
    if (r->code == 421)
        smtp_close(s); /* RFC 5321 §3.8: the server is closing anyway */
    else
        smtp_quit(s);
}

/* ---- the transport's callbacks ---- */

/* Take every complete reply in s->in.  RFC 3207 §5 (and CVE-2011-0411):
 * nothing may follow the 220 to STARTTLS in plaintext; it would be taken
 * as said over TLS. */
static void smtp_take_replies(wk_smtp *s)
{
    struct ms_reply r;
    int n;

    while (s->state != SMTP_CLOSED && s->in.len > 0) {
        n = ms_reply_parse(s->in.data, s->in.len, &r);
        if (n == MS_EAGAIN)
            return;
        if (n < 0) {
            char q[160];
            size_t l = s->in.len < 100 ? s->in.len : 100;
            ms_warn("event=smtp_bad_reply qid=%s peer=%s state=%s error=%s data=%s", s->log_id,
                    s->peer, state_names[s->state], ms_err_name(n),
                    ms_log_quote(q, sizeof(q), s->in.data, l));
            smtp_fail(s, MS_EPROTO, "4.5.0", "%s from %s in state %s",
                      n == MS_ETOOBIG ? "over-long reply" : "malformed reply", s->peer,
                      state_names[s->state]);
            return;
        }
        if (s->state == SMTP_CONNECT) /* cannot happen: reading starts later */
            ms_panic("event=smtp_read_before_connect");
        smtp_handle_reply(s, &r);
        if (s->reconnecting)
            return; /* the rest belonged to the old connection */
        ms_buf_consume(&s->in, (size_t)n);
        if (s->state == SMTP_TLS && s->in.len > 0) {
            smtp_fail(s, MS_EPROTO, "4.7.0", "%s sent data after its reply to STARTTLS",
                      s->peer);
            return;
        }
    }
}

/* Plaintext from the server: replies, taken as they complete.  A read may
 * carry more than s->in holds (many pipelined replies): it goes in as far
 * as it fits, the complete replies are taken, then the rest. */
static void smtp_on_read(void *arg, const char *buf, size_t len)
{
    wk_smtp *s = arg;
    size_t room, n;

    while (len > 0 && s->state != SMTP_CLOSED && !s->reconnecting) {
        if (s->state == SMTP_TLS) {
            /* Octets after the 220 to STARTTLS, in the same read. */
            smtp_fail(s, MS_EPROTO, "4.7.0", "%s sent data after its reply to STARTTLS",
                      s->peer);
            return;
        }
        room = s->in.max - s->in.len;
        if (room == 0) {
            smtp_fail(s, MS_ETOOBIG, "4.4.2", "reply from %s too long", s->peer);
            return;
        }
        n = len < room ? len : room;
        ms_buf_append(&s->in, buf, n);
        buf += n;
        len -= n;
        smtp_take_replies(s);
    }
}

static void smtp_on_connect(void *arg, int err)
{
    wk_smtp *s = arg;

    if (s->state == SMTP_CLOSED)
        return;
    if (err < 0) {
        smtp_fail(s, MS_EIO, "4.4.1", "connect to %s: %s", s->peer, s->t->error);
        return;
    }
    if (s->t->local.ss_family == AF_INET || s->t->local.ss_family == AF_INET6)
        ms_addr_str((const struct sockaddr *)&s->t->local, s->local_ip, sizeof(s->local_ip));
    smtp_enter_state(s, SMTP_BANNER);
    if (ms_conn_read_start(s->t) < 0)
        smtp_fail(s, MS_EIO, "4.4.2", "read from %s: %s", s->peer, s->t->error);
}

/* RFC 8460 §4.3.2.1: the certificate's fault, as a TLS report names it. */
static enum ms_tlsrpt_result cert_result(int cert_error)
{
    switch (cert_error) {
    case MS_TLS_CERT_NAME:
        return MS_TLSRPT_CERT_HOST_MISMATCH;
    case MS_TLS_CERT_EXPIRED:
        return MS_TLSRPT_CERT_EXPIRED;
    case MS_TLS_CERT_UNTRUSTED:
        return MS_TLSRPT_CERT_NOT_TRUSTED;
    default: /* DANE's "no TLSA record matched" among them */
        return MS_TLSRPT_VALIDATION_FAILURE;
    }
}

/* The STARTTLS handshake is over. */
static void smtp_on_tls(void *arg, int err)
{
    wk_smtp *s = arg;

    if (s->state == SMTP_CLOSED)
        return;
    if (err < 0)
        tls_note(s, err == MS_ECERT ? cert_result(s->t->tls_cert_error)
                                    : MS_TLSRPT_VALIDATION_FAILURE);
    else
        tls_note(s, s->t->tls_verified ? MS_TLSRPT_OK : cert_result(s->t->tls_cert_error));
    if (err == MS_ECERT) {
        /* `verify` (or REQUIRETLS): the certificate does not chain to our
         * CAs or does not name tls_name; with DANE, no TLSA record matched
         * it (RFC 7672 §2.2: defer, never fall back to plaintext). */
        if (s->ntlsa)
            smtp_fail(s, MS_EPROTO, "4.7.5", "certificate of %s matches no TLSA record of %s "
                      "(DANE): %s", s->peer, s->tls_name, s->t->error);
        else
            smtp_fail(s, MS_EPROTO, "4.7.5", "certificate of %s not verified for %s: %s",
                      s->peer, s->tls_name, s->t->error);
        return;
    }
    if (err < 0) {
        if (tls_may_fallback(s, s->t->error))
            return;
        smtp_fail(s, MS_EPROTO, "4.7.5", "TLS handshake with %s failed: %s", s->peer,
                  s->t->error);
        return;
    }
    s->tls_auth = s->t->tls_dane ? 2 : s->t->tls_verified ? 1 : 0;
    snprintf(s->tls_info, sizeof(s->tls_info), "%s %s%s", s->t->tls_version, s->t->tls_cipher,
             s->t->tls_dane ? " dane" : s->t->tls_verified ? " verified" : "");
    ms_debug("event=smtp_tls qid=%s peer=%s tls=\"%s\"", s->log_id, s->peer, s->tls_info);
    /* RFC 3207 §4.2: forget what the server said before TLS. */
    memset(&s->ehlo, 0, sizeof(s->ehlo));
    smtp_send_ehlo(s);
}

/* What was queued has gone out: the next block of the message. */
static void smtp_on_drain(void *arg)
{
    wk_smtp *s = arg;

    if (s->state == SMTP_BODY)
        smtp_write_body(s);
}

static void smtp_on_error(void *arg, int err)
{
    wk_smtp *s = arg;

    if (s->state == SMTP_CLOSED || s->reconnecting)
        return;
    if (s->state == SMTP_QUIT || s->state == SMTP_IDLE) {
        smtp_close(s); /* nothing more was expected, or the server gave up idling */
        return;
    }
    if (s->state == SMTP_TLS &&
        tls_may_fallback(s, err == MS_ECLOSED ? "connection closed during the TLS handshake"
                                              : s->t->error))
        return;
    smtp_fail(s, MS_EIO, "4.4.2", "lost connection with %s in state %s: %s", s->peer,
              state_names[s->state], s->t->error);
}

static void smtp_connect_start(wk_smtp *s);

/* The transport is gone: after smtp_close(), or for the plaintext retry. */
static void smtp_on_close(void *arg)
{
    wk_smtp *s = arg;

    s->t = NULL;
    if (s->reconnecting) {
        s->reconnecting = 0;
        ms_buf_reset(&s->in); /* what the old connection said is forgotten */
        if (s->state != SMTP_CLOSED) {
            smtp_connect_start(s);
            return;
        }
    }
    smtp_free_if_closed(s);
}

static const struct ms_conn_cb smtp_transport_cb = {
    .on_connect = smtp_on_connect,
    .on_read = smtp_on_read,
    .on_tls = smtp_on_tls,
    .on_drain = smtp_on_drain,
    .on_error = smtp_on_error,
    .on_close = smtp_on_close,
};

static void smtp_timeout_cb(uv_timer_t *t)
{
    wk_smtp *s = t->data;

    if (s->rset_due) {
        /* A reused connection: RFC 5321 §4.1.1.5, start clean. */
        s->rset_due = 0;
        if ((s->ehlo.flags & MS_EHLO_PIPELINING) && (s->auth_user == NULL || s->auth_done)) {
            /* RFC 2920 §3.1: RSET may lead a pipelined group, so the new
             * transaction costs no extra round trip. A connection the
             * server closed meanwhile still fails before any reply. */
            if (smtp_refuse_locally(s))
                return;
            smtp_cork(s);
            smtp_send(s, "RSET\r\n");
            smtp_send_mail(s);
            s->rset_pipelined = 1;
            smtp_enter_state(s, SMTP_RSET); /* its reply comes first */
            smtp_uncork(s);
            return;
        }
        smtp_enter_state(s, SMTP_RSET);
        smtp_send(s, "RSET\r\n");
        return;
    }
    if (s->state == SMTP_IDLE) {
        smtp_quit(s); /* idle long enough */
        return;
    }
    if (s->state == SMTP_QUIT) {
        smtp_close(s);
        return;
    }
    if (s->connect_err) {
        smtp_fail(s, MS_EIO, "4.4.1", "connect to %s: %s", s->peer, s->connect_why);
        return;
    }
    if (s->state == SMTP_TLS && tls_may_fallback(s, "timeout in the TLS handshake"))
        return;
    smtp_fail(s, MS_ETIMEOUT, s->state == SMTP_CONNECT ? "4.4.1" : "4.4.2",
              "timeout %s %s (%llu ms)", s->state == SMTP_CONNECT ? "connecting to" : "talking to",
              s->peer, (unsigned long long)s->timeout_ms[s->state]);
}

/* Format the cache key of a destination (see WK_SMTP_CACHE_KEY_MAX). */
static void cache_key_format(char *key, size_t keylen, const char *where,
                             const struct wk_smtp_msg *msg, enum wk_tls_policy tls)
{
    /* A connection is reused only under the policy it was judged by: the
     * level, and whether names or DANE records judged it (XXX: two map
     * entries with the same level and different match= names to one
     * server share connections). */
    int n = snprintf(key, keylen, "%s|%d|%s|%zu|%zu|%d|%s|%s|%s", where, (int)tls,
                     msg->tls_label ? msg->tls_label : "", msg->tls_nmatch, msg->ntlsa,
                     msg->lmtp != 0, msg->tls_name ? msg->tls_name : "", msg->helo_name,
                     msg->auth_user ? msg->auth_user : "");

    /* The parts are checked by wk_smtp_start(): a cut key is a bug. */
    if (n < 0 || (size_t)n >= keylen)
        ms_panic("event=smtp_cache_key_too_long");
}

/* Open the connection (again, for a plaintext retry): TCP or UNIX. */
static void smtp_connect_start(wk_smtp *s)
{
    s->connect_err = 0;
    smtp_enter_state(s, SMTP_CONNECT); /* arms the connect timeout */
    if (s->connect(s->loop, (const struct sockaddr *)&s->addr, &smtp_transport_cb, s, &s->t,
                   s->connect_why, sizeof(s->connect_why)) < 0) {
        /* Report from the loop, never from inside start (the caller does not
         * expect its callback before it has the handle). */
        s->t = NULL;
        ms_info("event=smtp_connect_failed qid=%s peer=%s error=\"%s\"", s->log_id, s->peer,
                s->connect_why);
        s->connect_err = 1;
        uv_timer_start(&s->timer, smtp_timeout_cb, 0, 0);
    }
}

/* RFC 3207 §4.1 leaves it to the client what to do when TLS cannot be
 * had.  With `may` (opportunistic TLS, RFC 7435) we do as Postfix does: a
 * failed handshake (or a server that closes the connection in it, or
 * answers STARTTLS with 421) is followed, within the same attempt, by a new
 * connection to the same address without STARTTLS.  `encrypt` and `verify`
 * never come here.  Returns 1 when the retry was started. */
static int tls_may_fallback(wk_smtp *s, const char *why)
{
    if (s->tls_policy != WK_TLS_MAY || tls_up(s) || s->tls_fallback || s->reused)
        return 0;
    ms_info("event=smtp_tls_fallback qid=%s peer=%s state=%s reason=\"%s\"", s->log_id, s->peer,
            state_names[s->state], why);
    s->tls_policy = WK_TLS_NONE;
    s->tls_fallback = 1;
    memset(&s->ehlo, 0, sizeof(s->ehlo));
    s->reconnecting = 1;
    smtp_enter_state(s, SMTP_CONNECT);
    ms_conn_abort(s->t); /* smtp_on_close connects again */
    return 1;
}

int wk_smtp_start(uv_loop_t *loop, const struct sockaddr *addr,
                  const struct wk_smtp_timeouts *t, const struct wk_smtp_msg *msg, wk_smtp_cb cb,
                  void *arg, uint64_t id, wk_smtp **out)
{
    wk_smtp *s;
    char host[INET6_ADDRSTRLEN + 2], where[WK_SMTP_PEER_MAX], key[WK_SMTP_CACHE_KEY_MAX];
    const struct sockaddr_un *sun = (const struct sockaddr_un *)addr;
    enum wk_tls_policy tls;
    size_t i;
    int is_unix = addr->sa_family == AF_UNIX;

    if (msg->nrcpts == 0 || (msg->tls >= WK_TLS_ENCRYPT && msg->tls_ctx == NULL) ||
        !wk_smtp_path_ok(msg->mail_from) ||
        strlen(msg->helo_name) > MS_SMTP_PATH_MAX || !wk_smtp_path_ok(msg->helo_name) ||
        (msg->tls_name && strlen(msg->tls_name) > WK_SMTP_TLS_NAME_MAX) ||
        (msg->tls_label && strlen(msg->tls_label) >= WK_SMTP_TLS_LABEL_MAX) ||
        (msg->tls_match && msg->tls_nmatch > MS_TLS_MATCH_MAX) ||
        (msg->tlsa && msg->ntlsa > MS_TLS_TLSA_MAX))
        return MS_EINVAL;
    if (is_unix && (sun->sun_path[0] == '\0' ||
                    memchr(sun->sun_path, '\0', sizeof(sun->sun_path)) == NULL))
        return MS_EINVAL;
    if (msg->auth_user && (!wk_auth_field_ok(msg->auth_user) || msg->auth_password == NULL ||
                           !wk_auth_field_ok(msg->auth_password)))
        return MS_EINVAL;
    for (i = 0; i < msg->nrcpts; i++)
        if (!wk_smtp_path_ok(msg->rcpts[i]) || *msg->rcpts[i] == '\0')
            return MS_EINVAL;

    /* A UNIX-domain socket is local and protected by its permissions:
     * STARTTLS would add nothing, so it is never used there.  REQUIRETLS
     * (RFC 8689 §4.2.1 step 4) wants a verified certificate whatever the
     * destination's policy says. */
    tls = is_unix || msg->tls_ctx == NULL ? WK_TLS_NONE
          : msg->requiretls              ? WK_TLS_VERIFY
                                         : msg->tls;
    if (is_unix) {
        snprintf(where, sizeof(where), "unix:%s", sun->sun_path);
        host[0] = '\0';
    } else {
        ms_addr_str(addr, host, sizeof(host));
        snprintf(where, sizeof(where), addr->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host,
                 ms_addr_port(addr));
    }
    cache_key_format(key, sizeof(key), where, msg, tls);
    if (msg->cache && !msg->cache->closing) {
        struct ms_list *n;
        wk_smtp *o = NULL;
        ms_list_foreach(n, &msg->cache->idle) {
            o = ms_list_entry(n, wk_smtp, idle_node);
            if (strcmp(o->cache_key, key) == 0)
                break;
            o = NULL;
        }
        if (o) {
            /* Reuse: the transaction is new, the connection is not.  RSET
             * goes out on the next loop turn (never call back from here). */
            s = o;
            smtp_enter_state(s, SMTP_RSET); /* leaves IDLE: unlinked */
            tx_setup(s, msg);
            s->cb = cb;
            s->arg = arg;
            s->id = id;
            s->reused = 1;
            s->rset_due = 1;
            uv_timer_start(&s->timer, smtp_timeout_cb, 0, 0);
            *out = s;
            return 0;
        }
    }
    s = ms_calloc(1, sizeof(*s));
    s->tls_result = -1;
    s->cache = msg->cache && !msg->cache->closing ? msg->cache : NULL;
    if (s->cache)
        s->cache->refs++;
    snprintf(s->cache_key, sizeof(s->cache_key), "%s", key);
    s->timeout_ms[SMTP_CONNECT] = t->connect;
    s->timeout_ms[SMTP_BANNER] = t->banner;
    s->timeout_ms[SMTP_EHLO] = t->helo;
    s->timeout_ms[SMTP_HELO] = t->helo;
    s->timeout_ms[SMTP_STARTTLS] = t->helo;
    s->timeout_ms[SMTP_TLS] = t->helo;
    s->timeout_ms[SMTP_MAIL] = t->mail;
    s->timeout_ms[SMTP_RCPT] = t->rcpt;
    s->timeout_ms[SMTP_GATE] = t->rcpt;
    s->timeout_ms[SMTP_DATA] = t->data;
    s->timeout_ms[SMTP_BODY] = t->block;
    s->timeout_ms[SMTP_BDAT] = t->block;
    s->timeout_ms[SMTP_AUTH] = t->helo;
    s->timeout_ms[SMTP_DOT] = t->dot;
    s->timeout_ms[SMTP_QUIT] = t->quit;
    s->timeout_ms[SMTP_RSET] = t->mail;
    snprintf(s->peer, sizeof(s->peer), "%s", where);
    memcpy(&s->addr, addr,
           is_unix ? sizeof(struct sockaddr_un)
           : addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                         : sizeof(struct sockaddr_in));
    s->loop = loop;
    s->connect = msg->connect ? msg->connect : ms_conn_connect;
    s->helo_name = ms_strdup(msg->helo_name);
    s->lmtp = msg->lmtp;
    s->tls_policy = tls;
    s->tls_ctx = msg->tls_ctx;
    s->tls_name = ms_strdup(msg->tls_name && *msg->tls_name ? msg->tls_name : host);
    snprintf(s->tls_label, sizeof(s->tls_label), "%s",
             msg->tls_label ? msg->tls_label : wk_tls_policy_name(tls));
    if (tls != WK_TLS_NONE) {
        s->tls_nmatch = msg->tls_match ? msg->tls_nmatch : 0;
        s->tls_match = s->tls_nmatch ? ms_calloc(s->tls_nmatch, sizeof(char *)) : NULL;
        for (i = 0; i < s->tls_nmatch; i++)
            s->tls_match[i] = ms_strdup(msg->tls_match[i]);
        s->ntlsa = msg->tlsa ? msg->ntlsa : 0;
        s->tlsa = s->ntlsa ? ms_calloc(s->ntlsa, sizeof(*s->tlsa)) : NULL;
        for (i = 0; i < s->ntlsa; i++) {
            s->tlsa[i] = msg->tlsa[i];
            s->tlsa[i].data = ms_malloc(msg->tlsa[i].len ? msg->tlsa[i].len : 1);
            memcpy((unsigned char *)s->tlsa[i].data, msg->tlsa[i].data, msg->tlsa[i].len);
        }
    }
    if (msg->auth_user) {
        s->auth_user = ms_strdup(msg->auth_user);
        s->auth_password = ms_strdup(msg->auth_password);
        s->auth_plaintext = msg->auth_plaintext;
        s->auth_mechs = msg->auth_mechs ? msg->auth_mechs : MS_AUTH_MECH_PLAIN | MS_AUTH_MECH_LOGIN;
    }
    tx_setup(s, msg);
    ms_buf_init(&s->in, WK_SMTP_INPUT_MAX);
    s->cb = cb;
    s->arg = arg;
    s->id = id;

    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    s->timer_open = 1;
    s->state = SMTP_CONNECT;
    *out = s;
    smtp_connect_start(s);
    return 0;
}

void wk_smtp_gate_answer(wk_smtp *s, uint64_t deadline_ms)
{
    if (s->state != SMTP_GATE)
        return; /* the session ended meanwhile (a timeout, the server) */
    if (deadline_ms == 0) {
        /* Another worker owns the delivery now: not one octet of the
         * message (smtp_client.h). */
        s->fenced = 1;
        smtp_report(s, 0, NULL, "4.4.0", "delivery lease lost before DATA: not sent");
        if (s->pipelined && !s->chunking)
            /* DATA went with MAIL and RCPT: the server reads (or will
             * read) message text now, where a QUIT would be text.  Close
             * instead: without the end of the data the server never
             * processes the transaction (RFC 5321 §4.1.1.4), as when a
             * lease runs out (smtp_lease_ran_out). */
            smtp_close(s);
        else
            smtp_quit(s);
        return;
    }
    s->deadline_ms = deadline_ms;
    if (s->chunking) {
        smtp_send_chunk(s);
        return;
    }
    smtp_enter_state(s, SMTP_DATA);
    if (!s->pipelined)
        smtp_send(s, "DATA\r\n");
    else if (s->data_ready) {
        smtp_enter_state(s, SMTP_BODY); /* the 354 came while the lease was checked */
        smtp_write_body(s);
    }
    /* else the pipelined DATA's 354 is still on its way (case SMTP_DATA) */
}

void wk_smtp_extend(wk_smtp *s, uint64_t deadline_ms)
{
    if (s->deadline_ms != 0 && deadline_ms > s->deadline_ms)
        s->deadline_ms = deadline_ms;
}

void wk_smtp_cancel(wk_smtp *s)
{
    s->cb = NULL;
    smtp_close(s);
}
