/*
 * dkim_tool.c - a tiny test driver for lib/mail/ms_dkim (used by
 * tests/integration/test_dkim_interop.py; not the operator tool of issue 5).
 *
 *   dkim_tool sign   --time T [--canon h/b] --key FILE --domain D --selector S
 *                    [--key FILE --domain D --selector S ...] < msg
 *       prints the DKIM-Signature field(s) to prepend
 *   dkim_tool verify --time T [--dns NAME=RECORD ...] [--tempfail NAME] < msg
 *       prints one line per signature: "RESULT d=D s=S a=A reason=..."
 *   dkim_tool record --key FILE
 *       prints the key record to publish
 *   dkim_tool bodyhash [--canon simple|relaxed] [--chunk N] [--repeat R]
 *                      [--gen text|base64 --size N] [< body]
 *       prints "bh=BASE64 len=N": the body hash (SHA-256) of the body
 *       canonicalizer alone, fed in pieces of N octets (default: whole),
 *       R times over; the body is stdin (as it is, no line-end conversion)
 *       or one generated from a fixed seed: "text" (wrapped prose with
 *       paragraphs, a signature separator) or "base64" (a short text part
 *       and an attachment).  For instruction counts under callgrind
 *       (--toggle-collect=ms_dkim_body_*).
 *
 * Messages are read as they are: LF-only input is converted to CRLF.
 * Unknown DNS names are NXDOMAIN.  Exit status: 0 ok, 1 usage or error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "ms_base64.h"
#include "ms_dkim.h"
#include "ms_error.h"
#include "ms_mem.h"

#define MAX_DNS 32
#define MSG_MAX (64 * 1024 * 1024)

static char *read_stdin_crlf(size_t *len)
{
    size_t cap = 1 << 16, n = 0, m = 0;
    char *raw = ms_malloc(cap), *out;
    size_t r;

    while ((r = fread(raw + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) {
            if (cap >= MSG_MAX) {
                fprintf(stderr, "message too large\n");
                exit(1);
            }
            cap *= 2;
            raw = ms_realloc(raw, cap);
        }
    }
    out = ms_malloc(2 * n + 1);
    for (size_t k = 0; k < n; k++) {
        if (raw[k] == '\n' && (k == 0 || raw[k - 1] != '\r'))
            out[m++] = '\r';
        out[m++] = raw[k];
    }
    free(raw);
    *len = m;
    return out;
}

static int usage(void)
{
    fprintf(stderr, "usage: dkim_tool sign|verify|record|bodyhash [options] < message\n");
    return 1;
}

static int cmd_sign(int argc, char **argv)
{
    struct ms_dkim_signer sg[MS_DKIM_SIGNERS_MAX];
    size_t n = 0, len;
    int64_t now = 0;
    enum ms_dkim_canon hc = MS_DKIM_RELAXED, bc = MS_DKIM_RELAXED;
    char *msg, *out;
    int rc;

    memset(sg, 0, sizeof(sg));
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--time") == 0) {
            now = strtoll(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--canon") == 0) {
            hc = strncmp(argv[i + 1], "simple", 6) == 0 ? MS_DKIM_SIMPLE : MS_DKIM_RELAXED;
            bc = strstr(argv[i + 1], "/simple") ? MS_DKIM_SIMPLE : MS_DKIM_RELAXED;
        } else if (strcmp(argv[i], "--key") == 0) {
            const char *why = "";
            ms_dkim_privkey *k;

            if (n == MS_DKIM_SIGNERS_MAX)
                return usage();
            if ((rc = ms_dkim_key_load(argv[i + 1], &k, &why)) < 0) {
                fprintf(stderr, "%s: %s\n", argv[i + 1], why);
                return 1;
            }
            sg[n++].key = k;
        } else if (strcmp(argv[i], "--domain") == 0 && n > 0) {
            sg[n - 1].domain = argv[i + 1];
        } else if (strcmp(argv[i], "--selector") == 0 && n > 0) {
            sg[n - 1].selector = argv[i + 1];
        } else {
            return usage();
        }
    }
    if (n == 0)
        return usage();
    for (size_t k = 0; k < n; k++) {
        sg[k].hcanon = hc;
        sg[k].bcanon = bc;
    }
    msg = read_stdin_crlf(&len);
    rc = ms_dkim_sign_all(msg, len, sg, n, now, &out);
    if (rc < 0) {
        fprintf(stderr, "sign: %s\n", ms_strerror(rc));
        return 1;
    }
    fputs(out, stdout);
    free(out);
    free(msg);
    for (size_t k = 0; k < n; k++)
        ms_dkim_key_free((ms_dkim_privkey *)sg[k].key);
    return 0;
}

static int cmd_verify(int argc, char **argv)
{
    const char *names[MAX_DNS], *recs[MAX_DNS];
    enum ms_dns_status st[MAX_DNS];
    size_t nd = 0, len;
    int64_t now = 0;
    struct ms_dns_query q;
    ms_dkim_verify *v;
    char *msg;

    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--time") == 0) {
            now = strtoll(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--dns") == 0 && nd < MAX_DNS) {
            char *eq = strchr(argv[i + 1], '=');

            if (eq == NULL)
                return usage();
            *eq = '\0';
            names[nd] = argv[i + 1];
            recs[nd] = eq + 1;
            st[nd++] = MS_DNS_OK;
        } else if (strcmp(argv[i], "--tempfail") == 0 && nd < MAX_DNS) {
            names[nd] = argv[i + 1];
            recs[nd] = NULL;
            st[nd++] = MS_DNS_TEMPFAIL;
        } else {
            return usage();
        }
    }
    msg = read_stdin_crlf(&len);
    v = ms_dkim_verify_new(msg, len, now);
    while (ms_dkim_verify_step(v, &q) == MS_DKIM_NEED_DNS) {
        struct ms_dns_result r = {.status = MS_DNS_NXDOMAIN};
        struct ms_dns_rr rr;

        for (size_t k = 0; k < nd; k++) {
            if (strcasecmp(names[k], q.name) != 0)
                continue;
            r.status = st[k];
            if (recs[k] != NULL) {
                rr.type = MS_DNS_TXT;
                rr.u.txt.data = recs[k];
                rr.u.txt.len = strlen(recs[k]);
                r.n = 1;
                r.rr = &rr;
            }
            break;
        }
        ms_dkim_verify_answer(v, &r);
    }
    for (size_t k = 0; k < ms_dkim_verify_count(v); k++) {
        const struct ms_dkim_sigresult *r = ms_dkim_verify_sig(v, k);

        printf("%s d=%s s=%s a=%s header.b=%s reason=%s\n", ms_dkim_result_name(r->result), r->d,
               r->s, r->a, r->b_prefix, r->reason);
    }
    ms_dkim_verify_free(v);
    free(msg);
    return 0;
}

static int cmd_record(int argc, char **argv)
{
    ms_dkim_privkey *k;
    const char *why = "";
    char *rec;

    if (argc != 4 || strcmp(argv[2], "--key") != 0)
        return usage();
    if (ms_dkim_key_load(argv[3], &k, &why) < 0) {
        fprintf(stderr, "%s: %s\n", argv[3], why);
        return 1;
    }
    if (ms_dkim_key_record(k, &rec) < 0)
        return 1;
    printf("%s\n", rec);
    free(rec);
    ms_dkim_key_free(k);
    return 0;
}

/* xorshift64: the generated bodies are the same on every run. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Prose wrapped at 72 columns in paragraphs of 3-9 lines separated by an
 * empty line, words of 1-10 letters, a sentence end now and then; a
 * "-- " signature separator (trailing WSP) and two lines at the end. */
