"""The real command end to end: a training run from another folder, help, and every bad input."""

import csv
import fcntl
import gzip
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import MNIST, TINY, run_cli

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]


def event_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"]), set(accumulator.Tags()["images"])


def test_train_writes_every_result_file(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "family=cholesky", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("metrics.csv", "params.csv", "summary.json", "final.csv", "checkpoint.pt", "best.pt",
                 "posterior_ellipses.png", "posterior_correlations.png", "posterior_sample.pt"):
        assert (run_dir / name).is_file(), name
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2 and metrics[0].startswith("epoch,lr,train_elbo")
    params = (run_dir / "params.csv").read_text().splitlines()
    assert params[1].split(",")[:6] == ["cholesky", "4", "0", "32", "14", "14"]  # d + d(d+1)/2 = 14
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["config"]["family"]["name"] == "cholesky"
    assert summary["test"]["log_px"] >= summary["test"]["elbo"] - 1.0
    scalars, images = event_tags(run_dir)
    assert {"train/elbo", "train/kl", "train/recon", "train/seconds", "train/images_per_second", "val/elbo", "val/kl",
            "val/recon", "x_test/log_px"} <= scalars
    assert {"val/reconstructions", "viz/prior_samples", "viz/posterior_ellipses", "viz/posterior_correlations"} <= images
    # TensorBoard's TIME SERIES tab sorts the tag groups and opens the first two: the curves
    assert sorted({tag.split("/")[0] for tag in scalars | images})[:2] == ["train", "val"]
    assert "log p(x), IWAE" in result.stdout  # the final rich table


def test_help_lists_commands_and_options(tmp_path):
    top = run_cli(["--help"], cwd=tmp_path)
    assert top.returncode == 0 and all(command in top.stdout for command in ("train", "evaluate", "gaps", "report"))
    train = run_cli(["train", "--help"], cwd=tmp_path)
    assert train.returncode == 0
    assert "family: cholesky, corr, diag, lowrank, rank1sum" in train.stdout and "experiment: answer, burda2016, quick" in train.stdout


def test_hydra_flags_go_to_hydra_as_given(tmp_path):
    shown = run_cli(["train", "--cfg", "job", "latent_dim=3", "family=cholesky"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "latent_dim: 3" in shown.stdout and "name: cholesky" in shown.stdout
    hydra_help = run_cli(["train", "--hydra-help"], cwd=tmp_path)
    assert hydra_help.returncode == 0 and "Hydra (" in hydra_help.stdout
    assert not (tmp_path / "outputs").exists()  # nothing ran, so no run folder was made or locked


def truncated_copy(folder):
    shutil.copytree(MNIST, folder)
    data = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:100000]))
    return folder


def not_idx_copy(folder):
    shutil.copytree(MNIST, folder)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not a gzip file")
    return folder


