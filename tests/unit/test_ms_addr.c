/*
 * test_ms_addr.c - lib/mail/ms_addr.c: the domain of an address (the last
 * '@', RFC 5321 §4.1.2 quoted local parts, no '@', empty domain) and its
 * normalised copy.  Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_addr.h"
#include "ms_error.h"

struct dcase {
    const char *addr;
    const char *domain; /* NULL: no '@' */
    const char *copy;   /* ms_addr_domain_copy into 32 octets; NULL: MS_ETOOBIG */
};

static const struct dcase dcases[] = {
    {"user@example.org", "example.org", "example.org"},
    {"User@Example.ORG", "Example.ORG", "example.org"},
    {"user@example.org.", "example.org.", "example.org"},
    {"\"a@b\"@c.example", "c.example", "c.example"},
    {"\"a@b@\"@[192.0.2.1]", "[192.0.2.1]", "[192.0.2.1]"},
    {"a@b@c.test.", "c.test.", "c.test"},
    {"postmaster", NULL, ""},
    {"", NULL, ""},
    {"user@", "", ""},
    {"@", "", ""},
    {"x@.", ".", ""},
    {"a@very-long-domain-name.example.org", "very-long-domain-name.example.org", NULL},
};

static void test_domain(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
        const char *d = ms_addr_domain(dcases[i].addr);
        if (dcases[i].domain == NULL) {
            assert_null(d);
        } else {
            assert_non_null(d);
            assert_string_equal(d, dcases[i].domain);
            /* A pointer into the address, not a copy. */
            assert_true(d > dcases[i].addr && d <= dcases[i].addr + strlen(dcases[i].addr));
        }
    }
}

static void test_domain_copy(void **state)
{
    char out[32];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
        memset(out, 'x', sizeof(out));
        if (dcases[i].copy == NULL) {
            assert_int_equal(ms_addr_domain_copy(dcases[i].addr, out, sizeof(out)), MS_ETOOBIG);
            assert_string_equal(out, "");
        } else {
            assert_int_equal(ms_addr_domain_copy(dcases[i].addr, out, sizeof(out)), 0);
            assert_string_equal(out, dcases[i].copy);
        }
    }
    /* The NUL needs room too: 11 octets of domain do not fit 11. */
    assert_int_equal(ms_addr_domain_copy("a@example.org", out, 11), MS_ETOOBIG);
    assert_int_equal(ms_addr_domain_copy("a@example.org", out, 12), 0);
    assert_string_equal(out, "example.org");
    assert_int_equal(ms_addr_domain_copy("a@b", out, 0), MS_ETOOBIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_domain),
        cmocka_unit_test(test_domain_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
