/*
 * Unit tests for worker/policy: configuration errors, outbound signing (RSA
 * and Ed25519 at once, once only, From domain then MAIL FROM domain, key
 * reload keeping the old keys on error), the pass-through cases, and the
 * discard event record.  Signing runs on libuv's thread pool: the same
 * fields as ms_dkim_sign_all() on the loop would write, verifiable; a job
 * cancelled while waiting or while its signature is computed never calls
 * back (its envelope freed at once: `make asan` checks nothing touches it);
 * a reload during a signature, and freeing the stage with signatures under
 * way.  Inbound evaluation needs DNS: it is covered by
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

/* Start an outbound job that signs: 0 (the callback follows, never from
 * inside start). */
static void sign_start(wk_mailauth *p, ms_envelope *e, uint64_t id, struct seen *seen)
{
    struct wk_mailauth_result res;
    int calls = seen->calls;

    assert_int_equal(wk_mailauth_start(p, e, on_result, seen, id, &res), 0);
    assert_int_equal(seen->calls, calls);
}

/* Sign e and wait for the callback on the loop. */
static void sign_wait(wk_mailauth *p, ms_envelope *e, uint64_t id, struct seen *seen)
{
    int calls = seen->calls;

    sign_start(p, e, id, seen);
    while (seen->calls == calls)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    assert_int_equal(seen->calls, calls + 1);
}

