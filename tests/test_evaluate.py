"""Check the evaluation code against references the tests compute themselves.

The central check: on a VAE with a 1-D or 2-D latent space, log p(x) can be computed almost exactly by
integrating p(x|z) p(z) over a dense grid, so the importance-sampled estimate must land on it.
"""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rich.progress import Progress

from conftest import make_vae
from vae_compare import evaluate
from vae_compare.data import Split
from vae_compare.progress import ProgressBars

NUM_IMAGES = 8
# The IWAE estimate has a relative standard error of std(w) / (mean(w) sqrt(k)) per image. On these models
# it was measured at <= 0.017 nats for k = 10000 (and k = 200000 brought every error under 0.005, so the
# estimator converges to the grid value), so 0.1 nats is about 6 standard errors: safe against sampling
# noise, yet smaller than the ELBO's gap (>= 0.24 nats per image here, about 1 nat on average), so an
# estimator that returned the ELBO, dropped the prior or q, or mis-normalised by k would fail.
IWAE_SAMPLES = 10000
IWAE_TOLERANCE = 0.1


def tiny_vae(latent_dim, family, rank=0, seed=0, offdiag_init="default"):
    """A random VAE whose exact posterior is broad enough for a grid and a wider q to cover it.

    The decoder's output weights are shrunk so log p(x|z) changes by a few nats over the prior's range
    (a sharp posterior would need a far finer grid); the encoder's head is shrunk towards q = N(small, I)
    and its log-variance raised by 1, so q is wider than the true posterior and the importance weights
    are bounded. q still differs enough from the posterior that ELBO < log p(x) by a clear margin.
    """
    torch.manual_seed(seed)
    model = make_vae(latent_dim, [16], "tanh", family, rank, offdiag_init=offdiag_init)
    with torch.no_grad():
        model.decoder[-1].weight.mul_(0.3)
        model.encoder[-1].weight.mul_(0.1)
        model.encoder[-1].bias[latent_dim:2 * latent_dim] += 1.0
    return model


def random_images(count=NUM_IMAGES, seed=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((count, 784), 0.5, dtype=dtype), generator=generator)


def grid_log_px(model, pixels):
    """log p(x) = log integral p(x|z) p(z) dz by a Riemann sum on a dense grid, in float64.

    The integrand is smooth and negligible at the edges, so the sum converges very fast: for these models
    a 61 x 61 grid on [-6, 6]^2 already agrees with 301 x 301 on [-7, 7]^2 to 1e-7 nats.
    """
    decoder = copy.deepcopy(model.decoder).double()
    if model.latent_dim == 1:
        grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None]
        cell = 16 / 4000
    else:
        ticks = torch.linspace(-7, 7, 201, dtype=torch.float64)
        grid = torch.cartesian_prod(ticks, ticks)
        cell = (14 / 200) ** 2
    x = pixels.double()
    log_joint = []
    with torch.no_grad():
        for points in grid.split(10000):
            logits = decoder(points)
            # Bernoulli log-likelihood for every (image, grid point) pair: x . logits - sum softplus(logits)
            log_lik = x @ logits.T - F.softplus(logits).sum(-1)
            log_prior = -0.5 * points.square().sum(-1) - 0.5 * points.shape[-1] * math.log(2 * math.pi)
            log_joint.append(log_lik + log_prior)
    return torch.logsumexp(torch.cat(log_joint, 1), 1) + math.log(cell)


def exact_elbo(model, pixels, num_samples=4000):
    """(ELBO, its Monte-Carlo standard error) per image: E_q[log p(x|z)] - KL(q || p), with the KL in
    closed form, so it does not share rsample's log q with the estimator under test."""
    with torch.no_grad():
        q = model.posterior(pixels)
        z, _ = q.rsample_and_log_prob(num_samples)
        log_lik = model.log_likelihood(pixels, z).double()
    elbo = log_lik.mean(0) - q.kl_to_standard_normal().double()
    return elbo, log_lik.std(0) / math.sqrt(num_samples)


