"""The VAE: an MLP encoder whose head size comes from the posterior family, an MLP Bernoulli decoder."""

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vae_compare.posteriors import FAMILIES, head_size, positive_scale

IMAGE_SIZE = 28 * 28
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes, activation):
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


def mlp_parameter_count(sizes):
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def parameter_counts(latent_dim, hidden, family, rank):
    """(encoder, decoder) trainable parameters, from the layer shapes."""
    encoder = mlp_parameter_count([IMAGE_SIZE, *hidden, head_size(family, latent_dim, rank)])
    decoder = mlp_parameter_count([latent_dim, *reversed(hidden), IMAGE_SIZE])
    return encoder, decoder


def hidden_matching(latent_dim, hidden, family, rank, target_family, target_rank):
    """Hidden sizes scaled by one common factor so that `family` has the total parameter count that
    `target_family` has with the given hidden sizes (within 1%; found by bisection on the factor)."""
    target = sum(parameter_counts(latent_dim, hidden, target_family, target_rank))

    def scaled(factor):
        return [max(1, round(width * factor)) for width in hidden]

    low, high = 0.01, 100.0
    for _ in range(60):
        middle = (low + high) / 2
        if sum(parameter_counts(latent_dim, scaled(middle), family, rank)) < target:
            low = middle
        else:
            high = middle
    best = min((scaled(low), scaled(high)), key=lambda h: abs(sum(parameter_counts(latent_dim, h, family, rank)) - target))
    return best


class VAE(nn.Module):
    def __init__(self, latent_dim, hidden, activation, family, rank=0, scale_transform="exp", scale_floor=0.0,
                 offdiag_init="zero", offdiag_scale=1.0):
        super().__init__()
        self.latent_dim, self.family, self.rank = latent_dim, family, rank
        self.scale_transform, self.scale_floor, self.offdiag_scale = scale_transform, scale_floor, offdiag_scale
        self.head_size = head_size(family, latent_dim, rank)
        self.encoder = mlp([IMAGE_SIZE, *hidden, self.head_size], activation)
        self.decoder = mlp([latent_dim, *reversed(hidden), IMAGE_SIZE], activation)
        if offdiag_init == "zero":
            # every family starts as the diagonal model: off-diagonal head outputs are exactly zero
            head = self.encoder[-1]
            with torch.no_grad():
                head.weight[2 * latent_dim:].zero_()
                head.bias[2 * latent_dim:].zero_()

    def posterior(self, x):
        head = self.encoder(x)
        mean, raw_scale, offdiag = head.split([self.latent_dim, self.latent_dim, self.head_size - 2 * self.latent_dim], -1)
        scale = positive_scale(raw_scale, self.scale_transform, self.scale_floor)
        return FAMILIES[self.family](mean, scale, offdiag * self.offdiag_scale)

    def log_likelihood(self, x, z):
        """log p(x|z) in nats for z of shape (..., B, d); x of shape (B, 784) holds Bernoulli means."""
        logits = self.decoder(z)
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def forward(self, x):
        """Per-image reconstruction term -log p(x|z) (one sample) and KL(q(z|x) || N(0, I)), in nats."""
        q = self.posterior(x)
        z = q.rsample_z(1)[0]
        return -self.log_likelihood(x, z), q.kl_to_standard_normal()


def build_hidden(cfg):
    """The run's hidden sizes: model.hidden, widened for an equal-budget run (model.match_params)."""
    hidden = list(cfg.model.hidden)
    target = cfg.model.match_params
    if target is None or target == cfg.family.name:
        return hidden
    target_rank = cfg.model.match_rank if target == "lowrank" else 0
    matched = hidden_matching(cfg.latent_dim, hidden, cfg.family.name, cfg.family.rank, target, target_rank)
    goal = sum(parameter_counts(cfg.latent_dim, hidden, target, target_rank))
    got = sum(parameter_counts(cfg.latent_dim, matched, cfg.family.name, cfg.family.rank))
    if abs(got - goal) > 0.01 * goal:
        logging.getLogger(__name__).warning("model.match_params=%s: integer layer widths reach %d parameters, "
                                            "%.1f%% from the target %d", target, got, 100 * (got - goal) / goal, goal)
    return matched


def build_model(cfg, hidden):
    family = cfg.family
    return VAE(cfg.latent_dim, hidden, cfg.model.activation, family.name, family.rank,
               family.scale_transform, family.scale_floor, family.offdiag_init, family.offdiag_scale)
