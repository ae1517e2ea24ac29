"""The model registry: a directory of primary-model versions and a "promoted" pointer.

Layout (all plain files; nothing else is read):

    <registry>/versions/<version>/manifest.json   the manifest; its `version` == <version>
    <registry>/versions/<version>/weights.pt      checked against the manifest's sha256
    <registry>/promoted.json                      which version is live, and the canary
    <registry>/.lock                              serialises read-modify-write of the pointer

`promoted.json` (written to a temporary file, fsynced, then renamed over the old one,
so a reader sees the old or the new pointer, never half of one):

    {"champion": "<version>", "previous": ["<older>", ...],      # rollback pops the last
     "canary": {"version", "fraction", "key", "bounds": {...}} | null,
     "generation": <int>, "events": [{"at_s", "action", "version", "reason"}, ...]}

`promote` and `start_canary` verify the version's weights against its manifest (sha256)
first and refuse a broken one; `rollback` goes back to the previous champion (verified
too); `stop_canary` removes the canary with a reason (a worker's automatic rollback
does exactly this). `generation` grows at every change. Timestamps are wall-clock
seconds, for people; nothing times out on them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from scorers.models.canary import DEFAULT_KEY, ROUTING_KEYS, RollbackBounds
from scorers.models.manifest import (
    Manifest,
    ModelIntegrityError,
    load_manifest,
    verify_weights,
    write_manifest,
)

POINTER_FILE: Final = "promoted.json"
VERSIONS_DIR: Final = "versions"
MAX_EVENTS: Final = 50
MAX_PREVIOUS: Final = 20


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back)."""


@dataclass(frozen=True, slots=True)
class CanarySpec:
    version: str
    fraction: float
    key: str = DEFAULT_KEY
    bounds: RollbackBounds = field(default_factory=RollbackBounds)


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    action: str  # promote | rollback | canary_start | canary_stop
    version: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Pointer:
    champion: str | None = None
    previous: tuple[str, ...] = ()
    canary: CanarySpec | None = None
    generation: int = 0
    events: tuple[Event, ...] = ()

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "champion": self.champion, "previous": list(self.previous),
            "canary": None if self.canary is None else {
                "version": self.canary.version, "fraction": self.canary.fraction,
                "key": self.canary.key, "bounds": asdict(self.canary.bounds)},
            "generation": self.generation, "events": [asdict(e) for e in self.events]}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Pointer:
        data = json.loads(text)
        c = data.get("canary")
        canary = None if c is None else CanarySpec(
            str(c["version"]), float(c["fraction"]), str(c.get("key", DEFAULT_KEY)),
            RollbackBounds(**c.get("bounds", {})))
        champion = data.get("champion")
        return cls(None if champion is None else str(champion),
                   tuple(str(v) for v in data.get("previous", ())), canary,
                   int(data.get("generation", 0)),
                   tuple(Event(float(e["at_s"]), str(e["action"]), str(e["version"]),
                               str(e.get("reason", ""))) for e in data.get("events", ())))


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    path: Path
    manifest: Manifest | None
    problem: str  # "" when the manifest reads and the weights match its sha256


