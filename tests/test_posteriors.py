"""Check the three Gaussian posterior families against torch.distributions.

Every reference below is built by the test itself from the raw (mean, scale, offdiag) tensors,
never from the attributes of the class under test, so a wrong layout or formula shows up as a mismatch.
"""

import math

import pytest
import torch
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vae_compare.posteriors import FAMILIES, head_size

FAMILY_NAMES = ["diag", "cholesky", "lowrank"]
DTYPE = torch.float64
RTOL, ATOL = 1e-8, 1e-10


def offdiag_size(family, latent_dim, rank):
    """Width of the off-diagonal part of the head, written out here rather than taken from the class."""
    if family == "diag":
        return 0
    if family == "cholesky":
        return latent_dim * (latent_dim - 1) // 2
    return latent_dim * rank


def random_params(family, batch, latent_dim, rank, scale_range=(0.05, 5.0), offdiag_max=2.0):
    """mean (B, d), scale (B, d) log-uniform in scale_range, offdiag uniform in [-offdiag_max, offdiag_max]."""
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    mean = 2 * torch.randn(batch, latent_dim, dtype=DTYPE)
    scale = torch.exp(low + (high - low) * torch.rand(batch, latent_dim, dtype=DTYPE))
    width = offdiag_size(family, latent_dim, rank)
    offdiag = offdiag_max * (2 * torch.rand(batch, width, dtype=DTYPE) - 1)
    if family == "cholesky":
        offdiag = limit_conditioning(scale, offdiag)
    return mean, scale, offdiag


def limit_conditioning(scale, offdiag, max_cond=1e4):
    """Halve the strictly-lower entries of an image's L until cond(L) <= max_cond.

    A random triangular L with diagonal 0.05 and off-diagonal 2 can have cond(L) ~ 1e12; then
    float64 itself cannot give a reference log-density or log det(L L^T) to 1e-8, whatever the
    implementation. With offdiag = 0, cond(L) <= 5 / 0.05 = 100, so this ends.
    """
    offdiag = offdiag.clone()
    while True:
        too_wide = torch.linalg.cond(cholesky_factor(scale, offdiag)) > max_cond
        if not too_wide.any():
            return offdiag
        offdiag[too_wide] *= 0.5


def cholesky_factor(scale, offdiag):
    """L with diagonal `scale` and strictly-lower entries filled row by row (the tril_indices(d, d, -1) order)."""
    batch, d = scale.shape
    L = torch.zeros(batch, d, d, dtype=scale.dtype)
    k = 0
    for i in range(d):
        L[:, i, i] = scale[:, i]
        for j in range(i):
            L[:, i, j] = offdiag[:, k]
            k += 1
    assert k == offdiag.shape[-1]
    return L


def reference(family, mean, scale, offdiag):
    """The same distribution as a torch.distributions object with batch shape (B,) and event shape (d,)."""
    if family == "diag":
        return Independent(Normal(mean, scale), 1)
    if family == "cholesky":
        return MultivariateNormal(mean, scale_tril=cholesky_factor(scale, offdiag))
    batch, d = mean.shape
    V = offdiag.reshape(batch, d, -1)  # row-major (d, k)
    return LowRankMultivariateNormal(mean, cov_factor=V, cov_diag=scale.square())


def standard_normal(family, batch, latent_dim):
    zeros = torch.zeros(batch, latent_dim, dtype=DTYPE)
    if family == "diag":
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
    eye = torch.eye(latent_dim, dtype=DTYPE).expand(batch, latent_dim, latent_dim)
    return MultivariateNormal(zeros, scale_tril=eye)


def make_case(family, batch, latent_dim, rank, **kwargs):
    """(posterior under test, reference distribution) built from the same random raw tensors."""
    mean, scale, offdiag = random_params(family, batch, latent_dim, rank, **kwargs)
    ours = FAMILIES[family](mean, scale, offdiag if family != "diag" else None)
    return ours, reference(family, mean, scale, offdiag)


def random_cases(family, num_cases=20, seed=0):
    """Varied (batch, latent_dim, rank, scale range) cases; rank runs over 1..d for lowrank."""
    gen = torch.Generator().manual_seed(seed)
    scale_ranges = [(0.05, 5.0), (0.05, 0.5), (0.5, 5.0), (0.2, 2.0)]
    cases = []
    for i in range(num_cases):
        d = int(torch.randint(1, 13, (1,), generator=gen))
        batch = int(torch.randint(1, 6, (1,), generator=gen))
        rank = int(torch.randint(1, d + 1, (1,), generator=gen))
        cases.append(dict(batch=batch, latent_dim=d, rank=rank, scale_range=scale_ranges[i % len(scale_ranges)]))
    return cases


