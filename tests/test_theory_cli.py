"""Theory tools from the command line: simulate a structure, rank defect models in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscope.agents.cli import app
from autoscope.instruments.sim.oracle import Oracle
from autoscope.instruments.sim.scenarios import make_microscope
from autoscope.theory import structures as st
from autoscope.tools.store import RunStore
from autoscope.tools.survey import IMAGE_STEP
from autoscope.tools.theory import RankRequest, rank_cost

runner = CliRunner()
SEED = 3


@pytest.fixture(scope="module")
def survey_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("theory") / "run"
    res = runner.invoke(
        app, ["survey", "--scenario", "tmd-defects", "--seed", str(SEED), "--out", str(out), "--spectra", "0"]
    )
    assert res.exit_code == 0, res.output
    return out


def test_rank_picks_the_true_dopant_from_a_survey(survey_run: Path):
    truth = Oracle(make_microscope("tmd-defects", seed=SEED)).truth()
    hits = 0
    dopants = [
        d for d in truth["defects"] if d["type"] == "W_Mo" and max(abs(d["x_nm"]), abs(d["y_nm"])) < 3.0
    ][:3]
    for w in dopants:
        res = runner.invoke(
            app,
            ["theory", "rank", "--run", str(survey_run), "--position", f"{w['x_nm']},{w['y_nm']}", "--json"],
        )
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout.strip().splitlines()[-1])
        best = out["candidates"][out["result"]["best_index"]]
        hits += best["label"].startswith("W_Mo") and abs(best["x_nm"] - w["x_nm"]) < 0.05
        assert len(out["candidates"]) == 6 and "statement" in out["result"]
    assert dopants and hits == len(dopants)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--position", "1.0"], "position"),
        (["--position", "1,2", "--defect", "W"], "defect"),
        (["--position", "30,30"], "x_nm"),
    ],
)
def test_rank_bad_input_exits_2(survey_run: Path, args: list[str], field: str):
    res = runner.invoke(app, ["theory", "rank", "--run", str(survey_run), *args])
    assert res.exit_code == 2 and field in res.output


def test_rank_needs_a_survey_image(tmp_path: Path):
    RunStore.create(tmp_path / "empty").close()
    res = runner.invoke(app, ["theory", "rank", "--run", str(tmp_path / "empty"), "--position", "0,0"])
    assert res.exit_code == 2 and IMAGE_STEP in res.output


def test_simulate_writes_a_png_and_refuses_a_bad_file(tmp_path: Path):
    cif = tmp_path / "mos2.cif"
    cif.write_text(st.to_cif(st.mos2_monolayer((4, 3))))
    png = tmp_path / "mos2.png"
    res = runner.invoke(
        app, ["theory", "simulate", "--structure", str(cif), "--out", str(png), "--pixels", "64"]
    )
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.cif"
    bad.write_text("data_nothing\n_cell_length_a banana\n")
    res = runner.invoke(app, ["theory", "simulate", "--structure", str(bad), "--out", str(png)])
    assert res.exit_code == 2 and "structure" in res.output


def test_rank_cost_scales_with_the_number_of_candidates(survey_run: Path):
    image = RunStore.open(survey_run, read_only=True).load(IMAGE_STEP)
    few = rank_cost(image, RankRequest(x_nm=0, y_nm=0, wrong_sites=1))
    many = rank_cost(image, RankRequest(x_nm=0, y_nm=0, wrong_sites=8))
    assert 0 < few.seconds < many.seconds


def test_energy_tool_goes_through_the_job_cache(tmp_path: Path):
    from autoscope.theory.jobs import JobRunner
    from autoscope.tools.theory import candidate_energy, energy_cost, simulate_candidate

    base = st.mos2_monolayer((3, 2))
    v_s = st.candidate_models(
        base, st.DefectSpec(kind="vacancy", host="S"), [st.site_near(base, 0.3, 0.3, "S")]
    )[0]
    cost = energy_cost(v_s)
    assert cost.seconds > 0 and cost.basis
    with JobRunner(tmp_path / "cache") as runner:
        first = candidate_energy(runner, v_s)
        again = candidate_energy(runner, v_s)
    assert not first.cached and again.cached and again.energy_eV == first.energy_eV
    img = simulate_candidate(v_s, fov_nm=1.0, pixels=48)
    assert img.shape == (48, 48) and img.max() > img.min()
