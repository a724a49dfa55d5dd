/*
 * ms_log.h - structured log lines on stderr.
 *
 * One line per event, logfmt style:
 *   ts=2026-11-24T05:04:01.123Z level=info node=fe1 event=queued qid=... key=value
 * Callers pass the key=value part.  Values that may hold spaces or come from
 * the wire must go through ms_log_quote() first.  Severity means one thing:
 * ms_warn = recovered, ms_fatal = cannot continue (exit 1), ms_panic = broken
 * invariant (abort).  Thread-safe (one write(2) per line).
 */
#ifndef MS_LOG_H
#define MS_LOG_H

#include <stddef.h>

enum ms_log_level { MS_LOG_DEBUG, MS_LOG_INFO, MS_LOG_WARN, MS_LOG_ERROR };

/* Set once at start-up: the node name printed on every line, minimum level. */
void ms_log_init(const char *node, enum ms_log_level min_level);

void ms_log(enum ms_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define ms_info(...) ms_log(MS_LOG_INFO, __VA_ARGS__)
#define ms_debug(...) ms_log(MS_LOG_DEBUG, __VA_ARGS__)
void ms_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void ms_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void ms_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Quote `s` (length n) for a log value into out (size outlen, always
 * NUL-terminated): wrapped in double quotes, with ", \ and control or
 * non-ASCII bytes escaped, truncated with "..." if it does not fit.
 * Returns out.
 */
char *ms_log_quote(char *out, size_t outlen, const char *s, size_t n);

#endif
