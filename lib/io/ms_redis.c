/*
 * ms_redis.c - the only file that includes hiredis (ms_redis.h).
 *
 * One redisAsyncContext attached to the caller's libuv loop.  When the
 * connection drops, commands fail fast with MS_EUNAVAIL and a timer
 * reconnects; a periodic PING keeps the readiness flag honest.  Each
 * connect first authenticates (when a password is set), then, with
 * Sentinels, checks ROLE, then loads every Lua script (ms_script.h), so that
 * ms_redis_script() can run them by digest.
 *
 * With Sentinels (ms_redis.h) the address comes from a Sentinel before each
 * connect, and a connect counts only once ROLE says "master"; the
 * functions named sentinel_* and primary_* are that mode, the rest is
 * shared.
 */
#include "ms_redis.h"
#include "ms_config.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "ms_metrics.h"

#include <ctype.h>
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
/* One question to one Sentinel (connect and answer) gets this long before
 * the next Sentinel is asked: hiredis 0.14 has no connect timeout of its
 * own, and a Sentinel on a host that is gone would hold us forever. */
#define MS_REDIS_SENTINEL_TIMEOUT_MS 1000

struct sentinel_addr {
    char host[MS_REDIS_SENTINEL_HOST_MAX + 1];
    int port;
};

struct ms_redis {
    uv_loop_t *loop;
    char *host;
    int port;
    char *username;     /* NULL: the default user */
    char *password;     /* NULL: no AUTH; a secret, never logged */
    int linger_ms;      /* ms_redis_conf.linger_ms */
    redisAsyncContext *ac;
    int connected;
    int ping_ok;
    int closing;
    int disconnecting;  /* closing: waiting for the replies still due */
    int auth_failed;    /* the last AUTH was refused: retry slowly */
    int handles_closed; /* closing: the timers are being closed */
    int handles_open;
    uv_timer_t reconnect_timer;
    uv_timer_t ping_timer;
    char why[400]; /* room for a host of MS_REDIS_SENTINEL_HOST_MAX */
    /* Sentinel mode: nsentinels > 0.  host and port then hold the primary
     * the last Sentinel named, valid while have_primary. */
    struct sentinel_addr *sentinels;
    size_t nsentinels;
    size_t sentinel_next; /* the Sentinel asked next */
    char *master_name;
    int have_primary;
    int asking;                /* a question to sac has no answer yet */
    redisAsyncContext *sac;    /* the connection to the Sentinel asked */
    redisAsyncContext *sub;    /* subscribed to +switch-master on a Sentinel */
    uv_timer_t sentinel_timer; /* MS_REDIS_SENTINEL_TIMEOUT_MS per question */
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
static void sentinel_ask(ms_redis *r);
static void primary_check_role(ms_redis *r, redisAsyncContext *ac);
static void primary_lost(ms_redis *r, const char *reason);
static void sentinel_subscribe(ms_redis *r);

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
 *
 * With [redis] linger_ms (the client's own connection, not a Sentinel's),
 * the first command queued starts a timer instead, and what is queued when
 * it fires leaves in one write: a worker's script calls come one at a time
 * (a sink's reply each), and Redis pays a wake-up, a read, a write and an
 * AOF append per batch it reads, whatever the batch holds
 * (docs/scaling.md, item 5 of "What bounds what").
 */
struct redis_ev {
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    uv_poll_t poll;
    uv_prepare_t flush;
    uv_timer_t linger; /* linger_ms > 0: in place of flush */
    uint64_t linger_ms;
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

static void ev_flush(struct redis_ev *e)
{
    uv_prepare_stop(&e->flush);
    uv_timer_stop(&e->linger);
    if (e->ac == NULL)
        return;
    e->flushing = 1;
    redisAsyncHandleWrite(e->ac); /* may clean up: e stays until closed */
    e->flushing = 0;
}

static void ev_flush_cb(uv_prepare_t *h)
{
    ev_flush(h->data);
}

static void ev_linger_cb(uv_timer_t *h)
{
    ev_flush(h->data);
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
     * socket.  Otherwise write once linger_ms have passed since the first
     * command queued, or before the loop sleeps. */
    if (!(e->ac->c.flags & REDIS_CONNECTED) || e->flushing)
        ev_arm(e, e->events | UV_WRITABLE);
    else if (e->linger_ms == 0)
        uv_prepare_start(&e->flush, ev_flush_cb);
    else if (!uv_is_active((uv_handle_t *)&e->linger))
        uv_timer_start(&e->linger, ev_linger_cb, e->linger_ms, 0);
}

static void ev_del_write(void *privdata)
{
    struct redis_ev *e = privdata;

    uv_prepare_stop(&e->flush);
    uv_timer_stop(&e->linger);
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
    uv_close((uv_handle_t *)&e->linger, ev_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop, uint64_t linger_ms)
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
    uv_timer_init(loop, &e->linger);
    e->poll.data = e->flush.data = e->linger.data = e;
    e->linger_ms = linger_ms;
    e->open = 3;
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

static int is_readonly(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
           strncmp(reply->str, "READONLY", 8) == 0;
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
    if (reply != NULL && is_readonly(reply)) {
        ms_redis *rd = ac->data;

        /* A replica answered a write: the server we talk to was demoted
         * (a failover).  The caller gets the error; new commands wait for
         * the new primary. */
        if (rd->nsentinels > 0 && rd->ac == ac && rd->connected)
            primary_lost(rd, "READONLY");
    }
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

/* The connection is usable (authenticated when it must be, and the
 * primary in Sentinel mode): load the scripts, accept commands. */
static void redis_up(ms_redis *r)
{
    int s;

    r->connected = 1;
    r->ping_ok = 1;
    r->auth_failed = 0;
    memset(r->reloading, 0, sizeof(r->reloading));
    ms_info("event=redis_connected host=%s port=%d user=%s", r->host, r->port,
            r->username ? r->username : r->password ? "default" : "-");
    /* A restarted Redis has no scripts: load them before anything else. */
    for (s = 0; s < MS_SCRIPT__COUNT; s++)
        script_load(r, (enum ms_script)s, 0);
    if (r->nsentinels > 0)
        sentinel_subscribe(r);
}

/* Authenticated (or no AUTH configured): in Sentinel mode the server must
 * still prove it is the primary (ROLE needs the login, so it comes after
 * AUTH); otherwise the connection is up. */
static void redis_authenticated(ms_redis *r, redisAsyncContext *ac)
{
    if (r->nsentinels > 0)
        primary_check_role(r, ac);
    else
        redis_up(r);
}

/* The answer to AUTH.  Refused: log it (Redis's own words, which never
 * hold the password: WRONGPASS, or "ERR AUTH ... no password is set"),
 * stay not ready, and try again on a new connection after
 * MS_REDIS_AUTH_RETRY_MS (the credentials may be fixed meanwhile, a Secret
 * rotated, the ACL user created). */
static void auth_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    ms_redis *r = ac->data;
    redisReply *rep = reply;
    char q[256];

    (void)privdata;
    if (rep == NULL || r->closing || r->ac != ac)
        return; /* disconnected meanwhile: disconnect_cb reconnects */
    if (rep->type == REDIS_REPLY_STATUS) {
        r->auth_failed = 0; /* a refused ROLE check must not retry slowly */
        redis_authenticated(r, ac);
        return;
    }
    ms_log_quote(q, sizeof(q), rep->str ? rep->str : "", rep->str ? rep->len : 0);
    ms_log(MS_LOG_ERROR, "event=redis_auth_failed host=%s port=%d user=%s reply=%s "
           "retry_ms=%d", r->host, r->port, r->username ? r->username : "default", q,
           MS_REDIS_AUTH_RETRY_MS);
    snprintf(r->why, sizeof(r->why), "redis: AUTH as %s refused: %.*s",
             r->username ? r->username : "default", rep->str ? (int)(rep->len < 80 ? rep->len : 80) : 0,
             rep->str ? rep->str : "");
    r->auth_failed = 1;
    redisAsyncDisconnect(ac);
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;
    const char *argv[3] = {"AUTH", r->username, r->password};
    size_t argvlen[3];
    int argc;

    if (status != REDIS_OK) {
        snprintf(r->why, sizeof(r->why), "redis: %s:%d: %s", r->host, r->port, ac->errstr);
        if (r->ac == ac)
            r->ac = NULL;    /* hiredis frees the context after this callback */
        r->have_primary = 0; /* Sentinel mode: ask again */
        schedule_reconnect(r);
        return;
    }
    if (r->password == NULL) {
        redis_authenticated(r, (redisAsyncContext *)ac);
        return;
    }
    /* AUTH first; nothing else is sent (ms_redis_command refuses while
     * not connected) until it is answered, the ROLE check included. */
    if (r->username == NULL) {
        argv[1] = r->password;
        argc = 2;
    } else {
        argc = 3;
    }
    argvlen[0] = 4;
    argvlen[1] = strlen(argv[1]);
    argvlen[2] = argc == 3 ? strlen(argv[2]) : 0;
    if (redisAsyncCommandArgv((redisAsyncContext *)ac, auth_cb, NULL, argc, argv, argvlen) !=
        REDIS_OK) {
        snprintf(r->why, sizeof(r->why), "redis: cannot send AUTH");
        r->have_primary = 0;
        redisAsyncDisconnect((redisAsyncContext *)ac);
    }
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
    r->have_primary = 0; /* Sentinel mode: the next connect asks first */
    if (r->auth_failed) {
        /* Keep the reason AUTH gave, and do not knock every 500 ms. */
        if (!r->closing)
            uv_timer_start(&r->reconnect_timer, reconnect_cb, MS_REDIS_AUTH_RETRY_MS, 0);
        return;
    }
    snprintf(r->why, sizeof(r->why), "redis: %s", ac->errstr[0] ? ac->errstr : "disconnected");
    schedule_reconnect(r);
}

static void redis_connect(ms_redis *r)
{
    redisAsyncContext *ac;

    if (r->closing || r->ac)
        return;
    if (r->nsentinels > 0 && !r->have_primary) {
        sentinel_ask(r);
        return;
    }
    ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err) {
        snprintf(r->why, sizeof(r->why), "redis: %s", ac ? ac->errstr : "cannot allocate");
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop, (uint64_t)r->linger_ms) != REDIS_OK) {
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    r->ac = ac;
}

/*
 * Sentinel mode.  Before each connect, one Sentinel is asked for the
 * primary's address (SENTINEL GET-MASTER-ADDR-BY-NAME, answered from its
 * current view, so right after a failover it already names the promoted
 * replica).  A Sentinel that cannot be reached, does not answer within
 * MS_REDIS_SENTINEL_TIMEOUT_MS or does not know the name makes the next one
 * in the list be asked, after MS_REDIS_RECONNECT_MS.  The address found is
 * trusted only once ROLE, on the new connection, says "master": a Sentinel
 * may still name a primary that was demoted a moment ago.
 */

/* "host:port" or "[v6]:port", trimmed, into a; 0 or -1 with why in err. */
static int sentinel_parse_one(const char *item, struct sentinel_addr *a, char *err, size_t errlen)
{
    const char *colon = strrchr(item, ':'), *h = item, *end;
    size_t hlen;
    char *pend;
    long port;

    if (colon == NULL || colon == item || colon[1] == '\0') {
        snprintf(err, errlen, "[redis] sentinels: \"%.60s\": want host:port", item);
        return -1;
    }
    end = colon;
    if (*h == '[' && end[-1] == ']') { /* an IPv6 address (RFC 3986 section 3.2.2) */
        h++;
        end--;
    }
    hlen = (size_t)(end - h);
    port = strtol(colon + 1, &pend, 10);
    if (hlen == 0 || hlen > MS_REDIS_SENTINEL_HOST_MAX || *pend != '\0' || port < 1 ||
        port > 65535 || !isdigit((unsigned char)colon[1])) {
        snprintf(err, errlen,
                 "[redis] sentinels: \"%.60s\": want host:port with a port "
                 "of 1 to 65535",
                 item);
        return -1;
    }
    memcpy(a->host, h, hlen);
    a->host[hlen] = '\0';
    a->port = (int)port;
    return 0;
}

/* The comma-separated list into out (room for MS_REDIS_SENTINELS_MAX);
 * returns the count, or -1 with why in err. */
static int sentinel_parse(const char *list, struct sentinel_addr *out, char *err, size_t errlen)
{
    char *copy = ms_strdup(list), *items[MS_REDIS_SENTINELS_MAX + 1];
    size_t n = ms_config_split_list(copy, items, MS_REDIS_SENTINELS_MAX + 1), i;
    int rc = (int)n;

    if (n > MS_REDIS_SENTINELS_MAX) {
        snprintf(err, errlen, "[redis] sentinels: more than %d entries", MS_REDIS_SENTINELS_MAX);
        rc = -1;
    }
    for (i = 0; rc > 0 && i < n; i++)
        if (sentinel_parse_one(items[i], &out[i], err, errlen) < 0)
            rc = -1;
    free(copy);
    return rc;
}

int ms_redis_conf_check(const struct ms_redis_conf *conf, char *err, size_t errlen)
{
    struct sentinel_addr a[MS_REDIS_SENTINELS_MAX];

    if (conf->sentinels == NULL || conf->sentinels[0] == '\0')
        return 0;
    if (sentinel_parse(conf->sentinels, a, err, errlen) < 0)
        return MS_ECONFIG;
    if (conf->master_name && strlen(conf->master_name) > MS_REDIS_SENTINEL_HOST_MAX) {
        snprintf(err, errlen, "[redis] master_name: longer than %d characters",
                 MS_REDIS_SENTINEL_HOST_MAX);
        return MS_ECONFIG;
    }
    return 0;
}

/* The Sentinel asked last gave no usable answer: the next one is asked
 * after MS_REDIS_RECONNECT_MS. */
static void sentinel_give_up(ms_redis *r)
{
    r->asking = 0;
    uv_timer_stop(&r->sentinel_timer);
    r->sentinel_next = (r->sentinel_next + 1) % r->nsentinels;
    schedule_reconnect(r);
}

static void sentinel_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    ms_redis *r = ac->data;
    const struct sentinel_addr *s = &r->sentinels[r->sentinel_next];
    redisReply *rep = reply;
    char host[MS_REDIS_SENTINEL_HOST_MAX + 1], *end;
    long port = 0;

    (void)privdata;
    if (rep == NULL || r->closing || r->sac != ac || !r->asking)
        return;               /* dropped or timed out: handled there */
    redisAsyncDisconnect(ac); /* one question per connection */
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[1]->type == REDIS_REPLY_STRING && rep->element[0]->len > 0 &&
        rep->element[0]->len <= MS_REDIS_SENTINEL_HOST_MAX) {
        memcpy(host, rep->element[0]->str, rep->element[0]->len);
        host[rep->element[0]->len] = '\0';
        port = strtol(rep->element[1]->str, &end, 10);
        if (*end != '\0' || port < 1 || port > 65535)
            port = 0;
    }
    if (port == 0) {
        /* A nil answer: this Sentinel does not monitor master_name. */
        ms_warn("event=redis_sentinel_no_primary sentinel=%s:%d master=%s reply_type=%d", s->host,
                s->port, r->master_name, rep->type);
        snprintf(r->why, sizeof(r->why), "redis: sentinel %s:%d knows no primary \"%s\"", s->host,
                 s->port, r->master_name);
        sentinel_give_up(r);
        return;
    }
    r->asking = 0;
    uv_timer_stop(&r->sentinel_timer);
    if (strcmp(host, r->host) != 0 || (int)port != r->port)
        ms_info("event=redis_sentinel_primary sentinel=%s:%d master=%s primary=%s:%ld", s->host,
                s->port, r->master_name, host, port);
    free(r->host);
    r->host = ms_strdup(host);
    r->port = (int)port;
    r->have_primary = 1;
    redis_connect(r);
}

static void sentinel_connect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;
    const struct sentinel_addr *s = &r->sentinels[r->sentinel_next];