static void test_sign(void **state)
{
    char err[512], text[1024];
    struct wk_mailauth_result res;
    struct seen seen;
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
    memset(&seen, 0, sizeof(seen));
    e = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@Example.ORG", "x@other.example");
    sign_wait(p, e, 1, &seen);
    assert_int_equal(seen.res.verdict, WK_MAILAUTH_VERDICT_SIGNED);
    assert_int_equal(seen.res.action, WK_MAILAUTH_DELIVER);
    assert_true(seen.res.modified);
    assert_int_equal(wk_mailauth_pending(p), 0);
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
    sign_wait(p, e, 3, &seen);
    assert_int_equal(seen.res.verdict, WK_MAILAUTH_VERDICT_SIGNED);
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

/* The key record of the key file `name` in dir. */
static char *record_of(const char *name)
{
    char *f = path(name), *rec = NULL;
    ms_dkim_privkey *k = NULL;

    assert_int_equal(ms_dkim_key_load(f, &k, NULL), 0);
    assert_int_equal(ms_dkim_key_record(k, &rec), 0);
    ms_dkim_key_free(k);
    free(f);
    return rec;
}

/* Verify every signature of e at `now` against the records given for
 * "<selector>._domainkey.example.org"; the number that pass. */
static size_t verify_pass(const ms_envelope *e, int64_t now, const char *const *sel,
                          char *const *rec, size_t nrec)
{
    ms_dkim_verify *v = ms_dkim_verify_new((const char *)e->message.data, e->message.len, now);
    struct ms_dns_query q;
    size_t i, pass = 0;

    while (ms_dkim_verify_step(v, &q) == MS_DKIM_NEED_DNS) {
        struct ms_dns_result r = {.status = MS_DNS_NXDOMAIN};
        struct ms_dns_rr rr;

        for (i = 0; i < nrec; i++) {
            char name[128];
            snprintf(name, sizeof(name), "%s._domainkey.example.org", sel[i]);
            if (strcasecmp(name, q.name) != 0)
                continue;
            rr.type = MS_DNS_TXT;
            rr.u.txt.data = rec[i];
            rr.u.txt.len = strlen(rec[i]);
            r.status = MS_DNS_OK;
            r.n = 1;
            r.rr = &rr;
        }
        assert_int_equal(ms_dkim_verify_answer(v, &r), 0);
    }
    for (i = 0; i < ms_dkim_verify_count(v); i++)
        pass += ms_dkim_verify_sig(v, i)->result == MS_DKIM_PASS;
    ms_dkim_verify_free(v);
    return pass;
}

#define SIGN_NOW 1700000000

/* Off the loop, the very fields ms_dkim_sign_all() writes on it (RSA
 * PKCS#1 v1.5 and Ed25519 signatures are deterministic), and they verify. */
static void test_sign_pool_same_fields(void **state)
{
    static const char *const sel[] = {"r", "e"};
    char err[512], text[1024], *hdrs = NULL, *rec[2], *fr = path("rsa.pem"), *fe = path("ed.pem");
    ms_dkim_privkey *kr = NULL, *ke = NULL;
    struct ms_dkim_signer sg[2];
    struct seen seen;
    ms_envelope *e;
    wk_mailauth *p;
    uint8_t *orig;
    size_t len, hl;

    snprintf(text, sizeof(text),
             "[dkim.rsa]\ndomain = example.org\nselector = r\nkey = %s/rsa.pem\n"
             "[dkim.ed]\ndomain = example.org\nselector = e\nkey = %s/ed.pem\n",
             dir, dir);
    p = policy(text, err, sizeof(err));
    if (p == NULL)
        fail_msg("%s", err);
    wk_mailauth_set_clock(p, SIGN_NOW);
    e = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@example.org", "a@example.org");
    len = e->message.len;
    orig = ms_malloc(len);
    memcpy(orig, e->message.data, len);
    memset(&seen, 0, sizeof(seen));
    sign_wait(p, e, 11, &seen);
    assert_int_equal(seen.res.verdict, WK_MAILAUTH_VERDICT_SIGNED);

    assert_int_equal(ms_dkim_key_load(fr, &kr, NULL), 0);
    assert_int_equal(ms_dkim_key_load(fe, &ke, NULL), 0);
    memset(sg, 0, sizeof(sg));
    sg[0] = (struct ms_dkim_signer){.domain = "example.org", .selector = "r", .key = kr};
    sg[1] = (struct ms_dkim_signer){.domain = "example.org", .selector = "e", .key = ke};
    assert_int_equal(ms_dkim_sign_all((const char *)orig, len, sg, 2, SIGN_NOW, &hdrs), 0);
    hl = strlen(hdrs);
    assert_int_equal(e->message.len, hl + len);
    assert_memory_equal(e->message.data, hdrs, hl);
    assert_memory_equal(e->message.data + hl, orig, len);

    rec[0] = record_of("rsa.pem");
    rec[1] = record_of("ed.pem");
    assert_int_equal(verify_pass(e, SIGN_NOW + 10, sel, rec, 2), 2);
    free(rec[0]);
    free(rec[1]);
    free(hdrs);
    free(orig);
    free(fr);
    free(fe);
    ms_dkim_key_free(kr);
    ms_dkim_key_free(ke);
    envelope_free(e);
    wk_mailauth_free(p);
}

#define MANY (WK_MAILAUTH_SIGN_JOBS_MAX + 2)

struct tally {
    int calls[MANY + 1];
    int signed_ok;
};

static void on_tally(void *arg, uint64_t id, const struct wk_mailauth_result *res)
{
    struct tally *t = arg;

    assert_true(id >= 1 && id <= MANY);
    t->calls[id]++;
    t->signed_ok += res->verdict == WK_MAILAUTH_VERDICT_SIGNED;
}

/* More jobs than are computed at once: the first is on the pool, the last
 * waits.  Cancelling either (and freeing its envelope at once, as the
 * worker does when a message is revoked) means no callback, ever; every
 * other job calls back once, signed. */
static void test_sign_cancel(void **state)
{
    char err[512], text[512];
    struct wk_mailauth_result res;
    struct tally t;
    ms_envelope *e[MANY + 1];
    wk_mailauth *p;
    int i, done;

    snprintf(text, sizeof(text), "[dkim.rsa]\ndomain = example.org\nselector = r\nkey = %s/rsa.pem\n",
             dir);
    p = policy(text, err, sizeof(err));
    if (p == NULL)
        fail_msg("%s", err);
    memset(&t, 0, sizeof(t));
    for (i = 1; i <= MANY; i++) {
        e[i] = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@example.org", "a@example.org");
        assert_int_equal(wk_mailauth_start(p, e[i], on_tally, &t, (uint64_t)i, &res), 0);
    }
    assert_int_equal(wk_mailauth_pending(p), MANY);
    wk_mailauth_cancel(p, 1);    /* running */
    wk_mailauth_cancel(p, MANY); /* waiting */
    wk_mailauth_cancel(p, 4242); /* unknown: ignored */
    envelope_free(e[1]);
    envelope_free(e[MANY]);
    assert_int_equal(wk_mailauth_pending(p), MANY - 2);
    do {
        uv_run(uv_default_loop(), UV_RUN_ONCE);
        for (done = 0, i = 2; i < MANY; i++)
            done += t.calls[i];
    } while (done < MANY - 2);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT); /* the cancelled one's request too */
    assert_int_equal(t.calls[1], 0);
    assert_int_equal(t.calls[MANY], 0);
    for (i = 2; i < MANY; i++) {
        assert_int_equal(t.calls[i], 1);
        assert_int_equal(count(e[i], "DKIM-Signature:"), 1);
        envelope_free(e[i]);
    }
    assert_int_equal(t.signed_ok, MANY - 2);
    assert_int_equal(wk_mailauth_pending(p), 0);
    wk_mailauth_free(p);
}

