"""Gaussian posterior families q(z|x), each a small class with one interface (`PosteriorFamily`).

A family turns the encoder's head outputs into a distribution (`from_head`) and says how its part of
the head starts (`init_head`). Most families lay the head out as [mean (d) | diagonal scale (d) |
off-diagonal part], so they differ only in the off-diagonal part:

    diag      nothing                                        2d outputs
    cholesky  strictly-lower entries of L                    d + d(d+1)/2 outputs
    lowrank   the d x k factor V                             d(k+2) outputs
    corr      d(d-1)/2 unconstrained partial correlations    d(d+3)/2 outputs

rank1sum has no diagonal part: its head is [mean (d) | V (d x k)], d + dk outputs.

Every family gives, per image: rsample with log q(z) computed from the reparameterisation noise,
the closed-form KL to the standard-normal prior, log q(z) of any z, and its covariance matrix.
Only rank1sum factorises a d x d matrix (it has no diagonal part to build a cheaper form on).

Noise comes from an optional pair of generators (`Noise`): the first d dimensions of every family's
noise come from one, any extra dimensions (lowrank's and rank1sum's k) from the other, so two families
trained at one seed see the same first-d noise at every step.
"""

import hashlib
import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


class Noise:
    """Standard-normal noise from two generators: `latent` for the first d dimensions of a sample,
    `extra` for dimensions a family adds beyond d. Without a Noise, families draw from torch's global RNG."""

    def __init__(self, seed, device):
        self.latent = torch.Generator(device).manual_seed(seed * 1_000_003 + 11)
        self.extra = torch.Generator(device).manual_seed(seed * 1_000_003 + 12)

    def state(self):
        return {"latent": self.latent.get_state(), "extra": self.extra.get_state()}

    def load_state(self, state):
        self.latent.set_state(state["latent"])
        self.extra.set_state(state["extra"])


def standard_normal(shape, like, generator):
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def draw_noise(batch_shape, latent_dim, extra_dim, like, noise=None):
    """eps of shape batch_shape + (d + extra,): the first d dimensions from noise.latent, the extra ones from
    noise.extra (torch's global RNG without a Noise)."""
    eps = standard_normal(batch_shape + (latent_dim,), like, noise and noise.latent)
    if extra_dim == 0:
        return eps
    return torch.cat((eps, standard_normal(batch_shape + (extra_dim,), like, noise and noise.extra)), -1)


