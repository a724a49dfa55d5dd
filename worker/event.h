/*
 * event.h - delivery outcomes and their record on the `events` topic, pure.
 *
 * Every delivery attempt for a recipient ends in one outcome, decided by
 * wk_verdict() alone from the reply for that recipient.  Each attempt is
 * logged and published as one small JSON object (docs/config.md,
 * events_topic; outcome.h does both).  Any thread.
 */
#ifndef WK_EVENT_H
#define WK_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"
#include "ms_dsn.h"

enum wk_outcome { WK_OUTCOME_DELIVERED, WK_OUTCOME_DEFERRED, WK_OUTCOME_BOUNCED, WK_OUTCOME__N };

/* The verdict on one recipient from its reply: the effective SMTP reply
 * code (RFC 5321 §4.2.1) gives 2yz delivered, 5yz bounced (permanent),
 * everything else deferred (4yz, and our own code 0 for timeouts and broken
 * connections); then the reply's class (ms_reply_class(), from the code,
 * the enhanced status code `dsn` and the text) has the last word on a 5yz:
 * one it counts as soft (a full mailbox, RFC 3463 X.2.2) is deferred and
 * retried.  *cls and *hard (either may be NULL) get the class and whether
 * the failure is permanent. */
enum wk_outcome wk_verdict(int code, const char *dsn, const char *reply, enum ms_reply_class *cls,
                           int *hard);
/* "delivered", "deferred", "bounced". */
const char *wk_outcome_name(enum wk_outcome o);

struct wk_event {
    const char *qid;
    const char *rcpt;       /* NULL for events about a whole record */
    enum wk_outcome outcome;
    int code;               /* SMTP reply code; 0 when there was none */
    const char *dsn;        /* enhanced status code */
    const char *reply;      /* remote reply or our diagnostic */
    const char *relay;      /* host:port, or mxhost[ip]:port */
    const char *class_name; /* reply class (ms_dsn.h), or NULL: not written */
    const char *category;   /* bounce category (classify.h), or NULL: not written */
    const char *tls;        /* "TLSv1.3 cipher [verified|dane]", or NULL: not written */
    const char *tls_policy; /* the TLS policy level (tls_policy.h), or NULL: not
                             * written (nor tls_auth) */
    const char *tls_auth;   /* "dane", "verified" (chain and name) or "none" */
    const char *node;       /* this worker */
    unsigned attempt;       /* 1-based */
    double delay;           /* seconds since the frontend accepted it */
    int64_t ts_us;          /* when the outcome was known */
};

/* Append the event as one JSON object:
 *   {"qid":..,"rcpt":..,"outcome":..,"code":..,"dsn":..,"reply":..,
 *    "relay":..,"class":..,"category":..,"tls":..,"tls_policy":..,"tls_auth":..,"node":..,
 *    "attempt":..,"delay":..,"ts":"2026-...Z"}
 * Strings are written by ms_json_string() (ms_json.h): escaped, and bytes
 * that are not valid UTF-8 become U+FFFD.
 * Returns 0 or MS_ETOOBIG from the buffer. */
int wk_event_json(struct ms_buf *out, const struct wk_event *ev);

/* Append the event for a record that is not a valid envelope:
 *   {"event":"malformed","key":..,"partition":..,"offset":..,"error":..,
 *    "node":..,"ts":..}
 * key (the record's Kafka key, normally the queue id) may be NULL. */
int wk_event_malformed_json(struct ms_buf *out, const char *key, size_t keylen,
                            int32_t partition, int64_t offset, const char *error,
                            const char *node, int64_t ts_us);

#endif
