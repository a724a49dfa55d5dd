/* libFuzzer target: MTA-STS text (ms_mtasts.h): the input as a _mta-sts
 * TXT record and as a policy file, and every MX pattern of a policy that
 * parses matched against names made from the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_mtasts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char id[MS_MTASTS_ID_MAX + 1], host[MS_DNS_NAME_MAX + 1];
    struct ms_mtasts_policy p;
    size_t i, n;

    if (ms_mtasts_txt_parse((const char *)data, size, id) == 0 &&
        (strlen(id) == 0 || strlen(id) > MS_MTASTS_ID_MAX))
        abort();
    if (ms_mtasts_policy_parse((const char *)data, size, &p) == 0) {
        if (p.nmx > MS_MTASTS_MX_MAX || p.max_age > MS_MTASTS_MAX_AGE_MAX ||
            (p.mode != MS_MTASTS_NONE && p.nmx == 0))
            abort();
        for (i = 0; i < p.nmx; i++) {
            /* A pattern without its wildcard matches itself. */
            const char *lit = p.mx[i][0] == '*' ? NULL : p.mx[i];
            if (lit && !ms_mtasts_mx_match(&p, lit))
                abort();
        }
        n = size < MS_DNS_NAME_MAX ? size : MS_DNS_NAME_MAX;
        memcpy(host, data, n);
        host[n] = '\0';
        (void)ms_mtasts_mx_match(&p, host);
    }
    return 0;
}
