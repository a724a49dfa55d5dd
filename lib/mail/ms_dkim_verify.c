/*
 * ms_dkim_verify.c - DKIM verification (RFC 6376 §6, RFC 8301, RFC 8463)
 * as a pull-style state machine: see ms_dkim.h and ms_dns.h.
 *
 * Each signature goes: parsed and checked (§6.1.1) -> key query (§6.1.2)
 * -> body hash, header hash and signature check (§6.1.3) -> result.  The
 * only OpenSSL calls of the verifier live in this file.
 */
#include "ms_dkim.h"
#include "ms_addr.h"
#include "ms_error.h"
#include "ms_list.h"
#include "ms_mem.h"

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum vs_state {
    VS_DONE = 0,
    VS_NEED_KEY,
};

struct vsig {
    struct ms_dkim_sigresult r;
    struct ms_dkim_sig sig;
    size_t field; /* index of its DKIM-Signature field */
    enum vs_state state;
    char reason[160];
};

/* Body hashes already computed: signatures sharing c= body and l= share
 * one pass over the body. */
struct bodyhash {
    enum ms_dkim_canon c;
    int64_t l;
    uint8_t digest[32];
    uint64_t total;
};

struct ms_dkim_verify {
    struct bodyhash bodies[MS_DKIM_SIGS_MAX];
    size_t nbodies;
    const char *msg;
    size_t len;
    int64_t now;
    struct ms_dkim_hdr *hdrs;
    size_t nhdr, body_off;
    struct vsig *sigs;
    size_t nsigs;
    size_t cur; /* signature whose query is outstanding */
    int waiting;
    ms_dkim_keycache *keys; /* borrowed; NULL: decode every key */
};

