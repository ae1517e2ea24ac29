"""The whole shadow in a child process at idle priority (`RUNG_SHADOW__EXECUTOR=process`).

Why a process, and why all of the shadow in it. Measured on the 2-core bench machine
(docs/shadow.md): with the challenger on a niced thread of the worker, the backlog drain
lost 17% of live throughput; with only the challenger's `predict` in a niced child, still
37% (`make bench`, 2026-12-01T16:13Z: 9,688 vs 15,401 rec/s) and the read-back p99 at
50% load went from 129 to 212 ms. A nice value cannot keep a thread off the one GIL,
and what stayed in the worker (event features and the capture per record, drift bins,
a JSON record and a `produce` per record) was GIL time taken from the live loop, while
the child at nice 10 still took a tenth of a contended CPU.

So the worker keeps only `ShadowProcess`: `offer` puts the committed batch on a bounded
queue (never blocks; full → dropped, `queue_full`), and one feeder thread packs it into
a few flat columns (the input records' bytes, the live scores' values, the captured
feature rows: no object per record is pickled) and writes it to a pipe. The child, a
spawned interpreter under `SCHED_IDLE` (it gets a CPU only when nothing else wants one;
nice 19 where that is refused), decodes the records again with the topic's format, runs
`stream_app.live.shadow.ShadowRunner` (drift, the challenger in-process, its own
producer to `<prefix>.scores.shadow`) and answers each batch with what it would have
reported (`RecordingReport`); the feeder applies that to the worker's Prometheus
metrics. A saturated machine starves the child, the pipe and then the queue fill and
the shadow drops, counted, instead of slowing the live path.

A child that dies is logged; everything offered afterwards is dropped (`error`). At
`stop` the queued batches are still sent and the child flushes its producer, all within
the worker's shutdown budget; what did not make it is counted (`shutdown`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Final

import numpy as np
import structlog

from stream_app.config import Settings
from stream_app.live.shadow import build_runner
from stream_app.live.shadow_parts import backlog_gate, sampled
from stream_app.live.shadow_tap import FeatureTap
from stream_app.pipeline import BatchOutcome
from topics.schemas import Action, Score, Transaction

log = structlog.get_logger(__name__)

START_TIMEOUT_S: Final = 120.0  # spawn + import torch + load and verify the challenger
_SEP: Final = "\x1f"
_ACTIONS: Final = {a.value: a for a in Action}
KEEP_FETCHES_ON_DROP: Final = 4
Call = tuple[str, tuple[Any, ...]]
Fetch = tuple[Sequence[Transaction], np.ndarray, np.ndarray]  # a feature tap's capture


class RecordingReport:
    """A `ShadowReport` that records its calls, for the parent to replay (`take`)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def compared(self, champion: str, challenger: str, n: int) -> None:
        self.calls.append(("compared", (champion, challenger, n)))

    def flipped(self, champion: str, challenger: str, from_action: str, to_action: str,
                n: int) -> None:
        self.calls.append(("flipped", (champion, challenger, from_action, to_action, n)))

    def set_correlation(self, champion: str, challenger: str, value: float) -> None:
        self.calls.append(("set_correlation", (champion, challenger, value)))

    def dropped(self, reason: str, n: int) -> None:
        self.calls.append(("dropped", (reason, n)))

    def set_psi(self, feature: str, model_version: str, value: float) -> None:
        self.calls.append(("set_psi", (feature, model_version, value)))

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls


_REPORT_CALLS: Final = frozenset({"compared", "flipped", "set_correlation", "dropped", "set_psi"})


# ---- the batch on the wire ---------------------------------------------------------
def pack(offered_at_s: float, outcome: BatchOutcome, fetches: Sequence[Fetch],
         sample: float = 1.0) -> bytes:
    """A committed batch as flat columns (pickled strings, bytes and arrays only), cut to
    the shadow's sample (`shadow.sample`, by id hash) here, in the worker: the records
    outside it are neither sent nor decoded again nor binned, so the shadow's cost
    follows the sample. The batch's full record count travels with it: the child
    answers for all of them (`handled`), the ones outside the sample are not drops."""
    decoded = outcome.decoded
    assert decoded is not None
    records = decoded.records
    rows = decoded.tx_rows
    scores = outcome.scores
    n = len(scores)
    if sample < 1.0:
        keep = np.flatnonzero(sampled(decoded.txs, sample)).tolist()
        rows = [rows[i] for i in keep]
        scores = [scores[i] for i in keep]
        fetches = [_sampled_fetch(f, sample) for f in fetches]
    values = [records[i].value for i in rows]
    topic = records[rows[0]].topic if rows else ""
    live = (np.fromiter((s.score for s in scores), np.float64, len(scores)),
            _SEP.join([s.action.value for s in scores]),
            _SEP.join([s.tier for s in scores]),
            _SEP.join([s.model_version for s in scores]))
    taps = [(_SEP.join([t.transaction_id for t in txs]), rows_, have)
            for txs, rows_, have in fetches if len(txs)]
    return pickle.dumps((offered_at_s, n, topic, values, live, taps), protocol=5)


