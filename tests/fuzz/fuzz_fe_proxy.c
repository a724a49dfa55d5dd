/*
 * fuzz_fe_proxy.c - libFuzzer driver for the PROXY protocol parser
 * (frontend/fe_proxy.c): parses the input whole and fed octet by octet
 * (every prefix of a header must need more, never succeed differently), and
 * checks the invariants the session relies on.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ms_error.h"
#include "../../frontend/fe_proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct fe_proxy p, q;
    size_t i;
    int r, r2;

    r = fe_proxy_parse(buf, size, &p);
    if (r != MS_EAGAIN && r != MS_EPROTO) {
        /* Consumed: within the input and the named limits. */
        if (r <= 0 || (size_t)r > size || (p.version == 1 && r > FE_PROXY_V1_MAX) ||
            (p.version == 2 && r > FE_PROXY_V2_MAX) || (p.version != 1 && p.version != 2))
            __builtin_trap();
        if (strlen(p.authority) >= sizeof(p.authority) || strlen(p.ssl_cipher) >= sizeof(p.ssl_cipher) ||
            strlen(p.ssl_version) >= sizeof(p.ssl_version) || p.unique_id_len > sizeof(p.unique_id))
            __builtin_trap();
        if (!p.local && p.src.ss_family != 2 /* AF_INET */ && p.src.ss_family != 10 /* AF_INET6 */)
            __builtin_trap();
        /* Every shorter prefix needs more; the exact header parses the same. */
        for (i = 0; i < (size_t)r; i++)
            if (fe_proxy_parse(buf, i, &q) != MS_EAGAIN)
                __builtin_trap();
        if (fe_proxy_parse(buf, (size_t)r, &q) != r)
            __builtin_trap();
    }
    /* Something that cannot start a header is refused, never "need more". */
    if (size > 0 && !fe_proxy_maybe(buf, size)) {
        r2 = fe_proxy_parse(buf, size, &q);
        if (r2 != MS_EPROTO)
            __builtin_trap();
    }
    return 0;
}
