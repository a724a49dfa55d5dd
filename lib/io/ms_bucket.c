/*
 * ms_bucket.c - token buckets in Redis (see ms_bucket.h).
 */
#include "ms_bucket.h"
#include "ms_error.h"

#include <ctype.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*
 * A bucket left alone for a whole period is full again, so it expires after
 * one period.  "wait" reports the time until the shortest-refilled bucket
 * holds `cost`: (cost - tokens) / (capacity / period) ms, rounded up.
 */
const char MS_BUCKET_SCRIPT[] =
    "local n = tonumber(ARGV[2])\n"
    "if #KEYS > n and redis.call('EXISTS', KEYS[n + 1]) == 1 then return -1 end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local mode = ARGV[1]\n"
    "local tok = {}\n"
    "local wait = 0\n"
    "for i = 1, n do\n"
    "  local cap = tonumber(ARGV[3 * i])\n"
    "  local per = tonumber(ARGV[3 * i + 1])\n"
    "  local cost = tonumber(ARGV[3 * i + 2])\n"
    "  local h = redis.call('HMGET', KEYS[i], 'tok', 'ts')\n"
    "  local v, ts = tonumber(h[1]), tonumber(h[2])\n"
    "  if v == nil or ts == nil then v = cap; ts = now end\n"
    "  if now > ts then v = math.min(cap, v + (now - ts) * cap / per) end\n"
    "  tok[i] = v\n"
    "  if mode == 'take' and v < cost then return i end\n"
    "  if mode == 'peek' and v < 1 then return i end\n"
    "  if mode == 'wait' and v < cost then\n"
    "    local w = math.ceil((cost - v) * per / cap)\n"
    "    if w < 1 then w = 1 end\n"
    "    if w > wait then wait = w end\n"
    "  end\n"
    "end\n"
    "if mode == 'peek' then return 0 end\n"
    "if wait > 0 then return wait end\n"
    "for i = 1, n do\n"
    "  local per = tonumber(ARGV[3 * i + 1])\n"
    "  local v = tok[i] - tonumber(ARGV[3 * i + 2])\n"
    "  if v < 0 then v = 0 end\n"
    "  redis.call('HSET', KEYS[i], 'tok', tostring(v), 'ts', tostring(now))\n"
    "  redis.call('PEXPIRE', KEYS[i], per)\n"
    "end\n"
    "return 0\n";

static char sha_hex[41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void sha_init(void)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;

    if (EVP_Digest(MS_BUCKET_SCRIPT, sizeof(MS_BUCKET_SCRIPT) - 1, md, &mdlen, EVP_sha1(), NULL) !=
            1 ||
        mdlen != 20) {
        sha_hex[0] = '\0'; /* callers then send EVAL */
        return;
    }
    for (i = 0; i < mdlen; i++)
        snprintf(sha_hex + 2 * i, 3, "%02x", md[i]);
}

const char *ms_bucket_sha(void)
{
    pthread_once(&sha_once, sha_init);
    return sha_hex[0] ? sha_hex : NULL;
}

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

int ms_bucket_wait_argv(const char *key, struct ms_bucket_rate rate, const char *sha,
                        struct ms_bucket_scratch *sc, const char **argv, size_t *argvlen)
{
    int argc = 0, i;

    argv[argc++] = sha ? "EVALSHA" : "EVAL";
    argv[argc++] = sha ? sha : MS_BUCKET_SCRIPT;
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
    if (r == NULL)
        return MS_EPROTO;
    if (r->type == MS_REDIS_ERR && r->str && r->len >= 8 && strncmp(r->str, "NOSCRIPT", 8) == 0)
        return MS_ENOTFOUND;
    if (r->type != MS_REDIS_INT || r->integer < 0)
        return MS_EPROTO;
    return (int64_t)r->integer;
}