# the latent_dim-2 grids take seconds each: the full suite runs them, the fast tier the latent_dim-1 case
SLOW = pytest.mark.slow
CASES = [(1, "diag", 0), pytest.param(2, "diag", 0, marks=SLOW), pytest.param(2, "cholesky", 0, marks=SLOW),
         pytest.param(2, "lowrank", 1, marks=SLOW)]


@pytest.mark.parametrize("latent_dim,family,rank", CASES)
def test_iwae_matches_grid_integration(latent_dim, family, rank):
    model = tiny_vae(latent_dim, family, rank)
    split = Split(random_images())
    truth = grid_log_px(model, split.pixels)
    torch.manual_seed(2)
    elbo, elbo_error = exact_elbo(model, split.pixels)
    estimate = evaluate.iwae_log_px(model, split, IWAE_SAMPLES).double()

    assert estimate.shape == (NUM_IMAGES,)
    # the test only has power if the ELBO is clearly below log p(x)
    assert (truth - elbo).min() > 2 * IWAE_TOLERANCE
    assert (estimate - truth).abs().max() < IWAE_TOLERANCE
    assert (estimate >= elbo + 3 * elbo_error).all()


@pytest.mark.parametrize("latent_dim,family,rank", [(1, "diag", 0), pytest.param(2, "lowrank", 1, marks=SLOW)])
def test_iwae_increases_with_k_and_k1_is_the_elbo(latent_dim, family, rank):
    model = tiny_vae(latent_dim, family, rank)
    pixels = random_images()
    torch.manual_seed(3)
    elbo, elbo_error = exact_elbo(model, pixels)
    # small k is noisy, so each image is repeated and the estimates of its copies averaged
    repeats = 200
    means, errors = [], []
    for k in (1, 3, 10):
        values = evaluate.iwae_log_px(model, Split(pixels.repeat(repeats, 1)), k).double().view(repeats, NUM_IMAGES)
        means.append(values.mean().item())
        errors.append(values.mean(1).std().item() / math.sqrt(repeats))
        if k == 1:
            # k = 1 is the single-sample bound log p(x|z) + log p(z) - log q(z): its expectation is the ELBO
            per_image_error = values.std(0) / math.sqrt(repeats)
            assert ((values.mean(0) - elbo).abs() < 4 * (per_image_error + elbo_error)).all()
    # E[estimate] increases with k; measured steps are 0.8 and 0.2-0.35 nats, errors 0.01-0.06
    for step in range(2):
        assert means[step + 1] - means[step] > 3 * math.hypot(errors[step], errors[step + 1])
    # and on to large k (the k = 10 estimate is still 0.05-0.09 nats below log p(x) on these models)
    large_k = evaluate.iwae_log_px(model, Split(pixels), IWAE_SAMPLES).double().mean().item()
    assert means[-1] < large_k


class ReplayPosterior:
    """A posterior whose rsample hands out fixed noise in order, so results cannot depend on the RNG."""

    def __init__(self, q, noise):
        self.q, self.noise, self.used = q, noise, 0
        self.mean = q.mean

    def rsample_and_log_prob(self, num_samples, noise=None):
        eps = self.noise[self.used:self.used + num_samples]
        assert eps.shape[0] == num_samples, "iwae_log_px asked for more samples than num_samples"
        self.used += num_samples
        z = self.q.noise_to_z(eps)
        return z, self.q.log_prob(z)


def replay(model, noise):
    """Make model.posterior serve the rows of noise (k, N, d) that belong to each image batch in turn."""
    served = 0
    # the class's method, not the instance attribute an earlier replay() left behind
    posterior = type(model).posterior.__get__(model)

    def replaying_posterior(x):
        nonlocal served
        rows = slice(served, served + x.shape[0])
        served += x.shape[0]
        return ReplayPosterior(posterior(x), noise[:, rows])

    model.posterior = replaying_posterior


