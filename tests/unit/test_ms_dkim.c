/*
 * Unit tests for lib/mail/ms_dkim*: parsers and canonicalization (tables),
 * verification against the RFC 8463 / RFC 6376 vectors and the dkimpy data
 * in $MAILSTREAM_TESTDATA/dkim (default ../shared/testdata, relative to the
 * repository root where tests run), and sign/verify round trips.  Key
 * records are served by an in-memory resolver: no network.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dkim_canon_ref.h"
#include "ms_buf.h"
#include "ms_dkim.h"
#include "ms_error.h"
#include "ms_mem.h"
#include "testdata.h"

#define NOW 1700000000 /* after every vector's t=, none has x= */

/* ------------------------------------------------------------------------
 * Helpers: test data, LF -> CRLF, an in-memory resolver
 * ------------------------------------------------------------------------ */

/* Every vector below is under dkim/ (testdata.h: skipped or, under CI,
 * failed when absent). */
#define NEED_TESTDATA() TESTDATA_NEED("dkim/rfc-examples/rfc8463-A.3-signed.eml")

static char *slurp(const char *rel, size_t *len)
{
    char *p = ms_asprintf("%s/dkim/%s", testdata_dir(), rel);
    FILE *f = fopen(p, "rb");
    char *buf;
    long n;

    if (f == NULL)
        fail_msg("cannot open %s", p);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = ms_malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    free(p);
    *len = (size_t)n;
    return buf;
}

/* LF -> CRLF unless already CRLF (README: most message files use LF). */
static char *crlf(const char *s, size_t len, size_t *out)
{
    char *r = ms_malloc(2 * len + 1);
    size_t m = 0;

    for (size_t k = 0; k < len; k++) {
        if (s[k] == '\n' && (k == 0 || s[k - 1] != '\r'))
            r[m++] = '\r';
        r[m++] = s[k];
    }
    r[m] = '\0';
    *out = m;
    return r;
}

static char *slurp_msg(const char *rel, size_t *len)
{
    size_t n;
    char *raw = slurp(rel, &n), *m = crlf(raw, n, len);

    free(raw);
    return m;
}

/* A key record file: one line, no trailing newline wanted. */
static char *slurp_txt(const char *rel)
{
    size_t n;
    char *s = slurp(rel, &n);

    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

struct rec {
    const char *name;
    enum ms_dns_status st;
    const char *txt;
};

/* Run the verifier to completion against the table, taking keys from
 * `keys` (NULL: none); unknown names are NXDOMAIN.  Counts the queries. */
static ms_dkim_verify *verify_with_keys(const char *msg, size_t len, int64_t now,
                                        const struct rec *recs, size_t nrecs, int *queries,
                                        ms_dkim_keycache *keys)
{
    ms_dkim_verify *v = ms_dkim_verify_new(msg, len, now);
    struct ms_dns_query q;
    int nq = 0;

    ms_dkim_verify_use_keycache(v, keys);
    while (ms_dkim_verify_step(v, &q) == MS_DKIM_NEED_DNS) {
        struct ms_dns_result r = {.status = MS_DNS_NXDOMAIN};
        struct ms_dns_rr rr;

        assert_int_equal(q.type, MS_DNS_TXT);
        nq++;
        assert_true(nq < 100);
        for (size_t k = 0; k < nrecs; k++) {
            if (strcasecmp(recs[k].name, q.name) != 0)
                continue;
            r.status = recs[k].st;
            if (recs[k].txt != NULL) {
                rr.type = MS_DNS_TXT;
                rr.u.txt.data = recs[k].txt;
                rr.u.txt.len = strlen(recs[k].txt);
                r.n = 1;
                r.rr = &rr;
            }
            break;
        }
        assert_int_equal(ms_dkim_verify_answer(v, &r), 0);
    }
    if (queries)
        *queries = nq;
    return v;
}

static ms_dkim_verify *verify_with(const char *msg, size_t len, int64_t now, const struct rec *recs,
                                   size_t nrecs, int *queries)
{
    return verify_with_keys(msg, len, now, recs, nrecs, queries, NULL);
}

static enum ms_dkim_result result_of(const ms_dkim_verify *v, size_t i)
{
    const struct ms_dkim_sigresult *r = ms_dkim_verify_sig(v, i);

    assert_non_null(r);
    if (r->result != MS_DKIM_PASS)
        printf("    sig %zu d=%s s=%s a=%s: %s (%s)\n", i, r->d, r->s, r->a,
               ms_dkim_result_name(r->result), r->reason);
    return r->result;
}

/* The field with its folding removed, for substring checks. */
static char *unfold(const char *h)
{
    char *r = ms_strdup(h), *w = r;

    for (const char *p = h; *p; p++) {
        if (p[0] == '\r' && p[1] == '\n' && p[2] == ' ') {
            p += 2;
            continue;
        }
        *w++ = *p;
    }
    *w = '\0';
    return r;
}

static char *concat(const char *a, const char *b, size_t *len)
{
    char *s = ms_asprintf("%s%s", a, b);

    *len = strlen(s);
    return s;
}

/* ------------------------------------------------------------------------
 * Tag lists and DKIM-Signature parsing
 * ------------------------------------------------------------------------ */

static void test_taglist(void **state)
{
    static const struct {
        const char *in;
        int n;          /* tags, or a negative error */
        const char *v0; /* value of the first tag */
    } cases[] = {
        {"", 0, NULL},
        {"a=b", 1, "b"},
        {"a=b;", 1, "b"},
        {" a = b ; c=d ;", 2, "b"},
        {"a=b c\r\n d", 1, "b c\r\n d"},
        {"a=\r\n\tb;\r\n c=", 2, "b"},
        {"a=", 1, ""},
        {"a_1=x", 1, "x"},
        {"a=b;a=c", MS_EPROTO, NULL},  /* duplicate */
        {"a=b;;c=d", MS_EPROTO, NULL}, /* empty tag-spec */
        {"1a=b", MS_EPROTO, NULL},     /* bad name */
        {"a b=c", MS_EPROTO, NULL},
        {"ab", MS_EPROTO, NULL},            /* no '=' */
        {"a=b\r\nc=d", MS_EPROTO, NULL},    /* CRLF not followed by WSP */
        {"a=b\nc", MS_EPROTO, NULL},        /* bare LF */
        {"a=caf\xc3\xa9", MS_EPROTO, NULL}, /* 8-bit */
        {"a=x\r\n", MS_EPROTO, NULL},
        {"A=1;a=2", 2, "1"}, /* tag names are case-sensitive */
    };
    struct ms_dkim_tag tags[8];

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *why = NULL;
        int n = ms_dkim_taglist_parse(cases[k].in, strlen(cases[k].in), tags, 8, &why);

        if (n != cases[k].n)
            fail_msg("case %zu \"%s\": got %d want %d", k, cases[k].in, n, cases[k].n);
        if (n > 0 && cases[k].v0) {
            assert_int_equal(tags[0].value_len, strlen(cases[k].v0));
            assert_memory_equal(tags[0].value, cases[k].v0, tags[0].value_len);
        }
        if (n < 0)
            assert_non_null(why);
    }
    /* Limits: more tags than room, and the overall length. */
    {
        const char *why;
        char *big = ms_malloc(MS_DKIM_TAGLIST_MAX + 10);

        assert_int_equal(ms_dkim_taglist_parse("a=1;b=2;c=3", 11, tags, 2, &why), MS_ETOOBIG);
        memset(big, 'x', MS_DKIM_TAGLIST_MAX + 10);
        big[0] = 'a';
        big[1] = '=';
        assert_int_equal(ms_dkim_taglist_parse(big, MS_DKIM_TAGLIST_MAX + 1, tags, 8, &why),
                         MS_ETOOBIG);
        free(big);
    }
}

#define SIG_OK                                                                                     \
    "v=1; a=rsa-sha256; d=example.com; s=sel; h=From:To; "                                         \
    "bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA"

