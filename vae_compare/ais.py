"""log p(x) by annealed importance sampling (Neal 2001) with Hamiltonian Monte Carlo transitions.

The chains move along the geometric path from a start distribution q0 = N(mean, L L^T) (the encoder's
q(z|x), or the prior) to the joint p(x, z) = p(x|z) N(z; 0, I):

    log f_t(z) = (1 - beta_t) log q0(z) + beta_t log p(x, z),    0 = beta_0 < beta_1 < ... < beta_T = 1

Each chain starts at z ~ q0 and adds (beta_t - beta_{t-1}) (log p(x, z) - log q0(z)) to its log-weight before
an HMC move that leaves f_t invariant. exp(log-weight) is an unbiased estimate of p(x); its log-mean-exp over
chains is, like IWAE's, a stochastic lower bound on log p(x), and it is IWAE's when T = 1.

HMC runs in q0's whitened coordinates u (z = mean + L u), i.e. with q0's precision as the mass matrix, so one
step size suits every direction of a posterior shaped like q0. The step size is per image, adapted after
every transition towards a target acceptance rate (averaged over that image's chains). The adaptation uses
the chains' past, so the kernels are not fixed in advance as the AIS argument assumes; a change of a few
percent per transition (lxuechen/BDMC's code multiplies by 1.02 or 0.98) keeps the effect small, and the
tests compare the result with exact values.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from vae_compare.evaluate import standard_normal_log_prob


@dataclass
class AISEstimate:
    """Per-image results, each (B,) unless said: log p(x) in nats and its standard error over chains (float64)."""

    log_px: torch.Tensor
    stderr: torch.Tensor  # delta method: sd of the chains' weights / (sqrt(chains) x their mean)
    log_weights: torch.Tensor  # (chains, B), float64
    acceptance: torch.Tensor  # mean HMC acceptance rate over chains and transitions
    step_size: torch.Tensor  # the leapfrog step size at the end, in whitened units


def sigmoid_schedule(temperatures, sharpness=4.0):
    """beta_0 = 0, ..., beta_T = 1 (T + 1 values, float64), spaced by a sigmoid so that the steps are shortest
    near both ends, where log f_t changes fastest when q0 is far from the posterior (Grosse et al. 2015; Wu et
    al. 2017 use sharpness 4). Sharpness 0 spaces them evenly."""
    if temperatures < 1:
        raise ValueError(f"temperatures must be at least 1, got {temperatures}")
    steps = torch.linspace(-1, 1, temperatures + 1, dtype=torch.float64)
    if sharpness == 0:
        return (steps + 1) / 2
    s = torch.sigmoid(sharpness * steps)
    return (s - s[0]) / (s[-1] - s[0])


def log_mean_exp_and_stderr(log_weights):
    """log of the mean of exp(log_weights) over dim 0, and its delta-method standard error, each (B,)."""
    chains = log_weights.shape[0]
    top = log_weights.max(0).values
    weights = torch.exp(log_weights - top)
    mean = weights.mean(0)
    # one chain has no spread to measure
    spread = weights.std(0) if chains > 1 else torch.zeros_like(mean)
    return top + mean.log(), spread / (math.sqrt(chains) * mean)


class Target:
    """log p(x, z) and its gradient in q0's whitened coordinates u, for chains of shape (chains, B, d)."""

    def __init__(self, log_likelihood, x, mean, scale_tril):
        self.log_likelihood, self.x, self.mean, self.scale_tril = log_likelihood, x, mean, scale_tril
        # log |det dz/du|: log q0(z) = log N(u; 0, I) - log_det
        self.log_det = scale_tril.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)

    def z(self, u):
        return self.mean + torch.einsum("bij,kbj->kbi", self.scale_tril, u)

    def log_joint_and_grad(self, u):
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            z = self.z(u)
            log_joint = self.log_likelihood(self.x, z) + standard_normal_log_prob(z)
            # chains and images are independent, so the gradient of the sum is each one's own gradient
            (grad,) = torch.autograd.grad(log_joint.sum(), u)
        return log_joint.detach(), grad

    def log_start(self, u):
        return standard_normal_log_prob(u) - self.log_det


@dataclass
class ChainState:
    """Where the chains are (u) and log p(x, z) with its u-gradient there, kept so no move recomputes them."""

    u: torch.Tensor
    log_joint: torch.Tensor
    grad: torch.Tensor


def potential(state: ChainState, beta):
    """-log f_beta in u, up to a constant: the energy that HMC at temperature beta moves on."""
    return -((1 - beta) * standard_normal_log_prob(state.u) + beta * state.log_joint)


