/*
 * dsn_rules.c - DSN decisions (dsn_rules.h).
 */
#include "dsn_rules.h"
#include "ms_addr.h"
#include "ms_dns.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const verdict_names[WK_DSN_VERDICT__N] = {
    "allow", "null_sender", "unauthenticated", "not_evaluated", "no_direction"};

const char *wk_dsn_verdict_name(enum wk_dsn_verdict v)
{
    return (unsigned)v < WK_DSN_VERDICT__N ? verdict_names[v] : "unknown";
}

void wk_dsn_facts_of(const ms_envelope *env, struct wk_dsn_facts *f)
{
    memset(f, 0, sizeof(*f));
    f->mail_from = env->mail_from ? env->mail_from->address : NULL;
    f->direction = (int)env->direction;
    if (env->auth) {
        f->auth_evaluated = env->auth->evaluated;
        f->spf_mailfrom_pass = env->auth->spf_mailfrom_pass;
        f->dkim_aligned = env->auth->dkim_aligned_domain;
    }
}

enum wk_dsn_verdict wk_dsn_decide(const struct wk_dsn_facts *f)
{
    if (f->mail_from == NULL || f->mail_from[0] == '\0')
        return WK_DSN_NULL_SENDER;
    if (f->direction == MS_ENV_DIRECTION_OUTBOUND)
        return WK_DSN_ALLOW;
    if (f->direction != MS_ENV_DIRECTION_INBOUND)
        return WK_DSN_NO_DIRECTION;
    if (!f->auth_evaluated)
        return WK_DSN_NOT_EVALUATED;
    if (f->spf_mailfrom_pass || (f->dkim_aligned && f->dkim_aligned[0]))
        return WK_DSN_ALLOW;
    return WK_DSN_UNAUTHENTICATED;
}

int wk_dkim_aligned(const ms_psl *psl, const char *mail_from, const char *d)
{
    char dom[MS_DNS_NAME_MAX + 1];

    if (mail_from == NULL || d == NULL || d[0] == '\0' ||
        ms_addr_domain_copy(mail_from, dom, sizeof(dom)) < 0 || dom[0] == '\0')
        return 0;
    /* RFC 7489 §3.1.1, relaxed: ms_dmarc.h does the comparison for DMARC;
     * without a Public Suffix List only equal names align. */
    return ms_dmarc_aligned(psl, dom, d, psl == NULL);
}

int wk_notify_failure(uint32_t notify)
{
    if (notify == 0)
        return 1;
    if (notify & MS_ENV_NOTIFY_NEVER)
        return 0;
    return (notify & MS_ENV_NOTIFY_FAILURE) != 0;
}

int wk_notify_delay(uint32_t notify)
{
    if (notify == 0)
        return 1;
    if (notify & MS_ENV_NOTIFY_NEVER)
        return 0;
    return (notify & MS_ENV_NOTIFY_DELAY) != 0;
}

int wk_notify_success(uint32_t notify)
{
    return !(notify & MS_ENV_NOTIFY_NEVER) &&
           (notify & MS_ENV_NOTIFY_SUCCESS) != 0;
}

int wk_dsn_success(uint32_t notify, int next_hop_dsn, int final, enum ms_dsn_action *action)
{
    /* RFC 3461 §5.2.1: a next hop that offers DSN got NOTIFY=SUCCESS with
     * the recipient and owes the notice now, so a second one from us
     * would be a duplicate. */
    if (!wk_notify_success(notify) || next_hop_dsn)
        return 0;
    /* §5.2.3 (delivered to the mailbox) or §5.2.2 (relayed, no further
     * notices to be expected from there). */
    *action = final ? MS_DSN_DELIVERED : MS_DSN_RELAYED;
    return 1;
}

int wk_delay_warning_due(int64_t delay_warning_s, int64_t received_us, int64_t now_us,
                         int64_t warned_us, uint32_t notify)
{
    if (delay_warning_s <= 0 || warned_us != 0 || received_us <= 0 || !wk_notify_delay(notify))
        return 0;
    return now_us - received_us >= delay_warning_s * 1000000;
}

void wk_dsn_status(char *out, size_t outlen, const char *dsn, enum ms_dsn_action action)
{
    const char *fallback = action == MS_DSN_FAILED    ? "5.0.0"
                           : action == MS_DSN_DELAYED ? "4.0.0"
                                                      : "2.0.0";
    char klass = fallback[0];

    if (outlen == 0)
        return;
    /* A success reports the 2.X.X of the reply that took it; a code of
     * another class does not describe it (and cannot happen). */
    if (action != MS_DSN_FAILED && action != MS_DSN_DELAYED && dsn && dsn[0] != klass)
        dsn = NULL;
    snprintf(out, outlen, "%s", dsn && dsn[0] ? dsn : fallback);
    if (action == MS_DSN_DELAYED && out[0] == '5')
        out[0] = '4';
}