static void test_sig_parse(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *why; /* substring of the reason */
    } cases[] = {
        {SIG_OK, 0, NULL},
        {SIG_OK "; c=relaxed", 0, NULL},
        {SIG_OK "; c=relaxed/simple; q=dns/txt; t=1; x=2; l=0; i=a@sub.example.com; z=x", 0, NULL},
        {SIG_OK "; foo=bar", 0, NULL}, /* unknown tag ignored */
        {SIG_OK "; q=dns/txt:other", 0, NULL},
        {SIG_OK "; v=1", MS_EPROTO, "duplicate"},
        {SIG_OK "; d=x.org", MS_EPROTO, "duplicate"},
        {"a=rsa-sha256; d=example.com; s=sel; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "missing v="},
        {"v=2; a=rsa-sha256; d=example.com; s=sel; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "version"},
        {"v=1; d=example.com; s=sel; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "missing a="},
        {"v=1; a=rsa-sha256; s=sel; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "missing d="},
        {"v=1; a=rsa-sha256; d=example.com; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "missing s="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; bh=AAAA; b=AAAA", MS_EPROTO, "missing h="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=From; b=AAAA", MS_EPROTO, "missing bh="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=From; bh=AAAA", MS_EPROTO, "missing b="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=From; bh=AAAA; b=", MS_EPROTO, "empty b="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=To:Subject; bh=AAAA; b=AAAA", MS_EPROTO,
         "From"},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=From::To; bh=AAAA; b=AAAA", MS_EPROTO, "h="},
        {SIG_OK "; i=joe@football.example.com", 0, NULL}, /* subdomain of d= */
        {SIG_OK "; i=joe@example.net", MS_EPROTO, "i= not within d="},
        {SIG_OK "; i=joe@notexample.com", MS_EPROTO, "i= not within d="},
        {SIG_OK "; i=joe", MS_EPROTO, "bad i="},
        /* i= is dkim-quoted-printable (§3.5, §2.11). */
        {SIG_OK "; i=joe@example=2Ecom", 0, NULL},
        {SIG_OK "; i=joe=40example.com", 0, NULL},
        {SIG_OK "; i=joe=40football=2Eexample=2Ecom", 0, NULL},
        {SIG_OK "; i=j=3Do=3Be@example.com", 0, NULL},      /* '=' and ';' themselves */
        {SIG_OK "; i=jo\r\n e@exam\r\n\tple.com", 0, NULL}, /* FWS is not part of it */
        {SIG_OK "; i=joe=40example=2Enet", MS_EPROTO, "i= not within d="},
        {SIG_OK "; i=joe=40notexample.com", MS_EPROTO, "i= not within d="},
        {SIG_OK "; i=joe@example=2Ecom=", MS_EPROTO, "bad i="},
        {SIG_OK "; i=joe=4@example.com", MS_EPROTO, "bad i="},
        {SIG_OK "; i=joe=40example=2ecom", MS_EPROTO, "bad i="},    /* lower-case hex */
        {SIG_OK "; i=joe=\r\n 40example.com", MS_EPROTO, "bad i="}, /* soft line break */
        {SIG_OK "; i=joe=4\r\n 0example.com", MS_EPROTO, "bad i="}, /* FWS inside =XX */
        {SIG_OK "; i=joe=00@example.com", MS_EPROTO, "bad i="},     /* NUL */
        {SIG_OK "; i=joe=0D=0A@example.com", MS_EPROTO, "bad i="},  /* CR LF */
        {SIG_OK "; i=joe@exa=20mple.com", MS_EPROTO, "bad i="},     /* not a domain */
        {SIG_OK "; i=joe=40", MS_EPROTO, "bad i="},
        {SIG_OK "; c=fancy", MS_EPROTO, "canonicalization"},
        {SIG_OK "; c=relaxed/fancy", MS_EPROTO, "canonicalization"},
        {SIG_OK "; q=http", MS_EPROTO, "query"},
        {SIG_OK "; l=-1", MS_EPROTO, "l="},
        {SIG_OK "; l=12a", MS_EPROTO, "l="},
        {SIG_OK "; t=10; x=9", MS_EPROTO, "x= before t="},
        {SIG_OK "; t=1234567890123456789", MS_EPROTO, "t="},
        {"v=1; a=rsa-sha256; d=exa mple.com; s=sel; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "d="},
        {"v=1; a=rsa-sha256; d=example..com; s=sel; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "d="},
        {"v=1; a=rsa-sha256; d=example.com; s=se/l; h=From; bh=AAAA; b=AAAA", MS_EPROTO, "s="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=From; bh=AAAA; b=A!AA", MS_EPROTO, "b="},
        {"v=1; a=rsa-sha256; d=example.com; s=sel; h=From; bh=AA=A; b=AAAA", MS_EPROTO, "bh="},
    };
    struct ms_dkim_sig *sig = ms_malloc(sizeof(*sig));

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *why = NULL;
        int rc = ms_dkim_sig_parse(cases[k].in, strlen(cases[k].in), sig, &why);

        if (rc != cases[k].rc ||
            (cases[k].why && (why == NULL || strstr(why, cases[k].why) == NULL)))
            fail_msg("case %zu \"%s\": got %d (%s) want %d (%s)", k, cases[k].in, rc,
                     why ? why : "-", cases[k].rc, cases[k].why ? cases[k].why : "-");
    }

    /* Field values of a full signature. */
    {
        const char *s = "v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n d=Football.Example.com; "
                        "i=@football.example.com;\r\n q=dns/txt; s=brisbane; t=1528637909; "
                        "h=from : to :\r\n subject : date : from; l=42;\r\n"
                        " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                        " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
                        " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";
        const char *why;

        assert_int_equal(ms_dkim_sig_parse(s, strlen(s), sig, &why), 0);
        assert_int_equal(sig->alg, MS_DKIM_ED25519_SHA256);
        assert_string_equal(sig->d, "football.example.com");
        assert_string_equal(sig->s, "brisbane");
        assert_string_equal(sig->i, "@football.example.com");
        assert_int_equal(sig->hcanon, MS_DKIM_RELAXED);
        assert_int_equal(sig->bcanon, MS_DKIM_RELAXED);
        assert_int_equal(sig->nh, 5);
        assert_string_equal(sig->h[2], "subject");
        assert_int_equal(sig->t, 1528637909);
        assert_int_equal(sig->x, -1);
        assert_int_equal(sig->l, 42);
        assert_int_equal(sig->bh_len, 32);
        assert_int_equal(sig->b_len, 64);
        assert_string_equal(sig->b_prefix, "/gCrinpcQOoI");
        /* b= spans from after '=' to the end (surrounding FWS included). */
        assert_int_equal(sig->b_vend, strlen(s));
        assert_memory_equal(s + sig->b_vstart - 2, "b=/gCr", 6);
    }
    /* i= is kept decoded; its limit counts decoded octets. */
    {
        static const struct {
            const char *i, *want;
        } dec[] = {
            {"jlong@example=2Ecom", "jlong@example.com"},
            {"jlong=40example.com", "jlong@example.com"},
            {"j=3Do=3Be=40mail=2EExample.com", "j=o;e@mail.Example.com"},
            {"jo\r\n e@exam\r\n\tple.com", "joe@example.com"},
            {"=22j=20l=22=40example.com", "\"j l\"@example.com"},
            {"@example.com", "@example.com"},
        };
        struct ms_buf b;
        const char *why;

        for (size_t k = 0; k < sizeof(dec) / sizeof(dec[0]); k++) {
            char *in = ms_asprintf("%s; i=%s", SIG_OK, dec[k].i);

            assert_int_equal(ms_dkim_sig_parse(in, strlen(in), sig, &why), 0);
            assert_string_equal(sig->i, dec[k].want);
            free(in);
        }
        /* MS_DKIM_IDENTITY_MAX decoded octets, written three times as long,
         * pass; one more is refused. */
        ms_buf_init(&b, 1 << 16);
        ms_buf_appendf(&b, "%s; i=", SIG_OK);
        for (size_t k = 0; k < MS_DKIM_IDENTITY_MAX - strlen("@example.com"); k++)
            ms_buf_appendf(&b, "=61");
        ms_buf_appendf(&b, "@example.com");
        assert_int_equal(ms_dkim_sig_parse(b.data, b.len, sig, &why), 0);
        assert_int_equal(strlen(sig->i), MS_DKIM_IDENTITY_MAX);
        ms_buf_reset(&b);
        ms_buf_appendf(&b, "%s; i=a", SIG_OK);
        for (size_t k = 0; k < MS_DKIM_IDENTITY_MAX - strlen("@example.com"); k++)
            ms_buf_appendf(&b, "=61");
        ms_buf_appendf(&b, "@example.com");
        assert_int_equal(ms_dkim_sig_parse(b.data, b.len, sig, &why), MS_ETOOBIG);
        assert_string_equal(why, "i= too long");
        ms_buf_free(&b);
    }
    /* Defaults: c= absent is simple/simple; i= absent is @d; a=rsa-sha1 and
     * an unknown a= parse (the verifier reports them). */
    {
        const char *why;

        assert_int_equal(ms_dkim_sig_parse(SIG_OK, strlen(SIG_OK), sig, &why), 0);
        assert_int_equal(sig->hcanon, MS_DKIM_SIMPLE);
        assert_int_equal(sig->bcanon, MS_DKIM_SIMPLE);
        assert_string_equal(sig->i, "@example.com");
        assert_int_equal(sig->alg, MS_DKIM_RSA_SHA256);
        const char *s1 = "v=1; a=rsa-sha1; d=example.com; s=sel; h=From; bh=AAAA; b=AAAA";
        assert_int_equal(ms_dkim_sig_parse(s1, strlen(s1), sig, &why), 0);
        assert_int_equal(sig->alg, MS_DKIM_RSA_SHA1);
        const char *s2 = "v=1; a=foo-bar; d=example.com; s=sel; h=From; bh=AAAA; b=AAAA";
        assert_int_equal(ms_dkim_sig_parse(s2, strlen(s2), sig, &why), 0);
        assert_int_equal(sig->alg, MS_DKIM_ALG_UNKNOWN);
    }
    free(sig);
}

/* ------------------------------------------------------------------------
 * Key records
 * ------------------------------------------------------------------------ */

#define P1024                                                                                      \
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/"   \
    "J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/"                                                     \
    "8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB"

static void test_keyrec_parse(void **state)
{
    static const struct {
        const char *in;
        int rc;
        int k, plen, hs, se, ty, st;
    } cases[] = {
        {"v=DKIM1; k=rsa; p=" P1024, 0, MS_DKIM_KEY_RSA, 162, 1, 1, 0, 0},
        {"p=" P1024, 0, MS_DKIM_KEY_RSA, 162, 1, 1, 0, 0},
        {"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", 0,
         MS_DKIM_KEY_ED25519, 32, 1, 1, 0, 0},
        {"v=DKIM1; p=", 0, MS_DKIM_KEY_RSA, 0, 1, 1, 0, 0}, /* revoked */
        {"v=DKIM1; h=sha1:sha256; s=email; t=y:s; p=AAAA", 0, MS_DKIM_KEY_RSA, 3, 1, 1, 1, 1},
        {"v=DKIM1; h=sha1; p=AAAA", 0, MS_DKIM_KEY_RSA, 3, 0, 1, 0, 0},
        {"v=DKIM1; s=tlsrpt; p=AAAA", 0, MS_DKIM_KEY_RSA, 3, 1, 0, 0, 0},
        {"v=DKIM1; s=*; p=AAAA", 0, MS_DKIM_KEY_RSA, 3, 1, 1, 0, 0},
        {"v=DKIM1; n=notes here; g=*; p=AAAA", 0, MS_DKIM_KEY_RSA, 3, 1, 1, 0, 0},
        {"v=DKIM1: g=*; k=rsa; p=AAAA", MS_EPROTO, 0, 0, 0, 0, 0, 0}, /* dkimpy badversion */
        {"k=rsa; v=DKIM1; p=AAAA", MS_EPROTO, 0, 0, 0, 0, 0, 0},      /* v= not first */
        {"v=DKIM2; p=AAAA", MS_EPROTO, 0, 0, 0, 0, 0, 0},
        {"v=DKIM1; k=ed25519-sha256; p=AAAA", MS_EPROTO, 0, 0, 0, 0, 0, 0}, /* dkimpy badk */
        {"v=DKIM1; k=rsa", MS_EPROTO, 0, 0, 0, 0, 0, 0},                    /* no p= */
        {"v=DKIM1; p=AA!A", MS_EPROTO, 0, 0, 0, 0, 0, 0},
        {"v=DKIM1; p=AAAA; p=AAAA", MS_EPROTO, 0, 0, 0, 0, 0, 0},
    };
    struct ms_dkim_keyrec key;

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *why = NULL;
        int rc = ms_dkim_keyrec_parse(cases[k].in, strlen(cases[k].in), &key, &why);

        if (rc != cases[k].rc)
            fail_msg("case %zu \"%s\": got %d (%s) want %d", k, cases[k].in, rc, why ? why : "-",
                     cases[k].rc);
        if (rc < 0)
            continue;
        assert_int_equal(key.k, cases[k].k);
        assert_int_equal(key.p_len, cases[k].plen);
        assert_int_equal(key.h_sha256, cases[k].hs);
        assert_int_equal(key.s_email, cases[k].se);
        assert_int_equal(key.testing, cases[k].ty);
        assert_int_equal(key.strict, cases[k].st);
    }
}

static void test_base64(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *out;
    } cases[] = {
        {"", 0, ""},
        {"Zg==", 1, "f"},
        {"Zm8=", 2, "fo"},
        {"Zm9v", 3, "foo"},
        {"Zm9v\r\n YmFy", 6, "foobar"},
        {"Zg", 1, "f"},
        {"Zm8", 2, "fo"},
        {"Z", MS_EPROTO, NULL},
        {"Zg=", MS_EPROTO, NULL},
        {"Zm9v=", MS_EPROTO, NULL},
        {"Zg==Zg==", MS_EPROTO, NULL},
        {"Zm9-", MS_EPROTO, NULL},
    };
    uint8_t out[16];

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        int rc = ms_dkim_base64_decode(cases[k].in, strlen(cases[k].in), out, sizeof(out));

        if (rc != cases[k].rc)
            fail_msg("case %zu \"%s\": got %d want %d", k, cases[k].in, rc, cases[k].rc);
        if (rc > 0)
            assert_memory_equal(out, cases[k].out, (size_t)rc);
    }
    assert_int_equal(ms_dkim_base64_decode("Zm9vYmFy", 8, out, 5), MS_ETOOBIG);
}

/* ------------------------------------------------------------------------
 * Header splitting and canonicalization
 * ------------------------------------------------------------------------ */

static void test_headers_split(void **state)
{
    struct ms_dkim_hdr h[8];
    size_t body;
    const char *m1 = "A: 1\r\nB : two\r\n\tlines\r\nC:\r\n\r\nbody\r\n";
    const char *m2 = "A: 1\r\nB: 2\r\n";              /* no body */
    const char *m3 = "A: 1\r\nB: 2";                  /* no final CRLF either */
    const char *m4 = " A: 1\r\n\r\n";                 /* continuation first */
    const char *m5 = "A 1\r\n\r\n";                   /* no colon */
    const char *m6 = "From x Mon 7 14:23:23\r\n\r\n"; /* mbox separator is not a field */
    const char *m7 = "A: 1\nB: 2\r\n\r\n";            /* a lone LF is content */

    assert_int_equal(ms_dkim_headers_split(m1, strlen(m1), h, 8, &body), 3);
    assert_int_equal(h[1].off, 6);
    assert_int_equal(h[1].len, strlen("B : two\r\n\tlines"));
    assert_int_equal(h[1].name_len, 1);
    assert_int_equal(h[2].len, 2);
    assert_string_equal(m1 + body, "body\r\n");
    assert_int_equal(ms_dkim_headers_split(m2, strlen(m2), h, 8, &body), 2);
    assert_int_equal(body, strlen(m2));
    assert_int_equal(ms_dkim_headers_split(m3, strlen(m3), h, 8, &body), 2);
    assert_int_equal(h[1].len, 4);
    assert_int_equal(ms_dkim_headers_split(m4, strlen(m4), h, 8, &body), MS_EPROTO);
    assert_int_equal(ms_dkim_headers_split(m5, strlen(m5), h, 8, &body), MS_EPROTO);
    assert_int_equal(ms_dkim_headers_split(m6, strlen(m6), h, 8, &body), MS_EPROTO);
    assert_int_equal(ms_dkim_headers_split(m7, strlen(m7), h, 8, &body), 1);
    assert_int_equal(ms_dkim_headers_split(m1, strlen(m1), h, 2, &body), MS_ETOOBIG);
    assert_int_equal(ms_dkim_headers_split("\r\nbody", 6, h, 8, &body), 0);
    assert_int_equal(body, 2);
}

static void test_canon_header(void **state)
{
    static const struct {
        const char *in;
        const char *simple, *relaxed;
    } cases[] = {
        /* RFC 6376 §3.4.5 example. */
        {"A: X", "A: X", "a:X"},
        {"B : Y\t\r\n\tZ  ", "B : Y\t\r\n\tZ  ", "b:Y Z"},
        {"SUBJECT:   lots   of\t\tspace   ", NULL, "subject:lots of space"},
        {"X-Empty:", NULL, "x-empty:"},
        {"X-Empty:   \r\n  ", NULL, "x-empty:"},
        {"X:\r\n folded\r\n\t  twice", NULL, "x:folded twice"},
        {"Caf\xc3\xa9: 8bit \xc3\xa9t\xc3\xa9", NULL, "caf\xc3\xa9:8bit \xc3\xa9t\xc3\xa9"},
    };
    struct ms_buf b;

    ms_buf_init(&b, 1024);
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *in = cases[k].in;
        const char *want_s = cases[k].simple ? cases[k].simple : in;

        ms_buf_reset(&b);
        assert_int_equal(ms_dkim_canon_header(MS_DKIM_SIMPLE, in, strlen(in), &b), 0);
        assert_int_equal(b.len, strlen(want_s));
        assert_memory_equal(b.data, want_s, b.len);
        ms_buf_reset(&b);
        assert_int_equal(ms_dkim_canon_header(MS_DKIM_RELAXED, in, strlen(in), &b), 0);
        if (b.len != strlen(cases[k].relaxed) || memcmp(b.data, cases[k].relaxed, b.len) != 0)
            fail_msg("case %zu: relaxed \"%.*s\" want \"%s\"", k, (int)b.len, b.data,
                     cases[k].relaxed);
    }
    ms_buf_reset(&b);
    assert_int_equal(ms_dkim_canon_header(MS_DKIM_RELAXED, "nocolon", 7, &b), MS_EPROTO);
    ms_buf_free(&b);
    ms_buf_init(&b, 4);
    assert_int_equal(ms_dkim_canon_header(MS_DKIM_RELAXED, "Abcdef: x", 9, &b), MS_ETOOBIG);
    ms_buf_free(&b);
}

static void emit_buf(void *ctx, const void *p, size_t n)
{
    assert_int_equal(ms_buf_append(ctx, p, n), 0);
}

static void canon_body(enum ms_dkim_canon c, int64_t l, const char *in, size_t len, size_t step,
                       struct ms_buf *out, uint64_t *total)
{
    struct ms_dkim_body b;

    ms_buf_reset(out);
    ms_dkim_body_init(&b, c, l, emit_buf, out);
    for (size_t off = 0; off < len; off += step)
        ms_dkim_body_update(&b, in + off, len - off < step ? len - off : step);
    ms_dkim_body_final(&b);
    *total = b.total;
}

static void test_canon_body(void **state)
{
    static const struct {
        const char *in;
        const char *simple, *relaxed;
    } cases[] = {
        /* RFC 6376 §3.4.5 example. */
        {" C \r\nD \t E\r\n\r\n\r\n", " C \r\nD \t E\r\n", " C\r\nD E\r\n"},
        {"", "\r\n", ""},
        {"\r\n", "\r\n", ""},
        {"\r\n\r\n\r\n", "\r\n", ""},
        {"abc", "abc\r\n", "abc\r\n"},
        {"abc  ", "abc  \r\n", "abc\r\n"},
        {"   \r\n", "   \r\n", ""},
        {"a\r\n  \r\n\t\r\n", "a\r\n  \r\n\t\r\n", "a\r\n"},
        {"a\r\n\r\nb\r\n\r\n", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"},
        {"\tlead\r\n", "\tlead\r\n", " lead\r\n"},
        {"a\rb\r\n", "a\rb\r\n", "a\rb\r\n"}, /* lone CR is content */
        {"a\nb\r\n", "a\nb\r\n", "a\nb\r\n"}, /* lone LF is content */
        {"end\r", "end\r\r\n", "end\r\r\n"},
        {"x \r", "x \r\r\n", "x \r\r\n"},
        {"caf\xc3\xa9 \xff\r\n", "caf\xc3\xa9 \xff\r\n", "caf\xc3\xa9 \xff\r\n"}, /* 8-bit */
    };
    struct ms_buf out;
    uint64_t total;

    ms_buf_init(&out, 4096);
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *in = cases[k].in;

        /* Whole, and fed one octet at a time: the same output. */
        for (size_t step = 1; step <= 1024; step *= 1024) {
            canon_body(MS_DKIM_SIMPLE, -1, in, strlen(in), step, &out, &total);
            if (out.len != strlen(cases[k].simple) || memcmp(out.data, cases[k].simple, out.len))
                fail_msg("case %zu step %zu: simple \"%.*s\"", k, step, (int)out.len, out.data);
            assert_int_equal(total, out.len);
            canon_body(MS_DKIM_RELAXED, -1, in, strlen(in), step, &out, &total);
            if (out.len != strlen(cases[k].relaxed) || memcmp(out.data, cases[k].relaxed, out.len))
                fail_msg("case %zu step %zu: relaxed \"%.*s\"", k, step, (int)out.len, out.data);
        }
    }
    /* l=: only the first l canonical octets are emitted; total counts all. */
    canon_body(MS_DKIM_RELAXED, 5, "hello world\r\n\r\n", 15, 3, &out, &total);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.data, "hello", 5);
    assert_int_equal(total, 13);
    canon_body(MS_DKIM_SIMPLE, 0, "x\r\n", 3, 1, &out, &total);
    assert_int_equal(out.len, 0);
    assert_int_equal(total, 3);
    /* Many trailing empty lines are dropped without unbounded work. */
    {
        size_t n = 100000;
        char *big = ms_malloc(2 * n + 2);

        big[0] = 'x';
        for (size_t k = 0; k < n; k++)
            memcpy(big + 1 + 2 * k, "\r\n", 2);
        big[2 * n + 1] = 'y';
        canon_body(MS_DKIM_SIMPLE, -1, big, 2 * n + 1, 4096, &out, &total);
        assert_int_equal(out.len, 3);
        ms_buf_free(&out);
        ms_buf_init(&out, 4 * n);
        canon_body(MS_DKIM_SIMPLE, -1, big, 2 * n + 2, 4096, &out, &total);
        assert_int_equal(out.len, 2 * n + 4);
        free(big);
    }
    ms_buf_free(&out);
}

