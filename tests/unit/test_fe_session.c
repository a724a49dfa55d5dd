/*
 * test_fe_session.c - the SMTP session state machine over the in-memory
 * transport, with a fake Kafka: pipelining across the wait for the delivery
 * report, the envelope built at the end of DATA, a report for a session
 * that is gone, submit failures, and draining.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ms_envelope.h"
#include "ms_error.h"
#include "ms_log.h"
#include "../../frontend/fe_session.h"

struct fake_kafka {
    int fail;        /* return this from submit */
    int n;
    uint64_t last_id;
    char last_key[64];
    uint8_t *last_value;
    size_t last_len;
};

static int fake_submit(void *arg, uint64_t id, const char *key, size_t keylen, const void *value,
                       size_t len)
{
    struct fake_kafka *k = arg;

    if (k->fail)
        return k->fail;
    k->n++;
    k->last_id = id;
    snprintf(k->last_key, sizeof(k->last_key), "%.*s", (int)keylen, key);
    free(k->last_value);
    k->last_value = malloc(len);
    memcpy(k->last_value, value, len);
    k->last_len = len;
    return 0;
}

struct fixture {
    uv_loop_t loop;
    struct fe_server srv;
    struct fe_listener l;
    struct fake_kafka k;
    struct ms_conn *t;
};

static struct fe_metrics metrics; /* registered once: handles live forever */

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    uv_loop_init(&f->loop);
    fe_server_init(&f->srv, &f->loop);
    f->srv.set.node_id = "fe-test";
    f->srv.set.hostname = "mx.test";
    f->srv.set.topic = "queue";
    f->srv.set.max_message_size = 10000;
    f->srv.set.max_recipients = 2;
    f->srv.set.max_errors = 5;
    f->srv.set.command_timeout_ms = 300000;
    f->srv.set.greeting_timeout_ms = 60000;
    f->srv.set.accepted_domains = ms_domainmap_new();
    ms_domainmap_put(f->srv.set.accepted_domains, "mailstream.test", 15, NULL, NULL);
    f->srv.m = metrics;
    f->srv.submit = fake_submit;
    f->srv.submit_arg = &f->k;
    f->l.srv = &f->srv;
    f->l.name = "mx";
    f->l.role = FE_ROLE_MX;
    fe_metrics_listener(&f->l);
    f->t = ms_conn_mem_new(&f->loop, &fe_session_transport_cb, NULL);
    fe_session_new(&f->srv, &f->l, f->t);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    fe_sessions_abort(&f->srv);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(fe_server_idle(&f->srv));
    assert_int_equal(uv_loop_close(&f->loop), 0);
    ms_domainmap_free(f->srv.set.accepted_domains);
    f->srv.set.accepted_domains = NULL;
    ms_idmap_free(&f->srv.sessions);
    ms_idmap_free(&f->srv.pending);
    ms_idmap_free(&f->srv.limit_checks);
    fe_server_sent_free(&f->srv); /* records whose report a test did not give */
    ms_idmap_free(&f->srv.sent);
    fe_conn_table_free(&f->srv.own_conns);
    free(f->k.last_value);
    free(f);
    return 0;
}

/* Everything the server wrote since the last call. */
static char *output(struct fixture *f)
{
    struct ms_buf *b = ms_conn_mem_output(f->t);
    char *s = malloc(b->len + 1);

    if (b->len > 0)
        memcpy(s, b->data, b->len);
    s[b->len] = '\0';
    ms_buf_reset(b);
    return s;
}

static void send_str(struct fixture *f, const char *s)
{
    ms_conn_mem_input(f->t, s, strlen(s));
}

static void expect(struct fixture *f, const char *want)
{
    char *got = output(f);

    if (strcmp(got, want) != 0)
        fail_msg("want:\n%s\ngot:\n%s", want, got);
    free(got);
}

