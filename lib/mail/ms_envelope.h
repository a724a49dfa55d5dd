/*
 * ms_envelope.h - encode and decode the versioned envelope
 * (proto/envelope.proto, generated code in build/gen/envelope.pb-c.h).
 *
 * The envelope struct is protobuf-c's Mailstream__Envelope; callers build one
 * with ms_envelope_init() and the generated *_init helpers.  Pure functions,
 * any thread.
 */
#ifndef MS_ENVELOPE_H
#define MS_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.pb-c.h"

#define MS_ENVELOPE_VERSION 1

typedef Mailstream__Envelope ms_envelope;

/* Initialise e, with version MS_ENVELOPE_VERSION. */
void ms_envelope_init(ms_envelope *e);
/* Serialise; returns a malloc'd buffer (free()) and its length. */
uint8_t *ms_envelope_encode(const ms_envelope *e, size_t *len);
/* Decode and validate (version, queue id, at least one recipient).  Returns
 * the envelope (free with ms_envelope_free) or NULL with the reason in err. */
ms_envelope *ms_envelope_decode(const void *buf, size_t len, char *err, size_t errlen);
void ms_envelope_free(ms_envelope *e);

#endif
