/*
 * unit_config.h - a config from a string, for unit tests: the text is
 * written to a temporary file and loaded as the processes load theirs
 * (ms_config.h), so the environment overrides it as it would a real one.
 * Include after <cmocka.h>.  The caller frees the config; a text that does
 * not load fails the test.
 */
#ifndef UNIT_CONFIG_H
#define UNIT_CONFIG_H

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_config.h"

static inline ms_config *unit_config(const char *text)
{
    char path[] = "/tmp/mailstream_unit_configXXXXXX", err[256];
    ms_config *cfg;
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cfg = ms_config_load(path, err, sizeof(err));
    unlink(path);
    if (cfg == NULL)
        fail_msg("%s", err);
    return cfg;
}

#endif