    if (status == REDIS_OK || r->sac != ac)
        return;
    r->sac = NULL; /* hiredis frees the context after this callback */
    snprintf(r->why, sizeof(r->why), "redis: sentinel %s:%d: %s", s->host, s->port, ac->errstr);
    if (r->asking && !r->closing)
        sentinel_give_up(r);
}

static void sentinel_disconnect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;
    const struct sentinel_addr *s = &r->sentinels[r->sentinel_next];

    (void)status;
    if (r->sac != ac)
        return;
    r->sac = NULL;
    if (r->asking && !r->closing) {
        snprintf(r->why, sizeof(r->why), "redis: sentinel %s:%d: %s", s->host, s->port,
                 ac->errstr[0] ? ac->errstr : "closed before answering");
        sentinel_give_up(r);
    }
}

static void sentinel_timeout_cb(uv_timer_t *t)
{
    ms_redis *r = t->data;
    const struct sentinel_addr *s = &r->sentinels[r->sentinel_next];
    redisAsyncContext *ac = r->sac;

    if (!r->asking)
        return;
    ms_warn("event=redis_sentinel_timeout sentinel=%s:%d wait_ms=%d", s->host, s->port,
            MS_REDIS_SENTINEL_TIMEOUT_MS);
    snprintf(r->why, sizeof(r->why), "redis: sentinel %s:%d: no answer in %d ms", s->host, s->port,
             MS_REDIS_SENTINEL_TIMEOUT_MS);
    r->sac = NULL; /* its callbacks now see a stranger and do nothing */
    if (ac != NULL)
        redisAsyncFree(ac);
    sentinel_give_up(r);
}

