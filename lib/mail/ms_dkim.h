/*
 * ms_dkim.h - DKIM signatures: verification and signing (RFC 6376, with
 * RFC 8301 algorithm and key-size rules and RFC 8463 Ed25519-SHA256).
 *
 * Three layers, each usable alone:
 *
 *  1. Pure parsers (ms_dkim_parse.c): the tag-list grammar (§3.2), the
 *     DKIM-Signature field (§3.5), the key record (§3.6.1), an RFC 5322
 *     header-field splitter and the simple/relaxed canonicalizations (§3.4),
 *     the body one streamable.  They take (buf, len), allocate only through
 *     ms_buf, never call OpenSSL, the clock or the network, and are fuzzed
 *     (tests/fuzz/fuzz_dkim_*.c).
 *
 *  2. The verifier (ms_dkim_verify.c), a pull-style state machine following
 *     ms_dns.h: it never resolves anything and never reads the clock.
 *
 *         v = ms_dkim_verify_new(msg, len, now);
 *         while (ms_dkim_verify_step(v, &q) == MS_DKIM_NEED_DNS)
 *             ms_dkim_verify_answer(v, resolve(&q));   // TXT q.name
 *         for (i = 0; i < ms_dkim_verify_count(v); i++)
 *             ms_dkim_verify_sig(v, i) ...
 *         ms_dkim_verify_free(v);
 *
 *     Every DKIM-Signature field of the message (up to MS_DKIM_SIGS_MAX) gets
 *     one result.  The message must use CRLF line ends; a caller holding an
 *     LF-only message converts it first.  The verifier keeps a pointer to
 *     msg: it must stay valid until ms_dkim_verify_free().
 *
 *  3. The signer (ms_dkim_sign.c): private keys are loaded from PEM files
 *     (RSA of MS_DKIM_SIGN_RSA_BITS_MIN bits or more, or Ed25519) and a
 *     message gets one DKIM-Signature field per configured signer.
 *
 * Ownership: results and parsed structures are owned by whoever owns the
 * verifier or passed the struct in; strings returned through `char **` are
 * allocated with ms_malloc and freed by the caller with free().
 *
 * Threads: no global state; a verifier, a key cache (with the verifiers
 * borrowing it), a key or a parsed struct may be used by one thread at a
 * time.  Loaded private keys are read-only after loading and may be shared
 * between threads for signing (ms_dkim_sign() makes its own OpenSSL
 * contexts per call); their reference count is not atomic:
 * ms_dkim_key_ref() and ms_dkim_key_free() of one key stay on one thread
 * (the worker's loop), never on a signing thread.
 *
 * Errors: functions returning int follow ms_error.h (0 or a count on success,
 * a negative MS_E* code on failure); parsers also give a short static reason
 * string.  DKIM outcomes (pass, fail, permerror, ...) are *results*, not
 * errors: they are reported per signature by the verifier.
 */
#ifndef MS_DKIM_H
#define MS_DKIM_H

#include <stddef.h>
#include <stdint.h>

#include "ms_buf.h"
#include "ms_dns.h"

/* ------------------------------------------------------------------------
 * Named limits.  Input past a limit is refused (permerror for a signature,
 * MS_ETOOBIG from a parser), never silently truncated.
 * ------------------------------------------------------------------------ */

/* DKIM-Signature fields evaluated per message; further ones are reported as
 * permerror "too many signatures". */
#define MS_DKIM_SIGS_MAX 16
/* Header fields in a message we verify or sign. */
#define MS_DKIM_HEADERS_MAX 1000
/* Length of one tag list: a DKIM-Signature field value or a key record. */
#define MS_DKIM_TAGLIST_MAX 8192
/* Tags in one tag list. */
#define MS_DKIM_TAGS_MAX 64
/* Header field names listed in h=. */
#define MS_DKIM_H_MAX 128
/* Length of one header field name. */
#define MS_DKIM_HNAME_MAX 128
/* Longest selector, and longest i= (local-part @ domain, decoded). */
#define MS_DKIM_SELECTOR_MAX 63
#define MS_DKIM_IDENTITY_MAX 320
/* Decoded signature (b=) and public key (p=) sizes: enough for 8192-bit RSA. */
#define MS_DKIM_SIG_BYTES_MAX 1024
#define MS_DKIM_PUBKEY_BYTES_MAX 1100
/* RSA key sizes: verifiers refuse keys under 1024 bits (RFC 8301 §3.2) and
 * over 8192 (cost); our signer uses 2048 bits or more. */
