"""The model's build: equal-budget runs widen the encoder only, and families at one seed share every part
they have in common (issue: a fair comparison)."""

import pytest
import torch

from vae_compare.config import compose
from vae_compare.model import build_model, vae_config
from vae_compare.posteriors import Noise

FAMILY_OVERRIDES = {"diag": ["family=diag"], "cholesky": ["family=cholesky"], "lowrank": ["family=lowrank", "family.rank=3"]}


def config(family, *overrides):
    return compose([*FAMILY_OVERRIDES[family], *overrides])


@pytest.mark.parametrize("own,target", [("diag", "cholesky"), ("diag", "lowrank"), ("cholesky", "diag")])
@pytest.mark.parametrize("latent_dim", [2, 16, 64])
def test_match_params_within_one_percent(own, target, latent_dim):
    goal = sum(vae_config(config(target, f"latent_dim={latent_dim}", "model.match_rank=3")).parameter_counts())
    matched = vae_config(config(own, f"latent_dim={latent_dim}", f"model.match_params={target}", "model.match_rank=3"))
    assert abs(sum(matched.parameter_counts()) - goal) <= 0.01 * goal


@pytest.mark.parametrize("latent_dim", [2, 64])
def test_equal_budget_widens_the_encoder_only(latent_dim):
    plain_diag = vae_config(config("diag", f"latent_dim={latent_dim}"))
    cholesky = vae_config(config("cholesky", f"latent_dim={latent_dim}"))
    matched = vae_config(config("diag", f"latent_dim={latent_dim}", "model.match_params=cholesky"))
    # log p(x) is the decoder's: at one latent size it is the same for every family and every budget
    assert matched.decoder_hidden == cholesky.decoder_hidden == plain_diag.decoder_hidden == [256, 512]
    assert matched.parameter_counts()[1] == cholesky.parameter_counts()[1] == plain_diag.parameter_counts()[1]
    if latent_dim == 64:  # at d=2 the heads differ by 256 parameters, below one unit of width
        assert matched.encoder_hidden[0] > plain_diag.encoder_hidden[0]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_families_at_one_seed_start_with_identical_shared_parts(seed):
    latent_dim = 4
    models = {family: build_model(config(family, f"latent_dim={latent_dim}", "model.hidden=[32,16]", f"seed={seed}"))
              for family in FAMILY_OVERRIDES}
    reference = models["diag"]
    for family, model in models.items():
        for ours, theirs in zip(model.encoder[:-1].parameters(), reference.encoder[:-1].parameters()):
            assert torch.equal(ours, theirs), family
        assert torch.equal(model.encoder[-1].weight[:2 * latent_dim], reference.encoder[-1].weight), family
        assert torch.equal(model.encoder[-1].bias[:2 * latent_dim], reference.encoder[-1].bias), family
        for ours, theirs in zip(model.decoder.parameters(), reference.decoder.parameters()):
            assert torch.equal(ours, theirs), family
    other_seed = build_model(config("diag", f"latent_dim={latent_dim}", "model.hidden=[32,16]", f"seed={seed + 1}"))
    assert not torch.equal(other_seed.decoder[0].weight, reference.decoder[0].weight)

    # the noise behind the first d dimensions is the same stream for every family, step after step
    x = torch.rand(5, 784)
    first_d = {}
    for family, model in models.items():
        noise = Noise(seed, torch.device("cpu"))
        q = model.posterior(x)
        first_d[family] = [q.noise(2, noise)[..., :latent_dim] for _ in range(3)]
    for family in models:
        for step in range(3):
            assert torch.equal(first_d[family][step], first_d["diag"][step]), (family, step)
