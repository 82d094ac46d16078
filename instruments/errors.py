"""Instrument-layer errors.

Every error carries a message a scientist can act on. The hierarchy mirrors ASE's
``CalculatorError`` family: catch ``InstrumentError`` for "anything the microscope
refused or failed to do", or a subclass for a specific remedy.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


class InstrumentError(Exception):
    """Base class of every error raised by an instrument backend."""

    #: stable machine-readable name, used on the wire by the remote driver
    code: str = "instrument_error"

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": str(self)}


def validation_field(exc: ValidationError, model: type[BaseModel] | None = None) -> tuple[str, str]:
    """(field, message) of the first error pydantic found.

    A model-level check has no location: the field is then the first of ``model``'s
    fields the message names, else the model's name.
    """
    err = exc.errors()[0]
    msg = str(err.get("msg", "invalid value"))
    loc = ".".join(str(p) for p in err.get("loc", ()))
    if not loc and model is not None:
        loc = next((f for f in model.model_fields if f in msg), model.__name__)
    return loc or exc.title, msg


class InvalidRequest(InstrumentError, ValueError):
    """A request parameter is out of range or malformed; nothing was acquired.

    ``field`` names the offending parameter (``dwell_s``, ``fov_nm``...).
    """

    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field}


class BeamBlanked(InstrumentError):
    """An acquisition was requested while the beam is blanked.

    Unblank the beam explicitly (``unblank_beam()``) once it is safe to expose.
    """

    code = "beam_blanked"


class AcquisitionFailed(InstrumentError):
    """The instrument tried to acquire and failed; the dose may have been delivered."""

    code = "acquisition_failed"


class InstrumentTimeout(AcquisitionFailed):
    """The instrument did not answer in time. Retrying may succeed."""

    code = "instrument_timeout"


class ConnectionLost(AcquisitionFailed):
    """The connection to the instrument dropped during a request. Retrying may succeed."""

    code = "connection_lost"


class SafetyLimitExceeded(InstrumentError):
    """A request would cross a human-set safety limit; it was not executed.

    ``limit`` names the limit (a field of ``SafetyLimits``), ``value`` is what the
    request would have reached and ``maximum`` the limit itself. The beam has been
    blanked. Only a person can change the limits, in the limits file.
    """

    code = "safety_limit_exceeded"

    def __init__(self, limit: str, value: float, maximum: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = float(value)
        self.maximum = float(maximum)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "limit": self.limit,
            "value": self.value,
            "maximum": self.maximum,
        }


class ConfigError(InstrumentError, ValueError):
    """A human-authored configuration file (e.g. the safety limits) is missing or wrong.

    ``field`` names the offending setting (or ``"file"`` when the file itself is the
    problem) and ``path`` the file, so the person can fix it.
    """

    code = "config_error"

    def __init__(self, field: str, message: str, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{field}: {message}")
        self.field = field
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field, "path": self.path}


ERRORS_BY_CODE: dict[str, type[InstrumentError]] = {
    cls.code: cls
    for cls in (
        InstrumentError,
        InvalidRequest,
        BeamBlanked,
        AcquisitionFailed,
        InstrumentTimeout,
        ConnectionLost,
        SafetyLimitExceeded,
    )
}


def error_from_dict(payload: dict[str, Any]) -> InstrumentError:
    """Rebuild a typed error from ``InstrumentError.to_dict()`` output (remote driver)."""
    code = payload.get("error", "instrument_error")
    message = str(payload.get("message", "instrument error"))
    cls = ERRORS_BY_CODE.get(code, InstrumentError)
    if cls is InvalidRequest:
        field = str(payload.get("field", "request"))
        prefix = f"{field}: "
        return InvalidRequest(field, message[len(prefix) :] if message.startswith(prefix) else message)
    if cls is SafetyLimitExceeded:
        return SafetyLimitExceeded(
            str(payload.get("limit", "unknown")),
            float(payload.get("value", float("nan"))),
            float(payload.get("maximum", float("nan"))),
            message,
        )
    return cls(message)
