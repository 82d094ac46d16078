"""The run store: every acquisition is stored before it is used, and survives a crash.

A run directory ``DIR`` holds:

- ``DIR/events.jsonl``: the append-only event log, one JSON object per line, each
  line written and fsynced before the call that wrote it returns. Every event has a
  ``kind``, a monotonically increasing ``seq`` and a wall-clock ``time_utc``. An
  acquisition event (``"kind": "acquisition"``) also has a unique ``step_id``,
  ``"record": "image" | "spectrum"``, the record's parameters (its ``metadata()``,
  among them ``dose_e``, ``dose_e_per_A2``, ``t_start_s``, ``t_end_s``) and any extra
  fields the caller gave.
- ``DIR/steps/<step_id>.h5``: the arrays of one step (``data`` for an image,
  ``counts`` for a spectrum) with the metadata as attributes. Each is written to a
  temporary name, fsynced and renamed into place, so it is either absent or whole.
- ``DIR/data.h5``: one HDF5 external link per step to its step file, so plain h5py
  reads ``f["<step_id>/data"]`` (links resolve relative to ``data.h5``, whatever the
  working directory). It is only an index: it is rebuilt from ``steps/`` whenever the
  last writer did not close cleanly or it does not match the log.

Write order is step file, then link, then event line. A step is complete when its
acquisition event exists and its step file is there. ``RunStore.open`` repairs what a
kill (SIGKILL, power loss) can leave: a torn last line of the log is truncated away
(and a ``log_repaired`` event recorded); a step file without its event (killed between
the two) gets its event back from the copy stored inside the step file, marked
``"recovered": true``; half-written temporary files are removed. Nothing whose step
file reached its final name is lost.

One process writes a run at a time (``fcntl`` lock on ``DIR/.lock``); readers may use
``RunStore.open(dir, read_only=True)`` while a writer runs.

A ``StoreObserver`` (``RunStore.observe``) hears of each step once it is complete (step file
at its final name, event line fsynced) and of the close; ``tools/mirror.py`` uses it to copy
the run to object storage. Observers must not block: an observer that raises is logged and
ignored, it never fails an acquisition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import fcntl
import json
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
from pydantic import BaseModel

from autoscope.instruments.records import Detector, ImageRecord, SpectrumRecord

log = logging.getLogger(__name__)

FORMAT = "autoscope-run"
FORMAT_VERSION = 1
EVENTS = "events.jsonl"
DATA = "data.h5"
STEPS = "steps"
_LOCK = ".lock"
_WRITER_OPEN = ".writer-open"  # present while a writer holds the run; left behind by a crash
_TMP_PREFIX = ".tmp-"
_STEP_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+=-]{0,199}")
_RESERVED = {"kind", "seq", "time_utc"}
_ACQ_RESERVED = _RESERVED | {"step_id", "record", "recovered"}
_ARRAY = {"image": "data", "spectrum": "counts"}


class RunStoreError(RuntimeError):
    """The run directory cannot be used as asked (locked, already a run, corrupt)."""


class RunLocked(RunStoreError):
    """Another process (or another ``RunStore`` here) is writing this run directory."""


class StoreObserver(Protocol):
    """Told of what a writing ``RunStore`` has made safe; must return quickly (queue the work)."""

    def step_stored(self, step_id: str, path: Path) -> None:
        """Step ``step_id`` is complete: ``path`` (its step file) is final and its event fsynced."""

    def store_closed(self) -> None:
        """The log is closed (nothing more will be written); the run's lock is still held."""


