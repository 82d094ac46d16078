"""Areal dose bookkeeping on a regular grid (electrons per square ångström).

Used by the simulated microscope (the physical dose that drives beam damage) and by
the safety wrapper (an independent ledger for the dose-per-area limit). Cells hold
the mean areal dose over the cell; a rectangle deposits into each cell in proportion
to the overlap, so the ledger is exact for cell averages.
"""

from __future__ import annotations

import numpy as np

from autoscope.instruments.records import NM2_TO_A2


class DoseMap:
    """Cumulative areal dose over the box [x_min, x_max] × [y_min, y_max] (nm).

    ``cell_nm`` is the side of a cell; it is enlarged when the box would need more
    than ``max_cells`` cells per side. Dose landing outside the box is clipped to it.
    """

    def __init__(
        self,
        x_min_nm: float,
        x_max_nm: float,
        y_min_nm: float,
        y_max_nm: float,
        cell_nm: float,
        max_cells: int = 2048,
    ) -> None:
        if x_max_nm <= x_min_nm or y_max_nm <= y_min_nm:
            raise ValueError("empty dose-map box")
        extent = max(x_max_nm - x_min_nm, y_max_nm - y_min_nm)
        self.cell_nm = max(float(cell_nm), extent / max_cells)
        self.x_min_nm, self.y_min_nm = float(x_min_nm), float(y_min_nm)
        nx = int(np.ceil((x_max_nm - x_min_nm) / self.cell_nm - 1e-9))
        ny = int(np.ceil((y_max_nm - y_min_nm) / self.cell_nm - 1e-9))
        self.e_per_A2 = np.zeros((ny, nx), dtype=np.float64)

    def _overlap(self, lo: float, hi: float, origin: float, n: int) -> tuple[int, np.ndarray]:
        """First cell index and the fraction of each cell in [lo, hi] along one axis."""
        a = (lo - origin) / self.cell_nm
        b = (hi - origin) / self.cell_nm
        a, b = max(a, 0.0), min(b, float(n))
        if b <= a:
            return 0, np.zeros(0)
        i0, i1 = int(np.floor(a)), int(np.ceil(b))
        edges = np.arange(i0, i1 + 1, dtype=np.float64)
        frac = np.minimum(edges[1:], b) - np.maximum(edges[:-1], a)
        return i0, np.clip(frac, 0.0, 1.0)

    def add_rect(self, x0_nm: float, x1_nm: float, y0_nm: float, y1_nm: float, e_per_A2: float) -> None:
        """Deposit a uniform areal dose ``e_per_A2`` over a rectangle."""
        ny, nx = self.e_per_A2.shape
        ix, fx = self._overlap(x0_nm, x1_nm, self.x_min_nm, nx)
        iy, fy = self._overlap(y0_nm, y1_nm, self.y_min_nm, ny)
        if fx.size and fy.size:
            self.e_per_A2[iy : iy + fy.size, ix : ix + fx.size] += e_per_A2 * np.outer(fy, fx)

    def add_spot(self, x_nm: float, y_nm: float, electrons: float, diameter_nm: float) -> None:
        """Deposit ``electrons`` in a square of side ``diameter_nm`` around a probe position."""
        d = max(diameter_nm, 1e-6)
        area_A2 = d * d * NM2_TO_A2
        h = d / 2
        self.add_rect(x_nm - h, x_nm + h, y_nm - h, y_nm + h, electrons / area_A2)

    def peak_in(self, x0_nm: float, x1_nm: float, y0_nm: float, y1_nm: float) -> float:
        """Largest cell dose among the cells a rectangle touches (0 outside the box)."""
        ny, nx = self.e_per_A2.shape
        ix, fx = self._overlap(x0_nm, x1_nm, self.x_min_nm, nx)
        iy, fy = self._overlap(y0_nm, y1_nm, self.y_min_nm, ny)
        if not (fx.size and fy.size):
            return 0.0
        return float(self.e_per_A2[iy : iy + fy.size, ix : ix + fx.size].max())

    def at(self, x_nm: np.ndarray | float, y_nm: np.ndarray | float) -> np.ndarray:
        """Cell dose at sample-frame points (0 outside the box)."""
        ny, nx = self.e_per_A2.shape
        ix = np.floor((np.asarray(x_nm) - self.x_min_nm) / self.cell_nm).astype(int)
        iy = np.floor((np.asarray(y_nm) - self.y_min_nm) / self.cell_nm).astype(int)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        out = np.zeros(np.broadcast(ix, iy).shape)
        out[inside] = self.e_per_A2[iy[inside], ix[inside]]
        return out

    @property
    def peak(self) -> float:
        return float(self.e_per_A2.max())
