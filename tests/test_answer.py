"""scripts/answer.sh (`make answer`) end to end at a tiny scale: every family at its answer setting, look 1, look 2
where look 1 left a comparison open, the gaps of every run and the calibration of the seed-0 runs, the merged
verdicts; rerun, it skips what is finished; a block whose minutes run out stops its runs with a checkpoint."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CLI, REPO, TINY
from vae_compare.posteriors import FAMILIES

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]

# TINY without its latent_dim (the script sweeps latent_dim); the answer preset's k-curve needs fewer images
OVERRIDES = [o for o in TINY if not o.startswith("latent_dim=")] + ["eval.k_curve_images=16", "train.epochs=1",
                                                                    "eval.qstar_steps=20"]
# runs that never stop by themselves (no rate decay, no patience), for the tests that stop a block
NEVER_STOPS = [o for o in OVERRIDES if not o.startswith("train.epochs=")] + [
    "train.epochs=100000", "train.lr_schedule=constant", "train.patience=null"]
CALIBRATION = "calibration.images=4 calibration.check_images=2 calibration.quadrature_tolerance=1e-2"


def setting(run, key):
    """The value an answer run sets for `key`, or None."""
    values = [override.split("=", 1)[1] for override in run.overrides if override.split("=", 1)[0] == key]
    return values[0] if values else None


def same(config_value, override):
    """Whether a composed config value is what the override wrote (1e-3 and 0.001 are the same number)."""
    try:
        return float(config_value) == float(override)
    except (TypeError, ValueError):
        return str(config_value) == override


def answer(tmp_path, overrides=OVERRIDES, **env):
    # look 1 at latent_dim 2 with one seed, which decides nothing (no residual degrees of freedom): look 2 (seed 1) runs
    env = {"VAE_COMPARE": str(CLI), "PUBLISH_DIR": str(tmp_path / "answer"), "ANSWER_DIMS": "2", "LATER_DIMS": "",
           "LOOK1_SEEDS": "0", "LOOK2_SEEDS": "1", "GAPS_IMAGES": "8", "COLUMNS": "120",
           # the continuation check (tests/test_gaps.py) would take most of this test's time
           "GAPS_OPTIONS": "gaps.check_steps=0", "CALIBRATE_OPTIONS": CALIBRATION, **env}
    return subprocess.run(["bash", str(REPO / "scripts" / "answer.sh"), *overrides], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1800, env={**os.environ, **env})


def processes_in(folder):
    """The processes still working in folder (their working directory; a joblib worker's command line does not
    name it), after a moment for the last ones to exit."""
    time.sleep(2)
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:  # gone, or not ours to read
            pass
    return left


def mtimes(folder, name):
    return {p.parent.name: p.stat().st_mtime_ns for p in folder.glob(f"*/{name}")}


def test_answer_runs_both_looks_measures_every_run_publishes_and_rerun_skips(tmp_path):
    result = answer(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    published = tmp_path / "answer"
    runs = published / "runs"

    # every family's answer runs at latent_dim 2 (the registry's: diag, cholesky, corr, rank1sum, sqrt; the
    # widened diag and lowrank start at 4), seed 0 at look 1 and seed 1 at look 2
    configs = {p.parent.parent.name: OmegaConf.load(p) for p in runs.glob("*/.hydra/config.yaml")}
    expected = {name for name, family in FAMILIES.items() for run in family.answer_runs if run.min_latent_dim <= 2}
    assert {(cfg.family.name, cfg.seed) for cfg in configs.values()} == {(n, s) for n in expected for s in (0, 1)}
    assert len(configs) == 10
    # each family at its answer setting (read from the configs: long folder names are shortened), every one
    # starting at the budget's rate
    for name, cfg in configs.items():
        (arm,) = [run for run in FAMILIES[cfg.family.name].answer_runs if run.min_latent_dim <= 2]
        for override in arm.overrides:
            key, value = override.split("=", 1)
            assert same(OmegaConf.select(cfg, key), value), (name, override, OmegaConf.select(cfg, key))
        assert cfg.train.lr == 1e-3 and cfg.train.lr_schedule == "plateau" and cfg.train.lr_min == 1e-5

    # the gaps of every run on the same 8 test images, the calibration of the seed-0 runs
    gaps = mtimes(runs, "gaps.json")
    assert set(gaps) == set(configs)
    assert all(json.loads((runs / name / "gaps.json").read_text())["settings"]["images"] == 8 for name in gaps)
    assert set(mtimes(runs, "calibration.json")) == {name for name, cfg in configs.items() if cfg.seed == 0}

    # the looks: each its own seeds and alpha; the merged verdicts name the look that gave them
    look1 = list(csv.DictReader((published / "look1" / "verdict.csv").open()))
    look2 = list(csv.DictReader((published / "look2" / "verdict.csv").open()))
    assert {(row["alpha"], row["n"]) for row in look1} == {("0.005", "1")}
    assert {(row["alpha"], row["n"]) for row in look2} == {("0.045", "2")}
    assert all(row["verdict"] == "inconclusive" for row in look1)
    merged = list(csv.DictReader((published / "verdict.csv").open()))
    assert len(merged) == len(expected) - 1 and {row["look"] for row in merged} == {"2"}
    assert [row["verdict"] for row in merged] == [row["verdict"] for row in look2]
    assert sorted(p.name for p in published.glob("look*.done")) == ["look1-d2.done", "look2-d2.done"]
    for name in ("report.md", "summary.csv", "gaps.csv", "calibration.csv", "looks.md", "log_px_gain_vs_latent_dim.png"):
        assert (published / name).is_file(), name
    assert "look 2" in (published / "looks.md").read_text()

    # rerun: nothing is trained or measured again
    trained = mtimes(runs, "summary.json")
    again = answer(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert mtimes(runs, "summary.json") == trained and mtimes(runs, "gaps.json") == gaps
    assert "answer: look 1 at latent_dim 2 is done" in again.stdout
    assert "answer: look 2 at latent_dim 2 is done" in again.stdout


def test_a_block_whose_minutes_are_spent_checkpoints_its_runs_and_exits_75(tmp_path):
    result = answer(tmp_path, NEVER_STOPS, ANSWER_MINUTES="0.3")
    assert result.returncode == 75, result.stdout[-2000:] + result.stderr[-2000:]
    assert "this block's 0.3 minutes are spent; run the same command again to continue" in result.stdout
    runs = tmp_path / "answer" / "runs"
    assert list(runs.glob("*/checkpoint.pt")) and not list(runs.glob("*/summary.json"))
    assert not list((tmp_path / "answer").glob("look*.done"))
    # the sweep's joblib workers outlive its launcher: none is left working on (or starting) another run
    assert processes_in(tmp_path) == []


def test_ctrl_c_reaches_the_runs_which_checkpoint_and_nothing_is_left_running(tmp_path):
    """timeout runs each step in a process group of its own, which a terminal's Ctrl-C (SIGINT to the script's
    group) does not reach; the script hands the signal on and waits for the checkpoints."""
    env = {**os.environ, "VAE_COMPARE": str(CLI), "PUBLISH_DIR": str(tmp_path / "answer"), "ANSWER_DIMS": "2",
           "LATER_DIMS": "", "LOOK1_SEEDS": "0"}
    script = subprocess.Popen(["bash", str(REPO / "scripts" / "answer.sh"), *NEVER_STOPS], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              # as at a terminal: a shell started with SIGINT ignored (a background job) cannot trap it
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = tmp_path / "answer" / "runs"
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(script.pid, signal.SIGINT)  # the terminal's Ctrl-C: the script's process group only
    _, stderr = script.communicate(timeout=300)
    assert script.returncode == 130, stderr[-2000:]
    assert "answer: stopped; run the same command again to continue" in stderr
    assert list(runs.glob("*/checkpoint.pt")) and not list(runs.glob("*/summary.json"))
    assert processes_in(tmp_path) == []


@pytest.mark.parametrize("minutes", ["0", "soon", "-5"])
def test_bad_minutes_are_one_line_and_exit_2(tmp_path, minutes):
    result = answer(tmp_path, ANSWER_MINUTES=minutes)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: ANSWER_MINUTES must be a number of minutes above 0, not '{minutes}'"
    assert not (tmp_path / "answer").exists()


def test_each_latent_size_finishes_its_looks_before_the_next_and_a_failed_run_keeps_its_size_open(tmp_path):
    """Latent_dim 2 then 4, where the registry (a stand-in PYTHON) gives diag and cholesky at 2, at both looks, and, at
    4, diag and a family that does not exist: look 1 reaches 2 and leaves it open (one seed), look 2 reaches it,
    then 4's refused sweep keeps look 1 open there, and 4's finished run is reported as interim."""
    python = tmp_path / "python"
    python.write_text(f"""#!/bin/bash