class Registry:
    def __init__(self, root: Path | str, now: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._now = now

    # -- reading -----------------------------------------------------------------------------------
    def version_dir(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"not a version name: {version!r}")
        return self.root / VERSIONS_DIR / version

    def verify(self, version: str) -> Manifest:
        """The version's manifest once its weights match the manifest's sha256 (raises
        `ModelIntegrityError` or `RegistryError`)."""
        path = self.version_dir(version)
        if not path.is_dir():
            raise RegistryError(f"no version {version!r} in {self.root / VERSIONS_DIR}")
        manifest = load_manifest(path)
        if manifest.version != version:
            raise ModelIntegrityError(
                f"{path}: manifest names version {manifest.version!r}, not {version!r}")
        verify_weights(path, manifest)
        return manifest

    def versions(self) -> list[VersionInfo]:
        base = self.root / VERSIONS_DIR
        out = []
        for path in sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []:
            try:
                out.append(VersionInfo(path.name, path, self.verify(path.name), ""))
            except (ModelIntegrityError, RegistryError) as exc:
                out.append(VersionInfo(path.name, path, None, str(exc)))
        return out

    def pointer(self) -> Pointer:
        path = self.root / POINTER_FILE
        try:
            return Pointer.from_json(path.read_text())
        except FileNotFoundError:
            return Pointer()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"unreadable {path}: {exc}") from exc

    # -- changing ----------------------------------------------------------------------------------
    def add(self, model_dir: Path | str, version: str | None = None) -> str:
        """Copy a model directory in as a new version (renamed to `version` if given:
        the manifest's version is rewritten, the weights are not). Verifies the copy."""
        src = Path(model_dir)
        manifest = load_manifest(src)
        name = version or manifest.version
        dest = self.version_dir(name)
        if dest.exists():
            raise RegistryError(f"version {name!r} already exists")
        verify_weights(src, manifest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
        shutil.copy2(src / manifest.weights_file, tmp / manifest.weights_file)
        write_manifest(tmp, replace(manifest, version=name))
        os.replace(tmp, dest)
        self.verify(name)
        return name

    def promote(self, version: str, reason: str = "") -> Pointer:
        self.verify(version)

        def change(p: Pointer) -> Pointer:
            if p.champion == version:
                return p
            previous = p.previous if p.champion is None else (*p.previous, p.champion)
            canary = None if p.canary is not None and p.canary.version == version else p.canary
            return self._next(p, champion=version, previous=previous[-MAX_PREVIOUS:],
                              canary=canary, event=("promote", version, reason))
        return self.edit(change)

    def rollback(self, reason: str = "") -> Pointer:
        def change(p: Pointer) -> Pointer:
            if not p.previous:
                raise RegistryError("nothing to roll back to: no previous champion")
            target = p.previous[-1]
            self.verify(target)
            canary = None if p.canary is not None and p.canary.version == target else p.canary
            return self._next(p, champion=target, previous=p.previous[:-1], canary=canary,
                              event=("rollback", target, reason or f"from {p.champion}"))
        return self.edit(change)

    def start_canary(self, version: str, fraction: float, key: str = DEFAULT_KEY,
                     bounds: RollbackBounds | None = None, reason: str = "") -> Pointer:
        if not 0.0 < fraction <= 1.0:
            raise RegistryError(f"canary fraction must be within (0, 1], not {fraction}")
        if key not in ROUTING_KEYS:
            raise RegistryError(f"canary key must be one of {sorted(ROUTING_KEYS)}")
        self.verify(version)
        spec = CanarySpec(version, fraction, key, bounds or RollbackBounds())

        def change(p: Pointer) -> Pointer:
            if p.champion is None or p.champion == version:
                raise RegistryError("a canary needs a different champion promoted first")
            return self._next(p, champion=p.champion, previous=p.previous, canary=spec,
                              event=("canary_start", version, reason or f"fraction {fraction}"))
        return self.edit(change)

    def stop_canary(self, reason: str, version: str | None = None) -> Pointer:
        """Remove the canary (only if it is still `version`, when given)."""
        def change(p: Pointer) -> Pointer:
            if p.canary is None or (version is not None and p.canary.version != version):
                return p
            return self._next(p, champion=p.champion, previous=p.previous, canary=None,
                              event=("canary_stop", p.canary.version, reason))
        return self.edit(change)

    # -- internals ---------------------------------------------------------------------------------
    def _next(self, p: Pointer, *, champion: str | None, previous: tuple[str, ...],
              canary: CanarySpec | None, event: tuple[str, str, str]) -> Pointer:
        ev = Event(self._now(), *event)
        return Pointer(champion, previous, canary, p.generation + 1,
                       (*p.events, ev)[-MAX_EVENTS:])

    def edit(self, change: Callable[[Pointer], Pointer]) -> Pointer:
        """Read the pointer, apply `change` and write the result atomically, under the
        registry's lock (the CLI and workers' automatic rollbacks never interleave)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                old = self.pointer()
                new = change(old)
                if new is not old:
                    _atomic_write(self.root / POINTER_FILE, new.to_json())
                return new
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
