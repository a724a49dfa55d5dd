/*
 * fuzz_envelope.c - libFuzzer target: the envelope decoder (a Kafka record
 * is wire data too).  Seeds: envelopes our own encoder wrote
 * (tests/fuzz/seed_envelope.c, `make fuzz-seeds`).
 *
 * Invariant: an envelope the decoder accepts, our encoder writes again as
 * one the decoder accepts too, and writing that one gives the same octets
 * (a worker re-produces what it decoded, to a retry tier or as a DSN's
 * original: it must not turn into a record no worker can read).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    ms_envelope *e = ms_envelope_decode(data, size, err, sizeof(err)), *again;
    uint8_t *once, *twice;
    size_t len1, len2;

    if (e == NULL)
        return 0;
    once = ms_envelope_encode(e, &len1);
    again = ms_envelope_decode(once, len1, err, sizeof(err));
    if (again == NULL)
        __builtin_trap();
    twice = ms_envelope_encode(again, &len2);
    if (len1 != len2 || memcmp(once, twice, len1) != 0)
        __builtin_trap();
    free(once);
    free(twice);
    ms_envelope_free(again);
    ms_envelope_free(e);
    return 0;
}
