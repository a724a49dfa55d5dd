/*
 * ms_mem.h - allocation wrappers.  They never return NULL: running out of
 * memory is fatal (ms_panic).  Sizes that come from the wire must be checked
 * against a named limit before they reach these functions.
 */
#ifndef MS_MEM_H
#define MS_MEM_H

#include <stddef.h>

void *ms_malloc(size_t n);
void *ms_calloc(size_t nmemb, size_t size);
void *ms_realloc(void *p, size_t n);
char *ms_strdup(const char *s);
char *ms_strndup(const char *s, size_t n);
/* Free the n strings of v (NULL entries allowed) and v itself. */
void ms_strv_free(char **v, size_t n);
/* The heap block p is left to the process's exit on purpose (a library
 * handle whose destroy would abort or hang): under LeakSanitizer (make asan)
 * neither it nor anything reachable from it is reported as a leak.  Does
 * nothing in other builds. */
void ms_mem_keep(const void *p);
/* printf into a freshly allocated string. */
char *ms_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
