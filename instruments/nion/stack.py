"""The Nion objects the backend drives: the scan, the EELS camera and the STEM controller.

``NionStack.open`` either attaches to what a running Nion Swift registered (on a microscope,
the real hardware sources) or starts Nion's simulator, ``nionswift-usim``, headless in this
process. Facts of the headless start (measured with nionswift-usim 5.4.2 /
nionswift-instrumentation 23.6.2):

- ``camera_base``/``scan_base`` look up the thread's asyncio event loop when the hardware
  sources are made; without one set they come back as None. A loop is set for the start.
- ``AcquisitionContextConfiguration(set_configuration_location=False)``: the default ``True``
  deletes and recreates ``./test_data``.
- Every piece started must be stopped (``close``): a camera hardware source left open keeps a
  non-daemon thread and the process hangs at exit. ``close`` is also registered to run at
  interpreter shutdown, before non-daemon threads are joined, in case a caller forgets.
- The simulator's registries are global: one simulator per process at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from autoscope.instruments.errors import ConfigError
from autoscope.instruments.nion.config import NionConfig

log = logging.getLogger(__name__)

_OPEN: list[NionStack] = []  # stacks this process started and has not closed
_LOCK = threading.Lock()


@dataclasses.dataclass
class NionStack:
    """The hardware sources and the STEM controller of one Nion column."""

    scan: Any  # scan_base.ScanHardwareSource
    eels: Any  # camera_base.CameraHardwareSource
    controller: Any  # stem_controller.STEMController (GetVal/SetVal/SetVal2D)
    simulated: bool
    _stop: list = dataclasses.field(default_factory=list, repr=False)

    @classmethod
    def open(cls, config: NionConfig) -> NionStack:
        """Attach to a running Nion Swift or start the simulator, as ``config.start`` says."""
        from nion.instrumentation import HardwareSource

        with _LOCK:
            if _OPEN:
                raise ConfigError(
                    "backend", "a Nion simulator is already open in this process; close it first"
                )
            registered = _registered_sources()
            if config.start == "attach" or (config.start == "auto" and registered):
                if not registered:
                    raise ConfigError("backend", "no Nion Swift hardware sources are registered to attach to")
                manager = HardwareSource.HardwareSourceManager()
                stack = cls(*_find(manager, config, _stem_controller()), simulated=False)
                log.info("attached to Nion Swift: scan %s, EELS %s", config.scan, config.eels)
                return stack
            stack = _start_simulator(config)
            _OPEN.append(stack)
            return stack

    def close(self) -> None:
        """Stop what this process started (nothing for an attached Swift), once."""
        with _LOCK:
            stops, self._stop = self._stop, []
            if self in _OPEN:
                _OPEN.remove(self)
        for stop in reversed(stops):
            try:
                stop()
            except Exception:  # a failed stop must not keep the others from running
                log.exception("stopping the Nion simulator")


def _registered_sources() -> list:
    from nion.utils import Registry

    manager = Registry.get_component("hardware_source_manager")
    return list(manager.hardware_sources) if manager is not None else []


def _stem_controller() -> Any:
    from nion.utils import Registry

    controller = Registry.get_component("stem_controller")
    if controller is None:
        raise ConfigError("backend", "Nion Swift has no STEM controller registered")
    return controller


def _find(manager: Any, config: NionConfig, controller: Any) -> tuple[Any, Any, Any]:
    scan = manager.get_hardware_source_for_hardware_source_id(config.scan)
    eels = manager.get_hardware_source_for_hardware_source_id(config.eels)
    ids = sorted(h.hardware_source_id for h in manager.hardware_sources)
    for field, source, want in (("scan", scan, config.scan), ("eels", eels, config.eels)):
        if source is None:
            raise ConfigError(
                f"nion.{field}", f"no hardware source {want!r}; Nion Swift has {', '.join(ids)}"
            )
    return scan, eels, controller


def _start_simulator(config: NionConfig) -> NionStack:
    from nion.instrumentation import HardwareSource, camera_base, scan_base
    from nion.usim_device import DeviceConfiguration

    stops: list = []
    loop = asyncio.new_event_loop()
    previous = _thread_loop()
    asyncio.set_event_loop(loop)
    # hardware-source settings files (frame parameter profiles) go to a directory of our own
    settings_dir = tempfile.TemporaryDirectory(prefix="autoscope-usim-")
    stops.append(settings_dir.cleanup)
    stops.append(loop.close)
    try:
        HardwareSource.run()
        manager = HardwareSource.HardwareSourceManager()
        stops.append(lambda: _close_manager(manager))  # last: after everything it lists is gone
        stops.append(HardwareSource.stop)
        camera_base.run(Path(settings_dir.name))
        stops.append(camera_base.stop)
        scan_base.run(Path(settings_dir.name))
        stops.append(scan_base.stop)
        usim = DeviceConfiguration.AcquisitionContextConfiguration(set_configuration_location=False)
        usim.run()
        stops.append(usim.stop)  # unregistering closes the hardware sources (their threads)
        stack = NionStack(*_find(manager, config, usim.instrument), simulated=True, _stop=stops)
    except BaseException:
        NionStack(None, None, None, True, stops).close()
        raise
    finally:
        asyncio.set_event_loop(previous)
    threading._register_atexit(stack.close)  # before non-daemon threads are joined at exit
    log.info("started Nion's simulator (nionswift-usim) headless")
    return stack


def _close_manager(manager: Any) -> None:
    close = getattr(manager, "close", None)
    if close is not None:
        close()


def _thread_loop() -> asyncio.AbstractEventLoop | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return None
