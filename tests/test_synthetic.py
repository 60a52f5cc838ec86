"""The synthetic data set (vae_compare/synthetic.py, dataset=synthetic): exact posteriors against closed forms,
images the same on every machine, the true decoder loaded into VAEs, the posterior-shape numbers the report
gives, and a tiny training run end to end."""

import hashlib
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.distributions import MultivariateNormal

from conftest import make_vae, run_cli
from vae_compare import UserError, data, model, synthetic

DTYPE = torch.float64
# sha256 of the first 16 test images (uint8, row-major) at the default data.eval_binarize_seed, and the first
# test latents, as this module was committed (torch 2.14.1)
TEST_IMAGES_SHA256 = "1c6cf0767cc5241fb4ee12505801e36d12e278013005279d72ba739d13e888f1"
FIRST_TEST_LATENTS = [[-0.7860438449599233, -0.4388945769312437], [1.366371567034203, -0.5094422054806915]]
# posterior_shape of the first 8 test images' exact posteriors (quadrature tolerance 1e-2; 1e-3 gives the
# same to 4 decimals)
SUBSET_IMAGES = 8
SUBSET_SHAPE = {"mean_abs_correlation": 0.7605, "orientation_resultant": 0.3842, "total_correlation": 0.537,
                "total_correlation_rotated_joint": 0.3437}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation on the shared 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data_cfg(**overrides):
    cfg = {"name": "synthetic", "root": None, "binarize": "dynamic", "val_size": 100, "train_size": None,
           "test_size": 16, "eval_binarize_seed": 1234}
    return OmegaConf.create({**cfg, **overrides})


def test_a_decoder_that_ignores_z_gives_the_bernoulli_log_probability_and_the_prior():
    decoder = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 6)).to(DTYPE).requires_grad_(False)
    with torch.no_grad():
        decoder[2].weight.zero_()
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((3, 6), 0.3, dtype=DTYPE), generator=generator)
    logits = decoder[2].bias
    expected = (x * nn.functional.logsigmoid(logits) + (1 - x) * nn.functional.logsigmoid(-logits)).sum(-1)
    # the box starts off-centre and tilted: the mode search must find 0 and the prior's unit scale
    start = torch.tensor([[0.5, -1.0], [2.0, 0.3], [0.0, 0.1]], dtype=DTYPE)
    centre, scale_tril = synthetic.laplace_box(decoder, x, start)
    torch.testing.assert_close(centre, torch.zeros(3, 2, dtype=DTYPE), atol=1e-12, rtol=0)
    torch.testing.assert_close(scale_tril, torch.eye(2, dtype=DTYPE).expand(3, 2, 2), atol=1e-12, rtol=0)
    exact = synthetic.exact_posteriors(synthetic.bernoulli_log_likelihood(decoder), x, centre, scale_tril)
    torch.testing.assert_close(exact.log_px, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(exact.mean, torch.zeros(3, 2, dtype=DTYPE), atol=1e-9, rtol=0)
    torch.testing.assert_close(exact.covariance, torch.eye(2, dtype=DTYPE).expand(3, 2, 2), atol=1e-9, rtol=0)


def test_a_linear_gaussian_model_gives_its_closed_form_evidence_mean_and_covariance():
    """p(x|z) = N(W z + b, sigma^2 I) with W's columns correlated: the posterior is tilted, N(m, Lambda^-1)."""
    generator = torch.Generator().manual_seed(1)
    sigma, pixels = 0.5, 5
    W = torch.randn(pixels, 2, generator=generator, dtype=DTYPE) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]], dtype=DTYPE)
    b = torch.randn(pixels, generator=generator, dtype=DTYPE)
    x = torch.randn(3, 2, generator=generator, dtype=DTYPE) @ W.T + b + sigma * torch.randn(3, pixels, generator=generator,
                                                                                            dtype=DTYPE)
    covariance = torch.linalg.inv(torch.eye(2, dtype=DTYPE) + W.T @ W / sigma ** 2)
    mean = (x - b) @ W @ covariance / sigma ** 2
    log_px = MultivariateNormal(b, W @ W.T + sigma ** 2 * torch.eye(pixels, dtype=DTYPE)).log_prob(x)

    def log_likelihood(x, z):
        residual = x - (z @ W.T + b)
        return -0.5 * residual.square().sum(-1) / sigma ** 2 - pixels * math.log(sigma) - 0.5 * pixels * math.log(2 * math.pi)

    # a box off the mean and wider than the posterior, so the grid is not laid to fit it
    tril = 1.5 * torch.linalg.cholesky(covariance).expand(3, 2, 2)
    exact = synthetic.exact_posteriors(log_likelihood, x, mean + 0.3, tril, tolerance=1e-6)
    assert (exact.error_bound < 1e-6).all()
    torch.testing.assert_close(exact.log_px, log_px, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact.mean, mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact.covariance, covariance.expand(3, 2, 2), atol=1e-6, rtol=0)
    # the tilt the closed form has is the tilt measured
    correlation = covariance[0, 1] / (covariance[0, 0] * covariance[1, 1]).sqrt()
    assert synthetic.posterior_shape(exact.covariance)["mean_abs_correlation"] == pytest.approx(abs(float(correlation)))


