"""Shared test helpers: the real MNIST files and the installed `vae-compare` command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vae_compare import data

REPO = Path(__file__).resolve().parents[1]
# The real data: $VAE_COMPARE_DATA, else the shared folder beside the checkout.
DATA = Path(os.environ.get("VAE_COMPARE_DATA") or REPO.parent / "shared" / "data").resolve()
# MNIST's idx files: in DATA/mnist, else where `make train` downloads them (the real_data fixture fetches them).
MNIST = DATA / "mnist" if data.has_all_files(DATA / "mnist") else data.download_folder("mnist")
CLI = Path(sys.executable).parent / "vae-compare"
# MNIST is 11 MB: a download that has not finished by then is taken as failed, so an unanswering host cannot hang the suite.
DOWNLOAD_TIMEOUT_S = 120
# The package's own download, in a child process so that the timeout can stop it (the lock it holds dies with
# it); on failure it prints torchvision's error (data.download's one-line message hides it), whose last line is the cause.
DOWNLOAD = """
import sys
from vae_compare import UserError, data
try:
    data.download("mnist")
except UserError as error:
    sys.exit(str(error.__context__))
"""

# A tiny model on a slice of real MNIST: a whole run takes a few seconds on 2 cores.
TINY = [f"data.root={MNIST}", "data.train_size=512", "data.val_size=256", "data.test_size=64",
        "model.hidden=[32]", "latent_dim=4", "train.epochs=2", "train.batch_size=64",
        "eval.iwae_samples=16", "train.threads=1"]


@pytest.fixture(scope="session")
def real_data():
    """The real MNIST files in MNIST, downloaded as `make train` downloads them when missing. The attempt is made
    once per session (pytest keeps a session fixture's skip), so without files and network every test that asks
    for them skips with this one reason."""
    if data.has_all_files(MNIST):
        return
    try:
        fetch = subprocess.run([sys.executable, "-c", DOWNLOAD], capture_output=True, text=True,
                               timeout=DOWNLOAD_TIMEOUT_S)
        failure = (fetch.stderr.strip().splitlines() or [f"exit status {fetch.returncode}"])[-1] if fetch.returncode else None
    except subprocess.TimeoutExpired:
        failure = f"not finished in {DOWNLOAD_TIMEOUT_S} s"
    if failure or not data.has_all_files(MNIST):
        pytest.skip(f"needs the real MNIST files: none in {DATA / 'mnist'} and downloading them into {MNIST} failed "
                    f"({failure or 'files incomplete'}); set VAE_COMPARE_DATA to a folder holding mnist/")


def run_cli(args, cwd, timeout=300, env=None):
    """Run the installed console script from `cwd` (not the repo), as a user would."""
    environment = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)


def finished_tiny_run(run_dir, *overrides):
    """Train a tiny run (TINY, diag unless the overrides say otherwise) into run_dir, from its parent folder."""
    result = run_cli(["train", "family=diag", *TINY, *overrides, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


def start_cli(args, cwd):
    return subprocess.Popen([str(CLI), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"})


def make_vae(latent_dim, hidden, activation, family, rank=0, scale_transform="exp", scale_floor=0.0,
             offdiag_init="zero", offdiag_scale=1.0, seed=0):
    """A VAE built in-process from plain values (encoder hidden sizes `hidden`, the decoder's reversed)."""
    from omegaconf import OmegaConf

    from vae_compare.config import FamilyConfig
    from vae_compare.model import VAE, VAEConfig

    family_cfg = OmegaConf.structured(FamilyConfig(name=family, rank=rank, scale_transform=scale_transform,
                                                   scale_floor=scale_floor, offdiag_init=offdiag_init,
                                                   offdiag_scale=offdiag_scale))
    return VAE(VAEConfig(latent_dim, list(hidden), list(hidden)[::-1], activation, family_cfg), seed)