static void sentinel_ask(ms_redis *r)
{
    const struct sentinel_addr *s = &r->sentinels[r->sentinel_next];
    const char *argv[3] = {"SENTINEL", "GET-MASTER-ADDR-BY-NAME", r->master_name};
    size_t argvlen[3] = {8, 23, strlen(r->master_name)};
    redisAsyncContext *ac;

    if (r->closing || r->asking)
        return;
    if (r->sac != NULL) {
        /* The last question's connection is still closing: come back. */
        schedule_reconnect(r);
        return;
    }
    /* XXX Sentinels with their own requirepass (sentinel auth-pass is for
     * the Sentinels' own use) are not supported yet: [redis] username and
     * password authenticate the data connection only; a Sentinel password
     * would be a key of its own. */
    ac = redisAsyncConnect(s->host, s->port);
    if (ac == NULL || ac->err) {
        snprintf(r->why, sizeof(r->why), "redis: sentinel %s:%d: %s", s->host, s->port,
                 ac ? ac->errstr : "cannot allocate");
        if (ac)
            redisAsyncFree(ac);
        r->asking = 1;
        sentinel_give_up(r);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop, 0) != REDIS_OK) {
        redisAsyncFree(ac);
        r->asking = 1;
        sentinel_give_up(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, sentinel_connect_cb);
    redisAsyncSetDisconnectCallback(ac, sentinel_disconnect_cb);
    /* Queued now, written by hiredis as soon as the connection is up. */
    redisAsyncCommandArgv(ac, sentinel_reply_cb, NULL, 3, argv, argvlen);
    r->sac = ac;
    r->asking = 1;
    uv_timer_start(&r->sentinel_timer, sentinel_timeout_cb, MS_REDIS_SENTINEL_TIMEOUT_MS, 0);
}

