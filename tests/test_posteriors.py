"""Check the Gaussian posterior families against torch.distributions.

Every reference below is built by the test itself from the raw tensors (mean, scale, off-diagonal values,
factor, jitter, or the raw head), never from the attributes of the class under test, so a wrong layout or
formula shows up as a mismatch. REFERENCES holds one entry per family, and every test that applies to all
families runs over FAMILIES: a new family adds one entry.
"""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)
from torch.distributions.transforms import CorrCholeskyTransform

from vae_compare.posteriors import FAMILIES, DiagGaussian, PosteriorFamily, head_size

DTYPE = torch.float64
RTOL, ATOL = 1e-8, 1e-10
CONF_FAMILY = Path(__file__).resolve().parents[1] / "conf" / "family"
EVERY_FAMILY = list(FAMILIES)


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


def gram(matrix):
    return matrix @ matrix.transpose(-1, -2)


def factor(params):
    """The off-diagonal values as the row-major (B, d, k) factor (lowrank's, rank1sum's V; sqrt's G)."""
    return params["offdiag"].reshape(*params["mean"].shape, -1)


def jitter_eye(params):
    return params["jitter"] * torch.eye(params["mean"].shape[-1], dtype=DTYPE)


def corr_factor(params):
    """diag(sigma) L_Omega, with torch's own implementation of Stan's map to the Cholesky factor of Omega."""
    return params["scale"].unsqueeze(-1) * CorrCholeskyTransform()(params["offdiag"])


def symmetric_root(params):
    """sqrt's S = (1/k) G G^T + jitter I."""
    G = factor(params)
    return gram(G) / G.shape[-1] + jitter_eye(params)


@dataclass(frozen=True)
class Reference:
    """One family as the tests build it from raw tensors, written apart from the class under test.

    Raw tensors: mean (B, d); scale (B, d) where has_scale; offdiag (B, offdiag_width(d, k)) where has_offdiag,
    the off-diagonal values or, without a diagonal part, the factor; jitter where has_jitter. The class under test is
    FAMILIES[name](mean, [scale], [offdiag], [jitter]); its head is [mean | raw scale if has_scale | offdiag]."""

    head_size: Callable          # (d, k) -> head outputs, the closed form
    offdiag_width: Callable      # (d, k) -> width of the off-diagonal part
    covariance: Callable         # raw tensors -> Sigma (B, d, d)
    noise_map: Callable          # raw tensors -> A (B, d, d + extra noise dims) with z = mean + A eps
    moments: dict                # raw tensors at d = 3, B = 2 besides mean and scale, for the sampling moments
    distribution: Optional[Callable] = None  # raw tensors -> torch.distributions object (else from covariance)
    rank: Callable = lambda d, k: 0          # a valid family.rank for a case drawn with k in 1..d
    has_scale: bool = True
    has_offdiag: bool = True
    has_jitter: bool = False
    config: dict = field(default_factory=dict)  # the tests' family config, over family_cfg's defaults
    head_offdiag_scale: float = 0.5  # offdiag_scale in the raw-head test: the off-diagonal part is not negligible
    start: Optional[Callable] = None  # (d, cfg) -> Sigma of every image at step 0; None: the diagonal model
    refusals: tuple = ()         # (latent_dim, config values, fragments of config_error's message)
    accepted: tuple = ()         # (latent_dim, config values) that config_error lets through