def case_id(case):
    return "B{batch}-d{latent_dim}-k{rank}".format(**case)


# ----------------------------------------------------------------------------------------------------
# 1-3: closed forms against torch.distributions


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_kl_matches_torch_distributions(family):
    torch.manual_seed(1)
    for case in random_cases(family):
        ours, ref = make_case(family, **case)
        expected = kl_divergence(ref, standard_normal(family, case["batch"], case["latent_dim"]))
        actual = ours.kl_to_standard_normal()
        assert actual.shape == (case["batch"],), case_id(case)
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{case_id(case)}: {m}")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_log_prob_matches_torch_distributions(family):
    torch.manual_seed(2)
    for case in random_cases(family, seed=1):
        ours, ref = make_case(family, **case)
        # arbitrary points, some far from the mean
        z = 3 * torch.randn(7, case["batch"], case["latent_dim"], dtype=DTYPE)
        actual = ours.log_prob(z)
        assert actual.shape == (7, case["batch"]), case_id(case)
        torch.testing.assert_close(actual, ref.log_prob(z), rtol=RTOL, atol=ATOL, msg=lambda m: f"{case_id(case)}: {m}")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_rsample_log_q_matches_torch_distributions(family):
    torch.manual_seed(3)
    for case in random_cases(family, seed=2):
        ours, ref = make_case(family, **case)
        z, log_q = ours.rsample(5)
        assert z.shape == (5, case["batch"], case["latent_dim"]), case_id(case)
        assert log_q.shape == (5, case["batch"]), case_id(case)
        msg = lambda m: f"{case_id(case)}: {m}"  # noqa: E731
        torch.testing.assert_close(log_q, ref.log_prob(z), rtol=RTOL, atol=ATOL, msg=msg)
        torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL, msg=msg)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_covariance_and_log_det_match_torch_distributions(family):
    torch.manual_seed(4)
    for case in random_cases(family, seed=3):
        ours, ref = make_case(family, **case)
        msg = lambda m: f"{case_id(case)}: {m}"  # noqa: E731
        if family == "diag":
            expected_cov = torch.diag_embed(ref.base_dist.scale.square())
        else:
            expected_cov = ref.covariance_matrix
        torch.testing.assert_close(ours.covariance(), expected_cov, rtol=RTOL, atol=ATOL, msg=msg)
        torch.testing.assert_close(
            ours.variances(), expected_cov.diagonal(dim1=-2, dim2=-1), rtol=RTOL, atol=ATOL, msg=msg
        )
        torch.testing.assert_close(ours.log_det_cov(), torch.logdet(expected_cov), rtol=1e-7, atol=1e-8, msg=msg)
        # the Gaussian entropy is 0.5 * (d (1 + log 2 pi) + log det Sigma): an independent check of log det
        d = case["latent_dim"]
        entropy_log_det = 2 * ref.entropy() - d * (1 + math.log(2 * math.pi))
        torch.testing.assert_close(ours.log_det_cov(), entropy_log_det, rtol=RTOL, atol=ATOL, msg=msg)


# ----------------------------------------------------------------------------------------------------
# 4: sampling moments


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sample_moments(family):
    torch.manual_seed(5)
    num_samples, batch, d, rank = 200_000, 2, 3, 2
    mean = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], dtype=DTYPE)
    scale = torch.tensor([[0.8, 1.5, 0.4], [1.2, 0.6, 2.0]], dtype=DTYPE)
    offdiag = {
        "diag": None,
        "cholesky": torch.tensor([[0.7, -0.5, 1.1], [-1.0, 0.4, 0.9]], dtype=DTYPE),
        "lowrank": torch.tensor([[0.6, -0.3, 1.0, 0.5, -0.8, 0.2], [-0.4, 0.9, 0.3, 0.0, 1.2, -0.6]], dtype=DTYPE),
    }[family]
    ours = FAMILIES[family](mean, scale, offdiag)
    z, _ = ours.rsample(num_samples)
    cov = ours.covariance()
    # sanity: the covariance the sample is compared against is the reference one
    if family != "diag":
        torch.testing.assert_close(cov, reference(family, mean, scale, offdiag).covariance_matrix)

    var = cov.diagonal(dim1=-2, dim2=-1)
    sample_mean = z.mean(0)
    mean_se = (var / num_samples).sqrt()
    assert ((sample_mean - mean).abs() <= 5 * mean_se).all(), (sample_mean, mean)

    centred = z - mean  # centre on the true mean so that each entry is a plain average
    sample_cov = torch.einsum("sbi,sbj->bij", centred, centred) / num_samples
    # for a Gaussian, Var(x_i x_j) = Sigma_ii Sigma_jj + Sigma_ij^2
    cov_se = ((var.unsqueeze(-1) * var.unsqueeze(-2) + cov.square()) / num_samples).sqrt()
    assert ((sample_cov - cov).abs() <= 5 * cov_se).all(), (sample_cov, cov)


