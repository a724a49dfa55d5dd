/*
 * seed_envelope.c - writes the seed corpus of fuzz_envelope: envelopes as
 * our own encoder (ms_envelope_encode) writes them, one per file, covering
 * every field of proto/envelope.proto at least once, so that the fuzzer
 * starts from records a frontend or a worker really produces.
 *
 *   make fuzz-seeds    (= build/tests/seed_envelope tests/fuzz/corpus/fuzz_envelope)
 *
 * The output is deterministic (fixed times and queue ids): run it after a
 * change to the proto and commit what changed.  Each envelope is decoded
 * again before it is written, so a seed is always one the decoder accepts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ms_envelope.h"

/* A fixed instant (2026-01-01T00:00:00Z), so the seeds do not change. */
#define SEED_TIME_US 1767225600000000LL

static const char MSG[] = "Received: from client.example ([192.0.2.10])\r\n"
                          "\tby mx1.mailstream.test with ESMTPS id 7QX2M4ZB0K9PJ8RW\r\n"
                          "From: Alice <alice@example.org>\r\n"
                          "To: Bob <bob@example.net>\r\n"
                          "Subject: seed\r\n"
                          "Message-ID: <seed.1@example.org>\r\n"
                          "\r\n"
                          "Hello.\r\n"
                          ".leading dot, unstuffed\r\n";

static int write_seed(const char *dir, const char *name, const ms_envelope *e)
{
    char path[4096], err[256];
    size_t len;
    uint8_t *buf = ms_envelope_encode(e, &len);
    ms_envelope *back = ms_envelope_decode(buf, len, err, sizeof(err));
    FILE *f;
    int ok;

    if (back == NULL) {
        fprintf(stderr, "seed %s does not decode: %s\n", name, err);
        free(buf);
        return -1;
    }
    ms_envelope_free(back);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        free(buf);
        return -1;
    }
    ok = fwrite(buf, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    free(buf);
    if (!ok) {
        fprintf(stderr, "%s: write failed\n", path);
        return -1;
    }
    printf("%s (%zu bytes)\n", path, len);
    return 0;
}

