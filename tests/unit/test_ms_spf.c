/* Unit tests for lib/mail/ms_spf: the record parser, macro expansion (the
 * RFC 7208 §7.4 examples and the error cases) and the step/answer API.  The
 * full OpenSPF suite is in test_ms_spf_suite.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "ms_error.h"
#include "ms_spf.h"

/* ---- Parser ------------------------------------------------------------ */

static const struct {
    const char *rec;
    int rc;   /* 0, MS_EPROTO, MS_ETOOBIG */
    size_t n; /* terms, when rc == 0 */
} parse_cases[] = {
    {"v=spf1", 0, 0},
    {"v=spf1 ", 0, 0},
    {"v=spf1 -all", 0, 1},
    {"V=SpF1 ?ALL", 0, 1},
    {"v=spf1  a   mx  -all ", 0, 3},
    {"v=spf1 a/24//64 mx:example.com//0 ptr ptr:example.net", 0, 4},
    {"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ip6:::ffff:1.2.3.4 ~all", 0, 4},
    {"v=spf1 include:_spf.example.net redirect=x.example.com exp=why.%{d}", 0, 3},
    {"v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all", 0, 2},
    {"v=spf1 a:foo:bar/baz.example.com a:foo.example.xn--zckzah", 0, 2},
    {"v=spf1 moo.cow-far_out=man:dog/cat foo=%{c}%{r}%{t} bar=", 0, 3},
    {"v=spf1 a:%{d}", 0, 1},
    {"v=spf1 redirect=%{d}.d.spf.example.com.", 0, 1},
    /* not a record */
    {"v=spf10", MS_EPROTO, 0},
    {"v=spf1-all", MS_EPROTO, 0},
    {"spf1 -all", MS_EPROTO, 0},
    {"", MS_EPROTO, 0},
    /* characters */
    {"v=spf1\t-all", MS_EPROTO, 0},
    {"v=spf1 -all\r", MS_EPROTO, 0},
    {"v=spf1 a:\xc3\xa9.example.com", MS_EPROTO, 0},
    /* mechanisms */
    {"v=spf1 moo", MS_EPROTO, 0},
    {"v=spf1 -all.", MS_EPROTO, 0},
    {"v=spf1 all:x", MS_EPROTO, 0},
    {"v=spf1 all/8", MS_EPROTO, 0},
    {"v=spf1 include", MS_EPROTO, 0},
    {"v=spf1 include:", MS_EPROTO, 0},
    {"v=spf1 include:example.com/24", MS_EPROTO, 0},
    {"v=spf1 exists", MS_EPROTO, 0},
    {"v=spf1 ptr/0", MS_EPROTO, 0},
    {"v=spf1 ptr:", MS_EPROTO, 0},
    {"v=spf1 a:", MS_EPROTO, 0},
    {"v=spf1 a:foo", MS_EPROTO, 0},
    {"v=spf1 a:museum.", MS_EPROTO, 0},
    {"v=spf1 a:abc.123", MS_EPROTO, 0},
    {"v=spf1 a:example.-com", MS_EPROTO, 0},
    {"v=spf1 a:example.com:8080", MS_EPROTO, 0},
    {"v=spf1 a/33", MS_EPROTO, 0},
    {"v=spf1 a//129", MS_EPROTO, 0},
    {"v=spf1 a/24/64", MS_EPROTO, 0},
    {"v=spf1 a/024", MS_EPROTO, 0},
    {"v=spf1 ip4", MS_EPROTO, 0},
    {"v=spf1 ip4:1.2.3", MS_EPROTO, 0},
    {"v=spf1 ip4:1.2.3.04", MS_EPROTO, 0},
    {"v=spf1 ip4:1.2.3.256", MS_EPROTO, 0},
    {"v=spf1 ip4:1.2.3.4/33", MS_EPROTO, 0},
    {"v=spf1 ip4:1.2.3.4//32", MS_EPROTO, 0},
    {"v=spf1 ip4:1.2.3.4:25", MS_EPROTO, 0},
    {"v=spf1 ip6:::1/129", MS_EPROTO, 0},
    {"v=spf1 ip6::CAFE::BABE", MS_EPROTO, 0},
    /* modifiers */
    {"v=spf1 =all", MS_EPROTO, 0},
    {"v=spf1 1up=foo", MS_EPROTO, 0},
    {"v=spf1 -redirect=example.com", MS_EPROTO, 0},
    {"v=spf1 redirect:example.com", MS_EPROTO, 0},
    {"v=spf1 redirect=", MS_EPROTO, 0},
    {"v=spf1 exp=", MS_EPROTO, 0},
    {"v=spf1 exp=-all", MS_EPROTO, 0},
    {"v=spf1 exp=a.example.com exp=b.example.com", MS_EPROTO, 0},
    {"v=spf1 redirect=a.example.com redirect=a.example.com", MS_EPROTO, 0},
    {"v=spf1 foo=%abc", MS_EPROTO, 0},
    /* macros in domain-specs */
    {"v=spf1 a:%{x}.example.com", MS_EPROTO, 0},
    {"v=spf1 a:%{d0}.example.com", MS_EPROTO, 0},
    {"v=spf1 a:%{c}.example.com", MS_EPROTO, 0},
    {"v=spf1 exp=%{r}.example.com", MS_EPROTO, 0},
    {"v=spf1 a:%(ir).example.com", MS_EPROTO, 0},
    {"v=spf1 a:foo%.example.com", MS_EPROTO, 0},
    {"v=spf1 a:%{d", MS_EPROTO, 0},
};