REFERENCES = {
    "diag": Reference(
        head_size=lambda d, k: 2 * d,
        offdiag_width=lambda d, k: 0,
        covariance=lambda p: torch.diag_embed(p["scale"].square()),
        noise_map=lambda p: torch.diag_embed(p["scale"]),
        distribution=lambda p: Independent(Normal(p["mean"], p["scale"]), 1),
        moments={},
        has_offdiag=False,
        config={"scale_transform": "exp", "scale_floor": 0.0},
        refusals=((4, {"rank": 2}, ["family.rank applies to low-rank families only; diag needs rank=0, got 2"]),),
        accepted=((4, {"rank": 0}),),
    ),
    "cholesky": Reference(
        head_size=lambda d, k: d + d * (d + 1) // 2,
        offdiag_width=lambda d, k: d * (d - 1) // 2,
        covariance=lambda p: gram(cholesky_factor(p["scale"], p["offdiag"])),
        noise_map=lambda p: cholesky_factor(p["scale"], p["offdiag"]),
        distribution=lambda p: MultivariateNormal(p["mean"], scale_tril=cholesky_factor(p["scale"], p["offdiag"])),
        moments={"offdiag": [[0.7, -0.5, 1.1], [-1.0, 0.4, 0.9]]},
        refusals=((4, {"rank": 2}, ["cholesky needs rank=0, got 2"]),),
        accepted=((4, {"rank": 0}),),
    ),
    "lowrank": Reference(
        head_size=lambda d, k: d * (k + 2),
        offdiag_width=lambda d, k: d * k,
        covariance=lambda p: torch.diag_embed(p["scale"].square()) + gram(factor(p)),
        noise_map=lambda p: torch.cat((torch.diag_embed(p["scale"]), factor(p)), -1),
        distribution=lambda p: LowRankMultivariateNormal(p["mean"], cov_factor=factor(p), cov_diag=p["scale"].square()),
        moments={"offdiag": [[0.6, -0.3, 1.0, 0.5, -0.8, 0.2], [-0.4, 0.9, 0.3, 0.0, 1.2, -0.6]]},
        rank=lambda d, k: k,
        refusals=((4, {"rank": 0}, ["family.rank must be in 1..latent_dim (4) for lowrank, got 0"]),
                  (4, {"rank": 5}, ["family.rank must be in 1..latent_dim (4) for lowrank, got 5"])),
        accepted=((4, {"rank": 1}), (4, {"rank": 4})),
    ),
    "corr": Reference(
        head_size=lambda d, k: d * (d + 3) // 2,
        offdiag_width=lambda d, k: d * (d - 1) // 2,
        covariance=lambda p: gram(corr_factor(p)),
        noise_map=corr_factor,
        moments={"offdiag": [[0.9, -0.6, 1.4], [-1.2, 0.3, 0.8]]},  # unconstrained: partial correlations tanh(x)
        refusals=((4, {"rank": 2}, ["corr needs rank=0, got 2"]),),
        accepted=((4, {"rank": 0}),),
    ),
    "rank1sum": Reference(
        head_size=lambda d, k: d + d * k,
        offdiag_width=lambda d, k: d * k,
        covariance=lambda p: gram(factor(p)) + jitter_eye(p),
        noise_map=lambda p: torch.cat((math.sqrt(p["jitter"]) * torch.eye(p["mean"].shape[-1], dtype=DTYPE)
                                       .expand(p["mean"].shape[0], -1, -1), factor(p)), -1),
        moments={"offdiag": [[0.6, -0.3, 1.0, 0.5, -0.8, 0.2, 0.4, 0.1, -0.9, 0.7, 0.3, -0.2],
                             [-0.4, 0.9, 0.3, 0.0, 1.2, -0.6, 0.5, 0.5, 0.8, -1.1, 0.2, 0.6]], "jitter": 0.05},
        rank=lambda d, k: d + k % 4,
        has_scale=False,
        has_jitter=True,
        config={"offdiag_scale": 1.0, "jitter": 1e-4},
        head_offdiag_scale=1.5,
        start=lambda d, cfg: (1 + cfg.jitter) * torch.eye(d, dtype=DTYPE),
        refusals=tuple((d, {"rank": k}, [f"family.rank must be >= latent_dim ({d}) for rank1sum", "singular",
                                         f"; got {k}"]) for d, k in [(5, 4), (5, 0), (1, 0), (16, 3)])
        + ((5, {"rank": 5, "offdiag_scale": 0.0},
            ["family.offdiag_scale must be > 0 for rank1sum (V is its whole covariance)"]),),
        accepted=((5, {"rank": 5}), (5, {"rank": 9}), (1, {"rank": 1})),
    ),
    "sqrt": Reference(
        head_size=lambda d, k: d + d * k,
        offdiag_width=lambda d, k: d * k,
        covariance=lambda p: symmetric_root(p) @ symmetric_root(p),
        noise_map=symmetric_root,
        moments={"offdiag": [[0.6, -0.3, 1.0, 0.5, -0.8, 0.2, 0.4, 0.1, -0.9, 0.7, 0.3, -0.2],
                             [-0.4, 0.9, 0.3, 0.0, 1.2, -0.6, 0.5, 0.5, 0.8, -1.1, 0.2, 0.6]], "jitter": 0.05},
        rank=lambda d, k: d + k % 4,
        has_scale=False,
        has_jitter=True,
        config={"offdiag_scale": 1.0, "jitter": 1e-3},
        head_offdiag_scale=1.5,
        start=lambda d, cfg: torch.eye(d, dtype=DTYPE),
        refusals=((5, {"rank": 4}, ["family.rank must be >= latent_dim (5) for sqrt", "singular", "; got 4"]),
                  (1, {"rank": 0}, ["family.rank must be >= latent_dim (1) for sqrt", "; got 0"]),
                  (3, {"rank": 3, "jitter": 0.0}, ["family.jitter must be in (0, 1) for sqrt, got 0.0"]),
                  (3, {"rank": 3, "jitter": 1.0}, ["family.jitter must be in (0, 1) for sqrt, got 1.0"]),
                  (3, {"rank": 3, "offdiag_scale": 0.0}, ["family.offdiag_scale must be > 0 for sqrt"])),
        accepted=((3, {"rank": 3}), (3, {"rank": 7, "jitter": 0.5}), (1, {"rank": 1})),
    ),
}


