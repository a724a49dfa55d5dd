/*
 * Unit tests for lib/mail/ms_dmarc: the Public Suffix List matcher (a small
 * inline list, and the Debian list when installed), From-domain extraction
 * (the OpenDMARC test_finddomain cases, with RFC 7489 §6.6.1 strictness),
 * alignment (the OpenDMARC test_alignment cases judged by RFC 7489 §3.1),
 * and the evaluator against an in-memory DNS table: discovery with the
 * Organizational Domain fallback, p / sp, strict and relaxed alignment, pct
 * with the caller's sample, missing / multiple / malformed records, DNS
 * failure.  No network.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_dmarc.h"
#include "ms_error.h"

static const char small_psl[] = "// comment\n"
                                "com\n"
                                "uk\n"
                                "co.uk\n"
                                "jp\n"
                                "*.kawasaki.jp\n"
                                "!city.kawasaki.jp\n"
                                "blogspot.com  trailing words are ignored\n"
                                "\n";

static ms_psl *psl_small(void)
{
    ms_psl *p;

    assert_int_equal(ms_psl_parse(small_psl, sizeof(small_psl) - 1, &p), 0);
    return p;
}

static void test_psl_org_domain(void **state)
{
    static const struct {
        const char *in, *out; /* out NULL: MS_ENOTFOUND; "!": MS_EINVAL */
    } cases[] = {
        {"a.b.example.com", "example.com"},
        {"example.com", "example.com"},
        {"Example.COM.", "example.com"},
        {"com", NULL},
        {"foo.co.uk", "foo.co.uk"},
        {"a.foo.co.uk", "foo.co.uk"},
        {"co.uk", NULL},
        /* not listed: the implicit "*" rule */
        {"sub.example.test", "example.test"},
        {"example.test", "example.test"},
        {"test", NULL},
        /* wildcard and exception */
        {"a.b.c.kawasaki.jp", "b.c.kawasaki.jp"},
        {"c.kawasaki.jp", NULL},
        {"www.city.kawasaki.jp", "city.kawasaki.jp"},
        {"city.kawasaki.jp", "city.kawasaki.jp"},
        /* private-section style suffix */
        {"x.blogspot.com", "x.blogspot.com"},
        {"a.x.blogspot.com", "x.blogspot.com"},
        {"blogspot.com", NULL},
        /* not names */
        {"", "!"},
        {"a..com", "!"},
        {".com", "!"},
    };
    ms_psl *p = psl_small();
    char out[256];
    size_t i;
    int rc;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rc = ms_psl_org_domain(p, cases[i].in, out, sizeof(out));
        if (cases[i].out == NULL) {
            if (rc != MS_ENOTFOUND)
                fail_msg("%s: rc %d, want MS_ENOTFOUND", cases[i].in, rc);
        } else if (strcmp(cases[i].out, "!") == 0) {
            if (rc != MS_EINVAL)
                fail_msg("%s: rc %d, want MS_EINVAL", cases[i].in, rc);
        } else if (rc != 0 || strcmp(out, cases[i].out) != 0) {
            fail_msg("%s: rc %d out %s, want %s", cases[i].in, rc, rc == 0 ? out : "-",
                     cases[i].out);
        }
    }
    ms_psl_free(p);
}

static void test_psl_debian(void **state)
{
    ms_psl *p;
    char out[256];

    if (access(MS_PSL_PATH, R_OK) != 0) {
        skip();
        return;
    }
    assert_int_equal(ms_psl_load(MS_PSL_PATH, &p), 0);
    assert_int_equal(ms_psl_org_domain(p, "mail.example.co.uk", out, sizeof(out)), 0);
    assert_string_equal(out, "example.co.uk");
    assert_int_equal(ms_psl_org_domain(p, "a.b.c.educ.ar", out, sizeof(out)), 0);
    assert_string_equal(out, "educ.ar"); /* !educ.ar exception */
    assert_int_equal(ms_psl_org_domain(p, "x.blogspot.com", out, sizeof(out)), 0);
    assert_string_equal(out, "x.blogspot.com");
    assert_int_equal(ms_psl_org_domain(p, "a.b.mailstream.test", out, sizeof(out)), 0);
    assert_string_equal(out, "mailstream.test");
    assert_int_equal(ms_psl_org_domain(p, "co.uk", out, sizeof(out)), MS_ENOTFOUND);
    ms_psl_free(p);
    assert_int_equal(ms_psl_load("/nonexistent/psl.dat", &p), MS_EIO);
    assert_null(p);
}

