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
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vae_compare import UserError, data, evaluate, export, finish, memory, rundir
from vae_compare.config import check_same_config, plain
from vae_compare.export import BEST, CHECKPOINT
from vae_compare.frozen import freeze_decoder, frozen_decoder
from vae_compare.model import build_model
from vae_compare.posteriors import Noise
from vae_compare.runtime import pick_device, synchronize
from vae_compare.schedule import learning_rate, stops_early

log = logging.getLogger(__name__)

# first_bad_step's value while every step of the epoch has been finite
NO_BAD_STEP = 2 ** 62


class Diverged(Exception):
    pass


def elbo_floor(pixels):
    """The ELBO of the model that gives every pixel probability 0.5 with q = the prior: -pixels * log 2 nats on any
    image. The Bernoulli log-likelihood at p = 0.5 is -log 2 for every target in [0, 1], so the floor holds for grey
    levels (binarize=none) as well. A run scoring below it is worse than knowing nothing: it diverged. Only a run
    whose decoder trains can reach it; a frozen decoder (train.decoder_from) is checked for non-finite values only,
    since a sharp one scores below the floor on every image whose z the young encoder misplaces."""
    return -pixels * math.log(2)


class Interrupted(Exception):
    def __init__(self, signum):
        self.signum = signum


class SignalGuard:
    """First SIGINT/SIGTERM: finish the current step, then checkpoint and stop. Second: exit at once, after
    removing the temporary file of a write in progress (every file is written to a temporary name and
    renamed, so nothing is left half-written). With `immediate` set (during evaluation, where there is no
    step to finish) the first signal stops at once."""

    def __enter__(self):
        self.received = None
        self.immediate = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received is not None:
            export.remove_pending_temp()
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


def make_optimizer(model, lr, eps=1e-8, beta1=0.9):
    # fused: one kernel for all parameters; measured 4x faster per Adam step on the CPU (docs/speed.md)
    trainable = [p for p in model.parameters() if p.requires_grad]  # a frozen decoder (train.decoder_from) is not
    return torch.optim.Adam(trainable, lr=lr, betas=(beta1, 0.999), eps=eps, fused=True)


def loss_terms(model, batch, eps, kl_weight):
    """The training loss and its per-image terms from pre-drawn noise: the part of a step that
    train.compile hands to torch.compile (forward here, backward through AOTAutograd)."""
    recon, kl = model.forward_from_noise(batch, eps)
    return (recon + kl_weight * kl).mean(), recon, kl


def compiled_loss_terms(model):
    """torch.compile (inductor) of loss_terms for one model: one graph per batch shape (dynamic=False: the
    last, shorter batch of an epoch gets its own), compiled on first use and kept in inductor's cache."""
    compiled = torch.compile(loss_terms, dynamic=False)
    return lambda batch, eps, kl_weight: compiled(model, batch, eps, kl_weight)


