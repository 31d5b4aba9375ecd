"""What this machine can hold and run: its cores and its memory, read without importing torch (params validation
uses them). Nothing here changes what a stage writes."""

from __future__ import annotations

import os


def _cgroup_value(cgroup: str, name: str) -> int | None:
    try:
        with open(os.path.join(cgroup, name)) as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory new processes can take without swapping: the kernel's ``MemAvailable``, lowered to what is
    left under this cgroup's limit (``memory.max`` less ``memory.current``) where there is one; None when neither
    can be read (not Linux)."""
    known = []
    try:
        with open(meminfo) as lines:
            known += [int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    ceiling, used = _cgroup_value(cgroup, "memory.max"), _cgroup_value(cgroup, "memory.current")
    if ceiling is not None and used is not None:
        known.append(max(0, ceiling - used))
    return min(known) if known else None


def memory_size(cgroup: str = "/sys/fs/cgroup") -> int:
    """Bytes of memory this process could ever hold: the machine's physical memory, or this cgroup's limit where
    that is lower. Unlike :func:`available_memory` it does not move with the load, so a check against it gives
    the same answer from run to run."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ceiling = _cgroup_value(cgroup, "memory.max")
    return min(physical, ceiling) if ceiling is not None else physical
