"""Check annealed importance sampling (vae_compare/ais.py) against exact values and against IWAE.

Exact values come from the linear-Gaussian closed form and, for a Bernoulli decoder at latent_dim 2, from
quadrature (test_quadrature's models). AIS is random, so comparisons with exact values allow four of its
standard errors.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from test_quadrature import DTYPE, BernoulliDecoder, LinearGaussian, one_thread  # noqa: F401 (a fixture)
from vae_compare.ais import ais_log_px, sigmoid_schedule
from vae_compare.evaluate import standard_normal_log_prob
from vae_compare.quadrature import quadrature_log_px


def prior_start(images, latent):
    return torch.zeros(images, latent, dtype=DTYPE), torch.eye(latent, dtype=DTYPE).expand(images, latent, latent)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def iwae(log_likelihood, x, mean, scale_tril, samples, generator):
    """IWAE with proposal N(mean, scale_tril scale_tril^T), its noise drawn as ais_log_px draws its start."""
    eps = torch.randn((samples,) + mean.shape, dtype=mean.dtype, generator=generator)
    z = mean + torch.einsum("bij,kbj->kbi", scale_tril, eps)
    log_w = (log_likelihood(x, z) + standard_normal_log_prob(z)
             - MultivariateNormal(mean, scale_tril=scale_tril).log_prob(z))
    return log_w.logsumexp(0) - math.log(samples)


@pytest.fixture(scope="module")
def linear():
    return LinearGaussian(images=8)


@pytest.fixture(scope="module")
def bernoulli():
    model = BernoulliDecoder(images=8)
    model.log_px = quadrature_log_px(model.log_likelihood, model.x, *model.box(), tolerance=1e-3).log_px
    return model


@pytest.fixture(scope="module")
def bernoulli_ais(bernoulli):
    return ais_log_px(bernoulli.log_likelihood, bernoulli.x, *bernoulli.box(), chains=32, temperatures=200,
                      leapfrog_steps=5, generator=seeded(0))


def test_the_schedule_runs_from_0_to_1_with_short_steps_at_both_ends():
    betas = sigmoid_schedule(100)
    steps = betas.diff()
    assert betas[0] == 0 and betas[-1] == 1 and (steps > 0).all()
    assert steps[0] < steps[50] / 10 and steps[-1] < steps[50] / 10
    assert torch.allclose(sigmoid_schedule(4, sharpness=0), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=DTYPE))


def test_starting_at_the_exact_posterior_gives_log_px_exactly(linear):
    """Then log p(x, z) - log q0(z) = log p(x) at every z, so every chain's weight is exact wherever it moves."""
    result = ais_log_px(linear.log_likelihood, linear.x, linear.posterior_mean, linear.posterior_tril, chains=4,
                        temperatures=10, leapfrog_steps=2, generator=seeded(0))
    assert (result.log_px - linear.log_px).abs().max() < 1e-10
    assert result.stderr.max() < 1e-10


def test_one_temperature_is_iwae_with_the_same_draws(linear):
    start = prior_start(8, 2)
    result = ais_log_px(linear.log_likelihood, linear.x, *start, chains=64, temperatures=1, generator=seeded(3))
    expected = iwae(linear.log_likelihood, linear.x, *start, 64, seeded(3))
    assert torch.allclose(result.log_px, expected, rtol=0, atol=1e-10)


def test_linear_gaussian_from_the_prior(linear):
    result = ais_log_px(linear.log_likelihood, linear.x, *prior_start(8, 2), chains=32, temperatures=200,
                        leapfrog_steps=5, generator=seeded(1))
    error, stderr = (result.log_px - linear.log_px).mean(), result.stderr.square().mean().sqrt() / math.sqrt(8)
    assert abs(error) < 4 * stderr
    assert stderr < 0.1


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_bernoulli_decoder_against_quadrature(bernoulli, bernoulli_ais):
    error = bernoulli_ais.log_px - bernoulli.log_px
    assert (error.abs() < 4 * bernoulli_ais.stderr).all()
    assert abs(error.mean()) < 4 * bernoulli_ais.stderr.square().mean().sqrt() / math.sqrt(8)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_the_step_size_reaches_the_target_acceptance(bernoulli_ais):
    assert (bernoulli_ais.acceptance - 0.65).abs().max() < 0.1


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_doubling_chains_and_temperatures_moves_the_estimate_by_less_than_0_08_nat(bernoulli, bernoulli_ais):
    doubled = ais_log_px(bernoulli.log_likelihood, bernoulli.x, *bernoulli.box(), chains=64, temperatures=400,
                         leapfrog_steps=5, generator=seeded(1))
    assert abs((doubled.log_px - bernoulli_ais.log_px).mean()) < 0.08


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_a_seed_gives_the_same_result_every_time(bernoulli):
    def run(seed):
        return ais_log_px(bernoulli.log_likelihood, bernoulli.x, *bernoulli.box(), chains=4, temperatures=20,
                          leapfrog_steps=3, generator=seeded(seed)).log_weights

    first = run(0)
    assert torch.equal(run(0), first)
    assert not torch.equal(run(5), first)


def test_annealing_beats_iwae_with_as_many_samples_as_chains():
    """A 4-D posterior, narrow against the prior that both start from: 8 prior samples miss it, 8 annealed
    chains find it."""
    model = BernoulliDecoder(latent=4, pixels=100, images=4)
    start = prior_start(4, 4)
    annealed = ais_log_px(model.log_likelihood, model.x, *start, chains=8, temperatures=50, leapfrog_steps=5,
                          generator=seeded(0))
    plain = iwae(model.log_likelihood, model.x, *start, 8, seeded(1))
    assert (annealed.log_px > plain + 1).all()


@pytest.mark.parametrize("change, message", [
    (dict(mean=torch.zeros(4, 2)), "same B"),
    (dict(scale_tril=torch.eye(2).expand(3, 2, 2).reshape(3, 4)), "scale_tril must be"),
    (dict(chains=0), "at least 1"),
    (dict(temperatures=0), "temperatures must be at least 1"),
])
def test_bad_input_raises_one_clear_error(linear, change, message):
    arguments = dict(mean=torch.zeros(3, 2), scale_tril=torch.eye(2).expand(3, 2, 2))
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        ais_log_px(linear.log_likelihood, torch.zeros(3, 5), **arguments)
