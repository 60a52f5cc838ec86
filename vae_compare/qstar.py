"""q*: for each image alone, the member of a posterior family with the highest ELBO, the decoder frozen
(Cremer, Li and Duvenaud 2018), found by batched Adam over the family's raw head vectors.

A batch of posteriors is kept as the family's raw head vectors (`Posteriors`), the numbers an encoder outputs:
mean, raw scale, off-diagonal part. q* is optimised over exactly those, so it is a member of the family. It
starts at the encoder's output for the run's own family (own_family_start), at the diagonal Gaussian closest
to the encoder's q for another family (other_family_start).
"""

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional

import torch

from vae_compare.evaluate import elbo
from vae_compare.model import plain_values
from vae_compare.posteriors import FAMILIES, Noise


@dataclass
class Posteriors:
    """q for N images as raw head vectors (N, head_size), read by `family.from_head` with `family_cfg`."""

    family: type
    family_cfg: object
    latent_dim: int
    heads: torch.Tensor

    def __len__(self):
        return self.heads.shape[0]

    def distribution(self, rows=slice(None)):
        return self.family.from_head(self.heads[rows], self.latent_dim, self.family_cfg)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def covariances(posteriors: Posteriors, batch_images=1000):
    """Every image's covariance matrix, (N, d, d)."""
    return torch.cat([posteriors.distribution(slice(first, first + batch_images)).covariance().detach()
                      for first in range(0, len(posteriors), batch_images)])


class UnsupportedFamily(ValueError):
    """q* of this family cannot be started from this encoder (the reason is the message)."""


def config_with(family_cfg, **changes):
    """A plain copy of a family config with some values changed."""
    return SimpleNamespace(**{**vars(plain_values(family_cfg)), **changes})


def inverse_positive_scale(scale, transform, floor):
    """The raw head value that posteriors.positive_scale maps to `scale`. A scale at or below the floor (the
    precision diagonal of a correlated q can be) is raised to 1% of the floor above it, not to a raw value so
    far out that Adam could not bring it back."""
    excess = (scale - floor).clamp_min(0.01 * floor if floor > 0 else torch.finfo(scale.dtype).tiny)
    if transform == "exp":
        return 2 * excess.log()
    # softplus^-1(y) = log(expm1(y)) = y + log(-expm1(-y)), the second form finite for large and small y
    return excess + torch.log(-torch.expm1(-excess))


def own_family_start(encoder: Posteriors) -> Posteriors:
    """q* of the run's own family starts at the encoder's output.

    The run's offdiag_scale (0.01 by default) multiplies the off-diagonal part; left in place it would shrink
    Adam's step on that part a hundredfold. So it is moved into the head (last part times offdiag_scale, read
    with offdiag_scale = 1), and kept only if that gives back the same distributions, which is checked, so a
    family that reads its head otherwise is optimised in its own parameterisation instead.
    """
    offdiag_scale = getattr(encoder.family_cfg, "offdiag_scale", 1.0)
    if offdiag_scale in (0.0, 1.0):
        # 0: the family has no off-diagonal part in use (diag); 1: nothing to move
        return encoder.replace(family_cfg=config_with(encoder.family_cfg))
    last = encoder.family.head_split(encoder.latent_dim, encoder.family_cfg.rank)[-1]
    heads = encoder.heads.clone()
    heads[:, heads.shape[1] - last:] *= offdiag_scale
    moved = encoder.replace(family_cfg=config_with(encoder.family_cfg, offdiag_scale=1.0), heads=heads)
    rows = slice(0, 64)
    same = torch.allclose(moved.distribution(rows).covariance(), encoder.distribution(rows).covariance(),
                          rtol=1e-4, atol=1e-6)
    return moved if same else encoder.replace(family_cfg=config_with(encoder.family_cfg))


def other_family_start(encoder: Posteriors, name, rank) -> Posteriors:
    """q* of another family starts at the diagonal Gaussian closest to q(z|x) in the ELBO's direction (the
    minimiser of KL(q' || q) over diagonal q': q's mean and variances 1 / (Sigma^-1)_ii; for a diag encoder,
    q itself), with a zero off-diagonal part. q's marginal variances Sigma_ii are too wide when q is strongly
    correlated: on a cholesky-trained MNIST model (200 test images) diag's start had an ELBO of -143.5 with
    them against -120.1 with these (both reached -116.03 after 550 steps: the start saves steps, at most).

    The family is read with the run's scale_transform and scale_floor where the run has them (so a diag run's
    log-variance parameterisation carries over; the raw scale is positive_scale inverted), else softplus with
    floor 1e-3 (the full-covariance defaults), and offdiag_scale = 1. Only families whose head is
    [mean | raw scale | off-diagonal part] (the family's has_diagonal_head) can start this way.

    A zero start is a stationary point of the ELBO for lowrank's V (the ELBO is even in V): its expected
    gradient there is zero and V leaves zero on the optimiser's sampling noise alone, which Adam's normalised
    steps turn into moves of about lr. Measured on MNIST (the default model after 3 epochs with diag), lowrank's
    q* (k=4) started at V = 0 gained 0.9 nat per image over diag's q*, so V does leave zero.
    """
    family = FAMILIES[name]
    if not family.has_diagonal_head:
        raise UnsupportedFamily(f"{name}: its head is not [mean | raw scale | off-diagonal part], so it has no "
                                f"diagonal member to start from the {encoder.family.name} encoder")
    rank = rank if family.uses_rank else 0
    problem = family.rank_error(encoder.latent_dim, rank)
    if problem:
        raise UnsupportedFamily(problem)
    run_cfg = encoder.family_cfg
    cfg = config_with(run_cfg, name=name, rank=rank, offdiag_scale=1.0,
                      scale_transform=str(getattr(run_cfg, "scale_transform", "softplus")),
                      scale_floor=float(getattr(run_cfg, "scale_floor", 1e-3)))
    with torch.no_grad():
        mean = encoder.distribution().mean
        # in float64: a float32 inverse of a strongly correlated Sigma loses the small precisions
        precision_diagonal = torch.cholesky_inverse(torch.linalg.cholesky(covariances(encoder).double()))
        scale = precision_diagonal.diagonal(dim1=-2, dim2=-1).rsqrt().to(mean.dtype)
        raw_scale = inverse_positive_scale(scale, cfg.scale_transform, cfg.scale_floor)
        offdiag = mean.new_zeros(len(encoder), family.offdiag_size(encoder.latent_dim, rank))
        heads = torch.cat((mean, raw_scale, offdiag), -1)
    return Posteriors(family, cfg, encoder.latent_dim, heads)