def family_cfg(family, rank, **overrides):
    """A family config node with every FamilyConfig key (the YAML defaults' shape)."""
    cfg = {"name": family, "rank": rank, "scale_transform": "softplus", "scale_floor": 1e-3, "offdiag_init": "zero",
           "offdiag_scale": 0.01, "offdiag_init_std": 0.0, "jitter": 0.0, **REFERENCES[family].config}
    return SimpleNamespace(**{**cfg, **overrides})


def random_params(family, batch, latent_dim, rank, scale_range=(0.05, 5.0), offdiag_max=2.0, jitter=0.05):
    """The raw tensors of one batch: mean (B, d); scale (B, d) log-uniform in scale_range (with a diagonal
    part); off-diagonal values (unconstrained) or the factor, uniform in [-offdiag_max, offdiag_max]; jitter."""
    ref = REFERENCES[family]
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    params = {"mean": 2 * torch.randn(batch, latent_dim, dtype=DTYPE)}
    if ref.has_scale:
        params["scale"] = torch.exp(low + (high - low) * torch.rand(batch, latent_dim, dtype=DTYPE))
    if ref.has_offdiag:
        width = ref.offdiag_width(latent_dim, rank)
        params["offdiag"] = offdiag_max * (2 * torch.rand(batch, width, dtype=DTYPE) - 1)
    if ref.has_jitter:
        params["jitter"] = jitter
    if ref.has_offdiag:
        params["offdiag"] = limit_conditioning(family, params)
    return params


def limit_conditioning(family, params, max_cond=1e8):
    """Halve an image's off-diagonal values (the factor, without a diagonal part) until cond(Sigma) <= max_cond.

    A random triangular L with diagonal 0.05 and off-diagonal 2 can have cond(L) ~ 1e12, and partial
    correlations near +-1 make Omega nearly singular; then float64 itself cannot give a reference
    log-density or log det to 1e-8, whatever the implementation. With zero off-diagonal values,
    cond(Sigma) <= (5 / 0.05)^2 (without a diagonal part: 1, as Sigma is a multiple of I), so this ends.
    """
    params = dict(params, offdiag=params["offdiag"].clone())
    while True:
        too_wide = torch.linalg.cond(REFERENCES[family].covariance(params)) > max_cond
        if not too_wide.any():
            return params["offdiag"]
        params["offdiag"][too_wide] *= 0.5


def reference(family, params):
    """The same distribution as a torch.distributions object with batch shape (B,) and event shape (d,)."""
    ref = REFERENCES[family]
    if ref.distribution is not None:
        return ref.distribution(params)
    # torch.distributions factorises Sigma itself
    return MultivariateNormal(params["mean"], covariance_matrix=ref.covariance(params))


def build(family, params):
    """The class under test from the same raw tensors."""
    present = [params[name] for name in ("scale", "offdiag", "jitter") if name in params]
    return FAMILIES[family](params["mean"], *present)


def standard_normal(like, batch, latent_dim):
    """N(0, I) of the same kind as the reference `like` (kl_divergence pairs Independent Normals, and MVNs)."""
    zeros = torch.zeros(batch, latent_dim, dtype=DTYPE)
    if isinstance(like, Independent):
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
    eye = torch.eye(latent_dim, dtype=DTYPE).expand(batch, latent_dim, latent_dim)
    return MultivariateNormal(zeros, scale_tril=eye)


def make_case(family, batch, latent_dim, rank, **kwargs):
    """(posterior under test, reference distribution) built from the same random raw tensors."""
    params = random_params(family, batch, latent_dim, rank, **kwargs)
    return build(family, params), reference(family, params)


def random_cases(family, num_cases=20, seed=0):
    """Varied (batch, latent_dim, rank, scale range) cases; the rank comes from k in 1..d (lowrank: k; the
    families without a diagonal part: d..d+3, their jitter over 1e-4..0.5)."""
    gen = torch.Generator().manual_seed(seed)
    scale_ranges = [(0.05, 5.0), (0.05, 0.5), (0.5, 5.0), (0.2, 2.0)]
    jitters = [1e-4, 0.05, 0.5]
    cases = []
    for i in range(num_cases):
        d = int(torch.randint(1, 13, (1,), generator=gen))
        batch = int(torch.randint(1, 6, (1,), generator=gen))
        k = int(torch.randint(1, d + 1, (1,), generator=gen))
        case = {"batch": batch, "latent_dim": d, "rank": REFERENCES[family].rank(d, k),
                "scale_range": scale_ranges[i % len(scale_ranges)]}
        if REFERENCES[family].has_jitter:
            case["jitter"] = jitters[i % len(jitters)]
        cases.append(case)
    return cases


def case_id(case):
    return "B{batch}-d{latent_dim}-k{rank}".format(**case)


def test_every_family_has_a_reference():
    assert set(REFERENCES) == set(FAMILIES)


