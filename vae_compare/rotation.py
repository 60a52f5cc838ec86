"""How much of q's correlation one global rotation of z removes, over a set of covariances Sigma(x).

The prior N(0, I) is rotation-invariant and the decoder's first layer can absorb a rotation of z, so one
global rotation z -> R^T z costs a VAE nothing. Correlation in q(z|x) that one rotation removes for every
image is therefore not a reason for a full-covariance family. These functions measure how much is left.
"""

import torch

from vae_compare.evaluate import mean_and_stderr

# The numbers of rotation_diagnostic, in its tables and in TensorBoard.
ROTATION_COLUMNS = ("total_correlation", "total_correlation_rotated_mean_cov", "total_correlation_rotated_joint",
                    "diag_reverse_kl", "diag_reverse_kl_rotated_mean_cov", "diag_reverse_kl_rotated_joint")

def total_correlation(cov):
    """KL(q || product of q's marginals) = 1/2 (sum_i log Sigma_ii - log det Sigma) per covariance (..., d, d):
    the forward KL from q to the diagonal Gaussian with q's own variances (evaluate's log-det gap)."""
    return 0.5 * (cov.diagonal(dim1=-2, dim2=-1).log().sum(-1) - torch.linalg.slogdet(cov)[1])


def diagonal_reverse_kl(cov):
    """min over diagonal Gaussians q' of KL(q' || q) = 1/2 (log det Sigma + sum_i log (Sigma^-1)_ii) per covariance:
    what variational inference with a diagonal family gives up when q is the target (the minimiser has the
    precision diagonal of q: variances 1 / (Sigma^-1)_ii, the same mean)."""
    precision = torch.cholesky_inverse(torch.linalg.cholesky(cov))
    return 0.5 * (torch.linalg.slogdet(cov)[1] + precision.diagonal(dim1=-2, dim2=-1).log().sum(-1))


def rotate(cov, rotation):
    """The covariance of R^T z for z with covariance Sigma: R^T Sigma R."""
    return rotation.transpose(-1, -2) @ cov @ rotation


def mean_covariance_rotation(cov):
    """R whose columns are the eigenvectors of the mean covariance E_x[Sigma(x)]: exact when all Sigma(x)
    share one orientation (Sigma(x) = R D(x) R^T with distinct mean eigenvalues)."""
    return torch.linalg.eigh(cov.mean(0))[1]


def joint_rotation(cov, start=None, max_iter=200):
    """The orthogonal R that minimises the mean total correlation of R^T Sigma(x) R over the images, by L-BFGS
    on R = start @ matrix_exp(A - A^T) from the mean-covariance rotation. Since det(R^T Sigma R) = det Sigma,
    this minimises mean_x sum_i log (R^T Sigma(x) R)_ii: Pham's (2001) joint-diagonalisation criterion for
    positive definite matrices, restricted to rotations. It is never worse than its start."""
    start = mean_covariance_rotation(cov) if start is None else start
    d = cov.shape[-1]
    generator = torch.zeros(d, d, dtype=cov.dtype, device=cov.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([generator], max_iter=max_iter, line_search_fn="strong_wolfe")

    def rotation():
        return start @ torch.linalg.matrix_exp(generator - generator.T)

    def objective():
        optimizer.zero_grad()
        value = rotate(cov, rotation()).diagonal(dim1=-2, dim2=-1).log().sum(-1).mean()
        value.backward()
        return value

    optimizer.step(objective)
    with torch.no_grad():
        return rotation()


@torch.no_grad()
def rotation_diagnostic(cov):
    """How much of q's correlation one global rotation removes, for covariances Sigma(x) of shape (N, d, d).

    Means over images, with standard errors, of two per-image quantities, each before rotating and after
    rotating every Sigma by one R (Sigma -> R^T Sigma R):
        total_correlation   KL(q || product of its marginals), the forward direction (total_correlation())
        diag_reverse_kl     min over diagonal q' of KL(q' || q), the reverse direction (diagonal_reverse_kl())
    with R from the eigenvectors of E_x[Sigma(x)] (suffix _rotated_mean_cov) and from the joint
    diagonalisation that minimises the mean total correlation (suffix _rotated_joint). Computed in float64.
    """
    cov = cov.double()
    rotations = {"": None, "_rotated_mean_cov": mean_covariance_rotation(cov)}
    with torch.enable_grad():
        rotations["_rotated_joint"] = joint_rotation(cov, rotations["_rotated_mean_cov"])
    result = {"images": cov.shape[0]}
    for suffix, rotation in rotations.items():
        rotated = cov if rotation is None else rotate(cov, rotation)
        result.update(mean_and_stderr("total_correlation" + suffix, total_correlation(rotated)))
        result.update(mean_and_stderr("diag_reverse_kl" + suffix, diagonal_reverse_kl(rotated)))
    return result
