"""One training run, from a validated config to a finished run folder.

The run folder holds, as training goes: checkpoint.pt (last state, every epoch and on a signal),
best.pt (weights with the best validation ELBO), metrics.csv (one row per finished epoch),
params.csv, TensorBoard events; and, once the run is finished and evaluated, summary.json and final.csv.
A run folder with a checkpoint but no summary is continued from the checkpoint.
"""

import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vae_compare import UserError, data, evaluate, export
from vae_compare.export import BEST, CHECKPOINT, FINAL_FILE, load_torch, read_summary
from vae_compare.model import build_hidden, build_model

log = logging.getLogger(__name__)

# Burda et al. (2016): stage i lasts 3^i epochs with learning rate lr * 10^(-i/7), i = 0..7.
BURDA_STAGES = 8


class Diverged(Exception):
    pass


class Interrupted(Exception):
    def __init__(self, signum):
        self.signum = signum


class SignalGuard:
    """First SIGINT/SIGTERM: finish the current step, then checkpoint and stop. Second: exit at once
    (every file is written atomically, so nothing is left half-written). With `immediate` set (during
    evaluation, where there is no step to finish) the first signal stops at once."""

    def __enter__(self):
        self.received = None
        self.immediate = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        if self.immediate:
            raise Interrupted(signum)

    def check(self):
        if self.received is not None:
            raise Interrupted(self.received)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


def learning_rate(train_cfg, epoch):
    """Learning rate of an epoch (0-based); the Burda schedule's stages are scaled to train.epochs."""
    if train_cfg.lr_schedule == "constant":
        return train_cfg.lr
    total = sum(3 ** i for i in range(BURDA_STAGES))
    stage_end = 0
    for stage in range(BURDA_STAGES):
        stage_end += 3 ** stage
        if epoch < round(stage_end * train_cfg.epochs / total):
            return train_cfg.lr * 10 ** (-stage / 7)
    return train_cfg.lr * 10 ** (-(BURDA_STAGES - 1) / 7)


HPARAM_KEYS = ("data.name", "data.binarize", "family.name", "family.rank", "family.scale_transform",
               "family.scale_floor", "family.offdiag_init", "family.offdiag_scale", "model.activation",
               "model.match_params", "latent_dim", "seed", "train.epochs", "train.batch_size", "train.lr",
               "train.lr_schedule", "train.kl_weight", "train.grad_clip", "model.hidden")


def hparams_of(cfg):
    """Flat scalar hyperparameters, the same keys for every run (rank 0 for diag)."""
    flat = export.flatten(OmegaConf.to_container(cfg, resolve=True))
    return {key: "none" if flat[key] is None else flat[key] for key in HPARAM_KEYS}


def make_optimizer(model, lr):
    # fused: one kernel for all parameters; measured 4x faster per Adam step on the CPU (README, Speed)
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def train_step(model, optimizer, batch, kl_weight, max_norm):
    """One Adam step on a batch. Returns the loss, per-image reconstruction and KL terms and the gradient
    norm, all left on the device (no host sync). Non-finite values are for the caller to detect."""
    recon, kl = model(batch)
    loss = (recon + kl_weight * kl).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.detach(), recon.detach(), kl.detach(), grad_norm


