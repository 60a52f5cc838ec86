"""Check vae_compare.pictures: the 1-sd ellipse of a 2x2 covariance, the projection to a plane, and that
the figures draw exactly that geometry (read back from the patches and images of the axes).

Covariances with known shapes, built here; no data files, no model.
"""

import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from vae_compare import pictures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rotation(degrees):
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def rotated(degrees, major_sd, minor_sd):
    """R diag(major^2, minor^2) R^T: major axis at `degrees` from the x axis."""
    r = rotation(degrees)
    return r @ np.diag([major_sd**2, minor_sd**2]) @ r.T


def diagonal(variances):
    return np.einsum("ni,ij->nij", np.asarray(variances, dtype=float), np.eye(np.shape(variances)[-1]))


def random_covariances(rng, n, d):
    """L L^T with a random lower-triangular L and a positive diagonal, as the cholesky family builds them."""
    tril = np.tril(rng.normal(0, 0.4, (n, d, d)), -1) + diagonal(np.exp(rng.normal(-1, 0.3, (n, d))))
    return tril @ tril.transpose(0, 2, 1)


# ---- ellipse_axes -----------------------------------------------------------------------------------
def test_diagonal_covariances_give_axis_aligned_ellipses_with_full_lengths_of_two_sd():
    variances = np.array([[4.0, 1.0], [1.0, 9.0], [0.25, 0.36], [1e-6, 3.0], [2.0, 2.0]])
    widths, heights, angles = pictures.ellipse_axes(torch.tensor(diagonal(variances)))  # tensors are accepted
    # exactly 0 when wider than tall, exactly 90 when taller; a circle gets 0
    assert angles.tolist() == [0.0, 90.0, 90.0, 90.0, 0.0]
    np.testing.assert_allclose(widths, 2 * np.sqrt(variances.max(1)), rtol=1e-12)
    np.testing.assert_allclose(heights, 2 * np.sqrt(variances.min(1)), rtol=1e-12)


@pytest.mark.parametrize("degrees, expected", [(30, 30), (-30, -30), (60, 60), (89, 89), (90, 90), (120, -60),
                                               (-150, 30), (180, 0), (-90, 90)])
def test_rotated_covariance_gives_its_rotation_angle_in_the_half_open_range(degrees, expected):
    width, height, angle = pictures.ellipse_axes(rotated(degrees, 3.0, 1.0))
    assert width == pytest.approx(6.0, rel=1e-12)  # full lengths: 2 * 3 and 2 * 1
    assert height == pytest.approx(2.0, rel=1e-12)
    assert angle == pytest.approx(expected, abs=1e-9)
    assert -90 < angle <= 90


def test_a_tall_rotated_ellipse_reports_its_major_axis():
    # R(30) diag(1, 9) R^T: the long axis is the rotated y axis, at 30 + 90 = 120, folded to -60
    r = rotation(30)
    width, height, angle = pictures.ellipse_axes(r @ np.diag([1.0, 9.0]) @ r.T)
    assert (width, height, angle) == pytest.approx((6.0, 2.0, -60.0), abs=1e-9)


def test_cholesky_covariance_with_a_known_factor():
    # L = [[1, 0], [1, 1]]: Sigma = [[1, 1], [1, 2]], eigenvalues phi^2 and 1/phi^2 (golden ratio phi),
    # major axis along (1, phi), i.e. at atan(phi) = 58.28 degrees
    phi = (1 + math.sqrt(5)) / 2
    tril = np.array([[1.0, 0.0], [1.0, 1.0]])
    width, height, angle = pictures.ellipse_axes(tril @ tril.T)
    assert width == pytest.approx(2 * phi, rel=1e-12)
    assert height == pytest.approx(2 / phi, rel=1e-12)
    assert angle == pytest.approx(math.degrees(math.atan(phi)), abs=1e-9)