/*
 * The +switch-master subscription: the Sentinels announce a failover on
 * this channel ("<name> <old ip> <old port> <new ip> <new port>"), so a
 * client still connected to the old primary (alive but cut off from the
 * Sentinels, or not yet demoted) moves at once instead of at its next
 * ROLE check.  One subscription, to the Sentinel that answered last; when
 * it drops, the periodic check (ping_cb) opens it again.  It only speeds
 * things up: the ROLE checks and READONLY keep the client right without it.
 */
static void sub_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    ms_redis *r = ac->data;
    redisReply *rep = reply, *msg;
    char name[MS_REDIS_SENTINEL_HOST_MAX + 1], host[MS_REDIS_SENTINEL_HOST_MAX + 1], buf[600];
    int port;

    (void)privdata;
    if (rep == NULL || r->closing || r->sub != ac || rep->type != REDIS_REPLY_ARRAY ||
        rep->elements != 3)
        return;
    msg = rep->element[2];
    if (rep->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(rep->element[0]->str, "message") != 0 || msg->type != REDIS_REPLY_STRING ||
        msg->len >= sizeof(buf))
        return; /* the subscribe confirmation */
    memcpy(buf, msg->str, msg->len);
    buf[msg->len] = '\0';
    if (sscanf(buf, "%255s %*s %*d %255s %d", name, host, &port) != 3 ||
        strcmp(name, r->master_name) != 0)
        return;
    ms_info("event=redis_sentinel_switch master=%s primary=%s:%d", name, host, port);
    if (r->ac != NULL && (strcmp(host, r->host) != 0 || port != r->port))
        primary_lost(r, "+switch-master");
}

