/*
 * ms_dkim_sign.c - private keys and DKIM signing (RFC 6376 §5, RFC 8463).
 *
 * The field is written as "DKIM-Signature: v=1; a=...; c=...; d=...; s=...;
 * t=...; [x=...;] [i=...;] [l=...;] h=...; bh=...; b=..." folded to
 * MS_DKIM_LINE_MAX.  The text hashed is exactly the text written up to and
 * including "b=", so folding can never break the signature; the b= value is
 * folded afterwards, which verifiers ignore (§3.7).
 */
#include "ms_dkim.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct ms_dkim_privkey {
    EVP_PKEY *pkey;
    enum ms_dkim_keytype type;
    unsigned refs; /* owner's thread only (ms_dkim.h) */
};

const char *const ms_dkim_default_headers[] = {
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "list-unsubscribe-post",
    NULL,
};

/* Largest key file we read. */
#define KEY_FILE_MAX (64 * 1024)
/* Largest DKIM-Signature field we write. */
#define SIG_FIELD_MAX (16 * 1024)

/* ------------------------------------------------------------------------
 * Keys
 * ------------------------------------------------------------------------ */

static int key_parse(const char *data, size_t len, ms_dkim_privkey **out, const char **why,
                     int min_rsa_bits)
{
    EVP_PKEY *pk = NULL;
    const char *dummy;

    if (why == NULL)
        why = &dummy;
    *out = NULL;
    if (len > KEY_FILE_MAX) {
        *why = "key file too large";
        return MS_ECONFIG;
    }
    if (memmem(data, len, "-----BEGIN", 10) != NULL) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);

        if (bio == NULL)
            return MS_ENOMEM;
        pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
        if (pk == NULL) {
            *why = "cannot parse PEM private key";
            return MS_ECONFIG;
        }
    } else {
        /* A bare base64 Ed25519 seed (RFC 8463 §A.1, dkimpy key files). */
        uint8_t seed[48];
        int n = ms_dkim_base64_decode(data, len, seed, sizeof(seed));

        if (n != 32) {
            *why = "not a PEM key nor a base64 Ed25519 seed";
            return MS_ECONFIG;
        }
        pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
        memset(seed, 0, sizeof(seed));
        if (pk == NULL) {
            *why = "bad Ed25519 seed";
            return MS_ECONFIG;
        }
    }
    switch (EVP_PKEY_get_base_id(pk)) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(pk) < min_rsa_bits) {
            *why = "RSA key too small for signing";
            EVP_PKEY_free(pk);
            return MS_ECONFIG;
        }
        if (EVP_PKEY_get_bits(pk) > MS_DKIM_RSA_BITS_MAX) {
            *why = "RSA key too large";
            EVP_PKEY_free(pk);
            return MS_ECONFIG;
        }
        *out = ms_calloc(1, sizeof(**out));
        (*out)->type = MS_DKIM_KEY_RSA;
        break;
    case EVP_PKEY_ED25519:
        *out = ms_calloc(1, sizeof(**out));
        (*out)->type = MS_DKIM_KEY_ED25519;
        break;
    default:
        *why = "unsupported key type (RSA or Ed25519 only)";
        EVP_PKEY_free(pk);
        return MS_ECONFIG;
    }
    (*out)->pkey = pk;
    (*out)->refs = 1;
    return 0;
}

int ms_dkim_key_parse(const char *data, size_t len, ms_dkim_privkey **out, const char **why)
{
    return key_parse(data, len, out, why, MS_DKIM_SIGN_RSA_BITS_MIN);
}

int ms_dkim_key_parse_weak(const char *data, size_t len, ms_dkim_privkey **out, const char **why)
{
    return key_parse(data, len, out, why, MS_DKIM_RSA_BITS_MIN);
}

