"""Test log p(x) with a proposal that is not the family under test (eval.log_px_proposal=qstar).

The IWAE estimate's downward bias grows with the proposal's mismatch to p(z|x). With each run's own encoder as the
proposal, a family whose encoder is the better proposal gains on the estimate alone. Here every run's proposal is
of one kind: per image, a full-covariance Gaussian started at the encoder's mean and covariance (whatever the
family) and fitted to that image's ELBO on the frozen decoder (qstar.optimize_posteriors), then used for
IWAE with eval.iwae_samples draws.
"""

import torch

from vae_compare.evaluate import IWAE_BATCH_SIZE, default_chunk_size, importance_log_px
from vae_compare.posteriors import Noise
from vae_compare.qstar import Posteriors, covariances, frozen, full_covariance_start, optimize_posteriors


def fitted_proposal(log_likelihood, x, means, covariance_matrices, steps, samples, noise, progress=None):
    """Per image, the full-covariance Gaussian started at (means, covariance_matrices) after at most `steps` Adam
    steps on its own ELBO (the optimiser's stopping rule may end it sooner). Freeze the decoder first."""
    start = full_covariance_start(means, covariance_matrices)
    with torch.enable_grad():  # the heads' gradients, also when the caller evaluates under no_grad
        fitted, _ = optimize_posteriors(log_likelihood, x, start, samples=samples, steps=steps, noise=noise,
                                        progress=progress)
    return fitted


def qstar_proposal(model, split, eval_cfg, seed, progress=None):
    """The fitted full-covariance proposal of every image of split (a qstar.Posteriors), started at the encoder's
    mean and covariance; the optimiser draws from its own stream (seed + 2)."""
    x, device = split.pixels, split.pixels.device
    with torch.no_grad():
        heads = torch.cat([model.encoder(batch) for batch in x.split(1000)])
    encoder = Posteriors(model.family, model.family_values, model.latent_dim, heads)
    means = torch.cat([encoder.distribution(slice(first, first + 1000)).mean for first in range(0, len(x), 1000)])
    with frozen(model):
        return fitted_proposal(model.log_likelihood, x, means, covariances(encoder), eval_cfg.qstar_steps,
                               eval_cfg.qstar_samples, Noise(seed + 2, device), progress)


def qstar_log_px(model, split, eval_cfg, seed, progress=None, proposal=None):
    """Per-image log p(x), (N,): IWAE with eval_cfg.iwae_samples draws from the fitted full-covariance proposal
    (qstar_proposal, or the one given), from the stream the encoder proposal uses."""
    if proposal is None:
        proposal = qstar_proposal(model, split, eval_cfg, seed, progress)
    device = split.pixels.device
    chunk_size = eval_cfg.chunk_size or default_chunk_size(model, IWAE_BATCH_SIZE, device)
    return importance_log_px(model.log_likelihood, split.pixels, proposal.distribution, eval_cfg.iwae_samples,
                             chunk_size, noise=Noise(seed, device), progress=progress)
