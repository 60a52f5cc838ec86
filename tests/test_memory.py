"""The memory estimate against real models: the optimizer state it counts is the bytes a real Adam step
leaves, its training activations cover what backward keeps, and an impossible model is refused in one line."""

import pytest
import torch

from vae_compare import UserError
from vae_compare.config import compose
from vae_compare.memory import check_fits, estimate, total
from vae_compare.model import build_model
from vae_compare.train import make_optimizer, train_step

SMALL = ["latent_dim=8", "model.hidden=[64,32]", "train.batch_size=50"]
FAMILIES = [["family=diag"], ["family=cholesky"], ["family=lowrank", "family.rank=2"], ["family=corr"],
            ["family=rank1sum"], ["family=diag", "model.match_params=cholesky"]]


@pytest.mark.parametrize("family", FAMILIES, ids=" ".join)
def test_state_is_the_bytes_of_a_real_adam_step(family):
    cfg = compose([*family, *SMALL])
    model = build_model(cfg)
    optimizer = make_optimizer(model, 1e-3)
    train_step(model, optimizer, torch.rand(50, 784).bernoulli(), 1.0, float("inf"))
    parameters = list(model.parameters())
    moments = [tensor for state in optimizer.state.values() for name, tensor in state.items() if name != "step"]
    real = sum(t.numel() * t.element_size() for t in [*parameters, *(p.grad for p in parameters), *moments])
    parts = estimate(cfg, "cpu")
    assert parts["parameters"] == sum(p.numel() for p in parameters)
    assert parts["state"] == real


@pytest.mark.parametrize("latent_dim", [4, 64])
@pytest.mark.parametrize("family", FAMILIES[:5], ids=" ".join)
def test_training_activations_cover_what_backward_keeps(family, latent_dim):
    cfg = compose([*family, *SMALL, f"latent_dim={latent_dim}"])
    model = build_model(cfg)
    kept = {}

    def pack(tensor):  # every tensor autograd saves for backward, counted once per storage
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.rand(50, 784).bernoulli())
    training = estimate(cfg, "cpu")["training"]
    assert sum(kept.values()) <= training
    if latent_dim == 4:  # no d x d term to speak of: the per-unit factor alone is not wildly high
        assert training <= 4 * sum(kept.values())


def test_an_impossible_model_is_refused_in_one_line():
    cfg = compose(["model.hidden=[100000,100000]"])
    parameters = estimate(cfg, "cpu")["parameters"]
    assert parameters > 2e10
    with pytest.raises(UserError) as error:
        check_fits(cfg, torch.device("cpu"))
    message = str(error.value)
    assert "\n" not in message and f"{parameters:,} parameters" in message and "cpu has" in message
    check_fits(compose(SMALL), torch.device("cpu"))  # a small model fits
    small = compose(SMALL)
    with pytest.raises(UserError, match="does not fit"):
        check_fits(small, torch.device("cpu"), available=total(estimate(small, "cpu")) - 1)
