"""dataset=synthetic: 28x28 binary images from a fixed generative model whose exact posterior is known.

    z ~ N(0, I_2),   x | z ~ Bernoulli(sigmoid(f(z))) over 784 pixels

f is a GELU MLP 2 -> DIRECTIONS -> 784 built from formulas (no random draw, no download). Hidden unit k is
g_k = gelu(GAIN n_k . z) with n_k the unit vector at angle 2 pi k / DIRECTIONS, and pixel j's logit is

    f_j(z) = SHARPNESS (rho(z) - SCALE d_j) + BULGE (z . m_j)

with d_j the pixel's distance from the image centre (1 at the middle of an edge) and m_j its direction from
the centre. rho(z) = sum_k g_k / (GAIN DIRECTIONS / pi) is a smooth radius: |z| where |z| >> 1 / GAIN, about
0.63 GAIN |z|^2 near 0, its level sets near-circles. Since gelu(u) - gelu(-u) = u and n_(k + K/2) = -n_k,
z . m_j = (4 / (GAIN DIRECTIONS)) sum_k (m_j . n_k) g_k exactly, so both terms are linear in the hidden units.
An image is a blob of radius about |z| / SCALE that bulges towards the direction of z. GELU rather than
ReLU: a ReLU decoder's log-likelihood has kinks along the lines n_k . z = 0, where the quadrature's grid
sums converge only as h^2 (on 50 test images of a ReLU version some missed 1e-3 nats by up to 0.19 at 257
nodes per dimension); GELU's is smooth.

Why the posterior is tilted, and tilted differently for every image: the blob's edge pixels measure its
radius, i.e. |z|, sharply (SHARPNESS) and the bulge measures z's direction weakly (BULGE), so p(z|x) is
narrow along z and long across it: an ellipse whose long axis is tangent to the circle |z| = const. Its
orientation is the angle of z plus 90 degrees, uniform over the images because the prior is isotropic,
so no single rotation of z makes the posteriors diagonal. posterior_shape measures both properties.

The split's "grey levels" are the Bernoulli means sigmoid(f(z)) of its own latents, so data.binarize works as
for MNIST: dynamic redraws the binary training images from the true means every epoch, static draws them
once, and validation and test images are data.py's one fixed draw at data.eval_binarize_seed. The latents
come from torch.randn in float64 on the CPU, the means are float64 too, so the binary images are the same on
every machine (tests/test_synthetic.py checks a hash).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vae_compare import UserError
from vae_compare.evaluate import mean_and_stderr, standard_normal_log_prob
from vae_compare.model import IMAGE_SIZE, mlp
from vae_compare.quadrature import POINTS_TIMES_IMAGES_PER_CALL, quadrature_log_px
from vae_compare.rotation import rotation_diagnostic

NAME = "synthetic"
LATENT_DIM = 2
SIDE = 28
# hidden units of the true decoder: directions n_k around the circle, and the scale of z . n_k in them
# (1 / GAIN: the width over which gelu bends, so the posterior is smooth at its own scale of about 0.2)
DIRECTIONS, GAIN = 32, 2.0
# logit per unit of rho at the blob's edge (radial information), the bulge's logit per unit of z . m_j
# (angular information) and |z| per unit of blob radius. At these values the Laplace approximations at the
# first 1000 test latents have median axis ratio 4.4 (sd 0.12 across z, 0.025 along it) and mean
# |correlation| 0.68; the mean pixel of their Bernoulli means is 0.15 (MNIST's grey levels: 0.13).
SHARPNESS, BULGE, SCALE = 8.0, 3.0, 3.0
SEED = 0
SPLIT_SIZES = {"train": 60000, "test": 10000}  # MNIST's; the last data.val_size training images validate
SPLIT_STREAMS = {"train": 1, "test": 2}
# labels for the pictures' colours: the sector of the true latent's angle (its posterior's orientation)
ANGLE_SECTORS = 8
LABEL_NAME = "angle sector"
# Fisher-scoring steps from a true latent to its image's posterior mode, and the most halvings of one step
# (on 200 test images the 20th step moved the median image by < 1e-16 and the slowest, near z = 0, by 0.012)
MODE_STEPS, HALVINGS = 20, 10
MODEL_CONFIG = (f"latent_dim={LATENT_DIM}, model.activation=gelu, a first decoder layer (model.hidden's last) of at "
                f"least {DIRECTIONS} units and any further ones of at least {2 * DIRECTIONS}")


def pixel_geometry():
    """(d, m): each pixel's distance from the image centre (N,) and its unit direction (N, 2), x to the right,
    y up, in units of half the image's width between the outer pixels' centres; float64, row-major pixels."""
    rows, cols = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    half = (SIDE - 1) / 2
    position = torch.stack(((cols - half) / half, (half - rows) / half), -1).reshape(-1, 2).double()
    distance = position.norm(dim=-1)
    return distance, position / distance[:, None]


def true_layers():
    """The true decoder's (W1 (K, 2), b1 (K,), W2 (784, K), b2 (784,)) in float64, f(z) = W2 gelu(W1 z + b1) + b2."""
    distance, direction = pixel_geometry()
    angle = 2 * math.pi * torch.arange(DIRECTIONS, dtype=torch.float64) / DIRECTIONS
    normals = torch.stack((angle.cos(), angle.sin()), -1)
    outputs = (SHARPNESS * math.pi + BULGE * 4 * (direction @ normals.T)) / (GAIN * DIRECTIONS)
    return GAIN * normals, torch.zeros(DIRECTIONS, dtype=torch.float64), outputs, -SHARPNESS * SCALE * distance


