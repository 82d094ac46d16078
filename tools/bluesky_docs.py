"""A run directory as Bluesky event-model documents (RunStart, descriptors, events, resources, RunStop).

The documents are made with ``event_model``'s own factories (``compose_run`` and the bundles
it returns), which validate each one against the library's JSON schemas:

- **RunStart**: the run id, scenario, seed, backend, goal and question (from ``run.json`` when
  the run has one), the survey plan, the hypotheses, the plans and the gate decisions. Its uid
  is a uuid5 of the run's first event, so exporting the same run again gives the same uids.
- **One EventDescriptor per stream**: a stream holds the acquisitions of one phase (the step id
  before its first ``-``: ``survey``, ``H1``, ...; ``primary`` for ids without one) of one record
  type with one array shape and dtype, e.g. ``survey_images``, ``survey_spectra``, ``H1_spectra``
  (a second shape in the same phase gets a ``_2`` stream). The array (``image`` or ``spectrum``) is
  external (``"external": "FILESTORE:"``) with its shape, numpy dtype and dims; every scalar of
  the acquisition event (``x_nm``, ``dwell_s``, ``current_pA``, ``dose_e``, ``t_start_s``,
  ``step_id``, ...) is a plain data key with units read from its name; nested values (the
  request) are JSON text.
- **One Event per acquisition**, in log order, timestamped with the event's ``time_utc``.
- **Resource and Datum**: the step files hold one 2-D image or 1-D spectrum each, while Tiled
  (and the area-detector convention) read a stream as one array whose first axis is the
  event. ``DIR/bluesky.h5`` is therefore an HDF5 virtual dataset per stream (``/<stream>/<key>``)
  that stacks the step files' arrays (``steps/<step_id>.h5``, by relative path: no data is
  copied, and it moves with the run). Each stream key has one Resource (spec ``hdf5``,
  ``root`` the run directory, ``resource_path`` ``bluesky.h5``, ``resource_kwargs`` the
  dataset, ``join_method: stack``, ``swmr: false``, as bluesky's ``TiledWriter`` reads them),
  and each event one Datum with its ``frame`` in that stack.
- **RunStop**: ``exit_status`` ``success`` when the run reached its end, ``fail`` when it ended
  at a safety stop or a failed acquisition, ``abort`` otherwise (stopped for a person, killed,
  still running); ``reason`` says why and gives the verdicts, which are also in ``verdicts``.

``write_jsonl`` writes them as one ``[name, doc]`` JSON pair per line (suitcase-jsonl's layout),
which ``bluesky.callbacks.tiled_writer.TiledWriter`` can be fed line by line.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np

from autoscope.tools.store import EVENTS, STEPS, RunStore

STACK_FILE = "bluesky.h5"  # the virtual datasets a Resource points at, in the run directory
SPEC = "hdf5"  # TiledWriter maps this spec to application/x-hdf5 (its HDF5 consolidator)
RUN_FILE = "run.json"  # the run's specification, written by the agents' runner when there is one
_NS = uuid.UUID("0b9a8c52-6b0e-4f5e-9a57-2f6f3a4c2d11")  # namespace of autoscope's document uids
_ARRAY = {
    "image": ("data", "image", ["y", "x"], None),
    "spectrum": ("counts", "spectrum", ["channel"], "counts"),
}
_SKIP = {"kind", "seq", "time_utc", "record"}
_UNITS = (  # (name suffix, units), the first match wins
    ("_e_per_A2", "e/Å^2"),
    ("_nm", "nm"),
    ("_pA", "pA"),
    ("_eV", "eV"),
    ("_s", "s"),
    ("_e", "e"),
)
_END = {"run_complete", "survey_complete", "campaign_complete"}
_FAILURES = {"safety_stop", "acquisition_failed", "measurement_failed"}
_KEY = re.compile(r"[^./]+")


class ExportError(ValueError):
    """The run cannot be exported as asked (its stacked view cannot be written, a key is unusable)."""


class InvalidDocuments(ExportError):
    """A stream of documents out of order or with a dangling reference (see ``check_documents``)."""


def _epoch(time_utc: str) -> float:
    return _dt.datetime.fromisoformat(time_utc).timestamp()


def _uid(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "/".join(str(p) for p in parts)))


def run_uid(first_event: dict[str, Any]) -> str:
    """The RunStart uid of a run: a uuid5 of its first event (kind, time, meta), stable across exports."""
    return _uid("run", json.dumps(first_event, sort_keys=True, separators=(",", ":")))


def _units(name: str) -> str | None:
    return next((u for suffix, u in _UNITS if name.endswith(suffix)), None)


def _jtype(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _value(value: Any) -> Any:
    """An event value as an event-model scalar: nested values (dicts, lists) become JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


