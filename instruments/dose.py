"""Areal dose bookkeeping on a regular grid (electrons per square ångström).

``DoseMap`` is used by the simulated microscope (the physical dose that drives beam
damage). ``DoseLedger`` is the one dose model of the safety side: the interlocks
(``SafeMicroscope``) charge every exposure to it and check each request's predicted peak
against ``max_dose_e_per_A2``, and the dry run walks a plan through a copy of the same
ledger (earlier rounds included), so the two cannot disagree on a request whose position
is known. Cells hold the mean areal dose over the cell; a rectangle deposits into each
cell in proportion to the overlap, so the ledger is exact for cell averages.
"""

from __future__ import annotations

import math

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


class DoseLedger:
    """Areal dose (e/Å²): images as exact uniform rectangles, spots on sparse DoseMap tiles."""

    TILE_CELLS = 64  # a power of two, so tile edges fall exactly on cell edges; 32 KiB a tile

    def __init__(self, x_min_nm: float, y_min_nm: float, cell_nm: float) -> None:
        self.x0, self.y0, self.cell_nm = x_min_nm, y_min_nm, cell_nm
        self.tile_nm = self.TILE_CELLS * cell_nm
        self.rects: dict[tuple[float, float, float, float], float] = {}
        self.tiles: dict[tuple[int, int], DoseMap] = {}

    def cell_box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[float, float, float, float]:
        """The smallest box of whole cells that holds a rectangle."""
        c = self.cell_nm

        def snap(lo: float, hi: float, origin: float) -> tuple[float, float]:
            return origin + math.floor((lo - origin) / c) * c, origin + math.ceil((hi - origin) / c) * c

        return (*snap(x0, x1, self.x0), *snap(y0, y1, self.y0))

    def _tiles(self, x0: float, x1: float, y0: float, y1: float, create: bool):
        """(tile, x offset, y offset) of each tile a rectangle overlaps."""
        t = self.tile_nm
        i0, i1 = math.floor((x0 - self.x0) / t), math.floor((x1 - self.x0) / t)
        j0, j1 = math.floor((y0 - self.y0) / t), math.floor((y1 - self.y0) / t)
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                tile = self.tiles.get((i, j))
                if tile is None and create:
                    tile = self.tiles[(i, j)] = DoseMap(0.0, t, 0.0, t, self.cell_nm)
                if tile is not None:
                    yield tile, self.x0 + i * t, self.y0 + j * t

    def rect_peak(self, x0: float, x1: float, y0: float, y1: float) -> float:
        """Exact peak, over a region, of the sum of the image rectangles covering it."""
        hits = [
            (a, b, c, d, v)
            for (a, b, c, d), v in self.rects.items()
            if a < x1 and b > x0 and c < y1 and d > y0
        ]
        if not hits:
            return 0.0
        xs = np.unique(np.clip([x0, x1, *(h[0] for h in hits), *(h[1] for h in hits)], x0, x1))
        ys = np.unique(np.clip([y0, y1, *(h[2] for h in hits), *(h[3] for h in hits)], y0, y1))
        grid = np.zeros((ys.size, xs.size))  # difference array over the elementary cells
        for a, b, c, d, v in hits:
            ia, ib = np.searchsorted(xs, max(a, x0)), np.searchsorted(xs, min(b, x1))
            ja, jb = np.searchsorted(ys, max(c, y0)), np.searchsorted(ys, min(d, y1))
            grid[ja, ia] += v
            grid[ja, ib] -= v
            grid[jb, ia] -= v
            grid[jb, ib] += v
        sums = grid.cumsum(axis=0).cumsum(axis=1)[:-1, :-1]
        return float(sums.max()) if sums.size else 0.0

    def spot_peak(self, x0: float, x1: float, y0: float, y1: float) -> float:
        """Peak cell dose of the probe spots among the cells a region touches."""
        peaks = [
            tile.peak_in(x0 - ox, x1 - ox, y0 - oy, y1 - oy)
            for tile, ox, oy in self._tiles(x0, x1, y0, y1, False)
        ]
        return max(peaks, default=0.0)

    def copy(self) -> DoseLedger:
        """An independent copy (what a dry run walks a plan through)."""
        out = DoseLedger(self.x0, self.y0, self.cell_nm)
        out.rects = dict(self.rects)
        for key, tile in self.tiles.items():
            t = out.tiles[key] = DoseMap(0.0, self.tile_nm, 0.0, self.tile_nm, self.cell_nm)
            t.e_per_A2 = tile.e_per_A2.copy()
        return out

    def peak_in(self, x0: float, x1: float, y0: float, y1: float) -> float:
        """Upper bound of the cell-averaged dose in a region (images plus spots)."""
        return self.rect_peak(x0, x1, y0, y1) + self.spot_peak(x0, x1, y0, y1)

    def spot_cell_peak(self, n_e: float, diameter_nm: float) -> float:
        """The most one spot exposure of ``n_e`` electrons adds to any one cell (e/Å²): a spot
        smaller than a cell is averaged over the cell, a larger one over its own square."""
        side = max(diameter_nm, self.cell_nm)
        return n_e / (side * side * NM2_TO_A2)

    def spots_per_cell(self, spacing_nm: float, diameter_nm: float) -> int:
        """How many spots on a grid of ``spacing_nm`` can reach one cell at most."""
        per_axis = math.floor((self.cell_nm + diameter_nm) / max(spacing_nm, 1e-9)) + 1
        return per_axis * per_axis

    def add_path(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        n_e: float,
        diameter_nm: float,
        max_spots: int = 4096,
    ) -> None:
        """A probe dragged from (x0, y0) to (x1, y1) while the beam is on (a stage move, a parked
        probe when the ends coincide): ``n_e`` spread evenly along the path in cell-sized spots."""
        if n_e <= 0:
            return
        n = int(min(max_spots, max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / self.cell_nm))))
        for f in (np.arange(n) + 0.5) / n:
            self.add_spot(x0 + f * (x1 - x0), y0 + f * (y1 - y0), n_e / n, diameter_nm)

    def add_rect(self, x0: float, x1: float, y0: float, y1: float, e_per_A2: float) -> None:
        key = (x0, x1, y0, y1)
        self.rects[key] = self.rects.get(key, 0.0) + e_per_A2

    def add_spot(self, x: float, y: float, n_e: float, diameter_nm: float) -> None:
        h = max(diameter_nm, 1e-6) / 2
        for tile, ox, oy in self._tiles(x - h, x + h, y - h, y + h, True):
            tile.add_spot(x - ox, y - oy, n_e, diameter_nm)

    def predict_image(self, x0: float, x1: float, y0: float, y1: float, e_per_A2: float) -> float:
        """Upper bound of the peak cell dose over a field after imaging it at ``e_per_A2``."""
        return self.rect_peak(x0, x1, y0, y1) + e_per_A2 + self.spot_peak(x0, x1, y0, y1)

    def spot_dose_in(
        self, box: tuple[float, float, float, float], x_nm: np.ndarray, y_nm: np.ndarray
    ) -> np.ndarray:
        """Cell dose of the probe spots at sample-frame points lying inside ``box``."""
        out = np.zeros(np.shape(x_nm))
        for tile, ox, oy in self._tiles(*box, create=False):
            out += tile.at(x_nm - ox, y_nm - oy)
        return out

    def predict_spot(self, x: float, y: float, n_e: float, diameter_nm: float) -> float:
        """Upper bound of the peak cell dose around a probe position after a spot exposure."""
        h = max(diameter_nm, 1e-6) / 2
        box = self.cell_box(x - h, x + h, y - h, y + h)
        spot = DoseMap(*box, self.cell_nm)  # its cells coincide with the ledger's
        spot.add_spot(x, y, n_e, diameter_nm)
        ny, nx = spot.e_per_A2.shape
        cx = box[0] + (np.arange(nx) + 0.5) * self.cell_nm
        cy = box[2] + (np.arange(ny) + 0.5) * self.cell_nm
        gx, gy = np.meshgrid(cx, cy)
        return float((spot.e_per_A2 + self.spot_dose_in(box, gx, gy)).max()) + self.rect_peak(*box)
