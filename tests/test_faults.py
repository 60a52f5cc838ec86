"""Runs killed at varied points (SIGINT, SIGTERM, a second SIGINT, SIGKILL) and resumed end exactly
like uninterrupted runs on the CPU; corrupt checkpoints are a one-line error."""

import csv
import json
import signal
import time

import pytest

from conftest import TINY, run_cli, start_cli

# Long enough (3 epochs of 128 steps) that a signal lands inside training, short enough for the suite.
LONG = TINY + ["data.train_size=2048", "train.batch_size=16", "train.epochs=3", "train.log_every=8"]
TIMING_COLUMNS = {"train_seconds", "train_images_per_second"}

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]


def metrics_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def final_numbers(run_dir):
    test = json.loads((run_dir / "summary.json").read_text())["test"]
    return {k: v for k, v in test.items() if k != "iwae_seconds"}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """One uninterrupted run per family, made once for the whole module."""
    runs = {}
    folder = tmp_path_factory.mktemp("reference")
    for family in ("diag", "cholesky", "lowrank"):
        run_dir = folder / family
        result = run_cli(["train", f"family={family}", *LONG, f"hydra.run.dir={run_dir}"], cwd=folder)
        assert result.returncode == 0, result.stderr
        runs[family] = run_dir
    return runs


def wait_for(condition, process, timeout=120):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)


def interrupt(args, cwd, run_dir, signals, when):
    """Start a run, wait for an observable event, then send the signals. `when` is "epoch 1": the first
    checkpoint has appeared (the signal lands early in epoch 2), or "epoch 2": the checkpoint has been
    rewritten once more (it lands in epoch 3, or in the final evaluation)."""
    process = start_cli(args, cwd)
    checkpoint = run_dir / "checkpoint.pt"
    wait_for(checkpoint.exists, process)
    if when == "epoch 2":
        first = checkpoint.stat().st_mtime_ns
        wait_for(lambda: checkpoint.stat().st_mtime_ns != first, process)
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.001)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def resume_and_compare(tmp_path, run_dir, reference):
    result = run_cli(["train", f"resume={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert metrics_rows(run_dir) == metrics_rows(reference)
    assert final_numbers(run_dir) == final_numbers(reference)


@pytest.mark.parametrize("family", ["diag", "cholesky", "lowrank"])
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_resume_matches_uninterrupted(tmp_path, reference_runs, family, signum, code):
    run_dir = tmp_path / "run"
    when = "epoch 1" if signum == signal.SIGINT else "epoch 2"
    returncode, stderr = interrupt(["train", f"family={family}", *LONG, f"hydra.run.dir={run_dir}"], tmp_path,
                                   run_dir, [signum], when)
    assert returncode == code, stderr
    assert f"Resume with: vae-compare train resume={run_dir}" in stderr
    assert not (run_dir / "summary.json").exists()
    resume_and_compare(tmp_path, run_dir, reference_runs[family])


@pytest.mark.parametrize("kill", ["sigkill", "second-sigint"])
def test_hard_stops_leave_no_corrupt_files(tmp_path, reference_runs, kill):
    run_dir = tmp_path / "run"
    signals = [signal.SIGKILL] if kill == "sigkill" else [signal.SIGINT, signal.SIGINT]
    returncode, _ = interrupt(["train", "family=cholesky", *LONG, f"hydra.run.dir={run_dir}"], tmp_path, run_dir,
                              signals, "epoch 1")
    assert returncode in (-9, 130)
    assert not (run_dir / "summary.json").exists()
    if kill == "second-sigint":  # the second Ctrl-C exits at once, but removes the temporary file of a write
        assert [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name not in (".hydra", ".lock")] == []
    resume_and_compare(tmp_path, run_dir, reference_runs["cholesky"])


def test_rerun_of_finished_run_skips(tmp_path, reference_runs):
    run_dir = reference_runs["diag"]
    before = (run_dir / "summary.json").stat().st_mtime_ns
    result = run_cli(["train", f"resume={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0 and "already complete" in result.stdout + result.stderr
    assert (run_dir / "summary.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint_is_one_line(tmp_path, reference_runs, content):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        (reference_runs["diag"] / ".hydra" / "overrides.yaml").read_text())
    (run_dir / "checkpoint.pt").write_bytes(content)
    result = run_cli(["train", f"resume={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "is not a readable vae-compare checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.csv").exists()


def test_resume_refuses_other_settings(tmp_path, reference_runs):
    result = run_cli(["train", f"resume={reference_runs['cholesky']}", "family.offdiag_scale=0.5"], cwd=tmp_path)
    assert result.returncode == 2
    assert "was trained with family.offdiag_scale=0.001, this run has 0.5" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