@pytest.mark.parametrize("family", ["diag", "cholesky"])
def test_chunking_and_batching_give_the_same_numbers_for_the_same_noise(family):
    num_samples = 60
    model = tiny_vae(2, family).double()
    pixels = random_images(dtype=torch.float64)
    torch.manual_seed(5)
    noise = torch.randn(num_samples, NUM_IMAGES, 2, dtype=torch.float64)
    with torch.no_grad():
        q = model.posterior(pixels)
        z = q.noise_to_z(noise)
        log_w = model.log_likelihood(pixels, z) + evaluate.standard_normal_log_prob(z) - q.log_prob(z)
        reference = torch.logsumexp(log_w, 0) - math.log(num_samples)
        first_sample_only = log_w[0]

    for chunk_size in (1, 7, None, num_samples, 10 * num_samples):
        for batch_size in (3, None):
            replay(model, noise)
            estimate = evaluate.iwae_log_px(model, Split(pixels), num_samples, chunk_size, batch_size)
            torch.testing.assert_close(estimate, reference, rtol=0, atol=1e-9)
    # k = 1 is exactly log p(x|z) + log p(z) - log q(z) at the one sample
    replay(model, noise)
    torch.testing.assert_close(evaluate.iwae_log_px(model, Split(pixels), 1), first_sample_only, rtol=0, atol=1e-9)


def test_chunk_sizes_agree_with_real_sampling():
    model = tiny_vae(2, "cholesky")
    split = Split(random_images())
    estimates = {}
    for seed, chunk_size in enumerate((1, 7, None)):
        torch.manual_seed(10 + seed)
        estimates[chunk_size] = evaluate.iwae_log_px(model, split, 500, chunk_size=chunk_size)
    # The exact check is the replay test above; this one only guards the real sampling path. Per image the
    # standard error at k = 500 is <= 0.08 nats, so a difference of two estimates averaged over 8 images
    # has a standard deviation of about 0.04; normalising by the wrong count (chunks, or the chunk size
    # instead of k) would move it by whole nats.
    for chunk_size in (1, 7):
        difference = estimates[chunk_size] - estimates[None]
        assert difference.abs().max() < 0.5
        assert difference.mean().abs() < 0.15


def test_default_chunk_size_respects_the_budget():
    model = make_vae(2, [16, 1000], "relu", "diag")
    widest = 1000  # the decoder's layers are 2 -> 1000 -> 16 -> 784
    for device in ("cpu", "cuda"):
        budget = evaluate.DECODER_ELEMENT_BUDGET[device]
        for batch_size in (1, 100, 10 ** 6):
            chunk = evaluate.default_chunk_size(model, batch_size, torch.device(device))
            assert chunk >= 1
            assert chunk == 1 or chunk * batch_size * widest <= budget
            assert (chunk + 1) * batch_size * widest > budget


def test_iwae_with_progress_bar_and_bad_k():
    model = tiny_vae(1, "diag")
    split = Split(random_images(5))
    torch.manual_seed(0)
    bars = Progress(disable=True)
    values = evaluate.iwae_log_px(model, split, 3, batch_size=2, progress=ProgressBars(bars))
    assert values.shape == (5,) and torch.isfinite(values).all()
    # one bar, advanced after each batch of 2 images to all 5
    (task,) = bars.tasks
    assert task.description == "log p(x), k=3" and task.completed == task.total == 5
    with pytest.raises(ValueError):
        evaluate.iwae_log_px(model, split, 0)


