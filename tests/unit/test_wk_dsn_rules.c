/*
 * test_wk_dsn_rules.c - the DSN decisions of worker/dsn_rules.h: the
 * backscatter rule as a table (direction, null sender, SPF pass, aligned
 * DKIM pass, not evaluated), DKIM alignment through a small Public Suffix
 * List, RFC 3461 NOTIFY for failures and delays, when a delay warning is
 * due, and which success notice (delivered, relayed, none) is owed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_dmarc.h"
#include "../../worker/dsn_rules.h"

#define IN MS_ENV_DIRECTION_INBOUND
#define OUT MS_ENV_DIRECTION_OUTBOUND
#define NOTIFY_S MS_ENV_NOTIFY_SUCCESS
#define NOTIFY_F MS_ENV_NOTIFY_FAILURE
#define NOTIFY_D MS_ENV_NOTIFY_DELAY
#define NOTIFY_N MS_ENV_NOTIFY_NEVER

static void test_decide_table(void **state)
{
    static const struct {
        const char *from;
        int direction, evaluated, spf;
        const char *dkim;
        enum wk_dsn_verdict want;
    } cases[] = {
        /* Relayed for the sender: always, whatever authentication says. */
        {"a@example.org", OUT, 0, 0, NULL, WK_DSN_ALLOW},
        {"a@example.org", OUT, 1, 0, "", WK_DSN_ALLOW},
        /* The null sender never, in either direction. */
        {"", OUT, 0, 0, NULL, WK_DSN_NULL_SENDER},
        {NULL, OUT, 0, 0, NULL, WK_DSN_NULL_SENDER},
        {"", IN, 1, 1, "example.org", WK_DSN_NULL_SENDER},
        /* Inbound: only with SPF pass or an aligned DKIM pass. */
        {"a@example.org", IN, 1, 1, NULL, WK_DSN_ALLOW},
        {"a@example.org", IN, 1, 0, "example.org", WK_DSN_ALLOW},
        {"a@example.org", IN, 1, 1, "example.org", WK_DSN_ALLOW},
        {"a@example.org", IN, 1, 0, NULL, WK_DSN_UNAUTHENTICATED},
        {"a@example.org", IN, 1, 0, "", WK_DSN_UNAUTHENTICATED},
        /* The policy stage did not run (off, or an old retry record). */
        {"a@example.org", IN, 0, 1, "example.org", WK_DSN_NOT_EVALUATED},
        {"a@example.org", IN, 0, 0, NULL, WK_DSN_NOT_EVALUATED},
        /* Unknown direction: none. */
        {"a@example.org", 0, 1, 1, "example.org", WK_DSN_NO_DIRECTION},
    };
    struct wk_dsn_facts f;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&f, 0, sizeof(f));
        f.mail_from = cases[i].from;
        f.direction = cases[i].direction;
        f.auth_evaluated = cases[i].evaluated;
        f.spf_mailfrom_pass = cases[i].spf;
        f.dkim_aligned = cases[i].dkim;
        if (wk_dsn_decide(&f) != cases[i].want)
            fail_msg("case %zu: got %s, want %s", i, wk_dsn_verdict_name(wk_dsn_decide(&f)),
                     wk_dsn_verdict_name(cases[i].want));
    }
    assert_string_equal(wk_dsn_verdict_name(WK_DSN_UNAUTHENTICATED), "unauthenticated");
    assert_string_equal(wk_dsn_verdict_name(WK_DSN_VERDICT__N), "unknown");
}

static void test_facts_of_envelope(void **state)
{
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt r = {"rcpt@example.net", 0, NULL};
    struct wk_dsn_facts f;
    ms_envelope *env;

    (void)state;
    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "Q1";
    tx.mail_from.address = "bounce@lists.example.org";
    tx.rcpts = &r;
    tx.nrcpts = 1;
    tx.direction = IN;
    env = ms_envelope_new_tx(&tx);
    wk_dsn_facts_of(env, &f);
    assert_int_equal(wk_dsn_decide(&f), WK_DSN_NOT_EVALUATED); /* no auth at all */
    ms_envelope_set_auth(env, 0, NULL);
    wk_dsn_facts_of(env, &f);
    assert_int_equal(wk_dsn_decide(&f), WK_DSN_UNAUTHENTICATED);
    ms_envelope_set_auth(env, 0, "example.org");
    wk_dsn_facts_of(env, &f);
    assert_int_equal(wk_dsn_decide(&f), WK_DSN_ALLOW);
    ms_envelope_set_auth(env, 1, NULL);
    wk_dsn_facts_of(env, &f);
    assert_int_equal(wk_dsn_decide(&f), WK_DSN_ALLOW);
    ms_envelope_free(env);
    /* No MAIL FROM part at all, and the null sender. */
    tx.mail_from.address = "";
    env = ms_envelope_new_tx(&tx);
    ms_envelope_set_auth(env, 1, "example.org");
    wk_dsn_facts_of(env, &f);
    assert_int_equal(wk_dsn_decide(&f), WK_DSN_NULL_SENDER);
    ms_envelope_mail_from *mf = env->mail_from;
    env->mail_from = NULL;
    wk_dsn_facts_of(env, &f);
    assert_int_equal(wk_dsn_decide(&f), WK_DSN_NULL_SENDER);
    env->mail_from = mf;
    ms_envelope_free(env);
}

