/*
 * ctl_suppress.c - `mailstream-ctl suppress ...`: the suppression list.
 *
 * One key per address, MS_KEY_SUPPRESS + lower-cased address, as the
 * worker writes after a hard bounce and as the frontend ([smtp]
 * refuse_suppressed) and the worker read it: they look only at whether the
 * key exists.  The value says where an entry came from: the worker's are
 * "<dsn> <reply>" (source "bounce"); ours are "source=<ctl|import>
 * <reason>".  The expiry is the key's TTL (none: until removed).
 */
#include "ctl.h"
#include "ms_json.h"
#include "ms_keys.h"
#include "ms_mem.h"
#include "ms_qctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest line of an import file. */
#define CTL_IMPORT_LINE_MAX 1024
/* Keys per SCAN step. */
#define CTL_SCAN_COUNT "1000"

static int write_entry(struct ctl *c, const char *addr, const char *source, const char *reason,
                       int64_t secs)
{
    char *key, *low = ctl_lower(addr), *val, ttl[24];
    struct ms_redis_reply *r;
    int ok;

    key = ms_asprintf(MS_KEY_SUPPRESS "%s", low);
    val = ms_asprintf("source=%s %s", source, reason);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)secs);
    r = secs > 0 ? ctl_cmd(c, "SET", key, val, "EX", ttl, NULL) : ctl_cmd(c, "SET", key, val, NULL);
    ok = r->type == MS_REDIS_STR;
    ms_redis_sync_reply_free(r);
    free(key);
    free(val);
    free(low);
    return ok;
}

/* --reason TEXT and --for T after the address. */
static int entry_opts(const char *what, int argc, char **argv, const char **reason, int64_t *secs)
{
    int k;

    *reason = "";
    *secs = 0;
    for (k = 0; k < argc; k++) {
        if (k + 1 >= argc)
            return ctl_fail(CTL_EXIT_USAGE, "suppress %s: %s needs a value", what, argv[k]);
        if (strcmp(argv[k], "--reason") == 0)
            *reason = argv[++k];
        else if (strcmp(argv[k], "--for") == 0) {
            if (ms_qctl_parse_duration(argv[++k], secs) < 0 || *secs == 0)
                return ctl_fail(CTL_EXIT_USAGE, "suppress %s: bad duration \"%s\"", what, argv[k]);
        } else
            return ctl_fail(CTL_EXIT_USAGE, "suppress %s: unknown option %s", what, argv[k]);
    }
    if (strlen(*reason) > MS_QCTL_REASON_MAX)
        return ctl_fail(CTL_EXIT_USAGE, "suppress %s: reason longer than %d", what,
                        MS_QCTL_REASON_MAX);
    return 0;
}

static int s_add(struct ctl *c, int argc, char **argv)
{
    const char *reason;
    int64_t secs;
    int rc;

    if (argc < 1 || !ctl_addr_ok(argv[0]))
        return ctl_fail(CTL_EXIT_USAGE, "suppress add: \"%s\" is not an address",
                        argc ? argv[0] : "");
    if ((rc = entry_opts("add", argc - 1, argv + 1, &reason, &secs)) != 0)
        return rc;
    if (!write_entry(c, argv[0], "ctl", reason, secs))
        return ctl_fail(CTL_EXIT_FAILED, "suppress add: Redis refused the write");
    if (c->json)
        printf("{\"added\":1}\n");
    else
        printf("suppressed %s\n", argv[0]);
    return CTL_EXIT_OK;
}

static int s_remove(struct ctl *c, int argc, char **argv)
{
    struct ms_redis_reply *r;
    char *key, *low;
    long long n;
    int i, missing = 0;

    if (argc < 1)
        return ctl_fail(CTL_EXIT_USAGE, "suppress remove: which address?");
    for (i = 0; i < argc; i++)
        if (!ctl_addr_ok(argv[i]))
            return ctl_fail(CTL_EXIT_USAGE, "suppress remove: \"%s\" is not an address", argv[i]);
    for (i = 0; i < argc; i++) {
        low = ctl_lower(argv[i]);
        key = ms_asprintf(MS_KEY_SUPPRESS "%s", low);
        r = ctl_cmd(c, "DEL", key, NULL);
        n = r->type == MS_REDIS_INT ? r->integer : 0;
        ms_redis_sync_reply_free(r);
        if (n == 0) {
            missing++;
            fprintf(stderr, "mailstream-ctl: suppress remove: %s was not suppressed\n", argv[i]);
        } else if (!c->json) {
            printf("removed %s\n", argv[i]);
        }
        free(key);
        free(low);
    }
    if (c->json)
        printf("{\"removed\":%d,\"not_found\":%d}\n", argc - missing, missing);
    return missing ? CTL_EXIT_NOTFOUND : CTL_EXIT_OK;
}