/* A random body for the differential test below: octets drawn from a few
 * weighted alphabets (prose-like, WSP- and line-end-heavy, anything), with
 * runs long enough to cross the canonicalizer's sixteen-octet blocks and
 * the CRLF, WSP and empty-line runs where its state matters most. */
static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t random_body(uint64_t *rs, char *buf, size_t max)
{
#define ALPHABET(s)                                                                                \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
    static const struct {
        const char *s;
        size_t n;
    } alphabets[] = {
        ALPHABET("aaaaaaaaaaaaaaaaaaaaaaaaaaaa      \r\n"), /* prose: words, single spaces */
        ALPHABET("ab \t\r\n"),                              /* WSP and line ends everywhere */
        ALPHABET("a  \t\t\r\r\n\n\n"),                      /* runs of each */
        ALPHABET("x\r\n\r\n\r\n \r\n"),                     /* empty and WSP-only lines */
        ALPHABET("AZ09+/=\r\n"),                            /* base64 */
        ALPHABET("a \t\r\n\0\x80\xff."),                    /* anything */
    };
#undef ALPHABET
    size_t a = xorshift(rs) % (sizeof(alphabets) / sizeof(alphabets[0])), r = xorshift(rs) % 16;
    size_t len, n;

    /* Mostly short bodies (every state, often), some longer ones. */
    len = r < 10 ? xorshift(rs) % 40 : r < 15 ? xorshift(rs) % 400 : xorshift(rs) % max;
    for (n = 0; n < len; n++) {
        uint64_t x = xorshift(rs);

        /* Now and then a token that the alphabet alone rarely makes. */
        if (x % 23 == 0 && n + 2 <= len) {
            memcpy(buf + n, x % 2 ? "\r\n" : "  ", 2);
            n++;
            continue;
        }
        buf[n] = alphabets[a].s[(x >> 8) % alphabets[a].n];
    }
    return n;
}

/* The canonical body fed in random pieces (empty ones included), l= some of
 * the time, against the reference of dkim_canon_ref.h fed the whole body:
 * the same octets, the same total.  MS_DKIM_CANON_ITERATIONS sets how many
 * bodies (default 100,000). */
static void test_canon_body_random(void **state)
{
    const char *env = getenv("MS_DKIM_CANON_ITERATIONS");
    long iters = env != NULL ? strtol(env, NULL, 10) : 100000;
    size_t max = 6000;
    char *in = ms_malloc(max);
    uint64_t rs = 0x853c49e6748fea9bu;
    struct ms_buf out;

    (void)state;
    ms_buf_init(&out, 2 * max + 4);
    for (long it = 0; it < iters; it++) {
        size_t len = random_body(&rs, in, max), rlen;
        enum ms_dkim_canon c = it % 2 ? MS_DKIM_RELAXED : MS_DKIM_SIMPLE;
        int64_t l = xorshift(&rs) % 4 == 0 ? (int64_t)(xorshift(&rs) % (len + 4)) : -1;
        char *ref = dkim_canon_ref(c, in, len, &rlen);
        size_t want = l >= 0 && (uint64_t)l < rlen ? (size_t)l : rlen;
        struct ms_dkim_body b;
        size_t off = 0;

        ms_buf_reset(&out);
        ms_dkim_body_init(&b, c, l, emit_buf, &out);
        while (off < len) {
            uint64_t x = xorshift(&rs);
            /* Pieces of 0-3 octets (inside CRLF and WSP runs), up to 40,
             * or the rest. */
            size_t step = x % 4 == 0 ? (x >> 8) % 4 : x % 4 == 1 ? (x >> 8) % 41 : len - off;

            if (step > len - off)
                step = len - off;
            ms_dkim_body_update(&b, in + off, step);
            off += step;
        }
        ms_dkim_body_final(&b);
        if (b.total != rlen || out.len != want || memcmp(out.data, ref, want) != 0)
            fail_msg("body %ld (%s, l=%lld, %zu octets): %zu octets, total %llu; want %zu, %zu", it,
                     c == MS_DKIM_RELAXED ? "relaxed" : "simple", (long long)l, len, out.len,
                     (unsigned long long)b.total, want, rlen);
        free(ref);
    }
    ms_buf_free(&out);
    free(in);
}

/* ------------------------------------------------------------------------
 * Vectors: RFC 8463, RFC 6376, dkimpy
 * ------------------------------------------------------------------------ */

/* rfc8463-A.2-dns.txt: "<name> <record>" lines. */
static size_t load_8463_dns(struct rec *recs, char **store)
{
    size_t len, n = 0;
    char *s = slurp("rfc-examples/rfc8463-A.2-dns.txt", &len), *line, *save = NULL;

    for (line = strtok_r(s, "\n", &save); line && n < 4; line = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(line, ' ');

        assert_non_null(sp);
        *sp = '\0';
        recs[n].name = line;
        recs[n].st = MS_DNS_OK;
        recs[n].txt = sp + 1;
        n++;
    }
    *store = s;
    return n;
}

static void test_vector_rfc8463(void **state)
{
    struct rec recs[4];
    char *store, *msg;
    size_t len, n;
    ms_dkim_verify *v;
    int nq;

    NEED_TESTDATA();
    n = load_8463_dns(recs, &store);
    assert_int_equal(n, 2);
    msg = slurp_msg("rfc-examples/rfc8463-A.3-signed.eml", &len);
    v = verify_with(msg, len, NOW, recs, n, &nq);
    assert_int_equal(nq, 2);
    assert_int_equal(ms_dkim_verify_count(v), 2);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
    assert_int_equal(ms_dkim_verify_sig(v, 0)->alg, MS_DKIM_ED25519_SHA256);
    assert_string_equal(ms_dkim_verify_sig(v, 0)->s, "brisbane");
    assert_string_equal(ms_dkim_verify_sig(v, 0)->b_prefix, "/gCrinpcQOoI");
    assert_int_equal(ms_dkim_verify_sig(v, 1)->alg, MS_DKIM_RSA_SHA256);
    assert_int_equal(ms_dkim_verify_sig(v, 1)->key_bits, 1024);
    assert_string_equal(ms_dkim_verify_sig(v, 1)->d, "football.example.com");
    ms_dkim_verify_free(v);

    /* A changed body fails both; a DNS failure is temperror; no key is
     * permerror. */
    {
        size_t l2;
        char *m2 = concat(msg, "PS: tampered\r\n", &l2);
        struct rec tf[2] = {{recs[0].name, MS_DNS_TEMPFAIL, NULL},
                            {recs[1].name, MS_DNS_NXDOMAIN, NULL}};

        v = verify_with(m2, l2, NOW, recs, n, NULL);
        assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
        assert_int_equal(result_of(v, 1), MS_DKIM_FAIL);
        assert_string_equal(ms_dkim_verify_sig(v, 1)->reason, "body hash mismatch");
        ms_dkim_verify_free(v);
        v = verify_with(msg, len, NOW, tf, 2, NULL);
        assert_int_equal(result_of(v, 0), MS_DKIM_TEMPERROR);
        assert_int_equal(result_of(v, 1), MS_DKIM_PERMERROR);
        ms_dkim_verify_free(v);
        free(m2);
    }
    /* A changed signed header fails; an added unsigned header does not. */
    {
        char *m2 = strdup(msg);
        char *subj = strstr(m2, "Subject: Is dinner ready?");
        size_t l2;
        char *m3;

        subj[9] = 'i';
        v = verify_with(m2, len, NOW, recs, n, NULL);
        assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
        assert_int_equal(result_of(v, 1), MS_DKIM_FAIL);
        assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "signature did not verify");
        ms_dkim_verify_free(v);
        m3 = concat("X-Added: yes\r\n", msg, &l2);
        v = verify_with(m3, l2, NOW, recs, n, NULL);
        assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
        assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
        ms_dkim_verify_free(v);
        free(m3);
        /* A second From above the signed one: h= oversigns from, so fail. */
        m3 = concat("From: Mallory <m@evil.example>\r\n", msg, &l2);
        v = verify_with(m3, l2, NOW, recs, n, NULL);
        assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
        ms_dkim_verify_free(v);
        free(m3);
        free(m2);
    }
    /* The same message with the RSA key published in PKCS#1 RSAPublicKey
     * form instead of SubjectPublicKeyInfo still passes. */
    {
        struct ms_dkim_keyrec kr;
        const char *why;
        const unsigned char *p;
        unsigned char *der = NULL;
        EVP_PKEY *pk;
        int dl;
        char *rec, *b;
        struct rec r2[2];

        assert_int_equal(ms_dkim_keyrec_parse(recs[1].txt, strlen(recs[1].txt), &kr, &why), 0);
        p = kr.p;
        pk = d2i_PUBKEY(NULL, &p, (long)kr.p_len);
        assert_non_null(pk);
        dl = i2d_PublicKey(pk, &der);
        assert_true(dl > 0 && dl < (int)kr.p_len);
        b = ms_malloc(4 * (size_t)dl / 3 + 8);
        EVP_EncodeBlock((unsigned char *)b, der, dl);
        rec = ms_asprintf("v=DKIM1; k=rsa; p=%s", b);
        r2[0] = recs[0];
        r2[1] = (struct rec){recs[1].name, MS_DNS_OK, rec};
        v = verify_with(msg, len, NOW, r2, 2, NULL);
        assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
        ms_dkim_verify_free(v);
        free(rec);
        free(b);
        OPENSSL_free(der);
        EVP_PKEY_free(pk);
    }
    free(msg);
    free(store);
}