int ms_dkim_key_load(const char *path, ms_dkim_privkey **out, const char **why)
{
    char *buf = ms_malloc(KEY_FILE_MAX + 1);
    size_t n;
    FILE *f;
    int rc;

    *out = NULL;
    if ((f = fopen(path, "rb")) == NULL) {
        if (why != NULL)
            *why = "cannot open key file";
        free(buf);
        return MS_EIO;
    }
    n = fread(buf, 1, KEY_FILE_MAX + 1, f);
    rc = ferror(f) ? MS_EIO : 0;
    fclose(f);
    if (rc == 0)
        rc = key_parse(buf, n, out, why, MS_DKIM_SIGN_RSA_BITS_MIN);
    else if (why != NULL)
        *why = "cannot read key file";
    OPENSSL_cleanse(buf, KEY_FILE_MAX + 1);
    free(buf);
    return rc;
}

ms_dkim_privkey *ms_dkim_key_ref(ms_dkim_privkey *k)
{
    k->refs++;
    return k;
}

void ms_dkim_key_free(ms_dkim_privkey *k)
{
    if (k == NULL || --k->refs > 0)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

enum ms_dkim_keytype ms_dkim_key_type(const ms_dkim_privkey *k)
{
    return k->type;
}

static char *b64(const uint8_t *p, size_t n)
{
    char *s = ms_malloc(4 * ((n + 2) / 3) + 1);

    EVP_EncodeBlock((unsigned char *)s, p, (int)n);
    return s;
}

int ms_dkim_key_record(const ms_dkim_privkey *k, char **out)
{
    unsigned char *der = NULL;
    uint8_t raw[32];
    size_t rl = sizeof(raw);
    char *p;
    int n;

    if (k->type == MS_DKIM_KEY_ED25519) {
        if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &rl) != 1 || rl != 32)
            return MS_EIO;
        p = b64(raw, rl);
        *out = ms_asprintf("v=DKIM1; k=ed25519; p=%s", p);
    } else {
        if ((n = i2d_PUBKEY(k->pkey, &der)) <= 0)
            return MS_EIO;
        p = b64(der, (size_t)n);
        OPENSSL_free(der);
        *out = ms_asprintf("v=DKIM1; k=rsa; p=%s", p);
    }
    free(p);
    return 0;
}

/* ------------------------------------------------------------------------
 * Folding writer: tokens go on the current line while it stays within
 * MS_DKIM_LINE_MAX, else on a new line starting with one SP.
 * ------------------------------------------------------------------------ */

struct fold {
    struct ms_buf b;
    size_t col;
    int rc;
};

static void fold_tok(struct fold *w, const char *tok, size_t n, int space)
{
    size_t need = n + (space ? 1 : 0);
    int rc;

    if (w->col > 1 && w->col + need > MS_DKIM_LINE_MAX) {
        rc = ms_buf_append(&w->b, "\r\n ", 3);
        w->col = 1;
    } else if (space) {
        rc = ms_buf_append(&w->b, " ", 1);
        w->col++;
    } else {
        rc = 0;
    }
    if (rc == 0)
        rc = ms_buf_append(&w->b, tok, n);
    w->col += n;
    if (rc < 0)
        w->rc = rc;
}

static void fold_str(struct fold *w, const char *s)
{
    fold_tok(w, s, strlen(s), 1);
}

/* "i=...;" with the identity in dkim-quoted-printable (§2.11): '=', ';'
 * and every octet that is not a dkim-safe-char become "=XX".  The tag is
 * one token when it fits on a line, so that a verifier which does not
 * decode i= still sees it whole; a longer one is folded between encoded
 * units, which §2.11 allows anywhere but inside an "=XX". */
static void fold_identity(struct fold *w, const char *id)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(id), m = 2, k;
    char *enc = ms_malloc(2 + 3 * n + 2);

    memcpy(enc, "i=", 2);
    for (k = 0; k < n; k++) {
        unsigned char c = (unsigned char)id[k];

        if (c < 0x21 || c > 0x7e || c == ';' || c == '=') {
            enc[m++] = '=';
            enc[m++] = hex[c >> 4];
            enc[m++] = hex[c & 15];
        } else {
            enc[m++] = (char)c;
        }
    }
    enc[m++] = ';';
    enc[m] = '\0';
    if (1 + m <= MS_DKIM_LINE_MAX) { /* a continuation line starts with SP */
        fold_tok(w, enc, m, 1);
    } else {
        fold_tok(w, enc, 2, 1);
        for (k = 2; k < m;) {
            size_t u = enc[k] == '=' ? 3 : 1;

            if (k + u == m - 1)
                u++; /* the ';' stays with the last unit */
            fold_tok(w, enc + k, u, 0);
            k += u;
        }
    }
    free(enc);
}