def cholesky_or_nan(matrix):
    """Cholesky factor of a batch of matrices; NaN for a matrix that is not positive definite.

    cholesky_ex: no host sync on CUDA and no exception, so divergence reaches the training NaN guard. On
    failure it leaves a partly factorised matrix that can look finite, hence the explicit NaN."""
    tril, info = torch.linalg.cholesky_ex(matrix)
    return torch.where((info == 0)[..., None, None], tril, torch.nan)


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
    # the head is [mean (d) | raw diagonal scale (d) | off-diagonal part] read by this class's from_head, so a
    # zero off-diagonal part is the diagonal Gaussian of the first two parts (gaps starts other families' q* there)
    has_diagonal_head = True

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
    def from_head(cls, head, latent_dim, family_cfg):
        """The distribution of each image from its head outputs (..., head_size)."""
        mean, raw_scale, offdiag = head.split(cls.head_split(latent_dim, family_cfg.rank), -1)
        scale = positive_scale(raw_scale, family_cfg.scale_transform, family_cfg.scale_floor)
        return cls(mean, scale, offdiag * family_cfg.offdiag_scale)

    @classmethod
    def init_head(cls, layer, latent_dim, family_cfg):
        """Start the off-diagonal rows of the head layer (PyTorch's default init is already applied).

        zero: exactly zero weights and biases, so step 0 is the diagonal model; default: keep PyTorch's;
        random: zero weights, biases N(0, offdiag_init_std^2) in the units of the off-diagonal values
        (for lowrank, whose zero start is a stationary point: see LowRankGaussian)."""
        start_rows(layer, slice(2 * latent_dim, None), family_cfg)

    def __init__(self, mean, scale, offdiag=None):
        self.mean, self.scale = mean, scale
        self.latent_dim = mean.shape[-1]

    def log_det_cov(self):
        return 2 * self.scale.log().sum(-1)

    def variances(self):
        return self.scale.square()

    def extra_noise_dim(self):
        """Noise dimensions beyond d (lowrank's k)."""
        return 0

    def noise_to_z(self, eps):
        """eps (S, B, d + extra_noise_dim) -> z (S, B, d)."""
        return self.mean + self.scale * eps

    def log_q_from_noise(self, eps, z):
        # z = mean + A eps with A square: log q(z) = log N(eps; 0, I) - log |det A|, no solve needed
        return -0.5 * eps.square().sum(-1) - 0.5 * self.log_det_cov() - 0.5 * self.latent_dim * LOG_2PI

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
    """N(mean, diag(scale^2) + V V^T) with V of shape (d, rank).

    V = 0 is a stationary point of the ELBO: Sigma depends on V only through V V^T, so the ELBO is even in
    V and its exact gradient there is zero (single-sample gradients are not, but they average to zero).
    A zero start leaves V to escape on gradient noise alone; offdiag_init=random starts it off zero."""

    name = "lowrank"
    head_formula_text = "d(k+2)"
    uses_rank = True

    @staticmethod
    def offdiag_size(latent_dim, rank):
        return latent_dim * rank

    @staticmethod
    def head_formula(latent_dim, rank):
        return latent_dim * (rank + 2)

    @classmethod
    def rank_error(cls, latent_dim, rank):
        if 1 <= rank <= latent_dim:
            return None
        return f"family.rank must be in 1..latent_dim ({latent_dim}) for {cls.name}, got {rank}"

    def __init__(self, mean, scale, offdiag):
        super().__init__(mean, scale)
        self.factor = offdiag.unflatten(-1, (self.latent_dim, -1))  # V: (B, d, k)
        self.rank = self.factor.shape[-1]
        # capacitance C = I_k + V^T D^-1 V, so that Sigma^-1 and det Sigma need only k x k work
        scaled_factor = self.factor / self.scale.unsqueeze(-1)
        eye = torch.eye(self.rank, dtype=mean.dtype, device=mean.device)
        self.capacitance_tril = cholesky_or_nan(eye + scaled_factor.transpose(-1, -2) @ scaled_factor)

    def log_det_cov(self):
        # matrix determinant lemma: det Sigma = det C * prod D
        log_det_capacitance = 2 * self.capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_det_capacitance + 2 * self.scale.log().sum(-1)

    def variances(self):
        return self.scale.square() + self.factor.square().sum(-1)

    def extra_noise_dim(self):
        return self.rank

    def noise_to_z(self, eps):
        # z = mean + D^1/2 eps_d + V eps_k: O(dk) per sample
        eps_diag, eps_factor = eps.split([self.latent_dim, self.rank], -1)
        return self.mean + self.scale * eps_diag + torch.einsum("bdk,sbk->sbd", self.factor, eps_factor)

    def log_q_from_noise(self, eps, z):
        # the map from d + k noise dimensions to d is not invertible: use the Woodbury density of z
        return self.log_prob(z)

    def log_prob(self, z):
        # The Woodbury form subtracts two terms that grow like |V|^2 / D: with D ~ 1e-5 and |V| ~ 1 they are
        # ~1e5 and differ by O(d), which float32 cannot resolve (measured: 0.44 nat mean error at d = 16,
        # k = 4, scale ~3e-3, entries of V ~ N(0, 1)). So it runs in float64 and casts back; training never
        # calls log_prob (rsample and the KL need no Mahalanobis term), only the evaluation does.
        wide = torch.float64
        return woodbury_log_prob(self.mean.to(wide), self.scale.to(wide), self.factor.to(wide), z.to(wide)).to(z.dtype)

    def kl_to_standard_normal(self):
        trace = self.scale.square().sum(-1) + self.factor.square().sum((-1, -2))
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim - self.log_det_cov())

    def covariance(self):
        return torch.diag_embed(self.scale.square()) + self.factor @ self.factor.transpose(-1, -2)