/* Signing RFC 6376 A.1 relaxed/relaxed reproduces RFC 8463 A.3's bh=, and
 * the Ed25519 signature verifies against the A.2 brisbane record. */
static void test_vector_rfc8463_sign(void **state)
{
    struct rec recs[4];
    char *store, *msg, *key, *hdr, *signedmsg, *pub;
    size_t len, klen, slen;
    ms_dkim_privkey *pk;
    const char *why = NULL;
    static const char *const h[] = {"from", "to", "subject", "date", "message-id", NULL};
    struct ms_dkim_signer sg = {
        .domain = "football.example.com", .selector = "brisbane", .headers = h};
    ms_dkim_verify *v;

    NEED_TESTDATA();
    load_8463_dns(recs, &store);
    msg = slurp_msg("rfc-examples/rfc6376-A.1-unsigned.eml", &len);
    key = slurp("rfc-examples/rfc8463-A.1-ed25519-private.pem", &klen);
    assert_int_equal(ms_dkim_key_parse(key, klen, &pk, &why), 0);
    assert_int_equal(ms_dkim_key_type(pk), MS_DKIM_KEY_ED25519);
    assert_int_equal(ms_dkim_key_record(pk, &pub), 0);
    assert_string_equal(pub, recs[0].txt); /* "v=DKIM1; k=ed25519; p=11qY..." */
    free(pub);
    sg.key = pk;
    assert_int_equal(ms_dkim_sign(msg, len, &sg, 1528637909, &hdr), 0);
    {
        char *u = unfold(hdr);

        assert_non_null(strstr(u, "bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;"));
        assert_non_null(strstr(u, "h=from:from:to:subject:date:message-id;"));
        free(u);
    }
    signedmsg = concat(hdr, msg, &slen);
    v = verify_with(signedmsg, slen, NOW, recs, 1, NULL);
    assert_int_equal(ms_dkim_verify_count(v), 1);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    ms_dkim_verify_free(v);
    free(signedmsg);
    free(hdr);
    ms_dkim_key_free(pk);
    free(key);

    /* The seed file form loads to the same key. */
    key = slurp("rfc-examples/rfc8463-A.1-ed25519-seed.b64", &klen);
    assert_int_equal(ms_dkim_key_parse(key, klen, &pk, &why), 0);
    assert_int_equal(ms_dkim_key_record(pk, &pub), 0);
    assert_string_equal(pub, recs[0].txt);
    free(pub);
    ms_dkim_key_free(pk);
    free(key);
    free(msg);
    free(store);
}

static void emit_md(void *ctx, const void *p, size_t n)
{
    EVP_DigestUpdate(ctx, p, n);
}

/* Ed25519 is deterministic: re-signing A.3's first field (same tag text)
 * with the A.1 key over our canonical header data must give A.3's b=
 * exactly, which pins header selection and relaxed canonicalization. */
static void test_vector_rfc8463_exact_b(void **state)
{
    struct ms_dkim_hdr h[16];
    struct ms_dkim_sig *sig;
    const char *names[MS_DKIM_H_MAX], *why;
    size_t len, klen, body, voff, flen;
    char *msg, *key, *field, b64[128];
    EVP_MD_CTX *md;
    uint8_t dg[32], out[64];
    size_t outlen = sizeof(out);
    unsigned int dl;
    EVP_PKEY *pk;
    BIO *bio;
    int n;

    NEED_TESTDATA(); /* before allocating: skip() does not return */
    sig = ms_malloc(sizeof(*sig));
    md = EVP_MD_CTX_new();
    msg = slurp_msg("rfc-examples/rfc8463-A.3-signed.eml", &len);
    key = slurp("rfc-examples/rfc8463-A.1-ed25519-private.pem", &klen);
    n = ms_dkim_headers_split(msg, len, h, 16, &body);
    assert_int_equal(n, 7);
    voff = (size_t)(strchr(msg + h[0].off, ':') - (msg + h[0].off)) + 1;
    assert_int_equal(ms_dkim_sig_parse(msg + h[0].off + voff, h[0].len - voff, sig, &why), 0);
    flen = h[0].len - (sig->b_vend - sig->b_vstart);
    field = ms_malloc(flen);
    memcpy(field, msg + h[0].off, voff + sig->b_vstart);
    memcpy(field + voff + sig->b_vstart, msg + h[0].off + voff + sig->b_vend,
           h[0].len - voff - sig->b_vend);
    for (size_t k = 0; k < sig->nh; k++)
        names[k] = sig->h[k];
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    assert_int_equal(ms_dkim_header_data(msg, h, (size_t)n, MS_DKIM_RELAXED, names, sig->nh, field,
                                         flen, emit_md, md),
                     0);
    assert_int_equal(EVP_DigestFinal_ex(md, dg, &dl), 1);
    bio = BIO_new_mem_buf(key, (int)klen);
    pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    assert_non_null(pk);
    assert_int_equal(EVP_DigestSignInit(md, NULL, NULL, NULL, pk), 1);
    assert_int_equal(EVP_DigestSign(md, out, &outlen, dg, 32), 1);
    EVP_EncodeBlock((unsigned char *)b64, out, (int)outlen);
    assert_string_equal(b64, "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus"
                             "Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==");
    EVP_PKEY_free(pk);
    BIO_free(bio);
    EVP_MD_CTX_free(md);
    free(field);
    free(key);
    free(msg);
    free(sig);
}

/* rfc6376-C-dns.zone: the quoted strings, concatenated without spaces. */
static char *load_6376_zone(void)
{
    size_t len, m = 0;
    char *s = slurp("rfc-examples/rfc6376-C-dns.zone", &len), *r = ms_malloc(len + 1);
    int in = 0;

    for (size_t k = 0; k < len; k++) {
        if (s[k] == '"')
            in = !in;
        else if (in)
            r[m++] = s[k];
    }
    r[m] = '\0';
    free(s);
    return r;
}

static void test_vector_rfc6376(void **state)
{
    char *rec, *msg, *key, *hdr, *sm, *pubpem;
    size_t len, klen, slen, plen;
    ms_dkim_privkey *pk;
    ms_dkim_verify *v;
    const char *why;

    NEED_TESTDATA();
    rec = load_6376_zone();
    assert_true(strncmp(rec, "v=DKIM1; p=MIGf", 15) == 0);

    /* A.2 is known to be inconsistent (see testdata README): d=example.com
     * while Appendix C publishes the key under example.org, and bh= is the
     * relaxed body hash under c=simple/simple.  As published: no key
     * (permerror).  With the Appendix C key also served under example.com:
     * body hash mismatch (fail), the README's expectation. */
    {
        struct rec recs[2] = {{"brisbane._domainkey.example.org", MS_DNS_OK, rec},
                              {"brisbane._domainkey.example.com", MS_DNS_OK, rec}};
        int nq;

        msg = slurp_msg("rfc-examples/rfc6376-A.2-signed-KNOWN-BAD.eml", &len);
        v = verify_with(msg, len, NOW, recs, 1, &nq);
        assert_int_equal(ms_dkim_verify_count(v), 1);
        assert_int_equal(nq, 1);
        assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
        assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "no key for signature");
        ms_dkim_verify_free(v);
        v = verify_with(msg, len, NOW, recs, 2, NULL);
        assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
        assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "body hash mismatch");
        ms_dkim_verify_free(v);
        free(msg);
    }

    /* Appendix C key pair: private and public halves agree with the zone;
     * sign A.1 with it (1024 bits: test-only weak loader) in every c=
     * combination and verify against the zone record. */
    key = slurp("rfc-examples/rfc6376-C-rsa-private.pem", &klen);
    assert_int_equal(ms_dkim_key_parse(key, klen, &pk, &why), MS_ECONFIG); /* < 2048 for signing */
    assert_int_equal(ms_dkim_key_parse_weak(key, klen, &pk, &why), 0);
    {
        char *pub, *p;
        size_t m = 0;

        pubpem = slurp("rfc-examples/rfc6376-C-rsa-public.pem", &plen);
        assert_int_equal(ms_dkim_key_record(pk, &pub), 0);
        /* strip PEM armour and newlines */
        p = strstr(pubpem, "-----\n") + 6;
        for (char *q = p; *q && *q != '-'; q++)
            if (*q != '\n' && *q != '\r')
                p[m++] = *q;
        p[m] = '\0';
        assert_string_equal(strstr(pub, "p=") + 2, p);
        assert_string_equal(strstr(rec, "p=") + 2, p);
        free(pub);
        free(pubpem);
    }
    msg = slurp_msg("rfc-examples/rfc6376-A.1-unsigned.eml", &len);
    for (int hc = MS_DKIM_SIMPLE; hc <= MS_DKIM_RELAXED; hc++) {
        for (int bc = MS_DKIM_SIMPLE; bc <= MS_DKIM_RELAXED; bc++) {
            struct ms_dkim_signer sg = {.domain = "example.org",
                                        .selector = "brisbane",
                                        .key = pk,
                                        .hcanon = hc,
                                        .bcanon = bc,
                                        .identity = "joe@football.example.org"};
            struct rec recs[1] = {{"brisbane._domainkey.example.org", MS_DNS_OK, rec}};

            assert_int_equal(ms_dkim_sign(msg, len, &sg, 1528637909, &hdr), 0);
            if (bc == MS_DKIM_SIMPLE)
                assert_non_null(strstr(hdr, "bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ="));
            else
                assert_non_null(strstr(hdr, "bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="));
            sm = concat(hdr, msg, &slen);
            v = verify_with(sm, slen, NOW, recs, 1, NULL);
            assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
            ms_dkim_verify_free(v);
            free(sm);
            free(hdr);
        }
    }
    ms_dkim_key_free(pk);
    free(key);
    free(msg);
    free(rec);
}

