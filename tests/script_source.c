/*
 * script_source.c - prints the source of one of lib/io/ms_script.h's Lua
 * scripts, so that tests can run it against a real Redis with EVAL
 * (tests/integration/test_fence_scripts.py).
 *
 *   script_source NAME     (ms_script_name(): bucket, lease, fence_take, ...)
 *
 * Exit status: 0 printed, 1 no script of that name.
 */
#include <stdio.h>
#include <string.h>

#include "ms_script.h"

int main(int argc, char **argv)
{
    int s;

    if (argc != 2) {
        fprintf(stderr, "usage: script_source NAME\n");
        return 1;
    }
    for (s = 0; s < MS_SCRIPT__COUNT; s++)
        if (strcmp(ms_script_name(s), argv[1]) == 0) {
            fputs(ms_script_source(s), stdout);
            return 0;
        }
    fprintf(stderr, "script_source: no script named %s\n", argv[1]);
    return 1;
}
