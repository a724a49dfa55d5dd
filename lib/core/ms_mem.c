#include "ms_mem.h"
#include "ms_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

void *ms_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        ms_panic("out of memory allocating %zu bytes", n);
    return p;
}

void *ms_calloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (p == NULL)
        ms_panic("out of memory allocating %zu x %zu bytes", nmemb, size);
    return p;
}

void *ms_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        ms_panic("out of memory reallocating %zu bytes", n);
    return q;
}

void ms_mem_keep(const void *p)
{
#if defined(__SANITIZE_ADDRESS__)
    __lsan_ignore_object(p);
#else
    (void)p;
#endif
}

char *ms_strdup(const char *s)
{
    return ms_strndup(s, strlen(s));
}

char *ms_strndup(const char *s, size_t n)
{
    char *p = ms_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void ms_strv_free(char **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

char *ms_asprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        ms_panic("out of memory in ms_asprintf");
    return s;
}
