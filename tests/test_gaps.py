"""Check the inference-gap code (vae_compare/gaps.py, qstar.py, rotation.py) against closed forms it does not use.

The central check is a linear-Gaussian model, x = W z + b + noise with noise N(0, sigma_x^2 I) and prior
N(0, I): its log p(x) and its posterior N(m, Lambda^-1), Lambda = I + W^T W / sigma_x^2, are closed-form. So
cholesky's q* must reach log p(x) (approximation gap 0), and diag's q* must fall short of it by exactly
KL(best diagonal || posterior) = 1/2 (sum_i log Lambda_ii - log det Lambda), the reverse-KL-optimal diagonal
Gaussian having the posterior's mean and variances 1 / Lambda_ii.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from conftest import MNIST, make_vae
from vae_compare import gaps, qstar, rotation
from vae_compare.gaps import GapsConfig
from vae_compare.data import cpu_bernoulli, read_images
from vae_compare.evaluate import elbo_estimate
from vae_compare.posteriors import FAMILIES, Noise

DTYPE = torch.float64
LATENT, PIXELS, SIGMA_X, IMAGES = 3, 5, 1.0, 12
# The optimiser's defaults, with a finer plateau test: this model is cheap, so the test can ask for the
# optimum to within a few hundredths of a nat.
SETTINGS = dict(samples=8, steps=2000, lr=0.02, window=50, tolerance=0.002, lr_drops=2)
DEFAULT_CHECK = GapsConfig()


class LinearGaussian:
    """x = W z + b + N(0, SIGMA_X^2 I), z ~ N(0, I), with strongly correlated columns of W so that the
    posterior is far from diagonal (KL(best diagonal || posterior) is about 0.5 nat)."""

    def __init__(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        mixing = torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.5, 0.8], [0.0, 0.0, 0.6]], dtype=DTYPE)
        self.W = torch.randn(PIXELS, LATENT, generator=generator, dtype=DTYPE) @ mixing
        self.b = torch.randn(PIXELS, generator=generator, dtype=DTYPE)
        z = torch.randn(IMAGES, LATENT, generator=generator, dtype=DTYPE)
        self.x = z @ self.W.T + self.b + SIGMA_X * torch.randn(IMAGES, PIXELS, generator=generator, dtype=DTYPE)
        self.precision = torch.eye(LATENT, dtype=DTYPE) + self.W.T @ self.W / SIGMA_X ** 2
        self.posterior_cov = torch.linalg.inv(self.precision)
        self.posterior_mean = (self.x - self.b) @ self.W @ self.posterior_cov / SIGMA_X ** 2
        marginal = MultivariateNormal(self.b, self.W @ self.W.T + SIGMA_X ** 2 * torch.eye(PIXELS, dtype=DTYPE))
        self.log_px = marginal.log_prob(self.x)

    def log_likelihood(self, x, z):
        residual = x - (z @ self.W.T + self.b)
        return (-0.5 * residual.square().sum(-1) / SIGMA_X ** 2
                - PIXELS * math.log(SIGMA_X) - 0.5 * PIXELS * math.log(2 * math.pi))

    def exact_elbo(self, q):
        """E_q[log p(x|z)] - KL(q || N(0, I)) in closed form (the likelihood is quadratic in z)."""
        residual = self.x - (q.mean @ self.W.T + self.b)
        spread = torch.einsum("pi,bij,pj->b", self.W, q.covariance(), self.W)
        expected = (-0.5 * (residual.square().sum(-1) + spread) / SIGMA_X ** 2
                    - PIXELS * math.log(SIGMA_X) - 0.5 * PIXELS * math.log(2 * math.pi))
        return expected - q.kl_to_standard_normal()

    def diagonal_gap(self):
        return 0.5 * (self.precision.diagonal().log().sum() - torch.logdet(self.precision)).item()


def family_cfg(name, transform="exp", floor=0.0, offdiag_scale=1.0, rank=0):
    return SimpleNamespace(name=name, rank=rank, scale_transform=transform, scale_floor=floor,
                           offdiag_init="zero", offdiag_scale=offdiag_scale)


@pytest.fixture(scope="module")
def linear():
    return LinearGaussian()


@pytest.fixture(scope="module")
def linear_encoder(linear):
    """A poor amortised q: 70% of the posterior mean and unit variances, so the amortization gap is large."""
    heads = torch.cat((0.7 * linear.posterior_mean, torch.zeros(IMAGES, LATENT, dtype=DTYPE)), -1)
    return qstar.Posteriors(FAMILIES["diag"], family_cfg("diag"), LATENT, heads)


@pytest.fixture(scope="module")
def linear_gaps(linear, linear_encoder):
    settings = GapsConfig(elbo_samples=4000, iwae_samples=4000, **SETTINGS)
    starts = {name: qstar.start_posteriors(linear_encoder, name) for name in ("diag", "cholesky")}
    return gaps.inference_gaps(linear.log_likelihood, linear.x, linear_encoder, starts, settings)


def test_the_linear_model_has_a_clear_diagonal_gap(linear):
    assert 0.3 < linear.diagonal_gap() < 1.5


def test_optimized_cholesky_is_the_exact_posterior(linear, linear_encoder):
    start = qstar.start_posteriors(linear_encoder, "cholesky")
    optimized, _ = qstar.optimize_posteriors(linear.log_likelihood, linear.x, start, noise=Noise(1, "cpu"),
                                            **SETTINGS)
    # exact ELBOs, no sampling: what is left is the optimiser's own error, KL(q* || posterior) (measured 0.004
    # nat at most; the covariance is then within 0.02 of the posterior's, as a KL of 0.004 allows)
    gap = linear.log_px - linear.exact_elbo(optimized.distribution())
    assert gap.max() < 0.01


def test_optimized_diag_falls_short_by_the_closed_form_kl(linear, linear_encoder):
    start = qstar.start_posteriors(linear_encoder, "diag")
    optimized, _ = qstar.optimize_posteriors(linear.log_likelihood, linear.x, start, noise=Noise(1, "cpu"),
                                            **SETTINGS)
    gap = linear.log_px - linear.exact_elbo(optimized.distribution())
    assert (gap - linear.diagonal_gap()).abs().max() < 0.01


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_gap_rows_on_the_linear_model(linear, linear_gaps):
    rows = {row["family"]: row for row in linear_gaps["rows"]}
    assert linear_gaps["log_px"]["proposal"] == "cholesky"
    # with the posterior itself as proposal every importance weight would be p(x); q* is within a few
    # thousandths of a nat of it (test_optimized_cholesky_is_the_exact_posterior), so the weights hardly vary
    assert torch.allclose(linear_gaps["per_image"]["log_px"], linear.log_px, atol=0.01)
    # sampled ELBOs: within 4 standard errors (plus the optimiser's few hundredths) of the closed forms
    cholesky, diag = rows["cholesky"], rows["diag"]
    assert abs(cholesky["approximation_gap"]) < 4 * cholesky["approximation_gap_stderr"] + 0.02
    assert abs(diag["approximation_gap"] - linear.diagonal_gap()) < 4 * diag["approximation_gap_stderr"] + 0.02
    for row in rows.values():
        assert row["inference_gap"] == pytest.approx(row["approximation_gap"] + row["amortization_gap"])
        assert row["amortization_gap"] > 1.0  # the encoder is poor on purpose
        assert row["images"] == IMAGES and row["continuation_gain"] < 0.01
        assert row["steps_max"] <= SETTINGS["steps"] + DEFAULT_CHECK.check_steps * DEFAULT_CHECK.check_rounds


def test_stopping_rule(linear, linear_encoder):
    start = qstar.start_posteriors(linear_encoder, "diag")
    run = dict(samples=2, lr=0.02, window=10, chunk_images=5, noise=Noise(1, "cpu"))
    # any change counts as a plateau: two windows, then one more per drop of the learning rate
    _, steps = qstar.optimize_posteriors(linear.log_likelihood, linear.x, start, steps=1000,
                                        tolerance=math.inf, lr_drops=2, **run)
    assert steps.tolist() == [60] * IMAGES
    _, steps = qstar.optimize_posteriors(linear.log_likelihood, linear.x, start, steps=35,
                                        tolerance=-math.inf, **run)
    assert steps.tolist() == [35] * IMAGES


def test_own_family_start_moves_offdiag_scale_into_the_head():
    generator = torch.Generator().manual_seed(0)
    heads = torch.randn(7, 4 + 10, generator=generator, dtype=DTYPE)
    encoder = qstar.Posteriors(FAMILIES["cholesky"], family_cfg("cholesky", "softplus", 1e-3, 0.01), 4, heads)
    start = qstar.start_posteriors(encoder, "cholesky")
    assert start.family_cfg.offdiag_scale == 1.0
    assert torch.allclose(start.distribution().covariance(), encoder.distribution().covariance())
    assert torch.allclose(start.distribution().mean, encoder.distribution().mean)


@pytest.mark.parametrize("transform, floor", [("exp", 0.0), ("softplus", 1e-3)])
@pytest.mark.parametrize("target", ["cholesky", "lowrank"])
def test_other_family_starts_at_the_encoders_diagonal_gaussian(transform, floor, target):
    generator = torch.Generator().manual_seed(1)
    heads = torch.randn(7, 8, generator=generator, dtype=DTYPE)
    encoder = qstar.Posteriors(FAMILIES["diag"], family_cfg("diag", transform, floor), 4, heads)
    start = qstar.start_posteriors(encoder, target, rank=2)
    q, q0 = start.distribution(), encoder.distribution()
    assert start.family is FAMILIES[target] and start.family_cfg.scale_transform == transform
    assert torch.allclose(q.mean, q0.mean)
    assert torch.allclose(q.covariance(), q0.covariance())


def test_another_family_starts_at_the_reverse_kl_closest_diagonal_of_a_correlated_encoder():
    generator = torch.Generator().manual_seed(2)
    heads = torch.randn(7, 4 + 10, generator=generator, dtype=DTYPE)
    encoder = qstar.Posteriors(FAMILIES["cholesky"], family_cfg("cholesky", "softplus", 1e-3, 0.5), 4, heads)
    start = qstar.start_posteriors(encoder, "diag")
    cov = encoder.distribution().covariance()
    assert torch.allclose(start.distribution().variances(), 1 / torch.linalg.inv(cov).diagonal(dim1=-2, dim2=-1))
    assert torch.allclose(start.distribution().mean, encoder.distribution().mean)


def test_a_family_without_the_diagonal_head_is_refused():
    # the family declares its head layout (has_diagonal_head): lowrank's starts from a diagonal, rank1sum's
    # [mean | V] has no diagonal member to start from
    encoder = qstar.Posteriors(FAMILIES["diag"], family_cfg("diag"), 4, torch.zeros(2, 8, dtype=DTYPE))
    assert qstar.start_posteriors(encoder, "lowrank", rank=2).family is FAMILIES["lowrank"]
    with pytest.raises(qstar.UnsupportedFamily, match="head is not"):
        qstar.start_posteriors(encoder, "rank1sum")
    with pytest.raises(qstar.UnsupportedFamily, match="rank"):
        qstar.start_posteriors(encoder, "lowrank", rank=9)


def random_rotation(generator, d):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=DTYPE))
    return q * r.diagonal().sign()


def random_diagonals(generator, count, d):
    return torch.diag_embed(torch.exp(torch.randn(count, d, generator=generator, dtype=DTYPE)))


def test_rotation_removes_a_shared_orientation():
    generator = torch.Generator().manual_seed(2)
    R = random_rotation(generator, 4)
    cov = R @ random_diagonals(generator, 40, 4) @ R.T
    result = rotation.rotation_diagnostic(cov)
    assert result["total_correlation"] > 0.1 and result["diag_reverse_kl"] > 0.1
    for key in ("total_correlation", "diag_reverse_kl"):
        assert abs(result[f"{key}_rotated_mean_cov"]) < 1e-9
        assert abs(result[f"{key}_rotated_joint"]) < 1e-9


def test_rotation_cannot_remove_different_orientations():
    generator = torch.Generator().manual_seed(3)
    rotations = torch.stack([random_rotation(generator, 4) for _ in range(40)])
    cov = rotations @ random_diagonals(generator, 40, 4) @ rotations.transpose(-1, -2)
    result = rotation.rotation_diagnostic(cov)
    assert result["total_correlation_rotated_joint"] > 0.1
    assert result["total_correlation_rotated_joint"] <= result["total_correlation_rotated_mean_cov"] + 1e-9


def test_diagonal_reverse_kl_is_the_smallest_kl_from_a_diagonal_gaussian():
    generator = torch.Generator().manual_seed(4)
    factor = torch.randn(5, 4, 4, generator=generator, dtype=DTYPE)
    cov = factor @ factor.transpose(-1, -2) + 0.1 * torch.eye(4, dtype=DTYPE)
    target = MultivariateNormal(torch.zeros(4, dtype=DTYPE), cov)

    def kl_from_diagonal(variances):
        return kl_divergence(MultivariateNormal(torch.zeros(4, dtype=DTYPE), torch.diag_embed(variances)), target)

    best = 1 / torch.linalg.inv(cov).diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(rotation.diagonal_reverse_kl(cov), kl_from_diagonal(best))
    for factor in (0.9, 1.1):
        assert (kl_from_diagonal(best * factor) > kl_from_diagonal(best)).all()
    # and the forward direction against q's own variances
    marginals = MultivariateNormal(torch.zeros(4, dtype=DTYPE), torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1)))
    assert torch.allclose(rotation.total_correlation(cov), kl_divergence(target, marginals))


@pytest.fixture(scope="module")
def trained_vae(real_data):
    """A tiny Bernoulli VAE (784-64-4, diag) trained for 300 steps on 2000 real MNIST images."""
    images = read_images(MNIST, "train")[:2000]
    torch.manual_seed(0)
    model = make_vae(4, [64], "relu", "diag")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.bernoulli(images[torch.randint(len(images), (64,), generator=generator)], generator=generator)
        recon, kl = model(batch)
        optimizer.zero_grad()
        (recon + kl).mean().backward()
        optimizer.step()
    return model, cpu_bernoulli(read_images(MNIST, "test")[:32], 0)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_amortization_gap_of_a_trained_vae(trained_vae):
    model, test_images = trained_vae
    settings = GapsConfig(images=32, families=["diag", "cholesky"], elbo_samples=200, iwae_samples=500)
    result = gaps.model_gaps(model, test_images, settings)
    assert all(parameter.requires_grad for parameter in model.parameters())
    rows = {row["family"]: row for row in result["rows"]}
    assert set(rows) == {"diag", "cholesky"} and result["skipped"] == {}
    for row in rows.values():
        assert row["amortization_gap"] > -2 * row["amortization_gap_stderr"]
        assert row["approximation_gap"] > -2 * row["approximation_gap_stderr"]
    assert rows["diag"]["start"] == "encoder"
    assert set(result["rotation"]) == {"encoder", "diag", "cholesky"}


def test_the_continuation_check_leaves_less_than_its_tolerance(linear, linear_encoder):
    """A plateau rule that stops far too early (any change counts as a plateau): the check goes on until a
    round adds less than check_tolerance, and then 3000 more steps at the last rate change the exact mean ELBO
    by less than that; from where the rule stopped, they would have changed it by more (the test has power)."""
    settings = GapsConfig(**{**SETTINGS, "tolerance": math.inf}, elbo_samples=1000, check_steps=1000,
                          check_tolerance=0.01, check_rounds=8)
    start = qstar.start_posteriors(linear_encoder, "cholesky")
    noise = Noise(1, "cpu")
    early, _ = qstar.optimize_posteriors(linear.log_likelihood, linear.x, start, noise=noise,
                                         **{**SETTINGS, "tolerance": math.inf})

    def estimate(posteriors):
        return elbo_estimate(linear.log_likelihood, linear.x, posteriors.distribution, settings.elbo_samples,
                                  16, noise=Noise(0, "cpu"))[0]

    checked, _, steps, gain = gaps.continue_while_rising(linear.log_likelihood, linear.x, early, estimate(early),
                                                         settings, noise, estimate)
    assert gain.mean() < settings.check_tolerance and steps.min() >= settings.check_steps

    def rise_after_more_steps(posteriors):
        more, _ = qstar.optimize_posteriors(linear.log_likelihood, linear.x, posteriors, samples=8, steps=3000,
                                            lr=settings.lr / 100, tolerance=-math.inf, lr_drops=0, noise=Noise(2, "cpu"))
        return (linear.exact_elbo(more.distribution()) - linear.exact_elbo(posteriors.distribution())).mean().item()

    assert rise_after_more_steps(checked) < settings.check_tolerance
    assert rise_after_more_steps(early) > settings.check_tolerance
