"""Check the Gaussian posterior families against torch.distributions.

Every reference below is built by the test itself from the raw tensors (mean, scale, off-diagonal values,
V, jitter, or the raw head), never from the attributes of the class under test, so a wrong layout or
formula shows up as a mismatch.
"""

import math
from pathlib import Path
from types import SimpleNamespace

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

from vae_compare.posteriors import FAMILIES, PosteriorFamily, head_size

FAMILY_NAMES = ["diag", "cholesky", "lowrank", "corr", "rank1sum"]
DTYPE = torch.float64
RTOL, ATOL = 1e-8, 1e-10
CONF_FAMILY = Path(__file__).resolve().parents[1] / "conf" / "family"


def offdiag_size(family, latent_dim, rank):
    """Width of the off-diagonal part (V for rank1sum), written out here rather than taken from the class."""
    if family == "diag":
        return 0
    if family in ("cholesky", "corr"):
        return latent_dim * (latent_dim - 1) // 2
    return latent_dim * rank


def expected_head_size(family, d, k):
    return {"diag": 2 * d, "cholesky": d + d * (d + 1) // 2, "lowrank": d * (k + 2), "corr": d * (d + 3) // 2,
            "rank1sum": d + d * k}[family]


def random_params(family, batch, latent_dim, rank, scale_range=(0.05, 5.0), offdiag_max=2.0, jitter=0.05):
    """The raw tensors of one batch: mean (B, d); scale (B, d) log-uniform in scale_range (not rank1sum);
    off-diagonal values (cholesky, lowrank, corr: unconstrained) or V (rank1sum, (B, d*k)) uniform in
    [-offdiag_max, offdiag_max]; rank1sum's jitter."""
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    params = {"mean": 2 * torch.randn(batch, latent_dim, dtype=DTYPE)}
    if family != "rank1sum":
        params["scale"] = torch.exp(low + (high - low) * torch.rand(batch, latent_dim, dtype=DTYPE))
    if family != "diag":
        width = offdiag_size(family, latent_dim, rank)
        params["offdiag"] = offdiag_max * (2 * torch.rand(batch, width, dtype=DTYPE) - 1)
    if family == "rank1sum":
        params["jitter"] = jitter
    if family in ("cholesky", "corr", "rank1sum"):
        params["offdiag"] = limit_conditioning(family, params)
    return params


def limit_conditioning(family, params, max_cond=1e8):
    """Halve an image's off-diagonal values (V for rank1sum) until cond(Sigma) <= max_cond.

    A random triangular L with diagonal 0.05 and off-diagonal 2 can have cond(L) ~ 1e12, and partial
    correlations near +-1 make Omega nearly singular; then float64 itself cannot give a reference
    log-density or log det to 1e-8, whatever the implementation. With zero off-diagonal values,
    cond(Sigma) <= (5 / 0.05)^2 (rank1sum: 1, as Sigma = jitter I), so this ends.
    """
    params = dict(params, offdiag=params["offdiag"].clone())
    while True:
        too_wide = torch.linalg.cond(reference_covariance(family, params)) > max_cond
        if not too_wide.any():
            return params["offdiag"]
        params["offdiag"][too_wide] *= 0.5


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


def reference_covariance(family, params):
    """Sigma (B, d, d) from the raw tensors, by each family's definition."""
    mean = params["mean"]
    batch, d = mean.shape
    if family == "diag":
        return torch.diag_embed(params["scale"].square())
    if family == "cholesky":
        L = cholesky_factor(params["scale"], params["offdiag"])
        return L @ L.transpose(-1, -2)
    if family == "lowrank":
        V = params["offdiag"].reshape(batch, d, -1)  # row-major (d, k)
        return torch.diag_embed(params["scale"].square()) + V @ V.transpose(-1, -2)
    if family == "corr":
        # torch's own implementation of Stan's map from unconstrained values to the Cholesky factor of Omega
        corr_tril = CorrCholeskyTransform()(params["offdiag"])
        omega = corr_tril @ corr_tril.transpose(-1, -2)
        scale = params["scale"]
        return scale.unsqueeze(-1) * omega * scale.unsqueeze(-2)
    V = params["offdiag"].reshape(batch, d, -1)
    return V @ V.transpose(-1, -2) + params["jitter"] * torch.eye(d, dtype=DTYPE)


