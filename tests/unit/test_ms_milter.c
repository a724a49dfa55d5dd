/* test_ms_milter.c - lib/mail/ms_milter.c: the commands as libmilter reads
 * them (golden bytes), every reply the parser takes and the malformed ones
 * it refuses, and the header/body editor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ms_error.h"
#include "ms_milter.h"

/* A reply packet: length, command, data. */
static size_t pkt(char *out, char cmd, const char *data, size_t len)
{
    uint32_t n = (uint32_t)len + 1;

    out[0] = (char)(n >> 24), out[1] = (char)(n >> 16), out[2] = (char)(n >> 8), out[3] = (char)n;
    out[4] = cmd;
    memcpy(out + 5, data, len);
    return len + 5;
}

static void test_encode(void **state)
{
    struct ms_buf b;
    const char *args[] = {"<a@example.org>", "SIZE=10"};
    const char *mac[] = {"i", "Q1", "{empty}", "", "{auth_authen}", NULL, "j", "mx"};

    ms_buf_init(&b, 4096);
    assert_int_equal(ms_milter_put_optneg(&b, 6, 0x1ff, 0x1f), 0);
    assert_memory_equal(b.data, "\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\0\0\x1f", 17);
    ms_buf_reset(&b);
    assert_int_equal(ms_milter_put_connect(&b, "mail.example.org", '4', 2525, "192.0.2.1"), 0);
    assert_int_equal(b.len, 4 + 1 + 17 + 1 + 2 + 10);
    assert_memory_equal(b.data + 5, "mail.example.org\0" "4\x09\xdd" "192.0.2.1", 30);
    ms_buf_reset(&b);
    assert_int_equal(ms_milter_put_connect(&b, "unknown", 'U', 0, NULL), 0);
    assert_memory_equal(b.data, "\0\0\0\x0a" "Cunknown\0U", 14);
    ms_buf_reset(&b);
    assert_int_equal(ms_milter_put_strings(&b, SMFIC_MAIL, args, 2), 0);
    assert_memory_equal(b.data, "\0\0\0\x19M<a@example.org>\0SIZE=10\0", 29);
    ms_buf_reset(&b);
    /* Pairs with no value are left out. */
    assert_int_equal(ms_milter_put_macros(&b, SMFIC_MAIL, mac, 4), 0);
    assert_memory_equal(b.data, "\0\0\0\x0c" "DMi\0Q1\0j\0mx\0", 16);
    ms_buf_reset(&b);
    /* Leading space dropped, folding as bare LF. */
    assert_int_equal(ms_milter_put_header(&b, "Subject", 7, " a\r\n\tb", 6, 0), 0);
    assert_memory_equal(b.data, "\0\0\0\x0e" "LSubject\0a\n\tb\0", 18);
    ms_buf_reset(&b);
    assert_int_equal(ms_milter_put_header(&b, "X", 1, " v", 2, 1), 0);
    assert_memory_equal(b.data, "\0\0\0\x06" "LX\0 v\0", 10);
    ms_buf_reset(&b);
    assert_int_equal(ms_milter_put_head(&b, SMFIC_BODY, 65535), 0);
    assert_memory_equal(b.data, "\0\x01\0\0B", 5);
    ms_buf_reset(&b);
    assert_int_equal(ms_milter_put(&b, SMFIC_BODYEOB, NULL, 0), 0);
    assert_memory_equal(b.data, "\0\0\0\x01" "E", 5);
    ms_buf_free(&b);
    /* A buffer too small: MS_ETOOBIG and nothing left behind. */
    ms_buf_init(&b, 8);
    assert_int_equal(ms_milter_put_strings(&b, SMFIC_HELO, args, 1), MS_ETOOBIG);
    assert_int_equal(b.len, 0);
    ms_buf_free(&b);
}

static void test_parse_actions(void **state)
{
    char buf[512];
    struct ms_milter_reply r;
    size_t n;
    const char simple[] = "acdrtps";
    size_t i;

    for (i = 0; simple[i]; i++) {
        n = pkt(buf, simple[i], "", 0);
        assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
        assert_int_equal(r.cmd, simple[i]);
        assert_string_not_equal(ms_milter_reply_name(r.cmd), "?");
        /* Not whole yet: nothing taken. */
        assert_int_equal(ms_milter_parse(buf, n - 1, 0, &r), MS_EAGAIN);
    }
    /* Data where none belongs. */
    n = pkt(buf, 'c', "x", 1);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    /* Unknown command, zero length, over the limit. */
    n = pkt(buf, 'Z', "", 0);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    assert_int_equal(ms_milter_parse("\0\0\0\0c", 5, 0, &r), MS_EPROTO);
    assert_int_equal(ms_milter_parse("\0\x04\0\x01" "b", 5, 0, &r), MS_EPROTO);
    assert_int_equal(ms_milter_parse("\0\x04\0\0", 4, 0, &r), MS_EAGAIN);
    /* OPTNEG only when it is expected. */
    n = pkt(buf, 'O', "\0\0\0\x06\0\0\0\x01\0\0\0\0", 12);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'c', "", 0);
    assert_int_equal(ms_milter_parse(buf, n, 1, &r), MS_EPROTO);
}

