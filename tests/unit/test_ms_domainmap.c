/*
 * test_ms_domainmap.c - lib/mail/ms_domainmap.c: the key forms and their
 * normalisation, the lookup order (exact, closest ".parent", "*"), next-hop
 * keys found only by themselves, replacing a value, a map of thousands of
 * keys (the hash table growing), and the same rules over a key array
 * (ms_domain_match).  Table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ms_domainmap.h"
#include "ms_error.h"

struct kcase {
    const char *in;
    int kind;          /* or a negative error */
    const char *out;   /* normalised, when kind >= 0 */
};

static const struct kcase kcases[] = {
    {"example.org", MS_DOMAINMAP_EXACT, "example.org"},
    {"Example.ORG.", MS_DOMAINMAP_EXACT, "example.org"},
    {"localhost", MS_DOMAINMAP_EXACT, "localhost"},
    {"_dmarc.x-y.example", MS_DOMAINMAP_EXACT, "_dmarc.x-y.example"},
    {".Example.org", MS_DOMAINMAP_PARENT, ".example.org"},
    {".example.org.", MS_DOMAINMAP_PARENT, ".example.org"},
    {"*", MS_DOMAINMAP_ANY, "*"},
    {"[MX.example.org]", MS_DOMAINMAP_NEXTHOP, "[mx.example.org]"},
    {"[mx.example.org]:25", MS_DOMAINMAP_NEXTHOP, "[mx.example.org]:25"},
    {"[192.0.2.1]:65535", MS_DOMAINMAP_NEXTHOP, "[192.0.2.1]:65535"},
    {"[IPv6:2001:DB8::1]:587", MS_DOMAINMAP_NEXTHOP, "[2001:db8::1]:587"},
    {"", MS_EINVAL, NULL},
    {".", MS_EINVAL, NULL},
    {"..example.org", MS_EINVAL, NULL},
    {"a..example", MS_EINVAL, NULL},
    {"exa mple.org", MS_EINVAL, NULL},
    {"*.example.org", MS_EINVAL, NULL},
    {"**", MS_EINVAL, NULL},
    {"user@example.org", MS_EINVAL, NULL},
    {"[mx.example.org", MS_EINVAL, NULL},
    {"[]:25", MS_EINVAL, NULL},
    {"[mx.example.org]25", MS_EINVAL, NULL},
    {"[mx.example.org]:", MS_EINVAL, NULL},
    {"[mx.example.org]:0", MS_EINVAL, NULL},
    {"[mx.example.org]:025", MS_EINVAL, NULL},
    {"[mx.example.org]:65536", MS_EINVAL, NULL},
    {"[mx.example.org]:2x", MS_EINVAL, NULL},
};

static void test_keys(void **state)
{
    char out[MS_DOMAINMAP_KEY_MAX + 1], name[MS_DNS_NAME_MAX + 3];
    size_t i;
    int k;

    (void)state;
    for (i = 0; i < sizeof(kcases) / sizeof(kcases[0]); i++) {
        k = ms_domainmap_key(kcases[i].in, strlen(kcases[i].in), out, sizeof(out));
        if (k != kcases[i].kind)
            fail_msg("\"%s\": kind %d, want %d", kcases[i].in, k, kcases[i].kind);
        if (k >= 0)
            assert_string_equal(out, kcases[i].out);
    }
    /* Only the first len octets count. */
    assert_int_equal(ms_domainmap_key("a.example junk", 9, out, sizeof(out)), MS_DOMAINMAP_EXACT);
    assert_string_equal(out, "a.example");
    /* MS_DNS_NAME_MAX octets is a name, one more is not. */
    memset(name, 'a', sizeof(name));
    for (i = 63; i < MS_DNS_NAME_MAX; i += 64)
        name[i] = '.';
    assert_int_equal(ms_domainmap_key(name, MS_DNS_NAME_MAX, out, sizeof(out)), MS_DOMAINMAP_EXACT);
    assert_int_equal(strlen(out), MS_DNS_NAME_MAX);
    assert_int_equal(ms_domainmap_key(name, MS_DNS_NAME_MAX + 1, out, sizeof(out)), MS_EINVAL);
    /* A buffer too small is told apart from a bad key. */
    assert_int_equal(ms_domainmap_key("example.org", 11, out, 11), MS_ETOOBIG);
    assert_int_equal(ms_domainmap_key("[mx]:25", 7, out, 7), MS_ETOOBIG);
}