def reference(family, params):
    """The same distribution as a torch.distributions object with batch shape (B,) and event shape (d,)."""
    mean = params["mean"]
    if family == "diag":
        return Independent(Normal(mean, params["scale"]), 1)
    if family == "cholesky":
        return MultivariateNormal(mean, scale_tril=cholesky_factor(params["scale"], params["offdiag"]))
    if family == "lowrank":
        batch, d = mean.shape
        V = params["offdiag"].reshape(batch, d, -1)
        return LowRankMultivariateNormal(mean, cov_factor=V, cov_diag=params["scale"].square())
    # corr, rank1sum: torch.distributions factorises Sigma itself
    return MultivariateNormal(mean, covariance_matrix=reference_covariance(family, params))


def build(family, params):
    """The class under test from the same raw tensors."""
    if family == "diag":
        return FAMILIES[family](params["mean"], params["scale"])
    if family == "rank1sum":
        return FAMILIES[family](params["mean"], params["offdiag"], params["jitter"])
    return FAMILIES[family](params["mean"], params["scale"], params["offdiag"])


def standard_normal(family, batch, latent_dim):
    zeros = torch.zeros(batch, latent_dim, dtype=DTYPE)
    if family == "diag":
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)
    eye = torch.eye(latent_dim, dtype=DTYPE).expand(batch, latent_dim, latent_dim)
    return MultivariateNormal(zeros, scale_tril=eye)


def make_case(family, batch, latent_dim, rank, **kwargs):
    """(posterior under test, reference distribution) built from the same random raw tensors."""
    params = random_params(family, batch, latent_dim, rank, **kwargs)
    return build(family, params), reference(family, params)


def random_cases(family, num_cases=20, seed=0):
    """Varied (batch, latent_dim, rank, scale range) cases; rank runs over 1..d for lowrank, d..d+3 for
    rank1sum, whose jitter runs over 1e-4..0.5."""
    gen = torch.Generator().manual_seed(seed)
    scale_ranges = [(0.05, 5.0), (0.05, 0.5), (0.5, 5.0), (0.2, 2.0)]
    jitters = [1e-4, 0.05, 0.5]
    cases = []
    for i in range(num_cases):
        d = int(torch.randint(1, 13, (1,), generator=gen))
        batch = int(torch.randint(1, 6, (1,), generator=gen))
        rank = int(torch.randint(1, d + 1, (1,), generator=gen))
        case = {"batch": batch, "latent_dim": d, "rank": rank, "scale_range": scale_ranges[i % len(scale_ranges)]}
        if family == "rank1sum":
            case.update(rank=d + rank % 4, jitter=jitters[i % len(jitters)])
        cases.append(case)
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
        z, log_q = ours.rsample_and_log_prob(5)
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
# 4: sampling moments


