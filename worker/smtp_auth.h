/*
 * smtp_auth.h - the client side of SMTP AUTH (RFC 4954) with the PLAIN
 * (RFC 4616) and LOGIN (draft-murchison-sasl-login) mechanisms, as pure
 * functions: which mechanism to use, the PLAIN initial response, and the
 * decoding of a 334 challenge.  The mechanisms a server offers come from
 * ms_ehlo_parse() (smtp_reply.h: the AUTH keyword).
 *
 * No I/O, no logging: the password passes through these functions and
 * nowhere else is it copied except into the command buffer, which the
 * caller wipes.  Any thread.
 */
#ifndef WK_SMTP_AUTH_H
#define WK_SMTP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "ms_smtp_reply.h"

/* RFC 4616 §2: authcid and passwd are at most 255 octets of UTF-8 each.
 * A longer user name or password is refused when the configuration is
 * read, never cut. */
#define WK_AUTH_FIELD_MAX 255
/* Base64 of NUL authcid NUL passwd, plus its NUL. */
#define WK_AUTH_PLAIN_MAX (((2 * WK_AUTH_FIELD_MAX + 2 + 2) / 3) * 4 + 1)
/* Base64 of one field (LOGIN sends user name and password separately). */
#define WK_AUTH_FIELD_B64_MAX (((WK_AUTH_FIELD_MAX + 2) / 3) * 4 + 1)
/* Longest decoded 334 challenge we look at; a longer one is an error (PLAIN
 * and LOGIN servers send a short prompt or nothing). */
#define WK_AUTH_CHALLENGE_MAX 512

/* The mechanism to use among those offered (a WK_AUTH_* mask): PLAIN when
 * offered (one round trip), else LOGIN, else MS_AUTH_MECH_NONE. */
enum ms_auth_mech wk_auth_pick(unsigned offered);
/* A comma- or space-separated list of mechanism names ("plain, login",
 * case-insensitive; like Postfix's smtp_sasl_mechanism_filter) -> the
 * WK_AUTH_* mask, or MS_EINVAL for an unknown name or an empty list. */
int wk_auth_mechs_parse(const char *list);
/* "PLAIN", "LOGIN" or "none". */
const char *wk_auth_mech_name(enum ms_auth_mech m);

/* 1 when s may be a user name or password: 1..WK_AUTH_FIELD_MAX octets,
 * no NUL (implied), CR or LF. */
int wk_auth_field_ok(const char *s);

/* The PLAIN initial response (RFC 4616 §2: empty authzid, NUL, authcid,
 * NUL, passwd), base64-encoded into out (outlen >= WK_AUTH_PLAIN_MAX).
 * Returns its length, or MS_EINVAL when a field is not wk_auth_field_ok()
 * or out is too small. */
int wk_auth_plain(const char *user, const char *password, char *out, size_t outlen);

/* Decode the challenge of a 334 reply (RFC 4954 §4: the text after
 * "334 " is base64, possibly empty) into out (max octets).  Returns the
 * decoded length (>= 0), MS_EPROTO when the reply is not a one-line 334
 * with base64 text, MS_ETOOBIG when it does not fit. */
int wk_auth_challenge(const struct ms_reply *r, uint8_t *out, size_t max);

#endif
