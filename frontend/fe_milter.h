/*
 * fe_milter.h - the frontend's milter client: a session's content filters
 * ([milter] servers, Postfix's smtpd_milters), called in turn at connect,
 * HELO, MAIL, RCPT and end of message, over the milter protocol version 6
 * (lib/mail/ms_milter.h has the wire format).
 *
 * One struct fe_milter_set per SMTP session that has milters (opaque), with
 * one connection per configured milter, opened when the session first needs
 * it and kept for the session (as Postfix does).  A stage runs the milters
 * in configured order; the first that rejects, tempfails or discards ends
 * the stage; one that accepts is skipped for the rest of the transaction
 * (at connect and HELO: of the session).  At the end of the message each
 * milter gets DATA, the header fields (our Received field first), EOH, the
 * body in chunks of at most MS_MILTER_CHUNK_MAX and BODYEOB, and may edit:
 * every milter sees the message as the client sent it, and the edits of all
 * apply in milter order (struct fe_milter_result).
 *
 * A milter that cannot be reached, takes longer than its timeout
 * ([milter] connect_timeout, command_timeout, content_timeout), sends a
 * packet over MS_MILTER_PACKET_MAX, a reply the protocol does not allow at
 * that point, or an edit it did not negotiate, is closed and gets
 * [milter] default_action for this stage and the rest of the session:
 * tempfail (451 4.7.1), reject (550 5.7.1) or accept (as if it were not
 * configured).
 *
 * Asynchronous: every stage call returns at once; its answer comes through
 * the set's callback on a later turn of the loop (never from inside the
 * call), with the session's id (STYLE.md 7): the session looks itself up
 * and ignores an answer it no longer waits for.  Strings and the message
 * given to a stage are used only until that stage's answer (the message:
 * it must stay unchanged until then); macros are copied.
 *
 * Ownership: the session owns its set; fe_milter_set_free() detaches and
 * closes its connections and timer, whose close callbacks free them (no
 * callback reaches the session after it).  Threads: the session's loop only.
 * Metrics: mailstream_frontend_milter_{calls,actions,errors}_total and
 * mailstream_frontend_milter_latency_seconds, label milter = the server as
 * configured.
 */
#ifndef FE_MILTER_H
#define FE_MILTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "ms_config.h"
#include "ms_metrics.h"
#include "ms_milter.h"

#define FE_MILTERS_MAX 16                /* [milter] servers */
#define FE_MILTER_SPEC_MAX 256           /* one server, as configured */
#define FE_MILTER_CONNECT_TIMEOUT_DEF 30 /* s, Postfix milter_connect_timeout */
#define FE_MILTER_COMMAND_TIMEOUT_DEF 30 /* s, milter_command_timeout */
#define FE_MILTER_CONTENT_TIMEOUT_DEF 300 /* s, milter_content_timeout */
#define FE_MILTER_MACRO_MAX 512          /* one macro value */
/* Body octets written ahead of the milter before waiting for the socket
 * to drain (a milter that negotiated SMFIP_NR_BODY reads at its pace). */
#define FE_MILTER_WRITE_AHEAD (256 * 1024)

enum fe_milter_default { FE_MILTER_DEF_TEMPFAIL, FE_MILTER_DEF_ACCEPT, FE_MILTER_DEF_REJECT };

/* What the metrics count by. */
enum fe_milter_error {
    FE_MILTER_ERR_CONNECT,  /* cannot connect */
    FE_MILTER_ERR_TIMEOUT,
    FE_MILTER_ERR_PROTOCOL, /* a malformed, oversized or unexpected packet */
    FE_MILTER_ERR_CLOSED,   /* the milter closed or broke the connection */
    FE_MILTER_ERR_COUNT
};
enum fe_milter_action {
    FE_MILTER_ACT_CONTINUE,
    FE_MILTER_ACT_ACCEPT,
    FE_MILTER_ACT_REJECT,
    FE_MILTER_ACT_TEMPFAIL,
    FE_MILTER_ACT_DISCARD,
    FE_MILTER_ACT_QUARANTINE,
    FE_MILTER_ACT_EDIT, /* headers, body, sender or recipients changed */
    FE_MILTER_ACT_DEFAULT, /* default_action applied after an error */
    FE_MILTER_ACT_COUNT
};