SAMPLE_MOMENT_PARAMS = {
    "diag": {},
    "cholesky": {"offdiag": [[0.7, -0.5, 1.1], [-1.0, 0.4, 0.9]]},
    "lowrank": {"offdiag": [[0.6, -0.3, 1.0, 0.5, -0.8, 0.2], [-0.4, 0.9, 0.3, 0.0, 1.2, -0.6]]},
    "corr": {"offdiag": [[0.9, -0.6, 1.4], [-1.2, 0.3, 0.8]]},  # unconstrained: partial correlations tanh(x)
    "rank1sum": {"offdiag": [[0.6, -0.3, 1.0, 0.5, -0.8, 0.2, 0.4, 0.1, -0.9, 0.7, 0.3, -0.2],
                             [-0.4, 0.9, 0.3, 0.0, 1.2, -0.6, 0.5, 0.5, 0.8, -1.1, 0.2, 0.6]], "jitter": 0.05},
}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sample_moments(family):
    torch.manual_seed(5)
    num_samples = 200_000
    mean = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], dtype=DTYPE)
    params = {"mean": mean, "scale": torch.tensor([[0.8, 1.5, 0.4], [1.2, 0.6, 2.0]], dtype=DTYPE)}
    for name, value in SAMPLE_MOMENT_PARAMS[family].items():
        params[name] = torch.tensor(value, dtype=DTYPE) if isinstance(value, list) else value
    if family == "rank1sum":
        del params["scale"]
    ours = build(family, params)
    z, _ = ours.rsample_and_log_prob(num_samples)
    cov = ours.covariance()
    # sanity: the covariance the sample is compared against is the reference one
    torch.testing.assert_close(cov, reference_covariance(family, params))

    var = cov.diagonal(dim1=-2, dim2=-1)
    sample_mean = z.mean(0)
    mean_se = (var / num_samples).sqrt()
    assert ((sample_mean - mean).abs() <= 5 * mean_se).all(), (sample_mean, mean)

    centred = z - mean  # centre on the true mean so that each entry is a plain average
    sample_cov = torch.einsum("sbi,sbj->bij", centred, centred) / num_samples
    # for a Gaussian, Var(x_i x_j) = Sigma_ii Sigma_jj + Sigma_ij^2
    cov_se = ((var.unsqueeze(-1) * var.unsqueeze(-2) + cov.square()) / num_samples).sqrt()
    assert ((sample_cov - cov).abs() <= 5 * cov_se).all(), (sample_cov, cov)


