/*
 * test_wk_tls_policy.c - worker/tls_policy.c: entries ("LEVEL match=...
 * ca_file=..."), good and bad; the map's lookup order (next hop, then the
 * recipient domain by ms_domainmap's rules, then the default); and the
 * decision per level and DANE state (Postfix's levels, RFC 7672 §2.2),
 * with match= names expanded.  Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ms_error.h"
#include "../../worker/tls_policy.h"

struct pcase {
    const char *in;
    int ok;
    enum wk_tls_level level;
    size_t nmatch;
    const char *ca_file;
    const char *err; /* a word the reason must hold */
};

static const struct pcase pcases[] = {
    {"may", 1, WK_TLS_LEVEL_MAY, 0, NULL, NULL},
    {"  none ", 1, WK_TLS_LEVEL_NONE, 0, NULL, NULL},
    {"encrypt", 1, WK_TLS_LEVEL_ENCRYPT, 0, NULL, NULL},
    {"dane", 1, WK_TLS_LEVEL_DANE, 0, NULL, NULL},
    {"dane-only ca_file=/x/ca.pem", 1, WK_TLS_LEVEL_DANE_ONLY, 0, "/x/ca.pem", NULL},
    {"verify match=hostname:nexthop", 1, WK_TLS_LEVEL_VERIFY, 2, NULL, NULL},
    {"secure match=.example.org:example.org ca_file=c.pem", 1, WK_TLS_LEVEL_SECURE, 2, "c.pem",
     NULL},
    {"", 0, 0, 0, NULL, "unknown level"},
    {"Verify", 0, 0, 0, NULL, "unknown level"},
    {"dane_only", 0, 0, 0, NULL, "unknown level"},
    {"may match=x.test", 0, 0, 0, NULL, "verify and secure"},
    {"dane match=x.test", 0, 0, 0, NULL, "verify and secure"},
    {"verify match=", 0, 0, 0, NULL, "nothing"},
    {"verify match=a::b", 0, 0, 0, NULL, "empty"},
    {"verify match=a:", 0, 0, 0, NULL, "empty"},
    {"verify match=a match=b", 0, 0, 0, NULL, "twice"},
    {"verify ca_file=", 0, 0, 0, NULL, "empty"},
    {"verify ca_file=a ca_file=b", 0, 0, 0, NULL, "twice"},
    {"verify tafile=x", 0, 0, 0, NULL, "unknown attribute"},
    {"verify match=a:b:c:d:e:f:g:h:i:j:k:l:m:n:o:p:q", 0, 0, 0, NULL, "more than"},
};

static void test_parse(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(pcases) / sizeof(pcases[0]); i++) {
        const struct pcase *c = &pcases[i];
        struct wk_tls_entry e;
        char err[256] = "";
        int r = wk_tls_entry_parse(c->in, &e, err, sizeof(err));

        if (!c->ok) {
            if (r != MS_EINVAL || strstr(err, c->err) == NULL)
                fail_msg("\"%s\": %d \"%s\", want the error \"%s\"", c->in, r, err, c->err);
            continue;
        }
        if (r != 0)
            fail_msg("\"%s\": %d \"%s\"", c->in, r, err);
        assert_int_equal(e.level, c->level);
        assert_int_equal(e.nmatch, c->nmatch);
        if (c->ca_file)
            assert_string_equal(e.ca_file, c->ca_file);
        else
            assert_null(e.ca_file);
        wk_tls_entry_clear(&e);
    }
    assert_string_equal(wk_tls_level_name(WK_TLS_LEVEL_DANE_ONLY), "dane-only");
    assert_int_equal(wk_tls_level_parse("secure", 6), WK_TLS_LEVEL_SECURE);
}

static void test_map(void **state)
{
    char err[256];
    wk_tls_map *m;
    const char *key;

    (void)state;
    assert_null(wk_tls_map_new("sometimes", err, sizeof(err)));
    assert_non_null(strstr(err, "unknown level"));
    m = wk_tls_map_new("may", err, sizeof(err));
    assert_non_null(m);
    assert_false(wk_tls_map_wants_dane(m));
    assert_int_equal(wk_tls_map_add(m, "example.org secure match=.example.org", err,
                                     sizeof(err)), 0);
    assert_int_equal(wk_tls_map_add(m, ".example.org dane-only", err, sizeof(err)), 0);
    assert_int_equal(wk_tls_map_add(m, "[relay.test]:587 encrypt", err, sizeof(err)), 0);
    assert_int_equal(wk_tls_map_add(m, "legacy.test=verify", err, sizeof(err)), 0);
    assert_int_equal(wk_tls_map_add(m, "Example.ORG none", err, sizeof(err)), MS_EINVAL);
    assert_non_null(strstr(err, "twice"));
    assert_int_equal(wk_tls_map_add(m, "bad..name may", err, sizeof(err)), MS_EINVAL);
    assert_int_equal(wk_tls_map_add(m, "nolevel.test", err, sizeof(err)), MS_EINVAL);
    assert_int_equal(wk_tls_map_add(m, "x.test sometimes", err, sizeof(err)), MS_EINVAL);
    assert_int_equal(wk_tls_map_size(m), 4);
    assert_true(wk_tls_map_wants_dane(m));
    assert_int_equal(wk_tls_map_entry(m, 2, &key)->level, WK_TLS_LEVEL_ENCRYPT);
    assert_string_equal(key, "[relay.test]:587");

    assert_int_equal(wk_tls_map_find(m, "EXAMPLE.org.", NULL)->level, WK_TLS_LEVEL_SECURE);
    assert_int_equal(wk_tls_map_find(m, "mx.example.org", NULL)->level,
                     WK_TLS_LEVEL_DANE_ONLY);
    assert_int_equal(wk_tls_map_find(m, "legacy.test", NULL)->level, WK_TLS_LEVEL_VERIFY);
    assert_int_equal(wk_tls_map_find(m, "other.test", NULL)->level, WK_TLS_LEVEL_MAY);
    assert_ptr_equal(wk_tls_map_find(m, "other.test", NULL), wk_tls_map_default(m));
    /* A next hop by its own key first; an unlisted one falls back to the
     * recipient domain. */
    assert_int_equal(wk_tls_map_find(m, "example.org", "[relay.test]:587")->level,
                     WK_TLS_LEVEL_ENCRYPT);
    assert_int_equal(wk_tls_map_find(m, "example.org", "[relay.test]:25")->level,
                     WK_TLS_LEVEL_SECURE);
    assert_int_equal(wk_tls_map_add(m, "[relay.test] verify", err, sizeof(err)), 0);
    assert_int_equal(wk_tls_map_find(m, "example.org", "[relay.test]:25")->level,
                     WK_TLS_LEVEL_VERIFY);
    assert_int_equal(wk_tls_map_find(m, "example.org", "[relay.test]:587")->level,
                     WK_TLS_LEVEL_ENCRYPT);
    wk_tls_map_free(m);
}

