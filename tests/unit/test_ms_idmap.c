/*
 * test_ms_idmap.c - the id map (lib/core/ms_idmap.h): put, get, replace
 * and delete; ids that share a bucket; growth past many doublings with every
 * id still found; a delete that finds nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ms_idmap.h"

static void test_put_get_del(void **state)
{
    struct ms_idmap m;
    int a, b, c;

    (void)state;
    ms_idmap_init(&m);
    assert_null(ms_idmap_get(&m, 1));
    assert_null(ms_idmap_del(&m, 1));
    ms_idmap_put(&m, 1, &a);
    ms_idmap_put(&m, 2, &b);
    ms_idmap_put(&m, UINT64_MAX, &c);
    assert_int_equal(m.count, 3);
    assert_ptr_equal(ms_idmap_get(&m, 1), &a);
    assert_ptr_equal(ms_idmap_get(&m, 2), &b);
    assert_ptr_equal(ms_idmap_get(&m, UINT64_MAX), &c);
    assert_null(ms_idmap_get(&m, 3));
    /* Put on a present id replaces, without a second entry. */
    ms_idmap_put(&m, 1, &c);
    assert_int_equal(m.count, 3);
    assert_ptr_equal(ms_idmap_get(&m, 1), &c);
    /* Delete returns what was there, once. */
    assert_ptr_equal(ms_idmap_del(&m, 2), &b);
    assert_null(ms_idmap_del(&m, 2));
    assert_null(ms_idmap_get(&m, 2));
    assert_int_equal(m.count, 2);
    /* Id 0 is an id like any other. */
    ms_idmap_put(&m, 0, &a);
    assert_ptr_equal(ms_idmap_get(&m, 0), &a);
    ms_idmap_free(&m);
    assert_int_equal(m.count, 0);
}

/* Many ids, numbered the way the frontend numbers them (loop index << 48,
 * then counting): the map grows through several doublings, every id is
 * found with its own value, and deleting every other one leaves the rest. */
static void test_grow(void **state)
{
    enum { N = 5000 };
    static char vals[N];
    struct ms_idmap m;
    uint64_t base = (uint64_t)3 << 48;
    size_t i;

    (void)state;
    ms_idmap_init(&m);
    for (i = 0; i < N; i++)
        ms_idmap_put(&m, base + i, &vals[i]);
    assert_int_equal(m.count, N);
    assert_true(m.nbuckets >= N);
    for (i = 0; i < N; i++)
        assert_ptr_equal(ms_idmap_get(&m, base + i), &vals[i]);
    for (i = 0; i < N; i += 2)
        assert_ptr_equal(ms_idmap_del(&m, base + i), &vals[i]);
    assert_int_equal(m.count, N / 2);
    for (i = 0; i < N; i++) {
        if (i % 2 == 0)
            assert_null(ms_idmap_get(&m, base + i));
        else
            assert_ptr_equal(ms_idmap_get(&m, base + i), &vals[i]);
    }
    ms_idmap_free(&m);
}

/* Ids that differ only in high bits, or only in bits the first buckets
 * ignore, are still told apart (they may share a chain). */
static void test_similar_ids(void **state)
{
    struct ms_idmap m;
    static char vals[64];
    size_t i;

    (void)state;
    ms_idmap_init(&m);
    for (i = 0; i < 64; i++)
        ms_idmap_put(&m, (uint64_t)i << 58 | 7, &vals[i]);
    for (i = 0; i < 64; i++)
        assert_ptr_equal(ms_idmap_get(&m, (uint64_t)i << 58 | 7), &vals[i]);
    assert_null(ms_idmap_get(&m, 7 | (uint64_t)1 << 57));
    for (i = 0; i < 64; i++)
        assert_ptr_equal(ms_idmap_del(&m, (uint64_t)i << 58 | 7), &vals[i]);
    assert_int_equal(m.count, 0);
    ms_idmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_grow),
        cmocka_unit_test(test_similar_ids),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