static void test_vector_dkimpy_signed(void **state)
{
    char *msg, *t1, *ed, *ex;
    size_t len;
    ms_dkim_verify *v;

    NEED_TESTDATA();
    t1 = slurp_txt("dkimpy/test.txt");
    ed = ms_strdup("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    ex = slurp_txt("dkimpy/eximtest.dns");

    /* rfc6376.signed.msg: c=simple/simple, Ed25519 and RSA, both pass. */
    {
        struct rec recs[2] = {{"brisbane._domainkey.football.example.com", MS_DNS_OK, ed},
                              {"test._domainkey.football.example.com", MS_DNS_OK, t1}};

        msg = slurp_msg("dkimpy/rfc6376.signed.msg", &len);
        v = verify_with(msg, len, NOW, recs, 2, NULL);
        assert_int_equal(ms_dkim_verify_count(v), 2);
        assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
        assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
        ms_dkim_verify_free(v);
        free(msg);
    }
    /* ed25519test2.msg (Exim's signer; already CRLF): pass. */
    {
        struct rec recs[1] = {{"sed._domainkey.test.ex", MS_DNS_OK, ex}};
        size_t n2;
        char *raw = slurp("dkimpy/ed25519test2.msg", &n2);

        msg = crlf(raw, n2, &len);
        assert_int_equal(len, n2); /* no LF-only line in it */
        v = verify_with(msg, len, NOW, recs, 1, NULL);
        assert_int_equal(ms_dkim_verify_count(v), 1);
        assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
        ms_dkim_verify_free(v);
        free(msg);
        free(raw);
    }
    /* test2.message: degenerate folding (Debian #711751), signed with a
     * gmail key that is not a file of the data set (we do not copy keys
     * out of other projects' test code), so the best it can give is
     * permerror (no key) -- but it must parse despite the odd folding and
     * never pass. */
    {
        msg = slurp_msg("dkimpy/test2.message", &len);
        v = verify_with(msg, len, NOW, NULL, 0, NULL);
        assert_int_equal(ms_dkim_verify_count(v), 1);
        assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
        assert_string_equal(ms_dkim_verify_sig(v, 0)->d, "gmail.com");
        ms_dkim_verify_free(v);
        free(msg);
    }
    /* message.mbox carries kitterman.com's 2011 signature, whose key we do
     * not have: permerror (no key), never pass. */
    {
        msg = slurp_msg("dkimpy/message.mbox", &len);
        v = verify_with(msg, len, NOW, NULL, 0, NULL);
        assert_int_equal(ms_dkim_verify_count(v), 1);
        assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
        assert_string_equal(ms_dkim_verify_sig(v, 0)->d, "kitterman.com");
        ms_dkim_verify_free(v);
        free(msg);
    }
    free(t1);
    free(ed);
    free(ex);
}

/* dkimpy's sign-then-verify uses, with its key files and key records. */
static void test_vector_dkimpy_roundtrip(void **state)
{
    static const struct {
        const char *txt; /* key record file */
        enum ms_dkim_result want;
        const char *reason;
    } keys[] = {
        {"dkimpy/test.txt", MS_DKIM_PASS, ""},
        {"dkimpy/test2.txt", MS_DKIM_PASS, ""}, /* implicit k=rsa */
        {"dkimpy/badversion.txt", MS_DKIM_PERMERROR, "bad key record: bad key record version v="},
        {"dkimpy/badk.txt", MS_DKIM_PERMERROR, "bad key record: unknown key type k="},
        {"dkimpy/test_bad.txt", MS_DKIM_PERMERROR, "unusable public key p="},
        {"dkimpy/test_tlsrpt.txt", MS_DKIM_PERMERROR, "key not for email (s=)"},
    };
    char *msg, *key, *hdr, *sm;
    size_t len, klen, slen;
    ms_dkim_privkey *pk;
    const char *why;
    ms_dkim_verify *v;

    NEED_TESTDATA();
    msg = slurp_msg("dkimpy/test.message", &len);
    key = slurp("dkimpy/test.private", &klen);
    assert_int_equal(ms_dkim_key_parse_weak(key, klen, &pk, &why), 0);
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        char *txt = slurp_txt(keys[k].txt);
        struct rec recs[1] = {{"test._domainkey.example.com", MS_DNS_OK, txt}};

        for (int hc = MS_DKIM_SIMPLE; hc <= MS_DKIM_RELAXED; hc++) {
            for (int bc = MS_DKIM_SIMPLE; bc <= MS_DKIM_RELAXED; bc++) {
                struct ms_dkim_signer sg = {.domain = "example.com",
                                            .selector = "test",
                                            .key = pk,
                                            .hcanon = hc,
                                            .bcanon = bc};

                assert_int_equal(ms_dkim_sign(msg, len, &sg, NOW - 10, &hdr), 0);
                sm = concat(hdr, msg, &slen);
                v = verify_with(sm, slen, NOW, recs, 1, NULL);
                if (result_of(v, 0) != keys[k].want)
                    fail_msg("%s c=%d/%d: %s", keys[k].txt, hc, bc,
                             ms_dkim_verify_sig(v, 0)->reason);
                assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, keys[k].reason);
                ms_dkim_verify_free(v);
                free(sm);
                free(hdr);
            }
        }
        free(txt);
    }

    /* test_nofrom.message: the signer refuses (From is mandatory). */
    {
        size_t nl;
        char *nf = slurp_msg("dkimpy/test_nofrom.message", &nl);
        struct ms_dkim_signer sg = {.domain = "example.com", .selector = "test", .key = pk};

        assert_int_equal(ms_dkim_sign(nf, nl, &sg, NOW, &hdr), MS_EINVAL);
        assert_null(hdr);
        free(nf);
    }
    /* message.mbox with every field signed, the repeated Received ones
     * included (dkimpy bug 737311), and test_extra.message. */
    {
        static const char *const all[] = {"return-path",
                                          "delivered-to",
                                          "x-envelope-to",
                                          "received",
                                          "x-virus-check-by",
                                          "x-spam-check-by",
                                          "x-spam-status",
                                          "x-spam-flag",
                                          "x-spam-level",
                                          "x-spam-filtered",
                                          "dkim-signature",
                                          "from",
                                          "to",
                                          "subject",
                                          "date",
                                          "cc",
                                          "mime-version",
                                          "content-type",
                                          "content-transfer-encoding",
                                          "message-id",
                                          NULL};
        const char *files[] = {"dkimpy/message.mbox", "dkimpy/test_extra.message"};
        char *txt = slurp_txt("dkimpy/test.txt");
        struct rec recs[1] = {{"test._domainkey.example.com", MS_DNS_OK, txt}};

        for (size_t f = 0; f < 2; f++) {
            size_t ml;
            char *mm = slurp_msg(files[f], &ml);
            size_t nsig = f == 0 ? 2 : 1;

            for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
                struct ms_dkim_signer sg = {.domain = "example.com",
                                            .selector = "test",
                                            .key = pk,
                                            .hcanon = c,
                                            .bcanon = c,
                                            .headers = all};

                assert_int_equal(ms_dkim_sign(mm, ml, &sg, NOW, &hdr), 0);
                if (f == 0) {
                    char *u = unfold(hdr);

                    assert_non_null(strstr(u, "received:received:received:received:"));
                    free(u);
                }
                sm = concat(hdr, mm, &slen);
                v = verify_with(sm, slen, NOW, recs, 1, NULL);
                assert_int_equal(ms_dkim_verify_count(v), nsig);
                assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
                ms_dkim_verify_free(v);
                free(sm);
                free(hdr);
            }
            free(mm);
        }
        free(txt);
    }
    ms_dkim_key_free(pk);
    free(key);
    free(msg);

    /* Ed25519: ed25519test.key (a base64 seed) with ed25519test.dns. */
    {
        char *dns = slurp_txt("dkimpy/ed25519test.dns");
        struct rec recs[1] = {{"test._domainkey.example.com", MS_DNS_OK, dns}};
        struct ms_dkim_signer sg = {.domain = "example.com", .selector = "test"};
        char *pub;

        msg = slurp_msg("dkimpy/ed25519test.msg", &len);
        key = slurp("dkimpy/ed25519test.key", &klen);
        assert_int_equal(ms_dkim_key_parse(key, klen, &pk, &why), 0);
        assert_int_equal(ms_dkim_key_record(pk, &pub), 0);
        assert_string_equal(strstr(pub, "p="), strstr(dns, "p="));
        free(pub);
        sg.key = pk;
        for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
            sg.hcanon = sg.bcanon = c;
            assert_int_equal(ms_dkim_sign(msg, len, &sg, NOW, &hdr), 0);
            sm = concat(hdr, msg, &slen);
            v = verify_with(sm, slen, NOW, recs, 1, NULL);
            assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
            ms_dkim_verify_free(v);
            free(sm);
            /* body altered: fail */
            {
                char *tmp = concat(hdr, msg, &slen);

                sm = concat(tmp, "foo", &slen);
                v = verify_with(sm, slen, NOW, recs, 1, NULL);
                assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
                ms_dkim_verify_free(v);
                free(sm);
                free(tmp);
            }
            free(hdr);
        }
        ms_dkim_key_free(pk);
        free(key);
        free(msg);
        free(dns);
    }
}

/* dkim-quoted-printable alone (RFC 6376 §2.11). */
static void test_qp_decode(void **state)
{
    static const struct {
        const char *in;
        int rc; /* length or MS_E* */
        const char *out;
    } cases[] = {
        {"", 0, ""},
        {"abc", 3, "abc"},
        {"=41=42", 2, "AB"},
        {"=3D=3B=20=FF=00", 5, "=; \xff\0"},
        {" a b\t c ", 3, "abc"},
        {"a\r\n b\r\n\t\tc", 3, "abc"},
        {"!:<>~", 5, "!:<>~"},
        {"=", MS_EPROTO, NULL},
        {"a=4", MS_EPROTO, NULL},
        {"=4G", MS_EPROTO, NULL},
        {"=ff", MS_EPROTO, NULL}, /* "no lowercase characters permitted" */
        {"=\r\n 41", MS_EPROTO, NULL},
        {"= 41", MS_EPROTO, NULL},
        {"a;b", MS_EPROTO, NULL},
        {"a\rb", MS_EPROTO, NULL},
        {"a\nb", MS_EPROTO, NULL},
        {"a\r\nb", MS_EPROTO, NULL},
        {"a\r\n", MS_EPROTO, NULL},
        {"a\x7f", MS_EPROTO, NULL},
        {"\xc3\xa9", MS_EPROTO, NULL}, /* 8-bit must be encoded */
        {"a\x01", MS_EPROTO, NULL},
    };
    char out[16];

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        int rc = ms_dkim_qp_decode(cases[k].in, strlen(cases[k].in), out, sizeof(out));

        if (rc != cases[k].rc)
            fail_msg("case %zu \"%s\": got %d want %d", k, cases[k].in, rc, cases[k].rc);
        if (rc >= 0)
            assert_memory_equal(out, cases[k].out, (size_t)rc);
    }
    assert_int_equal(ms_dkim_qp_decode("abc", 3, out, 3), 3);
    assert_int_equal(ms_dkim_qp_decode("ab=43d", 6, out, 3), MS_ETOOBIG);
}

/* ------------------------------------------------------------------------
 * Verifier rules and the signer, on generated keys
 * ------------------------------------------------------------------------ */

static char *pem_of(EVP_PKEY *pk, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p, *r;
    long n;

    assert_int_equal(PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL), 1);
    n = BIO_get_mem_data(b, &p);
    r = ms_strndup(p, (size_t)n);
    *len = (size_t)n;
    BIO_free(b);
    return r;
}

/* A new key for ms_dkim_sign() and its key record; *raw (if not NULL) gets
 * the same key for signing by hand (sign_field()). */
static ms_dkim_privkey *gen_key(int type, int bits, char **record, EVP_PKEY **raw)
{
    EVP_PKEY *pk = type == EVP_PKEY_RSA ? EVP_RSA_gen((unsigned)bits)
                                        : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ms_dkim_privkey *k;
    const char *why;
    size_t len;
    char *pem;

    assert_non_null(pk);
    pem = pem_of(pk, &len);
    assert_int_equal(ms_dkim_key_parse(pem, len, &k, &why), 0);
    assert_int_equal(ms_dkim_key_record(k, record), 0);
    free(pem);
    if (raw)
        *raw = pk;
    else
        EVP_PKEY_free(pk);
    return k;
}

static const char MSG[] =
    "From: Alice <alice@example.org>\r\n"
    "To: Bob <bob@example.net>\r\n"
    "Cc: carol@example.net\r\n"
    "Subject: A rather long subject line that goes on and on so that the header is long\r\n"
    "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "Message-ID: <1@example.org>\r\n"
    "X-Unsigned: yes\r\n"
    "\r\n"
    "Hello Bob.  \r\n"
    "\r\n"
    "Bye.\r\n"
    "\r\n\r\n";

struct keys {
    ms_dkim_privkey *rsa, *ed;
    char *rsa_rec, *ed_rec;
    EVP_PKEY *rsa_pk, *ed_pk; /* the same keys, for sign_field() */
};

static int setup_keys(void **state)
{
    struct keys *k = ms_calloc(1, sizeof(*k));

    k->rsa = gen_key(EVP_PKEY_RSA, 2048, &k->rsa_rec, &k->rsa_pk);
    k->ed = gen_key(EVP_PKEY_ED25519, 0, &k->ed_rec, &k->ed_pk);
    *state = k;
    return 0;
}

static int teardown_keys(void **state)
{
    struct keys *k = *state;

    ms_dkim_key_free(k->rsa);
    ms_dkim_key_free(k->ed);
    EVP_PKEY_free(k->rsa_pk);
    EVP_PKEY_free(k->ed_pk);
    free(k->rsa_rec);
    free(k->ed_rec);
    free(k);
    return 0;
}