static void test_parse_table(void **state)
{
    struct ms_spf_record r;
    const char *why;
    size_t i;
    int rc;

    (void)state;
    for (i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
        rc = ms_spf_parse_record(parse_cases[i].rec, strlen(parse_cases[i].rec), &r, &why);
        if (rc != parse_cases[i].rc || (rc == 0 && r.n != parse_cases[i].n))
            fail_msg("\"%s\": rc %d n %zu (%s), want rc %d n %zu", parse_cases[i].rec, rc, r.n,
                     why ? why : "-", parse_cases[i].rc, parse_cases[i].n);
        if (rc < 0) {
            assert_non_null(why);
            assert_null(r.terms);
        }
        ms_spf_record_free(&r);
    }
}

static void test_parse_terms(void **state)
{
    static const char rec[] = "v=spf1 ~a:mail.%{d}/24//64 -ip6:2001:db8::/48 "
                              "ip4:192.0.2.1 mx//0 redirect=_spf.example.com exp=x.example.com "
                              "Foo.Bar=baz";
    struct ms_spf_record r;
    char ip[INET6_ADDRSTRLEN];

    (void)state;
    assert_int_equal(ms_spf_parse_record(rec, strlen(rec), &r, NULL), 0);
    assert_int_equal(r.n, 7);
    assert_int_equal(r.terms[0].kind, MS_SPF_MECH_A);
    assert_int_equal(r.terms[0].qualifier, MS_SPF_SOFTFAIL);
    assert_int_equal(r.terms[0].spec_len, strlen("mail.%{d}"));
    assert_memory_equal(r.terms[0].spec, "mail.%{d}", r.terms[0].spec_len);
    assert_int_equal(r.terms[0].cidr4, 24);
    assert_int_equal(r.terms[0].cidr6, 64);
    assert_int_equal(r.terms[0].text_len, strlen("~a:mail.%{d}/24//64"));

    assert_int_equal(r.terms[1].kind, MS_SPF_MECH_IP6);
    assert_int_equal(r.terms[1].qualifier, MS_SPF_FAIL);
    assert_int_equal(r.terms[1].cidr6, 48);
    inet_ntop(AF_INET6, &r.terms[1].ip6, ip, sizeof(ip));
    assert_string_equal(ip, "2001:db8::");

    assert_int_equal(r.terms[2].kind, MS_SPF_MECH_IP4);
    assert_int_equal(r.terms[2].qualifier, MS_SPF_PASS);
    assert_int_equal(r.terms[2].cidr4, 32);
    inet_ntop(AF_INET, &r.terms[2].ip4, ip, sizeof(ip));
    assert_string_equal(ip, "192.0.2.1");

    assert_int_equal(r.terms[3].kind, MS_SPF_MECH_MX);
    assert_null(r.terms[3].spec);
    assert_int_equal(r.terms[3].cidr4, 32);
    assert_int_equal(r.terms[3].cidr6, 0);

    assert_int_equal(r.redirect, 4);
    assert_int_equal(r.terms[4].kind, MS_SPF_MOD_REDIRECT);
    assert_int_equal(r.exp, 5);
    assert_int_equal(r.terms[6].kind, MS_SPF_MOD_UNKNOWN);
    assert_int_equal(r.terms[6].name_len, 7);
    ms_spf_record_free(&r);
}