static void test_from_domain(void **state)
{
    static const struct {
        const char *value; /* From field value */
        const char *domain; /* NULL: error rc */
        int rc;
    } cases[] = {
        /* OpenDMARC test_finddomain.c */
        {"Joe Johnson <joe@joe.com>", "joe.com", 0},
        {"\"Johnson, Joe <joe@joe.com>\" joe@joe.com", "joe.com", 0},
        {"\"Joe Johnson\" <joe@joe.com>", "joe.com", 0},
        {"(Joe Johnson) joe@joe.com", "joe.com", 0},
        {"joe@joe.com", "joe.com", 0},
        {"<<<><joe@joe.com>>>", "joe.com", 0},
        /* two authors in different domains: RFC 7489 §6.6.1 (OpenDMARC
         * takes the first) */
        {"Joe Johnson <joe@joe.com>, ace@ace.com", NULL, MS_EPROTO},
        {"joe@joe.com, ace@ace.com", NULL, MS_EPROTO},
        {"Mail From:<joe@joe.com>", "joe.com", 0},
        {"\"Mandel, Bob\" <joe@joe.com>", "joe.com", 0},
        {"(,) joe@joe.com", "joe.com", 0},
        {"\"( bob@bob.com)\" joe@joe.com", "joe.com", 0},
        /* ours */
        {"a@Example.COM, b@example.com", "example.com", 0},
        {"<joe@sub.example.org.>", "sub.example.org", 0},
        {"Undisclosed:;", NULL, MS_ENOTFOUND},
        {"joe", NULL, MS_EPROTO},
        {"joe@[192.0.2.1]", NULL, MS_EPROTO},
        {"\"unterminated <joe@joe.com>", NULL, MS_EPROTO},
        {"(unterminated joe@joe.com", NULL, MS_EPROTO},
    };
    char msg[512], out[256];
    size_t i;
    int rc;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(msg, sizeof(msg), "Received: x\r\nFrom: %s\r\nTo: y@z\r\n\r\nFrom: body@x.y\r\n",
                 cases[i].value);
        rc = ms_dmarc_from_domain(msg, strlen(msg), out, sizeof(out));
        if (rc != cases[i].rc || (cases[i].domain && strcmp(out, cases[i].domain) != 0))
            fail_msg("case %zu %s: rc %d out %s", i, cases[i].value, rc, rc == 0 ? out : "-");
    }
    /* folded */
    strcpy(msg, "FROM : Joe\r\n <joe@fold.example>\r\n\r\n");
    assert_int_equal(ms_dmarc_from_domain(msg, strlen(msg), out, sizeof(out)), 0);
    assert_string_equal(out, "fold.example");
    /* none, and two fields */
    strcpy(msg, "To: a@b\r\n\r\nFrom: a@b\r\n");
    assert_int_equal(ms_dmarc_from_domain(msg, strlen(msg), out, sizeof(out)), MS_ENOTFOUND);
    strcpy(msg, "From: a@b.example\r\nFrom: a@b.example\r\n\r\n");
    assert_int_equal(ms_dmarc_from_domain(msg, strlen(msg), out, sizeof(out)), MS_EPROTO);
}

static void test_alignment(void **state)
{
    static const struct {
        const char *a, *b;
        int strict, aligned;
    } cases[] = {
        /* OpenDMARC test_alignment.c, judged by RFC 7489 §3.1 */
        {"a.b.c.bcx.com", "bcx.com", 0, 1},
        {"a.b.c.edu.ar", "edr.au", 1, 0},
        {"oooo.com", "ooo.com", 1, 0},
        {"a.foo.com", "b.foo.com", 0, 1},
        {"mac.com.", "mac.com", 1, 1},
        {"a.b.com", "b.com", 0, 1},
        {"b.com", "a.b.com", 0, 1},
        {"a.b.de", "a.b.de", 1, 1},
        /* ours */
        {"a.foo.com", "b.foo.com", 1, 0},
        {"A.Foo.Com", "a.foo.com", 1, 1},
        {"foo.com", "com", 0, 0},
        {"x.blogspot.com", "y.blogspot.com", 0, 0},
        {"a.x.blogspot.com", "x.blogspot.com", 0, 1},
        {"sub.example.test", "other.example.test", 0, 1},
        {"example.test", "example.org", 0, 0},
        {"", "example.org", 0, 0},
    };
    ms_psl *p = psl_small();
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (ms_dmarc_aligned(p, cases[i].a, cases[i].b, cases[i].strict) != cases[i].aligned)
            fail_msg("%s vs %s (%s): want %d", cases[i].a, cases[i].b,
                     cases[i].strict ? "strict" : "relaxed", cases[i].aligned);
    ms_psl_free(p);
}

/* ---- the evaluator against a DNS table ---- */

struct txt {
    const char *name;
    const char *data; /* NULL: TEMPFAIL; "": NXDOMAIN */
};

