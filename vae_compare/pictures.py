"""Pictures of the question: what shape does q(z|x) take under each posterior family?

Two figures, built with matplotlib's object API (Figure, Agg) so they render without a display:

    ellipse_figure      posterior means of the test images, and the 1-sd ellipses of q(z|x) for a few
                        of them, one panel per family: diag's ellipses are axis-aligned in the latent
                        plane, a full covariance can tilt them
    correlation_figure  the correlation matrix of q(z|x) for a few test images, beside the images

Conventions used throughout (and by the tests):

* Ellipse sizes are FULL axis lengths, as matplotlib's Ellipse takes them: width = 2 sd along the major
  axis, height = 2 sd along the minor axis.
* The angle is that of the major axis, in degrees counter-clockwise from the first plotted axis, in
  (-90, 90]: an axis-aligned ellipse has angle exactly 0 (wider than tall) or exactly 90 (taller than
  wide). A circle has angle 0.
* For d > 2 each panel is drawn in the plane of ITS OWN two leading principal directions of E[z|x]
  (see ellipse_figure for why not one basis for all panels). For d == 2 the plane is the latent plane
  itself; for d == 1 the second axis is a zero axis, so ellipses collapse to 1-sd segments.

Inputs may be numpy arrays or torch tensors (on any device); everything is computed in float64 numpy.
"""

import io
import math
import textwrap

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from matplotlib.ticker import MaxNLocator

DPI = 100
DIGIT_COLOURS = "tab10"
CORRELATION_COLOURS = "RdBu_r"  # diverging: red positive, blue negative, white zero


