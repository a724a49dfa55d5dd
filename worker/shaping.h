/*
 * shaping.h - traffic shaping rules ([delivery] shaping_file; the shipped
 * defaults are etc/shaping.yaml): destination groups, their limits, and
 * the backoff rules that slow a group down when its servers say so.
 *
 *   default:                    # limits of every destination not in a group
 *     connections: 20           # cluster-wide sessions at once (leases)
 *     rate: 10                  # messages per second, cluster-wide ("0.5", "off")
 *     messages_per_connection: 100
 *     recipients_per_message: 50 # more go in further transactions (RFC 5321
 *                               # §4.5.3.1.8: servers take at least 100)
 *     connect_timeout: 30s      # the TCP connect
 *     data_timeout: 10m         # the reply to the final dot (§4.5.3.2.6)
 *     retry_min: 5m             # the retry schedule of its deferred mail:
 *     retry_max: 4h             # doubling from retry_min up to retry_max
 *   groups:                     # first match wins
 *     - name: google            # the group's name: Redis keys, metrics, mailstream-ctl
 *       mx: ["*.google.com"]    # any MX host of the domain matches ("*." any name under)
 *       domains: [gmail.com]    # or the recipient domain is one of these
 *       connections: 10         # unset limits are the default's
 *       tls: verify             # TLS policy (tls_policy.h): none, may,
 *                               # encrypt, verify or secure, [match=...]
 *   backoff:                    # first match wins
 *     - name: gmail-rate        # in logs, metrics and `mailstream-ctl dest list`
 *       group: google           # only replies from this group (absent: any)
 *       code: 421               # reply patterns as in classify.h
 *       enhanced: "4.7.28"
 *       text: "rate limit"
 *       action: throttle        # or suspend
 *       factor: 0.5             # throttle: rate and connections times this;
 *                               # both: where the ramp back starts
 *       for: 10m
 *       ramp: 30m               # climb back to the full limits over this
 *
 * A destination that is no group's is grouped by its MX set (the sorted
 * MX host names: domains hosted alike share limits) and gets the default
 * limits; one reached through the relay host or a transport map entry is
 * named as before (delivery.h).  A missing limit falls back to [delivery]
 * dest_concurrency, dest_rate, max_msgs_per_conn, the timeouts and
 * retry_min_ms / retry_max_ms (recipients per message: no limit).  A
 * message deferred to several groups waits as long as the slowest
 * schedule among its pending recipients says.
 *
 * A group's `tls` applies where [tls] policy_map names neither the domain
 * nor the next hop (a map entry wins; MTA-STS enforce and DANE still come
 * first, delivery.h).  DANE levels and ca_file are the policy map's only:
 * TLSA records are looked up with the MX, before the group is known, and
 * a CA file needs a TLS context loaded at start.
 *
 * Limits: WK_SHAPING_GROUPS_MAX groups, WK_SHAPING_RULES_MAX backoff
 * rules, WK_SHAPING_PATTERNS_MAX mx and domains per group.
 *
 * Ownership: a wk_shaping is immutable once parsed and counted by
 * references: the parser's, and one per destination that holds a pointer
 * into it (wk_shaping_ref); the worker swaps it whole on SIGHUP (shaper.h)
 * and the last reference frees it.  Pure; any thread may read a parsed
 * one (the count is the worker's loop thread's).
 * Errors: MS_EINVAL / MS_ETOOBIG / MS_EIO with the reason (and line) in err.
 */
#ifndef WK_SHAPING_H
#define WK_SHAPING_H

#include <stddef.h>
#include <stdint.h>

#include "classify.h"
#include "ms_backoff.h"
#include "tls_policy.h"
#include "ms_bucket.h"
#include "ms_dns.h"