static void test_parse_limits(void **state)
{
    char *big = malloc(MS_SPF_RECORD_MAX + 2);
    struct ms_spf_record r;
    size_t i, n;

    (void)state;
    /* One byte over the record limit. */
    memcpy(big, "v=spf1", 6);
    memset(big + 6, ' ', MS_SPF_RECORD_MAX + 1 - 6);
    assert_int_equal(ms_spf_parse_record(big, MS_SPF_RECORD_MAX + 1, &r, NULL), MS_ETOOBIG);
    assert_int_equal(ms_spf_parse_record(big, MS_SPF_RECORD_MAX, &r, NULL), 0);
    ms_spf_record_free(&r);

    /* Exactly MS_SPF_TERMS_MAX terms, then one more. */
    n = 6;
    for (i = 0; i < MS_SPF_TERMS_MAX; i++)
        n += (size_t)sprintf(big + n, " a");
    assert_int_equal(ms_spf_parse_record(big, n, &r, NULL), 0);
    assert_int_equal(r.n, MS_SPF_TERMS_MAX);
    ms_spf_record_free(&r);
    n += (size_t)sprintf(big + n, " a");
    assert_int_equal(ms_spf_parse_record(big, n, &r, NULL), MS_ETOOBIG);

    /* The parser honours len: nothing past it is read. */
    assert_int_equal(ms_spf_parse_record("v=spf1 -all moo", 11, &r, NULL), 0);
    assert_int_equal(r.n, 1);
    ms_spf_record_free(&r);
    /* An embedded NUL is an error, not an end. */
    assert_int_equal(ms_spf_parse_record("v=spf1 -all\0 a", 14, &r, NULL), MS_EPROTO);
    free(big);
}

static void test_is_record(void **state)
{
    (void)state;
    assert_true(ms_spf_is_record("v=spf1", 6));
    assert_true(ms_spf_is_record("V=SPF1 mx", 9));
    assert_false(ms_spf_is_record("v=spf1mx", 8));
    assert_false(ms_spf_is_record("v=spf10", 7));
    assert_false(ms_spf_is_record("v=spf", 5));
    assert_false(ms_spf_is_record("spf2.0/pra", 10));
}

/* ---- Macros: RFC 7208 §7.4 ---------------------------------------------- */

static struct ms_spf_request example_req(int v6)
{
    struct ms_spf_request req;

    memset(&req, 0, sizeof(req));
    req.identity = MS_SPF_MAILFROM;
    req.mail_from = "strong-bad@email.example.com";
    req.helo = "mx.example.org";
    req.receiver = "mx.mailstream.test";
    req.now = 1700000000;
    if (v6) {
        req.family = AF_INET6;
        inet_pton(AF_INET6, "2001:db8::cb01", &req.ip.v6);
    } else {
        req.family = AF_INET;
        inet_pton(AF_INET, "192.0.2.3", &req.ip.v4);
    }
    return req;
}

