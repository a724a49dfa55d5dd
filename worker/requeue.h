/*
 * requeue.h - the records a delivery round leaves behind, built without
 * I/O: the delivery status notification (RFC 3464) for the recipients that
 * bounced, were delivered with NOTIFY=SUCCESS or are due a delay warning,
 * and the retry record carrying the recipients still pending to the retry
 * tier of their attempt number (retry.h).
 *
 * Who may get a DSN at all (the backscatter rule, dsn_rules.h) is decided
 * by the caller before it asks for one; NOTIFY per recipient (RFC 3461
 * §4.1) is applied here.  The envelopes themselves are made by
 * ms_envelope_encode_dsn() and ms_envelope_encode_retry() (ms_envelope.h).
 *
 * Pure: times and the new queue id come from the caller; results are
 * malloc'd buffers the caller frees.  Any thread.
 */
#ifndef WK_REQUEUE_H
#define WK_REQUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "ms_envelope.h"
#include "outcome.h"

struct wk_requeue_conf {
    const char *helo_name; /* Reporting-MTA */
    const char *node_id;   /* the worker, in envelopes and attempts */
    int64_t max_age_s;     /* when retries end (Will-Retry-Until, §2.3.9) */
};

/* What went into a DSN. */
struct wk_requeue_dsn_counts {
    size_t rcpts;   /* recipients reported */
    size_t delayed; /* of which Action: delayed */
    size_t success; /* of which delivered or relayed (NOTIFY=SUCCESS) */
};

/* Recipients a DSN is owed for in this round before NOTIFY is applied
 * (bounced or delivered with a success notice not yet acknowledged, or a
 * delay warning on its way).  rcpts has env->n_recipients entries. */
size_t wk_requeue_dsn_owed(const struct wk_rcpt *rcpts, size_t n);

/* Build the DSN envelope about env for rcpts (env->n_recipients of them):
 * Action failed for bounced recipients whose NOTIFY allows FAILURE,
 * delivered/relayed for those with in_dsn set after a delivery (NOTIFY was
 * checked when it was set), delayed for those with warn_in_dsn.  The notice
 * gets queue id dsn_qid and is made at now_us.  Returns 1 with *buf (free())
 * and *len, 0 when NOTIFY leaves nobody to report on, or a negative error
 * from ms_dsn_build(). */
int wk_requeue_dsn(const struct wk_requeue_conf *conf, const ms_envelope *env,
                   const struct wk_rcpt *rcpts, const char *dsn_qid, int64_t now_us, uint8_t **buf,
                   size_t *len, struct wk_requeue_dsn_counts *counts);

/* The retry tier (1-based) for a message deferred on attempt number
 * `attempt`: the attempt, at most `tiers` (> 0), at least 1. */
int wk_requeue_tier(unsigned attempt, int tiers);

/* The retry record of env after attempt number `attempt`: the recipients
 * still pending, env's attempts plus one per recipient tried in this round
 * (its last result), due at next_attempt_us in tier `tier`.  Returns a
 * malloc'd buffer (free()) and its length. */
uint8_t *wk_requeue_retry(const struct wk_requeue_conf *conf, const ms_envelope *env,
                          const struct wk_rcpt *rcpts, unsigned attempt, int64_t next_attempt_us,
                          int tier, size_t *len);

#endif
