/*
 * The OpenSPF RFC 7208 test suite (../shared/testdata/spf/rfc7208-tests.yml)
 * run against lib/mail/ms_spf through an in-memory resolver that serves each
 * scenario's zonedata.  Read with libyaml (link with -lyaml).
 *
 * MAILSTREAM_TESTDATA names the test data directory (default
 * ../shared/testdata, relative to the repository root where tests run).
 * When it is absent the suite is skipped, visibly, or fails with CI=true
 * (testdata.h).
 *
 * Zone data conventions (from the suite's header and pyspf's driver):
 *  - SPF (type 99) records are served as TXT when the name has no TXT entry
 *    at all; "TXT: NONE" is such an entry that serves nothing;
 *  - TIMEOUT makes a query time out unless a record of the asked type came
 *    before it in the list;
 *  - CNAMEs are followed (a loop is a server failure), as a resolver would;
 *  - an absent name is NXDOMAIN, a present name without the type NODATA.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <yaml.h>

#include "ms_dns.h"
#include "ms_spf.h"
#include "testdata.h"

/* Tests whose expectation we believe wrong: none so far.  Listing one here
 * turns its failure into a reported exception, with the reason. */
static const struct {
    const char *name;
    const char *reason;
} believed_wrong[] = {
    {NULL, NULL},
};

#define ZONE_MAX_NAMES 256
#define ZONE_MAX_RECS 32
#define CNAME_DEPTH_MAX 8
#define STEPS_MAX 1000

struct zrec {
    char type[8]; /* A, AAAA, MX, TXT, SPF, PTR, CNAME, TIMEOUT */
    char *data;
    size_t len;
    int pref;
    int none; /* "TXT: NONE" */
};

struct zname {
    char *name;
    struct zrec recs[ZONE_MAX_RECS];
    size_t n;
};

struct zone {
    struct zname names[ZONE_MAX_NAMES];
    size_t n;
};

