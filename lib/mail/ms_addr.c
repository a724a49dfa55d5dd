/*
 * ms_addr.c - the domain of an address and the path limit (ms_addr.h).
 */
#include "ms_addr.h"
#include "ms_error.h"

#include <ctype.h>
#include <string.h>

const char *ms_addr_domain(const char *addr)
{
    /* The last '@': a quoted local part may hold one (RFC 5321 §4.1.2). */
    const char *at = strrchr(addr, '@');

    return at ? at + 1 : NULL;
}

int ms_addr_domain_copy(const char *addr, char *out, size_t outlen)
{
    const char *d = ms_addr_domain(addr);
    size_t i, len;

    if (outlen == 0)
        return MS_ETOOBIG;
    out[0] = '\0';
    if (d == NULL)
        return 0;
    len = strlen(d);
    if (len >= outlen)
        return MS_ETOOBIG;
    for (i = 0; i <= len; i++)
        out[i] = (char)tolower((unsigned char)d[i]);
    if (len > 0 && out[len - 1] == '.')
        out[len - 1] = '\0';
    return 0;
}
