"""vae-compare calibrate: the estimators' bias against quadrature (latent_dim 2) and AIS (above), per run, and the
report's calibration.csv and verdict.csv from a tiny sweep."""

import csv
import json

import pytest

from conftest import TINY, run_cli
from vae_compare import export

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]

CALIBRATION = ["calibration.images=8", "calibration.chains=4", "calibration.temperatures=20",
               "calibration.check_images=4", "calibration.quadrature_tolerance=1e-2"]


def test_a_tiny_sweep_writes_calibration_and_verdicts(tmp_path):
    sweep_dir = tmp_path / "sweep"
    settings = [o for o in TINY if not o.startswith("latent_dim=")] + ["eval.qstar_steps=50"]
    trained = run_cli(["train", "-m", "family=diag,cholesky", "latent_dim=2,4", *settings,
                       f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    calibrated = run_cli(["calibrate", str(sweep_dir), *CALIBRATION], cwd=tmp_path)
    assert calibrated.returncode == 0, calibrated.stderr
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
    with open(sweep_dir / "verdict.csv") as handle:
        verdicts = list(csv.DictReader(handle))
    assert {(row["latent_dim"], row["variant"]) for row in verdicts} == {("2", "cholesky"), ("4", "cholesky")}
    assert "## Calibration of log p(x)" in (sweep_dir / "report.md").read_text()


@pytest.mark.parametrize("override,message", [
    ("calibration.nope=1", "bad calibration override: Key 'nope' not in 'CalibrationConfig'"),
    ("train.lr=0.1", "calibrate takes calibration.<key>=value"),
    ("calibration.images=0", "calibration.images"),
])
def test_a_bad_calibration_key_is_one_line(tmp_path, override, message):
    result = run_cli(["calibrate", str(tmp_path), override], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
