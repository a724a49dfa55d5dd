/* libFuzzer target: the envelope decoder (a Kafka record is wire data too). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ms_envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    ms_envelope *e = ms_envelope_decode(data, size, err, sizeof(err));
    uint8_t *again;
    size_t len;

    if (e) {
        again = ms_envelope_encode(e, &len);
        free(again);
        ms_envelope_free(e);
    }
    return 0;
}
