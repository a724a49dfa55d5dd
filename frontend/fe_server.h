/*
 * fe_server.h - one loop's server: what the sessions on a loop share and how
 * their records leave.  The shared part is the loop's settings, TLS context,
 * password table, metrics, listeners, the id maps that find a session again
 * (STYLE.md 7), the connection counts, the rate limiter and the list of live
 * sessions; records leave through `submit`, at once or, with group commit
 * (fe_commit.h), held by the server and handed over together.  The sessions themselves are fe_session.h, the listeners
 * fe_listen.h, the settings fe_settings.h; this module calls none of them.
 *
 * Threads: the process runs [node] threads libuv loops (main.c), each on its
 * own thread with its own struct fe_server: its own listeners (SO_REUSEPORT,
 * every listener bound once per loop), sessions, Kafka producer and Redis
 * client.  Every fe_server_* function runs on the loop of the server it is
 * given, and nowhere else.  What the servers share is either immutable after
 * start-up (the config, metric handles) or safe from any thread: the
 * connection table (fe_conn_table.h), the TLS context and the password
 * table (atomic reference counts; each server holds its own reference and
 * swaps it on its own loop when main.c publishes a reload).
 *
 * Ownership: sessions are on the server's `live` list and are freed only
 * from their transport's close callback (fe_session.c).  The server owns its
 * listeners array, its id maps and its settings (fe_server_free()); the
 * producer, the Redis client and the rate limiter are set and freed by
 * main.c.  A record's buffer is the server's from fe_server_submit() until
 * the record's report (fe_server_reported()): the producer reads it in
 * place, without a copy of its own, until then.
 *
 * Errors: `submit` returns 0 and the report comes back later through the
 * producer's callback (fe_session.h: fe_sessions_report), or returns an error
 * and no report comes.  A held record that fails to go is reported through
 * the callback given to fe_server_commit_start().
 */
#ifndef FE_SERVER_H
#define FE_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "fe_auth.h"
#include "fe_commit.h"
#include "fe_conn_table.h"
#include "fe_ratelimit.h"
#include "fe_settings.h"
#include "ms_conn.h"
#include "ms_idmap.h"
#include "ms_kafka.h"
#include "ms_list.h"
#include "ms_metrics.h"
#include "ms_redis.h"
#include "smtp_parse.h"

enum fe_role { FE_ROLE_MX, FE_ROLE_SUBMISSION, FE_ROLE_SUBMISSIONS };

struct fe_listener {
    struct fe_server *srv;
    char *name;
    char *listen;
    enum fe_role role;
    int proxy; /* a PROXY protocol header comes first (fe_proxy.h) */
    int milters; /* [listener.NAME] milters: sessions go through [milter] servers */
    uv_tcp_t tcp;
    int open;
    /* mailstream_smtp_connections_total{listener,tls}: tls="yes" for
     * implicit TLS; STARTTLS upgrades are counted in m_starttls. */
    ms_counter *m_conn, *m_starttls;
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
    ms_counter *format_refused[FE_FMT_COUNT]; /* by rule (fe_header.h) */
    ms_histogram *queue_latency;
    ms_counter *commits[FE_COMMIT_REASONS], *commit_records;
    struct fe_verify_metrics verify;
};

/* Queue record `id`; value[0..len) stays valid and unchanged until its
 * report, or until an error return (then no report comes). */
typedef int (*fe_submit_fn)(void *arg, uint64_t id, const char *key, size_t keylen,
                            const void *value, size_t len);

/* The producer id of event records (fe_server_event): their reports are
 * not transactions' and are dropped (fe_sessions_report). */
#define FE_EVENT_REPORT_ID UINT64_MAX

/* Record one event on [kafka] events_topic, when set (docs/operations.md):
 * `accepted` (queue id, client, size) or `refused` (queue id, client, the
 * recipient or NULL, the reply).  Fire and forget; a record that cannot be
 * sent is counted as a submit error. */