@dataclass
class Stream:
    """The acquisitions of one phase and record type with one array shape and dtype."""

    name: str
    record: str  # "image" | "spectrum"
    shape: tuple[int, ...]
    dtype: str  # numpy dtype string, e.g. "<f4"
    steps: list[dict[str, Any]] = field(default_factory=list)  # acquisition events, log order

    @property
    def array_key(self) -> str:
        return _ARRAY[self.record][1]

    @property
    def dataset(self) -> str:
        return f"/{self.name}/{self.array_key}"

    def data_keys(self) -> dict[str, dict[str, Any]]:
        """The descriptor's data keys: the array (external) and every scalar of the events."""
        _, key, dims, units = _ARRAY[self.record]
        keys: dict[str, dict[str, Any]] = {
            key: {
                "source": f"autoscope:{STEPS}/<step_id>.h5:/{_ARRAY[self.record][0]}",
                "dtype": "array",
                "dtype_numpy": self.dtype,
                "shape": list(self.shape),
                "dims": dims,
                "units": units,
                "external": "FILESTORE:",
            }
        }
        types: dict[str, set[str]] = {}
        for e in self.steps:
            for k, v in e.items():
                if k not in _SKIP and v is not None:
                    types.setdefault(k, set()).add(_jtype(_value(v)))
        types["log_seq"] = {"integer"}
        for k, ts in types.items():
            if not _KEY.fullmatch(k) or k == key:
                raise ExportError(f"stream {self.name}: event field {k!r} cannot be an event-model data key")
            jt = ts.pop() if len(ts) == 1 else ("number" if ts <= {"integer", "number"} else "string")
            keys[k] = {"source": f"autoscope:{EVENTS}", "dtype": jt, "shape": [], "units": _units(k)}
        return keys

    def event_data(self, e: dict[str, Any], keys: dict[str, dict[str, Any]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for k, spec in keys.items():
            if k == self.array_key:
                continue
            v = e["seq"] if k == "log_seq" else _value(e.get(k))
            if v is not None and spec["dtype"] == "string" and not isinstance(v, str):
                v = json.dumps(v)
            data[k] = v
        return data


def _array_info(run_dir: Path, event: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    name = _ARRAY[event["record"]][0]
    with h5py.File(run_dir / STEPS / f"{event['step_id']}.h5", "r", locking=False) as f:
        ds = f[name]
        return tuple(int(n) for n in ds.shape), np.dtype(ds.dtype).str


def streams_of(store: RunStore) -> list[Stream]:
    """The run's complete acquisitions grouped into streams (see the module doc), in order of first use."""
    done = store.completed_steps()
    by_key: dict[tuple, Stream] = {}
    names: set[str] = set()
    for e in store.events("acquisition"):
        if e["step_id"] not in done:
            continue
        shape, dtype = _array_info(store.dir, e)
        prefix, dash, _ = e["step_id"].partition("-")
        phase = re.sub(r"[^A-Za-z0-9_]", "_", prefix) if dash else "primary"
        key = (phase, e["record"], shape, dtype)
        if key not in by_key:
            base = f"{phase}_{e['record'].replace('spectrum', 'spectra').replace('image', 'images')}"
            name, n = base, 2
            while name in names:
                name, n = f"{base}_{n}", n + 1
            names.add(name)
            by_key[key] = Stream(name, e["record"], shape, dtype)
        by_key[key].steps.append(e)
    return list(by_key.values())


def write_stack_file(run_dir: Path, streams: list[Stream]) -> Path:
    """``DIR/bluesky.h5``: one virtual dataset per stream stacking its step files (relative paths).

    Written to a temporary name and renamed into place, so a reader sees the old file or the new one.
    """
    final = run_dir / STACK_FILE
    tmp = run_dir / f".tmp-{os.getpid()}-{STACK_FILE}"
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["about"] = "stacked views of the step files of this run, for Bluesky/Tiled readers"
            for s in streams:
                layout = h5py.VirtualLayout(shape=(len(s.steps), *s.shape), dtype=s.dtype)
                for i, e in enumerate(s.steps):
                    src = f"{STEPS}/{e['step_id']}.h5"
                    layout[i] = h5py.VirtualSource(src, _ARRAY[s.record][0], shape=s.shape, dtype=s.dtype)
                f.create_virtual_dataset(s.dataset, layout)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {final} (the stacked view of the step files): {exc}") from exc
    return final


def _latest(events: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The last event per ``key`` value, in order of first appearance, without ``kind``."""
    out: dict[Any, dict[str, Any]] = {}
    for e in events:
        out[e.get(key)] = {k: v for k, v in e.items() if k != "kind"}
    return list(out.values())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def start_metadata(store: RunStore) -> dict[str, Any]:
    """What the RunStart carries besides uid and time (see the module doc)."""
    events = store.events()
    meta = store.meta
    spec_file = _read_json(store.dir / RUN_FILE)
    spec = spec_file.get("spec", {})
    started = [e for e in events if e["kind"] in ("run_started", "run_resumed")]
    if spec_file.get("remote"):
        backend: dict[str, Any] = {"kind": "remote", "url": spec_file["remote"]}
    elif spec_file.get("replay"):
        backend = {"kind": "replay", "file": spec_file["replay"]}
    else:
        backend = {"kind": "twin", "scenario": spec.get("scenario", meta.get("scenario"))}
    md: dict[str, Any] = {
        "plan_name": f"autoscope {meta.get('command', 'run')}",
        "run_id": spec_file.get("run_id") or (started[0]["run_id"] if started else store.dir.name),
        "scenario": spec.get("scenario", meta.get("scenario")),
        "seed": spec.get("seed", meta.get("seed")),
        "backend": backend,
        "autoscope": {
            "format": events[0].get("format"),
            "version": events[0].get("version"),
            "run_dir": str(store.dir),
            "meta": meta,
        },  # fmt: skip
        "survey": next((e["plan"] for e in events if e["kind"] == "survey_started"), None),
        "hypotheses": _latest([e for e in events if e["kind"] == "hypothesis"], "id"),
        "plans": _latest([e for e in events if e["kind"] == "plan"], "hypothesis_id"),
        "decisions": [{k: v for k, v in e.items() if k != "kind"} for e in events if e["kind"] == "decision"],
    }
    if started:
        md["autonomy"], md["llm"] = started[-1].get("autonomy"), started[-1].get("llm")
    for k in ("goal", "notes", "question", "budget", "rounds"):
        if k in spec:
            md[k] = spec[k]
    return {k: v for k, v in md.items() if v is not None}


def run_outcome(events: list[dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    """(exit_status, reason, verdicts) of a run, from how its log ends."""
    graph = any(e["kind"] == "run_started" for e in events)
    outer = (
        {"run_started", "run_resumed", "run_complete"}
        if graph
        else {"survey_started", "campaign_started", "campaign_stopped", *_END}
    )
    idx = max((i for i, e in enumerate(events) if e["kind"] in outer), default=-1)
    last = events[idx] if idx >= 0 else None
    verdicts = _latest([e for e in events if e["kind"] == "verdict"], "hypothesis_id")
    said = "; ".join(
        f"{v.get('hypothesis_id')} {v.get('outcome')}: {v.get('readable', '')}" for v in verdicts
    )
    failures = [e for e in events[idx + 1 :] if e["kind"] in _FAILURES]
    if last is not None and last["kind"] in _END:
        status, reason = "success", str(last.get("stop_reason") or f"{last['kind'].replace('_', ' ')}")
    elif failures:
        f = failures[-1]
        status, reason = "fail", f"{f['kind']}: {f.get('message') or f.get('error') or f.get('limit', '')}"
    elif last is not None and last["kind"] == "campaign_stopped":
        why = str(last.get("reason", ""))
        status, reason = ("fail" if why.startswith("safety") else "abort"), f"campaign stopped: {why}"
    else:
        status = "abort"
        reason = f"the run has not reached its end (last event: {events[-1]['kind'] if events else 'none'})"
    return status, (f"{reason}. Verdicts: {said}" if said else reason), verdicts


def documents(run_dir: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """The run's event-model documents as ``(name, doc)``, each validated as it is composed.

    Writes (or rewrites) ``DIR/bluesky.h5``, the stacked view its Resources point at. The run is
    read without a lock, so a run another process is writing can be exported as it stands.
    """
    d = Path(run_dir).absolute()
    if not (d / EVENTS).exists():
        raise FileNotFoundError(f"{d} is not an autoscope run directory (no {EVENTS})")
    store = RunStore.open(d, read_only=True)
    events = store.events()
    streams = streams_of(store)
    write_stack_file(d, streams)
    uid = run_uid(events[0])
    bundle = event_model.compose_run(
        uid=uid, time=_epoch(events[0]["time_utc"]), metadata=start_metadata(store)
    )
    yield "start", bundle.start_doc
    by_step = {e["step_id"]: s for s in streams for e in s.steps}
    frames = {e["step_id"]: i for s in streams for i, e in enumerate(s.steps)}
    open_streams: dict[str, tuple] = {}
    for e in (e for e in events if e["kind"] == "acquisition" and e["step_id"] in by_step):
        s = by_step[e["step_id"]]
        if s.name not in open_streams:
            res = bundle.compose_resource(
                spec=SPEC,
                root=str(d),
                resource_path=STACK_FILE,
                resource_kwargs={"dataset": s.dataset, "swmr": False, "join_method": "stack"},
                path_semantics="posix",
                uid=_uid(uid, "resource", s.name, s.array_key),
            )
            keys = s.data_keys()
            desc = bundle.compose_descriptor(
                name=s.name,
                data_keys=keys,
                object_keys={"microscope": list(keys)},
                hints={"microscope": {"fields": [s.array_key]}},
                time=_epoch(s.steps[0]["time_utc"]),
                uid=_uid(uid, "descriptor", s.name),
            )
            open_streams[s.name] = (res, desc, keys)
            yield "resource", res.resource_doc
            yield "descriptor", desc.descriptor_doc
        res, desc, keys = open_streams[s.name]
        datum = res.compose_datum(datum_kwargs={"frame": frames[e["step_id"]]})
        yield "datum", datum
        t = _epoch(e["time_utc"])
        data = {**s.event_data(e, keys), s.array_key: datum["datum_id"]}
        yield (
            "event",
            desc.compose_event(
                data=data,
                timestamps=dict.fromkeys(data, t),
                filled={s.array_key: False},
                uid=_uid(uid, "event", e["step_id"]),
                time=t,
            ),
        )
    status, reason, verdicts = run_outcome(events)
    stop = bundle.compose_stop(
        exit_status=status, reason=reason, uid=_uid(uid, "stop"), time=_epoch(events[-1]["time_utc"])
    )
    stop["verdicts"] = verdicts
    event_model.schema_validators[event_model.DocumentNames.stop].validate(stop)
    yield "stop", stop


def check_documents(docs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """Validate every document against event-model's schemas and their order; counts per name.

    Order: one start first, one stop last, every descriptor before its events, every datum's
    resource before it, every event's datums present, the stop's ``num_events`` as counted.
    """
    counts: dict[str, int] = {}
    start: dict[str, Any] | None = None
    resources: set[str] = set()
    datums: set[str] = set()
    descriptors: dict[str, dict[str, Any]] = {}
    per_stream: dict[str, int] = {}
    stopped = False
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
        counts[name] = counts.get(name, 0) + 1
        if stopped or (start is None) != (name == "start"):
            raise InvalidDocuments(
                f"{name} document out of order: a run is one start, its documents, one stop"
            )
        if name == "start":
            start = doc
        elif name == "resource":
            resources.add(doc["uid"])
        elif name == "datum":
            if doc["resource"] not in resources:
                raise InvalidDocuments(
                    f"datum {doc['datum_id']} names resource {doc['resource']}, not given before"
                )
            datums.add(doc["datum_id"])
        elif name == "descriptor":
            descriptors[doc["uid"]] = doc
        elif name == "event":
            desc = descriptors.get(doc["descriptor"])
            if desc is None:
                raise InvalidDocuments(f"event {doc['uid']} comes before its descriptor {doc['descriptor']}")
            for k, spec in desc["data_keys"].items():
                if spec.get("external") and doc["data"][k] not in datums:
                    raise InvalidDocuments(
                        f"event {doc['uid']} names datum {doc['data'][k]}, not given before"
                    )
            per_stream[desc["name"]] = per_stream.get(desc["name"], 0) + 1
        elif name == "stop":
            stopped = True
            if doc["run_start"] != start["uid"] or doc["num_events"] != per_stream:  # type: ignore[index]
                raise InvalidDocuments(
                    f"stop counts {doc['num_events']} events, the documents hold {per_stream}"
                )
    if not stopped:
        raise InvalidDocuments("the documents end without a stop")
    return counts


@dataclass
class ExportResult:
    out: Path
    counts: dict[str, int]
    events: int
    seconds: float


def write_jsonl(run_dir: str | os.PathLike, out: str | os.PathLike) -> ExportResult:
    """Write the run's documents to ``out`` as ``[name, doc]`` JSON lines, checked by ``check_documents``.

    Written to a temporary name and renamed into place once every document checked out.
    """
    t0 = time.perf_counter()
    out = Path(out)
    docs = list(documents(run_dir))
    counts = check_documents(docs)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    try:
        with tmp.open("w") as f:
            for name, doc in docs:
                f.write(json.dumps([name, doc], allow_nan=False, separators=(",", ":")) + "\n")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {out}: {exc}") from exc
    return ExportResult(out, counts, counts.get("event", 0), time.perf_counter() - t0)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``(name, doc)`` pairs of a file written by ``write_jsonl``."""
    with open(path) as f:
        for line in f:
            if line.strip():
                name, doc = json.loads(line)
                yield name, doc
