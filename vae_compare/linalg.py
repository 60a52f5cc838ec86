"""Batched Gaussian linear algebra shared by the posterior families: Cholesky factors that turn failure into
NaN, log-determinants and log-densities from triangular factors, and the low-rank (Woodbury) density.

Shapes: a batch of B matrices (B, d, d); samples z of shape (S, B, d), one batch of S samples per image.
"""

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def cholesky_or_nan(matrix):
    """Cholesky factor of a batch of matrices; NaN for a matrix that is not positive definite.

    cholesky_ex: no host sync on CUDA and no exception, so divergence reaches the training NaN guard. On
    failure it leaves a partly factorised matrix that can look finite, hence the explicit NaN."""
    tril, info = torch.linalg.cholesky_ex(matrix)
    return torch.where((info == 0)[..., None, None], tril, torch.nan)


def log_det_tril(tril):
    """log det (L L^T) = 2 sum log L_ii for a batch of lower-triangular factors with a positive diagonal."""
    return 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def log_density_from_whitened(whitened, log_det_cov):
    """log N(z; mean, Sigma) from whitened = A^-1 (z - mean), where A A^T = Sigma: (S, B, d) -> (S, B)."""
    return -0.5 * whitened.square().sum(-1) - 0.5 * log_det_cov - 0.5 * whitened.shape[-1] * LOG_2PI


def solve_tril(tril, diff):
    """L^-1 diff for diff of shape (S, B, d): one triangular solve per image for all of its samples."""
    return torch.linalg.solve_triangular(tril, diff.movedim(0, -1), upper=False).movedim(-1, 0)


def solve_cholesky(tril, diff):
    """M^-1 diff for M = L L^T and diff of shape (S, B, d), from M's Cholesky factor L."""
    return torch.cholesky_solve(diff.movedim(0, -1), tril).movedim(-1, 0)


def capacitance_tril(scale, factor):
    """Cholesky factor of the capacitance C = I_k + V^T D^-1 V (D = diag(scale^2), V of shape (B, d, k)), so
    that Sigma = D + V V^T needs only k x k work: Sigma^-1 by Woodbury, det Sigma = det C * prod D."""
    scaled_factor = factor / scale.unsqueeze(-1)
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    return cholesky_or_nan(eye + scaled_factor.transpose(-1, -2) @ scaled_factor)


def woodbury_log_prob(mean, scale, factor, z):
    """log N(z; mean, diag(scale^2) + V V^T) with k x k work per image: r^T Sigma^-1 r = r^T D^-1 r - w^T C^-1 w,
    w = V^T D^-1 r, C the capacitance; det Sigma = det C * prod D."""
    tril = capacitance_tril(scale, factor)
    log_det = log_det_tril(tril) + 2 * scale.log().sum(-1)
    residual = z - mean
    residual_over_var = residual / scale.square()
    w = torch.einsum("bdk,sbd->sbk", factor, residual_over_var)
    w_whitened = torch.linalg.solve_triangular(tril, w.movedim(0, -1), upper=False)
    mahalanobis = (residual * residual_over_var).sum(-1) - w_whitened.square().sum(-2).movedim(-1, 0)
    return -0.5 * mahalanobis - 0.5 * log_det - 0.5 * mean.shape[-1] * LOG_2PI
