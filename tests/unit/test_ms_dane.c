/*
 * test_ms_dane.c - lib/mail/ms_dane.c: TLSA rdata (RFC 6698 §2.1) read
 * from wire octets, and which records RFC 7672 §3.1.3 lets SMTP use.
 * Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_dane.h"
#include "ms_error.h"

struct ucase {
    uint8_t usage, selector, mtype;
    size_t len;
    int usable;
};

static const struct ucase ucases[] = {
    {3, 1, 1, 32, 1}, /* the common "3 1 1" */
    {3, 0, 1, 32, 1},
    {2, 0, 1, 32, 1},
    {2, 1, 2, 64, 1},
    {3, 1, 0, 300, 1},
    {0, 0, 1, 32, 0}, /* PKIX-TA: not for SMTP (RFC 7672 §3.1.3) */
    {1, 1, 1, 32, 0}, /* PKIX-EE */
    {4, 1, 1, 32, 0}, /* unassigned usage */
    {3, 2, 1, 32, 0}, /* unassigned selector */
    {3, 1, 3, 32, 0}, /* unassigned matching type */
    {3, 1, 1, 31, 0}, /* a SHA2-256 digest that is not 32 octets */
    {3, 1, 2, 32, 0},
};

static void test_usable(void **state)
{
    unsigned char rdata[3 + 300];
    struct ms_dns_rr rr;
    size_t i;

    (void)state;
    memset(rdata, 0xab, sizeof(rdata));
    for (i = 0; i < sizeof(ucases) / sizeof(ucases[0]); i++) {
        const struct ucase *c = &ucases[i];
        rdata[0] = c->usage;
        rdata[1] = c->selector;
        rdata[2] = c->mtype;
        assert_int_equal(ms_dane_tlsa_parse(rdata, 3 + c->len, &rr), 0);
        assert_int_equal(rr.type, MS_DNS_TLSA);
        assert_int_equal(rr.u.tlsa.usage, c->usage);
        assert_int_equal(rr.u.tlsa.selector, c->selector);
        assert_int_equal(rr.u.tlsa.mtype, c->mtype);
        assert_ptr_equal(rr.u.tlsa.data, rdata + 3);
        assert_int_equal(rr.u.tlsa.len, c->len);
        if (ms_dane_tlsa_usable(&rr) != c->usable)
            fail_msg("%u %u %u (%zu octets): usable %d", c->usage, c->selector, c->mtype,
                     c->len, !c->usable);
    }
}

static void test_bad(void **state)
{
    static unsigned char big[3 + MS_TLSA_DATA_MAX + 1];
    unsigned char three[] = {3, 1, 1};
    struct ms_dns_rr rr = {.type = MS_DNS_A};

    (void)state;
    assert_int_equal(ms_dane_tlsa_parse(three, 3, &rr), MS_EINVAL);
    assert_int_equal(ms_dane_tlsa_parse(three, 0, &rr), MS_EINVAL);
    assert_int_equal(ms_dane_tlsa_parse(big, sizeof(big), &rr), MS_EINVAL);
    assert_int_equal(ms_dane_tlsa_parse(big, sizeof(big) - 1, &rr), 0);
    rr.type = MS_DNS_A; /* not a TLSA record at all */
    assert_int_equal(ms_dane_tlsa_usable(&rr), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usable),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
