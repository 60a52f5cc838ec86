"""What every posterior family shares: the interface and sampling (GaussianFamily), the head layout of the
families without a diagonal part (FactorHeadFamily), and how a family's head rows start (start_rows)."""

import hashlib

import torch

from vae_compare.linalg import log_density_from_whitened
from vae_compare.posteriors.noise import draw_noise


def own_generator(block):
    """A CPU generator seeded from `block`, the PyTorch-default rows of the head that a start replaces.

    The VAE draws those rows from a stream that only they use (model.seeded part 3), so the draw changes
    with the run seed but consumes no stream that another part of the model, or another family, uses."""
    digest = hashlib.sha256(block.detach().to("cpu", torch.float64).numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def start_rows(layer, rows, family_cfg, bias=None):
    """Start the head rows `rows` as family.offdiag_init says; `bias` (default 0) is where they start.

    zero:    weights 0 and biases `bias`, the same start for every image.
    random:  as zero, plus N(0, offdiag_init_std^2) on the family's values (the head's bias divided by
             offdiag_scale), so that sweeping offdiag_scale does not move the start.
    default: PyTorch's weights and biases, plus `bias`."""
    with torch.no_grad():
        weight, old_bias = layer.weight[rows], layer.bias[rows]
        start = torch.zeros_like(old_bias) if bias is None else bias.to(old_bias)
        if family_cfg.offdiag_init == "default":
            layer.bias[rows] = old_bias + start
            return
        if family_cfg.offdiag_init == "random" and family_cfg.offdiag_scale > 0:
            draw = torch.randn(old_bias.shape, generator=own_generator(torch.cat((weight, old_bias[:, None]), 1)),
                               dtype=torch.float64)
            start = start + (family_cfg.offdiag_init_std / family_cfg.offdiag_scale * draw).to(start)
        layer.weight[rows] = 0
        layer.bias[rows] = start


class GaussianFamily:
    """A batch of Gaussians N(mean, Sigma), one per image, and the class-level description of its family.

    A family class sets name, head_formula_text, uses_rank and has_diagonal_head, and gives head_split,
    head_formula and from_head (and start_bias where its head does not start at zero); an instance sets
    mean and latent_dim and gives noise_to_z, log_prob, log_det_cov, variances, kl_to_standard_normal and
    covariance (and extra_noise_dim where it draws noise beyond d). Each family declares the study's settings,
    tuning_grid and answer_runs, in its own class body (vae_compare.posteriors.study)."""

    uses_rank = False

    @classmethod
    def head_size(cls, latent_dim, rank):
        return sum(cls.head_split(latent_dim, rank))

    @classmethod
    def rank_error(cls, latent_dim, rank):
        """Why family.rank is out of range for this family, or None."""
        return None if rank == 0 else f"family.rank applies to low-rank families only; {cls.name} needs rank=0, got {rank}"

    @classmethod
    def config_error(cls, family_cfg, latent_dim):
        """Why this family refuses family_cfg at latent_dim (one line for the user), or None."""
        return cls.rank_error(latent_dim, family_cfg.rank)

    @classmethod
    def start_bias(cls, latent_dim, family_cfg):
        """Where the head's last part starts (its biases, before offdiag_init's noise); None: at zero."""
        return None

    @classmethod
    def init_head(cls, layer, latent_dim, family_cfg):
        """Start the head's last part (the off-diagonal part, or the factor) as family.offdiag_init says, at
        start_bias (PyTorch's default init is already applied to every row). A refused config raises ValueError."""
        problem = cls.config_error(family_cfg, latent_dim)
        if problem:
            raise ValueError(problem)
        first = sum(cls.head_split(latent_dim, family_cfg.rank)[:-1])
        start_rows(layer, slice(first, None), family_cfg, bias=cls.start_bias(latent_dim, family_cfg))

    def extra_noise_dim(self):
        """Noise dimensions beyond d (lowrank's and rank1sum's k)."""
        return 0

    def log_q_from_noise(self, eps, z):
        if self.extra_noise_dim():
            # the map from d + k noise dimensions to d is not invertible: use the density of z
            return self.log_prob(z)
        # z = mean + A eps with A square: log q(z) = log N(eps; 0, I) - log |det A|, no solve needed
        return log_density_from_whitened(eps, self.log_det_cov())

    def noise(self, num_samples, noise=None):
        """eps of shape (S, B, d + extra): the first d dimensions and the extra ones from separate generators."""
        return draw_noise((num_samples,) + self.mean.shape[:-1], self.latent_dim, self.extra_noise_dim(), self.mean,
                          noise)

    def rsample(self, num_samples, noise=None):
        """Reparameterised z of shape (S, B, d), without log q (training needs only z)."""
        return self.noise_to_z(self.noise(num_samples, noise))

    def rsample_and_log_prob(self, num_samples, noise=None):
        """z of shape (S, B, d) and log q(z) of shape (S, B), from the noise that made z."""
        eps = self.noise(num_samples, noise)
        z = self.noise_to_z(eps)
        return z, self.log_q_from_noise(eps, z)


class FactorHeadFamily(GaussianFamily):
    """A family with no diagonal part: its head is [mean (d) | factor (d x k), row-major], the factor is
    offdiag_scale times its head outputs, and Sigma is built from a sum of k outer products of the factor's
    columns plus family.jitter. Such a sum is singular with fewer than d columns, so k >= d."""

    uses_rank = True
    has_diagonal_head = False
    # why offdiag_scale must be > 0, for config_error
    whole_covariance = "the factor makes its whole covariance"
    # why fewer than d columns cannot be ({d}: latent_dim), for rank_error
    few_columns = "a sum of fewer than {d} outer products is singular"

    @staticmethod
    def head_formula(latent_dim, rank):
        return latent_dim * (1 + rank)

    @classmethod
    def head_split(cls, latent_dim, rank):
        """Widths of the head's parts, in order: mean, factor."""
        return [latent_dim, latent_dim * rank]

    @classmethod
    def rank_error(cls, latent_dim, rank):
        if rank >= latent_dim and rank >= 1:
            return None
        return (f"family.rank must be >= latent_dim ({latent_dim}) for {cls.name}: "
                f"{cls.few_columns.format(d=latent_dim)}; got {rank}")

    @classmethod
    def config_error(cls, family_cfg, latent_dim):
        problem = super().config_error(family_cfg, latent_dim)
        if problem is None and family_cfg.offdiag_scale <= 0:
            problem = f"family.offdiag_scale must be > 0 for {cls.name} ({cls.whole_covariance})"
        return problem

    @classmethod
    def from_head(cls, head, latent_dim, family_cfg):
        mean, factor = head.split(cls.head_split(latent_dim, family_cfg.rank), -1)
        return cls(mean, factor * family_cfg.offdiag_scale, family_cfg.jitter)

    def __init__(self, mean, factor, jitter):
        self.mean, self.latent_dim = mean, mean.shape[-1]
        self.factor = factor.unflatten(-1, (self.latent_dim, -1))  # (B, d, k)
        self.rank, self.jitter = self.factor.shape[-1], float(jitter)
