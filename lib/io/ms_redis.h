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
 * right after AUTH (when configured) and before any other command, and run
 * by digest with ms_redis_script().  The client counts as connected
 * (commands accepted, ready) only once AUTH, when configured, has
 * succeeded, and in Sentinel mode once ROLE has said "master" after it.
 *
 * Sentinel.  With sentinels configured the client does not connect to a
 * fixed address: it asks a Sentinel for the primary of `master_name`
 * (SENTINEL GET-MASTER-ADDR-BY-NAME), connects there, authenticates, and
 * checks with ROLE that the server really is a primary before it counts as
 * connected.  It asks again (the next Sentinel in the list when one does
 * not answer) when the connection drops, when a command is refused with
 * READONLY (the server was demoted: its clients are then talking to a
 * replica), and when the periodic check, ROLE instead of PING in this mode,
 * finds a replica.  So a failover costs the commands in flight (they fail
 * with MS_REDIS_FAILED or READONLY, as a dropped connection does today) and
 * a few seconds of MS_EUNAVAIL, never a restart.  The Sentinels themselves
 * are asked without AUTH (username and password are the data
 * connection's).
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

/* Where and as whom to connect (ms_connect.h reads it from [redis]).
 *
 * Where: sentinels NULL or "": host and port.  Otherwise a comma-separated
 * "host:port" list of Sentinels (at most MS_REDIS_SENTINELS_MAX), asked for
 * the primary named master_name; host and port are then not used.
 *
 * As whom: with a password, every connect sends AUTH (the Redis 6 ACL form
 * `AUTH username password` when username is set) before anything else, the
 * ROLE check and the script loads included.  A refused AUTH logs
 * `event=redis_auth_failed` (never the password), leaves the client not
 * ready with the reason, and is tried again every MS_REDIS_AUTH_RETRY_MS. */
struct ms_redis_conf {
    const char *host;
    int port;
    const char *username;    /* NULL or "": the default user */
    const char *password;    /* NULL or "": no AUTH; a secret, copied */
    const char *sentinels;   /* [redis] sentinels */
    const char *master_name; /* [redis] master_name; NULL or "": MS_REDIS_MASTER_NAME */
    /* [redis] linger_ms: commands wait this long after the first of them
     * and leave together in one write; 0 writes what the loop queued each
     * time before it waits.  At most MS_REDIS_LINGER_MAX_MS. */
    int linger_ms;
};

#define MS_REDIS_AUTH_RETRY_MS 5000
#define MS_REDIS_LINGER_DEFAULT_MS 1
#define MS_REDIS_LINGER_MAX_MS 100
#define MS_REDIS_SENTINELS_MAX 16
#define MS_REDIS_MASTER_NAME "mymaster"
/* Longest host in a sentinels entry (a DNS name, RFC 1035 section 2.3.4). */
#define MS_REDIS_SENTINEL_HOST_MAX 255

/* Check conf before ms_redis_new: MS_ECONFIG with "[redis] sentinels: ..."
 * in err when the list does not parse (an entry without a port, a port out
 * of range, too many entries). */
int ms_redis_conf_check(const struct ms_redis_conf *conf, char *err, size_t errlen);
/* conf is copied (the password too).  Its sentinels list must have passed
 * ms_redis_conf_check (panics otherwise). */
ms_redis *ms_redis_new(uv_loop_t *loop, const struct ms_redis_conf *conf);
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
 * failed (ms_redis_sync_error() says why) and the client is unusable.
 *
 * ms_redis_sync_connect() reads conf as ms_redis_new() does (checked with
 * ms_redis_conf_check first): AUTH with the username and password when a
 * password is set, and with sentinels the primary asked of the first
 * Sentinel that names it (once: a tool that loses its connection exits). */
typedef struct ms_redis_sync ms_redis_sync;
ms_redis_sync *ms_redis_sync_connect(const struct ms_redis_conf *conf, int timeout_ms, char *err,
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