#define MS_DKIM_RSA_BITS_MIN 1024
#define MS_DKIM_RSA_BITS_MAX 8192
#define MS_DKIM_SIGN_RSA_BITS_MIN 2048
/* Seconds a t= may lie in the future before the signature is refused. */
#define MS_DKIM_CLOCK_SKEW 300
/* Largest canonicalized header field we hash (the rest of a message is
 * bounded by the caller's message size limit). */
#define MS_DKIM_FIELD_MAX (1024 * 1024)
/* Signers given to ms_dkim_sign_all(). */
#define MS_DKIM_SIGNERS_MAX 8
/* Line length of the DKIM-Signature fields we write (RFC 5322 §2.1.1). */
#define MS_DKIM_LINE_MAX 78
/* Characters of b= kept for header.b in Authentication-Results (RFC 6008
 * asks for at least 8). */
#define MS_DKIM_BPREFIX_LEN 12

/* ------------------------------------------------------------------------
 * Enumerations
 * ------------------------------------------------------------------------ */

enum ms_dkim_result {
    MS_DKIM_NONE = 0, /* not evaluated (never returned for a signature) */
    MS_DKIM_PASS,
    MS_DKIM_FAIL,      /* signature or body hash does not verify, key too weak, rsa-sha1 */
    MS_DKIM_NEUTRAL,   /* not used by this verifier; kept for Authentication-Results */
    MS_DKIM_TEMPERROR, /* DNS failure: retry later */
    MS_DKIM_PERMERROR, /* malformed signature or key, no key, revoked key, expired */
    MS_DKIM_POLICY,    /* verifies, but not acceptable: l= shorter than the body */
};

enum ms_dkim_alg {
    MS_DKIM_ALG_UNKNOWN = 0,
    MS_DKIM_RSA_SHA256,
    MS_DKIM_ED25519_SHA256,
    MS_DKIM_RSA_SHA1, /* recognised only to be refused (RFC 8301 §3.1) */
};

enum ms_dkim_canon {
    MS_DKIM_CANON_DEFAULT = 0, /* signer: relaxed; in a signature: simple (c= absent) */
    MS_DKIM_SIMPLE,
    MS_DKIM_RELAXED,
};

enum ms_dkim_keytype {
    MS_DKIM_KEY_RSA = 1,
    MS_DKIM_KEY_ED25519,
};

/* "pass", "fail", ... as written in Authentication-Results (RFC 8601 §2.7.1). */
const char *ms_dkim_result_name(enum ms_dkim_result r);
/* "rsa-sha256", "ed25519-sha256", "rsa-sha1" or "unknown". */
const char *ms_dkim_alg_name(enum ms_dkim_alg a);

/* ------------------------------------------------------------------------
 * Pure parsers
 * ------------------------------------------------------------------------ */

/* One tag of a tag list: name and value point into the parsed text.  The
 * value excludes the FWS around it but keeps FWS inside it.  vstart..vend
 * is the whole stretch between '=' and ';' (or the end), surrounding FWS
 * included: that is what "the value of b=" means when a verifier empties it
 * (RFC 6376 §3.7). */
struct ms_dkim_tag {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
    size_t vstart, vend; /* offsets into the parsed text */
};

/* Parse a tag list (RFC 6376 §3.2).  Fills up to `max` tags and returns
 * their number, or MS_EPROTO (syntax, duplicate tag) or MS_ETOOBIG (longer
 * than MS_DKIM_TAGLIST_MAX or more than `max` tags) with *why set. */
int ms_dkim_taglist_parse(const char *s, size_t len, struct ms_dkim_tag *tags, size_t max,
                          const char **why);