static void greet(struct fixture *f)
{
    char *o = output(f);
    assert_string_equal(o, "220 mx.test ESMTP Mailstream\r\n");
    free(o);
    send_str(f, "EHLO client.example\r\n");
    o = output(f);
    assert_non_null(strstr(o, "250-PIPELINING\r\n"));
    assert_non_null(strstr(o, "250 ENHANCEDSTATUSCODES\r\n"));
    assert_null(strstr(o, "STARTTLS")); /* no TLS configured */
    assert_null(strstr(o, "REQUIRETLS")); /* RFC 8689: not before TLS */
    free(o);
}

static void test_pipelining_waits_for_report(void **state)
{
    struct fixture *f = *state;
    char want[256];
    ms_envelope *e;
    char err[128];

    greet(f);
    send_str(f, "MAIL FROM:<a@b.example> RET=HDRS ENVID=X+2BY SMTPUTF8\r\n"
                "RCPT TO:<u@mailstream.test> NOTIFY=FAILURE ORCPT=rfc822;o+40x\r\n"
                "RCPT TO:<nope@elsewhere.example>\r\n"
                "DATA\r\n"
                "Subject: t\r\n\r\n..x\r\n.\r\n"
                "NOOP\r\n");
    /* The NOOP waits: the report has not come yet. */
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.7.1 Relay not permitted\r\n"
              "354 End data with <CR><LF>.<CR><LF>\r\n");
    assert_int_equal(f->k.n, 1);
    assert_int_equal(strlen(f->k.last_key), 21);

    e = ms_envelope_decode(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_string_equal(e->queue_id, f->k.last_key);
    assert_string_equal(e->frontend_node, "fe-test");
    assert_string_equal(e->client->ip, "192.0.2.7");
    assert_int_equal(e->client->port, 40000);
    assert_string_equal(e->client->helo, "client.example");
    assert_string_equal(e->client->listener, "mx");
    assert_string_equal(e->mail_from->address, "a@b.example");
    assert_true(e->mail_from->smtputf8);
    assert_int_equal(e->mail_from->ret, MS_ENV_RET_HDRS);
    assert_string_equal(e->mail_from->envid, "X+Y");
    assert_int_equal(e->n_recipients, 1);
    assert_string_equal(e->recipients[0]->address, "u@mailstream.test");
    assert_int_equal(e->recipients[0]->notify, MS_ENV_NOTIFY_FAILURE);
    assert_string_equal(e->recipients[0]->orcpt, "rfc822;o@x");
    assert_int_equal(e->direction, MS_ENV_DIRECTION_INBOUND);
    assert_true(e->message.len > 0);
    assert_memory_equal(e->message.data, "Received: from client.example ([192.0.2.7])\r\n", 45);
    assert_non_null(memmem(e->message.data, e->message.len, "\tfor <u@mailstream.test>; ", 26));
    assert_true(e->message.len > 18 &&
                memcmp(e->message.data + e->message.len - 18, "Subject: t\r\n\r\n.x\r\n", 18) == 0);
    ms_envelope_free(e);

    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s\r\n250 2.0.0 Ok\r\n", f->k.last_key);
    expect(f, want);
    /* A duplicate report finds nothing. */
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    expect(f, "");
}

/* Message octets that arrive alone go from the read straight to the
 * reader (fe_session.c on_read): pieces of a DATA body, split inside a
 * line and inside dot-stuffing, and a last piece carrying the end of data
 * and a pipelined command, which waits for the report; then BDAT chunks
 * split the same way, the rest of a chunk and the next BDAT command in one
 * read.  Both records are read where the message lies by both decoders. */
