/*
 * fe_server.h - the frontend process: settings from the config, listeners,
 * the Kafka producer, the table of live sessions, metrics, and draining on
 * SIGTERM; plus the SMTP session entry points (fe_session.c).
 *
 * Threads: the process runs [node] threads libuv loops (main.c), each on its
 * own thread with its own struct fe_server: its own listeners (SO_REUSEPORT,
 * every listener bound once per loop), sessions, Kafka producer and Redis
 * client.  Every fe_server_* and fe_session_* function runs on the loop of
 * the server it is given, and nowhere else.  What the servers share is
 * either immutable after start-up (the config, metric handles) or safe from
 * any thread: struct fe_conn_table (mutex), the TLS context and the password
 * table (atomic reference counts; each server holds its own reference and
 * swaps it on its own loop when main.c publishes a reload).
 *
 * Sessions are owned by the server's session list and
 * freed only from their transport's close callback.  Asynchronous work
 * (Kafka delivery reports, crypt(3) jobs) finds its session again through
 * 64-bit ids in fe_server.sessions / fe_server.pending (STYLE.md 7).
 *
 * Messages leave through `submit` (ms_producer_send by default; tests put a
 * fake there): it returns 0 and later the report comes back through
 * fe_server_submitted(), or it returns an error and no report comes.  With
 * group commit (fe_commit.h, started by main.c) a loop holds its records and
 * hands them to `submit_owned` together.
 */
#ifndef FE_SERVER_H
#define FE_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "fe_auth.h"
#include "fe_commit.h"
#include "fe_idmap.h"
#include "fe_policy.h"
#include "fe_proxy.h"
#include "fe_ratelimit.h"
#include "fe_transport.h"
#include "ms_config.h"
#include "ms_kafka.h"
#include "ms_metrics.h"
#include "ms_redis.h"
#include "smtp_parse.h"

/* Named limits and their defaults ([smtp] keys in parentheses). */
#define FE_MAX_RECIPIENTS_DEF 1000 /* (max_recipients) 452 4.5.3 Too many recipients */
#define FE_MAX_ERRORS_DEF 10       /* (max_errors) 421 4.7.0 Too many errors */
#define FE_COMMAND_TIMEOUT_DEF 300 /* s (command_timeout) RFC 5321 4.5.3.2.7; 421 4.4.2 */
#define FE_GREETING_TIMEOUT_DEF 60 /* s (greeting_timeout) idle before HELO/EHLO; 421 4.4.2 */
#define FE_DRAIN_TIMEOUT_DEF 30    /* s (drain_timeout) SIGTERM grace period */
#define FE_INPUT_MAX (256 * 1024)  /* unprocessed input held per session: 421 4.7.0 */
#define FE_OUTPUT_MAX (64 * 1024)  /* unsent replies: stop reading until drained */
#define FE_ENVELOPE_HEADROOM (1024 * 1024) /* Kafka record = message + envelope */
#define FE_MAX_CONNECTIONS_DEF 10000   /* (max_connections) 421 4.7.0 */
#define FE_MAX_CONN_PER_IP_DEF 50      /* (max_connections_per_ip) 421 4.7.0 */
#define FE_MAX_COMMANDS_DEF 100000     /* (max_commands) per session: 421 4.7.0 */
#define FE_MAX_PENDING_DEF 2000        /* (max_pending_messages) awaiting Kafka: back-pressure */
#define FE_LINGER_MS_DEF 1             /* [kafka] linger_ms */
#define FE_RL_TIMEOUT_DEF 2000         /* ms ([ratelimit] timeout_ms) then as if Redis were down */
#define FE_ACCEPTED_DOMAINS_MAX 1024
#define FE_TRUSTED_NETWORKS_MAX 1024

enum fe_role { FE_ROLE_MX, FE_ROLE_SUBMISSION, FE_ROLE_SUBMISSIONS };

/* The rate limits in Redis ([ratelimit] keys, fe_ratelimit.h). */
enum fe_rate_kind {
    FE_RATE_CONN_IP,       /* connections_per_ip: 421 4.7.0 */
    FE_RATE_MSG_USER,      /* messages_per_user (authenticated): 451 4.7.1 at MAIL */
    FE_RATE_MSG_DOMAIN,    /* messages_per_domain (sender domain): 451 4.7.1 at MAIL */
    FE_RATE_RCPT_CLIENT,   /* recipients_per_client (user, else IP): 451 4.7.1 at RCPT */
    FE_RATE_AUTHFAIL_IP,   /* auth_failures_per_ip: 454 4.7.0 */
    FE_RATE_AUTHFAIL_USER, /* auth_failures_per_user: 454 4.7.0 */
    FE_RATE_COUNT
};

