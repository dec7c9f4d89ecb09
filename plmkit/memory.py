"""Peak memory of a piece of work: GPU allocator peak, or the process's resident high-water mark.

On Linux the resident high-water mark (VmHWM) can be reset by writing 5 to /proc/self/clear_refs,
so several methods run in one process each get their own peak.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # not Linux: the lifetime peak is all we can report
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    """GPU peak allocated (CUDA) or peak resident set size of this process (CPU), in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
