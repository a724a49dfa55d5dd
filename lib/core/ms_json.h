/*
 * ms_json.h - writing JSON: the one string writer every JSON record uses
 * (the worker's `events` records, the mail-authentication discard event),
 * and the time format those records share.
 *
 * Strings follow RFC 8259 §7: quote and backslash escaped, control
 * characters as \n, \r, \t or \u00XX (DEL too); valid UTF-8 (RFC 3629 §4:
 * no overlong forms, no surrogates, nothing past U+10FFFF) passes through,
 * every other byte becomes U+FFFD, so a record is valid JSON whatever a
 * remote server sent.  Pure, any thread; errors are the buffer's
 * (MS_ETOOBIG past its limit, ms_buf.h).
 */
#ifndef MS_JSON_H
#define MS_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"

/* Room for ms_json_time()'s text with its NUL. */
#define MS_JSON_TIME_MAX 40

/* Append s (n bytes) as a JSON string literal, quotes included. */
int ms_json_string(struct ms_buf *out, const char *s, size_t n);
/* ts_us (microseconds since the epoch) as RFC 3339 UTC with milliseconds,
 * "2026-11-24T05:00:00.123Z" like the log lines, into out (outlen at least
 * MS_JSON_TIME_MAX). */
void ms_json_time(char *out, size_t outlen, int64_t ts_us);

#endif