/* Every named limit, for the limit-hit metric. */
enum fe_limit {
    FE_LIMIT_CONNECTIONS = FE_RATE_COUNT, /* max_connections */
    FE_LIMIT_CONN_PER_IP,                 /* max_connections_per_ip */
    FE_LIMIT_COMMANDS,                    /* max_commands */
    FE_LIMIT_BACKPRESSURE,                /* max_pending_messages */
    FE_LIMIT_COUNT
};
const char *fe_limit_name(int limit);

struct fe_listener {
    struct fe_server *srv;
    char *name;
    char *listen;
    enum fe_role role;
    int proxy; /* a PROXY protocol header comes first (fe_proxy.h) */
    uv_tcp_t tcp;
    int open;
    /* mailstream_smtp_connections_total{listener,tls}: tls="yes" for
     * implicit TLS; STARTTLS upgrades are counted in m_starttls. */
    ms_counter *m_conn, *m_starttls;
};

struct fe_settings {
    const char *node_id;
    const char *hostname;
    const char *topic;
    uint64_t kafka_linger_ms;           /* [kafka] linger_ms */
    int group_commit;                   /* [kafka] group_commit (fe_commit.h) */
    uint64_t group_commit_window_us;    /* [kafka] group_commit_window_us */
    uint64_t max_message_size;
    uint64_t max_recipients;
    uint64_t max_errors;
    uint64_t command_timeout_ms;
    uint64_t greeting_timeout_ms;
    uint64_t drain_timeout_ms;
    char **accepted_domains;
    size_t naccepted;
    struct fe_cidr *trusted;
    size_t ntrusted;
    struct fe_cidr *proxy_trusted; /* peers allowed to send a PROXY header */
    size_t nproxy_trusted;
    /* 0 (only outside the config, e.g. tests): no limit. */
    uint64_t max_connections, max_connections_per_ip, max_commands, max_pending;
    struct fe_rate rates[FE_RATE_COUNT];
    const char *rl_prefix;       /* [ratelimit] key_prefix */
    int rl_fail_closed;          /* [ratelimit] redis_failure = closed */
    uint64_t rl_timeout_ms;
    int refuse_suppressed;       /* [smtp] refuse_suppressed */
    const char *suppress_prefix; /* the worker's ms:suppress: */
};

/* Reply classes counted in mailstream_smtp_replies_total. */
enum fe_reply_class { FE_REPLY_2XX, FE_REPLY_3XX, FE_REPLY_4XX, FE_REPLY_5XX, FE_REPLY_CLASSES };

struct fe_metrics {
    ms_gauge *sessions;
    ms_counter *transactions; /* MAIL accepted */
    ms_counter *replies[FE_REPLY_CLASSES];
    ms_counter *bytes_out;
    ms_counter *kafka_submit_errors, *kafka_report_errors;
    ms_histogram *message_size; /* octets handed to Kafka, Received header included */
    ms_counter *commands[FE_VERB_COUNT];
    ms_counter *queued, *rejected, *tempfail;
    ms_counter *bytes_in;
    ms_counter *auth_ok, *auth_fail;
    ms_counter *tls_ok, *tls_fail;
    ms_counter *timeouts;
    ms_counter *proxy_ok, *proxy_bad, *proxy_untrusted;
    ms_counter *limit_hits[FE_LIMIT_COUNT];
    ms_counter *rl_redis_open, *rl_redis_closed; /* Redis failed: let through / refused */
    ms_counter *suppressed;
    ms_histogram *queue_latency;
    ms_counter *commits[FE_COMMIT_REASONS], *commit_records;
};

/*
 * Open connections per process and per client address, shared by every
 * loop's server so that [smtp] max_connections and max_connections_per_ip
 * hold for the whole process, not per thread.  Any thread; a short mutex
 * around a counter and a small hash table (taken once when a session is
 * admitted and once when it is freed).
 */
struct fe_conn_table {
    pthread_mutex_t lock;
    uint64_t nconns;        /* sessions admitted and open */
    struct fe_idmap per_ip; /* hash of a client address -> open connections */
};

void fe_conn_table_init(struct fe_conn_table *ct);
void fe_conn_table_free(struct fe_conn_table *ct);
/* Count one more connection from address hash `key` unless that would pass
 * max_total or max_per_ip (0: no limit).  Returns 0, or FE_LIMIT_CONNECTIONS
 * / FE_LIMIT_CONN_PER_IP with the address's open count in *open. */
int fe_conn_admit(struct fe_conn_table *ct, uint64_t key, uint64_t max_total, uint64_t max_per_ip,
                  uint64_t *open);
/* The connection counted by fe_conn_admit(key) is gone. */
void fe_conn_release(struct fe_conn_table *ct, uint64_t key);

typedef int (*fe_submit_fn)(void *arg, uint64_t id, const char *key, size_t keylen,
                            const void *value, size_t len);
/* The same, but takes `value` (a malloc'd buffer) when it returns 0. */
typedef int (*fe_submit_owned_fn)(void *arg, uint64_t id, const char *key, size_t keylen,
                                  void *value, size_t len);

struct fe_session;