/* ------------------------------------------------------------------------
 * Signing
 * ------------------------------------------------------------------------ */

static void emit_digest(void *ctx, const void *p, size_t n)
{
    EVP_DigestUpdate(ctx, p, n);
}

/* d= and s= as our parser accepts them (letters, digits, '-', '_', '.'). */
static int value_ok(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > MS_DNS_NAME_MAX)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* i= as our verifier will read it back after decoding. */
static int identity_ok(const char *identity, const char *domain)
{
    return strlen(identity) <= MS_DKIM_IDENTITY_MAX && ms_dkim_identity_ok(identity, domain);
}

static int sign_digest(const ms_dkim_privkey *k, const uint8_t digest[32], uint8_t *sig,
                       size_t *siglen)
{
    int ok = 0;

    if (k->type == MS_DKIM_KEY_ED25519) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();

        if (md != NULL && EVP_DigestSignInit(md, NULL, NULL, NULL, k->pkey) == 1)
            ok = EVP_DigestSign(md, sig, siglen, digest, 32) == 1;
        EVP_MD_CTX_free(md);
    } else {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k->pkey, NULL);

        if (c != NULL && EVP_PKEY_sign_init(c) == 1 &&
            EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
            EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1)
            ok = EVP_PKEY_sign(c, sig, siglen, digest, 32) == 1;
        EVP_PKEY_CTX_free(c);
    }
    return ok ? 0 : MS_EIO;
}

static int signer_ok(const struct ms_dkim_signer *sg)
{
    return sg->key != NULL && value_ok(sg->domain) && value_ok(sg->selector) &&
           (sg->identity == NULL || identity_ok(sg->identity, sg->domain));
}

/* What every signer of one message shares: the header fields, split once,
 * and the body hash, computed once per body canonicalisation (the whole
 * body is always hashed: l= only reports its length).  With RSA and
 * Ed25519 at once the body is hashed once, not twice; at ~50 instructions
 * a byte that is most of an Ed25519 signature's cost. */
struct sign_prep {
    struct ms_dkim_hdr *hdrs;
    int n;
    size_t body_off;
    int have_bh[MS_DKIM_RELAXED + 1];
    uint8_t bh[MS_DKIM_RELAXED + 1][32];
    uint64_t body_total[MS_DKIM_RELAXED + 1];
};

static int prep_init(struct sign_prep *pp, const char *msg, size_t len)
{
    memset(pp, 0, sizeof(*pp));
    /* Not zeroed: the split fills the first n entries, and nothing reads
     * past them (zeroing the 1,000 cost ~24 k instructions a signature). */
    pp->hdrs = ms_malloc(MS_DKIM_HEADERS_MAX * sizeof(*pp->hdrs));
    pp->n = ms_dkim_headers_split(msg, len, pp->hdrs, MS_DKIM_HEADERS_MAX, &pp->body_off);
    return pp->n < 0 ? pp->n : 0;
}

static void prep_free(struct sign_prep *pp)
{
    free(pp->hdrs);
}

/* The body hash of canonicalisation bc (§3.7), computed on first use. */
static int prep_body_hash(struct sign_prep *pp, const char *msg, size_t len,
                          enum ms_dkim_canon bc, EVP_MD_CTX *md)
{
    struct ms_dkim_body body;
    unsigned int dl = 0;

