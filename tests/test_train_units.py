"""Pieces of training that need no subprocess: the learning-rate schedule and the fair start."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_vae
from vae_compare.schedule import learning_rate, stops_early


def burda(epochs):
    return OmegaConf.create({"lr_schedule": "burda", "lr": 1e-3, "epochs": epochs})


# Burda et al.'s code (experiments.py): stage i = 1..8 at 1e-4 * round(10^(1 - (i-1)/7), 1)
REFERENCE_RATES = [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4]


def test_burda_schedule_has_the_reference_stages():
    cfg = burda(3280)
    stage_starts = [sum(3 ** j for j in range(i)) for i in range(8)]  # 0, 1, 4, 13, 40, 121, 364, 1093
    for i, start in enumerate(stage_starts):
        assert learning_rate(cfg, start) == pytest.approx(REFERENCE_RATES[i], rel=1e-12)
        assert learning_rate(cfg, start + 3 ** i - 1) == pytest.approx(REFERENCE_RATES[i], rel=1e-12)  # stage end
    assert learning_rate(cfg, 3279) == pytest.approx(1e-4)


def test_burda_schedule_scales_with_epochs():
    cfg = burda(328)  # a tenth: stage i lasts 3^i / 10 epochs, rounded, so stages 0 and 1 vanish
    rates = [learning_rate(cfg, e) for e in range(328)]
    assert rates[0] == pytest.approx(REFERENCE_RATES[2]) and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # the last stage takes the same share (2187/3280) of the run
    assert sum(r == pytest.approx(1e-4) for r in rates) == pytest.approx(328 * 2187 / 3280, abs=1)


def test_plateau_schedule_decays_after_patience_epochs_without_a_better_validation_elbo():
    cfg = OmegaConf.create({"lr_schedule": "plateau", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_patience": 2})
    # best at epochs 1, 2, then two flat epochs (decay), one more flat, two more (decay again), then a new best
    history = [-100, -99, -99.5, -99.2, -99.1, -99.3, -99.4, -98]
    rates = [learning_rate(cfg, epoch, history) for epoch in range(len(history) + 1)]
    assert rates == pytest.approx([1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 3)
    # only the epochs before the one asked about count (the schedule cannot look ahead)
    assert learning_rate(cfg, 3, history + [0.0]) == pytest.approx(1e-3)


def test_early_stopping_by_patience_or_by_the_plateau_rate_floor():
    cfg = OmegaConf.create({"lr_schedule": "plateau", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_patience": 2,
                            "patience": 3, "lr_min": None})
    assert not stops_early(cfg, [])
    assert not stops_early(cfg, [-100, -99, -99.5, -99.2])  # two epochs since the best
    assert stops_early(cfg, [-100, -99, -99.5, -99.2, -99.1])  # three
    # tiny gains keep resetting the patience while the rate decays: only lr_min ends the run
    creeping = [-100, -99.5, -99.6, -99.7, -99.4999, -99.6, -99.7, -99.4998]
    assert not stops_early(cfg, creeping)
    floor = OmegaConf.merge(cfg, {"lr_min": 3e-4})  # rates 1e-3, 5e-4, 2.5e-4 (after the 2nd decay)
    assert not stops_early(floor, creeping[:3]) and stops_early(floor, creeping[:7])
    assert stops_early(floor, creeping)
    constant = OmegaConf.merge(cfg, {"lr_schedule": "constant", "lr_min": 3e-4})
    assert not stops_early(constant, creeping)


@pytest.mark.parametrize("family,rank", [("cholesky", 0), ("lowrank", 3)])
def test_zero_init_starts_as_the_diagonal_model(family, rank):
    torch.manual_seed(0)
    model = make_vae(6, [32], "relu", family, rank, "softplus", 1e-3, "zero", 0.01)
    q = model.posterior(torch.rand(5, 784))
    assert torch.allclose(q.covariance(), torch.diag_embed(q.variances()))
    head = model.encoder[-1]
    assert head.weight[12:].abs().sum() == 0 and head.bias[12:].abs().sum() == 0
    # ...and the off-diagonal part still learns: its gradient is non-zero
    recon, kl = model(torch.rand(5, 784).round())
    (recon + kl).sum().backward()
    assert head.weight.grad[12:].abs().sum() > 0


def test_default_init_is_not_diagonal():
    torch.manual_seed(0)
    model = make_vae(6, [32], "relu", "cholesky", 0, "softplus", 1e-3, "default", 1.0)
    q = model.posterior(torch.rand(5, 784))
    assert not torch.allclose(q.covariance(), torch.diag_embed(q.variances()))


def test_offdiag_scale_multiplies_the_offdiagonal_outputs():
    torch.manual_seed(0)
    x = torch.rand(3, 784)
    big = make_vae(4, [16], "relu", "cholesky", 0, "softplus", 1e-3, "default", 1.0)
    small = make_vae(4, [16], "relu", "cholesky", 0, "softplus", 1e-3, "default", 0.01)
    small.load_state_dict(big.state_dict())
    assert torch.allclose(small.posterior(x).offdiag, 0.01 * big.posterior(x).offdiag)
    assert torch.equal(small.posterior(x).mean, big.posterior(x).mean)


# ---- the training step and the NaN guard -------------------------------------------------------------
FAMILY_SETTINGS = {"diag": [], "cholesky": ["family=cholesky"], "lowrank": ["family=lowrank", "family.rank=2"],
                   "corr": ["family=corr"], "rank1sum": ["family=rank1sum"]}


@pytest.mark.parametrize("family", FAMILY_SETTINGS)
def test_noise_drawn_ahead_gives_the_eager_forward(family):
    """train.compile draws the noise outside the compiled graph: same generators, same draws, same terms."""
    from vae_compare.config import compose
    from vae_compare.model import build_model
    from vae_compare.posteriors import Noise

    cfg = compose(["latent_dim=4", "model.hidden=[16]", *FAMILY_SETTINGS[family]])
    model = build_model(cfg)
    x = torch.rand(5, 784).round()
    eager = model(x, Noise(3, torch.device("cpu")))
    ahead = model.forward_from_noise(x, model.training_noise(x, Noise(3, torch.device("cpu"))))
    for a, b in zip(eager, ahead):
        assert torch.equal(a, b)


def tiny_run(tmp_path, *overrides):
    from conftest import TINY
    from vae_compare.config import compose
    from vae_compare.train import Run

    tiny = [o for o in TINY if not o.startswith("train.threads")]
    return Run(compose([*tiny, "device=cpu", *overrides]), tmp_path)


class NoGuard:
    """SignalGuard's part that Run reads: no signal has come."""

    received = None

    def check(self):
        pass