static const struct {
    int v6, explain;
    const char *in, *out; /* out NULL: MS_EPROTO */
} macro_cases[] = {
    /* §7.4 */
    {0, 0, "%{s}", "strong-bad@email.example.com"},
    {0, 0, "%{o}", "email.example.com"},
    {0, 0, "%{d}", "email.example.com"},
    {0, 0, "%{d4}", "email.example.com"},
    {0, 0, "%{d3}", "email.example.com"},
    {0, 0, "%{d2}", "example.com"},
    {0, 0, "%{d1}", "com"},
    {0, 0, "%{dr}", "com.example.email"},
    {0, 0, "%{d2r}", "example.email"},
    {0, 0, "%{l}", "strong-bad"},
    {0, 0, "%{l-}", "strong.bad"},
    {0, 0, "%{lr}", "strong-bad"},
    {0, 0, "%{lr-}", "bad.strong"},
    {0, 0, "%{l1r-}", "strong"},
    {0, 0, "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"},
    {0, 0, "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"},
    {0, 0, "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"},
    {0, 0, "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"},
    {0, 0, "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"},
    {1, 0, "%{ir}.%{v}._spf.%{d2}",
     "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com"},
    /* letters, escapes, URL encoding */
    {0, 0, "%{h}", "mx.example.org"},
    {0, 0, "%{p}", "unknown"},
    {0, 0, "%{S}", "strong-bad%40email.example.com"},
    {0, 0, "%{D2R}", "example.email"},
    {0, 0, "a%%b%_c%-d", "a%b c%20d"},
    {0, 0, "%{l+-}", "strong.bad"},
    {0, 0, "%{d99}", "email.example.com"},
    {0, 0, "%{d12345678901234567890}", "email.example.com"},
    {0, 1, "%{c} %{r} %{t}", "192.0.2.3 mx.mailstream.test 1700000000"},
    {1, 1, "%{c} via %{v}", "2001:db8::cb01 via ip6"},
    {0, 1, "%{C}", "192.0.2.3"},
    {0, 1, "", ""},
    /* errors */
    {0, 0, "%", NULL},
    {0, 0, "%x", NULL},
    {0, 0, "%{", NULL},
    {0, 0, "%{d", NULL},
    {0, 0, "%{d2", NULL},
    {0, 0, "%{x}", NULL},
    {0, 0, "%{d0}", NULL},
    {0, 0, "%{d2!}", NULL},
    {0, 0, "%{c}", NULL},
    {0, 0, "%{r}", NULL},
    {0, 0, "%{t}", NULL},
    {0, 0, "a b", NULL},
    {0, 1, "bad\tchar", NULL},
    {0, 1, "caf\xc3\xa9", NULL},
};

static void test_macro_table(void **state)
{
    char out[512];
    size_t i;
    int rc;

    (void)state;
    for (i = 0; i < sizeof(macro_cases) / sizeof(macro_cases[0]); i++) {
        struct ms_spf_request req = example_req(macro_cases[i].v6);
        rc = ms_spf_expand(&req, "email.example.com", NULL, macro_cases[i].in,
                           strlen(macro_cases[i].in), macro_cases[i].explain, out, sizeof(out));
        if (macro_cases[i].out == NULL) {
            if (rc != MS_EPROTO)
                fail_msg("\"%s\": rc %d, want MS_EPROTO", macro_cases[i].in, rc);
        } else if (rc < 0 || strcmp(out, macro_cases[i].out) != 0) {
            fail_msg("\"%s\": rc %d \"%s\", want \"%s\"", macro_cases[i].in, rc, rc < 0 ? "" : out,
                     macro_cases[i].out);
        } else {
            assert_int_equal(rc, (int)strlen(macro_cases[i].out));
        }
    }
}

