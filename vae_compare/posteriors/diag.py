"""The diagonal Gaussian, and the head layout every family with a diagonal part shares."""

import torch
import torch.nn.functional as F

from vae_compare.linalg import log_density_from_whitened
from vae_compare.posteriors.base import GaussianFamily
from vae_compare.posteriors.study import SCALE_TRANSFORMS, AnswerRun, grid


def positive_scale(raw, transform, floor):
    """Standard deviations from raw head outputs: exp(raw / 2) (raw is a log-variance) or softplus + floor."""
    if transform == "exp":
        return torch.exp(0.5 * raw) + floor
    return F.softplus(raw) + floor


# The setting the tuning grid selected. The answer also runs diag with its encoder widened to cholesky's
# parameter count (equal budget), but not at latent_dim 2: there cholesky's head has one output more than diag's
# (129 parameters, less than one hidden unit), so the widened encoder is diag's own and the run would repeat diag.
TUNED = ("family.scale_transform=softplus", "family.scale_floor=1e-3", "train.lr=1e-3")


class DiagGaussian(GaussianFamily):
    """N(mean, diag(scale^2)): 2d head outputs.

    Its head layout, [mean (d) | raw diagonal scale (d) | off-diagonal part], is every subclass's: they
    differ in the off-diagonal part alone, so a zero off-diagonal part is the diagonal Gaussian of the first
    two parts (has_diagonal_head; gaps starts other families' q* there)."""

    name = "diag"
    head_formula_text = "2d"
    has_diagonal_head = True
    tuning_grid = grid(SCALE_TRANSFORMS)
    answer_runs = (AnswerRun(TUNED), AnswerRun(TUNED + ("model.match_params=cholesky",), min_latent_dim=4))

    @staticmethod
    def offdiag_size(latent_dim, rank):
        return 0

    @staticmethod
    def head_formula(latent_dim, rank):
        """The head size as the closed form in d and k (params.csv), written apart from head_split."""
        return 2 * latent_dim

    @classmethod
    def head_split(cls, latent_dim, rank):
        """Widths of the head's parts, in order: mean, raw diagonal scale, off-diagonal part."""
        return [latent_dim, latent_dim, cls.offdiag_size(latent_dim, rank)]

    @classmethod
    def from_head(cls, head, latent_dim, family_cfg):
        """The distribution of each image from its head outputs (..., head_size)."""
        mean, raw_scale, offdiag = head.split(cls.head_split(latent_dim, family_cfg.rank), -1)
        scale = positive_scale(raw_scale, family_cfg.scale_transform, family_cfg.scale_floor)
        return cls(mean, scale, offdiag * family_cfg.offdiag_scale)

    def __init__(self, mean, scale, offdiag=None):
        self.mean, self.scale = mean, scale
        self.latent_dim = mean.shape[-1]

    def log_det_cov(self):
        return 2 * self.scale.log().sum(-1)

    def variances(self):
        return self.scale.square()

    def noise_to_z(self, eps):
        """eps (S, B, d + extra_noise_dim) -> z (S, B, d)."""
        return self.mean + self.scale * eps

    def log_prob(self, z):
        """log q(z) for z of shape (S, B, d) -> (S, B)."""
        return log_density_from_whitened((z - self.mean) / self.scale, self.log_det_cov())

    def kl_to_standard_normal(self):
        return (0.5 * (self.scale.square() + self.mean.square() - 1) - self.scale.log()).sum(-1)

    def covariance(self):
        return torch.diag_embed(self.variances())
