"""Full covariance through its Cholesky factor."""

import torch

from vae_compare.linalg import log_density_from_whitened, solve_tril
from vae_compare.posteriors.diag import DiagGaussian
from vae_compare.posteriors.study import OFFDIAG_SCALES, SCALE_TRANSFORMS, AnswerRun, grid


class CholeskyGaussian(DiagGaussian):
    """N(mean, L L^T) with L lower-triangular, diagonal `scale`, strictly-lower entries `offdiag`:
    d + d(d+1)/2 head outputs. A zero start of the strictly-lower entries is the diagonal model."""

    name = "cholesky"
    head_formula_text = "d + d(d+1)/2"
    tuning_grid = grid(SCALE_TRANSFORMS, OFFDIAG_SCALES)
    answer_runs = (AnswerRun(("family.scale_transform=softplus", "family.scale_floor=1e-3",
                              "family.offdiag_scale=0.001", "train.lr=1e-3")),)

    @staticmethod
    def offdiag_size(latent_dim, rank):
        return latent_dim * (latent_dim - 1) // 2

    @staticmethod
    def head_formula(latent_dim, rank):
        return latent_dim + latent_dim * (latent_dim + 1) // 2

    def __init__(self, mean, scale, offdiag):
        super().__init__(mean, scale)
        self.offdiag = offdiag
        d = self.latent_dim
        self.rows, self.cols = torch.tril_indices(d, d, offset=-1, device=mean.device)

    @property
    def scale_tril(self):
        """The dense factor L (B, d, d), built only where a method needs the matrix itself."""
        strictly_lower = self.mean.new_zeros(self.mean.shape + (self.latent_dim,))
        strictly_lower[..., self.rows, self.cols] = self.offdiag
        return strictly_lower + torch.diag_embed(self.scale)

    def variances(self):
        return self.scale.square() + self.scale.new_zeros(self.scale.shape).index_add(-1, self.rows, self.offdiag.square())

    def noise_to_z(self, eps):
        # L eps from the packed entries, (L eps)_i = scale_i eps_i + sum_{j<i} L_ij eps_j, without building L
        products = self.offdiag * eps.index_select(-1, self.cols)
        return (self.mean + self.scale * eps).index_add(-1, self.rows, products)

    def log_prob(self, z):
        return log_density_from_whitened(solve_tril(self.scale_tril, z - self.mean), self.log_det_cov())

    def kl_to_standard_normal(self):
        # ||L||_F^2 = tr(Sigma); log det Sigma = 2 sum log L_ii.
        trace = self.scale.square().sum(-1) + self.offdiag.square().sum(-1)
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim) - self.scale.log().sum(-1)

    def covariance(self):
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.transpose(-1, -2)
