/*
 * fuzz_envelope.c - libFuzzer target: the envelope decoders (a Kafka record
 * is wire data too).  Seeds: envelopes our own encoder wrote
 * (tests/fuzz/seed_envelope.c, `make fuzz-seeds`) and hand-made wire shapes
 * (the message first, twice, padded lengths).
 *
 * Invariants:
 * - an envelope the decoder accepts, our encoder writes again as one the
 *   decoder accepts too, and writing that one gives the same octets (a
 *   worker re-produces what it decoded, to a retry tier or as a DSN's
 *   original: it must not turn into a record no worker can read);
 * - ms_envelope_decode_borrow (the worker's, with its own walk of the wire
 *   data) accepts exactly what ms_envelope_decode (protobuf-c alone)
 *   accepts, with the same reason when not, and the same envelope (written
 *   again to the same octets), its message pointing into the input.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256], err2[256];
    ms_envelope *e = ms_envelope_decode(data, size, err, sizeof(err)), *again;
    ms_envelope *b = ms_envelope_decode_borrow(data, size, err2, sizeof(err2));
    uint8_t *once, *twice, *borrowed;
    size_t len1, len2, len3;

    if ((e == NULL) != (b == NULL))
        __builtin_trap();
    if (e == NULL) {
        if (strcmp(err, err2) != 0)
            __builtin_trap();
        return 0;
    }
    if (b->message.len > 0 &&
        (b->message.data < data || b->message.data + b->message.len > data + size))
        __builtin_trap();
    once = ms_envelope_encode(e, &len1);
    borrowed = ms_envelope_encode(b, &len3);
    if (len1 != len3 || memcmp(once, borrowed, len1) != 0)
        __builtin_trap();
    again = ms_envelope_decode(once, len1, err, sizeof(err));
    if (again == NULL)
        __builtin_trap();
    twice = ms_envelope_encode(again, &len2);
    if (len1 != len2 || memcmp(once, twice, len1) != 0)
        __builtin_trap();
    free(once);
    free(twice);
    free(borrowed);
    ms_envelope_free(again);
    ms_envelope_free(e);
    ms_envelope_free(b);
    return 0;
}