def train_step(model, optimizer, batch, kl_weight, max_norm, noise=None, compiled=None):
    """One Adam step on a batch. Returns the loss, per-image reconstruction and KL terms and the gradient
    norm, all left on the device (no host sync). Non-finite values are for the caller to detect.
    `compiled`: compiled_loss_terms(model), used instead of the eager forward (same random draws)."""
    if compiled is None:
        recon, kl = model(batch, noise)
        loss = (recon + kl_weight * kl).mean()
    else:
        loss, recon, kl = compiled(batch, model.training_noise(batch, noise), kl_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if math.isinf(max_norm):
        # no clipping: the norm alone (clip_grad_norm_ would also multiply every gradient by 1)
        grad_norm = torch.nn.utils.get_total_norm(grads)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.detach(), recon.detach(), kl.detach(), grad_norm


class Run:
    """State and files of one training run. It owns its position (epoch, step): train_epoch advances it."""

    def __init__(self, cfg, folder: Path):
        self.cfg, self.folder = cfg, folder
        self.device = pick_device(cfg.device)
        # nothing here draws from the global RNGs (every stream has its own generator); they are seeded and
        # checkpointed for code that might
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.data_folder, self.train_data, self.val = data.load_training(cfg.data, cfg.seed, self.device)
        self.model = build_model(cfg, data_mean=self.train_data.mean_pixel).to(self.device)
        decoder = frozen_decoder(cfg)
        if decoder is not None:
            freeze_decoder(self.model, decoder, cfg.train.decoder_from)
        self.noise = Noise(cfg.seed, self.device)
        self.optimizer = make_optimizer(self.model, learning_rate(cfg.train, 0), cfg.train.adam_eps, cfg.train.adam_beta1)
        self.compiled = compiled_loss_terms(self.model) if cfg.train.compile else None
        self.metrics = []  # one dict per finished epoch
        self.best = {"val_elbo": -math.inf, "epoch": -1}
        self.best_weights = None
        # epoch and step reached; mid_epoch holds the epoch's running sums when a signal stopped it mid-way
        self.epoch, self.step, self.mid_epoch = 0, 0, None
        if (folder / CHECKPOINT).exists():
            self.restore(rundir.load_checkpoint(folder / CHECKPOINT, plain(cfg)))

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self):
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
            "noise": self.noise.state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "python_rng": random.getstate(),
            "config": plain(self.cfg),
        }

    def save_checkpoint(self):
        """The checkpoint first, then the files derived from it: a kill in between leaves them behind it,
        and the next start rewrites them from the checkpoint."""
        rundir.save_checkpoint(self.folder / CHECKPOINT, self.state())
        self.write_derived_files()

    def write_derived_files(self):
        if self.metrics:
            export.write_csv(self.folder / export.METRICS_FILE, self.metrics)
        if self.best_weights is not None:
            export.atomic_torch_save(self.folder / BEST, self.best_weights)

    def restore(self, state):
        path = self.folder / CHECKPOINT
        if state["mid_epoch"] is not None and state["device"] != self.device.type:
            raise UserError(f"{path} was stopped mid-epoch on {state['device']}; resume it on {state['device']} "
                            f"(device={state['device']})")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.noise.load_state(state["noise"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
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
        """Train the rest of the current epoch, then advance to the next; returns the epoch's train metrics."""
        cfg, model = self.cfg.train, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.epoch, [row["val_elbo"] for row in self.metrics])
        steps = self.train_data.steps_per_epoch(cfg.batch_size)
        mid_epoch = self.mid_epoch or {"sums": torch.zeros(2), "images": 0, "seconds": 0.0, "generator": None}
        sums = mid_epoch["sums"].to(self.device)  # summed recon and kl, kept on the device: no sync per step
        # the first non-finite step, or NO_BAD_STEP: a running minimum on the device, read at log points
        first_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.long, device=self.device)
        images, seconds_before = mid_epoch["images"], mid_epoch["seconds"]
        progress.reset(task, total=steps, completed=self.step,
                       description=f"epoch {self.epoch + 1}/{cfg.epochs}")
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        kl_weight, log_every = float(cfg.kl_weight), cfg.log_every
        model.train()
        started = time.perf_counter()
        batches = self.train_data.epoch_batches(self.epoch, cfg.batch_size, self.step, mid_epoch["generator"])
        for step, batch, generator in batches:
            loss, recon, kl, grad_norm = train_step(model, self.optimizer, batch, kl_weight, max_norm, self.noise,
                                                    self.compiled)
            # loss + norm is finite iff both are; a finite step keeps NO_BAD_STEP in the minimum
            torch.minimum(first_bad_step, torch.where(torch.isfinite(loss + grad_norm), NO_BAD_STEP, step),
                          out=first_bad_step)
            sums += torch.stack((recon.sum(), kl.sum()))
            images += batch.shape[0]
            self.step = step + 1
            if self.step % log_every == 0 or self.step == steps:
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
        synchronize(self.device)
        seconds = seconds_before + time.perf_counter() - started
        recon, kl = (sums / images).tolist()
        self.epoch, self.step, self.mid_epoch = self.epoch + 1, 0, None
        return {"elbo": -(recon + kl), "kl": kl, "recon": recon, "seconds": seconds, "images_per_second": images / seconds}

    def last_good(self):
        path = self.folder / CHECKPOINT
        return f"{path} (epoch {self.epoch})" if path.exists() else "none yet"

    def check_finite(self, first_bad_step):
        bad = int(first_bad_step.item())
        if bad != NO_BAD_STEP:
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
        tensorboard.images("viz/prior_samples", samples, epoch)

    def fit(self, guard, progress):
        cfg = self.cfg.train
        tensorboard = export.TensorBoard(self.folder)
        task = progress.add_task("training", total=1, elbo="")
        try:
            while self.epoch < cfg.epochs and not self.patience_ran_out():
                train_metrics = self.train_epoch(progress, task, guard)
                epoch = self.epoch  # the epoch just finished, counted from 1
                self.model.eval()
                val_metrics = evaluate.elbo_terms(self.model, self.val)
                row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                row.update({f"train_{k}": v for k, v in train_metrics.items()})
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                if not all(math.isfinite(v) for v in val_metrics.values()):
                    raise Diverged(f"non-finite validation ELBO after epoch {epoch}; "
                                   f"last good checkpoint: {self.last_good()}")
                floor = elbo_floor(self.val.pixels.shape[-1])
                if val_metrics["elbo"] < floor and cfg.decoder_from is None:
                    raise Diverged(f"validation ELBO {val_metrics['elbo']:.4g} after epoch {epoch} is below "
                                   f"{floor:.1f} nats, the score of giving every pixel probability 0.5: the run "
                                   f"diverged (try a smaller train.lr); last good checkpoint: {self.last_good()}")
                # speed is a training curve too: in the train/ group, so that train/ and val/ are
                # the first two groups TensorBoard opens (export.TensorBoard)
                tensorboard.scalars(train_metrics, epoch, "train")
                tensorboard.scalars(val_metrics, epoch, "val")
                if epoch % cfg.image_every == 0 or epoch == cfg.epochs:
                    self.log_images(tensorboard, epoch)
                if val_metrics["elbo"] > self.best["val_elbo"]:
                    self.best = {"val_elbo": val_metrics["elbo"], "epoch": epoch}
                    self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                self.metrics.append(row)
                self.save_checkpoint()
                log.info("epoch %d/%d  train ELBO %.2f  val ELBO %.2f  KL %.2f  %.1f s",
                         epoch, cfg.epochs, train_metrics["elbo"], val_metrics["elbo"], val_metrics["kl"],
                         train_metrics["seconds"])
                guard.check()
        finally:
            tensorboard.close()

    def patience_ran_out(self):
        return stops_early(self.cfg.train, [row["val_elbo"] for row in self.metrics])

    def training_summary(self):
        """What summary.json records about training, before the test-set numbers are added."""
        seconds = [row["train_seconds"] for row in self.metrics]
        epochs = max(len(self.metrics), 1)  # none yet when a run diverges in its first epoch
        return {
            "epochs_trained": self.epoch,
            "stopped_early": self.patience_ran_out(),
            "best_epoch": self.best["epoch"],
            "best_val_elbo": self.best["val_elbo"] if self.metrics else None,
            "seconds_per_epoch": sum(seconds) / epochs,
            "images_per_second": sum(row["train_images_per_second"] for row in self.metrics) / epochs,
        }