/* A parsed DKIM-Signature field value. */
struct ms_dkim_sig {
    enum ms_dkim_alg alg;
    char a[32]; /* a= as written (for reports), maybe truncated */
    enum ms_dkim_canon hcanon, bcanon;
    char d[MS_DNS_NAME_MAX + 1]; /* lower-cased */
    char s[MS_DKIM_SELECTOR_MAX + 1];
    char i[MS_DKIM_IDENTITY_MAX + 1]; /* decoded (§2.11); "@d" when i= is absent (§3.5) */
    uint8_t b[MS_DKIM_SIG_BYTES_MAX];
    size_t b_len;
    uint8_t bh[64];
    size_t bh_len;
    char b_prefix[MS_DKIM_BPREFIX_LEN + 1]; /* header.b for Authentication-Results */
    size_t nh;                              /* h= entries, in order, duplicates kept */
    char h[MS_DKIM_H_MAX][MS_DKIM_HNAME_MAX + 1];
    int64_t l;               /* -1: absent */
    int64_t t, x;            /* -1: absent */
    size_t b_vstart, b_vend; /* where b='s value lies in the parsed text */
};

/* Parse and check a DKIM-Signature field value (after "DKIM-Signature:").
 * Checks syntax, duplicates, required tags (v a b bh d h s), v=1, c=, q=
 * (must offer dns/txt), numeric l/t/x, x >= t, From in h=, and i=: it is
 * decoded as dkim-quoted-printable first (§3.5), then must pass
 * ms_dkim_identity_ok(); a malformed encoding is an error.  z= (copied
 * header fields, for diagnostics only) is not read.  An unknown a= parses
 * (alg UNKNOWN) so the caller can report it.  Returns 0, or MS_EPROTO /
 * MS_ETOOBIG with *why set; on error the fields parsed so far (d=, s=, a=,
 * b=) are left in *sig for the report. */
int ms_dkim_sig_parse(const char *s, size_t len, struct ms_dkim_sig *sig, const char **why);

/* Decode dkim-quoted-printable (RFC 6376 §2.11), the encoding of i= and z=:
 * FWS is removed, "=XX" (two upper-case hex digits) is the octet XX, and
 * any other octet must be a dkim-safe-char.  Writes the decoded octets to
 * out (at most max, no NUL added) and returns their number; MS_EPROTO for a
 * malformed encoding ("=" without two upper-case hex digits after it, a
 * soft line break, ';', a control or 8-bit octet, CR or LF outside FWS) or
 * MS_ETOOBIG when more than max octets would result. */
int ms_dkim_qp_decode(const char *s, size_t len, char *out, size_t max);

/* Is the decoded AUID i usable with SDID d (RFC 6376 §3.5 i=)?  It must
 * hold no control octet, an "@", and after the last "@" a domain name
 * equal to d or a subdomain of it (case-insensitively).  The local-part is
 * the signer's business and is not checked further.  1 or 0. */
int ms_dkim_identity_ok(const char *i, const char *d);

/* A parsed key record (RFC 6376 §3.6.1). */
struct ms_dkim_keyrec {
    enum ms_dkim_keytype k; /* k= (default rsa); unknown k= is an error */
    uint8_t p[MS_DKIM_PUBKEY_BYTES_MAX];
    size_t p_len; /* 0: key revoked (p= empty) */
    int h_sha256; /* h= absent or lists sha256 */
    int s_email;  /* s= absent, "*" or lists "email" */
    int testing;  /* t=y */
    int strict;   /* t=s: i= domain must equal d= */
};

/* Parse a key record.  Unknown tags are ignored; v= must be first and
 * exactly DKIM1 when present; k= must be rsa or ed25519; p= is required.
 * Returns 0, or MS_EPROTO / MS_ETOOBIG with *why set. */
int ms_dkim_keyrec_parse(const char *s, size_t len, struct ms_dkim_keyrec *key, const char **why);

/* One header field of a message: field[0..len) without its final CRLF;
 * name_len covers the name without WSP before the colon. */
