/*
 * fe_conn_table.c - open connections per process and per client address
 * (see fe_conn_table.h).
 */
#include "fe_conn_table.h"

void fe_conn_table_init(struct fe_conn_table *ct)
{
    pthread_mutex_init(&ct->lock, NULL);
    ct->nconns = 0;
    ms_idmap_init(&ct->per_ip);
}

void fe_conn_table_free(struct fe_conn_table *ct)
{
    ms_idmap_free(&ct->per_ip);
    pthread_mutex_destroy(&ct->lock);
}

int fe_conn_admit(struct fe_conn_table *ct, uint64_t key, uint64_t max_total, uint64_t max_per_ip,
                  uint64_t *open)
{
    uintptr_t n;
    int r = 0;

    pthread_mutex_lock(&ct->lock);
    n = (uintptr_t)ms_idmap_get(&ct->per_ip, key);
    *open = n;
    if (max_total && ct->nconns >= max_total)
        r = FE_LIMIT_CONNECTIONS;
    else if (max_per_ip && n >= max_per_ip)
        r = FE_LIMIT_CONN_PER_IP;
    else {
        ms_idmap_put(&ct->per_ip, key, (void *)(n + 1));
        ct->nconns++;
    }
    pthread_mutex_unlock(&ct->lock);
    return r;
}

void fe_conn_release(struct fe_conn_table *ct, uint64_t key)
{
    uintptr_t n;

    pthread_mutex_lock(&ct->lock);
    n = (uintptr_t)ms_idmap_get(&ct->per_ip, key);
    if (n <= 1)
        ms_idmap_del(&ct->per_ip, key);
    else
        ms_idmap_put(&ct->per_ip, key, (void *)(n - 1));
    ct->nconns--;
    pthread_mutex_unlock(&ct->lock);
}