# ----------------------------------------------------------------------------------------------------
# 1-3: closed forms against torch.distributions


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_kl_matches_torch_distributions(family):
    torch.manual_seed(1)
    for case in random_cases(family):
        ours, ref = make_case(family, **case)
        expected = kl_divergence(ref, standard_normal(ref, case["batch"], case["latent_dim"]))
        actual = ours.kl_to_standard_normal()
        assert actual.shape == (case["batch"],), case_id(case)
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{case_id(case)}: {m}")


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_log_prob_matches_torch_distributions(family):
    torch.manual_seed(2)
    for case in random_cases(family, seed=1):
        ours, ref = make_case(family, **case)
        # arbitrary points, some far from the mean
        z = 3 * torch.randn(7, case["batch"], case["latent_dim"], dtype=DTYPE)
        actual = ours.log_prob(z)
        assert actual.shape == (7, case["batch"]), case_id(case)
        torch.testing.assert_close(actual, ref.log_prob(z), rtol=RTOL, atol=ATOL, msg=lambda m: f"{case_id(case)}: {m}")


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_rsample_log_q_matches_torch_distributions(family):
    torch.manual_seed(3)
    for case in random_cases(family, seed=2):
        ours, ref = make_case(family, **case)
        z, log_q = ours.rsample_and_log_prob(5)
        assert z.shape == (5, case["batch"], case["latent_dim"]), case_id(case)
        assert log_q.shape == (5, case["batch"]), case_id(case)
        msg = lambda m: f"{case_id(case)}: {m}"  # noqa: E731
        torch.testing.assert_close(log_q, ref.log_prob(z), rtol=RTOL, atol=ATOL, msg=msg)
        torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL, msg=msg)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_covariance_and_log_det_match_torch_distributions(family):
    torch.manual_seed(4)
    for case in random_cases(family, seed=3):
        ours, ref = make_case(family, **case)
        msg = lambda m: f"{case_id(case)}: {m}"  # noqa: E731
        expected_cov = ref.covariance_matrix if hasattr(ref, "covariance_matrix") else torch.diag_embed(ref.variance)
        torch.testing.assert_close(ours.covariance(), expected_cov, rtol=RTOL, atol=ATOL, msg=msg)
        torch.testing.assert_close(
            ours.variances(), expected_cov.diagonal(dim1=-2, dim2=-1), rtol=RTOL, atol=ATOL, msg=msg
        )
        torch.testing.assert_close(ours.log_det_cov(), torch.logdet(expected_cov), rtol=1e-7, atol=1e-8, msg=msg)
        # the Gaussian entropy is 0.5 * (d (1 + log 2 pi) + log det Sigma): an independent check of log det
        d = case["latent_dim"]
        entropy_log_det = 2 * ref.entropy() - d * (1 + math.log(2 * math.pi))
        torch.testing.assert_close(ours.log_det_cov(), entropy_log_det, rtol=1e-7, atol=1e-8, msg=msg)