struct ms_dkim_hdr {
    size_t off, len;
    size_t name_len;
};

/* Split the header section of a CRLF message into fields (RFC 5322 §2.2,
 * folded lines joined).  Fills up to `max` fields, returns their number and
 * sets *body_off to the first body octet (len when there is no body).
 * MS_EPROTO: a line that is neither a field nor a continuation (no colon,
 * empty name, or a continuation first); MS_ETOOBIG: more than `max` fields
 * or a field longer than MS_DKIM_FIELD_MAX. */
int ms_dkim_headers_split(const char *msg, size_t len, struct ms_dkim_hdr *out, size_t max,
                          size_t *body_off);

/* Canonicalize one header field (without its final CRLF) and append it,
 * without a CRLF, to `out` (RFC 6376 §3.4.1, §3.4.2).  MS_ETOOBIG when
 * `out` is full. */
int ms_dkim_canon_header(enum ms_dkim_canon c, const char *field, size_t len, struct ms_buf *out);

/* Streaming body canonicalizer (§3.4.3, §3.4.4) with an optional length
 * limit (l=, §3.5).  Feed the body in pieces of any size, cut anywhere
 * (inside a CRLF or a WSP run too); canonical octets go to `emit` (only the
 * first `limit` of them when limit >= 0).  Runs of the input that are
 * already canonical (most of a body) are passed to `emit` in one call,
 * pointing into the caller's piece, so `emit` must not keep the pointer
 * past the call.  The struct is plain data the caller embeds. */
struct ms_dkim_body {
    enum ms_dkim_canon c;
    int64_t limit;        /* -1: whole body */
    uint64_t total;       /* canonical body length seen so far */
    uint64_t emitted;     /* octets passed to emit */
    uint64_t empty_lines; /* deferred empty lines */
    int cr, wsp, line;    /* pending CR, pending WSP (relaxed), line has content */
    void (*emit)(void *ctx, const void *p, size_t n);
    void *ctx;
};

void ms_dkim_body_init(struct ms_dkim_body *b, enum ms_dkim_canon c, int64_t limit,
                       void (*emit)(void *ctx, const void *p, size_t n), void *ctx);
void ms_dkim_body_update(struct ms_dkim_body *b, const char *p, size_t n);
/* End of body.  Afterwards b->total is the canonical body length. */
void ms_dkim_body_final(struct ms_dkim_body *b);

/* The header half of the signed data (§3.7): the fields named in `names`
 * (each taking the bottom-most instance not yet used, §5.4.2; a name with
 * no instance left adds nothing), each canonicalized and followed by CRLF,
 * then `sigfield` (the whole DKIM-Signature field with the b= value
 * emptied) canonicalized without CRLF.  Everything goes to `emit`.
 * MS_ETOOBIG for a field over MS_DKIM_FIELD_MAX or nhdr over
 * MS_DKIM_HEADERS_MAX; MS_EPROTO for a field without a colon. */
int ms_dkim_header_data(const char *msg, const struct ms_dkim_hdr *hdrs, size_t nhdr,
                        enum ms_dkim_canon c, const char *const *names, size_t nnames,
                        const char *sigfield, size_t siglen,
                        void (*emit)(void *ctx, const void *p, size_t n), void *ctx);

/* Base64 decoding that skips FWS (as b=, bh= and p= allow).  Returns the
 * decoded length or MS_EPROTO (bad character or padding) / MS_ETOOBIG. */
int ms_dkim_base64_decode(const char *s, size_t len, uint8_t *out, size_t max);

/* ------------------------------------------------------------------------
 * Verifier
 * ------------------------------------------------------------------------ */

typedef struct ms_dkim_verify ms_dkim_verify;

enum {
    MS_DKIM_DONE = 0,
    MS_DKIM_NEED_DNS = 1,
};

/* Per-signature result.  Strings live as long as the verifier. */
struct ms_dkim_sigresult {
    enum ms_dkim_result result;
    const char *reason;        /* short, for logs and A-R comments; "" on pass */
    const char *d, *s, *a, *i; /* "" when the signature did not parse that far */
    const char *b_prefix;      /* header.b value (RFC 6008) */
    enum ms_dkim_alg alg;
    int key_bits;      /* 0 when no key was loaded */
    int testing;       /* key record has t=y */
    int64_t l;         /* -1: no l= */
    uint64_t body_len; /* canonical body length (known once hashed) */
};