case "$*" in
    "-m vae_compare.posteriors answer 2" | *"looks.py --open "*" 2")
        printf "latent_dim=2 family=diag\\nlatent_dim=2 family=cholesky\\n" ;;
    "-m vae_compare.posteriors answer 4") printf "latent_dim=4 family=diag\\nlatent_dim=4 family=nosuch\\n" ;;
    *) exec {sys.executable} "$@" ;;
esac
""")
    python.chmod(0o755)
    result = answer(tmp_path, ANSWER_DIMS="2,4", PYTHON=str(python))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "answer: look 1 at latent_dim 4 has a failed run" in result.stderr
    published = tmp_path / "answer"
    assert sorted(p.name for p in published.glob("look*.done")) == ["look1-d2.done", "look2-d2.done"]
    for look, alpha in ((1, "0.005"), (2, "0.045")):
        rows = list(csv.DictReader((published / f"look{look}" / "verdict.csv").open()))
        assert [(row["latent_dim"], row["variant"], row["alpha"]) for row in rows] == [("2", "cholesky", alpha)]
    merged = list(csv.DictReader((published / "verdict.csv").open()))
    assert [(row["latent_dim"], row["look"]) for row in merged] == [("2", "2")]
    interim = list(csv.DictReader((published / "interim" / "summary.csv").open()))
    assert [(row["latent_dim"], row["variant"]) for row in interim] == [("4", "diag")]
