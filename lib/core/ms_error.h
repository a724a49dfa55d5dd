/*
 * ms_error.h - the one error convention of Mailstream.
 *
 * Functions that can fail return 0 (or a non-negative count) on success and a
 * negative MS_E* code on failure.  The codes, their names and their messages
 * come from one X-macro table.  A function that returns an error never also
 * calls its callback.
 */
#ifndef MS_ERROR_H
#define MS_ERROR_H

#define MS_ERRNO_MAP(X)                                           \
    X(NOMEM, "out of memory")                                     \
    X(INVAL, "invalid argument")                                  \
    X(AGAIN, "need more input")                                   \
    X(PROTO, "protocol error")                                    \
    X(TOOBIG, "limit exceeded")                                   \
    X(IO, "I/O error")                                            \
    X(TIMEOUT, "timed out")                                       \
    X(UNAVAIL, "service unavailable")                             \
    X(VERSION, "unknown version")                                 \
    X(CONFIG, "configuration error")                              \
    X(NOTFOUND, "not found")                                      \
    X(CLOSED, "closed")                                           \
    X(CERT, "certificate not accepted")

enum ms_errno {
    MS_OK = 0,
#define X(name, msg) MS_E##name,
    MS__EFIRST_ = -100,
    MS_ERRNO_MAP(X)
#undef X
};

/* Name ("MS_EPROTO") and message of an error code; "unknown" otherwise. */
const char *ms_err_name(int err);
const char *ms_strerror(int err);

#endif
