"""A learned symmetric square root of the covariance."""

import torch

from vae_compare.linalg import cholesky_or_nan, log_density_from_whitened, log_det_tril, solve_cholesky
from vae_compare.posteriors.base import FactorHeadFamily
from vae_compare.posteriors.study import OFFDIAG_SCALES, AnswerRun, grid


class SqrtGaussian(FactorHeadFamily):
    """N(mean, S^2), S = (1/k) G G^T + jitter I, G of shape (d, k) with k >= d: z = mean + S eps. d + dk head
    outputs, [mean | G]. S is a symmetric square root of Sigma, the sum of k outer products g_i g_i^T of G's
    columns (the question thread's Sigma^1/2 = (1/N) sum_i g_i(x) g_i(x)^T, with N = k = family.rank).

    Positive definite for every G: G G^T / k is positive semi-definite, so each eigenvalue of S is at least
    family.jitter > 0 and each of Sigma's at least jitter^2. S's eigenvalues are q's standard deviations along
    its axes, so the jitter is their floor, as scale_floor is for the families with a diagonal part. k < d is
    refused: fewer terms leave S at the jitter alone in the directions they miss.

    Exact log q and KL from S's own Cholesky factor L (S = L L^T): log det Sigma = 2 log det S = 4 sum log L_ii,
    S^-1 (z - mean) by a Cholesky solve, tr Sigma = ||S||_F^2 (S is symmetric); neither Sigma nor an inverse
    is formed. Sampling needs no factor: z = mean + S eps, d noise dimensions (the stream every family shares).

    Start: S = I, the prior's square root. G's head rows start with zero weights and biases G0 (divided by
    offdiag_scale, which multiplies G) with G0 G0^T / k = (1 - jitter) I: column i of G0 points along
    e_(i mod d), scaled so that the columns sharing a direction add up to it. No column of G0 is zero, for any
    k: a zero column would be a stationary point of the ELBO, which is even in each column."""

    name = "sqrt"
    head_formula_text = "d + dk"
    whole_covariance = "G makes its whole covariance"
    few_columns = "(1/k) G G^T with fewer than {d} columns is singular, so S would be the jitter alone on the rest"
    # no diagonal part: no scale transform to choose
    tuning_grid = grid(OFFDIAG_SCALES)
    # the tuning grid's selection (docs/tuning.md): offdiag_scale 0.1 at lr 1e-3, as rank1sum's
    answer_runs = (AnswerRun(("family.offdiag_scale=0.1", "train.lr=1e-3")),)

    @classmethod
    def config_error(cls, family_cfg, latent_dim):
        problem = super().config_error(family_cfg, latent_dim)
        if problem is None and not 0 < family_cfg.jitter < 1:
            problem = (f"family.jitter must be in (0, 1) for {cls.name}, got {family_cfg.jitter}: it is the smallest "
                       f"eigenvalue of S (> 0 keeps Sigma positive definite) and S = G G^T / k + jitter I starts at I")
        return problem

    @classmethod
    def start_bias(cls, latent_dim, family_cfg):
        """G starts at G0 (see the class docstring)."""
        rank = family_cfg.rank
        columns = torch.arange(rank)
        direction = columns % latent_dim
        sharing = torch.bincount(direction, minlength=latent_dim).double()[direction]
        start = torch.zeros(latent_dim, rank, dtype=torch.float64)
        start[direction, columns] = (rank * (1 - family_cfg.jitter) / sharing).sqrt() / family_cfg.offdiag_scale
        return start.flatten()

    def __init__(self, mean, factor, jitter):
        super().__init__(mean, factor, jitter)
        eye = torch.eye(self.latent_dim, dtype=mean.dtype, device=mean.device)
        self.sqrt_cov = self.factor @ self.factor.transpose(-1, -2) / self.rank + self.jitter * eye  # S
        self.sqrt_cov_tril = cholesky_or_nan(self.sqrt_cov)

    def log_det_cov(self):
        return 2 * log_det_tril(self.sqrt_cov_tril)

    def variances(self):
        return self.sqrt_cov.square().sum(-1)

    def noise_to_z(self, eps):
        return self.mean + torch.einsum("bij,sbj->sbi", self.sqrt_cov, eps)

    def log_prob(self, z):
        return log_density_from_whitened(solve_cholesky(self.sqrt_cov_tril, z - self.mean), self.log_det_cov())

    def kl_to_standard_normal(self):
        trace = self.sqrt_cov.square().sum((-1, -2))
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim - self.log_det_cov())

    def covariance(self):
        return self.sqrt_cov @ self.sqrt_cov