static void test_macro_special(void **state)
{
    struct ms_spf_request req = example_req(0);
    char out[16];

    (void)state;
    /* %{p} takes the value given. */
    assert_int_equal(
        ms_spf_expand(&req, "d.example", "mx.example.com", "%{p}", 4, 0, out, sizeof(out)), 14);
    assert_string_equal(out, "mx.example.com");
    /* Too long for the output: an error, not a truncation. */
    assert_int_equal(ms_spf_expand(&req, "d.example", NULL, "%{s}", 4, 0, out, sizeof(out)),
                     MS_ETOOBIG);
    /* No local-part: "postmaster" (§4.3). */
    req.mail_from = "@example.net";
    assert_int_equal(ms_spf_expand(&req, "d.example", NULL, "%{s}", 4, 0, out, sizeof(out)),
                     MS_ETOOBIG);
    assert_int_equal(ms_spf_expand(&req, "d.example", NULL, "%{l}", 4, 0, out, sizeof(out)), 10);
    assert_string_equal(out, "postmaster");
    /* The null reverse-path: postmaster@<helo>. */
    req.mail_from = "";
    assert_int_equal(ms_spf_expand(&req, "d.example", NULL, "%{o}", 4, 0, out, sizeof(out)), 14);
    assert_string_equal(out, "mx.example.org");
}

/* ---- Evaluation through the API, with a tiny table resolver -------------- */

struct zrr {
    const char *name;
    enum ms_dns_type type;
    const char *data; /* address, TXT, host; "!TEMP" or "!BOGUS" for an error */
};

static enum ms_spf_result evaluate(const struct zrr *zone, size_t nzone,
                                   const struct ms_spf_request *req, ms_spf **out)
{
    struct ms_dns_query q;
    struct ms_dns_result res;
    struct ms_dns_rr rr[8];
    ms_spf *s;
    size_t i;
    int steps = 0;

    assert_int_equal(ms_spf_new(&s, req), 0);
    while (ms_spf_step(s, &q) == MS_SPF_NEED_DNS) {
        assert_true(++steps < 200);
        memset(&res, 0, sizeof(res));
        res.rr = rr;
        res.status = MS_DNS_NXDOMAIN;
        for (i = 0; i < nzone; i++) {
            if (strcasecmp(zone[i].name, q.name) != 0)
                continue;
            if (res.status == MS_DNS_NXDOMAIN)
                res.status = MS_DNS_NODATA;
            if (zone[i].type != q.type)
                continue;
            if (strcmp(zone[i].data, "!TEMP") == 0 || strcmp(zone[i].data, "!BOGUS") == 0) {
                res.status = zone[i].data[1] == 'T' ? MS_DNS_TEMPFAIL : MS_DNS_BOGUS;
                res.n = 0;
                break;
            }
            res.status = MS_DNS_OK;
            rr[res.n].type = q.type;
            switch (q.type) {
            case MS_DNS_A: inet_pton(AF_INET, zone[i].data, &rr[res.n].u.a); break;
            case MS_DNS_AAAA: inet_pton(AF_INET6, zone[i].data, &rr[res.n].u.aaaa); break;
            case MS_DNS_MX:
                rr[res.n].u.mx.preference = 10;
                rr[res.n].u.mx.host = zone[i].data;
                break;
            case MS_DNS_PTR: rr[res.n].u.ptr = zone[i].data; break;
            case MS_DNS_TLSA: break; /* SPF never asks */
            case MS_DNS_TXT:
                rr[res.n].u.txt.data = zone[i].data;
                rr[res.n].u.txt.len = strlen(zone[i].data);
                break;
            }
            res.n++;
        }
        assert_int_equal(ms_spf_answer(s, &res), 0);
    }
    *out = s;
    return ms_spf_result(s);
}