def test_corr_factor_matches_torch_corr_cholesky_transform():
    """corr's own vectorised map gives torch's Cholesky factor of Omega (through Sigma's factor
    diag(sigma) L_Omega), also for large inputs where 1 - tanh^2 underflows in float32."""
    torch.manual_seed(9)
    for d in (1, 2, 3, 7):
        x = 3 * torch.randn(4, d * (d - 1) // 2, dtype=DTYPE)
        scale = torch.rand(4, d, dtype=DTYPE) + 0.5
        ours = FAMILIES["corr"](torch.zeros(4, d, dtype=DTYPE), scale, x)
        expected = scale.unsqueeze(-1) * CorrCholeskyTransform()(x)
        torch.testing.assert_close(ours.scale_tril, expected, rtol=RTOL, atol=ATOL)
    # float32, |x| up to 12: finite log det and finite gradients (tanh^2 rounds to 1 there)
    x = torch.tensor([[12.0, -11.0, 10.0]], requires_grad=True)
    q = FAMILIES["corr"](torch.zeros(1, 3), torch.ones(1, 3), x)
    (grad,) = torch.autograd.grad(q.log_det_cov().sum() + q.covariance().sum(), x)
    assert torch.isfinite(q.log_det_cov()).all() and torch.isfinite(grad).all()
    expected_log_det = 2 * (math.log(2) + x.double() - torch.nn.functional.softplus(2 * x.double())).sum()
    torch.testing.assert_close(q.log_det_cov().double().sum(), expected_log_det, rtol=1e-6, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# 4: sampling moments and the noise map


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_sample_moments(family):
    torch.manual_seed(5)
    num_samples = 200_000
    mean = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], dtype=DTYPE)
    params = {"mean": mean}
    if REFERENCES[family].has_scale:
        params["scale"] = torch.tensor([[0.8, 1.5, 0.4], [1.2, 0.6, 2.0]], dtype=DTYPE)
    for name, value in REFERENCES[family].moments.items():
        params[name] = torch.tensor(value, dtype=DTYPE) if isinstance(value, list) else value
    ours = build(family, params)
    z, _ = ours.rsample_and_log_prob(num_samples)
    cov = ours.covariance()
    # sanity: the covariance the sample is compared against is the reference one
    torch.testing.assert_close(cov, REFERENCES[family].covariance(params))

    var = cov.diagonal(dim1=-2, dim2=-1)
    sample_mean = z.mean(0)
    mean_se = (var / num_samples).sqrt()
    assert ((sample_mean - mean).abs() <= 5 * mean_se).all(), (sample_mean, mean)

    centred = z - mean  # centre on the true mean so that each entry is a plain average
    sample_cov = torch.einsum("sbi,sbj->bij", centred, centred) / num_samples
    # for a Gaussian, Var(x_i x_j) = Sigma_ii Sigma_jj + Sigma_ij^2
    cov_se = ((var.unsqueeze(-1) * var.unsqueeze(-2) + cov.square()) / num_samples).sqrt()
    assert ((sample_cov - cov).abs() <= 5 * cov_se).all(), (sample_cov, cov)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_noise_map(family):
    """z = mean + A eps with the reference's A, whose A A^T is the reference covariance: the first d noise
    dimensions (the stream every family shares) drive the diagonal, jitter or square part, any extra k drive V."""
    torch.manual_seed(15)
    batch, d = 2, 3
    params = random_params(family, batch, d, REFERENCES[family].rank(d, 2))
    ours = build(family, params)
    A = REFERENCES[family].noise_map(params)
    torch.testing.assert_close(gram(A), REFERENCES[family].covariance(params), rtol=RTOL, atol=ATOL)
    assert ours.extra_noise_dim() == A.shape[-1] - d
    eps = torch.randn(5, batch, A.shape[-1], dtype=DTYPE)
    expected = params["mean"] + torch.einsum("bij,sbj->sbi", A, eps)
    torch.testing.assert_close(ours.noise_to_z(eps), expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# 5: gradients


@pytest.mark.parametrize("family", EVERY_FAMILY)
@pytest.mark.parametrize("latent_dim,rank", [(4, 2), (5, 5)])
def test_gradients_flow_to_every_parameter(family, latent_dim, rank):
    torch.manual_seed(6)
    batch = 3
    rank = REFERENCES[family].rank(latent_dim, rank)
    params = random_params(family, batch, latent_dim, rank, scale_range=(0.3, 3.0), offdiag_max=1.0)
    leaves = {name: value.requires_grad_(True) for name, value in params.items() if torch.is_tensor(value)}
    ours = build(family, params)
    z, log_q = ours.rsample_and_log_prob(4)
    loss = z.sum() + log_q.sum() + ours.kl_to_standard_normal().sum()
    loss.backward()
    for name, tensor in leaves.items():
        assert tensor.grad is not None, name
        assert tensor.grad.shape == tensor.shape, name
        assert torch.isfinite(tensor.grad).all(), name
        assert (tensor.grad != 0).all(), (name, tensor.grad)


def reference_from_head(family, head, latent_dim, cfg):
    """MultivariateNormal from a raw head, by the head layout and transforms written out here."""
    ref = REFERENCES[family]
    d = latent_dim
    mean = head[..., :d]
    params = {"mean": mean}
    if ref.has_scale:
        raw = head[..., d:2 * d]
        if cfg.scale_transform == "exp":
            params["scale"] = torch.exp(raw / 2) + cfg.scale_floor
        else:
            params["scale"] = torch.log1p(torch.exp(raw)) + cfg.scale_floor
    params["offdiag"] = head[..., (2 if ref.has_scale else 1) * d:] * cfg.offdiag_scale
    if ref.has_jitter:
        params["jitter"] = cfg.jitter
    return MultivariateNormal(mean, covariance_matrix=ref.covariance(params))


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_values_and_gradients_wrt_raw_head_match_torch_distributions(family):
    """log_prob and the KL, and their gradients w.r.t. the raw head, against a MultivariateNormal built
    from the same covariance: a wrong backward (or a detached part) shows up as a gradient mismatch."""
    torch.manual_seed(10)
    for d, k in [(1, 1), (3, 2), (6, 3)]:
        k = REFERENCES[family].rank(d, k)
        cfg = family_cfg(family, k, offdiag_scale=REFERENCES[family].head_offdiag_scale, jitter=0.05)
        batch = 4
        head = torch.randn(batch, FAMILIES[family].head_size(d, k), dtype=DTYPE, requires_grad=True)
        ours = FAMILIES[family].from_head(head, d, cfg)
        ref = reference_from_head(family, head, d, cfg)
        z = 2 * torch.randn(5, batch, d, dtype=DTYPE)
        weights = torch.rand(5, batch, dtype=DTYPE)  # so that gradients of different points do not cancel
        prior = MultivariateNormal(torch.zeros(d, dtype=DTYPE), torch.eye(d, dtype=DTYPE))
        for actual, expected in [(ours.log_prob(z), ref.log_prob(z)),
                                 (ours.kl_to_standard_normal(), kl_divergence(ref, prior))]:
            msg = lambda m, d=d, k=k: f"d={d} k={k}: {m}"
            torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=msg)
            w = weights if actual.dim() == 2 else weights[0]
            (grad,) = torch.autograd.grad((w * actual).sum(), head, retain_graph=True)
            (expected_grad,) = torch.autograd.grad((w * expected).sum(), head, retain_graph=True)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-9, msg=msg)


