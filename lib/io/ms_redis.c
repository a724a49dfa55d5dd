/*
 * ms_redis.c - the only file that includes hiredis (ms_redis.h).
 *
 * One redisAsyncContext attached to the caller's libuv loop.  When the
 * connection drops, commands fail fast with MS_EUNAVAIL and a timer
 * reconnects; a periodic PING keeps the readiness flag honest.  Each
 * connect first loads every Lua script (ms_script.h), so that
 * ms_redis_script() can run them by digest.
 */
#include "ms_redis.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_REDIS_RECONNECT_MS 500
#define MS_REDIS_PING_MS 2000
/* ms_redis_free() waits this long for replies still due before it drops
 * the connection (and fails them). */
#define MS_REDIS_CLOSE_WAIT_MS 2000
/* Nesting deeper than this in a reply is refused rather than recursed into. */
#define MS_REDIS_REPLY_DEPTH_MAX 8

struct ms_redis {
    uv_loop_t *loop;
    char *host;
    int port;
    redisAsyncContext *ac;
    int connected;
    int ping_ok;
    int closing;
    int disconnecting;  /* closing: waiting for the replies still due */
    int handles_closed; /* closing: the timers are being closed */
    int handles_open;
    uv_timer_t reconnect_timer;
    uv_timer_t ping_timer;
    char why[128];
    /* A SCRIPT LOAD after NOSCRIPT is on its way: commands resent after
     * it need no second one (Redis runs a connection's commands in order). */
    int reloading[MS_SCRIPT__COUNT];
};

struct pending {
    ms_redis_cb cb;
    void *arg;
    uint64_t id;
    /* A script run (ms_redis_script): the EVALSHA command as sent, kept
     * for one resend after NOSCRIPT; NULL otherwise, and once resent. */
    char *cmd;
    size_t cmdlen;
    enum ms_script script;
};

/* Request ids of our own SCRIPT LOADs: the script, plus this after NOSCRIPT. */
#define MS_REDIS_RELOAD_ID 0x100

static void redis_connect(ms_redis *r);
static void redis_close_now(ms_redis *r);

/*
 * Our own libuv adapter for hiredis, in place of <hiredis/adapters/libuv.h>.
 * That one arms the socket for writability for every command and disarms it
 * once written; libuv turns each change of a uv_poll into epoll_ctl DEL and
 * ADD, so a command cost five epoll_ctl calls and a loop iteration before it
 * left.  Here a connected context's commands are written just before the
 * loop next waits for events (a uv_prepare handle), all of them in one
 * write, the way Redis itself flushes its replies before it sleeps.  Only
 * when the kernel does not take everything (or while connecting, where
 * writability means the connection is up) does the socket wait for
 * writability.  Reading stays armed from connect to cleanup.
 */
struct redis_ev {
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    uv_poll_t poll;
    uv_prepare_t flush;
    int events;   /* what `poll` waits for */
    int flushing; /* inside flush_cb's redisAsyncHandleWrite */
    int open;     /* handles not yet closed */
};

