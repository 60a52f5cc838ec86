"""`vae-compare gaps` end to end on a tiny sweep of real runs: files, TensorBoard, rerun, report, bad input."""

import json

import pytest

from conftest import MNIST, TINY, run_cli
from test_cli import event_tags
from vae_compare import export

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]

# A few images and short optimisations: the numbers are rough, the pipeline is the real one.
SMALL = ["gaps.images=16", "gaps.chunk_images=8", "gaps.steps=60", "gaps.window=20", "gaps.elbo_samples=20",
         "gaps.iwae_samples=50", "gaps.rank=2", "gaps.check_steps=40", f"data.root={MNIST}"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gaps") / "sweep"
    result = run_cli(["train", "-m", "family=diag,cholesky", *TINY, f"hydra.sweep.dir={folder}"], cwd=folder.parent)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def measured(sweep):
    result = run_cli(["gaps", str(sweep), *SMALL], cwd=sweep.parent)
    assert result.returncode == 0, result.stderr
    return result


def run_folders(sweep):
    return sorted(path.parent for path in sweep.glob(f"*/{export.SUMMARY_FILE}"))


def test_gaps_writes_csv_json_and_tensorboard(sweep, measured):
    runs = run_folders(sweep)
    assert len(runs) == 2
    for run in runs:
        result = json.loads((run / "gaps.json").read_text())
        rows = {row["family"]: row for row in result["rows"]}
        # the run's own family first, then the others asked for
        assert list(rows)[0] == result["encoder_family"] and set(rows) == {"diag", "cholesky", "lowrank"}
        for row in rows.values():
            # at most 60 steps, then the continuation check's rounds: at most 4 (gaps.check_rounds) of 40
            assert row["images"] == 16 and 0 < row["steps_mean"] <= 60 + 4 * 40
            assert row["inference_gap"] == pytest.approx(row["approximation_gap"] + row["amortization_gap"])
        assert rows[result["encoder_family"]]["start"] == "encoder"
        assert set(result["rotation"]) == {"encoder", "diag", "cholesky", "lowrank"}
        assert result["settings"]["images"] == 16 and result["log_px"]["samples"] == 50
        csv_rows = export.read_csv(run / "gaps.csv")
        assert [row["family"] for row in csv_rows] == list(rows)
        scalars, _ = event_tags(run)
        assert {"gaps/log_px", f"gaps/{result['encoder_family']}_amortization_gap",
                "gaps/rotation/encoder_total_correlation_rotated_joint"} <= scalars
    assert "inference gaps on 16 test images" in measured.stdout


def test_a_rerun_skips_measured_runs_and_the_report_shows_the_gaps(sweep, measured):
    before = {run: (run / "gaps.json").stat().st_mtime_ns for run in run_folders(sweep)}
    again = run_cli(["gaps", str(sweep), *SMALL], cwd=sweep.parent)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("measured already") == 2
    assert before == {run: (run / "gaps.json").stat().st_mtime_ns for run in run_folders(sweep)}

    report = run_cli(["report", str(sweep)], cwd=sweep.parent)
    assert report.returncode == 0, report.stderr
    markdown = (sweep / "report.md").read_text()
    assert "## Inference gaps" in markdown and "### The rotation argument" in markdown
    assert (sweep / "gaps_approximation_vs_amortization.png").stat().st_size > 0
    rows = export.read_csv(sweep / "gaps.csv")
    # two runs (diag, cholesky) x three q* families, one seed each
    assert len(rows) == 6 and {row["q_star"] for row in rows} == {"diag", "cholesky", "lowrank"}


@pytest.mark.parametrize("overrides, message", [
    (["gaps.images=0"], "gaps.images must be an integer >= 1"),
    (["gaps.families=[diag,nonsense]"], "bad gaps override"),
    (["gaps.nonsense=1"], "bad gaps override"),
    (["eval.iwae_samples=5"], "gaps takes gaps.<key>=value"),
    (["gaps.images=100000"], "but the run's test set has 64 images"),
])
def test_bad_gaps_input_is_one_line(sweep, measured, overrides, message):
    run = run_folders(sweep)[0]
    before = (run / "gaps.json").read_bytes()
    result = run_cli(["gaps", str(run), f"data.root={MNIST}", *overrides], cwd=sweep.parent)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert (run / "gaps.json").read_bytes() == before


def test_gaps_of_an_unfinished_or_missing_run_is_one_line(tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / export.PARAMS_FILE).write_text("family\ndiag\n")
    for folder, message in ((unfinished, "no finished run"), (tmp_path / "missing", "no such folder")):
        result = run_cli(["gaps", str(folder)], cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
