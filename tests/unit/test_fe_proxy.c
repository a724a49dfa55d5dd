/*
 * test_fe_proxy.c - the PROXY protocol parser (frontend/fe_proxy.h): v1
 * lines, v2 binary headers with TLVs and CRC32C, partial input, and the
 * malformed headers that must close the connection.
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
#include "../../frontend/fe_proxy.h"

static const char sig[] = "\r\n\r\n\0\r\nQUIT\n";

static void src_is(const struct fe_proxy *p, const char *ip, int port)
{
    char buf[64];

    if (p->src.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&p->src;
        inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
        assert_int_equal(ntohs(s->sin_port), port);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&p->src;
        assert_int_equal(p->src.ss_family, AF_INET6);
        inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
        assert_int_equal(ntohs(s->sin6_port), port);
    }
    assert_string_equal(buf, ip);
}

static void test_v1(void **state)
{
    struct fe_proxy p;
    const char *ok4 = "PROXY TCP4 198.51.100.22 203.0.113.7 35646 25\r\nEHLO x\r\n";
    const char *ok6 = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    size_t i;
    int r;

    r = fe_proxy_parse(ok4, strlen(ok4), &p);
    assert_int_equal(r, (int)strlen(ok4) - 8); /* the EHLO is not consumed */
    assert_int_equal(p.version, 1);
    assert_false(p.local);
    src_is(&p, "198.51.100.22", 35646);
    assert_int_equal(fe_proxy_parse(ok6, strlen(ok6), &p), (int)strlen(ok6));
    src_is(&p, "2001:db8::1", 1);
    assert_int_equal(fe_proxy_parse("PROXY UNKNOWN\r\n", 15, &p), 15);
    assert_true(p.local);
    assert_int_equal(fe_proxy_parse("PROXY UNKNOWN ff 1 2 3\r\n", 24, &p), 24);
    assert_true(p.local);
    /* Every strict prefix needs more. */
    for (i = 0; i < strlen(ok4) - 8; i++)
        assert_int_equal(fe_proxy_parse(ok4, i, &p), MS_EAGAIN);
}

static void test_v1_malformed(void **state)
{
    static const char *const bad[] = {
        "EHLO client.example\r\n",
        "PROXY TCP4 198.51.100.22 203.0.113.7 35646 25\n",     /* bare LF */
        "PROXY TCP4 198.51.100.22 203.0.113.7 35646\r\n",      /* missing port */
        "PROXY TCP4 198.51.100.22  203.0.113.7 1 25\r\n",      /* double space */
        "PROXY TCP4 198.51.100.22 203.0.113.7 1 25 \r\n",      /* trailing space */
        "PROXY TCP4 2001:db8::1 203.0.113.7 1 25\r\n",         /* family mismatch */
        "PROXY TCP6 198.51.100.22 2001:db8::2 1 25\r\n",
        "PROXY TCP4 198.51.100.256 203.0.113.7 1 25\r\n",
        "PROXY TCP4 198.51.100.22 203.0.113.7 65536 25\r\n",
        "PROXY TCP4 198.51.100.22 203.0.113.7 01 25\r\n",      /* leading zero */
        "PROXY TCP4 198.51.100.22 203.0.113.7 -1 25\r\n",
        "PROXY UDP4 198.51.100.22 203.0.113.7 1 25\r\n",
        "PROXY UNKNOWNX\r\n",
        "PROXY TCP4 198.51.100.22 203.0.113.7 1 2\x01\r\n",
        "proxy TCP4 198.51.100.22 203.0.113.7 1 25\r\n",
    };
    struct fe_proxy p;
    char longline[200];
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (fe_proxy_parse(bad[i], strlen(bad[i]), &p) != MS_EPROTO)
            fail_msg("accepted: %s", bad[i]);
    /* No CRLF within 107 octets. */
    memset(longline, 'x', sizeof(longline));
    memcpy(longline, "PROXY UNKNOWN ", 14);
    assert_int_equal(fe_proxy_parse(longline, 106, &p), MS_EAGAIN);
    assert_int_equal(fe_proxy_parse(longline, sizeof(longline), &p), MS_EPROTO);
    assert_true(fe_proxy_maybe("PRO", 3));
    assert_true(fe_proxy_maybe("\r\n\r\n", 4));
    assert_false(fe_proxy_maybe("EHLO", 4));
}

/* Build a v2 header: family/command, address block, TLVs. */
static size_t v2(unsigned char *out, unsigned vercmd, unsigned fam, const void *addr,
                 size_t addrlen, const void *tlvs, size_t tlvlen)
{
    size_t len = addrlen + tlvlen;

    memcpy(out, sig, 12);
    out[12] = (unsigned char)vercmd;
    out[13] = (unsigned char)fam;
    out[14] = (unsigned char)(len >> 8);
    out[15] = (unsigned char)len;
    memcpy(out + 16, addr, addrlen);
    memcpy(out + 16 + addrlen, tlvs, tlvlen);
    return 16 + len;
}

static const unsigned char addr4[12] = {198, 51, 100, 22, 203, 0, 113, 7, 0x8b, 0x3e, 0, 25};

