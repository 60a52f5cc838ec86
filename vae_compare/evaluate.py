"""Evaluation of a trained VAE: the ELBO, importance-sampled log p(x), active units, posterior diagnostics.

One implementation per quantity, for any model with a standard-normal prior given as `log_likelihood(x, z)`,
log p(x|z) for images x of shape (B, ...) and z of shape (S, B, d), giving (S, B) (VAE.log_likelihood has this
form), and a posterior q with the families' interface. Training's validation ELBO, the final evaluation and the
gaps command's estimates all go through `elbo_draws` and `log_weight_chunks`.
"""

import math

import torch
from torch import nn

from vae_compare.posteriors import LOG_2PI, Noise
from vae_compare.runtime import Clock

# Floats in the decoder's widest activation per call when chunk_size is None. On a GPU, 2^24 float32
# values (64 MiB per tensor) keep the device busy. On a CPU the elementwise passes (log-sigmoid, ReLU)
# must stay in cache: 2^20 (4 MiB) ran the IWAE pass at 79% of the matmul rate against 48% with 2^24
# (scripts/bench.py, docs/speed.md).
DECODER_ELEMENT_BUDGET = {"cuda": 2 ** 24, "cpu": 2 ** 20}
IWAE_BATCH_SIZE = 100
# The condition number is computed on the first this-many images only: an eigendecomposition per image
# of a 10000-image test set costs more than it tells, and the median over 2000 images is stable.
CONDITION_NUMBER_IMAGES = 2000
# k of the IWAE convergence curve (beside the run's own k), on eval.k_curve_images test images.
K_CURVE = (1, 10, 100, 1000)


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def default_chunk_size(model, batch_size, device):
    """Samples per decoder call so that (samples x images x widest decoder layer) stays near the budget."""
    widest = max(layer.out_features for layer in model.decoder if isinstance(layer, nn.Linear))
    budget = DECODER_ELEMENT_BUDGET.get(device.type, DECODER_ELEMENT_BUDGET["cpu"])
    return max(1, budget // (batch_size * widest))


def sample_calls(samples, samples_per_call):
    """Sizes of the successive sample chunks that make up `samples`."""
    return [min(samples_per_call, samples - first) for first in range(0, samples, samples_per_call)]


# ---- the ELBO --------------------------------------------------------------------------------------------
def elbo_draws(log_likelihood, x, q, samples, samples_per_call=None, noise=None):
    """The ELBO of q on images x by Monte Carlo: log p(x|z_s) for `samples` reparameterised draws z_s ~ q, as
    chunks of shape (count, B) with count <= samples_per_call (one chunk without it), and KL(q || N(0, I)), (B,):

        ELBO = E_q[log p(x|z)] - KL(q || N(0, I))  ~  mean over s of log p(x|z_s) - KL

    Every family has the KL to the standard-normal prior in closed form, so only the likelihood term is sampled:
    lower variance than sampling log p(x, z) - log q(z) as a whole."""
    chunks = [log_likelihood(x, q.rsample(count, noise)) for count in sample_calls(samples, samples_per_call or samples)]
    return chunks, q.kl_to_standard_normal()


def elbo(log_likelihood, x, q, samples=1, noise=None):
    """Per-image ELBO estimate (B,) from `samples` draws in one decoder call, in q's dtype and differentiable
    (q*'s objective)."""
    (draws,), kl = elbo_draws(log_likelihood, x, q, samples, noise=noise)
    return draws.mean(0) - kl


@torch.no_grad()
def elbo_terms(model, split, batch_size=1000):
    """Mean per-image ELBO, KL and reconstruction term (-log p(x|z), one sample) over a split, in nats.

    The noise comes from torch's global RNG (training seeds and checkpoints it). Sums stay on the device; one
    host sync at the end.
    """
    sums = torch.zeros(2, device=split.pixels.device)
    for batch in split.batches(batch_size):
        (draws,), kl = elbo_draws(model.log_likelihood, batch, model.posterior(batch), 1)
        sums += torch.stack(((-draws).sum(), kl.sum()))
    recon, kl = (sums / len(split)).tolist()
    return {"elbo": -(recon + kl), "kl": kl, "recon": recon}


@torch.no_grad()
def elbo_estimate(log_likelihood, x, posterior, samples, samples_per_call=16, batch_images=100, noise=None,
                  progress=None, stage="ELBO"):
    """Per-image ELBO of q = posterior(rows) on the images x[rows], from `samples` draws each, and its Monte Carlo
    standard error (sd of log p(x|z_s) / sqrt(samples)): two (N,) float64 tensors.

    Give every posterior compared a fresh Noise of one seed: they then draw the same standard-normal noise
    (common random numbers), so the difference of two ELBOs, the amortization gap, does not carry two independent
    sampling errors. `progress(stage, done, total)`, if given, is called after each batch of images.
    """
    elbos, stderrs = [], []
    for first in range(0, len(x), batch_images):
        rows = slice(first, first + batch_images)
        draws, kl = elbo_draws(log_likelihood, x[rows], posterior(rows), samples, samples_per_call, noise)
        total = torch.zeros(kl.shape[0], dtype=torch.float64, device=x.device)
        total_squares = torch.zeros_like(total)
        for value in draws:
            value = value.double()
            total += value.sum(0)
            total_squares += value.square().sum(0)
        mean = total / samples
        # float64 sums: the variance of values near -100 nats by E[v^2] - E[v]^2 keeps ~10 digits
        variance = (total_squares / samples - mean.square()).clamp_min(0) * samples / max(samples - 1, 1)
        elbos.append(mean - kl.double())
        stderrs.append((variance / samples).sqrt())
        if progress:
            progress(stage, min(first + batch_images, len(x)), len(x))
    return torch.cat(elbos), torch.cat(stderrs)


# ---- log p(x) by importance sampling ---------------------------------------------------------------------
def log_weight_chunks(log_likelihood, x, q, samples, samples_per_call, noise=None):
    """Importance log-weights log p(x|z) + log N(z; 0, I) - log q(z), z ~ q, for a batch of images x, in
    chunks of shape (count, B) that add up to `samples` samples."""
    for count in sample_calls(samples, samples_per_call):
        z, log_q = q.rsample_and_log_prob(count, noise)
        yield log_likelihood(x, z) + standard_normal_log_prob(z) - log_q


def iwae_batch(log_likelihood, x, q, samples, samples_per_call, noise=None):
    """log p(x) ~ log (1/k) sum_s p(x|z_s) N(z_s; 0, I) / q(z_s) with z_s ~ q, for one batch of images: (B,).

    The k samples are drawn samples_per_call at a time and folded into a running logsumexp, so memory does not
    grow with k."""
    # -inf is logsumexp's identity, so the first chunk needs no special case
    log_sum_w = torch.full((x.shape[0],), -math.inf, dtype=q.mean.dtype, device=x.device)
    for log_w in log_weight_chunks(log_likelihood, x, q, samples, samples_per_call, noise):
        log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, 0))
    return log_sum_w - math.log(samples)


