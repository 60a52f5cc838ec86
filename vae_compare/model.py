"""The VAE: an MLP encoder whose head size comes from the posterior family, an MLP Bernoulli decoder."""

import dataclasses
import enum
import logging
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vae_compare.posteriors import FAMILIES, draw_noise

IMAGE_SIZE = 28 * 28
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes, activation):
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


def mlp_parameter_count(sizes):
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


@dataclass
class VAEConfig:
    """Everything that shapes one VAE. The decoder depends on latent_dim and decoder_hidden alone, so
    families compared at one latent size share it even when an equal-budget run widens the encoder."""

    latent_dim: int
    encoder_hidden: list
    decoder_hidden: list
    activation: str
    family: object  # the family's config node: name, rank, scale_transform, scale_floor, offdiag_*

    @property
    def head_size(self):
        return FAMILIES[self.family.name].head_size(self.latent_dim, self.family.rank)

    def parameter_counts(self):
        """(encoder, decoder) trainable parameters, from the layer shapes."""
        encoder = mlp_parameter_count([IMAGE_SIZE, *self.encoder_hidden, self.head_size])
        decoder = mlp_parameter_count([self.latent_dim, *self.decoder_hidden, IMAGE_SIZE])
        return encoder, decoder


def seeded(seed, part, build):
    """Build a module from its own random stream (seed, part), whatever was built before it: at one seed,
    the parts that two families share start bit-identical."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + part)
        return build()


class VAE(nn.Module):
    """encoder 784 -> encoder_hidden -> head (the family's outputs); decoder latent_dim -> decoder_hidden -> 784
    Bernoulli logits. `seed` starts the trunk, the head's mean and scale rows, its other rows and the
    decoder from separate streams."""

    def __init__(self, config: VAEConfig, seed=0, output_bias=None):
        super().__init__()
        self.config = config
        self.latent_dim, self.family = config.latent_dim, FAMILIES[config.family.name]
        self.head_size = config.head_size
        # the family's settings as plain values: read on every step, where a config node's attribute access
        # costs microseconds each
        self.family_values = plain_values(config.family)
        trunk = seeded(seed, 1, lambda: mlp([IMAGE_SIZE, *config.encoder_hidden], config.activation))
        width = config.encoder_hidden[-1]
        # nn.Linear draws every row from the same distribution (bounds depend on fan-in only), so the head is
        # built as two pieces and joined: its first 2d rows do not depend on how many rows follow
        pieces = [seeded(seed, 2, lambda: nn.Linear(width, 2 * config.latent_dim))]
        if self.head_size > 2 * config.latent_dim:
            pieces.append(seeded(seed, 3, lambda: nn.Linear(width, self.head_size - 2 * config.latent_dim)))
        head = nn.Linear(width, self.head_size)
        with torch.no_grad():
            head.weight.copy_(torch.cat([piece.weight for piece in pieces]))
            head.bias.copy_(torch.cat([piece.bias for piece in pieces]))
        self.family.init_head(head, config.latent_dim, config.family)
        self.encoder = nn.Sequential(*trunk, ACTIVATIONS[config.activation](), head)
        self.decoder = seeded(seed, 4, lambda: mlp([config.latent_dim, *config.decoder_hidden, IMAGE_SIZE],
                                                   config.activation))
        if output_bias is not None:  # replaces the drawn bias; draws nothing, so the other parts stay as they are
            with torch.no_grad():
                self.decoder[-1].bias.copy_(output_bias)

        # noise dimensions beyond d that the family draws per sample (lowrank's and rank1sum's k)
        with torch.no_grad():
            self.extra_noise_dim = self.family.from_head(torch.zeros(1, self.head_size), self.latent_dim,
                                                         self.family_values).extra_noise_dim()

    def posterior(self, x):
        return self.family.from_head(self.encoder(x), self.latent_dim, self.family_values)

    def log_likelihood(self, x, z):
        """log p(x|z) in nats for z of shape (..., B, d); x of shape (B, 784) holds Bernoulli means."""
        logits = self.decoder(z)
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def forward(self, x, noise=None):
        """Per-image reconstruction term -log p(x|z) (one sample) and KL(q(z|x) || N(0, I)), in nats."""
        return self.forward_from_noise(x, self.training_noise(x, noise))

    def training_noise(self, x, noise=None):
        """The noise of one training step (shape (1, B, d + extra)), drawn as the family's rsample draws it (the
        same generators, the same order), outside the forward pass: torch.compile cannot trace a draw from a
        torch.Generator, so train.compile compiles forward_from_noise only."""
        return draw_noise((1, x.shape[0]), self.latent_dim, self.extra_noise_dim, x, noise)

    def forward_from_noise(self, x, eps):
        """forward() with its noise given (see training_noise)."""
        q = self.posterior(x)
        z = q.noise_to_z(eps)[0]
        return -self.log_likelihood(x, z), q.kl_to_standard_normal()


def plain_values(node):
    """A config node (DictConfig, dataclass or namespace) as a namespace of plain Python values."""
    if isinstance(node, SimpleNamespace):
        return node
    if isinstance(node, DictConfig):
        values = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    else:
        values = dataclasses.asdict(node) if dataclasses.is_dataclass(node) else dict(vars(node))
    return SimpleNamespace(**{k: str(v) if isinstance(v, enum.Enum) else v for k, v in values.items()})


def encoder_matching(config: VAEConfig, target: VAEConfig):
    """Encoder hidden sizes scaled by one common factor so that `config` has the total parameter count of
    `target` (within 1%; found by bisection on the factor). The decoder is left as it is."""
    goal = sum(target.parameter_counts())

    def widened(factor):
        hidden = [max(1, round(width * factor)) for width in config.encoder_hidden]
        return dataclasses.replace(config, encoder_hidden=hidden)

    low, high = 0.01, 100.0
    for _ in range(60):
        middle = (low + high) / 2
        if sum(widened(middle).parameter_counts()) < goal:
            low = middle
        else:
            high = middle
    return min((widened(low), widened(high)), key=lambda c: abs(sum(c.parameter_counts()) - goal))


def vae_config(cfg) -> VAEConfig:
    """The run's VAEConfig: model.hidden for encoder and (reversed) decoder; with model.match_params, the
    encoder widened so that the run has the parameter count that family would have (equal budget)."""
    hidden = list(cfg.model.hidden)
    config = VAEConfig(cfg.latent_dim, hidden, hidden[::-1], str(cfg.model.activation), cfg.family)
    target = cfg.model.match_params
    if target is None or target == cfg.family.name:
        return config
    target_family = SimpleNamespace(name=str(target), rank=cfg.model.match_rank if FAMILIES[target].uses_rank else 0,
                                    jitter=0.0)
    matched = encoder_matching(config, dataclasses.replace(config, family=target_family))
    goal = sum(dataclasses.replace(config, family=target_family).parameter_counts())
    got = sum(matched.parameter_counts())
    if abs(got - goal) > 0.01 * goal:
        logging.getLogger(__name__).warning("model.match_params=%s: integer layer widths reach %d parameters, "
                                            "%.1f%% from the target %d", target, got, 100 * (got - goal) / goal, goal)
    return matched


def output_logits(mean_pixel, clip=1e-3):
    """Burda et al.'s decoder output bias: log(m / (1 - m)) of each pixel's training mean m clipped to
    [clip, 1 - clip] (the logits of the mean image)."""
    m = mean_pixel.detach().double().cpu().clamp(clip, 1 - clip)
    return torch.log(m / (1 - m)).float()


def build_model(cfg, data_mean=None) -> VAE:
    """The run's VAE. With model.output_bias=data_mean, `data_mean` (each pixel's mean grey level over the
    training images) sets the decoder's output bias; a caller that loads trained weights next may leave it out."""
    bias = None
    if cfg.model.output_bias == "data_mean" and data_mean is not None:
        bias = output_logits(data_mean)
    return VAE(vae_config(cfg), cfg.seed, bias)