static const struct zrr zone1[] = {
    {"mail.example.org", MS_DNS_TXT, "v=spf1 a -all"},
    {"mail.example.org", MS_DNS_A, "192.0.2.1"},
    {"example.org", MS_DNS_TXT, "unrelated"},
    {"example.org", MS_DNS_TXT, "v=spf1 mx include:_spf.example.net -all exp=why.example.org"},
    {"example.org", MS_DNS_MX, "mail.example.org"},
    {"why.example.org", MS_DNS_TXT, "%{i} is not one of %{d}'s hosts (%{p})"},
    {"_spf.example.net", MS_DNS_TXT, "v=spf1 ip6:2001:db8::/32 ?all"},
    {"temp.example.org", MS_DNS_TXT, "v=spf1 a:down.example.org -all"},
    {"down.example.org", MS_DNS_A, "!TEMP"},
    {"bogus.example.org", MS_DNS_TXT, "!BOGUS"},
};

static void test_eval_helo_identity(void **state)
{
    struct ms_spf_request req;
    ms_spf *s;

    (void)state;
    memset(&req, 0, sizeof(req));
    req.identity = MS_SPF_HELO;
    req.family = AF_INET;
    inet_pton(AF_INET, "192.0.2.1", &req.ip.v4);
    req.helo = "mail.example.org";
    req.mail_from = "someone@elsewhere.example"; /* not used for HELO */
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_PASS);
    assert_string_equal(ms_spf_mechanism(s), "a");
    assert_int_equal(ms_spf_mechanism_kind(s), MS_SPF_MECH_A);
    assert_string_equal(ms_spf_domain(s), "mail.example.org");
    assert_null(ms_spf_explanation(s));
    assert_null(ms_spf_problem(s));
    assert_int_equal(ms_spf_queries(s), 2);
    ms_spf_free(s);
}

static void test_eval_mailfrom(void **state)
{
    struct ms_spf_request req;
    ms_spf *s;

    (void)state;
    memset(&req, 0, sizeof(req));
    req.identity = MS_SPF_MAILFROM;
    req.mail_from = "user@example.org";
    req.helo = "client.example";

    /* Through mx. */
    req.family = AF_INET;
    inet_pton(AF_INET, "192.0.2.1", &req.ip.v4);
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_PASS);
    assert_string_equal(ms_spf_mechanism(s), "mx");
    ms_spf_free(s);

    /* Through the include, over IPv6. */
    req.family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::25", &req.ip.v6);
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_PASS);
    assert_string_equal(ms_spf_mechanism(s), "include:_spf.example.net");
    assert_int_equal(ms_spf_mechanism_kind(s), MS_SPF_MECH_INCLUDE);
    ms_spf_free(s);

    /* Fail, with the explanation expanded (and %{p} looked up). */
    req.family = AF_INET;
    inet_pton(AF_INET, "198.51.100.7", &req.ip.v4);
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_FAIL);
    assert_string_equal(ms_spf_mechanism(s), "-all");
    assert_string_equal(ms_spf_explanation(s),
                        "198.51.100.7 is not one of example.org's hosts (unknown)");
    ms_spf_free(s);

    /* IPv4-mapped IPv6 is IPv4. */
    req.family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:192.0.2.1", &req.ip.v6);
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_PASS);
    ms_spf_free(s);

    /* DNS errors: temperror, with the reason. */
    req.family = AF_INET;
    req.mail_from = "user@temp.example.org";
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_TEMPERROR);
    assert_non_null(ms_spf_problem(s));
    ms_spf_free(s);
    req.mail_from = "user@bogus.example.org";
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_TEMPERROR);
    ms_spf_free(s);

    /* No record; malformed domains never reach DNS. */
    req.mail_from = "user@nowhere.example.org";
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_NONE);
    ms_spf_free(s);
    req.mail_from = "user@[192.0.2.1]";
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_NONE);
    assert_int_equal(ms_spf_queries(s), 0);
    ms_spf_free(s);
    req.mail_from = "user@192.0.2.1";
    assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_NONE);
    assert_int_equal(ms_spf_queries(s), 0);
    ms_spf_free(s);
}

/* %{p} prefers a name within <domain> (§7.3), so it differs between a
 * record and the one it includes. */
