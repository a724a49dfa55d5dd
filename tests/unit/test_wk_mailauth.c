/*
 * Unit tests for worker/policy: configuration errors, outbound signing (RSA
 * and Ed25519 at once, once only, From domain then MAIL FROM domain, key
 * reload keeping the old keys on error), the pass-through cases, and the
 * discard event record.  Inbound evaluation needs DNS: it is covered by
 * tests/integration/test_auth_dmarc.py against a real NSD.
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

#include "ms_buf.h"
#include "ms_config.h"
#include "ms_dmarc.h"
#include "ms_dkim.h"
#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"
#include "../../worker/mailauth.h"

static char dir[] = "/tmp/test_wk_mailauth.XXXXXX";

static void sh(const char *fmt, const char *arg)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd), fmt, arg, arg);
    assert_int_equal(system(cmd), 0);
}

static char *path(const char *name)
{
    return ms_asprintf("%s/%s", dir, name);
}

static int setup(void **state)
{
    char *p;

    ms_log_init("test", MS_LOG_ERROR);
    assert_non_null(mkdtemp(dir));
    p = path("rsa.pem");
    sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s 2>/dev/null", p);
    free(p);
    p = path("ed.pem");
    sh("openssl genpkey -algorithm ed25519 -out %s 2>/dev/null", p);
    free(p);
    return 0;
}

static int teardown(void **state)
{
    sh("rm -rf %s", dir);
    return 0;
}

static ms_config *config(const char *text)
{
    char *p = path("worker.ini"), err[256];
    FILE *f = fopen(p, "w");
    ms_config *cfg;

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    cfg = ms_config_load(p, err, sizeof(err));
    if (cfg == NULL)
        fail_msg("%s", err);
    free(p);
    return cfg;
}

static wk_mailauth *policy(const char *text, char *err, size_t errlen)
{
    ms_config *cfg = config(text);
    wk_mailauth *p = wk_mailauth_new(uv_default_loop(), cfg, "mx.example.org", NULL, err, errlen);

    ms_config_free(cfg);
    return p;
}

static void test_config_errors(void **state)
{
    char err[512], text[1024];

    assert_null(policy("[policy]\naction_dmarc_reject = bounce\n", err, sizeof(err)));
    assert_non_null(strstr(err, "action_dmarc_reject"));
    assert_null(policy("[dkim.a]\ndomain = example.org\n", err, sizeof(err)));
    assert_non_null(strstr(err, "needs domain, selector and key"));
    snprintf(text, sizeof(text), "[dkim.a]\ndomain = example.org\nselector = s\nkey = %s/nope\n",
             dir);
    assert_null(policy(text, err, sizeof(err)));
    assert_non_null(strstr(err, "[dkim.a] key"));
    assert_null(policy("[policy]\ninbound = yes\npsl = /nonexistent\n", err, sizeof(err)));
}

/* An envelope as the worker gets it from Kafka (ms_envelope.h builds it);
 * ip NULL: no client part. */
static ms_envelope *envelope_client(ms_envelope_direction dir_, const char *from_hdr,
                                    const char *mail_from, const char *ip, const char *helo)
{
    struct ms_envelope_tx tx;
    ms_envelope *e;
    char *msg = ms_asprintf("Received: from x by y\r\nFrom: <%s>\r\nTo: bob@example.net\r\n"
                            "Subject: hi\r\n\r\nbody\r\n",
                            from_hdr);

    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "Q1";
    tx.direction = dir_;
    tx.mail_from.address = mail_from;
    tx.client.ip = ip;
    tx.client.helo = helo;
    tx.message = msg;
    tx.len = strlen(msg);
    e = ms_envelope_new_tx(&tx);
    free(msg);
    return e;
}

static ms_envelope *envelope(ms_envelope_direction dir_, const char *from_hdr,
                             const char *mail_from)
{
    return envelope_client(dir_, from_hdr, mail_from, NULL, NULL);
}

static void envelope_free(ms_envelope *e)
{
    ms_envelope_free(e); /* with the results the stage set */
}

/* The first s in e's message (not NUL-terminated: decoded envelopes'
 * bytes are not), or NULL. */
static const char *find(const ms_envelope *e, const char *s)
{
    return memmem(e->message.data, e->message.len, s, strlen(s));
}

static int count(const ms_envelope *e, const char *s)
{
    const char *p = (const char *)e->message.data, *end = p + e->message.len, *q;
    int n = 0;

    while ((q = memmem(p, (size_t)(end - p), s, strlen(s))) != NULL) {
        n++;
        p = q + 1;
    }
    return n;
}

