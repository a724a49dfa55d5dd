/*
 * ms_version.h - the release and git commit a binary was built from.
 *
 * Every program answers `--version` (its only argument) with one line,
 *   mailstream-frontend 0.1.0 (commit 0123456789ab)
 * on stdout and exit 0, before it reads any config: the container image's
 * test and an operator checking a pod both rely on it working with no
 * file, network or writable disk.  The values come from the build
 * (Makefile VERSION and `git rev-parse`, written into $(BUILD)/gen/
 * ms_version_gen.h), so only ms_version.c is rebuilt when the commit moves.
 * Thread-safe (constant data).
 */
#ifndef MS_VERSION_H
#define MS_VERSION_H

/* The release, e.g. "0.1.0", and the commit ("unknown" outside git). */
const char *ms_version(void);
const char *ms_version_commit(void);

/* If argv[1] is "--version" and nothing follows, print `prog`'s version line
 * and exit 0; else return.  Called first thing in main(). */
void ms_version_option(int argc, char **argv, const char *prog);

#endif