# ----------------------------------------------------------------------------------------------------
# 6: head sizes, the interface, refusals, the study's settings, the YAML files


def valid_ranks(family, latent_dim):
    return [k for k in range(2 * latent_dim + 3) if FAMILIES[family].rank_error(latent_dim, k) is None]


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_head_formula_equals_head_split(family):
    """head_formula (the closed form in params.csv) and head_split (what from_head cuts) are written
    independently; they must agree wherever the rank is valid, and with the formula written out here."""
    cls = FAMILIES[family]
    checked = 0
    for d in range(1, 41):
        ranks = valid_ranks(family, d)
        assert ranks, (family, d)
        for k in ranks:
            assert cls.head_formula(d, k) == sum(cls.head_split(d, k)), (family, d, k)
            assert cls.head_formula(d, k) == REFERENCES[family].head_size(d, k), (family, d, k)
            assert head_size(family, d, k) == REFERENCES[family].head_size(d, k), (family, d, k)
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_every_family_satisfies_the_protocol(family):
    cls = FAMILIES[family]
    assert cls.name == family
    assert cls.has_diagonal_head == REFERENCES[family].has_scale
    for d in (1, 3):
        k = valid_ranks(family, d)[0]
        head = torch.randn(2, cls.head_size(d, k), dtype=DTYPE)
        q = cls.from_head(head, d, family_cfg(family, k))
        assert isinstance(q, PosteriorFamily), family
        assert q.covariance().shape == (2, d, d)
        assert q.noise(3).shape == (3, 2, d + q.extra_noise_dim())
        assert q.rsample(3).shape == (3, 2, d)


def tiny_vae(family, latent_dim, rank, seed=0, built_in=torch.float32, **overrides):
    """A small VAE in float64, built in `built_in` (float64: its start is not rounded to float32 first)."""
    from vae_compare.model import VAE, VAEConfig

    config = VAEConfig(latent_dim, [8], [8], "tanh", family_cfg(family, rank, **overrides))
    default = torch.get_default_dtype()
    torch.set_default_dtype(built_in)
    try:
        return VAE(config, seed).double()
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_refusals(family):
    """config_error names what the family refuses, in one line, and init_head will not start a head with it."""
    cls = FAMILIES[family]
    for d, values, fragments in REFERENCES[family].refusals:
        cfg = family_cfg(family, **values)
        message = cls.config_error(cfg, d)
        assert message is not None and "\n" not in message, (d, values)
        for fragment in fragments:
            assert fragment in message, (d, values, message)
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            cls.init_head(torch.nn.Linear(8, cls.head_size(d, cfg.rank)), d, cfg)
    for d, values in REFERENCES[family].accepted:
        assert FAMILIES[family].config_error(family_cfg(family, **values), d) is None, (d, values)
    assert REFERENCES[family].refusals and REFERENCES[family].accepted


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_study_settings_are_the_familys_own_and_name_config_keys(family):
    """Each family declares its tuning grid and answer runs itself (a subclass does not inherit another
    family's tuned setting), and every override names a key of the schema."""
    from vae_compare.config import schema_fields

    cls = FAMILIES[family]
    assert "tuning_grid" in vars(cls) and "answer_runs" in vars(cls)
    keys = {name for name, _ in schema_fields()}
    overrides = [o for sweep in cls.tuning_grid for o in sweep] + [o for run in cls.answer_runs for o in run.overrides]
    for override in overrides:
        key, value = override.split("=", 1)
        assert key in keys and value and " " not in value, override
    assert cls.tuning_grid, family


def test_family_yaml_files_list_every_key_and_compose():
    """Every family has a YAML file listing every FamilyConfig key (so every run logs the same keys), and
    each composes into the typed schema and passes validate and its family's checks at the default latent_dim;
    a rank written as ${latent_dim} follows latent_dim."""
    from vae_compare.config import Config, FamilyConfig, validate

    files = {path.stem: path for path in CONF_FAMILY.glob("*.yaml")}
    assert set(files) == set(FAMILIES)
    keys = {field for field in FamilyConfig.__dataclass_fields__}
    for family, path in files.items():
        values = yaml.safe_load(path.read_text())
        assert set(values) == keys, family
        cfg = OmegaConf.merge(OmegaConf.structured(Config), {"family": values})
        assert cfg.family.name == family
        validate(cfg)
        assert FAMILIES[family].config_error(cfg.family, cfg.latent_dim) is None
        if values["rank"] == "${latent_dim}":
            cfg.latent_dim = 7
            assert cfg.family.rank == 7
    assert yaml.safe_load(files["rank1sum"].read_text())["rank"] == "${latent_dim}"


