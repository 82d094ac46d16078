"""A copy of each run in S3-compatible object storage (fsspec/s3fs), and the way back.

A run ``DIR`` mirrored to ``s3://bucket/prefix`` lies under ``s3://bucket/prefix/<DIR name>/``:

- ``steps/<step_id>.h5``: each step file, uploaded once it is complete in the store (final
  name, event fsynced). A background thread does it; acquisition only puts the step id on
  a queue, so a slow or unreachable object store never holds up the microscope.
- ``events.jsonl``: the log, re-uploaded whole (up to its last complete line) every
  ``sync_interval_s`` while it grows, and at close. The run's other top-level files
  (``run.json``, ``checkpoints.sqlite``, ``summary.json``, ``report.md``, figures) go with
  it when they changed; an SQLite file is copied through SQLite's backup API, so the copy
  is consistent while the run writes it. ``data.h5`` is not copied: it is an index that
  ``RunStore.open`` rebuilds.

Every object carries the SHA-256 of its bytes as user metadata ``sha256``. After each
upload the object is read back by ``HEAD``: its size, its ``sha256`` and (for a single-part
upload) its ETag, the MD5 the server computed over what it received, must match the local
file, else the upload is repeated. Failed uploads are retried with exponential backoff
(tenacity) for as long as the run is open; faults are logged, never raised.

Resuming is listing: when a run is (re)opened, the bucket is listed and each local step
whose object is missing, of another size or of another ``sha256`` is uploaded; the others
are left. Object keys are step ids, so after any number of kills each step is there once.

``pull_run`` restores a run directory from the bucket, checking every object's SHA-256,
and lets ``RunStore.open`` rebuild ``data.h5``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from autoscope.tools.store import DATA, EVENTS, STEPS, RunStore, check_step_id

log = logging.getLogger(__name__)
T = TypeVar("T")

SHA_KEY = "sha256"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+=-]{0,199}")  # a prefix part or a top-level file name
_NOT_COPIED = {DATA, ".lock", ".writer-open"}
_SQLITE = (".sqlite", ".sqlite3", ".db")


class MirrorError(RuntimeError):
    """The object store cannot be used as asked: a bad URL, no run there, a bad checksum."""


class ChecksumMismatch(MirrorError):
    """An object's bytes do not match the SHA-256 it was stored with."""


class _Aborted(Exception):
    """The mirror was told to stop waiting (its run closed and the wait ran out)."""


@dataclass(frozen=True)
class StoreURL:
    """``s3://bucket/prefix``, checked: a bucket name S3 accepts and prefix parts that are plain names."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        if not isinstance(url, str) or not url.startswith("s3://"):
            raise MirrorError(f"store URL {url!r} is not an s3:// URL: give s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise MirrorError(
                f"store URL {url!r}: {bucket!r} is not a bucket name (3-63 characters a-z 0-9 . -)"
            )
        parts = [p for p in prefix.split("/") if p]
        for p in parts:
            if not _PART.fullmatch(p):
                raise MirrorError(f"store URL {url!r}: prefix part {p!r} is not a plain name")
        return cls(bucket, "/".join(parts))

    def child(self, name: str) -> StoreURL:
        if not _PART.fullmatch(name):
            raise MirrorError(f"{name!r} cannot name a run in object storage (use A-Z a-z 0-9 _ . : + = -)")
        return StoreURL(self.bucket, f"{self.prefix}/{name}" if self.prefix else name)

    @property
    def path(self) -> str:
        """``bucket/prefix`` as fsspec names it."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def key(self, rel: str) -> str:
        """The S3 key (no bucket) of ``rel`` under this URL."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"s3://{self.path}"


def s3_filesystem(endpoint_url: str | None = None) -> Any:
    """An s3fs filesystem. Credentials, region and (unless given) the endpoint come from the usual
    ``AWS_*`` variables and files, read by botocore. No instance cache and no listing cache:
    the mirror must see what the bucket holds now."""
    import fsspec

    return fsspec.filesystem(
        "s3",
        endpoint_url=endpoint_url,
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}},
    )


def _digests(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()


def _listing(fs: Any, url: StoreURL) -> dict[str, int]:
    """``rel -> size`` of every object under ``url`` (empty when there is none)."""
    try:
        found = fs.find(url.path, detail=True)
    except FileNotFoundError:
        return {}
    root = url.path + "/"
    return {n[len(root) :]: int(i["size"]) for n, i in found.items() if n.startswith(root)}


def _head(fs: Any, url: StoreURL, rel: str) -> tuple[int, str, str | None]:
    """(size, ETag without quotes, ``sha256`` metadata or None) of one object."""
    out = fs.call_s3("head_object", Bucket=url.bucket, Key=url.key(rel))
    meta = {k.lower(): v for k, v in (out.get("Metadata") or {}).items()}
    return int(out["ContentLength"]), str(out.get("ETag", "")).strip('"'), meta.get(SHA_KEY)


def _copyable(name: str) -> bool:
    return (
        _PART.fullmatch(name) is not None
        and name not in _NOT_COPIED
        and not name.endswith((".tmp", "-wal", "-shm", "-journal"))
    )


def _snapshot(path: Path) -> bytes:
    """What of ``path`` may be uploaded now: the log up to its last complete line, a consistent
    copy of an SQLite database, any other file as it is."""
    if path.name == EVENTS:
        raw = path.read_bytes()
        return raw[: raw.rfind(b"\n") + 1]
    if path.suffix in _SQLITE:
        with tempfile.TemporaryDirectory(prefix="autoscope-mirror-") as tmp:
            copy = Path(tmp) / path.name
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
            return copy.read_bytes()
    return path.read_bytes()


def _signature(path: Path) -> tuple[int, int, int]:
    """Changes when the file (or an SQLite file's write-ahead log) changes."""
    st = path.stat()
    wal = path.with_name(path.name + "-wal")
    wal_ns = wal.stat().st_mtime_ns if wal.exists() else 0
    return st.st_size, st.st_mtime_ns, wal_ns


@dataclass
class MirrorStats:
    """What a mirror has done so far (read while it runs; figures, not a contract)."""

    steps_uploaded: int = 0
    steps_already_there: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    upload_s: float = 0.0  # time inside successful uploads and their checks
    failed_attempts: int = 0
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)


