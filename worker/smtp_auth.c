/*
 * smtp_auth.c - SMTP AUTH client mechanisms (smtp_auth.h).
 */
#include "smtp_auth.h"
#include "ms_base64.h"
#include "ms_error.h"

#include <openssl/crypto.h>
#include <string.h>
#include <strings.h>

enum ms_auth_mech wk_auth_pick(unsigned offered)
{
    if (offered & MS_AUTH_MECH_PLAIN)
        return MS_AUTH_MECH_PLAIN;
    if (offered & MS_AUTH_MECH_LOGIN)
        return MS_AUTH_MECH_LOGIN;
    return MS_AUTH_MECH_NONE;
}

int wk_auth_mechs_parse(const char *list)
{
    const char *p = list, *start;
    size_t n;
    int mask = 0;

    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        start = p;
        while (*p && *p != ' ' && *p != ',' && *p != '\t')
            p++;
        n = (size_t)(p - start);
        if (n == 5 && strncasecmp(start, "PLAIN", 5) == 0)
            mask |= MS_AUTH_MECH_PLAIN;
        else if (n == 5 && strncasecmp(start, "LOGIN", 5) == 0)
            mask |= MS_AUTH_MECH_LOGIN;
        else
            return MS_EINVAL;
    }
    return mask ? mask : MS_EINVAL;
}

const char *wk_auth_mech_name(enum ms_auth_mech m)
{
    return m == MS_AUTH_MECH_PLAIN ? "PLAIN" : m == MS_AUTH_MECH_LOGIN ? "LOGIN" : "none";
}

int wk_auth_field_ok(const char *s)
{
    size_t n = strnlen(s, WK_AUTH_FIELD_MAX + 1);

    return n > 0 && n <= WK_AUTH_FIELD_MAX && strpbrk(s, "\r\n") == NULL;
}

int wk_auth_plain(const char *user, const char *password, char *out, size_t outlen)
{
    unsigned char raw[2 * WK_AUTH_FIELD_MAX + 2];
    size_t ul, pl, n;

    if (!wk_auth_field_ok(user) || !wk_auth_field_ok(password) || outlen < WK_AUTH_PLAIN_MAX)
        return MS_EINVAL;
    ul = strlen(user);
    pl = strlen(password);
    /* message = [authzid] UTF8NUL authcid UTF8NUL passwd (RFC 4616 §2). */
    raw[0] = '\0';
    memcpy(raw + 1, user, ul);
    raw[1 + ul] = '\0';
    memcpy(raw + 2 + ul, password, pl);
    n = ms_base64_encode(raw, 2 + ul + pl, out, outlen);
    OPENSSL_cleanse(raw, sizeof(raw));
    return (int)n;
}

int wk_auth_challenge(const struct ms_reply *r, uint8_t *out, size_t max)
{
    size_t len;
    int n;

    if (r->code != 334 || r->nlines != 1)
        return MS_EPROTO;
    len = r->text_len[0];
    /* Some servers end the line with spaces; base64 has none. */
    while (len > 0 && r->text[0][len - 1] == ' ')
        len--;
    if (len == 0)
        return 0; /* an empty challenge ("334 ") */
    n = ms_base64_decode(r->text[0], len, out, max, 0);
    return n;
}
