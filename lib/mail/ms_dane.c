/*
 * ms_dane.c - TLSA rdata and SMTP's usable records (ms_dane.h).
 */
#include "ms_dane.h"
#include "ms_error.h"

#include <string.h>

int ms_dane_tlsa_parse(const unsigned char *rdata, size_t len, struct ms_dns_rr *rr)
{
    /* RFC 6698 §2.1: three one-octet fields, then the data (at least one
     * octet on the wire, §2.2's presentation form needs it too). */
    if (len < 4 || len - 3 > MS_TLSA_DATA_MAX)
        return MS_EINVAL;
    memset(rr, 0, sizeof(*rr));
    rr->type = MS_DNS_TLSA;
    rr->u.tlsa.usage = rdata[0];
    rr->u.tlsa.selector = rdata[1];
    rr->u.tlsa.mtype = rdata[2];
    rr->u.tlsa.data = rdata + 3;
    rr->u.tlsa.len = len - 3;
    return 0;
}

int ms_dane_tlsa_usable(const struct ms_dns_rr *rr)
{
    if (rr->type != MS_DNS_TLSA)
        return 0;
    if (rr->u.tlsa.usage != MS_TLSA_USAGE_DANE_TA && rr->u.tlsa.usage != MS_TLSA_USAGE_DANE_EE)
        return 0;
    if (rr->u.tlsa.selector > MS_TLSA_SELECTOR_SPKI)
        return 0;
    switch (rr->u.tlsa.mtype) {
    case MS_TLSA_MTYPE_FULL:
        return rr->u.tlsa.len > 0;
    case MS_TLSA_MTYPE_SHA256:
        return rr->u.tlsa.len == 32;
    case MS_TLSA_MTYPE_SHA512:
        return rr->u.tlsa.len == 64;
    default:
        return 0;
    }
}