def as_numpy(values):
    """float64 numpy from an array or a tensor (a tensor may sit on the GPU and carry gradients)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


# ---- geometry ---------------------------------------------------------------------------------------
def ellipse_axes(covariance_2x2):
    """(width, height, angle_degrees) of the 1-sd ellipse of a 2x2 covariance, or of a batch (..., 2, 2).

    width and height are full axis lengths (2 sd), width along the major axis; the angle of the major
    axis is in (-90, 90], counter-clockwise from the x axis. Scalars (0-d arrays) for one matrix.
    """
    cov = as_numpy(covariance_2x2)
    a, c = cov[..., 0, 0], cov[..., 1, 1]
    b = 0.5 * (cov[..., 0, 1] + cov[..., 1, 0])  # symmetrise: round-off in L L^T must not tilt anything
    # The closed-form eigen-decomposition of a symmetric 2x2: with b == 0 it returns an angle of exactly
    # 0 or 90 degrees, where a general eigensolver would leave round-off in the eigenvector.
    centre, radius = 0.5 * (a + c), np.hypot(0.5 * (a - c), b)
    major = centre + radius
    # the small eigenvalue as det / major: centre - radius cancels when one variance dwarfs the other
    det = np.maximum(a * c - b * b, 0.0)  # round-off can make a singular matrix's determinant negative
    minor = np.divide(det, major, out=np.zeros_like(det), where=major > 0)
    angle = 0.5 * np.degrees(np.arctan2(2 * b, a - c))  # in [-90, 90]
    angle = 90.0 - np.mod(90.0 - angle, 180.0)  # -90 and 90 are the same axis: keep 90
    return 2 * np.sqrt(major), 2 * np.sqrt(minor), angle


def projection_plane(means):
    """A (d, 2) orthonormal basis: the two leading principal directions of the posterior means (N, d).

    d == 2: the identity, so z1 and z2 stay the model's own axes (the axes diag is aligned with).
    d == 1: the single axis and a zero second column, so every picture still has two coordinates.
    Each direction's sign is fixed (largest entry positive), so the same means always give the same picture.
    """
    means = as_numpy(means)
    d = means.shape[-1]
    if d == 1:
        return np.array([[1.0, 0.0]])
    if d == 2:
        return np.eye(2)
    centred = means - means.mean(0)
    # eigh of the d x d scatter rather than an SVD of the N x d data: always d directions, even when N < 2
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis = vectors[:, [-1, -2]]
    largest = basis[np.abs(basis).argmax(0), [0, 1]]
    return basis * np.where(largest < 0, -1.0, 1.0)


def project(means, covariances, basis):
    """Means (N, d) and covariances (N, d, d) in the plane of basis (d, 2): B^T mu and B^T Sigma B.

    A linear map of a Gaussian is Gaussian, so the projected ellipse is the exact 1-sd ellipse of the
    marginal of q(z|x) in that plane, not an approximation.
    """
    means, covariances, basis = as_numpy(means), as_numpy(covariances), as_numpy(basis)
    return means @ basis, np.einsum("di,ndk,kj->nij", basis, covariances, basis)


def correlation_matrices(covariances):
    """Correlation matrices (..., d, d) of covariances; a zero variance gives zero correlations."""
    cov = as_numpy(covariances)
    sd = np.sqrt(np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None))
    outer = sd[..., :, None] * sd[..., None, :]
    corr = np.divide(cov, outer, out=np.zeros_like(cov), where=outer > 0)
    corr = np.clip(corr, -1.0, 1.0)  # round-off can leave |rho| a hair above 1
    d = cov.shape[-1]
    corr[..., np.arange(d), np.arange(d)] = 1.0
    return corr


def mean_abs_offdiagonal(corr):
    """Mean |rho| over the pairs i < j and over the batch; None when there is no pair (d == 1)."""
    d = corr.shape[-1]
    if d < 2:
        return None
    rows, cols = np.triu_indices(d, k=1)
    return float(np.abs(corr[..., rows, cols]).mean())


# ---- figures ----------------------------------------------------------------------------------------
def axis_names(latent_dim):
    if latent_dim == 1:
        return "z1", "(none: d = 1)"
    if latent_dim == 2:
        return "z1", "z2"
    return "PC1 of E[z|x]", "PC2 of E[z|x]"


def digit_colours(labels, count):
    """One tab10 colour per image, by its label; one colour for all when there are no labels."""
    if labels is None:
        return ["C0"] * count
    cmap = matplotlib.colormaps[DIGIT_COLOURS]
    return [cmap(int(label) % 10) for label in labels]


def ellipse_suptitle(count, shown, latent_dim, shared_basis, fig_width, legend):
    plane = ("the latent plane" if latent_dim <= 2 else
             "the pooled means' principal plane" if shared_basis else "each model's own principal plane of E[z|x]")
    # two short lines: the legend sits in the right margin beside the title rows, so a long title hits it
    lines = [f"Posterior means of {count} test images (dots), 1-sd ellipses of q(z|x) for the first {shown}",
             f"d = {latent_dim}, {plane}"]
    # characters of a medium font (about 11 per inch) that fit: the title is centred on the figure and the
    # legend (about 1.2 inches) takes the top right corner, so keep its width clear on both sides; over one
    # panel the title is otherwise wider than the room left of the legend
    width = int(11 * (fig_width - (2 * 1.2 if legend else 0.0)))
    return "\n".join(textwrap.fill(line, width) for line in lines)


def ellipse_figure(panels, labels=None, max_ellipses=50, shared_basis=False, label_name="digit"):
    """One panel per family: every posterior mean as a dot coloured by its label (label_name in the legend), and the 1-sd ellipse of
    q(z|x) for the first max_ellipses images.

    panels: ordered {family name: (means (N, d), covariances (N, d, d))}, all on the same N test images.
    labels: (N,) integer labels (digits, or the synthetic set's angle sectors), or None.

    The plane of each panel is that panel's own projection_plane. For d > 2 each family is a different
    trained model, and the coordinates of one model's latent space say nothing about another's (the
    prior is rotation invariant), so one model's principal directions applied to another would show an
    arbitrary plane of it. What the panels share is the unit (the prior's standard deviation), so the
    axes are shared and the aspect is equal, and sizes and shapes compare across panels.
    shared_basis=True projects every panel on the principal plane of the pooled means instead.
    For d <= 2 both choices are the same plane (the latent plane itself).

    Panel titles give the mean |correlation| of q(z|x) in the plotted plane over all N images, and for
    d > 2 also over all pairs of latent coordinates: a plane of principal directions mixes coordinates,
    so even diag's ellipses can tilt there, while its correlation over the coordinate pairs is zero.
    """
    names = list(panels)
    if not names:
        raise ValueError("ellipse_figure needs at least one panel")
    data = {name: (as_numpy(means), as_numpy(cov)) for name, (means, cov) in panels.items()}
    sizes = {means.shape for means, _ in data.values()}
    if len(sizes) != 1:
        raise ValueError(f"every panel must hold the same images; got means of shapes {sorted(sizes)}")
    count, latent_dim = sizes.pop()
    if count == 0:
        raise ValueError("ellipse_figure needs at least one image")
    labels = None if labels is None else as_numpy(labels).astype(int)
    colours = digit_colours(labels, count)
    shown = min(max_ellipses, count)
    pooled = projection_plane(np.concatenate([means for means, _ in data.values()])) if shared_basis else None
    projected = {name: project(means, cov, pooled if shared_basis else projection_plane(means))
                 for name, (means, cov) in data.items()}

    # Shared limits that hold every dot and every whole drawn ellipse: the axis-aligned box around a
    # 1-sd ellipse reaches sqrt(Sigma_ii) from its centre.
    low, high = np.full(2, np.inf), np.full(2, -np.inf)
    for plane_means, plane_cov in projected.values():
        reach = np.sqrt(np.clip(np.diagonal(plane_cov[:shown], axis1=1, axis2=2), 0.0, None))
        low = np.minimum(low, np.minimum(plane_means.min(0), (plane_means[:shown] - reach).min(0, initial=np.inf)))
        high = np.maximum(high, np.maximum(plane_means.max(0), (plane_means[:shown] + reach).max(0, initial=-np.inf)))
    margin = 0.05 * max(float((high - low).max()), 1e-9)
    low, high = low - margin, high + margin
    if latent_dim == 1:  # the zero axis
        low[1], high[1] = -1.0, 1.0

    # Equal aspect keeps tilts and sizes true; the figure takes the data's shape, because a layout
    # engine can shrink a fixed-aspect panel but not make room for one taller than its slot.
    panel_width = 4.0
    aspect = 0.5 if latent_dim == 1 else (high[1] - low[1]) / (high[0] - low[0])
    panel_height = panel_width * float(np.clip(aspect, 0.2, 1.6))
    fig_width = panel_width * len(names) + 1.2
    suptitle = ellipse_suptitle(count, shown, latent_dim, shared_basis, fig_width, labels is not None)
    # 1.3 inches hold a two-line title, the panel titles and the axis label; more title lines need more
    title_lines = suptitle.count("\n") + 1
    fig = Figure(figsize=(fig_width, max(panel_height + 1.3 + 0.2 * max(title_lines - 2, 0), 3.0)),
                 layout="compressed", dpi=DPI)
    fig.get_layout_engine().set(h_pad=0.08)  # the default 3 pt lets the two-line titles touch
    axes = fig.subplots(1, len(names), sharex=True, sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names):
        plane_means, plane_cov = projected[name]
        ax.scatter(plane_means[:, 0], plane_means[:, 1], s=5, c=colours, alpha=0.35, linewidths=0, zorder=1)
        widths, heights, angles = ellipse_axes(plane_cov[:shown])
        for i in range(shown):
            ax.add_patch(Ellipse(plane_means[i], widths[i], heights[i], angle=angles[i], fill=False,
                                 edgecolor=colours[i], linewidth=1.2, zorder=2))
        title = name
        if latent_dim > 1:
            title += f"\nmean |corr| in this plane {mean_abs_offdiagonal(correlation_matrices(plane_cov)):.2f}"
        if latent_dim > 2:
            title += f", all pairs {mean_abs_offdiagonal(correlation_matrices(data[name][1])):.2f}"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(axis_names(latent_dim)[0])
        if latent_dim > 1:  # with one latent the second axis carries no length to keep true
            ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(axis_names(latent_dim)[1])
    axes[0].set_xlim(low[0], high[0])
    axes[0].set_ylim(low[1], high[1])

    fig.suptitle(suptitle, fontsize="medium")
    if labels is not None:
        present = sorted(set(labels.tolist()))
        cmap = matplotlib.colormaps[DIGIT_COLOURS]
        handles = [Line2D([], [], linestyle="", marker="o", color=cmap(label % 10), label=str(label))
                   for label in present]
        fig.legend(handles=handles, title=label_name, loc="outside right upper", fontsize="small",
                   ncols=1 if fig.get_figheight() >= 4 else 2)  # ten rows need about 2.5 inches
    return fig


def correlation_figure(covariances, family_name, images=None, count=4):
    """Heat maps of the correlation matrix of q(z|x) for the first `count` images, colour scale fixed to
    [-1, 1] with one colour bar, and the images themselves above them when given ((N, 784) or
    (N, 28, 28) or (N, 1, 28, 28); any square size).

    The heat-map axes are labelled "correlation" (ax.get_label()), the image axes "image".
    """
    corr = correlation_matrices(covariances)
    count = min(count, corr.shape[0])
    if count < 1:
        raise ValueError("correlation_figure needs at least one covariance matrix")
    corr = corr[:count]
    latent_dim = corr.shape[-1]
    rows = 1 if images is None else 2
    # "compressed": every panel has a fixed aspect (square pixels), which plain constrained layout pads
    fig = Figure(figsize=(2.6 * count + 1.0, 2.6 * rows + 0.6), layout="compressed", dpi=DPI)
    grid = fig.subplots(rows, count, squeeze=False)
    if images is not None:
        pictures = as_numpy(images)[:count]
        side = math.isqrt(pictures[0].size)
        for ax, i in zip(grid[0], range(count)):
            ax.imshow(pictures[i].reshape(side, side), cmap="gray_r", interpolation="nearest")
            ax.set_title(f"test image {i}", fontsize="small")
            ax.set_axis_off()
            ax.set_label("image")
    heat_axes = list(grid[-1])
    # pixel centres at 1..d, so tick labels are the latent coordinates' numbers
    extent = (0.5, latent_dim + 0.5, latent_dim + 0.5, 0.5)
    for ax, i in zip(heat_axes, range(count)):
        heat = ax.imshow(corr[i], cmap=CORRELATION_COLOURS, vmin=-1.0, vmax=1.0, extent=extent,
                         interpolation="nearest")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.set_xlabel("latent coordinate", fontsize="small")
        if images is None:
            ax.set_title(f"test image {i}", fontsize="small")
        ax.set_label("correlation")
    heat_axes[0].set_ylabel("latent coordinate", fontsize="small")
    fig.colorbar(heat, ax=heat_axes, shrink=0.9, label="corr(z_i, z_j | x)")
    off = mean_abs_offdiagonal(corr)
    fig.suptitle(f"{family_name}: correlation matrix of q(z|x), d = {latent_dim}"
                 + ("" if off is None else f", mean |corr| off the diagonal {off:.2f}"), fontsize="medium")
    return fig


# ---- output -----------------------------------------------------------------------------------------
def figure_png(fig) -> bytes:
    """The figure as PNG bytes at DPI (what report.save_png writes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def figure_array(fig) -> np.ndarray:
    """The figure as a uint8 (H, W, 3) array for TensorBoard's add_image(..., dataformats="HWC").

    Decoded from figure_png, so TensorBoard shows the very pixels of the PNG.
    """
    return png_array(figure_png(fig))


def png_array(png: bytes) -> np.ndarray:
    """PNG bytes (figure_png) as figure_array's uint8 (H, W, 3): one rendering serves the file and TensorBoard."""
    rgba = imread(io.BytesIO(png), format="png")  # float32 in [0, 1] from 8-bit samples
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def sample_ellipse_figure(samples):
    """ellipse_figure of saved posterior samples: {panel name: {"means": (N, d), "covariances": (M, d, d),
    "labels": (N,), "label_name"}} as finish.posterior_sample writes them, M <= N, both of the first test images
    (a sample saved before "label_name" was kept holds digits).

    Every panel shows the images that all samples hold (runs may have evaluated different numbers of
    test images; the first ones are the same images). Ellipses are drawn for the first M, and the
    panel titles' mean |corr| is over those M images.
    """
    count = min(len(sample["means"]) for sample in samples.values())
    shown = min(count, *(len(sample["covariances"]) for sample in samples.values()))
    panels = {name: (sample["means"][:count], sample["covariances"][:shown]) for name, sample in samples.items()}
    first = next(iter(samples.values()))
    return ellipse_figure(panels, labels=first["labels"][:count], max_ellipses=shown,
                          label_name=first.get("label_name", "digit"))
