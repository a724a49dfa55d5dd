#include "ms_buf.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ms_buf_init(struct ms_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void ms_buf_free(struct ms_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void ms_buf_reset(struct ms_buf *b)
{
    b->len = 0;
}

/* Grow the allocation to hold at least `need` bytes (the caller checked
 * `max`; a printf may need one byte past it for its NUL). */
static void buf_grow(struct ms_buf *b, size_t need)
{
    size_t cap;

    if (need <= b->cap)
        return;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > (size_t)-1 / 2 ? need : cap * 2;
    if (cap > b->max + 1 && need <= b->max + 1)
        cap = b->max + 1;
    b->data = ms_realloc(b->data, cap);
    b->cap = cap;
}

char *ms_buf_reserve(struct ms_buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return NULL;
    buf_grow(b, b->len + n);
    return b->data + b->len;
}

void ms_buf_commit(struct ms_buf *b, size_t n)
{
    if (n > b->cap - b->len)
        ms_panic("ms_buf_commit past capacity");
    b->len += n;
}

int ms_buf_append(struct ms_buf *b, const void *p, size_t n)
{
    char *dst;

    if (n == 0)
        return 0;
    if ((dst = ms_buf_reserve(b, n)) == NULL)
        return MS_ETOOBIG;
    memcpy(dst, p, n);
    b->len += n;
    return 0;
}

int ms_buf_vappendf(struct ms_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return MS_EINVAL;
    if (ms_buf_reserve(b, (size_t)n) == NULL)
        return MS_ETOOBIG;
    buf_grow(b, b->len + (size_t)n + 1);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int ms_buf_appendf(struct ms_buf *b, const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = ms_buf_vappendf(b, fmt, ap);
    va_end(ap);
    return r;
}

void ms_buf_consume(struct ms_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

char *ms_buf_steal(struct ms_buf *b, size_t *len)
{
    char *p = b->data;

    if (len)
        *len = b->len;
    if (p == NULL)
        p = ms_malloc(1);
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