    if (pp->have_bh[bc])
        return 0;
    if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL))
        return MS_EIO;
    ms_dkim_body_init(&body, bc, -1, emit_digest, md);
    ms_dkim_body_update(&body, msg + pp->body_off, len - pp->body_off);
    ms_dkim_body_final(&body);
    if (!EVP_DigestFinal_ex(md, pp->bh[bc], &dl) || dl != 32)
        return MS_EIO;
    pp->body_total[bc] = body.total;
    pp->have_bh[bc] = 1;
    return 0;
}

static int sign_one(const char *msg, size_t len, const struct ms_dkim_signer *sg, int64_t now,
                    struct sign_prep *pp, char **header_out)
{
    enum ms_dkim_canon hc = sg->hcanon ? sg->hcanon : MS_DKIM_RELAXED;
    enum ms_dkim_canon bc = sg->bcanon ? sg->bcanon : MS_DKIM_RELAXED;
    const char *const *list = sg->headers ? sg->headers : ms_dkim_default_headers;
    const char *names[MS_DKIM_H_MAX];
    const struct ms_dkim_hdr *hdrs = pp->hdrs;
    int n = pp->n;
    struct fold w;
    EVP_MD_CTX *md = NULL;
    uint8_t hh[32], sig[MS_DKIM_SIG_BYTES_MAX];
    size_t nh = 0, siglen = sizeof(sig), from = 0;
    unsigned int dl = 0;
    char tmp[128], *s;
    int rc;

    *header_out = NULL;
    ms_buf_init(&w.b, SIG_FIELD_MAX);
    w.col = 0;
    w.rc = 0;

    /* h=: every listed field present, as often as it occurs; From once
     * more, so that a From added in transit breaks the signature. */
    for (size_t k = 0; list[k] != NULL; k++) {
        size_t cnt = 0, l = strlen(list[k]);
        int is_from = strcasecmp(list[k], "from") == 0;

        if (l == 0 || l > MS_DKIM_HNAME_MAX) {
            rc = MS_EINVAL;
            goto out;
        }
        for (int j = 0; j < n; j++)
            if (hdrs[j].name_len == l && strncasecmp(msg + hdrs[j].off, list[k], l) == 0)
                cnt++;
        if (is_from) {
            from = cnt;
            if (cnt > 0)
                cnt++;
        }
        for (size_t j = 0; j < cnt; j++) {
            if (nh == MS_DKIM_H_MAX) {
                rc = MS_ETOOBIG;
                goto out;
            }
            names[nh++] = list[k];
        }
    }
    if (from == 0) {
        rc = MS_EINVAL; /* From is mandatory in h= (§5.4) */
        goto out;
    }

    /* Body hash. */
    md = EVP_MD_CTX_new();
    if (md == NULL) {
        rc = MS_EIO;
        goto out;
    }
    if ((rc = prep_body_hash(pp, msg, len, bc, md)) < 0)
        goto out;

    /* The field up to "b=". */
    fold_tok(&w, "DKIM-Signature:", 15, 0);
    fold_str(&w, "v=1;");
    fold_str(&w, sg->key->type == MS_DKIM_KEY_ED25519 ? "a=ed25519-sha256;" : "a=rsa-sha256;");
    snprintf(tmp, sizeof(tmp), "c=%s/%s;", hc == MS_DKIM_SIMPLE ? "simple" : "relaxed",
             bc == MS_DKIM_SIMPLE ? "simple" : "relaxed");
    fold_str(&w, tmp);
    s = ms_asprintf("d=%s;", sg->domain);
    fold_str(&w, s);
    free(s);
    s = ms_asprintf("s=%s;", sg->selector);
    fold_str(&w, s);
    free(s);
    snprintf(tmp, sizeof(tmp), "t=%lld;", (long long)now);
    fold_str(&w, tmp);
    if (sg->expire_after > 0) {
        snprintf(tmp, sizeof(tmp), "x=%lld;", (long long)(now + sg->expire_after));
        fold_str(&w, tmp);
    }
    if (sg->identity != NULL)
        fold_identity(&w, sg->identity);
    if (sg->body_length) {
        snprintf(tmp, sizeof(tmp), "l=%llu;", (unsigned long long)pp->body_total[bc]);
        fold_str(&w, tmp);
    }
    for (size_t k = 0; k < nh; k++) {
        s = ms_asprintf("%s%s%s", k == 0 ? "h=" : ":", names[k], k + 1 == nh ? ";" : "");
        fold_tok(&w, s, strlen(s), k == 0);
        free(s);
    }
    s = b64(pp->bh[bc], sizeof(pp->bh[bc]));
    {
        char *t = ms_asprintf("bh=%s;", s);

        fold_str(&w, t);
        free(t);
    }
    free(s);
    fold_str(&w, "b=");
    if (w.rc < 0) {
        rc = w.rc;
        goto out;
    }

