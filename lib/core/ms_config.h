/*
 * ms_config.h - configuration: one INI file per process, overridden by the
 * environment, and checked at start-up so that a typo is never silent.
 *
 * The file is parsed with inih; a line holds at most MS_CONFIG_LINE_MAX
 * characters.  Every `[section] key` may be overridden by the environment
 * variable MAILSTREAM_<SECTION>_<KEY>: upper-cased, every character that is
 * not a letter or digit turned into `_` (docs/config.md).
 *
 * Checking.  Every lookup (ms_config_get and the typed readers) records the
 * section and key it asked for, whether the file has them or not.  Once a
 * program has looked up every setting it uses, it calls
 * ms_config_check_unknown(), which names the first section or key of the file
 * that nothing asked for.  A key a program uses only under some condition
 * (Redis settings when a limit is on) must therefore still be looked up at
 * start-up, whatever the condition.  Booleans go through ms_config_get_bool,
 * which takes only yes/no/true/false/1/0.  Error messages say where the value
 * came from: "FILE:LINE" for the file, the variable's name for the
 * environment.  Environment variables that match no key are not checked.
 *
 * Threads: lookups update that record and keep environment values, so one
 * thread at a time uses a config (the programs read theirs on the main
 * thread, at start-up and on SIGHUP).  Strings returned point into the
 * config and live as long as it does.
 */
#ifndef MS_CONFIG_H
#define MS_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Characters in one line of the file, not counting its line end: inih's
 * line buffer (INI_MAX_LINE, 200 bytes) less the line end and the NUL.  A
 * longer line is refused at load, not split (inih would read its rest as a
 * line of its own). */
#define MS_CONFIG_LINE_MAX 198

typedef struct ms_config ms_config;

/* Load `path` (NULL: no file, environment and defaults only).  On error
 * returns NULL with "PATH:LINE: what" (or "PATH: cannot open: why") in
 * err. */
ms_config *ms_config_load(const char *path, char *err, size_t errlen);
void ms_config_free(ms_config *cfg);

/* The value of [section] key after environment overrides, or def. */
const char *ms_config_get(const ms_config *cfg, const char *section, const char *key,
                          const char *def);
/* Integer value in [min, max]; returns MS_ECONFIG (and logs why, and where
 * the value came from) if the value is not a number in range.  Accepts
 * suffixes k, m, g (x1024).  Empty or absent: def. */
int ms_config_get_int(const ms_config *cfg, const char *section, const char *key, int64_t def,
                      int64_t min, int64_t max, int64_t *out);
/* Boolean value: yes, true or 1 is 1; no, false or 0 is 0 (any case); empty
 * or absent: def.  Anything else returns MS_ECONFIG with
 * "FILE:LINE: [section] key: want yes or no ..." in err (the environment
 * variable's name instead of FILE:LINE when it set the value). */
int ms_config_get_bool(const ms_config *cfg, const char *section, const char *key, int def,
                       int *out, char *err, size_t errlen);
/* Names of the sections that start with `prefix` (e.g. "listener."), in file
 * order.  Returns the count; *names is owned by the config and lives as long
 * as it does. */
size_t ms_config_sections(const ms_config *cfg, const char *prefix, const char *const **names);

/* The start-up check: MS_ECONFIG with "FILE:LINE: unknown section [S]" or
 * "FILE:LINE: unknown key [S] K" in err for the first section or key of the
 * file, in file order, that no lookup asked for; 0 when there is none.
 * scope NULL checks the whole file; else only the sections named in the
 * NULL-terminated list, where a name ending in '.' ("dkim.") stands for
 * every section starting with it (for a tool that reads part of another
 * program's file). */
int ms_config_check_unknown(const ms_config *cfg, const char *const *scope, char *err,
                            size_t errlen);

/* Split a comma-separated list in place into at most max trimmed, non-empty
 * items; returns the count.  `s` must be writable (use a copy). */
size_t ms_config_split_list(char *s, char **items, size_t max);

#endif
