/*
 * test_fe_header.c - the header section parser and the format rules
 * (frontend/fe_header.c): one table case per rule, judged with the MX and
 * the submission defaults read from an empty config (so the documented
 * defaults are what is tested), every input fed whole and one octet at a
 * time; the named limits at and past their edge; and the 8-bit marks of the
 * DATA and BDAT readers (frontend/smtp_data.c) that tell a body's 8-bit
 * octets from a header's.
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
#include "ms_error.h"
#include "../../frontend/fe_header.h"
#include "../../frontend/fe_settings.h"
#include "../../frontend/smtp_data.h"

#define S(lit) lit, sizeof(lit) - 1

static struct fe_format_rules mx, sub;

/* The defaults, as a frontend without [format.*] sections gets them. */
static int load_defaults(void **state)
{
    struct fe_settings set;
    char err[256];
    ms_config *cfg = ms_config_load(NULL, err, sizeof(err));

    assert_non_null(cfg);
    assert_int_equal(fe_settings_load(&set, cfg, err, sizeof(err)), 0);
    mx = set.format_mx;
    sub = set.format_submission;
    assert_int_equal(set.hdr_limits.section_max, FE_HDR_SECTION_MAX_DEF);
    assert_int_equal(set.hdr_limits.fields_max, FE_HDR_FIELDS_MAX_DEF);
    assert_int_equal(set.hdr_limits.field_max, FE_HDR_FIELD_MAX_DEF);
    fe_settings_free(&set);
    ms_config_free(cfg);
    return 0;
}

struct hdr_case {
    const char *name;
    const char *in;
    size_t len;
    int smtputf8, body8;
    enum fe_fmt_rule want_mx, want_sub;
    enum fe_hdr_field field; /* for FIELD_DUPLICATE and ADDRESS_SYNTAX */
};

#define NONE FE_HF_COUNT