static void vs_set(struct vsig *vs, enum ms_dkim_result res, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void vs_set(struct vsig *vs, enum ms_dkim_result res, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(vs->reason, sizeof(vs->reason), fmt, ap);
    va_end(ap);
    vs->r.result = res;
    vs->r.reason = vs->reason;
    vs->state = VS_DONE;
}

/* The next result slot.  Slots are not zeroed in bulk (a struct
 * ms_dkim_sig is ~17 KiB, mostly h= names, and ms_dkim_sig_parse() clears
 * it first): only what a result reads is set here, and the parsed
 * signature too when no parse will follow (clear_sig). */
static struct vsig *vs_next(struct ms_dkim_verify *v, int clear_sig)
{
    struct vsig *vs = &v->sigs[v->nsigs++];

    memset(&vs->r, 0, sizeof(vs->r));
    vs->field = 0;
    vs->state = VS_DONE;
    vs->reason[0] = '\0';
    if (clear_sig)
        memset(&vs->sig, 0, sizeof(vs->sig));
    return vs;
}

static int name_is(const char *msg, const struct ms_dkim_hdr *h, const char *name)
{
    size_t l = strlen(name);

    return h->name_len == l && strncasecmp(msg + h->off, name, l) == 0;
}

/* Checks that need no key (§6.1.1), in the order a reader expects. */
static void vs_precheck(struct ms_dkim_verify *v, struct vsig *vs)
{
    struct ms_dkim_sig *sig = &vs->sig;

    switch (sig->alg) {
    case MS_DKIM_RSA_SHA256:
    case MS_DKIM_ED25519_SHA256: break;
    case MS_DKIM_RSA_SHA1: vs_set(vs, MS_DKIM_FAIL, "rsa-sha1 is not accepted (RFC 8301)"); return;
    case MS_DKIM_ALG_UNKNOWN:
        vs_set(vs, MS_DKIM_PERMERROR, "unsupported algorithm a=%s", sig->a);
        return;
    }
    if (sig->bh_len != 32) {
        vs_set(vs, MS_DKIM_PERMERROR, "bh= is not a SHA-256 hash");
        return;
    }
    if (sig->t >= 0 && sig->t > v->now + MS_DKIM_CLOCK_SKEW) {
        vs_set(vs, MS_DKIM_PERMERROR, "t= in the future");
        return;
    }
    if (sig->x >= 0 && sig->x < v->now) {
        vs_set(vs, MS_DKIM_PERMERROR, "signature expired (x=)");
        return;
    }
    if (strlen(sig->s) + strlen("._domainkey.") + strlen(sig->d) > MS_DNS_NAME_MAX) {
        vs_set(vs, MS_DKIM_PERMERROR, "key name too long");
        return;
    }
    vs->state = VS_NEED_KEY;
}

ms_dkim_verify *ms_dkim_verify_new(const char *msg, size_t len, int64_t now)
{
    ms_dkim_verify *v = ms_calloc(1, sizeof(*v));
    int n;

    v->msg = msg;
    v->len = len;
    v->now = now;
    /* Only the first n entries are ever read: no need to zero 24 KiB. */
    v->hdrs = ms_malloc(MS_DKIM_HEADERS_MAX * sizeof(*v->hdrs));
    n = ms_dkim_headers_split(msg, len, v->hdrs, MS_DKIM_HEADERS_MAX, &v->body_off);
    if (n < 0) {
        v->sigs = ms_malloc(sizeof(*v->sigs));
        /* Without fields there is nothing to verify; still say so when the
         * message looks signed, so a broken message is not "unsigned". */
        const char *p = msg, *end = msg + len;
        size_t l = strlen("dkim-signature");

        for (; p + l <= end; p++) {
            if ((p == msg || p[-1] == '\n') && strncasecmp(p, "dkim-signature", l) == 0) {
                struct vsig *vs = vs_next(v, 1);

                vs->r.d = vs->r.s = vs->r.a = vs->r.i = vs->r.b_prefix = "";
                vs->r.l = -1;
                vs_set(vs, MS_DKIM_PERMERROR, "malformed header section (%s)",
                       n == MS_ETOOBIG ? "limit exceeded" : "syntax");
                break;
            }
            if (p + 1 < end && p[0] == '\n' &&
                (p[1] == '\n' || (p[1] == '\r' && p + 2 < end && p[2] == '\n')))
                break;
        }
        return v;
    }
    v->nhdr = (size_t)n;
    {
        size_t cnt = 0;

        for (size_t k = 0; k < v->nhdr; k++)
            cnt += name_is(msg, &v->hdrs[k], "dkim-signature");
        /* One slot more for the "too many signatures" result. */
        v->sigs =
            ms_malloc((cnt < MS_DKIM_SIGS_MAX ? cnt + 1 : MS_DKIM_SIGS_MAX + 1) * sizeof(*v->sigs));
    }
    for (size_t k = 0; k < v->nhdr; k++) {
        const struct ms_dkim_hdr *h = &v->hdrs[k];
        struct vsig *vs;
        const char *why = "";
        size_t voff;

        if (!name_is(msg, h, "dkim-signature"))
            continue;
        if (v->nsigs == MS_DKIM_SIGS_MAX) {
            vs = vs_next(v, 1);
            vs->r.d = vs->r.s = vs->r.a = vs->r.i = vs->r.b_prefix = "";
            vs->r.l = -1;
            vs->field = k;
            vs_set(vs, MS_DKIM_PERMERROR, "too many signatures (more than %d)", MS_DKIM_SIGS_MAX);
            break;
        }
        vs = vs_next(v, 0);
        vs->field = k;
        voff = (size_t)((const char *)memchr(msg + h->off, ':', h->len) - (msg + h->off)) + 1;
        n = ms_dkim_sig_parse(msg + h->off + voff, h->len - voff, &vs->sig, &why);
        vs->r.d = vs->sig.d;
        vs->r.s = vs->sig.s;
        vs->r.a = vs->sig.a;
        vs->r.i = vs->sig.i;
        vs->r.b_prefix = vs->sig.b_prefix;
        vs->r.alg = vs->sig.alg;
        vs->r.l = vs->sig.l;
        if (n < 0) {
            vs_set(vs, MS_DKIM_PERMERROR, "%s", why);
            continue;
        }
        vs_precheck(v, vs);
    }
    return v;
}

int ms_dkim_verify_step(ms_dkim_verify *v, struct ms_dns_query *q)
{
    if (v->waiting)
        return MS_EINVAL;
    for (size_t k = 0; k < v->nsigs; k++) {
        struct vsig *vs = &v->sigs[k];
        size_t sl, dl;

        if (vs->state != VS_NEED_KEY)
            continue;
        /* selector._domainkey.domain (§3.6.2.1); length checked in
         * vs_precheck(). */
        sl = strlen(vs->sig.s);
        dl = strlen(vs->sig.d);
        memcpy(q->name, vs->sig.s, sl);
        memcpy(q->name + sl, "._domainkey.", 12);
        memcpy(q->name + sl + 12, vs->sig.d, dl + 1);
        q->type = MS_DNS_TXT;
        v->cur = k;
        v->waiting = 1;
        return MS_DKIM_NEED_DNS;
    }
    return MS_DKIM_DONE;
}

/* ------------------------------------------------------------------------
 * Hashing and the signature check (§6.1.3)
 * ------------------------------------------------------------------------ */

/* The header canonicalizer emits a field at a time, and the body one
 * emits short pieces where the canonical form differs from the input (a
 * pending SP, a line end after trailing WSP, deferred empty lines) between
 * its verbatim runs; EVP_DigestUpdate() costs more per call than SHA-256
 * costs for a short piece, so pieces are gathered here first (a piece of
 * MS_DKIM_HASHBUF or more goes straight through).  Bytes in, the same
 * bytes out: the digest does not change. */
#define MS_DKIM_HASHBUF 2048

struct digest_sink {
    EVP_MD_CTX *md;
    size_t n;
    int err; /* an EVP_DigestUpdate() failed */
    uint8_t buf[MS_DKIM_HASHBUF];
};

static void sink_flush(struct digest_sink *d)
{
    if (d->n > 0 && EVP_DigestUpdate(d->md, d->buf, d->n) != 1)
        d->err = 1;
    d->n = 0;
}

static void emit_digest(void *ctx, const void *p, size_t n)
{
    struct digest_sink *d = ctx;

    if (n > sizeof(d->buf) - d->n) {
        sink_flush(d);
        if (n >= sizeof(d->buf)) {
            if (EVP_DigestUpdate(d->md, p, n) != 1)
                d->err = 1;
            return;
        }
    }
    memcpy(d->buf + d->n, p, n);
    d->n += n;
}

/* Start a SHA-256 through the sink; 0 on failure. */
static int sink_init(struct digest_sink *d, EVP_MD_CTX *md)
{
    d->md = md;
    d->n = 0;
    d->err = 0;
    return EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
}

/* Flush and finish into out[32]; 0 on failure. */
static int sink_final(struct digest_sink *d, uint8_t out[32])
{
    unsigned int dl = 0;

    sink_flush(d);
    return !d->err && EVP_DigestFinal_ex(d->md, out, &dl) == 1 && dl == 32;
}

/* Build the public key from p=: SubjectPublicKeyInfo or PKCS#1
 * RSAPublicKey for RSA (both are published in practice), the raw 32 octets
 * for Ed25519 (RFC 8463 §4). */
static EVP_PKEY *load_pubkey(const struct ms_dkim_keyrec *key)
{
    const unsigned char *p = key->p;
    EVP_PKEY *pk;

    if (key->k == MS_DKIM_KEY_ED25519) {
        if (key->p_len != 32)
            return NULL;
        return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, key->p, key->p_len);
    }
    pk = d2i_PUBKEY(NULL, &p, (long)key->p_len);
    if (pk != NULL) {
        if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA || p != key->p + key->p_len) {
            EVP_PKEY_free(pk);
            return NULL;
        }
        return pk;
    }
    p = key->p;
    pk = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, (long)key->p_len);
    if (pk != NULL && p != key->p + key->p_len) {
        EVP_PKEY_free(pk);
        return NULL;
    }
    return pk;
}

