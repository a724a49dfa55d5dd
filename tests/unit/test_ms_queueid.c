/* test_ms_queueid.c - lib/mail/ms_queueid.c: length, alphabet (Crockford
 * base32), uniqueness and time order of queue ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_queueid.h"

static void test_queueid(void **state)
{
    char a[MS_QUEUEID_LEN + 1], b[MS_QUEUEID_LEN + 1];
    size_t i;

    ms_queueid_new(a);
    ms_queueid_new(b);
    assert_int_equal(strlen(a), MS_QUEUEID_LEN);
    assert_string_not_equal(a, b);
    for (i = 0; i < MS_QUEUEID_LEN; i++)
        assert_non_null(strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", a[i]));
    /* Time-ordered: the prefix never decreases. */
    assert_true(memcmp(a, b, 10) <= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queueid),
    };
    return cmocka_run_group_tests_name("queueid", tests, NULL, NULL);
}
