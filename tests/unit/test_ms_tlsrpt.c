/*
 * test_ms_tlsrpt.c - lib/mail/ms_tlsrpt.c: the _smtp._tls TXT record (RFC
 * 8460 §3, the RFC's examples among them), the pick among several TXT
 * records, counter fields, the §4 JSON report read back with jansson and
 * checked against §4.4's schema, gzip read back with zlib, §5.3's file
 * name and the report mail.  Table-driven where it can be.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ms_error.h"
#include "ms_tlsrpt.h"

static const struct {
    const char *txt;
    int n; /* URIs kept; -1: invalid */
    const char *first;
} txts[] = {
    /* §3's examples */
    {"v=TLSRPTv1;rua=mailto:reports@example.com", 1, "mailto:reports@example.com"},
    {"v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt", 1,
     "https://reporting.example.com/v1/tlsrpt"},
    {"v=TLSRPTv1; rua=mailto:a@example.com, https://r.example.com/x;", 2, "mailto:a@example.com"},
    {"v=TLSRPTv1 ; ext=1 ; rua=mailto:a@example.com", 1, "mailto:a@example.com"},
    {"v=TLSRPTv1; rua=ftp://x.example/, mailto:a@example.com", 1, "mailto:a@example.com"},
    {"v=TLSRPTv1; rua=MAILTO:a@example.com", 1, "MAILTO:a@example.com"},
    {"v=TLSRPTv1", -1, NULL},                           /* no rua */
    {"v=TLSRPTv1; rua=ftp://x.example/", -1, NULL},     /* none usable */
    {"rua=mailto:a@example.com; v=TLSRPTv1", -1, NULL}, /* version first */
    {"v=TLSRPTv2; rua=mailto:a@example.com", -1, NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", -1, NULL},
    {"v=TLSRPTv1; rua=mailto:a@example.com,,mailto:b@example.com", -1, NULL},
    {"v=TLSRPTv1; rua=", -1, NULL},
    {"v=TLSRPTv1; junk; rua=mailto:a@example.com", -1, NULL},
    {"v=TLSRPTv1;; rua=mailto:a@example.com", -1, NULL},
    {"v=TLSRPTv1; rua=mailto:a b@example.com", -1, NULL},
    {"", -1, NULL},
};

static void test_txt(void **state)
{
    struct ms_tlsrpt_rua rua;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(txts) / sizeof(txts[0]); i++) {
        int r = ms_tlsrpt_txt_parse(txts[i].txt, strlen(txts[i].txt), &rua);
        if (txts[i].n < 0
                ? r == 0
                : r != 0 || rua.n != (size_t)txts[i].n || strcmp(rua.uri[0], txts[i].first) != 0)
            fail_msg("\"%s\": %d (%zu)", txts[i].txt, r, rua.n);
    }
}

static void test_txt_pick(void **state)
{
    struct ms_dns_rr rr[3];
    struct ms_dns_result res = {.status = MS_DNS_OK, .rr = rr};
    struct ms_tlsrpt_rua rua;
    const char *a = "v=TLSRPTv1; rua=mailto:a@example.com", *spf = "v=spf1 -all",
               *b = "v=TLSRPTv1; rua=https://r.example.com/";

    (void)state;
    memset(rr, 0, sizeof(rr));
    rr[0].type = rr[1].type = rr[2].type = MS_DNS_TXT;
    rr[0].u.txt.data = spf;
    rr[0].u.txt.len = strlen(spf);
    rr[1].u.txt.data = a;
    rr[1].u.txt.len = strlen(a);
    rr[2].u.txt.data = b;
    rr[2].u.txt.len = strlen(b);
    res.n = 2; /* one of ours among others: taken */
    assert_int_equal(ms_tlsrpt_txt_pick(&res, &rua), 0);
    assert_string_equal(rua.uri[0], "mailto:a@example.com");
    res.n = 3; /* two of ours: none (§3) */
    assert_int_equal(ms_tlsrpt_txt_pick(&res, &rua), MS_EINVAL);
    assert_int_equal(rua.n, 0);
    res.n = 1;
    assert_int_equal(ms_tlsrpt_txt_pick(&res, &rua), MS_EINVAL);
    res.status = MS_DNS_NXDOMAIN;
    res.n = 2;
    assert_int_equal(ms_tlsrpt_txt_pick(&res, &rua), MS_EINVAL);
}