def progress_columns():
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ELBO {task.fields[elbo]}"),
            TimeRemainingColumn())


def train(cfg, folder: Path, console: Console, run_files=None):
    """Train (or continue) the run in `folder` and evaluate it; returns its summary. run_files ({name: text}, the
    run's own config as the CLI recorded it) go into folder/.hydra once every check has passed, so that a refused
    command leaves the folder as it was. A run that diverges gets a summary.json with status diverged."""
    existing = rundir.read_summary(folder)
    if existing is not None:
        check_same_config(folder / export.SUMMARY_FILE, existing["config"], plain(cfg))
        console.print(f"{folder} is already complete; skipping")  # not logged: the finished run's files stay as they are
        return existing
    export.check_writable(folder)
    # again here, where the device is known and its free memory is that of now (the CLI checked up front)
    memory.check_fits(cfg, pick_device(cfg.device))
    run = Run(cfg, folder)
    for name, text in (run_files or {}).items():
        (folder / ".hydra").mkdir(exist_ok=True)
        export.atomic_write(folder / ".hydra" / name, text.encode())
    export.write_csv(folder / export.PARAMS_FILE, [export.params_row(cfg, run.model)])
    with SignalGuard() as guard:
        with Progress(*progress_columns(), console=console) as progress:
            try:
                run.fit(guard, progress)
            except Diverged as error:
                rundir.write_summary(folder, {"status": "diverged", "reason": str(error), "config": plain(cfg),
                                              **run.training_summary()})
                raise
        guard.immediate = True
        guard.check()  # a signal that came during the last validation pass
        run.model.load_state_dict(run.best_weights)
        summary = finish.evaluate_and_write(folder, cfg, run.model, run.device, run.training_summary(),
                                            data_folder=run.data_folder)
    console.print(finish.summary_table(summary))
    return summary
