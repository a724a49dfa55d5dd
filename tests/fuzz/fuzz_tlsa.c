/* libFuzzer target: TLSA rdata (ms_dane_tlsa_parse) and the RFC 7672
 * usability rule on whatever it reads.  The record must point inside the
 * input and cover exactly what follows the three fields. */
#include <stdint.h>
#include <stdlib.h>

#include "ms_dane.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_dns_rr rr;
    int usable;

    if (ms_dane_tlsa_parse(data, size, &rr) < 0) {
        if (size >= 4 && size - 3 <= MS_TLSA_DATA_MAX)
            abort(); /* a record of a valid size must parse */
        return 0;
    }
    if (rr.u.tlsa.data != data + 3 || rr.u.tlsa.len != size - 3 || rr.u.tlsa.usage != data[0])
        abort();
    usable = ms_dane_tlsa_usable(&rr);
    if (usable && (rr.u.tlsa.usage < 2 || rr.u.tlsa.selector > 1 || rr.u.tlsa.mtype > 2))
        abort();
    return 0;
}
