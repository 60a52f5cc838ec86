"""Gaussian posterior families q(z|x), one class per module behind one interface (`PosteriorFamily`), and
FAMILIES, the registry that the config's choices, the help text, the report, the tests and the study read.

A family turns the encoder's head outputs into a distribution (`from_head`) and says how its part of the head
starts (`init_head`). Families with a diagonal part read the head as [mean (d) | diagonal scale (d) |
off-diagonal part] (DiagGaussian and its subclasses); the others as [mean (d) | factor (d x k)]
(FactorHeadFamily). Every family gives, per image: rsample, with log q(z) from the reparameterisation noise,
the closed-form KL to the standard-normal prior, log q(z) of any z, and its covariance matrix. Noise comes from
an optional pair of generators (`Noise`, in noise.py); shared linear algebra is in vae_compare.linalg.
"""

from typing import Protocol, runtime_checkable

from vae_compare.linalg import LOG_2PI
from vae_compare.posteriors.base import FactorHeadFamily, GaussianFamily
from vae_compare.posteriors.cholesky import CholeskyGaussian
from vae_compare.posteriors.corr import CorrGaussian
from vae_compare.posteriors.diag import DiagGaussian
from vae_compare.posteriors.lowrank import LowRankGaussian
from vae_compare.posteriors.noise import Noise, draw_noise
from vae_compare.posteriors.rank1sum import Rank1SumGaussian
from vae_compare.posteriors.sqrt import SqrtGaussian

# the package's interface; the families themselves are reached through FAMILIES
__all__ = ["FAMILIES", "LOG_2PI", "DiagGaussian", "FactorHeadFamily", "GaussianFamily", "Noise", "PosteriorFamily",
           "draw_noise", "head_size"]


@runtime_checkable
class PosteriorFamily(Protocol):
    """What a posterior family provides: the extension contract. Class-level members describe the family
    (names, head layout, refused settings, start, the study's settings); instance members are one batch of
    distributions."""

    name: str
    head_formula_text: str
    uses_rank: bool
    has_diagonal_head: bool
    tuning_grid: tuple
    answer_runs: tuple

    def head_formula(self, latent_dim, rank): ...
    def head_split(self, latent_dim, rank): ...
    def head_size(self, latent_dim, rank): ...
    def rank_error(self, latent_dim, rank): ...
    def config_error(self, family_cfg, latent_dim): ...
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


# the report's table order: diag, the baseline, first
FAMILIES = {family.name: family for family in (DiagGaussian, CholeskyGaussian, LowRankGaussian, CorrGaussian,
                                               Rank1SumGaussian, SqrtGaussian)}


def head_size(family, latent_dim, rank):
    return FAMILIES[family].head_size(latent_dim, rank)
