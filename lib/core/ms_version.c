/*
 * ms_version.c - the build's version and commit (see ms_version.h).
 */
#include "ms_version.h"
#include "ms_version_gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ms_version(void)
{
    return MS_VERSION;
}

const char *ms_version_commit(void)
{
    return MS_GIT_COMMIT;
}

void ms_version_option(int argc, char **argv, const char *prog)
{
    if (argc != 2 || strcmp(argv[1], "--version") != 0)
        return;
    printf("%s %s (commit %s)\n", prog, MS_VERSION, MS_GIT_COMMIT);
    exit(fflush(stdout) == 0 ? 0 : 1);
}