def test_the_images_are_the_same_on_every_machine_and_for_any_test_size():
    torch.testing.assert_close(synthetic.latents("test")[:2], torch.tensor(FIRST_TEST_LATENTS, dtype=DTYPE),
                               atol=1e-12, rtol=0)
    _, test = data.load_test(data_cfg(), torch.device("cpu"))
    assert hashlib.sha256(test.pixels.to(torch.uint8).numpy().tobytes()).hexdigest() == TEST_IMAGES_SHA256
    _, more = data.load_test(data_cfg(test_size=64), torch.device("cpu"))
    assert torch.equal(more.pixels[:16], test.pixels)
    # another seed is another data set
    assert not torch.equal(synthetic.latents("test", seed=1)[:16], synthetic.latents("test")[:16])


def test_the_splits_are_the_true_means_of_their_latents_in_mnist_sizes():
    source, train, val = data.load_training(data_cfg(train_size=50), 0, torch.device("cpu"))
    assert source == synthetic.SyntheticSource() and "synthetic" in str(source)
    assert (len(train), len(val)) == (50, 100)
    z = synthetic.latents("train")
    assert z.shape == (60000, 2) and synthetic.latents("test").shape == (10000, 2)
    torch.testing.assert_close(train.pixels, synthetic.bernoulli_means(z[:50]))
    # validation is data.py's one fixed binary draw from the last val_size training latents' means
    assert torch.equal(val.pixels, data.cpu_bernoulli(synthetic.bernoulli_means(z[-100:]), 1234))
    labels = data.read_labels(source, "test")
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(synthetic.ANGLE_SECTORS))
    assert data.label_name(source) == "angle sector" and data.label_name("mnist") == "digit"
    with pytest.raises(UserError, match="reads no files"):
        data.load_test(data_cfg(root="/tmp"), torch.device("cpu"))


@pytest.mark.parametrize("hidden", [[32], [128, 64], [64, 64, 40]])
def test_the_true_decoder_loads_into_a_vae_of_the_stated_shape(hidden):
    vae = make_vae(2, hidden, "gelu", "cholesky")
    vae.decoder.load_state_dict(synthetic.true_decoder_state_dict(vae.config))
    z = synthetic.latents("test")[:100]
    torch.testing.assert_close(vae.decoder(z.float()).double(), synthetic.true_decoder()(z), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("latent_dim, hidden, activation", [(2, [32], "relu"), (3, [32], "gelu"), (2, [16], "gelu"),
                                                             (2, [40, 32], "gelu")])
def test_the_true_decoder_refuses_other_shapes(latent_dim, hidden, activation):
    vae = make_vae(latent_dim, hidden, activation, "diag")
    with pytest.raises(UserError, match="true decoder needs"):
        synthetic.true_decoder_state_dict(vae.config)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_the_posterior_shape_of_a_test_subset_is_the_one_reported():
    _, test = data.load_test(data_cfg(test_size=SUBSET_IMAGES), torch.device("cpu"))
    exact = synthetic.true_posteriors(test.pixels, synthetic.latents("test")[:SUBSET_IMAGES], tolerance=1e-2)
    assert (exact.error_bound < 1e-2).all()
    shape = synthetic.posterior_shape(exact.covariance)
    assert {name: shape[name] for name in SUBSET_SHAPE} == pytest.approx(SUBSET_SHAPE, abs=1e-3)
    # every posterior is far from axis-aligned, with long axes spread over more than 90 degrees
    angles = torch.rad2deg(synthetic.principal_angles(exact.covariance))
    correlation = exact.covariance[:, 0, 1] / (exact.covariance[:, 0, 0] * exact.covariance[:, 1, 1]).sqrt()
    assert correlation.abs().min() > 0.3 and angles.max() - angles.min() > 90


@pytest.mark.slow
def test_training_on_the_synthetic_set_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "dataset=synthetic", "latent_dim=2", "model.activation=gelu", "family=cholesky",
                      "data.train_size=256", "data.val_size=128", "data.test_size=64", "model.hidden=[32]",
                      "train.epochs=2", "train.batch_size=64", "eval.iwae_samples=16", "train.threads=1",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["config"]["data"]["name"] == "synthetic"
    assert summary["data_folder"] == str(synthetic.SyntheticSource())
    # better than every pixel at 0.5 after two epochs, and a normalised likelihood of binary images
    assert -784 * math.log(2) < summary["test"]["log_px"] < 0 and summary["likelihood"] == "bernoulli"
    assert (run_dir / "posterior_ellipses.png").is_file()
    refused = run_cli(["train", "dataset=synthetic", "data.root=/tmp", f"hydra.run.dir={tmp_path / 'refused'}"],
                      cwd=tmp_path)
    assert refused.returncode != 0 and "reads no files" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_the_true_decoder_trains_only_the_encoder(tmp_path):
    run_dir = tmp_path / "run"
    settings = ["dataset=synthetic", "latent_dim=2", "model.activation=gelu", "family=cholesky", "data.train_size=256",
                "data.val_size=128", "data.test_size=64", "model.hidden=[64]", "train.epochs=2", "train.batch_size=64",
                "eval.iwae_samples=16", "train.threads=1", "train.decoder_from=true_decoder"]
    result = run_cli(["train", *settings, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["decoder"] == "frozen from true_decoder"
    weights = torch.load(run_dir / "best.pt", weights_only=True)
    config = model.vae_config(OmegaConf.create(summary["config"]))
    for name, value in synthetic.true_decoder_state_dict(config).items():
        assert torch.equal(weights[f"decoder.{name}"], value), name
    refused = run_cli(["train", "train.decoder_from=true_decoder", "latent_dim=2", f"hydra.run.dir={tmp_path / 'refused'}"],
                      cwd=tmp_path)
    assert refused.returncode == 2 and "only dataset=synthetic has a true decoder" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