struct fe_milter_server {
    char spec[FE_MILTER_SPEC_MAX]; /* "inet:127.0.0.1:11332": the metrics label */
    struct sockaddr_storage addr;
    ms_counter *calls[MS_MILTER_STAGES];
    ms_counter *actions[FE_MILTER_ACT_COUNT];
    ms_counter *errors[FE_MILTER_ERR_COUNT];
    ms_histogram *latency;
};

/* [milter] (docs/config.md). */
struct fe_milter_conf {
    struct fe_milter_server servers[FE_MILTERS_MAX];
    size_t n; /* 0: no milters */
    enum fe_milter_default default_action;
    uint64_t connect_timeout_ms, command_timeout_ms, content_timeout_ms;
};

/* Read [milter]: 0, or MS_ECONFIG with the reason in err.  Resolves host
 * names once, here. */
int fe_milter_conf_load(struct fe_milter_conf *c, const ms_config *cfg, char *err,
                        size_t errlen);

/* A stage's outcome. */
enum fe_milter_verdict {
    FE_MILTER_CONTINUE, /* go on (every milter continued or accepted) */
    FE_MILTER_REJECT,   /* `reply` (5xx) */
    FE_MILTER_TEMPFAIL, /* `reply` (4xx) */
    FE_MILTER_DISCARD,  /* 250 to the client, never delivered */
};

struct fe_milter_result {
    enum fe_milter_verdict verdict;
    char reply[MS_MILTER_TEXT_MAX + 32]; /* REJECT, TEMPFAIL: the SMTP reply line */
    const char *milter;                 /* the milter that decided, or NULL */
    const char *action;                 /* for the log: "reject", "default_tempfail"... */
    /* End of message only: the edits (NULL/0 when none).  The message is
     * the one given to fe_milter_eom(); write it out with
     * ms_milter_msg_write() when ms_milter_msg_edited(). */
    const struct ms_milter_msg *msg;
    const char *chgfrom;               /* the new sender, "<...>" as sent, or NULL */
    char *const *addrcpt;              /* recipients to add, "<...>" as sent */
    size_t naddrcpt;
    char *const *delrcpt;              /* recipients to remove */
    size_t ndelrcpt;
    const char *quarantine;            /* the reason, or NULL */
    size_t nedits;                     /* header, body and envelope edits */
};

/* The answer to the session's stage (`arg` as given to fe_milter_set_new).
 * `res` and what it points to live until the next stage call or
 * fe_milter_abort() / fe_milter_set_free(). */
typedef void (*fe_milter_cb)(void *arg, uint64_t sid, const struct fe_milter_result *res);

struct fe_milter_set;

struct fe_milter_set *fe_milter_set_new(uv_loop_t *loop, const struct fe_milter_conf *conf,
                                        fe_milter_cb cb, void *arg, uint64_t sid);
void fe_milter_set_free(struct fe_milter_set *set);
/* Set a macro sent from now on at the stages that carry it (docs/config.md
 * lists which): value NULL or "" removes it. */
void fe_milter_macro(struct fe_milter_set *set, const char *name, const char *value);

/* The stages.  family: '4', '6', 'L' or 'U' (ms_milter_put_connect). */
void fe_milter_connect(struct fe_milter_set *set, const char *host, char family, uint16_t port,
                       const char *addr);
void fe_milter_helo(struct fe_milter_set *set, const char *helo);
/* argv[0] is "<address>", then the ESMTP parameters. */
void fe_milter_mail(struct fe_milter_set *set, const char *const *argv, size_t argc);
void fe_milter_rcpt(struct fe_milter_set *set, const char *const *argv, size_t argc);
/* The whole message as it will go to Kafka (CRLF lines, unstuffed). */
void fe_milter_eom(struct fe_milter_set *set, const char *msg, size_t len, size_t bodymax);
/* The transaction is over (RSET, EHLO, refused, queued): milters in one get
 * SMFIC_ABORT; per-transaction state and edits are dropped. */
void fe_milter_abort(struct fe_milter_set *set);

/* Names for logs and metric labels. */
const char *fe_milter_action_name(enum fe_milter_action a);
const char *fe_milter_error_name(enum fe_milter_error e);

#endif