static void test_body_in_pieces(void **state)
{
    struct fixture *f = *state;
    char want[256], err[128];
    ms_envelope *e, *b;

    greet(f);
    send_str(f, "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\n");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    send_str(f, "Subject: t\r\n\r\nline one\r\n.");
    send_str(f, ".dot\r\nli");
    assert_int_equal(f->k.n, 0);
    send_str(f, "ne two\r\n.\r\nNOOP\r\n");
    expect(f, ""); /* the NOOP waits for the report */
    assert_int_equal(f->k.n, 1);
    e = ms_envelope_decode(f->k.last_value, f->k.last_len, err, sizeof(err));
    b = ms_envelope_decode_borrow(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_non_null(b);
    assert_int_equal(e->message.len, b->message.len);
    assert_memory_equal(e->message.data, b->message.data, e->message.len);
    assert_true(e->message.len > 40 &&
                memcmp(e->message.data + e->message.len - 40,
                       "Subject: t\r\n\r\nline one\r\n.dot\r\nline two\r\n", 40) == 0);
    ms_envelope_free(e);
    ms_envelope_free(b);
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s\r\n250 2.0.0 Ok\r\n", f->k.last_key);
    expect(f, want);

    send_str(f, "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@mailstream.test>\r\nBDAT 17\r\nSubj");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    send_str(f, "ect: u\r\n");
    send_str(f, "\r\n.\r\nBDAT 3 LAST\r\nx\r");
    expect(f, "250 2.0.0 17 octets received\r\n");
    send_str(f, "\n");
    assert_int_equal(f->k.n, 2);
    e = ms_envelope_decode_borrow(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_true(e->message.len > 20 &&
                memcmp(e->message.data + e->message.len - 20, "Subject: u\r\n\r\n.\r\nx\r\n",
                       20) == 0);
    ms_envelope_free(e);
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s\r\n", f->k.last_key);
    expect(f, want);
}

/* RFC 3030: pipelined chunks with exact octet counts, no dot-unstuffing,
 * a reply per chunk and the queued reply only after the Kafka report. */
static void test_bdat_pipelined(void **state)
{
    struct fixture *f = *state;
    char want[256];
    ms_envelope *e;
    char err[128];

    greet(f);
    send_str(f, "MAIL FROM:<a@b.example> BODY=8BITMIME\r\n"
                "RCPT TO:<u@mailstream.test>\r\n"
                "BDAT 13\r\nSubject: t\r\n\r"
                "BDAT 9\r\n\n..x\r\n.\r\n"
                "BDAT 0 LAST\r\n"
                "NOOP\r\n");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 13 octets received\r\n"
              "250 2.0.0 9 octets received\r\n");
    assert_int_equal(f->k.n, 1);
    e = ms_envelope_decode(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_int_equal(e->mail_from->body, MS_ENV_BODY_8BITMIME);
    assert_true(e->message.len > 22 &&
                memcmp(e->message.data + e->message.len - 22, "Subject: t\r\n\r\n..x\r\n.\r\n",
                       22) == 0);
    ms_envelope_free(e);
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s\r\n250 2.0.0 Ok\r\n", f->k.last_key);
    expect(f, want);
}

/* BDAT and DATA do not mix; refused chunks are skipped, never read as
 * commands; bare LF and size are checked as for DATA. */
static void test_bdat_rules(void **state)
{
    struct fixture *f = *state;
    ms_envelope *e;
    char err[128], *o;

    f->srv.set.max_errors = 100;
    greet(f);
    /* BDAT before MAIL: 503, and "RSET\r\n" inside the chunk is data. */
    send_str(f, "BDAT 6\r\nRSET\r\nNOOP\r\n");
    expect(f, "503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n");
    /* BDAT with no accepted recipient. */
    send_str(f, "MAIL FROM:<>\r\nBDAT 6 LAST\r\nQUIT\r\nRSET\r\n");
    expect(f, "250 2.1.0 Ok\r\n554 5.5.1 Error: no valid recipients\r\n250 2.0.0 Ok\r\n");
    /* DATA after BDAT, RCPT after BDAT. */
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nBDAT 3\r\nab\n"
                "DATA\r\nRCPT TO:<v@mailstream.test>\r\nRSET\r\n");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n554 5.6.0 Message rejected: bare LF in message "
              "(RFC 5321 2.3.8)\r\n503 5.5.1 Error: need MAIL command\r\n"
              "503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n");
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nBDAT 4\r\nab\r\n"
                "DATA\r\nRCPT TO:<v@mailstream.test>\r\nRSET\r\n");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 4 octets received\r\n"
              "503 5.5.1 Error: DATA after BDAT in the same transaction\r\n"
              "503 5.5.1 Error: RCPT after BDAT\r\n250 2.0.0 Ok\r\n");
    /* BDAT after DATA (which failed: no recipients). */
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nBDAT 4 LAST\r\n"
                "ab\r\nRSET\r\n");
    o = output(f);
    assert_non_null(strstr(o, "554 5.5.1 Error: no valid recipients\r\n"
                              "503 5.5.1 Error: BDAT after DATA in the same transaction\r\n"
                              "250 2.0.0 Ok\r\n"));
    free(o);
    assert_int_equal(f->k.n, 0);
    /* Bad syntax with a readable size: 501, the chunk skipped. */
    send_str(f, "BDAT 6 FIRST\r\nQUIT\r\nNOOP\r\n");
    expect(f, "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n250 2.0.0 Ok\r\n");
    /* Over the size limit (10000) across chunks: 552, the octets dropped. */
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nBDAT 6000\r\n");
    {
        char chunk[6000];
        size_t i;
        memset(chunk, 'x', sizeof(chunk));
        for (i = 98; i < sizeof(chunk); i += 100)
            memcpy(chunk + i, "\r\n", 2);
        ms_conn_mem_input(f->t, chunk, sizeof(chunk));
        send_str(f, "BDAT 6000 LAST\r\n");
        ms_conn_mem_input(f->t, chunk, sizeof(chunk));
    }
    send_str(f, "NOOP\r\n");
    o = output(f);
    if (strstr(o, "250 2.0.0 6000 octets received\r\n552 5.3.4 ") == NULL)
        fail_msg("got %s", o);
    assert_non_null(strstr(o, "\r\n250 2.0.0 Ok\r\n"));
    free(o);
    assert_int_equal(f->k.n, 0);
    /* BINARYMIME: DATA refused, BDAT carries anything, BODY in the envelope. */
    send_str(f, "MAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\n");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n");
    ms_conn_mem_input(f->t, "BDAT 4 LAST\r\na\0\nb", 17);
    assert_int_equal(f->k.n, 1);
    e = ms_envelope_decode(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_int_equal(e->mail_from->body, MS_ENV_BODY_BINARYMIME);
    assert_memory_equal(e->message.data + e->message.len - 4, "a\0\nb", 4);
    ms_envelope_free(e);
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    free(output(f));
    /* No size at all: the stream can not be framed, 501 then 421. */
    send_str(f, "BDAT x\r\n");
    o = output(f);
    assert_non_null(strstr(o, "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n421 4.5.0 "));
    free(o);
}

