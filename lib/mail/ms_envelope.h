/*
 * ms_envelope.h - the versioned envelope (proto/envelope.proto, generated
 * code in build/gen/envelope.pb-c.h): one record of the `queue` topic (or a
 * retry tier topic) per message.
 *
 * This module is the only one that builds protobuf-c messages.  The
 * envelopes the programs make come from its builders: from a transaction
 * the frontend accepted (ms_envelope_encode_tx), a delivery status
 * notification (ms_envelope_encode_dsn), a retry record
 * (ms_envelope_encode_retry); the authentication results the worker finds
 * go in with ms_envelope_set_auth().  A decoded envelope is read through
 * the generated struct (ms_envelope and the typedefs below: XXX not opaque,
 * the fields are the contract) with the enum names defined here, never the
 * generated ones.
 *
 * Pure functions, any thread.  Buffers returned are malloc'd (free()).
 *
 * A decoded envelope either owns its message or borrows it from the record
 * it was decoded from (ms_envelope_decode_borrow: the worker's path, where a
 * 1 MiB message is then not copied a second time).  Callers never free() or
 * write through `message.data`; they replace it with
 * ms_envelope_set_message() and free the envelope with ms_envelope_free(),
 * which know which case it is.
 */
#ifndef MS_ENVELOPE_H
#define MS_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.pb-c.h"
#include "ms_buf.h"

#define MS_ENVELOPE_VERSION 1

typedef Mailstream__Envelope ms_envelope;
typedef Mailstream__Client ms_envelope_client;
typedef Mailstream__MailFrom ms_envelope_mail_from;
typedef Mailstream__Recipient ms_envelope_rcpt;

/* The envelope's enums (proto/envelope.proto), under our names. */
typedef Mailstream__Body ms_envelope_body;
#define MS_ENV_BODY_UNSPECIFIED MAILSTREAM__BODY__BODY_UNSPECIFIED
#define MS_ENV_BODY_7BIT MAILSTREAM__BODY__BODY_7BIT
#define MS_ENV_BODY_8BITMIME MAILSTREAM__BODY__BODY_8BITMIME
#define MS_ENV_BODY_BINARYMIME MAILSTREAM__BODY__BODY_BINARYMIME
typedef Mailstream__Ret ms_envelope_ret;
#define MS_ENV_RET_UNSPECIFIED MAILSTREAM__RET__RET_UNSPECIFIED
#define MS_ENV_RET_FULL MAILSTREAM__RET__RET_FULL
#define MS_ENV_RET_HDRS MAILSTREAM__RET__RET_HDRS
typedef Mailstream__Direction ms_envelope_direction;
#define MS_ENV_DIRECTION_UNSPECIFIED MAILSTREAM__DIRECTION__DIRECTION_UNSPECIFIED
#define MS_ENV_DIRECTION_INBOUND MAILSTREAM__DIRECTION__DIRECTION_INBOUND
#define MS_ENV_DIRECTION_OUTBOUND MAILSTREAM__DIRECTION__DIRECTION_OUTBOUND
/* RFC 3461 NOTIFY bits of a recipient (0: not given); the same values as
 * ms_dsn.h's MS_DSN_NOTIFY_* (checked at build time in ms_envelope.c). */
#define MS_ENV_NOTIFY_SUCCESS MAILSTREAM__NOTIFY__NOTIFY_SUCCESS
#define MS_ENV_NOTIFY_FAILURE MAILSTREAM__NOTIFY__NOTIFY_FAILURE
#define MS_ENV_NOTIFY_DELAY MAILSTREAM__NOTIFY__NOTIFY_DELAY
#define MS_ENV_NOTIFY_NEVER MAILSTREAM__NOTIFY__NOTIFY_NEVER

/* Initialise e by hand, with version MS_ENVELOPE_VERSION: for this
 * module's unit test, fuzz harness and seed tool only; the programs use the
 * builders below. */
void ms_envelope_init(ms_envelope *e);
/* Serialise; a malloc'd buffer and its length. */
uint8_t *ms_envelope_encode(const ms_envelope *e, size_t *len);
/* Decode and validate (version, queue id, at least one recipient).  Returns
 * the envelope (free with ms_envelope_free) or NULL with the reason in err. */
ms_envelope *ms_envelope_decode(const void *buf, size_t len, char *err, size_t errlen);
/* The same, but the message octets are not copied: `message.data` points
 * into buf, which must outlive the envelope's use of it (the worker keeps
 * the Kafka record until the envelope is done).  The record's top-level
 * fields are walked (protobuf wire format: varint tags, wire types 0, 1, 2
 * and 5) to find the message (field MS_ENVELOPE_FIELD_MESSAGE; the last one
 * when repeated, as protobuf has it), and everything else goes through
 * protobuf-c.  Accepts whatever ms_envelope_decode() accepts that our
 * encoders or any protobuf encoder write, in any field order; it refuses
 * what protobuf-c refuses (tags or lengths over
 * MS_ENVELOPE_WIRE_PREFIX_MAX octets, varints over MS_ENVELOPE_WIRE_VARINT_MAX,
 * group wire types, a first tag octet naming field 0), so both decoders
 * accept the same records: tests/fuzz/fuzz_envelope.c checks that they
 * agree, reasons included. */