#define WK_SHAPING_GROUPS_MAX 256
#define WK_SHAPING_RULES_MAX 256
#define WK_SHAPING_PATTERNS_MAX 64
/* Longest group name (it is part of Redis keys and metric labels). */
#define WK_SHAPING_NAME_MAX 63
/* Longest backoff and ramp, and the most connections a group may have. */
#define WK_SHAPING_FOR_MAX_S (7 * 24 * 3600)
#define WK_SHAPING_CONNECTIONS_MAX 100000
#define WK_SHAPING_MSGS_MAX 1000000
#define WK_SHAPING_TIMEOUT_MAX_S 3600
#define WK_SHAPING_RCPTS_MAX 100000
#define WK_SHAPING_RETRY_MAX_S (24 * 3600) /* as [delivery] retry_max_ms */

/* A group's limits; 0 (rate: has_rate 0) means "the [delivery] setting". */
struct wk_shape_limits {
    int connections;
    int has_rate;
    struct ms_bucket_rate rate; /* with has_rate; capacity 0: no limit */
    unsigned msgs_per_conn;
    unsigned rcpts_per_msg;     /* recipients per transaction; 0: all at once */
    uint64_t connect_timeout_ms;
    uint64_t data_timeout_ms;
    uint64_t retry_min_ms, retry_max_ms; /* the retry schedule (retry.h) */
};

struct wk_shape_group {
    char name[WK_SHAPING_NAME_MAX + 1];
    char **mx;      /* lower case; "*.x" any name under x */
    size_t nmx;
    char **domains; /* lower case */
    size_t ndomains;
    struct wk_shape_limits lim; /* the default's filled in where unset */
    int has_tls;
    struct wk_tls_entry tls;    /* with has_tls */
};

enum wk_backoff_action { WK_BACKOFF_THROTTLE, WK_BACKOFF_SUSPEND };

struct wk_backoff_rule {
    char name[WK_SHAPING_NAME_MAX + 1];
    char group[WK_SHAPING_NAME_MAX + 1]; /* "" any */
    struct wk_reply_pat pat;
    enum wk_backoff_action action;
    double factor;
    int64_t for_ms, ramp_ms;
};

/* Fill what l leaves unset (0, has_rate 0) from def: a group's limits from
 * the default section, those from [delivery]. */
void wk_shape_limits_inherit(struct wk_shape_limits *l, const struct wk_shape_limits *def);

typedef struct wk_shaping wk_shaping;

int wk_shaping_parse(const char *buf, size_t len, wk_shaping **out, char *err, size_t errlen);
int wk_shaping_load(const char *path, wk_shaping **out, char *err, size_t errlen);
/* Drop a reference (the parser's, or one of wk_shaping_ref()'s). */
void wk_shaping_free(wk_shaping *s);
wk_shaping *wk_shaping_ref(wk_shaping *s);

size_t wk_shaping_ngroups(const wk_shaping *s);
size_t wk_shaping_nrules(const wk_shaping *s);
const struct wk_shape_group *wk_shaping_group_at(const wk_shaping *s, size_t i);
/* The default limits. */
const struct wk_shape_limits *wk_shaping_default(const wk_shaping *s);

/* The group of a recipient domain whose MX hosts are hosts[0..n) (any
 * case, possibly repeated), or NULL: none names it. */
const struct wk_shape_group *wk_shaping_group(const wk_shaping *s, const char *domain,
                                              const char *const *hosts, size_t n);
/* The name a group-less destination's limits are kept under: "mx:" and
 * its distinct MX host names, sorted, comma-separated, lower case; just
 * the first (most preferred) host when that would not fit in len.  n 0:
 * "". */
void wk_shaping_mx_key(const char *const *hosts, size_t n, char *buf, size_t len);

/* The first backoff rule for a reply from group `group` ("" no named
 * group), or NULL.  Cheap when nothing matches: codes before regexes. */
const struct wk_backoff_rule *wk_shaping_match(const wk_shaping *s, const char *group, int code,
                                               const char *dsn, const char *text);

#endif
