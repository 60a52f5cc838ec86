"""Inference gaps of a trained VAE (Cremer, Li and Duvenaud 2018, "Inference Suboptimality in VAEs").

For one image x, with q(z|x) the encoder's posterior and q*(z) the member of a family with the highest ELBO
for that image alone (found by optimisation with the decoder frozen):

    inference gap       log p(x) - ELBO(q(z|x))  =  approximation gap + amortization gap
    approximation gap   log p(x) - ELBO(q*)         what the family costs: q* is still not p(z|x)
    amortization gap    ELBO(q*) - ELBO(q(z|x))     what one shared encoder costs against fitting each image

The model enters as `log_likelihood(x, z)`, log p(x|z) for x of shape (B, ...) and z of shape (S, B, d),
giving (S, B) (VAE.log_likelihood has this form), and the prior, which is N(0, I) throughout. With that prior
ELBO = E_q[log p(x|z)] - KL(q || N(0, I)), and every family has the KL in closed form, so only the likelihood
term is sampled: lower variance than sampling log p(x, z) - log q(z) as a whole. Any model with a
standard-normal prior fits this, including the linear-Gaussian model the tests use.

A batch of posteriors is kept as the family's raw head vectors (`Posteriors`), the numbers an encoder outputs:
mean, raw scale, off-diagonal part. q* is optimised over exactly those, so it is a member of the family.

Reading order: Posteriors and starting points; the optimiser; ELBO and log p(x) estimates; the gap rows; the
rotation diagnostic; `inference_gaps` (any log_likelihood) and `model_gaps` (a trained VAE), which tie them.
"""

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import torch
from omegaconf import OmegaConf

from vae_compare.config import GapsConfig
from vae_compare.evaluate import default_chunk_size, standard_normal_log_prob, summarize_log_px
from vae_compare.model import plain_values
from vae_compare.posteriors import FAMILIES, DiagGaussian, Noise

log = logging.getLogger(__name__)


# --- Posteriors and where q* starts ------------------------------------------------------------------------


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