def test_ellipse_axes_end_on_the_one_sd_contour_at_right_angles():
    """For any covariance, both axis ends lie at Mahalanobis distance 1, along perpendicular directions."""
    covariances = random_covariances(np.random.default_rng(0), 200, 2)
    widths, heights, angles = pictures.ellipse_axes(covariances)
    assert widths.shape == heights.shape == angles.shape == (200,)
    t = np.radians(angles)
    major = 0.5 * widths[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
    minor = 0.5 * heights[:, None] * np.stack([-np.sin(t), np.cos(t)], 1)
    precision = np.linalg.inv(covariances)
    for end in (major, minor):
        np.testing.assert_allclose(np.einsum("ni,nij,nj->n", end, precision, end), 1.0, rtol=1e-9)
    assert np.all(widths >= heights)
    assert np.all((angles > -90) & (angles <= 90))


# ---- projection -------------------------------------------------------------------------------------
def test_projection_plane_recovers_the_plane_the_means_spread_in():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    u, v = q[:, 0], q[:, 1]
    n = 400
    # coefficients along u and v with zero sample mean and zero sample correlation, so that u and v are
    # exactly the principal directions of the noise-free means
    coefficients, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.normal(size=(n, 2))]))
    coefficients = coefficients[:, 1:] * math.sqrt(n) * np.array([3.0, 1.5])
    means = 5.0 + coefficients @ np.stack([u, v]) + rng.normal(0, 0.01, (n, 5))  # off-centre on purpose
    basis = pictures.projection_plane(torch.tensor(means))
    assert basis.shape == (5, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    # the same plane (same orthogonal projector), and the same directions in order, up to sign
    np.testing.assert_allclose(basis @ basis.T, np.outer(u, u) + np.outer(v, v), atol=1e-3)
    assert abs(basis[:, 0] @ u) == pytest.approx(1.0, abs=1e-4)
    assert abs(basis[:, 1] @ v) == pytest.approx(1.0, abs=1e-4)
    # the sign convention: each direction's largest entry is positive
    assert all(basis[np.abs(basis[:, j]).argmax(), j] > 0 for j in range(2))


def test_projection_plane_of_two_latents_is_the_latent_plane_itself():
    means = np.random.default_rng(2).normal(size=(100, 2)) @ rotation(40)  # spread along a tilted line
    assert np.array_equal(pictures.projection_plane(means), np.eye(2))


def test_one_latent_gets_a_zero_second_axis():
    basis = pictures.projection_plane(np.arange(6.0).reshape(6, 1))
    assert np.array_equal(basis, [[1.0, 0.0]])
    plane_means, plane_cov = pictures.project(np.arange(3.0).reshape(3, 1), np.full((3, 1, 1), 4.0), basis)
    np.testing.assert_array_equal(plane_means, [[0, 0], [1, 0], [2, 0]])
    np.testing.assert_array_equal(plane_cov, np.broadcast_to([[4.0, 0.0], [0.0, 0.0]], (3, 2, 2)))
    widths, heights, angles = pictures.ellipse_axes(plane_cov)
    assert widths.tolist() == [4.0] * 3 and heights.tolist() == [0.0] * 3 and angles.tolist() == [0.0] * 3


def test_projected_covariance_is_bt_sigma_b():
    rng = np.random.default_rng(3)
    means, covariances = rng.normal(size=(20, 5)), random_covariances(rng, 20, 5)
    basis, _ = np.linalg.qr(rng.normal(size=(5, 2)))
    plane_means, plane_cov = pictures.project(means, covariances, basis)
    np.testing.assert_allclose(plane_means, means @ basis, rtol=1e-12)
    for i in range(20):
        np.testing.assert_allclose(plane_cov[i], basis.T @ covariances[i] @ basis, rtol=1e-10, atol=1e-14)
    # coordinate axes as the basis: the marginal of coordinates 0 and 2, i.e. the sub-block of Sigma
    axes = np.eye(5)[:, [0, 2]]
    plane_means, plane_cov = pictures.project(means, covariances, axes)
    np.testing.assert_array_equal(plane_means, means[:, [0, 2]])
    np.testing.assert_array_equal(plane_cov, covariances[:, [0, 2]][:, :, [0, 2]])


# ---- ellipse_figure ---------------------------------------------------------------------------------
def patch_geometry(ax):
    return np.array([(*p.center, p.width, p.height, p.angle) for p in ax.patches])


def test_ellipse_figure_draws_the_known_ellipses_of_each_family():
    rng = np.random.default_rng(4)
    n, shown = 60, 12
    labels = np.arange(n) % 10
    means = rng.normal(size=(n, 2))
    variances = np.exp(rng.normal(-1, 0.4, (n, 2)))
    tilts = rng.uniform(-89, 89, n)
    major, minor = 0.5 + rng.random(n), 0.1 + 0.3 * rng.random(n)
    full = np.stack([rotated(t, a, b) for t, a, b in zip(tilts, major, minor)])
    fig = pictures.ellipse_figure({"diag": (means, diagonal(variances)), "cholesky": (torch.tensor(means), full)},
                                  labels=labels, max_ellipses=shown)
    diag_ax, full_ax = fig.axes[:2]

    diag_drawn = patch_geometry(diag_ax)
    assert diag_drawn.shape == (shown, 5)
    np.testing.assert_allclose(diag_drawn[:, :2], means[:shown], rtol=1e-12)
    np.testing.assert_allclose(diag_drawn[:, 2], 2 * np.sqrt(variances[:shown].max(1)), rtol=1e-12)
    np.testing.assert_allclose(diag_drawn[:, 3], 2 * np.sqrt(variances[:shown].min(1)), rtol=1e-12)
    assert set(diag_drawn[:, 4]) <= {0.0, 90.0}  # no tilt at all
    assert diag_drawn[:, 4].tolist() == np.where(variances[:shown, 0] >= variances[:shown, 1], 0.0, 90.0).tolist()

    full_drawn = patch_geometry(full_ax)
    np.testing.assert_allclose(full_drawn[:, 2:], np.stack([2 * major, 2 * minor, tilts], 1)[:shown], rtol=1e-9)

    # the ellipse edge has the colour of its dot's digit
    colours = [p.get_edgecolor()[:3] for p in diag_ax.patches]
    assert colours[3] == pytest.approx(pictures.matplotlib.colormaps["tab10"](3)[:3])

    assert diag_ax.get_shared_x_axes().joined(diag_ax, full_ax)
    assert diag_ax.get_shared_y_axes().joined(diag_ax, full_ax)
    assert diag_ax.get_aspect() == 1.0
    assert (diag_ax.get_xlabel(), diag_ax.get_ylabel()) == ("z1", "z2")
    assert "diag" in diag_ax.get_title() and "in this plane 0.00" in diag_ax.get_title()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [str(k) for k in range(10)]
    assert fig.legends[0].get_title().get_text() == "digit"
    # a saved sample names its labels (the synthetic set's are angle sectors); one saved before that held digits
    sample = {"means": torch.tensor(means), "covariances": torch.tensor(full[:shown]), "labels": torch.tensor(labels)}
    for stored, title in ({}, "digit"), ({"label_name": "angle sector"}, "angle sector"):
        fig = pictures.sample_ellipse_figure({"cholesky": {**sample, **stored}})
        assert fig.legends[0].get_title().get_text() == title
    # every dot and every whole ellipse lies inside the shared limits
    (x0, x1), (y0, y1) = diag_ax.get_xlim(), diag_ax.get_ylim()
    for ax in (diag_ax, full_ax):
        for patch in ax.patches:
            box = patch.get_path().get_extents(patch.get_patch_transform())
            assert x0 <= box.x0 and box.x1 <= x1 and y0 <= box.y0 and box.y1 <= y1
    assert x0 <= means[:, 0].min() and means[:, 0].max() <= x1 and y0 <= means[:, 1].min()


def test_ellipse_figure_for_many_latents_projects_each_model_on_its_own_plane():
    rng = np.random.default_rng(5)
    n, d = 80, 5
    means = rng.normal(size=(n, d)) * np.array([3.0, 2.0, 0.5, 0.3, 0.2])
    covariances = random_covariances(rng, n, d)
    # the same model with its latent space rotated: a different encoder, the same posterior geometry
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    fig = pictures.ellipse_figure({"a": (means, covariances), "a rotated": (means @ q.T, q @ covariances @ q.T)},
                                  max_ellipses=10)
    first, second = fig.axes[:2]
    expected_means, expected_cov = pictures.project(means, covariances, pictures.projection_plane(means))
    expected = np.column_stack([expected_means[:10], *pictures.ellipse_axes(expected_cov[:10])])
    np.testing.assert_allclose(patch_geometry(first), expected, rtol=1e-9, atol=1e-12)
    # its own principal plane makes the rotated copy the same picture (up to the sign of each direction)
    np.testing.assert_allclose(np.abs(patch_geometry(second)), np.abs(expected), rtol=1e-6, atol=1e-9)
    assert (first.get_xlabel(), first.get_ylabel()) == ("PC1 of E[z|x]", "PC2 of E[z|x]")
    assert "all pairs" in first.get_title()
    assert not fig.legends  # no labels, no colour legend

    shared = pictures.ellipse_figure({"a": (means, covariances), "b": (means[::-1], covariances[::-1])},
                                     max_ellipses=10, shared_basis=True)
    pooled = pictures.projection_plane(np.concatenate([means, means[::-1]]))
    shared_means, shared_cov = pictures.project(means[::-1], covariances[::-1], pooled)
    np.testing.assert_allclose(patch_geometry(shared.axes[1]),
                               np.column_stack([shared_means[:10], *pictures.ellipse_axes(shared_cov[:10])]),
                               rtol=1e-9, atol=1e-12)


def test_diag_has_zero_correlation_over_the_latent_pairs_even_where_its_plane_tilts():
    rng = np.random.default_rng(6)
    means = rng.normal(size=(50, 4)) * np.array([2.0, 1.5, 1.0, 0.5])
    variances = np.exp(rng.normal(-1, 0.8, (50, 4)))
    title = pictures.ellipse_figure({"diag": (means, diagonal(variances))}).axes[0].get_title()
    assert "all pairs 0.00" in title


# ---- correlation_figure -----------------------------------------------------------------------------
def test_correlation_figure_shows_the_correlation_matrices_on_a_fixed_scale():
    rng = np.random.default_rng(7)
    covariances = random_covariances(rng, 6, 8)
    images = rng.random((6, 784))
    fig = pictures.correlation_figure(torch.tensor(covariances), "cholesky", images=images, count=4)
    heat_axes = [ax for ax in fig.axes if ax.get_label() == "correlation"]
    image_axes = [ax for ax in fig.axes if ax.get_label() == "image"]
    assert len(heat_axes) == len(image_axes) == 4
    for i, ax in enumerate(heat_axes):
        (heat,) = ax.images
        data = np.asarray(heat.get_array())
        sd = np.sqrt(np.diag(covariances[i]))
        np.testing.assert_allclose(data, covariances[i] / np.outer(sd, sd), rtol=1e-12)
        assert np.array_equal(np.diag(data), np.ones(8))
        assert data.min() >= -1 and data.max() <= 1
        assert heat.get_clim() == (-1.0, 1.0)
        assert heat.get_cmap().name == "RdBu_r"
    for i, ax in enumerate(image_axes):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), images[i].reshape(28, 28))
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    assert "cholesky" in fig.get_suptitle()


