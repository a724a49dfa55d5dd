/*
 * test_ms_cpus.c - lib/core/ms_cpus.c: the CPUs a cgroup quota allows,
 * parsed from cpu.max and cpu.cfs_*, and found through /proc/self/cgroup
 * and mountinfo in trees built under a temporary root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ms_cpus.h"

#define V2_MOUNT                                                                                   \
    "36 25 0:31 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "      \
    "rw,nsdelegate,memory_recursiveprot\n"
#define V1_MOUNT                                                                                   \
    "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - "         \
    "cgroup cgroup rw,cpu,cpuacct\n"
#define V1_MEMORY                                                                                  \
    "31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup "       \
    "cgroup rw,memory\n"
#define ROOT_MOUNT "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"

static void test_cpu_max(void **state)
{
    (void)state;
    assert_int_equal(ms_cpus_parse_cpu_max("max 100000\n"), 0);
    assert_int_equal(ms_cpus_parse_cpu_max("max\n"), 0);
    assert_int_equal(ms_cpus_parse_cpu_max("200000 100000\n"), 2);
    assert_int_equal(ms_cpus_parse_cpu_max("150000 100000\n"), 2); /* 1.5: rounded up */
    assert_int_equal(ms_cpus_parse_cpu_max("100000 100000\n"), 1);
    assert_int_equal(ms_cpus_parse_cpu_max("100001 100000\n"), 2);
    assert_int_equal(ms_cpus_parse_cpu_max("10000 100000\n"), 1); /* a tenth: one loop */
    assert_int_equal(ms_cpus_parse_cpu_max("9223372036854775807 1\n"), LONG_MAX);
    assert_int_equal(ms_cpus_parse_cpu_max(""), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("100000\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("100000 0\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("0 100000\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("-5 100000\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("100000 100000 7\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("maximal 100000\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("max x\n"), -1);
    assert_int_equal(ms_cpus_parse_cpu_max("99999999999999999999 1\n"), -1); /* overflow */
}

static void test_cfs(void **state)
{
    (void)state;
    assert_int_equal(ms_cpus_parse_cfs("-1\n", "100000\n"), 0);
    assert_int_equal(ms_cpus_parse_cfs("200000\n", "100000\n"), 2);
    assert_int_equal(ms_cpus_parse_cfs("250000\n", "100000\n"), 3);
    assert_int_equal(ms_cpus_parse_cfs("50000\n", "100000\n"), 1);
    assert_int_equal(ms_cpus_parse_cfs("x\n", "100000\n"), -1);
    assert_int_equal(ms_cpus_parse_cfs("100000\n", "0\n"), -1);
    assert_int_equal(ms_cpus_parse_cfs("-2\n", "100000\n"), -1);
}

/* A file under root, its directories made. */
static void put(const char *root, const char *rel, const char *text)
{
    char path[1024], *p;
    FILE *f;

    snprintf(path, sizeof(path), "%s%s", root, rel);
    for (p = path + strlen(root) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char root[64];

static int make_root(void **state)
{
    (void)state;
    strcpy(root, "/tmp/ms_cpus_XXXXXX");
    return mkdtemp(root) == NULL ? -1 : 0;
}

static int remove_root(void **state)
{
    char cmd[128];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    return system(cmd) == 0 ? 0 : -1;
}

/* cgroup v2 as on a Kubernetes node without a cgroup namespace: the pod's
 * limit two levels up binds, the container's own "max" does not lift it. */
static void test_v2_ancestor(void **state)
{
    (void)state;
    put(root, "/proc/self/mountinfo", ROOT_MOUNT V2_MOUNT);
    put(root, "/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
    put(root, "/sys/fs/cgroup/cpu.max", "max 100000\n");
    put(root, "/sys/fs/cgroup/kubepods/cpu.max", "max 100000\n");
    put(root, "/sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n");
    put(root, "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n");
    assert_int_equal(ms_cpus_quota(root), 3);
    /* The smallest level binds, wherever it is. */
    put(root, "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "120000 100000\n");
    assert_int_equal(ms_cpus_quota(root), 2);
    put(root, "/sys/fs/cgroup/kubepods/cpu.max", "garbage\n"); /* ignored */
    assert_int_equal(ms_cpus_quota(root), 2);
}

/* cgroup v2 inside a container with a cgroup namespace: "0::/", the
 * container's cgroup mounted at /sys/fs/cgroup. */
static void test_v2_namespace(void **state)
{
    (void)state;
    put(root, "/proc/self/mountinfo", ROOT_MOUNT V2_MOUNT);
    put(root, "/proc/self/cgroup", "0::/\n");
    put(root, "/sys/fs/cgroup/cpu.max", "150000 100000\n");
    assert_int_equal(ms_cpus_quota(root), 2);
    put(root, "/sys/fs/cgroup/cpu.max", "max 100000\n");
    assert_int_equal(ms_cpus_quota(root), 0);
}

/* cgroup v1 (and hybrid, as on the test machine): the cpu controller's
 * hierarchy, found by its mount's super options; the memory line of
 * /proc/self/cgroup is not the one read. */
static void test_v1(void **state)
{
    (void)state;
    put(root, "/proc/self/mountinfo", ROOT_MOUNT V1_MEMORY V1_MOUNT V2_MOUNT);
    put(root, "/proc/self/cgroup", "4:memory:/elsewhere\n2:cpu,cpuacct:/docker/abc\n0::/\n");
    put(root, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put(root, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put(root, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "100000\n");
    put(root, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    put(root, "/sys/fs/cgroup/memory/elsewhere/cpu.cfs_quota_us", "1000\n");
    put(root, "/sys/fs/cgroup/memory/elsewhere/cpu.cfs_period_us", "100000\n");
    assert_int_equal(ms_cpus_quota(root), 1);
    /* A v2 quota beside it: the smaller of the two. */
    put(root, "/sys/fs/cgroup/cpu.max", "50000 100000\n");
    put(root, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "400000\n");
    assert_int_equal(ms_cpus_quota(root), 1);
    put(root, "/sys/fs/cgroup/cpu.max", "max 100000\n");
    assert_int_equal(ms_cpus_quota(root), 4);
}

/* cgroup v1 as an older container runtime shows it: the container's own
 * cgroup mounted (mountinfo's root field), the path the host's; the mount
 * point (with a blank, escaped) is the container's level. */
static void test_v1_container_view(void **state)
{
    (void)state;
    put(root, "/proc/self/mountinfo",
        ROOT_MOUNT "40 30 0:26 /docker/abc /sys/fs/cgroup/c\\040pu rw,relatime - cgroup cgroup "
                   "rw,cpuacct,cpu\n");
    put(root, "/proc/self/cgroup", "3:cpuacct,cpu:/docker/abc\n");
    put(root, "/sys/fs/cgroup/c pu/cpu.cfs_quota_us", "250000\n");
    put(root, "/sys/fs/cgroup/c pu/cpu.cfs_period_us", "100000\n");
    assert_int_equal(ms_cpus_quota(root), 3);
    /* A path outside the mounted part: the mount point alone. */
    put(root, "/proc/self/cgroup", "3:cpuacct,cpu:/other\n");
    assert_int_equal(ms_cpus_quota(root), 3);
}

/* Nothing to read, or nothing that names a quota: no quota. */
static void test_none(void **state)
{
    (void)state;
    assert_int_equal(ms_cpus_quota("/nonexistent-ms-cpus"), 0);
    put(root, "/proc/self/mountinfo", ROOT_MOUNT);
    put(root, "/proc/self/cgroup", "0::/\n");
    assert_int_equal(ms_cpus_quota(root), 0);
    put(root, "/proc/self/mountinfo", ROOT_MOUNT V2_MOUNT);
    put(root, "/proc/self/cgroup", "0::/a/b\n"); /* no cpu.max files */
    assert_int_equal(ms_cpus_quota(root), 0);
}

/* The process's own figure: within [1, online CPUs]. */
static void test_available(void **state)
{
    long n = ms_cpus_available(), online = sysconf(_SC_NPROCESSORS_ONLN);

    (void)state;
    assert_true(n >= 1);
    assert_true(n <= (online > 1 ? online : 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_max),
        cmocka_unit_test(test_cfs),
        cmocka_unit_test_setup_teardown(test_v2_ancestor, make_root, remove_root),
        cmocka_unit_test_setup_teardown(test_v2_namespace, make_root, remove_root),
        cmocka_unit_test_setup_teardown(test_v1, make_root, remove_root),
        cmocka_unit_test_setup_teardown(test_v1_container_view, make_root, remove_root),
        cmocka_unit_test_setup_teardown(test_none, make_root, remove_root),
        cmocka_unit_test(test_available),
    };
    return cmocka_run_group_tests_name("ms_cpus", tests, NULL, NULL);
}
