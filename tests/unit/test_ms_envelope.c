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

/* The record built around its message (ms_envelope_encode_tx_in): the
 * message field first, written before and after the message where it lies,
 * and read by both decoders as the same envelope as
 * ms_envelope_encode_tx()'s record (written again: the same octets), for
 * messages whose length takes 0 (empty), 1, 2 and 3 octets to say; no room
 * before the message, or a buffer that may not grow by the other fields:
 * -1 and the buffer unchanged. */
static void test_tx_in(void **state)
{
    static const size_t sizes[] = {0, 20, 127, 128, 300, 70000};
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt r[2] = {{"b@dest.example", MS_ENV_NOTIFY_SUCCESS, "rfc822;b@x"},
                                       {"c@dest.example", 0, NULL}};
    char err[128];
    size_t k, i;

    (void)state;
    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "0123456789ABCDEFGHJKM";
    tx.received_at_us = 1765000000000000;
    tx.frontend_node = "fe1";
    tx.client.ip = "192.0.2.7";
    tx.client.port = 2525;
    tx.client.helo = "client.example";
    tx.mail_from.address = "a@example.org";
    tx.mail_from.body = MS_ENV_BODY_8BITMIME;
    tx.mail_from.size = 70000;
    tx.rcpts = r;
    tx.nrcpts = 2;
    tx.direction = MS_ENV_DIRECTION_INBOUND;
    tx.quarantine = "held";
    for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t mlen = sizes[k], head = MS_ENVELOPE_TX_HEAD_MAX + 3, clen, start, rlen, len1, len2,
               want_head = mlen == 0 ? 0 : mlen < 128 ? 2 : mlen < 16384 ? 3 : 4;
        uint8_t *msg = malloc(mlen + 1), *copy, *rec, *again1, *again2;
        struct ms_buf b;
        ms_envelope *d1, *d2;

        for (i = 0; i < mlen; i++)
            msg[i] = (uint8_t)("Subject: x\r\n\r\nbody\r\n"[i % 20]);
        tx.message = msg;
        tx.len = mlen;
        copy = ms_envelope_encode_tx(&tx, &clen);
        tx.message = NULL; /* not read: the message is the buffer's */
        tx.len = 0;

        /* A buffer that may not grow by the other fields: -1, unchanged. */
        ms_buf_init(&b, head + mlen + 5);
        memset(ms_buf_reserve(&b, head), 0xee, head);
        ms_buf_commit(&b, head);
        assert_int_equal(ms_buf_append(&b, msg, mlen), 0);
        assert_int_equal(ms_envelope_encode_tx_in(&tx, &b, head, &start, &rlen), -1);
        assert_int_equal(b.len, head + mlen);
        for (i = 0; i < head; i++)
            assert_int_equal((uint8_t)b.data[i], 0xee);
        /* No room before the message: the same. */
        b.max = (size_t)-1 / 2;
        if (want_head > 0) {
            assert_int_equal(ms_envelope_encode_tx_in(&tx, &b, want_head - 1, &start, &rlen), -1);
            assert_int_equal(b.len, head + mlen);
        }

        assert_int_equal(ms_envelope_encode_tx_in(&tx, &b, head, &start, &rlen), 0);
        rec = (uint8_t *)b.data + start;
        assert_int_equal(start, head - want_head);
        assert_int_equal(start + rlen, b.len); /* the record ends the buffer */
        assert_int_equal(rlen, clen);          /* the same fields, in another order */
        if (mlen > 0)
            assert_int_equal(rec[0], MS_ENVELOPE_FIELD_MESSAGE << 3 | 2);
        assert_memory_equal(b.data + head, msg, mlen); /* the message did not move */

        d1 = ms_envelope_decode(rec, rlen, err, sizeof(err));
        assert_non_null(d1);
        d2 = ms_envelope_decode_borrow(rec, rlen, err, sizeof(err));
        assert_non_null(d2);
        assert_int_equal(d2->message.len, mlen);
        if (mlen > 0)
            assert_ptr_equal(d2->message.data, b.data + head); /* borrowed where it lies */
        assert_string_equal(d1->quarantine, "held");
        assert_int_equal(d1->received_at_us, tx.received_at_us);
        assert_int_equal(d1->n_recipients, 2);
        again1 = ms_envelope_encode(d1, &len1);
        again2 = ms_envelope_encode(d2, &len2);
        assert_int_equal(len1, clen);
        assert_int_equal(len2, clen);
        assert_memory_equal(again1, copy, clen);
        assert_memory_equal(again2, copy, clen);
        free(again1);
        free(again2);
        ms_envelope_free(d1);
        ms_envelope_free(d2);
        ms_buf_free(&b);
        free(copy);
        free(msg);
    }
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

