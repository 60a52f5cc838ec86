"""The end of a run, in-process: what evaluate_and_write leaves in the run folder and in TensorBoard.

A tiny untrained model on the first real MNIST test images; the pictures of q(z|x) are checked against
the model's own posterior (read back from the saved arrays and the drawn patches), the TensorBoard tags
against the order the TIME SERIES tab shows them in.
"""

import io

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from conftest import MNIST
from vae_compare import data, finish, pictures
from vae_compare.config import compose
from vae_compare.model import build_model

pytestmark = [pytest.mark.usefixtures("real_data"), pytest.mark.slow]  # each test writes a run folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEST_IMAGES = 64
TRAINING = {"best_epoch": 3, "best_val_elbo": -500.0, "seconds_per_epoch": 1.0, "images_per_second": 100.0}


def finish_run(folder, monkeypatch, *overrides):
    """evaluate_and_write on a fresh model; returns the config, the model and the figures it drew."""
    cfg = compose([f"data.root={MNIST}", f"data.test_size={TEST_IMAGES}", "model.hidden=[32]", "latent_dim=2",
                   "eval.iwae_samples=4", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    drawn = {}
    draw = finish.posterior_figures

    def keep(*args):
        drawn.update(draw(*args))
        return drawn

    monkeypatch.setattr(finish, "posterior_figures", keep)
    finish.evaluate_and_write(folder, cfg, model, torch.device("cpu"), dict(TRAINING))
    return cfg, model, drawn


def event_data(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_posterior_sample_and_pictures_are_the_models_own(tmp_path, monkeypatch):
    # a random start with full scale: the off-diagonal part is far from zero, so the ellipses tilt
    cfg, model, drawn = finish_run(tmp_path, monkeypatch, "family=cholesky", "family.offdiag_init=default",
                                   "family.offdiag_scale=1")
    sample = torch.load(tmp_path / "posterior_sample.pt", weights_only=True)
    _, test = data.load_test(cfg.data, torch.device("cpu"))
    with torch.no_grad():
        q = model.posterior(test.pixels)
        torch.testing.assert_close(sample["means"], q.mean)
        torch.testing.assert_close(sample["covariances"], q.covariance()[:finish.POSTERIOR_COVARIANCES])
    assert sample["labels"].tolist() == data.read_labels(MNIST, "test")[:TEST_IMAGES].tolist()
    assert sample["labels"][:4].tolist() == [7, 2, 1, 0]
    assert sample["label_name"] == "digit"

    # the ellipses drawn are the saved covariances' (d = 2: the latent plane itself), and they tilt
    (ax,) = [ax for ax in drawn["posterior_ellipses.png"].axes if ax.patches]
    geometry = np.array([(*p.center, p.width, p.height, p.angle) for p in ax.patches])
    expected = np.column_stack([sample["means"][:finish.POSTERIOR_COVARIANCES].double().numpy(),
                                *pictures.ellipse_axes(sample["covariances"])])
    np.testing.assert_allclose(geometry, expected, rtol=1e-9, atol=1e-12)
    assert np.mean(~np.isin(geometry[:, 4], [0.0, 90.0])) > 0.9
    assert ax.get_title().startswith("cholesky\n")
    heat = [ax for ax in drawn["posterior_correlations.png"].axes if ax.get_label() == "correlation"]
    assert len(heat) == finish.CORRELATION_IMAGES
    np.testing.assert_allclose(np.asarray(heat[0].images[0].get_array()),
                               pictures.correlation_matrices(sample["covariances"][0]), rtol=1e-12)

    # the PNG files are those figures, and TensorBoard shows the same pixels
    accumulator = event_data(tmp_path)
    for name in ("posterior_ellipses", "posterior_correlations"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == PNG_MAGIC
        (event,) = accumulator.Images(f"viz/{name}")
        assert event.step == TRAINING["best_epoch"]
        board = np.round(imread(io.BytesIO(event.encoded_image_string), format="png")[..., :3] * 255)
        np.testing.assert_array_equal(board, pictures.png_array(png))


def test_diag_ellipses_have_no_tilt_in_the_latent_plane(tmp_path, monkeypatch):
    _, _, drawn = finish_run(tmp_path, monkeypatch, "family=diag")
    (ax,) = [ax for ax in drawn["posterior_ellipses.png"].axes if ax.patches]
    assert len(ax.patches) == finish.POSTERIOR_COVARIANCES
    assert {p.angle for p in ax.patches} <= {0.0, 90.0}


def test_tensorboard_opens_on_the_curves_and_keeps_the_final_numbers_for_hparams(tmp_path, monkeypatch):
    """TensorBoard's TIME SERIES tab sorts tag groups by name and opens the first two: those must be the
    curves. The final numbers are single points only for the HPARAMS tab, and a text card."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    finish_run(tmp_path, monkeypatch, "family=lowrank", "family.rank=1")
    accumulator = event_data(tmp_path)
    tags = accumulator.Tags()
    scalars = set(tags["scalars"])
    assert scalars == {f"{finish.TEST_GROUP}/{name}" for name in [*finish.HPARAM_METRICS, "best_val_elbo"]}
    groups = {tag.split("/")[0] for tag in scalars | set(tags["images"])}
    assert sorted(["train", "val", *groups])[:2] == ["train", "val"]  # the curves' groups come first
    log_px = accumulator.Scalars(f"{finish.TEST_GROUP}/log_px")
    summary = (tmp_path / "summary.json").read_text()
    assert len(log_px) == 1 and f"{log_px[0].value:.4f}"[:6] in summary
    # the HPARAMS columns carry readable titles
    experiment = HParamsPluginData.FromString(accumulator.SummaryMetadata("_hparams_/experiment").plugin_data.content)
    titles = {info.name.tag: info.display_name for info in experiment.experiment.metric_infos}
    assert titles[f"{finish.TEST_GROUP}/log_px"] == "test log p(x)" and len(titles) == len(finish.HPARAM_METRICS) + 1
    # the run's final table as markdown in the TEXT tab
    (text,) = accumulator.Tensors(f"{finish.TEST_GROUP}/summary/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert markdown.startswith("**lowrank, latent_dim 2: test set, best epoch 3**")
    assert "| log p(x), IWAE k=4 (nats) |" in markdown and "| active units (coordinates, Burda et al.) | " in markdown
