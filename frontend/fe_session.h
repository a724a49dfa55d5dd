/*
 * fe_session.h - the SMTP server sessions of one loop's server (fe_session.c:
 * RFC 5321 and the extensions it lists).
 *
 * One struct fe_session per accepted connection (opaque): it owns the
 * transport, its buffers, a timer and at most one mail transaction, and it
 * is on its server's `live` list from fe_session_new() until its
 * transport's close callback frees it; nothing else frees a session.
 *
 * Asynchronous answers find their session again by a 64-bit id (STYLE.md 7):
 * a Kafka delivery report by its transaction id (fe_sessions_report, the
 * producer's callback), a Redis limits check (rate limits and the
 * suppression list, fe_ratelimit.h) by its check id
 * (fe_sessions_limits_answer, the rate limiter's callback), a recipient
 * verification (fe_verify.h) by its wait id (fe_sessions_verify_answer).  An id nobody
 * (fe_sessions_limits_answer, the rate limiter's callback), the milters'
 * verdict by the session's id (fe_sessions_milter_answer).  An id nobody
 * waits for any more is logged or ignored: the session is gone, or stopped
 * waiting (a timeout).
 *
 * Threads: the server's loop only.  Errors: none returned; a session that
 * cannot go on answers its client (4xx/5xx, or 421 and close) and logs why.
 */
#ifndef FE_SESSION_H
#define FE_SESSION_H

#include <stdint.h>

#include "fe_server.h"
#include "ms_conn.h"

/* Named limits of a session. */
#define FE_INPUT_MAX (256 * 1024) /* unprocessed input held per session: 421 4.7.0 */
#define FE_OUTPUT_MAX (64 * 1024) /* unsent replies: stop reading until drained */
/* A message buffer is sized once from the client's SIZE= (RFC 1870 4: its
 * estimate of the message) up to this much; beyond it, and without SIZE,
 * it grows by doubling (each step a realloc that may copy what came). */
#define FE_MSG_PRESIZE_MAX (1024 * 1024)

struct fe_session;

/* Start a session on a transport accepted on listener `l` (the session takes
 * ownership of the transport). */
struct fe_session *fe_session_new(struct fe_server *srv, struct fe_listener *l,
                                  struct ms_conn *t);
/* The delivery report of transaction `id` (an ms_produce_cb: `srv` is the
 * server): 250 or 451 to its session, and back-pressure lifted once few
 * enough reports are outstanding. */
void fe_sessions_report(void *srv, uint64_t id, int err, const char *errstr);
/* The answer to limits check `id` (an fe_rl_cb: `srv` is the server). */
void fe_sessions_limits_answer(void *srv, uint64_t id, int result);
/* The answer to recipient verification `id` (an fe_verify_cb). */
void fe_sessions_verify_answer(void *srv, uint64_t id, int result, const char *text);
/* The milters' answer to session `sid`'s stage (an fe_milter_cb: `srv` is
 * the server). */
struct fe_milter_result;
void fe_sessions_milter_answer(void *srv, uint64_t sid, const struct fe_milter_result *res);
/* SIGTERM: let sessions finish their transactions, answer 421 4.3.2 to new
 * commands (and close idle sessions at once).  fe_server_idle() is 1 once
 * no session is left. */
void fe_sessions_drain(struct fe_server *srv);
/* The drain grace period is over: 421 4.3.2 and close every session,
 * whatever its state. */
void fe_sessions_abort(struct fe_server *srv);

/* The session's id (in its log lines as sid=). */
uint64_t fe_session_id(const struct fe_session *s);
/* The transport callbacks of a session (a transport made for a session,
 * e.g. an in-memory one in tests, starts with these). */
extern const struct ms_conn_cb fe_session_transport_cb;

#endif