/* ------------------------------------------------------------------------
 * The key cache (ms_dkim.h): a chained hash table over the p= bytes for
 * lookups, and a list in order of use for eviction.
 * ------------------------------------------------------------------------ */

struct kc_entry {
    struct kc_entry *chain; /* next in the same bucket */
    struct ms_list lru;     /* on ms_dkim_keycache.lru, most recent first */
    uint64_t hash;
    enum ms_dkim_keytype k;
    EVP_PKEY *pk; /* one reference held by the cache */
    size_t p_len;
    uint8_t p[]; /* the decoded p= */
};

struct ms_dkim_keycache {
    struct kc_entry **buckets;
    size_t nbuckets; /* a power of two, >= max */
    size_t max;
    struct ms_list lru;
    struct ms_dkim_keycache_stats st;
};

/* FNV-1a over k= and p=: spreads the table; equality is still decided by
 * comparing the bytes. */
static uint64_t kc_hash(enum ms_dkim_keytype k, const uint8_t *p, size_t n)
{
    uint64_t h = UINT64_C(14695981039346656037) ^ (uint64_t)k;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

ms_dkim_keycache *ms_dkim_keycache_new(size_t max)
{
    ms_dkim_keycache *c = ms_calloc(1, sizeof(*c));

    if (max == 0)
        max = MS_DKIM_KEYCACHE_MAX;
    if (max > MS_DKIM_KEYCACHE_LIMIT)
        max = MS_DKIM_KEYCACHE_LIMIT;
    c->max = max;
    for (c->nbuckets = 1; c->nbuckets < max; c->nbuckets <<= 1)
        ;
    c->buckets = ms_calloc(c->nbuckets, sizeof(*c->buckets));
    ms_list_init(&c->lru);
    return c;
}

void ms_dkim_keycache_stats(const ms_dkim_keycache *c, struct ms_dkim_keycache_stats *out)
{
    *out = c->st;
}

static void kc_drop(ms_dkim_keycache *c, struct kc_entry *e)
{
    struct kc_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];

    while (*pp != e)
        pp = &(*pp)->chain;
    *pp = e->chain;
    ms_list_remove(&e->lru);
    EVP_PKEY_free(e->pk);
    free(e);
    c->st.entries--;
}

