"""Meters around a pipeline: how busy other processes kept the machine (a noise indicator), a
wait for a quiet machine, and peak memory (CUDA max_memory_allocated, or sampled CPU RSS)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .common import cuda, log, release_memory


def cpu_counters() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, steal seconds, this process's CPU seconds)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    t = os.times()
    return (user + nice + system + irq + softirq) / hz, steal / hz, t.user + t.system


class LoadMeter:
    """How busy the machine was with *other* processes while a pipeline ran (CPU cores used on
    average by everything but this process; plus hypervisor steal): a noise indicator."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), cpu_counters()
        return self

    def __exit__(self, *exc):
        c1, dt = cpu_counters(), time.perf_counter() - self.t0
        self.other_cores = self.steal_cores = None
        if self.c0 and c1 and dt > 0:
            self.other_cores = max(0.0, ((c1[0] - self.c0[0]) - (c1[2] - self.c0[2])) / dt)
            self.steal_cores = (c1[1] - self.c0[1]) / dt
        return False


def wait_until_idle(max_wait: float, threshold: float = 0.25, window: float = 3.0) -> float:
    """Sleep until other processes use < `threshold` cores over a `window`, at most `max_wait` s."""
    t0, quiet, last_note = time.perf_counter(), 0, 0.0
    while time.perf_counter() - t0 < max_wait:
        with LoadMeter() as load:
            time.sleep(window)
        if load.other_cores is None:
            break
        quiet = quiet + 1 if load.other_cores < threshold else 0
        if quiet >= 2:  # two quiet windows in a row
            break
        if load.other_cores >= threshold and time.perf_counter() - last_note > 30:
            log(f"waiting for the CPU: other processes use {load.other_cores:.2f} cores")
            last_note = time.perf_counter()
    return time.perf_counter() - t0


def process_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class MemoryMeter:
    """Peak memory of one pipeline. CUDA: max_memory_allocated; CPU: RSS growth, sampled.
    `mark(name)` keeps the peak so far under that name (the first mark of a name wins)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.marks: dict[str, float] = {}
        self.stop = threading.Event()
        self.peak = 0
        self.thread = None

    def sample(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, process_rss())

    def __enter__(self):
        release_memory()
        if cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda max_memory_allocated (absolute)"
        else:
            self.kind = "CPU RSS growth over pipeline start, sampled every 20 ms (best effort)"
            self.base = self.peak = process_rss()
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def peak_mib(self) -> float:
        if cuda():
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        self.peak = max(self.peak, process_rss())
        return (self.peak - self.base) / 2**20

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = self.peak_mib()

    def __exit__(self, *exc):
        self.mark("pipeline")
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        return False
