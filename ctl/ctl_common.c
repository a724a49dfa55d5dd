/*
 * ctl_common.c - what mailstream-ctl's subcommands share (ctl.h).
 */
#include "ctl.h"
#include "ms_json.h"
#include "ms_mem.h"
#include "ms_queueid.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ctl_fail(int code, const char *fmt, ...)
{
    va_list ap;

    fputs("mailstream-ctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

ms_redis_sync *ctl_redis(struct ctl *c)
{
    char err[512];

    if (c->redis == NULL &&
        ms_connect_redis_conf(c->cfg, &c->rconf, &c->secrets, err, sizeof(err)) < 0)
        exit(ctl_fail(CTL_EXIT_USAGE, "%s", err));
    if (c->redis == NULL && (c->redis = ms_redis_sync_connect(&c->rconf, CTL_REDIS_TIMEOUT_MS, err,
                                                              sizeof(err))) == NULL)
        exit(ctl_fail(CTL_EXIT_UNREACHABLE, "%s", err));
    return c->redis;
}

struct ms_redis_reply *ctl_cmdv(struct ctl *c, int argc, const char **argv)
{
    size_t *lens = ms_calloc((size_t)argc, sizeof(*lens));
    struct ms_redis_reply *r;
    int i;

    for (i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    r = ms_redis_sync_command(ctl_redis(c), argc, argv, lens);
    free(lens);
    if (r == NULL)
        exit(ctl_fail(CTL_EXIT_UNREACHABLE, "redis: %s", ms_redis_sync_error(c->redis)));
    return r;
}

struct ms_redis_reply *ctl_cmd(struct ctl *c, const char *arg0, ...)
{
    const char *argv[16];
    va_list ap;
    int n = 0;

    argv[n++] = arg0;
    va_start(ap, arg0);
    while (n < 16 && (argv[n] = va_arg(ap, const char *)) != NULL)
        n++;
    va_end(ap);
    return ctl_cmdv(c, n, argv);
}

void ctl_mget(struct ctl *c, const char *prefix, char **names, size_t n, char **out)
{
    ms_redis_sync *r = ctl_redis(c);
    size_t i, j, k, nb = (n + CTL_BATCH - 1) / CTL_BATCH;
    const char **argv = ms_calloc(CTL_BATCH + 1, sizeof(*argv));
    size_t *lens = ms_calloc(CTL_BATCH + 1, sizeof(*lens));
    char **keys = ms_calloc(CTL_BATCH, sizeof(*keys));

    /* Send every batch, then read: one round trip's latency in all. */
    for (i = 0; i < nb; i++) {
        size_t lo = i * CTL_BATCH, cnt = n - lo < CTL_BATCH ? n - lo : CTL_BATCH;
        argv[0] = "MGET";
        lens[0] = 4;
        for (j = 0; j < cnt; j++) {
            keys[j] = ms_asprintf("%s%s", prefix, names[lo + j]);
            argv[j + 1] = keys[j];
            lens[j + 1] = strlen(keys[j]);
        }
        if (ms_redis_sync_append(r, (int)cnt + 1, argv, lens) < 0)
            exit(ctl_fail(CTL_EXIT_UNREACHABLE, "redis: %s", ms_redis_sync_error(r)));
        for (j = 0; j < cnt; j++)
            free(keys[j]);
    }
    for (i = 0; i < nb; i++) {
        size_t lo = i * CTL_BATCH;
        struct ms_redis_reply *rep = ms_redis_sync_read(r);
        if (rep == NULL)
            exit(ctl_fail(CTL_EXIT_UNREACHABLE, "redis: %s", ms_redis_sync_error(r)));
        for (k = 0; k < CTL_BATCH && lo + k < n; k++)
            out[lo + k] =
                rep->type == MS_REDIS_ARRAY && k < rep->nelem && rep->elem[k].type == MS_REDIS_STR
                    ? ms_strndup(rep->elem[k].str, rep->elem[k].len)
                    : NULL;
        ms_redis_sync_reply_free(rep);
    }
    free(argv);
    free(lens);
    free(keys);
}

void ctl_fmt_age(char *buf, size_t len, int64_t s)
{
    if (s < 0)
        s = 0;
    if (s >= 86400)
        snprintf(buf, len, "%lldd%lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
    else if (s >= 3600)
        snprintf(buf, len, "%lldh%lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
    else if (s >= 60)
        snprintf(buf, len, "%lldm%llds", (long long)(s / 60), (long long)(s % 60));
    else
        snprintf(buf, len, "%llds", (long long)s);
}

void ctl_json_str(struct ms_buf *b, const char *s)
{
    ms_json_string(b, s ? s : "", s ? strlen(s) : 0);
}

void ctl_flush(struct ms_buf *b)
{
    if (b->len)
        fwrite(b->data, 1, b->len, stdout);
    ms_buf_reset(b);
}

int ctl_addr_ok(const char *s)
{
    const char *at = strrchr(s, '@');

    if (at == NULL || at == s || at[1] == '\0' || strlen(s) > 254)
        return 0;
    for (; *s; s++)
        if (isspace((unsigned char)*s) || *s == '<' || *s == '>' || iscntrl((unsigned char)*s))
            return 0;
    return 1;
}

char *ctl_lower(const char *s)
{
    char *d = ms_strdup(s), *p;

    for (p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

int ctl_import_result(struct ctl *c, size_t n, size_t failed)
{
    if (c->json)
        printf("{\"imported\":%zu,\"failed\":%zu}\n", n, failed);
    else
        printf("imported %zu address%s\n", n, n == 1 ? "" : "es");
    return failed ? CTL_EXIT_FAILED : CTL_EXIT_OK;
}
