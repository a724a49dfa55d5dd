/*
 * fuzz_dkim_key.c - libFuzzer driver for the DKIM key-record parser
 * (lib/mail/ms_dkim_parse.c, ms_dkim_keyrec_parse) and the FWS-tolerant
 * base64 decoder it uses for p=; then the input served as the key record of
 * a message signed with rsa-sha256 and ed25519-sha256, verified once
 * without and once through a small key cache kept across inputs
 * (lib/mail/ms_dkim_verify.c): the results must be the same, whatever the
 * cache holds (hits, evictions, keys that do not decode).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_dkim.h"
#include "ms_error.h"

/* Small, so that inputs keep evicting each other. */
#define FUZZ_KEYCACHE_MAX 3

static ms_dkim_verify *verify(const char *rec, size_t len, ms_dkim_keycache *c)
{
    /* bh= is wrong on purpose: the key is decoded and judged before the
     * body hash is compared. */
    static const char msg[] =
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s; h=from; "
        "bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\n"
        "DKIM-Signature: v=1; a=ed25519-sha256; d=example.com; s=s; h=from; "
        "bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\n"
        "From: a@example.com\r\n\r\nbody\r\n";
    struct ms_dns_rr rr = {.type = MS_DNS_TXT, .u.txt = {rec, len}};
    struct ms_dns_result r = {.status = MS_DNS_OK, .n = 1, .rr = &rr};
    struct ms_dns_query q;
    ms_dkim_verify *v = ms_dkim_verify_new(msg, sizeof(msg) - 1, 1700000000);
    int steps = 0;

    ms_dkim_verify_use_keycache(v, c);
    while (ms_dkim_verify_step(v, &q) == MS_DKIM_NEED_DNS) {
        if (++steps > 2)
            abort();
        ms_dkim_verify_answer(v, &r);
    }
    return v;
}

static void differential(const char *rec, size_t len)
{
    static ms_dkim_keycache *cache;
    ms_dkim_verify *a, *b;

    if (cache == NULL)
        cache = ms_dkim_keycache_new(FUZZ_KEYCACHE_MAX);
    a = verify(rec, len, NULL);
    b = verify(rec, len, cache);
    if (ms_dkim_verify_count(a) != 2 || ms_dkim_verify_count(b) != 2)
        abort();
    for (size_t k = 0; k < 2; k++) {
        const struct ms_dkim_sigresult *x = ms_dkim_verify_sig(a, k), *y = ms_dkim_verify_sig(b, k);

        if (x->result != y->result || strcmp(x->reason, y->reason) != 0 ||
            x->key_bits != y->key_bits || x->testing != y->testing ||
            x->result == MS_DKIM_PASS)
            abort();
    }
    ms_dkim_verify_free(a);
    ms_dkim_verify_free(b);
    {
        struct ms_dkim_keycache_stats st;

        ms_dkim_keycache_stats(cache, &st);
        if (st.entries > FUZZ_KEYCACHE_MAX)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_dkim_keyrec key;
    uint8_t out[64];
    const char *why = NULL;
    int rc;

    rc = ms_dkim_keyrec_parse((const char *)data, size, &key, &why);
    if (rc == 0) {
        if (key.p_len > sizeof(key.p) || (key.k != MS_DKIM_KEY_RSA && key.k != MS_DKIM_KEY_ED25519))
            abort();
    } else if (why == NULL || (rc != MS_EPROTO && rc != MS_ETOOBIG)) {
        abort();
    }
    rc = ms_dkim_base64_decode((const char *)data, size, out, sizeof(out));
    if (rc > (int)sizeof(out))
        abort();
    differential((const char *)data, size);
    return 0;
}