static void test_sign_all_and_fold(void **state)
{
    struct keys *k = *state;
    struct ms_dkim_signer sg[2] = {
        {.domain = "example.org", .selector = "rsa2024", .key = k->rsa},
        {.domain = "example.org", .selector = "ed2024", .key = k->ed},
    };
    struct rec recs[2] = {{"rsa2024._domainkey.example.org", MS_DNS_OK, k->rsa_rec},
                          {"ed2024._domainkey.example.org", MS_DNS_OK, k->ed_rec}};
    char *hdrs, *sm;
    size_t slen;
    ms_dkim_verify *v;

    assert_int_equal(ms_dkim_sign_all(MSG, strlen(MSG), sg, 2, NOW, &hdrs), 0);
    /* Two fields; every line at most 78 characters; relaxed/relaxed by
     * default; From oversigned; unsigned X-Unsigned not listed. */
    {
        const char *p = hdrs;
        int fields = 0;

        while (*p) {
            const char *e = strstr(p, "\r\n");

            assert_non_null(e);
            assert_true(e - p <= MS_DKIM_LINE_MAX);
            if (strncmp(p, "DKIM-Signature:", 15) == 0)
                fields++;
            else
                assert_true(p[0] == ' ');
            p = e + 2;
        }
        assert_int_equal(fields, 2);
    }
    {
        char *u = unfold(hdrs);

        assert_non_null(strstr(u, "c=relaxed/relaxed;"));
        assert_non_null(strstr(u, "a=rsa-sha256;"));
        assert_non_null(strstr(u, "a=ed25519-sha256;"));
        assert_non_null(strstr(u, "t=1700000000;"));
        assert_non_null(strstr(u, "h=from:from:subject:date:message-id:to:cc;"));
        assert_null(strstr(u, "x-unsigned"));
        free(u);
    }
    sm = concat(hdrs, MSG, &slen);
    v = verify_with(sm, slen, NOW + 5, recs, 2, NULL);
    assert_int_equal(ms_dkim_verify_count(v), 2);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
    assert_int_equal(ms_dkim_verify_sig(v, 0)->key_bits, 2048);
    ms_dkim_verify_free(v);
    free(sm);
    free(hdrs);

    /* The same with an empty body, and with an 8-bit body. */
    {
        const char *bodies[] = {"", "\r\n\r\n",
                                "Gr\xc3\xbc\xc3\x9f"
                                "e \xff\xfe\r\n"};

        for (size_t b = 0; b < 3; b++) {
            char *m = ms_asprintf("From: a@example.org\r\nSubject: x\r\n\r\n%s", bodies[b]);

            for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
                sg[0].hcanon = sg[0].bcanon = sg[1].hcanon = sg[1].bcanon = c;
                assert_int_equal(ms_dkim_sign_all(m, strlen(m), sg, 2, NOW, &hdrs), 0);
                sm = concat(hdrs, m, &slen);
                v = verify_with(sm, slen, NOW, recs, 2, NULL);
                assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
                assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
                ms_dkim_verify_free(v);
                free(sm);
                free(hdrs);
            }
            free(m);
        }
    }
    /* Signers with different body canonicalisations in one call (the body
     * hash is computed once per canonicalisation, shared by the signers
     * that use it): MSG's body hashes differently simple and relaxed
     * (trailing spaces, empty lines at the end), each signature verifies,
     * and the fields are those each signer writes alone. */
    for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
        char *one[2], *both;
        struct ms_dkim_signer sg3[3] = {sg[0], sg[1], sg[0]};

        sg3[0].hcanon = sg3[1].hcanon = sg3[2].hcanon = MS_DKIM_RELAXED;
        sg3[0].bcanon = (enum ms_dkim_canon)c;
        sg3[1].bcanon = c == MS_DKIM_SIMPLE ? MS_DKIM_RELAXED : MS_DKIM_SIMPLE;
        sg3[2].bcanon = (enum ms_dkim_canon)c;
        sg3[2].body_length = 1;
        assert_int_equal(ms_dkim_sign_all(MSG, strlen(MSG), sg3, 3, NOW, &hdrs), 0);
        assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &sg3[0], NOW, &one[0]), 0);
        assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &sg3[1], NOW, &one[1]), 0);
        assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &sg3[2], NOW, &both), 0);
        {
            char *want = ms_asprintf("%s%s%s", one[0], one[1], both);
            assert_string_equal(hdrs, want);
            free(want);
        }
        sm = concat(hdrs, MSG, &slen);
        v = verify_with(sm, slen, NOW, recs, 2, NULL);
        assert_int_equal(ms_dkim_verify_count(v), 3);
        assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
        assert_int_equal(result_of(v, 1), MS_DKIM_PASS);
        assert_int_equal(result_of(v, 2), MS_DKIM_PASS);
        ms_dkim_verify_free(v);
        {
            char *u0 = unfold(one[0]), *u1 = unfold(one[1]);
            assert_string_not_equal(strstr(u0, "bh="), strstr(u1, "bh="));
            free(u0);
            free(u1);
        }
        free(sm);
        free(hdrs);
        free(one[0]);
        free(one[1]);
        free(both);
    }
    assert_int_equal(ms_dkim_sign_all(MSG, strlen(MSG), sg, 0, NOW, &hdrs), MS_EINVAL);
}

/* Sign MSG with the RSA key plus extra signer settings, serve `rec` and
 * return the verifier. */
static ms_dkim_verify *sign_verify(struct keys *k, const struct ms_dkim_signer *extra,
                                   const char *rec, const char *append, int64_t sign_time,
                                   int64_t verify_time)
{
    struct ms_dkim_signer sg = *extra;
    struct rec recs[1] = {{"s._domainkey.example.org", MS_DNS_OK, rec}};
    char *hdr, *sm, *tmp;
    size_t slen;
    ms_dkim_verify *v;

    sg.domain = "example.org";
    sg.selector = "s";
    if (sg.key == NULL)
        sg.key = k->rsa;
    assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &sg, sign_time, &hdr), 0);
    tmp = concat(hdr, MSG, &slen);
    sm = concat(tmp, append, &slen);
    v = verify_with(sm, slen, verify_time, recs, 1, NULL);
    free(tmp);
    free(hdr);
    /* The verifier keeps a pointer to the message: leak-free by keeping it
     * alive in a static slot freed on the next call. */
    {
        static char *keep;

        free(keep);
        keep = sm;
    }
    return v;
}

static void test_verify_rules(void **state)
{
    struct keys *k = *state;
    struct ms_dkim_signer none = {0}, withl = {.body_length = 1}, withx = {.expire_after = 3600},
                          withi = {.identity = "alice@mail.example.org"};
    ms_dkim_verify *v;
    char *rec;

    /* l=: equal to the body passes; a body grown past l= is reported as
     * policy, never pass. */
    v = sign_verify(k, &withl, k->rsa_rec, "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    assert_true(ms_dkim_verify_sig(v, 0)->l > 0);
    ms_dkim_verify_free(v);
    v = sign_verify(k, &withl, k->rsa_rec, "Appended by an attacker.\r\n", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_POLICY);
    assert_non_null(strstr(ms_dkim_verify_sig(v, 0)->reason, "covers only part"));
    ms_dkim_verify_free(v);

    /* x=: valid until expiry, permerror after; t= in the future. */
    v = sign_verify(k, &withx, k->rsa_rec, "", NOW, NOW + 3599);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    ms_dkim_verify_free(v);
    v = sign_verify(k, &withx, k->rsa_rec, "", NOW, NOW + 3601);
    assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
    assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "signature expired (x=)");
    ms_dkim_verify_free(v);
    v = sign_verify(k, &none, k->rsa_rec, "", NOW + 3600, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
    assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "t= in the future");
    ms_dkim_verify_free(v);

    /* i= in a subdomain passes; with t=s in the key it does not. */
    v = sign_verify(k, &withi, k->rsa_rec, "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    assert_string_equal(ms_dkim_verify_sig(v, 0)->i, "alice@mail.example.org");
    ms_dkim_verify_free(v);
    rec = ms_asprintf("v=DKIM1; t=s; %s", k->rsa_rec + 9);
    v = sign_verify(k, &withi, rec, "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
    ms_dkim_verify_free(v);
    free(rec);

    /* t=y is reported; the result stands. */
    rec = ms_asprintf("v=DKIM1; t=y; %s", k->rsa_rec + 9);
    v = sign_verify(k, &none, rec, "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
    assert_true(ms_dkim_verify_sig(v, 0)->testing);
    ms_dkim_verify_free(v);
    free(rec);

    /* Revoked key; wrong key type; key h= without sha256. */
    v = sign_verify(k, &none, "v=DKIM1; k=rsa; p=", "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
    assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "key revoked");
    ms_dkim_verify_free(v);
    v = sign_verify(k, &none, k->ed_rec, "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
    ms_dkim_verify_free(v);
    rec = ms_asprintf("v=DKIM1; h=sha1; %s", k->rsa_rec + 9);
    v = sign_verify(k, &none, rec, "", NOW, NOW);
    assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
    ms_dkim_verify_free(v);
    free(rec);

    /* Another key of the right type: fail. */
    {
        char *other;
        ms_dkim_privkey *ok = gen_key(EVP_PKEY_ED25519, 0, &other, NULL);
        struct ms_dkim_signer e = {.key = k->ed};

        v = sign_verify(k, &e, other, "", NOW, NOW);
        assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
        ms_dkim_verify_free(v);
        ms_dkim_key_free(ok);
        free(other);
    }

    /* An RSA key under 1024 bits fails (RFC 8301 §3.2). */
    {
        EVP_PKEY *small = EVP_RSA_gen(512);
        unsigned char *der = NULL;
        int n = i2d_PUBKEY(small, &der);
        char *b = ms_malloc(4 * (size_t)n / 3 + 8);

        EVP_EncodeBlock((unsigned char *)b, der, n);
        rec = ms_asprintf("v=DKIM1; p=%s", b);
        v = sign_verify(k, &none, rec, "", NOW, NOW);
        assert_int_equal(result_of(v, 0), MS_DKIM_FAIL);
        assert_string_equal(ms_dkim_verify_sig(v, 0)->reason, "RSA key too small (512 bits)");
        ms_dkim_verify_free(v);
        free(rec);
        free(b);
        OPENSSL_free(der);
        EVP_PKEY_free(small);
    }
}

/* A DKIM-Signature made by hand, without ms_dkim_sign(), so that a test
 * writes i= as it likes: `tags` is the field up to h= (v, a, c=relaxed/
 * relaxed, d, s, i ...); h=from:to:subject, bh= and b= are added here as
 * RFC 6376 §3.7 says (RFC 8463 §3 for Ed25519: the SHA-256 of the header
 * data is what gets signed).  Returns the field with its CRLF. */
static char *sign_field(EVP_PKEY *pk, const char *msg, const char *tags)
{
    static const char *const names[] = {"from", "to", "subject"};
    struct ms_dkim_hdr h[16];
    struct ms_dkim_body body;
    struct ms_buf data;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t bh[32], dg[32], sig[1024];
    size_t len = strlen(msg), body_off, siglen = sizeof(sig);
    unsigned int dl;
    char bh64[64], b64[1400], *field, *out;
    int n = ms_dkim_headers_split(msg, len, h, 16, &body_off);

    assert_true(n > 0);
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    ms_dkim_body_init(&body, MS_DKIM_RELAXED, -1, emit_md, md);
    ms_dkim_body_update(&body, msg + body_off, len - body_off);
    ms_dkim_body_final(&body);
    assert_int_equal(EVP_DigestFinal_ex(md, bh, &dl), 1);
    EVP_EncodeBlock((unsigned char *)bh64, bh, 32);
    field = ms_asprintf("DKIM-Signature: %s; h=from:to:subject; bh=%s; b=", tags, bh64);
    ms_buf_init(&data, 1 << 20);
    assert_int_equal(ms_dkim_header_data(msg, h, (size_t)n, MS_DKIM_RELAXED, names, 3, field,
                                         strlen(field), emit_buf, &data),
                     0);
    if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_ED25519) {
        assert_int_equal(EVP_Digest(data.data, data.len, dg, &dl, EVP_sha256(), NULL), 1);
        assert_int_equal(EVP_DigestSignInit(md, NULL, NULL, NULL, pk), 1);
        assert_int_equal(EVP_DigestSign(md, sig, &siglen, dg, sizeof(dg)), 1);
    } else {
        assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk), 1);
        assert_int_equal(EVP_DigestSign(md, sig, &siglen, (const uint8_t *)data.data, data.len), 1);
    }
    EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
    out = ms_asprintf("%s%s\r\n", field, b64);
    ms_buf_free(&data);
    free(field);
    EVP_MD_CTX_free(md);
    return out;
}

/* Issue 22: a signer may write i= dkim-quoted-printable (§3.5), any way it
 * likes; the signature verifies and the AUID is the decoded one, with
 * RSA-SHA256 and Ed25519-SHA256 alike.  A malformed encoding in a
 * signature that is otherwise good is a permerror. */
static void test_verify_encoded_i(void **state)
{
    static const char msg[] = "From: Jeff <jlong@messiah.edu>\r\n"
                              "To: bob@example.net\r\n"
                              "Subject: encoded i=\r\n"
                              "\r\n"
                              "Hello.\r\n";
    static const struct {
        const char *i;
        enum ms_dkim_result want;
        const char *auid;   /* decoded; or the reason of a permerror */
        const char *strict; /* the permerror with key t=s, if any */
    } cases[] = {
        {"jlong@messiah=2Eedu", MS_DKIM_PASS, "jlong@messiah.edu", NULL},
        {"jlong=40mail=2Emessiah.edu", MS_DKIM_PASS, "jlong@mail.messiah.edu",
         "key t=s: i= domain must equal d="},
        {"jlong=40messiah.edu", MS_DKIM_PASS, "jlong@messiah.edu", NULL},
        {"jlong=40messiah=2Eedu", MS_DKIM_PASS, "jlong@messiah.edu", NULL},
        {"=6Along@\r\n messiah.edu", MS_DKIM_PASS, "jlong@messiah.edu", NULL},
        {"jlong@messiah.edu", MS_DKIM_PASS, "jlong@messiah.edu", NULL},
        {"jlong=40messiah=2eedu", MS_DKIM_PERMERROR, "bad i= (dkim-quoted-printable)", NULL},
        {"jlong=4messiah.edu", MS_DKIM_PERMERROR, "bad i= (dkim-quoted-printable)", NULL},
        {"jlong@messiah.edu=", MS_DKIM_PERMERROR, "bad i= (dkim-quoted-printable)", NULL},
        {"jlong=00@messiah.edu", MS_DKIM_PERMERROR, "bad i=", NULL},
        {"jlong=40messiah=2Eorg", MS_DKIM_PERMERROR, "i= not within d=", NULL},
    };
    struct keys *k = *state;
    EVP_PKEY *pks[2] = {k->rsa_pk, k->ed_pk};
    const char *algs[2] = {"rsa-sha256", "ed25519-sha256"};

    for (int a = 0; a < 2; a++) {
        char *recs_txt[2] = {ms_strdup(a ? k->ed_rec : k->rsa_rec),
                             /* t=s: the i= domain must equal d=, decoded */
                             ms_asprintf("v=DKIM1; t=s; %s", (a ? k->ed_rec : k->rsa_rec) + 9)};

        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            for (int strict = 0; strict < 2; strict++) {
                struct rec recs[1] = {{"sel._domainkey.messiah.edu", MS_DNS_OK, recs_txt[strict]}};
                char *tags = ms_asprintf("v=1; a=%s; c=relaxed/relaxed; d=messiah.edu; s=sel; "
                                         "t=%d; i=%s",
                                         algs[a], NOW, cases[c].i);
                char *field = sign_field(pks[a], msg, tags), *m;
                size_t mlen;
                ms_dkim_verify *v;
                const struct ms_dkim_sigresult *r;

                m = concat(field, msg, &mlen);
                v = verify_with(m, mlen, NOW, recs, 1, NULL);
                r = ms_dkim_verify_sig(v, 0);
                assert_int_equal(ms_dkim_verify_count(v), 1);
                if (strict && cases[c].strict) {
                    assert_int_equal(r->result, MS_DKIM_PERMERROR);
                    assert_string_equal(r->reason, cases[c].strict);
                } else if (r->result != cases[c].want) {
                    fail_msg("%s i=%s%s: %s (%s)", algs[a], cases[c].i, strict ? " t=s" : "",
                             ms_dkim_result_name(r->result), r->reason);
                } else if (cases[c].want == MS_DKIM_PASS) {
                    assert_string_equal(r->i, cases[c].auid);
                } else {
                    assert_string_equal(r->reason, cases[c].auid);
                }
                ms_dkim_verify_free(v);
                free(m);
                free(field);
                free(tags);
            }
        }
        free(recs_txt[0]);
        free(recs_txt[1]);
    }
}

