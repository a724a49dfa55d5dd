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

/* The envelope of a delivery status notification (RFC 3464) about message
 * dsn_for: from the null sender (RFC 5321 §4.5.5) to `to`, NOTIFY=NEVER
 * (a notice is never notified about, RFC 3461 §6.2), direction outbound,
 * 8BITMIME; REQUIRETLS when the message it reports on had it (RFC 8689
 * §5: the notice goes the same way). */
struct ms_envelope_dsn {
    const char *queue_id;   /* the notice's own */
    int64_t received_at_us; /* when it was made */
    const char *node;       /* the worker that made it */
    const char *to;         /* the original envelope sender */
    int requiretls;
    const char *dsn_for;    /* the original queue id */
    const void *message;    /* the RFC 3464 report (ms_dsn_build) */
    size_t len;
};
/* Serialise it; a malloc'd buffer (free()) and its length. */
uint8_t *ms_envelope_encode_dsn(const struct ms_envelope_dsn *in, size_t *len);

/* One delivery attempt for one recipient, as the retry record keeps it. */
struct ms_envelope_attempt {
    int64_t at_us;
    const char *recipient;
    const char *worker_node;
    const char *relay;
    uint32_t code;
    const char *dsn;
    const char *reply;
};
/* The retry record of env: only the recipients keep[0..nkeep) (indices
 * into env->recipients), env's attempts followed by add[0..nadd), and the
 * new attempt count, due time and retry tier; everything else as in env.
 * Serialised into a malloc'd buffer (free()); env is not changed. */
uint8_t *ms_envelope_encode_retry(const ms_envelope *env, const size_t *keep, size_t nkeep,
                                  const struct ms_envelope_attempt *add, size_t nadd,
                                  uint32_t attempt_count, int64_t next_attempt_us,
                                  uint32_t retry_tier, size_t *len);

#endif