static void ev_poll_cb(uv_poll_t *h, int status, int events)
{
    struct redis_ev *e = h->data;

    if (status < 0)
        events = e->events; /* let hiredis see the error */
    if (e->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(e->ac);
    if (e->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(e->ac);
}

static void ev_arm(struct redis_ev *e, int events)
{
    if (events == e->events)
        return;
    e->events = events;
    if (events)
        uv_poll_start(&e->poll, events, ev_poll_cb);
    else
        uv_poll_stop(&e->poll);
}

static void ev_flush_cb(uv_prepare_t *h)
{
    struct redis_ev *e = h->data;

    uv_prepare_stop(&e->flush);
    if (e->ac == NULL)
        return;
    e->flushing = 1;
    redisAsyncHandleWrite(e->ac); /* may clean up: e stays until closed */
    e->flushing = 0;
}

static void ev_add_read(void *privdata)
{
    struct redis_ev *e = privdata;

    ev_arm(e, e->events | UV_READABLE);
}

static void ev_del_read(void *privdata)
{
    struct redis_ev *e = privdata;

    ev_arm(e, e->events & ~UV_READABLE);
}

static void ev_add_write(void *privdata)
{
    struct redis_ev *e = privdata;

    /* Connecting, or the last write did not go out whole: wait for the
     * socket.  Otherwise write before the loop sleeps. */
    if (!(e->ac->c.flags & REDIS_CONNECTED) || e->flushing)
        ev_arm(e, e->events | UV_WRITABLE);
    else
        uv_prepare_start(&e->flush, ev_flush_cb);
}

static void ev_del_write(void *privdata)
{
    struct redis_ev *e = privdata;

    uv_prepare_stop(&e->flush);
    ev_arm(e, e->events & ~UV_WRITABLE);
}

static void ev_closed(uv_handle_t *h)
{
    struct redis_ev *e = h->data;

    if (--e->open == 0)
        free(e);
}

static void ev_cleanup(void *privdata)
{
    struct redis_ev *e = privdata;

    e->ac = NULL;
    uv_close((uv_handle_t *)&e->poll, ev_closed);
    uv_close((uv_handle_t *)&e->flush, ev_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct redis_ev *e;

    if (ac->ev.data != NULL)
        return REDIS_ERR;
    e = ms_calloc(1, sizeof(*e));
    if (uv_poll_init(loop, &e->poll, ac->c.fd) != 0) {
        free(e);
        return REDIS_ERR;
    }
    uv_prepare_init(loop, &e->flush);
    e->poll.data = e->flush.data = e;
    e->open = 2;
    e->ac = ac;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ac->ev.data = e;
    return REDIS_OK;
}

static void convert(const redisReply *in, struct ms_redis_reply *out, int depth)
{
    struct ms_redis_reply *elems;
    size_t i;

    memset(out, 0, sizeof(*out));
    switch (in->type) {
    case REDIS_REPLY_INTEGER:
        out->type = MS_REDIS_INT;
        out->integer = in->integer;
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        out->type = MS_REDIS_STR;
        out->str = in->str;
        out->len = in->len;
        break;
    case REDIS_REPLY_ERROR:
        out->type = MS_REDIS_ERR;
        out->str = in->str;
        out->len = in->len;
        break;
    case REDIS_REPLY_ARRAY:
        if (depth >= MS_REDIS_REPLY_DEPTH_MAX) {
            out->type = MS_REDIS_ERR;
            out->str = "reply nested too deeply";
            out->len = strlen(out->str);
            break;
        }
        out->type = MS_REDIS_ARRAY;
        out->nelem = in->elements;
        elems = ms_calloc(in->elements, sizeof(*elems));
        for (i = 0; i < in->elements; i++)
            convert(in->element[i], &elems[i], depth + 1);
        out->elem = elems;
        break;
    default:
        out->type = MS_REDIS_NIL;
        break;
    }
}

static void release(struct ms_redis_reply *r)
{
    size_t i;

    if (r->type != MS_REDIS_ARRAY)
        return;
    for (i = 0; i < r->nelem; i++)
        release((struct ms_redis_reply *)&r->elem[i]);
    free((void *)r->elem);
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata);

static void script_loaded(void *arg, uint64_t id, const struct ms_redis_reply *reply)
{
    ms_redis *r = arg;
    enum ms_script s = (enum ms_script)(id & (MS_REDIS_RELOAD_ID - 1));

    if (id & MS_REDIS_RELOAD_ID)
        r->reloading[s] = 0;
    /* Redis names a script by the SHA-1 of its source, as ms_script_sha()
     * does; a different answer would make every EVALSHA fail. */
    if (reply->type != MS_REDIS_STR || reply->len != MS_SCRIPT_SHA_LEN ||
        memcmp(reply->str, ms_script_sha(s), MS_SCRIPT_SHA_LEN) != 0)
        ms_warn("event=redis_script_load_failed script=%s reply=\"%.*s\"", ms_script_name(s),
                reply->str && reply->len < 200 ? (int)reply->len : 0, reply->str ? reply->str : "");
}

static int script_load(ms_redis *r, enum ms_script s, uint64_t id)
{
    const char *argv[3] = {"SCRIPT", "LOAD", ms_script_source(s)};
    size_t argvlen[3] = {6, 4, strlen(argv[2])};

    return ms_redis_command(r, script_loaded, r, id | (uint64_t)s, 3, argv, argvlen);
}

static int is_noscript(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
           strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* Redis has lost script p->script: load it again and send p's command once
 * more (after the load, as Redis runs one connection's commands in order).
 * 0 when resent: p then waits for the new reply. */
static int script_resend(redisAsyncContext *ac, struct pending *p)
{
    ms_redis *r = ac->data;
    char *cmd = p->cmd;

    if (r->closing || r->ac != ac)
        return -1;
    if (!r->reloading[p->script]) {
        if (script_load(r, p->script, MS_REDIS_RELOAD_ID) < 0)
            return -1;
        r->reloading[p->script] = 1;
        ms_warn("event=redis_script_reload script=%s reason=NOSCRIPT", ms_script_name(p->script));
    }
    p->cmd = NULL; /* once only */
    if (redisAsyncFormattedCommand(ac, reply_cb, p, cmd, p->cmdlen) != REDIS_OK) {
        p->cmd = cmd;
        return -1;
    }
    redisFreeCommand(cmd); /* hiredis copied it */
    return 0;
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct pending *p = privdata;
    struct ms_redis_reply r;

    if (reply != NULL && p->cmd != NULL && is_noscript(reply) && script_resend(ac, p) == 0)
        return;
    if (reply == NULL) {
        memset(&r, 0, sizeof(r));
        r.type = MS_REDIS_FAILED;
        r.str = ac->errstr[0] ? ac->errstr : "connection lost";
        r.len = strlen(r.str);
        p->cb(p->arg, p->id, &r);
    } else {
        convert(reply, &r, 0);
        p->cb(p->arg, p->id, &r);
        release(&r);
    }
    if (p->cmd != NULL)
        redisFreeCommand(p->cmd);
    free(p);
}

static void reconnect_cb(uv_timer_t *t)
{
    redis_connect(t->data);
}

static void schedule_reconnect(ms_redis *r)
{
    if (!r->closing)
        uv_timer_start(&r->reconnect_timer, reconnect_cb, MS_REDIS_RECONNECT_MS, 0);
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;
    int s;

    if (status != REDIS_OK) {
        snprintf(r->why, sizeof(r->why), "redis: %s", ac->errstr);
        if (r->ac == ac)
            r->ac = NULL; /* hiredis frees the context after this callback */
        schedule_reconnect(r);
        return;
    }
    r->connected = 1;
    r->ping_ok = 1;
    memset(r->reloading, 0, sizeof(r->reloading));
    ms_info("event=redis_connected host=%s port=%d", r->host, r->port);
    /* A restarted Redis has no scripts: load them before anything else. */
    for (s = 0; s < MS_SCRIPT__COUNT; s++)
        script_load(r, (enum ms_script)s, 0);
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;

    if (r->ac == ac)
        r->ac = NULL;
    if (r->closing) {
        /* The graceful disconnect of ms_redis_free() is complete (every
         * reply came back), or the forced one is under way. */
        r->connected = 0;
        if (r->disconnecting)
            redis_close_now(r);
        return;
    }
    if (r->connected)
        ms_warn("event=redis_disconnected error=\"%s\"", ac->errstr[0] ? ac->errstr : "closed");
    r->connected = 0;
    snprintf(r->why, sizeof(r->why), "redis: %s", ac->errstr[0] ? ac->errstr : "disconnected");
    schedule_reconnect(r);
}

static void redis_connect(ms_redis *r)
{
    redisAsyncContext *ac;

    if (r->closing || r->ac)
        return;
    ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err) {
        snprintf(r->why, sizeof(r->why), "redis: %s", ac ? ac->errstr : "cannot allocate");
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    r->ac = ac;
}

static void ping_reply(void *arg, uint64_t id, const struct ms_redis_reply *reply)
{
    ms_redis *r = arg;

    r->ping_ok = reply->type == MS_REDIS_STR;
    if (!r->ping_ok)
        snprintf(r->why, sizeof(r->why), "redis: PING failed: %.*s", (int)reply->len,
                 reply->str ? reply->str : "");
}

static void ping_cb(uv_timer_t *t)
{
    ms_redis *r = t->data;
    const char *argv[] = {"PING"};
    size_t argvlen[] = {4};

    if (r->connected)
        ms_redis_command(r, ping_reply, r, 0, 1, argv, argvlen);
}

ms_redis *ms_redis_new(uv_loop_t *loop, const char *host, int port)
{
    ms_redis *r = ms_calloc(1, sizeof(*r));

    r->loop = loop;
    r->host = ms_strdup(host);
    r->port = port;
    snprintf(r->why, sizeof(r->why), "redis: connecting");
    uv_timer_init(loop, &r->reconnect_timer);
    uv_timer_init(loop, &r->ping_timer);
    r->reconnect_timer.data = r->ping_timer.data = r;
    uv_timer_start(&r->ping_timer, ping_cb, MS_REDIS_PING_MS, MS_REDIS_PING_MS);
    redis_connect(r);
    return r;
}

int ms_redis_command(ms_redis *r, ms_redis_cb cb, void *arg, uint64_t id, int argc,
                     const char **argv, const size_t *argvlen)
{
    struct pending *p;

    if (!r->connected || r->ac == NULL)
        return MS_EUNAVAIL;
    p = ms_malloc(sizeof(*p));
    p->cb = cb;
    p->arg = arg;
    p->id = id;
    p->cmd = NULL;
    if (redisAsyncCommandArgv(r->ac, reply_cb, p, argc, argv, argvlen) != REDIS_OK) {
        free(p);
        return MS_EUNAVAIL;
    }
    return 0;
}

static void on_fired(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    (void)id;
    if (arg != NULL && (r->type == MS_REDIS_ERR || r->type == MS_REDIS_FAILED))
        ms_counter_inc(arg);
}

void ms_redis_fire(ms_redis *r, struct ms_counter *errors, int argc, const char **argv)
{
    size_t argvlen[MS_REDIS_FIRE_ARGC_MAX];
    int k;

    if (r == NULL)
        return;
    if (argc < 1 || argc > MS_REDIS_FIRE_ARGC_MAX)
        ms_panic("event=redis_fire_argc argc=%d", argc);
    for (k = 0; k < argc; k++)
        argvlen[k] = strlen(argv[k]);
    if (ms_redis_command(r, on_fired, errors, 0, argc, argv, argvlen) < 0 && errors != NULL)
        ms_counter_inc(errors);
}

int ms_redis_script(ms_redis *r, enum ms_script s, ms_redis_cb cb, void *arg, uint64_t id, int argc,
                    const char **argv, const size_t *argvlen)
{
    const char *av[MS_REDIS_SCRIPT_ARGC_MAX + 2];
    size_t avlen[MS_REDIS_SCRIPT_ARGC_MAX + 2];
    struct pending *p;
    char *cmd;
    int len;

    if (argc < 1 || argc > MS_REDIS_SCRIPT_ARGC_MAX)
        return MS_EINVAL;
    if (!r->connected || r->ac == NULL)
        return MS_EUNAVAIL;
    av[0] = "EVALSHA";
    avlen[0] = 7;
    av[1] = ms_script_sha(s);
    avlen[1] = MS_SCRIPT_SHA_LEN;
    memcpy(av + 2, argv, (size_t)argc * sizeof(*argv));
    memcpy(avlen + 2, argvlen, (size_t)argc * sizeof(*argvlen));
    /* Formatted here, not by redisAsyncCommandArgv, to keep it for a
     * resend after NOSCRIPT. */
    len = redisFormatCommandArgv(&cmd, argc + 2, av, avlen);
    if (len < 0)
        ms_panic("event=redis_format_failed"); /* only when out of memory */
    p = ms_malloc(sizeof(*p));
    p->cb = cb;
    p->arg = arg;
    p->id = id;
    p->cmd = cmd;
    p->cmdlen = (size_t)len;
    p->script = s;
    if (redisAsyncFormattedCommand(r->ac, reply_cb, p, cmd, (size_t)len) != REDIS_OK) {
        redisFreeCommand(cmd);
        free(p);
        return MS_EUNAVAIL;
    }
    return 0;
}

int ms_redis_ready(ms_redis *r, char *why, size_t whylen)
{
    int ok = r->connected && r->ping_ok;

    if (!ok)
        snprintf(why, whylen, "%s", r->why);
    return ok;
}

static void timer_closed(uv_handle_t *h)
{
    ms_redis *r = h->data;

    if (--r->handles_open == 0) {
        free(r->host);
        free(r);
    }
}

static void close_deadline_cb(uv_timer_t *t)
{
    ms_redis *r = t->data;

    ms_warn("event=redis_close_timeout wait_ms=%d", MS_REDIS_CLOSE_WAIT_MS);
    redis_close_now(r);
}

/* Drop the connection now (replies still due fail) and close the timers;
 * the last timer's close callback frees r. */
static void redis_close_now(ms_redis *r)
{
    if (r->handles_closed)
        return;
    r->handles_closed = 1;
    r->disconnecting = 0;
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        /* Pending replies get MS_REDIS_FAILED through their callbacks. */
        redisAsyncFree(ac);
    }
    r->handles_open = 2;
    uv_close((uv_handle_t *)&r->reconnect_timer, timer_closed);
    uv_close((uv_handle_t *)&r->ping_timer, timer_closed);
}

void ms_redis_free(ms_redis *r)
{
    if (r == NULL)
        return;
    r->closing = 1;
    uv_timer_stop(&r->ping_timer);
    uv_timer_stop(&r->reconnect_timer);
    if (r->ac && r->connected) {
        /* Commands sent just before shutdown (delivered markers, retry
         * state) must still reach Redis: hiredis writes what is buffered,
         * takes every reply still due, then disconnects (disconnect_cb
         * finishes the close; at once when nothing is due). */
        r->disconnecting = 1;
        redisAsyncDisconnect(r->ac);
        if (!r->handles_closed)
            uv_timer_start(&r->reconnect_timer, close_deadline_cb, MS_REDIS_CLOSE_WAIT_MS, 0);
        return;
    }
    redis_close_now(r);
}

/* ---- the blocking client (ms_redis.h) ---- */

struct ms_redis_sync {
    redisContext *c;
    char why[128];
};

ms_redis_sync *ms_redis_sync_connect(const char *host, int port, int timeout_ms, char *err,
                                     size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    ms_redis_sync *s;
    redisContext *c = redisConnectWithTimeout(host, port, tv);

    if (c == NULL || c->err) {
        snprintf(err, errlen, "redis %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    s = ms_calloc(1, sizeof(*s));
    s->c = c;
    return s;
}

/* A deep copy of a hiredis reply: the caller keeps it after the next read. */
static struct ms_redis_reply *sync_copy(const redisReply *in, struct ms_redis_reply *out,
                                        int depth)
{
    struct ms_redis_reply *elems;
    char *str;
    size_t i;

    convert(in, out, MS_REDIS_REPLY_DEPTH_MAX); /* scalars only: no allocation */
    if (out->type == MS_REDIS_STR || (out->type == MS_REDIS_ERR && in->type == REDIS_REPLY_ERROR)) {
        str = ms_malloc(in->len + 1);
        memcpy(str, in->str, in->len);
        str[in->len] = '\0';
        out->str = str;
        out->len = in->len;
    } else if (in->type == REDIS_REPLY_ARRAY && depth < MS_REDIS_REPLY_DEPTH_MAX) {
        out->type = MS_REDIS_ARRAY;
        out->nelem = in->elements;
        elems = ms_calloc(in->elements ? in->elements : 1, sizeof(*elems));
        for (i = 0; i < in->elements; i++)
            sync_copy(in->element[i], &elems[i], depth + 1);
        out->elem = elems;
    } else if (out->type == MS_REDIS_ERR) {
        out->str = ms_strdup(out->str); /* "nested too deeply" */
    }
    return out;
}

static void sync_release(struct ms_redis_reply *r)
{
    size_t i;

    if (r->type == MS_REDIS_ARRAY) {
        for (i = 0; i < r->nelem; i++)
            sync_release((struct ms_redis_reply *)&r->elem[i]);
        free((void *)r->elem);
    } else if (r->type == MS_REDIS_STR || r->type == MS_REDIS_ERR) {
        free((void *)r->str);
    }
}

int ms_redis_sync_append(ms_redis_sync *c, int argc, const char **argv, const size_t *argvlen)
{
    if (redisAppendCommandArgv(c->c, argc, argv, argvlen) != REDIS_OK) {
        snprintf(c->why, sizeof(c->why), "%s", c->c->errstr);
        return MS_EIO;
    }
    return 0;
}

struct ms_redis_reply *ms_redis_sync_read(ms_redis_sync *c)
{
    void *reply = NULL;
    struct ms_redis_reply *out;

    if (redisGetReply(c->c, &reply) != REDIS_OK || reply == NULL) {
        snprintf(c->why, sizeof(c->why), "%s", c->c->err ? c->c->errstr : "no reply");
        return NULL;
    }
    out = sync_copy(reply, ms_calloc(1, sizeof(*out)), 0);
    freeReplyObject(reply);
    return out;
}

struct ms_redis_reply *ms_redis_sync_command(ms_redis_sync *c, int argc, const char **argv,
                                             const size_t *argvlen)
{
    if (ms_redis_sync_append(c, argc, argv, argvlen) < 0)
        return NULL;
    return ms_redis_sync_read(c);
}

const char *ms_redis_sync_error(const ms_redis_sync *c)
{
    return c->why;
}

void ms_redis_sync_reply_free(struct ms_redis_reply *r)
{
    if (r == NULL)
        return;
    sync_release(r);
    free(r);
}

void ms_redis_sync_free(ms_redis_sync *c)
{
    if (c == NULL)
        return;
    redisFree(c->c);
    free(c);
}