@torch.no_grad()
def importance_log_px(log_likelihood, x, posterior, samples, samples_per_call, batch_images=IWAE_BATCH_SIZE,
                      noise=None, progress=None):
    """Per-image IWAE estimate of log p(x) (Burda et al. 2016) with q = posterior(rows) as the proposal for the
    images x[rows], shape (N,). `progress(stage, done, total)`, if given, is called after each batch."""
    estimates = []
    for first in range(0, len(x), batch_images):
        rows = slice(first, first + batch_images)
        estimates.append(iwae_batch(log_likelihood, x[rows], posterior(rows), samples, samples_per_call, noise))
        if progress:
            progress(f"log p(x), k={samples}", min(first + batch_images, len(x)), len(x))
    return torch.cat(estimates)


def iwae_log_px(model, split, num_samples, chunk_size=None, batch_size=None, noise=None, progress=None):
    """Per-image importance-sampled estimate of log p(x) in nats with the model's own q(z|x) as the proposal,
    shape (N,): importance_log_px, chunk_size samples per decoder call (default_chunk_size without it)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    batch_size = batch_size or IWAE_BATCH_SIZE
    chunk_size = chunk_size or default_chunk_size(model, batch_size, split.pixels.device)
    x = split.pixels
    return importance_log_px(model.log_likelihood, x, lambda rows: model.posterior(x[rows]), num_samples, chunk_size,
                             batch_size, noise, progress)


@torch.no_grad()
def k_curve(model, split, ks, chunk_size=None, batch_size=None, noise=None):
    """Mean IWAE estimate of log p(x) at each k in ks, from nested samples: the estimate at k uses the first
    k of the largest k's samples, so the curve shows how far the estimate is from converged."""
    largest = max(ks)
    batch_size = batch_size or IWAE_BATCH_SIZE
    chunk_size = chunk_size or default_chunk_size(model, batch_size, split.pixels.device)
    sums = dict.fromkeys(ks, 0.0)
    for x in split.batches(batch_size):
        chunks = log_weight_chunks(model.log_likelihood, x, model.posterior(x), largest, chunk_size, noise)
        log_w = torch.cat(list(chunks)).double()
        for k in ks:
            sums[k] += (torch.logsumexp(log_w[:k], 0) - math.log(k)).sum().item()
    return {k: total / len(split) for k, total in sums.items()}


# ---- summaries and diagnostics ---------------------------------------------------------------------------
def summarize_log_px(values):
    """(mean, standard error of the mean) of per-image log p(x) estimates, as Python floats."""
    values = values.double()
    count = values.numel()
    # the sample standard deviation (N - 1) is undefined for one image; report no spread then
    stderr = values.std() / math.sqrt(count) if count > 1 else values.new_zeros(())
    return values.mean().item(), stderr.item()


def mean_and_stderr(prefix, values):
    """{prefix: mean over images, prefix_stderr: standard error of that mean} for per-image values (N,)."""
    mean, stderr = summarize_log_px(values)
    return {prefix: mean, f"{prefix}_stderr": stderr}


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


def final_metrics(model, split, eval_cfg, batch_size=1000, progress=None, seed=0, log_px_estimate=None):
    """All test-set numbers of a finished run, as a flat dict of Python floats and ints.

    batch_size applies to the single-pass evaluations; the IWAE pass picks its own image batch so that
    eval_cfg.chunk_size keeps meaning "samples per decoder call per IWAE_BATCH_SIZE images". The noise comes
    from generators seeded by `seed`, so two families evaluated at one seed share their first-d noise.
    `progress(stage, done, total)`, if given, follows the IWAE pass. log_px_estimate(model, split, eval_cfg, seed,
    progress), if given, replaces the encoder-proposal IWAE of log p(x) (eval.log_px_proposal: proposal.py).
    """
    device = split.pixels.device
    metrics = elbo_terms(model, split, batch_size)
    # the clock waits for queued work first, so work from before is not billed to the IWAE pass
    clock = Clock(device)
    if log_px_estimate is None:
        log_px = iwae_log_px(model, split, eval_cfg.iwae_samples, chunk_size=eval_cfg.chunk_size,
                             noise=Noise(seed, device), progress=progress)
    else:
        log_px = log_px_estimate(model, split, eval_cfg, seed, progress)
    iwae_seconds = clock.lap()
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