ms_envelope *ms_envelope_decode_borrow(const void *buf, size_t len, char *err, size_t errlen);
#define MS_ENVELOPE_FIELD_MESSAGE 10  /* proto/envelope.proto: bytes message = 10 */
#define MS_ENVELOPE_WIRE_PREFIX_MAX 5 /* octets of a tag or length varint (32 bits), as
                                       * protobuf-c reads them */
#define MS_ENVELOPE_WIRE_VARINT_MAX 10 /* octets of any varint (64 bits) */
/* Replace the message by data[0..len) (malloc'd; the envelope takes it):
 * the old one is freed when the envelope owned it. */
void ms_envelope_set_message(ms_envelope *e, uint8_t *data, size_t len);
/* Free a decoded envelope (NULL: nothing), owned or borrowed message. */
void ms_envelope_free(ms_envelope *e);

/* A transaction the frontend accepted (RFC 5321 MAIL, RCPT, DATA/BDAT and
 * what it knows of the client).  Strings may be NULL (empty). */
struct ms_envelope_tx_rcpt {
    const char *address;
    uint32_t notify;   /* MS_ENV_NOTIFY_* bits; 0: not given */
    const char *orcpt; /* RFC 3461 ORCPT, decoded */
};
struct ms_envelope_tx {
    const char *queue_id;
    int64_t received_at_us;
    const char *frontend_node;
    struct {
        const char *ip; /* NULL: no client part at all */
        uint32_t port;
        const char *helo, *tls_version, *tls_cipher, *auth_user, *listener, *listener_role,
            *proxy_peer_ip;
    } client;
    struct {
        const char *address; /* "": the null sender */
        ms_envelope_body body;
        int smtputf8;
        uint64_t size;       /* SIZE=; 0: not given */
        ms_envelope_ret ret;
        const char *envid;   /* RFC 3461 ENVID, decoded */
        int requiretls;      /* RFC 8689 */
    } mail_from;
    const struct ms_envelope_tx_rcpt *rcpts;
    size_t nrcpts;
    ms_envelope_direction direction;
    const void *message; /* RFC 5322, CRLF lines, dot-unstuffed */
    size_t len;
    const char *quarantine; /* a milter's quarantine reason; NULL or "": none */
};
/* Serialise the envelope of tx (version MS_ENVELOPE_VERSION). */
uint8_t *ms_envelope_encode_tx(const struct ms_envelope_tx *tx, size_t *len);
/* The same record built around the message where it already lies, so that
 * the message is not copied once more (issue 19: the frontend reads a
 * message into the buffer its record then goes to Kafka from).
 * b->data[off..b->len) is the message (tx->message is not read): the
 * message field's tag and length are written in the MS_ENVELOPE_TX_HEAD_MAX
 * octets (at most) before it, and every other field, packed by protobuf-c
 * as ms_envelope_encode_tx() packs them, is appended to b (which may move
 * it: ms_buf_reserve).  Protobuf takes fields in any order, so both
 * decoders read the same envelope from this record as from
 * ms_envelope_encode_tx()'s.  0, the record being b->data[*start..*start +
 * *len) (*start at most MS_ENVELOPE_TX_HEAD_MAX before off, the record's
 * end b->len); -1, b unchanged, when there is no room before the message
 * (off), b cannot grow by the other fields (its max), or the message is
 * longer than a length prefix can say (UINT32_MAX). */
#define MS_ENVELOPE_TX_HEAD_MAX (1 + MS_ENVELOPE_WIRE_PREFIX_MAX) /* tag, length */
int ms_envelope_encode_tx_in(const struct ms_envelope_tx *tx, struct ms_buf *b, size_t off,
                             size_t *start, size_t *len);
/* The same envelope as a decoded one that owns its memory (free with
 * ms_envelope_free), as a consumer would get it, without the checks of
 * ms_envelope_decode() (tools and tests feed stages with it). */
ms_envelope *ms_envelope_new_tx(const struct ms_envelope_tx *tx);

/* Record the authentication results the worker found for inbound mail
 * (proto Auth): evaluated, SPF pass for the MAIL FROM identity, the d= of a
 * DKIM pass aligned with the MAIL FROM domain (NULL or "": none).  Replaces
 * any results e had. */
void ms_envelope_set_auth(ms_envelope *e, int spf_mailfrom_pass, const char *dkim_aligned);

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