/* Our signer writes i= dkim-quoted-printable: '=' and ';' are encoded,
 * and a long one is folded where §2.11 allows it. */
static void test_sign_identity(void **state)
{
    struct keys *k = *state;
    static const char *const ids[] = {
        "first=last@mail.example.org",
        "a;b@example.org",
        "@example.org",
        "a-rather-long-local-part.with.many.dots.that.goes.on=and=on@and.on.mail.example.org",
    };
    static const char *const written[] = {
        "i=first=3Dlast@mail.example.org;", "i=a=3Bb@example.org;", "i=@example.org;",
        NULL, /* folded */
    };

    for (size_t n = 0; n < sizeof(ids) / sizeof(ids[0]); n++) {
        struct ms_dkim_signer sg = {.identity = ids[n]};
        struct ms_dkim_signer ed = {.identity = ids[n], .key = k->ed};

        for (int a = 0; a < 2; a++) {
            ms_dkim_verify *v =
                sign_verify(k, a ? &ed : &sg, a ? k->ed_rec : k->rsa_rec, "", NOW, NOW);

            assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
            assert_string_equal(ms_dkim_verify_sig(v, 0)->i, ids[n]);
            ms_dkim_verify_free(v);
        }
        {
            struct ms_dkim_signer one = sg;
            char *hdr, *u;

            one.domain = "example.org";
            one.selector = "s";
            one.key = k->rsa;
            assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &one, NOW, &hdr), 0);
            for (const char *p = hdr; *p; p = strstr(p, "\r\n") + 2)
                assert_true(strstr(p, "\r\n") - p <= MS_DKIM_LINE_MAX);
            u = unfold(hdr);
            if (written[n])
                assert_non_null(strstr(u, written[n]));
            else
                assert_non_null(strstr(u, "i=a-rather-long-local-part.with.many.dots.that.goes.on"
                                          "=3Dand=3Don@and.on.mail.example.org;"));
            free(u);
            free(hdr);
        }
    }
}

static void test_verify_headers(void **state)
{
    static const struct {
        const char *sig;
        enum ms_dkim_result want;
        const char *reason;
    } cases[] = {
        {"v=1; a=rsa-sha1; d=example.org; s=s; h=from; bh=AAAA; b=AAAA", MS_DKIM_FAIL,
         "rsa-sha1 is not accepted (RFC 8301)"},
        {"v=1; a=hmac-sha256; d=example.org; s=s; h=from; bh=AAAA; b=AAAA", MS_DKIM_PERMERROR,
         "unsupported algorithm a=hmac-sha256"},
        {"v=1; a=rsa-sha256; d=example.org; s=s; h=from; bh=AAAA; b=AAAA", MS_DKIM_PERMERROR,
         "bh= is not a SHA-256 hash"},
        {"v=1; v=1; a=rsa-sha256; d=example.org; s=s; h=from; bh=AAAA; b=AAAA", MS_DKIM_PERMERROR,
         "duplicate tag"},
        {"v=1; a=rsa-sha256; d=example.org; s=s; h=to; bh=AAAA; b=AAAA", MS_DKIM_PERMERROR,
         "From not signed (h=)"},
    };

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char *m =
            ms_asprintf("DKIM-Signature: %s\r\nFrom: a@example.org\r\n\r\nx\r\n", cases[k].sig);
        int nq;
        ms_dkim_verify *v = verify_with(m, strlen(m), NOW, NULL, 0, &nq);
        const struct ms_dkim_sigresult *r = ms_dkim_verify_sig(v, 0);

        assert_int_equal(ms_dkim_verify_count(v), 1);
        assert_int_equal(nq, 0);
        assert_int_equal(r->result, cases[k].want);
        assert_string_equal(r->reason, cases[k].reason);
        if (strcmp(cases[k].reason, "duplicate tag") != 0)
            assert_string_equal(r->d, "example.org"); /* named even when refused */
        ms_dkim_verify_free(v);
        free(m);
    }
    /* More than MS_DKIM_SIGS_MAX signatures: the rest in one permerror. */
    {
        struct ms_buf b;
        ms_dkim_verify *v;
        int nq;

        ms_buf_init(&b, 1 << 20);
        for (int k = 0; k < MS_DKIM_SIGS_MAX + 5; k++)
            ms_buf_appendf(&b,
                           "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s%d; h=from; "
                           "bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\n",
                           k);
        ms_buf_appendf(&b, "From: a@example.org\r\n\r\n");
        v = verify_with(b.data, b.len, NOW, NULL, 0, &nq);
        assert_int_equal(nq, MS_DKIM_SIGS_MAX);
        assert_int_equal(ms_dkim_verify_count(v), MS_DKIM_SIGS_MAX + 1);
        assert_int_equal(result_of(v, MS_DKIM_SIGS_MAX), MS_DKIM_PERMERROR);
        ms_dkim_verify_free(v);
        ms_buf_free(&b);
    }
    /* A malformed header section that carries a signature. */
    {
        const char *m = "DKIM-Signature: v=1\r\nnot a header\r\n\r\n";
        ms_dkim_verify *v = verify_with(m, strlen(m), NOW, NULL, 0, NULL);

        assert_int_equal(ms_dkim_verify_count(v), 1);
        assert_int_equal(result_of(v, 0), MS_DKIM_PERMERROR);
        ms_dkim_verify_free(v);
    }
    /* No signature at all. */
    {
        const char *m = "From: a@example.org\r\n\r\nbody\r\n";
        ms_dkim_verify *v = verify_with(m, strlen(m), NOW, NULL, 0, NULL);
        struct ms_dns_result r = {.status = MS_DNS_OK};

        assert_int_equal(ms_dkim_verify_count(v), 0);
        assert_int_equal(ms_dkim_verify_answer(v, &r), MS_EINVAL);
        assert_null(ms_dkim_verify_sig(v, 0));
        ms_dkim_verify_free(v);
    }
}

static void test_sign_errors(void **state)
{
    struct keys *k = *state;
    char *hdr;
    struct ms_dkim_signer bad[] = {
        {.domain = "example.org", .selector = "s"}, /* no key */
        {.domain = "", .selector = "s", .key = k->rsa},
        {.domain = "exa;mple.org", .selector = "s", .key = k->rsa},
        {.domain = "example.org", .selector = "s s", .key = k->rsa},
        {.domain = "example.org", .selector = "s", .key = k->rsa, .identity = "a@example.com"},
        {.domain = "example.org", .selector = "s", .key = k->rsa, .identity = "a@example..org"},
        {.domain = "example.org", .selector = "s", .key = k->rsa, .identity = "a\r\n@example.org"},
        {.domain = "example.org", .selector = "s", .key = k->rsa, .identity = "example.org"},
    };
    const char *why;
    ms_dkim_privkey *pk;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &bad[i], NOW, &hdr), MS_EINVAL);
    {
        struct ms_dkim_signer sg = {.domain = "example.org", .selector = "s", .key = k->rsa};
        const char *m = "From: a\r\n continuation fine\r\nbroken line\r\n\r\n";

        assert_int_equal(ms_dkim_sign(m, strlen(m), &sg, NOW, &hdr), MS_EPROTO);
    }
    assert_int_equal(ms_dkim_key_parse("garbage", 7, &pk, &why), MS_ECONFIG);
    assert_int_equal(ms_dkim_key_load("/nonexistent/key.pem", &pk, &why), MS_EIO);
    assert_null(pk);
}

/* Bodies and header sections larger than the verifier's hashing buffer
 * (MS_DKIM_HASHBUF in ms_dkim_verify.c): many short pieces, lines longer
 * than the buffer (passed through without it), and runs ending exactly at
 * its edge; signed by ms_dkim_sign() (its own hashing) and verified, both
 * canonicalizations, with and without l=. */
static void test_verify_large_bodies(void **state)
{
    struct keys *k = *state;
    struct rec recs[1] = {{"s._domainkey.example.org", MS_DNS_OK, k->ed_rec}};
    struct ms_buf m;
    char *hdr, *sm;
    size_t slen;

    ms_buf_init(&m, 1 << 22);
    assert_int_equal(ms_buf_append(&m, "From: a@example.org\r\nSubject: ", 30), 0);
    for (int i = 0; i < 400; i++)
        assert_int_equal(ms_buf_append(&m, "word ", 5), 0);
    assert_int_equal(ms_buf_append(&m, "\r\n\r\n", 4), 0);
    for (int i = 0; i < 3000; i++)
        assert_int_equal(ms_buf_append(&m, i % 7 ? "ab  " : "x\t\r\n", 4), 0);
    for (int len = 2040; len <= 2056; len += 8) {
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < len; j++)
                assert_int_equal(ms_buf_append(&m, j % 61 == 60 ? " " : "y", 1), 0);
            assert_int_equal(ms_buf_append(&m, "\r\n", 2), 0);
        }
    }
    for (int i = 0; i < 5000; i++)
        assert_int_equal(ms_buf_append(&m, "z", 1), 0);
    assert_int_equal(ms_buf_append(&m, "\r\n\r\n\r\n", 6), 0);
    for (int c = MS_DKIM_SIMPLE; c <= MS_DKIM_RELAXED; c++) {
        for (int l = 0; l <= 1; l++) {
            struct ms_dkim_signer sg = {.domain = "example.org",
                                        .selector = "s",
                                        .key = k->ed,
                                        .hcanon = c,
                                        .bcanon = c,
                                        .body_length = l};
            ms_dkim_verify *v;

            assert_int_equal(ms_dkim_sign((const char *)m.data, m.len, &sg, NOW, &hdr), 0);
            {
                char *body = ms_strndup((const char *)m.data, m.len);

                sm = concat(hdr, body, &slen);
                free(body);
            }
            v = verify_with(sm, slen, NOW, recs, 1, NULL);
            assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
            assert_true(ms_dkim_verify_sig(v, 0)->body_len > 20000);
            ms_dkim_verify_free(v);
            /* One octet changed past the first buffer: fails. */
            sm[slen - 100] = sm[slen - 100] == 'z' ? 'q' : 'z';
            v = verify_with(sm, slen, NOW, recs, 1, NULL);
            assert_int_equal(ms_dkim_verify_sig(v, 0)->result, MS_DKIM_FAIL);
            ms_dkim_verify_free(v);
            free(sm);
            free(hdr);
        }
    }
    ms_buf_free(&m);
}

