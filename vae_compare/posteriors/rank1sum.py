"""A sum of rank-one matrices and nothing else."""

import math

import torch

from vae_compare.linalg import cholesky_or_nan, log_density_from_whitened, log_det_tril, solve_tril
from vae_compare.posteriors.base import FactorHeadFamily
from vae_compare.posteriors.study import OFFDIAG_SCALES, AnswerRun, grid


class Rank1SumGaussian(FactorHeadFamily):
    """N(mean, V V^T + jitter I) with V of shape (d, k), k >= d: d + dk head outputs, [mean | V].

    V V^T is positive definite only when V has rank d, so k < d is refused (rank_error) and a fixed jitter
    (family.jitter) keeps Sigma positive definite, and its float32 Cholesky accurate, when columns of V
    collapse during training. Sigma is factorised as a d x d Cholesky per image.

    It has no diagonal model to start from: V's head rows start with zero weights and biases
    START_SCALE * [I_d | 0] (divided by offdiag_scale, which multiplies V), so at step 0 every image has
    Sigma = (1 + jitter) I, the prior's covariance, and the KL starts from the means alone. With k > d the zero
    columns are a stationary point of the ELBO (it is even in each column); offdiag_init=random starts them off
    zero."""

    name = "rank1sum"
    head_formula_text = "d + dk"
    whole_covariance = "V is its whole covariance"
    few_columns = "V V^T with fewer than {d} columns is singular, so Sigma would be too"
    START_SCALE = 1.0
    # no diagonal part: no scale transform to choose
    tuning_grid = grid(OFFDIAG_SCALES)
    answer_runs = (AnswerRun(("family.offdiag_scale=0.1", "train.lr=1e-3")),)

    @classmethod
    def start_bias(cls, latent_dim, family_cfg):
        """V starts at START_SCALE * [I_d | 0] (see the class docstring)."""
        start = torch.zeros(latent_dim, family_cfg.rank, dtype=torch.float64)
        start[:, :latent_dim] = torch.eye(latent_dim) * cls.START_SCALE / family_cfg.offdiag_scale
        return start.flatten()

    def __init__(self, mean, factor, jitter):
        super().__init__(mean, factor, jitter)
        self.cov_tril = cholesky_or_nan(self.covariance())

    def log_det_cov(self):
        return log_det_tril(self.cov_tril)

    def variances(self):
        return self.factor.square().sum(-1) + self.jitter

    def extra_noise_dim(self):
        return self.rank

    def noise_to_z(self, eps):
        # z = mean + V eps_k + sqrt(jitter) eps_d: the first d noise dims are the stream every family shares
        eps_jitter, eps_factor = eps.split([self.latent_dim, self.rank], -1)
        return self.mean + math.sqrt(self.jitter) * eps_jitter + torch.einsum("bdk,sbk->sbd", self.factor, eps_factor)

    def log_prob(self, z):
        return log_density_from_whitened(solve_tril(self.cov_tril, z - self.mean), self.log_det_cov())

    def kl_to_standard_normal(self):
        trace = self.factor.square().sum((-1, -2)) + self.latent_dim * self.jitter
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim - self.log_det_cov())

    def covariance(self):
        eye = torch.eye(self.latent_dim, dtype=self.mean.dtype, device=self.mean.device)
        return self.factor @ self.factor.transpose(-1, -2) + self.jitter * eye
