/*
 * test_wk_smtp_client.c - the pure decisions of worker/smtp_client.c: where
 * a REQUIRETLS message may go (RFC 8689 §4.2.1), as a table.  The dialogue
 * itself is tested against real servers (tests/integration).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../worker/smtp_client.h"

static void test_requiretls_table(void **state)
{
    static const struct {
        int local, lmtp, verified;
        unsigned ehlo;
        enum wk_requiretls want;
    } cases[] = {
        /* Verified TLS and REQUIRETLS offered: the one way over a network. */
        {0, 0, 1, WK_EHLO_REQUIRETLS | WK_EHLO_STARTTLS, WK_REQUIRETLS_OK},
        /* Verified TLS without the keyword: 5.7.30. */
        {0, 0, 1, WK_EHLO_STARTTLS | WK_EHLO_DSN, WK_REQUIRETLS_NOT_OFFERED},
        /* No verified TLS: 5.7.10, whatever the server says it can do. */
        {0, 0, 0, WK_EHLO_REQUIRETLS, WK_REQUIRETLS_NO_TLS},
        {0, 0, 0, 0, WK_REQUIRETLS_NO_TLS},
        {0, 1, 0, WK_EHLO_REQUIRETLS, WK_REQUIRETLS_NO_TLS},
        /* LMTP: final delivery, the keyword is not needed; TLS is. */
        {0, 1, 1, 0, WK_REQUIRETLS_OK},
        /* A UNIX-domain socket: local, nothing needed. */
        {1, 1, 0, 0, WK_REQUIRETLS_OK},
        {1, 0, 0, 0, WK_REQUIRETLS_OK},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (wk_requiretls_check(cases[i].local, cases[i].lmtp, cases[i].verified,
                                cases[i].ehlo) != cases[i].want)
            fail_msg("case %zu: want %d", i, (int)cases[i].want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requiretls_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
