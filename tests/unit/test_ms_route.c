/*
 * test_ms_route.c - lib/mail/ms_route.c: transport parsing, the transport
 * map's lookup order and MX ordering (RFC 5321 §5.1, RFC 7505).
 * Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_error.h"
#include "ms_route.h"

struct tcase {
    const char *in;
    int ok;
    enum ms_transport_kind kind;
    const char *host;
    int port, no_mx;
    const char *dsn;    /* error: */
    const char *text;   /* error:, discard */
};

static const struct tcase tcases[] = {
    {"smtp:mx.example.org", 1, MS_TRANSPORT_SMTP, "mx.example.org", 0, 0, NULL, NULL},
    {"smtp:mx.example.org:2525", 1, MS_TRANSPORT_SMTP, "mx.example.org", 2525, 0, NULL, NULL},
    {"smtp:[mx.example.org]", 1, MS_TRANSPORT_SMTP, "mx.example.org", 0, 1, NULL, NULL},
    {"SMTP:[127.0.0.1]:25", 1, MS_TRANSPORT_SMTP, "127.0.0.1", 25, 1, NULL, NULL},
    {"smtp:[ipv6:2001:db8::1]:587", 1, MS_TRANSPORT_SMTP, "2001:db8::1", 587, 1, NULL, NULL},
    {"smtp:[::1]", 1, MS_TRANSPORT_SMTP, "::1", 0, 1, NULL, NULL},
    {"  lmtp:mail.internal:24 ", 1, MS_TRANSPORT_LMTP, "mail.internal", 24, 1, NULL, NULL},
    {"lmtp:[10.0.0.1]", 1, MS_TRANSPORT_LMTP, "10.0.0.1", 0, 1, NULL, NULL},
    {"discard", 1, MS_TRANSPORT_DISCARD, "", 0, 0, NULL, "discarded by the transport map"},
    {"discard:gone", 1, MS_TRANSPORT_DISCARD, "", 0, 0, NULL, "gone"},
    {"error:5.7.1 go away", 1, MS_TRANSPORT_ERROR, "", 0, 0, "5.7.1", "go away"},
    {"error:4.3.2 later", 1, MS_TRANSPORT_ERROR, "", 0, 0, "4.3.2", "later"},
    {"error:no code", 1, MS_TRANSPORT_ERROR, "", 0, 0, "5.0.0", "no code"},
    {"error:", 1, MS_TRANSPORT_ERROR, "", 0, 0, "5.0.0", "delivery refused by the transport map"},
    {"smtp:", 0, 0, NULL, 0, 0, NULL, NULL},
    {"smtp:host:0", 0, 0, NULL, 0, 0, NULL, NULL},
    {"smtp:host:65536", 0, 0, NULL, 0, 0, NULL, NULL},
    {"smtp:host:25x", 0, 0, NULL, 0, 0, NULL, NULL},
    {"smtp:[host", 0, 0, NULL, 0, 0, NULL, NULL},
    {"smtp:[host]x", 0, 0, NULL, 0, 0, NULL, NULL},
    {"smtp:ho st", 0, 0, NULL, 0, 0, NULL, NULL},
    {"relay:host", 0, 0, NULL, 0, 0, NULL, NULL},
    {"error:5.1.1 bad\x01text", 0, 0, NULL, 0, 0, NULL, NULL},
    {"lmtp:unix:relative", 0, 0, NULL, 0, 0, NULL, NULL},
};

static void test_transport_parse(void **state)
{
    struct ms_transport t;
    char err[128];
    size_t i;
    int r;

    (void)state;
    for (i = 0; i < sizeof(tcases) / sizeof(tcases[0]); i++) {
        const struct tcase *c = &tcases[i];
        r = ms_transport_parse(c->in, strlen(c->in), &t, err, sizeof(err));
        if (!c->ok) {
            if (r != MS_EINVAL)
                fail_msg("case %zu \"%s\": accepted", i, c->in);
            continue;
        }
        if (r != 0)
            fail_msg("case %zu \"%s\": %s", i, c->in, err);
        assert_int_equal(t.kind, c->kind);
        assert_string_equal(t.host, c->host);
        assert_int_equal(t.port, c->port);
        assert_int_equal(t.no_mx, c->no_mx);
        if (c->dsn)
            assert_string_equal(t.dsn, c->dsn);
        if (c->text)
            assert_string_equal(t.text, c->text);
    }
    assert_int_equal(ms_transport_parse("lmtp:unix:/run/dovecot/lmtp", 27, &t, err, sizeof(err)),
                     0);
    assert_string_equal(t.path, "/run/dovecot/lmtp");
    assert_int_equal(ms_transport_parse("error:5.7.1 x", 13, &t, err, sizeof(err)), 0);
    assert_int_equal(t.code, 550);
    assert_int_equal(ms_transport_parse("error:4.7.1 x", 13, &t, err, sizeof(err)), 0);
    assert_int_equal(t.code, 450);
}