static const struct hdr_case cases[] = {
    {"good", S("From: Joe <joe@a.example>\r\nTo: b@b.example\r\nSubject: hi\r\n\r\nbody\r\n"),
     0, 0, FE_FMT_OK, FE_FMT_OK, NONE},
    {"no From", S("Subject: hi\r\n\r\nbody\r\n"), 0, 0, FE_FMT_OK, FE_FMT_FROM_MISSING, NONE},
    {"two From", S("From: a@a.example\r\nFrom: b@b.example\r\n\r\n"), 0, 0,
     FE_FMT_FROM_DUPLICATE, FE_FMT_FROM_DUPLICATE, NONE},
    {"two From in any case", S("FROM: a@a.example\r\nfrom: b@b.example\r\n\r\n"), 0, 0,
     FE_FMT_FROM_DUPLICATE, FE_FMT_FROM_DUPLICATE, NONE},
    {"two From, obsolete space before the colon",
     S("From: a@a.example\r\nFrom  : b@b.example\r\n\r\n"), 0, 0, FE_FMT_FROM_DUPLICATE,
     FE_FMT_FROM_DUPLICATE, NONE},
    {"From in the body does not count", S("From: a@a.example\r\n\r\nFrom: b@b.example\r\n"), 0,
     0, FE_FMT_OK, FE_FMT_OK, NONE},
    {"two Subject", S("From: a@a.example\r\nSubject: x\r\nsubject: y\r\n\r\n"), 0, 0,
     FE_FMT_FIELD_DUPLICATE, FE_FMT_FIELD_DUPLICATE, FE_HF_SUBJECT},
    {"two Message-ID", S("From: a@a.example\r\nMessage-ID: <1@a>\r\nMessage-Id: <2@a>\r\n\r\n"),
     0, 0, FE_FMT_FIELD_DUPLICATE, FE_FMT_FIELD_DUPLICATE, FE_HF_MESSAGE_ID},
    {"two Date", S("Date: x\r\nFrom: a@a.example\r\nDate: y\r\n\r\n"), 0, 0,
     FE_FMT_FIELD_DUPLICATE, FE_FMT_FIELD_DUPLICATE, FE_HF_DATE},
    {"two To", S("From: a@a.example\r\nTo: x@a.example\r\nTo: y@a.example\r\n\r\n"), 0, 0,
     FE_FMT_FIELD_DUPLICATE, FE_FMT_FIELD_DUPLICATE, FE_HF_TO},
    {"repeatable fields",
     S("Received: a\r\nReceived: b\r\nComments: c\r\nComments: d\r\nKeywords: e\r\n"
       "Keywords: f\r\nResent-From: g@a.example\r\nResent-From: h@a.example\r\n"
       "X-Thing: 1\r\nX-Thing: 2\r\nFrom: a@a.example\r\n\r\n"),
     0, 0, FE_FMT_OK, FE_FMT_OK, NONE},
    {"folded From", S("From: Joe\r\n\t<joe@a.example>\r\n  (a comment)\r\n\r\n"), 0, 0, FE_FMT_OK,
     FE_FMT_OK, NONE},
    {"bad From", S("From: Joe Doe joe@a.example\r\n\r\n"), 0, 0, FE_FMT_ADDRESS_SYNTAX,
     FE_FMT_ADDRESS_SYNTAX, FE_HF_FROM},
    {"empty From", S("From:\r\n\r\n"), 0, 0, FE_FMT_ADDRESS_SYNTAX, FE_FMT_ADDRESS_SYNTAX,
     FE_HF_FROM},
    {"two Senders in one", S("From: a@a.example, b@a.example\r\nSender: a@a.example, "
                             "b@a.example\r\n\r\n"),
     0, 0, FE_FMT_ADDRESS_SYNTAX, FE_FMT_ADDRESS_SYNTAX, FE_HF_SENDER},
    {"bad Reply-To", S("From: a@a.example\r\nReply-To: <broken@\r\n\r\n"), 0, 0,
     FE_FMT_ADDRESS_SYNTAX, FE_FMT_ADDRESS_SYNTAX, FE_HF_REPLY_TO},
    {"Reply-To group", S("From: a@a.example\r\nReply-To: Team: x@a.example, y@a.example;\r\n\r\n"),
     0, 0, FE_FMT_OK, FE_FMT_OK, NONE},
    {"To is not checked", S("From: a@a.example\r\nTo: undisclosed-recipients:;\r\n\r\n"), 0, 0,
     FE_FMT_OK, FE_FMT_OK, NONE},
    {"a line that is not a field", S("From: a@a.example\r\nthis is not a field\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_SYNTAX, FE_FMT_HEADER_SYNTAX, NONE},
    {"a colon first", S("From: a@a.example\r\n: empty name\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_SYNTAX, FE_FMT_HEADER_SYNTAX, NONE},
    {"an 8-bit field name", S("From: a@a.example\r\nSubj\xc3\xa9t: x\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_SYNTAX, FE_FMT_HEADER_SYNTAX, NONE},
    {"no header section", S("hello world\r\nFrom: a@a.example\r\n"), 0, 0, FE_FMT_OK,
     FE_FMT_FROM_MISSING, NONE},
    {"a continuation first", S(" folded\r\nFrom: a@a.example\r\n\r\n"), 0, 0, FE_FMT_OK,
     FE_FMT_FROM_MISSING, NONE},
    {"no empty line, no body", S("From: a@a.example\r\nSubject: x\r\n"), 0, 0, FE_FMT_OK,
     FE_FMT_OK, NONE},
    {"no final CRLF", S("From: a@a.example\r\nSubject: x"), 0, 0, FE_FMT_OK, FE_FMT_OK, NONE},
    {"empty message", S(""), 0, 0, FE_FMT_OK, FE_FMT_FROM_MISSING, NONE},
    {"8-bit header", S("From: a@a.example\r\nSubject: caf\xc3\xa9\r\n\r\n"), 0, 0, FE_FMT_OK,
     FE_FMT_EIGHTBIT_HEADER, NONE},
    {"8-bit header with SMTPUTF8", S("From: a@a.example\r\nSubject: caf\xc3\xa9\r\n\r\n"), 1, 0,
     FE_FMT_OK, FE_FMT_OK, NONE},
    {"UTF-8 From with SMTPUTF8", S("From: J\xc3\xb6rg <j\xc3\xb6rg@a.example>\r\n\r\n"), 1, 0,
     FE_FMT_OK, FE_FMT_OK, NONE},
    {"8-bit body undeclared", S("From: a@a.example\r\n\r\ncaf\xc3\xa9\r\n"), 0, 1, FE_FMT_OK,
     FE_FMT_EIGHTBIT_BODY, NONE},
    {"bare LF in a field", S("From: a@a.example\nSubject: x\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_OCTET, FE_FMT_HEADER_OCTET, NONE},
    {"bare CR in a field", S("From: a@a.example\rSubject: x\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_OCTET, FE_FMT_HEADER_OCTET, NONE},
    {"NUL in a field", S("From: a@a.example\r\nSubject: a\0b\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_OCTET, FE_FMT_HEADER_OCTET, NONE},
    {"CR then not LF at a line start", S("From: a@a.example\r\n\rx\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_OCTET, FE_FMT_HEADER_OCTET, NONE},
    {"ends in a bare CR", S("From: a@a.example\r"), 0, 0, FE_FMT_HEADER_OCTET,
     FE_FMT_HEADER_OCTET, NONE},
    /* The order of the rules: the first broken one answers. */
    {"limits and octets before rules", S("From: a\r\nFrom: b\nx\r\n\r\n"), 0, 0,
     FE_FMT_HEADER_OCTET, FE_FMT_HEADER_OCTET, NONE},
};

static void check_judge(const struct hdr_case *c, size_t step, const struct fe_hdr *h,
                        const struct fe_format_rules *rules, const char *role,
                        enum fe_fmt_rule want)
{
    enum fe_hdr_field field;
    enum fe_fmt_rule got = fe_hdr_judge(h, rules, c->smtputf8, c->body8, &field);

    if (got != want)
        fail_msg("%s (step %zu): %s got %s, want %s", c->name, step, role, fe_fmt_rule_name(got),
                 fe_fmt_rule_name(want));
    if (got == FE_FMT_FIELD_DUPLICATE || got == FE_FMT_ADDRESS_SYNTAX)
        assert_int_equal(field, c->field);
}

static void judge_case(const struct hdr_case *c, size_t step, const struct fe_hdr_limits *lim)
{
    struct fe_hdr h;
    size_t at = 0, n, took;

    fe_hdr_init(&h, lim);
    while (at < c->len && !h.done) {
        n = c->len - at < step ? c->len - at : step;
        took = fe_hdr_feed(&h, c->in + at, n);
        assert_true(took <= n);
        if (!h.done)
            assert_int_equal(took, n); /* all of it until the section is over */
        at += took;
    }
    if (h.done)
        assert_int_equal(fe_hdr_feed(&h, "x", 1), 0);
    fe_hdr_finish(&h);
    assert_true(h.done);
    assert_true(h.section_len <= c->len);
    check_judge(c, step, &h, &mx, "mx", c->want_mx);
    check_judge(c, step, &h, &sub, "submission", c->want_sub);
    fe_hdr_free(&h);
}

static void test_rules(void **state)
{
    struct fe_hdr_limits lim = {FE_HDR_SECTION_MAX_DEF, FE_HDR_FIELDS_MAX_DEF,
                                FE_HDR_FIELD_MAX_DEF};
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        judge_case(&cases[i], cases[i].len + 1, &lim);
        judge_case(&cases[i], 1, &lim);
        judge_case(&cases[i], 7, &lim);
    }
}

/* Each rule turned off lets its case through. */
static void test_rules_off(void **state)
{
    struct fe_format_rules none;
    struct fe_hdr h;
    struct fe_hdr_limits lim = {0, 0, 0};
    enum fe_hdr_field field;
    size_t i;

    memset(&none, 0, sizeof(none));
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fe_hdr_init(&h, &lim);
        fe_hdr_feed(&h, cases[i].in, cases[i].len);
        fe_hdr_finish(&h);
        if (fe_hdr_judge(&h, &none, cases[i].smtputf8, cases[i].body8, &field) != FE_FMT_OK)
            assert_int_equal(fe_hdr_judge(&h, &none, 0, 0, &field), FE_FMT_HEADER_OCTET);
        fe_hdr_free(&h);
    }
}

/* Where the section ends, and the unfolded first From. */
static void test_section_and_from(void **state)
{
    static const char msg[] = "From: Joe\r\n <joe@a.example>\r\nFrom: x@y.example\r\n\r\nbody\r\n";
    struct fe_hdr_limits lim = {0, 0, 0};
    struct fe_hdr h;
    size_t i, took = 0;

    fe_hdr_init(&h, &lim);
    for (i = 0; i < sizeof(msg) - 1 && !h.done; i++)
        took += fe_hdr_feed(&h, msg + i, 1);
    assert_true(h.done);
    assert_int_equal(took, strlen("From: Joe\r\n <joe@a.example>\r\nFrom: x@y.example\r\n\r\n"));
    assert_int_equal(h.section_len, took);
    assert_int_equal(h.nfields, 2);
    assert_int_equal(h.counts[FE_HF_FROM], 2);
    assert_int_equal(h.from.len, strlen(" Joe <joe@a.example>"));
    assert_memory_equal(h.from.data, " Joe <joe@a.example>", h.from.len);
    fe_hdr_free(&h);

    /* A malformed line: the section ends where it begins. */
    fe_hdr_init(&h, &lim);
    /* Read up to the octet that shows the line is no field. */
    assert_int_equal(fe_hdr_feed(&h, S("A: 1\r\nbad line\r\nB: 2\r\n")),
                     strlen("A: 1\r\nbad "));
    assert_true(h.done && h.malformed);
    assert_int_equal(h.section_len, strlen("A: 1\r\n"));
    fe_hdr_free(&h);
}

static enum fe_fmt_rule run_limits(const char *in, size_t len, size_t section, size_t fields,
                                   size_t field, size_t step)
{
    struct fe_hdr_limits lim = {section, fields, field};
    struct fe_hdr h;
    enum fe_hdr_field f;
    enum fe_fmt_rule r;
    size_t at = 0, n;

    fe_hdr_init(&h, &lim);
    while (at < len && !h.done) {
        n = len - at < step ? len - at : step;
        at += fe_hdr_feed(&h, in + at, n);
    }
    fe_hdr_finish(&h);
    r = fe_hdr_judge(&h, &mx, 0, 0, &f);
    fe_hdr_free(&h);
    return r;
}

static void test_limits(void **state)
{
    /* 4 fields, 40 octets in the section (with its empty line). */
    static const char msg[] = "From: a@a.example\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\nbody";
    size_t sec = strlen("From: a@a.example\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), step;
    /* One field of 28 octets unfolded (the folding CRLFs do not count). */
    static const char fold[] = "Subject: 0123456789\r\n 01234567\r\n\r\n";

    for (step = 1; step <= sizeof(msg); step += 5) {
        assert_int_equal(run_limits(S(msg), sec, 4, 100, step), FE_FMT_OK);
        assert_int_equal(run_limits(S(msg), sec - 1, 4, 100, step), FE_FMT_HEADER_SIZE);
        assert_int_equal(run_limits(S(msg), 1000, 3, 100, step), FE_FMT_HEADER_FIELDS);
        assert_int_equal(run_limits(S(msg), 1000, 4, 17, step), FE_FMT_OK);
        assert_int_equal(run_limits(S(msg), 1000, 4, 16, step), FE_FMT_FIELD_LENGTH);
        assert_int_equal(run_limits(S(fold), 1000, 4, 28, step), FE_FMT_OK);
        assert_int_equal(run_limits(S(fold), 1000, 4, 27, step), FE_FMT_FIELD_LENGTH);
    }
    /* A section that never ends is stopped one octet past the limit. */
    {
        struct fe_hdr_limits lim = {100, 0, 0};
        struct fe_hdr h;
        char big[1000];

        memset(big, 'x', sizeof(big));
        memcpy(big, "Subject: ", 9);
        fe_hdr_init(&h, &lim);
        assert_int_equal(fe_hdr_feed(&h, big, sizeof(big)), 101);
        assert_true(h.done);
        assert_int_equal(h.error, FE_FMT_HEADER_SIZE);
        fe_hdr_free(&h);
    }
}

/* Every reply has the code of its rule (fe_header.h). */
static void test_replies(void **state)
{
    static const char *const codes[FE_FMT_COUNT] = {
        "250 2.0.0", "552 5.3.4", "552 5.3.4", "552 5.3.4", "554 5.6.0", "554 5.6.0", "550 5.6.0",
        "550 5.6.0", "550 5.6.0", "550 5.6.0", "550 5.6.0", "550 5.1.7", "550 5.7.1",
    };
    char line[256];
    int r;

    for (r = 0; r < FE_FMT_COUNT; r++) {
        fe_fmt_reply(r, FE_HF_SUBJECT, line, sizeof(line));
        assert_memory_equal(line, codes[r], 9);
        assert_string_not_equal(fe_fmt_rule_name(r), "?");
    }
    fe_fmt_reply(FE_FMT_FIELD_DUPLICATE, FE_HF_MESSAGE_ID, line, sizeof(line));
    assert_non_null(strstr(line, "Message-ID"));
}

/* The DATA and BDAT readers mark where the last 8-bit octet went. */
static void test_8bit_marks(void **state)
{
    struct ms_buf out;
    struct fe_data_reader rd;
    struct fe_bdat_reader bd;
    static const char head8[] = "Subject: caf\xc3\xa9\r\n\r\nplain\r\n.\r\n";
    static const char body8[] = "Subject: x\r\n\r\ncaf\xc3\xa9\r\n.\r\n";

    ms_buf_init(&out, 10000);
    fe_data_init(&rd, &out, 10000);
    rd.want_8bit = 1;
    assert_int_equal(fe_data_feed(&rd, S(head8)), (int)sizeof(head8) - 1);
    assert_int_equal(rd.last_8bit, strlen("Subject: caf\xc3\xa9"));
    ms_buf_reset(&out);
    fe_data_init(&rd, &out, 10000);
    rd.want_8bit = 1;
    assert_int_equal(fe_data_feed(&rd, S(body8)), (int)sizeof(body8) - 1);
    assert_int_equal(rd.last_8bit, strlen("Subject: x\r\n\r\ncaf\xc3\xa9"));
    ms_buf_reset(&out);
    fe_data_init(&rd, &out, 10000);
    rd.want_8bit = 1;
    assert_int_equal(fe_data_feed(&rd, S("a\r\nb\r\n.\r\n")), 9);
    assert_int_equal(rd.last_8bit, 0);
    /* Not asked: not marked. */
    ms_buf_reset(&out);
    fe_data_init(&rd, &out, 10000);
    assert_int_equal(fe_data_feed(&rd, S(body8)), (int)sizeof(body8) - 1);
    assert_int_equal(rd.last_8bit, 0);
    /* Long runs (eight octets at a time), the 8-bit octet at each place. */
    {
        char line[40];
        size_t k;
        for (k = 0; k < 30; k++) {
            memset(line, 'a', 30);
            line[k] = (char)0xe9;
            memcpy(line + 30, "\r\n.\r\n", 5);
            ms_buf_reset(&out);
            fe_data_init(&rd, &out, 10000);
            rd.want_8bit = 1;
            assert_int_equal(fe_data_feed(&rd, line, 35), 35);
            assert_int_equal(rd.last_8bit, 30);
        }
    }

    /* BDAT, in two chunks, with a prefix already in the buffer. */
    ms_buf_reset(&out);
    ms_buf_append(&out, "Received: x\r\n", 13);
    fe_bdat_init(&bd, &out, 10000, 0);
    bd.want_8bit = 1;
    fe_bdat_chunk(&bd, 14);
    assert_int_equal(fe_bdat_feed(&bd, body8, 14), 14);
    assert_int_equal(bd.last_8bit, 0);
    fe_bdat_chunk(&bd, 7);
    assert_int_equal(fe_bdat_feed(&bd, body8 + 14, 7), 7);
    assert_int_equal(bd.last_8bit, 13 + strlen("Subject: x\r\n\r\ncaf\xc3\xa9"));
    assert_int_equal(fe_bdat_finish(&bd), FE_DATA_OK);
    ms_buf_free(&out);
}

/* [format.*] keys are read at start-up (so the unknown-key check knows
 * them), and a bad value stops it. */
static void test_config(void **state)
{
    char path[] = "/tmp/test_fe_header_XXXXXX", err[256];
    struct fe_settings set;
    ms_config *cfg;
    FILE *f;
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    fputs("[smtp]\nmax_header_size = 2048\nmax_header_fields = 20\n"
          "max_header_field_length = 1000\n"
          "[format.mx]\nfrom_missing = yes\neightbit_body = yes\n"
          "[format.submission]\nadd_date = no\nfrom_owned = no\n",
          f);
    fclose(f);
    cfg = ms_config_load(path, err, sizeof(err));
    assert_non_null(cfg);
    assert_int_equal(fe_settings_load(&set, cfg, err, sizeof(err)), 0);
    assert_int_equal(ms_config_check_unknown(cfg, NULL, err, sizeof(err)), 0);
    assert_int_equal(set.hdr_limits.section_max, 2048);
    assert_int_equal(set.hdr_limits.fields_max, 20);
    assert_int_equal(set.hdr_limits.field_max, 1000);
    assert_int_equal(set.format_mx.from_missing, 1);
    assert_int_equal(set.format_mx.eightbit_body, 1);
    assert_int_equal(set.format_mx.add_date, 0);
    assert_int_equal(set.format_submission.add_date, 0);
    assert_int_equal(set.format_submission.add_message_id, 1);
    assert_int_equal(set.format_submission.from_owned, 0);
    fe_settings_free(&set);
    ms_config_free(cfg);

    f = fopen(path, "w");
    fputs("[format.mx]\nfrom_missing = maybe\n", f);
    fclose(f);
    cfg = ms_config_load(path, err, sizeof(err));
    assert_non_null(cfg);
    assert_int_equal(fe_settings_load(&set, cfg, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "from_missing"));
    fe_settings_free(&set);
    ms_config_free(cfg);

    f = fopen(path, "w");
    fputs("[format.mx]\nfrom_mising = yes\n", f);
    fclose(f);
    cfg = ms_config_load(path, err, sizeof(err));
    assert_non_null(cfg);
    assert_int_equal(fe_settings_load(&set, cfg, err, sizeof(err)), 0);
    assert_int_equal(ms_config_check_unknown(cfg, NULL, err, sizeof(err)), MS_ECONFIG);
    assert_non_null(strstr(err, "from_mising"));
    fe_settings_free(&set);
    ms_config_free(cfg);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_rules_off),
        cmocka_unit_test(test_section_and_from),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_8bit_marks),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, load_defaults, NULL);
}