def _plain(value: Any, where: str = "event") -> Any:
    """``value`` as plain JSON types (numpy scalars, tuples, enums, paths, models converted)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, where)
    if isinstance(value, np.generic):
        return _plain(value.item(), where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite number {value} cannot be stored as JSON")
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="json"), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_step_id(step_id: str) -> str:
    """``step_id`` if usable as a file and HDF5 name, else ``ValueError`` saying why."""
    if not isinstance(step_id, str) or not _STEP_ID.fullmatch(step_id):
        raise ValueError(
            f"step id {step_id!r} is not allowed: use 1-200 characters from A-Z a-z 0-9 _ . : + = -, "
            "not starting with '.' or '-'"
        )
    return step_id


class RunStore:
    """Append-only event log plus per-step HDF5 arrays in a run directory (see module doc)."""

    def __init__(self, directory: Path, *, read_only: bool, _token: object = None) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError("use RunStore.create, RunStore.open or RunStore.open_or_create")
        self.dir = directory
        self.read_only = read_only
        self._events: list[dict[str, Any]] = []
        self._steps: dict[str, dict[str, Any]] = {}  # step_id -> acquisition event
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        self._log_fd: int | None = None
        self._closed = False
        self._observers: list[StoreObserver] = []

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(
        cls, directory: str | os.PathLike, meta: dict | None = None, *, exist_ok: bool = False
    ) -> RunStore:
        """A new run in ``directory`` (created if needed). ``meta`` goes into the ``run_created`` event.

        Fails with ``RunStoreError`` when the directory already holds a run, unless
        ``exist_ok``, in which case that run is opened (``meta`` is then ignored).
        """
        d = Path(directory).absolute()
        if (d / EVENTS).exists() and not exist_ok:
            raise RunStoreError(f"{d} already holds a run ({EVENTS} exists); open it instead")
        d.mkdir(parents=True, exist_ok=True)
        store = cls(d, read_only=False, _token=_CONSTRUCT)
        store._acquire_lock()
        try:
            if (d / EVENTS).exists():
                store._open_existing()
                return store
            (d / STEPS).mkdir(exist_ok=True)
            store._open_log()
            _fsync_path(d, directory=True)
            store._begin_writing()
            store._rebuild_index()
            store.append_event("run_created", format=FORMAT, version=FORMAT_VERSION, meta=meta or {})
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike, *, read_only: bool = False) -> RunStore:
        """The existing run in ``directory``, repaired after a crash (see module doc).

        ``read_only`` takes no lock and repairs nothing: for watching a run that another
        process is writing. A torn last line is then skipped, not removed.
        """
        d = Path(directory).absolute()
        if not (d / EVENTS).exists():
            raise FileNotFoundError(f"{d} holds no run (no {EVENTS}); create one with RunStore.create")
        store = cls(d, read_only=read_only, _token=_CONSTRUCT)
        if read_only:
            store._read_log(repair=False)
            return store
        store._acquire_lock()
        try:
            store._open_existing()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike, meta: dict | None = None) -> RunStore:
        """Open the run in ``directory`` if there is one, else create it with ``meta``."""
        return cls.create(directory, meta, exist_ok=True)

    def _acquire_lock(self) -> None:
        fd = os.open(self.dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"run directory {self.dir} is being written by another process (pid {holder}); "
                "close that writer first, or open with read_only=True to watch it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_existing(self) -> None:
        (self.dir / STEPS).mkdir(exist_ok=True)
        crashed = (self.dir / _WRITER_OPEN).exists()
        self._read_log(repair=True)
        self._open_log()
        self._clean_temporaries()
        self._recover_orphans()
        missing = [s for s in self._steps if not self._step_path(s).exists()]
        for s in missing:
            log.error(
                "run %s: step %s has an acquisition event but no step file; it is incomplete", self.dir, s
            )
        self._begin_writing()
        if crashed or not self._index_matches():
            log.info("run %s: rebuilding %s from %s/", self.dir, DATA, STEPS)
            self._rebuild_index()

    def _begin_writing(self) -> None:
        marker = self.dir / _WRITER_OPEN
        marker.write_text(f"{os.getpid()}\n")
        _fsync_path(marker)
        _fsync_path(self.dir, directory=True)

    # ---------------------------------------------------------------- event log
    def _read_log(self, repair: bool) -> None:
        path = self.dir / EVENTS
        raw = path.read_bytes()
        end = raw.rfind(b"\n") + 1
        body, tail = raw[:end], raw[end:]
        lines = body.split(b"\n")[:-1]
        if lines and not tail:
            # a complete-looking last line may still be torn garbage (e.g. zero-filled after power loss)
            try:
                json.loads(lines[-1])
            except ValueError:
                tail = lines.pop() + b"\n"
                end -= len(tail)
        for i, line in enumerate(lines, start=1):
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise RunStoreError(
                    f"{path} line {i} is not valid JSON ({exc}); only a torn last line can be repaired"
                ) from None
            if event.get("kind") == "acquisition":
                try:
                    check_step_id(event.get("step_id"))
                except ValueError as exc:
                    raise RunStoreError(
                        f"{path} line {i}: {exc}; the log was not written by autoscope"
                    ) from None
            self._remember(event)
        if tail:
            if not repair:
                log.info("run %s: ignoring an incomplete last line of %s", self.dir, EVENTS)
                return
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            log.warning("run %s: removed a torn last line of %d bytes from %s", self.dir, len(tail), EVENTS)
            self._pending_repair = {
                "dropped_bytes": len(tail),
                "dropped_text": tail[:200].decode(errors="replace"),
            }

    def _remember(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        if event.get("kind") == "acquisition":
            self._steps[event["step_id"]] = event

    def _open_log(self) -> None:
        self._log_fd = os.open(self.dir / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        repair = getattr(self, "_pending_repair", None)
        if repair is not None:
            del self._pending_repair
            self.append_event("log_repaired", **repair)

    def _write_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Stamp ``seq`` and append one fsynced line; caller holds the mutex."""
        if self._log_fd is None:
            raise RunStoreError(f"run store {self.dir} is closed or read-only; nothing can be written")
        event = {
            "kind": event["kind"],
            "seq": self._next_seq(),
            **{k: v for k, v in event.items() if k != "kind"},
        }
        line = (json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:
            n = os.write(self._log_fd, view)
            view = view[n:]
        os.fsync(self._log_fd)
        self._remember(event)
        return event

    def _next_seq(self) -> int:
        return int(self._events[-1]["seq"]) + 1 if self._events else 0

    def append_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one event (fsynced before returning) and return it with its ``seq`` and ``time_utc``.

        Acquisition events are written only by ``save_image`` / ``save_spectrum``.
        """
        if kind == "acquisition":
            raise ValueError(
                "acquisition events are written by save_image / save_spectrum, with their arrays"
            )
        clash = _RESERVED & fields.keys()
        if clash:
            raise ValueError(f"event fields {sorted(clash)} are set by the store")
        event = {"kind": str(kind), "time_utc": _utc_now(), **_plain(fields, kind)}
        with self._mutex:
            return dict(self._write_event(event))

    def events(self, kind: str | tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """All events in log order (copies), or those of one ``kind`` (or of any of several)."""
        kinds = (kind,) if isinstance(kind, str) else kind
        return [json.loads(json.dumps(e)) for e in self._events if kinds is None or e.get("kind") in kinds]

    @property
    def meta(self) -> dict[str, Any]:
        """The ``meta`` given when the run was created."""
        created = next((e for e in self._events if e.get("kind") == "run_created"), None)
        return dict(created.get("meta", {})) if created else {}

    # ---------------------------------------------------------------- steps
    def _step_path(self, step_id: str) -> Path:
        """The step file of ``step_id``, which cannot lie outside ``steps/`` (the id is checked)."""
        return self.dir / STEPS / f"{check_step_id(step_id)}.h5"

    def save_image(self, step_id: str, record: ImageRecord, **extra: Any) -> dict[str, Any]:
        """Store an image under ``step_id`` (arrays, then the fsynced event); returns the event."""
        if not isinstance(record, ImageRecord):
            raise TypeError(f"save_image needs an ImageRecord, got {type(record).__name__}")
        return self._save(step_id, "image", record.data, record.metadata(), extra)

    def save_spectrum(self, step_id: str, record: SpectrumRecord, **extra: Any) -> dict[str, Any]:
        """Store a spectrum under ``step_id`` (arrays, then the fsynced event); returns the event."""
        if not isinstance(record, SpectrumRecord):
            raise TypeError(f"save_spectrum needs a SpectrumRecord, got {type(record).__name__}")
        return self._save(step_id, "spectrum", record.counts, record.metadata(), extra)

    def _save(self, step_id: str, kind: str, array: np.ndarray, meta: dict, extra: dict) -> dict[str, Any]:
        check_step_id(step_id)
        clash = (_ACQ_RESERVED | meta.keys()) & extra.keys()
        if clash:
            raise ValueError(
                f"step {step_id}: extra fields {sorted(clash)} clash with the record's own fields"
            )
        event = {
            "kind": "acquisition",
            "time_utc": _utc_now(),
            "step_id": step_id,
            "record": kind,
            **_plain(meta, step_id),
            **_plain(extra, step_id),
        }
        with self._mutex:
            if self._log_fd is None:
                raise RunStoreError(f"run store {self.dir} is closed or read-only; nothing can be written")
            if step_id in self._steps or self._step_path(step_id).exists():
                raise ValueError(f"step {step_id!r} is already stored in {self.dir}; step ids are unique")
            self._write_step_file(step_id, kind, np.asarray(array), event)
            self._link(step_id)
            written = dict(self._write_event(event))
        self._notify("step_stored", step_id, self._step_path(step_id))
        return written

    def _write_step_file(self, step_id: str, kind: str, array: np.ndarray, event: dict[str, Any]) -> None:
        final = self._step_path(step_id)
        tmp = final.with_name(f"{_TMP_PREFIX}{os.getpid()}-{final.name}")
        with h5py.File(tmp, "w", locking=False) as f:
            f.create_dataset(_ARRAY[kind], data=array)
            for key, value in event.items():
                if key not in ("kind", "time_utc") and isinstance(value, bool | int | float | str):
                    f.attrs[key] = value
            f.attrs["event_json"] = json.dumps(event, allow_nan=False)
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_path(final.parent, directory=True)

    def write_artifact(self, name: str, text: str) -> Path:
        """A derived result (JSON, text) written atomically beside the run (temporary name, fsync,
        rename): a kill leaves the old version or the new one, never half of one."""
        if self.read_only:
            raise RunStoreError(f"run store {self.dir} is read-only; nothing can be written")
        final = self.dir / check_step_id(name)
        tmp = final.with_name(f"{_TMP_PREFIX}{os.getpid()}-{final.name}")
        tmp.write_text(text)
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_path(self.dir, directory=True)
        return final

    def read_artifact(self, name: str) -> str | None:
        """The text of an artifact, or None when it was never written."""
        path = self.dir / check_step_id(name)
        return path.read_text() if path.exists() else None

    def completed_steps(self) -> set[str]:
        """Step ids whose acquisition event exists and whose arrays are on disk."""
        return {s for s in self._steps if self._step_path(s).exists()}

    def has_step(self, step_id: str) -> bool:
        """Whether ``step_id`` is complete (event and arrays stored)."""
        return step_id in self._steps and self._step_path(step_id).exists()

    def step_event(self, step_id: str) -> dict[str, Any]:
        """The acquisition event of ``step_id`` (a copy); ``KeyError`` when it has none."""
        if step_id not in self._steps:
            raise KeyError(f"step {step_id!r} has no acquisition event in {self.dir}")
        return json.loads(json.dumps(self._steps[step_id]))

    def load(self, step_id: str) -> ImageRecord | SpectrumRecord:
        """The record stored under ``step_id``; ``KeyError`` when that step is not complete."""
        if not self.has_step(step_id):
            raise KeyError(f"step {step_id!r} is not stored in {self.dir}")
        event = self._steps[step_id]
        with h5py.File(self._step_path(step_id), "r", locking=False) as f:
            if event["record"] == "image":
                meta = dict(event, detector=Detector(event["detector"]))
                return ImageRecord.from_metadata(f["data"][()], meta)
            return SpectrumRecord.from_metadata(f["counts"][()], event)

    # ---------------------------------------------------------------- recovery
    def _clean_temporaries(self) -> None:
        for p in (self.dir / STEPS).glob(f"{_TMP_PREFIX}*"):
            log.warning("run %s: removing %s, a step file whose write was interrupted", self.dir, p.name)
            p.unlink()
        (self.dir / f"{DATA}.tmp").unlink(missing_ok=True)

    def _recover_orphans(self) -> None:
        """Give every step file that has no event its event back, from the copy inside the file."""
        orphans = []
        for p in (self.dir / STEPS).glob("*.h5"):
            step_id = p.name[: -len(".h5")]
            if step_id in self._steps or not _STEP_ID.fullmatch(step_id):
                continue
            try:
                with h5py.File(p, "r", locking=False) as f:
                    event = json.loads(f.attrs["event_json"])
            except (OSError, KeyError, ValueError) as exc:
                raise RunStoreError(f"{p} is a step file without event and cannot be read: {exc}") from exc
            orphans.append(event)
        for event in sorted(orphans, key=lambda e: e.get("time_utc", "")):
            log.warning(
                "run %s: step %s was stored but its event was lost; recovering it", self.dir, event["step_id"]
            )
            event["recovered"] = True
            with self._mutex:
                self._write_event(event)

    # ---------------------------------------------------------------- data.h5 index
    def _link(self, step_id: str) -> None:
        try:
            with h5py.File(self.dir / DATA, "a", locking=False) as f:
                if step_id not in f:
                    f[step_id] = h5py.ExternalLink(f"{STEPS}/{step_id}.h5", "/")
        except OSError as exc:  # the index is derived data; the step file is what counts
            log.warning(
                "run %s: could not link step %s into %s (%s); it is rebuilt on open",
                self.dir,
                step_id,
                DATA,
                exc,
            )

    def _index_matches(self) -> bool:
        try:
            with h5py.File(self.dir / DATA, "r", locking=False) as f:
                names = set(f.keys())
                links_ok = all(isinstance(f.get(n, getlink=True), h5py.ExternalLink) for n in names)
        except (OSError, KeyError, ValueError, RuntimeError):
            return False
        return links_ok and names == self.completed_steps()

    def _rebuild_index(self) -> None:
        tmp = self.dir / f"{DATA}.tmp"
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = FORMAT_VERSION
            for step_id in self._steps:
                if self._step_path(step_id).exists():
                    f[step_id] = h5py.ExternalLink(f"{STEPS}/{step_id}.h5", "/")
        _fsync_path(tmp)
        os.replace(tmp, self.dir / DATA)
        _fsync_path(self.dir, directory=True)

    # ---------------------------------------------------------------- observers
    def observe(self, observer: StoreObserver) -> None:
        """Tell ``observer`` of every step completed from now on, and of the close."""
        if self._log_fd is None:
            raise RunStoreError(f"run store {self.dir} is closed or read-only; nothing can be observed")
        self._observers.append(observer)

    def _notify(self, method: str, *args: Any) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, method)(*args)
            except Exception:  # an observer never fails the store
                log.exception("run %s: observer %r failed in %s", self.dir, observer, method)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the log and the lock; marks the run as cleanly closed."""
        if self._closed:
            return
        self._closed = True
        with self._mutex:
            if self._log_fd is not None:
                os.fsync(self._log_fd)
                os.close(self._log_fd)
                self._log_fd = None
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / _WRITER_OPEN).unlink()
        self._notify("store_closed")
        self._observers.clear()
        with self._mutex:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed and self._lock_fd is not None:
                os.close(self._lock_fd)
            if not self._closed and self._log_fd is not None:
                os.close(self._log_fd)

    def __repr__(self) -> str:
        return f"RunStore({str(self.dir)!r}, steps={len(self._steps)}, events={len(self._events)})"


_CONSTRUCT = object()
