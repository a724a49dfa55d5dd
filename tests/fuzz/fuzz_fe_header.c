/*
 * fuzz_fe_header.c - libFuzzer driver for the header section parser
 * (frontend/fe_header.c) and, through it, the address parser
 * (lib/mail/ms_addrlist.c).  The first byte picks a split point and small
 * limits; the rest is the message.  Invariants: the error, and without
 * one the facts and the judgement, are the same whatever the chunking, nothing past the section's
 * end is taken, the section is never longer than its limit unless refused
 * for it, and the From kept parses as it did inside the parser.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ms_addrlist.h"
#include "../../frontend/fe_header.h"

static void run(const char *buf, size_t size, size_t step, const struct fe_hdr_limits *lim,
                struct fe_hdr *h)
{
    size_t at = 0, n, took;

    fe_hdr_init(h, lim);
    while (at < size && !h->done) {
        n = size - at < step ? size - at : step;
        took = fe_hdr_feed(h, buf + at, n);
        if (took > n || (!h->done && took != n))
            __builtin_trap();
        at += took;
    }
    if (h->done && fe_hdr_feed(h, buf, size) != 0)
        __builtin_trap();
    fe_hdr_finish(h);
    if (!h->done || h->section_len > size)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct fe_format_rules all = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct fe_hdr_limits lim;
    struct fe_hdr a, b;
    enum fe_hdr_field fa, fb;
    const char *msg;
    size_t step;

    if (size < 1)
        return 0;
    /* Low bits: the step; high bits: small limits now and then. */
    step = (size_t)(data[0] & 0x1f) + 1;
    lim.section_max = data[0] & 0x20 ? 200 : 0;
    lim.fields_max = data[0] & 0x40 ? 5 : 0;
    lim.field_max = data[0] & 0x80 ? 40 : 0;
    msg = (const char *)data + 1;
    size--;
    run(msg, size, step, &lim, &a);
    run(msg, size, size + 1, &lim, &b);
    /* After an error the facts are partial (the parse stopped); the error
     * itself does not depend on the chunking. */
    if (a.error != b.error)
        __builtin_trap();
    if (a.error == FE_FMT_OK &&
        (a.malformed != b.malformed || a.eightbit != b.eightbit ||
        a.section_len != b.section_len || a.nfields != b.nfields || a.bad_addr != b.bad_addr ||
        memcmp(a.counts, b.counts, sizeof(a.counts)) != 0 ||
        fe_hdr_judge(&a, &all, 0, 0, &fa) != fe_hdr_judge(&b, &all, 0, 0, &fb) || fa != fb ||
         a.from.len != b.from.len ||
         (a.from.len > 0 && memcmp(a.from.data, b.from.data, a.from.len) != 0)))
        __builtin_trap();
    if (lim.section_max && a.section_len > lim.section_max && a.error != FE_FMT_HEADER_SIZE)
        __builtin_trap();
    /* The kept From is the one the parser judged. */
    if (a.counts[FE_HF_FROM] == 1 && a.error == FE_FMT_OK &&
        (a.bad_addr == FE_HF_COUNT || a.bad_addr == FE_HF_FROM) &&
        (ms_addrlist_parse(a.from.data, a.from.len, MS_ADDR_MAILBOX_LIST, NULL, NULL) < 0) !=
            (a.bad_addr == FE_HF_FROM))
        __builtin_trap();
    fe_hdr_free(&a);
    fe_hdr_free(&b);
    return 0;
}