static int v[6];

static const char *val_name(const struct ms_domainmap_entry *e)
{
    static const char *const names[] = {"exact", "parent", "deep", "any", "hop", "hop25"};

    return e == NULL ? "none" : names[(int *)e->value - v];
}

struct lcase {
    const char *domain;
    const char *want;
};

static const struct lcase lcases[] = {
    {"example.org", "exact"},
    {"EXAMPLE.Org.", "exact"},
    {"mx.example.org", "parent"},
    {"a.b.example.org", "parent"},
    {"deep.example.org", "parent"},   /* ".deep.example.org" is below it */
    {"x.deep.example.org", "deep"},
    {"y.x.Deep.Example.org.", "deep"},
    {"example.net", "any"},
    {"org", "any"},
    {"", "any"},
    {".", "any"},
    {"mx.example.org]:25", "any"},
    {"[mx.example.org]", "any"},      /* next hops are not looked up as domains */
};

static void test_lookup(void **state)
{
    ms_domainmap *m = ms_domainmap_new();
    char longname[MS_DNS_NAME_MAX + 2];
    void *old = &old;
    size_t i;

    (void)state;
    assert_null(ms_domainmap_lookup(m, "example.org"));
    assert_int_equal(ms_domainmap_put(m, "example.org", 11, &v[0], &old), MS_DOMAINMAP_EXACT);
    assert_null(old);
    assert_int_equal(ms_domainmap_put(m, ".example.org", 12, &v[1], NULL), MS_DOMAINMAP_PARENT);
    assert_int_equal(ms_domainmap_put(m, ".DEEP.example.org.", 18, &v[2], NULL),
                     MS_DOMAINMAP_PARENT);
    assert_int_equal(ms_domainmap_put(m, "[mx.example.org]", 16, &v[4], NULL),
                     MS_DOMAINMAP_NEXTHOP);
    assert_int_equal(ms_domainmap_put(m, "[mx.example.org]:25", 19, &v[5], NULL),
                     MS_DOMAINMAP_NEXTHOP);
    /* Without "*" nothing else matches. */
    assert_null(ms_domainmap_lookup(m, "example.net"));
    assert_int_equal(ms_domainmap_put(m, "*", 1, &v[3], NULL), MS_DOMAINMAP_ANY);
    assert_int_equal(ms_domainmap_put(m, "bad key", 7, &v[3], NULL), MS_EINVAL);
    assert_int_equal(ms_domainmap_size(m), 6);
    for (i = 0; i < sizeof(lcases) / sizeof(lcases[0]); i++) {
        const char *got = val_name(ms_domainmap_lookup(m, lcases[i].domain));
        if (strcmp(got, lcases[i].want) != 0)
            fail_msg("\"%s\": %s, want %s", lcases[i].domain, got, lcases[i].want);
    }
    /* Longer than a name: nothing, not even "*". */
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_null(ms_domainmap_lookup(m, longname));
    /* The matched entry names its key. */
    assert_string_equal(ms_domainmap_lookup(m, "x.deep.example.org")->key, ".deep.example.org");
    /* Next hops: only by their own key, normalised first. */
    assert_string_equal(val_name(ms_domainmap_get(m, "[MX.example.org]")), "hop");
    assert_string_equal(val_name(ms_domainmap_get(m, "[mx.example.org]:25")), "hop25");
    assert_null(ms_domainmap_get(m, "[mx.example.org]:26"));
    assert_null(ms_domainmap_get(m, "mx.example.org"));
    assert_string_equal(val_name(ms_domainmap_get(m, "Example.org.")), "exact");
    assert_null(ms_domainmap_get(m, "sub.example.org"));
    assert_null(ms_domainmap_get(m, "bad key"));
    /* A value may be NULL: the entry is still found. */
    assert_int_equal(ms_domainmap_put(m, "null.test", 9, NULL, NULL), MS_DOMAINMAP_EXACT);
    assert_non_null(ms_domainmap_lookup(m, "null.test"));
    assert_null(ms_domainmap_lookup(m, "null.test")->value);
    ms_domainmap_free(m);
    assert_null(ms_domainmap_lookup(NULL, "x"));
    assert_int_equal(ms_domainmap_size(NULL), 0);
}