# ----------------------------------------------------------------------------------------------------
# 5: gradients


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("latent_dim,rank", [(4, 2), (5, 5)])
def test_gradients_flow_to_every_parameter(family, latent_dim, rank):
    torch.manual_seed(6)
    batch = 3
    mean, scale, offdiag = random_params(family, batch, latent_dim, rank, scale_range=(0.3, 3.0))
    leaves = {"mean": mean, "scale": scale}
    if family != "diag":
        leaves["offdiag"] = offdiag
    for tensor in leaves.values():
        tensor.requires_grad_(True)
    ours = FAMILIES[family](mean, scale, offdiag if family != "diag" else None)
    z, log_q = ours.rsample(4)
    loss = z.sum() + log_q.sum() + ours.kl_to_standard_normal().sum()
    loss.backward()
    for name, tensor in leaves.items():
        assert tensor.grad is not None, name
        assert tensor.grad.shape == tensor.shape, name
        assert torch.isfinite(tensor.grad).all(), name
        assert (tensor.grad != 0).all(), (name, tensor.grad)


# ----------------------------------------------------------------------------------------------------
# 6: head sizes


@pytest.mark.parametrize("latent_dim", [1, 2, 3, 8, 16, 32])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_head_size(latent_dim, rank):
    d, k = latent_dim, rank
    expected = {"diag": 2 * d, "cholesky": d + d * (d + 1) // 2, "lowrank": d * (k + 2)}
    assert set(FAMILIES) == set(expected)
    for family, size in expected.items():
        assert head_size(family, d, k) == size, family
        assert FAMILIES[family].head_formula(d, k) == size, family
        # the head is [mean | scale | offdiag]: the class must accept exactly that many off-diagonal entries
        assert 2 * d + offdiag_size(family, d, k) == size, family


# ----------------------------------------------------------------------------------------------------
# 7: latent_dim = 1


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_latent_dim_one(family):
    torch.manual_seed(7)
    batch = 4
    mean, scale, offdiag = random_params(family, batch, 1, 1)
    assert offdiag.shape == {"diag": (batch, 0), "cholesky": (batch, 0), "lowrank": (batch, 1)}[family]
    ours = FAMILIES[family](mean, scale, offdiag if family != "diag" else None)
    ref = reference(family, mean, scale, offdiag)

    torch.testing.assert_close(
        ours.kl_to_standard_normal(), kl_divergence(ref, standard_normal(family, batch, 1)), rtol=RTOL, atol=ATOL
    )
    z, log_q = ours.rsample(6)
    assert z.shape == (6, batch, 1) and log_q.shape == (6, batch)
    torch.testing.assert_close(log_q, ref.log_prob(z), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL)

    # a one-dimensional Gaussian: the variance is scale^2 (+ v^2 for lowrank)
    extra = offdiag.square().sum(-1, keepdim=True) if family == "lowrank" else 0
    expected_var = scale.square() + extra
    torch.testing.assert_close(ours.covariance(), expected_var.unsqueeze(-1), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.log_det_cov(), expected_var.log().squeeze(-1), rtol=RTOL, atol=ATOL)
    assert head_size(family, 1, 1) == FAMILIES[family].head_formula(1, 1)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_latent_dim_one_backward(family):
    torch.manual_seed(8)
    mean, scale, offdiag = random_params(family, 3, 1, 1, scale_range=(0.3, 3.0))
    for tensor in (mean, scale, offdiag):
        tensor.requires_grad_(True)
    ours = FAMILIES[family](mean, scale, offdiag if family != "diag" else None)
    z, log_q = ours.rsample(4)
    (z.sum() + log_q.sum() + ours.kl_to_standard_normal().sum()).backward()
    for tensor in (mean, scale):
        assert torch.isfinite(tensor.grad).all() and (tensor.grad != 0).all()
    if family == "lowrank":
        assert torch.isfinite(offdiag.grad).all() and (offdiag.grad != 0).all()
