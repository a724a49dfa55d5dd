/* test_ms_envelope.c - lib/mail/ms_envelope.c: encode/decode round trip,
 * version check, malformed input, and the builders (a frontend
 * transaction, a DSN, a retry, the authentication results). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ms_envelope.h"

static void test_roundtrip(void **state)
{
    ms_envelope e;
    Mailstream__Recipient r = MAILSTREAM__RECIPIENT__INIT, *rp = &r;
    Mailstream__MailFrom mf = MAILSTREAM__MAIL_FROM__INIT;
    ms_envelope *d;
    uint8_t *buf;
    size_t len;
    char err[128];

    ms_envelope_init(&e);
    e.queue_id = "0123456789ABCDEFGHJKM";
    mf.address = "a@example.org";
    mf.body = MAILSTREAM__BODY__BODY_8BITMIME;
    e.mail_from = &mf;
    r.address = "b@mailstream.test";
    r.notify = MAILSTREAM__NOTIFY__NOTIFY_FAILURE | MAILSTREAM__NOTIFY__NOTIFY_DELAY;
    e.recipients = &rp;
    e.n_recipients = 1;
    e.message.data = (uint8_t *)"Subject: x\r\n\r\nbody\r\n";
    e.message.len = 20;
    buf = ms_envelope_encode(&e, &len);
    d = ms_envelope_decode(buf, len, err, sizeof(err));
    assert_non_null(d);
    assert_int_equal(d->version, MS_ENVELOPE_VERSION);
    assert_string_equal(d->queue_id, e.queue_id);
    assert_string_equal(d->mail_from->address, "a@example.org");
    assert_int_equal(d->recipients[0]->notify, 6);
    assert_int_equal(d->message.len, 20);
    assert_memory_equal(d->message.data, e.message.data, 20);
    ms_envelope_free(d);
    free(buf);

    /* An unknown version is refused with a clear reason. */
    e.version = MS_ENVELOPE_VERSION + 1;
    buf = ms_envelope_encode(&e, &len);
    assert_null(ms_envelope_decode(buf, len, err, sizeof(err)));
    assert_non_null(strstr(err, "unknown envelope version"));
    free(buf);

    /* No recipients. */
    e.version = MS_ENVELOPE_VERSION;
    e.n_recipients = 0;
    buf = ms_envelope_encode(&e, &len);
    assert_null(ms_envelope_decode(buf, len, err, sizeof(err)));
    free(buf);

    /* Garbage. */
    assert_null(ms_envelope_decode("\xff\xff\xff\xff\xff", 5, err, sizeof(err)));
    assert_non_null(strstr(err, "malformed"));
}

/* From a frontend transaction: every field lands where the worker reads
 * it; no client part when there is no client address. */
static void test_tx(void **state)
{
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt r[2] = {{"b@dest.example", MS_ENV_NOTIFY_SUCCESS, "rfc822;b@x"},
                                       {"c@dest.example", 0, NULL}};
    char err[128];
    uint8_t *buf;
    size_t len;
    ms_envelope *e;

    (void)state;
    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "0123456789ABCDEFGHJKM";
    tx.received_at_us = 42;
    tx.frontend_node = "fe1";
    tx.client.ip = "192.0.2.7";
    tx.client.port = 2525;
    tx.client.helo = "client.example";
    tx.client.auth_user = "alice";
    tx.client.listener_role = "submission";
    tx.mail_from.address = "a@example.org";
    tx.mail_from.body = MS_ENV_BODY_BINARYMIME;
    tx.mail_from.smtputf8 = 1;
    tx.mail_from.size = 1000;
    tx.mail_from.ret = MS_ENV_RET_HDRS;
    tx.mail_from.envid = "ENV1";
    tx.mail_from.requiretls = 1;
    tx.rcpts = r;
    tx.nrcpts = 2;
    tx.direction = MS_ENV_DIRECTION_OUTBOUND;
    tx.message = "Subject: x\r\n\r\nbody\r\n";
    tx.len = 20;
    buf = ms_envelope_encode_tx(&tx, &len);
    e = ms_envelope_decode(buf, len, err, sizeof(err));
    free(buf);
    assert_non_null(e);
    assert_string_equal(e->queue_id, tx.queue_id);
    assert_int_equal(e->received_at_us, 42);
    assert_string_equal(e->frontend_node, "fe1");
    assert_non_null(e->client);
    assert_string_equal(e->client->ip, "192.0.2.7");
    assert_int_equal(e->client->port, 2525);
    assert_string_equal(e->client->helo, "client.example");
    assert_string_equal(e->client->auth_user, "alice");
    assert_string_equal(e->client->listener_role, "submission");
    assert_string_equal(e->client->tls_version, "");
    assert_string_equal(e->mail_from->address, "a@example.org");
    assert_int_equal(e->mail_from->body, MS_ENV_BODY_BINARYMIME);
    assert_true(e->mail_from->smtputf8);
    assert_int_equal(e->mail_from->size, 1000);
    assert_int_equal(e->mail_from->ret, MS_ENV_RET_HDRS);
    assert_string_equal(e->mail_from->envid, "ENV1");
    assert_true(e->mail_from->requiretls);
    assert_int_equal(e->n_recipients, 2);
    assert_int_equal(e->recipients[0]->notify, MS_ENV_NOTIFY_SUCCESS);
    assert_string_equal(e->recipients[0]->orcpt, "rfc822;b@x");
    assert_string_equal(e->recipients[1]->orcpt, "");
    assert_int_equal(e->direction, MS_ENV_DIRECTION_OUTBOUND);
    assert_int_equal(e->message.len, 20);
    assert_memory_equal(e->message.data, tx.message, 20);
    assert_null(e->auth);
    ms_envelope_set_auth(e, 1, "example.org");
    ms_envelope_set_auth(e, 0, "example.net"); /* replaces */
    assert_true(e->auth->evaluated);
    assert_false(e->auth->spf_mailfrom_pass);
    assert_string_equal(e->auth->dkim_aligned_domain, "example.net");
    ms_envelope_free(e);

    tx.client.ip = NULL;
    e = ms_envelope_new_tx(&tx);
    assert_null(e->client);
    assert_int_equal(e->version, MS_ENVELOPE_VERSION);
    ms_envelope_free(e);
}