/* A record made of the queue id, one recipient and a version (everything
 * ms_envelope_decode checks) followed by `tail` (raw wire data). */
static size_t wire_record(uint8_t *out, const void *tail, size_t tlen)
{
    static const uint8_t head[] = {
        0x08, 0x01,                          /* 1 version = 1 */
        0x12, 0x03, 'Q', 'I', 'D',           /* 2 queue_id */
        0x3a, 0x05, 0x0a, 0x03, 'b', '@', 'x' /* 7 recipients { 1 address } */
    };

    memcpy(out, head, sizeof(head));
    memcpy(out + sizeof(head), tail, tlen);
    return sizeof(head) + tlen;
}

/* Both decoders on buf: the same verdict, and when accepted the same
 * envelope (packed again to the same octets); returns the borrowing one
 * (NULL when refused). */
static ms_envelope *both(const uint8_t *buf, size_t len)
{
    char err[128], err2[128];
    ms_envelope *c = ms_envelope_decode(buf, len, err, sizeof(err));
    ms_envelope *b = ms_envelope_decode_borrow(buf, len, err2, sizeof(err2));
    uint8_t *pc, *pb;
    size_t lc, lb;

    if (c == NULL) {
        assert_null(b);
        assert_string_equal(err, err2);
        return NULL;
    }
    assert_non_null(b);
    pc = ms_envelope_encode(c, &lc);
    pb = ms_envelope_encode(b, &lb);
    assert_int_equal(lc, lb);
    assert_memory_equal(pc, pb, lc);
    free(pc);
    free(pb);
    ms_envelope_free(c);
    return b;
}

/* The worker's decoder: the message is not copied but points into the
 * record; every other field as ms_envelope_decode has it; replacing and
 * freeing never free() the record's octets, even after the record is gone
 * (the worker's order: the record is done before the envelope is freed). */
static void test_borrow(void **state)
{
    struct ms_envelope_tx tx;
    struct ms_envelope_tx_rcpt r = {"b@dest.example", MS_ENV_NOTIFY_FAILURE, NULL};
    uint8_t *buf, *repl;
    size_t len;
    ms_envelope *e;

    (void)state;
    memset(&tx, 0, sizeof(tx));
    tx.queue_id = "0123456789ABCDEFGHJKM";
    tx.client.ip = "192.0.2.7";
    tx.mail_from.address = "a@example.org";
    tx.rcpts = &r;
    tx.nrcpts = 1;
    tx.quarantine = "held"; /* a field after the message (16 > 10) */
    tx.message = "Subject: x\r\n\r\nbody\r\n";
    tx.len = 20;
    buf = ms_envelope_encode_tx(&tx, &len);
    e = both(buf, len);
    assert_non_null(e);
    assert_true(e->message.data > buf && e->message.data + 20 <= buf + len);
    assert_int_equal(e->message.len, 20);
    assert_memory_equal(e->message.data, tx.message, 20);
    assert_string_equal(e->quarantine, "held");
    assert_string_equal(e->recipients[0]->address, "b@dest.example");
    /* mailauth's rewrite: the borrowed octets are left alone. */
    repl = malloc(4);
    memcpy(repl, "X\r\n\r", 4);
    ms_envelope_set_message(e, repl, 4);
    assert_ptr_equal(e->message.data, repl);
    ms_envelope_set_message(e, (uint8_t *)strdup("Y\r\n"), 3); /* owned: freed */
    ms_envelope_free(e);
    e = ms_envelope_decode_borrow(buf, len, (char[64]){0}, 64);
    assert_non_null(e);
    free(buf);
    ms_envelope_free(e); /* after its record: pointers compared, nothing read */
    /* ms_envelope_decode's copy is owned: replaced, it is freed. */
    buf = ms_envelope_encode_tx(&tx, &len);
    e = ms_envelope_decode(buf, len, (char[64]){0}, 64);
    free(buf);
    ms_envelope_set_message(e, (uint8_t *)strdup("Z\r\n"), 3);
    ms_envelope_free(e);
}

