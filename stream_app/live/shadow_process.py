"""The challenger model in its own process, at a lower CPU priority (`stream_app.live.shadow`).

Measured on the 2-core bench machine (docs/shadow.md): the challenger's `predict` on the
shadow thread took about 17% of the live worker's throughput while draining a backlog
with `sample=1.0`, though the thread was niced: the GIL is one per process, and torch's
module calls for a small ensemble spend much of their time in Python holding it, so a
nice value cannot keep the shadow from delaying the live loop. In a child process
(spawned, so no threads or locks are inherited) the model has its own interpreter; the
child runs at nice `SHADOW_NICE`, so when the CPUs are saturated the kernel gives the
live process the cycles, the shadow falls behind, its queue fills and it drops (counted).

`ProcessModel` is a `scorers.ports.Model`: `predict` sends the float32 matrix through a
pipe and waits for the probabilities (the shadow thread blocks without the GIL). A child
that does not answer within `predict_timeout_s` is killed and the model reports every
later call as failed (`reason="model_error"`); the live path never waits on it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
from multiprocessing.connection import Connection
from typing import Final

import numpy as np
import numpy.typing as npt

from scorers.models.manifest import Thresholds

START_TIMEOUT_S: Final = 120.0  # spawn + import torch + load + verify the weights
PREDICT_TIMEOUT_S: Final = 30.0
_SHAPE = struct.Struct("<II")


class ProcessModel:
    """A model directory served by a child process; `close` ends it."""

    def __init__(self, model_dir: str, *, nice: int, start_timeout_s: float = START_TIMEOUT_S,
                 predict_timeout_s: float = PREDICT_TIMEOUT_S) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(model_dir, child, nice),
                                 name="rung-shadow-model", daemon=True)
        self._proc.start()
        child.close()
        self.predict_timeout_s = predict_timeout_s
        self._broken = ""
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise ValueError(f"challenger process for {model_dir} did not start")
        hello = self._conn.recv()
        if isinstance(hello, str):
            self.close()
            raise ValueError(f"challenger {model_dir} unavailable: {hello}")
        self._version, self._features, t = hello
        self.thresholds = Thresholds(*t)

    @property
    def version(self) -> str:
        return str(self._version)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self._features)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._broken:
            raise RuntimeError(self._broken)
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be a matrix, got shape {x.shape}")
        try:
            self._conn.send_bytes(_SHAPE.pack(*x.shape) + x.tobytes())
            if not self._conn.poll(self.predict_timeout_s):
                self._fail(f"challenger process gave no answer in {self.predict_timeout_s}s")
            reply = self._conn.recv_bytes()
        except (OSError, EOFError) as exc:
            self._fail(f"challenger process gone: {exc!r}")
        if reply[:1] != b"O":
            raise RuntimeError(reply[1:].decode(errors="replace"))
        return np.frombuffer(reply, dtype=np.float32, offset=1).copy()

    def _fail(self, reason: str) -> None:
        self._broken = reason
        self.close()
        raise RuntimeError(reason)

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            self._conn.send_bytes(b"")
        except (OSError, EOFError, ValueError):
            pass
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout_s)
        self._conn.close()


def serve(model_dir: str, conn: Connection, nice: int) -> None:
    """The child: lower its priority, load the model, answer until an empty message."""
    try:
        os.nice(nice)
    except OSError:
        pass
    import torch

    from scorers.models.loading import load_model

    torch.set_num_threads(1)
    loaded = load_model(model_dir, device="cpu", role="challenger")
    model = loaded.usable
    if model is None:
        conn.send(loaded.reason)
        return
    t = getattr(model, "thresholds", None)
    if not isinstance(t, Thresholds):
        conn.send("no decision thresholds")
        return
    conn.send((model.version, tuple(model.feature_names), (t.review, t.block, t.min_confidence)))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        try:
            n, k = _SHAPE.unpack_from(data)
            x = np.frombuffer(data, dtype=np.float32, offset=_SHAPE.size).reshape(n, k)
            probs = np.asarray(model.predict(x), dtype=np.float32)
            conn.send_bytes(b"O" + probs.tobytes())
        except Exception as exc:  # noqa: BLE001 - answered as an error, the parent counts it
            conn.send_bytes(b"E" + repr(exc).encode())
