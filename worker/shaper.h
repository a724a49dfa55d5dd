/*
 * shaper.h - the worker's traffic shaping at run time: the rule files
 * (shaping.h, classify.h) loaded and reloaded on SIGHUP, each
 * destination's group and limits, the automatic backoff kept in Redis so
 * that every worker acts as one, and the metrics per group.
 *
 * Groups: wk_shaper_resolve() names the group of a destination once its
 * route is known (the MX hosts): a group of the shaping file, else its MX
 * set; the relay host and transport map next hops keep their own name.
 * Rates and connection leases (pacing.h) are kept under that name, so two
 * recipient domains with one MX share them.
 *
 * Backoff: every reply from a remote server goes through
 * wk_shaper_observe(); one that matches a backoff rule writes the group's
 * backoff record (ms_backoff.h) to the Redis hash MS_KEY_BACKOFF, logs
 * event=backoff and counts it.  Every worker reads the hash each
 * WK_SHAPER_POLL_MS (and applies its own writes at once), and
 * wk_shaper_limits() scales the group's rate and connections by the
 * record's factor, or says it is suspended.  `mailstream-ctl dest list`
 * shows the records, `dest resume GROUP` deletes one.  A worker writes a
 * group's record again only when the one it knows would end within half
 * the rule's time, so a storm of 421s is not a storm of writes.
 *
 * Reload (SIGHUP): both files are read again; a file that does not load
 * keeps the rules in force and logs why (event=shaping_reload_failed).
 * The first load at start is fatal on error (the caller exits).
 *
 * Redis unavailable: backoff records are neither written nor read; the
 * last read stay in force until they end.  One loop thread.
 */
#ifndef WK_SHAPER_H
#define WK_SHAPER_H

#include <stdint.h>
#include <uv.h>

#include "classify.h"
#include "event.h"
#include "ms_bucket.h"
#include "ms_redis.h"
#include "shaping.h"

/* How often the backoff records are read. */
#define WK_SHAPER_POLL_MS 1000
/* Backoff records a worker keeps (more are ignored, logged). */
#define WK_SHAPER_BACKOFF_MAX 1024
/* Group labels with metric series of their own (the named groups, and
 * "default" for every other destination). */
#define WK_SHAPER_LABELS_MAX (WK_SHAPING_GROUPS_MAX + 1)
/* Longest name limits are kept under (a group, an MX set, a next hop). */
#define WK_SHAPE_KEY_MAX 255

struct wk_shaper_conf {
    const char *shaping_file; /* NULL or "": no groups, no backoff rules */
    const char *rules_file;   /* NULL or "": the RFC 3463 fallback alone */
    struct wk_shape_limits base; /* [delivery]: what a file leaves unset */
};

/* A destination's shaping, decided once per destination and attempt. */
struct wk_dest_shape {
    char key[WK_SHAPE_KEY_MAX + 1];           /* rates and leases live under it */
    char label[WK_SHAPING_NAME_MAX + 1];      /* its group, or "default" */
    char rules_group[WK_SHAPING_NAME_MAX + 1]; /* the named group, or "" */
    struct wk_shape_limits lim;               /* before any backoff */
    const struct wk_tls_entry *tls;           /* the group's TLS policy, or NULL */
    wk_shaping *gen;                          /* the rules tls points into (a
                                               * reference: wk_shaper_release) */
};

typedef struct wk_shaper wk_shaper;

/* NULL when a file does not load (err says why). */
wk_shaper *wk_shaper_new(uv_loop_t *loop, const struct wk_shaper_conf *conf, char *err,
                         size_t errlen);
void wk_shaper_attach(wk_shaper *s, ms_redis *r);
/* SIGHUP: read both files again.  0, or the error (old rules kept). */
int wk_shaper_reload(wk_shaper *s);
/* Stop polling (draining); freed like wk_control (control.h). */
void wk_shaper_stop(wk_shaper *s);
void wk_shaper_free(wk_shaper *s);

/* The classifier in force (NULL: the fallback); valid until the next
 * reload, so callers use it at once and keep nothing. */
const wk_classifier *wk_shaper_classifier(const wk_shaper *s);

/* The shaping of a destination: `name` (the relay host or transport next
 * hop; NULL for MX routing), the recipient domain and the MX hosts of its
 * addresses (repeats allowed).  Release it with wk_shaper_release() (the
 * rules it points into outlive a reload until then). */
void wk_shaper_resolve(const wk_shaper *s, const char *name, const char *domain,
                       const char *const *hosts, size_t n, struct wk_dest_shape *out);
void wk_shaper_release(struct wk_dest_shape *ds);

/* The limits in force for ds now, its backoff applied: *rate (capacity 0:
 * none) and *connections (0: none).  Returns 1 when the group is
 * suspended by a backoff, with *until_us and the rule's name in why. */
int wk_shaper_limits(wk_shaper *s, const struct wk_dest_shape *ds, struct ms_bucket_rate *rate,
                     int *connections, int64_t *until_us, char *why, size_t whylen);

/* A reply from a server of ds's group (code 0: none came): start or
 * renew a backoff if a rule matches.  log_id goes into the log line. */
void wk_shaper_observe(wk_shaper *s, const struct wk_dest_shape *ds, int code, const char *dsn,
                       const char *text, const char *log_id);

/* Per-group metrics: a session started (on 1) or ended (on 0) */
void wk_shaper_session(wk_shaper *s, const char *label, int on);
/* and a recipient's outcome with its category. */
void wk_shaper_count(wk_shaper *s, const char *label, enum wk_outcome o, enum wk_category cat);

#endif
