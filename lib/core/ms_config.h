/*
 * ms_config.h - configuration: one INI file per process, overridden by the
 * environment.
 *
 * The file is parsed with inih.  Every `[section] key` may be overridden by
 * the environment variable MAILSTREAM_<SECTION>_<KEY>: upper-cased, every
 * character that is not a letter or digit turned into `_` (docs/config.md).
 * A loaded config is immutable and may be read from any thread.  Strings
 * returned point into the config and live as long as it does.
 */
#ifndef MS_CONFIG_H
#define MS_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct ms_config ms_config;

/* Load `path` (NULL: no file, environment and defaults only).  On error
 * returns NULL with a message in err. */
ms_config *ms_config_load(const char *path, char *err, size_t errlen);
void ms_config_free(ms_config *cfg);

/* The value of [section] key after environment overrides, or def. */
const char *ms_config_get(const ms_config *cfg, const char *section, const char *key,
                          const char *def);
/* Integer value in [min, max]; returns MS_ECONFIG (and logs why) if the value
 * is not a number in range.  Accepts suffixes k, m, g (x1024). */
int ms_config_get_int(const ms_config *cfg, const char *section, const char *key, int64_t def,
                      int64_t min, int64_t max, int64_t *out);
/* Names of the sections that start with `prefix` (e.g. "listener."), in file
 * order.  Returns the count; *names is owned by the config. */
size_t ms_config_sections(const ms_config *cfg, const char *prefix, const char *const **names);

/* Split a comma-separated list in place into at most max trimmed, non-empty
 * items; returns the count.  `s` must be writable (use a copy). */
size_t ms_config_split_list(char *s, char **items, size_t max);

#endif
