/*
 * fe_conn_table.h - open connections per process and per client address, so
 * that [smtp] max_connections and max_connections_per_ip hold for the whole
 * process, not per loop: every loop's server points at one table (main.c;
 * a server alone, as in tests, uses a table of its own).
 *
 * A client address is counted by a 64-bit key (its hash, chosen by the
 * caller, never 0).  A session is counted once when it is admitted and
 * released once when it is freed.
 *
 * Threads: any thread.  A short mutex guards a counter and a small hash
 * table, taken once per admission and once per release.  Errors: none;
 * refusals are answers, not errors.
 */
#ifndef FE_CONN_TABLE_H
#define FE_CONN_TABLE_H

#include <pthread.h>
#include <stdint.h>

#include "fe_settings.h"
#include "ms_idmap.h"

struct fe_conn_table {
    pthread_mutex_t lock;
    uint64_t nconns;        /* sessions admitted and open */
    struct ms_idmap per_ip; /* hash of a client address -> open connections */
};

void fe_conn_table_init(struct fe_conn_table *ct);
void fe_conn_table_free(struct fe_conn_table *ct);
/* Count one more connection from address hash `key` unless that would pass
 * max_total or max_per_ip (0: no limit).  Returns 0, or FE_LIMIT_CONNECTIONS
 * / FE_LIMIT_CONN_PER_IP (fe_settings.h) with the address's open count in
 * *open. */
int fe_conn_admit(struct fe_conn_table *ct, uint64_t key, uint64_t max_total, uint64_t max_per_ip,
                  uint64_t *open);
/* The connection counted by fe_conn_admit(key) is gone. */
void fe_conn_release(struct fe_conn_table *ct, uint64_t key);

#endif