/* Every entry, as "addr\tsource\texpires_s\treason" lines or JSON. */
static int s_dump(struct ctl *c, int json, int export_format)
{
    ms_redis_sync *rs = ctl_redis(c);
    struct ms_redis_reply *r;
    char cursor[32] = "0";
    struct ms_buf out;
    size_t shown = 0, plen = strlen(MS_KEY_SUPPRESS);

    ms_buf_init(&out, 1 << 24);
    if (json)
        ms_buf_append(&out, "[", 1);
    do {
        const struct ms_redis_reply *keys;
        size_t i;
        r = ctl_cmd(c, "SCAN", cursor, "MATCH", MS_KEY_SUPPRESS "*", "COUNT", CTL_SCAN_COUNT, NULL);
        if (r->type != MS_REDIS_ARRAY || r->nelem != 2 || r->elem[0].type != MS_REDIS_STR) {
            ms_redis_sync_reply_free(r);
            ms_buf_free(&out);
            return ctl_fail(CTL_EXIT_FAILED, "suppress: SCAN failed");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->elem[0].str);
        keys = &r->elem[1];
        /* GET and TTL of each key of this step, pipelined. */
        for (i = 0; i < keys->nelem; i++) {
            const char *av[2] = {"GET", keys->elem[i].str};
            size_t lens[2] = {3, keys->elem[i].len};
            ms_redis_sync_append(rs, 2, av, lens);
            av[0] = "TTL";
            ms_redis_sync_append(rs, 2, av, lens);
        }
        for (i = 0; i < keys->nelem; i++) {
            struct ms_redis_reply *v = ms_redis_sync_read(rs), *t = ms_redis_sync_read(rs);
            const char *addr = keys->elem[i].str + plen, *val, *source = "bounce", *reason;
            char src[16];
            long long ttl;
            if (v == NULL || t == NULL)
                exit(ctl_fail(CTL_EXIT_UNREACHABLE, "redis: %s", ms_redis_sync_error(rs)));
            if (v->type != MS_REDIS_STR) { /* expired between SCAN and GET */
                ms_redis_sync_reply_free(v);
                ms_redis_sync_reply_free(t);
                continue;
            }
            val = v->str;
            reason = val;
            if (strncmp(val, "source=", 7) == 0 && sscanf(val + 7, "%15[^ ]", src) == 1) {
                source = src;
                reason = val + 7 + strlen(src);
                reason += *reason == ' ';
            }
            ttl = t->type == MS_REDIS_INT && t->integer > 0 ? t->integer : 0;
            if (json) {
                ms_buf_appendf(&out, "%s{\"address\":", shown ? "," : "");
                ctl_json_str(&out, addr);
                ms_buf_appendf(&out, ",\"source\":");
                ctl_json_str(&out, source);
                ms_buf_appendf(&out, ",\"expires_in_s\":");
                if (ttl)
                    ms_buf_appendf(&out, "%lld", ttl);
                else
                    ms_buf_appendf(&out, "null");
                ms_buf_appendf(&out, ",\"reason\":");
                ctl_json_str(&out, reason);
                ms_buf_append(&out, "}", 1);
            } else if (export_format) {
                ms_buf_appendf(&out, "%s\t%s\t%lld\t%s\n", addr, source, ttl, reason);
            } else {
                char age[32] = "never";
                if (ttl)
                    ctl_fmt_age(age, sizeof(age), ttl);
                ms_buf_appendf(&out, "%-40s %-7s expires %-8s %s\n", addr, source, age, reason);
            }
            shown++;
            ms_redis_sync_reply_free(v);
            ms_redis_sync_reply_free(t);
        }
        ms_redis_sync_reply_free(r);
        if (out.len > (1 << 20))
            ctl_flush(&out);
    } while (strcmp(cursor, "0") != 0);
    if (json)
        ms_buf_append(&out, "]\n", 2);
    else if (!export_format)
        ms_buf_appendf(&out, "-- %zu suppressed\n", shown);
    ctl_flush(&out);
    ms_buf_free(&out);
    return CTL_EXIT_OK;
}