struct fe_server;
void fe_server_event(struct fe_server *srv, const char *event, const char *qid,
                     const char *client, const char *rcpt, size_t size, const char *reply);

struct fe_server {
    uv_loop_t *loop;
    struct fe_settings set;
    struct ms_tls_ctx *tls;    /* NULL: no TLS configured */
    struct fe_passwd *passwd;  /* NULL: no AUTH */
    struct fe_rcpt_table *rcpts; /* [smtp] recipient_file; NULL: none (fe_access.h) */
    fe_submit_fn submit;
    void *submit_arg;
    ms_producer *producer;
    struct fe_listener *listeners;
    size_t nlisteners;
    struct ms_list live;       /* every live session (fe_session.c) */
    struct ms_idmap sessions;  /* session id -> session */
    struct ms_idmap pending;   /* transaction id -> session awaiting its report */
    struct ms_idmap limit_checks; /* limits check id -> session awaiting Redis */
    struct ms_idmap sent;      /* transaction id -> its record's buffer, until the report */
    struct ms_list sent_list;  /* the same buffers, to free what is never reported */
    /* Connection counts: &own_conns unless main.c points every server at
     * one process-wide table. */
    struct fe_conn_table *conns;
    struct fe_conn_table own_conns;
    int overloaded;            /* pending >= max_pending: sessions in DATA paused */
    ms_redis *redis;           /* NULL: no limits and no suppression in Redis */
    struct fe_rl *rl;
    struct fe_verify *verify;  /* [verify] map set: probes (set by main.c) */
    uint64_t next_id;          /* ids: main.c starts each loop's at (index << 48) */
    int draining;              /* set by fe_sessions_drain() */
    /* Group commit (fe_commit.h): on once fe_server_commit_start() ran. */
    int commit_on;
    ms_produce_cb commit_report; /* a held record that failed to go */
    struct fe_commit commit;
    struct fe_commit_record sending[FE_COMMIT_MAX_RECORDS];
    uv_timer_t commit_timer; /* linger_ms after the first held record */
    uv_check_t commit_check; /* after each loop iteration's I/O: is it due? */
    struct fe_metrics m;
};

void fe_metrics_register(struct fe_metrics *m);
/* The listener's own series (after l->name and l->role are set). */
void fe_metrics_listener(struct fe_listener *l);

/* Initialise the server around a loop (no listeners, no sessions yet). */
void fe_server_init(struct fe_server *srv, uv_loop_t *loop);
/* Hand transaction `id`'s record, buf[off..off + len), over; takes `buf`
 * (malloc'd) in every case: freed at once when the record cannot go, else
 * kept until its report.  With group commit it is held until its batch
 * goes; a failure to send it then comes back as a report.  0, or a
 * negative code and no report. */
int fe_server_submit(struct fe_server *srv, uint64_t id, const char *key, size_t keylen,
                     uint8_t *buf, size_t off, size_t len);
/* The report of transaction `id` came back (before it is handed to its
 * session): its buffer is freed; with group commit, the next batch may go. */
void fe_server_reported(struct fe_server *srv, uint64_t id);
/* Free the buffers of records never reported: only once nothing can read
 * them (the producer is freed, or never had them).  fe_server_free() does. */
void fe_server_sent_free(struct fe_server *srv);
/* Group commit on; linger_ms bounds a record's wait.
 * A held record that cannot be handed over comes back through
 * report(srv, id, err, errstr), as the producer's reports do. */
void fe_server_commit_start(struct fe_server *srv, ms_produce_cb report);
/* Send what is held now and close the group commit's handles (the loop is
 * finishing). */
void fe_server_commit_stop(struct fe_server *srv);
/* 1 once no session is left (draining is over). */
int fe_server_idle(const struct fe_server *srv);
/* Everything the server owns (fe_listen_close() and the last session's
 * close callback have run). */
void fe_server_free(struct fe_server *srv);

#endif