# ----------------------------------------------------------------------------------------------------
# 7: latent_dim = 1


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_latent_dim_one(family):
    torch.manual_seed(7)
    batch = 4
    rank = 1 if FAMILIES[family].uses_rank else 0
    params = random_params(family, batch, 1, rank)
    assert FAMILIES[family].head_split(1, rank)[-1] == REFERENCES[family].offdiag_width(1, rank)
    ours, ref = build(family, params), reference(family, params)

    torch.testing.assert_close(
        ours.kl_to_standard_normal(), kl_divergence(ref, standard_normal(ref, batch, 1)), rtol=RTOL, atol=ATOL
    )
    z, log_q = ours.rsample_and_log_prob(6)
    assert z.shape == (6, batch, 1) and log_q.shape == (6, batch)
    torch.testing.assert_close(log_q, ref.log_prob(z), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL)

    # a one-dimensional Gaussian: the covariance is its variance, the log-determinant that variance's log
    expected_var = REFERENCES[family].covariance(params)
    torch.testing.assert_close(ours.covariance(), expected_var, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.log_det_cov(), expected_var.log().flatten(), rtol=RTOL, atol=ATOL)
    assert head_size(family, 1, rank) == REFERENCES[family].head_size(1, 1)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_latent_dim_one_backward(family):
    torch.manual_seed(8)
    params = random_params(family, 3, 1, 1 if FAMILIES[family].uses_rank else 0, scale_range=(0.3, 3.0))
    leaves = {name: value.requires_grad_(True) for name, value in params.items() if torch.is_tensor(value)}
    ours = build(family, params)
    z, log_q = ours.rsample_and_log_prob(4)
    (z.sum() + log_q.sum() + ours.kl_to_standard_normal().sum()).backward()
    for name, tensor in leaves.items():
        if tensor.numel() == 0:  # an off-diagonal part can be empty at d = 1 (cholesky's, corr's)
            continue
        assert torch.isfinite(tensor.grad).all() and (tensor.grad != 0).all(), name


# ----------------------------------------------------------------------------------------------------
# 8: starts (init_head) in a real VAE


@pytest.mark.parametrize("family", [name for name, cls in FAMILIES.items() if cls is not DiagGaussian])
def test_start(family):
    """With offdiag_init=zero, a family with a diagonal part starts at the diagonal model (diag's mean and
    scale rows, a zero off-diagonal part: the same covariance and KL); one without starts every image at the
    covariance its reference states, whatever offdiag_scale, with a finite ELBO."""
    torch.manual_seed(13)
    d = 4
    x = torch.rand(5, 28 * 28, dtype=DTYPE)
    ref = REFERENCES[family]
    for k in {ref.rank(d, 2), ref.rank(d, 4)}:
        for offdiag_scale in (ref.config.get("offdiag_scale", 0.01), 0.1):
            model = tiny_vae(family, d, k, built_in=DTYPE, offdiag_scale=offdiag_scale)
            q = model.posterior(x)
            if ref.start is None:
                diag = tiny_vae("diag", d, 0, built_in=DTYPE, scale_transform=model.family_values.scale_transform,
                                scale_floor=model.family_values.scale_floor)
                q_diag = diag.posterior(x)
                torch.testing.assert_close(q.covariance(), q_diag.covariance(), rtol=1e-14, atol=1e-15)
                torch.testing.assert_close(q.kl_to_standard_normal(), q_diag.kl_to_standard_normal(), rtol=1e-14,
                                           atol=1e-14)
            else:
                expected = ref.start(d, model.family_values).expand(5, d, d)
                torch.testing.assert_close(q.covariance(), expected, rtol=1e-12, atol=1e-12)
                reconstruction, kl = model(x)
                assert torch.isfinite(reconstruction).all() and torch.isfinite(kl).all()


def test_random_start_changes_only_the_off_diagonal_rows():
    d, k = 4, 3
    diag = tiny_vae("diag", d, 0, scale_transform="softplus", scale_floor=1e-3)
    zero = tiny_vae("lowrank", d, k)
    random = tiny_vae("lowrank", d, k, offdiag_init="random", offdiag_init_std=0.1)
    again = tiny_vae("lowrank", d, k, offdiag_init="random", offdiag_init_std=0.1)
    other_seed = tiny_vae("lowrank", d, k, seed=1, offdiag_init="random", offdiag_init_std=0.1)
    zero_state, random_state = zero.state_dict(), random.state_dict()
    head = f"encoder.{len(zero.encoder) - 1}"
    for name, value in zero_state.items():
        if name.startswith(head):
            # the mean and scale rows are diag's; the V rows start with zero weights in both
            torch.testing.assert_close(value[:2 * d], diag.state_dict()[name], rtol=0, atol=0)
            torch.testing.assert_close(random_state[name][:2 * d], value[:2 * d], rtol=0, atol=0)
            if name.endswith("weight"):
                assert (value[2 * d:] == 0).all() and (random_state[name][2 * d:] == 0).all()
        else:
            torch.testing.assert_close(random_state[name], value, rtol=0, atol=0, msg=name)
    v_bias = random_state[f"{head}.bias"][2 * d:]
    # V = offdiag_scale * bias starts N(0, 0.1^2): 12 entries, a loose check of the standard deviation
    assert 0.03 < (0.01 * v_bias).std() < 0.3, v_bias
    torch.testing.assert_close(again.state_dict()[f"{head}.bias"], random_state[f"{head}.bias"], rtol=0, atol=0)
    assert not torch.equal(other_seed.state_dict()[f"{head}.bias"][2 * d:], v_bias)


