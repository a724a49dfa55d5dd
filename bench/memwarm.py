"""Fill the page cache before a benchmark, as on a machine that has been up a while.

Why: on the session VM (Firecracker, a virtio balloon with free page
reporting) the host backs guest memory only when it is first touched and
takes free pages back, so a page the guest has not used lately costs a host
fault on its first write: growing the page cache by 1 GiB took 2.6 s of
system CPU (dd, 1 MiB writes, ext4), the same 1 GiB written once the page
cache filled memory 0.28 s. A Kafka broker keeps every record it stores in
the page cache until retention ends, so on such a machine it pays that
price for every octet, while Postfix deletes each queue file after delivery
and reuses its own pages: the bench charged the VM's memory management to
the broker (~2.3 ms per MiB, most of its cost at 1 MiB). A server that has
run for a while has its memory full of page cache, and new pages come from
reclaiming old ones; fill() puts the machine in that state, for every
system alike; top_up() restores it before each run (a run's Kafka topic is
deleted after it, and memory freed stays free long enough for the host to
take it back: 1 GiB written again at once cost 0.20 s, ten seconds later
0.81 s), and write_cost() measures what a new page cost before and
after, for the report.

The filler is an ordinary file in the bench's state directory; its pages are
clean page cache the kernel evicts as anything else needs memory. remove()
deletes it when the bench ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Optional

import procstat

MIB = 1 << 20
# Left free after the fill: room for the processes the bench starts before
# the kernel has to reclaim (their memory then comes from the filler).
RESERVE_MIB = 256
# Disk left free by the filler (it never fills the disk the bench writes to).
DISK_SPARE_MIB = 8192
# The filler's name in the directory given.
FILLER = "memwarm-fill"
# Octets written to measure the cost of a new page-cache page.
PROBE_MIB = 256


def _free_mib() -> int:
    return procstat.meminfo_kb("MemFree") // 1024


def _write(path: Path, mib: int) -> float:
    """Append mib MiB to path with 1 MiB writes; the CPU seconds (system and
    user) it took."""
    buf = b"\xa5" * MIB
    t0 = os.times()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(mib):
            os.write(fd, buf)
    finally:
        os.close(fd)
    t1 = os.times()
    return (t1.system - t0.system) + (t1.user - t0.user)


def write_cost(directory: Path, mib: int = PROBE_MIB) -> float:
    """CPU milliseconds per MiB of writing a new file into the page cache
    (the file is deleted afterwards)."""
    probe = directory / "memwarm-probe"
    try:
        cpu = _write(probe, mib)
    finally:
        probe.unlink(missing_ok=True)
    return round(cpu * 1000 / mib, 3)


def fill(directory: Path, limit_mib: Optional[int] = None,
         reserve_mib: int = RESERVE_MIB) -> Dict[str, object]:
    """Write the filler until free memory is down to reserve_mib (at most
    limit_mib MiB); what it did and the cost of a new page before and after."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = max(1, min(PROBE_MIB, limit_mib) if limit_mib is not None else PROBE_MIB)
    before = write_cost(directory, probe)
    (directory / FILLER).touch()
    t0, t = os.times(), time.monotonic()
    want = top_up(directory, limit_mib, reserve_mib)
    t1 = os.times()
    if not want:
        remove(directory)
    return {"filled_mib": want, "fill_seconds": round(time.monotonic() - t, 1),
            "fill_cpu_seconds": round((t1.system - t0.system) + (t1.user - t0.user), 1),
            "new_page_ms_per_mib_before": before,
            "new_page_ms_per_mib_after": write_cost(directory, probe),
            "mem_free_mib_after": _free_mib()}


def top_up(directory: Path, limit_mib: Optional[int] = None,
           reserve_mib: int = RESERVE_MIB) -> int:
    """Append to the filler until free memory is down to reserve_mib (the
    filler never larger than limit_mib, the disk never below DISK_SPARE_MIB
    free); the MiB written (0 without a filler: fill() makes it)."""
    path = directory / FILLER
    if not path.exists():
        return 0
    st = os.statvfs(directory)
    want = min(_free_mib() - reserve_mib,
               st.f_bavail * st.f_frsize // MIB - DISK_SPARE_MIB)
    if limit_mib is not None:
        want = min(want, limit_mib - path.stat().st_size // MIB)
    if want <= 0:
        return 0
    _write(path, want)
    return want


def remove(directory: Path) -> None:
    (directory / FILLER).unlink(missing_ok=True)
