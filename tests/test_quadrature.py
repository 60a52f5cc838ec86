"""Check the quadrature reference (vae_compare/quadrature.py) against a closed form and a much finer grid.

A linear-Gaussian model, p(z) = N(0, I) and p(x|z) = N(W z + b, sigma^2 I), has log p(x) = log N(x; b,
W W^T + sigma^2 I) and the posterior N(m, Lambda^-1) with Lambda = I + W^T W / sigma^2, both closed-form.
A Bernoulli decoder (a small random tanh MLP) has no closed form, so it is checked against a grid with finer
spacing over a wider box. Its weights are large enough that the
posterior is far from Gaussian: there, two nested grids can agree by accident (see the module).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import MultivariateNormal

from vae_compare.quadrature import quadrature_log_px

DTYPE = torch.float64


class LinearGaussian:
    """x = W z + b + N(0, sigma^2 I), z ~ N(0, I) in `latent` dimensions; W's columns correlated, so the
    posterior is tilted."""

    def __init__(self, latent=2, pixels=5, images=4, sigma=0.5, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.sigma, self.pixels = sigma, pixels
        self.W = torch.randn(pixels, latent, generator=generator, dtype=DTYPE) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]],
                                                                                             dtype=DTYPE)[:latent, :latent]
        self.b = torch.randn(pixels, generator=generator, dtype=DTYPE)
        z = torch.randn(images, latent, generator=generator, dtype=DTYPE)
        self.x = z @ self.W.T + self.b + sigma * torch.randn(images, pixels, generator=generator, dtype=DTYPE)
        eye = torch.eye(latent, dtype=DTYPE)
        self.posterior_cov = torch.linalg.inv(eye + self.W.T @ self.W / sigma ** 2)
        self.posterior_mean = (self.x - self.b) @ self.W @ self.posterior_cov / sigma ** 2
        self.posterior_tril = torch.linalg.cholesky(self.posterior_cov).expand(images, latent, latent)
        marginal = MultivariateNormal(self.b, self.W @ self.W.T + sigma ** 2 * torch.eye(pixels, dtype=DTYPE))
        self.log_px = marginal.log_prob(self.x)

    def log_likelihood(self, x, z):
        residual = x - (z @ self.W.T + self.b)
        return (-0.5 * residual.square().sum(-1) / self.sigma ** 2 - self.pixels * math.log(self.sigma)
                - 0.5 * self.pixels * math.log(2 * math.pi))


class BernoulliDecoder:
    """A random 2-16-`pixels` tanh MLP giving Bernoulli logits, and binary images drawn from it."""

    def __init__(self, latent=2, pixels=12, images=2, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.decoder = nn.Sequential(nn.Linear(latent, 16), nn.Tanh(), nn.Linear(16, pixels)).to(DTYPE)
        with torch.no_grad():
            for parameter in self.decoder.parameters():
                # weights well above PyTorch's default, so the posterior is narrow and far from Gaussian
                parameter.copy_(1.5 * torch.randn(parameter.shape, generator=generator, dtype=DTYPE))
            self.decoder.requires_grad_(False)
            self.z = torch.randn(images, latent, generator=generator, dtype=DTYPE)
            self.x = torch.bernoulli(torch.sigmoid(self.decoder(self.z)), generator=generator)

    def to(self, dtype):
        """The same model and images in another dtype."""
        self.decoder, self.x, self.z = self.decoder.to(dtype), self.x.to(dtype), self.z.to(dtype)
        return self

    def log_likelihood(self, x, z):
        logits = self.decoder(z)
        return (x * logits - F.softplus(logits)).sum(-1)

    def box(self):
        """A box centre and unit near each image's posterior: the z that drew the image, 0.5 I."""
        images, latent = self.z.shape
        return self.z, 0.5 * torch.eye(latent, dtype=self.z.dtype).expand(images, latent, latent)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny, so a second thread only adds synchronisation: with the 2 cores shared by other
    jobs, this file took 10-18 CPU-seconds on 2 threads and 1 on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def linear():
    return LinearGaussian()


@pytest.fixture(scope="module")
def bernoulli():
    return BernoulliDecoder()


def test_linear_gaussian_from_the_posterior_box(linear):
    result = quadrature_log_px(linear.log_likelihood, linear.x, linear.posterior_mean, linear.posterior_tril,
                               tolerance=1e-6)
    assert (result.log_px - linear.log_px).abs().max() < 1e-6
    assert (result.error_bound < 1e-6).all()