static void test_replace(void **state)
{
    ms_domainmap *m = ms_domainmap_new();
    void *old = NULL;

    (void)state;
    ms_domainmap_put(m, "a.test", 6, &v[0], NULL);
    ms_domainmap_put(m, "b.test", 6, &v[1], NULL);
    /* Another spelling of the same key replaces the value in place. */
    assert_int_equal(ms_domainmap_put(m, "A.TEST.", 7, &v[2], &old), MS_DOMAINMAP_EXACT);
    assert_ptr_equal(old, &v[0]);
    assert_int_equal(ms_domainmap_size(m), 2);
    assert_string_equal(ms_domainmap_at(m, 0)->key, "a.test");
    assert_ptr_equal(ms_domainmap_at(m, 0)->value, &v[2]);
    assert_string_equal(ms_domainmap_at(m, 1)->key, "b.test");
    assert_null(ms_domainmap_at(m, 2));
    ms_domainmap_free(m);
}

/* Thousands of keys: every one is found after the table has doubled many
 * times, in the order it was added, and near misses are not. */
#define MANY 5000

static void test_many(void **state)
{
    ms_domainmap *m = ms_domainmap_new();
    char key[64];
    size_t i;

    (void)state;
    for (i = 0; i < MANY; i++) {
        snprintf(key, sizeof(key), "%sd%zu.example", i % 2 ? "." : "", i);
        assert_true(ms_domainmap_put(m, key, strlen(key), (void *)(uintptr_t)(i + 1), NULL) >= 0);
    }
    assert_int_equal(ms_domainmap_size(m), MANY);
    for (i = 0; i < MANY; i++) {
        const struct ms_domainmap_entry *e;

        snprintf(key, sizeof(key), "%sd%zu.example", i % 2 ? "x." : "", i);
        e = ms_domainmap_lookup(m, key);
        if (e == NULL || (uintptr_t)e->value != i + 1)
            fail_msg("%s: not found", key);
        assert_ptr_equal(ms_domainmap_at(m, i), e);
        /* An odd key is ".d<i>.example": the name itself is not below it. */
        if (i % 2) {
            snprintf(key, sizeof(key), "d%zu.example", i);
            assert_null(ms_domainmap_lookup(m, key));
        }
    }
    assert_null(ms_domainmap_lookup(m, "d5000.example"));
    ms_domainmap_free(m);
}

static void test_key_array(void **state)
{
    static const char *const keys[] = {"example.org", ".example.org", ".deep.example.org", "*"};
    static const char *const nostar[] = {"a.test"};

    (void)state;
    assert_int_equal(ms_domain_match(keys, 4, "Example.ORG."), 0);
    assert_int_equal(ms_domain_match(keys, 4, "mx.example.org"), 1);
    assert_int_equal(ms_domain_match(keys, 4, "x.deep.example.org"), 2);
    assert_int_equal(ms_domain_match(keys, 4, "deep.example.org"), 1);
    assert_int_equal(ms_domain_match(keys, 4, "other.net"), 3);
    assert_int_equal(ms_domain_match(keys, 4, ""), 3);
    assert_int_equal(ms_domain_match(nostar, 1, "b.test"), -1);
    assert_int_equal(ms_domain_match(nostar, 1, "x.a.test"), -1);
    assert_int_equal(ms_domain_match(nostar, 0, "a.test"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_replace),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_key_array),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