/* The counters the issue asks for move with a dialogue. */
static void test_metrics(void **state)
{
    struct fixture *f = *state;
    struct fe_metrics *m = &f->srv.m;
    uint64_t r2 = ms_counter_value(m->replies[FE_REPLY_2XX]),
             r3 = ms_counter_value(m->replies[FE_REPLY_3XX]),
             r5 = ms_counter_value(m->replies[FE_REPLY_5XX]),
             tx = ms_counter_value(m->transactions), out = ms_counter_value(m->bytes_out),
             kp = ms_counter_value(m->kafka_submit_errors),
             kr = ms_counter_value(m->kafka_report_errors);

    assert_true(ms_counter_value(f->l.m_conn) >= 1);
    greet(f);
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\nFOO\r\n");
    fe_sessions_report(&f->srv, f->k.last_id, MS_ETIMEOUT, "timed out");
    f->k.fail = MS_EAGAIN;
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nBDAT 3 LAST\r\nx\r\n");
    free(output(f));
    /* 250 EHLO, 2 x (250 MAIL, 250 RCPT); 354; 500 FOO (the banner came before) */
    assert_true(ms_counter_value(m->replies[FE_REPLY_2XX]) - r2 == 5);
    assert_true(ms_counter_value(m->replies[FE_REPLY_3XX]) - r3 == 1);
    assert_true(ms_counter_value(m->replies[FE_REPLY_5XX]) - r5 == 1);
    assert_true(ms_counter_value(m->transactions) - tx == 2);
    assert_true(ms_counter_value(m->kafka_report_errors) - kr == 1);
    assert_true(ms_counter_value(m->kafka_submit_errors) - kp == 1);
    assert_true(ms_counter_value(m->bytes_out) > out);
}

