/*
 * ms_buf.h - a growable byte buffer with a hard maximum.
 *
 * The owner embeds struct ms_buf and frees it with ms_buf_free().  Appends
 * that would take the length past `max` fail with MS_ETOOBIG and leave the
 * buffer unchanged: nothing is ever silently truncated.  Not thread-safe.
 */
#ifndef MS_BUF_H
#define MS_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct ms_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max; /* hard limit on len */
};

void ms_buf_init(struct ms_buf *b, size_t max);
void ms_buf_free(struct ms_buf *b);
void ms_buf_reset(struct ms_buf *b);
int ms_buf_append(struct ms_buf *b, const void *p, size_t n);
int ms_buf_appendf(struct ms_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int ms_buf_vappendf(struct ms_buf *b, const char *fmt, va_list ap);
/* Remove the first n bytes. */
void ms_buf_consume(struct ms_buf *b, size_t n);
/* Make room for n more bytes; returns a pointer to the free space or NULL if
 * that would pass max.  Follow with ms_buf_commit(b, used). */
char *ms_buf_reserve(struct ms_buf *b, size_t n);
void ms_buf_commit(struct ms_buf *b, size_t n);
/* Hand the data over to the caller (who frees it) and reset the buffer. */
char *ms_buf_steal(struct ms_buf *b, size_t *len);

#endif
