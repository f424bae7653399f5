"""Shared benchmark helpers: machine context, best-of-k timing and peak resident memory.

Every figure a benchmark prints should carry `context()` (torch threads and load average), because
the machines are shared and a busy neighbour changes timings.

Peak memory (`peak_rss_delta`) reads the process's resident-set high-water mark (``VmHWM``) after
resetting it through ``/proc/self/clear_refs`` (Linux >= 4.0), so it sees every allocation, torch's
CPU tensors included. glibc keeps freed blocks below its (adaptive) mmap threshold for reuse, and
reused memory does not raise the high-water mark; run measurements in a fresh interpreter started
with `MALLOC_ENV`, which fixes the threshold at 64 KiB so that every large block goes straight to
the OS and back.
"""

from __future__ import annotations

import gc
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: Environment for a subprocess that measures memory: large allocations are mmapped and returned on free.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 16), "MALLOC_TRIM_THRESHOLD_": str(1 << 16)}


def context() -> dict[str, Any]:
    """``{"threads": torch threads, "load": (1, 5, 15 min load averages)}`` at this moment."""
    return {"threads": torch.get_num_threads(), "load": tuple(round(x, 2) for x in os.getloadavg())}


def context_str() -> str:
    """`context` as a short string for tables: ``threads=2 load=0.53/0.41/0.30``."""
    ctx = context()
    return f"threads={ctx['threads']} load={'/'.join(f'{x:.2f}' for x in ctx['load'])}"


@dataclass(frozen=True)
class Timing:
    """The fastest of several runs: wall-clock seconds, process CPU seconds (all threads), and the last result.

    On a busy machine the CPU time is the steadier figure: it leaves out the time spent waiting for a core.
    """

    wall_s: float
    cpu_s: float
    result: Any


def best_time(fn: Callable[[], Any], *, repeats: int = 3) -> Timing:
    """The fastest of ``repeats`` runs of ``fn()``."""
    return interleaved_best({"fn": fn}, repeats=repeats)["fn"]


def interleaved_best(fns: dict[str, Callable[[], Any]], *, repeats: int = 3) -> dict[str, Timing]:
    """`best_time` for several functions run in turn within each repeat, so that all see the same load."""
    wall = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            wall[name] = min(wall[name], time.perf_counter() - start_wall)
    return {name: Timing(wall[name], cpu[name], results[name]) for name in fns}


def peak_rss_delta(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes by which the resident set's peak rose above its level at the call while ``fn()`` ran, and the result.

    Linux only. Call it in a process started with `MALLOC_ENV` (module docstring).
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    start = _status_kib("VmRSS")
    result = fn()
    return (_status_kib("VmHWM") - start) * 1024, result


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))
