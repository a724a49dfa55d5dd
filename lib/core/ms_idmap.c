/*
 * ms_idmap.c - id to pointer map with chained buckets (see ms_idmap.h).
 */
#include "ms_idmap.h"
#include "ms_mem.h"

#include <stdlib.h>

struct ms_idmap_node {
    uint64_t id;
    void *p;
    struct ms_idmap_node *next;
};

static size_t slot(const struct ms_idmap *m, uint64_t id)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)id & (m->nbuckets - 1);
}

void ms_idmap_init(struct ms_idmap *m)
{
    m->nbuckets = 64;
    m->buckets = ms_calloc(m->nbuckets, sizeof(*m->buckets));
    m->count = 0;
}

void ms_idmap_free(struct ms_idmap *m)
{
    struct ms_idmap_node *n, *next;
    size_t i;

    for (i = 0; i < m->nbuckets; i++)
        for (n = m->buckets[i]; n; n = next) {
            next = n->next;
            free(n);
        }
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = m->count = 0;
}

static void grow(struct ms_idmap *m)
{
    struct ms_idmap_node **old = m->buckets, *n, *next;
    size_t oldn = m->nbuckets, i, s;

    m->nbuckets *= 2;
    m->buckets = ms_calloc(m->nbuckets, sizeof(*m->buckets));
    for (i = 0; i < oldn; i++)
        for (n = old[i]; n; n = next) {
            next = n->next;
            s = slot(m, n->id);
            n->next = m->buckets[s];
            m->buckets[s] = n;
        }
    free(old);
}

void ms_idmap_put(struct ms_idmap *m, uint64_t id, void *p)
{
    struct ms_idmap_node *n;
    size_t s = slot(m, id);

    for (n = m->buckets[s]; n; n = n->next)
        if (n->id == id) {
            n->p = p;
            return;
        }
    n = ms_malloc(sizeof(*n));
    n->id = id;
    n->p = p;
    n->next = m->buckets[s];
    m->buckets[s] = n;
    if (++m->count > m->nbuckets)
        grow(m);
}

void *ms_idmap_get(const struct ms_idmap *m, uint64_t id)
{
    struct ms_idmap_node *n;

    for (n = m->buckets[slot(m, id)]; n; n = n->next)
        if (n->id == id)
            return n->p;
    return NULL;
}

void *ms_idmap_del(struct ms_idmap *m, uint64_t id)
{
    struct ms_idmap_node **pp, *n;
    void *p;

    for (pp = &m->buckets[slot(m, id)]; (n = *pp) != NULL; pp = &n->next)
        if (n->id == id) {
            *pp = n->next;
            p = n->p;
            free(n);
            m->count--;
            return p;
        }
    return NULL;
}