def _sampled_fetch(fetch: Fetch, sample: float) -> Fetch:
    """A feature tap's capture cut to the sample by its own ids: a capture sent with one
    batch may hold the next batch's records (scored before this one was committed)."""
    txs, rows, have = fetch
    pick = sampled(txs, sample)
    keep = np.flatnonzero(pick)
    return [txs[i] for i in keep.tolist()], rows[keep], have[keep]


def unpack(data: bytes, decode: Any) -> tuple[float, int, list[Transaction], list[Score],
                                              list[tuple[list[str], np.ndarray, np.ndarray]]]:
    """`pack`'s inverse in the child: the batch's record count, its sampled records
    decoded again (`decode(value, topic)`), the live scores as far as the shadow reads
    them, the captures."""
    offered_at_s, n, topic, values, (score, actions, tiers, versions), taps = \
        pickle.loads(data)
    txs = [decode(v, topic) for v in values]
    scores = [Score(t.transaction_id, s, _ACTIONS[a], a == "review", tier, version, 0.0, (),
                    0.0, 0.0)
              for t, s, a, tier, version in zip(txs, score.tolist(), _split(actions),
                                                _split(tiers), _split(versions), strict=True)]
    return offered_at_s, n, txs, scores, [(_split(ids), rows, have) for ids, rows, have in taps]


def _split(joined: str) -> list[str]:
    return joined.split(_SEP) if joined else []


# ---- in the worker -------------------------------------------------------------------
class ShadowProcess:
    """The worker's side: a bounded queue, a feeder thread, the child process."""

    def __init__(self, settings: Settings, report: Any, tap: FeatureTap | None, *,
                 publish: bool = True, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.report, self.tap = report, tap
        self.start_timeout_s = start_timeout_s
        self._queue: queue.Queue[tuple[float, BatchOutcome, list[Fetch]] | None] = \
            queue.Queue(settings.shadow.queue_batches)
        self._pending: list[Fetch] = []  # the tap's fetches not yet queued with a batch
        self.gate = backlog_gate(settings)
        self.sample = settings.shadow.sample
        ctx = mp.get_context("spawn")
        self._conn, self._child_conn = ctx.Pipe()
        # spawned by the feeder with the first batch it gets: after the worker has caught
        # up (the gate lets nothing through before), not while it drains a backlog
        self._proc = ctx.Process(target=child_main, args=(settings, self._child_conn, publish),
                                 name="rung-shadow", daemon=True)
        self.spawned = threading.Event()
        self._holding = 0  # records of the batch the feeder holds while the child starts
        self._sent = self._handled = 0  # records written to the child / answered by it
        self._broken = ""
        self._stopping = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="rung-shadow-feed",
                                        daemon=True)
        self.paused = False  # `pause` / `resume`

    def pause(self) -> None:
        """Stop offering batches (each is dropped, `reason="paused"`) until `resume`;
        the child finishes what it holds and then idles. The interleaved benchmark
        (`benchmarks.shadow_interleaved`) toggles this inside one worker run."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.spawned.is_set() else None

    def start(self) -> ShadowProcess:
        self._thread.start()
        return self

    # -- on the committer thread: never blocks ---------------------------------------
    def offer(self, outcome: BatchOutcome) -> bool:
        if outcome.decoded is None or not outcome.scores:
            return True
        if self._broken:
            self.report.dropped("error", len(outcome.scores))
            return False
        if self.tap is not None:
            self._pending.extend(self.tap.drain())
        if self.paused:  # `pause`: nothing queued, the captures let go
            self._pending.clear()
            self.report.dropped("paused", len(outcome.scores))
            return False
        reason = "backlog" if self.gate is not None and self.gate.busy(outcome) else ""
        if not reason:
            try:
                self._queue.put_nowait((time.monotonic(), outcome, self._pending))
                self._pending = []
                return True
            except queue.Full:
                reason = "queue_full"
        # keep only the newest fetches: with one commit in flight they are this batch's
        # and the next one's (already scored), which may still be sent
        del self._pending[:-KEEP_FETCHES_ON_DROP]
        self.report.dropped(reason, len(outcome.scores))
        return False

    # -- the feeder thread -----------------------------------------------------------
    def _feed(self) -> None:
        try:
            first = self._queue.get()
            if first is None:  # stopped before the shadow had anything to do
                return
            self._holding = len(first[1].scores)
            self._spawn()
            if not self._hello():
                return
            self._conn.send_bytes(pack(*first, sample=self.sample))
            self._sent, self._holding = self._holding, 0
            while True:
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    self._replay_reports()
                    continue
                if item is None:
                    break
                data = pack(*item, sample=self.sample)
                self._conn.send_bytes(data)  # blocks (no GIL) while the child is behind
                self._sent += len(item[1].scores)
                self._replay_reports()
            self._conn.send_bytes(b"")  # the child flushes its producer and says goodbye
            while self._proc.is_alive() or self._conn.poll(0):
                if self._conn.poll(0.05) and self._replay_reports(final=True):
                    break
        except (OSError, EOFError, ValueError) as exc:
            self._break(f"shadow process gone: {exc!r}")
        finally:
            self._finished.set()

    def _spawn(self) -> None:
        self._proc.start()
        self._child_conn.close()
        # idle from its first instruction on: the interpreter's start and the imports
        # of torch and the model (seconds of CPU) must not compete with the live path
        _idle_priority(self._proc.pid or 0)  # the child reports the outcome in its hello
        self.spawned.set()

    def _hello(self) -> bool:
        if not self._conn.poll(self.start_timeout_s):
            self._break(f"shadow process did not start in {self.start_timeout_s:.0f}s")
            return False
        kind, detail = pickle.loads(self._conn.recv_bytes())
        if kind != "ready":
            self._break(f"shadow process failed to start: {detail}")
            return False
        log.info("shadow_started", executor="process", pid=self._proc.pid, **detail)
        return True

    def _replay_reports(self, final: bool = False) -> bool:
        """Apply what the child reported; True once its goodbye has been read."""
        bye = False
        while self._conn.poll(0):
            kind, handled, calls = pickle.loads(self._conn.recv_bytes())
            self._handled += handled
            for name, args in calls:
                if name in _REPORT_CALLS:
                    getattr(self.report, name)(*args)
            bye = bye or kind == "bye"
        return bye and final

    def _break(self, reason: str) -> None:
        if not self._broken:
            self._broken = reason
            if self._stopping:  # `stop` killed it; `stop` counts what was left
                log.info("shadow_process_ended_at_stop", reason=reason)
                return
            log.error("shadow_process_failed", reason=reason)
        left = self._sent - self._handled + self._holding
        self._sent, self._holding = self._handled, 0
        left += self._clear_queue()
        if left:
            self.report.dropped("error", left)

    def _clear_queue(self) -> int:
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            left += len(item[1].scores) if item is not None else 0

    # -- lifecycle -------------------------------------------------------------------
    def stop(self, timeout_s: float = 3.0) -> None:
        """Send what is queued, let the child finish and flush, within `timeout_s`; the
        rest is dropped (`shutdown`) and the child is killed."""
        end = time.monotonic() + timeout_s
        self._stopping = True
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=max(0.01, 0.5 * timeout_s))
            except queue.Full:
                pass
            self._finished.wait(max(0.0, end - time.monotonic()))
        if self.spawned.is_set():
            if self._proc.is_alive():
                self._proc.join(max(0.0, end - time.monotonic()))
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(2.0)
        if self._thread.is_alive():
            self._thread.join(1.0)  # it sees the pipe close and stops counting
        left = self._clear_queue() + self._sent - self._handled + self._holding
        self._sent, self._holding = self._handled, 0
        if left > 0:
            self.report.dropped("shutdown", left)
        self._conn.close()


# ---- in the child --------------------------------------------------------------------
def _idle_priority(pid: int = 0) -> str:
    """SCHED_IDLE for process `pid` (0: this one) and every thread it starts later
    (Linux); nice 19 where that is refused or unknown."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
        except OSError:
            return "unchanged"
        return "nice 19"