static void test_report_error_gives_451(void **state)
{
    struct fixture *f = *state;
    char *o;

    greet(f);
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\n");
    free(output(f));
    fe_sessions_report(&f->srv, f->k.last_id, MS_ETIMEOUT, "Local: Message timed out");
    o = output(f);
    assert_memory_equal(o, "451 4.3.0 ", 10);
    free(o);
    /* The session goes on. */
    send_str(f, "RSET\r\n");
    expect(f, "250 2.0.0 Ok\r\n");
}

static void test_submit_failure(void **state)
{
    struct fixture *f = *state;
    char *o;

    greet(f);
    f->k.fail = MS_EAGAIN;
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    o = output(f);
    assert_non_null(strstr(o, "354 End data"));
    assert_non_null(strstr(o, "\r\n451 4.3.0 Queue unavailable"));
    assert_non_null(strstr(o, "\r\n250 2.0.0 Ok\r\n")); /* the NOOP */
    free(o);
    f->k.fail = MS_ETOOBIG;
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\n");
    o = output(f);
    assert_non_null(strstr(o, "\r\n552 5.3.4 "));
    free(o);
}

static void test_gone_before_report(void **state)
{
    struct fixture *f = *state;

    greet(f);
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\n");
    free(output(f));
    /* The connection fails while we wait for Kafka. */
    f->t->cb.on_error(f->t->arg, MS_EIO);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(fe_server_idle(&f->srv));
    /* The report, when it comes, finds nobody and harms nobody. */
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    f->t = NULL;
}

/* End of input while we wait for Kafka: Exim shuts down its sending half
 * after pipelining QUIT behind the message, and still reads the replies it
 * is owed (RFC 2920 3.1). Closing at once lost the 250 of a queued message
 * and Exim sent it again (issue 24). */
static void test_half_close_before_report(void **state)
{
    struct fixture *f = *state;
    char want[200];

    greet(f);
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n");
    free(output(f));
    f->t->cb.on_error(f->t->arg, MS_ECLOSED);
    assert_false(fe_server_idle(&f->srv));
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    snprintf(want, sizeof(want), "250 2.0.0 Ok: queued as %s\r\n221 2.0.0 Bye\r\n", f->k.last_key);
    expect(f, want);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(fe_server_idle(&f->srv));
    f->t = NULL;
}

