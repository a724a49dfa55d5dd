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

/*
 * The delivery lease of one message (duplicate fencing; interface:
 * ms_script.h, reasoning: docs/reliability.md "Nothing twice").  The hash
 * MS_KEY_FENCE holds who (the holder's token, unique per attempt: no two
 * holders ever share one, so equality is the fence), exp (when it lapses,
 * on Redis's clock: TIME, so the workers' clocks do not matter), gen (the
 * fencing generation: incremented on every taking) and data (the holder's
 * destinations past the DATA check whose outcome is not recorded yet).
 * Only these scripts touch it, and Redis runs each atomically, so between
 * a check and the next taking nothing can interleave.
 *
 * MS_SCRIPT_FENCE_TAKE: free, lapsed or ours -> take it and read KEYS[2..]
 * (the delivered markers, suppression entries and control record the
 * attempt needs, in the same round trip); held by another -> {0, ms left}.
 */
static const char fence_take_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local h = redis.call('HMGET', KEYS[1], 'who', 'exp', 'data', 'gen')\n"
    "local prior = 0\n"
    "if h[1] and h[1] ~= ARGV[1] then\n"
    "  local exp = tonumber(h[2]) or 0\n"
    "  if exp > now then return {0, exp - now} end\n"
    "  prior = tonumber(h[3]) or 0\n"
    "end\n"
    "local lease = tonumber(ARGV[2])\n"
    "local gen = (tonumber(h[4]) or 0) + 1\n"
    "redis.call('HSET', KEYS[1], 'who', ARGV[1], 'exp', now + lease, 'data', 0, 'gen', gen)\n"
    "redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))\n"
    "local r = {gen, prior}\n"
    "if #KEYS > 1 then\n"
    "  local v = redis.call('MGET', unpack(KEYS, 2))\n"
    "  for i = 1, #KEYS - 1 do r[i + 2] = v[i] end\n"
    "end\n"
    "return r\n";

/* MS_SCRIPT_FENCE_CHECK: the last moment before DATA (ARGV[4] "1"), or a
 * renewal ("0").  Still ours (the token: nobody took it since, whether or
 * not it lapsed meanwhile, since a taking changes `who`) -> lapse no
 * earlier than ARGV[2] ms from now, count one more destination in DATA
 * (check only), answer the ms granted; else 0. */
static const char fence_check_script[] =
    "local h = redis.call('HMGET', KEYS[1], 'who', 'exp', 'data')\n"
    "if h[1] ~= ARGV[1] then return 0 end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local exp = tonumber(h[2]) or 0\n"
    "local want = now + tonumber(ARGV[2])\n"
    "if want > exp then exp = want end\n"
    "if ARGV[4] == '1' then\n"
    "  redis.call('HSET', KEYS[1], 'exp', exp, 'data', (tonumber(h[3]) or 0) + 1)\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], 'exp', exp)\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], exp - now + tonumber(ARGV[3]))\n"
    "return exp - now\n";

/* MS_SCRIPT_FENCE_DONE: an outcome is recorded.  The markers KEYS[2..]
 * are written whoever holds the lease (they are facts: the destination
 * said 250); then, if the lease is still ours, one destination fewer is in
 * DATA (ARGV[5] "1") and the lease is given back (ARGV[4] "1"). */
static const char fence_done_script[] =
    "for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[2], 'EX', ARGV[3]) end\n"
    "if redis.call('HMGET', KEYS[1], 'who')[1] ~= ARGV[1] then return 0 end\n"
    "if ARGV[4] == '1' then redis.call('DEL', KEYS[1]) return 1 end\n"
    "if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 'data', -1) end\n"
    "return 1\n";

static const struct {
    const char *name;
    const char *source;
} scripts[MS_SCRIPT__COUNT] = {
    [MS_SCRIPT_BUCKET] = {"bucket", bucket_script},
    [MS_SCRIPT_LEASE] = {"lease", lease_script},
    [MS_SCRIPT_FENCE_TAKE] = {"fence_take", fence_take_script},
    [MS_SCRIPT_FENCE_CHECK] = {"fence_check", fence_check_script},
    [MS_SCRIPT_FENCE_DONE] = {"fence_done", fence_done_script},
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