def test_a_non_finite_step_between_log_points_stops_the_epoch_before_anything_is_written(tmp_path, real_data):
    """The finiteness check reads the device only every train.log_every steps: a bad step in between is still
    found, by its number, before the epoch returns (so before fit writes a checkpoint or a metrics row)."""
    from rich.progress import Progress

    from vae_compare.export import CHECKPOINT
    from vae_compare.train import Diverged

    run = tiny_run(tmp_path, "train.log_every=50")  # 8 steps per epoch: no log point before the last step
    batches = run.train_data.epoch_batches

    def poisoned(*args, **kwargs):
        for step, batch, generator in batches(*args, **kwargs):
            yield step, (batch * torch.nan if step == 2 else batch), generator

    run.train_data.epoch_batches = poisoned
    progress = Progress(disable=True)
    with pytest.raises(Diverged, match="at epoch 1 step 3;"):
        run.train_epoch(progress, progress.add_task("", total=1, elbo=""), NoGuard())
    assert run.epoch == 0 and not run.metrics and not (tmp_path / CHECKPOINT).exists()


def test_divergence_stops_fit_with_nothing_written(tmp_path, real_data):
    from rich.progress import Progress

    from vae_compare.export import CHECKPOINT, METRICS_FILE
    from vae_compare.train import Diverged

    run = tiny_run(tmp_path, "train.lr=1e12")
    with pytest.raises(Diverged, match="non-finite"):
        run.fit(NoGuard(), Progress(disable=True))
    assert not (tmp_path / CHECKPOINT).exists() and not (tmp_path / METRICS_FILE).exists()


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_patience_stops_training_after_epochs_without_a_better_validation_elbo(tmp_path, real_data):
    """train.patience=2: validation ELBO that stops improving after epoch 2 ends training after epoch 4, and
    the summary says so; without patience every epoch runs."""
    from rich.progress import Progress

    from vae_compare import evaluate

    for patience, epochs_trained in ((["train.patience=2"], 4), ([], 6)):
        run = tiny_run(tmp_path / str(len(patience)), "train.epochs=6", *patience)
        scores = iter([-100.0, -90.0, -95.0, -92.0, -91.0, -93.0])
        real = evaluate.elbo_terms
        evaluate.elbo_terms = lambda model, split: {**real(model, split), "elbo": next(scores)}
        try:
            run.fit(NoGuard(), Progress(disable=True))
        finally:
            evaluate.elbo_terms = real
        summary = run.training_summary()
        assert (summary["epochs_trained"], summary["best_epoch"]) == (epochs_trained, 2)
        assert summary["stopped_early"] == bool(patience)


