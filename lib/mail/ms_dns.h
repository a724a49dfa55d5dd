/*
 * ms_dns.h - DNS answers as the mail code sees them, and the pull-style
 * contract between policy evaluators and whatever resolves names.
 *
 * Evaluators (SPF, DKIM, DMARC, MX routing) never resolve anything
 * themselves: a step function returns MS_DNS_NEED with a query (name, type),
 * the caller resolves it however it likes (libunbound on a loop in the
 * worker, a table in unit tests, a real DNS server in integration tests) and
 * feeds the result back.  So the evaluators stay pure, testable, fuzzable and
 * never block a loop.  Pure data types; any thread.
 */
#ifndef MS_DNS_H
#define MS_DNS_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

/* Longest domain name in presentation form (RFC 1035 §2.3.4: 255 octets on
 * the wire). */
#define MS_DNS_NAME_MAX 255

enum ms_dns_type {
    MS_DNS_A = 1,
    MS_DNS_PTR = 12,
    MS_DNS_MX = 15,
    MS_DNS_TXT = 16,
    MS_DNS_AAAA = 28,
    MS_DNS_TLSA = 52, /* RFC 6698 */
};

enum ms_dns_status {
    MS_DNS_OK = 0,       /* answer section has records (n may still be 0 after filtering) */
    MS_DNS_NXDOMAIN,     /* the name does not exist */
    MS_DNS_NODATA,       /* the name exists, no records of that type */
    MS_DNS_TEMPFAIL,     /* SERVFAIL, timeout, network error */
    MS_DNS_BOGUS,        /* DNSSEC validation failed */
};

struct ms_dns_rr {
    enum ms_dns_type type;
    union {
        struct in_addr a;
        struct in6_addr aaaa;
        struct {
            uint16_t preference;
            const char *host;   /* without the trailing dot */
        } mx;
        struct {
            const char *data;   /* the character-strings concatenated (RFC 7208 §3.3) */
            size_t len;
        } txt;
        const char *ptr;        /* without the trailing dot */
        struct {                /* RFC 6698 §2.1, as ms_dane_tlsa_parse() read it */
            uint8_t usage, selector, mtype;
            const unsigned char *data;
            size_t len;
        } tlsa;
    } u;
};

struct ms_dns_result {
    enum ms_dns_status status;
    int secure;                 /* DNSSEC-validated: the records, or the denial
                                 * (NXDOMAIN, NODATA) */
    size_t n;
    const struct ms_dns_rr *rr; /* n records; owned by whoever made the result */
    const char *canonical;      /* status OK: the name the records are at when the
                                 * query's name is a CNAME (the chain followed,
                                 * without the trailing dot); NULL: the query's
                                 * own name.  RFC 7672 §2.2.2 looks TLSA records
                                 * up there first. */
};

/* A query an evaluator wants answered. */
struct ms_dns_query {
    char name[MS_DNS_NAME_MAX + 1];
    enum ms_dns_type type;
};

#endif
