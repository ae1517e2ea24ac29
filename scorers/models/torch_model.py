"""`TorchModel`: the torch adapter of `scorers.ports.Model`.

`load` reads the manifest, verifies the weights' sha256 before torch reads a
byte, loads a state_dict with `weights_only=True` into the manifest's
architecture and puts the net in eval mode on the chosen device. Any mismatch
raises `ModelIntegrityError`; the ladder then keeps the primary unavailable. Right
after the sha256 check and the load it sets subnormal weights to zero
(`scorers.models.nets.flush_subnormals`: the same logits, and a forward that does not
crawl through x86's slow path for them) and takes `weights_checksum` of the weights in
memory: the run-time integrity checker (`scorers.models.integrity`) compares with it.

On a CUDA device, `predict` stages its input in a pinned (page-locked) host buffer,
one per batch size and bulkhead thread, reused, and copies it with `non_blocking`;
the result's copy back to the host waits for the stream, so a buffer is free again
when `predict` returns. On CPU there is no staging (a no-op).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Final, Literal

import numpy as np
import torch

from scorers.models.integrity import weights_checksum
from scorers.models.manifest import (
    Manifest,
    ModelIntegrityError,
    Thresholds,
    load_manifest,
    verify_weights,
)
from scorers.models.nets import build_net, flush_subnormals
from scorers.ports import FloatMatrix, FloatVector

DeviceChoice = Literal["auto", "cpu", "cuda"]
MAX_PINNED_SIZES: Final = 8  # pinned buffers kept per thread (batch sizes), least recent dropped


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


class TorchModel:
    def __init__(self, net: torch.nn.Module, manifest: Manifest, device: torch.device,
                 weights_checksum: int | None = None) -> None:
        self._net = net
        self.manifest = manifest
        self.device = device
        self.weights_checksum = weights_checksum  # taken at load; None: not loaded from disk
        self.subnormals_flushed = 0  # subnormal weights set to 0 at load (`flush_subnormals`)
        # pinned staging on CUDA (benchmarks turn it off to compare with pageable copies)
        self.pin_host_buffers = device.type == "cuda"
        self._local = threading.local()

    @classmethod
    def load(cls, model_dir: Path | str, device: str = "auto") -> TorchModel:
        """Never changes torch's process-wide thread count (wiring sets it once)."""
        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir)
        weights = verify_weights(model_dir, manifest)
        try:
            net = build_net(manifest.arch)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            flushed = flush_subnormals(net)  # same logits, several times faster on x86
            checksum = weights_checksum(net)  # the in-memory weights the sha256 vouched for
        except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:
            raise ModelIntegrityError(f"{model_dir}: weights do not fit the manifest: {exc}") from exc
        n_in = int(manifest.arch.get("n_in", -1))
        if n_in != len(manifest.feature_names):
            raise ModelIntegrityError(
                f"{model_dir}: arch n_in={n_in} but {len(manifest.feature_names)} feature names")
        target = resolve_device(device)
        net.eval()
        model = cls(net.to(target), manifest, target, checksum)
        model.subnormals_flushed = flushed
        return model

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.manifest.feature_names

    @property
    def thresholds(self) -> Thresholds:
        return self.manifest.thresholds

    def predict(self, features: FloatMatrix) -> FloatVector:
        if features.ndim != 2 or features.shape[1] != len(self.manifest.feature_names):
            raise ValueError(f"expected (n, {len(self.manifest.feature_names)}) features, "
                             f"got {features.shape}")
        x = self._host_input(features)
        with torch.inference_mode():
            probs = torch.sigmoid(self._net(x.to(self.device, non_blocking=True)))
            # a blocking copy back: waits for the stream, so the pinned input is free again
            out: FloatVector = probs.to("cpu").numpy().astype(np.float32, copy=False)
        return out

    def _host_input(self, features: FloatMatrix) -> torch.Tensor:
        """The input as a host tensor: the array itself on CPU (no copy when it is already
        contiguous float32), or this thread's pinned buffer for its shape on CUDA."""
        if not self.pin_host_buffers:
            return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        buffers: OrderedDict[tuple[int, int], torch.Tensor] | None = getattr(
            self._local, "pinned", None)
        if buffers is None:
            buffers = self._local.pinned = OrderedDict()
        shape = (int(features.shape[0]), int(features.shape[1]))
        buf = buffers.get(shape)
        if buf is None:
            buf = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            buffers[shape] = buf
            if len(buffers) > MAX_PINNED_SIZES:
                buffers.popitem(last=False)
        else:
            buffers.move_to_end(shape)
        buf.numpy()[...] = features  # one host copy into page-locked memory (casts to float32)
        return buf

    @property
    def pinned_buffers(self) -> int:
        """Pinned buffers this thread holds (0 on CPU)."""
        buffers = getattr(self._local, "pinned", None)
        return len(buffers) if buffers is not None else 0