def test_unclipped_step_reports_the_gradient_norm_without_touching_gradients():
    from vae_compare.train import make_optimizer, train_step

    torch.manual_seed(0)
    model = make_vae(3, [8], "relu", "diag")
    x = torch.rand(4, 784).round()
    torch.manual_seed(1)  # without a Noise the step draws from the global RNG: compare against the same draw
    recon, kl = model(x, None)
    (recon + kl).mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer = make_optimizer(model, 0.0)  # lr 0: the step leaves the weights alone
    torch.manual_seed(1)
    _, _, _, norm = train_step(model, optimizer, x, 1.0, float("inf"))
    assert norm == pytest.approx(expected.item(), rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


# ---- burda2016 as the reference implementation runs it --------------------------------------------
@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_output_bias_starts_at_the_logit_of_the_training_mean_and_moves_nothing_else(tmp_path, real_data):
    default = tiny_run(tmp_path / "default")
    started = tiny_run(tmp_path / "mean", "model.output_bias=data_mean")
    m = started.train_data.pixels.mean(0).double().clamp(0.001, 0.999)
    bias = started.model.decoder[-1].bias
    assert torch.allclose(bias.double(), torch.log(m / (1 - m)), atol=1e-6)
    assert bias.min().item() == pytest.approx(torch.logit(torch.tensor(0.001)).item(), rel=1e-5)  # edge pixels: clipped
    # every other parameter comes from its own seeded stream, untouched by the start
    named = dict(default.model.named_parameters())
    for name, value in started.model.named_parameters():
        if value is not bias:
            assert torch.equal(value, named[name]), name
    assert not torch.equal(bias, default.model.decoder[-1].bias)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_adam_settings_reach_the_optimizer(tmp_path, real_data):
    run = tiny_run(tmp_path, "train.adam_eps=1e-4", "train.adam_beta1=0.99")
    group = run.optimizer.param_groups[0]
    assert group["eps"] == 1e-4 and group["betas"] == (0.99, 0.999) and group["fused"]
    default = tiny_run(tmp_path / "default").optimizer.param_groups[0]
    assert default["eps"] == 1e-8 and default["betas"] == (0.9, 0.999)


def test_adam_beta1_must_be_below_one():
    from vae_compare import UserError
    from vae_compare.config import compose
    from vae_compare.config import validate

    with pytest.raises(UserError, match="train.adam_beta1 must be a number < 1"):
        validate(compose(["train.adam_beta1=1.0"]))


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_burda2016_preset_trains_on_the_first_59600_images(real_data):
    from conftest import MNIST
    from vae_compare.config import compose
    from vae_compare.data import load_training, read_images

    cfg = compose(["experiment=burda2016", f"data.root={MNIST}"])
    assert cfg.model.output_bias == "data_mean" and cfg.train.adam_beta1 == 0.99
    assert cfg.train.adam_eps == pytest.approx(1e-4 / cfg.train.batch_size)
    _, train_data, val = load_training(cfg.data, cfg.seed, torch.device("cpu"))
    images = read_images(MNIST, "train")
    assert len(train_data) == 59_600 and len(val) == 400
    assert torch.equal(train_data.pixels, images[:59_600])


@pytest.mark.slow  # compiles with inductor: tens of seconds
def test_compiled_step_matches_the_eager_step():
    """train.compile: the same noise draws and, to float rounding, the same loss, terms and update."""
    from vae_compare.config import compose
    from vae_compare.model import build_model
    from vae_compare.posteriors import Noise
    from vae_compare.train import compiled_loss_terms, make_optimizer, train_step

    cfg = compose(["latent_dim=4", "model.hidden=[16]", "family=lowrank", "family.rank=2"])
    x = torch.rand(6, 784).round()
    results = []
    for compiled in (False, True):
        model = build_model(cfg)
        optimizer = make_optimizer(model, 1e-3)
        step = compiled_loss_terms(model) if compiled else None
        noise = Noise(0, torch.device("cpu"))
        outputs = [train_step(model, optimizer, x, 1.0, float("inf"), noise, step) for _ in range(2)]
        results.append((outputs, [p.detach().clone() for p in model.parameters()]))
    (eager, eager_weights), (compiled, compiled_weights) = results
    for eager_step, compiled_step in zip(eager, compiled):
        for a, b in zip(eager_step, compiled_step):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(eager_weights, compiled_weights))
