/*
 * dsn_rules.h - who may be sent a delivery status notification, and when a
 * delay warning is due: pure decisions, no I/O, any thread.  The delivery
 * engine (delivery.h) asks them before it builds a DSN (ms_dsn.h); the
 * mail-authentication stage (mailauth.h) uses wk_dkim_aligned() to record the facts they
 * need in the envelope (proto Envelope.auth).
 *
 * The backscatter rule (DESIGN.md): DSNs go only to senders of mail we
 * accepted for relaying on their behalf (direction outbound), or to senders
 * whose SPF/DKIM passed; the null sender is never bounced (RFC 5321
 * §4.5.5).  For inbound mail "passed" means, for the MAIL FROM domain:
 *   - SPF (RFC 7208) for the MAIL FROM identity gave pass, or
 *   - a DKIM signature (RFC 6376) verified and its d= is aligned with the
 *     MAIL FROM domain in the relaxed sense of RFC 7489 §3.1.1: both have
 *     the same Organizational Domain (§3.2, from the Public Suffix List).
 * Either shows the MAIL FROM domain sent the message, so a DSN does not
 * land on a forged sender.  Mail of unknown direction gets none.  The rule
 * holds for every action: failed, delayed, delivered and relayed.
 *
 * Success notices (RFC 3461 NOTIFY=SUCCESS) are owed by whoever last
 * handles the message under the DSN extension: a next hop that offers DSN
 * is given NOTIFY and the rest (smtp_client.h) and reports itself, so we
 * send nothing; one that does not gets the message and we report
 * "relayed" (§5.2.2) or, when it delivered the message to its mailbox
 * (LMTP, RFC 2033; the discard transport), "delivered" (§5.2.3).
 */
#ifndef WK_DSN_RULES_H
#define WK_DSN_RULES_H

#include <stddef.h>
#include <stdint.h>

#include "ms_dmarc.h"
#include "ms_dsn.h"
#include "ms_envelope.h"

enum wk_dsn_verdict {
    WK_DSN_ALLOW,
    WK_DSN_NULL_SENDER,   /* MAIL FROM:<> */
    WK_DSN_UNAUTHENTICATED, /* inbound, and neither SPF nor aligned DKIM passed */
    WK_DSN_NOT_EVALUATED, /* inbound, and the mail-authentication stage left no results */
    WK_DSN_NO_DIRECTION,  /* neither inbound nor outbound */
    WK_DSN_VERDICT__N
};

/* The facts the decision takes, from the envelope. */
struct wk_dsn_facts {
    const char *mail_from;     /* NULL or "": the null sender */
    int direction;             /* ms_envelope_direction */
    int auth_evaluated;        /* the mail-authentication stage recorded results */
    int spf_mailfrom_pass;
    const char *dkim_aligned;  /* d= of an aligned DKIM pass, NULL or "": none */
};

/* The facts of an envelope (pointers into env). */
void wk_dsn_facts_of(const ms_envelope *env, struct wk_dsn_facts *f);
/* May a DSN (failure or delay) go to the envelope sender? */
enum wk_dsn_verdict wk_dsn_decide(const struct wk_dsn_facts *f);
/* For logs and metric labels: "allow", "null_sender", "unauthenticated",
 * "not_evaluated", "no_direction". */
const char *wk_dsn_verdict_name(enum wk_dsn_verdict v);

/* Is DKIM d= `d` aligned (relaxed) with the domain of the address
 * `mail_from`?  Equal names always are; otherwise both need an
 * Organizational Domain from psl and those must be equal.  0 when either
 * is missing or not a domain (ms_dmarc_aligned() decides). */
int wk_dkim_aligned(const ms_psl *psl, const char *mail_from, const char *d);

/* RFC 3461 §4.1, NOTIFY (Notify bits; 0: not given).  FAILURE: given and
 * listed, or not given.  DELAY: given and listed, or not given: §4.1 lets
 * an MTA treat an absent NOTIFY as "FAILURE" or "FAILURE,DELAY"; like
 * Postfix we take the latter, and the operator opts in to delay warnings at
 * all with [retry] delay_warning_s. */
int wk_notify_failure(uint32_t notify);
int wk_notify_delay(uint32_t notify);
/* SUCCESS: only when given and listed (§4.1: never by default). */
int wk_notify_success(uint32_t notify);

/* After a recipient was delivered: the success DSN we owe (see above),
 * given its NOTIFY, whether the next hop offered DSN (next_hop_dsn) and
 * whether it delivered to the mailbox itself (final: LMTP, discard).
 * Returns 1 with *action MS_DSN_DELIVERED or MS_DSN_RELAYED, or 0: none. */
int wk_dsn_success(uint32_t notify, int next_hop_dsn, int final, enum ms_dsn_action *action);

/* Is a delay warning due for a recipient still pending (deferred) at
 * now_us, of a message accepted at received_us?  Only when warnings are on
 * (delay_warning_s > 0), none was sent yet (warned_us == 0), NOTIFY allows
 * DELAY, and the message has waited at least delay_warning_s. */
int wk_delay_warning_due(int64_t delay_warning_s, int64_t received_us, int64_t now_us,
                         int64_t warned_us, uint32_t notify);

/* The Status field of a DSN recipient (RFC 3464 §2.3.4) from its last
 * enhanced status code `dsn` ("" when none) and its action: failed -> as
 * given or 5.0.0; delayed -> 4.X.X (a soft 5yz such as a full mailbox,
 * which is being retried, becomes 4.X.X) or 4.0.0; delivered and relayed
 * -> the 2.X.X given, else 2.0.0.  Written to out (NUL-terminated,
 * truncated to outlen - 1). */
void wk_dsn_status(char *out, size_t outlen, const char *dsn, enum ms_dsn_action action);

#endif
