"""Exact log p(x) by quadrature over a low-dimensional latent space: a reference for the sampling estimators.

    log p(x) = log of the integral of p(x|z) N(z; 0, I) over z

At latent_dim 2 the integrand is cheap to tabulate on a grid, so the integral can be computed to a stated
accuracy instead of estimated. The grid is laid in a box of each image's own coordinates around a centre,
z = centre + L u with u in [-w, w]^d (L a lower-triangular scale such as the encoder's, w in units of it), so
the nodes sit where that image's posterior has its mass whatever its position, size and tilt.

Two errors are measured on every grid, from the grid's own nodes (no extra decoder calls):

    refinement_change  |log I(h) - log I(2h)|, the Riemann sum on all nodes against the sum on every second
                       node. The integrand is smooth and vanishes at the box's edge, where the Riemann sum
                       converges faster than any power of h, so once h is small enough the change bounds
                       the finer sum's error. "Small enough" is checked one level up: |log I(2h) - log I(4h)|
                       (every fourth node) must meet the tolerance too. One difference alone can mislead: on
                       the tests' Bernoulli decoder the sums at spacings 0.5 and 0.25 agreed within 0.008
                       nats, both 0.02-0.03 below the converged value, which the next halving revealed.
    outside_bound      log(1 + S / I), S the part of the sum that lies outside the inner half of the box
                       (|u_i| > w/2 for some i). The mass outside the whole box is taken to be at most S, which
                       holds when the integrand decays away from the centre at least as fast beyond the box as
                       across its outer half: one mode inside the box (for N(0, I) in 2-D and w = 8, S is 1.3e-4 of
                       the integral and the mass outside the box 2.4e-15). A second mode beyond the box is not
                       seen.

Images that miss the tolerance get a wider box (outside_bound too large) or a finer grid (otherwise),
until the grid reaches max_points nodes per dimension, where the image stops with its bound as it is.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from vae_compare.evaluate import standard_normal_log_prob

# Calls to log_likelihood hold (points x images) latent vectors; at 784 pixels, 2^14 of them keep one
# float32 logits tensor near 50 MB.
POINTS_TIMES_IMAGES_PER_CALL = 2 ** 14


@dataclass
class QuadratureEstimate:
    """Per-image results, each (B,): log p(x) in nats (float64) and the grid's error terms (see the module)."""

    log_px: torch.Tensor
    refinement_change: torch.Tensor
    outside_bound: torch.Tensor
    points: torch.Tensor  # nodes per dimension of the grid the image stopped on
    half_width: torch.Tensor  # w of that grid, in units of scale_tril

    @property
    def error_bound(self):
        """|log p(x) - the true value| is at most this, under the assumption on the tails stated in the module."""
        return self.refinement_change + self.outside_bound


@dataclass
class GridSums:
    """log of three Riemann sums of p(x, z) over one grid, each (B,)."""

    all_nodes: torch.Tensor
    every_second_node: torch.Tensor  # the grid with twice the spacing, nested in this one
    every_fourth_node: torch.Tensor  # and with four times the spacing
    outer_half: torch.Tensor  # nodes outside the inner half of the box


def check_shapes(x, centre, scale_tril, points):
    if x.dim() != 2 or centre.dim() != 2 or centre.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (B, D) and centre (B, d) with the same B, got {tuple(x.shape)} and "
                         f"{tuple(centre.shape)}")
    if scale_tril.shape != centre.shape + centre.shape[-1:]:
        raise ValueError(f"scale_tril must be (B, d, d) = {tuple(centre.shape + centre.shape[-1:])}, "
                         f"got {tuple(scale_tril.shape)}")
    # every fourth node and the inner half of the box must fall on nodes: points = 8m + 1
    if points < 9 or (points - 1) % 8:
        raise ValueError(f"points must be 8m + 1 with m >= 1 (9, 17, 33, 65, ...), got {points}")


