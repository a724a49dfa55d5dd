/*
 * test_fe_access.c - the frontend's access rules (frontend/fe_access.c):
 * CIDR parsing and matching (IPv4, IPv6, IPv4-mapped)
 * and local parts that route mail on by themselves.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "ms_error.h"
#include "../../frontend/fe_access.h"

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        ss.ss_family = AF_INET6;
        inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr);
    } else {
        ss.ss_family = AF_INET;
        inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr);
    }
    return ss;
}

static void test_cidr(void **state)
{
    struct fe_cidr nets[3];
    struct sockaddr_storage ss;

    (void)state;
    assert_int_equal(fe_cidr_parse("10.0.0.0/8", &nets[0]), 0);
    assert_int_equal(fe_cidr_parse("2001:db8::/33", &nets[1]), 0);
    assert_int_equal(fe_cidr_parse("192.0.2.7", &nets[2]), 0);
    assert_int_equal(fe_cidr_parse("10.0.0.0/33", &nets[0]), MS_EINVAL);
    assert_int_equal(fe_cidr_parse("10.0.0.0/", &nets[0]), MS_EINVAL);
    assert_int_equal(fe_cidr_parse("example.com", &nets[0]), MS_EINVAL);
    assert_int_equal(fe_cidr_parse("10.0.0.0/8", &nets[0]), 0);
#define M(ip) (ss = addr(ip), fe_cidr_match(nets, 3, (struct sockaddr *)&ss))
    assert_true(M("10.1.2.3"));
    assert_false(M("11.0.0.1"));
    assert_true(M("::ffff:10.9.9.9"));
    assert_true(M("2001:db8:7fff::1"));
    assert_false(M("2001:db8:8000::1"));
    assert_true(M("192.0.2.7"));
    assert_false(M("192.0.2.8"));
    assert_false(fe_cidr_match(nets, 0, (struct sockaddr *)&ss));
}

/* The relay check's second half: an accepted domain whose local part would
 * send the mail on (%-hack, UUCP !-path, a quoted address) is relaying. */
static void test_addr_routing(void **state)
{
    static const struct {
        const char *addr;
        int routes;
    } cases[] = {
        {"u@mailstream.test", 0},
        {"first.last+tag@mailstream.test", 0},
        {"postmaster", 0}, /* no domain: nothing to route through */
        {"", 0},
        {"u%evil.example@mailstream.test", 1},
        {"evil.example!u@mailstream.test", 1},
        {"\"u@evil.example\"@mailstream.test", 1},
        {"u@evil.example@mailstream.test", 1},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (fe_addr_routing(cases[i].addr) != cases[i].routes)
            fail_msg("%s: want %d", cases[i].addr, cases[i].routes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_addr_routing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