def test_summarize_log_px():
    mean, stderr = evaluate.summarize_log_px(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert stderr == pytest.approx(math.sqrt(5 / 3) / 2)  # sample std sqrt(5/3), over sqrt(4)
    assert evaluate.summarize_log_px(torch.tensor([-90.0])) == (pytest.approx(-90.0), 0.0)


def test_active_units_counts_dimensions_with_varying_posterior_mean():
    torch.manual_seed(0)
    latent_dim = 5
    model = make_vae(latent_dim, [32], "tanh", "diag")
    head = model.encoder[-1]
    inactive = [1, 3]
    with torch.no_grad():
        head.weight[:latent_dim].mul_(5.0)
        # zero weights leave the mean at the bias for every image: a constant, exactly zero variance
        head.weight[inactive] = 0.0
    split = Split(random_images(64))
    with torch.no_grad():
        variance = model.posterior(split.pixels).mean.double().var(0, correction=0)
    active = [i for i in range(latent_dim) if i not in inactive]
    assert (variance[active] > 0.05).all() and (variance[inactive] == 0).all()

    means = evaluate.posterior_means(model, split)
    torch.testing.assert_close(evaluate.posterior_means(model, split, batch_size=10), means, rtol=1e-5, atol=1e-6)
    assert evaluate.active_units(means) == latent_dim - len(inactive)
    assert evaluate.active_units(means, threshold=variance.max().item() + 1) == 0
    # the threshold is strict: exactly one unit exceeds the second-largest variance (computed as above in
    # float64 from the same single batch, so the values are bit-identical)
    second_largest = variance.sort().values[-2].item()
    assert evaluate.active_units(means, threshold=second_largest) == 1


def test_active_directions_do_not_depend_on_the_basis():
    """12 informative directions in 16 dimensions: 12 coordinates when they are axis-aligned, all 16 after a
    random rotation, while the rotation-invariant count stays 12."""
    generator = torch.Generator().manual_seed(0)
    informative = torch.zeros(2000, 16, dtype=torch.float64)
    informative[:, :12] = torch.randn(2000, 12, generator=generator, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator, dtype=torch.float64))
    rotated = informative @ rotation.T
    assert evaluate.active_units(informative) == 12 and evaluate.active_units(rotated) == 16
    assert evaluate.active_directions(informative) == 12 and evaluate.active_directions(rotated) == 12
    assert evaluate.active_directions(rotated[:1]) == 0


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_k_curve_rises_towards_the_grid_value():
    model = tiny_vae(2, "cholesky")
    pixels = random_images()
    torch.manual_seed(3)
    # each image 25 times, so the one-sample (k=1) mean is not at the mercy of a few draws
    curve = evaluate.k_curve(model, Split(pixels.repeat(25, 1)), (1, 10, 100, 2000), chunk_size=64)
    exact = grid_log_px(model, pixels).mean().item()
    # nested samples: the k=1 value is the one-sample ELBO, and more samples tighten the bound
    assert curve[1] < curve[10] < curve[100] < exact + 0.05
    assert abs(curve[2000] - exact) < IWAE_TOLERANCE


def independent_diagnostics(model, pixels, max_images):
    """The three diagnostics image by image from q.covariance(), with different formulas from evaluate's."""
    with torch.no_grad():
        covariances = model.posterior(pixels).covariance().double()
    corr, gaps, conds = [], [], []
    for cov in covariances:
        d = cov.shape[0]
        pairs = [(i, j) for i in range(d) for j in range(d) if i != j]
        correlations = [abs(cov[i, j].item()) / math.sqrt(cov[i, i] * cov[j, j]) for i, j in pairs]
        corr.append(sum(correlations) / len(pairs) if pairs else 0.0)
        gaps.append(0.5 * (cov.diagonal().log().sum() - torch.linalg.slogdet(cov).logabsdet).item())
        conds.append(torch.linalg.cond(cov).item())
    return (sum(corr) / len(corr), sum(gaps) / len(gaps), torch.tensor(conds[:max_images]).median().item())


def test_diagnostics_of_a_diagonal_posterior_are_trivial():
    model = tiny_vae(3, "diag")
    split = Split(random_images(20))
    result = evaluate.posterior_diagnostics(model, split, batch_size=6)
    assert result["offdiag_corr"] == 0.0
    assert abs(result["logdet_gap"]) < 1e-6
    with torch.no_grad():
        variances = model.posterior(split.pixels).variances().double()
    expected_condition = (variances.max(-1).values / variances.min(-1).values).median().item()
    assert result["condition_number"] == pytest.approx(expected_condition, rel=1e-6)
    assert result["condition_number"] >= 1


