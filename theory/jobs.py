"""One job interface for theory calculations: run here or on a Dask cluster, cached on disk.

A ``Job`` is data (kind, structure, parameters); its ``key`` hashes all three, so the
same calculation is computed once: ``JobRunner`` keeps every result as a JSON file
under ``cache_dir/<kind>/<key>.json`` (written atomically) and answers a repeated job
from it with ``cached=True``. Backends: ``"local"`` (a background thread of this
process) and ``"dask"`` (``distributed.Client(address)``, or a loopback ``LocalCluster``
started on demand and stopped by ``close()``), so large DFT work can leave the machine.
``estimate`` gives the planner a cost before anything runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator
from pymatgen.core import Structure

from autoscope.theory.dft import GpawParams, TheoryJobError, estimate_gpaw_cost, run_gpaw
from autoscope.theory.structures import structure_hash

log = logging.getLogger(__name__)

JobKind = Literal["chgnet_energy", "gpaw_energy"]
Backend = Literal["local", "dask"]


class ChgnetParams(BaseModel):
    """CHGNet job settings (``energetics.energy`` arguments)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    relax: bool = False
    fmax: float = Field(0.1, gt=0, description="eV/Å")
    steps: int = Field(200, ge=0)
    relax_cell: bool = False


_PARAMS: dict[str, type[BaseModel]] = {"chgnet_energy": ChgnetParams, "gpaw_energy": GpawParams}