static yaml_node_t *map_get(yaml_document_t *d, yaml_node_t *map, const char *key)
{
    yaml_node_pair_t *p;

    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(d, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

static const char *scalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static void strip_dot_lower(char *s)
{
    size_t n = strlen(s), i;

    if (n > 0 && s[n - 1] == '.')
        s[n - 1] = '\0';
    for (i = 0; s[i]; i++)
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] += 32;
}

static void zone_free(struct zone *z)
{
    size_t i, k;

    for (i = 0; i < z->n; i++) {
        free(z->names[i].name);
        for (k = 0; k < z->names[i].n; k++)
            free(z->names[i].recs[k].data);
    }
    z->n = 0;
}

static void zone_load(struct zone *z, yaml_document_t *d, yaml_node_t *zd)
{
    yaml_node_pair_t *p;

    z->n = 0;
    if (zd == NULL || zd->type != YAML_MAPPING_NODE)
        return;
    for (p = zd->data.mapping.pairs.start; p < zd->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(d, p->key);
        yaml_node_t *v = yaml_document_get_node(d, p->value);
        struct zname *zn;
        yaml_node_item_t *it;

        assert_true(z->n < ZONE_MAX_NAMES);
        zn = &z->names[z->n++];
        memset(zn, 0, sizeof(*zn));
        zn->name = strdup(scalar(k));
        strip_dot_lower(zn->name);
        if (v->type == YAML_SCALAR_NODE) { /* a bare TIMEOUT */
            snprintf(zn->recs[zn->n++].type, 8, "%s", scalar(v));
            continue;
        }
        for (it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
            yaml_node_t *e = yaml_document_get_node(d, *it);
            struct zrec *r;
            yaml_node_t *val;
            const char *ty;

            assert_true(zn->n < ZONE_MAX_RECS);
            r = &zn->recs[zn->n++];
            if (e->type == YAML_SCALAR_NODE) {
                snprintf(r->type, sizeof(r->type), "%s", scalar(e));
                continue;
            }
            ty = scalar(yaml_document_get_node(d, e->data.mapping.pairs.start->key));
            val = yaml_document_get_node(d, e->data.mapping.pairs.start->value);
            snprintf(r->type, sizeof(r->type), "%s", ty);
            if (strcmp(ty, "MX") == 0) {
                yaml_node_t *pref = yaml_document_get_node(d, val->data.sequence.items.start[0]);
                yaml_node_t *host = yaml_document_get_node(d, val->data.sequence.items.start[1]);
                r->pref = atoi(scalar(pref));
                r->data = strdup(scalar(host));
                r->len = strlen(r->data);
            } else if (val->type == YAML_SEQUENCE_NODE) {
                /* Several character-strings: joined without separator. */
                size_t len = 0;
                r->data = calloc(1, 1);
                for (yaml_node_item_t *s = val->data.sequence.items.start;
                     s < val->data.sequence.items.top; s++) {
                    yaml_node_t *sn = yaml_document_get_node(d, *s);
                    r->data = realloc(r->data, len + sn->data.scalar.length + 1);
                    memcpy(r->data + len, sn->data.scalar.value, sn->data.scalar.length);
                    len += sn->data.scalar.length;
                    r->data[len] = '\0';
                }
                r->len = len;
            } else {
                r->len = val->data.scalar.length;
                r->data = malloc(r->len + 1);
                memcpy(r->data, val->data.scalar.value, r->len);
                r->data[r->len] = '\0';
                if (strcmp(ty, "TXT") == 0 && strcmp(r->data, "NONE") == 0)
                    r->none = 1;
                if (strcmp(ty, "PTR") == 0 || strcmp(ty, "CNAME") == 0) {
                    if (r->len > 0 && r->data[r->len - 1] == '.')
                        r->data[--r->len] = '\0';
                }
            }
        }
    }
}

static struct zname *zone_find(struct zone *z, const char *name)
{
    char tmp[MS_DNS_NAME_MAX + 2];
    size_t i;

    snprintf(tmp, sizeof(tmp), "%s", name);
    strip_dot_lower(tmp);
    for (i = 0; i < z->n; i++)
        if (strcmp(z->names[i].name, tmp) == 0)
            return &z->names[i];
    return NULL;
}

/* Answer q from the zone into res (records in rr, at most ZONE_MAX_RECS). */
static void zone_resolve(struct zone *z, const struct ms_dns_query *q, struct ms_dns_result *res,
                         struct ms_dns_rr *rr)
{
    char name[MS_DNS_NAME_MAX + 1];
    struct zname *zn;
    size_t i;
    int depth, has_txt, got;

    memset(res, 0, sizeof(*res));
    res->rr = rr;
    snprintf(name, sizeof(name), "%s", q->name);
    for (depth = 0;; depth++) {
        if ((zn = zone_find(z, name)) == NULL) {
            res->status = MS_DNS_NXDOMAIN;
            return;
        }
        for (i = 0; i < zn->n && strcmp(zn->recs[i].type, "CNAME") != 0; i++)
            ;
        if (i == zn->n)
            break;
        if (depth >= CNAME_DEPTH_MAX) { /* a CNAME loop: SERVFAIL */
            res->status = MS_DNS_TEMPFAIL;
            return;
        }
        snprintf(name, sizeof(name), "%s", zn->recs[i].data);
    }
    has_txt = 0;
    for (i = 0; i < zn->n; i++)
        if (strcmp(zn->recs[i].type, "TXT") == 0)
            has_txt = 1;
    got = 0;
    for (i = 0; i < zn->n; i++) {
        struct zrec *r = &zn->recs[i];
        struct ms_dns_rr *o = &rr[res->n];
        if (strcmp(r->type, "TIMEOUT") == 0) {
            if (!got) {
                res->status = MS_DNS_TEMPFAIL;
                res->n = 0;
                return;
            }
            break;
        }
        memset(o, 0, sizeof(*o));
        switch (q->type) {
        case MS_DNS_TXT:
            if (r->none ||
                !(strcmp(r->type, "TXT") == 0 || (!has_txt && strcmp(r->type, "SPF") == 0)))
                continue;
            o->type = MS_DNS_TXT;
            o->u.txt.data = r->data;
            o->u.txt.len = r->len;
            break;
        case MS_DNS_A:
            if (strcmp(r->type, "A") != 0)
                continue;
            o->type = MS_DNS_A;
            assert_int_equal(inet_pton(AF_INET, r->data, &o->u.a), 1);
            break;
        case MS_DNS_AAAA:
            if (strcmp(r->type, "AAAA") != 0)
                continue;
            o->type = MS_DNS_AAAA;
            assert_int_equal(inet_pton(AF_INET6, r->data, &o->u.aaaa), 1);
            break;
        case MS_DNS_MX:
            if (strcmp(r->type, "MX") != 0)
                continue;
            o->type = MS_DNS_MX;
            o->u.mx.preference = (uint16_t)r->pref;
            o->u.mx.host = r->data;
            break;
        case MS_DNS_PTR:
            if (strcmp(r->type, "PTR") != 0)
                continue;
            o->type = MS_DNS_PTR;
            o->u.ptr = r->data;
            break;
        case MS_DNS_TLSA: /* SPF never asks */
            continue;
        }
        got = 1;
        res->n++;
    }
    res->status = res->n ? MS_DNS_OK : MS_DNS_NODATA;
}

static int run_one(struct zone *z, const char *name, yaml_document_t *d, yaml_node_t *t)
{
    const char *helo = scalar(map_get(d, t, "helo"));
    const char *host = scalar(map_get(d, t, "host"));
    const char *mf = scalar(map_get(d, t, "mailfrom"));
    const char *exp_want = scalar(map_get(d, t, "explanation"));
    yaml_node_t *want = map_get(d, t, "result");
    struct ms_spf_request req;
    struct ms_dns_query q;
    struct ms_dns_result res;
    struct ms_dns_rr rr[ZONE_MAX_RECS];
    const char *got, *exp;
    char wanted[128] = "";
    ms_spf *s;
    int steps = 0, ok = 0;

    memset(&req, 0, sizeof(req));
    req.identity = MS_SPF_MAILFROM;
    if (inet_pton(AF_INET, host, &req.ip.v4) == 1)
        req.family = AF_INET;
    else if (inet_pton(AF_INET6, host, &req.ip.v6) == 1)
        req.family = AF_INET6;
    req.helo = helo;
    req.mail_from = mf;
    req.now = 1700000000;
    if (ms_spf_new(&s, &req) < 0) {
        printf("FAIL %s: ms_spf_new refused the request\n", name);
        return 0;
    }
    while (ms_spf_step(s, &q) == MS_SPF_NEED_DNS && steps++ < STEPS_MAX) {
        zone_resolve(z, &q, &res, rr);
        assert_int_equal(ms_spf_answer(s, &res), 0);
    }
    got = ms_spf_result_name(ms_spf_result(s));
    if (want->type == YAML_SCALAR_NODE) {
        ok = strcmp(got, scalar(want)) == 0;
        snprintf(wanted, sizeof(wanted), "%s", scalar(want));
    } else {
        for (yaml_node_item_t *it = want->data.sequence.items.start;
             it < want->data.sequence.items.top; it++) {
            const char *w = scalar(yaml_document_get_node(d, *it));
            ok |= strcmp(got, w) == 0;
            snprintf(wanted + strlen(wanted), sizeof(wanted) - strlen(wanted), "%s%s",
                     wanted[0] ? "|" : "", w);
        }
    }
    exp = ms_spf_explanation(s);
    if (ok && exp_want) {
        if (strcmp(exp_want, "DEFAULT") == 0)
            ok = exp == NULL;
        else
            ok = exp != NULL && strcmp(exp, exp_want) == 0;
    }
    if (steps > STEPS_MAX)
        ok = 0;
    if (!ok || getenv("MAILSTREAM_SPF_VERBOSE"))
        printf("%s %s: got %s (exp \"%s\", mech %s, problem %s) want %s (exp \"%s\")\n",
               ok ? "ok  " : "FAIL", name, got, exp ? exp : "(none)",
               ms_spf_mechanism(s) ? ms_spf_mechanism(s) : "-",
               ms_spf_problem(s) ? ms_spf_problem(s) : "-", wanted, exp_want ? exp_want : "-");
    ms_spf_free(s);
    return ok;
}

static const char *believed_wrong_reason(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(believed_wrong) / sizeof(believed_wrong[0]); i++)
        if (believed_wrong[i].name && strcmp(believed_wrong[i].name, name) == 0)
            return believed_wrong[i].reason;
    return NULL;
}

