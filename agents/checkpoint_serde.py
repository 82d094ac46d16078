"""Checkpoints read without running anything they carry.

LangGraph's default serializer rebuilds objects named inside a checkpoint (module and
callable, then a call), and can fall back to pickle: a crafted ``checkpoints.sqlite`` (or
a row in a shared PostgreSQL) would run code when a run is resumed — the class of bug of
CVE-2025-64439 and CVE-2026-28277. The graph state of autoscope is plain JSON values, so
``SafeSerializer`` writes what LangGraph writes (msgpack, no pickle) and, before loading,
walks every msgpack extension in the blob: a pickle payload, or any constructor outside
LangGraph's own list of safe types (``SAFE_MSGPACK_TYPES``: datetimes, sets, its
``Interrupt``/``Send``/``Command``…), refuses the whole checkpoint with
``CheckpointRefused`` naming what it carried. Nothing is imported or called first.
"""

from __future__ import annotations

from typing import Any

import ormsgpack
from langgraph.checkpoint.serde import _msgpack as lg_msgpack
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from autoscope.instruments.errors import ConfigError

_CONSTRUCTORS = {0, 1, 2, 4, 5}  # single arg, positional, keyword, pydantic v1, pydantic v2
_METHOD, _NUMPY, _DELTA = 3, 6, 7


class CheckpointRefused(ConfigError):
    """A checkpoint carries something autoscope does not load (pickle, an unknown constructor)."""

    code = "checkpoint_refused"

    def __init__(self, message: str) -> None:
        super().__init__("checkpoint", message)


def _scan(data: bytes) -> None:
    """Unpack ``data`` only to look at its extensions; raise on anything not on the safe lists.

    (ormsgpack wraps an exception raised in the hook, so the hook notes what it found instead.)"""
    refused: list[str] = []

    def hook(code: int, payload: bytes) -> Any:
        inner = ormsgpack.unpackb(payload, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
        if code == _DELTA:
            return None
        if code == _METHOD:
            key = tuple(str(x) for x in inner[:3])
            if key not in lg_msgpack.SAFE_MSGPACK_METHODS:
                refused.append(f"the checkpoint calls {'.'.join(key)}, which is not allowed")
        elif code in _CONSTRUCTORS:
            key = (str(inner[0]), str(inner[1]))
            if key not in lg_msgpack.SAFE_MSGPACK_TYPES:
                refused.append(
                    f"the checkpoint would construct {key[0]}.{key[1]}, which is not a type autoscope "
                    "stores; it was not loaded (was the file written by something else?)"
                )
        else:
            what = "a numpy array" if code == _NUMPY else "unknown"
            refused.append(f"the checkpoint holds a msgpack extension of type {code} ({what})")
        return None

    try:
        ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
    except Exception as exc:
        if not refused:
            raise CheckpointRefused(f"the checkpoint is not readable msgpack ({exc})") from None
    if refused:
        raise CheckpointRefused(refused[0])


class SafeSerializer(JsonPlusSerializer):
    """LangGraph's serializer, strict: no pickle either way, extensions checked before loading."""

    def __init__(self) -> None:
        super().__init__(pickle_fallback=False, allowed_msgpack_modules=None, allowed_json_modules=None)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, blob = data
        if kind == "pickle":
            raise CheckpointRefused(
                "the checkpoint holds a pickle payload; autoscope never writes pickles and does not load them"
            )
        if kind == "msgpack":
            _scan(blob)
        elif kind not in ("null", "bytes", "bytearray", "json"):
            raise CheckpointRefused(f"the checkpoint has an unknown serialization {kind!r}")
        return super().loads_typed(data)