@pytest.mark.parametrize("family", ["lowrank", "rank1sum"])
def test_noise_layout(family):
    """The first d noise dimensions (the stream every family shares) drive the diagonal or jitter term,
    the extra k dimensions drive V."""
    torch.manual_seed(15)
    batch, d, k = 2, 3, 4
    params = random_params(family, batch, d, k)
    ours = build(family, params)
    assert ours.extra_noise_dim() == k
    eps_d, eps_k = torch.randn(5, batch, d, dtype=DTYPE), torch.randn(5, batch, k, dtype=DTYPE)
    diagonal = params["scale"] if family == "lowrank" else math.sqrt(params["jitter"])
    V = params["offdiag"].reshape(batch, d, k)
    mean = params["mean"]
    z_d = ours.noise_to_z(torch.cat((eps_d, torch.zeros_like(eps_k)), -1))
    z_k = ours.noise_to_z(torch.cat((torch.zeros_like(eps_d), eps_k), -1))
    torch.testing.assert_close(z_d, mean + diagonal * eps_d, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(z_k, mean + (V @ eps_k.unsqueeze(-1)).squeeze(-1), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# 5: gradients


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("latent_dim,rank", [(4, 2), (5, 5)])
def test_gradients_flow_to_every_parameter(family, latent_dim, rank):
    torch.manual_seed(6)
    batch = 3
    rank = rank + latent_dim if family == "rank1sum" else rank
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


def family_cfg(family, rank, **overrides):
    """A family config node with every FamilyConfig key (the YAML defaults' shape)."""
    cfg = {"name": family, "rank": rank, "scale_transform": "exp" if family == "diag" else "softplus",
           "scale_floor": 0.0 if family == "diag" else 1e-3, "offdiag_init": "zero",
           "offdiag_scale": 1.0 if family == "rank1sum" else 0.01, "offdiag_init_std": 0.0,
           "jitter": 1e-4 if family == "rank1sum" else 0.0}
    return SimpleNamespace(**{**cfg, **overrides})


def reference_from_head(family, head, latent_dim, cfg):
    """MultivariateNormal from a raw head, by the head layout and transforms written out here."""
    d = latent_dim
    mean = head[..., :d]
    if family == "rank1sum":
        params = {"mean": mean, "offdiag": head[..., d:] * cfg.offdiag_scale, "jitter": cfg.jitter}
    else:
        raw = head[..., d:2 * d]
        if cfg.scale_transform == "exp":
            scale = torch.exp(raw / 2) + cfg.scale_floor
        else:
            scale = torch.log1p(torch.exp(raw)) + cfg.scale_floor
        params = {"mean": mean, "scale": scale, "offdiag": head[..., 2 * d:] * cfg.offdiag_scale}
    return MultivariateNormal(mean, covariance_matrix=reference_covariance(family, params))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_values_and_gradients_wrt_raw_head_match_torch_distributions(family):
    """log_prob and the KL, and their gradients w.r.t. the raw head, against a MultivariateNormal built
    from the same covariance: a wrong backward (or a detached part) shows up as a gradient mismatch."""
    torch.manual_seed(10)
    for d, k in [(1, 1), (3, 2), (6, 3)]:
        k = k + d if family == "rank1sum" else (k if family == "lowrank" else 0)
        # offdiag_scale 0.5 (1.5 for rank1sum) so that the off-diagonal part is not negligible
        cfg = family_cfg(family, k, offdiag_scale=1.5 if family == "rank1sum" else 0.5, jitter=0.05)
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
# 6: head sizes, the interface, the YAML files


def valid_ranks(family, latent_dim):
    return [k for k in range(2 * latent_dim + 3) if FAMILIES[family].rank_error(latent_dim, k) is None]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_head_formula_equals_head_split(family):
    """head_formula (the closed form in params.csv) and head_split (what from_head cuts) are written
    independently; they must agree wherever the rank is valid, and with the formula written out here."""
    assert set(FAMILIES) == set(FAMILY_NAMES)
    cls = FAMILIES[family]
    checked = 0
    for d in range(1, 41):
        ranks = valid_ranks(family, d)
        assert ranks, (family, d)
        for k in ranks:
            assert cls.head_formula(d, k) == sum(cls.head_split(d, k)), (family, d, k)
            assert cls.head_formula(d, k) == expected_head_size(family, d, k), (family, d, k)
            assert head_size(family, d, k) == expected_head_size(family, d, k), (family, d, k)
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_satisfies_the_protocol(family):
    cls = FAMILIES[family]
    assert cls.name == family
    for d in (1, 3):
        k = valid_ranks(family, d)[0]
        head = torch.randn(2, cls.head_size(d, k), dtype=DTYPE)
        q = cls.from_head(head, d, family_cfg(family, k))
        assert isinstance(q, PosteriorFamily), family
        assert q.covariance().shape == (2, d, d)
        assert q.noise(3).shape == (3, 2, d + q.extra_noise_dim())
        assert q.rsample(3).shape == (3, 2, d)


def test_rank_errors():
    rank1sum = FAMILIES["rank1sum"]
    for d, k in [(5, 4), (5, 0), (1, 0), (16, 3)]:
        message = rank1sum.rank_error(d, k)
        assert message is not None, (d, k)
        assert f"family.rank must be >= latent_dim ({d}) for rank1sum" in message
        assert "singular" in message and message.endswith(f"got {k}")
    assert rank1sum.rank_error(5, 5) is None and rank1sum.rank_error(5, 9) is None and rank1sum.rank_error(1, 1) is None
    assert FAMILIES["corr"].rank_error(4, 0) is None
    assert "corr needs rank=0, got 2" in FAMILIES["corr"].rank_error(4, 2)


def test_family_yaml_files_list_every_key_and_compose():
    """Every family has a YAML file listing every FamilyConfig key (so every run logs the same keys), and
    each composes into the typed schema and passes validate at the default latent_dim."""
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
        assert FAMILIES[family].rank_error(cfg.latent_dim, cfg.family.rank) is None
    # rank1sum's rank follows latent_dim
    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"family": yaml.safe_load(files["rank1sum"].read_text())})
    cfg.latent_dim = 7
    assert cfg.family.rank == 7


