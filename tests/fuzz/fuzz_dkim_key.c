/*
 * fuzz_dkim_key.c - libFuzzer driver for the DKIM key-record parser
 * (lib/mail/ms_dkim_parse.c, ms_dkim_keyrec_parse) and the FWS-tolerant
 * base64 decoder it uses for p=.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ms_dkim.h"
#include "ms_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_dkim_keyrec key;
    uint8_t out[64];
    const char *why = NULL;
    int rc;

    rc = ms_dkim_keyrec_parse((const char *)data, size, &key, &why);
    if (rc == 0) {
        if (key.p_len > sizeof(key.p) || (key.k != MS_DKIM_KEY_RSA && key.k != MS_DKIM_KEY_ED25519))
            abort();
    } else if (why == NULL || (rc != MS_EPROTO && rc != MS_ETOOBIG)) {
        abort();
    }
    rc = ms_dkim_base64_decode((const char *)data, size, out, sizeof(out));
    if (rc > (int)sizeof(out))
        abort();
    return 0;
}
