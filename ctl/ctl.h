/*
 * ctl.h - mailstream-ctl's subcommands and what they share.
 *
 * Each subcommand is one entry of a table ({group, verb, arguments, help,
 * run}); ctl/main.c dispatches on the first two words and prints every
 * entry for --help.  A subcommand gets its arguments after the verb and the
 * connection settings (struct ctl), connects on first use and prints its
 * result: lines for people, or with --json one JSON document.
 *
 * Exit codes (docs/operations.md): CTL_EXIT_OK, CTL_EXIT_FAILED (an action
 * that did not apply to everything it named: the output says which),
 * CTL_EXIT_USAGE (bad arguments: a malformed address, id or duration),
 * CTL_EXIT_UNREACHABLE (Redis or Kafka not reachable), CTL_EXIT_NOTFOUND
 * (an id or entry that does not exist).  Errors are one line on stderr.
 *
 * One thread; blocking I/O (a tool, not a server).
 */
#ifndef CTL_H
#define CTL_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"
#include "ms_config.h"
#include "ms_connect.h"
#include "ms_kafka.h"
#include "ms_redis.h"
#include "ms_time.h"

enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAILED = 1,
    CTL_EXIT_USAGE = 2,
    CTL_EXIT_UNREACHABLE = 3,
    CTL_EXIT_NOTFOUND = 4
};

/* Redis replies waited for at most this long. */
#define CTL_REDIS_TIMEOUT_MS 5000
/* Keys per pipelined batch (MGET, SET): a bulk action on 100,000 messages
 * is a hundred round trips. */
#define CTL_BATCH 1000

/* The settings point into cfg (ms_connect.h) and the secrets into
 * `secrets`, both alive until exit.  [redis] is read on first use
 * (ctl_redis): `topics create`, run by the Helm chart's hook Job, needs only
 * [kafka] and the Job mounts no Redis secret. */
struct ctl {
    const ms_config *cfg;
    struct ms_conn_secrets secrets;
    struct ms_kafka_conf kconf; /* [kafka]: brokers (-b over them), TLS, SASL */
    struct ms_redis_conf rconf; /* [redis]: address, AUTH, Sentinel (ctl_redis) */
    const char *events_topic;
    int json;
    ms_redis_sync *redis; /* connected on first use (ctl_redis) */
};

typedef int (*ctl_run_fn)(struct ctl *c, int argc, char **argv);

struct ctl_cmd {
    const char *group; /* "queue" */
    const char *verb;  /* "list"; "" for a group that is one command (status) */
    const char *args;  /* "[--dest D] ..." */
    const char *help;  /* one line */
    ctl_run_fn run;
};

/* Each file's table, ended by an entry with group NULL. */
extern const struct ctl_cmd ctl_queue_cmds[];
extern const struct ctl_cmd ctl_dest_cmds[];
extern const struct ctl_cmd ctl_suppress_cmds[];
extern const struct ctl_cmd ctl_recipients_cmds[];
extern const struct ctl_cmd ctl_events_cmds[];
extern const struct ctl_cmd ctl_status_cmds[];

/* Make every message deferred to dest due now (dest resume); returns how
 * many were told. */
size_t ctl_queue_retry_dest(struct ctl *c, const char *dest);

/* ---- shared helpers (ctl_common.c) ---- */

/* One-line error on stderr ("mailstream-ctl: ..."); returns `code`. */
int ctl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The connection, made on first use ([redis] read then: exits CTL_EXIT_USAGE
 * when it is wrong); exits CTL_EXIT_UNREACHABLE if none. */
ms_redis_sync *ctl_redis(struct ctl *c);
/* Run one command (NULL-terminated string arguments); exits
 * CTL_EXIT_UNREACHABLE when the connection fails.  Free the reply. */
struct ms_redis_reply *ctl_cmd(struct ctl *c, const char *arg0, ...);
/* The same with an argument vector. */
struct ms_redis_reply *ctl_cmdv(struct ctl *c, int argc, const char **argv);
/* MGET of `prefix`+name for names[0..n), pipelined in batches: out[i] is the
 * value (malloc'd, NUL-terminated) or NULL. */
void ctl_mget(struct ctl *c, const char *prefix, char **names, size_t n, char **out);
/* Print an import's result (n written, `failed` not); its exit code. */
int ctl_import_result(struct ctl *c, size_t n, size_t failed);
/* "3d4h", "12m", "40s" (a coarse age for people). */
void ctl_fmt_age(char *buf, size_t len, int64_t seconds);
/* Append s as a JSON string. */
void ctl_json_str(struct ms_buf *b, const char *s);
/* Print and reset b (stdout). */
void ctl_flush(struct ms_buf *b);
/* Does s look like an address (local@domain, no spaces or brackets)? */
int ctl_addr_ok(const char *s);
/* Lower-cased copy (malloc'd). */
char *ctl_lower(const char *s);

#endif