static void test_v2(void **state)
{
    unsigned char h[512], a6[36];
    /* AUTHORITY "mx.example", SSL{client=1, verify=0, VERSION "TLSv1.3",
     * CIPHER "TLS_AES_128_GCM_SHA256"}, NOOP, an unknown type 0xE0. */
    static const unsigned char tlvs[] =
        "\x02\x00\x0amx.example"
        "\x20\x00\x28\x01\x00\x00\x00\x00"
        "\x21\x00\x07TLSv1.3"
        "\x23\x00\x16TLS_AES_128_GCM_SHA256"
        "\x04\x00\x02\x00\x00"
        "\xe0\x00\x01z";
    struct fe_proxy p;
    size_t n, i;

    n = v2(h, 0x21, 0x11, addr4, 12, tlvs, sizeof(tlvs) - 1);
    memcpy(h + n, "EHLO", 4);
    assert_int_equal(fe_proxy_parse((char *)h, n + 4, &p), (int)n);
    assert_int_equal(p.version, 2);
    assert_false(p.local);
    src_is(&p, "198.51.100.22", 35646);
    assert_string_equal(p.authority, "mx.example");
    assert_true(p.ssl);
    assert_string_equal(p.ssl_version, "TLSv1.3");
    assert_string_equal(p.ssl_cipher, "TLS_AES_128_GCM_SHA256");
    assert_false(p.crc_checked);
    for (i = 0; i < n; i++)
        assert_int_equal(fe_proxy_parse((char *)h, i, &p), MS_EAGAIN);

    /* IPv6. */
    memset(a6, 0, sizeof(a6));
    a6[0] = 0x20, a6[1] = 0x01, a6[2] = 0x0d, a6[3] = 0xb8, a6[15] = 5;
    a6[33] = 99;
    n = v2(h, 0x21, 0x21, a6, 36, "", 0);
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), (int)n);
    src_is(&p, "2001:db8::5", 99);

    /* LOCAL (health checks): no client, whatever the block says. */
    n = v2(h, 0x20, 0x11, addr4, 12, "", 0);
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), (int)n);
    assert_true(p.local);
    n = v2(h, 0x20, 0x00, "", 0, "", 0);
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), (int)n);
    assert_true(p.local);
    /* UDP and UNIX are not clients we serve: keep the connection's. */
    n = v2(h, 0x21, 0x12, addr4, 12, "", 0);
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), (int)n);
    assert_true(p.local);
}

static void test_v2_crc32c(void **state)
{
    unsigned char h[128];
    unsigned char tlv[7] = {0x03, 0x00, 0x04, 0, 0, 0, 0};
    struct fe_proxy p;
    uint32_t crc;
    size_t n;

    /* RFC 3720 B.4 check value. */
    assert_int_equal(fe_crc32c(0, "123456789", 9), 0xE3069283u);
    n = v2(h, 0x21, 0x11, addr4, 12, tlv, sizeof(tlv));
    crc = fe_crc32c(0, h, n);
    h[n - 4] = (unsigned char)(crc >> 24), h[n - 3] = (unsigned char)(crc >> 16);
    h[n - 2] = (unsigned char)(crc >> 8), h[n - 1] = (unsigned char)crc;
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), (int)n);
    assert_true(p.crc_checked);
    h[16] ^= 1; /* the client address changed on the way */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
}

static void test_v2_malformed(void **state)
{
    static unsigned char h[2 * FE_PROXY_V2_MAX + 256];
    struct fe_proxy p;
    size_t n;

    n = v2(h, 0x11, 0x11, addr4, 12, "", 0); /* version 1 in a v2 header */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x22, 0x11, addr4, 12, "", 0); /* command 2 */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x41, addr4, 12, "", 0); /* family 4 */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x21, addr4, 12, "", 0); /* IPv6 with a 12-octet block */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x11, addr4, 12, "\x02\x00\x05mx", 5); /* TLV past the end */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x11, addr4, 12, "\x02\x00", 2); /* half a TLV header */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x11, addr4, 12, "\x02\x00\x03m\0x", 6); /* NUL in AUTHORITY */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x11, addr4, 12, "\x20\x00\x02\x01\x00", 5); /* short SSL TLV */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    n = v2(h, 0x21, 0x11, addr4, 12, "\x03\x00\x02\x00\x00", 5); /* short CRC */
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    /* Over FE_PROXY_V2_MAX. */
    memset(h, 0, sizeof(h));
    n = v2(h, 0x21, 0x11, addr4, 12, "", 0);
    h[14] = (unsigned char)((FE_PROXY_V2_MAX - 15) >> 8), h[15] = (unsigned char)(FE_PROXY_V2_MAX - 15);
    assert_int_equal(fe_proxy_parse((char *)h, 16, &p), MS_EPROTO);
    /* The signature must be exact. */
    n = v2(h, 0x21, 0x11, addr4, 12, "", 0);
    h[11] = 'x';
    assert_int_equal(fe_proxy_parse((char *)h, n, &p), MS_EPROTO);
    assert_int_equal(fe_proxy_parse("", 0, &p), MS_EAGAIN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_v2),
        cmocka_unit_test(test_v2_crc32c),
        cmocka_unit_test(test_v2_malformed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
