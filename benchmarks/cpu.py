"""CPU time per record, by process, over one measured window (Linux `/proc`).

A throughput ratio says how far rung is from its ceiling; it does not say whether the
machine could carry the goal at all. `CpuMeter` reads the clock ticks the worker, the
broker and Redis spent between two moments (`/proc/<pid>/stat` utime + stime, all their
threads) and the machine's busy and idle time (`/proc/stat`), and turns them into CPU
microseconds per committed record. `cpu_budget` multiplies that by the rate a goal asks
for: the cores it would take at today's cost per record, against the cores there are.

The broker and Redis are found by the local port they listen on (`service_pids`), so
the figures cover `make bench`'s own stack and services given by address alike; a
service on another host is simply not in the table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def process_cpu_s(pid: int, proc: Path = PROC) -> float | None:
    """User + system CPU seconds of `pid` (every thread), or None once it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14, 15)


def machine_cpu_s(proc: Path = PROC) -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in (proc / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy * TICK_S, idle * TICK_S


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":  # LISTEN
                inodes.add(parts[9])
    return inodes


def pid_listening_on(port: int, proc: Path = PROC) -> int | None:
    """The local process listening on TCP `port`, or None (remote, or not visible)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port, proc)}
    if not wanted:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


def service_pids(bootstrap: str, redis_url: str) -> dict[str, int]:
    """{"broker": pid, "redis": pid} for the services that listen on this machine."""
    out: dict[str, int] = {}
    first = bootstrap.split(",")[0].strip()
    ports = {"broker": int(first.rsplit(":", 1)[1]) if ":" in first else None,
             "redis": urlparse(redis_url).port}
    for name, port in ports.items():
        pid = pid_listening_on(port) if port else None
        if pid is not None:
            out[name] = pid
    return out


class CpuMeter:
    """CPU spent by named processes and by the machine between `start()` and `stop()`."""

    def __init__(self, pids: Mapping[str, int], wall: Callable[[], float] = time.monotonic,
                 proc: Path = PROC) -> None:
        self.pids, self._wall, self._proc = dict(pids), wall, proc
        self._t0 = 0.0
        self._machine0 = (0.0, 0.0)
        self._proc0: dict[str, float | None] = {}

    def start(self) -> CpuMeter:
        self._t0 = self._wall()
        self._machine0 = machine_cpu_s(self._proc)
        self._proc0 = {name: process_cpu_s(pid, self._proc) for name, pid in self.pids.items()}
        return self

    def stop(self, records: int) -> dict[str, Any]:
        seconds = self._wall() - self._t0
        busy, idle = machine_cpu_s(self._proc)
        busy, idle = busy - self._machine0[0], idle - self._machine0[1]
        procs: dict[str, Any] = {}
        for name, pid in self.pids.items():
            before, after = self._proc0.get(name), process_cpu_s(pid, self._proc)
            if before is None or after is None:
                continue  # exited inside the window: its ticks cannot be read any more
            procs[name] = per_record(after - before, seconds, records)
        return {"seconds": round(seconds, 3), "records": records,
                "cores": os.cpu_count(), "machine": per_record(busy, seconds, records),
                "machine_idle_share": round(idle / (busy + idle), 4) if busy + idle else None,
                "processes": procs,
                "us_per_record_services": round(sum(p["us_per_record"] for p in procs.values()),
                                                2) if records else None}


def per_record(cpu_s: float, seconds: float, records: int) -> dict[str, Any]:
    return {"cpu_s": round(cpu_s, 3),
            "cores_busy": round(cpu_s / seconds, 3) if seconds > 0 else None,
            "us_per_record": round(1e6 * cpu_s / records, 2) if records else None}


def cpu_budget(run: Mapping[str, Any], goal_rate_per_s: float | None) -> dict[str, Any] | None:
    """What a throughput goal would take at this run's CPU cost per record: the cores
    (worker + broker + Redis) at `goal_rate_per_s`, and the rate at which those processes
    would fill every core of the machine (a ceiling: no idle time, no contention)."""
    cpu = run.get("cpu")
    if not isinstance(cpu, Mapping) or not goal_rate_per_s:
        return None
    us = cpu.get("us_per_record_services")
    if not us:
        return None
    cores = cpu.get("cores") or 1  # the measuring machine's, recorded by `CpuMeter`
    worker = (cpu.get("processes") or {}).get("worker", {}).get("us_per_record")
    return {"goal_rate_per_s": round(goal_rate_per_s, 1),
            "us_per_record_services": us, "us_per_record_worker": worker,
            "cores_needed_at_goal": round(us * goal_rate_per_s / 1e6, 2), "cores": cores,
            "rate_filling_every_core": round(cores * 1e6 / us, 1),
            "worker_us_per_record_that_fits": (
                round(cores * 1e6 / goal_rate_per_s - (us - worker), 2)
                if worker is not None else None)}