static void test_limits_and_errors(void **state)
{
    struct fixture *f = *state;
    char big[700];
    char *o;

    greet(f);
    send_str(f, "MAIL FROM:<a@b.example> SIZE=20000\r\n");
    expect(f, "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    send_str(f, "MAIL FROM:<a@b.example>\r\nRCPT TO:<a@mailstream.test>\r\n"
                "RCPT TO:<b@mailstream.test>\r\nRCPT TO:<c@mailstream.test>\r\n");
    expect(f, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n");
    /* A command line over 512 octets, split across reads. */
    memset(big, 'x', sizeof(big));
    memcpy(big, "NOOP ", 5);
    ms_conn_mem_input(f->t, big, 300);
    expect(f, "");
    ms_conn_mem_input(f->t, big, sizeof(big));
    send_str(f, "\r\nNOOP\r\n");
    expect(f, "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
    /* max_errors = 5: one error so far. */
    send_str(f, "X\r\nX\r\nX\r\nX\r\nNOOP\r\n");
    o = output(f);
    assert_non_null(strstr(o, "500 5.5.1 Error: command not recognized\r\n421 4.7.0 mx.test "));
    assert_null(strstr(o, "250 2.0.0 Ok")); /* nothing after the 421 */
    free(o);
}

static void test_drain(void **state)
{
    struct fixture *f = *state;
    char *o;

    greet(f);
    send_str(f, "MAIL FROM:<>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    free(output(f));
    fe_sessions_drain(&f->srv);
    expect(f, ""); /* in flight: left alone */
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    o = output(f);
    assert_memory_equal(o, "250 2.0.0 Ok: queued as ", 24);
    assert_non_null(strstr(o, "\r\n421 4.3.2 mx.test Service shutting down"));
    assert_null(strstr(o, "250 2.0.0 Ok\r\n")); /* the NOOP is not run */
    free(o);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(fe_server_idle(&f->srv));
    f->t = NULL;
}

/* A session on a proxy listener (PROXY protocol, fe_proxy.h): the header's
 * client is the one in replies, policy and the envelope. */
static struct fe_listener proxy_l;
static struct fe_cidr proxy_nets[1];

static void proxy_session(struct fixture *f, const char *peer_net)
{
    free(output(f)); /* the fixture's own session */
    assert_int_equal(fe_cidr_parse(peer_net, &proxy_nets[0]), 0);
    f->srv.set.proxy_trusted = proxy_nets;
    f->srv.set.nproxy_trusted = 1;
    proxy_l = f->l;
    proxy_l.name = "lb";
    proxy_l.proxy = 1;
    f->t = ms_conn_mem_new(&f->loop, &fe_session_transport_cb, NULL);
    fe_session_new(&f->srv, &proxy_l, f->t);
}

static void test_proxy_header(void **state)
{
    struct fixture *f = *state;
    ms_envelope *e;
    char err[128], *o;

    proxy_session(f, "192.0.2.0/24");
    expect(f, ""); /* no banner before the header */
    send_str(f, "PROXY TCP4 198.51.100.22 ");
    expect(f, "");
    send_str(f, "203.0.113.7 35646 25\r\nEHLO client.example\r\n");
    o = output(f);
    assert_memory_equal(o, "220 mx.test ESMTP Mailstream\r\n", 30);
    assert_non_null(strstr(o, "Hello client.example [198.51.100.22]"));
    free(o);
    send_str(f, "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@mailstream.test>\r\nDATA\r\nx\r\n.\r\n");
    free(output(f));
    e = ms_envelope_decode(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_string_equal(e->client->ip, "198.51.100.22");
    assert_int_equal(e->client->port, 35646);
    assert_string_equal(e->client->proxy_peer_ip, "192.0.2.7");
    assert_string_equal(e->client->listener, "lb");
    assert_memory_equal(e->message.data, "Received: from client.example ([198.51.100.22])\r\n",
                        49);
    ms_envelope_free(e);
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
    f->srv.set.proxy_trusted = NULL;
    f->srv.set.nproxy_trusted = 0;
}

static void test_proxy_refused(void **state)
{
    struct fixture *f = *state;

    /* From a peer outside proxy_trusted_networks: closed at once. */
    proxy_session(f, "203.0.113.0/24");
    /* Checked before the loop runs: the close callback frees the transport. */
    expect(f, "");
    assert_true(f->t->closing);
    /* From a trusted peer, but not a PROXY header: closed, nothing said. */
    proxy_session(f, "192.0.2.0/24");
    send_str(f, "EHLO client.example\r\n");
    expect(f, "");
    assert_true(f->t->closing);
    /* A LOCAL header (health check) keeps the balancer's own address. */
    proxy_session(f, "192.0.2.0/24");
    send_str(f, "PROXY UNKNOWN\r\nEHLO x\r\n");
    {
        char *o = output(f);
        assert_non_null(strstr(o, "Hello x [192.0.2.7]"));
        free(o);
    }
    f->srv.set.proxy_trusted = NULL;
    f->srv.set.nproxy_trusted = 0;
}

/* Never an open relay: tricks that hide another destination behind an
 * accepted domain are refused to an unauthenticated, untrusted client. */
static void test_relay_tricks(void **state)
{
    static const char *const refused[] = {
        "RCPT TO:<u%evil.example@mailstream.test>",        /* %-hack */
        "RCPT TO:<evil.example!u@mailstream.test>",        /* UUCP !-path */
        "RCPT TO:<\"u@evil.example\"@mailstream.test>",    /* quoted address */
        "RCPT TO:<\"u%evil.example\"@mailstream.test>",
        "RCPT TO:<@mailstream.test:u@evil.example>",       /* source route */
        "RCPT TO:<@mailstream.test,@x.example:u@evil.example>",
        "RCPT TO:<u@[192.0.2.1]>",                         /* address literals */
        "RCPT TO:<u@[IPv6:2001:db8::1]>",
        "RCPT TO:<u@mailstream.test.>",                    /* trailing dot */
        "RCPT TO:<u@evil.example@mailstream.test>",        /* not a mailbox */
    };
    struct fixture *f = *state;
    char line[200], *o;
    size_t i;

    greet(f);
    send_str(f, "MAIL FROM:<a@b.example>\r\n");
    expect(f, "250 2.1.0 Ok\r\n");
    f->srv.set.max_errors = 100;
    for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        snprintf(line, sizeof(line), "%s\r\n", refused[i]);
        send_str(f, line);
        o = output(f);
        if (strncmp(o, "550 5.7.1", 9) != 0 && strncmp(o, "501 ", 4) != 0)
            fail_msg("%s: %s", refused[i], o);
        free(o);
    }
    /* A source route to us is dropped; the mailbox is ours. */
    send_str(f, "RCPT TO:<@relay.example:u@mailstream.test>\r\n");
    expect(f, "250 2.1.5 Ok\r\n");
}

/* RFC 8689 REQUIRETLS: only over TLS, advertised only then, and carried
 * into the envelope. */
static void test_requiretls(void **state)
{
    struct fixture *f = *state;
    ms_envelope *e;
    char err[128], *o;

    greet(f); /* no REQUIRETLS in the plaintext EHLO (checked below) */
    send_str(f, "MAIL FROM:<a@b.example> REQUIRETLS\r\n");
    expect(f, "530 5.7.10 REQUIRETLS needs a TLS connection\r\n");
    f->t->tls = 1; /* as if STARTTLS had completed */
    snprintf(f->t->tls_version, sizeof(f->t->tls_version), "TLSv1.3");
    send_str(f, "EHLO client.example\r\n");
    o = output(f);
    assert_non_null(strstr(o, "250-REQUIRETLS\r\n"));
    free(o);
    send_str(f, "MAIL FROM:<a@b.example> REQUIRETLS\r\nRCPT TO:<u@mailstream.test>\r\n"
                "DATA\r\nx\r\n.\r\n");
    free(output(f));
    e = ms_envelope_decode(f->k.last_value, f->k.last_len, err, sizeof(err));
    assert_non_null(e);
    assert_true(e->mail_from->requiretls);
    ms_envelope_free(e);
    fe_sessions_report(&f->srv, f->k.last_id, 0, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pipelining_waits_for_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_in_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bdat_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bdat_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_report_error_gives_451, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_close_before_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gone_before_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits_and_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_proxy_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_proxy_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_tricks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requiretls, setup, teardown),
    };

    ms_log_init("test", MS_LOG_WARN);
    fe_metrics_register(&metrics);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