    /* Header hash and signature (§3.7, RFC 8463 §3). */
    if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        rc = MS_EIO;
        goto out;
    }
    rc = ms_dkim_header_data(msg, hdrs, (size_t)n, hc, names, nh, w.b.data, w.b.len, emit_digest,
                             md);
    if (rc < 0)
        goto out;
    if (!EVP_DigestFinal_ex(md, hh, &dl) || dl != 32 ||
        sign_digest(sg->key, hh, sig, &siglen) < 0) {
        rc = MS_EIO;
        goto out;
    }

    /* b= value, folded in pieces that fill each line. */
    s = b64(sig, siglen);
    for (size_t off = 0, sl = strlen(s); off < sl;) {
        size_t room = w.col < MS_DKIM_LINE_MAX ? MS_DKIM_LINE_MAX - w.col : 0;
        size_t take;

        if (room < 8) {
            if (ms_buf_append(&w.b, "\r\n ", 3) < 0)
                w.rc = MS_ETOOBIG;
            w.col = 1;
            room = MS_DKIM_LINE_MAX - 1;
        }
        take = sl - off < room ? sl - off : room;
        if (ms_buf_append(&w.b, s + off, take) < 0)
            w.rc = MS_ETOOBIG;
        w.col += take;
        off += take;
    }
    free(s);
    if (ms_buf_append(&w.b, "\r\n", 3) < 0) /* with the NUL */
        w.rc = MS_ETOOBIG;
    if (w.rc < 0) {
        rc = w.rc;
        goto out;
    }
    *header_out = ms_buf_steal(&w.b, NULL);
    rc = 0;
out:
    ms_buf_free(&w.b);
    EVP_MD_CTX_free(md);
    return rc;
}

int ms_dkim_sign(const char *msg, size_t len, const struct ms_dkim_signer *sg, int64_t now,
                 char **header_out)
{
    struct sign_prep pp;
    int rc;

    *header_out = NULL;
    if (!signer_ok(sg))
        return MS_EINVAL;
    if ((rc = prep_init(&pp, msg, len)) == 0)
        rc = sign_one(msg, len, sg, now, &pp, header_out);
    prep_free(&pp);
    return rc;
}

int ms_dkim_sign_all(const char *msg, size_t len, const struct ms_dkim_signer *signers, size_t n,
                     int64_t now, char **headers_out)
{
    struct sign_prep pp;
    struct ms_buf all;
    int rc = 0;

    *headers_out = NULL;
    if (n == 0 || n > MS_DKIM_SIGNERS_MAX)
        return MS_EINVAL;
    for (size_t k = 0; k < n; k++)
        if (!signer_ok(&signers[k]))
            return MS_EINVAL;
    if ((rc = prep_init(&pp, msg, len)) < 0) {
        prep_free(&pp);
        return rc;
    }
    ms_buf_init(&all, MS_DKIM_SIGNERS_MAX * SIG_FIELD_MAX + 1);
    for (size_t k = 0; k < n && rc == 0; k++) {
        char *h = NULL;

        if ((rc = sign_one(msg, len, &signers[k], now, &pp, &h)) == 0)
            rc = ms_buf_append(&all, h, strlen(h) + (k + 1 == n ? 1 : 0));
        free(h);
    }
    if (rc == 0)
        *headers_out = ms_buf_steal(&all, NULL);
    ms_buf_free(&all);
    prep_free(&pp);
    return rc;
}
