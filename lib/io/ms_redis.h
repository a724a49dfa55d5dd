/*
 * ms_redis.h - Redis glue: an asynchronous client on a libuv loop that
 * reconnects by itself.  This module is the only one that includes hiredis.
 *
 * Threads: one client per loop; create, use and free it on that loop.
 * Replies find their caller by a 64-bit id (never a pointer that could have
 * gone away): the callback gets the id back and looks its owner up.
 *
 * While disconnected, commands fail at once with MS_EUNAVAIL (callback not
 * called); callers decide whether that lets mail through (see the issue on
 * rate limits).
 *
 * Lua scripts (ms_script.h) are loaded with SCRIPT LOAD on every connect,
 * before any other command, and run by digest with ms_redis_script().
 */
#ifndef MS_REDIS_H
#define MS_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ms_script.h"

enum ms_redis_type {
    MS_REDIS_NIL,
    MS_REDIS_INT,
    MS_REDIS_STR,    /* bulk or status string */
    MS_REDIS_ERR,    /* error reply, text in str */
    MS_REDIS_ARRAY,
    MS_REDIS_FAILED  /* connection lost before a reply: str says why */
};

struct ms_redis_reply {
    enum ms_redis_type type;
    long long integer;
    const char *str;
    size_t len;
    size_t nelem;
    const struct ms_redis_reply *elem; /* nelem replies */
};

typedef struct ms_redis ms_redis;
typedef void (*ms_redis_cb)(void *arg, uint64_t id, const struct ms_redis_reply *r);

ms_redis *ms_redis_new(uv_loop_t *loop, const char *host, int port);
/* Send a command given as argv (binary-safe).  The reply (valid only during
 * the callback) comes back on the loop.  Returns 0 or MS_EUNAVAIL. */
int ms_redis_command(ms_redis *r, ms_redis_cb cb, void *arg, uint64_t id, int argc,
                     const char **argv, const size_t *argvlen);
/* Run script s: EVALSHA <digest> followed by argv (numkeys, the keys, the
 * arguments), at most MS_REDIS_SCRIPT_ARGC_MAX of them.  When Redis answers
 * NOSCRIPT (it lost its scripts without our connection dropping: SCRIPT
 * FLUSH, a failover behind a proxy), the client loads the script again and
 * sends the same command once more, so cb sees NOSCRIPT only if that fails
 * too.  Otherwise as ms_redis_command(); MS_EINVAL for too many arguments. */
#define MS_REDIS_SCRIPT_ARGC_MAX 64
int ms_redis_script(ms_redis *r, enum ms_script s, ms_redis_cb cb, void *arg, uint64_t id, int argc,
                    const char **argv, const size_t *argvlen);
int ms_redis_ready(ms_redis *r, char *why, size_t whylen);
/* Send a command nobody waits for (a counter, a TTL, a lease given back):
 * r NULL sends nothing; a command that cannot be sent, an error reply or a
 * connection lost before the reply adds one to `errors` (NULL: none).  At
 * most MS_REDIS_FIRE_ARGC_MAX arguments (more is a broken invariant). */
#define MS_REDIS_FIRE_ARGC_MAX 16
struct ms_counter;
void ms_redis_fire(ms_redis *r, struct ms_counter *errors, int argc, const char **argv);
/* Close: commands already sent still get their replies (up to a few
 * seconds; then they fail with MS_REDIS_FAILED), so keep the callbacks'
 * owners alive until the loop has run down.  No new commands after this.
 * The client frees itself. */
void ms_redis_free(ms_redis *r);

/* ---- a blocking client for tools (mailstream-ctl) ----
 *
 * One connection, no loop, no reconnect: a tool connects, sends, reads and
 * exits.  Commands may be pipelined: ms_redis_sync_append() any number, then
 * ms_redis_sync_read() once per command, in order (a bulk action on 100,000
 * keys is a few round trips, not 100,000).  A reply is a malloc'd tree
 * (strings copied) freed with ms_redis_sync_reply_free().  Errors: NULL
 * from connect with the reason in err; a NULL reply means the connection
 * failed (ms_redis_sync_error() says why) and the client is unusable. */
typedef struct ms_redis_sync ms_redis_sync;
ms_redis_sync *ms_redis_sync_connect(const char *host, int port, int timeout_ms, char *err,
                                     size_t errlen);
struct ms_redis_reply *ms_redis_sync_command(ms_redis_sync *c, int argc, const char **argv,
                                             const size_t *argvlen);
/* Queue a command; returns 0 or MS_EIO. */
int ms_redis_sync_append(ms_redis_sync *c, int argc, const char **argv, const size_t *argvlen);
struct ms_redis_reply *ms_redis_sync_read(ms_redis_sync *c);
const char *ms_redis_sync_error(const ms_redis_sync *c);
void ms_redis_sync_reply_free(struct ms_redis_reply *r);
void ms_redis_sync_free(ms_redis_sync *c);

#endif
