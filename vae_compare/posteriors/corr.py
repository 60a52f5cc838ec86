"""Scales times a correlation matrix."""

import math

import torch
import torch.nn.functional as F

from vae_compare.posteriors.cholesky import CholeskyGaussian
from vae_compare.posteriors.study import OFFDIAG_SCALES, SCALE_TRANSFORMS, AnswerRun, grid


class CorrGaussian(CholeskyGaussian):
    """N(mean, diag(sigma) Omega diag(sigma)) with Omega a correlation matrix: d(d+3)/2 head outputs. Omega's
    Cholesky factor L_Omega comes from d(d-1)/2 unconstrained values by Stan's LKJ construction (tanh to
    partial correlations, then stick-breaking along each row, as torch's CorrCholeskyTransform). Omega is
    positive definite for any finite input, and zero inputs give Omega = I: the zero start is the diagonal model.

    Sigma's Cholesky factor is diag(sigma) L_Omega, so sampling, log_prob and the covariance are
    CholeskyGaussian's; the variances are sigma^2 (Omega has a unit diagonal) and the log-determinant is
    2 sum log sigma_i + sum over the inputs of log(1 - tanh^2), computed without the factor."""

    name = "corr"
    head_formula_text = "d(d+3)/2"
    tuning_grid = grid(SCALE_TRANSFORMS, OFFDIAG_SCALES)
    answer_runs = (AnswerRun(("family.scale_transform=exp", "family.scale_floor=0", "family.offdiag_scale=0.001",
                              "train.lr=1e-3")),)

    @staticmethod
    def head_formula(latent_dim, rank):
        return latent_dim * (latent_dim + 3) // 2

    def __init__(self, mean, scale, offdiag):
        d = mean.shape[-1]
        rows, cols = torch.tril_indices(d, d, offset=-1, device=mean.device)
        # log(1 - tanh(x)^2) = 2 log sech x = 2 (log 2 + x - softplus(2x)): finite and smooth for every x,
        # where 1 - tanh^2 underflows to 0 in float32 for |x| > 9 and sqrt(0) has no gradient
        self.log_one_minus_r2 = 2 * (math.log(2) + offdiag - F.softplus(2 * offdiag))
        dense = mean.new_zeros(mean.shape + (d,))
        dense[..., rows, cols] = self.log_one_minus_r2
        # row i of L_Omega: entry j < i is r_ij sqrt(prod_{m<j} (1 - r_im^2)); the diagonal is sqrt(prod_{m<i})
        keep = torch.exp(0.5 * (dense.cumsum(-1) - dense))
        correlation_tril = keep[..., rows, cols] * torch.tanh(offdiag)
        unit_diagonal = keep.diagonal(dim1=-2, dim2=-1)
        super().__init__(mean, scale * unit_diagonal, scale.index_select(-1, rows) * correlation_tril)
        self.sigma = scale

    def log_det_cov(self):
        return 2 * self.sigma.log().sum(-1) + self.log_one_minus_r2.sum(-1)

    def variances(self):
        return self.sigma.square()

    def kl_to_standard_normal(self):
        # tr Sigma = sum sigma_i^2 because Omega_ii = 1
        trace = self.sigma.square().sum(-1)
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim - self.log_det_cov())