def potential_grad(state: ChainState, beta):
    return (1 - beta) * state.u - beta * state.grad


def hmc_move(target: Target, state: ChainState, beta, step_size, leapfrog_steps, generator):
    """One HMC transition of every chain at temperature beta: (new ChainState, accepted (chains, B) bool)."""
    step = step_size[None, :, None].to(state.u.dtype)
    momentum = torch.randn(state.u.shape, dtype=state.u.dtype, device=state.u.device, generator=generator)
    start_energy = potential(state, beta) + 0.5 * momentum.square().sum(-1)
    proposal = state
    p = momentum - 0.5 * step * potential_grad(proposal, beta)
    for leap in range(leapfrog_steps):
        proposal = ChainState(proposal.u + step * p, *target.log_joint_and_grad(proposal.u + step * p))
        # the last half step on p closes the leapfrog; full steps in between
        p = p - (0.5 if leap == leapfrog_steps - 1 else 1.0) * step * potential_grad(proposal, beta)
    end_energy = potential(proposal, beta) + 0.5 * p.square().sum(-1)
    uniform = torch.rand(start_energy.shape, dtype=torch.float64, device=state.u.device, generator=generator)
    # a NaN energy (a move into overflow) compares False, so that chain stays where it was
    accepted = uniform.log() < (start_energy - end_energy).double()
    keep = accepted[..., None]
    moved = ChainState(torch.where(keep, proposal.u, state.u), torch.where(accepted, proposal.log_joint, state.log_joint),
                       torch.where(keep, proposal.grad, state.grad))
    return moved, accepted


@torch.no_grad()
def ais_log_px(log_likelihood: Callable, x, mean, scale_tril, chains=16, temperatures=500, leapfrog_steps=10,
               step_size=0.1, target_acceptance=0.65, adapt_rate=0.3, sharpness=4.0,
               generator: Optional[torch.Generator] = None):
    """AIS estimate of log p(x) for every image of x: an AISEstimate (see the module).

    log_likelihood(x, z): log p(x|z) for x (B, D) and z (S, B, d), giving (S, B), differentiable in z; the
    prior is N(0, I). mean (B, d), scale_tril (B, d, d): the start q0 of each image's chains; z and the
    HMC state are in mean's dtype, the log-weights in float64. temperatures: T intermediate distributions on a
    sigmoid schedule of this sharpness (T - 1 HMC transitions; T = 1 is IWAE with `chains` samples). After every transition an
    image's step size is multiplied by exp(adapt_rate * (acceptance - target_acceptance)), its acceptance
    being the fraction of its chains that moved. All draws come from `generator` (torch's global one if None),
    so a seeded generator gives the same result on every call. Freeze the decoder's parameters
    (requires_grad False) to keep the HMC gradients from reaching them.
    """
    if x.dim() != 2 or mean.dim() != 2 or mean.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (B, D) and mean (B, d) with the same B, got {tuple(x.shape)} and {tuple(mean.shape)}")
    if scale_tril.shape != mean.shape + mean.shape[-1:]:
        raise ValueError(f"scale_tril must be (B, d, d) = {tuple(mean.shape + mean.shape[-1:])}, "
                         f"got {tuple(scale_tril.shape)}")
    if chains < 1 or leapfrog_steps < 1:
        raise ValueError(f"chains and leapfrog_steps must be at least 1, got {chains} and {leapfrog_steps}")
    target = Target(log_likelihood, x, mean, scale_tril)
    betas = sigmoid_schedule(temperatures, sharpness).tolist()
    u = torch.randn((chains,) + mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    state = ChainState(u, *target.log_joint_and_grad(u))
    log_weights = torch.zeros(chains, x.shape[0], dtype=torch.float64, device=x.device)
    step = torch.full((x.shape[0],), float(step_size), dtype=torch.float64, device=x.device)
    accepted_total = torch.zeros_like(step)
    for t in range(1, temperatures + 1):
        log_weights += (betas[t] - betas[t - 1]) * (state.log_joint - target.log_start(state.u)).double()
        if t == temperatures:
            break  # a move at beta = 1 would not change any weight
        state, accepted = hmc_move(target, state, betas[t], step, leapfrog_steps, generator)
        acceptance = accepted.double().mean(0)
        accepted_total += acceptance
        step *= torch.exp(adapt_rate * (acceptance - target_acceptance))
    log_px, stderr = log_mean_exp_and_stderr(log_weights)
    acceptance = accepted_total / max(temperatures - 1, 1)
    return AISEstimate(log_px, stderr, log_weights, acceptance, step)