void ms_dkim_keycache_free(ms_dkim_keycache *c)
{
    struct ms_list *pos, *tmp;

    if (c == NULL)
        return;
    ms_list_foreach_safe(pos, tmp, &c->lru)
    {
        struct kc_entry *e = ms_list_entry(pos, struct kc_entry, lru);

        EVP_PKEY_free(e->pk);
        free(e);
    }
    free(c->buckets);
    free(c);
}

/* The key for this record: from the cache when its p= was seen before,
 * else decoded (and cached when usable).  The caller owns one reference
 * of the result (EVP_PKEY_free).  NULL: p= does not decode. */
static EVP_PKEY *kc_get(ms_dkim_keycache *c, const struct ms_dkim_keyrec *key)
{
    uint64_t h;
    struct kc_entry *e, **bucket;
    EVP_PKEY *pk;

    if (c == NULL)
        return load_pubkey(key);
    h = kc_hash(key->k, key->p, key->p_len);
    bucket = &c->buckets[h & (c->nbuckets - 1)];
    for (e = *bucket; e != NULL; e = e->chain) {
        if (e->hash == h && e->k == key->k && e->p_len == key->p_len &&
            memcmp(e->p, key->p, key->p_len) == 0) {
            c->st.hits++;
            ms_list_remove(&e->lru);
            ms_list_insert_head(&c->lru, &e->lru);
            EVP_PKEY_up_ref(e->pk);
            return e->pk;
        }
    }
    c->st.misses++;
    if ((pk = load_pubkey(key)) == NULL) {
        c->st.bad++;
        return NULL;
    }
    if (c->st.entries == c->max) {
        kc_drop(c, ms_list_entry(c->lru.prev, struct kc_entry, lru));
        c->st.evictions++;
    }
    e = ms_malloc(sizeof(*e) + key->p_len);
    e->hash = h;
    e->k = key->k;
    e->pk = pk;
    e->p_len = key->p_len;
    memcpy(e->p, key->p, key->p_len);
    e->chain = *bucket;
    *bucket = e;
    ms_list_insert_head(&c->lru, &e->lru);
    c->st.entries++;
    EVP_PKEY_up_ref(pk);
    return pk;
}

void ms_dkim_verify_use_keycache(ms_dkim_verify *v, ms_dkim_keycache *c)
{
    v->keys = c;
}

/* Verify the signature of a 32-octet digest: RSASSA-PKCS1-v1_5 with
 * SHA-256 (RFC 6376 §3.3.1), or PureEdDSA over the SHA-256 hash (RFC 8463
 * §3). */
