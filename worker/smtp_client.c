/*
 * smtp_client.c - asynchronous SMTP client transaction (smtp_client.h).
 *
 * One session struct owns the socket, the timer, the input buffer and the
 * stuffed message; all state changes go through smtp_enter_state(), which
 * also arms the state's timeout.  Replies are parsed by wk_reply_parse()
 * (smtp_reply.c) and dispatched on the state.  Memory is released only in
 * the close callbacks.
 */
#include "smtp_client.h"
#include "dotstuff.h"
#include "ms_buf.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_net.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for the longest complete reply the parser accepts. */
#define WK_SMTP_INPUT_MAX (WK_REPLY_LINES_MAX * (WK_REPLY_LINE_MAX + 2))
/* Longest command we send: "RCPT TO:<path> SMTPUTF8\r\n" and the like. */
#define WK_SMTP_COMMAND_MAX (WK_SMTP_PATH_MAX + 128)

enum smtp_state {
    SMTP_CONNECT,
    SMTP_BANNER,
    SMTP_EHLO,
    SMTP_HELO,
    SMTP_MAIL,
    SMTP_RCPT,
    SMTP_DATA,
    SMTP_BODY,
    SMTP_DOT,
    SMTP_QUIT,
    SMTP_CLOSED,
    SMTP__NSTATES
};

static const char *const state_names[SMTP__NSTATES] = {
    "connect", "banner", "ehlo", "helo", "mail", "rcpt", "data", "body", "dot", "quit", "closed",
};

struct wk_smtp {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    int handles_open;
    int connect_err;                /* uv_tcp_connect failed at once */
    enum smtp_state state;
    uint64_t timeout_ms[SMTP__NSTATES];
    char peer[64];                  /* ip:port, for diagnostics */
    char log_id[64];

    /* The transaction. */
    char *helo_name;
    char *mail_from;
    int body_8bitmime, smtputf8;
    size_t nrcpts;
    char **rcpts;
    size_t msg_len;                 /* unstuffed, for SIZE= */
    char *body;                     /* stuffed, terminator included */
    size_t body_len, body_off;

    /* Progress. */
    struct ms_buf in;
    struct wk_ehlo ehlo;
    size_t rcpt_next;               /* next RCPT to send / being answered */
    size_t naccepted;               /* RCPTs answered 2yz */
    int *final;                     /* per recipient: result is final */
    struct wk_smtp_rcpt_result *results;

    wk_smtp_cb cb;
    void *arg;
    uint64_t id;
};

struct smtp_write {
    uv_write_t req;
    wk_smtp *s;
    char data[];
};

static void smtp_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

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

    if (strlen(addr) > WK_SMTP_PATH_MAX)
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

/* ---- lifetime ---- */

static void smtp_free(wk_smtp *s)
{
    size_t i;

    for (i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i]);
    free(s->rcpts);
    free(s->final);
    free(s->results);
    free(s->body);
    free(s->helo_name);
    free(s->mail_from);
    ms_buf_free(&s->in);
    free(s);
}

static void smtp_close_cb(uv_handle_t *h)
{
    wk_smtp *s = h->data;

    if (--s->handles_open == 0)
        smtp_free(s);
}

/* The one place states change; arms the new state's timeout. */
static void smtp_enter_state(wk_smtp *s, enum smtp_state next);

static void smtp_close(wk_smtp *s)
{
    if (s->state == SMTP_CLOSED)
        return;
    smtp_enter_state(s, SMTP_CLOSED);
    uv_close((uv_handle_t *)&s->timer, smtp_close_cb);
    uv_close((uv_handle_t *)&s->tcp, smtp_close_cb);
}

static void smtp_timeout_cb(uv_timer_t *t);