def test_correlations_of_a_diagonal_posterior_are_the_identity():
    fig = pictures.correlation_figure(diagonal(np.array([[4.0, 1.0, 0.01]])), "diag", count=4)
    (ax,) = [ax for ax in fig.axes if ax.get_label() == "correlation"]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), np.eye(3))


# ---- output and layout ------------------------------------------------------------------------------
def test_png_and_tensorboard_array_are_the_same_pixels():
    fig = pictures.correlation_figure(random_covariances(np.random.default_rng(8), 1, 3), "cholesky", count=1)
    png = pictures.figure_png(fig)
    assert png.startswith(PNG_MAGIC)
    array = pictures.figure_array(fig)
    width, height = fig.get_size_inches() * pictures.DPI
    assert array.dtype == np.uint8 and array.shape == (round(height), round(width), 3)
    assert array.min() < 100 and array.max() == 255  # something drawn on a white background


# each case draws a figure (about a second): the fast tier draws three, the full suite all eight
@pytest.mark.parametrize("latent_dim, families, spread", [(2, 3, 1), (1, 1, 1), (4, 1, 0.05)] + [
    pytest.param(*case, marks=pytest.mark.slow) for case in [(2, 1, 1), (1, 2, 1), (6, 2, 1), (4, 1, 1), (2, 2, 0.05)]])
