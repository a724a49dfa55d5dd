/*
 * ms_bucket.c - token buckets in Redis (see ms_bucket.h).
 */
#include "ms_bucket.h"
#include "ms_error.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int ms_bucket_rate_parse(const char *s, struct ms_bucket_rate *r)
{
    double rate, period;
    char *end;

    r->capacity = 0;
    r->period_ms = 0;
    while (*s == ' ')
        s++;
    if (*s == '\0' || strcasecmp(s, "off") == 0)
        return 0;
    /* Digits and one dot only: no signs, exponents, "inf" or "nan". */
    if (!isdigit((unsigned char)*s) || strspn(s, "0123456789.") != strlen(s))
        return MS_EINVAL;
    rate = strtod(s, &end);
    if (*end != '\0' || !(rate >= 0) || rate > MS_BUCKET_RATE_MAX)
        return MS_EINVAL;
    if (rate == 0)
        return 0;
    period = ceil(1000.0 / rate);
    if (period > (double)MS_BUCKET_PERIOD_MAX_S * 1000)
        return MS_EINVAL;
    r->capacity = 1;
    r->period_ms = period < 1 ? 1 : (uint64_t)period;
    return 0;
}

int ms_bucket_wait_argv(const char *key, struct ms_bucket_rate rate, struct ms_bucket_scratch *sc,
                        const char **argv, size_t *argvlen)
{
    int argc = 0, i;

    argv[argc++] = "1";
    argv[argc++] = key;
    argv[argc++] = "wait";
    argv[argc++] = "1";
    snprintf(sc->num[0], sizeof(sc->num[0]), "%u", rate.capacity);
    argv[argc++] = sc->num[0];
    snprintf(sc->num[1], sizeof(sc->num[1]), "%llu", (unsigned long long)rate.period_ms);
    argv[argc++] = sc->num[1];
    snprintf(sc->num[2], sizeof(sc->num[2]), "1");
    argv[argc++] = sc->num[2];
    for (i = 0; i < argc; i++)
        argvlen[i] = strlen(argv[i]);
    return argc;
}

int64_t ms_bucket_wait_result(const struct ms_redis_reply *r)
{
    if (r == NULL || r->type != MS_REDIS_INT || r->integer < 0)
        return MS_EPROTO;
    return (int64_t)r->integer;
}
