"""One GPAW single-point energy: ``python3 gpaw_job.py in.json out.json``.

Run by the *system* Python (Debian's ``gpaw`` package), never imported by autoscope:
it may import only the standard library, ASE and GPAW. ``in.json`` holds
``symbols``, ``positions_A``, ``cell_A``, ``pbc`` and ``params`` (mode, basis,
pw_cutoff_eV, grid_spacing_A, xc, kpts, charge, spinpol); ``out.json`` gets the total
energy and a few facts about the run. GPAW's own log goes to ``gpaw.txt`` beside
``out.json``. Exit status 0 on success; anything else is a failure (stderr says why).
"""

import json
import os
import sys
import time
import uuid


def _calculator(params, log_path):
    from gpaw import GPAW, PW

    mode = params["mode"]
    kwargs = {
        "xc": params["xc"],
        "kpts": tuple(params["kpts"]),
        "charge": params["charge"],
        "spinpol": params["spinpol"],
        "txt": log_path,
    }
    if mode == "pw":
        kwargs["mode"] = PW(params["pw_cutoff_eV"])
    elif mode == "lcao":
        kwargs.update(mode="lcao", basis=params["basis"], h=params["grid_spacing_A"])
    elif mode == "fd":
        kwargs.update(mode="fd", h=params["grid_spacing_A"])
    else:
        raise ValueError(f"unknown GPAW mode {mode!r}")
    return GPAW(**kwargs)


def main(in_path, out_path):
    import gpaw
    from ase import Atoms

    start = time.perf_counter()
    with open(in_path) as fh:
        spec = json.load(fh)
    atoms = Atoms(
        symbols=spec["symbols"], positions=spec["positions_A"], cell=spec["cell_A"], pbc=spec["pbc"]
    )
    log_path = os.path.join(os.path.dirname(os.path.abspath(out_path)), "gpaw.txt")
    calc = _calculator(spec["params"], log_path)
    atoms.calc = calc
    energy_eV = float(atoms.get_potential_energy())
    try:
        iterations = int(calc.get_number_of_iterations())
    except Exception:  # not every GPAW version has it
        iterations = -1
    result = {
        "energy_eV": energy_eV,
        "n_atoms": len(atoms),
        "n_electrons": float(calc.get_number_of_electrons()),
        "iterations": iterations,
        "gpaw_version": gpaw.__version__,
        "wall_s": time.perf_counter() - start,
        "run_id": uuid.uuid4().hex,
        "pid": os.getpid(),
    }
    tmp_path = out_path + ".tmp"
    with open(tmp_path, "w") as fh:
        json.dump(result, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp_path, out_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: gpaw_job.py in.json out.json\n")
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
