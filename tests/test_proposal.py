"""eval.log_px_proposal=qstar (vae_compare/proposal.py) against the closed-form log p(x) of a linear-Gaussian model,
started from an encoder q of every family: the estimate must not depend on which family the encoder is."""

import pytest
import torch

from test_gaps import LATENT, LinearGaussian
from test_posteriors import make_case, valid_ranks
from vae_compare.evaluate import importance_log_px
from vae_compare.posteriors import FAMILIES, Noise
from vae_compare.proposal import fitted_proposal
from vae_compare.qstar import full_covariance_start

SAMPLES = 2000


@pytest.fixture(scope="module")
def linear():
    return LinearGaussian()


def encoder_covariances(family, images, seed):
    """The covariances of random members of `family` (scales 0.3 to 2): a poor amortised q's."""
    torch.manual_seed(seed)
    q, _ = make_case(family, images, LATENT, valid_ranks(family, LATENT)[0], scale_range=(0.3, 2.0))
    return q.covariance()


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_the_fitted_proposal_gives_the_exact_log_px_from_every_family(linear):
    means = 0.7 * linear.posterior_mean  # a poor amortised mean, as test_gaps' encoder
    errors = {}
    for seed, family in enumerate(FAMILIES):
        covariances = encoder_covariances(family, len(linear.x), seed)
        proposal = fitted_proposal(linear.log_likelihood, linear.x, means, covariances, steps=300, samples=4,
                                   noise=Noise(1, "cpu"))
        estimate = importance_log_px(linear.log_likelihood, linear.x, proposal.distribution, SAMPLES, 500,
                                     noise=Noise(0, "cpu"))
        errors[family] = estimate - linear.log_px
        # the encoder's q itself as the proposal is far off: the test has power
        unfitted = importance_log_px(linear.log_likelihood, linear.x, full_covariance_start(means, covariances).distribution,
                                     SAMPLES, 500, noise=Noise(0, "cpu"))
        assert (unfitted - linear.log_px).abs().max() > 0.05, family
    for family, error in errors.items():
        assert error.abs().max() < 0.03, (family, error)  # IWAE noise at k = 2000 is about 0.01
    means_of_errors = [error.mean().item() for error in errors.values()]
    assert max(means_of_errors) - min(means_of_errors) < 0.01  # the target: < 0.1 nat between families
