"""Client of the instrument server: a ``Microscope`` over HTTP.

Every call is one HTTP request. Transport errors and the retryable statuses (503
connection lost, 504 instrument timeout) are retried with exponential backoff,
reusing the request's ``X-Request-Id`` so the server executes it at most once.
Typed instrument errors are rebuilt on this side with ``error_from_dict``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from autoscope.instruments.errors import ConnectionLost, InstrumentError, error_from_dict
from autoscope.instruments.protocols import ClosesOnExit
from autoscope.instruments.records import (
    Capabilities,
    Detector,
    ImageRecord,
    ImageRequest,
    InstrumentStatus,
    SpectrumRecord,
    SpectrumRequest,
)
from autoscope.instruments.remote.wire import (
    NPY_MEDIA_TYPE,
    REQUEST_ID_HEADER,
    RETRYABLE_STATUSES,
    BeamState,
    Position,
    decode_record,
    error_from_validation,
)

log = logging.getLogger(__name__)


class _Retryable(Exception):
    """A 503/504 answer: the request may succeed when sent again."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _should_retry(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable | httpx.TransportError)


class RemoteMicroscope(ClosesOnExit):
    """A microscope served by ``autoscope instrument serve`` at ``url``.

    ``retries`` is the number of extra attempts after the first, with exponential
    backoff starting at ``backoff_s``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = max(int(retries), 0)
        self.backoff_s = float(backoff_s)
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )
        self._caps: Capabilities | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        """One request with retries; the same request id on every attempt."""
        headers = {REQUEST_ID_HEADER: uuid.uuid4().hex} if method == "POST" else {}

        def attempt() -> httpx.Response:
            response = self._http.request(method, path, json=body, headers=headers)
            if response.status_code in RETRYABLE_STATUSES:
                raise _Retryable(response)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, max=max(self.backoff_s * 16, 0.0)),
            retry=retry_if_exception(_should_retry),
            before_sleep=lambda state: log.warning(
                "%s %s%s failed (%s); retrying (attempt %d of %d)",
                method,
                self.url,
                path,
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number + 1,
                self.retries + 1,
            ),
            reraise=False,
        )
        try:
            return retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            if isinstance(last, _Retryable):
                return last.response
            raise ConnectionLost(
                f"instrument server {self.url} unreachable after {self.retries + 1} attempts: {last}"
            ) from last

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """Send and turn any non-2xx answer into a typed error."""
        response = self._send(method, path, body)
        if response.is_success:
            return response
        if response.status_code == 401:
            raise InstrumentError(f"token rejected by {self.url}: check the bearer token (AUTOSCOPE_TOKEN)")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            raise error_from_dict(payload)
        if response.status_code == 422 and isinstance(payload, dict):
            raise error_from_validation(payload.get("detail"))
        raise InstrumentError(
            f"{method} {self.url}{path} answered HTTP {response.status_code}: {response.text[:200]}"
        )

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request(method, path, body).json()

    def _record(self, path: str, body: dict[str, Any]) -> ImageRecord | SpectrumRecord:
        response = self._request("POST", path, body)
        media = response.headers.get("content-type", "")
        if not media.startswith(NPY_MEDIA_TYPE):
            raise InstrumentError(f"{self.url}{path} answered {media!r}, expected {NPY_MEDIA_TYPE}")
        return decode_record(response.content, response.headers)

    # -- Imaging, Spectroscopy --------------------------------------------------------------

    def acquire_image(
        self,
        fov_nm: float,
        pixels: int,
        dwell_s: float,
        detector: Detector = Detector.HAADF,
        rows: int | None = None,
    ) -> ImageRecord:
        req = ImageRequest.checked(
            fov_nm=fov_nm, pixels=pixels, dwell_s=dwell_s, detector=detector, rows=rows
        )
        record = self._record("/image", req.model_dump(mode="json", exclude_none=True))
        if not isinstance(record, ImageRecord):
            raise InstrumentError(f"{self.url}/image answered a {type(record).__name__}")
        return record

    def acquire_spectrum(
        self, x_nm: float, y_nm: float, dwell_s: float, energy_min_eV: float, energy_max_eV: float
    ) -> SpectrumRecord:
        req = SpectrumRequest.checked(
            x_nm=x_nm, y_nm=y_nm, dwell_s=dwell_s, energy_min_eV=energy_min_eV, energy_max_eV=energy_max_eV
        )
        record = self._record("/spectrum", req.model_dump(mode="json"))
        if not isinstance(record, SpectrumRecord):
            raise InstrumentError(f"{self.url}/spectrum answered a {type(record).__name__}")
        return record

    # -- Beam ---------------------------------------------------------------------------------

    def _beam(
        self, method: str = "GET", path: str = "/beam", body: dict[str, Any] | None = None
    ) -> BeamState:
        return BeamState.model_validate(self._json(method, path, body))

    def probe_position_nm(self) -> tuple[float, float]:
        pos = Position.model_validate(self._json("GET", "/probe"))
        return pos.x_nm, pos.y_nm

    def move_probe(self, x_nm: float, y_nm: float) -> None:
        self._json("POST", "/probe", {"x_nm": x_nm, "y_nm": y_nm})

    def blank_beam(self) -> None:
        self._beam("POST", "/beam/blank")

    def unblank_beam(self) -> None:
        self._beam("POST", "/beam/unblank")

    def beam_blanked(self) -> bool:
        return self._beam().blanked

    def beam_current_pA(self) -> float:
        return self._beam().current_pA

    def set_beam_current(self, current_pA: float) -> None:
        self._beam("POST", "/beam/current", {"current_pA": current_pA})

    # -- Stage, Status, Clock -----------------------------------------------------------------

    def stage_position_nm(self) -> tuple[float, float]:
        pos = Position.model_validate(self._json("GET", "/stage"))
        return pos.x_nm, pos.y_nm

    def move_stage(self, x_nm: float, y_nm: float) -> None:
        self._json("POST", "/stage", {"x_nm": x_nm, "y_nm": y_nm})

    def status(self) -> InstrumentStatus:
        return InstrumentStatus.model_validate(self._json("GET", "/status"))

    def capabilities(self) -> Capabilities:
        """Capabilities are fixed for a session: fetched once, then cached."""
        if self._caps is None:
            self._caps = Capabilities.model_validate(self._json("GET", "/capabilities"))
        return self._caps

    def now_s(self) -> float:
        return float(self._json("GET", "/clock")["now_s"])

    def health(self) -> bool:
        """True when the server answers ``/health`` (no token needed, no retries)."""
        try:
            return self._http.get("/health").json().get("ok") is True
        except (httpx.HTTPError, ValueError):
            return False

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"RemoteMicroscope({self.url!r})"
