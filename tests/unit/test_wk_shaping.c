/*
 * test_wk_shaping.c - worker/shaping.c (the shaping file: groups, limits,
 * backoff rules; the shipped etc/shaping.yaml) and lib/mail/ms_backoff.c
 * (the backoff record and its ramp).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../worker/shaping.h"
#include "ms_backoff.h"
#include "ms_error.h"

static wk_shaping *parse(const char *text, int want)
{
    wk_shaping *s = NULL;
    char err[256] = "";
    int rc = wk_shaping_parse(text, strlen(text), &s, err, sizeof(err));

    if (rc != want)
        print_error("rc %d (want %d): %s\n", rc, want, err);
    assert_int_equal(rc, want);
    if (want < 0)
        assert_true(err[0] != '\0');
    return s;
}

static void test_shipped(void **state)
{
    wk_shaping *s = NULL;
    char err[256];
    const struct wk_shape_group *g;
    const struct wk_backoff_rule *r;
    const char *gm[] = {"gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com"};
    const char *ms[] = {"example-com.mail.protection.outlook.com"};
    const char *other[] = {"mx.example.net"};

    (void)state;
    assert_int_equal(wk_shaping_load("etc/shaping.yaml", &s, err, sizeof(err)), 0);
    assert_int_equal(wk_shaping_ngroups(s), 4);
    g = wk_shaping_group(s, "example.org", gm, 2);
    assert_non_null(g);
    assert_string_equal(g->name, "google");
    assert_int_equal(g->lim.connections, 150);
    assert_int_equal(g->lim.msgs_per_conn, 50);
    assert_string_equal(wk_shaping_group(s, "GMAIL.com", NULL, 0)->name, "google");
    assert_string_equal(wk_shaping_group(s, "example.com", ms, 1)->name, "microsoft");
    assert_string_equal(wk_shaping_group(s, "yahoo.com", other, 1)->name, "yahoo");
    assert_null(wk_shaping_group(s, "example.net", other, 1));
    /* A suffix pattern needs a label before it: "google.com" is not "*.google.com". */
    {
        const char *bare[] = {"google.com"};
        assert_null(wk_shaping_group(s, "example.net", bare, 1));
    }
    r = wk_shaping_match(s, "google", 421, "4.7.28", "421-4.7.28 Gmail has detected ...");
    assert_non_null(r);
    assert_string_equal(r->name, "gmail-rate");
    assert_int_equal(r->action, WK_BACKOFF_THROTTLE);
    assert_int_equal(r->for_ms, 15 * 60 * 1000);
    assert_int_equal(r->ramp_ms, 30 * 60 * 1000);
    r = wk_shaping_match(s, "", 421, "4.7.0",
                         "421 4.7.0 [TS03] All messages from 192.0.2.1 will be permanently "
                         "deferred");
    assert_non_null(r);
    assert_string_equal(r->name, "yahoo-blocked");
    assert_int_equal(r->action, WK_BACKOFF_SUSPEND);
    r = wk_shaping_match(s, "", 421, "4.7.0", "421 4.7.0 [TSS04] Messages temporarily deferred");
    assert_string_equal(r->name, "yahoo-deferred");
    assert_null(wk_shaping_match(s, "google", 250, "2.0.0", "ok"));
    assert_null(wk_shaping_match(s, "google", 550, "5.1.1", "no such user"));
    wk_shaping_free(s);
}

