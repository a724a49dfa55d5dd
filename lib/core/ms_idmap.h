/*
 * ms_idmap.h - a map from 64-bit ids to pointers, for finding a session
 * again after an asynchronous boundary (STYLE.md 7): a Kafka delivery report
 * or a finished crypt(3) job carries an id; a missing id means the session is
 * gone.  Ids are never reused, so a stale report can never find a new owner.
 * One loop thread; the map never owns the pointers.
 */
#ifndef MS_IDMAP_H
#define MS_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct ms_idmap_node;

struct ms_idmap {
    struct ms_idmap_node **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

void ms_idmap_init(struct ms_idmap *m);
void ms_idmap_free(struct ms_idmap *m);
/* Insert or replace. */
void ms_idmap_put(struct ms_idmap *m, uint64_t id, void *p);
/* NULL when absent. */
void *ms_idmap_get(const struct ms_idmap *m, uint64_t id);
/* Remove and return the pointer (NULL when absent). */
void *ms_idmap_del(struct ms_idmap *m, uint64_t id);

#endif
