"""A refused command changes nothing on disk (issue 23): every file of the folders it names is byte-for-byte as it
was, and the run can still be continued with the command the refusal suggests. A run that blows up is reported
diverged, never complete."""

import hashlib
import json
import shutil

import pytest

from conftest import TINY, finished_tiny_run, run_cli

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]


def fingerprint(folder):
    """{path: sha256} of every file below folder, hidden ones (.hydra/, .lock) included."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny diag run."""
    return finished_tiny_run(tmp_path_factory.mktemp("refusals") / "finished")


@pytest.fixture
def unfinished(tmp_path, finished):
    """A run cut short before its evaluation: a checkpoint and no summary.json."""
    run_dir = tmp_path / "unfinished"
    shutil.copytree(finished, run_dir)
    for name in ("summary.json", "final.csv"):
        (run_dir / name).unlink()
    return run_dir


def refused(args, folder, cwd, code=2, message=""):
    """Run args, which must be refused in one line with `code`, and check folder's files are unchanged."""
    before = fingerprint(folder)
    result = run_cli(args, cwd=cwd)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert fingerprint(folder) == before
    return result


def test_mistyped_resume_leaves_the_run_resumable(tmp_path, unfinished):
    refused(["train", f"resume={unfinished}", "family=cholesky"], unfinished, tmp_path,
            message="was trained with family.name='diag', this run has 'cholesky'")
    # the command the error suggests still works, and the run's recorded config is its own
    result = run_cli(["train", f"resume={unfinished}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((unfinished / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["config"]["family"]["name"] == "diag"
    assert "family=diag" in (unfinished / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["latent_dim=abc"], "latent_dim must be"),  # a bad override together with resume=
    (["eval.chunk_size=1000000000"], "does not fit in memory"),  # a memory refusal on resume
])
def test_resume_refused_up_front_changes_nothing(tmp_path, unfinished, overrides, message):
    refused(["train", f"resume={unfinished}", *overrides], unfinished, tmp_path, message=message)


def test_resume_of_a_folder_in_use_changes_nothing(tmp_path, unfinished):
    from test_cli import hold_lock

    with hold_lock(unfinished):
        refused(["train", f"resume={unfinished}"], unfinished, tmp_path, message="pid")


def test_resume_of_a_complete_run_changes_nothing(tmp_path, finished):
    before = fingerprint(finished)
    skipped = run_cli(["train", f"resume={finished}"], cwd=tmp_path)
    assert skipped.returncode == 0 and "already complete" in skipped.stdout + skipped.stderr
    assert fingerprint(finished) == before
    refused(["train", f"resume={finished}", "train.lr=0.5"], finished, tmp_path,
            message="was trained with train.lr=0.001, this run has 0.5")


@pytest.mark.parametrize("command", ["evaluate", "gaps"])
def test_evaluate_and_gaps_of_an_unfinished_run_change_nothing(tmp_path, unfinished, command):
    refused([command, str(unfinished)], unfinished, tmp_path, message="unfinished" if command == "gaps" else
            "has not finished training")


def test_report_select_without_validation_numbers_changes_nothing(tmp_path, finished):
    folder = tmp_path / "sweep"
    shutil.copytree(finished, folder / "run")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    del summary["best_val_elbo"]
    (folder / "run" / "summary.json").write_text(json.dumps(summary))
    refused(["report", str(folder), "--select"], folder, tmp_path, message="has no validation ELBO")


def test_a_run_that_blew_up_is_diverged_not_complete(tmp_path):
    # a tiny cholesky at lr 1000 reaches a finite validation ELBO of about -2e6 nats: far below the -543.4 of
    # giving every pixel probability 0.5 (on the code this was filed against it finished as complete)
    sweep_dir = tmp_path / "sweep"
    settings = ["family=cholesky", *TINY]
    run_dir = tmp_path / "run"
    result = run_cli(["train", *settings, "train.lr=1000", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "is below -543.4 nats" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and "below -543.4" in summary["reason"]
    # in a sweep it is a failed job with its reason, and the report leaves it out in one line
    sweep = run_cli(["train", "-m", *settings, "train.lr=1000,0.001", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert sweep.returncode == 1 and "1 job(s) failed" in sweep.stderr and "below -543.4" in sweep.stderr
    report = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "1 finished runs" in report.stdout and "1 diverged run(s) left out" in report.stdout
    assert "1 diverged run(s) left out" in (sweep_dir / "report.md").read_text()