static void test_names_and_fields(void **state)
{
    char f[MS_TLSRPT_FIELD_MAX + 1];
    struct ms_tlsrpt_session s = {
        MS_TLSRPT_POLICY_TLSA, "mx.example.com", MS_TLSRPT_OK, NULL, NULL, NULL};
    int i;

    (void)state;
    for (i = 0; i < MS_TLSRPT_RESULTS_N; i++) {
        const char *n = ms_tlsrpt_result_name((enum ms_tlsrpt_result)i);
        assert_int_equal(ms_tlsrpt_result_parse(n, strlen(n)), i);
    }
    assert_string_equal(ms_tlsrpt_result_name(MS_TLSRPT_STS_WEBPKI_INVALID), "sts-webpki-invalid");
    assert_string_equal(ms_tlsrpt_policy_name(MS_TLSRPT_POLICY_NONE), "no-policy-found");
    assert_int_equal(ms_tlsrpt_policy_parse("tlsa", 4), MS_TLSRPT_POLICY_TLSA);
    assert_int_equal(ms_tlsrpt_policy_parse("tls", 3), -1);
    assert_int_equal(ms_tlsrpt_field(&s, f), 0);
    assert_string_equal(f, "S\ttlsa\tmx.example.com");
    s.result = MS_TLSRPT_CERT_EXPIRED;
    s.sending_ip = "192.0.2.1";
    s.receiving_mx = "mx.example.com";
    s.receiving_ip = "198.51.100.7";
    assert_int_equal(ms_tlsrpt_field(&s, f), 0);
    assert_string_equal(f, "F\ttlsa\tmx.example.com\tcertificate-expired\t192.0.2.1\t"
                           "mx.example.com\t198.51.100.7");
    s.receiving_mx = "evil\tname";
    assert_int_equal(ms_tlsrpt_field(&s, f), MS_EINVAL);
    assert_int_equal(ms_tlsrpt_policy_field(MS_TLSRPT_POLICY_STS, "", f), 0);
    assert_string_equal(f, "P\tsts\t");
}

#define KV(k, v)                                                                                   \
    {                                                                                              \
        k, v, sizeof(k) - 1, sizeof(v) - 1                                                         \
    }

static const struct ms_tlsrpt_kv day[] = {
    KV("S\tsts\t", "5"),
    KV("F\tsts\t\tcertificate-expired\t192.0.2.1\tmx1.example.com\t", "2"),
    KV("F\tsts\t\tstarttls-not-supported\t192.0.2.1\tmx2.example.com\t203.0.113.56", "3"),
    KV("P\tsts\t", "version: STSv1\nmode: testing\nmx: *.example.com\nmax_age: 86400"),
    KV("S\ttlsa\tmx3.example.com", "7"),
    KV("P\ttlsa\tmx3.example.com", "3 1 1 abcd"),
    KV("F\tno-policy-found\tmx4.example.com\tstarttls-not-supported\t\tmx4.example.com\t"
       "198.51.100.1",
       "1"),
    KV("P\tno-policy-found\tother.example.com", "x"), /* no session: no entry */
    KV("F\tsts\t\tnot-a-result\t\t\t", "9"),          /* not ours */
    KV("S\tsts\t", "0"),                              /* not a count */
    KV("garbage", "1"),
};

