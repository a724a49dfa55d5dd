/* libFuzzer target: the parsers of the authentication results code on
 * arbitrary header sections: Authentication-Results reading (ms_authres_id,
 * ms_authres_strip, ms_authres_applied), the value/comment writers, the
 * DMARC From-domain extraction and the Public Suffix List parser and
 * matcher. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_authres.h"
#include "ms_buf.h"
#include "ms_dmarc.h"
#include "ms_mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char id[MS_AUTHRES_ID_MAX + 1], *s;
    struct ms_buf out;
    int n;

    (void)ms_authres_id((const char *)data, size, id, sizeof(id));
    ms_buf_init(&out, 2 * size + 64);
    n = ms_authres_strip((const char *)data, size, "mx.example.org", &out);
    if (n == 0 && (out.len != size || (size && memcmp(out.data, data, size) != 0)))
        abort(); /* nothing removed must mean an identical copy */
    if (n > 0 && out.len >= size)
        abort();
    (void)ms_authres_applied((const char *)data, size, "mx.example.org");
    ms_buf_reset(&out);
    s = ms_strndup((const char *)data, size);
    (void)ms_authres_value(&out, s);
    (void)ms_authres_comment(&out, s);
    free(s);
    ms_buf_free(&out);

    {
        char dom[256], org[256];
        ms_psl *psl;
        if (ms_dmarc_from_domain((const char *)data, size, dom, sizeof(dom)) == 0 &&
            strlen(dom) >= sizeof(dom))
            abort();
        if (ms_psl_parse((const char *)data, size, &psl) == 0) {
            (void)ms_psl_org_domain(psl, "a.b.example.co.uk", org, sizeof(org));
            if (ms_dmarc_from_domain((const char *)data, size, dom, sizeof(dom)) == 0)
                (void)ms_psl_org_domain(psl, dom, org, sizeof(org));
            ms_psl_free(psl);
        }
    }
    return 0;
}
