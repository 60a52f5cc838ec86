"""Pieces of training that need no subprocess: the learning-rate schedule and the fair start."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_vae
from vae_compare.train import learning_rate


def burda(epochs):
    return OmegaConf.create({"lr_schedule": "burda", "lr": 1e-3, "epochs": epochs})


def test_burda_schedule_has_the_papers_stages():
    cfg = burda(3280)
    stage_starts = [sum(3 ** j for j in range(i)) for i in range(8)]  # 0, 1, 4, 13, 40, 121, 364, 1093
    for i, start in enumerate(stage_starts):
        assert learning_rate(cfg, start) == pytest.approx(1e-3 * 10 ** (-i / 7))
    assert learning_rate(cfg, 3279) == pytest.approx(1e-3 * 10 ** (-1))


def test_burda_schedule_scales_with_epochs():
    cfg = burda(328)  # a tenth: stage i lasts 3^i / 10 epochs, rounded, so stages 0 and 1 vanish
    rates = [learning_rate(cfg, e) for e in range(328)]
    assert rates[0] == pytest.approx(1e-3 * 10 ** (-2 / 7)) and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # the last stage takes the same share (2187/3280) of the run
    assert sum(r == pytest.approx(1e-4) for r in rates) == pytest.approx(328 * 2187 / 3280, abs=1)


@pytest.mark.parametrize("family,rank", [("cholesky", 0), ("lowrank", 3)])
def test_zero_init_starts_as_the_diagonal_model(family, rank):
    torch.manual_seed(0)
    model = make_vae(6, [32], "relu", family, rank, "softplus", 1e-3, "zero", 0.01)
    q = model.posterior(torch.rand(5, 784))
    assert torch.allclose(q.covariance(), torch.diag_embed(q.variances()))
    head = model.encoder[-1]
    assert head.weight[12:].abs().sum() == 0 and head.bias[12:].abs().sum() == 0
    # ...and the off-diagonal part still learns: its gradient is non-zero
    recon, kl = model(torch.rand(5, 784).round())
    (recon + kl).sum().backward()
    assert head.weight.grad[12:].abs().sum() > 0


def test_default_init_is_not_diagonal():
    torch.manual_seed(0)
    model = make_vae(6, [32], "relu", "cholesky", 0, "softplus", 1e-3, "default", 1.0)
    q = model.posterior(torch.rand(5, 784))
    assert not torch.allclose(q.covariance(), torch.diag_embed(q.variances()))


def test_offdiag_scale_multiplies_the_offdiagonal_outputs():
    torch.manual_seed(0)
    x = torch.rand(3, 784)
    big = make_vae(4, [16], "relu", "cholesky", 0, "softplus", 1e-3, "default", 1.0)
    small = make_vae(4, [16], "relu", "cholesky", 0, "softplus", 1e-3, "default", 0.01)
    small.load_state_dict(big.state_dict())
    assert torch.allclose(small.posterior(x).offdiag, 0.01 * big.posterior(x).offdiag)
    assert torch.equal(small.posterior(x).mean, big.posterior(x).mean)
