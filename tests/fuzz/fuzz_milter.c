/* libFuzzer target: the milter reply parser (lib/mail/ms_milter.c) on a
 * stream of arbitrary packets, as the frontend's client reads it, with
 * every header edit and body replacement applied to a fixed message and
 * the result written out: nothing may be read or written out of bounds, a
 * packet is never longer than its input, and an edited message still ends
 * its header section with an empty line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_buf.h"
#include "ms_error.h"
#include "ms_milter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char msg[] = "Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n";
    const char *p = (const char *)data;
    size_t left = size;
    struct ms_milter_reply r;
    struct ms_milter_msg m;
    struct ms_buf out;
    int n, optneg = 1;

    ms_milter_msg_init(&m, msg, sizeof(msg) - 1, 4096);
    while (left > 0) {
        n = ms_milter_parse(p, left, optneg, &r);
        if (n == MS_EAGAIN || n == MS_EPROTO)
            break;
        if (n <= 4 || (size_t)n > left)
            abort();
        optneg = 0;
        switch (r.cmd) {
        case SMFIC_OPTNEG:
            (void)ms_milter_symlist(&r, MS_MILTER_EOM);
            break;
        case SMFIR_ADDHEADER:
            (void)ms_milter_msg_add(&m, r.name, r.namelen, r.value, r.valuelen);
            break;
        case SMFIR_INSHEADER:
            (void)ms_milter_msg_insert(&m, r.index, r.name, r.namelen, r.value, r.valuelen);
            break;
        case SMFIR_CHGHEADER:
            (void)ms_milter_msg_change(&m, r.index, r.name, r.namelen, r.value, r.valuelen);
            break;
        case SMFIR_REPLBODY:
            (void)ms_milter_msg_body(&m, r.data, r.len);
            break;
        case SMFIR_REPLYCODE:
            if (r.code < 400 || r.code > 599 || strlen(r.text) > MS_MILTER_TEXT_MAX)
                abort();
            break;
        default:
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    ms_buf_init(&out, 1 << 20);
    if (ms_milter_msg_write(&m, &out) == 0 && ms_milter_msg_edited(&m) &&
        (out.len < 4 || memmem(out.data, out.len, "\r\n\r\n", 4) == NULL))
        abort();
    ms_buf_free(&out);
    ms_milter_msg_free(&m);
    return 0;
}
