#include "ms_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MS_LOG_LINE_MAX 4096

static char log_node[64] = "-";
static enum ms_log_level log_min = MS_LOG_INFO;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void ms_log_init(const char *node, enum ms_log_level min_level)
{
    snprintf(log_node, sizeof(log_node), "%s", node);
    log_min = min_level;
}

static void log_v(enum ms_log_level level, const char *fmt, va_list ap)
{
    char line[MS_LOG_LINE_MAX];
    struct timeval tv;
    struct tm tm;
    size_t n;
    int r;

    if (level < log_min)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03ldZ level=%s node=%s ",
                 (long)(tv.tv_usec / 1000), level_names[level], log_node);
    n += (size_t)r;
    r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    if (r < 0)
        r = 0;
    n += (size_t)r;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2; /* XXX: over-long lines are cut, never split. */
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, n);
}

void ms_log(enum ms_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(level, fmt, ap);
    va_end(ap);
}

void ms_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(MS_LOG_WARN, fmt, ap);
    va_end(ap);
}

void ms_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(MS_LOG_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}

void ms_panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(MS_LOG_ERROR, fmt, ap);
    va_end(ap);
    abort();
}

char *ms_log_quote(char *out, size_t outlen, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i;

    if (outlen < 8) {
        if (outlen)
            out[0] = '\0';
        return out;
    }
    out[o++] = '"';
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= outlen) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}
