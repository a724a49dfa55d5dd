"""CPU time and memory of processes, from /proc (Linux only).

cpu_tree(pid): CPU seconds (user + system) used by pid, by the children it
has reaped (cutime + cstime) and, recursively, by its live children. The
difference of two readings is the CPU a process tree used in between, even
when children come and go (Postfix's master reaps its daemons: their time
moves into the master's cutime/cstime).

Peak memory: VmHWM of one process, reset to the current RSS by writing 5 to
/proc/PID/clear_refs (root), so each measured run reports its own peak. For a
tree of short-lived processes (Postfix) a sampler adds up the Proportional Set
Size (PSS, /proc/PID/smaps_rollup: shared pages divided among the sharers)
and resident set sizes of all processes every interval and keeps the peak.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, Iterable, List, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # fields after "(comm)": state is index 0 => field 3 of proc(5)
    return s[s.rfind(")") + 2:].split()


def cpu_self(pid: int, children: bool = True) -> float:
    """utime+stime (+cutime+cstime) of pid, in seconds; 0 if gone."""
    f = _stat_fields(pid)
    if not f:
        return 0.0
    # proc(5): utime 14, stime 15, cutime 16, cstime 17 -> indices 11..14 here
    t = int(f[11]) + int(f[12])
    if children:
        t += int(f[13]) + int(f[14])
    return t / CLK_TCK


def jvm_compiler_cpu(pid: int) -> float:
    """CPU seconds used so far by a HotSpot JVM's JIT compiler threads (named
    "C1 CompilerThreadN" / "C2 CompilerThreadN", cut to 15 characters in
    /proc); 0 if pid is gone or is not a JVM."""
    t = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                s = f.read().decode("ascii", "replace")
        except OSError:
            continue
        name = s[s.find("(") + 1:s.rfind(")")]
        if "CompilerThre" in name:
            f2 = s[s.rfind(")") + 2:].split()
            t += int(f2[11]) + int(f2[12])
    return t / CLK_TCK


def children_of(pid: int) -> List[int]:
    """Live direct children of pid (via /proc/PID/task/*/children)."""
    out: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def tree_pids(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children_of(p))
    return out


def cpu_tree(pid: int) -> float:
    """CPU seconds of pid and all its descendants, live or reaped."""
    return sum(cpu_self(p, children=True) for p in tree_pids(pid))


def status_kb(pid: int, key: str) -> int:
    """A 'kB' field of /proc/PID/status (VmRSS, VmHWM...), 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (needs root or the same user)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class CpuMeter:
    """CPU seconds used by named process trees between start() and stop()."""

    def __init__(self, roots: Dict[str, int]):
        self.roots = dict(roots)
        self.before: Dict[str, float] = {}
        self.used: Dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_tree(pid) for name, pid in self.roots.items()}

    def stop(self) -> Dict[str, float]:
        self.used = {name: max(0.0, cpu_tree(pid) - self.before.get(name, 0.0))
                     for name, pid in self.roots.items()}
        return self.used


class TreeMemorySampler(threading.Thread):
    """Samples the summed PSS and RSS and the process count of a process tree."""

    def __init__(self, root_pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root_pid, self.interval = root_pid, interval
        self.peak_pss_kb = 0
        self.peak_rss_kb = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        pids = tree_pids(self.root_pid)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(p) for p in pids))
        self.peak_rss_kb = max(self.peak_rss_kb, sum(status_kb(p, "VmRSS") for p in pids))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.sample()


def hwm_peaks(pids: Dict[str, int]) -> Dict[str, int]:
    return {name: status_kb(pid, "VmHWM") for name, pid in pids.items()}


def reset_all(pids: Iterable[int]) -> None:
    for p in pids:
        reset_hwm(p)


def machine_cpu() -> tuple:
    """(busy, total) jiffies of all CPUs from /proc/stat; iowait counts as idle."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def busy_cores(before: tuple, after: tuple) -> float:
    """Average number of busy CPUs between two machine_cpu() readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def loadavg() -> List[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def meminfo_kb(key: str) -> int:
    """A /proc/meminfo field (MemTotal, MemFree, ...) in KiB; 0 if absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine() -> Dict[str, object]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = meminfo_kb("MemTotal")
    un = os.uname()
    return {"cores": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kb / 2**20, 1),
            "kernel": f"{un.sysname} {un.release}", "hostname": un.nodename,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