# with offdiag_scale=1 the random low-rank factor is small next to the diagonal (|corr| ~ 0.02), so it is
# scaled up to give a clearly non-diagonal covariance
@pytest.mark.parametrize("family,rank,offdiag_scale", [("cholesky", 0, 1.0), ("lowrank", 1, 5.0)])
def test_diagnostics_of_a_correlated_posterior(family, rank, offdiag_scale, monkeypatch):
    torch.manual_seed(0)
    model = make_vae(3, [16], "tanh", family, rank, offdiag_init="default", offdiag_scale=offdiag_scale)
    split = Split(random_images(12))
    # the condition number uses a leading subset of images; make it cross a batch boundary
    monkeypatch.setattr(evaluate, "CONDITION_NUMBER_IMAGES", 7)
    result = evaluate.posterior_diagnostics(model, split, batch_size=5)
    corr, gap, cond = independent_diagnostics(model, split.pixels, 7)
    assert result["offdiag_corr"] > 0.05
    assert result["logdet_gap"] > 0.01
    assert result["offdiag_corr"] == pytest.approx(corr, rel=1e-5)
    # q.log_det_cov (closed form) against slogdet of the float32 covariance: float32 rounding only
    assert result["logdet_gap"] == pytest.approx(gap, rel=1e-3, abs=1e-5)
    assert result["condition_number"] == pytest.approx(cond, rel=1e-4)
    assert result["condition_number"] >= 1


def test_diagnostics_with_one_latent_dimension():
    model = tiny_vae(1, "cholesky")
    result = evaluate.posterior_diagnostics(model, Split(random_images()))
    assert result == {"offdiag_corr": 0.0, "logdet_gap": pytest.approx(0.0, abs=1e-6), "condition_number": 1.0}


FINAL_KEYS = {"elbo", "kl", "recon", "log_px", "log_px_stderr", "iwae_samples", "iwae_seconds", "active_units",
              "active_directions", "offdiag_corr", "logdet_gap", "condition_number", "log_px_k1", "log_px_k10",
              "log_px_k20", "k_curve_images"}


def final_metrics_check(device):
    torch.manual_seed(0)
    model = make_vae(3, [16], "tanh", "lowrank", 1, offdiag_init="default").to(device)
    split = Split(random_images(10).to(device))
    eval_cfg = SimpleNamespace(iwae_samples=20, chunk_size=None, active_threshold=0.01, k_curve_images=5)
    metrics = evaluate.final_metrics(model, split, eval_cfg, batch_size=4)
    assert set(metrics) == FINAL_KEYS
    for key, value in metrics.items():
        assert type(value) in (int, float), key
        assert math.isfinite(value), key
    assert metrics["iwae_samples"] == 20 and type(metrics["iwae_samples"]) is int
    assert type(metrics["active_units"]) is int and 0 <= metrics["active_units"] <= 3
    assert metrics["elbo"] == pytest.approx(-(metrics["kl"] + metrics["recon"]))
    assert metrics["iwae_seconds"] > 0 and metrics["log_px_stderr"] > 0
    assert metrics["condition_number"] >= 1 and metrics["logdet_gap"] > 0
    return metrics


def test_final_metrics_returns_every_key_as_a_finite_number():
    final_metrics_check("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_final_metrics_and_iwae_on_cuda():
    final_metrics_check("cuda")
    model = tiny_vae(2, "cholesky")
    pixels = random_images()
    truth = grid_log_px(model, pixels)
    torch.manual_seed(2)
    estimate = evaluate.iwae_log_px(model.cuda(), Split(pixels.cuda()), IWAE_SAMPLES)
    assert estimate.device.type == "cuda"
    assert (estimate.double().cpu() - truth).abs().max() < IWAE_TOLERANCE