static void test_limits_and_rules(void **state)
{
    wk_shaping *s;
    const struct wk_shape_group *g;
    const struct wk_backoff_rule *r;
    const char *h[] = {"mx1.big.example"};

    (void)state;
    s = parse("default: {connections: 4, rate: 2, data_timeout: 5m, retry_max: 2h}\n"
              "groups:\n"
              "  - {name: big, mx: ['*.big.example'], rate: '0.5', connect_timeout: 20s}\n"
              "  - {name: small, domains: [small.example], connections: 1,\n"
              "     recipients_per_message: 50, retry_min: 30m}\n"
              "backoff:\n"
              "  - {name: only-big, group: big, code: 421, action: suspend, for: 1m}\n"
              "  - {name: any, enhanced: '4.7.*', text: 'slow down', action: throttle,\n"
              "     factor: 0.2, for: 90, ramp: 2m}\n",
              0);
    g = wk_shaping_group(s, "x.example", h, 1);
    assert_string_equal(g->name, "big");
    /* Set here, inherited from default, or left to [delivery] (0). */
    assert_int_equal(g->lim.rate.period_ms, 2000);
    assert_int_equal(g->lim.connections, 4);
    assert_int_equal(g->lim.connect_timeout_ms, 20000);
    assert_int_equal(g->lim.data_timeout_ms, 300000);
    assert_int_equal(g->lim.msgs_per_conn, 0);
    assert_int_equal(wk_shaping_default(s)->rate.period_ms, 500);
    assert_int_equal(g->lim.rcpts_per_msg, 0);
    assert_int_equal(g->lim.retry_min_ms, 0);
    assert_int_equal(g->lim.retry_max_ms, 2 * 3600 * 1000);
    g = wk_shaping_group(s, "Small.Example", NULL, 0);
    assert_int_equal(g->lim.connections, 1);
    assert_int_equal(g->lim.rcpts_per_msg, 50);
    assert_int_equal(g->lim.retry_min_ms, 30 * 60 * 1000);
    assert_int_equal(g->lim.retry_max_ms, 2 * 3600 * 1000);
    assert_int_equal(g->lim.rate.period_ms, 500);
    /* A group's rule only for its group; the suspension factor defaults to 0.25. */
    r = wk_shaping_match(s, "big", 421, "", "x");
    assert_string_equal(r->name, "only-big");
    assert_true(r->factor > 0.24 && r->factor < 0.26);
    assert_null(wk_shaping_match(s, "small", 421, "", "x"));
    r = wk_shaping_match(s, "small", 451, "4.7.1", "please SLOW DOWN");
    assert_string_equal(r->name, "any");
    assert_int_equal(r->for_ms, 90000);
    assert_int_equal(r->ramp_ms, 120000);
    assert_null(wk_shaping_match(s, "small", 451, "4.3.0", "please slow down"));
    wk_shaping_free(s);

    /* A group's TLS policy, and the references that keep it alive. */
    s = parse("groups:\n"
              "  - {name: strict, domains: [strict.example], tls: 'verify match=nexthop'}\n"
              "  - {name: plain, domains: [plain.example]}\n",
              0);
    g = wk_shaping_group(s, "strict.example", NULL, 0);
    assert_true(g->has_tls);
    assert_int_equal(g->tls.level, WK_TLS_LEVEL_VERIFY);
    assert_int_equal(g->tls.nmatch, 1);
    assert_false(wk_shaping_group(s, "plain.example", NULL, 0)->has_tls);
    assert_ptr_equal(wk_shaping_ref(s), s);
    wk_shaping_free(s); /* the reference: g still valid */
    assert_int_equal(g->tls.level, WK_TLS_LEVEL_VERIFY);
    wk_shaping_free(s);

    /* An empty file: no groups, no rules. */
    s = parse("", 0);
    assert_int_equal(wk_shaping_ngroups(s), 0);
    assert_null(wk_shaping_match(s, "", 421, "4.7.28", "x"));
    wk_shaping_free(s);
}

static void test_mx_key(void **state)
{
    char buf[64], small[24];
    const char *a[] = {"MX2.example.net.", "mx1.example.net", "mx2.example.net", "mx1.example.net"};
    const char *b[] = {"mx1.example.net", "mx2.example.net"};

    (void)state;
    wk_shaping_mx_key(a, 4, buf, sizeof(buf));
    assert_string_equal(buf, "mx:mx1.example.net,mx2.example.net");
    /* Another domain with the same MX set: the same key. */
    wk_shaping_mx_key(b, 2, small, sizeof(small));
    assert_string_equal(small, "mx:mx1.example.net"); /* too long: the first host */
    wk_shaping_mx_key(b, 0, buf, sizeof(buf));
    assert_string_equal(buf, "");
}