static void test_parse_optneg(void **state)
{
    char buf[512];
    struct ms_milter_reply r;
    size_t n;
    static const char d[] = "\0\0\0\x06\0\0\0\x03\0\0\x10\x00"
                            "\0\0\0\x02{mail_addr} i\0"
                            "\0\0\0\x05i\0";

    n = pkt(buf, 'O', d, sizeof(d) - 1);
    assert_int_equal(ms_milter_parse(buf, n, 1, &r), (int)n);
    assert_int_equal(r.version, 6);
    assert_int_equal(r.actions, SMFIF_ADDHDRS | SMFIF_CHGBODY);
    assert_int_equal(r.protocol, SMFIP_NR_CONN);
    assert_string_equal(ms_milter_symlist(&r, MS_MILTER_MAIL), "{mail_addr} i");
    assert_string_equal(ms_milter_symlist(&r, MS_MILTER_EOM), "i");
    assert_null(ms_milter_symlist(&r, MS_MILTER_RCPT));
    /* A stage that does not exist, a string without its NUL. */
    n = pkt(buf, 'O', "\0\0\0\x06\0\0\0\x03\0\0\0\0\0\0\0\x09x\0", 18);
    assert_int_equal(ms_milter_parse(buf, n, 1, &r), MS_EPROTO);
    n = pkt(buf, 'O', "\0\0\0\x06\0\0\0\x03\0\0\0\0\0\0\0\x01x", 17);
    assert_int_equal(ms_milter_parse(buf, n, 1, &r), MS_EPROTO);
    n = pkt(buf, 'O', "\0\0\0\x06", 4);
    assert_int_equal(ms_milter_parse(buf, n, 1, &r), MS_EPROTO);
}

static void test_parse_replycode(void **state)
{
    char buf[512];
    struct ms_milter_reply r;
    size_t n;

    n = pkt(buf, 'y', "554 5.7.1 Spam\tmessage rejected\0", 32);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_int_equal(r.code, 554);
    assert_string_equal(r.xcode, "5.7.1");
    assert_string_equal(r.text, "Spam?message rejected");
    n = pkt(buf, 'y', "451 try later\0", 14);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_int_equal(r.code, 451);
    assert_string_equal(r.xcode, "");
    assert_string_equal(r.text, "try later");
    /* A multi-line reply: its first line. */
    n = pkt(buf, 'y', "550-5.7.1 one\r\n550 5.7.1 two\0", 29);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_string_equal(r.text, "one");
    /* An enhanced code of another class is text. */
    n = pkt(buf, 'y', "550 4.7.1 x\0", 12);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_string_equal(r.xcode, "");
    assert_string_equal(r.text, "4.7.1 x");
    /* Not 4xx/5xx, not digits, no NUL. */
    n = pkt(buf, 'y', "250 ok\0", 7);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'y', "5x0 no\0", 7);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'y', "550 no", 6);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
}

static void test_parse_edits(void **state)
{
    char buf[512];
    struct ms_milter_reply r;
    size_t n;

    n = pkt(buf, 'h', "X-Spam\0yes\0", 11);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_int_equal(r.namelen, 6);
    assert_string_equal(r.value, "yes");
    n = pkt(buf, 'i', "\0\0\0\x02X-A\0v\0", 10);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_int_equal(r.index, 2);
    n = pkt(buf, 'm', "\0\0\0\x01Subject\0\0", 13);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_int_equal(r.valuelen, 0);
    /* Bad field name, missing value. */
    n = pkt(buf, 'h', "X Y\0v\0", 6);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'h', "X\0", 2);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'm', "\0\0", 2);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'e', "<b@example.org>\0SIZE=5\0", 23);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_string_equal(r.name, "<b@example.org>");
    assert_string_equal(r.value, "SIZE=5");
    n = pkt(buf, '+', "<c@example.org>\0", 16);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_string_equal(r.value, "");
    n = pkt(buf, '+', "<c@example.org>\0x\0", 18);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, '2', "<c@example.org>\0NOTIFY=NEVER\0", 29);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    n = pkt(buf, '-', "\0", 1);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), MS_EPROTO);
    n = pkt(buf, 'q', "virus found\0", 12);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_string_equal(r.name, "virus found");
    n = pkt(buf, 'b', "new body\r\n", 10);
    assert_int_equal(ms_milter_parse(buf, n, 0, &r), (int)n);
    assert_int_equal(r.len, 10);
    assert_memory_equal(r.data, "new body\r\n", 10);
}