static const struct zrr zone_p[] = {
    {"d1.example", MS_DNS_TXT, "v=spf1 exists:%{p}.chk.example include:d2.example -all"},
    {"d2.example", MS_DNS_TXT, "v=spf1 exists:%{p}.chk.example -all"},
    {"1.2.0.192.in-addr.arpa", MS_DNS_PTR, "mail.d1.example"},
    {"1.2.0.192.in-addr.arpa", MS_DNS_PTR, "mail.d2.example"},
    {"mail.d1.example", MS_DNS_A, "192.0.2.1"},
    {"mail.d2.example", MS_DNS_A, "192.0.2.1"},
    {"mail.d2.example.chk.example", MS_DNS_A, "127.0.0.2"},
};

static void test_eval_p_per_domain(void **state)
{
    struct ms_spf_request req;
    ms_spf *s;

    (void)state;
    memset(&req, 0, sizeof(req));
    req.family = AF_INET;
    inet_pton(AF_INET, "192.0.2.1", &req.ip.v4);
    req.mail_from = "u@d1.example";
    req.helo = "h.example";
    assert_int_equal(evaluate(zone_p, sizeof(zone_p) / sizeof(zone_p[0]), &req, &s), MS_SPF_PASS);
    assert_string_equal(ms_spf_mechanism(s), "include:d2.example");
    ms_spf_free(s);
}

/* A name of `len` octets made of 9-letter labels: well-formed labels, too
 * long for DNS past 253 octets. */
static char *long_name(size_t len)
{
    char *n = malloc(len + 1);

    for (size_t i = 0; i < len; i++)
        n[i] = i % 10 == 9 && i + 1 < len ? '.' : 'a';
    n[len] = '\0';
    return n;
}

/* Issue 22: RFC 7208 §4.3 for a HELO name longer than a domain name can
 * be: none, without DNS, whether it is the HELO identity or stands in for
 * the null reverse-path, as the same name as the MAIL FROM domain gives.
 * It does not stop the MAIL FROM check of a sender that has one.  The
 * lengths go up to 505, the longest EHLO argument an SMTP command line
 * holds (RFC 5321 §4.5.3.1.4). */
static void test_eval_long_helo(void **state)
{
    static const size_t lens[] = {254, 256, 300, 505};
    struct ms_spf_request req;
    char out[MS_SPF_EXPAND_MAX];
    ms_spf *s;

    (void)state;
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        char *name = long_name(lens[k]), *from;

        memset(&req, 0, sizeof(req));
        req.family = AF_INET;
        inet_pton(AF_INET, "192.0.2.1", &req.ip.v4);
        req.helo = name;

        req.identity = MS_SPF_HELO;
        assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_NONE);
        assert_int_equal(ms_spf_queries(s), 0);
        assert_string_equal(ms_spf_problem(s), "malformed domain");
        ms_spf_free(s);

        req.identity = MS_SPF_MAILFROM; /* null reverse-path: postmaster@<helo> */
        req.mail_from = "";
        assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_NONE);
        assert_int_equal(ms_spf_queries(s), 0);
        ms_spf_free(s);

        from = malloc(lens[k] + 6);
        snprintf(from, lens[k] + 6, "user@%s", name);
        req.mail_from = from;
        assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_NONE);
        assert_int_equal(ms_spf_queries(s), 0);
        ms_spf_free(s);
        free(from);

        req.mail_from = "user@example.org";
        assert_int_equal(evaluate(zone1, sizeof(zone1) / sizeof(zone1[0]), &req, &s), MS_SPF_PASS);
        ms_spf_free(s);
        /* %{h} is the name as given. */
        assert_int_equal(ms_spf_expand(&req, "example.org", NULL, "%{h}", 4, 0, out, sizeof(out)),
                         (int)lens[k]);
        assert_string_equal(out, name);
        free(name);
    }

    /* Past the named limit the request is refused, for both identities. */
    {
        char *name = long_name(MS_SPF_HELO_MAX + 1);

        req.helo = name;
        req.identity = MS_SPF_HELO;
        assert_int_equal(ms_spf_new(&s, &req), MS_ETOOBIG);
        assert_null(s);
        req.identity = MS_SPF_MAILFROM;
        assert_int_equal(ms_spf_new(&s, &req), MS_ETOOBIG);
        free(name);
    }
}

