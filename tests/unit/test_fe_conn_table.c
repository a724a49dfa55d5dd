/*
 * test_fe_conn_table.c - the process-wide connection table
 * (frontend/fe_conn_table.h): max_connections and max_connections_per_ip
 * hold for the table as a whole, also under concurrent callers, and every
 * release gives its count back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>

#include "../../frontend/fe_conn_table.h"

/* Both limits, the open count reported with a refusal, and releases. */
static void test_conn_table(void **state)
{
    struct fe_conn_table ct;
    uint64_t open;

    (void)state;
    fe_conn_table_init(&ct);
    assert_int_equal(fe_conn_admit(&ct, 11, 3, 2, &open), 0);
    assert_int_equal(fe_conn_admit(&ct, 11, 3, 2, &open), 0);
    assert_int_equal(fe_conn_admit(&ct, 11, 3, 2, &open), FE_LIMIT_CONN_PER_IP);
    assert_int_equal(open, 2);
    assert_int_equal(fe_conn_admit(&ct, 13, 3, 2, &open), 0);
    assert_int_equal(fe_conn_admit(&ct, 15, 3, 2, &open), FE_LIMIT_CONNECTIONS);
    fe_conn_release(&ct, 11);
    assert_int_equal(fe_conn_admit(&ct, 15, 3, 2, &open), 0);
    fe_conn_release(&ct, 11);
    fe_conn_release(&ct, 13);
    fe_conn_release(&ct, 15);
    assert_int_equal(ct.nconns, 0);
    assert_int_equal(ct.per_ip.count, 0);
    fe_conn_table_free(&ct);
}

#define CT_THREADS 4
#define CT_PER_IP 50

struct ct_arg {
    struct fe_conn_table *ct;
    int admitted;
};

static void *ct_worker(void *p)
{
    struct ct_arg *a = p;
    uint64_t open;
    int i;

    for (i = 0; i < 1000; i++)
        if (fe_conn_admit(a->ct, 7, 0, CT_PER_IP, &open) == 0)
            a->admitted++;
    return NULL;
}

static void test_conn_table_threads(void **state)
{
    struct fe_conn_table ct;
    struct ct_arg args[CT_THREADS];
    pthread_t tid[CT_THREADS];
    int i, total = 0;

    (void)state;
    fe_conn_table_init(&ct);
    for (i = 0; i < CT_THREADS; i++) {
        args[i] = (struct ct_arg){&ct, 0};
        assert_int_equal(pthread_create(&tid[i], NULL, ct_worker, &args[i]), 0);
    }
    for (i = 0; i < CT_THREADS; i++) {
        pthread_join(tid[i], NULL);
        total += args[i].admitted;
    }
    assert_int_equal(total, CT_PER_IP); /* not CT_THREADS * CT_PER_IP */
    for (i = 0; i < total; i++)
        fe_conn_release(&ct, 7);
    assert_int_equal(ct.nconns, 0);
    fe_conn_table_free(&ct);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conn_table),
        cmocka_unit_test(test_conn_table_threads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