struct fe_server {
    uv_loop_t *loop;
    struct fe_settings set;
    struct fe_tls_ctx *tls;    /* NULL: no TLS configured */
    struct fe_passwd *passwd;  /* NULL: no AUTH */
    fe_submit_fn submit;
    fe_submit_owned_fn submit_owned; /* group commit only */
    void *submit_arg;
    ms_producer *producer;
    struct fe_listener *listeners;
    size_t nlisteners;
    struct fe_session *head;   /* every live session */
    struct fe_idmap sessions;  /* session id -> session */
    struct fe_idmap pending;   /* transaction id -> session awaiting its report */
    struct fe_idmap policy;    /* rate-limit request id -> session awaiting Redis */
    /* Connection counts: &own_conns unless main.c points every server at
     * one process-wide table. */
    struct fe_conn_table *conns;
    struct fe_conn_table own_conns;
    int overloaded;            /* pending >= max_pending: sessions in DATA paused */
    ms_redis *redis;           /* NULL: no limits and no suppression in Redis */
    struct fe_rl *rl;
    uint64_t next_id;          /* ids: main.c starts each loop's at (index << 48) */
    int draining;
    /* Group commit (fe_commit.h): on once fe_server_commit_start() ran. */
    int commit_on;
    struct fe_commit commit;
    struct fe_commit_record sending[FE_COMMIT_MAX_RECORDS];
    uv_timer_t commit_timer; /* linger_ms after the first held record */
    uv_check_t commit_check; /* after each loop iteration's I/O: is it due? */
    struct fe_metrics m;
};

/* Read [node], [smtp], [kafka] and the [listener.*] sections.  Returns 0 or
 * MS_ECONFIG with the reason in err. */
int fe_settings_load(struct fe_settings *set, const ms_config *cfg, char *err, size_t errlen);
void fe_settings_free(struct fe_settings *set);

void fe_metrics_register(struct fe_metrics *m);
/* The listener's own series (after l->name and l->role are set). */
void fe_metrics_listener(struct fe_listener *l);

/* Initialise the server around a loop (no listeners yet). */
void fe_server_init(struct fe_server *srv, uv_loop_t *loop);
/* Bind and listen for every [listener.*] section.  0 or a negative code. */
int fe_server_listen(struct fe_server *srv, const ms_config *cfg, char *err, size_t errlen);
/* The outcome of rate-limit request `id` (fe_rl_cb signature). */
void fe_server_policy_result(void *arg, uint64_t id, int result);
/* 1 when some [ratelimit] limit or refuse_suppressed needs Redis. */
int fe_settings_need_redis(const struct fe_settings *set);
/* The delivery report of transaction `id` (ms_produce_cb signature). */
void fe_server_submitted(void *arg, uint64_t id, int err, const char *errstr);
/* Hand transaction `id`'s record over; takes `buf` (malloc'd) in every case.
 * With group commit it is held until its batch goes; a failure to send it
 * then comes back as a report.  0, or a negative code and no report. */
int fe_server_submit(struct fe_server *srv, uint64_t id, const char *key, size_t keylen,
                     uint8_t *buf, size_t len);
/* Group commit on: needs submit_owned; linger_ms bounds a record's wait. */
void fe_server_commit_start(struct fe_server *srv);
/* Send what is held now and close the group commit's handles (the loop is
 * finishing). */
void fe_server_commit_stop(struct fe_server *srv);
/* SIGTERM: stop accepting, let sessions finish their transactions, answer
 * 421 4.3.2 to new commands.  fe_server_idle() is 1 once no session is left. */
void fe_server_drain(struct fe_server *srv);
int fe_server_idle(const struct fe_server *srv);
/* The drain grace period is over: 421 4.3.2 and close every session. */
void fe_server_abort(struct fe_server *srv);
void fe_server_close_listeners(struct fe_server *srv);
void fe_server_free(struct fe_server *srv);

/* ---- sessions (fe_session.c) ---- */

/* Start a session on an accepted transport (the server takes ownership). */
struct fe_session *fe_session_new(struct fe_server *srv, struct fe_listener *l,
                                  struct fe_transport *t);
/* The report for the session's pending transaction. */
void fe_session_queued(struct fe_session *s, int err, const char *errstr);
/* The answer to the session's rate-limit / suppression request. */
void fe_session_policy(struct fe_session *s, int result);
/* Back-pressure is over: read again if the session stopped for it. */
void fe_session_resume(struct fe_session *s);
/* Shutting down: answer 421 4.3.2 now unless a transaction is in flight. */
void fe_session_drain(struct fe_session *s);
/* Grace period over: 421 4.3.2 and close, whatever the state. */
void fe_session_abort(struct fe_session *s);
/* The next session in the server's list (NULL at the end). */
struct fe_session *fe_session_next(const struct fe_session *s);
/* The session's id and the transport callbacks (for tests). */
uint64_t fe_session_id(const struct fe_session *s);
extern const struct fe_transport_cb fe_session_transport_cb;

#endif
