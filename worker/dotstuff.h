/*
 * dotstuff.h - the DATA transparency procedure (RFC 5321 §4.5.2) and the
 * line-end normalisation for BDAT, pure.
 *
 * The envelope holds the message with CRLF line ends and dot-unstuffed
 * (proto/envelope.proto).  Before it goes on the wire after DATA every line
 * that starts with "." gets one more ".", a missing final CRLF is added, and
 * the end-of-data indicator ".\r\n" follows.  A bare LF is sent as CRLF
 * (RFC 5321 §2.3.8 forbids bare LF on the wire); a bare CR is left alone.
 * Any thread.
 */
#ifndef WK_DOTSTUFF_H
#define WK_DOTSTUFF_H

#include <stddef.h>

/* The one-pass forms (*_alloc) start from len + len / SLACK_DIV +
 * SLACK_MIN octets and double when stuffing needs more (a message of
 * one-octet "." lines doubles in size). */
#define WK_DOTSTUFF_SLACK_DIV 64
#define WK_DOTSTUFF_SLACK_MIN 64

/* The DATA terminator the stuffed form ends with (RFC 5321 §4.1.1.4), and
 * its length: one definition for every writer of it. */
#define WK_DOTSTUFF_END ".\r\n"
#define WK_DOTSTUFF_END_LEN (sizeof WK_DOTSTUFF_END - 1)

/* Exact length of the stuffed form of msg, terminator included. */
size_t wk_dotstuff_len(const char *msg, size_t len);
/* Write the stuffed form into out, which has room for wk_dotstuff_len()
 * octets; returns the length written. */
size_t wk_dotstuff(const char *msg, size_t len, char *out);
/* The stuffed form in one pass, into a malloc'd buffer (free()); its
 * length in *outlen.  What the worker sends. */
char *wk_dotstuff_alloc(const char *msg, size_t len, size_t *outlen);

/* The same without the dots and the terminator, for BDAT (RFC 3030: chunks
 * are counted octets, no transparency needed): bare LF becomes CRLF and a
 * missing final CRLF is added, so a text message arrives the same way by
 * BDAT as by DATA.  Not for BINARYMIME bodies, which go as they are. */
size_t wk_crlf_len(const char *msg, size_t len);
size_t wk_crlf(const char *msg, size_t len, char *out);
char *wk_crlf_alloc(const char *msg, size_t len, size_t *outlen);

/* Whether msg goes on the wire as it is: CRLF line ends throughout, a
 * final CRLF (or no octet at all) and, with DATA (wk_dotstuff_as_is), no
 * line that starts with ".".  Then the stuffed form is msg followed by
 * ".\r\n", and the BDAT form msg itself: the worker sends such a message
 * from where it is instead of from a copy (smtp_client.c). */
int wk_dotstuff_as_is(const char *msg, size_t len);
int wk_crlf_as_is(const char *msg, size_t len);

#endif
