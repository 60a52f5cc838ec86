"""vae-compare calibrate: the estimators' bias against quadrature (latent_dim 2) and AIS (above), per run, and the
report's calibration.csv and verdict.csv from a tiny sweep."""

import csv
import json

import pytest
import torch

from conftest import TINY, run_cli
from vae_compare import export
from vae_compare.calibration import bias_summary
from vae_compare.report.calibration import bias_spreads, calibration_markdown


CALIBRATION = ["calibration.images=8", "calibration.chains=4", "calibration.temperatures=20",
               "calibration.check_images=4", "calibration.quadrature_tolerance=1e-2"]


@pytest.mark.usefixtures("real_data")
@pytest.mark.slow
def test_a_tiny_sweep_writes_calibration_and_verdicts(tmp_path):
    sweep_dir = tmp_path / "sweep"
    settings = [o for o in TINY if not o.startswith("latent_dim=")] + ["eval.qstar_steps=50"]
    trained = run_cli(["train", "-m", "family=diag,cholesky", "latent_dim=2,4", *settings,
                       f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    calibrated = run_cli(["calibrate", str(sweep_dir), *CALIBRATION], cwd=tmp_path)
    assert calibrated.returncode == 0, calibrated.stderr
    assert calibrated.stdout.count("median") == 8, calibrated.stdout  # both proposals of the four runs
    results = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob(f"*/{export.CALIBRATION_JSON}"))]
    assert len(results) == 4
    for result in results:
        rows = {row["proposal"]: row for row in result["rows"]}
        # an IWAE estimate sits below the truth in expectation; q* is the better proposal on every run
        assert rows["encoder"]["bias"] < 0 and rows["qstar"]["bias"] > rows["encoder"]["bias"]
        assert rows["qstar"]["main"] and not rows["encoder"]["main"]  # eval.log_px_proposal's default
        if result["run"]["latent_dim"] == 2:
            assert result["reference"] == "quadrature" and result["check_max"] < 1e-2
        else:
            assert result["reference"].startswith("AIS") and result["check"].startswith("doubling both on 4 images")
    again = run_cli(["calibrate", str(sweep_dir), *CALIBRATION], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("measured already") == 4, again.stdout
    report = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with open(sweep_dir / export.CALIBRATION_CSV) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {row["proposal"] for row in rows} == {"encoder", "qstar"}
    assert all(float(row["bias_worst"]) <= float(row["bias_median"]) and int(row["missed_images"]) >= 0 for row in rows)
    with open(sweep_dir / "verdict.csv") as handle:
        verdicts = list(csv.DictReader(handle))
    assert {(row["latent_dim"], row["variant"]) for row in verdicts} == {("2", "cholesky"), ("4", "cholesky")}
    assert "## Calibration of log p(x)" in (sweep_dir / "report.md").read_text()


@pytest.mark.usefixtures("real_data")
@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("calibration.nope=1", "bad calibration override: Key 'nope' not in 'CalibrationConfig'"),
    ("train.lr=0.1", "calibrate takes calibration.<key>=value"),
    ("calibration.images=0", "calibration.images"),
])
def test_a_bad_calibration_key_is_one_line(tmp_path, override, message):
    result = run_cli(["calibrate", str(tmp_path), override], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_one_missed_mode_moves_the_mean_bias_but_not_the_median():
    summary = bias_summary(torch.tensor([0.1, -0.2, -24.0, 0.0, -0.1], dtype=torch.float64))
    assert summary["bias"] == pytest.approx(-24.2 / 5) and summary["bias_median"] == pytest.approx(-0.1)
    assert summary["bias_worst"] == -24.0 and summary["missed_images"] == 1 and summary["missed_nats"] == 1.0
    assert summary["bias_stderr"] == pytest.approx(torch.tensor([0.1, -0.2, -24.0, 0.0, -0.1]).std().item() / 5 ** 0.5)


def test_the_spread_between_families_reads_means_and_medians():
    def row(variant, bias, median):
        return {"dataset": "mnist", "latent_dim": 2, "variant": variant, "seed": 0, "proposal": "qstar", "main": True,
                "images": 50, "bias": bias, "bias_stderr": 0.1, "bias_median": median, "bias_worst": -24.0,
                "missed_images": 1, "missed_nats": 1.0, "seconds": 1.0, "reference": "quadrature",
                "reference_check": "grid error bound, mean (max)", "check_mean": 0.0, "check_max": 0.01}
    rows = [row("diag", -0.5, -0.01), row("cholesky", -0.04, 0.02)]
    assert bias_spreads(rows)[("mnist", 2, "qstar")] == (pytest.approx(0.46), 2)
    assert bias_spreads(rows, "bias_median")[("mnist", 2, "qstar")] == (pytest.approx(0.03), 2)
    text = calibration_markdown(rows)
    assert "0.460 nats over 2 families (misses the target); median 0.030" in text
    assert "median -0.010, worst -24.00, 1 of 50 images more than 1 nat below" in text
    # a run calibrated before the median was kept: its cell gives no median spread
    rows[1].update(bias_median=None, bias_worst=None, missed_images=None, missed_nats=None)
    assert "median 0.0" not in calibration_markdown(rows).split("Spread")[1]
