/*
 * mailauth.h - the worker's mail-authentication stage, once per message
 * before routing and delivery: SPF, DKIM and DMARC for inbound mail, DKIM
 * signing for outbound mail.  (Its settings keep their section name,
 * [policy]; "policy" elsewhere means the frontend's access rules.)
 *
 * Inbound mail (envelope direction inbound, [policy] inbound = yes):
 *   SPF (lib/mail/ms_spf.h) for the MAIL FROM and the HELO identity with the
 *   client IP the frontend recorded, DKIM verification of every signature
 *   (ms_dkim.h), then DMARC (ms_dmarc.h) over those results.  The three
 *   first evaluations run at once; every DNS query goes through
 *   lib/io/ms_resolver.h on the loop, so a slow DNS server delays only the
 *   messages waiting for it.  The stage owns one DKIM key cache
 *   (ms_dkim_keycache, MS_DKIM_KEYCACHE_MAX keys, used on the loop thread
 *   only) shared by its jobs' verifiers, so a sender's public key is
 *   decoded once, not once per message.  Then:
 *     - existing Authentication-Results fields claiming our authserv-id are
 *       removed and ours is prepended (ms_authres.h);
 *     - what the DSN decision needs later (dsn_rules.h: SPF pass for the
 *       MAIL FROM identity, the d= of a DKIM pass aligned, relaxed, with
 *       the MAIL FROM domain) is recorded in env->auth, so retry records
 *       carry it (this stage does not run again on them);
 *     - the verdict picks an action from the configuration:
 *         dmarc_reject, dmarc_quarantine, dmarc_none  DMARC fail, by the
 *                                  disposition after pct (p= / sp=);
 *         spf_fail                 no DMARC policy and SPF (MAIL FROM) fail;
 *         temperror                DMARC could not be evaluated (DNS);
 *         pass                     everything else;
 *       each one of deliver, quarantine (a marker header is added; routing
 *       to a quarantine transport is the router's business) or discard
 *       (the caller drops the message and publishes an event: never a
 *       bounce, the sender may be forged).  Defaults: reject -> discard,
 *       quarantine -> quarantine, the rest -> deliver.
 *
 * Outbound mail (direction outbound): DKIM signatures from the [dkim.NAME]
 * sections whose domain is the From domain (else the MAIL FROM domain);
 * several sections for one domain (RSA and Ed25519) sign at once.  The
 * signature fields are prepended to the message in the envelope, so the
 * retry records carry the signed message and retries reuse the signature.
 * Keys are files, re-read by wk_mailauth_reload() (SIGHUP); a signature
 * being computed keeps the key it started with.
 *
 * The signatures are computed on libuv's thread pool, never on the loop
 * (an RSA-2048 signature costs ~0.4 ms of CPU: on the loop it would hold
 * up every delivery and Kafka or Redis reply meanwhile, and one worker
 * could not sign on more than one core).  At most WK_MAILAUTH_SIGN_JOBS_MAX
 * (and one fewer than the pool's threads) are computed at once; the rest
 * wait in order.  The pool thread works on its own copy of the message and
 * of the signers, so wk_mailauth_cancel() and wk_mailauth_free() need not
 * wait for it: a cancelled job's result is dropped on the loop.  The loop
 * must run until its requests are done before it is closed (uv_run()
 * returns only then).
 *
 * Once only: the frontend prepends its Received field to every message, so
 * a field above the first Received one is ours.  A message that already has
 * our Authentication-Results (inbound) or our DKIM signature (outbound)
 * there has been through this stage (a retry, or a redelivered record) and
 * is passed through unchanged.
 *
 * Ids, not pointers: a job is known by the caller's 64-bit id; the callback
 * is never called from inside wk_mailauth_start() and never after
 * wk_mailauth_cancel().  The envelope passed to wk_mailauth_start() must stay
 * valid until then; the stage replaces env->message (freeing the old data)
 * right before the callback.  Every function is called on the loop thread;
 * only the signature computation runs elsewhere (above).
 */
#ifndef WK_MAILAUTH_H
#define WK_MAILAUTH_H

#include <stdint.h>
#include <uv.h>

#include "ms_buf.h"
#include "ms_config.h"
#include "ms_envelope.h"
#include "ms_resolver.h"

/* Default [policy] timeout_ms: the whole inbound evaluation of a message;
 * evaluations still waiting for DNS then count as temperror. */
