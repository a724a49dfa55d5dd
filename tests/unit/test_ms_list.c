/*
 * test_ms_list.c - the intrusive list (lib/core/ms_list.h): order of head
 * and tail insertion, removal anywhere, removal of a node that is on no
 * list, walking with first/next and both foreach forms, and one element on
 * two lists at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ms_list.h"

/* The node is not the first member, so ms_list_entry() has to subtract. */
struct item {
    int value;
    struct ms_list node;
    struct ms_list other; /* a second list */
};

#define ITEM(n) ms_list_entry((n), struct item, node)

/* The list's values in order, as a string ("123"), walked forwards with
 * first/next and checked backwards through prev. */
static void expect_values(const struct ms_list *head, const char *want)
{
    char got[32], back[32];
    const struct ms_list *n;
    size_t len = 0, i;

    for (n = ms_list_first(head); n != NULL; n = ms_list_next(head, n)) {
        assert_true(len < sizeof(got) - 1);
        got[len++] = (char)('0' + ITEM(n)->value);
    }
    got[len] = '\0';
    assert_string_equal(got, want);
    i = len;
    back[i] = '\0';
    for (n = head->prev; n != head; n = n->prev) {
        assert_true(i > 0);
        back[--i] = (char)('0' + ITEM(n)->value);
    }
    assert_int_equal(i, 0);
    assert_string_equal(back, want);
    assert_int_equal(ms_list_empty(head), len == 0);
}

static void test_empty(void **state)
{
    struct ms_list h;
    struct ms_list s = MS_LIST_HEAD_INIT(s);

    (void)state;
    ms_list_init(&h);
    assert_true(ms_list_empty(&h));
    assert_null(ms_list_first(&h));
    assert_true(ms_list_empty(&s));
    assert_null(ms_list_first(&s));
    expect_values(&h, "");
}

static void test_insert_order(void **state)
{
    struct item it[4] = {{.value = 1}, {.value = 2}, {.value = 3}, {.value = 4}};
    struct ms_list h;

    (void)state;
    ms_list_init(&h);
    ms_list_insert_tail(&h, &it[1].node);
    ms_list_insert_tail(&h, &it[2].node);
    ms_list_insert_head(&h, &it[0].node);
    ms_list_insert_tail(&h, &it[3].node);
    expect_values(&h, "1234");
    assert_ptr_equal(ITEM(ms_list_first(&h)), &it[0]);
    assert_null(ms_list_next(&h, &it[3].node));
}

static void test_remove(void **state)
{
    struct item it[4] = {{.value = 1}, {.value = 2}, {.value = 3}, {.value = 4}};
    struct item off = {.value = 9};
    struct ms_list h;
    int i;

    (void)state;
    ms_list_init(&h);
    for (i = 0; i < 4; i++) {
        assert_false(ms_list_linked(&it[i].node)); /* zeroed: on no list */
        ms_list_insert_tail(&h, &it[i].node);
        assert_true(ms_list_linked(&it[i].node));
    }
    ms_list_remove(&it[1].node); /* middle */
    expect_values(&h, "134");
    assert_false(ms_list_linked(&it[1].node));
    ms_list_remove(&it[0].node); /* first */
    expect_values(&h, "34");
    ms_list_remove(&it[3].node); /* last */
    expect_values(&h, "3");
    /* Removing a node that is on no list, twice or never inserted, does
     * nothing to the list. */
    ms_list_remove(&it[1].node);
    ms_list_remove(&off.node);
    expect_values(&h, "3");
    ms_list_remove(&it[2].node);
    expect_values(&h, "");
    /* A removed node can go on again. */
    ms_list_insert_head(&h, &it[1].node);
    ms_list_insert_head(&h, &it[2].node);
    expect_values(&h, "32");
}

/* Move-to-tail, as the group commit's members do on every sign of life. */
static void test_move_to_tail(void **state)
{
    struct item it[3] = {{.value = 1}, {.value = 2}, {.value = 3}};
    struct ms_list h;
    int i;

    (void)state;
    ms_list_init(&h);
    for (i = 0; i < 3; i++)
        ms_list_insert_tail(&h, &it[i].node);
    ms_list_remove(&it[0].node);
    ms_list_insert_tail(&h, &it[0].node);
    expect_values(&h, "231");
    ms_list_remove(&it[0].node); /* already last */
    ms_list_insert_tail(&h, &it[0].node);
    expect_values(&h, "231");
}

static void test_foreach(void **state)
{
    struct item it[5];
    struct ms_list h, *pos, *tmp;
    char seen[8];
    size_t n = 0;
    int i;

    (void)state;
    memset(it, 0, sizeof(it));
    ms_list_init(&h);
    ms_list_foreach(pos, &h)
        fail_msg("an empty list has no node");
    for (i = 0; i < 5; i++) {
        it[i].value = i + 1;
        ms_list_insert_tail(&h, &it[i].node);
    }
    ms_list_foreach(pos, &h)
        seen[n++] = (char)('0' + ITEM(pos)->value);
    seen[n] = '\0';
    assert_string_equal(seen, "12345");
    /* The safe form may take the current node off: drop the even ones. */
    n = 0;
    ms_list_foreach_safe(pos, tmp, &h) {
        seen[n++] = (char)('0' + ITEM(pos)->value);
        if (ITEM(pos)->value % 2 == 0)
            ms_list_remove(pos);
    }
    seen[n] = '\0';
    assert_string_equal(seen, "12345"); /* every node visited once */
    expect_values(&h, "135");
    /* ... or every node, emptying the list. */
    ms_list_foreach_safe(pos, tmp, &h)
        ms_list_remove(pos);
    expect_values(&h, "");
}

/* Elements freed while walking: the safe form never reads a freed node. */
static void test_foreach_safe_free(void **state)
{
    struct ms_list h, *pos, *tmp;
    struct item *x;
    int i, n = 0;

    (void)state;
    ms_list_init(&h);
    for (i = 0; i < 8; i++) {
        x = calloc(1, sizeof(*x));
        assert_non_null(x);
        x->value = i;
        ms_list_insert_head(&h, &x->node);
    }
    ms_list_foreach_safe(pos, tmp, &h) {
        x = ITEM(pos);
        ms_list_remove(pos);
        free(x);
        n++;
    }
    assert_int_equal(n, 8);
    assert_true(ms_list_empty(&h));
}

/* One element on two lists through two nodes: each list keeps its own
 * order, and leaving one leaves the other alone. */
static void test_two_lists(void **state)
{
    struct item it[3] = {{.value = 1}, {.value = 2}, {.value = 3}};
    struct ms_list a, b, *pos;
    char seen[8];
    size_t n = 0;
    int i;

    (void)state;
    ms_list_init(&a);
    ms_list_init(&b);
    for (i = 0; i < 3; i++) {
        ms_list_insert_tail(&a, &it[i].node);
        ms_list_insert_head(&b, &it[i].other);
    }
    ms_list_remove(&it[1].node);
    expect_values(&a, "13");
    ms_list_foreach(pos, &b)
        seen[n++] = (char)('0' + ms_list_entry(pos, struct item, other)->value);
    seen[n] = '\0';
    assert_string_equal(seen, "321");
    assert_true(ms_list_linked(&it[1].other));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),     cmocka_unit_test(test_insert_order),
        cmocka_unit_test(test_remove),    cmocka_unit_test(test_move_to_tail),
        cmocka_unit_test(test_foreach),   cmocka_unit_test(test_foreach_safe_free),
        cmocka_unit_test(test_two_lists),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