/* Wire shapes any protobuf encoder may write: the message first, twice
 * (the last counts), absent, empty, with a padded length; unknown fields
 * of every wire type kept.  And malformed ones both decoders refuse. */
static void test_borrow_wire(void **state)
{
    uint8_t rec[256];
    size_t n;
    ms_envelope *e;

    (void)state;
    n = wire_record(rec, "\x52\x03" "abc", 5);
    e = both(rec, n);
    assert_non_null(e);
    assert_int_equal(e->message.len, 3);
    assert_memory_equal(e->message.data, "abc", 3);
    ms_envelope_free(e);

    /* Message before everything else. */
    memcpy(rec, "\x52\x02" "hi", 4);
    n = 4 + wire_record(rec + 4, "", 0) ;
    e = both(rec, n);
    assert_non_null(e);
    assert_ptr_equal(e->message.data, rec + 2);
    ms_envelope_free(e);

    /* Twice: the last one. */
    n = wire_record(rec, "\x52\x01" "a" "\x40\x02" "\x52\x02" "bc", 9);
    e = both(rec, n);
    assert_non_null(e);
    assert_int_equal(e->message.len, 2);
    assert_memory_equal(e->message.data, "bc", 2);
    assert_int_equal(e->direction, 2);
    ms_envelope_free(e);

    /* None, and an empty one. */
    n = wire_record(rec, "", 0);
    e = both(rec, n);
    assert_int_equal(e->message.len, 0);
    ms_envelope_free(e);
    n = wire_record(rec, "\x52\x00", 2);
    e = both(rec, n);
    assert_int_equal(e->message.len, 0);
    ms_envelope_free(e);

    /* A length padded to MS_ENVELOPE_WIRE_PREFIX_MAX octets (valid
     * protobuf: varints need not be minimal). */
    n = wire_record(rec, "\x52\x83\x80\x80\x80\x00" "xyz", 9);
    e = both(rec, n);
    assert_non_null(e);
    assert_int_equal(e->message.len, 3);
    ms_envelope_free(e);

    /* Unknown fields of each wire type (varint, 64-bit, bytes, 32-bit). */
    n = wire_record(rec, "\xf8\x01\x07" "\xf9\x01" "12345678" "\xfa\x01\x01" "z"
                         "\xfd\x01" "1234" "\x52\x01" "m", 26);
    e = both(rec, n);
    assert_non_null(e);
    assert_int_equal(e->message.len, 1);
    ms_envelope_free(e);

    /* Malformed: refused by both, with the same reason. */
    static const struct {
        const char *tail;
        size_t len;
    } bad[] = {
        {"\x52\x05" "abc", 5},                  /* length past the end */
        {"\x52", 1},                            /* no length */
        {"\x52\x80\x80\x80\x80\x80\x00", 7},    /* length over 5 octets */
        {"\x80", 1},                            /* truncated tag */
        {"\x02\x00", 2},                        /* field number 0 */
        {"\x53\x00", 2},                        /* 10 as a group start */
        {"\x0c", 1},                            /* group end */
        {"\x56\x00", 2},                        /* wire type 6 */
        {"\x51" "1234", 5},                     /* 64-bit, truncated */
        {"\x55" "12", 3},                       /* 32-bit, truncated */
        {"\x50\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12}, /* varint over 10 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = wire_record(rec, bad[i].tail, bad[i].len);
        assert_null(both(rec, n));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_tx),
        cmocka_unit_test(test_tx_in),
        cmocka_unit_test(test_borrow),
        cmocka_unit_test(test_borrow_wire),
        cmocka_unit_test(test_dsn),
        cmocka_unit_test(test_retry),
    };
    return cmocka_run_group_tests_name("envelope", tests, NULL, NULL);
}
