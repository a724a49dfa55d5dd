/*
 * fe_auth.h - SMTP AUTH (RFC 4954) building blocks: base64, the PLAIN
 * message (RFC 4616), and the password file.
 *
 * Password file: one `user:crypt(3)-hash[:sender,sender...]` per line; `#`
 * starts a comment line.  Senders are addresses (`joe@example.com`) or
 * domains (`example.com` or `@example.com`); an authenticated user may use
 * only those in MAIL FROM.  XXX: a line without a sender list allows any
 * sender, as the documented format makes the list optional.
 * The table is immutable once loaded (reloads build a new one) and
 * reference-counted atomically, so every loop thread may share and read it
 * (each server holds a reference and swaps it on reload); the hash itself
 * is checked with crypt_rn() on the libuv thread pool by the session.
 * Nothing here ever logs a credential.
 */
#ifndef FE_AUTH_H
#define FE_AUTH_H

#include <stddef.h>

#define FE_AUTH_USER_MAX 255
#define FE_AUTH_PASS_MAX 1024
/* A SASL response, decoded: authzid NUL authcid NUL passwd. */
#define FE_AUTH_RESPONSE_MAX (2 * FE_AUTH_USER_MAX + FE_AUTH_PASS_MAX + 2)

struct fe_passwd_entry {
    char *user;
    char *hash;
    char **senders; /* NULL when any sender is allowed */
    size_t nsenders;
};

struct fe_passwd;

/* Load a password file (one reference, the caller's).  NULL with the reason
 * in err. */
struct fe_passwd *fe_passwd_load(const char *path, char *err, size_t errlen);
/* Take another reference (any thread); NULL is fine. */
struct fe_passwd *fe_passwd_ref(struct fe_passwd *pw);
/* Drop a reference; the last one frees the table.  NULL is fine. */
void fe_passwd_free(struct fe_passwd *pw);
const struct fe_passwd_entry *fe_passwd_find(const struct fe_passwd *pw, const char *user);
/* 1 when the entry allows `addr` ("" = null sender) as MAIL FROM. */
int fe_passwd_sender_ok(const struct fe_passwd_entry *e, const char *addr);

/* Decode base64 (RFC 4648 4, padding required, no white space).  Returns the
 * length (out is NUL-terminated), MS_EPROTO when malformed, MS_ETOOBIG when it
 * does not fit in outlen - 1. */
int fe_base64_decode(const char *in, size_t n, char *out, size_t outlen);
/* Encode into out; returns the length. */
size_t fe_base64_encode(const char *in, size_t n, char *out, size_t outlen);

/* Split a decoded PLAIN response.  Fails (MS_EPROTO) when malformed, when a
 * part is too long, or when authzid is given and differs from authcid (we do
 * not support acting for another user). */
int fe_sasl_plain(const char *resp, size_t n, char *user, size_t userlen, char *pass,
                  size_t passlen);

/* Check a password against a crypt(3) hash (slow: call on the thread pool).
 * A NULL hash checks against a dummy so unknown users take as long.
 * Returns 1 on match. */
int fe_passwd_check(const char *hash, const char *pass);

#endif