#define WK_MAILAUTH_TIMEOUT_MS 20000
/* Default [policy] dns_timeout_ms, per query, for the stage's own resolver. */
#define WK_MAILAUTH_DNS_TIMEOUT_MS 5000
/* [dkim.NAME] sections (signers) loaded. */
#define WK_MAILAUTH_SIGNERS_MAX 64
/* Outbound messages whose signatures are computed at once on libuv's
 * thread pool (the rest wait, in order, on the loop): at most one fewer
 * than the pool's threads (UV_THREADPOOL_SIZE; libuv's default is
 * WK_MAILAUTH_UV_POOL_DEFAULT), and never more than this. */
#define WK_MAILAUTH_SIGN_JOBS_MAX 16
#define WK_MAILAUTH_UV_POOL_DEFAULT 4
/* The header added to quarantined mail (its value says why). */
#define WK_MAILAUTH_QUARANTINE_HEADER "X-Mailstream-Quarantine"

enum wk_mailauth_action {
    WK_MAILAUTH_DELIVER,
    WK_MAILAUTH_QUARANTINE,
    WK_MAILAUTH_DISCARD,
    WK_MAILAUTH_ACTION__N
};

enum wk_mailauth_verdict {
    WK_MAILAUTH_VERDICT_PASS,
    WK_MAILAUTH_VERDICT_DMARC_NONE,
    WK_MAILAUTH_VERDICT_DMARC_QUARANTINE,
    WK_MAILAUTH_VERDICT_DMARC_REJECT,
    WK_MAILAUTH_VERDICT_SPF_FAIL,
    WK_MAILAUTH_VERDICT_TEMPERROR,
    WK_MAILAUTH_VERDICT_SIGNED,   /* outbound: signed now */
    WK_MAILAUTH_VERDICT_SKIPPED,  /* nothing to do (not configured, or done before) */
    WK_MAILAUTH_VERDICT__N
};

struct wk_mailauth_result {
    enum wk_mailauth_action action;
    enum wk_mailauth_verdict verdict;
    const char *reason;   /* for logs and the discard event; valid during the callback */
    int modified;         /* env->message was replaced */
};

typedef struct wk_mailauth wk_mailauth;
typedef void (*wk_mailauth_cb)(void *arg, uint64_t id, const struct wk_mailauth_result *res);

/*
 * Read [policy] and the [dkim.*] sections and load the keys and the Public
 * Suffix List.  `resolver` is shared if not NULL; otherwise the stage makes
 * its own from [policy] dns when inbound checking is on.  Returns NULL with
 * a reason in err (a bad key file, an unknown action, ...).  Registers the
 * metrics: call before the loop runs.
 */
wk_mailauth *wk_mailauth_new(uv_loop_t *loop, const ms_config *cfg, const char *hostname,
                             ms_resolver *resolver, char *err, size_t errlen);
/* Re-read the key files; on any error the old keys stay (and it is logged). */
void wk_mailauth_reload(wk_mailauth *p);
/*
 * Run the stage for env.  Returns 1 when there is nothing to do (res is
 * filled, no callback), 0 when the callback will follow, or a negative
 * MS_E* code (no callback).  `id` names the job until its callback or
 * wk_mailauth_cancel(): one running job per id (a second is a broken
 * invariant: panic).
 */
int wk_mailauth_start(wk_mailauth *p, ms_envelope *env, wk_mailauth_cb cb, void *arg,
                      uint64_t id, struct wk_mailauth_result *res);
/* Testing aid for mailstream-authcheck --now and the unit tests (the
 * worker never calls it): jobs started from now on run as if the clock said
 * `now` (seconds since the epoch): DKIM t= and x= and SPF %{t} of inbound
 * mail, the t= of the signatures written.  0 goes back to the real clock. */
void wk_mailauth_set_clock(wk_mailauth *p, int64_t now);
/* Forget the job of `id` (unknown ids are ignored): no callback. */
void wk_mailauth_cancel(wk_mailauth *p, uint64_t id);
/* Jobs running. */
size_t wk_mailauth_pending(const wk_mailauth *p);
/* Cancel everything and free (handles close asynchronously on the loop;
 * signatures being computed finish on the pool, then are dropped on the
 * loop, which must run until then). */
void wk_mailauth_free(wk_mailauth *p);

/* "deliver", "quarantine", "discard"; "pass", "dmarc_reject", ... */
const char *wk_mailauth_action_name(enum wk_mailauth_action a);
const char *wk_mailauth_verdict_name(enum wk_mailauth_verdict v);

/* The `events` record of a discarded message:
 *   {"event":"discarded","qid":..,"verdict":..,"reason":..,"node":..,"ts":..} */
int wk_mailauth_event_json(struct ms_buf *out, const char *qid,
                           const struct wk_mailauth_result *r, const char *node, int64_t ts_us);

#endif
