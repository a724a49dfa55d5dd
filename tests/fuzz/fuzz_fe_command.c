/*
 * fuzz_fe_command.c - libFuzzer driver for the SMTP command grammar
 * (frontend/smtp_parse.c): frames the input into lines the way the session
 * does and parses each, with MAIL / RCPT parameters.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ms_addr.h"
#include "ms_error.h"
#include "../../frontend/smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct fe_smtp_cmd cmd;
    struct fe_mail_params mp;
    struct fe_rcpt_params rp;
    const char *reply;
    size_t content, off = 0;
    int n;

    while (off < size) {
        n = fe_smtp_line(buf + off, size - off, FE_SMTP_LINE_MAX, &content);
        if (n == MS_EAGAIN) {
            content = size - off; /* parse the unterminated tail too */
            n = (int)content;
        } else if (n == MS_ETOOBIG) {
            content = FE_SMTP_LINE_MAX;
            n = FE_SMTP_LINE_MAX;
        }
        if (n <= 0)
            break;
        reply = NULL;
        if (fe_smtp_parse(buf + off, content, &cmd, &reply) == 0) {
            if (cmd.pathlen != strlen(cmd.path) || cmd.pathlen > MS_SMTP_ADDR_MAX)
                __builtin_trap();
            if (cmd.verb == FE_VERB_MAIL && fe_smtp_mail_params(&cmd, &mp, &reply) == 0 &&
                strlen(mp.envid) > FE_SMTP_ENVID_MAX)
                __builtin_trap();
            if (cmd.verb == FE_VERB_RCPT && fe_smtp_rcpt_params(&cmd, &rp, &reply) == 0 &&
                strlen(rp.orcpt) > FE_SMTP_ORCPT_MAX)
                __builtin_trap();
            if (cmd.verb == FE_VERB_BDAT) {
                uint64_t bsize;
                int last, size_ok, br;

                br = fe_smtp_bdat_args(cmd.args, cmd.argslen, &bsize, &last, &size_ok, &reply);
                /* Accepted: the size was read.  Refused: a 501 reply. */
                if ((br == 0 && !size_ok) || (br < 0 && strncmp(reply, "501 ", 4) != 0))
                    __builtin_trap();
            }
            /* A path the parser saw a domain in has one by ms_addr.h's
             * rule (the last '@'). */
            if (cmd.path_domain && ms_addr_domain(cmd.path) == NULL)
                __builtin_trap();
        } else if (reply == NULL || reply[0] != '5') {
            __builtin_trap();
        }
        off += (size_t)n;
    }
    return 0;
}
