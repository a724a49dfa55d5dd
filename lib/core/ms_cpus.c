/*
 * ms_cpus.c - how many CPUs this process may use (interface: ms_cpus.h).
 */
#include "ms_cpus.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A decimal integer in [1, LLONG_MAX] from s, with only blanks after it.
 * Returns it, or -1. */
static long long positive(const char *s, const char **end)
{
    char *e;
    long long v;

    while (*s == ' ' || *s == '\t')
        s++;
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoll(s, &e, 10);
    if (errno != 0 || v < 1)
        return -1;
    if (end != NULL)
        *end = e;
    else {
        while (*e == ' ' || *e == '\t' || *e == '\n')
            e++;
        if (*e != '\0')
            return -1;
    }
    return v;
}

static long quota_cpus(long long quota, long long period)
{
    long long n = quota / period + (quota % period != 0);

    return n > LONG_MAX ? LONG_MAX : (long)n;
}

long ms_cpus_parse_cpu_max(const char *text)
{
    const char *p = text, *e;
    long long quota, period;

    while (*p == ' ' || *p == '\t')
        p++;
    if (strncmp(p, "max", 3) == 0 &&
        (p[3] == ' ' || p[3] == '\t' || p[3] == '\n' || p[3] == '\0')) {
        if (p[3] == '\0' || p[3] == '\n')
            return 0;
        return positive(p + 3, NULL) > 0 ? 0 : -1;
    }
    if ((quota = positive(p, &e)) < 0 || (*e != ' ' && *e != '\t'))
        return -1;
    if ((period = positive(e, NULL)) < 0)
        return -1;
    return quota_cpus(quota, period);
}

long ms_cpus_parse_cfs(const char *quota, const char *period)
{
    const char *p = quota;
    long long q, per;

    while (*p == ' ' || *p == '\t')
        p++;
    if (strncmp(p, "-1", 2) == 0 && (p[2] == '\0' || p[2] == '\n' || p[2] == ' '))
        return 0;
    if ((q = positive(quota, NULL)) < 0 || (per = positive(period, NULL)) < 0)
        return -1;
    return quota_cpus(q, per);
}

/* The smaller of two quotas, 0 meaning none. */
static long fewer(long a, long b)
{
    return a <= 0 ? b : b <= 0 || a < b ? a : b;
}

/* root + path opened for reading, or NULL. */
static FILE *open_under(const char *root, const char *path)
{
    char full[MS_CPUS_PATH_MAX];

    if ((size_t)snprintf(full, sizeof(full), "%s%s", root, path) >= sizeof(full))
        return NULL;
    return fopen(full, "re");
}

/* The first line of root + path into buf; 0, or -1 (absent, unreadable,
 * too long). */
static int read_line(const char *root, const char *path, char *buf, size_t size)
{
    FILE *f;
    int ok;

    if ((f = open_under(root, path)) == NULL)
        return -1;
    ok = fgets(buf, (int)size, f) != NULL && strchr(buf, '\n') != NULL;
    fclose(f);
    return ok ? 0 : -1;
}

/* mountinfo's octal escapes (\040 for a blank) undone in place. */
static void unescape(char *s)
{
    char *w = s;

    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
            s[3] >= '0' && s[3] <= '7') {
            *w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else
            *w++ = *s;
    }
    *w = '\0';
}

/* Whether the comma-separated list has the item. */
static int has_item(const char *list, const char *item)
{
    size_t n = strlen(item);
    const char *p = list;

    for (;;) {
        if (strncmp(p, item, n) == 0 && (p[n] == ',' || p[n] == '\0' || p[n] == '\n'))
            return 1;
        if ((p = strchr(p, ',')) == NULL)
            return 0;
        p++;
    }
}

/* The mount of the hierarchy: cgroup v2 (v1 0), or v1 with the cpu
 * controller (v1 1).  mnt and mroot get its mount point and the
 * hierarchy's path mounted there.  0, or -1 none. */
static int find_mount(const char *root, int v1, char *mnt, char *mroot, size_t size)
{
    char line[MS_CPUS_PATH_MAX];
    FILE *f;
    int found = -1;

    if ((f = open_under(root, "/proc/self/mountinfo")) == NULL)
        return -1;
    while (found < 0 && fgets(line, sizeof(line), f) != NULL) {
        char *field[5], *sep, *fstype, *super, *save = NULL;
        size_t i;

        if (strchr(line, '\n') == NULL)
            break; /* too long: do not guess from a cut line */
        if ((sep = strstr(line, " - ")) == NULL)
            continue;
        *sep = '\0';
        fstype = strtok_r(sep + 3, " \n", &save);
        strtok_r(NULL, " \n", &save); /* source */
        super = strtok_r(NULL, " \n", &save);
        if (fstype == NULL || super == NULL)
            continue;
        if (v1 ? strcmp(fstype, "cgroup") != 0 || !has_item(super, "cpu")
               : strcmp(fstype, "cgroup2") != 0)
            continue;
        save = NULL;
        for (i = 0; i < 5; i++)
            if ((field[i] = strtok_r(i == 0 ? line : NULL, " ", &save)) == NULL)
                break;
        if (i < 5 || strlen(field[3]) >= size || strlen(field[4]) >= size)
            continue;
        strcpy(mroot, field[3]);
        strcpy(mnt, field[4]);
        unescape(mroot);
        unescape(mnt);
        found = 0;
    }
    fclose(f);
    return found;
}