static const char small_psl[] = "com\norg\nuk\nco.uk\nblogspot.com\n";

static void test_dkim_aligned(void **state)
{
    ms_psl *psl;

    (void)state;
    assert_int_equal(ms_psl_parse(small_psl, sizeof(small_psl) - 1, &psl), 0);
    assert_true(wk_dkim_aligned(psl, "a@example.org", "example.org"));
    assert_true(wk_dkim_aligned(psl, "a@EXAMPLE.org", "example.ORG."));
    /* Relaxed: same Organizational Domain either way round. */
    assert_true(wk_dkim_aligned(psl, "bounce@lists.example.org", "example.org"));
    assert_true(wk_dkim_aligned(psl, "a@example.org", "mail.example.org"));
    assert_true(wk_dkim_aligned(psl, "a@x.example.co.uk", "y.example.co.uk"));
    /* Different Organizational Domains. */
    assert_false(wk_dkim_aligned(psl, "a@example.org", "example.com"));
    assert_false(wk_dkim_aligned(psl, "a@example.org", "example.org.evil.com"));
    assert_false(wk_dkim_aligned(psl, "a@one.co.uk", "two.co.uk"));
    /* A public suffix (private section) is not an Organizational Domain. */
    assert_false(wk_dkim_aligned(psl, "a@alice.blogspot.com", "bob.blogspot.com"));
    assert_false(wk_dkim_aligned(psl, "a@example.org", "org"));
    /* Missing pieces. */
    assert_false(wk_dkim_aligned(psl, "", "example.org"));
    assert_false(wk_dkim_aligned(psl, "nodomain", "example.org"));
    assert_false(wk_dkim_aligned(psl, "a@", "example.org"));
    assert_false(wk_dkim_aligned(psl, "a@example.org", ""));
    assert_false(wk_dkim_aligned(psl, "a@example.org", NULL));
    assert_false(wk_dkim_aligned(psl, NULL, "example.org"));
    /* No list: only equal names. */
    assert_true(wk_dkim_aligned(NULL, "a@example.org", "example.org"));
    assert_false(wk_dkim_aligned(NULL, "a@lists.example.org", "example.org"));
    ms_psl_free(psl);
}

static void test_notify(void **state)
{
    (void)state;
    /* RFC 3461 §4.1: absent means FAILURE (and, our choice, DELAY). */
    assert_true(wk_notify_failure(0));
    assert_true(wk_notify_delay(0));
    assert_true(wk_notify_failure(NOTIFY_F));
    assert_false(wk_notify_delay(NOTIFY_F));
    assert_false(wk_notify_failure(NOTIFY_D));
    assert_true(wk_notify_delay(NOTIFY_D));
    assert_true(wk_notify_delay(NOTIFY_S | NOTIFY_F | NOTIFY_D));
    assert_false(wk_notify_delay(NOTIFY_S));
    assert_false(wk_notify_failure(NOTIFY_S));
    assert_false(wk_notify_failure(NOTIFY_N));
    assert_false(wk_notify_delay(NOTIFY_N));
    assert_false(wk_notify_delay(NOTIFY_N | NOTIFY_D)); /* malformed: NEVER wins */
}

