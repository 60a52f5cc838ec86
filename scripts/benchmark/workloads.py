"""What several rows time: the shared sizes, the default model of a family, a float32 torch.mm, the progress bar a
user's run pays for, and FLOP counts of a training step."""

import os

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from vae_compare.config import compose
from vae_compare.model import IMAGE_SIZE, build_model
from vae_compare.train import progress_columns

LATENT_DIMS = (2, 8, 16, 32, 64, 128)
# the families the targets are about (the others have no FLOP count here); diag first: it is b's reference
FAMILY_NAMES = ("diag", "cholesky", "lowrank")
RANK = 4
BATCH = 128


def linear_flops(sizes):
    """Forward FLOPs per image of an MLP with these layer sizes: 2 * in * out per Linear."""
    return sum(2 * fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def family_flops(family, d, k=RANK):
    """Forward FLOPs per image of the family's products in a training step (elementwise work on d
    numbers not counted).

    cholesky: L eps from the d(d-1)/2 packed entries (a multiply and an add each) and their squares
    for the KL's trace: 2d(d-1). lowrank: V eps_k 2dk, the capacitance V^T D^-1 V 2dk^2 and the
    trace of V V^T 2dk (the k x k Cholesky is below k^3 and ignored).
    """
    return {"diag": 0, "cholesky": 2 * d * (d - 1), "lowrank": 4 * d * k + 2 * d * k * k}[family]


def step_flops(model, batch=BATCH):
    """FLOPs of one training step on `batch` images: 3 x forward (forward + backward)."""
    encoder = [m.in_features for m in model.encoder if isinstance(m, nn.Linear)] + [model.head_size]
    decoder = [m.in_features for m in model.decoder if isinstance(m, nn.Linear)] + [IMAGE_SIZE]
    forward = linear_flops(encoder) + linear_flops(decoder) + family_flops(model.family.name, model.latent_dim)
    return 3 * forward * batch


def training_model(family, latent_dim, device):
    """The default model (hidden [512, 256]) of a family."""
    torch.manual_seed(0)
    cfg = compose([f"family={family}", f"latent_dim={latent_dim}", f"device={device.type}"])
    return build_model(cfg).to(device)


def matmul(rows, inner, cols, device):
    """(function, FLOPs) of one float32 torch.mm of the given shape."""
    a = torch.randn(rows, inner, device=device)
    b = torch.randn(inner, cols, device=device)
    return (lambda: torch.mm(a, b)), 2 * rows * inner * cols


def square_matmul(args, device):
    square = 1024 if args.quick else 2048
    return f"mm {square}x{square} @ {square}x{square}", matmul(square, square, square, device)


def live_progress():
    """(progress, task) as training shows them on a terminal (rendered to nowhere), so the bench pays for the
    progress bar as a user's run does."""
    sink = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)
    progress = Progress(*progress_columns(), console=sink, redirect_stdout=False, redirect_stderr=False)
    progress.start()
    return progress, progress.add_task("training", total=1, elbo="")
