/*
 * test_ms_envelope.c - lib/mail/ms_envelope.c: encode and decode with the
 * version check, and the envelope builders.
 */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
    };
    return cmocka_run_group_tests_name("envelope", tests, NULL, NULL);
}