class Run:
    """State and files of one training run."""

    def __init__(self, cfg, folder: Path):
        self.cfg, self.folder = cfg, folder
        self.device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        # nothing here draws from Python's RNG; it is seeded and checkpointed for code that might
        random.seed(cfg.seed)
        self.data_folder, self.train_data, self.val, self.test = data.load(cfg.data, cfg.seed, self.device)
        self.hidden = build_hidden(cfg)
        self.model = build_model(cfg, self.hidden).to(self.device)
        self.optimizer = make_optimizer(self.model, learning_rate(cfg.train, 0))
        self.metrics = []  # one dict per finished epoch
        self.best = {"val_elbo": -math.inf, "epoch": -1}
        self.best_weights = None
        # epoch and step reached; mid_epoch holds the epoch's running sums when a signal stopped it mid-way
        self.epoch, self.step, self.mid_epoch = 0, 0, None
        if (folder / CHECKPOINT).exists():
            self.load_checkpoint(folder / CHECKPOINT)

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self):
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "mid_epoch": self.mid_epoch,
            "best": self.best,
            "best_weights": self.best_weights,
            "metrics": self.metrics,
            "device": self.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "python_rng": random.getstate(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save_checkpoint(self):
        """The checkpoint first, then the files derived from it: a kill in between leaves them behind it,
        and the next start rewrites them from the checkpoint."""
        export.atomic_torch_save(self.folder / CHECKPOINT, self.checkpoint_state())
        self.write_derived_files()

    def write_derived_files(self):
        if self.metrics:
            export.write_csv(self.folder / export.METRICS_FILE, self.metrics)
        if self.best_weights is not None:
            export.atomic_torch_save(self.folder / BEST, self.best_weights)

    def load_checkpoint(self, path):
        state = load_torch(path)
        if not isinstance(state, dict) or "config" not in state:
            raise UserError(f"{path} is not a vae-compare checkpoint")
        check_same_config(path, state["config"], OmegaConf.to_container(self.cfg, resolve=True))
        if state["mid_epoch"] is not None and state["device"] != self.device.type:
            raise UserError(f"{path} was stopped mid-epoch on {state['device']}; resume it on {state['device']} "
                            f"(device={state['device']})")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise UserError(f"{path} does not match this run's model ({str(error).splitlines()[0]})") from None
        self.epoch, self.step, self.mid_epoch = state["epoch"], state["step"], state["mid_epoch"]
        self.best, self.best_weights, self.metrics = state["best"], state["best_weights"], state["metrics"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        # metrics.csv or best.pt may be a step ahead if a kill fell between the checkpoint and them
        self.write_derived_files()
        log.info("resuming from %s at epoch %d step %d", path, self.epoch + 1, self.step)

    # ---- training ------------------------------------------------------------------------------
    def train_epoch(self, progress, task, guard):
        cfg, model = self.cfg.train, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.epoch)
        steps = self.train_data.steps_per_epoch(cfg.batch_size)
        mid_epoch = self.mid_epoch or {"sums": torch.zeros(2), "images": 0, "seconds": 0.0, "generator": None}
        sums = mid_epoch["sums"].to(self.device)  # summed recon and kl, kept on the device: no sync per step
        first_bad_step = torch.tensor(-1, device=self.device)
        images, seconds_before = mid_epoch["images"], mid_epoch["seconds"]
        progress.reset(task, total=steps, completed=self.step,
                       description=f"epoch {self.epoch + 1}/{cfg.epochs}")
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        model.train()
        started = time.perf_counter()
        batches = self.train_data.epoch_batches(self.epoch, cfg.batch_size, self.step, mid_epoch["generator"])
        for step, batch, generator in batches:
            loss, recon, kl, grad_norm = train_step(model, self.optimizer, batch, cfg.kl_weight, max_norm)
            finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
            first_bad_step = torch.where((first_bad_step < 0) & ~finite, step, first_bad_step)
            sums += torch.stack((recon.sum(), kl.sum()))
            images += batch.shape[0]
            self.step = step + 1
            if self.step % self.cfg.train.log_every == 0 or self.step == steps:
                self.check_finite(first_bad_step)
                running = -(sums[0] + sums[1]).item() / images
                progress.update(task, completed=self.step, elbo=f"{running:.2f}")
            else:
                progress.update(task, completed=self.step)
            if guard.received is not None:
                self.check_finite(first_bad_step)
                seconds = seconds_before + time.perf_counter() - started
                self.mid_epoch = {"sums": sums.cpu(), "images": images, "seconds": seconds,
                                  "generator": generator.get_state()}
                self.save_checkpoint()
                guard.check()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = seconds_before + time.perf_counter() - started
        recon, kl = (sums / images).tolist()
        return {"elbo": -(recon + kl), "kl": kl, "recon": recon, "seconds": seconds, "images_per_second": images / seconds}

    def last_good(self):
        path = self.folder / CHECKPOINT
        return f"{path} (epoch {self.epoch})" if path.exists() else "none yet"

    def check_finite(self, first_bad_step):
        bad = int(first_bad_step.item())
        if bad >= 0:
            raise Diverged(f"non-finite loss or gradient at epoch {self.epoch + 1} step {bad + 1}; "
                           f"last good checkpoint: {self.last_good()}")

    def log_images(self, tensorboard, epoch):
        model = self.model
        model.eval()
        with torch.no_grad():
            originals = self.val.pixels[:32]
            reconstructions = torch.sigmoid(model.decoder(model.posterior(originals).mean))
            # a fixed generator: the same prior draws every time, without touching the training RNG
            generator = torch.Generator(self.device).manual_seed(0)
            z = torch.randn(64, self.cfg.latent_dim, generator=generator, device=self.device)
            samples = torch.sigmoid(model.decoder(z))
        tensorboard.images("val/reconstructions", torch.cat((originals, reconstructions)), epoch)
        tensorboard.images("prior/samples", samples, epoch)

    def fit(self, guard, progress):
        cfg = self.cfg.train
        tensorboard = export.TensorBoard(self.folder)
        task = progress.add_task("training", total=1, elbo="")
        try:
            while self.epoch < cfg.epochs:
                train_metrics = self.train_epoch(progress, task, guard)
                self.model.eval()
                val_metrics = evaluate.elbo_terms(self.model, self.val)
                epoch = self.epoch + 1
                row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                row.update({f"train_{k}": v for k, v in train_metrics.items()})
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                if not all(math.isfinite(v) for v in val_metrics.values()):
                    raise Diverged(f"non-finite validation ELBO after epoch {epoch}; "
                                   f"last good checkpoint: {self.last_good()}")
                tensorboard.scalars({k: train_metrics[k] for k in ("elbo", "kl", "recon")}, epoch, "train")
                tensorboard.scalars({"seconds": train_metrics["seconds"],
                                     "images_per_second": train_metrics["images_per_second"]}, epoch, "speed")
                tensorboard.scalars(val_metrics, epoch, "val")
                if epoch % cfg.image_every == 0 or epoch == cfg.epochs:
                    self.log_images(tensorboard, epoch)
                if val_metrics["elbo"] > self.best["val_elbo"]:
                    self.best = {"val_elbo": val_metrics["elbo"], "epoch": epoch}
                    self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                self.metrics.append(row)
                self.epoch, self.step, self.mid_epoch = epoch, 0, None
                self.save_checkpoint()
                log.info("epoch %d/%d  train ELBO %.2f  val ELBO %.2f  KL %.2f  %.1f s",
                         epoch, cfg.epochs, train_metrics["elbo"], val_metrics["elbo"], val_metrics["kl"],
                         train_metrics["seconds"])
                guard.check()
        finally:
            tensorboard.close()


def check_same_config(path, saved, current):
    """A resumed run must continue the same experiment: only settings that do not change results, and the
    evaluation settings (the final evaluation can be redone), may differ."""
    saved, current = export.flatten(saved), export.flatten(current)
    for key in sorted(set(saved) | set(current)):
        may_differ = key in export.NON_RESULT_KEYS or key.startswith("eval.")
        if not may_differ and saved.get(key) != current.get(key):
            raise UserError(f"{path} was trained with {key}={saved.get(key)!r}, this run has {current.get(key)!r}; "
                            f"resume with the run's own settings (vae-compare train resume=<run folder>)")


def finish(run):
    """Evaluate the best checkpoint on the test set and write summary.json, final.csv and TensorBoard's final/."""
    cfg = run.cfg
    run.model.load_state_dict(run.best_weights)
    run.model.eval()
    final = evaluate.final_metrics(run.model, run.test, cfg.eval, show_progress=True)
    epochs = run.metrics
    seconds = [row["train_seconds"] for row in epochs]
    params = export.params_row(cfg, run.model, run.hidden)
    summary = {
        "status": "complete",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "device": str(run.device),
        "torch": torch.__version__,
        "data_folder": str(run.data_folder),
        "params": params,
        "best_epoch": run.best["epoch"],
        "best_val_elbo": run.best["val_elbo"],
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "images_per_second": sum(row["train_images_per_second"] for row in epochs) / len(epochs),
        "test": final,
    }
    write_final(run.folder, cfg, summary)
    return summary


def write_final(folder, cfg, summary):
    """Write the finished run's results: final.csv, TensorBoard final/ and hparams, then summary.json last."""
    final = summary["test"]
    row = {**hparams_of(cfg), **{f"test_{k}": v for k, v in final.items()},
           "best_epoch": summary["best_epoch"], "seconds_per_epoch": summary["seconds_per_epoch"],
           **{k: v for k, v in summary["params"].items() if k not in ("family", "latent_dim", "rank")}}
    export.write_csv(folder / FINAL_FILE, [row])
    tensorboard = export.TensorBoard(folder)
    try:
        tensorboard.scalars(final, summary["best_epoch"], "final")
        tensorboard.hparams(hparams_of(cfg), {f"hparams/test_{k}": final[k] for k in
                                              ("log_px", "elbo", "kl", "active_units", "logdet_gap")})
    finally:
        tensorboard.close()
    export.write_json(folder / export.SUMMARY_FILE, summary)


def summary_table(summary):
    table = Table(title=f"{summary['config']['family']['name']}, latent_dim {summary['config']['latent_dim']}: "
                        f"test set, best epoch {summary['best_epoch']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    test = summary["test"]
    rows = [
        ("log p(x), IWAE k=%d (nats)" % test["iwae_samples"], f"{test['log_px']:.2f} ± {test['log_px_stderr']:.2f}"),
        ("ELBO (nats)", f"{test['elbo']:.2f}"),
        ("KL (nats)", f"{test['kl']:.2f}"),
        ("reconstruction (nats)", f"{test['recon']:.2f}"),
        ("active units", f"{test['active_units']} / {summary['config']['latent_dim']}"),
        ("mean |off-diagonal correlation|", f"{test['offdiag_corr']:.3f}"),
        ("log-det gap (nats)", f"{test['logdet_gap']:.3f}"),
        ("median condition number", f"{test['condition_number']:.2f}"),
        ("best validation ELBO", f"{summary['best_val_elbo']:.2f}"),
        ("head outputs / total parameters", f"{summary['params']['head_outputs']} / {summary['params']['total_params']:,}"),
        ("seconds per epoch", f"{summary['seconds_per_epoch']:.2f}"),
        ("IWAE evaluation seconds", f"{test['iwae_seconds']:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def train(cfg, folder: Path, console: Console):
    """Train (or continue) the run in `folder` and evaluate it; returns its summary."""
    existing = read_summary(folder)
    if existing is not None:
        check_same_config(folder / export.SUMMARY_FILE, existing["config"], OmegaConf.to_container(cfg, resolve=True))
        log.info("%s is already complete; skipping", folder)
        return existing
    export.check_writable(folder)
    run = Run(cfg, folder)
    export.write_csv(folder / export.PARAMS_FILE, [export.params_row(cfg, run.model, run.hidden)])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ELBO {task.fields[elbo]}"),
               TimeRemainingColumn())
    with SignalGuard() as guard:
        with Progress(*columns, console=console) as progress:
            run.fit(guard, progress)
        guard.immediate = True
        guard.check()  # a signal that came during the last validation pass
        summary = finish(run)
    console.print(summary_table(summary))
    return summary


def evaluate_run(folder: Path, overrides, console: Console):
    """Re-evaluate a finished run's best checkpoint, e.g. with more importance samples, without retraining."""
    folder = folder.expanduser().resolve()
    config_path = folder / ".hydra" / "config.yaml"
    if not config_path.exists() or not (folder / BEST).exists():
        raise UserError(f"{folder} is not a trained vae-compare run folder (needs .hydra/config.yaml and {BEST})")
    summary = read_summary(folder)
    if summary is None:
        raise UserError(f"{folder} has not finished training; continue it with: vae-compare train resume={folder}")
    cfg = OmegaConf.load(config_path)
    OmegaConf.set_struct(cfg, True)  # a misspelt key is an error, not a new key
    allowed = ("eval.", "device=", "data.root=")
    for override in overrides:
        if not override.startswith(allowed) or "=" not in override:
            raise UserError(f"evaluate takes only eval.*, device= and data.root= overrides, got {override!r}")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as error:  # OmegaConf raises several types for unknown keys and bad values
        raise UserError(f"bad override: {str(error).splitlines()[0]}") from None
    from vae_compare.config import validate

    validate(cfg)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    _, _, _, test = data.load(cfg.data, cfg.seed, device)
    model = build_model(cfg, build_hidden(cfg)).to(device)
    model.load_state_dict(load_torch(folder / BEST))
    model.eval()
    summary["test"] = evaluate.final_metrics(model, test, cfg.eval, show_progress=True)
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    summary["device"] = str(device)
    write_final(folder, cfg, summary)
    console.print(summary_table(summary))
    return summary
