/*
 * ms_base64.h - base64 (RFC 4648 §4) for SMTP AUTH and DKIM.  Pure
 * functions, any thread.
 */
#ifndef MS_BASE64_H
#define MS_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Decoding flags. */
#define MS_BASE64_SKIP_FWS 1     /* skip SP, HT, CR and LF (DKIM b=, bh=, p=) */
#define MS_BASE64_PAD_OPTIONAL 2 /* accept a last group without its '=' */

/* Decode n characters into out (room for max bytes).  Returns the decoded
 * length, MS_EPROTO for a character outside the alphabet or bad padding, or
 * MS_ETOOBIG when the result does not fit. */
int ms_base64_decode(const char *in, size_t n, uint8_t *out, size_t max, int flags);
/* Encode n bytes into out (outlen bytes; NUL-terminated when there is room);
 * returns the encoded length.  Output that does not fit is cut at a 4-character
 * group: callers size out as ((n + 2) / 3) * 4 + 1. */
size_t ms_base64_encode(const void *in, size_t n, char *out, size_t outlen);

#endif