struct dcase {
    const char *entry;
    enum wk_dane_state dane;
    enum wk_tls_policy tls;
    int dane_used;
    int defers;
    const char *names; /* the match list joined by ' ' */
};

static const struct dcase dcases[] = {
    {"none", WK_DANE_USABLE, WK_TLS_NONE, 0, 0, ""},
    {"may", WK_DANE_USABLE, WK_TLS_MAY, 0, 0, ""},
    {"encrypt", WK_DANE_FAILED, WK_TLS_ENCRYPT, 0, 0, ""},
    /* dane: RFC 7672 §2.2 */
    {"dane", WK_DANE_USABLE, WK_TLS_VERIFY, 1, 0, "example.org"},
    {"dane", WK_DANE_UNUSABLE, WK_TLS_ENCRYPT, 0, 0, ""},
    {"dane", WK_DANE_NONE, WK_TLS_MAY, 0, 0, ""},
    {"dane", WK_DANE_FAILED, WK_TLS_VERIFY, 0, 1, ""},
    {"dane-only", WK_DANE_USABLE, WK_TLS_VERIFY, 1, 0, "example.org"},
    {"dane-only", WK_DANE_UNUSABLE, WK_TLS_ENCRYPT, 0, 1, ""},
    {"dane-only", WK_DANE_NONE, WK_TLS_VERIFY, 0, 1, ""},
    {"dane-only", WK_DANE_FAILED, WK_TLS_VERIFY, 0, 1, ""},
    /* verify and secure: names; DANE plays no part */
    {"verify", WK_DANE_USABLE, WK_TLS_VERIFY, 0, 0, ""},
    {"verify match=hostname:nexthop", WK_DANE_NONE, WK_TLS_VERIFY, 0, 0,
     "mx1.example.net example.org"},
    {"secure", WK_DANE_NONE, WK_TLS_VERIFY, 0, 0, "example.org .example.org"},
    {"secure match=.example.net:mail.test:dot-nexthop", WK_DANE_NONE, WK_TLS_VERIFY, 0, 0,
     ".example.net mail.test .example.org"},
};

static void test_decide(void **state)
{
    size_t i, k;

    (void)state;
    for (i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
        const struct dcase *c = &dcases[i];
        struct wk_tls_entry e;
        struct wk_tls_decision d;
        char err[128], names[512] = "";

        assert_int_equal(wk_tls_entry_parse(c->entry, &e, err, sizeof(err)), 0);
        wk_tls_decide(&e, "mx1.example.net", "example.org", c->dane, &d);
        for (k = 0; k < d.nmatch; k++)
            snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                     k ? " " : "", d.match[k]);
        if (d.tls != c->tls || d.dane != c->dane_used || (d.defer != NULL) != c->defers ||
            strcmp(names, c->names) != 0)
            fail_msg("%s with TLSA %s: tls %d dane %d defer %s names \"%s\"", c->entry,
                     wk_dane_state_name(c->dane), d.tls, d.dane, d.defer ? d.defer : "-",
                     names);
        assert_int_equal(d.level, e.level);
        wk_tls_entry_clear(&e);
    }
}

/* DANE for a next hop that is its own TLSA base domain: no second name. */
static void test_decide_dane_same_name(void **state)
{
    struct wk_tls_entry e;
    struct wk_tls_decision d;
    char err[64];

    (void)state;
    assert_int_equal(wk_tls_entry_parse("dane-only", &e, err, sizeof(err)), 0);
    wk_tls_decide(&e, "relay.test", "RELAY.test", WK_DANE_USABLE, &d);
    assert_int_equal(d.nmatch, 0);
    assert_true(d.dane);
    wk_tls_entry_clear(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_decide),
        cmocka_unit_test(test_decide_dane_same_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