static const struct txt zone[] = {
    {"_dmarc.reject.example", "v=DMARC1; p=reject; rua=mailto:r@reject.example"},
    {"_dmarc.quar.example", "v=DMARC1; p=quarantine"},
    {"_dmarc.none.example", "v=DMARC1; p=none"},
    {"_dmarc.sp.example", "v=DMARC1; p=reject; sp=none"},
    {"_dmarc.strict.example", "v=DMARC1; p=reject; adkim=s; aspf=s"},
    {"_dmarc.half.example", "v=DMARC1; p=reject; pct=50"},
    {"_dmarc.bad.example", "v=DMARC1; p=bogus"},
    {"_dmarc.ruaonly.example", "v=DMARC1; rua=mailto:x@ruaonly.example"},
    {"_dmarc.multi.example", "v=DMARC1; p=reject"},
    {"_dmarc.multi.example", "v=DMARC1; p=none"},
    {"_dmarc.other.example", "v=spf1 -all"},
    {"_dmarc.tempfail.example", NULL},
    {"_dmarc.sub.reject.example", "v=DMARC1; p=none"},
};

struct eval {
    const char *from;
    const char *spf_domain;
    enum ms_spf_result spf;
    const char *dkim_d;
    enum ms_dkim_result dkim;
    unsigned sample;
    /* expected */
    enum ms_dmarc_result result;
    enum ms_dmarc_policy policy, disposition;
    int used_sp;
    const char *record_domain;
    int queries;
};

static void run_eval(const ms_psl *psl, const struct eval *e)
{
    struct ms_dmarc_request req;
    struct ms_dmarc_dkim dk = {e->dkim_d, "sel", e->dkim};
    struct ms_dns_query q;
    struct ms_dns_rr rr[4];
    struct ms_dns_result res;
    const struct ms_dmarc_outcome *o;
    ms_dmarc *d;
    size_t i;
    int queries = 0, tempfail;

    memset(&req, 0, sizeof(req));
    req.psl = psl;
    req.from_domain = e->from;
    req.spf_domain = e->spf_domain;
    req.spf = e->spf;
    req.dkim = e->dkim_d ? &dk : NULL;
    req.ndkim = e->dkim_d ? 1 : 0;
    req.sample = e->sample;
    assert_int_equal(ms_dmarc_new(&d, &req), 0);
    while (ms_dmarc_step(d, &q) == MS_DMARC_NEED_DNS) {
        assert_int_equal(q.type, MS_DNS_TXT);
        memset(&res, 0, sizeof(res));
        res.rr = rr;
        tempfail = 0;
        for (i = 0; i < sizeof(zone) / sizeof(zone[0]); i++) {
            if (strcmp(zone[i].name, q.name) != 0)
                continue;
            if (zone[i].data == NULL) {
                tempfail = 1;
                break;
            }
            rr[res.n].type = MS_DNS_TXT;
            rr[res.n].u.txt.data = zone[i].data;
            rr[res.n].u.txt.len = strlen(zone[i].data);
            res.n++;
        }
        res.status = tempfail ? MS_DNS_TEMPFAIL : res.n ? MS_DNS_OK : MS_DNS_NXDOMAIN;
        assert_int_equal(ms_dmarc_answer(d, &res), 0);
        queries++;
        assert_true(queries <= 2);
    }
    o = ms_dmarc_outcome(d);
    if (o->result != e->result || o->policy != e->policy || o->disposition != e->disposition ||
        o->used_sp != e->used_sp || strcmp(o->record_domain, e->record_domain) != 0 ||
        queries != e->queries)
        fail_msg("from=%s: result %s policy %s disposition %s sp %d record at '%s' queries %d "
                 "(problem %s)",
                 e->from, ms_dmarc_result_name(o->result), ms_dmarc_policy_name(o->policy),
                 ms_dmarc_policy_name(o->disposition), o->used_sp, o->record_domain, queries,
                 o->problem ? o->problem : "-");
    assert_int_equal(ms_dmarc_answer(d, &res), MS_EINVAL);
    ms_dmarc_free(d);
}