static void sub_connect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;

    if (status != REDIS_OK && r->sub == ac)
        r->sub = NULL; /* hiredis frees the context after this callback */
}

static void sub_disconnect_cb(const redisAsyncContext *ac, int status)
{
    ms_redis *r = ac->data;

    (void)status;
    if (r->sub == ac)
        r->sub = NULL;
}

static void sentinel_subscribe(ms_redis *r)
{
    /* The Sentinel that named the current primary answers: sentinel_next
     * moves on only when one does not. */
    const struct sentinel_addr *s = &r->sentinels[r->sentinel_next];
    redisAsyncContext *ac;

    if (r->closing || r->sub != NULL)
        return;
    ac = redisAsyncConnect(s->host, s->port);
    if (ac == NULL || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop, 0) != REDIS_OK) {
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, sub_connect_cb);
    redisAsyncSetDisconnectCallback(ac, sub_disconnect_cb);
    redisAsyncCommand(ac, sub_cb, NULL, "SUBSCRIBE +switch-master");
    r->sub = ac;
}

/* ROLE's answer starts with "master", "slave" or "sentinel". */
static int role_is_master(const redisReply *rep)
{
    return rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
           rep->element[0]->type == REDIS_REPLY_STRING && rep->element[0]->len == 6 &&
           memcmp(rep->element[0]->str, "master", 6) == 0;
}

