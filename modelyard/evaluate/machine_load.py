"""How busy the rest of the machine kept the CPU while something was timed.

A speed figure taken while other processes compete for the cores is not the model's speed: with one runtime
thread per core, threads that meet at barriers slow down far more than the CPU time taken from them (a
throughput curve timed beside a busy neighbour read 3.5x slow, and the server chose its batching from it).
:class:`OtherLoad` reads the machine's busy time from ``/proc/stat`` (Linux) and subtracts this process's own
CPU time (every thread of it, the runtime's included), so what is left is what other processes used.
Elsewhere it is unavailable and reports 0.0 (``available`` says which).

``/proc/stat`` counts in clock ticks (10 ms), and the kernel charges each CPU's time a tick at a time, so over
a short window the difference alone can read as a neighbour: a tiny model's 200 latency calls (30 ms) on an
idle 2-core machine read 0.62 cores. What is reported is the reading less that resolution (one tick per CPU
over the window), never below 0: a figure above 0 is load that rounding cannot explain, and a short window
only shows a neighbour heavier than its resolution (measured on an idle 2-core machine: the raw reading stayed
under the resolution at every window from 10 ms to 0.5 s).

The efficiency measurements record it in their details (``other_cores``), and a run whose speed figures were
taken with at least :data:`CONTENDED_CORES` of other load says so in a caveat.
"""

from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter, process_time

__all__ = ["CONTENDED_CORES", "OtherLoad", "Snapshot"]

CONTENDED_CORES = 0.3

Snapshot = tuple[float, float, float]  # machine busy CPU-seconds, this process's CPU-seconds, wall clock


class OtherLoad:
    """CPU that processes other than this one kept busy, on average, in cores, since a :meth:`snapshot`."""

    def __init__(self, stat_path: Path | str = "/proc/stat", *, cpus: int | None = None) -> None:
        self._stat = Path(stat_path)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._cpus = cpus or os.cpu_count() or 1

    @property
    def available(self) -> bool:
        return self._stat.is_file()

    def _busy_s(self) -> float:
        fields = [int(x) for x in self._stat.read_text().splitlines()[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / self._tick

    def snapshot(self) -> Snapshot:
        busy = self._busy_s() if self.available else 0.0
        return busy, process_time(), perf_counter()

    def resolution_cores(self, elapsed_s: float) -> float:
        """The load the tick counters can show over ``elapsed_s`` from rounding alone: one tick per CPU."""
        return self._cpus / self._tick / max(elapsed_s, 1e-9)

    def cores_since(self, start: Snapshot) -> float:
        """Average number of cores other processes kept busy since ``start``, less the counters' resolution over
        that window (0.0 when unavailable or within the resolution)."""
        if not self.available:
            return 0.0
        busy, own, now = self.snapshot()
        elapsed = max(now - start[2], 1e-9)
        raw = ((busy - start[0]) - (own - start[1])) / elapsed
        return max(0.0, raw - self.resolution_cores(elapsed))

    def details_since(self, start: Snapshot) -> dict[str, float]:
        """``{"other_cores": ...}`` (2 decimals) for a measurement's details; empty when unavailable."""
        return {"other_cores": round(self.cores_since(start), 2)} if self.available else {}
