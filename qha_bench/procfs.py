"""
What the benches read of a process from Linux's C{/proc}: its CPU time and
its resident memory. Imports nothing of qha, so that the benches that
measure any broker can use it.
"""

from __future__ import annotations

import os

__all__ = ["cpuSeconds", "peakBytes", "residentBytes"]


def cpuSeconds(pid: int) -> float:
    """
    The user and system CPU seconds process C{pid} used so far (Linux's
    C{/proc/PID/stat}, fields 14 and 15), or 0 for pid 0 and where it
    cannot be read (no C{/proc}, or the process is gone).
    """
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _statusBytes(pid: int | str, field: str) -> int:
    """
    A size C{field} (in kB there) of C{/proc/PID/status}, in bytes, or 0
    where it cannot be read.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def residentBytes(pid: int | str = "self") -> int:
    """
    VmRSS of process C{pid} (this one by default), in bytes, or 0 where it
    cannot be read.
    """
    return _statusBytes(pid, "VmRSS:")


def peakBytes(pid: int | str = "self") -> int:
    """
    VmHWM (the peak resident memory) of process C{pid} (this one by
    default), in bytes, or 0 where it cannot be read.
    """
    return _statusBytes(pid, "VmHWM:")
