"""The theory job interface: GPAW and CHGNet jobs, locally and on a loopback Dask cluster, cached."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from autoscope.theory.dft import TheoryJobError, gpaw_available
from autoscope.theory.jobs import Job, JobRunner
from autoscope.theory.structures import mos2_monolayer

GPAW_OK, GPAW_REASON = gpaw_available()
needs_gpaw = pytest.mark.skipif(not GPAW_OK, reason=f"GPAW missing: {GPAW_REASON}")
FAST_GPAW = {"mode": "lcao", "basis": "dzp", "grid_spacing_A": 0.25}


def h2(bond_A: float = 0.74) -> Structure:
    """H2 in a 5 × 5 × 5.5 Å box, not periodic."""
    box = np.diag([5.0, 5.0, 5.5])
    centre = np.array([2.5, 2.5, 2.75])
    coords = [centre - [0, 0, bond_A / 2], centre + [0, 0, bond_A / 2]]
    return Structure(Lattice(box, pbc=(False, False, False)), ["H", "H"], coords, coords_are_cartesian=True)


def mos2_cell() -> Structure:
    return mos2_monolayer(orthogonal=False)  # the 3-atom hexagonal cell


@needs_gpaw
def test_gpaw_job_local_dask_and_cache(tmp_path: Path) -> None:
    job = Job(kind="gpaw_energy", structure=h2(), params=FAST_GPAW, timeout_s=120)
    with JobRunner(tmp_path / "local") as local:
        first = local.run(job)
        assert math.isfinite(first.energy_eV) and not first.cached and first.backend == "local"
        assert first.details["n_electrons"] == 2
        again = local.run(job)
        assert again.cached and again.energy_eV == first.energy_eV
        assert again.details["run_id"] == first.details["run_id"]  # no new GPAW process
        assert (local.executed, local.cache_hits) == (1, 1)
        stretched = local.run(Job(kind="gpaw_energy", structure=h2(1.0), params=FAST_GPAW))
        assert first.energy_eV < stretched.energy_eV  # 0.74 Å is nearer the PBE bond length
        assert local.executed == 2

    with JobRunner(tmp_path / "dask", backend="dask") as remote:
        on_dask = remote.submit(job).result()
        assert on_dask.backend == "dask" and not on_dask.cached
        assert on_dask.details["run_id"] != first.details["run_id"]
        assert on_dask.energy_eV == pytest.approx(first.energy_eV, abs=1e-6)
        assert remote.run(job).cached and remote.executed == 1
        assert remote._cluster.scheduler.address.startswith("tcp://127.0.0.1:")

    # the cache outlives its runner
    with JobRunner(tmp_path / "local") as reopened:
        assert reopened.run(job).details["run_id"] == first.details["run_id"]
        assert reopened.executed == 0


@needs_gpaw
def test_gpaw_failure_is_typed_with_stderr_and_not_cached(tmp_path: Path) -> None:
    job = Job(kind="gpaw_energy", structure=h2(), params={**FAST_GPAW, "basis": "no-such-basis"})
    with JobRunner(tmp_path) as runner:
        with pytest.raises(TheoryJobError) as info:
            runner.run(job)
        assert info.value.returncode not in (0, None)
        assert "no-such-basis" in info.value.stderr_tail
        assert runner.cached(job) is None


def test_gpaw_available_says_why_not() -> None:
    ok, reason = gpaw_available(Path("/nonexistent/python3"))
    assert not ok and "apt-get install gpaw gpaw-data" in reason


def test_chgnet_job_through_runner_and_cache(tmp_path: Path) -> None:
    job = Job(kind="chgnet_energy", structure=mos2_cell())
    with JobRunner(tmp_path) as runner:
        first = runner.run(job)
        assert first.formula == "MoS2" and first.n_atoms == 3
        assert -9.0 < first.energy_per_atom_eV < -6.0  # MoS2 (MP-compatible scale): ≈ -7.5 eV/atom
        assert first.details["model"] == "CHGNet 0.3.0"
        again = runner.run(job)
        assert again.cached and again.energy_eV == first.energy_eV and runner.executed == 1
        assert JobRunner(tmp_path).cached(job) == again


def test_job_key_is_canonical() -> None:
    s = mos2_cell()
    shuffled = Structure(
        s.lattice, [s[i].species for i in (2, 0, 1)], [s[i].frac_coords + [1, 0, 0] for i in (2, 0, 1)]
    )
    assert (
        Job(kind="chgnet_energy", structure=s).key
        == Job(kind="chgnet_energy", structure=shuffled, params={"relax": False, "fmax": 0.1}).key
    )
    assert (
        Job(kind="chgnet_energy", structure=s).key
        != Job(kind="chgnet_energy", structure=s, params={"relax": True}).key
    )
    assert Job(kind="chgnet_energy", structure=s).key != Job(kind="gpaw_energy", structure=s).key
    moved = s.copy()
    moved.translate_sites([1], [0, 0, 0.01])
    assert Job(kind="chgnet_energy", structure=moved).key != Job(kind="chgnet_energy", structure=s).key
    periodic_h2 = h2()
    periodic_h2.lattice = Lattice(periodic_h2.lattice.matrix, pbc=(True, True, True))
    assert Job(kind="gpaw_energy", structure=periodic_h2).key != Job(kind="gpaw_energy", structure=h2()).key
    job = Job(kind="gpaw_energy", structure=s, params={"mode": "pw"})
    assert Job.model_validate(job.model_dump()) == job
    with pytest.raises(ValueError):
        Job(kind="gpaw_energy", structure=s, params={"cutoff": 400})  # unknown setting


def test_estimates_positive_and_grow_with_system_size(tmp_path: Path) -> None:
    runner = JobRunner(tmp_path)
    small, big = mos2_cell(), mos2_cell() * (3, 3, 1)
    for kind in ("chgnet_energy", "gpaw_energy"):
        e_small = runner.estimate(Job(kind=kind, structure=small))
        e_big = runner.estimate(Job(kind=kind, structure=big))
        assert 0 < e_small.seconds < e_big.seconds and 0 < e_small.memory_MB < e_big.memory_MB
        assert e_small.basis
    single = runner.estimate(Job(kind="chgnet_energy", structure=big))
    relax = runner.estimate(Job(kind="chgnet_energy", structure=big, params={"relax": True}))
    assert relax.seconds > single.seconds
    dft = runner.estimate(Job(kind="gpaw_energy", structure=big))
    assert dft.seconds > runner.estimate(Job(kind="gpaw_energy", structure=h2())).seconds