static void smtp_enter_state(wk_smtp *s, enum smtp_state next)
{
    ms_debug("event=smtp_state qid=%s peer=%s from=%s to=%s", s->log_id, s->peer,
             state_names[s->state], state_names[next]);
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

static void set_result_reply(struct wk_smtp_rcpt_result *r, const struct wk_reply *reply)
{
    char text[WK_SMTP_REPLY_TEXT_MAX];

    wk_reply_format(reply, text, sizeof(text));
    set_result(r, reply->code, reply->dsn, text);
}

/* Report the outcome (once).  Every recipient without a final result gets
 * `reply`, or our diagnostic (code 0, `dsn`, `why`) when reply is NULL. */
static void smtp_report(wk_smtp *s, int err, const struct wk_reply *reply, const char *dsn,
                        const char *why)
{
    struct wk_smtp_result res;
    wk_smtp_cb cb = s->cb;
    size_t i;

    if (cb == NULL)
        return;
    s->cb = NULL;
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

static void smtp_write_cb(uv_write_t *req, int status)
{
    struct smtp_write *w = (struct smtp_write *)req;
    wk_smtp *s = w->s;

    free(w);
    if (status < 0 && status != UV_ECANCELED)
        smtp_fail(s, MS_EIO, "4.4.2", "lost connection with %s while sending %s: %s", s->peer,
                  state_names[s->state], uv_strerror(status));
}

static void smtp_send(wk_smtp *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void smtp_send(wk_smtp *s, const char *fmt, ...)
{
    struct smtp_write *w = ms_malloc(sizeof(*w) + WK_SMTP_COMMAND_MAX);
    uv_buf_t buf;
    va_list ap;
    int n, r;

    va_start(ap, fmt);
    n = vsnprintf(w->data, WK_SMTP_COMMAND_MAX, fmt, ap);
    va_end(ap);
    /* Paths are checked by wk_smtp_path_ok() at start: a command that does
     * not fit is a bug. */
    if (n < 0 || n >= WK_SMTP_COMMAND_MAX)
        ms_panic("event=smtp_command_too_long qid=%s", s->log_id);
    w->s = s;
    buf = uv_buf_init(w->data, (unsigned)n);
    if ((r = uv_write(&w->req, (uv_stream_t *)&s->tcp, &buf, 1, smtp_write_cb)) < 0) {
        free(w);
        smtp_fail(s, MS_EIO, "4.4.2", "cannot send to %s: %s", s->peer, uv_strerror(r));
    }
}

static void smtp_body_write_cb(uv_write_t *req, int status);

static void smtp_write_block(wk_smtp *s)
{
    size_t n = s->body_len - s->body_off;
    uv_write_t *req = ms_malloc(sizeof(*req));
    uv_buf_t buf;
    int r;

    if (n > WK_SMTP_DATA_BLOCK)
        n = WK_SMTP_DATA_BLOCK;
    buf = uv_buf_init(s->body + s->body_off, (unsigned)n);
    req->data = s;
    s->body_off += n;
    /* §4.5.3.2.5: the timeout is per block. */
    uv_timer_start(&s->timer, smtp_timeout_cb, s->timeout_ms[SMTP_BODY], 0);
    if ((r = uv_write(req, (uv_stream_t *)&s->tcp, &buf, 1, smtp_body_write_cb)) < 0) {
        free(req);
        smtp_fail(s, MS_EIO, "4.4.2", "cannot send message to %s: %s", s->peer, uv_strerror(r));
    }
}

static void smtp_body_write_cb(uv_write_t *req, int status)
{
    wk_smtp *s = req->data;

    free(req);
    if (status == UV_ECANCELED || s->state != SMTP_BODY)
        return;
    if (status < 0) {
        smtp_fail(s, MS_EIO, "4.4.2", "lost connection with %s while sending message: %s",
                  s->peer, uv_strerror(status));
        return;
    }
    if (s->body_off < s->body_len)
        smtp_write_block(s);
    else
        smtp_enter_state(s, SMTP_DOT);
}

/* ---- the dialogue ---- */

static void smtp_quit(wk_smtp *s)
{
    smtp_enter_state(s, SMTP_QUIT);
    smtp_send(s, "QUIT\r\n");
}

static void smtp_send_mail(wk_smtp *s)
{
    char params[64] = "";
    size_t n = 0;

    if (s->ehlo.flags & WK_EHLO_SIZE)
        n += (size_t)snprintf(params + n, sizeof(params) - n, " SIZE=%zu", s->msg_len);
    if (s->body_8bitmime && (s->ehlo.flags & WK_EHLO_8BITMIME))
        n += (size_t)snprintf(params + n, sizeof(params) - n, " BODY=8BITMIME");
    if (s->smtputf8 && (s->ehlo.flags & WK_EHLO_SMTPUTF8))
        snprintf(params + n, sizeof(params) - n, " SMTPUTF8");
    smtp_enter_state(s, SMTP_MAIL);
    smtp_send(s, "MAIL FROM:<%s>%s\r\n", s->mail_from, params);
}

/* What we know before MAIL FROM that makes the message undeliverable to this
 * server: report it as the server would have (permanent) and QUIT. */
static int smtp_refuse_locally(wk_smtp *s)
{
    struct wk_reply r = {.nlines = 1};
    char text[160];
    size_t i;
    int utf8 = 0;

    if (s->ehlo.size_max > 0 && s->msg_len > s->ehlo.size_max) {
        /* RFC 1870 §6.1: do not send what the server said it will refuse. */
        r.code = 552;
        snprintf(r.dsn, sizeof(r.dsn), "5.3.4");
        snprintf(text, sizeof(text), "5.3.4 message size %zu exceeds the limit %llu of %s",
                 s->msg_len, (unsigned long long)s->ehlo.size_max, s->peer);
    } else if (s->smtputf8 && !(s->ehlo.flags & WK_EHLO_SMTPUTF8)) {
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

static void smtp_send_rcpt(wk_smtp *s)
{
    smtp_send(s, "RCPT TO:<%s>\r\n", s->rcpts[s->rcpt_next]);
}

static void smtp_handle_reply(wk_smtp *s, const struct wk_reply *r)
{
    int ok = r->code >= 200 && r->code < 300;
    size_t i;

    switch (s->state) {
    case SMTP_BANNER:
        if (!ok)
            break;
        smtp_enter_state(s, SMTP_EHLO);
        smtp_send(s, "EHLO %s\r\n", s->helo_name);
        return;
    case SMTP_EHLO:
        if (ok) {
            wk_ehlo_parse(r, &s->ehlo);
        } else if (r->code >= 500) {
            /* RFC 5321 §3.2: an old server; fall back to HELO. */
            smtp_enter_state(s, SMTP_HELO);
            smtp_send(s, "HELO %s\r\n", s->helo_name);
            return;
        } else {
            break;
        }
        if (!smtp_refuse_locally(s))
            smtp_send_mail(s);
        return;
    case SMTP_HELO:
        if (!ok)
            break;
        memset(&s->ehlo, 0, sizeof(s->ehlo));
        if (!smtp_refuse_locally(s))
            smtp_send_mail(s);
        return;
    case SMTP_MAIL:
        if (!ok)
            break;
        smtp_enter_state(s, SMTP_RCPT);
        s->rcpt_next = 0;
        smtp_send_rcpt(s);
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
            smtp_send_rcpt(s);
            return;
        }
        if (s->naccepted == 0) {
            smtp_report(s, 0, NULL, NULL, NULL); /* every recipient is final */
            smtp_quit(s);
            return;
        }
        smtp_enter_state(s, SMTP_DATA);
        smtp_send(s, "DATA\r\n");
        return;
    case SMTP_DATA:
        if (r->code != 354)
            break;
        smtp_enter_state(s, SMTP_BODY);
        smtp_write_block(s);
        return;
    case SMTP_BODY:
    case SMTP_DOT:
        /* The reply to the end of data (or an early one while we still
         * write: the server gave up on the message). */
        smtp_report(s, 0, r, NULL, NULL);
        if (s->state == SMTP_BODY)
            smtp_close(s);
        else
            smtp_quit(s);
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

static void smtp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    wk_smtp *s = h->data;
    size_t want = suggested < 4096 ? suggested : 4096;
    char *p;

    if (s->in.len + want > s->in.max)
        want = s->in.max - s->in.len;
    p = want > 0 ? ms_buf_reserve(&s->in, want) : NULL;
    *buf = uv_buf_init(p, p ? (unsigned)want : 0);
}

static void smtp_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    wk_smtp *s = stream->data;
    struct wk_reply r;
    int n;

    if (s->state == SMTP_CLOSED)
        return;
    if (nread == UV_ENOBUFS) {
        smtp_fail(s, MS_ETOOBIG, "4.4.2", "reply from %s too long", s->peer);
        return;
    }
    if (nread < 0) {
        if (s->state == SMTP_QUIT) {
            smtp_close(s);
            return;
        }
        smtp_fail(s, MS_EIO, "4.4.2", "lost connection with %s in state %s: %s", s->peer,
                  state_names[s->state],
                  nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
        return;
    }
    ms_buf_commit(&s->in, (size_t)nread);
    while (s->state != SMTP_CLOSED && s->in.len > 0) {
        n = wk_reply_parse(s->in.data, s->in.len, &r);
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
        ms_buf_consume(&s->in, (size_t)n);
    }
}

static void smtp_connect_cb(uv_connect_t *req, int status)
{
    wk_smtp *s = req->data;
    int r;

    if (status == UV_ECANCELED || s->state == SMTP_CLOSED)
        return;
    if (status < 0) {
        smtp_fail(s, MS_EIO, "4.4.1", "connect to %s: %s", s->peer, uv_strerror(status));
        return;
    }
    smtp_enter_state(s, SMTP_BANNER);
    if ((r = uv_read_start((uv_stream_t *)&s->tcp, smtp_alloc_cb, smtp_read_cb)) < 0)
        smtp_fail(s, MS_EIO, "4.4.2", "read from %s: %s", s->peer, uv_strerror(r));
}

static void smtp_timeout_cb(uv_timer_t *t)
{
    wk_smtp *s = t->data;

    if (s->state == SMTP_QUIT) {
        smtp_close(s);
        return;
    }
    if (s->connect_err) {
        smtp_fail(s, MS_EIO, "4.4.1", "connect to %s: %s", s->peer, uv_strerror(s->connect_err));
        return;
    }
    smtp_fail(s, MS_ETIMEOUT, s->state == SMTP_CONNECT ? "4.4.1" : "4.4.2",
              "timeout %s %s (%llu ms)", s->state == SMTP_CONNECT ? "connecting to" : "talking to",
              s->peer, (unsigned long long)s->timeout_ms[s->state]);
}

int wk_smtp_start(uv_loop_t *loop, const struct sockaddr *addr,
                  const struct wk_smtp_timeouts *t, const struct wk_smtp_msg *msg, wk_smtp_cb cb,
                  void *arg, uint64_t id, wk_smtp **out)
{
    wk_smtp *s;
    char host[INET6_ADDRSTRLEN + 2];
    size_t i;
    int r;

    if (msg->nrcpts == 0 || !wk_smtp_path_ok(msg->mail_from) ||
        strlen(msg->helo_name) > WK_SMTP_PATH_MAX || !wk_smtp_path_ok(msg->helo_name))
        return MS_EINVAL;
    for (i = 0; i < msg->nrcpts; i++)
        if (!wk_smtp_path_ok(msg->rcpts[i]) || *msg->rcpts[i] == '\0')
            return MS_EINVAL;

    s = ms_calloc(1, sizeof(*s));
    s->timeout_ms[SMTP_CONNECT] = t->connect;
    s->timeout_ms[SMTP_BANNER] = t->banner;
    s->timeout_ms[SMTP_EHLO] = t->helo;
    s->timeout_ms[SMTP_HELO] = t->helo;
    s->timeout_ms[SMTP_MAIL] = t->mail;
    s->timeout_ms[SMTP_RCPT] = t->rcpt;
    s->timeout_ms[SMTP_DATA] = t->data;
    s->timeout_ms[SMTP_BODY] = t->block;
    s->timeout_ms[SMTP_DOT] = t->dot;
    s->timeout_ms[SMTP_QUIT] = t->quit;
    ms_addr_str(addr, host, sizeof(host));
    snprintf(s->peer, sizeof(s->peer), addr->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host,
             ms_addr_port(addr));
    snprintf(s->log_id, sizeof(s->log_id), "%s", msg->log_id ? msg->log_id : "-");
    s->helo_name = ms_strdup(msg->helo_name);
    s->mail_from = ms_strdup(msg->mail_from);
    s->body_8bitmime = msg->body_8bitmime;
    s->smtputf8 = msg->smtputf8;
    s->nrcpts = msg->nrcpts;
    s->rcpts = ms_calloc(msg->nrcpts, sizeof(*s->rcpts));
    for (i = 0; i < msg->nrcpts; i++)
        s->rcpts[i] = ms_strdup(msg->rcpts[i]);
    s->final = ms_calloc(msg->nrcpts, sizeof(*s->final));
    s->results = ms_calloc(msg->nrcpts, sizeof(*s->results));
    s->msg_len = msg->len;
    s->body_len = wk_dotstuff_len(msg->data, msg->len);
    s->body = ms_malloc(s->body_len);
    wk_dotstuff(msg->data, msg->len, s->body);
    ms_buf_init(&s->in, WK_SMTP_INPUT_MAX);
    s->cb = cb;
    s->arg = arg;
    s->id = id;

    uv_tcp_init(loop, &s->tcp);
    uv_timer_init(loop, &s->timer);
    s->tcp.data = s->timer.data = s->connect_req.data = s;
    s->handles_open = 2;
    s->state = SMTP_CONNECT;
    uv_timer_start(&s->timer, smtp_timeout_cb, s->timeout_ms[SMTP_CONNECT], 0);
    *out = s;
    if ((r = uv_tcp_connect(&s->connect_req, &s->tcp, addr, smtp_connect_cb)) < 0) {
        /* Report from the loop, never from inside start (the caller does not
         * expect its callback before it has the handle). */
        ms_info("event=smtp_connect_failed qid=%s peer=%s error=\"%s\"", s->log_id, s->peer,
                uv_strerror(r));
        s->connect_err = r;
        uv_timer_start(&s->timer, smtp_timeout_cb, 0, 0);
    }
    return 0;
}

void wk_smtp_cancel(wk_smtp *s)
{
    s->cb = NULL;
    smtp_close(s);
}