class Mirror:
    """Copies one run directory to ``url`` from a background thread (see module doc).

    A ``StoreObserver``: attach it with ``mirror_store``. ``close`` (called when the store
    closes) uploads what is left, waiting at most ``close_timeout_s``; what is still missing
    then is uploaded when the run is next opened with a mirror.
    """

    def __init__(
        self,
        directory: Path,
        fs: Any,
        url: StoreURL,
        *,
        sync_interval_s: float = 5.0,
        close_timeout_s: float = 30.0,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.dir = Path(directory)
        self.fs = fs
        self.url = url
        self.sync_interval_s = sync_interval_s
        self.close_timeout_s = close_timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = MirrorStats()
        self._queue: queue.Queue[str | threading.Event | None] = queue.Queue()
        self._flushes: list[threading.Event] = []  # set once everything queued before them is uploaded
        self._pending: dict[str, None] = {}  # step ids, in order; owned by the worker
        self._synced: dict[str, tuple[int, int, int]] = {}  # top-level file -> signature uploaded
        self._abort = threading.Event()
        self._done = threading.Event()
        self._final = False
        self._thread = threading.Thread(target=self._run, name=f"mirror {url}", daemon=True)

    # ------------------------------------------------------------- store observer
    def start(self, local_steps: Iterable[str]) -> Mirror:
        """Begin: compare ``local_steps`` (complete in the store) with the bucket, then follow the run."""
        self._initial = sorted(local_steps)
        self._thread.start()
        return self

    def step_stored(self, step_id: str, path: Path) -> None:
        self._queue.put(step_id)

    def store_closed(self) -> None:
        self.close()

    def close(self, timeout_s: float | None = None) -> bool:
        """Upload what is left (steps, then the other files, the log last) and stop; True when
        everything is in the bucket, False when the wait ran out (a warning says what is missing)."""
        if not self._thread.is_alive():
            return self._done.is_set() and not self._abort.is_set()
        self._queue.put(None)
        wait = self.close_timeout_s if timeout_s is None else timeout_s
        if self._done.wait(wait):
            return not self._abort.is_set()
        self._abort.set()
        self._thread.join(10)
        log.warning(
            "mirror %s: %d steps not uploaded after waiting %.0f s (%s); they are uploaded when the "
            "run is next opened with AUTOSCOPE_STORE_URL set",
            self.url,
            self.pending,
            wait,
            self.stats.last_error or "no error",
        )
        return False

    @property
    def pending(self) -> int:
        """Steps stored and not yet in the bucket (approximate while the run writes)."""
        return len(self._pending) + self._queue.qsize()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every step stored so far, and the log as it is now, are in the bucket."""
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout_s) and not self._done.is_set()

    # ------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            self._retry("list the bucket", self._reconcile)
            next_sync = 0.0
            while True:
                self._take(timeout=max(0.0, next_sync - time.monotonic()) if not self._pending else 0)
                while self._pending:
                    step_id = next(iter(self._pending))
                    self._retry(f"upload step {step_id}", lambda s=step_id: self._upload_step(s))
                    del self._pending[step_id]
                    self._take(timeout=0)
                if self._flushes:
                    self._retry("upload the run's files", self._sync_files)
                    for marker in self._flushes:
                        marker.set()
                    self._flushes.clear()
                if self._final:
                    self._retry("upload the run's files", self._sync_files)
                    log.info(
                        "mirror %s: up to date (%d steps uploaded, %d already there, %.1f MB in %.1f s)",
                        self.url,
                        self.stats.steps_uploaded,
                        self.stats.steps_already_there,
                        self.stats.bytes_uploaded / 1e6,
                        self.stats.upload_s,
                    )
                    return
                if time.monotonic() >= next_sync:
                    self._retry("upload the run's files", self._sync_files)
                    next_sync = time.monotonic() + self.sync_interval_s
        except _Aborted:
            pass
        except Exception as exc:  # never reaches the run; logged with what is left to do
            if not self._abort.is_set():
                self.stats.errors.append(repr(exc))
                log.exception("mirror %s stopped; %d steps not uploaded", self.url, len(self._pending))
        finally:
            self._done.set()
            for marker in self._flushes:
                marker.set()

    def _take(self, timeout: float) -> None:
        """Move queued step ids to the pending set, waiting up to ``timeout`` for the first."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is None:
                self._final = True
            elif isinstance(item, threading.Event):
                self._flushes.append(item)
            else:
                self._pending[item] = None
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` until it succeeds, backing off exponentially; stops only when aborted."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.stats.failed_attempts += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            n = state.attempt_number
            level = logging.WARNING if n == 1 or n % 10 == 0 else logging.INFO
            log.log(
                level,
                "mirror %s: could not %s (%s); attempt %d, next in %.1f s, %d steps waiting",
                self.url,
                what,
                self.stats.last_error,
                n,
                state.upcoming_sleep,
                len(self._pending),
            )

        def sleep(seconds: float) -> None:
            if self._abort.wait(seconds):
                raise _Aborted

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_not_exception_type(_Aborted),
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.initial_backoff_s, max=self.max_backoff_s, jitter=self.initial_backoff_s
            ),
            stop=lambda _state: self._abort.is_set(),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        failed_before = self.stats.failed_attempts
        result = retrying(fn)
        if self.stats.failed_attempts > failed_before:
            log.info("mirror %s: reachable again; %s done", self.url, what)
        return result

    def _reconcile(self) -> None:
        """Queue each local step that the bucket lacks or holds with other bytes."""
        remote = _listing(self.fs, self.url)
        self.stats.steps_already_there = 0  # counted afresh when a failed listing is retried
        for step_id in self._initial:
            rel = f"{STEPS}/{step_id}.h5"
            path = self.dir / rel
            if not path.exists():
                continue
            size = remote.get(rel)
            if size == path.stat().st_size:
                _, _, sha = _head(self.fs, self.url, rel)
                if sha == hashlib.sha256(path.read_bytes()).hexdigest():
                    self.stats.steps_already_there += 1
                    continue
            self._pending[step_id] = None
        log.info(
            "mirror %s: %d steps already there, %d to upload",
            self.url,
            self.stats.steps_already_there,
            len(self._pending),
        )

    def _upload_step(self, step_id: str) -> None:
        rel = f"{STEPS}/{check_step_id(step_id)}.h5"
        try:
            data = (self.dir / rel).read_bytes()
        except FileNotFoundError:  # a store never removes a complete step: someone else did
            log.error("mirror %s: step file %s is gone from %s; not uploaded", self.url, rel, self.dir)
            return
        self._put(rel, data)
        self.stats.steps_uploaded += 1

    def _sync_files(self) -> None:
        """Upload the top-level files that changed since their last upload, the log last."""
        names = sorted(p.name for p in self.dir.iterdir() if p.is_file() and _copyable(p.name))
        for name in sorted(names, key=lambda n: n == EVENTS):
            path = self.dir / name
            try:
                sig = _signature(path)
                if self._synced.get(name) == sig:
                    continue
                data = _snapshot(path)
            except FileNotFoundError:  # replaced or removed meanwhile: the next sync sees it
                continue
            self._put(name, data)
            self._synced[name] = sig
            self.stats.files_uploaded += 1

    def _put(self, rel: str, data: bytes) -> None:
        """One PUT with the SHA-256 as metadata, then a HEAD that must agree with the bytes."""
        sha, md5 = _digests(data)
        t0 = time.perf_counter()
        self.fs.pipe_file(f"{self.url.path}/{rel}", data, Metadata={SHA_KEY: sha})
        size, etag, stored = _head(self.fs, self.url, rel)
        if size != len(data) or stored != sha or ("-" not in etag and etag != md5):
            raise ChecksumMismatch(
                f"{self.url}/{rel}: the bucket holds {size} bytes, sha256 {stored}, ETag {etag}; "
                f"uploaded {len(data)} bytes, sha256 {sha}, md5 {md5}"
            )
        self.stats.upload_s += time.perf_counter() - t0
        self.stats.bytes_uploaded += len(data)


def mirror_store(
    store: RunStore,
    url: str,
    *,
    fs: Any = None,
    endpoint_url: str | None = None,
    sync_interval_s: float = 5.0,
    close_timeout_s: float = 30.0,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 30.0,
) -> Mirror:
    """Mirror ``store`` (open for writing) to ``url``/<run directory name>/ from now until it closes.

    ``MirrorError`` for a URL that cannot be used; nothing here waits for the network."""
    target = StoreURL.parse(url).child(store.dir.name)
    mirror = Mirror(
        store.dir,
        fs if fs is not None else s3_filesystem(endpoint_url),
        target,
        sync_interval_s=sync_interval_s,
        close_timeout_s=close_timeout_s,
        initial_backoff_s=initial_backoff_s,
        max_backoff_s=max_backoff_s,
    )
    store.observe(mirror)  # first, so no step completed meanwhile is missed (duplicates are harmless)
    mirror.start(store.completed_steps())
    store.append_event("mirror_started", url=str(target))
    log.info("run %s: mirrored to %s", store.dir, target)
    return mirror


# ------------------------------------------------------------------ pull
@dataclass(frozen=True)
class PullResult:
    directory: Path
    files: int
    steps: int
    bytes: int
    seconds: float


def _pull_rel(rel: str) -> bool:
    """Whether ``rel`` is a name a run directory holds (nothing outside it, nothing derived)."""
    top, _, rest = rel.partition("/")
    if not rest:
        return _copyable(top)
    return top == STEPS and rest.endswith(".h5") and _PART.fullmatch(rest[: -len(".h5")]) is not None


def pull_run(
    url: str, directory: str | os.PathLike, *, fs: Any = None, endpoint_url: str | None = None
) -> PullResult:
    """Download the run at ``url`` (``s3://bucket/prefix/run-name``) into ``directory``, checking each
    object's SHA-256, and open it once so ``data.h5`` is rebuilt. ``MirrorError`` says what is wrong."""
    t0 = time.perf_counter()
    src = StoreURL.parse(url)
    if not src.prefix:
        raise MirrorError(f"{url!r} names a bucket, not a run: give s3://bucket/prefix/run-name")
    dest = Path(directory)
    if (dest / EVENTS).exists():
        raise MirrorError(f"{dest} already holds a run ({EVENTS} exists); pull into a new directory")
    fs = fs if fs is not None else s3_filesystem(endpoint_url)
    try:
        remote = _listing(fs, src)
    except PermissionError as exc:
        raise MirrorError(
            f"{src}: access denied ({exc}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        ) from None
    except OSError as exc:
        raise MirrorError(f"{src}: cannot list the bucket ({exc})") from None
    if EVENTS not in remote:
        what = f"{len(remote)} objects but no {EVENTS}" if remote else "nothing"
        raise MirrorError(f"no run at {src}: it holds {what}")
    skipped = sorted(r for r in remote if not _pull_rel(r))
    if skipped:
        log.warning("pull %s: ignoring %d objects a run does not hold: %s", src, len(skipped), skipped[:5])
    wanted = sorted((r for r in remote if _pull_rel(r)), key=lambda r: r == EVENTS)  # the log last
    (dest / STEPS).mkdir(parents=True, exist_ok=True)
    total = 0
    for rel in wanted:
        _, _, sha = _head(fs, src, rel)
        if sha is None:
            raise MirrorError(f"{src}/{rel} has no {SHA_KEY} metadata: it was not uploaded by autoscope")
        data = fs.cat_file(f"{src.path}/{rel}")
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise ChecksumMismatch(f"{src}/{rel}: downloaded bytes have sha256 {got}, the object says {sha}")
        _write_atomic(dest / rel, data)
        total += len(data)
    with RunStore.open(dest):  # repairs, recovers orphans, rebuilds data.h5
        pass
    steps = sum(r.startswith(f"{STEPS}/") for r in wanted)
    seconds = time.perf_counter() - t0
    log.info(
        "pulled %s into %s: %d files (%d steps), %.1f MB in %.1f s",
        src,
        dest,
        len(wanted),
        steps,
        total / 1e6,
        seconds,
    )
    return PullResult(dest, len(wanted), steps, total, seconds)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-pull-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
