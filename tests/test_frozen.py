"""train.decoder_from: every family's encoder trained against one finished run's decoder, its weights frozen."""

import json
import signal

import pytest
import torch

from conftest import TINY, finished_tiny_run, run_cli
from test_faults import LONG, interrupt

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]


def decoder_of(path):
    weights = torch.load(path, weights_only=True)
    weights = weights.get("model", weights)  # a checkpoint holds the model's state under "model"
    return {name: value for name, value in weights.items() if name.startswith("decoder.")}


def encoder_of(path):
    return {name: value for name, value in torch.load(path, weights_only=True).items() if name.startswith("encoder.")}


def assert_same(first, second):
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny diag run whose decoder the others borrow."""
    return finished_tiny_run(tmp_path_factory.mktemp("frozen") / "source")


def test_every_family_trains_its_encoder_against_the_same_frozen_decoder(tmp_path, source):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["train", "-m", "family=diag,cholesky", *TINY, "seed=1", f"train.decoder_from={source}",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = sorted(path.parent for path in sweep_dir.glob("*/summary.json"))
    assert len(runs) == 2
    for run_dir in runs:
        assert_same(decoder_of(run_dir / "best.pt"), decoder_of(source / "best.pt"))
        assert_same(decoder_of(run_dir / "checkpoint.pt"), decoder_of(source / "best.pt"))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["decoder"] == f"frozen from {source}"
        assert summary["config"]["train"]["decoder_from"] == str(source)
    # the encoders did train: the diag one differs from the source's (same family, other seed, other decoder)
    assert any(not torch.equal(a, b) for a, b in zip(encoder_of(runs[-1] / "best.pt").values(),
                                                    encoder_of(source / "best.pt").values()))
    report = run_cli(["report", str(sweep_dir)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"**Frozen decoder**: 2 of the runs trained only their encoder, against the decoder of `{source}`" in \
        (sweep_dir / "report.md").read_text()


def test_a_resumed_run_keeps_the_decoder_frozen(tmp_path, source):
    run_dir = tmp_path / "run"
    args = ["train", "family=cholesky", *LONG, f"train.decoder_from={source}", f"hydra.run.dir={run_dir}"]
    code, stderr = interrupt(args, tmp_path, run_dir, [signal.SIGINT], "epoch 1")
    assert code == 130, stderr
    resumed = run_cli(["train", f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(decoder_of(run_dir / "best.pt"), decoder_of(source / "best.pt"))


@pytest.mark.parametrize("override,message", [
    ("latent_dim=3", "was trained with latent_dim=4, this run has 3"),
    ("model.hidden=[16]", "its decoder does not fit this model's"),
    (None, "train.decoder_from=no-such-run: not a finished run folder"),
])
def test_a_decoder_that_does_not_fit_is_one_line(tmp_path, source, override, message):
    settings = [o for o in TINY if o.split("=")[0] != (override or "").split("=")[0]] + [override or ""]
    decoder = f"train.decoder_from={source}" if override else "train.decoder_from=no-such-run"
    result = run_cli(["train", *filter(None, settings), decoder, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