/* ------------------------------------------------------------------------
 * The key cache
 * ------------------------------------------------------------------------ */

/* MSG signed by `key` as s._domainkey.example.org, with its field. */
static char *signed_by(const ms_dkim_privkey *key, size_t *len)
{
    struct ms_dkim_signer sg = {.domain = "example.org", .selector = "s", .key = key};
    char *hdr, *sm;

    assert_int_equal(ms_dkim_sign(MSG, strlen(MSG), &sg, NOW, &hdr), 0);
    sm = concat(hdr, MSG, len);
    free(hdr);
    return sm;
}

/* Verify sm (one signature) with `rec` served for it, through cache c;
 * the result, its reason copied to why[] when not NULL. */
static enum ms_dkim_result verify_cached(const char *sm, size_t len, const char *rec,
                                         ms_dkim_keycache *c, char *why, size_t whylen)
{
    struct rec recs[1] = {{"s._domainkey.example.org", MS_DNS_OK, rec}};
    ms_dkim_verify *v = verify_with_keys(sm, len, NOW, recs, 1, NULL, c);
    const struct ms_dkim_sigresult *r;
    enum ms_dkim_result res;

    assert_int_equal(ms_dkim_verify_count(v), 1);
    r = ms_dkim_verify_sig(v, 0);
    res = r->result;
    if (why)
        snprintf(why, whylen, "%s", r->reason);
    if (res == MS_DKIM_PASS)
        assert_true(r->key_bits > 0);
    ms_dkim_verify_free(v);
    return res;
}

static void assert_stats(ms_dkim_keycache *c, uint64_t hits, uint64_t misses, uint64_t evictions,
                         uint64_t bad, size_t entries)
{
    struct ms_dkim_keycache_stats st;

    ms_dkim_keycache_stats(c, &st);
    assert_int_equal(st.hits, hits);
    assert_int_equal(st.misses, misses);
    assert_int_equal(st.evictions, evictions);
    assert_int_equal(st.bad, bad);
    assert_int_equal(st.entries, entries);
}

/* The first use of a key decodes it, the next ones do not; results and
 * key sizes are the same either way. */
static void test_keycache_hit_miss(void **state)
{
    struct keys *k = *state;
    ms_dkim_keycache *c = ms_dkim_keycache_new(4);
    size_t rl, el;
    char *rsa_msg = signed_by(k->rsa, &rl), *ed_msg = signed_by(k->ed, &el);

    assert_stats(c, 0, 0, 0, 0, 0);
    assert_int_equal(verify_cached(rsa_msg, rl, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 0, 1, 0, 0, 1);
    assert_int_equal(verify_cached(rsa_msg, rl, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 1, 1, 0, 0, 1);
    assert_int_equal(verify_cached(ed_msg, el, k->ed_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 1, 2, 0, 0, 2);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(verify_cached(ed_msg, el, k->ed_rec, c, NULL, 0), MS_DKIM_PASS);
        assert_int_equal(verify_cached(rsa_msg, rl, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    }
    assert_stats(c, 7, 2, 0, 0, 2);
    /* A cached RSA key still reports its size; the same key under other
     * tags (t=y) is the same entry, and t=y is read from this record. */
    {
        struct rec recs[1] = {{"s._domainkey.example.org", MS_DNS_OK, NULL}};
        char *rec = ms_asprintf("v=DKIM1; t=y; %s", k->rsa_rec + 9);
        ms_dkim_verify *v;

        recs[0].txt = rec;
        v = verify_with_keys(rsa_msg, rl, NOW, recs, 1, NULL, c);
        assert_int_equal(result_of(v, 0), MS_DKIM_PASS);
        assert_int_equal(ms_dkim_verify_sig(v, 0)->key_bits, 2048);
        assert_true(ms_dkim_verify_sig(v, 0)->testing);
        ms_dkim_verify_free(v);
        free(rec);
    }
    assert_stats(c, 8, 2, 0, 0, 2);
    /* A changed body still fails with a cached key. */
    rsa_msg[rl - 5] = 'X';
    assert_int_equal(verify_cached(rsa_msg, rl, k->rsa_rec, c, NULL, 0), MS_DKIM_FAIL);
    assert_stats(c, 9, 2, 0, 0, 2);
    free(rsa_msg);
    free(ed_msg);
    ms_dkim_keycache_free(c);
    ms_dkim_keycache_free(NULL);
}

/* At the limit the least recently used key goes. */
static void test_keycache_eviction(void **state)
{
    struct keys *k = *state;
    ms_dkim_keycache *c = ms_dkim_keycache_new(2);
    char *c_rec;
    ms_dkim_privkey *ck = gen_key(EVP_PKEY_ED25519, 0, &c_rec, NULL);
    size_t al, bl, cl;
    char *a = signed_by(k->rsa, &al), *b = signed_by(k->ed, &bl), *cm = signed_by(ck, &cl);

    assert_int_equal(verify_cached(a, al, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_int_equal(verify_cached(b, bl, k->ed_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_int_equal(verify_cached(a, al, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 1, 2, 0, 0, 2);
    /* Full: the third key drops B, used longest ago, not A. */
    assert_int_equal(verify_cached(cm, cl, c_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 1, 3, 1, 0, 2);
    assert_int_equal(verify_cached(a, al, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 2, 3, 1, 0, 2);
    assert_int_equal(verify_cached(cm, cl, c_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 3, 3, 1, 0, 2);
    /* B again: decoded again, and A (now the oldest) goes. */
    assert_int_equal(verify_cached(b, bl, k->ed_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 3, 4, 2, 0, 2);
    assert_int_equal(verify_cached(cm, cl, c_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 4, 4, 2, 0, 2);
    assert_int_equal(verify_cached(a, al, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 4, 5, 3, 0, 2);
    /* A cache of one still works. */
    {
        ms_dkim_keycache *one = ms_dkim_keycache_new(1);

        assert_int_equal(verify_cached(a, al, k->rsa_rec, one, NULL, 0), MS_DKIM_PASS);
        assert_int_equal(verify_cached(b, bl, k->ed_rec, one, NULL, 0), MS_DKIM_PASS);
        assert_int_equal(verify_cached(b, bl, k->ed_rec, one, NULL, 0), MS_DKIM_PASS);
        assert_stats(one, 1, 2, 1, 0, 1);
        ms_dkim_keycache_free(one);
    }
    free(a);
    free(b);
    free(cm);
    free(c_rec);
    ms_dkim_key_free(ck);
    ms_dkim_keycache_free(c);
}

/* The cache is keyed by the record's key, not its name: when the record at
 * the same name changes (a rotation), the new key is used at once, and the
 * old key's signatures stop verifying. */
static void test_keycache_changed_record(void **state)
{
    struct keys *k = *state;
    ms_dkim_keycache *c = ms_dkim_keycache_new(8);
    char *new_rec, why[160];
    ms_dkim_privkey *nk = gen_key(EVP_PKEY_ED25519, 0, &new_rec, NULL);
    size_t ol, nl;
    char *old_msg = signed_by(k->ed, &ol), *new_msg = signed_by(nk, &nl);

    assert_int_equal(verify_cached(old_msg, ol, k->ed_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_int_equal(verify_cached(old_msg, ol, new_rec, c, why, sizeof(why)), MS_DKIM_FAIL);
    assert_string_equal(why, "signature did not verify");
    assert_int_equal(verify_cached(new_msg, nl, new_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_int_equal(verify_cached(new_msg, nl, k->ed_rec, c, why, sizeof(why)), MS_DKIM_FAIL);
    assert_string_equal(why, "signature did not verify");
    assert_stats(c, 2, 2, 0, 0, 2);
    /* Revoked (p= empty) while the key is cached: permerror, not pass. */
    assert_int_equal(verify_cached(old_msg, ol, "v=DKIM1; k=ed25519; p=", c, why, sizeof(why)),
                     MS_DKIM_PERMERROR);
    assert_string_equal(why, "key revoked");
    /* The same octets offered as another key type are another entry (and
     * refused by the a=/k= rule before any decoding). */
    {
        char *as_rsa = ms_asprintf("v=DKIM1; k=rsa; %s", strstr(k->ed_rec, "p="));

        assert_int_equal(verify_cached(old_msg, ol, as_rsa, c, why, sizeof(why)),
                         MS_DKIM_PERMERROR);
        assert_string_equal(why, "key type k= does not match a=");
        free(as_rsa);
    }
    assert_stats(c, 2, 2, 0, 0, 2);
    free(old_msg);
    free(new_msg);
    free(new_rec);
    ms_dkim_key_free(nk);
    ms_dkim_keycache_free(c);
}

/* A p= that does not decode is refused every time and never cached; a key
 * that decodes but breaks a rule (RSA under 1024 bits) is cached as a key,
 * and the rule is applied again on every use. */
static void test_keycache_bad_key(void **state)
{
    struct keys *k = *state;
    ms_dkim_keycache *c = ms_dkim_keycache_new(4);
    size_t rl, el;
    char *rsa_msg = signed_by(k->rsa, &rl), *ed_msg = signed_by(k->ed, &el), why[160];
    /* Base64 of octets that are neither SubjectPublicKeyInfo nor PKCS#1,
     * and an Ed25519 p= of the wrong length. */
    static const char bad_rsa[] = "v=DKIM1; k=rsa; p=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
    static const char bad_ed[] = "v=DKIM1; k=ed25519; p=AAECAwQFBgcICQoLDA0ODxAREhMUFRYX";

    for (int i = 1; i <= 2; i++) {
        assert_int_equal(verify_cached(rsa_msg, rl, bad_rsa, c, why, sizeof(why)),
                         MS_DKIM_PERMERROR);
        assert_string_equal(why, "unusable public key p=");
        assert_int_equal(verify_cached(ed_msg, el, bad_ed, c, why, sizeof(why)), MS_DKIM_PERMERROR);
        assert_string_equal(why, "unusable public key p=");
        assert_stats(c, 0, 2 * (uint64_t)i, 0, 2 * (uint64_t)i, 0);
    }
    /* A good key afterwards is unaffected. */
    assert_int_equal(verify_cached(rsa_msg, rl, k->rsa_rec, c, NULL, 0), MS_DKIM_PASS);
    assert_stats(c, 0, 5, 0, 4, 1);
    {
        EVP_PKEY *small = EVP_RSA_gen(512);
        unsigned char *der = NULL;
        int n = i2d_PUBKEY(small, &der);
        char *b = ms_malloc(4 * (size_t)n / 3 + 8), *rec;

        EVP_EncodeBlock((unsigned char *)b, der, n);
        rec = ms_asprintf("v=DKIM1; p=%s", b);
        for (int i = 0; i < 2; i++) {
            assert_int_equal(verify_cached(rsa_msg, rl, rec, c, why, sizeof(why)), MS_DKIM_FAIL);
            assert_string_equal(why, "RSA key too small (512 bits)");
        }
        assert_stats(c, 1, 6, 0, 4, 2);
        free(rec);
        free(b);
        OPENSSL_free(der);
        EVP_PKEY_free(small);
    }
    free(rsa_msg);
    free(ed_msg);
    ms_dkim_keycache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_taglist),
        cmocka_unit_test(test_sig_parse),
        cmocka_unit_test(test_qp_decode),
        cmocka_unit_test(test_keyrec_parse),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_headers_split),
        cmocka_unit_test(test_canon_header),
        cmocka_unit_test(test_canon_body),
        cmocka_unit_test(test_canon_body_random),
        cmocka_unit_test(test_vector_rfc8463),
        cmocka_unit_test(test_vector_rfc8463_sign),
        cmocka_unit_test(test_vector_rfc8463_exact_b),
        cmocka_unit_test(test_vector_rfc6376),
        cmocka_unit_test(test_vector_dkimpy_signed),
        cmocka_unit_test(test_vector_dkimpy_roundtrip),
        cmocka_unit_test(test_verify_headers),
        cmocka_unit_test_setup_teardown(test_sign_all_and_fold, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_verify_rules, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_verify_encoded_i, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_sign_identity, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_sign_errors, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_verify_large_bodies, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_keycache_hit_miss, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_keycache_eviction, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_keycache_changed_record, setup_keys, teardown_keys),
        cmocka_unit_test_setup_teardown(test_keycache_bad_key, setup_keys, teardown_keys),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
