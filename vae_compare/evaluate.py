"""Evaluation of a trained VAE: ELBO terms, importance-sampled log p(x), active units, posterior diagnostics."""

import math
import time

import torch
from rich.progress import Progress
from torch import nn

from vae_compare.posteriors import LOG_2PI, Noise


@torch.no_grad()
def elbo_terms(model, split, batch_size=1000):
    """Mean per-image ELBO, KL and reconstruction term (-log p(x|z), one sample) over a split, in nats.

    Sums stay on the device; one host sync at the end.
    """
    sums = torch.zeros(2, device=split.pixels.device)
    for batch in split.batches(batch_size):
        recon, kl = model(batch)
        sums += torch.stack((recon.sum(), kl.sum()))
    recon, kl = (sums / len(split)).tolist()
    return {"elbo": -(recon + kl), "kl": kl, "recon": recon}


# Floats in the decoder's widest activation per call when chunk_size is None. On a GPU, 2^24 float32
# values (64 MiB per tensor) keep the device busy. On a CPU the elementwise passes (log-sigmoid, ReLU)
# must stay in cache: 2^20 (4 MiB) ran the IWAE pass at 79% of the matmul rate against 48% with 2^24
# (scripts/bench.py, README "Speed").
DECODER_ELEMENT_BUDGET = {"cuda": 2 ** 24, "cpu": 2 ** 20}
IWAE_BATCH_SIZE = 100
# The condition number is computed on the first this-many images only: an eigendecomposition per image
# of a 10000-image test set costs more than it tells, and the median over 2000 images is stable.
CONDITION_NUMBER_IMAGES = 2000


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def default_chunk_size(model, batch_size, device):
    """Samples per decoder call so that (samples x images x widest decoder layer) stays near the budget."""
    widest = max(layer.out_features for layer in model.decoder if isinstance(layer, nn.Linear))
    budget = DECODER_ELEMENT_BUDGET.get(device.type, DECODER_ELEMENT_BUDGET["cpu"])
    return max(1, budget // (batch_size * widest))


def log_weight_chunks(model, x, num_samples, chunk_size, noise=None):
    """Importance log-weights log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x), for a batch of images, in
    chunks of shape (samples, images) that add up to num_samples samples."""
    q = model.posterior(x)
    for start in range(0, num_samples, chunk_size):
        z, log_q = q.rsample_and_log_prob(min(chunk_size, num_samples - start), noise)
        yield model.log_likelihood(x, z) + standard_normal_log_prob(z) - log_q


@torch.no_grad()
def iwae_log_px(model, split, num_samples, chunk_size=None, batch_size=None, show_progress=False, noise=None):
    """Per-image importance-sampled estimate of log p(x) in nats (Burda et al. 2016), shape (N,).

    log p(x) ~ log (1/k) sum_s p(x|z_s) p(z_s) / q(z_s|x), with z_s ~ q(z|x). The k samples are drawn
    chunk_size at a time and folded into a running logsumexp, so memory does not grow with k.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    batch_size = batch_size or IWAE_BATCH_SIZE
    chunk_size = chunk_size or default_chunk_size(model, batch_size, split.pixels.device)
    estimates = []
    # a disabled Progress draws nothing, so one code path serves both cases
    with Progress(transient=False, disable=not show_progress) as progress:
        task = progress.add_task(f"log p(x), k={num_samples}", total=len(split))
        for x in split.batches(batch_size):
            # -inf is logsumexp's identity, so the first chunk needs no special case
            log_sum_w = torch.full((x.shape[0],), -math.inf, dtype=split.pixels.dtype, device=x.device)
            for log_w in log_weight_chunks(model, x, num_samples, chunk_size, noise):
                log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, 0))
            estimates.append(log_sum_w - math.log(num_samples))
            progress.advance(task, x.shape[0])
    return torch.cat(estimates)


@torch.no_grad()
def k_curve(model, split, ks, chunk_size=None, batch_size=None, noise=None):
    """Mean IWAE estimate of log p(x) at each k in ks, from nested samples: the estimate at k uses the first
    k of the largest k's samples, so the curve shows how far the estimate is from converged."""
    largest = max(ks)
    batch_size = batch_size or IWAE_BATCH_SIZE
    chunk_size = chunk_size or default_chunk_size(model, batch_size, split.pixels.device)
    sums = dict.fromkeys(ks, 0.0)
    for x in split.batches(batch_size):
        log_w = torch.cat(list(log_weight_chunks(model, x, largest, chunk_size, noise))).double()
        for k in ks:
            sums[k] += (torch.logsumexp(log_w[:k], 0) - math.log(k)).sum().item()
    return {k: total / len(split) for k, total in sums.items()}


def summarize_log_px(values):
    """(mean, standard error of the mean) of per-image log p(x) estimates, as Python floats."""
    values = values.double()
    count = values.numel()
    # the sample standard deviation (N - 1) is undefined for one image; report no spread then
    stderr = values.std() / math.sqrt(count) if count > 1 else values.new_zeros(())
    return values.mean().item(), stderr.item()


@torch.no_grad()
def posterior_means(model, split, batch_size=1000):
    """E_q[z|x] of every image, (N, d), in float64."""
    return torch.cat([model.posterior(x).mean for x in split.batches(batch_size)]).double()


def active_units(means, threshold=0.01):
    """Coordinates whose posterior mean varies over the data: Var_x(E_q[z_i|x]) > threshold (Burda et al. 2016).
    The count depends on the basis: a posterior that rotates its informative directions off the axes
    counts more units than it uses."""
    # the population variance, as in Burda et al.
    return int((means.var(0, correction=0) > threshold).sum().item())


def active_directions(means, threshold=0.01):
    """The rotation-invariant count: eigenvalues of Cov_x(E_q[z|x]) above threshold, i.e. directions of the
    latent space along which the posterior mean varies, whatever the basis."""
    if means.shape[0] < 2:
        return 0
    covariance = torch.cov(means.T, correction=0).reshape(means.shape[1], means.shape[1])
    return int((torch.linalg.eigvalsh(covariance) > threshold).sum().item())


@torch.no_grad()
def posterior_diagnostics(model, split, batch_size=1000):
    """How far q's covariance is from diagonal, averaged over a split.

    offdiag_corr: mean over images of the mean |correlation| between distinct latent dimensions.
    logdet_gap: mean over images of 1/2 (sum_i log Sigma_ii - log det Sigma) >= 0 (Hadamard's inequality),
        the total correlation of q in nats: what a diagonal Gaussian with the same variances loses.
    condition_number: median (torch's: the lower middle value) over the first CONDITION_NUMBER_IMAGES images
        of max/min eigenvalue of Sigma.
    """
    device = split.pixels.device
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    condition_numbers = []
    seen = 0
    for x in split.batches(batch_size):
        q = model.posterior(x)
        covariance = q.covariance().double()
        d = covariance.shape[-1]
        if d > 1:
            std = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
            correlation = covariance / (std.unsqueeze(-1) * std.unsqueeze(-2))
            off_diagonal = ~torch.eye(d, dtype=torch.bool, device=device)
            offdiag_corr = correlation.abs()[:, off_diagonal].mean(-1)
        else:
            offdiag_corr = covariance.new_zeros(x.shape[0])
        # q's own log-det (closed form per family) rather than a d x d factorisation here
        logdet_gap = 0.5 * (q.variances().double().log().sum(-1) - q.log_det_cov().double())
        sums += torch.stack((offdiag_corr.sum(), logdet_gap.sum()))
        if seen < CONDITION_NUMBER_IMAGES:
            # float64 eigenvalues, but of a covariance formed in the model's dtype: in float32, ratios
            # beyond ~1e6 are dominated by that rounding
            eigenvalues = torch.linalg.eigvalsh(covariance[:CONDITION_NUMBER_IMAGES - seen])
            smallest, largest = eigenvalues[:, 0], eigenvalues[:, -1]
            # a numerically singular covariance has no finite condition number
            condition_numbers.append(torch.where(smallest > 0, largest / smallest, math.inf))
        seen += x.shape[0]
    offdiag_corr, logdet_gap = (sums / len(split)).tolist()
    return {"offdiag_corr": offdiag_corr, "logdet_gap": logdet_gap,
            "condition_number": torch.cat(condition_numbers).median().item()}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# k of the IWAE convergence curve (beside the run's own k), on eval.k_curve_images test images.
K_CURVE = (1, 10, 100, 1000)


def final_metrics(model, split, eval_cfg, batch_size=1000, show_progress=False, seed=0):
    """All test-set numbers of a finished run, as a flat dict of Python floats and ints.

    batch_size applies to the single-pass evaluations; the IWAE pass picks its own image batch so that
    eval_cfg.chunk_size keeps meaning "samples per decoder call per IWAE_BATCH_SIZE images". The noise comes
    from generators seeded by `seed`, so two families evaluated at one seed share their first-d noise.
    """
    device = split.pixels.device
    metrics = elbo_terms(model, split, batch_size)
    # sync first so queued work from before is not billed to the IWAE pass
    synchronize(device)
    start = time.perf_counter()
    log_px = iwae_log_px(model, split, eval_cfg.iwae_samples, chunk_size=eval_cfg.chunk_size,
                         show_progress=show_progress, noise=Noise(seed, device))
    synchronize(device)
    iwae_seconds = time.perf_counter() - start
    metrics["log_px"], metrics["log_px_stderr"] = summarize_log_px(log_px)
    metrics["iwae_samples"] = int(eval_cfg.iwae_samples)
    metrics["iwae_seconds"] = iwae_seconds
    means = posterior_means(model, split, batch_size)
    metrics["active_units"] = active_units(means, eval_cfg.active_threshold)
    metrics["active_directions"] = active_directions(means, eval_cfg.active_threshold)
    metrics.update(posterior_diagnostics(model, split, batch_size))
    # the estimator's own convergence: a richer q also tightens the IWAE bound at a given k
    ks = sorted({k for k in K_CURVE if k <= eval_cfg.iwae_samples} | {eval_cfg.iwae_samples})
    subset = type(split)(split.pixels[:eval_cfg.k_curve_images])
    curve = k_curve(model, subset, ks, eval_cfg.chunk_size, noise=Noise(seed + 1, device))
    metrics.update({f"log_px_k{k}": value for k, value in curve.items()})
    metrics["k_curve_images"] = len(subset)
    return metrics
