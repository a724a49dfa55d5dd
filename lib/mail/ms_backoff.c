/*
 * ms_backoff.c - backoff records (ms_backoff.h).
 */
#include "ms_backoff.h"
#include "ms_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ms_backoff_format(const struct ms_backoff *b, char *buf, size_t len)
{
    char rule[MS_BACKOFF_RULE_MAX + 1], reason[MS_BACKOFF_REASON_MAX + 1], *p;
    int n;

    snprintf(rule, sizeof(rule), "%s", b->rule[0] ? b->rule : "-");
    for (p = rule; *p; p++)
        if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            *p = '_';
    snprintf(reason, sizeof(reason), "%s", b->reason);
    for (p = reason; *p; p++)
        if (*p == '\t' || *p == '\r' || *p == '\n')
            *p = ' ';
    n = snprintf(buf, len, "%s %.4f %lld %lld %lld %s %s", b->suspend ? "suspend" : "throttle",
                 b->factor, (long long)b->until_us, (long long)b->ramp_ms,
                 (long long)b->since_us, rule, reason);
    return n < 0 || (size_t)n >= len ? MS_ETOOBIG : n;
}

int ms_backoff_parse(const char *s, size_t len, struct ms_backoff *out)
{
    char buf[64 + 3 * 24 + MS_BACKOFF_RULE_MAX + MS_BACKOFF_REASON_MAX + 8], action[16];
    long long until, ramp, since;
    double factor;
    int off = 0;

    memset(out, 0, sizeof(*out));
    if (len >= sizeof(buf) || memchr(s, '\0', len))
        return MS_EINVAL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (sscanf(buf, "%15s %lf %lld %lld %lld %63s %n", action, &factor, &until, &ramp, &since,
               out->rule, &off) != 6 ||
        off == 0)
        return MS_EINVAL;
    if (strcmp(action, "suspend") == 0)
        out->suspend = 1;
    else if (strcmp(action, "throttle") != 0)
        return MS_EINVAL;
    if (!(factor >= MS_BACKOFF_FACTOR_MIN && factor <= 1) || until <= 0 || ramp < 0 ||
        since < 0 || strlen(buf + off) > MS_BACKOFF_REASON_MAX)
        return MS_EINVAL;
    out->factor = factor;
    out->until_us = until;
    out->ramp_ms = ramp;
    out->since_us = since;
    snprintf(out->reason, sizeof(out->reason), "%s", buf + off);
    return 0;
}

double ms_backoff_factor(const struct ms_backoff *b, int64_t now_us)
{
    int64_t ramp_us = b->ramp_ms * 1000;

    if (now_us < b->until_us)
        return b->suspend ? 0 : b->factor;
    if (ramp_us <= 0 || now_us >= b->until_us + ramp_us)
        return 1;
    /* Linear climb from `factor` to 1 over the ramp. */
    return b->factor + (1 - b->factor) * (double)(now_us - b->until_us) / (double)ramp_us;
}

int ms_backoff_suspended(const struct ms_backoff *b, int64_t now_us)
{
    return b->suspend && now_us < b->until_us;
}

int ms_backoff_over(const struct ms_backoff *b, int64_t now_us)
{
    return now_us >= b->until_us + b->ramp_ms * 1000;
}