def grid_sums(log_likelihood: Callable, x, centre, scale_tril, half_width, points, points_per_call):
    """The three sums (GridSums) over the grid with `points` nodes per dimension on [-w_b, w_b]^d, image b's
    nodes at z = centre_b + scale_tril_b u. Sums are kept as running logsumexps, so memory does not grow
    with the grid."""
    batch, dim = centre.shape
    node = torch.arange(points)
    index = torch.cartesian_prod(*[node] * dim).reshape(-1, dim)
    unit = index.double() * (2 / (points - 1)) - 1  # the nodes on [-1, 1]^d
    scale64 = scale_tril.double()
    masks = torch.stack(((index % 2 == 0).all(-1), (index % 4 == 0).all(-1), (unit.abs() > 0.5).any(-1))).to(x.device)
    unit = unit.to(x.device)
    sums = torch.full((4, batch), -math.inf, dtype=torch.float64, device=x.device)
    for rows in torch.arange(index.shape[0], device=x.device).split(points_per_call):
        u = unit[rows, None, :] * half_width[None, :, None]
        z = (centre.double() + torch.einsum("bij,sbj->sbi", scale64, u)).to(centre.dtype)
        log_joint = log_likelihood(x, z).double() + standard_normal_log_prob(z.double())
        chunk = [log_joint.logsumexp(0)] + [log_joint[mask[rows]].logsumexp(0) for mask in masks]
        sums = torch.logaddexp(sums, torch.stack(chunk))
    # each node stands for a cell of volume h^d |det L| in z, h = 2 w / (points - 1)
    log_det = scale64.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
    log_cell = dim * torch.log(2 * half_width / (points - 1)) + log_det
    return GridSums(sums[0] + log_cell, sums[1] + log_cell + dim * math.log(2),
                    sums[2] + log_cell + dim * math.log(4), sums[3] + log_cell)


@torch.no_grad()
def quadrature_log_px(log_likelihood: Callable, x, centre, scale_tril, half_width=8.0, points=33,
                      tolerance=1e-3, max_points=257, points_per_call: Optional[int] = None):
    """log p(x) of every image by quadrature (see the module), with its error bound: a QuadratureEstimate.

    log_likelihood(x, z): log p(x|z) for x (B, D) and z (S, B, d), giving (S, B); the prior is N(0, I).
    centre (B, d), scale_tril (B, d, d): where each image's box lies and its unit, e.g. the encoder's mean and
    Cholesky factor. The box starts at half_width units and grows as needed; points (8m + 1) nodes per
    dimension to start, doubling (2n - 1, nested) up to max_points. An image stops when refinement_change +
    outside_bound <= tolerance and the change one level coarser is within tolerance too. z reaches log_likelihood in centre's dtype; the sums are float64, so the
    result is as accurate as log_likelihood is in that dtype (use a float64 decoder for a reference).
    The grid has points^d nodes per image: meant for d <= 2.
    """
    check_shapes(x, centre, scale_tril, points)
    batch = x.shape[0]
    points_per_call = points_per_call or max(1, POINTS_TIMES_IMAGES_PER_CALL // batch)
    width = torch.full((batch,), float(half_width), dtype=torch.float64, device=x.device)
    result = {name: torch.zeros(batch, dtype=torch.float64, device=x.device)
              for name in ("log_px", "refinement_change", "outside_bound")}
    result["points"] = torch.zeros(batch, dtype=torch.long, device=x.device)
    active = torch.arange(batch, device=x.device)
    while active.numel():
        sums = grid_sums(log_likelihood, x[active], centre[active], scale_tril[active], width[active], points,
                         max(1, points_per_call * batch // active.numel()))
        change = (sums.all_nodes - sums.every_second_node).abs()
        coarser_change = (sums.every_second_node - sums.every_fourth_node).abs()
        outside = torch.log1p(torch.exp(sums.outer_half - sums.all_nodes))
        last = 2 * points - 1 > max_points
        # NaN compares False: an image whose integrand is NaN stops at once instead of refining to max_points
        done = ~((change + outside > tolerance) | (coarser_change > tolerance)) | last
        for name, value in (("log_px", sums.all_nodes), ("refinement_change", change), ("outside_bound", outside)):
            result[name][active[done]] = value[done]
        result["points"][active[done]] = points
        # a box that lets too much out doubles; with points doubling too, its spacing stays, the others' halves
        width[active[~done & (outside > tolerance / 2)]] *= 2
        active = active[~done]
        points = 2 * points - 1
    return QuadratureEstimate(result["log_px"], result["refinement_change"], result["outside_bound"],
                              result["points"], width)
