"""benchmarks.cpu: CPU per record from /proc, and what a throughput goal would take."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from benchmarks.cpu import (
    TICK_S,
    CpuMeter,
    cpu_budget,
    machine_cpu_s,
    pid_listening_on,
    process_cpu_s,
    service_pids,
)


def _fake_proc(root: Path, *, busy: int, idle: int, procs: dict[int, tuple[int, int]]) -> None:
    """A /proc with the machine's first line and `pid -> (utime, stime)` in ticks."""
    root.mkdir(exist_ok=True)
    # user nice system idle iowait irq softirq steal guest guest_nice
    (root / "stat").write_text(f"cpu  {busy - 10} 4 6 {idle - 3} 3 0 0 0 0 0\ncpu0 1 2 3\n")
    for pid, (utime, stime) in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        # a name with spaces and a parenthesis, as /proc allows
        fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
        (root / str(pid) / "stat").write_text(f"{pid} (we(ird) name) " + " ".join(fields) + "\n")


def test_process_and_machine_ticks_are_read_from_proc(tmp_path: Path) -> None:
    _fake_proc(tmp_path, busy=1000, idle=500, procs={42: (300, 100)})
    assert process_cpu_s(42, tmp_path) == pytest.approx(400 * TICK_S)
    assert process_cpu_s(43, tmp_path) is None  # gone
    busy, idle = machine_cpu_s(tmp_path)
    assert busy == pytest.approx(1000 * TICK_S)
    assert idle == pytest.approx(500 * TICK_S)


def test_meter_turns_ticks_into_microseconds_per_record(tmp_path: Path) -> None:
    clock = iter([10.0, 12.0])
    _fake_proc(tmp_path, busy=1000, idle=1000, procs={1: (0, 0), 2: (50, 50), 3: (0, 0)})
    meter = CpuMeter({"worker": 1, "broker": 2, "gone": 3}, wall=lambda: next(clock),
                     proc=tmp_path).start()
    # two seconds later: the worker used 1.5 s, the broker 0.5 s, pid 3 exited
    w, b = round(1.5 / TICK_S), round(0.5 / TICK_S)
    _fake_proc(tmp_path, busy=1000 + round(2.5 / TICK_S), idle=1000 + round(1.5 / TICK_S),
               procs={1: (w, 0), 2: (50 + b, 50)})
    (tmp_path / "3" / "stat").unlink()
    out = meter.stop(records=10_000)
    assert out["seconds"] == 2.0
    assert out["processes"]["worker"] == {"cpu_s": 1.5, "cores_busy": 0.75,
                                          "us_per_record": 150.0}
    assert out["processes"]["broker"]["us_per_record"] == 50.0
    assert "gone" not in out["processes"]
    assert out["us_per_record_services"] == 200.0
    assert out["machine"]["cores_busy"] == 1.25
    assert out["machine_idle_share"] == pytest.approx(1.5 / 4.0)


def test_budget_says_what_the_goal_would_take() -> None:
    run = {"cpu": {"cores": 2, "us_per_record_services": 80.0,
                   "processes": {"worker": {"us_per_record": 55.0}}}}
    b = cpu_budget(run, goal_rate_per_s=40_000)
    assert b is not None
    assert b["cores_needed_at_goal"] == 3.2  # 80 µs x 40,000 /s
    assert b["rate_filling_every_core"] == 25_000.0
    # 2 cores / 40,000 /s = 50 µs per record in all; broker + Redis take 25 of them
    assert b["worker_us_per_record_that_fits"] == 25.0
    assert cpu_budget({"cpu": None}, 40_000) is None
    assert cpu_budget(run, None) is None


def test_a_listening_socket_is_traced_to_its_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert pid_listening_on(port) == os.getpid()
        found = service_pids(f"127.0.0.1:{port},other:9092", f"redis://127.0.0.1:{port}/0")
        assert found == {"broker": os.getpid(), "redis": os.getpid()}
    assert pid_listening_on(port) is None  # closed: nobody listens
    assert service_pids("broker.elsewhere:1", "redis://cache.elsewhere:1/0") == {}