static json_t *policy_of(json_t *policies, const char *type, const char *mx)
{
    size_t i;
    json_t *p;

    json_array_foreach(policies, i, p)
    {
        json_t *pol = json_object_get(p, "policy");
        json_t *hosts = json_object_get(pol, "mx-host");
        if (strcmp(json_string_value(json_object_get(pol, "policy-type")), type) != 0)
            continue;
        if (mx == NULL || (hosts && strcmp(json_string_value(json_array_get(hosts, 0)), mx) == 0))
            return p;
    }
    return NULL;
}

static void test_report(void **state)
{
    struct ms_tlsrpt_report r = {"Example Org", "tls-reports@example.net",   "R1@example.net",
                                 1480464000,    1480464000 + 86400,          "example.com",
                                 day,           sizeof(day) / sizeof(day[0])};
    struct ms_buf out, gz;
    json_error_t je;
    json_t *j, *policies, *p, *d;
    unsigned char back[16384];
    uLongf backlen = sizeof(back);
    z_stream z;
    size_t i;

    (void)state;
    ms_buf_init(&out, MS_TLSRPT_JSON_MAX);
    assert_int_equal(ms_tlsrpt_report_json(&r, &out), 0);
    j = json_loadb(out.data, out.len, 0, &je);
    if (j == NULL)
        fail_msg("not JSON: %s: %.*s", je.text, (int)out.len, out.data);
    /* §4.4: the top level. */
    assert_string_equal(json_string_value(json_object_get(j, "organization-name")), "Example Org");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "date-range"), "start-datetime")),
        "2016-11-30T00:00:00Z");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "date-range"), "end-datetime")),
        "2016-11-30T23:59:59Z");
    assert_string_equal(json_string_value(json_object_get(j, "contact-info")),
                        "tls-reports@example.net");
    assert_string_equal(json_string_value(json_object_get(j, "report-id")), "R1@example.net");
    policies = json_object_get(j, "policies");
    assert_int_equal(json_array_size(policies), 3);

    p = policy_of(policies, "sts", NULL);
    assert_non_null(p);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(p, "policy"), "policy-domain")),
        "example.com");
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(p, "policy"), "policy-string")), 4);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(p, "policy"), "mx-host"), 0)),
                        "*.example.com");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(p, "summary"),
                                                        "total-successful-session-count")),
                     5);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(p, "summary"),
                                                        "total-failure-session-count")),
                     5);
    assert_int_equal(json_array_size(json_object_get(p, "failure-details")), 2);
    json_array_foreach(json_object_get(p, "failure-details"), i, d)
    {
        const char *rt = json_string_value(json_object_get(d, "result-type"));
        if (strcmp(rt, "certificate-expired") == 0) {
            assert_int_equal(json_integer_value(json_object_get(d, "failed-session-count")), 2);
            assert_null(json_object_get(d, "receiving-ip")); /* not known: left out */
            assert_string_equal(json_string_value(json_object_get(d, "sending-mta-ip")),
                                "192.0.2.1");
        } else {
            assert_string_equal(rt, "starttls-not-supported");
            assert_string_equal(json_string_value(json_object_get(d, "receiving-ip")),
                                "203.0.113.56");
            assert_string_equal(json_string_value(json_object_get(d, "receiving-mx-hostname")),
                                "mx2.example.com");
        }
    }
    p = policy_of(policies, "tlsa", "mx3.example.com");
    assert_non_null(p);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(p, "policy"), "policy-string"), 0)),
                        "3 1 1 abcd");
    assert_null(json_object_get(p, "failure-details"));
    p = policy_of(policies, "no-policy-found", "mx4.example.com");
    assert_non_null(p);
    assert_null(json_object_get(json_object_get(p, "policy"), "policy-string"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(p, "summary"),
                                                        "total-failure-session-count")),
                     1);
    json_decref(j);

    /* gzip: read back whole (RFC 1952 header, as gunzip and Python read it). */
    ms_buf_init(&gz, MS_TLSRPT_JSON_MAX);
    assert_int_equal(ms_tlsrpt_gzip(out.data, out.len, &gz), 0);
    assert_true(gz.len > 18 && (unsigned char)gz.data[0] == 0x1f &&
                (unsigned char)gz.data[1] == 0x8b);
    memset(&z, 0, sizeof(z));
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *)gz.data;
    z.avail_in = (uInt)gz.len;
    z.next_out = back;
    z.avail_out = (uInt)backlen;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    assert_int_equal(z.total_out, out.len);
    assert_memory_equal(back, out.data, out.len);
    inflateEnd(&z);
    ms_buf_free(&gz);
    ms_buf_free(&out);

    /* Nothing counted: no report. */
    r.nfields = 1;
    r.fields = &day[7];
    ms_buf_init(&out, MS_TLSRPT_JSON_MAX);
    assert_int_equal(ms_tlsrpt_report_json(&r, &out), MS_EINVAL);
    ms_buf_free(&out);
}

