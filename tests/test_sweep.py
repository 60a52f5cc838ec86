"""Sweeps: the joblib launcher for real, the report on its folder, reruns that finish only missing jobs,
failing jobs that do not stop the others, TensorBoard hparams, equal-budget runs, cluster launchers."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CLI, TINY, run_cli, start_cli
from vae_compare.config import compose
from vae_compare.model import vae_config

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]

SWEEP = ["-m", "hydra/launcher=joblib", "family=diag,cholesky", "latent_dim=2,4", "seed=0,1",
         *(o for o in TINY if not o.startswith("latent_dim="))]


def finished(sweep_dir):
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}


def test_joblib_sweep_report_and_rerun_after_interrupt(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["train", *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    # start the sweep, kill the whole process group once some jobs are done
    process = subprocess.Popen([str(CLI), *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while not finished(sweep_dir) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = finished(sweep_dir)
    assert 1 <= len(done_before)

    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    done_after = finished(sweep_dir)
    assert len(done_after) == 8
    # jobs finished before the interrupt were skipped, not redone
    assert all(done_after[name] == mtime for name, mtime in done_before.items())

    for name in ("summary.csv", "report.md", "log_px_gain_vs_latent_dim.png", "log_px_vs_latent_dim.png",
                 "logdet_gap_vs_latent_dim.png", "head_outputs_vs_latent_dim.png",
                 "seconds_per_epoch_vs_latent_dim.png", "val_elbo_curves.png", "posterior_ellipses_d2.png",
                 "posterior_ellipses_d4.png"):
        assert (sweep_dir / name).is_file(), name
    assert len((sweep_dir / "summary.csv").read_text().strip().splitlines()) == 1 + 8
    report = (sweep_dir / "report.md").read_text()
    assert "8 finished runs" in report and "cholesky" in report and "gain vs diag" in report

    # every run logs the same hparam keys into its own event files
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for run_dir in (p.parent for p in sweep_dir.glob("*/summary.json")):
        tags = {value.tag for event_file in run_dir.glob("events.out.tfevents.*")
                for event in EventFileLoader(str(event_file)).Load() for value in event.summary.value}
        assert {"_hparams_/experiment", "_hparams_/session_start_info", "x_test/log_px", "train/elbo"} <= tags


def test_two_sweeps_on_one_folder_share_its_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=basic", "family=diag,cholesky", "latent_dim=2,4",
            *(o for o in TINY if not o.startswith("latent_dim=")), f"hydra.sweep.dir={sweep_dir}"]
    sweeps = [start_cli(args, tmp_path), start_cli(args, tmp_path)]
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    jobs = [path for path in sweep_dir.iterdir() if path.is_dir()]
    assert len(jobs) == 4
    trainers = set()
    for job in jobs:
        # one run writes two event files (training, final evaluation), each named ...<host>.<pid>.<count>
        events = list(job.glob("events.out.tfevents.*"))
        pids = {path.name.split(".")[-2] for path in events}
        assert len(events) == 2 and len(pids) == 1, (job.name, events)
        assert not (job / "failed.txt").exists()
        trainers |= pids
    # both trained (the jobs were shared, so the test saw them overlap), and jobs the other one held were
    # skipped as running elsewhere, not failed
    assert trainers == {str(sweep.pid) for sweep in sweeps}
    assert all("failed" not in stderr for _, stderr in outputs)
    report = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "4 finished runs" in report.stdout and "0 unfinished" in (sweep_dir / "report.md").read_text()


def test_failing_job_is_reported_and_does_not_stop_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["train", "-m", "train.lr=1e12,1e-3", *TINY, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "1 job(s) failed" in last_line and "train.lr=1000000000000.0" in last_line and "non-finite" in last_line
    assert "Traceback" not in result.stderr
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    # the diverged job's summary says so (issue 23): only the good one is complete
    assert sorted((s["status"], s["config"]["train"]["lr"]) for s in summaries) == [("complete", 1e-3), ("diverged", 1e12)]


def test_matched_run_really_has_the_target_budget(tmp_path):
    run_dir = tmp_path / "run"
    # integer widths make the budget coarse for tiny layers: one unit of [32] is ~6% of the model
    overrides = [o for o in TINY if o not in ("latent_dim=4", "model.hidden=[32]")] + [
        "latent_dim=16", "model.hidden=[256]", "model.match_params=cholesky"]
    result = run_cli(["train", "family=diag", *overrides, "train.epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    params = json.loads((run_dir / "summary.json").read_text())["params"]
    target = sum(vae_config(compose(["family=cholesky", "latent_dim=16", "model.hidden=[256]"])).parameter_counts())
    assert params["family"] == "diag" and abs(params["total_params"] - target) <= 0.01 * target


@pytest.mark.parametrize("launcher,target", [("submitit_slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher"),
                                             ("joblib", "JoblibLauncher")])
def test_launcher_configs_compose(launcher, target):
    cfg = compose([f"hydra/launcher={launcher}"], with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_every_family_goes_through_a_sweep_and_the_report(tmp_path):
    """Each registered family (sqrt included) trains in one sweep, with its default rank, and gets a verdict."""
    from vae_compare.posteriors import FAMILIES

    sweep_dir = tmp_path / "sweep"
    result = run_cli(["train", "-m", f"family={','.join(FAMILIES)}", "seed=0,1", *TINY, "train.epochs=1",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    report = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = (sweep_dir / "verdict.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,latent_dim,variant,n,gain,ci_low,ci_high,tost_delta_min,mde,verdict")
    compared = {row.split(",")[2].split("[")[0].split("(")[0] for row in rows[1:]}
    assert compared == set(FAMILIES) - {"diag"}
