/*
 * ms_queueid.h - queue ids: unique across the cluster, sortable by time.
 *
 * MS_QUEUEID_LEN characters of Crockford base32 (0-9, A-Z without I, L, O,
 * U): 10 characters of milliseconds since the epoch, then 11 characters (55
 * bits) of randomness mixed with a process counter, so ids from many nodes
 * never collide in practice.  The id is the Kafka key, in
 * the 250 reply, the Received header and every log line.  Thread-safe.
 */
#ifndef MS_QUEUEID_H
#define MS_QUEUEID_H

#include <stddef.h>

#define MS_QUEUEID_LEN 21

/* Write a new id (MS_QUEUEID_LEN chars plus NUL) into out. */
void ms_queueid_new(char out[MS_QUEUEID_LEN + 1]);

#endif