static int pkey_verify(EVP_PKEY *pk, const uint8_t digest[32], const uint8_t *sig, size_t siglen)
{
    int ok = 0;

    if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_ED25519) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();

        if (md != NULL && EVP_DigestVerifyInit(md, NULL, NULL, NULL, pk) == 1)
            ok = EVP_DigestVerify(md, sig, siglen, digest, 32) == 1;
        EVP_MD_CTX_free(md);
    } else {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pk, NULL);

        if (c != NULL && EVP_PKEY_verify_init(c) == 1 &&
            EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
            EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1)
            ok = EVP_PKEY_verify(c, sig, siglen, digest, 32) == 1;
        EVP_PKEY_CTX_free(c);
    }
    return ok;
}

static void vs_check(struct ms_dkim_verify *v, struct vsig *vs, const struct ms_dkim_keyrec *key)
{
    const struct ms_dkim_sig *sig = &vs->sig;
    const struct ms_dkim_hdr *f = &v->hdrs[vs->field];
    struct ms_dkim_body body;
    struct digest_sink sink;
    EVP_MD_CTX *md = NULL;
    EVP_PKEY *pk = NULL;
    struct bodyhash *bh;
    uint8_t hh[32];
    size_t k;
    const char *names[MS_DKIM_H_MAX];
    char *field = NULL;
    size_t voff, flen;

    vs->r.testing = key->testing;
    if (key->p_len == 0) {
        vs_set(vs, MS_DKIM_PERMERROR, "key revoked");
        return;
    }
    if ((sig->alg == MS_DKIM_RSA_SHA256) != (key->k == MS_DKIM_KEY_RSA)) {
        vs_set(vs, MS_DKIM_PERMERROR, "key type k= does not match a=");
        return;
    }
    if (!key->h_sha256) {
        vs_set(vs, MS_DKIM_PERMERROR, "key h= excludes sha256");
        return;
    }
    if (!key->s_email) {
        vs_set(vs, MS_DKIM_PERMERROR, "key not for email (s=)");
        return;
    }
    if (key->strict) {
        const char *dom = ms_addr_domain(sig->i);

        if (dom == NULL || strcasecmp(dom, sig->d) != 0) {
            vs_set(vs, MS_DKIM_PERMERROR, "key t=s: i= domain must equal d=");
            return;
        }
    }
    if ((pk = kc_get(v->keys, key)) == NULL) {
        vs_set(vs, MS_DKIM_PERMERROR, "unusable public key p=");
        return;
    }
    vs->r.key_bits = EVP_PKEY_get_bits(pk);
    if (key->k == MS_DKIM_KEY_RSA && vs->r.key_bits < MS_DKIM_RSA_BITS_MIN) {
        vs_set(vs, MS_DKIM_FAIL, "RSA key too small (%d bits)", vs->r.key_bits);
        goto out;
    }
    if (key->k == MS_DKIM_KEY_RSA && vs->r.key_bits > MS_DKIM_RSA_BITS_MAX) {
        vs_set(vs, MS_DKIM_PERMERROR, "RSA key too large (%d bits)", vs->r.key_bits);
        goto out;
    }

    /* Body hash (§3.7, §6.1.3 steps 1-3). */
    md = EVP_MD_CTX_new();
    if (md == NULL) {
        vs_set(vs, MS_DKIM_TEMPERROR, "crypto failure");
        goto out;
    }
    for (bh = NULL, k = 0; k < v->nbodies && bh == NULL; k++)
        if (v->bodies[k].c == sig->bcanon && v->bodies[k].l == sig->l)
            bh = &v->bodies[k];
    if (bh == NULL) {
        bh = &v->bodies[v->nbodies]; /* at most one per signature */
        bh->c = sig->bcanon;
        bh->l = sig->l;
        if (!sink_init(&sink, md)) {
            vs_set(vs, MS_DKIM_TEMPERROR, "crypto failure");
            goto out;
        }
        ms_dkim_body_init(&body, sig->bcanon, sig->l, emit_digest, &sink);
        ms_dkim_body_update(&body, v->msg + v->body_off, v->len - v->body_off);
        ms_dkim_body_final(&body);
        bh->total = body.total;
        if (!sink_final(&sink, bh->digest)) {
            vs_set(vs, MS_DKIM_TEMPERROR, "crypto failure");
            goto out;
        }
        v->nbodies++;
    }
    vs->r.body_len = bh->total;
    if (sig->l >= 0 && (uint64_t)sig->l > bh->total) {
        vs_set(vs, MS_DKIM_FAIL, "l=%lld exceeds the body length %llu", (long long)sig->l,
               (unsigned long long)bh->total);
        goto out;
    }
    if (memcmp(bh->digest, sig->bh, 32) != 0) {
        vs_set(vs, MS_DKIM_FAIL, "body hash mismatch");
        goto out;
    }

    /* Header hash: the signed fields, then this field with b= emptied. */
    voff = (size_t)((const char *)memchr(v->msg + f->off, ':', f->len) - (v->msg + f->off)) + 1;
    flen = f->len - (sig->b_vend - sig->b_vstart);
    field = ms_malloc(flen);
    memcpy(field, v->msg + f->off, voff + sig->b_vstart);
    memcpy(field + voff + sig->b_vstart, v->msg + f->off + voff + sig->b_vend,
           f->len - voff - sig->b_vend);
    for (k = 0; k < sig->nh; k++)
        names[k] = sig->h[k];
    if (!sink_init(&sink, md) ||
        ms_dkim_header_data(v->msg, v->hdrs, v->nhdr, sig->hcanon, names, sig->nh, field, flen,
                            emit_digest, &sink) < 0 ||
        !sink_final(&sink, hh)) {
        vs_set(vs, MS_DKIM_PERMERROR, "header field too long");
        goto out;
    }
    if (!pkey_verify(pk, hh, sig->b, sig->b_len)) {
        vs_set(vs, MS_DKIM_FAIL, "signature did not verify");
        goto out;
    }
    if (sig->l >= 0 && (uint64_t)sig->l < bh->total) {
        /* Never let a partial body pass as signed (§8.2). */
        vs_set(vs, MS_DKIM_POLICY, "l=%lld covers only part of the %llu-octet body",
               (long long)sig->l, (unsigned long long)bh->total);
        goto out;
    }
    vs_set(vs, MS_DKIM_PASS, "%s", "");
out:
    free(field);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
}