static void test_api_contract(void **state)
{
    struct ms_spf_request req;
    struct ms_dns_query q1, q2;
    struct ms_dns_result res;
    struct ms_dns_rr *many;
    char *big;
    ms_spf *s;
    size_t i;

    (void)state;
    memset(&req, 0, sizeof(req));
    req.mail_from = "a@example.org";
    assert_int_equal(ms_spf_new(&s, &req), MS_EINVAL); /* no family */
    assert_null(s);
    req.family = AF_INET;
    req.identity = MS_SPF_HELO;
    assert_int_equal(ms_spf_new(&s, &req), MS_EINVAL); /* HELO without a name */
    req.identity = MS_SPF_MAILFROM;
    big = malloc(MS_SPF_SENDER_MAX + 2);
    memset(big, 'a', MS_SPF_SENDER_MAX + 1);
    big[MS_SPF_SENDER_MAX + 1] = '\0';
    req.mail_from = big;
    assert_int_equal(ms_spf_new(&s, &req), MS_ETOOBIG);
    free(big);

    req.mail_from = "a@example.org";
    assert_int_equal(ms_spf_new(&s, &req), 0);
    /* Answering before any question is refused. */
    memset(&res, 0, sizeof(res));
    assert_int_equal(ms_spf_answer(s, &res), MS_EINVAL);
    /* Stepping without answering repeats the question. */
    assert_int_equal(ms_spf_step(s, &q1), MS_SPF_NEED_DNS);
    assert_int_equal(ms_spf_step(s, &q2), MS_SPF_NEED_DNS);
    assert_string_equal(q1.name, "example.org");
    assert_int_equal(q1.type, MS_DNS_TXT);
    assert_string_equal(q2.name, q1.name);

    /* An answer over MS_SPF_ANSWER_RR_MAX records is a DNS error, not a
     * truncated record set. */
    many = calloc(MS_SPF_ANSWER_RR_MAX + 1, sizeof(*many));
    for (i = 0; i <= MS_SPF_ANSWER_RR_MAX; i++) {
        many[i].type = MS_DNS_TXT;
        many[i].u.txt.data = "x";
        many[i].u.txt.len = 1;
    }
    res.status = MS_DNS_OK;
    res.n = MS_SPF_ANSWER_RR_MAX + 1;
    res.rr = many;
    assert_int_equal(ms_spf_answer(s, &res), 0);
    free(many); /* the evaluator kept a copy, or nothing */
    assert_int_equal(ms_spf_step(s, &q1), MS_SPF_DONE);
    assert_int_equal(ms_spf_result(s), MS_SPF_TEMPERROR);
    assert_int_equal(ms_spf_step(s, &q1), MS_SPF_DONE);
    assert_int_equal(ms_spf_answer(s, &res), MS_EINVAL);
    ms_spf_free(s);
    ms_spf_free(NULL);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(ms_spf_result_name(MS_SPF_SOFTFAIL), "softfail");
    assert_string_equal(ms_spf_result_name(MS_SPF_PERMERROR), "permerror");
    assert_string_equal(ms_spf_mech_name(MS_SPF_MECH_NONE), "default");
    assert_string_equal(ms_spf_mech_name(MS_SPF_MECH_IP6), "ip6");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),        cmocka_unit_test(test_parse_terms),
        cmocka_unit_test(test_parse_limits),       cmocka_unit_test(test_is_record),
        cmocka_unit_test(test_macro_table),        cmocka_unit_test(test_macro_special),
        cmocka_unit_test(test_eval_helo_identity), cmocka_unit_test(test_eval_mailfrom),
        cmocka_unit_test(test_eval_p_per_domain),  cmocka_unit_test(test_eval_long_helo),
        cmocka_unit_test(test_api_contract),       cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