static void role_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    ms_redis *r = ac->data;
    redisReply *rep = reply;

    (void)privdata;
    if (rep == NULL || r->closing || r->ac != ac)
        return; /* disconnected meanwhile: disconnect_cb asks again */
    if (role_is_master(rep)) {
        redis_up(r);
        return;
    }
    ms_warn("event=redis_not_primary host=%s port=%d master=%s", r->host, r->port, r->master_name);
    snprintf(r->why, sizeof(r->why), "redis: %s:%d is not the primary (yet)", r->host, r->port);
    r->have_primary = 0;
    redisAsyncDisconnect(ac); /* disconnect_cb: ask a Sentinel again */
}

/* A fresh connection to the address a Sentinel gave: make sure it is the
 * primary before any command goes there. */
static void primary_check_role(ms_redis *r, redisAsyncContext *ac)
{
    if (redisAsyncCommand(ac, role_cb, NULL, "ROLE") != REDIS_OK) {
        r->have_primary = 0;
        redisAsyncDisconnect(ac);
    }
}

/* primary_lost's graceful disconnect did not finish in time (the old
 * primary is cut off and its replies will never come): drop it, failing
 * the replies still due, and ask a Sentinel. */
static void lost_deadline_cb(uv_timer_t *t)
{
    ms_redis *r = t->data;
    redisAsyncContext *ac = r->ac;

    if (r->closing)
        return;
    if (ac == NULL) { /* gone meanwhile without telling disconnect_cb */
        redis_connect(r);
        return;
    }
    ms_warn("event=redis_close_timeout wait_ms=%d", MS_REDIS_CLOSE_WAIT_MS);
    r->ac = NULL;
    redisAsyncFree(ac);
    schedule_reconnect(r);
}

