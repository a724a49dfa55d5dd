/*
 * ms_script.c - the Lua scripts run in Redis (see ms_script.h).
 */
#include "ms_script.h"
#include "ms_log.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/*
 * MS_SCRIPT_BUCKET (interface: ms_bucket.h).  A bucket left alone for a
 * whole period is full again, so it expires after one period.  "wait"
 * reports the time until the shortest-refilled bucket holds `cost`:
 * (cost - tokens) / (capacity / period) ms, rounded up.
 */
static const char bucket_script[] =
    "local n = tonumber(ARGV[2])\n"
    "local member = ARGV[3 * n + 3]\n"
    "local nref = #KEYS - n\n"
    "if member then nref = nref - 1 end\n"
    "if nref > 0 and redis.call('EXISTS', KEYS[n + 1]) == 1 then return -1 end\n"
    "if member and redis.call('SISMEMBER', KEYS[#KEYS], member) == 0 then return -2 end\n"
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

/*
 * MS_SCRIPT_LEASE (interface: ms_script.h).  A sorted set per destination
 * holds one member per connection, scored by when it lapses, so a worker
 * that dies leaves leases that expire by themselves.  Scores are the
 * workers' clocks (XXX: assumes clocks agree to well within the lifetime).
 */
static const char lease_script[] =
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) "
    "if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then "
    "  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4]) "
    "  redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "  return 1 "
    "end "
    "return 0";

static const struct {
    const char *name;
    const char *source;
} scripts[MS_SCRIPT__COUNT] = {
    [MS_SCRIPT_BUCKET] = {"bucket", bucket_script},
    [MS_SCRIPT_LEASE] = {"lease", lease_script},
};

static char sha_hex[MS_SCRIPT__COUNT][MS_SCRIPT_SHA_LEN + 1];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void sha_init(void)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen, i;
    int s;

    for (s = 0; s < MS_SCRIPT__COUNT; s++) {
        mdlen = 0;
        if (EVP_Digest(scripts[s].source, strlen(scripts[s].source), md, &mdlen, EVP_sha1(),
                       NULL) != 1 ||
            mdlen * 2 != MS_SCRIPT_SHA_LEN)
            ms_panic("event=script_digest_failed script=%s", scripts[s].name);
        for (i = 0; i < mdlen; i++)
            snprintf(sha_hex[s] + 2 * i, 3, "%02x", md[i]);
    }
}

const char *ms_script_source(enum ms_script s)
{
    return scripts[s].source;
}

const char *ms_script_name(enum ms_script s)
{
    return scripts[s].name;
}

const char *ms_script_sha(enum ms_script s)
{
    pthread_once(&sha_once, sha_init);
    return sha_hex[s];
}