#define P_(x) MS_DMARC_POLICY_##x
static void test_evaluate(void **state)
{
    static const struct eval cases[] = {
        /* pass through SPF, through DKIM, relaxed */
        {"reject.example", "reject.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_PASS, P_(REJECT),
         P_(NONE), 0, "reject.example", 1},
        {"reject.example", "bounce.reject.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_PASS,
         P_(REJECT), P_(NONE), 0, "reject.example", 1},
        {"reject.example", "x.example", MS_SPF_FAIL, "mail.reject.example", MS_DKIM_PASS, 0,
         MS_DMARC_PASS, P_(REJECT), P_(NONE), 0, "reject.example", 1},
        /* fail with each policy */
        {"reject.example", "x.example", MS_SPF_PASS, "x.example", MS_DKIM_PASS, 0, MS_DMARC_FAIL,
         P_(REJECT), P_(REJECT), 0, "reject.example", 1},
        {"quar.example", "quar.example", MS_SPF_FAIL, "quar.example", MS_DKIM_FAIL, 0,
         MS_DMARC_FAIL, P_(QUARANTINE), P_(QUARANTINE), 0, "quar.example", 1},
        {"none.example", "", MS_SPF_NONE, NULL, 0, 0, MS_DMARC_FAIL, P_(NONE), P_(NONE), 0,
         "none.example", 1},
        /* subdomain: the Organizational Domain's record, sp */
        {"a.b.sp.example", "x.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_FAIL, P_(NONE),
         P_(NONE), 1, "sp.example", 2},
        {"a.quar.example", "x.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_FAIL, P_(QUARANTINE),
         P_(QUARANTINE), 0, "quar.example", 2},
        /* a subdomain with its own record: p of that record, no fallback */
        {"sub.reject.example", "x.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_FAIL, P_(NONE),
         P_(NONE), 0, "sub.reject.example", 1},
        /* sp at the org domain itself does not apply */
        {"sp.example", "x.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_FAIL, P_(REJECT),
         P_(REJECT), 0, "sp.example", 1},
        /* strict alignment */
        {"strict.example", "bounce.strict.example", MS_SPF_PASS, "mail.strict.example",
         MS_DKIM_PASS, 0, MS_DMARC_FAIL, P_(REJECT), P_(REJECT), 0, "strict.example", 1},
        {"strict.example", "x.example", MS_SPF_FAIL, "Strict.Example", MS_DKIM_PASS, 0,
         MS_DMARC_PASS, P_(REJECT), P_(NONE), 0, "strict.example", 1},
        /* pct: sampled in (sample < pct) and out */
        {"half.example", "x.example", MS_SPF_PASS, NULL, 0, 49, MS_DMARC_FAIL, P_(REJECT),
         P_(REJECT), 0, "half.example", 1},
        {"half.example", "x.example", MS_SPF_PASS, NULL, 0, 50, MS_DMARC_FAIL, P_(REJECT),
         P_(QUARANTINE), 0, "half.example", 1},
        /* missing record, at both levels */
        {"missing.example", "missing.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_NONE, P_(UNSET),
         P_(UNSET), 0, "", 1},
        {"a.missing.example", "x.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_NONE, P_(UNSET),
         P_(UNSET), 0, "", 2},
        /* not a DMARC record; several; malformed; p= missing but rua= */
        {"other.example", "x.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_NONE, P_(UNSET),
         P_(UNSET), 0, "", 1},
        {"multi.example", "x.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_NONE, P_(UNSET),
         P_(UNSET), 0, "", 1},
        {"bad.example", "x.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_PERMERROR, P_(UNSET),
         P_(UNSET), 0, "bad.example", 1},
        {"ruaonly.example", "x.example", MS_SPF_FAIL, NULL, 0, 0, MS_DMARC_FAIL, P_(NONE),
         P_(NONE), 0, "ruaonly.example", 1},
        /* DNS failure */
        {"tempfail.example", "tempfail.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_TEMPERROR,
         P_(UNSET), P_(UNSET), 0, "", 1},
        /* no From domain */
        {"", "x.example", MS_SPF_PASS, NULL, 0, 0, MS_DMARC_NONE, P_(UNSET), P_(UNSET), 0, "", 0},
    };
    ms_psl *p;
    size_t i;

    if (!ms_dmarc_available()) {
        print_message("libopendmarc is not linked in (add -lopendmarc): skipped\n");
        skip();
        return;
    }
    p = psl_small();
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_eval(p, &cases[i]);
    ms_psl_free(p);
}

static void test_from_error(void **state)
{
    struct ms_dmarc_request req;
    struct ms_dns_query q;
    ms_dmarc *d;
    ms_psl *p;

    if (!ms_dmarc_available()) {
        skip();
        return;
    }
    p = psl_small();
    memset(&req, 0, sizeof(req));
    req.psl = p;
    req.from_error = MS_EPROTO;
    assert_int_equal(ms_dmarc_new(&d, &req), 0);
    assert_int_equal(ms_dmarc_step(d, &q), MS_DMARC_DONE);
    assert_int_equal(ms_dmarc_outcome(d)->result, MS_DMARC_PERMERROR);
    ms_dmarc_free(d);
    req.psl = NULL;
    assert_int_equal(ms_dmarc_new(&d, &req), MS_EINVAL);
    ms_psl_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_psl_org_domain), cmocka_unit_test(test_psl_debian),
        cmocka_unit_test(test_from_domain),    cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_evaluate),       cmocka_unit_test(test_from_error),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
