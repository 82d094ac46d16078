"""Wire codec of the remote instrument: how records, arrays and errors travel over HTTP.

An acquisition answer is the array as the raw bytes of a ``.npy`` file (``np.save``;
content type ``application/x-npy``) with the record's parameters as JSON in the
``X-Autoscope-Record`` response header. A bare ``.npy`` body can be read by any tool
(``curl ... > a.npy``), needs no multipart parser on either side, and the metadata
is a few hundred bytes, well within header limits. Errors travel as the JSON of
``InstrumentError.to_dict()`` with the HTTP status from ``STATUS_BY_ERROR``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoscope.instruments.errors import (
    AcquisitionFailed,
    BeamBlanked,
    ConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    InvalidRequest,
    SafetyLimitExceeded,
)
from autoscope.instruments.records import ImageRecord, SpectrumRecord

NPY_MEDIA_TYPE = "application/x-npy"
RECORD_HEADER = "X-Autoscope-Record"
REQUEST_ID_HEADER = "X-Request-Id"

#: HTTP status of each typed error, most specific class first
STATUS_BY_ERROR: tuple[tuple[type[InstrumentError], int], ...] = (
    (InvalidRequest, 422),
    (BeamBlanked, 409),
    (SafetyLimitExceeded, 403),
    (InstrumentTimeout, 504),
    (ConnectionLost, 503),
    (AcquisitionFailed, 502),
    (InstrumentError, 500),
)

#: statuses after which a request may succeed when sent again (same request id)
RETRYABLE_STATUSES = frozenset({503, 504})


class Position(BaseModel):
    """Body of ``POST /probe`` and ``POST /stage`` (sample frame, nm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x_nm: float = Field(allow_inf_nan=False)
    y_nm: float = Field(allow_inf_nan=False)


class BeamCurrent(BaseModel):
    """Body of ``POST /beam/current``; the range is checked by the instrument."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    current_pA: float = Field(allow_inf_nan=False)


class BeamState(BaseModel):
    """Answer of ``GET /beam``."""

    blanked: bool
    current_pA: float


def status_for(error: InstrumentError) -> int:
    """HTTP status that carries ``error``."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def array_to_npy(array: np.ndarray) -> bytes:
    """``.npy`` file bytes of ``array`` (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_to_array(data: bytes) -> np.ndarray:
    """Array from ``.npy`` file bytes; refuses pickled object arrays."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_record(record: ImageRecord | SpectrumRecord) -> tuple[bytes, dict[str, str]]:
    """(npy body, headers) of an image or spectrum record."""
    if isinstance(record, ImageRecord):
        array, kind = record.data, "image"
    else:
        array, kind = record.counts, "spectrum"
    meta = {"kind": kind, **record.metadata()}
    return array_to_npy(array), {RECORD_HEADER: json.dumps(meta, separators=(",", ":"))}


def decode_record(body: bytes, headers: Any) -> ImageRecord | SpectrumRecord:
    """Rebuild the record from an npy body and the ``X-Autoscope-Record`` header."""
    raw = headers.get(RECORD_HEADER)
    if raw is None:
        raise InstrumentError(f"answer carries no {RECORD_HEADER} header; is this an autoscope server?")
    meta: dict[str, Any] = json.loads(raw)
    kind = meta.pop("kind", None)
    array = npy_to_array(body)
    if kind == "image":
        return ImageRecord.from_metadata(array, meta)
    if kind == "spectrum":
        return SpectrumRecord.from_metadata(array, meta)
    raise InstrumentError(f"unknown record kind {kind!r} in {RECORD_HEADER}")


def error_from_validation(detail: Any) -> InvalidRequest:
    """``InvalidRequest`` from FastAPI's 422 ``detail`` list, naming the first bad field."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(p) for p in detail[0].get("loc", ()) if p != "body"]
        return InvalidRequest(".".join(loc) or "body", str(detail[0].get("msg", "invalid value")))
    return InvalidRequest("body", str(detail))
