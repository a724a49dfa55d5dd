#include "ms_envelope.h"
#include "ms_mem.h"

#include <stdio.h>
#include <string.h>

void ms_envelope_init(ms_envelope *e)
{
    mailstream__envelope__init(e);
    e->version = MS_ENVELOPE_VERSION;
}

uint8_t *ms_envelope_encode(const ms_envelope *e, size_t *len)
{
    size_t n = mailstream__envelope__get_packed_size(e);
    uint8_t *buf = ms_malloc(n);

    *len = mailstream__envelope__pack(e, buf);
    return buf;
}

ms_envelope *ms_envelope_decode(const void *buf, size_t len, char *err, size_t errlen)
{
    ms_envelope *e = mailstream__envelope__unpack(NULL, len, buf);

    if (e == NULL) {
        snprintf(err, errlen, "malformed envelope (%zu bytes)", len);
        return NULL;
    }
    if (e->version != MS_ENVELOPE_VERSION) {
        snprintf(err, errlen, "unknown envelope version %u (this build reads %u)", e->version,
                 MS_ENVELOPE_VERSION);
        goto bad;
    }
    if (e->queue_id == NULL || *e->queue_id == '\0') {
        snprintf(err, errlen, "envelope without a queue id");
        goto bad;
    }
    if (e->n_recipients == 0) {
        snprintf(err, errlen, "envelope %s without recipients", e->queue_id);
        goto bad;
    }
    return e;
bad:
    mailstream__envelope__free_unpacked(e, NULL);
    return NULL;
}

void ms_envelope_free(ms_envelope *e)
{
    if (e)
        mailstream__envelope__free_unpacked(e, NULL);
}
