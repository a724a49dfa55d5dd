/*
 * fe_auth.c - base64, SASL PLAIN, the password file (see fe_auth.h).
 */
#include "fe_auth.h"
#include "ms_addr.h"
#include "ms_base64.h"
#include "ms_config.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <crypt.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct fe_passwd {
    struct fe_passwd_entry *e;
    size_t n;
    atomic_int refs; /* the loaders' and every server's reference */
};

#define FE_PASSWD_SENDERS_MAX 256

struct fe_passwd *fe_passwd_load(const char *path, char *err, size_t errlen)
{
    struct fe_passwd *pw;
    char *line = NULL, *user, *hash, *senders, *items[FE_PASSWD_SENDERS_MAX];
    size_t cap = 0, lineno = 0, ns, i, ecap = 0;
    ssize_t len;
    FILE *f;

    if ((f = fopen(path, "re")) == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    pw = ms_calloc(1, sizeof(*pw));
    atomic_init(&pw->refs, 1);
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        user = line;
        if ((hash = strchr(user, ':')) == NULL || hash == user) {
            snprintf(err, errlen, "%s:%zu: want user:hash[:senders]", path, lineno);
            goto bad;
        }
        *hash++ = '\0';
        if ((senders = strchr(hash, ':')) != NULL)
            *senders++ = '\0';
        if (*hash == '\0' || strlen(user) > FE_AUTH_USER_MAX) {
            snprintf(err, errlen, "%s:%zu: empty hash or user name too long", path, lineno);
            goto bad;
        }
        if (pw->n == ecap) {
            ecap = ecap ? ecap * 2 : 16;
            pw->e = ms_realloc(pw->e, ecap * sizeof(*pw->e));
        }
        struct fe_passwd_entry *e = &pw->e[pw->n++];
        e->user = ms_strdup(user);
        e->hash = ms_strdup(hash);
        e->senders = NULL;
        e->nsenders = 0;
        if (senders && *senders) {
            ns = ms_config_split_list(senders, items, FE_PASSWD_SENDERS_MAX);
            e->senders = ms_calloc(ns ? ns : 1, sizeof(char *));
            for (i = 0; i < ns; i++)
                e->senders[i] = ms_strdup(items[i][0] == '@' ? items[i] + 1 : items[i]);
            e->nsenders = ns;
        }
    }
    free(line);
    fclose(f);
    return pw;
bad:
    free(line);
    fclose(f);
    fe_passwd_free(pw);
    return NULL;
}

struct fe_passwd *fe_passwd_ref(struct fe_passwd *pw)
{
    if (pw != NULL)
        atomic_fetch_add_explicit(&pw->refs, 1, memory_order_relaxed);
    return pw;
}

void fe_passwd_free(struct fe_passwd *pw)
{
    size_t i, j;

    if (pw == NULL || atomic_fetch_sub_explicit(&pw->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (i = 0; i < pw->n; i++) {
        free(pw->e[i].user);
        explicit_bzero(pw->e[i].hash, strlen(pw->e[i].hash));
        free(pw->e[i].hash);
        for (j = 0; j < pw->e[i].nsenders; j++)
            free(pw->e[i].senders[j]);
        free(pw->e[i].senders);
    }
    free(pw->e);
    free(pw);
}

const struct fe_passwd_entry *fe_passwd_find(const struct fe_passwd *pw, const char *user)
{
    size_t i;

    if (pw == NULL)
        return NULL;
    for (i = 0; i < pw->n; i++)
        if (strcmp(pw->e[i].user, user) == 0)
            return &pw->e[i];
    return NULL;
}

int fe_passwd_sender_ok(const struct fe_passwd_entry *e, const char *addr)
{
    const char *dom = ms_addr_domain(addr);
    size_t i;

    if (e->senders == NULL || *addr == '\0')
        return 1;
    for (i = 0; i < e->nsenders; i++) {
        const char *s = e->senders[i];
        if (strchr(s, '@') ? strcasecmp(s, addr) == 0 : (dom && strcasecmp(s, dom) == 0))
            return 1;
    }
    return 0;
}

int fe_base64_decode(const char *in, size_t n, char *out, size_t outlen)
{
    int r;

    if (outlen == 0)
        return MS_ETOOBIG;
    /* Strict (RFC 4954 §4): padding required, no white space. */
    if ((r = ms_base64_decode(in, n, (uint8_t *)out, outlen - 1, 0)) >= 0)
        out[r] = '\0';
    return r;
}

size_t fe_base64_encode(const char *in, size_t n, char *out, size_t outlen)
{
    return ms_base64_encode(in, n, out, outlen);
}

int fe_sasl_plain(const char *resp, size_t n, char *user, size_t userlen, char *pass,
                  size_t passlen)
{
    const char *z1 = memchr(resp, '\0', n), *z2, *authcid, *pw;
    size_t zl, ul, pl;

    if (z1 == NULL || (z2 = memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - resp))) == NULL)
        return MS_EPROTO;
    zl = (size_t)(z1 - resp);
    authcid = z1 + 1;
    ul = (size_t)(z2 - authcid);
    pw = z2 + 1;
    pl = n - (size_t)(pw - resp);
    if (ul == 0 || ul >= userlen || pl >= passlen || memchr(pw, '\0', pl) != NULL)
        return MS_EPROTO;
    if (zl > 0 && (zl != ul || memcmp(resp, authcid, ul) != 0))
        return MS_EPROTO;
    memcpy(user, authcid, ul);
    user[ul] = '\0';
    memcpy(pass, pw, pl);
    pass[pl] = '\0';
    return 0;
}

int fe_passwd_check(const char *hash, const char *pass)
{
    /* A valid SHA-512 setting: unknown users cost a real hash computation. */
    static const char dummy[] = "$6$rounds=5000$mailstreamdummy$";
    struct crypt_data *cd = ms_calloc(1, sizeof(*cd));
    const char *h = hash ? hash : dummy;
    const char *out;
    size_t hl = strlen(h), i;
    unsigned char diff = 0;
    int ok = 0;

    out = crypt_rn(pass, h, cd, sizeof(*cd));
    if (out && out[0] != '*' && hash != NULL && strlen(out) == hl) {
        for (i = 0; i < hl; i++)
            diff |= (unsigned char)(out[i] ^ h[i]);
        ok = diff == 0;
    }
    explicit_bzero(cd, sizeof(*cd));
    free(cd);
    return ok;
}