def full_covariance_start(means, covariances, transform="softplus", floor=1e-3) -> Posteriors:
    """cholesky members with the given means (N, d) and covariances (N, d, d): a full-covariance start that keeps
    whatever correlations q(z|x) has, whichever family it is, read with offdiag_scale 1."""
    family, latent_dim = FAMILIES["cholesky"], means.shape[-1]
    cfg = SimpleNamespace(name="cholesky", rank=0, scale_transform=transform, scale_floor=floor, offdiag_scale=1.0)
    factor = torch.linalg.cholesky(covariances.double()).to(means.dtype)
    rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1, device=means.device)
    raw_scale = inverse_positive_scale(factor.diagonal(dim1=-2, dim2=-1), transform, floor)
    return Posteriors(family, cfg, latent_dim, torch.cat((means, raw_scale, factor[:, rows, cols]), -1))


def start_posteriors(encoder: Posteriors, name, rank=4) -> Posteriors:
    """Where q* of family `name` starts (own_family_start or other_family_start); UnsupportedFamily if it cannot."""
    if name == encoder.family.name:
        return own_family_start(encoder)
    return other_family_start(encoder, name, rank)


# --- The optimiser -----------------------------------------------------------------------------------------


def optimize_posteriors(log_likelihood: Callable, x, start: Posteriors, samples=8, steps=1000, lr=0.02,
                        window=50, tolerance=0.02, lr_drops=2, chunk_images=250, noise: Optional[Noise] = None,
                        progress: Optional[Callable] = None):
    """q* for every image: each image's head vector optimised by Adam to maximise its own ELBO, decoder frozen.

    Returns (Posteriors with the optimised heads, steps taken per image as a LongTensor (N,)).

    Images are optimised `chunk_images` at a time as one (chunk, head_size) tensor. The loss is the sum of the
    images' ELBOs and Adam's update is per coordinate, so this is exactly one Adam run per image, batched.
    Each step draws `samples` reparameterised z per image: ELBO = mean_s log p(x|z_s) - KL(q || N(0, I)).
    Freeze the decoder's parameters (requires_grad False) before calling, or their gradients are computed too.

    Stopping rule, per chunk: every `window` steps, the chunk's mean ELBO over those steps (each step's
    estimate, before its update) is compared with the previous window's. When it rose by less than
    `tolerance` nats per image, the learning rate is divided by 10, up to `lr_drops` times, and the comparison
    starts afresh; at the plateau after the last drop, or after `steps` steps, the chunk stops. Checking once
    per window keeps host syncs rare.

    Why the drops: Adam's steps have a size of about lr whatever the gradient's scale, so at a constant rate q*
    jitters around the optimum by about lr in every head coordinate. Measured on MNIST (250 test images, the
    default model after 3 epochs with diag), 500 steps at a constant 0.01 ended 0.09 (diag), 0.39 (lowrank)
    and 0.71 (cholesky) nat per image below a 1200-1500-step run with 16 samples and drops; 500 steps with
    drops ended 0.02, 0.14 and 0.10 below it, and these defaults (450-550 steps) 0.01, 0.05 and 0.05.
    `progress(stage, done, total)`, if given, is called after each chunk with images done.
    """
    heads, steps_taken = [], []
    for first in range(0, len(start), chunk_images):
        rows = slice(first, first + chunk_images)
        x_chunk = x[rows]
        head = start.heads[rows].detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([head], lr=lr)
        window_total = head.new_zeros(())
        previous, drops, step = None, 0, 0
        while step < steps:
            step += 1
            q = start.family.from_head(head, start.latent_dim, start.family_cfg)
            objective = elbo(log_likelihood, x_chunk, q, samples, noise)
            optimizer.zero_grad(set_to_none=True)
            (-objective.sum()).backward()
            optimizer.step()
            window_total += objective.detach().mean()
            if step % window:
                continue
            current = window_total.item() / window
            window_total.zero_()
            if previous is None or current - previous >= tolerance:
                previous = current
                continue
            if drops == lr_drops:
                break
            drops += 1
            for group in optimizer.param_groups:
                group["lr"] /= 10
            previous = None
        heads.append(head.detach())
        steps_taken.append(torch.full((head.shape[0],), step, dtype=torch.long))
        if progress:
            progress(f"q* {start.family.name}", min(first + chunk_images, len(start)), len(start))
    return start.replace(heads=torch.cat(heads)), torch.cat(steps_taken)


class frozen:
    """Within the block, no parameter of `module` asks for gradients (q*'s backward pass then costs one
    decoder pass for dL/dz instead of also computing every weight's gradient); restored afterwards."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = [(parameter, parameter.requires_grad) for parameter in self.module.parameters()]
        self.module.requires_grad_(False)

    def __exit__(self, *exc):
        for parameter, requires_grad in self.saved:
            parameter.requires_grad_(requires_grad)