int ms_dkim_verify_answer(ms_dkim_verify *v, const struct ms_dns_result *r)
{
    struct vsig *vs;
    struct ms_dkim_keyrec *key;
    const char *why = NULL;
    int found = 0;

    if (!v->waiting)
        return MS_EINVAL;
    v->waiting = 0;
    vs = &v->sigs[v->cur];
    switch (r->status) {
    case MS_DNS_OK: break;
    case MS_DNS_NXDOMAIN:
    case MS_DNS_NODATA: vs_set(vs, MS_DKIM_PERMERROR, "no key for signature"); return 0;
    case MS_DNS_TEMPFAIL: vs_set(vs, MS_DKIM_TEMPERROR, "key query failed"); return 0;
    case MS_DNS_BOGUS:
        vs_set(vs, MS_DKIM_TEMPERROR, "key query failed DNSSEC validation");
        return 0;
    }
    key = ms_malloc(sizeof(*key));
    /* §6.1.2: with several records, use the first that parses. */
    for (size_t k = 0; k < r->n && !found; k++) {
        const char *w = NULL;

        if (r->rr[k].type != MS_DNS_TXT)
            continue;
        if (ms_dkim_keyrec_parse(r->rr[k].u.txt.data, r->rr[k].u.txt.len, key, &w) == 0)
            found = 1;
        else if (why == NULL)
            why = w;
    }
    if (found)
        vs_check(v, vs, key);
    else if (why != NULL)
        vs_set(vs, MS_DKIM_PERMERROR, "bad key record: %s", why);
    else
        vs_set(vs, MS_DKIM_PERMERROR, "no key for signature");
    free(key);
    return 0;
}

size_t ms_dkim_verify_count(const ms_dkim_verify *v)
{
    return v->nsigs;
}

const struct ms_dkim_sigresult *ms_dkim_verify_sig(const ms_dkim_verify *v, size_t i)
{
    return i < v->nsigs ? &v->sigs[i].r : NULL;
}

void ms_dkim_verify_free(ms_dkim_verify *v)
{
    if (v == NULL)
        return;
    free(v->hdrs);
    free(v->sigs);
    free(v);
}