static void test_refused(void **state)
{
    (void)state;
    parse("groups: [{name: g}]\n", MS_EINVAL);                         /* no mx or domains */
    parse("groups: [{mx: ['*.x.example']}]\n", MS_EINVAL);            /* no name */
    parse("groups: [{name: 'a b', mx: [x]}]\n", MS_EINVAL);           /* bad name */
    parse("groups: [{name: g, mx: ['x.*.example']}]\n", MS_EINVAL);   /* bad wildcard */
    parse("groups: [{name: g, domains: ['*.example']}]\n", MS_EINVAL); /* no wildcards */
    parse("groups: [{name: g, mx: [a]}, {name: G, mx: [b]}]\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], connections: 0}]\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], connections: -3}]\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], rate: fast}]\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], recipients: 5}]\n", MS_EINVAL); /* unknown key */
    parse("default: {connect_timeout: 2y}\n", MS_EINVAL);
    parse("default: {recipients_per_message: 0}\n", MS_EINVAL);
    parse("default: {retry_max: 2d}\n", MS_EINVAL); /* beyond [delivery] retry_max_ms */
    parse("backoff: [{name: r, action: throttle, for: 1m}]\n", MS_EINVAL); /* matches all */
    parse("backoff: [{name: r, code: 421, for: 1m}]\n", MS_EINVAL);        /* no action */
    parse("backoff: [{name: r, code: 421, action: throttle}]\n", MS_EINVAL); /* no for */
    parse("backoff: [{name: r, code: 421, action: throttle, for: 1m, factor: 1}]\n", MS_EINVAL);
    parse("backoff: [{name: r, code: 421, action: throttle, for: 1m, factor: 0}]\n", MS_EINVAL);
    parse("backoff: [{name: r, code: 421, action: throttle, for: 0}]\n", MS_EINVAL);
    parse("backoff: [{name: r, group: nope, code: 421, action: throttle, for: 1m}]\n",
          MS_EINVAL);
    parse("backoff: [{name: r, text: '(', action: throttle, for: 1m}]\n", MS_EINVAL);
    parse("colour: red\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], tls: dane}]\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], tls: 'encrypt ca_file=/etc/ca.pem'}]\n", MS_EINVAL);
    parse("groups: [{name: g, mx: [a], tls: sometimes}]\n", MS_EINVAL);
    parse("default: {tls: verify}\n", MS_EINVAL); /* groups only */
    parse("groups: {name: g}\n", MS_EINVAL);
}

static void test_backoff_record(void **state)
{
    struct ms_backoff b, p;
    char buf[512];
    int n;
    const int64_t s = 1000000;

    (void)state;
    memset(&b, 0, sizeof(b));
    b.factor = 0.5;
    b.until_us = 100 * s;
    b.ramp_ms = 10000;
    b.since_us = 40 * s;
    snprintf(b.rule, sizeof(b.rule), "gmail rate");
    snprintf(b.reason, sizeof(b.reason), "421 4.7.28 slow\r\ndown");
    n = ms_backoff_format(&b, buf, sizeof(buf));
    assert_true(n > 0);
    assert_int_equal(ms_backoff_parse(buf, (size_t)n, &p), 0);
    assert_int_equal(p.suspend, 0);
    assert_string_equal(p.rule, "gmail_rate");
    assert_string_equal(p.reason, "421 4.7.28 slow  down");
    assert_int_equal(p.until_us, b.until_us);
    /* Throttled, then a linear climb back over the ramp, then over. */
    assert_true(ms_backoff_factor(&p, 50 * s) == 0.5);
    assert_true(ms_backoff_factor(&p, 105 * s) > 0.74 && ms_backoff_factor(&p, 105 * s) < 0.76);
    assert_true(ms_backoff_factor(&p, 110 * s) == 1);
    assert_false(ms_backoff_over(&p, 109 * s));
    assert_true(ms_backoff_over(&p, 110 * s));
    assert_false(ms_backoff_suspended(&p, 50 * s));
    /* A suspension: 0 until it ends, then the ramp from its factor. */
    b.suspend = 1;
    b.factor = 0.25;
    n = ms_backoff_format(&b, buf, sizeof(buf));
    assert_int_equal(ms_backoff_parse(buf, (size_t)n, &p), 0);
    assert_true(ms_backoff_suspended(&p, 99 * s));
    assert_true(ms_backoff_factor(&p, 99 * s) == 0);
    assert_true(ms_backoff_factor(&p, 100 * s) == 0.25);
    /* Whatever else Redis may hold is refused. */
    assert_int_equal(ms_backoff_parse("pause 0.5 1 0 0 r x", 19, &p), MS_EINVAL);
    assert_int_equal(ms_backoff_parse("throttle 5 1 0 0 r x", 20, &p), MS_EINVAL);
    assert_int_equal(ms_backoff_parse("throttle 0.5 0 0 0 r x", 22, &p), MS_EINVAL);
    assert_int_equal(ms_backoff_parse("throttle 0.5 1 0", 16, &p), MS_EINVAL);
    assert_int_equal(ms_backoff_parse("throttle nan 1 0 0 r x", 22, &p), MS_EINVAL);
    assert_int_equal(ms_backoff_parse("throttle 0.5 1 0 0 r \0x", 23, &p), MS_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped),
        cmocka_unit_test(test_limits_and_rules),
        cmocka_unit_test(test_mx_key),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_backoff_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
