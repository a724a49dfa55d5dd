/*
 * libFuzzer target: the SPF record parser and macro expander on raw bytes
 * (a TXT record is wire data), then a whole evaluation in which every TXT
 * query is answered with the input, so mechanisms, macros, include/redirect
 * recursion and the lookup limits all see hostile records.  The first input
 * byte picks the client address family and how the fake resolver behaves.
 */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "ms_spf.h"

/* More steps than MS_SPF_QUERIES_MAX allows means the evaluator loops. */
#define FUZZ_STEPS_MAX (MS_SPF_QUERIES_MAX + 2)

static uint32_t hash(const char *s, uint32_t h)
{
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const hosts[] = {"mx.example.com", "", "mail.example.org",
                                        "a.b.c.example.net"};
    const char *rec = (const char *)data;
    struct ms_spf_record r;
    struct ms_spf_request req;
    struct ms_dns_query q;
    struct ms_dns_result res;
    struct ms_dns_rr rr[4];
    char out[512];
    uint8_t mode = 0;
    ms_spf *s;
    size_t n, i;
    int steps = 0;

    if (ms_spf_parse_record(rec, size, &r, NULL) == 0)
        ms_spf_record_free(&r);
    memset(&req, 0, sizeof(req));
    req.family = AF_INET;
    inet_pton(AF_INET, "192.0.2.1", &req.ip.v4);
    req.mail_from = "some-user+tag@sub.example.com";
    req.helo = "mail.example.org";
    req.now = 1700000000;
    (void)ms_spf_expand(&req, "example.com", NULL, rec, size, 0, out, sizeof(out));
    (void)ms_spf_expand(&req, "example.com", "p.example.com", rec, size, 1, out, sizeof(out));

    if (size > 0) {
        mode = data[0];
        rec++;
        size--;
    }
    if (mode & 1) {
        req.family = AF_INET6;
        inet_pton(AF_INET6, mode & 2 ? "::ffff:192.0.2.1" : "2001:db8::1", &req.ip.v6);
    }
    if (mode & 4)
        req.identity = MS_SPF_HELO;
    if (ms_spf_new(&s, &req) < 0)
        abort();
    while (ms_spf_step(s, &q) == MS_SPF_NEED_DNS) {
        uint32_t h = hash(q.name, 2166136261u ^ (uint32_t)q.type ^ mode);
        if (++steps > FUZZ_STEPS_MAX)
            abort();
        memset(&res, 0, sizeof(res));
        memset(rr, 0, sizeof(rr));
        res.rr = rr;
        res.status = MS_DNS_OK;
        if ((h & 7) == 0)
            res.status = MS_DNS_NXDOMAIN;
        else if ((h & 15) == 1 && (mode & 8))
            res.status = MS_DNS_TEMPFAIL;
        n = 1 + (h >> 8) % 3;
        for (i = 0; i < n && res.status == MS_DNS_OK; i++) {
            rr[i].type = q.type;
            switch (q.type) {
            case MS_DNS_TXT:
                rr[i].u.txt.data = rec;
                rr[i].u.txt.len = i == 0 ? size : size / 2;
                break;
            case MS_DNS_A: inet_pton(AF_INET, i ? "192.0.2.1" : "198.51.100.1", &rr[i].u.a); break;
            case MS_DNS_AAAA: inet_pton(AF_INET6, "2001:db8::1", &rr[i].u.aaaa); break;
            case MS_DNS_MX:
                rr[i].u.mx.preference = (uint16_t)i;
                rr[i].u.mx.host = hosts[(h >> (4 + i)) & 3];
                break;
            case MS_DNS_PTR: rr[i].u.ptr = hosts[(h >> (6 + i)) & 3]; break;
            case MS_DNS_TLSA: break; /* SPF never asks */
            }
            res.n++;
        }
        if (mode & 16)
            res.n = res.n ? 1 : 0; /* exactly one TXT: exercise exp= */
        if (ms_spf_answer(s, &res) < 0)
            abort();
    }
    (void)ms_spf_result_name(ms_spf_result(s));
    (void)ms_spf_explanation(s);
    (void)ms_spf_mechanism(s);
    ms_spf_free(s);
    return 0;
}
