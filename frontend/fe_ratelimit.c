/*
 * fe_ratelimit.c - token buckets and the suppression list in Redis (see
 * fe_ratelimit.h).
 */
#include "fe_ratelimit.h"
#include "ms_idmap.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- pure part ---- */

int fe_rate_parse(const char *s, struct fe_rate *r)
{
    unsigned long n, secs;
    char *end;

    r->n = r->secs = 0;
    while (*s == ' ')
        s++;
    if (*s == '\0' || strcmp(s, "0") == 0 || strcasecmp(s, "off") == 0)
        return 0;
    if (!isdigit((unsigned char)*s))
        return MS_EINVAL;
    n = strtoul(s, &end, 10);
    if (*end != '/' || n == 0 || n > 1000000000UL || !isdigit((unsigned char)end[1]))
        return MS_EINVAL;
    secs = strtoul(end + 1, &end, 10);
    switch (*end) {
    case 's': end++; break;
    case 'm': secs *= 60, end++; break;
    case 'h': secs *= 3600, end++; break;
    case 'd': secs *= 86400, end++; break;
    default: break;
    }
    if (*end != '\0' || secs == 0 || secs > 30UL * 86400)
        return MS_EINVAL;
    r->n = (uint32_t)n;
    r->secs = (uint32_t)secs;
    return 0;
}

void fe_rl_check_init(struct fe_rl_check *c, enum fe_rl_mode mode)
{
    memset(c, 0, sizeof(*c));
    c->mode = mode;
}

static void make_key(char *out, const char *prefix, const char *kind, const char *value)
{
    char *p;

    snprintf(out, FE_RL_KEY_MAX, "%s%s%s", prefix, kind, value);
    for (p = out + strlen(prefix); *p; p++)
        *p = (char)tolower((unsigned char)*p);
}

void fe_rl_add(struct fe_rl_check *c, const char *prefix, const char *kind, const char *value,
               struct fe_rate rate, unsigned cost, const char *name)
{
    if (rate.n == 0 || c->n >= FE_RL_BUCKETS_MAX || c->refuse || c->member)
        return;
    make_key(c->keys[c->n], prefix, kind, value);
    c->rates[c->n] = rate;
    c->cost[c->n] = cost;
    c->names[c->n] = name;
    c->n++;
}

void fe_rl_refuse_key(struct fe_rl_check *c, const char *prefix, const char *addr)
{
    make_key(c->keys[c->n], prefix, "", addr);
    c->refuse = 1;
}

void fe_rl_member(struct fe_rl_check *c, const char *prefix, const char *domain,
                  const char *addr)
{
    char *p;

    make_key(c->keys[c->n + (c->refuse ? 1 : 0)], prefix, "", domain);
    snprintf(c->member_value, sizeof(c->member_value), "%s", addr);
    for (p = c->member_value; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    c->member = 1;
}

int fe_rl_check_needed(const struct fe_rl_check *c)
{
    return c->n > 0 || c->refuse || c->member;
}

int fe_rl_argv(const struct fe_rl_check *c, struct fe_rl_scratch *sc, const char **argv,
               size_t *argvlen)
{
    static const char *const modes[] = {"take", "peek", "charge"};
    size_t i, k = 0, nk = c->n + (c->refuse ? 1 : 0) + (c->member ? 1 : 0), m = 0;
    int argc = 0;

    snprintf(sc->num[m], sizeof(sc->num[m]), "%zu", nk);
    argv[argc++] = sc->num[m++];
    for (k = 0; k < nk; k++)
        argv[argc++] = c->keys[k];
    argv[argc++] = modes[c->mode];
    snprintf(sc->num[m], sizeof(sc->num[m]), "%zu", c->n);
    argv[argc++] = sc->num[m++];
    for (i = 0; i < c->n; i++) {
        snprintf(sc->num[m], sizeof(sc->num[m]), "%u", c->rates[i].n);
        argv[argc++] = sc->num[m++];
        snprintf(sc->num[m], sizeof(sc->num[m]), "%llu",
                 (unsigned long long)c->rates[i].secs * 1000);
        argv[argc++] = sc->num[m++];
        snprintf(sc->num[m], sizeof(sc->num[m]), "%u", c->cost[i]);
        argv[argc++] = sc->num[m++];
    }
    if (c->member)
        argv[argc++] = c->member_value;
    for (i = 0; i < (size_t)argc; i++)
        argvlen[i] = strlen(argv[i]);
    return argc;
}

int fe_rl_result(const struct ms_redis_reply *r, size_t nbuckets)
{
    if (r == NULL || r->type != MS_REDIS_INT)
        return FE_RL_FAILED;
    if (r->integer == -1)
        return FE_RL_REFUSED;
    if (r->integer == -2)
        return FE_RL_UNKNOWN;
    if (r->integer < 0 || r->integer > (long long)nbuckets)
        return FE_RL_FAILED;
    return (int)r->integer;
}

/* ---- Redis ---- */

_Static_assert(FE_RL_ARGV_MAX <= MS_REDIS_SCRIPT_ARGC_MAX, "a check fits one script call");

struct fe_rl_req {
    uint64_t owner; /* the caller's id */
    struct fe_rl_check c;
};

struct fe_rl {
    ms_redis *redis;
    fe_rl_cb cb;
    void *arg;
    struct ms_idmap reqs; /* our request id -> fe_rl_req */
    uint64_t next;
};

static void on_reply(void *arg, uint64_t id, const struct ms_redis_reply *r)
{
    struct fe_rl *rl = arg;
    struct fe_rl_req *q;
    int res;

    if ((q = ms_idmap_del(&rl->reqs, id)) == NULL)
        return;
    res = fe_rl_result(r, q->c.n);
    if (res == FE_RL_FAILED)
        ms_warn("event=ratelimit_redis_error reply_type=%d reply=\"%.*s\"", (int)r->type,
                (int)(r->str && r->len < 200 ? r->len : 0), r->str ? r->str : "");
    rl->cb(rl->arg, q->owner, res);
    free(q);
}

struct fe_rl *fe_rl_new(ms_redis *redis, fe_rl_cb cb, void *arg)
{
    struct fe_rl *rl = ms_calloc(1, sizeof(*rl));

    rl->redis = redis;
    rl->cb = cb;
    rl->arg = arg;
    ms_idmap_init(&rl->reqs);
    return rl;
}

int fe_rl_run(struct fe_rl *rl, const struct fe_rl_check *c, uint64_t id)
{
    struct fe_rl_req *q = ms_malloc(sizeof(*q));
    uint64_t rid = ++rl->next;
    const char *argv[FE_RL_ARGV_MAX];
    size_t argvlen[FE_RL_ARGV_MAX];
    struct fe_rl_scratch sc;
    int argc;

    q->owner = id;
    q->c = *c;
    argc = fe_rl_argv(&q->c, &sc, argv, argvlen);
    ms_idmap_put(&rl->reqs, rid, q);
    if (ms_redis_script(rl->redis, MS_SCRIPT_BUCKET, on_reply, rl, rid, argc, argv, argvlen) < 0) {
        ms_idmap_del(&rl->reqs, rid);
        free(q);
        return MS_EUNAVAIL;
    }
    return 0;
}

void fe_rl_free(struct fe_rl *rl)
{
    if (rl == NULL)
        return;
    /* XXX: requests still in flight leak their few KiB; only at exit. */
    ms_idmap_free(&rl->reqs);
    free(rl);
}