/* The process's path in the hierarchy (/proc/self/cgroup: "0::PATH" for
 * v2, "N:LIST:PATH" with cpu in LIST for v1).  0, or -1. */
static int find_cgroup(const char *root, int v1, char *out, size_t size)
{
    char line[MS_CPUS_PATH_MAX];
    FILE *f;
    int found = -1;

    if ((f = open_under(root, "/proc/self/cgroup")) == NULL)
        return -1;
    while (found < 0 && fgets(line, sizeof(line), f) != NULL) {
        char *c1 = strchr(line, ':'), *c2, *nl;

        if ((nl = strchr(line, '\n')) == NULL)
            break;
        *nl = '\0';
        if (c1 == NULL || (c2 = strchr(c1 + 1, ':')) == NULL)
            continue;
        *c2 = '\0';
        if (v1 ? !has_item(c1 + 1, "cpu") : strcmp(line, "0:") != 0 || c1[1] != '\0')
            continue;
        if (strlen(c2 + 1) >= size)
            continue;
        strcpy(out, c2 + 1);
        found = 0;
    }
    fclose(f);
    return found;
}

/* The smallest quota from the process's cgroup up to the mount point of
 * one hierarchy: 0 none. */
static long hierarchy_quota(const char *root, int v1)
{
    char mnt[MS_CPUS_PATH_MAX], mroot[MS_CPUS_PATH_MAX], cg[MS_CPUS_PATH_MAX];
    char dir[MS_CPUS_PATH_MAX], file[MS_CPUS_PATH_MAX], a[128], b[128];
    const char *rel;
    size_t mlen, rlen;
    long best = 0, n;
    int level;

    if (find_mount(root, v1, mnt, mroot, sizeof(mnt)) < 0 ||
        find_cgroup(root, v1, cg, sizeof(cg)) < 0)
        return 0;
    /* The mount shows the hierarchy from mroot down: a container sees its
     * own cgroup mounted as the root (and, with a cgroup namespace, "/"
     * as its path); a path outside what is mounted is looked at from the
     * mount point alone. */
    rlen = strcmp(mroot, "/") == 0 ? 0 : strlen(mroot);
    if (rlen == 0 || (strncmp(cg, mroot, rlen) == 0 && (cg[rlen] == '/' || cg[rlen] == '\0')))
        rel = cg + rlen;
    else
        rel = "";
    mlen = strlen(mnt);
    while (mlen > 1 && mnt[mlen - 1] == '/')
        mnt[--mlen] = '\0';
    if ((size_t)snprintf(dir, sizeof(dir), "%s%s", mnt, rel) >= sizeof(dir))
        return 0;
    for (level = 0; level <= MS_CPUS_LEVELS_MAX; level++) {
        size_t dlen = strlen(dir);
        char *slash;

        while (dlen > 1 && dir[dlen - 1] == '/')
            dir[--dlen] = '\0';
        n = 0;
        if (v1) {
            if ((size_t)snprintf(file, sizeof(file), "%s/cpu.cfs_quota_us", dir) < sizeof(file) &&
                read_line(root, file, a, sizeof(a)) == 0) {
                if ((size_t)snprintf(file, sizeof(file), "%s/cpu.cfs_period_us", dir) <
                        sizeof(file) &&
                    read_line(root, file, b, sizeof(b)) == 0)
                    n = ms_cpus_parse_cfs(a, b);
            }
        } else if ((size_t)snprintf(file, sizeof(file), "%s/cpu.max", dir) < sizeof(file) &&
                   read_line(root, file, a, sizeof(a)) == 0)
            n = ms_cpus_parse_cpu_max(a);
        best = fewer(best, n);
        if (dlen <= mlen || (slash = strrchr(dir, '/')) == NULL)
            break;
        *slash = '\0';
        if (strlen(dir) < mlen)
            break;
    }
    return best;
}

long ms_cpus_quota(const char *root)
{
    return fewer(hierarchy_quota(root, 0), hierarchy_quota(root, 1));
}

long ms_cpus_available(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;

    if (n < 1)
        n = 1;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0 && CPU_COUNT(&set) < n)
        n = CPU_COUNT(&set);
    return fewer(n, ms_cpus_quota(""));
}