/* The server we are connected to is no longer the primary: fail new
 * commands at once, let the replies still due come back (for up to
 * MS_REDIS_CLOSE_WAIT_MS), then ask a Sentinel again (disconnect_cb). */
static void primary_lost(ms_redis *r, const char *reason)
{
    ms_warn("event=redis_primary_lost host=%s port=%d master=%s reason=%s", r->host, r->port,
            r->master_name, reason);
    snprintf(r->why, sizeof(r->why), "redis: %s:%d is no longer the primary (%s)", r->host, r->port,
             reason);
    r->connected = 0;
    r->have_primary = 0;
    if (r->ac != NULL) {
        /* Armed first: disconnect_cb, at once when no reply is due, later
         * otherwise, replaces it with the reconnect. */
        uv_timer_start(&r->reconnect_timer, lost_deadline_cb, MS_REDIS_CLOSE_WAIT_MS, 0);
        redisAsyncDisconnect(r->ac);
    }
}

static void ping_reply(void *arg, uint64_t id, const struct ms_redis_reply *reply)
{
    ms_redis *r = arg;

    (void)id;
    if (r->nsentinels > 0 && reply->type == MS_REDIS_ARRAY) {
        /* ROLE (ping_cb): a demoted server drops out here even when no
         * write has run into READONLY yet. */
        r->ping_ok = reply->nelem >= 1 && reply->elem[0].type == MS_REDIS_STR &&
                     reply->elem[0].len == 6 && memcmp(reply->elem[0].str, "master", 6) == 0;
        if (!r->ping_ok && r->connected)
            primary_lost(r, "ROLE");
        return;
    }
    r->ping_ok = reply->type == MS_REDIS_STR;
    if (!r->ping_ok)
        snprintf(r->why, sizeof(r->why), "redis: PING failed: %.*s", (int)reply->len,
                 reply->str ? reply->str : "");
}

static void ping_cb(uv_timer_t *t)
{
    ms_redis *r = t->data;
    const char *argv[] = {r->nsentinels > 0 ? "ROLE" : "PING"};
    size_t argvlen[] = {4};

    if (r->connected)
        ms_redis_command(r, ping_reply, r, 0, 1, argv, argvlen);
    if (r->connected && r->nsentinels > 0 && r->sub == NULL)
        sentinel_subscribe(r);
}

ms_redis *ms_redis_new(uv_loop_t *loop, const struct ms_redis_conf *conf)
{
    ms_redis *r = ms_calloc(1, sizeof(*r));
    char err[160];
    int n;

    r->loop = loop;
    r->host = ms_strdup(conf->host ? conf->host : "");
    r->port = conf->port;
    r->linger_ms = conf->linger_ms;
    if (conf->password && *conf->password) {
        r->password = ms_strdup(conf->password);
        if (conf->username && *conf->username)
            r->username = ms_strdup(conf->username);
    }
    if (conf->sentinels != NULL && conf->sentinels[0] != '\0') {
        r->sentinels = ms_calloc(MS_REDIS_SENTINELS_MAX, sizeof(*r->sentinels));
        if ((n = sentinel_parse(conf->sentinels, r->sentinels, err, sizeof(err))) <= 0)
            ms_panic("event=redis_sentinels_unchecked error=\"%s\"", err);
        r->nsentinels = (size_t)n;
        r->master_name = ms_strdup(
            conf->master_name && conf->master_name[0] ? conf->master_name : MS_REDIS_MASTER_NAME);
        ms_info("event=redis_sentinel_mode sentinels=%d master=%s", n, r->master_name);
    }
    snprintf(r->why, sizeof(r->why), "redis: connecting");
    uv_timer_init(loop, &r->reconnect_timer);
    uv_timer_init(loop, &r->ping_timer);
    uv_timer_init(loop, &r->sentinel_timer);
    r->reconnect_timer.data = r->ping_timer.data = r->sentinel_timer.data = r;
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
        free(r->sentinels);
        free(r->master_name);
        free(r->username);
        if (r->password) {
            memset(r->password, 0, strlen(r->password));
            free(r->password);
        }
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
    if (r->sac) {
        redisAsyncContext *ac = r->sac;
        r->sac = NULL;
        redisAsyncFree(ac);
    }
    if (r->sub) {
        redisAsyncContext *ac = r->sub;
        r->sub = NULL;
        redisAsyncFree(ac);
    }
    r->handles_open = 3;
    uv_close((uv_handle_t *)&r->reconnect_timer, timer_closed);
    uv_close((uv_handle_t *)&r->ping_timer, timer_closed);
    uv_close((uv_handle_t *)&r->sentinel_timer, timer_closed);
}