def check_model_config(latent_dim, decoder_hidden, activation):
    widths = list(decoder_hidden)
    if latent_dim != LATENT_DIM or str(activation) != "gelu" or not widths or widths[0] < DIRECTIONS \
            or min(widths[1:], default=2 * DIRECTIONS) < 2 * DIRECTIONS:
        raise UserError(f"the synthetic data set's true decoder needs {MODEL_CONFIG}; got latent_dim={latent_dim}, "
                        f"model.activation={activation}, decoder widths {widths}")


def true_decoder_state_dict(config, dtype=torch.float32):
    """The true decoder as the state_dict of the decoder model.mlp builds for `config` (a model.VAEConfig):
    load it with model.decoder.load_state_dict. The first layer's first DIRECTIONS units carry g; a further
    hidden layer carries the pair (gelu(g), gelu(-g)) in its first 2 DIRECTIONS units, from which the next
    layer takes g back exactly as gelu(g) - gelu(-g); every other weight is zero. Needs MODEL_CONFIG
    (UserError otherwise)."""
    check_model_config(config.latent_dim, config.decoder_hidden, config.activation)
    first, first_bias, last, last_bias = true_layers()
    eye = torch.eye(DIRECTIONS, dtype=torch.float64)
    # what maps the previous layer's carried units to g: the plain units after layer 0, a pair after others
    to_g = [eye] + [torch.cat((eye, -eye), 1)] * (len(config.decoder_hidden) - 1)
    widths = [LATENT_DIM, *config.decoder_hidden, IMAGE_SIZE]
    state = {}
    for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        weight = torch.zeros(fan_out, fan_in, dtype=torch.float64)
        bias = torch.zeros(fan_out, dtype=torch.float64)
        if layer == 0:
            weight[:DIRECTIONS], bias[:DIRECTIONS] = first, first_bias
        elif layer == len(widths) - 2:
            carried = to_g[layer - 1]
            weight[:, :carried.shape[1]], bias[:] = last @ carried, last_bias
        else:
            carried = to_g[layer - 1]
            weight[:2 * DIRECTIONS, :carried.shape[1]] = torch.cat((carried, -carried))
        # mlp puts an activation module between Linear layers: the Linears sit at even indices
        state[f"{2 * layer}.weight"], state[f"{2 * layer}.bias"] = weight.to(dtype), bias.to(dtype)
    return state


def true_decoder(dtype=torch.float64):
    """The true decoder alone (2 -> DIRECTIONS -> 784, GELU), frozen, in `dtype` (float64 for references)."""
    decoder = mlp([LATENT_DIM, DIRECTIONS, IMAGE_SIZE], "gelu").to(dtype)
    decoder.load_state_dict(dict(zip(decoder.state_dict(), true_layers())))
    return decoder.requires_grad_(False)


def bernoulli_log_likelihood(decoder):
    """log p(x|z) for a decoder of Bernoulli logits, in quadrature_log_px's form: x (B, D), z (S, B, d) -> (S, B)."""
    def log_likelihood(x, z):
        logits = decoder(z.to(next(decoder.parameters()).dtype))
        return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype).expand_as(logits),
                                                   reduction="none").sum(-1)
    return log_likelihood