def woodbury_log_prob(mean, scale, factor, z):
    """log N(z; mean, diag(scale^2) + V V^T) with k x k work per image: r^T Sigma^-1 r = r^T D^-1 r - w^T C^-1 w,
    w = V^T D^-1 r, C = I_k + V^T D^-1 V; det Sigma = det C * prod D."""
    scaled_factor = factor / scale.unsqueeze(-1)
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    capacitance_tril = cholesky_or_nan(eye + scaled_factor.transpose(-1, -2) @ scaled_factor)
    log_det = 2 * capacitance_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 2 * scale.log().sum(-1)
    residual = z - mean
    residual_over_var = residual / scale.square()
    w = torch.einsum("bdk,sbd->sbk", factor, residual_over_var)
    w_whitened = torch.linalg.solve_triangular(capacitance_tril, w.movedim(0, -1), upper=False)
    mahalanobis = (residual * residual_over_var).sum(-1) - w_whitened.square().sum(-2).movedim(-1, 0)
    return -0.5 * mahalanobis - 0.5 * log_det - 0.5 * mean.shape[-1] * LOG_2PI


class CorrGaussian(CholeskyGaussian):
    """N(mean, diag(sigma) Omega diag(sigma)) with Omega a correlation matrix: its Cholesky factor L_Omega
    comes from d(d-1)/2 unconstrained values by Stan's LKJ construction (tanh to partial correlations, then
    stick-breaking along each row, as torch's CorrCholeskyTransform). Omega is positive definite for any
    finite input, and zero inputs give Omega = I: the zero start is the diagonal model.

    Sigma's Cholesky factor is diag(sigma) L_Omega, so sampling, log_prob and the covariance are
    CholeskyGaussian's; the variances are sigma^2 (Omega has a unit diagonal) and the log-determinant is
    2 sum log sigma_i + sum over the inputs of log(1 - tanh^2), computed without the factor."""

    name = "corr"
    head_formula_text = "d(d+3)/2"

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