void ms_redis_free(ms_redis *r)
{
    if (r == NULL)
        return;
    r->closing = 1;
    uv_timer_stop(&r->ping_timer);
    uv_timer_stop(&r->reconnect_timer);
    uv_timer_stop(&r->sentinel_timer);
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

/* One blocking connection to host:port with the timeout on connect and on
 * every reply; NULL with "redis HOST:PORT: why" in err. */
static redisContext *sync_open(const char *host, int port, int timeout_ms, char *err,
                               size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, port, tv);

    if (c == NULL || c->err) {
        snprintf(err, errlen, "redis %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* Sentinel mode: the primary's address from the first Sentinel that knows
 * it (SENTINEL get-master-addr-by-name, as the event-loop client asks), into
 * host and *port; 0, or -1 with the last Sentinel's failure in err. */
static int sync_primary(const struct ms_redis_conf *conf, int timeout_ms, char *host,
                        size_t hostlen, int *port, char *err, size_t errlen)
{
    struct sentinel_addr a[MS_REDIS_SENTINELS_MAX];
    const char *name = conf->master_name && conf->master_name[0] ? conf->master_name
                                                                 : MS_REDIS_MASTER_NAME;
    int n = sentinel_parse(conf->sentinels, a, err, errlen), i;

    for (i = 0; i < n; i++) {
        redisContext *c = sync_open(a[i].host, a[i].port, timeout_ms, err, errlen);
        redisReply *rep;
        int ok = 0;

        if (c == NULL)
            continue;
        rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s", name);
        if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[0]->type == REDIS_REPLY_STRING &&
            rep->element[1]->type == REDIS_REPLY_STRING && rep->element[0]->len < hostlen) {
            snprintf(host, hostlen, "%s", rep->element[0]->str);
            *port = atoi(rep->element[1]->str);
            ok = *port > 0 && *port <= 65535;
        }
        if (!ok)
            snprintf(err, errlen, "redis: sentinel %s:%d knows no primary \"%s\"", a[i].host,
                     a[i].port, name);
        if (rep)
            freeReplyObject(rep);
        redisFree(c);
        if (ok)
            return 0;
    }
    return -1;
}

ms_redis_sync *ms_redis_sync_connect(const struct ms_redis_conf *conf, int timeout_ms, char *err,
                                     size_t errlen)
{
    char host[MS_REDIS_SENTINEL_HOST_MAX + 1];
    int port = conf->port;
    ms_redis_sync *s;
    redisContext *c;

    snprintf(host, sizeof(host), "%s", conf->host ? conf->host : "127.0.0.1");
    if (conf->sentinels && conf->sentinels[0] &&
        sync_primary(conf, timeout_ms, host, sizeof(host), &port, err, errlen) < 0)
        return NULL;
    if ((c = sync_open(host, port, timeout_ms, err, errlen)) == NULL)
        return NULL;
    if (conf->password && conf->password[0]) {
        /* AUTH [username] password (Redis 6 ACL users, docs/security.md);
         * the reply's words never hold the password. */
        redisReply *rep =
            conf->username && conf->username[0]
                ? redisCommand(c, "AUTH %s %s", conf->username, conf->password)
                : redisCommand(c, "AUTH %s", conf->password);
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis %s:%d: AUTH as %s refused: %s", host, port,
                     conf->username && conf->username[0] ? conf->username : "default",
                     rep ? rep->str : c->errstr);
            if (rep)
                freeReplyObject(rep);
            redisFree(c);
            return NULL;
        }
        freeReplyObject(rep);
    }
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