def test_ellipse_figure_text_stays_inside_the_figure_and_off_other_text(latent_dim, families, spread):
    """What the eye checks in the PNG: no label cut off at an edge, no title over another, the legend
    beside the panels. One panel (a run's own figure) and means spread along one direction (a flat, short
    figure) included."""
    rng = np.random.default_rng(9)
    n = 200
    scale = np.array([1.0] + [spread] * (latent_dim - 1))
    panels = {f"family{k}": (rng.normal(size=(n, latent_dim)) * scale,
                             random_covariances(rng, n, latent_dim) * spread ** 2) for k in range(families)}
    fig = pictures.ellipse_figure(panels, labels=rng.integers(0, 10, n))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    page = fig.bbox
    axes = [ax for ax in fig.axes]
    texts = [fig._suptitle, *(ax.title for ax in axes), *(ax.xaxis.label for ax in axes), axes[0].yaxis.label]
    boxes = [t.get_window_extent(renderer) for t in texts] + [fig.legends[0].get_window_extent(renderer)]
    for box in boxes:
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1
    suptitle, legend = boxes[0], boxes[-1]
    for box in boxes[1:1 + len(axes)] + [legend]:  # panel titles and the legend
        assert not suptitle.overlaps(box)
    for ax in axes:
        assert not legend.overlaps(ax.get_window_extent(renderer))