class Job(BaseModel):
    """One theory calculation. ``params`` are validated and completed with defaults."""

    model_config = ConfigDict(frozen=True)

    kind: JobKind
    structure: dict[str, Any] = Field(description="pymatgen Structure.as_dict()")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(3600.0, gt=0, description="wall-clock limit of one run; not part of the key")

    @model_validator(mode="before")
    @classmethod
    def _complete_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in _PARAMS:
            data = dict(data)
            data["params"] = _PARAMS[data["kind"]](**(data.get("params") or {})).model_dump(mode="json")
        return data

    @field_validator("structure", mode="before")
    @classmethod
    def _structure_dict(cls, value: Any) -> Any:
        return value.as_dict() if isinstance(value, Structure) else value

    @computed_field  # type: ignore[prop-decorator]
    @functools.cached_property
    def key(self) -> str:
        structure = self.pymatgen()
        payload = {
            "kind": self.kind,
            "structure": structure_hash(structure),
            "pbc": [bool(p) for p in structure.lattice.pbc],  # a molecule in a box is not a crystal
            "params": self.params,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def pymatgen(self) -> Structure:
        return Structure.from_dict(self.structure)


class JobResult(BaseModel):
    """A finished job. ``cached`` is True when it was read back instead of computed."""

    model_config = ConfigDict(frozen=True)

    key: str
    kind: JobKind
    formula: str
    n_atoms: int
    energy_eV: float
    energy_per_atom_eV: float
    wall_s: float
    backend: Backend
    cached: bool = False
    completed_utc: str
    details: dict[str, Any] = Field(default_factory=dict, description="backend-specific facts of the run")


class CostEstimate(BaseModel):
    """What a job will cost before it runs (an order of magnitude, for the planner's budget)."""

    model_config = ConfigDict(frozen=True)

    seconds: float = Field(gt=0)
    memory_MB: float = Field(gt=0)
    basis: str = Field(description="one line: what the numbers scale with")


def execute_job(job_data: dict[str, Any], backend: Backend) -> dict[str, Any]:
    """Run one job where this is called (here or on a Dask worker); a JobResult as a dict."""
    job = Job.model_validate(job_data)
    structure = job.pymatgen()
    start = time.perf_counter()
    if job.kind == "chgnet_energy":
        from autoscope.theory.energetics import energy

        try:
            res = energy(structure, **job.params)
        except Exception as exc:  # torch / ASE failures, reported as a job failure
            raise TheoryJobError(f"CHGNet on {structure.formula} failed: {exc}") from exc
        energy_eV, details = res.energy_eV, res.model_dump(mode="json")
    else:
        gres = run_gpaw(structure, GpawParams(**job.params), timeout_s=job.timeout_s)
        energy_eV, details = gres.energy_eV, gres.model_dump(mode="json")
    result = JobResult(
        key=job.key,
        kind=job.kind,
        formula=structure.composition.reduced_formula,
        n_atoms=len(structure),
        energy_eV=energy_eV,
        energy_per_atom_eV=energy_eV / len(structure),
        wall_s=time.perf_counter() - start,
        backend=backend,
        completed_utc=datetime.now(UTC).isoformat(),
        details=details,
    )
    return result.model_dump(mode="json")


def estimate(job: Job) -> CostEstimate:
    """Cost of ``job`` before it runs: CHGNet scales with atoms × force calls, DFT with N_e³."""
    structure = job.pymatgen()
    if job.kind == "chgnet_energy":
        p = ChgnetParams(**job.params)
        calls = 1 + (p.steps if p.relax else 0)
        n = len(structure)
        seconds = 3.0 + calls * (0.02 + 0.002 * n)  # one thread: 48 atoms ≈ 0.1 s per call
        return CostEstimate(
            seconds=seconds,
            memory_MB=600.0 + 2.0 * n,
            basis=f"CHGNet: 3 s model load + {calls} force call(s) × (0.02 + 0.002 s/atom), {n} atoms",
        )
    seconds, memory_MB, basis = estimate_gpaw_cost(structure, GpawParams(**job.params))
    return CostEstimate(seconds=seconds, memory_MB=memory_MB, basis=basis)


class JobFuture:
    """A submitted job: ``result()`` blocks for the ``JobResult`` (and caches it once)."""

    def __init__(
        self, runner: JobRunner, job: Job, inner: Any = None, ready: JobResult | None = None
    ) -> None:
        self.job = job
        self._runner = runner
        self._inner = inner
        self._result = ready
        self._lock = threading.Lock()
        if inner is not None:
            inner.add_done_callback(self._on_done)

    def _on_done(self, _inner: Any) -> None:
        try:
            self._finish()
        except Exception as exc:  # the error reaches whoever calls result()
            log.debug("job %s failed: %s", self.job.key[:12], exc)

    @property
    def key(self) -> str:
        return self.job.key

    def done(self) -> bool:
        return self._result is not None or (self._inner is not None and self._inner.done())

    def _finish(self, timeout_s: float | None = None) -> JobResult:
        with self._lock:
            if self._result is None:
                try:
                    data = self._inner.result(timeout=timeout_s)
                finally:
                    self._runner._forget(self.job.key)
                self._result = JobResult.model_validate(data)
                self._runner._store(self._result)
            return self._result

    def result(self, timeout_s: float | None = None) -> JobResult:
        return self._finish(timeout_s)


class JobRunner:
    """Runs jobs locally or on Dask, serving repeats from the on-disk cache."""

    def __init__(self, cache_dir: Path | str, backend: Backend = "local", address: str | None = None) -> None:
        if address is not None and backend != "dask":
            raise ValueError("address is only used with backend='dask'")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.backend: Backend = backend
        self.address = address
        self.executed = 0  # jobs this runner handed to a backend
        self.cache_hits = 0
        self._pool: ThreadPoolExecutor | None = None
        self._cluster: Any = None
        self._client: Any = None
        self._inflight: dict[str, JobFuture] = {}
        self._lock = threading.RLock()

    # --- cache -------------------------------------------------------------------
    def _path(self, job_kind: str, key: str) -> Path:
        return self.cache_dir / job_kind / f"{key}.json"

    def cached(self, job: Job) -> JobResult | None:
        """The stored result of ``job`` (``cached=True``), or None."""
        path = self._path(job.kind, job.key)
        if not path.exists():
            return None
        try:
            stored = JobResult.model_validate_json(path.read_text())
        except ValueError:
            log.warning("unreadable cache entry %s; recomputing", path)
            return None
        return stored.model_copy(update={"cached": True})

    def _store(self, result: JobResult) -> None:
        path = self._path(result.kind, result.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(result.model_copy(update={"cached": False}).model_dump_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _forget(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    # --- running -----------------------------------------------------------------
    def _dask_client(self) -> Any:
        if self._client is None:
            from distributed import Client, LocalCluster

            if self.address is None:
                self._cluster = LocalCluster(
                    n_workers=1,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
                self._client = Client(self._cluster)
            else:
                self._client = Client(self.address)
            log.info("Dask client on %s", self._client.scheduler.address)
        return self._client

    def submit(self, job: Job) -> JobFuture:
        """Start ``job`` (or answer it from the cache, or join the same job in flight)."""
        hit = self.cached(job)
        with self._lock:
            if hit is not None:
                self.cache_hits += 1
                return JobFuture(self, job, ready=hit)
            if job.key in self._inflight:
                return self._inflight[job.key]
            payload = job.model_dump(mode="json")
            if self.backend == "local":
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="theory-job")
                inner: Future[dict[str, Any]] | Any = self._pool.submit(execute_job, payload, "local")
            else:
                inner = self._dask_client().submit(execute_job, payload, "dask", pure=False)
            self.executed += 1
            future = JobFuture(self, job, inner=inner)
            if not future.done():
                self._inflight[job.key] = future
        return future

    def run(self, job: Job) -> JobResult:
        """Run ``job`` to completion (from the cache when present)."""
        return self.submit(job).result()

    def estimate(self, job: Job) -> CostEstimate:
        return estimate(job)

    def close(self) -> None:
        """Stop the thread pool and any Dask client / cluster this runner started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