# ----------------------------------------------------------------------------------------------------
# 7: latent_dim = 1


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_latent_dim_one(family):
    torch.manual_seed(7)
    batch = 4
    params = random_params(family, batch, 1, 1)
    if family != "diag":
        assert params["offdiag"].shape == (batch, {"cholesky": 0, "corr": 0, "lowrank": 1, "rank1sum": 1}[family])
    ours, ref = build(family, params), reference(family, params)

    torch.testing.assert_close(
        ours.kl_to_standard_normal(), kl_divergence(ref, standard_normal(family, batch, 1)), rtol=RTOL, atol=ATOL
    )
    z, log_q = ours.rsample_and_log_prob(6)
    assert z.shape == (6, batch, 1) and log_q.shape == (6, batch)
    torch.testing.assert_close(log_q, ref.log_prob(z), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL)

    # a one-dimensional Gaussian: the variance is scale^2 (+ v^2 for lowrank; v^2 + jitter for rank1sum;
    # corr's Omega is [1])
    if family == "rank1sum":
        expected_var = params["offdiag"].square() + params["jitter"]
    else:
        extra = params["offdiag"].square().sum(-1, keepdim=True) if family == "lowrank" else 0
        expected_var = params["scale"].square() + extra
    torch.testing.assert_close(ours.covariance(), expected_var.unsqueeze(-1), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.log_det_cov(), expected_var.log().squeeze(-1), rtol=RTOL, atol=ATOL)
    assert head_size(family, 1, 1 if FAMILIES[family].uses_rank else 0) == expected_head_size(family, 1, 1)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_latent_dim_one_backward(family):
    torch.manual_seed(8)
    params = random_params(family, 3, 1, 1, scale_range=(0.3, 3.0))
    leaves = {name: value.requires_grad_(True) for name, value in params.items() if torch.is_tensor(value)}
    ours = build(family, params)
    z, log_q = ours.rsample_and_log_prob(4)
    (z.sum() + log_q.sum() + ours.kl_to_standard_normal().sum()).backward()
    for name, tensor in leaves.items():
        if tensor.numel() == 0:  # cholesky's and corr's off-diagonal part is empty at d = 1
            continue
        assert torch.isfinite(tensor.grad).all() and (tensor.grad != 0).all(), name


# ----------------------------------------------------------------------------------------------------
# 8: starts (init_head) in a real VAE


def tiny_vae(family, latent_dim, rank, seed=0, **overrides):
    from vae_compare.model import VAE, VAEConfig

    config = VAEConfig(latent_dim, [8], [8], "tanh", family_cfg(family, rank, **overrides))
    return VAE(config, seed).double()


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


def test_rank1sum_start_is_the_prior_covariance():
    """No diagonal model to start from: zero weights and biases [I | 0] give Sigma = (1 + jitter) I for
    every image and a finite ELBO; random adds noise to the whole of V (the zero columns too)."""
    torch.manual_seed(12)
    d, k = 3, 5
    x = torch.rand(4, 28 * 28, dtype=DTYPE)
    for offdiag_scale in (1.0, 0.1):
        model = tiny_vae("rank1sum", d, k, offdiag_scale=offdiag_scale, jitter=1e-4)
        q = model.posterior(x)
        expected = (1 + 1e-4) * torch.eye(d, dtype=DTYPE).expand(4, d, d)
        torch.testing.assert_close(q.covariance(), expected, rtol=1e-12, atol=1e-12)
        reconstruction, kl = model(x)
        assert torch.isfinite(reconstruction).all() and torch.isfinite(kl).all()
    random = tiny_vae("rank1sum", d, k, offdiag_init="random", offdiag_init_std=0.1)
    factor = random.posterior(x[:1]).factor[0]
    assert (factor[:, d:] != 0).all()
    torch.testing.assert_close(factor[:, :d], torch.eye(d, dtype=DTYPE), rtol=0, atol=0.5)
    with pytest.raises(ValueError, match="offdiag_scale must be > 0 for rank1sum"):
        tiny_vae("rank1sum", d, k, offdiag_scale=0.0)


def test_corr_zero_start_is_the_diagonal_model():
    torch.manual_seed(13)
    d = 4
    x = torch.rand(5, 28 * 28, dtype=DTYPE)
    diag = tiny_vae("diag", d, 0, scale_transform="softplus", scale_floor=1e-3)
    corr = tiny_vae("corr", d, 0)
    q_diag, q_corr = diag.posterior(x), corr.posterior(x)
    torch.testing.assert_close(q_corr.covariance(), q_diag.covariance(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(q_corr.kl_to_standard_normal(), q_diag.kl_to_standard_normal(), rtol=1e-14, atol=1e-14)


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
