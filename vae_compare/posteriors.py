"""Gaussian posterior families q(z|x), each a small class with one interface.

The encoder head of every family is laid out as [mean (d) | diagonal scale (d) | off-diagonal part],
so the three families differ only in the off-diagonal part:

    diag      nothing                           2d outputs
    cholesky  strictly-lower entries of L       d + d(d+1)/2 outputs
    lowrank   the d x k factor V                d(k+2) outputs

Every family gives, per image: rsample with log q(z) computed from the reparameterisation noise,
the closed-form KL to the standard-normal prior, log q(z) of any z, and its covariance matrix.
Nothing here inverts or solves a d x d matrix.
"""

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def positive_scale(raw, transform, floor):
    """Standard deviations from raw head outputs: exp(raw / 2) (raw is a log-variance) or softplus + floor."""
    if transform == "exp":
        return torch.exp(0.5 * raw) + floor
    return F.softplus(raw) + floor


class DiagGaussian:
    """N(mean, diag(scale^2))."""

    name = "diag"
    head_formula_text = "2d"
    uses_rank = False

    @staticmethod
    def offdiag_size(latent_dim, rank):
        return 0

    @staticmethod
    def head_formula(latent_dim, rank):
        return 2 * latent_dim

    def __init__(self, mean, scale, offdiag=None):
        self.mean, self.scale = mean, scale
        self.latent_dim = mean.shape[-1]

    def log_det_cov(self):
        return 2 * self.scale.log().sum(-1)

    def variances(self):
        return self.scale.square()

    def noise_dim(self):
        return self.latent_dim

    def noise_to_z(self, eps):
        """eps (S, B, noise_dim) -> z (S, B, d)."""
        return self.mean + self.scale * eps

    def log_q_from_noise(self, eps, z):
        # z = mean + A eps with A square: log q(z) = log N(eps; 0, I) - log |det A|, no solve needed
        return -0.5 * eps.square().sum(-1) - 0.5 * self.log_det_cov() - 0.5 * self.latent_dim * LOG_2PI

    def noise(self, num_samples):
        shape = (num_samples,) + self.mean.shape[:-1] + (self.noise_dim(),)
        return torch.randn(shape, dtype=self.mean.dtype, device=self.mean.device)

    def rsample_z(self, num_samples):
        """Reparameterised z of shape (S, B, d), without log q (training needs only z)."""
        return self.noise_to_z(self.noise(num_samples))

    def rsample(self, num_samples):
        """z of shape (S, B, d) and log q(z) of shape (S, B), from the noise that made z."""
        eps = self.noise(num_samples)
        z = self.noise_to_z(eps)
        return z, self.log_q_from_noise(eps, z)

    def log_prob(self, z):
        """log q(z) for z of shape (S, B, d) -> (S, B)."""
        whitened = (z - self.mean) / self.scale
        return -0.5 * whitened.square().sum(-1) - 0.5 * self.log_det_cov() - 0.5 * self.latent_dim * LOG_2PI

    def kl_to_standard_normal(self):
        return (0.5 * (self.scale.square() + self.mean.square() - 1) - self.scale.log()).sum(-1)

    def covariance(self):
        return torch.diag_embed(self.variances())


class CholeskyGaussian(DiagGaussian):
    """N(mean, L L^T) with L lower-triangular, diagonal `scale`, strictly-lower entries `offdiag`."""

    name = "cholesky"
    head_formula_text = "d + d(d+1)/2"

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
        diff = (z - self.mean).movedim(0, -1)  # (B, d, S): one triangular solve per image for all samples
        whitened = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False).movedim(-1, 0)
        return -0.5 * whitened.square().sum(-1) - 0.5 * self.log_det_cov() - 0.5 * self.latent_dim * LOG_2PI

    def kl_to_standard_normal(self):
        # ||L||_F^2 = tr(Sigma); log det Sigma = 2 sum log L_ii.
        trace = self.scale.square().sum(-1) + self.offdiag.square().sum(-1)
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim) - self.scale.log().sum(-1)

    def covariance(self):
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.transpose(-1, -2)


class LowRankGaussian(DiagGaussian):
    """N(mean, diag(scale^2) + V V^T) with V of shape (d, rank)."""

    name = "lowrank"
    head_formula_text = "d(k+2)"
    uses_rank = True

    @staticmethod
    def offdiag_size(latent_dim, rank):
        return latent_dim * rank

    @staticmethod
    def head_formula(latent_dim, rank):
        return latent_dim * (rank + 2)

    def __init__(self, mean, scale, offdiag):
        super().__init__(mean, scale)
        self.factor = offdiag.unflatten(-1, (self.latent_dim, -1))  # V: (B, d, k)
        self.rank = self.factor.shape[-1]
        # capacitance C = I_k + V^T D^-1 V, so that Sigma^-1 and det Sigma need only k x k work
        scaled_factor = self.factor / self.scale.unsqueeze(-1)
        eye = torch.eye(self.rank, dtype=mean.dtype, device=mean.device)
        # cholesky_ex: no host sync on CUDA and no exception on NaN, so divergence reaches the NaN guard
        self.capacitance_tril, _ = torch.linalg.cholesky_ex(eye + scaled_factor.transpose(-1, -2) @ scaled_factor)

    def log_det_cov(self):
        # matrix determinant lemma: det Sigma = det C * prod D
        log_det_capacitance = 2 * self.capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_det_capacitance + 2 * self.scale.log().sum(-1)

    def variances(self):
        return self.scale.square() + self.factor.square().sum(-1)

    def noise_dim(self):
        return self.latent_dim + self.rank

    def noise_to_z(self, eps):
        # z = mean + D^1/2 eps_d + V eps_k: O(dk) per sample
        eps_diag, eps_factor = eps.split([self.latent_dim, self.rank], -1)
        return self.mean + self.scale * eps_diag + torch.einsum("bdk,sbk->sbd", self.factor, eps_factor)

    def log_q_from_noise(self, eps, z):
        # the map from d + k noise dimensions to d is not invertible: use the Woodbury density of z
        return self.log_prob(z)

    def log_prob(self, z):
        # Woodbury: r^T Sigma^-1 r = r^T D^-1 r - w^T C^-1 w with w = V^T D^-1 r
        residual = z - self.mean
        residual_over_var = residual / self.scale.square()
        w = torch.einsum("bdk,sbd->sbk", self.factor, residual_over_var)
        w_whitened = torch.linalg.solve_triangular(self.capacitance_tril, w.movedim(0, -1), upper=False)
        mahalanobis = (residual * residual_over_var).sum(-1) - w_whitened.square().sum(-2).movedim(-1, 0)
        return -0.5 * mahalanobis - 0.5 * self.log_det_cov() - 0.5 * self.latent_dim * LOG_2PI

    def kl_to_standard_normal(self):
        trace = self.scale.square().sum(-1) + self.factor.square().sum((-1, -2))
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim - self.log_det_cov())

    def covariance(self):
        return torch.diag_embed(self.scale.square()) + self.factor @ self.factor.transpose(-1, -2)


FAMILIES = {family.name: family for family in (DiagGaussian, CholeskyGaussian, LowRankGaussian)}


def head_size(family, latent_dim, rank):
    return 2 * latent_dim + FAMILIES[family].offdiag_size(latent_dim, rank)