def latents(split, seed=SEED):
    """The split's true latents z (SPLIT_SIZES[split], 2), float64, drawn on the CPU from (seed, split)'s stream."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + SPLIT_STREAMS[split])
    return torch.randn(SPLIT_SIZES[split], LATENT_DIM, generator=generator, dtype=torch.float64)


def angle_sectors(z):
    """Each latent's sector 0..ANGLE_SECTORS-1 of its angle, counter-clockwise from the positive z1 axis."""
    turns = torch.atan2(z[:, 1], z[:, 0]) / (2 * math.pi) % 1
    return (turns * ANGLE_SECTORS).long().clamp(max=ANGLE_SECTORS - 1)


def bernoulli_means(z):
    """sigmoid(f(z)) of latents z (N, 2) under the true decoder, computed in float64, as float32 (N, 784)."""
    with torch.no_grad():
        return torch.sigmoid(true_decoder()(z.double())).float()


class GeneratedImages:
    """A split's images (Bernoulli means), generated for the rows asked for only: len() and [rows] like a tensor."""

    def __init__(self, z):
        self.z = z

    def __len__(self):
        return self.z.shape[0]

    def __getitem__(self, rows):
        return bernoulli_means(self.z[rows])


@dataclass(frozen=True)
class SyntheticSource:
    """Where synthetic splits come from (data.py's counterpart of an MNIST folder): the generator's seed."""

    seed: int = SEED

    def __str__(self):
        return f"{NAME} (vae_compare/synthetic.py, seed {self.seed})"

    def images(self, split):
        """The split's images as GeneratedImages, in the order of its latents."""
        return GeneratedImages(latents(split, self.seed))

    def labels(self, split):
        """Every image's angle sector (angle_sectors), int64 (SPLIT_SIZES[split],), in the order of images."""
        return angle_sectors(latents(split, self.seed))


@dataclass
class ExactPosteriors:
    """Per image: log p(x) in nats and its quadrature error bound (B,), the posterior's mean (B, 2) and
    covariance (B, 2, 2), all float64, from one grid per image."""

    log_px: torch.Tensor
    error_bound: torch.Tensor
    mean: torch.Tensor
    covariance: torch.Tensor


