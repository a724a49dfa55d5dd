/*
 * testdata.h - the shared conformance data (RFC vectors, the OpenSPF suite)
 * for unit tests.  Header only: every tests/unit/test_*.c is a program of
 * its own, linked with the libraries and nothing else.
 *
 * The data is not part of the project and is never copied into it: it is
 * read at run time from $MAILSTREAM_TESTDATA, by default ../shared/testdata
 * (relative to the repository root, where the tests run).  When it is
 * absent, a test that needs it is skipped, saying so; with CI=true (or
 * CI=1) in the environment it fails instead, so that a CI run that lost the
 * data cannot pass by skipping (issue 13, defect 4).
 * tests/integration/conftest.py (need_testdata) does the same for Python.
 */
#ifndef MS_TEST_TESTDATA_H
#define MS_TEST_TESTDATA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static inline const char *testdata_dir(void)
{
    const char *d = getenv("MAILSTREAM_TESTDATA");

    return d && *d ? d : "../shared/testdata";
}

/* CI=true or CI=1 (what CI services set): absent data is a failure. */
static inline int testdata_required(void)
{
    const char *ci = getenv("CI");

    return ci != NULL && (strcasecmp(ci, "true") == 0 || strcmp(ci, "1") == 0);
}

/* 1 if the file or directory `rel` exists under testdata_dir(), else 0. */
static inline int testdata_present(const char *rel)
{
    char path[4096];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", testdata_dir(), rel);
    return stat(path, &st) == 0;
}

/* In a cmocka test, before anything is allocated (neither skip() nor
 * fail_msg() returns): skip the test when `rel` is absent, or fail it when
 * testdata_required(). */
#define TESTDATA_NEED(rel)                                                                         \
    do {                                                                                           \
        if (!testdata_present(rel)) {                                                              \
            if (testdata_required())                                                               \
                fail_msg("%s/%s absent, and CI is set: the conformance data must be there "        \
                         "(set MAILSTREAM_TESTDATA)",                                              \
                         testdata_dir(), (rel));                                                   \
            printf("SKIP: %s/%s absent (set MAILSTREAM_TESTDATA)\n", testdata_dir(), (rel));       \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

#endif