def test_linear_gaussian_from_the_prior_box_refines(linear):
    """The prior's box is far wider than the posterior: the grid must refine before it stops."""
    images, latent = linear.x.shape[0], 2
    result = quadrature_log_px(linear.log_likelihood, linear.x, torch.zeros(images, latent, dtype=DTYPE),
                               torch.eye(latent, dtype=DTYPE).expand(images, latent, latent), tolerance=1e-5)
    assert (result.points > 33).all()
    assert (result.log_px - linear.log_px).abs().max() < 1e-5


def test_a_box_too_narrow_and_off_centre_grows(linear):
    result = quadrature_log_px(linear.log_likelihood, linear.x, linear.posterior_mean + 0.3, 0.5 * linear.posterior_tril,
                               tolerance=1e-6)
    assert (result.half_width > 8).all()
    assert (result.log_px - linear.log_px).abs().max() < 1e-6


def test_the_error_bound_covers_the_error_at_loose_tolerances(linear):
    start = (linear.posterior_mean + 0.3, 1.5 * linear.posterior_tril)
    for tolerance in (1e-1, 1e-2, 1e-3):
        result = quadrature_log_px(linear.log_likelihood, linear.x, *start, points=9, tolerance=tolerance)
        # plus float64 rounding, which the bound leaves out
        assert ((result.log_px - linear.log_px).abs() <= result.error_bound + 1e-12).all()
        assert (result.error_bound <= tolerance).all()


def test_bernoulli_decoder_against_a_much_finer_grid(bernoulli):
    # one grid of 513 nodes per dimension over a box of half-width 12 units (spacing 0.047 units): 2.7 to 5.3
    # times finer than the grids tolerance 0.1 stops on, 1.3 to 2.7 times finer than tolerance 0.01's
    finer = quadrature_log_px(bernoulli.log_likelihood, bernoulli.x, *bernoulli.box(), half_width=12.0,
                              points=513, max_points=513, tolerance=0.0)
    assert (finer.error_bound < 1e-3).all()
    for tolerance, most_points in ((1e-1, 129), (1e-2, 257)):
        result = quadrature_log_px(bernoulli.log_likelihood, bernoulli.x, *bernoulli.box(), tolerance=tolerance)
        assert (result.points <= most_points).all()
        assert (result.error_bound <= tolerance).all()
        assert ((result.log_px - finer.log_px).abs() <= result.error_bound + finer.error_bound).all()


def test_images_do_not_affect_each_other(bernoulli):
    together = quadrature_log_px(bernoulli.log_likelihood, bernoulli.x, *bernoulli.box(), tolerance=1e-1)
    centre, scale_tril = bernoulli.box()
    alone = quadrature_log_px(bernoulli.log_likelihood, bernoulli.x[1:2], centre[1:2], scale_tril[1:2],
                              tolerance=1e-1)
    assert torch.allclose(together.log_px[1:2], alone.log_px, rtol=0, atol=1e-12)


def test_a_float32_decoder_agrees_with_float64():
    """z reaches a float32 decoder in float32; the sums stay float64, so only the decoder's rounding is lost."""
    wide, narrow = BernoulliDecoder(), BernoulliDecoder().to(torch.float32)
    reference = quadrature_log_px(wide.log_likelihood, wide.x, *wide.box(), tolerance=1e-1)
    result = quadrature_log_px(narrow.log_likelihood, narrow.x, *narrow.box(), tolerance=1e-1)
    assert result.log_px.dtype == torch.float64
    assert (result.log_px - reference.log_px).abs().max() < 1e-3


@pytest.mark.parametrize("change, message", [
    (dict(centre=torch.zeros(4, 2)), "same B"),
    (dict(scale_tril=torch.eye(2).expand(3, 2, 2).reshape(3, 4)), "scale_tril must be"),
    (dict(points=33 + 4), "8m \\+ 1"),
])
def test_bad_input_raises_one_clear_error(linear, change, message):
    arguments = dict(centre=torch.zeros(3, 2), scale_tril=torch.eye(2).expand(3, 2, 2), points=33)
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        quadrature_log_px(linear.log_likelihood, torch.zeros(3, 5), **arguments)