/* Start verifying a message (CRLF line ends) at time `now` (seconds since
 * the epoch, used for t= and x=).  Never fails: a malformed message gives
 * per-signature permerrors.  Keeps a pointer to msg. */
ms_dkim_verify *ms_dkim_verify_new(const char *msg, size_t len, int64_t now);
/* Advance.  Returns MS_DKIM_NEED_DNS with *q filled (a TXT query) when the
 * caller must resolve something and call ms_dkim_verify_answer() before the
 * next step, or MS_DKIM_DONE when every signature has a result; MS_EINVAL
 * when called while an answer is outstanding.  One query at a time, in
 * signature order; the CPU work (hashing, signature checks) happens inside
 * ms_dkim_verify_answer(), and a body hash is computed once per distinct
 * (body canonicalization, l=) pair. */
int ms_dkim_verify_step(ms_dkim_verify *v, struct ms_dns_query *q);
/* Answer the query returned by the last step.  r is only read during the
 * call.  MS_EINVAL when no query is outstanding. */
int ms_dkim_verify_answer(ms_dkim_verify *v, const struct ms_dns_result *r);
/* Results, valid after MS_DKIM_DONE. */
size_t ms_dkim_verify_count(const ms_dkim_verify *v);
const struct ms_dkim_sigresult *ms_dkim_verify_sig(const ms_dkim_verify *v, size_t i);
void ms_dkim_verify_free(ms_dkim_verify *v);

/* ------------------------------------------------------------------------
 * Decoded public keys, kept across messages
 *
 * Turning p= into an OpenSSL key (d2i_PUBKEY: a DER decode through
 * OpenSSL 3's decoder machinery) costs far more than the RSA check it
 * serves, and an MX sees the same few keys over and over.  A key cache
 * maps the exact bytes of a key record's decoded p= (and its k=) to the
 * key built from them, so each distinct key is decoded once while it stays
 * in the cache.
 *
 * Keyed by content, not by name: a record that changes (a rotated or
 * revoked key) has different bytes and is a different entry, so nothing is
 * ever served stale and no DNS TTL is kept; a record that no longer occurs
 * simply ages out.  Everything else of the record (t=, h=, s=, revocation)
 * is re-read from each answer, and the verifier still applies every key
 * rule (size, type) to every signature.  A p= that does not decode is not
 * cached (each occurrence is decoded, and refused, again).
 *
 * Bounded: at most `max` keys (MS_DKIM_KEYCACHE_MAX by default); when full,
 * the least recently used one is dropped.  Pure: no I/O, no clock.
 *
 * Ownership: the cache is made and freed by its user (the worker's
 * mail-authentication stage keeps one: worker/mailauth.c); a verifier only
 * borrows it, and the cache must outlive every verifier given it.  Keys in
 * it are reference-counted, so dropping an entry never invalidates a key a
 * verifier is using.
 *
 * Threads: a cache, and the verifiers using it, belong to one thread (the
 * worker's loop thread); there is no locking.
 * ------------------------------------------------------------------------ */

/* Default and largest number of keys in a cache: a few hundred sending
 * domains' keys cover most of an MX's traffic, and an entry (key object
 * plus the p= bytes) is a few KiB for RSA-2048. */
#define MS_DKIM_KEYCACHE_MAX 512
#define MS_DKIM_KEYCACHE_LIMIT 65536

typedef struct ms_dkim_keycache ms_dkim_keycache;

struct ms_dkim_keycache_stats {
    uint64_t hits;      /* keys served without decoding */
    uint64_t misses;    /* keys decoded (and cached when usable) */
    uint64_t evictions; /* entries dropped because the cache was full */
    uint64_t bad;       /* p= that did not decode (never cached) */
    size_t entries;
};

