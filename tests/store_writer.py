"""Writer process for the SIGKILL test of the run store.

``python tests/store_writer.py DIR`` opens (or creates) the run in DIR and saves
steps ``s0000, s0001, ...`` forever, continuing after the highest step already
stored. After each save returns it prints ``saved <step_id>`` (flushed), so the
test knows which steps it may rely on. Even steps are images, odd steps spectra;
their arrays are a deterministic function of the step index (``expected_record``).
"""

from __future__ import annotations

import sys

import numpy as np

from autoscope.instruments.records import Detector, ImageRecord, SpectrumRecord

IMAGE_PIXELS = 96
CHANNELS = 2048


def step_id(i: int) -> str:
    return f"s{i:04d}"


def expected_record(i: int) -> ImageRecord | SpectrumRecord:
    """The record the writer stores as step ``i``."""
    rng = np.random.default_rng(1000 + i)
    if i % 2 == 0:
        return ImageRecord(
            data=rng.poisson(50.0, size=(IMAGE_PIXELS, IMAGE_PIXELS)).astype(np.float32),
            fov_nm=20.0 + i,
            pixels=IMAGE_PIXELS,
            dwell_s=2e-6,
            detector=Detector.HAADF if i % 4 == 0 else Detector.BF,
            center_x_nm=float(i),
            center_y_nm=-float(i),
            current_pA=25.0,
            dose_e=1.5e6 + i,
            dose_e_per_A2=37.5 + i,
            t_start_s=float(i),
            t_end_s=float(i) + 0.5,
        )
    return SpectrumRecord(
        counts=rng.gamma(3.0, 10.0, size=CHANNELS),
        energy_offset_eV=-5.0,
        dispersion_eV=0.05,
        x_nm=0.5 * i,
        y_nm=1.0 + i,
        dwell_s=0.1,
        current_pA=30.0,
        dose_e=1.9e7 + i,
        dose_e_per_A2=4.2e5 + i,
        t_start_s=float(i),
        t_end_s=float(i) + 0.1,
    )


def main(directory: str) -> None:
    from autoscope.tools.store import RunStore

    store = RunStore.open_or_create(directory, {"writer": "store_writer"})
    done = store.completed_steps()
    i = 1 + max((int(s[1:]) for s in done), default=-1)
    out = sys.stdout
    while True:
        rec = expected_record(i)
        if isinstance(rec, ImageRecord):
            store.save_image(step_id(i), rec, index=i)
        else:
            store.save_spectrum(step_id(i), rec, index=i)
        if i % 3 == 0:
            store.append_event("progress", index=i)
        out.write(f"saved {step_id(i)}\n")
        out.flush()
        i += 1


if __name__ == "__main__":
    main(sys.argv[1])
