"""Figures drawn from several threads at once (the web workspace runs each run in a thread)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from autoscope.tools import figures


def _draw_in_threads(tmp_path: Path, threads: int = 4, each: int = 20) -> list[str]:
    data = np.random.default_rng(0).normal(size=(64, 64))
    errors: list[str] = []

    def work(k: int) -> None:
        try:
            for i in range(each):  # mathtext in the titles: pyplot's shared parser state
                figures.image_figure(data, 100.0, (0.0, 0.0), tmp_path / f"{k}-{i}.png", title=f"$\\alpha_{k}$ {i}")
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            errors.append(repr(exc))

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def test_figures_from_several_threads_are_all_drawn(tmp_path: Path):
    assert _draw_in_threads(tmp_path) == []
    assert len(list(tmp_path.glob("*.png"))) == 80