static int s_list(struct ctl *c, int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        return ctl_fail(CTL_EXIT_USAGE, "suppress list: no arguments");
    return s_dump(c, c->json, 0);
}

static int s_export(struct ctl *c, int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        return ctl_fail(CTL_EXIT_USAGE, "suppress export: no arguments");
    return s_dump(c, c->json, 1);
}

/* One import line: "address", or export's "address\tsource\texpires_s\treason"
 * (source is then "import"), or "address reason...".  Cut in place. */
static int import_line(char *line, char **addr, char **reason, int64_t *secs)
{
    char *p, *f[4];
    size_t n = 0;
    long long v;

    line[strcspn(line, "\r\n")] = '\0';
    *secs = 0;
    *reason = "";
    if (strchr(line, '\t')) {
        for (p = line; n < 4; n++) {
            f[n] = p;
            if ((p = strchr(p, '\t')) == NULL) {
                n++;
                break;
            }
            *p++ = '\0';
        }
        if (n != 4)
            return -1;
        errno = 0;
        v = strtoll(f[2], &p, 10);
        if (*p || errno || v < 0)
            return -1;
        *secs = v;
        *addr = f[0];
        *reason = f[3];
    } else {
        *addr = line;
        if ((p = strchr(line, ' ')) != NULL) {
            *p++ = '\0';
            *reason = p;
        }
    }
    return ctl_addr_ok(*addr) && strlen(*reason) <= MS_QCTL_REASON_MAX ? 0 : -1;
}

static int s_import(struct ctl *c, int argc, char **argv)
{
    char line[CTL_IMPORT_LINE_MAX + 2], *addr, *reason;
    FILE *fp;
    size_t lineno = 0, n = 0, failed = 0, bad = 0;
    int64_t secs;

    if (argc != 1)
        return ctl_fail(CTL_EXIT_USAGE, "suppress import: one FILE (- for stdin)");
    fp = strcmp(argv[0], "-") == 0 ? stdin : fopen(argv[0], "r");
    if (fp == NULL)
        return ctl_fail(CTL_EXIT_USAGE, "suppress import: %s: %s", argv[0], strerror(errno));
    /* Everything is checked before anything is written: a file with a bad
     * line changes nothing. */
    while (fgets(line, sizeof(line), fp)) {
        lineno++;
        if (line[0] == '#' || line[strspn(line, " \t\r\n")] == '\0')
            continue;
        if (strlen(line) > CTL_IMPORT_LINE_MAX || import_line(line, &addr, &reason, &secs) < 0) {
            fprintf(stderr, "mailstream-ctl: suppress import: %s:%zu: not an address line\n",
                    argv[0], lineno);
            bad++;
        }
    }
    if (bad) {
        if (fp != stdin)
            fclose(fp);
        return ctl_fail(CTL_EXIT_USAGE, "suppress import: %zu bad line%s, nothing imported", bad,
                        bad == 1 ? "" : "s");
    }
    if (fp == stdin)
        return ctl_fail(CTL_EXIT_USAGE, "suppress import: stdin cannot be read twice; give a file");
    rewind(fp);
    while (fgets(line, sizeof(line), fp)) {
        if (line[0] == '#' || line[strspn(line, " \t\r\n")] == '\0')
            continue;
        import_line(line, &addr, &reason, &secs);
        if (write_entry(c, addr, "import", reason, secs))
            n++;
        else {
            failed++;
            fprintf(stderr, "mailstream-ctl: suppress import: %s: not written\n", addr);
        }
    }
    fclose(fp);
    return ctl_import_result(c, n, failed);
}

const struct ctl_cmd ctl_suppress_cmds[] = {
    {"suppress", "list", "", "suppressed addresses: source, expiry, reason", s_list},
    {"suppress", "add", "ADDR [--reason TEXT] [--for T]", "refused at RCPT, never delivered",
     s_add},
    {"suppress", "remove", "ADDR...", "take addresses off the list", s_remove},
    {"suppress", "import", "FILE", "add every address of FILE (all or none)", s_import},
    {"suppress", "export", "", "every entry, one tab-separated line each (import reads it)",
     s_export},
    {NULL, NULL, NULL, NULL, NULL}};