static char *gen_text(size_t size, size_t *len)
{
    char *out = ms_malloc(size + 256);
    size_t n = 0, col = 0, lines = 0, para = 5;
    uint64_t s = 0x9e3779b97f4a7c15u;

    while (n < size) {
        size_t w = 1 + rnd(&s) % 10;

        if (col > 0 && col + 1 + w > 72) {
            memcpy(out + n, "\r\n", 2);
            n += 2;
            col = 0;
            if (++lines == para) {
                memcpy(out + n, "\r\n", 2);
                n += 2;
                lines = 0;
                para = 3 + rnd(&s) % 7;
            }
            continue;
        }
        if (col > 0)
            out[n++] = ' ', col++;
        for (size_t k = 0; k < w; k++)
            out[n++] = (char)('a' + rnd(&s) % 26);
        col += w;
        if (rnd(&s) % 12 == 0)
            out[n++] = rnd(&s) % 3 ? '.' : ',', col++;
    }
    memcpy(out + n, "\r\n-- \r\nA Sender\r\n", 17);
    *len = n + 17;
    return out;
}

/* A multipart body: a short text part, then base64 lines of 76 until
 * `size`, then the closing boundary. */
static char *gen_base64(size_t size, size_t *len)
{
    static const char head[] = "--b1\r\nContent-Type: text/plain\r\n\r\nSee the attached file.\r\n"
                               "\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
                               "Content-Transfer-Encoding: base64\r\n\r\n";
    char *out = ms_malloc(size + 256);
    size_t n = sizeof(head) - 1;
    uint64_t s = 0x2545f4914f6cdd1du;

    memcpy(out, head, n);
    while (n < size) {
        uint8_t raw[57];

        for (size_t k = 0; k < sizeof(raw); k++)
            raw[k] = (uint8_t)rnd(&s);
        n += ms_base64_encode(raw, sizeof(raw), out + n, 77);
        memcpy(out + n, "\r\n", 2);
        n += 2;
    }
    memcpy(out + n, "--b1--\r\n", 8);
    *len = n + 8;
    return out;
}

