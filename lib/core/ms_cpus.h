/*
 * ms_cpus.h - how many CPUs this process may use: the default number of a
 * process's event loops (the frontend's [node] threads).
 *
 * The online CPUs; fewer when the process's CPU affinity names fewer
 * (taskset, a cpuset, Kubernetes' static CPU manager); fewer again when a
 * CPU quota allows less: cgroup v2 `cpu.max`, cgroup v1
 * `cpu.cfs_quota_us` / `cpu.cfs_period_us`, which is what a container's
 * `--cpus` or a Kubernetes pod's CPU limit sets.  A quota counts rounded up
 * (1.5 CPUs: 2), and the smallest one over the process's cgroup and its
 * ancestors up to the hierarchy's mount point binds.  A pod limited to 2
 * CPUs on a 64-CPU node thus runs 2 loops, not 64 (each loop has its own
 * Kafka producer and Redis connection, and its sessions fill its produce
 * requests: docs/scaling.md).
 *
 * The parse functions are pure; ms_cpus_quota reads /proc/self/cgroup,
 * /proc/self/mountinfo and the cgroup files under `root` (tests pass a
 * directory of their own; the program passes "").  Any thread.
 */
#ifndef MS_CPUS_H
#define MS_CPUS_H

/* Most cgroup levels looked at above the process's own, and the longest
 * path or line read (a longer one is skipped: no quota from it). */
#define MS_CPUS_LEVELS_MAX 64
#define MS_CPUS_PATH_MAX 4096

/* cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD", microseconds):
 * the CPUs the quota allows, rounded up (at least 1); 0 no quota; -1
 * malformed. */
long ms_cpus_parse_cpu_max(const char *text);

/* cgroup v1 `cpu.cfs_quota_us` ("-1": none) and `cpu.cfs_period_us`: as
 * ms_cpus_parse_cpu_max. */
long ms_cpus_parse_cfs(const char *quota, const char *period);

/* The CPUs the process's cgroup quotas allow (v2 and v1, the smallest over
 * every level): 0 when none is set or none can be read. */
long ms_cpus_quota(const char *root);

/* min(online CPUs, CPUs in the affinity mask, ms_cpus_quota("")), at
 * least 1. */
long ms_cpus_available(void);

#endif
