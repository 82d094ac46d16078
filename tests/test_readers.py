"""Recorded spectrum images in the field's own formats (../shared/realdata): read without hand
conversion, each condition marked as read or assumed, replayed through the backend factory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.instruments.factory import open_backend
from autoscope.instruments.readers import RecordingError, read_recording
from autoscope.instruments.replay import load_spectrum_image

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real data folder at {REAL}")
runner = CliRunner()


def test_hyperspy_eds_map_with_its_haadf_from_a_second_file():
    r = read_recording(REAL / "SiO2_EDS_SI.hspy", image_path=REAL / "SiO2_HAADF.hspy")
    assert r.shape == (128, 128, 2048) and r.signal_type == "EDS_TEM"
    c = r.conditions
    assert c["pixel_size_nm"].value == pytest.approx(8.5524, rel=1e-4)  # 0.0085524 µm in the file
    assert c["dispersion_eV"].value == pytest.approx(10.0, rel=1e-6)  # 0.01 keV
    assert c["current_pA"].source == "file" and c["current_pA"].value == pytest.approx(770.0)
    assert r.assumed() == ["dwell_s"] and "SiO2_HAADF.hspy" in r.image_source
    # the HAADF (particles bright) and the spectra's total X-ray counts share the field
    total = r.spectra.sum(axis=2)
    assert np.corrcoef(total.ravel(), r.image.ravel())[0, 1] > 0.5


def test_a_file_without_conditions_says_what_it_assumed():
    r = read_recording(REAL / "core_shell_EDS_SI.hspy")
    assert r.shape == (64, 64, 992)
    assert set(r.assumed()) == {"current_pA", "spectrum_dwell_s", "dwell_s"}
    assert r.conditions["energy_offset_eV"].value == pytest.approx(160.0)  # 0.16 keV
    assert "total counts" in r.image_source and any("stand in" in n for n in r.notes)
    given = read_recording(
        REAL / "core_shell_EDS_SI.hspy", given={"current_pA": 40.0, "spectrum_dwell_s": 0.02}
    )
    assert given.conditions["current_pA"].source == "given" and given.assumed() == ["dwell_s"]


def test_velox_emd_spectrum_image_and_its_haadf():
    r = read_recording(REAL / "Si_EDS_SI_velox.emd")
    assert r.shape == (16, 16, 4096) and r.image.shape == (16, 16) and "HAADF" in r.image_source
    c = r.conditions
    assert c["pixel_size_nm"].value == pytest.approx(5.3024, rel=1e-4)
    assert c["origin_x_nm"].source == "file" and c["origin_x_nm"].value == pytest.approx(-47.72, rel=1e-3)
    assert c["spectrum_dwell_s"].where.endswith("Scan.DwellTime") and c["spectrum_dwell_s"].value == 5e-5
    assert (
        c["current_pA"].source == "file" and 100 < c["current_pA"].value < 1000
    )  # the screen current, A -> pA


def test_usid_layout_is_the_one_that_lines_up_with_the_adf_and_signed_counts_are_kept():
    """The file's position indices put x fastest (31 rows × 25 columns); only 25 × 31 tiles its ADF."""
    r = read_recording(REAL / "MAPbI3_EELS_SI.h5")
    assert r.shape == (25, 31, 512) and r.reader.startswith("usid")
    assert any("transposed from the position indices" in n for n in r.notes)
    assert "binned 16×16" in r.image_source
    assert r.conditions["dispersion_eV"].value == pytest.approx(1.329, rel=1e-3)
    assert r.conditions["spectrum_dwell_s"].value == 1.0 and r.conditions["spectrum_dwell_s"].source == "file"
    assert r.conditions["current_pA"].source == "assumed"  # the file's probe current is 0
    assert any("Probe-Current" in n and "not used" in n for n in r.notes)
    assert r.report()["counts"]["negative_fraction"] > 0.01  # dark-subtracted: negative values read as such
    shifted = read_recording(REAL / "MAPbI3_EELS_SI.h5", energy_shift_eV=44.0)
    assert shifted.conditions["energy_offset_eV"].value == pytest.approx(
        r.conditions["energy_offset_eV"].value + 44
    )
    assert shifted.conditions["energy_offset_eV"].source == "given"


def test_a_single_spectrum_is_read_as_a_one_pixel_scan_and_said_so():
    r = read_recording(REAL / "STO_EELS_spectrum.dm3")
    assert r.shape == (1, 1, 2048) and r.conditions["energy_offset_eV"].value == pytest.approx(350.0)
    assert r.conditions["pixel_size_nm"].source == "assumed" and any("single spectrum" in n for n in r.notes)


def test_replay_opens_the_fields_formats_through_the_factory():
    scope = open_backend(replay=REAL / "Si_EDS_SI_velox.emd", seed=0)
    caps = scope.capabilities()
    assert caps.energy_min_eV == pytest.approx(-1000.0) and caps.max_channels == 4096
    x0, x1 = caps.stage.x_min_nm, caps.stage.x_max_nm
    assert x1 - x0 == pytest.approx(16 * 5.3024, rel=1e-3)


def test_bad_input_is_refused_naming_the_field(tmp_path: Path):
    with pytest.raises(RecordingError, match="file: unknown format '.txt'"):
        bad = tmp_path / "a.txt"
        bad.write_text("x")
        read_recording(bad)
    with pytest.raises(RecordingError, match="current_pA: must be positive"):
        read_recording(REAL / "core_shell_EDS_SI.hspy", given={"current_pA": -1.0})
    # a second file's image of another field is refused, even where its grid would tile the scan
    with pytest.raises(
        RecordingError, match="image: its field 1095 × 1095 nm is not the spectrum image's 32 × 32"
    ):
        read_recording(REAL / "core_shell_EDS_SI.hspy", image_path=REAL / "SiO2_HAADF.hspy")


def test_data_inspect_and_convert_on_the_command_line(tmp_path: Path):
    fig = tmp_path / "f.png"
    r = runner.invoke(
        app, ["data", "inspect", str(REAL / "MAPbI3_EELS_SI.h5"), "--figure", str(fig), "--json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["shape"] == {"rows": 25, "columns": 31, "channels": 512} and fig.stat().st_size > 10_000
    assert "current_pA" in rep["assumed"]
    out = tmp_path / "si.h5"
    args = ["data", "convert", str(REAL / "MAPbI3_EELS_SI.h5"), str(out), "--current-pA", "50"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    si = load_spectrum_image(out)
    assert si.spectra.shape == (25, 31, 512) and si.current_pA == 50.0 and si.spectra.min() < 0
    assert runner.invoke(app, args).exit_code == 2  # it exists: not overwritten
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "missing.emd")])
    assert r.exit_code == 2 and "no such file" in r.output
