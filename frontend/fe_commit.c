/*
 * fe_commit.c - group commit bookkeeping (see fe_commit.h).
 */
#include "fe_commit.h"

#include <string.h>

#define HOLD_MAX_NS ((uint64_t)FE_COMMIT_HOLD_MAX_MS * 1000000)

void fe_commit_init(struct fe_commit *c, uint64_t window_ns, uint64_t linger_ns)
{
    memset(c, 0, sizeof(*c));
    ms_list_init(&c->members);
    c->window_ns = window_ns;
    c->linger_ns = linger_ns;
}

static void unlink_member(struct fe_commit *c, struct fe_commit_member *m)
{
    ms_list_remove(&m->node);
    c->nmembers--;
}

void fe_commit_touch(struct fe_commit *c, struct fe_commit_member *m, uint64_t now)
{
    if (ms_list_linked(&m->node))
        unlink_member(c, m);
    /* Appending keeps the list ordered by last sign of life. */
    m->last_ns = now;
    ms_list_insert_tail(&c->members, &m->node);
    c->nmembers++;
}

void fe_commit_leave(struct fe_commit *c, struct fe_commit_member *m)
{
    if (ms_list_linked(&m->node))
        unlink_member(c, m);
}

int fe_commit_is_member(const struct fe_commit_member *m)
{
    return ms_list_linked(&m->node);
}

int fe_commit_full(const struct fe_commit *c)
{
    return c->nrec >= FE_COMMIT_MAX_RECORDS || c->bytes >= FE_COMMIT_MAX_BYTES;
}

int fe_commit_can_hold(const struct fe_commit *c, size_t keylen)
{
    return keylen <= FE_COMMIT_KEY_MAX && !fe_commit_full(c);
}

void fe_commit_hold(struct fe_commit *c, uint64_t id, const char *key, size_t keylen,
                    uint8_t *buf, size_t off, size_t len, uint64_t now)
{
    struct fe_commit_record *r = &c->rec[c->nrec++];

    if (c->nrec == 1)
        c->first_ns = now;
    r->id = id;
    memcpy(r->key, key, keylen);
    r->key[keylen] = '\0';
    r->keylen = keylen;
    r->buf = buf;
    r->off = off;
    r->len = len;
    c->bytes += len;
}

void fe_commit_sent(struct fe_commit *c, size_t n)
{
    c->inflight += n;
}

void fe_commit_reported(struct fe_commit *c)
{
    if (c->inflight > 0)
        c->inflight--;
}

int fe_commit_due(struct fe_commit *c, uint64_t now)
{
    struct ms_list *n;
    uint64_t waited;

    /* Oldest first: the first member still within its window ends it. */
    while ((n = ms_list_first(&c->members)) != NULL) {
        struct fe_commit_member *m = ms_list_entry(n, struct fe_commit_member, node);

        if (now - m->last_ns <= c->window_ns)
            break;
        unlink_member(c, m);
    }
    if (c->nrec == 0)
        return -1;
    if (fe_commit_full(c))
        return FE_COMMIT_FULL;
    waited = now > c->first_ns ? now - c->first_ns : 0;
    if (waited >= HOLD_MAX_NS)
        return FE_COMMIT_LINGER;
    if (c->inflight > 0)
        return -1;
    if (c->nmembers == 0)
        return FE_COMMIT_READY;
    return waited >= c->linger_ns ? FE_COMMIT_LINGER : -1;
}

uint64_t fe_commit_deadline(const struct fe_commit *c, uint64_t now)
{
    if (c->nrec == 0)
        return 0;
    if (now < c->first_ns + c->linger_ns)
        return c->first_ns + c->linger_ns;
    return c->first_ns + HOLD_MAX_NS;
}

size_t fe_commit_take(struct fe_commit *c, struct fe_commit_record *out)
{
    size_t n = c->nrec;

    memcpy(out, c->rec, n * sizeof(*out));
    c->nrec = 0;
    c->bytes = 0;
    return n;
}