def antithetic_elbo_gradient(model, x, num_pairs):
    """Gradient of the mean negative ELBO over `num_pairs` noise draws and their antithetic partners
    (V's noise eps_k negated, eps_d kept), w.r.t. the head's V rows (weights and biases)."""
    q = model.posterior(x)
    d = model.latent_dim
    eps = q.noise(num_pairs)
    flipped = torch.cat((eps[..., :d], -eps[..., d:]), -1)
    z = q.noise_to_z(torch.cat((eps, flipped)))
    loss = (-model.log_likelihood(x, z).mean(0) + q.kl_to_standard_normal()).sum()
    head = model.encoder[-1]
    grads = torch.autograd.grad(loss, (head.weight, head.bias))
    return torch.cat([grad[2 * d:].flatten() for grad in grads])


def test_lowrank_zero_start_is_stationary_and_random_start_is_not():
    """At V = 0 the ELBO is even in V, so its exact expected gradient w.r.t. V is zero: the KL's gradient
    (V - Sigma^-1 V) vanishes and each noise draw's reconstruction gradient is cancelled by its antithetic
    partner. A single draw's gradient is not zero (so the cancellation is not vacuous); from the random
    start the antithetic gradient is not zero."""
    torch.manual_seed(11)
    d, k = 4, 2
    x = torch.rand(6, 28 * 28, dtype=DTYPE)
    zero = tiny_vae("lowrank", d, k, offdiag_scale=1.0)
    assert antithetic_elbo_gradient(zero, x, 50).abs().max() < 1e-12
    q = zero.posterior(x)
    kl_grad = torch.autograd.grad(q.kl_to_standard_normal().sum(), zero.encoder[-1].bias, retain_graph=True)[0][2 * d:]
    assert kl_grad.abs().max() < 1e-12
    z = q.rsample(1)[0]
    one_draw = torch.autograd.grad(-zero.log_likelihood(x, z).sum(), zero.encoder[-1].bias)[0][2 * d:]
    assert one_draw.abs().max() > 1e-4

    random = tiny_vae("lowrank", d, k, offdiag_scale=1.0, offdiag_init="random", offdiag_init_std=0.1)
    assert antithetic_elbo_gradient(random, x, 50).abs().max() > 1e-4


def test_rank1sum_random_start_moves_every_column():
    """offdiag_init=random adds noise to the whole of V's [I | 0] start, the zero columns too."""
    torch.manual_seed(12)
    d, k = 3, 5
    x = torch.rand(4, 28 * 28, dtype=DTYPE)
    random = tiny_vae("rank1sum", d, k, offdiag_init="random", offdiag_init_std=0.1)
    factor = random.posterior(x[:1]).factor[0]
    assert (factor[:, d:] != 0).all()
    torch.testing.assert_close(factor[:, :d], torch.eye(d, dtype=DTYPE), rtol=0, atol=0.5)


# ----------------------------------------------------------------------------------------------------
# 9: float32 accuracy


def test_lowrank_log_prob_accurate_in_float32_when_ill_conditioned():
    """Diagonal scale ~3e-3 with |V| ~ 1: the Woodbury form's two terms are ~1e5 and nearly cancel (float32
    Woodbury: ~0.4 nat mean error). log_prob and rsample's log q must stay within 1e-3 nat of float64."""
    torch.manual_seed(14)
    batch, d, k = 64, 16, 4
    mean = torch.randn(batch, d)
    scale = 3e-3 * (0.7 + 0.6 * torch.rand(batch, d))
    factor = torch.randn(batch, d * k)
    q = FAMILIES["lowrank"](mean, scale, factor)
    z, log_q = q.rsample_and_log_prob(32)
    assert z.dtype == log_q.dtype == torch.float32
    exact = LowRankMultivariateNormal(mean.double(), factor.double().reshape(batch, d, k), scale.double().square())
    expected = exact.log_prob(z.double())
    assert (log_q.double() - expected).abs().mean() < 1e-3
    assert (q.log_prob(z).double() - expected).abs().mean() < 1e-3
    assert q.log_prob(z).dtype == torch.float32
