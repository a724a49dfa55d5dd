/*
 * ms_dane.h - TLSA records (RFC 6698) as SMTP's DANE uses them (RFC 7672,
 * RFC 7671): the rdata read off the wire, and which records an SMTP client
 * may use.  Pure functions over (buf, len): no DNS, no OpenSSL, so they are
 * unit-tested and fuzzed alone (tests/fuzz/fuzz_tlsa.c).  Any thread.
 */
#ifndef MS_DANE_H
#define MS_DANE_H

#include <stddef.h>
#include <stdint.h>

#include "ms_dns.h"

/* RFC 6698 §2.1.1, 2.1.2, 2.1.3 values. */
enum {
    MS_TLSA_USAGE_PKIX_TA = 0,
    MS_TLSA_USAGE_PKIX_EE = 1,
    MS_TLSA_USAGE_DANE_TA = 2,
    MS_TLSA_USAGE_DANE_EE = 3,
    MS_TLSA_SELECTOR_CERT = 0,
    MS_TLSA_SELECTOR_SPKI = 1,
    MS_TLSA_MTYPE_FULL = 0,
    MS_TLSA_MTYPE_SHA256 = 1,
    MS_TLSA_MTYPE_SHA512 = 2,
};

/* Longest certificate association data kept: a whole certificate (matching
 * type 0) of a few KiB; larger ones are refused (RFC 7671 §10.1.2 prefers
 * digests, and a DNS answer this large is an attack or a mistake). */
#define MS_TLSA_DATA_MAX 4096

/* Read TLSA rdata (usage, selector, matching type, data: RFC 6698 §2.1)
 * into rr->u.tlsa (rr->type MS_DNS_TLSA, data pointing into rdata).
 * 0, or MS_EINVAL: fewer than 4 octets, or data over MS_TLSA_DATA_MAX. */
int ms_dane_tlsa_parse(const unsigned char *rdata, size_t len, struct ms_dns_rr *rr);

/* 1 when an SMTP client may use the record (RFC 7672 §3.1.3): usage
 * DANE-TA(2) or DANE-EE(3) (PKIX-TA and PKIX-EE are unusable for SMTP),
 * selector 0 or 1, matching type 0 (data not empty), 1 (32 octets) or 2
 * (64 octets: a digest of another length can match nothing, RFC 7671
 * §5.2); 0 otherwise. */
int ms_dane_tlsa_usable(const struct ms_dns_rr *rr);

#endif