static void test_map_lookup(void **state)
{
    ms_transport_map *m = ms_transport_map_new();
    const struct ms_transport *t;
    char err[128];
    static const char *const lines[] = {
        "# comment", "", "   ", "example.org smtp:[10.0.0.1]", ".example.org smtp:[10.0.0.2]",
        ".deep.example.org = smtp:[10.0.0.3]", "Other.Test discard", "* smtp:[10.0.0.9]:2525",
        "example.org smtp:[10.0.0.4]", /* replaces the first */
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        if (ms_transport_map_add(m, lines[i], strlen(lines[i]), err, sizeof(err)) != 0)
            fail_msg("line \"%s\": %s", lines[i], err);
    assert_int_equal(ms_transport_map_size(m), 5);
    assert_string_equal(ms_transport_map_lookup(m, "example.org")->host, "10.0.0.4");
    assert_string_equal(ms_transport_map_lookup(m, "EXAMPLE.org.")->host, "10.0.0.4");
    assert_string_equal(ms_transport_map_lookup(m, "a.example.org")->host, "10.0.0.2");
    assert_string_equal(ms_transport_map_lookup(m, "x.deep.example.org")->host, "10.0.0.3");
    assert_string_equal(ms_transport_map_lookup(m, "deep.example.org")->host, "10.0.0.2");
    assert_int_equal(ms_transport_map_lookup(m, "other.test")->kind, MS_TRANSPORT_DISCARD);
    t = ms_transport_map_lookup(m, "elsewhere.net");
    assert_non_null(t);
    assert_int_equal(t->port, 2525);
    assert_int_equal(ms_transport_map_add(m, "bad..", 5, err, sizeof(err)), MS_EINVAL);
    assert_int_equal(ms_transport_map_add(m, "onlydomain", 10, err, sizeof(err)), MS_EINVAL);
    assert_int_equal(ms_transport_map_add(m, "a b c", 5, err, sizeof(err)), MS_EINVAL);
    /* A next-hop key of the domain map is no recipient domain. */
    assert_int_equal(ms_transport_map_add(m, "[mx.example]:25 smtp:[10.0.0.1]", 31, err,
                                          sizeof(err)), MS_EINVAL);
    assert_int_equal(ms_transport_map_size(m), 5);
    ms_transport_map_free(m);
    assert_null(ms_transport_map_lookup(NULL, "x"));
}

static uint32_t seq_rnd(void *arg)
{
    uint32_t *s = arg;
    return (*s)++;
}

static void test_mx_order(void **state)
{
    struct ms_dns_rr rr[5];
    struct ms_dns_result res = {MS_DNS_OK, 0, 0, rr, NULL};
    struct ms_mx_host hosts[MS_MX_HOSTS_MAX];
    size_t n, i;
    uint32_t s = 0;
    int seen_first[2] = {0, 0};

    (void)state;
    rr[0] = (struct ms_dns_rr){.type = MS_DNS_MX, .u.mx = {20, "b.example"}};
    rr[1] = (struct ms_dns_rr){.type = MS_DNS_MX, .u.mx = {10, "a1.example"}};
    rr[2] = (struct ms_dns_rr){.type = MS_DNS_MX, .u.mx = {30, "c.example"}};
    rr[3] = (struct ms_dns_rr){.type = MS_DNS_MX, .u.mx = {10, "a2.example"}};
    res.n = 4;
    for (i = 0; i < 8; i++) {
        assert_int_equal(ms_mx_order(&res, "example", seq_rnd, &s, hosts, MS_MX_HOSTS_MAX, &n),
                         MS_MX_HOSTS);
        assert_int_equal(n, 4);
        assert_int_equal(hosts[0].preference, 10);
        assert_int_equal(hosts[1].preference, 10);
        assert_string_equal(hosts[2].name, "b.example");
        assert_string_equal(hosts[3].name, "c.example");
        seen_first[strcmp(hosts[0].name, "a1.example") == 0]++;
    }
    /* Equal preferences are shuffled: both come first sometimes. */
    assert_true(seen_first[0] > 0 && seen_first[1] > 0);
    /* max cuts the list. */
    assert_int_equal(ms_mx_order(&res, "example", NULL, NULL, hosts, 2, &n), MS_MX_HOSTS);
    assert_int_equal(n, 2);

    /* RFC 7505 null MX. */
    rr[0] = (struct ms_dns_rr){.type = MS_DNS_MX, .u.mx = {0, ""}};
    res.n = 1;
    assert_int_equal(ms_mx_order(&res, "example", NULL, NULL, hosts, MS_MX_HOSTS_MAX, &n),
                     MS_MX_NULL);
    /* No MX: implicit, the domain itself. */
    res.status = MS_DNS_NODATA;
    res.n = 0;
    assert_int_equal(ms_mx_order(&res, "example.net", NULL, NULL, hosts, MS_MX_HOSTS_MAX, &n),
                     MS_MX_IMPLICIT);
    assert_int_equal(n, 1);
    assert_string_equal(hosts[0].name, "example.net");
    res.status = MS_DNS_NXDOMAIN;
    assert_int_equal(ms_mx_order(&res, "x", NULL, NULL, hosts, MS_MX_HOSTS_MAX, &n),
                     MS_MX_NXDOMAIN);
    res.status = MS_DNS_TEMPFAIL;
    assert_int_equal(ms_mx_order(&res, "x", NULL, NULL, hosts, MS_MX_HOSTS_MAX, &n),
                     MS_MX_TEMPFAIL);
    res.status = MS_DNS_BOGUS;
    assert_int_equal(ms_mx_order(&res, "x", NULL, NULL, hosts, MS_MX_HOSTS_MAX, &n),
                     MS_MX_TEMPFAIL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_parse),
        cmocka_unit_test(test_map_lookup),
        cmocka_unit_test(test_mx_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
