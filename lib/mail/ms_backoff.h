/*
 * ms_backoff.h - a destination group's automatic backoff, as the worker
 * writes it to Redis (MS_KEY_BACKOFF, ms_keys.h) and every worker and
 * mailstream-ctl read it: the record and what it means at a given time.
 *
 * A backoff starts when a reply matches a backoff rule of the shaping file
 * (worker/shaping.h) and lasts until `until`: a suspension (no session to
 * the group) or a throttle (its message rate and connections times
 * `factor`).  Then it ramps back: the factor climbs linearly from `factor`
 * to 1 over `ramp_ms`, and the record is over.  The record is the whole
 * state, so every worker that reads it acts alike, and one that restarts
 * picks it up again.
 *
 * Value: "ACTION FACTOR UNTIL_US RAMP_MS SINCE_US RULE REASON" (ACTION
 * "suspend" or "throttle", FACTOR in [0.01, 1], RULE without spaces).
 * Pure, any thread; the parser takes what anyone could have written to
 * Redis and refuses what does not fit (MS_EINVAL).
 */
#ifndef MS_BACKOFF_H
#define MS_BACKOFF_H

#include <stddef.h>
#include <stdint.h>

#define MS_BACKOFF_RULE_MAX 63
#define MS_BACKOFF_REASON_MAX 200
/* Smallest factor: a throttle never stops a group outright (that is what
 * suspend is for), and a ramp starts from at least this. */
#define MS_BACKOFF_FACTOR_MIN 0.01

struct ms_backoff {
    int suspend;     /* 1: no sessions until until_us; 0: a throttle */
    double factor;   /* the throttle; after a suspension, where the ramp starts */
    int64_t until_us;
    int64_t ramp_ms; /* 0: straight back to 1 at until_us */
    int64_t since_us;
    char rule[MS_BACKOFF_RULE_MAX + 1];
    char reason[MS_BACKOFF_REASON_MAX + 1];
};

/* The record into buf; its length, or MS_ETOOBIG.  Spaces in the rule and
 * line ends in the reason become '_' and ' '. */
int ms_backoff_format(const struct ms_backoff *b, char *buf, size_t len);
/* Parse a value (not NUL-terminated); 0 or MS_EINVAL. */
int ms_backoff_parse(const char *s, size_t len, struct ms_backoff *out);

/* The factor in force at now_us: 0 while suspended, `factor` while
 * throttled, climbing to 1 over the ramp, 1 once over. */
double ms_backoff_factor(const struct ms_backoff *b, int64_t now_us);
/* Suspended at now_us? */
int ms_backoff_suspended(const struct ms_backoff *b, int64_t now_us);
/* Over (ramp included) at now_us: the record can go. */
int ms_backoff_over(const struct ms_backoff *b, int64_t now_us);

#endif