static void test_delay_warning_due(void **state)
{
    const int64_t s = 1000000, t0 = 1795000000LL * s;

    (void)state;
    /* Off. */
    assert_false(wk_delay_warning_due(0, t0, t0 + 86400 * s, 0, 0));
    /* Too early, then exactly on time, then later. */
    assert_false(wk_delay_warning_due(3600, t0, t0 + 3599 * s, 0, 0));
    assert_true(wk_delay_warning_due(3600, t0, t0 + 3600 * s, 0, 0));
    assert_true(wk_delay_warning_due(3600, t0, t0 + 7200 * s, 0, NOTIFY_D | NOTIFY_F));
    /* Once only. */
    assert_false(wk_delay_warning_due(3600, t0, t0 + 7200 * s, t0 + 3700 * s, 0));
    /* NOTIFY without DELAY, or NEVER. */
    assert_false(wk_delay_warning_due(3600, t0, t0 + 7200 * s, 0, NOTIFY_F));
    assert_false(wk_delay_warning_due(3600, t0, t0 + 7200 * s, 0, NOTIFY_N));
    /* Unknown arrival time: never (it cannot be judged). */
    assert_false(wk_delay_warning_due(3600, 0, t0, 0, 0));
}

static void test_status(void **state)
{
    char st[11];

    (void)state;
    wk_dsn_status(st, sizeof(st), "5.1.1", MS_DSN_FAILED);
    assert_string_equal(st, "5.1.1");
    wk_dsn_status(st, sizeof(st), "4.4.7", MS_DSN_FAILED); /* expired: failed with 4.4.7 */
    assert_string_equal(st, "4.4.7");
    wk_dsn_status(st, sizeof(st), "", MS_DSN_FAILED);
    assert_string_equal(st, "5.0.0");
    wk_dsn_status(st, sizeof(st), "4.4.1", MS_DSN_DELAYED);
    assert_string_equal(st, "4.4.1");
    wk_dsn_status(st, sizeof(st), "5.2.2", MS_DSN_DELAYED); /* full mailbox, being retried */
    assert_string_equal(st, "4.2.2");
    wk_dsn_status(st, sizeof(st), NULL, MS_DSN_DELAYED);
    assert_string_equal(st, "4.0.0");
    wk_dsn_status(st, 4, "4.4.1", MS_DSN_DELAYED); /* bounded */
    assert_string_equal(st, "4.4");
    /* Successes: the 2.X.X of the reply that took the message. */
    wk_dsn_status(st, sizeof(st), "2.1.5", MS_DSN_DELIVERED);
    assert_string_equal(st, "2.1.5");
    wk_dsn_status(st, sizeof(st), "", MS_DSN_RELAYED);
    assert_string_equal(st, "2.0.0");
    wk_dsn_status(st, sizeof(st), "5.0.0", MS_DSN_RELAYED); /* not a success code */
    assert_string_equal(st, "2.0.0");
}

/* RFC 3461 §5.2.1-§5.2.3: who owes the success notice, and which one. */
static void test_success(void **state)
{
    static const struct {
        uint32_t notify;
        int next_hop_dsn, final, want;
        enum ms_dsn_action action;
    } cases[] = {
        /* Not asked for: never (absent NOTIFY means FAILURE only). */
        {0, 0, 0, 0, 0},
        {NOTIFY_F | NOTIFY_D, 0, 1, 0, 0},
        {NOTIFY_N, 0, 1, 0, 0},
        {NOTIFY_N | NOTIFY_S, 0, 1, 0, 0}, /* malformed: NEVER wins */
        /* Asked for, a next hop without DSN: relayed; final: delivered. */
        {NOTIFY_S, 0, 0, 1, MS_DSN_RELAYED},
        {NOTIFY_S | NOTIFY_F, 0, 0, 1, MS_DSN_RELAYED},
        {NOTIFY_S, 0, 1, 1, MS_DSN_DELIVERED},
        /* The next hop offered DSN: it got NOTIFY and reports itself. */
        {NOTIFY_S, 1, 0, 0, 0},
        {NOTIFY_S | NOTIFY_F | NOTIFY_D, 1, 1, 0, 0},
    };
    enum ms_dsn_action a;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        a = (enum ms_dsn_action)-1;
        if (wk_dsn_success(cases[i].notify, cases[i].next_hop_dsn, cases[i].final, &a) !=
                cases[i].want ||
            (cases[i].want && a != cases[i].action))
            fail_msg("case %zu: notify %u dsn %d final %d: got action %d", i,
                     (unsigned)cases[i].notify, cases[i].next_hop_dsn, cases[i].final, (int)a);
    }
    assert_true(wk_notify_success(NOTIFY_S | NOTIFY_D));
    assert_false(wk_notify_success(0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decide_table),
        cmocka_unit_test(test_facts_of_envelope),
        cmocka_unit_test(test_dkim_aligned),
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_delay_warning_due),
        cmocka_unit_test(test_success),
        cmocka_unit_test(test_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