class Rank1SumGaussian(DiagGaussian):
    """N(mean, V V^T + jitter I) with V of shape (d, k), k >= d: a sum of k rank-one matrices and nothing else.

    V V^T is positive definite only when V has rank d, so k < d is refused (rank_error) and a fixed jitter
    (family.jitter) keeps Sigma positive definite, and its float32 Cholesky accurate, when columns of V
    collapse during training. Sigma is factorised as a d x d Cholesky per image.

    The head is [mean (d) | V (d*k), row-major], not [mean | scale | offdiag]. It has no diagonal model to
    start from: init_head starts V's head rows with zero weights and biases START_SCALE * [I_d | 0]
    (divided by offdiag_scale, which multiplies V), so at step 0 every image has Sigma = (1 + jitter) I, the
    prior's covariance, and the KL starts from the means alone. With k > d the zero columns are a stationary
    point of the ELBO (it is even in each column); offdiag_init=random starts them off zero."""

    name = "rank1sum"
    head_formula_text = "d + dk"
    uses_rank = True
    has_diagonal_head = False
    START_SCALE = 1.0

    @staticmethod
    def offdiag_size(latent_dim, rank):
        return latent_dim * rank

    @staticmethod
    def head_formula(latent_dim, rank):
        return latent_dim * (1 + rank)

    @classmethod
    def head_split(cls, latent_dim, rank):
        """Widths of the head's parts, in order: mean, V."""
        return [latent_dim, latent_dim * rank]

    @classmethod
    def rank_error(cls, latent_dim, rank):
        if rank >= latent_dim and rank >= 1:
            return None
        return (f"family.rank must be >= latent_dim ({latent_dim}) for {cls.name}: V V^T with fewer than "
                f"{latent_dim} columns is singular, so Sigma would be too; got {rank}")

    @classmethod
    def config_error(cls, family_cfg, latent_dim):
        if family_cfg.offdiag_scale > 0:
            return super().config_error(family_cfg, latent_dim)
        return super().config_error(family_cfg, latent_dim) or \
            f"family.offdiag_scale must be > 0 for {cls.name} (V is its whole covariance)"

    @classmethod
    def from_head(cls, head, latent_dim, family_cfg):
        mean, factor = head.split(cls.head_split(latent_dim, family_cfg.rank), -1)
        return cls(mean, factor * family_cfg.offdiag_scale, family_cfg.jitter)

    @classmethod
    def init_head(cls, layer, latent_dim, family_cfg):
        """V's rows start at START_SCALE * [I_d | 0] (see the class docstring)."""
        if family_cfg.offdiag_scale <= 0:
            raise ValueError(f"family.offdiag_scale must be > 0 for {cls.name}: it multiplies V, the whole covariance")
        start = torch.zeros(latent_dim, family_cfg.rank, dtype=torch.float64)
        start[:, :latent_dim] = torch.eye(latent_dim) * cls.START_SCALE / family_cfg.offdiag_scale
        start_rows(layer, slice(latent_dim, None), family_cfg, bias=start.flatten())

    def __init__(self, mean, factor, jitter):
        self.mean, self.latent_dim = mean, mean.shape[-1]
        self.factor = factor.unflatten(-1, (self.latent_dim, -1))  # V: (B, d, k)
        self.rank, self.jitter = self.factor.shape[-1], float(jitter)
        self.cov_tril = cholesky_or_nan(self.covariance())

    def log_det_cov(self):
        return 2 * self.cov_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def variances(self):
        return self.factor.square().sum(-1) + self.jitter

    def extra_noise_dim(self):
        return self.rank

    def noise_to_z(self, eps):
        # z = mean + V eps_k + sqrt(jitter) eps_d: the first d noise dims are the stream every family shares
        eps_jitter, eps_factor = eps.split([self.latent_dim, self.rank], -1)
        return self.mean + math.sqrt(self.jitter) * eps_jitter + torch.einsum("bdk,sbk->sbd", self.factor, eps_factor)

    def log_q_from_noise(self, eps, z):
        # z is not a square transform of the d + k noise dimensions: use the density of z
        return self.log_prob(z)

    def log_prob(self, z):
        diff = (z - self.mean).movedim(0, -1)  # (B, d, S): one triangular solve per image for all samples
        whitened = torch.linalg.solve_triangular(self.cov_tril, diff, upper=False).movedim(-1, 0)
        return -0.5 * whitened.square().sum(-1) - 0.5 * self.log_det_cov() - 0.5 * self.latent_dim * LOG_2PI

    def kl_to_standard_normal(self):
        trace = self.factor.square().sum((-1, -2)) + self.latent_dim * self.jitter
        return 0.5 * (trace + self.mean.square().sum(-1) - self.latent_dim - self.log_det_cov())

    def covariance(self):
        eye = torch.eye(self.latent_dim, dtype=self.mean.dtype, device=self.mean.device)
        return self.factor @ self.factor.transpose(-1, -2) + self.jitter * eye


@runtime_checkable
class PosteriorFamily(Protocol):
    """What a posterior family provides: the README's extension contract. Class-level members describe
    the family (names, head layout, rank rule, start); instance members are one batch of distributions."""

    name: str
    head_formula_text: str
    uses_rank: bool
    has_diagonal_head: bool

    def config_error(self, family_cfg, latent_dim): ...
    def head_formula(self, latent_dim, rank): ...
    def head_split(self, latent_dim, rank): ...
    def head_size(self, latent_dim, rank): ...
    def rank_error(self, latent_dim, rank): ...
    def from_head(self, head, latent_dim, family_cfg): ...
    def init_head(self, layer, latent_dim, family_cfg): ...
    def extra_noise_dim(self): ...
    def noise_to_z(self, eps): ...
    def log_q_from_noise(self, eps, z): ...
    def rsample_and_log_prob(self, num_samples, noise=None): ...
    def rsample(self, num_samples, noise=None): ...
    def log_prob(self, z): ...
    def log_det_cov(self): ...
    def variances(self): ...
    def kl_to_standard_normal(self): ...
    def covariance(self): ...


FAMILIES = {family.name: family
            for family in (DiagGaussian, CholeskyGaussian, LowRankGaussian, CorrGaussian, Rank1SumGaussian)}


def head_size(family, latent_dim, rank):
    return FAMILIES[family].head_size(latent_dim, rank)