def child_main(settings: Settings, conn: Connection, publish: bool = True) -> None:
    """The child: build a `ShadowRunner` like the in-process one, answer batches."""
    priority = _idle_priority()
    from stream_app.logs import configure_logging

    configure_logging(settings.log.format, settings.log.level)
    try:
        import torch

        torch.set_num_threads(1)
        from stream_app.kafka.serde import build_format

        report = RecordingReport()
        runner = build_runner(settings, None, report, publish=publish)
        if runner is None:
            raise ValueError("neither a usable challenger nor a drift reference")
        fmt = build_format(settings.format, settings.topics.names())
        decode = _decoder(fmt)
    except Exception as exc:  # noqa: BLE001 - told to the parent, which logs it
        conn.send_bytes(pickle.dumps(("error", repr(exc))))
        return
    conn.send_bytes(pickle.dumps(("ready", {
        "challenger": runner.challenger.version if runner.challenger else None,
        "drift": list(runner.drift.references) if runner.drift is not None else [],
        "priority": priority, "sample": runner.sample})))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        handled = 0
        try:
            offered_at_s, handled, txs, scores, taps = unpack(data, decode)
            runner.capture(taps)
            runner.handle_batch(offered_at_s, txs, scores)
        except Exception:  # noqa: BLE001 - a batch that fails is counted, never fatal
            log.exception("shadow_batch_failed")
            report.dropped("error", handled)
        runner.maybe_export()
        conn.send_bytes(pickle.dumps(("batch", handled, report.take())))
    runner.close_outputs(timeout_s=2.0)
    try:
        conn.send_bytes(pickle.dumps(("bye", 0, report.take())))
    except (OSError, EOFError):
        pass


def _decoder(fmt: Any) -> Any:
    if getattr(fmt, "kind", "json") == "json":
        from topics.codec import decode_transaction

        return lambda value, _topic: decode_transaction(value)
    return fmt.decode_transaction
