"""Shared test helpers: the real MNIST files and the installed `vae-compare` command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real data: $VAE_COMPARE_DATA, else the shared folder beside the checkout.
DATA = Path(os.environ.get("VAE_COMPARE_DATA") or REPO.parent / "shared" / "data").resolve()
MNIST = DATA / "mnist"
CLI = Path(sys.executable).parent / "vae-compare"

# A tiny model on a slice of real MNIST: a whole run takes a few seconds on 2 cores.
TINY = [f"data.root={MNIST}", "data.train_size=512", "data.val_size=256", "data.test_size=64",
        "model.hidden=[32]", "latent_dim=4", "train.epochs=2", "train.batch_size=64",
        "eval.iwae_samples=16", "train.threads=1"]


@pytest.fixture(scope="session")
def real_data():
    """Tests on real data fail loudly, never skip, when the files are missing."""
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.exit(f"the real MNIST files are missing from {MNIST}; set VAE_COMPARE_DATA to the data folder", 2)


def run_cli(args, cwd, timeout=300, env=None):
    """Run the installed console script from `cwd` (not the repo), as a user would."""
    environment = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment)


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