static void test_sign(void **state)
{
    char err[512], text[1024];
    struct wk_mailauth_result res;
    ms_envelope *e;
    wk_mailauth *p;

    snprintf(text, sizeof(text),
             "[dkim.rsa]\ndomain = example.org\nselector = r\nkey = %s/rsa.pem\n"
             "[dkim.ed]\ndomain = example.org\nselector = e\nkey = %s/ed.pem\n"
             "[dkim.other]\ndomain = bounces.example.net\nselector = b\nkey = %s/ed.pem\n",
             dir, dir, dir);
    p = policy(text, err, sizeof(err));
    if (p == NULL)
        fail_msg("%s", err);

    /* From domain: both keys, prepended above the Received field. */
    e = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@Example.ORG", "x@other.example");
    assert_int_equal(wk_mailauth_start(p, e, NULL, NULL, 1, &res), 1);
    assert_int_equal(res.verdict, WK_MAILAUTH_VERDICT_SIGNED);
    assert_int_equal(res.action, WK_MAILAUTH_DELIVER);
    assert_true(res.modified);
    assert_int_equal(count(e, "DKIM-Signature:"), 2);
    assert_memory_equal(e->message.data, "DKIM-Signature: v=1; a=rsa-sha256;", 34);
    assert_non_null(find(e, "a=ed25519-sha256"));
    /* Again (a retry): signed before, unchanged. */
    assert_int_equal(wk_mailauth_start(p, e, NULL, NULL, 2, &res), 1);
    assert_int_equal(res.verdict, WK_MAILAUTH_VERDICT_SKIPPED);
    assert_int_equal(count(e, "DKIM-Signature:"), 2);
    /* Reload: a broken key file keeps the old keys, a good one is taken. */
    {
        char *k = path("ed.pem"), *bak = path("ed.bak");
        assert_int_equal(rename(k, bak), 0);
        wk_mailauth_reload(p);
        assert_int_equal(rename(bak, k), 0);
        wk_mailauth_reload(p);
        free(k);
        free(bak);
    }
    envelope_free(e);

    /* No key for the From domain: the MAIL FROM domain's. */
    e = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@unknown.example",
                 "b@bounces.example.net");
    assert_int_equal(wk_mailauth_start(p, e, NULL, NULL, 3, &res), 1);
    assert_int_equal(res.verdict, WK_MAILAUTH_VERDICT_SIGNED);
    assert_non_null(find(e, "d=bounces.example.net"));
    envelope_free(e);

    /* Nobody's key: unchanged. */
    e = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@unknown.example", "");
    assert_int_equal(wk_mailauth_start(p, e, NULL, NULL, 4, &res), 1);
    assert_int_equal(res.verdict, WK_MAILAUTH_VERDICT_SKIPPED);
    assert_false(res.modified);
    assert_int_equal(count(e, "DKIM-Signature:"), 0);
    envelope_free(e);

    /* Inbound with inbound checks off: passed through. */
    e = envelope(MS_ENV_DIRECTION_INBOUND, "a@example.org", "a@example.org");
    assert_int_equal(wk_mailauth_start(p, e, NULL, NULL, 5, &res), 1);
    assert_int_equal(res.action, WK_MAILAUTH_DELIVER);
    assert_false(res.modified);
    envelope_free(e);

    assert_int_equal(wk_mailauth_pending(p), 0);
    wk_mailauth_free(p);
}

struct seen {
    int calls;
    struct wk_mailauth_result res;
    char reason[512];
};

static void on_result(void *arg, uint64_t id, const struct wk_mailauth_result *res)
{
    struct seen *s = arg;

    s->calls++;
    s->res = *res;
    snprintf(s->reason, sizeof(s->reason), "%s", res->reason);
}

/* Inbound with a DNS server that never answers: the job runs on the loop,
 * every lookup fails (temperror), our field replaces a forged one, and a
 * second run sees it and passes the message through. */