/* A DSN's envelope: null sender, the one recipient never notified. */
static void test_dsn(void **state)
{
    struct ms_envelope_dsn in = {"DSN1", 7, "wk1", "a@example.org", 1, "ORIG1", "report", 6};
    char err[128];
    uint8_t *buf;
    size_t len;
    ms_envelope *e;

    (void)state;
    buf = ms_envelope_encode_dsn(&in, &len);
    e = ms_envelope_decode(buf, len, err, sizeof(err));
    free(buf);
    assert_non_null(e);
    assert_string_equal(e->queue_id, "DSN1");
    assert_string_equal(e->dsn_for, "ORIG1");
    assert_string_equal(e->mail_from->address, "");
    assert_true(e->mail_from->requiretls);
    assert_int_equal(e->mail_from->body, MS_ENV_BODY_8BITMIME);
    assert_int_equal(e->n_recipients, 1);
    assert_string_equal(e->recipients[0]->address, "a@example.org");
    assert_int_equal(e->recipients[0]->notify, MS_ENV_NOTIFY_NEVER);
    assert_int_equal(e->direction, MS_ENV_DIRECTION_OUTBOUND);
    assert_memory_equal(e->message.data, "report", 6);
    ms_envelope_free(e);
}

/* A retry record: the kept recipients only, attempts appended. */
static void test_retry(void **state)
{
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt r[3] = {{"x@d.example", 0, NULL}, {"y@d.example", 0, NULL},
                                       {"z@d.example", 0, NULL}};
    struct ms_envelope_attempt att[2] = {{1, "x@d.example", "wk1", "r1", 250, "2.0.0", "ok"},
                                         {2, "z@d.example", "wk1", "r1", 451, "4.3.0", "later"}};
    size_t keep[1] = {2};
    char err[128];
    uint8_t *buf;
    size_t len;
    ms_envelope *e, *r2;

    (void)state;
    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "Q1";
    tx.mail_from.address = "a@example.org";
    tx.rcpts = r;
    tx.nrcpts = 3;
    tx.message = "m";
    tx.len = 1;
    e = ms_envelope_new_tx(&tx);
    buf = ms_envelope_encode_retry(e, keep, 1, att, 2, 3, 99, 2, &len);
    r2 = ms_envelope_decode(buf, len, err, sizeof(err));
    free(buf);
    assert_non_null(r2);
    assert_int_equal(r2->n_recipients, 1);
    assert_string_equal(r2->recipients[0]->address, "z@d.example");
    assert_int_equal(r2->n_attempts, 2);
    assert_int_equal(r2->attempts[1]->code, 451);
    assert_string_equal(r2->attempts[1]->reply, "later");
    assert_int_equal(r2->attempt_count, 3);
    assert_int_equal(r2->next_attempt_us, 99);
    assert_int_equal(r2->retry_tier, 2);
    assert_int_equal(e->n_recipients, 3); /* unchanged */
    ms_envelope_free(r2);
    ms_envelope_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_tx),
        cmocka_unit_test(test_dsn),
        cmocka_unit_test(test_retry),
    };
    return cmocka_run_group_tests_name("envelope", tests, NULL, NULL);
}