/* A cache of at most `max` keys (0: MS_DKIM_KEYCACHE_MAX; more than
 * MS_DKIM_KEYCACHE_LIMIT is cut to it).  Never fails (allocation failure
 * aborts, as everywhere). */
ms_dkim_keycache *ms_dkim_keycache_new(size_t max);
void ms_dkim_keycache_stats(const ms_dkim_keycache *c, struct ms_dkim_keycache_stats *out);
/* Frees every entry (keys still held by a verifier live on until it is
 * freed). */
void ms_dkim_keycache_free(ms_dkim_keycache *c);
/* Let verifier v take its keys from c (NULL: decode every key, the default).
 * Call before the first ms_dkim_verify_answer(). */
void ms_dkim_verify_use_keycache(ms_dkim_verify *v, ms_dkim_keycache *c);

/* ------------------------------------------------------------------------
 * Signer
 * ------------------------------------------------------------------------ */

typedef struct ms_dkim_privkey ms_dkim_privkey;

/* Load a private key: a PEM file (PKCS#8 or traditional RSA; RSA needs at
 * least MS_DKIM_SIGN_RSA_BITS_MIN bits, Ed25519 any) or a file holding only
 * a base64 32-byte Ed25519 seed (the RFC 8463 / dkimpy form).  MS_EIO: cannot
 * read; MS_ECONFIG: not a usable key (with a reason in *why when non-NULL). */
int ms_dkim_key_load(const char *path, ms_dkim_privkey **out, const char **why);
int ms_dkim_key_parse(const char *data, size_t len, ms_dkim_privkey **out, const char **why);
/* The same, without the signing size floor: for tests that must reproduce
 * 1024-bit vectors.  Never use it for real keys. */
int ms_dkim_key_parse_weak(const char *data, size_t len, ms_dkim_privkey **out, const char **why);
/* A loaded key starts with one reference; ms_dkim_key_ref() adds one (and
 * returns k), ms_dkim_key_free() drops one and frees the key with the last.
 * This lets a signature still being computed keep the key that a reload
 * replaced.  Not atomic: see Threads above. */
ms_dkim_privkey *ms_dkim_key_ref(ms_dkim_privkey *k);
void ms_dkim_key_free(ms_dkim_privkey *k);
enum ms_dkim_keytype ms_dkim_key_type(const ms_dkim_privkey *k);
/* The key record to publish ("v=DKIM1; k=...; p=...") in a new string. */
int ms_dkim_key_record(const ms_dkim_privkey *k, char **out);

struct ms_dkim_signer {
    const char *domain;   /* d= */
    const char *selector; /* s= */
    const ms_dkim_privkey *key;
    enum ms_dkim_canon hcanon, bcanon; /* DEFAULT = relaxed */
    const char *const *headers;        /* NULL-terminated names to sign; NULL: the default list */
    const char *identity;              /* i=, optional, as ms_dkim_identity_ok() wants;
                                          written dkim-quoted-printable (§2.11) */
    int64_t expire_after;              /* > 0: x= now + expire_after */
    int body_length;                   /* emit l= (discouraged: see §8.2) */
};

/* The default signed-header list (NULL-terminated).  Each name present is
 * signed as often as it occurs; From once more (oversigned) so that a From
 * added later breaks the signature. */
extern const char *const ms_dkim_default_headers[];

/* Sign a CRLF message.  *header_out gets one complete DKIM-Signature field,
 * folded to MS_DKIM_LINE_MAX, ending in CRLF, to prepend to the message.
 * MS_EINVAL: no From field, bad signer; MS_EPROTO: malformed header section;
 * MS_ETOOBIG: a limit; MS_EIO: OpenSSL failure. */
int ms_dkim_sign(const char *msg, size_t len, const struct ms_dkim_signer *signer, int64_t now,
                 char **header_out);
/* Sign with several signers at once (for example RSA and Ed25519); the
 * fields are concatenated in signer order.  None covers another. */
int ms_dkim_sign_all(const char *msg, size_t len, const struct ms_dkim_signer *signers, size_t n,
                     int64_t now, char **headers_out);

#endif
