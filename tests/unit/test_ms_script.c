/*
 * test_ms_script.c - lib/io/ms_script.h: every script has a name, a source
 * and the digest Redis will name it by.  The digest is checked against
 * coreutils' sha1sum, an implementation other than the OpenSSL one the
 * module uses: a wrong digest would make every EVALSHA miss.  Running the
 * scripts (and loading them again after NOSCRIPT) is tested against a real
 * Redis in tests/integration/test_frontend_limits.py and test_worker_rate.py;
 * the fence scripts' contract in test_fence_scripts.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_script.h"

static void test_scripts_named(void **state)
{
    int s, t;

    (void)state;
    for (s = 0; s < MS_SCRIPT__COUNT; s++) {
        assert_non_null(ms_script_name(s));
        assert_true(ms_script_name(s)[0] != '\0');
        assert_non_null(strstr(ms_script_source(s), "return"));
        assert_int_equal(strlen(ms_script_sha(s)), MS_SCRIPT_SHA_LEN);
        /* Lower-case hex, as SCRIPT LOAD answers. */
        assert_int_equal(strspn(ms_script_sha(s), "0123456789abcdef"), MS_SCRIPT_SHA_LEN);
        for (t = 0; t < s; t++) {
            assert_string_not_equal(ms_script_name(s), ms_script_name(t));
            assert_string_not_equal(ms_script_sha(s), ms_script_sha(t));
        }
    }
}

static void test_sha_matches_sha1sum(void **state)
{
    char path[] = "/tmp/test_ms_script.XXXXXX", cmd[128], out[128];
    const char *src;
    FILE *f, *p;
    int s, fd;

    (void)state;
    for (s = 0; s < MS_SCRIPT__COUNT; s++) {
        strcpy(path, "/tmp/test_ms_script.XXXXXX");
        fd = mkstemp(path);
        assert_true(fd >= 0);
        f = fdopen(fd, "w");
        assert_non_null(f);
        src = ms_script_source(s);
        assert_int_equal(fwrite(src, 1, strlen(src), f), strlen(src));
        assert_int_equal(fclose(f), 0);
        snprintf(cmd, sizeof(cmd), "sha1sum %s", path);
        p = popen(cmd, "r");
        assert_non_null(p);
        assert_non_null(fgets(out, sizeof(out), p));
        assert_int_equal(pclose(p), 0);
        unlink(path);
        out[MS_SCRIPT_SHA_LEN] = '\0';
        assert_string_equal(ms_script_sha(s), out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scripts_named),
        cmocka_unit_test(test_sha_matches_sha1sum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