/* The suite, under the conformance data (testdata.h). */
#define SUITE_REL "spf/rfc7208-tests.yml"
static char suite_path[4096];

static void test_rfc7208_suite(void **state)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    struct zone *z;
    FILE *f;
    int passed = 0, failed = 0, excused = 0, scenarios = 0;

    (void)state;
    TESTDATA_NEED(SUITE_REL); /* before allocating: skip() does not return */
    z = calloc(1, sizeof(*z));
    f = fopen(suite_path, "rb");
    assert_non_null(f);
    assert_true(yaml_parser_initialize(&parser));
    yaml_parser_set_input_file(&parser, f);
    for (;;) {
        yaml_node_t *root, *tests;
        yaml_node_pair_t *p;

        assert_true(yaml_parser_load(&parser, &doc));
        if ((root = yaml_document_get_root_node(&doc)) == NULL) {
            yaml_document_delete(&doc);
            break;
        }
        scenarios++;
        zone_load(z, &doc, map_get(&doc, root, "zonedata"));
        tests = map_get(&doc, root, "tests");
        for (p = tests->data.mapping.pairs.start; p < tests->data.mapping.pairs.top; p++) {
            const char *name = scalar(yaml_document_get_node(&doc, p->key));
            const char *why;
            if (run_one(z, name, &doc, yaml_document_get_node(&doc, p->value))) {
                passed++;
            } else if ((why = believed_wrong_reason(name)) != NULL) {
                printf("EXCUSED %s: %s\n", name, why);
                excused++;
            } else {
                failed++;
            }
        }
        zone_free(z);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    fclose(f);
    free(z);
    printf("spf suite: %d passed, %d failed (%d scenarios, %d believed wrong)\n", passed, failed,
           scenarios, excused);
    assert_true(passed > 0);
    assert_int_equal(failed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7208_suite),
    };

    snprintf(suite_path, sizeof(suite_path), "%s/%s", testdata_dir(), SUITE_REL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
