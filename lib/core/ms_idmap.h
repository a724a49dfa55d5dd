/*
 * ms_idmap.h - a map from 64-bit ids to pointers.
 *
 * Its first use is finding an owner again after an asynchronous boundary
 * (STYLE.md 7): a Kafka delivery report, a Redis reply or a finished
 * crypt(3) job carries an id, and a missing id means the owner is gone.  The
 * map does not make ids unique; callers that need a stale answer never to
 * find a new owner number their ids and never reuse one.  It serves as a
 * plain id -> value table too (the frontend's connections per address keep a
 * count in the pointer).
 *
 * Ownership: the map owns its nodes, never the pointers it stores; freeing
 * the map leaves them alone.  Chained buckets, doubled when the count passes
 * the number of buckets, so every operation is O(1) on average.
 *
 * Threads: none of its own and no lock: one thread at a time (callers that
 * share a map hold their own lock around it).  Errors: none; allocation
 * failure aborts (ms_mem.h).
 */
#ifndef MS_IDMAP_H
#define MS_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct ms_idmap_node;

struct ms_idmap {
    struct ms_idmap_node **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;    /* ids in the map (read-only) */
};

void ms_idmap_init(struct ms_idmap *m);
void ms_idmap_free(struct ms_idmap *m);
/* Insert or replace. */
void ms_idmap_put(struct ms_idmap *m, uint64_t id, void *p);
/* NULL when absent (a NULL stored is not told apart from absence). */
void *ms_idmap_get(const struct ms_idmap *m, uint64_t id);
/* Remove and return the pointer (NULL when absent). */
void *ms_idmap_del(struct ms_idmap *m, uint64_t id);

#endif
