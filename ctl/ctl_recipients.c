/*
 * ctl_recipients.c - `mailstream-ctl recipients ...`: who exists at an
 * accepted domain (Postfix's relay_recipient_maps).
 *
 * One Redis set per domain, MS_KEY_RECIPIENTS + lower-cased domain, of
 * lower-cased addresses.  The frontend checks it at RCPT for the domains
 * named in [smtp] recipient_lists and refuses the others with 550 5.1.1;
 * a set that cannot be read gets 451 (docs/operations.md).
 */
#include "ctl.h"
#include "ms_keys.h"
#include "ms_mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTL_RCPT_LINE_MAX 1024

/* SADD or SREM of addr in its domain's set: the reply's integer, or -1. */
static long long set_op(struct ctl *c, const char *op, const char *addr)
{
    char *low = ctl_lower(addr), *key = ms_asprintf(MS_KEY_RECIPIENTS "%s", strrchr(low, '@') + 1);
    struct ms_redis_reply *r = ctl_cmd(c, op, key, low, NULL);
    long long n = r->type == MS_REDIS_INT ? r->integer : -1;

    ms_redis_sync_reply_free(r);
    free(key);
    free(low);
    return n;
}

static int r_add_remove(struct ctl *c, int argc, char **argv, int add)
{
    const char *what = add ? "add" : "remove";
    long long n;
    int i, missing = 0, failed = 0;

    if (argc < 1)
        return ctl_fail(CTL_EXIT_USAGE, "recipients %s: which address?", what);
    for (i = 0; i < argc; i++)
        if (!ctl_addr_ok(argv[i]))
            return ctl_fail(CTL_EXIT_USAGE, "recipients %s: \"%s\" is not an address", what,
                            argv[i]);
    for (i = 0; i < argc; i++) {
        n = set_op(c, add ? "SADD" : "SREM", argv[i]);
        if (n < 0) {
            failed++;
            fprintf(stderr, "mailstream-ctl: recipients %s: %s: not written\n", what, argv[i]);
        } else if (n == 0 && !add) {
            missing++;
            fprintf(stderr, "mailstream-ctl: recipients remove: %s was not listed\n", argv[i]);
        }
    }
    if (c->json)
        printf("{\"%s\":%d,\"not_found\":%d,\"failed\":%d}\n", add ? "added" : "removed",
               argc - missing - failed, missing, failed);
    else
        printf("recipients %s: %d address%s\n", what, argc - missing - failed,
               argc - missing - failed == 1 ? "" : "es");
    return failed ? CTL_EXIT_FAILED : missing ? CTL_EXIT_NOTFOUND : CTL_EXIT_OK;
}

static int r_add(struct ctl *c, int argc, char **argv)
{
    return r_add_remove(c, argc, argv, 1);
}

static int r_remove(struct ctl *c, int argc, char **argv)
{
    return r_add_remove(c, argc, argv, 0);
}

/* One address per line ('#' comments, blank lines skipped); every line is
 * checked before anything is written. */
static int r_import(struct ctl *c, int argc, char **argv)
{
    char line[CTL_RCPT_LINE_MAX + 2];
    size_t lineno = 0, bad = 0, n = 0, failed = 0;
    FILE *fp;

    if (argc != 1)
        return ctl_fail(CTL_EXIT_USAGE, "recipients import: one FILE");
    if ((fp = fopen(argv[0], "r")) == NULL)
        return ctl_fail(CTL_EXIT_USAGE, "recipients import: %s: %s", argv[0], strerror(errno));
    for (int pass = 0; pass < 2; pass++) {
        rewind(fp);
        lineno = 0;
        while (fgets(line, sizeof(line), fp)) {
            lineno++;
            line[strcspn(line, "\r\n")] = '\0';
            if (line[0] == '#' || line[0] == '\0')
                continue;
            if (pass == 0) {
                if (!ctl_addr_ok(line)) {
                    fprintf(stderr, "mailstream-ctl: recipients import: %s:%zu: not an address\n",
                            argv[0], lineno);
                    bad++;
                }
            } else if (set_op(c, "SADD", line) >= 0) {
                n++;
            } else {
                failed++;
            }
        }
        if (bad) {
            fclose(fp);
            return ctl_fail(CTL_EXIT_USAGE, "recipients import: %zu bad line%s, nothing imported",
                            bad, bad == 1 ? "" : "s");
        }
    }
    fclose(fp);
    return ctl_import_result(c, n, failed);
}

static int r_list(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *r;
    char *low, *key, cursor[32] = "0";
    struct ms_buf out;
    size_t i, shown = 0;

    if (argc != 1 || strchr(argv[0], '@') || argv[0][0] == '\0')
        return ctl_fail(CTL_EXIT_USAGE, "recipients list: one DOMAIN");
    low = ctl_lower(argv[0]);
    key = ms_asprintf(MS_KEY_RECIPIENTS "%s", low);
    ms_buf_init(&out, 1 << 24);
    if (c->json)
        ms_buf_append(&out, "[", 1);
    do {
        r = ctl_cmd(c, "SSCAN", key, cursor, "COUNT", "1000", NULL);
        if (r->type != MS_REDIS_ARRAY || r->nelem != 2 || r->elem[0].type != MS_REDIS_STR) {
            ms_redis_sync_reply_free(r);
            ms_buf_free(&out);
            free(key);
            free(low);
            return ctl_fail(CTL_EXIT_FAILED, "recipients list: SSCAN failed");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->elem[0].str);
        for (i = 0; i < r->elem[1].nelem; i++) {
            const char *a = r->elem[1].elem[i].str;
            if (c->json) {
                ms_buf_append(&out, shown ? "," : "", shown ? 1 : 0);
                ctl_json_str(&out, a);
            } else {
                ms_buf_appendf(&out, "%s\n", a);
            }
            shown++;
        }
        ms_redis_sync_reply_free(r);
        if (out.len > (1 << 20))
            ctl_flush(&out);
    } while (strcmp(cursor, "0") != 0);
    if (c->json)
        ms_buf_append(&out, "]\n", 2);
    ctl_flush(&out);
    ms_buf_free(&out);
    free(key);
    free(low);
    return CTL_EXIT_OK;
}

const struct ctl_cmd ctl_recipients_cmds[] = {
    {"recipients", "list", "DOMAIN", "the addresses that exist at DOMAIN", r_list},
    {"recipients", "add", "ADDR...", "these exist (checked at RCPT for [smtp] recipient_lists)",
     r_add},
    {"recipients", "remove", "ADDR...", "these no longer exist", r_remove},
    {"recipients", "import", "FILE", "add every address of FILE (all or none)", r_import},
    {NULL, NULL, NULL, NULL, NULL}};