static void test_inbound_unreachable_dns(void **state)
{
    char err[512];
    struct wk_mailauth_result res;
    struct seen seen;
    ms_envelope *e;
    wk_mailauth *p;
    char *forged;

    if (!ms_dmarc_available()) {
        print_message("libopendmarc is not linked in (add -lopendmarc): skipped\n");
        skip();
        return;
    }
    p = policy("[policy]\ninbound = yes\nauthserv_id = mx.example.org\ndns = 127.0.0.1@9\n"
               "dns_timeout_ms = 200\ntimeout_ms = 2000\naction_temperror = quarantine\n",
               err, sizeof(err));
    if (p == NULL)
        fail_msg("%s", err);
    e = envelope_client(MS_ENV_DIRECTION_INBOUND, "a@example.org", "b@example.org", "192.0.2.1",
                        "mail.example.org");
    forged = ms_asprintf("Received: from x by y\r\nAuthentication-Results: mx.example.org; "
                         "dmarc=pass\r\n%.*s",
                         (int)(e->message.len - strlen("Received: from x by y\r\n")),
                         (char *)e->message.data + strlen("Received: from x by y\r\n"));
    free(e->message.data);
    e->message.data = (uint8_t *)forged;
    e->message.len = strlen(forged);

    memset(&seen, 0, sizeof(seen));
    assert_int_equal(wk_mailauth_start(p, e, on_result, &seen, 7, &res), 0);
    assert_int_equal(seen.calls, 0); /* never from inside start */
    assert_int_equal(wk_mailauth_pending(p), 1);
    while (seen.calls == 0)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    assert_int_equal(seen.res.verdict, WK_MAILAUTH_VERDICT_TEMPERROR);
    assert_int_equal(seen.res.action, WK_MAILAUTH_QUARANTINE);
    assert_true(seen.res.modified);
    assert_non_null(strstr(seen.reason, "dmarc=temperror"));
    assert_memory_equal(e->message.data, "Authentication-Results: mx.example.org;\r\n", 41);
    assert_non_null(find(e, "spf=temperror (DNS error looking up the SPF record) "
                                                     "smtp.mailfrom=b@example.org;"));
    assert_non_null(find(e, "smtp.helo=mail.example.org;\r\n\tdkim=none;"));
    assert_non_null(find(e, "X-Mailstream-Quarantine: temperror\r\n"));
    assert_non_null(find(e,
                           "dmarc=temperror (DNS failure) header.from=example.org\r\n"));
    assert_null(find(e, "dmarc=pass"));
    assert_int_equal(count(e, "Authentication-Results:"), 1);
    /* The facts the DSN decision needs later (dsn_rules.h): evaluated,
     * no SPF pass (temperror), no aligned DKIM pass. */
    assert_non_null(e->auth);
    assert_true(e->auth->evaluated);
    assert_false(e->auth->spf_mailfrom_pass);
    assert_string_equal(e->auth->dkim_aligned_domain, "");

    /* Once only. */
    assert_int_equal(wk_mailauth_start(p, e, on_result, &seen, 8, &res), 1);
    assert_string_equal(res.reason, "checked before");
    assert_int_equal(seen.calls, 1);

    /* A cancelled job never calls back. */
    e->message.data[0] = 'X'; /* no longer our field */
    assert_int_equal(wk_mailauth_start(p, e, on_result, &seen, 9, &res), 0);
    wk_mailauth_cancel(p, 9);
    assert_int_equal(wk_mailauth_pending(p), 0);
    uv_run(uv_default_loop(), UV_RUN_NOWAIT);
    assert_int_equal(seen.calls, 1);

    envelope_free(e);
    wk_mailauth_free(p);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT); /* close handles */
}

static void test_event_json(void **state)
{
    struct wk_mailauth_result r = {WK_MAILAUTH_DISCARD, WK_MAILAUTH_VERDICT_DMARC_REJECT,
                                 "dmarc=fail \"quoted\"", 0};
    struct ms_buf b;

    ms_buf_init(&b, 4096);
    assert_int_equal(wk_mailauth_event_json(&b, "Q1", &r, "wk1", 1700000000123456), 0);
    assert_int_equal(ms_buf_append(&b, "", 1), 0);
    assert_string_equal(b.data, "{\"event\":\"discarded\",\"qid\":\"Q1\",\"verdict\":"
                                "\"dmarc_reject\",\"action\":\"discard\",\"reason\":"
                                "\"dmarc=fail \\\"quoted\\\"\",\"node\":\"wk1\","
                                "\"ts\":\"2023-11-14T22:13:20.123Z\"}");
    ms_buf_free(&b);
    assert_string_equal(wk_mailauth_verdict_name(WK_MAILAUTH_VERDICT_SPF_FAIL), "spf_fail");
    assert_string_equal(wk_mailauth_action_name(WK_MAILAUTH_QUARANTINE), "quarantine");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_sign),
        cmocka_unit_test(test_inbound_unreachable_dns),
        cmocka_unit_test(test_event_json),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