/* A reload while a signature is computed: the job signs with the key it
 * started with (its reference keeps the replaced key alive).  Then freeing
 * the stage with signatures under way: no callback, nothing left behind
 * (the jobs free themselves on the loop). */
static void test_sign_reload_and_free(void **state)
{
    static const char *const sel[] = {"r"};
    char err[512], text[512], *old_rec, *f = path("rsa.pem"), *bak = path("rsa.keep");
    struct wk_mailauth_result res;
    struct tally t;
    struct seen seen;
    ms_envelope *e[MANY + 1];
    wk_mailauth *p;
    int i;

    snprintf(text, sizeof(text), "[dkim.rsa]\ndomain = example.org\nselector = r\nkey = %s/rsa.pem\n",
             dir);
    p = policy(text, err, sizeof(err));
    if (p == NULL)
        fail_msg("%s", err);
    wk_mailauth_set_clock(p, SIGN_NOW);
    old_rec = record_of("rsa.pem");
    assert_int_equal(rename(f, bak), 0);
    sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s 2>/dev/null", f);

    memset(&seen, 0, sizeof(seen));
    e[0] = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@example.org", "a@example.org");
    sign_start(p, e[0], 1, &seen);
    wk_mailauth_reload(p); /* the new key from now on */
    while (seen.calls == 0)
        uv_run(uv_default_loop(), UV_RUN_ONCE);
    assert_int_equal(seen.res.verdict, WK_MAILAUTH_VERDICT_SIGNED);
    assert_int_equal(verify_pass(e[0], SIGN_NOW + 10, sel, &old_rec, 1), 1);
    envelope_free(e[0]);

    memset(&t, 0, sizeof(t));
    for (i = 1; i <= MANY; i++) {
        e[i] = envelope(MS_ENV_DIRECTION_OUTBOUND, "a@example.org", "a@example.org");
        assert_int_equal(wk_mailauth_start(p, e[i], on_tally, &t, (uint64_t)i, &res), 0);
    }
    wk_mailauth_free(p);
    for (i = 1; i <= MANY; i++)
        envelope_free(e[i]);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
    for (i = 1; i <= MANY; i++)
        assert_int_equal(t.calls[i], 0);

    assert_int_equal(rename(bak, f), 0);
    free(old_rec);
    free(f);
    free(bak);
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
        cmocka_unit_test(test_sign_pool_same_fields),
        cmocka_unit_test(test_sign_cancel),
        cmocka_unit_test(test_sign_reload_and_free),
        cmocka_unit_test(test_inbound_unreachable_dns),
        cmocka_unit_test(test_event_json),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