int main(int argc, char **argv)
{
    Mailstream__Client cl = MAILSTREAM__CLIENT__INIT;
    Mailstream__MailFrom mf = MAILSTREAM__MAIL_FROM__INIT, null_from = MAILSTREAM__MAIL_FROM__INIT;
    Mailstream__Recipient r[3], *rp[3];
    Mailstream__Attempt at[2], *ap[2];
    Mailstream__Auth auth = MAILSTREAM__AUTH__INIT;
    ms_envelope e;
    const char *dir;
    int i, fail = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
        fprintf(stderr, "%s: %s\n", dir, strerror(errno));
        return 1;
    }
    for (i = 0; i < 3; i++) {
        mailstream__recipient__init(&r[i]);
        rp[i] = &r[i];
    }
    for (i = 0; i < 2; i++) {
        mailstream__attempt__init(&at[i]);
        ap[i] = &at[i];
    }

    /* The least a frontend writes: one recipient, an inbound message from
     * a client without TLS or AUTH, no parameters. */
    ms_envelope_init(&e);
    e.queue_id = "7QX2M4ZB0K9PJ8RW";
    e.received_at_us = SEED_TIME_US;
    e.frontend_node = "fe1";
    cl.ip = "192.0.2.10";
    cl.port = 49152;
    cl.helo = "client.example";
    cl.listener = "mx";
    cl.listener_role = "mx";
    e.client = &cl;
    mf.address = "alice@example.org";
    e.mail_from = &mf;
    r[0].address = "bob@example.net";
    e.n_recipients = 1;
    e.recipients = rp;
    e.direction = MAILSTREAM__DIRECTION__DIRECTION_INBOUND;
    e.message.data = (uint8_t *)MSG;
    e.message.len = sizeof(MSG) - 1;
    fail |= write_seed(dir, "inbound-minimal", &e);

    /* Submission over TLS with AUTH through a PROXY balancer, every MAIL
     * and RCPT parameter (RFC 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8,
     * 3461 RET/ENVID/NOTIFY/ORCPT, 8689 REQUIRETLS), three recipients. */
    cl.port = 587;
    cl.tls_version = "TLSv1.3";
    cl.tls_cipher = "TLS_AES_256_GCM_SHA384";
    cl.auth_user = "alice@example.org";
    cl.proxy_peer_ip = "198.51.100.7";
    cl.listener = "submission";
    cl.listener_role = "submission";
    cl.reverse_name = "client.example";
    mf.body = MAILSTREAM__BODY__BODY_8BITMIME;
    mf.smtputf8 = 1;
    mf.size = sizeof(MSG) - 1;
    mf.ret = MAILSTREAM__RET__RET_HDRS;
    mf.envid = "QQ314159";
    mf.requiretls = 1;
    r[0].notify = MAILSTREAM__NOTIFY__NOTIFY_SUCCESS | MAILSTREAM__NOTIFY__NOTIFY_FAILURE;
    r[0].orcpt = "rfc822;bob@example.net";
    r[1].address = "j\xc3\xb6rg@b\xc3\xbc\x63her.example";
    r[1].notify = MAILSTREAM__NOTIFY__NOTIFY_NEVER;
    r[2].address = "carol@example.com";
    r[2].notify = MAILSTREAM__NOTIFY__NOTIFY_DELAY | MAILSTREAM__NOTIFY__NOTIFY_FAILURE;
    r[2].orcpt = "utf-8;carol@example.com";
    e.n_recipients = 3;
    e.direction = MAILSTREAM__DIRECTION__DIRECTION_OUTBOUND;
    fail |= write_seed(dir, "submission-all-parameters", &e);

    /* A BINARYMIME body (RFC 3030) with NUL, bare CR and bare LF octets. */
    mf.body = MAILSTREAM__BODY__BODY_BINARYMIME;
    mf.ret = MAILSTREAM__RET__RET_FULL;
    e.message.data = (uint8_t *)"Subject: bin\r\n\r\n\0\x01\r\xff\n\x80";
    e.message.len = 22;
    e.n_recipients = 1;
    fail |= write_seed(dir, "binarymime", &e);

    /* A retry record as a worker re-produces it: pending recipients only,
     * two attempts, the tier, the policy stage's findings, a delay warning
     * already sent. */
    mf.body = MAILSTREAM__BODY__BODY_7BIT;
    mf.requiretls = 0;
    e.message.data = (uint8_t *)MSG;
    e.message.len = sizeof(MSG) - 1;
    r[2].delay_warned_us = SEED_TIME_US + 4 * 3600 * 1000000LL;
    e.recipients = rp + 1;
    e.n_recipients = 2;
    e.direction = MAILSTREAM__DIRECTION__DIRECTION_INBOUND;
    at[0].at_us = SEED_TIME_US + 1000000;
    at[0].recipient = r[1].address;
    at[0].worker_node = "wk1";
    at[0].relay = "mx.b\xc3\xbc\x63her.example[203.0.113.5]:25";
    at[0].code = 451;
    at[0].dsn = "4.3.0";
    at[0].reply = "451 4.3.0 Temporary failure, try again later";
    at[1].at_us = SEED_TIME_US + 301000000;
    at[1].recipient = r[2].address;
    at[1].worker_node = "wk2";
    at[1].relay = "";
    at[1].code = 0;
    at[1].dsn = "4.4.1";
    at[1].reply = "connection refused";
    e.n_attempts = 2;
    e.attempts = ap;
    e.attempt_count = 2;
    e.next_attempt_us = SEED_TIME_US + 901000000;
    e.retry_tier = 2;
    auth.evaluated = 1;
    auth.spf_mailfrom_pass = 1;
    auth.dkim_aligned_domain = "example.org";
    e.auth = &auth;
    fail |= write_seed(dir, "retry-record", &e);

    /* A DSN a worker produced: the null sender, to the original sender,
     * reporting on another queue id. */
    ms_envelope_init(&e);
    e.queue_id = "9ABCDEFGHJK2M4PQ";
    e.received_at_us = SEED_TIME_US + 5000000;
    e.frontend_node = "wk1";
    null_from.address = "";
    e.mail_from = &null_from;
    mailstream__recipient__init(&r[0]);
    r[0].address = "alice@example.org";
    r[0].notify = MAILSTREAM__NOTIFY__NOTIFY_NEVER;
    e.n_recipients = 1;
    e.recipients = rp;
    e.direction = MAILSTREAM__DIRECTION__DIRECTION_OUTBOUND;
    e.dsn_for = "7QX2M4ZB0K9PJ8RW";
    e.message.data = (uint8_t *)"From: MAILER-DAEMON@mx1.mailstream.test\r\n"
                                "Subject: Undelivered Mail Returned to Sender\r\n"
                                "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                                "\tboundary=\"b\"\r\n\r\n--b--\r\n";
    e.message.len = strlen((const char *)e.message.data);
    fail |= write_seed(dir, "dsn", &e);

    return fail ? 1 : 0;
}