static void emit_md(void *ctx, const void *p, size_t n)
{
    EVP_DigestUpdate(ctx, p, n);
}

static int cmd_bodyhash(int argc, char **argv)
{
    enum ms_dkim_canon c = MS_DKIM_RELAXED;
    size_t chunk = 0, size = 0, len = 0;
    long repeat = 1;
    const char *gen = NULL;
    uint8_t bh[32];
    char b64[64];
    unsigned int dl = 0;
    uint64_t total = 0;
    char *body;

    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--canon") == 0)
            c = strcmp(argv[i + 1], "simple") == 0 ? MS_DKIM_SIMPLE : MS_DKIM_RELAXED;
        else if (strcmp(argv[i], "--chunk") == 0)
            chunk = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--repeat") == 0)
            repeat = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--gen") == 0)
            gen = argv[i + 1];
        else if (strcmp(argv[i], "--size") == 0)
            size = strtoul(argv[i + 1], NULL, 10);
        else
            return usage();
    }
    if (gen == NULL) {
        size_t cap = 1 << 16, r;

        body = ms_malloc(cap);
        while ((r = fread(body + len, 1, cap - len, stdin)) > 0)
            if ((len += r) == cap)
                body = ms_realloc(body, cap *= 2);
    } else if (strcmp(gen, "text") == 0) {
        body = gen_text(size, &len);
    } else if (strcmp(gen, "base64") == 0) {
        body = gen_base64(size, &len);
    } else {
        return usage();
    }
    if (chunk == 0)
        chunk = len > 0 ? len : 1;
    for (long r = 0; r < repeat; r++) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        struct ms_dkim_body b;

        if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
            return 1;
        ms_dkim_body_init(&b, c, -1, emit_md, md);
        for (size_t off = 0; off < len; off += chunk)
            ms_dkim_body_update(&b, body + off, len - off < chunk ? len - off : chunk);
        ms_dkim_body_final(&b);
        if (EVP_DigestFinal_ex(md, bh, &dl) != 1 || dl != 32)
            return 1;
        EVP_MD_CTX_free(md);
        total = b.total;
    }
    ms_base64_encode(bh, 32, b64, sizeof(b64));
    printf("bh=%s len=%llu in=%zu\n", b64, (unsigned long long)total, len);
    free(body);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "sign") == 0)
        return cmd_sign(argc, argv);
    if (strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc, argv);
    if (strcmp(argv[1], "record") == 0)
        return cmd_record(argc, argv);
    if (strcmp(argv[1], "bodyhash") == 0)
        return cmd_bodyhash(argc, argv);
    return usage();
}
