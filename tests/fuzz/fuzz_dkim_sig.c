/*
 * fuzz_dkim_sig.c - libFuzzer driver for the DKIM-Signature parser
 * (lib/mail/ms_dkim_parse.c): the tag-list grammar and the checks of
 * ms_dkim_sig_parse(), then the invariants a verifier relies on; the
 * dkim-quoted-printable decoder of i= on the raw input; and the whole
 * verifier on a message carrying the input as its DKIM-Signature, with a
 * fixed Ed25519 key record served (b= removal, header selection).  The
 * key is RFC 8463's: the encoded_i_* seeds are signatures it verifies.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_dkim.h"
#include "ms_error.h"
#include "ms_mem.h"

static void verify_once(const char *s, size_t size)
{
    static const char head[] = "DKIM-Signature:";
    static const char tail[] = "\r\nFrom: a@example.com\r\nSubject: x\r\n\r\nbody  \r\n\r\n";
    static const char key[] = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    size_t len = sizeof(head) - 1 + size + sizeof(tail) - 1;
    char *msg = ms_malloc(len);
    struct ms_dns_query q;
    struct ms_dns_rr rr = {.type = MS_DNS_TXT, .u.txt = {key, sizeof(key) - 1}};
    struct ms_dns_result r = {.status = MS_DNS_OK, .n = 1, .rr = &rr};
    ms_dkim_verify *v;
    int steps = 0;

    memcpy(msg, head, sizeof(head) - 1);
    memcpy(msg + sizeof(head) - 1, s, size);
    memcpy(msg + sizeof(head) - 1 + size, tail, sizeof(tail) - 1);
    v = ms_dkim_verify_new(msg, len, 1700000000);
    while (ms_dkim_verify_step(v, &q) == MS_DKIM_NEED_DNS) {
        if (++steps > MS_DKIM_SIGS_MAX || q.type != MS_DNS_TXT)
            abort();
        ms_dkim_verify_answer(v, &r);
    }
    for (size_t k = 0; k < ms_dkim_verify_count(v); k++) {
        const struct ms_dkim_sigresult *res = ms_dkim_verify_sig(v, k);

        if (res->result == MS_DKIM_NONE || res->reason == NULL || res->d == NULL)
            abort();
    }
    ms_dkim_verify_free(v);
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ms_dkim_sig sig;
    struct ms_dkim_tag tags[MS_DKIM_TAGS_MAX];
    const char *s = (const char *)data, *why = NULL;
    int n, rc;

    n = ms_dkim_taglist_parse(s, size, tags, MS_DKIM_TAGS_MAX, &why);
    if (n < 0 && why == NULL)
        abort();
    for (int k = 0; k < n; k++) {
        if (tags[k].vstart > tags[k].vend || tags[k].vend > size)
            abort();
        if (tags[k].value < s + tags[k].vstart ||
            tags[k].value + tags[k].value_len > s + tags[k].vend)
            abort();
    }
    rc = ms_dkim_sig_parse(s, size, &sig, &why);
    if (rc == 0) {
        /* What the verifier relies on after a successful parse. */
        if (sig.d[0] == '\0' || sig.s[0] == '\0' || sig.nh == 0 || sig.b_len == 0 ||
            sig.bh_len == 0 || sig.b_vstart > sig.b_vend || sig.b_vend > size ||
            strchr(sig.i, '@') == NULL || strlen(sig.i) > MS_DKIM_IDENTITY_MAX ||
            !ms_dkim_identity_ok(sig.i, sig.d))
            abort();
        if (sig.t >= 0 && sig.x >= 0 && sig.x < sig.t)
            abort();
    } else if (why == NULL || (rc != MS_EPROTO && rc != MS_ETOOBIG)) {
        abort();
    }
    {
        char out[MS_DKIM_IDENTITY_MAX];

        /* Never more octets than it read, nor than it was given room for. */
        rc = ms_dkim_qp_decode(s, size, out, sizeof(out));
        if (rc > (int)sizeof(out) || (size_t)(rc > 0 ? rc : 0) > size ||
            (rc < 0 && rc != MS_EPROTO && rc != MS_ETOOBIG))
            abort();
    }
    verify_once(s, size);
    return 0;
}