def has_diagonal_layout(family):
    """Whether the family reads its head as [mean (d) | raw diagonal scale (d) | off-diagonal part], through
    the shared from_head, so that a zero off-diagonal part is the diagonal Gaussian of the first two parts.
    diag, cholesky, lowrank and corr do; rank1sum ([mean | V]) does not."""
    own = getattr(family.from_head, "__func__", None)
    return issubclass(family, DiagGaussian) and own is DiagGaussian.from_head.__func__


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
    floor 1e-3 (the full-covariance defaults), and offdiag_scale = 1. Only families with the
    [mean | raw scale | off-diagonal] layout (has_diagonal_layout) can start this way.

    A zero start is a stationary point of the ELBO for lowrank's V (the ELBO is even in V): its expected
    gradient there is zero and V leaves zero on the optimiser's sampling noise alone, which Adam's normalised
    steps turn into moves of about lr. Measured on MNIST (the default model after 3 epochs with diag), lowrank's
    q* (k=4) started at V = 0 gained 0.9 nat per image over diag's q*, so V does leave zero.
    """
    family = FAMILIES[name]
    if not has_diagonal_layout(family):
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
            elbo = log_likelihood(x_chunk, q.rsample(samples, noise)).mean(0) - q.kl_to_standard_normal()
            optimizer.zero_grad(set_to_none=True)
            (-elbo.sum()).backward()
            optimizer.step()
            window_total += elbo.detach().mean()
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


# --- Estimates of the ELBO and of log p(x) ------------------------------------------------------------------


def sample_calls(samples, samples_per_call):
    """Sizes of the successive sample chunks that make up `samples`."""
    return [min(samples_per_call, samples - first) for first in range(0, samples, samples_per_call)]


@torch.no_grad()
def elbo_estimate(log_likelihood: Callable, x, posteriors: Posteriors, samples=1000, batch_images=100,
                  samples_per_call=16, seed=0, progress: Optional[Callable] = None):
    """Per-image ELBO = mean of log p(x|z_s) over `samples` draws z_s ~ q - KL(q || N(0, I)) (closed form),
    and its Monte Carlo standard error (sd of log p(x|z_s) / sqrt(samples)): two (N,) float64 tensors.

    The noise comes from posteriors.Noise(seed) afresh on every call: two calls on the same images draw the
    same standard-normal noise (common random numbers), so the difference of two posteriors' ELBOs, the
    amortization gap, does not carry two independent sampling errors.
    """
    noise = Noise(seed, x.device)
    elbos, stderrs = [], []
    for first in range(0, len(posteriors), batch_images):
        rows = slice(first, first + batch_images)
        q = posteriors.distribution(rows)
        total = torch.zeros(q.mean.shape[0], dtype=torch.float64, device=x.device)
        total_squares = torch.zeros_like(total)
        for count in sample_calls(samples, samples_per_call):
            value = log_likelihood(x[rows], q.rsample(count, noise)).double()
            total += value.sum(0)
            total_squares += value.square().sum(0)
        mean = total / samples
        # float64 sums: the variance of values near -100 nats by E[v^2] - E[v]^2 keeps ~10 digits
        variance = (total_squares / samples - mean.square()).clamp_min(0) * samples / max(samples - 1, 1)
        elbos.append(mean - q.kl_to_standard_normal().double())
        stderrs.append((variance / samples).sqrt())
        if progress:
            progress(f"ELBO {posteriors.family.name}", min(first + batch_images, len(posteriors)), len(posteriors))
    return torch.cat(elbos), torch.cat(stderrs)


def importance_log_px_batch(log_likelihood: Callable, x, q, samples, samples_per_call, noise=None):
    """log p(x) ~ log (1/k) sum_s p(x|z_s) N(z_s; 0, I) / q(z_s) with z_s ~ q, for one batch: (B,).

    Samples are drawn `samples_per_call` at a time and folded into a running logsumexp, so memory does not
    grow with k. This is the loop body of evaluate.iwae_log_px with the proposal passed in (meant to move
    there so that both use it).
    """
    # -inf is logsumexp's identity, so the first chunk needs no special case
    log_sum_w = torch.full((x.shape[0],), -math.inf, dtype=q.mean.dtype, device=x.device)
    for count in sample_calls(samples, samples_per_call):
        z, log_q = q.rsample_and_log_prob(count, noise)
        log_w = log_likelihood(x, z) + standard_normal_log_prob(z) - log_q
        log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, 0))
    return log_sum_w - math.log(samples)


@torch.no_grad()
def importance_log_px(log_likelihood: Callable, x, proposal: Posteriors, samples=5000, batch_images=100,
                      samples_per_call=16, seed=0, progress: Optional[Callable] = None):
    """Per-image IWAE estimate of log p(x) (Burda et al. 2016) with `proposal` as q, shape (N,), float64."""
    noise = Noise(seed, x.device)
    estimates = []
    for first in range(0, len(proposal), batch_images):
        rows = slice(first, first + batch_images)
        estimates.append(importance_log_px_batch(log_likelihood, x[rows], proposal.distribution(rows), samples,
                                                 samples_per_call, noise))
        if progress:
            progress(f"log p(x), k={samples}", min(first + batch_images, len(proposal)), len(proposal))
    return torch.cat(estimates).double()


# --- The gap rows --------------------------------------------------------------------------------------------


def mean_and_stderr(prefix, values):
    """{prefix: mean over images, prefix_stderr: standard error of that mean} for per-image values (N,)."""
    mean, stderr = summarize_log_px(values)
    return {prefix: mean, f"{prefix}_stderr": stderr}


def gap_rows(log_px, encoder_elbo, optimized, encoder_family):
    """One row per optimised family: means over images, each with the standard error of the mean.

    log_px, encoder_elbo: per-image (N,) tensors; optimized: {family: {"elbo": (N,), "steps": (N,),
    "seconds": float, "start": str}}. Gaps are means of per-image differences, so their standard errors are
    paired (sd of the per-image difference / sqrt(N)), far smaller than the spread of log p(x) across images.

    For the run's own family, amortization_gap is Cremer et al.'s. For another family F it is
    ELBO(q*_F) - ELBO(q(z|x)): what the run's encoder loses against the best member of F, per image;
    inference_gap = approximation_gap + amortization_gap holds in every row.
    """
    rows = []
    for name, result in optimized.items():
        elbo = result["elbo"]
        row = {"family": name, "encoder_family": encoder_family, "start": result["start"], "images": len(elbo)}
        row.update(mean_and_stderr("log_px", log_px))
        row.update(mean_and_stderr("encoder_elbo", encoder_elbo))
        row.update(mean_and_stderr("optimized_elbo", elbo))
        row.update(mean_and_stderr("inference_gap", log_px - encoder_elbo))
        row.update(mean_and_stderr("approximation_gap", log_px - elbo))
        row.update(mean_and_stderr("amortization_gap", elbo - encoder_elbo))
        row.update(steps_mean=result["steps"].double().mean().item(), steps_max=int(result["steps"].max()),
                   seconds=result["seconds"])
        rows.append(row)
    return rows


# --- The rotation diagnostic ---------------------------------------------------------------------------------
#
# The prior N(0, I) is rotation-invariant and the decoder's first layer can absorb a rotation of z, so one
# global rotation z -> R^T z costs a VAE nothing. Correlation in q(z|x) that one rotation removes for every
# image is therefore not a reason for a full-covariance family. These functions measure how much is left.


def total_correlation(cov):
    """KL(q || product of q's marginals) = 1/2 (sum_i log Sigma_ii - log det Sigma) per covariance (..., d, d):
    the forward KL from q to the diagonal Gaussian with q's own variances (evaluate's log-det gap)."""
    return 0.5 * (cov.diagonal(dim1=-2, dim2=-1).log().sum(-1) - torch.linalg.slogdet(cov)[1])


def diagonal_reverse_kl(cov):
    """min over diagonal Gaussians q' of KL(q' || q) = 1/2 (log det Sigma + sum_i log (Sigma^-1)_ii) per covariance:
    what variational inference with a diagonal family gives up when q is the target (the minimiser has the
    precision diagonal of q: variances 1 / (Sigma^-1)_ii, the same mean)."""
    precision = torch.cholesky_inverse(torch.linalg.cholesky(cov))
    return 0.5 * (torch.linalg.slogdet(cov)[1] + precision.diagonal(dim1=-2, dim2=-1).log().sum(-1))


def rotate(cov, rotation):
    """The covariance of R^T z for z with covariance Sigma: R^T Sigma R."""
    return rotation.transpose(-1, -2) @ cov @ rotation


def mean_covariance_rotation(cov):
    """R whose columns are the eigenvectors of the mean covariance E_x[Sigma(x)]: exact when all Sigma(x)
    share one orientation (Sigma(x) = R D(x) R^T with distinct mean eigenvalues)."""
    return torch.linalg.eigh(cov.mean(0))[1]


def joint_rotation(cov, start=None, max_iter=200):
    """The orthogonal R that minimises the mean total correlation of R^T Sigma(x) R over the images, by L-BFGS
    on R = start @ matrix_exp(A - A^T) from the mean-covariance rotation. Since det(R^T Sigma R) = det Sigma,
    this minimises mean_x sum_i log (R^T Sigma(x) R)_ii: Pham's (2001) joint-diagonalisation criterion for
    positive definite matrices, restricted to rotations. It is never worse than its start."""
    start = mean_covariance_rotation(cov) if start is None else start
    d = cov.shape[-1]
    generator = torch.zeros(d, d, dtype=cov.dtype, device=cov.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([generator], max_iter=max_iter, line_search_fn="strong_wolfe")

    def rotation():
        return start @ torch.linalg.matrix_exp(generator - generator.T)

    def objective():
        optimizer.zero_grad()
        value = rotate(cov, rotation()).diagonal(dim1=-2, dim2=-1).log().sum(-1).mean()
        value.backward()
        return value

    optimizer.step(objective)
    with torch.no_grad():
        return rotation()


@torch.no_grad()
def rotation_diagnostic(cov):
    """How much of q's correlation one global rotation removes, for covariances Sigma(x) of shape (N, d, d).

    Means over images, with standard errors, of two per-image quantities, each before rotating and after
    rotating every Sigma by one R (Sigma -> R^T Sigma R):
        total_correlation   KL(q || product of its marginals), the forward direction (total_correlation())
        diag_reverse_kl     min over diagonal q' of KL(q' || q), the reverse direction (diagonal_reverse_kl())
    with R from the eigenvectors of E_x[Sigma(x)] (suffix _rotated_mean_cov) and from the joint
    diagonalisation that minimises the mean total correlation (suffix _rotated_joint). Computed in float64.
    """
    cov = cov.double()
    rotations = {"": None, "_rotated_mean_cov": mean_covariance_rotation(cov)}
    with torch.enable_grad():
        rotations["_rotated_joint"] = joint_rotation(cov, rotations["_rotated_mean_cov"])
    result = {"images": cov.shape[0]}
    for suffix, rotation in rotations.items():
        rotated = cov if rotation is None else rotate(cov, rotation)
        result.update(mean_and_stderr("total_correlation" + suffix, total_correlation(rotated)))
        result.update(mean_and_stderr("diag_reverse_kl" + suffix, diagonal_reverse_kl(rotated)))
    return result


# --- Everything for one model --------------------------------------------------------------------------------


class Clock:
    """Seconds since the last lap; on a GPU it waits for queued work, so each stage is billed its own time."""

    def __init__(self, device):
        self.device = device
        self.last = self.now()

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self):
        previous, self.last = self.last, self.now()
        return self.last - previous


def inference_gaps(log_likelihood: Callable, x, encoder: Posteriors, starts: dict, settings: GapsConfig,
                   samples_per_call=16, progress: Optional[Callable] = None):
    """Gaps of the encoder's q(z|x) against q* of every family in `starts` ({name: Posteriors to start from}).

    Returns a dict:
        rows       gap_rows(), one per family (start: "encoder" for the run's own family, "diagonal"
                   for another family, started from the diagonal Gaussian closest to the encoder's q)
        log_px     {"proposal": the family whose q* was the importance-sampling proposal, "samples"}
        rotation   {"encoder": rotation_diagnostic of q(z|x), "<family>": of that family's q*}
        seconds    wall-clock seconds of each stage: encoder_elbo, <family> (q* and its ELBO), log_px,
                   rotation, total
        per_image  per-image tensors (log_px, encoder_elbo, <family>_elbo, <family>_steps), for plots and
                   histograms; the only part that is not JSON-ready
    log p(x) uses the q* with the highest mean ELBO as the proposal: with an exact optimiser the richest
    family's, since it contains the others; the best available, as in Cremer et al.
    """
    device = x.device
    estimate = dict(samples=settings.elbo_samples, samples_per_call=samples_per_call, seed=settings.seed,
                    progress=progress)
    seconds = {}
    clock = Clock(device)
    encoder_elbo, _ = elbo_estimate(log_likelihood, x, encoder, **estimate)
    seconds["encoder_elbo"] = clock.lap()
    optimized, best = {}, {}
    for index, (name, start) in enumerate(starts.items()):
        # the optimiser's noise is a stream of its own, apart from the estimates' common random numbers
        posteriors, steps = optimize_posteriors(
            log_likelihood, x, start, samples=settings.samples, steps=settings.steps, lr=settings.lr,
            window=settings.window, tolerance=settings.tolerance, lr_drops=settings.lr_drops,
            chunk_images=settings.chunk_images, noise=Noise(settings.seed + 1 + index, device), progress=progress)
        optimizing = clock.lap()
        elbo, _ = elbo_estimate(log_likelihood, x, posteriors, **estimate)
        seconds[name] = optimizing + clock.lap()
        optimized[name] = {"elbo": elbo, "steps": steps, "seconds": optimizing,
                           "start": "encoder" if name == encoder.family.name else "diagonal"}
        best[name] = posteriors
    proposal = max(optimized, key=lambda name: optimized[name]["elbo"].mean().item())
    log_px = importance_log_px(log_likelihood, x, best[proposal], settings.iwae_samples,
                               samples_per_call=samples_per_call, seed=settings.seed, progress=progress)
    seconds["log_px"] = clock.lap()
    rotation = {"encoder": rotation_diagnostic(covariances(encoder))}
    rotation.update({name: rotation_diagnostic(covariances(posteriors)) for name, posteriors in best.items()})
    seconds["rotation"] = clock.lap()
    seconds["total"] = sum(seconds.values())
    per_image = {"log_px": log_px, "encoder_elbo": encoder_elbo}
    for name, result in optimized.items():
        per_image[f"{name}_elbo"], per_image[f"{name}_steps"] = result["elbo"], result["steps"]
    return {"rows": gap_rows(log_px, encoder_elbo, optimized, encoder.family.name),
            "log_px": {"proposal": proposal, "samples": settings.iwae_samples},
            "rotation": rotation, "seconds": seconds, "per_image": per_image}


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


def model_gaps(model, pixels, settings: GapsConfig = None, progress: Optional[Callable] = None):
    """inference_gaps for a trained VAE on the first settings.images rows of `pixels` (binary test images),
    for the families in settings.families that can start from its encoder; the others are listed under
    "skipped" with the reason. The result also holds "settings" and "encoder_family"."""
    settings = OmegaConf.structured(settings or GapsConfig())
    x = pixels[:settings.images]
    with torch.no_grad():
        heads = torch.cat([model.encoder(batch) for batch in x.split(1000)])
    encoder = Posteriors(model.family, model.family_values, model.latent_dim, heads)
    starts, skipped = {}, {}
    # the run's own family first: its q* gives Cremer et al.'s amortization gap
    for name in dict.fromkeys([model.family.name, *map(str, settings.families)]):
        try:
            starts[name] = start_posteriors(encoder, name, settings.rank)
        except UnsupportedFamily as reason:
            log.warning("gaps: skipping %s: %s", name, reason)
            skipped[name] = str(reason)
    if not starts:
        raise UnsupportedFamily(f"none of {list(settings.families)} can start from a {model.family.name} encoder")
    samples_per_call = default_chunk_size(model, 100, x.device)
    was_training = model.training
    model.eval()
    try:
        with frozen(model):
            result = inference_gaps(model.log_likelihood, x, encoder, starts, settings, samples_per_call, progress)
    finally:
        model.train(was_training)
    result.update(skipped=skipped, encoder_family=model.family.name,
                  settings=OmegaConf.to_container(settings, enum_to_str=True))
    return result


# --- A run folder: `vae-compare gaps` ------------------------------------------------------------------------

GAPS_JSON, GAPS_CSV = "gaps.json", "gaps.csv"
# The keys of the run's own config that the command line may change: where the data is, where to compute.
RUN_KEYS = ("device", "data.root")
# The rotation diagnostic's numbers, in its table and in TensorBoard.
ROTATION_COLUMNS = ("total_correlation", "total_correlation_rotated_mean_cov", "total_correlation_rotated_joint",
                    "diag_reverse_kl", "diag_reverse_kl_rotated_mean_cov", "diag_reverse_kl_rotated_joint")


def parse_overrides(overrides):
    """(GapsConfig node, overrides of the run's own config) from `gaps.<key>=value`, device=..., data.root=...;
    UserError, one line, for anything else or a value out of range."""
    from vae_compare import UserError
    from vae_compare.config import check_ranges

    gaps_values, run_values = [], []
    for override in overrides:
        name = override.split("=", 1)[0]
        if "=" in override and name.startswith("gaps."):
            gaps_values.append(override[len("gaps."):])
        elif "=" in override and name in RUN_KEYS:
            run_values.append(override)
        else:
            raise UserError(f"gaps takes gaps.<key>=value and {', '.join(RUN_KEYS)} overrides, got {override!r} "
                            f"(keys: {', '.join('gaps.' + item.name for item in dataclasses.fields(GapsConfig))})")
    try:
        settings = OmegaConf.merge(OmegaConf.structured(GapsConfig), OmegaConf.from_dotlist(gaps_values))
    except Exception as error:  # OmegaConf raises several types for unknown keys and bad values
        raise UserError(f"bad gaps override: {str(error).splitlines()[0]}") from None
    check_ranges(OmegaConf.create({"gaps": settings}), GapsConfig, "gaps.")
    return settings, run_values


class ProgressBars:
    """progress(stage, done, total) as one rich progress bar per stage."""

    def __init__(self, progress, prefix=""):
        self.progress, self.prefix, self.tasks = progress, prefix, {}

    def __call__(self, stage, done, total):
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"{self.prefix}{stage}", total=total)
        self.progress.update(self.tasks[stage], completed=done)


def run_gaps(folder, settings, run_overrides, progress=None):
    """model_gaps of a finished run's best weights on its test images; writes gaps.csv, TensorBoard scalars under
    gaps/ and gaps.json (last: a run with gaps.json is measured). Returns gaps.json's content."""
    from vae_compare import UserError, data, export
    from vae_compare.finish import run_config, run_label
    from vae_compare.model import build_model
    from vae_compare.train import pick_device

    summary = export.read_summary(folder)
    if summary is None:
        raise UserError(f"{folder} has not finished training; finish it first: vae-compare train resume={folder}")
    cfg = run_config(folder, run_overrides)
    device = pick_device(cfg.device)
    model = build_model(cfg).to(device)
    model.load_state_dict(export.load_torch(folder / export.BEST))
    _, test = data.load_test(cfg.data, device)
    if settings.images > len(test):
        raise UserError(f"gaps.images={settings.images} but the run's test set has {len(test)} images")
    result = model_gaps(model, test.pixels, settings, progress)
    del result["per_image"]
    result["run"] = {"label": run_label(cfg), "family": model.family.name, "latent_dim": cfg.latent_dim,
                     "seed": cfg.seed, "dataset": str(cfg.data.name), "best_epoch": summary["best_epoch"],
                     "run_log_px": summary.get("test", {}).get("log_px"),
                     "run_iwae_samples": summary.get("test", {}).get("iwae_samples")}
    export.write_csv(folder / GAPS_CSV, [{**row, "log_px_proposal": result["log_px"]["proposal"],
                                          "iwae_samples": result["log_px"]["samples"]} for row in result["rows"]])
    tensorboard = export.TensorBoard(folder)
    try:
        step = summary["best_epoch"]
        tensorboard.scalars({"log_px": result["rows"][0]["log_px"], "encoder_elbo": result["rows"][0]["encoder_elbo"]},
                            step, "gaps")
        for row in result["rows"]:
            tensorboard.scalars({f"{row['family']}_{name}": row[name] for name in
                                 ("optimized_elbo", "approximation_gap", "amortization_gap", "inference_gap")},
                                step, "gaps")
        for q, numbers in result["rotation"].items():
            tensorboard.scalars({f"{q}_{name}": numbers[name] for name in ROTATION_COLUMNS}, step, "gaps/rotation")
    finally:
        tensorboard.close()
    export.write_json(folder / GAPS_JSON, result)
    return result


def read_gaps(folder):
    """A run's gaps.json, or None."""
    import json

    try:
        return json.loads((folder / GAPS_JSON).read_text())
    except (OSError, ValueError):
        return None


def gaps_tables(result):
    """The rich tables of one run's gaps.json: the gaps per q*, and the rotation diagnostic per q."""
    from rich.table import Table

    def plus_minus(row, name):
        return f"{row[name]:.2f} ± {row[name + '_stderr']:.2f}"

    run, first = result["run"], result["rows"][0]
    log_px = result["log_px"]
    gaps_table = Table(title=f"{run['label']}, latent_dim {run['latent_dim']}, seed {run['seed']}: inference gaps on "
                             f"{first['images']} test images, nats, mean ± standard error. log p(x) "
                             f"{plus_minus(first, 'log_px')} (IWAE k={log_px['samples']}, {log_px['proposal']}'s q* "
                             f"as proposal); ELBO of the encoder's q(z|x) {plus_minus(first, 'encoder_elbo')}",
                       caption="approximation = log p(x) − ELBO(q*), amortization = ELBO(q*) − ELBO(q(z|x)); "
                               "start: the encoder's q, or the diagonal Gaussian closest to it")
    for column in ("q*", "start", "ELBO of q*", "approximation", "amortization", "steps", "s"):
        gaps_table.add_column(column, justify="left" if column in ("q*", "start") else "right")
    for row in result["rows"]:
        gaps_table.add_row(row["family"], row["start"],
                           plus_minus(row, "optimized_elbo"), plus_minus(row, "approximation_gap"),
                           plus_minus(row, "amortization_gap"), f"{row['steps_mean']:.0f}", f"{row['seconds']:.0f}")
    rotation_table = Table(title="Correlation one global rotation R removes (nats per image, mean)",
                           caption="total correlation: KL(q ‖ product of its marginals), the forward direction (the "
                                   "log-det gap); reverse KL: min over diagonal q' of KL(q' ‖ q). R: eigenvectors of "
                                   "E_x[Σ(x)], or the joint diagonalisation (Pham's criterion over rotations).")
    for column in ("q", "total corr.", "R: E[Σ]", "R: joint", "reverse KL", "R: E[Σ]", "R: joint"):
        rotation_table.add_column(column, justify="left" if column == "q" else "right")
    for q, numbers in result["rotation"].items():
        rotation_table.add_row("q(z|x)" if q == "encoder" else f"q*:{q}", *(f"{numbers[c]:.3f}" for c in ROTATION_COLUMNS))
    return gaps_table, rotation_table


def gaps_main(folder, overrides, console):
    """`vae-compare gaps FOLDER [overrides]`: the gaps of every finished run at or below FOLDER (a run, a sweep or
    an outputs folder). A run whose gaps.json has the same settings is skipped, so a rerun finishes the rest."""
    from rich.progress import Progress

    from vae_compare import UserError, lock
    from vae_compare.report.collect import find_runs

    settings, run_overrides = parse_overrides(overrides)
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    runs, unfinished = find_runs(folder)
    if not runs:
        raise UserError(f"no finished run at or below {folder}" + (f" ({unfinished} unfinished: finish them with "
                                                                   "vae-compare train resume=RUN_FOLDER)" if unfinished else ""))
    wanted = OmegaConf.to_container(settings, enum_to_str=True)
    results = []
    for index, run in enumerate(runs, 1):
        existing = read_gaps(run["folder"])
        if existing is not None and existing.get("settings") == wanted:
            console.print(f"[{index}/{len(runs)}] {run['folder']}: measured already ({GAPS_JSON})")
            results.append(existing)
            continue
        console.print(f"[{index}/{len(runs)}] {run['folder']}")
        with lock.hold(run["folder"]), Progress(console=console, transient=True) as progress:
            result = run_gaps(run["folder"], settings, run_overrides, ProgressBars(progress))
        for table in gaps_tables(result):
            console.print(table)
        results.append(result)
    if unfinished:
        console.print(f"{unfinished} unfinished run(s) below {folder} left out")
    return results