static void test_filename_and_mail(void **state)
{
    char name[600];
    struct ms_buf out;
    struct ms_tlsrpt_mail m = {"noreply@example.net",
                               "reports@example.com",
                               "example.com",
                               "example.net",
                               "01ABC@example.net",
                               1480464000,
                               NULL,
                               "\x1f\x8b"
                               "abc",
                               5};

    (void)state;
    /* §5.3's example form: sender!policy-domain!begin!end!unique-id.json.gz */
    assert_int_equal(ms_tlsrpt_filename("mail.sender.example.com", "example.com", 1470013207,
                                        1470186008, "001", name, sizeof(name)),
                     0);
    assert_string_equal(name, "mail.sender.example.com!example.com!1470013207!1470186007!001"
                              ".json.gz");
    assert_int_equal(ms_tlsrpt_filename("a.example", "b!c", 0, 1, "1", name, sizeof(name)),
                     MS_EINVAL);
    assert_int_equal(ms_tlsrpt_filename("a.example", "b.example", 0, 1, "x-1", name, sizeof(name)),
                     MS_EINVAL);
    assert_int_equal(ms_tlsrpt_filename("a.example", "b.example", 0, 1, "1", name, 10), MS_ETOOBIG);

    m.filename = "example.net!example.com!1480464000!1480550399!01ABC.json.gz";
    ms_buf_init(&out, 65536);
    assert_int_equal(ms_tlsrpt_mail_build(&m, &out), 0);
    assert_int_equal(ms_buf_append(&out, "", 1), 0);
    assert_non_null(strstr(out.data, "\r\nSubject: Report Domain: example.com Submitter: "
                                     "example.net Report-ID: <01ABC@example.net>\r\n"));
    assert_non_null(strstr(out.data, "\r\nTLS-Report-Domain: example.com\r\n"));
    assert_non_null(strstr(out.data, "\r\nTLS-Report-Submitter: example.net\r\n"));
    assert_non_null(strstr(out.data, "multipart/report; report-type=\"tlsrpt\""));
    assert_non_null(strstr(out.data, "Content-Type: application/tlsrpt+gzip\r\n"));
    assert_non_null(strstr(out.data, "filename=\"example.net!example.com!1480464000!"));
    assert_non_null(strstr(out.data, "\r\nH4thYmM=\r\n")); /* base64 of the 5 octets */
    assert_non_null(strstr(out.data, "Date: Wed, 30 Nov 2016 00:00:00 +0000\r\n"));
    ms_buf_free(&out);
    m.to = "a@b\r\nBcc: x@y";
    ms_buf_init(&out, 65536);
    assert_int_equal(ms_tlsrpt_mail_build(&m, &out), MS_EINVAL);
    ms_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_txt_pick),
        cmocka_unit_test(test_names_and_fields),
        cmocka_unit_test(test_report),
        cmocka_unit_test(test_filename_and_mail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