BAD_INPUTS = [
    (["family=foo"], "Could not find 'family/foo'"),
    (["dataset=foo"], "Could not find 'dataset/foo'"),
    (["latent_dim=0"], "latent_dim must be an integer >= 1"),
    (["latent_dim=two"], "latent_dim must be an integer"),
    (["family=lowrank", "family.rank=0"], "family.rank must be in 1..latent_dim"),
    (["family=lowrank", "family.rank=5"], "family.rank must be in 1..latent_dim"),
    (["family=cholesky", "family.rank=2"], "family.rank applies to low-rank families only"),
    (["train.batch_size=0"], "train.batch_size must be an integer >= 1"),
    (["train.lr=0"], "train.lr must be a number > 0"),
    (["train.lr=-1e-3"], "train.lr must be a number > 0"),
    (["train.epochs=1.5"], "train.epochs must be an integer"),
    (["family.offdiag_init=ones"], "family.offdiag_init must be one of"),
    (["model.hidden=[]"], "model.hidden must be a non-empty list"),
    (["model.activation=sigmoid"], "model.activation must be one of"),
    (["no_such_key=1"], "Could not override 'no_such_key'"),
    (["train.no_such_key=1"], "Could not override 'train.no_such_key'"),
    (["device=tpu"], "device must be one of"),
    (["data.root=/no/such/folder"], "lacks train-images-idx3-ubyte"),
    (["data.val_size=60000"], "leaves no training images"),
    (["resume=/no/such/run"], "no such run folder"),
    (["model.hidden=[100000,100000]"], "does not fit in memory"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    result = run_cli(["train", *TINY, *overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize("make_folder,message", [(truncated_copy, "truncated"), (not_idx_copy, "cannot read data file")])
def test_corrupt_data_files(tmp_path, make_folder, message):
    folder = make_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("data.root")]
    result = run_cli(["train", *overrides, f"data.root={folder}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (run_dir / "summary.json").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(["train", *TINY, f"hydra.run.dir={blocker}/run"], cwd=tmp_path)
    assert result.returncode == 2 and "is not writable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_data_offline_says_where_to_point(tmp_path):
    # no data.root, no $VAE_COMPARE_DATA, an empty cache and no network: a one-line error that names the fix
    overrides = [o for o in TINY if not o.startswith("data.root")]
    env = {"VAE_COMPARE_DATA": "", "XDG_CACHE_HOME": str(tmp_path / "cache"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    result = run_cli(["train", *overrides, "dataset=mnist", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "data.root=" in result.stderr and "VAE_COMPARE_DATA" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_environment_variable_points_at_data(tmp_path):
    overrides = [o for o in TINY if not o.startswith("data.root")] + ["train.epochs=1"]
    result = run_cli(["train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                     env={"VAE_COMPARE_DATA": str(MNIST.parent)})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data_folder"] == str(MNIST)


@pytest.mark.parametrize("family", ["diag", "lowrank"])
def test_divergence_stops_with_one_line_and_no_results(tmp_path, family):
    run_dir = tmp_path / "run"
    result = run_cli(["train", f"family={family}", *TINY, "train.lr=1e12", "train.epochs=3",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "non-finite loss or gradient at epoch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # a summary that says it diverged, never complete (issue 23)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


def mount_tmpfs(mount_point, options):
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    return mount_point


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB file system: room for the run folder's first files, not for a checkpoint."""
    yield mount_tmpfs(tmp_path / "disk", "size=512k")
    subprocess.run(["umount", str(tmp_path / "disk")], check=True)


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only file system (root ignores permission bits, not a read-only mount)."""
    yield mount_tmpfs(tmp_path / "ro", "size=64k,ro")
    subprocess.run(["umount", str(tmp_path / "ro")], check=True)


def test_read_only_output_folder(tmp_path, read_only_disk):
    result = run_cli(["train", *TINY, f"hydra.run.dir={read_only_disk}/run"], cwd=tmp_path)
    assert result.returncode == 2 and "is not writable: Read-only file system" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_full_output_folder(tmp_path, tiny_disk):
    run_dir = tiny_disk / "run"
    overrides = [o for o in TINY if o != "model.hidden=[32]"] + ["model.hidden=[256]"]
    result = run_cli(["train", *overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (run_dir / "summary.json").exists()
    assert not list(tiny_disk.rglob(".*.pt.*"))  # no temporary file left behind


def test_evaluate_reruns_the_final_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(["train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    # train.threads: the re-evaluation's torch threads (default: the run's own), a runtime key
    result = run_cli(["evaluate", str(run_dir), "eval.iwae_samples=64", "train.threads=2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["iwae_samples"] == 64 and summary["config"]["eval"]["iwae_samples"] == 64
    assert summary["config"]["train"]["threads"] == 2
    with open(run_dir / "final.csv") as f:
        assert next(csv.DictReader(f))["test_iwae_samples"] == "64"
    wrong = run_cli(["evaluate", str(run_dir), "family.name=cholesky"], cwd=tmp_path)
    assert wrong.returncode == 2 and "evaluate takes only" in wrong.stderr
    missing = run_cli(["evaluate", str(tmp_path / "nothing")], cwd=tmp_path)
    assert missing.returncode == 2 and "not a trained vae-compare run folder" in missing.stderr


def test_failed_run_leaves_an_existing_folder_alone(tmp_path):
    folder = tmp_path / "my-results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    # passes the checks before Hydra starts, fails when the data is loaded
    result = run_cli(["train", *TINY, "data.val_size=60000", f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert result.returncode == 2 and "leaves no training images" in result.stderr
    assert (folder / "notes.txt").read_text() == "keep me"
    assert not (folder / ".hydra").exists()


def test_new_run_refuses_a_folder_holding_a_run(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(["train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    again = run_cli(["train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert again.returncode == 2 and f"resume={run_dir}" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_impossible_model_size_is_refused_up_front(tmp_path):
    from vae_compare.config import compose
    from vae_compare.model import vae_config

    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in TINY if o != "model.hidden=[32]"]
    started = time.monotonic()
    # the small job would train first if the big one were only found when it starts
    result = run_cli(["train", "-m", "model.hidden=[32],[100000,100000]", *overrides, f"hydra.sweep.dir={sweep_dir}"],
                     cwd=tmp_path)
    assert time.monotonic() - started < 60  # seconds of start-up, against minutes or a crash
    assert result.returncode == 2, result.stderr
    parameters = sum(vae_config(compose(["model.hidden=[100000,100000]", "latent_dim=4"])).parameter_counts())
    assert f"{parameters:,} parameters" in result.stderr and "cpu has" in result.stderr
    assert "job: model.hidden=[100000,100000]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not sweep_dir.exists()


def hold_lock(folder):
    """Hold a run folder the way another vae-compare process does: flock on FOLDER/.lock, "PID HOST" in it."""
    handle = open(folder / ".lock", "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
    handle.flush()
    return handle


def test_a_locked_run_folder_is_refused_naming_its_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with hold_lock(run_dir):
        result = run_cli(["train", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # not even Hydra's .hydra/
        # resume and evaluate refuse too, before reading anything (placeholder files are enough)
        (run_dir / "checkpoint.pt").write_bytes(b"")
        (run_dir / "best.pt").write_bytes(b"")
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
        for args in (["train", f"resume={run_dir}"], ["evaluate", str(run_dir)]):
            result = run_cli(args, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert f"pid {os.getpid()} on host {socket.gethostname()}" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_report_on_a_file_says_it_is_a_file(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text("{}\n")
    result = run_cli(["report", str(summary)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"vae-compare: error: {summary} is a file, not a folder; give the run or " \
                                    "sweep folder that holds it"