static char *written(struct ms_milter_msg *m, struct ms_buf *b)
{
    ms_buf_reset(b);
    assert_int_equal(ms_milter_msg_write(m, b), 0);
    assert_int_equal(ms_buf_append(b, "", 1), 0);
    return b->data;
}

static void test_editor(void **state)
{
    static const char msg[] = "Received: from x\r\n\tby y\r\nSubject: hi\r\nX-A: 1\r\n"
                              "x-a: 2\r\n\r\nbody\r\n";
    struct ms_milter_msg m;
    struct ms_buf b;

    ms_buf_init(&b, 4096);
    ms_milter_msg_init(&m, msg, sizeof(msg) - 1, 1024);
    assert_int_equal(m.n, 4);
    assert_int_equal(ms_milter_msg_edited(&m), 0);
    assert_string_equal(written(&m, &b), msg);
    /* Second X-A changed, Subject deleted, one added, one inserted on top. */
    assert_int_equal(ms_milter_msg_change(&m, 2, "X-A", 3, "two\n\tfolded", 11), 0);
    assert_int_equal(ms_milter_msg_change(&m, 1, "subject", 7, "", 0), 0);
    assert_int_equal(ms_milter_msg_add(&m, "X-Spam", 6, "no", 2), 0);
    assert_int_equal(ms_milter_msg_insert(&m, 0, "X-Top", 5, " lead", 5), 0);
    /* Index 1 after the deletion: before the (still first live) Received. */
    assert_int_equal(ms_milter_msg_insert(&m, 2, "X-Mid", 5, "m", 1), 0);
    /* Changing a field that is not there adds it; deleting one does nothing. */
    assert_int_equal(ms_milter_msg_change(&m, 3, "X-A", 3, "three", 5), 0);
    assert_int_equal(ms_milter_msg_change(&m, 1, "X-None", 6, "", 0), 0);
    assert_int_equal(ms_milter_msg_edited(&m), 1);
    assert_string_equal(written(&m, &b),
                        "X-Top: lead\r\nReceived: from x\r\n\tby y\r\nX-Mid: m\r\nX-A: 1\r\n"
                        "x-a: two\r\n\tfolded\r\nX-Spam: no\r\nX-A: three\r\n\r\nbody\r\n");
    /* A value that would start a field of its own, a bad name. */
    assert_int_equal(ms_milter_msg_add(&m, "X-B", 3, "a\nEvil: 1", 9), MS_EPROTO);
    assert_int_equal(ms_milter_msg_add(&m, "X-B", 3, "a\rb", 3), MS_EPROTO);
    assert_int_equal(ms_milter_msg_add(&m, "X:B", 3, "a", 1), MS_EPROTO);
    /* The body replaced, in two chunks. */
    assert_int_equal(ms_milter_msg_body(&m, "new ", 4), 0);
    assert_int_equal(ms_milter_msg_body(&m, "body\r\n", 6), 0);
    assert_non_null(strstr(written(&m, &b), "\r\n\r\nnew body\r\n"));
    assert_int_equal(ms_milter_msg_body(&m, msg, 1020), MS_ETOOBIG);
    ms_milter_msg_free(&m);

    /* No header section at all: all body; an added field makes one. */
    ms_milter_msg_init(&m, "just text\r\n", 11, 1024);
    assert_int_equal(m.n, 0);
    assert_int_equal(m.bodylen, 11);
    assert_int_equal(ms_milter_msg_add(&m, "X", 1, "y", 1), 0);
    assert_string_equal(written(&m, &b), "X: y\r\n\r\njust text\r\n");
    ms_milter_msg_free(&m);
    ms_buf_free(&b);
}

static void test_editor_limit(void **state)
{
    struct ms_milter_msg m;
    size_t i;
    int r = 0;

    ms_milter_msg_init(&m, "A: b\r\n\r\n", 8, 0);
    for (i = 0; i <= MS_MILTER_EDITS_MAX && r == 0; i++)
        r = ms_milter_msg_add(&m, "X", 1, "y", 1);
    assert_int_equal(r, MS_ETOOBIG);
    assert_int_equal(i, MS_MILTER_EDITS_MAX + 1);
    ms_milter_msg_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode),        cmocka_unit_test(test_parse_actions),
        cmocka_unit_test(test_parse_optneg),  cmocka_unit_test(test_parse_replycode),
        cmocka_unit_test(test_parse_edits),   cmocka_unit_test(test_editor),
        cmocka_unit_test(test_editor_limit),
    };
    return cmocka_run_group_tests_name("ms_milter", tests, NULL, NULL);
}
