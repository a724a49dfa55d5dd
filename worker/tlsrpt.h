/*
 * tlsrpt.h - the worker's SMTP TLS Reporting (RFC 8460): every outbound
 * session's TLS result counted per policy domain and period in the
 * cluster's Redis, and once per period one worker of the cluster (the one
 * that takes the period's lease) reports each domain that asks for it.
 *
 * Counting (wk_tlsrpt_session, wk_tlsrpt_sts_failure): a few commands
 * nobody waits for (ms_redis_fire) on the period's hash MS_KEY_TLSRPT
 * "<begin>:<domain>" (fields and values: ms_tlsrpt.h) and its set of
 * domains MS_KEY_TLSRPT_DOMAINS "<begin>", both expiring WK_TLSRPT_KEEP
 * periods after the period began.  A period is [tlsrpt_interval_s]
 * seconds from the epoch: 86400, the default, makes them UTC days as §4.1
 * asks; tests set a few seconds.  A lost Redis command loses a count,
 * never a message.
 *
 * Reporting: a timer looks every quarter period (at most a minute) whether
 * the previous period ended more than a grace ago; then SET NX on
 * MS_KEY_TLSRPT_LEASE "<begin>" (kept as long as the counts, so the
 * period is never reported twice, whichever worker asks, however late).
 * The worker that got it walks the period's domains one after another:
 * the _smtp._tls TXT record (§3; none or invalid: no report), the hash,
 * the §4 JSON, gzip, then each rua: https: a POST of
 * application/tlsrpt+gzip (§5.4, lib/io/ms_https.h), mailto: a message
 * (§5.3, ms_tlsrpt_mail_build) produced to the queue topic like any other
 * mail, from [tls] tlsrpt_from with NOTIFY=NEVER.  XXX: a worker that
 * dies in the middle leaves the rest of the period unreported (the lease
 * is not handed on).
 *
 * Ids, not pointers: every Redis, DNS and HTTPS reply finds the run by a
 * cookie; a run that is gone drops it.  One loop thread.  Redis, the
 * producer and the HTTPS client may be NULL (nothing counted, no report,
 * no https: reports).
 */
#ifndef WK_TLSRPT_H
#define WK_TLSRPT_H

#include <stdint.h>
#include <uv.h>

#include "ms_https.h"
#include "ms_kafka.h"
#include "ms_redis.h"
#include "ms_resolver.h"
#include "ms_tlsrpt.h"
#include "mtasts.h"
#include "route.h"

/* Periods the counts, the domain set and the lease are kept after the
 * period began: the period itself, the one in which it is reported, and
 * one more for a cluster that was down when it ended. */
#define WK_TLSRPT_KEEP 3
/* The kind of record in the producer's delivery reports that is a report
 * message (delivery.c's ids are message id << 2 | kind, kinds 0 to 2, and
 * message ids start at 1: this one is never theirs). */
#define WK_TLSRPT_PRODUCE_ID 3
/* Longest policy-string stored per session (TLSA records in hex can be
 * long; a longer one is stored without its records). */
#define WK_TLSRPT_POLICY_MAX 4096

struct wk_tlsrpt_conf {
    const char *node_id;   /* the lease's value */
    const char *org_name;  /* organization-name */
    const char *contact;   /* contact-info */
    const char *submitter; /* our domain (file name, TLS-Report-Submitter) */
    const char *from;      /* sender of mailto: reports */
    const char *topic;     /* where mailto: reports are produced */
    int64_t interval_s;    /* a period; 86400: UTC days */
};

typedef struct wk_tlsrpt wk_tlsrpt;

/* conf's strings are copied. */
wk_tlsrpt *wk_tlsrpt_new(uv_loop_t *loop, const struct wk_tlsrpt_conf *conf, ms_resolver *resolver,
                         ms_https *https);
/* Redis and the producer once they exist; starts the report timer. */
void wk_tlsrpt_attach(wk_tlsrpt *t, ms_redis *redis, ms_producer *producer);

/* Count one session to MX host a of policy domain `domain` (only mail
 * routed by MX: a relay's or transport's session has no policy domain).
 * sts: the domain's MTA-STS policy in force, or NULL; tlsa: the records
 * a's point into.  result: the session's wk_smtp_result.tls_result, or
 * WK_TLSRPT_REFUSED when the policy refused the address before any
 * connection (DNSSEC bogus, DANE required, an MX host the MTA-STS policy
 * does not name); tls_up: TLS was negotiated; local_ip: our address. */
#define WK_TLSRPT_REFUSED (-2)
void wk_tlsrpt_session(wk_tlsrpt *t, const char *domain, const struct wk_mtasts_result *sts,
                       const struct wk_route_addr *a, const struct wk_route_tlsa *tlsa, int result,
                       int tls_up, const char *local_ip);
/* Count an MTA-STS policy that could not be had (§4.3.2.3: fetch error,
 * invalid, certificate): one failed session of policy type sts. */
void wk_tlsrpt_sts_failure(wk_tlsrpt *t, const char *domain, enum ms_tlsrpt_result r);

/* The producer's delivery report of a report message (id
 * WK_TLSRPT_PRODUCE_ID). */
void wk_tlsrpt_on_produced(wk_tlsrpt *t, int err, const char *errstr);

/* Stop the timer and forget the run (no more Redis, DNS or HTTPS); the
 * clients may go after this. */
void wk_tlsrpt_stop(wk_tlsrpt *t);
/* Free once the loop has run down. */
void wk_tlsrpt_free(wk_tlsrpt *t);

#endif
