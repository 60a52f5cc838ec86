"""Reparameterisation noise: the first d dimensions of every family's noise come from one generator, any
extra dimensions (lowrank's and rank1sum's k) from another, so two families trained at one seed see the same
first-d noise at every step."""

import torch


class Noise:
    """Standard-normal noise from two generators: `latent` for the first d dimensions of a sample,
    `extra` for dimensions a family adds beyond d. Without a Noise, families draw from torch's global RNG."""

    def __init__(self, seed, device):
        self.latent = torch.Generator(device).manual_seed(seed * 1_000_003 + 11)
        self.extra = torch.Generator(device).manual_seed(seed * 1_000_003 + 12)

    def state(self):
        return {"latent": self.latent.get_state(), "extra": self.extra.get_state()}

    def load_state(self, state):
        self.latent.set_state(state["latent"])
        self.extra.set_state(state["extra"])


def standard_normal(shape, like, generator):
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def draw_noise(batch_shape, latent_dim, extra_dim, like, noise=None):
    """eps of shape batch_shape + (d + extra,): the first d dimensions from noise.latent, the extra ones from
    noise.extra (torch's global RNG without a Noise)."""
    eps = standard_normal(batch_shape + (latent_dim,), like, noise and noise.latent)
    if extra_dim == 0:
        return eps
    return torch.cat((eps, standard_normal(batch_shape + (extra_dim,), like, noise and noise.extra)), -1)