@torch.no_grad()
def grid_moments(log_likelihood, x, centre, scale_tril, half_width, points, log_px):
    """Mean and covariance of p(z|x) as Riemann sums over each image's grid (the nodes grid_sums uses:
    points per dimension on [-w, w]^2 around centre, in units of scale_tril), normalised by log_px."""
    batch = x.shape[0]
    node = torch.arange(points)
    unit = torch.cartesian_prod(node, node).double() * (2 / (points - 1)) - 1
    scale64 = scale_tril.double()
    log_cell = LATENT_DIM * torch.log(2 * half_width / (points - 1)) + scale64.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
    first = torch.zeros(batch, LATENT_DIM, dtype=torch.float64)
    second = torch.zeros(batch, LATENT_DIM, LATENT_DIM, dtype=torch.float64)
    for rows in torch.arange(unit.shape[0]).split(max(1, POINTS_TIMES_IMAGES_PER_CALL // batch)):
        offset = torch.einsum("bij,sbj->sbi", scale64, unit[rows, None, :] * half_width[None, :, None])
        z = centre.double() + offset
        weight = torch.exp(log_likelihood(x, z).double() + standard_normal_log_prob(z) + log_cell - log_px)
        first += torch.einsum("sb,sbi->bi", weight, offset)
        second += torch.einsum("sb,sbi,sbj->bij", weight, offset, offset)
    return centre.double() + first, second - first[:, :, None] * first[:, None, :]


def exact_posteriors(log_likelihood, x, centre, scale_tril, **quadrature_options):
    """log p(x) by quadrature_log_px (its options pass through) and the posterior moments from each image's
    final grid: an ExactPosteriors."""
    estimate = quadrature_log_px(log_likelihood, x, centre, scale_tril, **quadrature_options)
    mean = torch.zeros(x.shape[0], LATENT_DIM, dtype=torch.float64)
    covariance = torch.zeros(x.shape[0], LATENT_DIM, LATENT_DIM, dtype=torch.float64)
    grids = torch.stack((estimate.points.double(), estimate.half_width), -1)
    for points, half_width in grids.unique(dim=0).tolist():
        same = ((estimate.points == points) & (estimate.half_width == half_width)).nonzero()[:, 0]
        mean[same], covariance[same] = grid_moments(log_likelihood, x[same], centre[same], scale_tril[same],
                                                    estimate.half_width[same], int(points), estimate.log_px[same])
    return ExactPosteriors(estimate.log_px, estimate.error_bound, mean, covariance)


def fisher_precision(decoder, z):
    """I + J^T diag(p (1 - p)) J at z (B, 2), J = df/dz (B, 784, 2) and p = sigmoid(f(z)): the prior's precision
    plus the Bernoulli likelihood's Fisher information, positive definite everywhere; and (J, p)."""
    jacobian = torch.func.vmap(torch.func.jacrev(decoder))(z)
    p = torch.sigmoid(decoder(z))
    precision = torch.einsum("bji,bj,bjk->bik", jacobian, p * (1 - p), jacobian)
    return precision + torch.eye(LATENT_DIM, dtype=z.dtype), jacobian, p


def laplace_box(decoder, x, start, steps=MODE_STEPS):
    """(centre, scale_tril) of a grid box for each image: the posterior's mode, found by Fisher scoring from
    start (the step F^-1 (J^T (x - p) - z), F = fisher_precision, halved until log p(x, z) does not fall), and
    the Cholesky factor of F^-1 there. A box around the true latent itself sits about one posterior standard
    deviation off, and the quadrature widens it more often (mass in its outer half): on the first 10 test
    images 7 needed 129 or more nodes per dimension around their true latents, 4 around their modes."""
    log_likelihood = bernoulli_log_likelihood(decoder)

    def log_joint(z):
        return log_likelihood(x, z[None])[0] + standard_normal_log_prob(z)

    z = start.double()
    for _ in range(steps):
        precision, jacobian, p = fisher_precision(decoder, z)
        step = torch.linalg.solve(precision, torch.einsum("bji,bj->bi", jacobian, x - p) - z)
        current = log_joint(z)
        for _ in range(HALVINGS):
            worse = log_joint(z + step) < current
            if not worse.any():
                break
            step[worse] /= 2
        z = torch.where(log_joint(z + step)[:, None] >= current[:, None], z + step, z)
    return z, torch.linalg.cholesky(torch.linalg.inv(fisher_precision(decoder, z)[0]))


def true_posteriors(x, start, **quadrature_options):
    """ExactPosteriors of binary images x (B, 784) under the true model, each image's grid laid by laplace_box
    from start (B, 2): its true latent, or any point near its posterior."""
    decoder = true_decoder()
    x = x.double()
    centre, scale_tril = laplace_box(decoder, x, start)
    return exact_posteriors(bernoulli_log_likelihood(decoder), x, centre, scale_tril, **quadrature_options)


def principal_angles(covariance):
    """The angle of each covariance's long axis, in (-pi/2, pi/2] radians from the z1 axis."""
    return 0.5 * torch.atan2(2 * covariance[:, 0, 1], covariance[:, 0, 0] - covariance[:, 1, 1])


def posterior_shape(covariance):
    """How tilted the posteriors are, and how differently, from covariances (N, 2, 2):
        mean_abs_correlation         mean |corr(z1, z2)|
        orientation_resultant        |mean exp(2 i theta)| of the long axes' angles theta: 1 when all share one
                                     orientation, near 0 when they spread evenly (2 theta: an axis has no sign)
        orientation_circular_sd_deg  the circular standard deviation of theta, sqrt(-2 ln resultant) / 2
    and rotation.rotation_diagnostic's total correlation before and after the best global rotations."""
    covariance = covariance.double()
    correlation = covariance[:, 0, 1] / (covariance[:, 0, 0] * covariance[:, 1, 1]).sqrt()
    doubled = 2 * principal_angles(covariance)
    resultant = torch.stack((doubled.cos().mean(), doubled.sin().mean())).norm()
    return {**mean_and_stderr("mean_abs_correlation", correlation.abs()),
            "orientation_resultant": float(resultant),
            "orientation_circular_sd_deg": math.degrees(0.5 * math.sqrt(-2 * math.log(float(resultant)))),
            **rotation_diagnostic(covariance)}
