"""Inference gaps of a trained VAE (Cremer, Li and Duvenaud 2018, "Inference Suboptimality in VAEs").

For one image x, with q(z|x) the encoder's posterior and q*(z) the member of a family with the highest ELBO
for that image alone (found by optimisation with the decoder frozen, qstar.py):

    inference gap       log p(x) - ELBO(q(z|x))  =  approximation gap + amortization gap
    approximation gap   log p(x) - ELBO(q*)         what the family costs: q* is still not p(z|x)
    amortization gap    ELBO(q*) - ELBO(q(z|x))     what one shared encoder costs against fitting each image

The model enters as `log_likelihood(x, z)` with a standard-normal prior (evaluate.py's estimators), so any such
model fits, including the linear-Gaussian model the tests use.

Reading order: the gap rows; `inference_gaps` (any log_likelihood) and `model_gaps` (a trained VAE), which tie
q*, the estimates and the rotation diagnostic together; `run_gaps`, the pipeline of one finished run folder.
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from omegaconf import OmegaConf

from vae_compare import UserError, data, export, rundir
from vae_compare.config import GAPS, FamilyName, key, run_config
from vae_compare.evaluate import default_chunk_size, elbo_estimate, importance_log_px, mean_and_stderr
from vae_compare.labels import run_label
from vae_compare.model import build_model
from vae_compare.posteriors import Noise
from vae_compare.qstar import Posteriors, UnsupportedFamily, covariances, frozen, optimize_posteriors, start_posteriors
from vae_compare.rotation import ROTATION_COLUMNS, rotation_diagnostic
from vae_compare.runtime import Clock, pick_device

log = logging.getLogger(__name__)


@dataclass
class GapsConfig:
    """`vae-compare gaps RUN_FOLDER gaps.<key>=...`: the inference gaps of a trained run (vae_compare/gaps.py).
    Not part of a run's training config: the run's own config comes from its folder. The defaults were
    measured on the default model (docs/inference-gaps.md)."""

    # the first this-many test images (a fixed subset: the same images for every run)
    images: int = key(1000, GAPS, minimum=1)
    # families whose best member q* is fitted per image on the run's frozen decoder; the run's own family is
    # always added (its q* gives Cremer et al.'s amortization gap)
    families: List[FamilyName] = key(role=GAPS, factory=lambda: ["diag", "cholesky", "lowrank"])
    # rank of a low-rank q* when the run's own family has none (else the run's rank)
    rank: int = key(4, GAPS, minimum=1)
    # reparameterised samples per optimisation step
    samples: int = key(8, GAPS, minimum=1)
    # most Adam steps per image (the stopping rule usually ends earlier; gaps.csv reports the steps taken)
    steps: int = key(1000, GAPS, minimum=1)
    lr: float = key(0.02, GAPS, above=0)
    # stopping rule: every `window` steps the window's mean ELBO is compared with the previous window's; a rise
    # below `tolerance` nats per image divides lr by 10, up to lr_drops times; the plateau after that stops
    window: int = key(50, GAPS, minimum=1)
    tolerance: float = key(0.02, GAPS)
    lr_drops: int = key(2, GAPS, minimum=0)
    # images optimised together (bounds memory; the stopping rule is per chunk)
    chunk_images: int = key(250, GAPS, minimum=1)
    # per image: samples for the final ELBO of q(z|x) and of each q*, importance samples for log p(x)
    elbo_samples: int = key(500, GAPS, minimum=2)
    iwae_samples: int = key(5000, GAPS, minimum=1)
    seed: int = key(0, GAPS, minimum=0)
    # the continuation check: after the stopping rule, check_steps more steps at the last rate, then the ELBO again
    # with the same draws; while that raised the mean ELBO by check_tolerance nats per image or more, once more,
    # at most check_rounds times. gaps.csv's continuation_gain is the last round's rise.
    check_steps: int = key(1000, GAPS, minimum=0)
    check_tolerance: float = key(0.01, GAPS, above=0)
    check_rounds: int = key(4, GAPS, minimum=1)


def gap_rows(log_px, encoder_elbo, optimized, encoder_family):
    """One row per optimised family: means over images, each with the standard error of the mean.

    log_px, encoder_elbo: per-image (N,) tensors; optimized: {family: {"elbo": (N,), "steps": (N,),
    "seconds": float, "start": str, "gain": (N,) the continuation check's last rise}}. Gaps are means of per-image differences, so their standard errors are
    paired (sd of the per-image difference / sqrt(N)), far smaller than the spread of log p(x) across images.

    For the run's own family, amortization_gap is Cremer et al.'s. For another family F it is
    ELBO(q*_F) - ELBO(q(z|x)): what the run's encoder loses against the best member of F, per image;
    inference_gap = approximation_gap + amortization_gap holds in every row.
    """
    rows = []
    for name, result in optimized.items():
        elbo = result["elbo"]
        row = {"family": name, "encoder_family": encoder_family, "start": result["start"], "images": len(elbo)}
        row.update(mean_and_stderr("log_px", log_px))
        row.update(mean_and_stderr("encoder_elbo", encoder_elbo))
        row.update(mean_and_stderr("optimized_elbo", elbo))
        row.update(mean_and_stderr("inference_gap", log_px - encoder_elbo))
        row.update(mean_and_stderr("approximation_gap", log_px - elbo))
        row.update(mean_and_stderr("amortization_gap", elbo - encoder_elbo))
        row.update(mean_and_stderr("continuation_gain", result["gain"]))
        row.update(steps_mean=result["steps"].double().mean().item(), steps_max=int(result["steps"].max()),
                   seconds=result["seconds"])
        rows.append(row)
    return rows


def continue_while_rising(log_likelihood, x, posteriors, elbo, settings, noise, estimate_elbo, progress=None):
    """The continuation check of q*: check_steps more steps at the stopping rule's last rate, the ELBO again with
    the same draws (so the per-image difference is nearly free of sampling noise), repeated while the mean rise
    reaches check_tolerance, at most check_rounds times. Returns (q*, its ELBO, steps added per image, the last
    round's per-image rise); with check_steps 0, no round and a rise of NaN."""
    steps = torch.zeros(len(x), dtype=torch.long)
    gain = torch.full_like(elbo, math.nan)
    if settings.check_steps == 0:
        return posteriors, elbo, steps, gain
    last_rate = settings.lr / 10 ** settings.lr_drops
    for _ in range(settings.check_rounds):
        # tolerance -inf: the plateau rule never fires, every image takes all check_steps steps
        posteriors, taken = optimize_posteriors(log_likelihood, x, posteriors, samples=settings.samples,
                                                steps=settings.check_steps, lr=last_rate, window=settings.window,
                                                tolerance=-math.inf, lr_drops=0, chunk_images=settings.chunk_images,
                                                noise=noise, progress=progress)
        continued = estimate_elbo(posteriors)
        gain, elbo, steps = continued - elbo, continued, steps + taken
        if gain.mean().item() < settings.check_tolerance:
            break
    return posteriors, elbo, steps, gain


def inference_gaps(log_likelihood: Callable, x, encoder: Posteriors, starts: dict, settings: GapsConfig,
                   samples_per_call=16, progress: Optional[Callable] = None):
    """Gaps of the encoder's q(z|x) against q* of every family in `starts` ({name: Posteriors to start from}).

    Returns a dict:
        rows       gap_rows(), one per family (start: "encoder" for the run's own family, "diagonal"
                   for another family, started from the diagonal Gaussian closest to the encoder's q)
        log_px     {"proposal": the family whose q* was the importance-sampling proposal, "samples"}
        rotation   {"encoder": rotation_diagnostic of q(z|x), "<family>": of that family's q*}
        seconds    wall-clock seconds of each stage: encoder_elbo, <family> (q* and its ELBO), log_px,
                   rotation, total
        per_image  per-image tensors (log_px, encoder_elbo, <family>_elbo, <family>_steps), for plots and
                   histograms; the only part that is not JSON-ready
    log p(x) uses the q* with the highest mean ELBO as the proposal: with an exact optimiser the richest
    family's, since it contains the others; the best available, as in Cremer et al.
    """
    device = x.device

    def estimate_elbo(posteriors):
        # a fresh Noise of one seed per posterior: common random numbers (evaluate.elbo_estimate)
        return elbo_estimate(log_likelihood, x, posteriors.distribution, settings.elbo_samples, samples_per_call,
                             noise=Noise(settings.seed, device), progress=progress,
                             stage=f"ELBO {posteriors.family.name}")[0]

    seconds = {}
    clock = Clock(device)
    encoder_elbo = estimate_elbo(encoder)
    seconds["encoder_elbo"] = clock.lap()
    optimized, best = {}, {}
    for index, (name, start) in enumerate(starts.items()):
        # the optimiser's noise is a stream of its own, apart from the estimates' common random numbers
        noise = Noise(settings.seed + 1 + index, device)
        posteriors, steps = optimize_posteriors(
            log_likelihood, x, start, samples=settings.samples, steps=settings.steps, lr=settings.lr,
            window=settings.window, tolerance=settings.tolerance, lr_drops=settings.lr_drops,
            chunk_images=settings.chunk_images, noise=noise, progress=progress)
        elbo = estimate_elbo(posteriors)
        posteriors, elbo, more_steps, gain = continue_while_rising(log_likelihood, x, posteriors, elbo, settings,
                                                                   noise, estimate_elbo, progress)
        seconds[name] = clock.lap()
        optimized[name] = {"elbo": elbo, "steps": steps + more_steps, "seconds": seconds[name], "gain": gain,
                           "start": "encoder" if name == encoder.family.name else "diagonal"}
        best[name] = posteriors
    proposal = max(optimized, key=lambda name: optimized[name]["elbo"].mean().item())
    log_px = importance_log_px(log_likelihood, x, best[proposal].distribution, settings.iwae_samples, samples_per_call,
                               noise=Noise(settings.seed, device), progress=progress).double()
    seconds["log_px"] = clock.lap()
    rotation = {"encoder": rotation_diagnostic(covariances(encoder))}
    rotation.update({name: rotation_diagnostic(covariances(posteriors)) for name, posteriors in best.items()})
    seconds["rotation"] = clock.lap()
    seconds["total"] = sum(seconds.values())
    per_image = {"log_px": log_px, "encoder_elbo": encoder_elbo}
    for name, result in optimized.items():
        per_image[f"{name}_elbo"], per_image[f"{name}_steps"] = result["elbo"], result["steps"]
    return {"rows": gap_rows(log_px, encoder_elbo, optimized, encoder.family.name),
            "log_px": {"proposal": proposal, "samples": settings.iwae_samples},
            "rotation": rotation, "seconds": seconds, "per_image": per_image}


def model_gaps(model, pixels, settings: GapsConfig = None, progress: Optional[Callable] = None):
    """inference_gaps for a trained VAE on the first settings.images rows of `pixels` (binary test images),
    for the families in settings.families that can start from its encoder; the others are listed under
    "skipped" with the reason. The result also holds "settings" and "encoder_family"."""
    settings = OmegaConf.structured(settings or GapsConfig())
    x = pixels[:settings.images]
    with torch.no_grad():
        heads = torch.cat([model.encoder(batch) for batch in x.split(1000)])
    encoder = Posteriors(model.family, model.family_values, model.latent_dim, heads)
    starts, skipped = {}, {}
    # the run's own family first: its q* gives Cremer et al.'s amortization gap
    for name in dict.fromkeys([model.family.name, *map(str, settings.families)]):
        try:
            starts[name] = start_posteriors(encoder, name, settings.rank)
        except UnsupportedFamily as reason:
            log.warning("gaps: skipping %s: %s", name, reason)
            skipped[name] = str(reason)
    if not starts:
        raise UnsupportedFamily(f"none of {list(settings.families)} can start from a {model.family.name} encoder")
    samples_per_call = default_chunk_size(model, 100, x.device)
    was_training = model.training
    model.eval()
    try:
        with frozen(model):
            result = inference_gaps(model.log_likelihood, x, encoder, starts, settings, samples_per_call, progress)
    finally:
        model.train(was_training)
    result.update(skipped=skipped, encoder_family=model.family.name,
                  settings=OmegaConf.to_container(settings, enum_to_str=True))
    return result


def trained_run(folder, run_overrides, command):
    """(config, model with the best weights, test split) of a finished run, for `command`."""
    if rundir.read_summary(folder) is None:
        raise UserError(f"{folder} has not finished training; finish it first: vae-compare train resume={folder}")
    cfg = run_config(folder, run_overrides, command)
    device = pick_device(cfg.device)
    model = build_model(cfg).to(device)
    model.load_state_dict(rundir.load_best(folder))
    _, test = data.load_test(cfg.data, device)
    return cfg, model, test


def run_gaps(folder, settings, run_overrides, progress=None):
    """model_gaps of a finished run's best weights on its test images; writes TensorBoard scalars under gaps/,
    gaps.csv and gaps.json (last: a run with gaps.json is measured). Returns gaps.json's content."""
    cfg, model, test = trained_run(folder, run_overrides, "gaps")
    summary = rundir.read_summary(folder)
    if settings.images > len(test):
        raise UserError(f"gaps.images={settings.images} but the run's test set has {len(test)} images")
    result = model_gaps(model, test.pixels, settings, progress)
    del result["per_image"]
    result["run"] = {"label": run_label(cfg), "family": model.family.name, "latent_dim": cfg.latent_dim,
                     "seed": cfg.seed, "dataset": str(cfg.data.name), "best_epoch": summary["best_epoch"],
                     "run_log_px": summary.get("test", {}).get("log_px"),
                     "run_iwae_samples": summary.get("test", {}).get("iwae_samples")}
    write_gaps_scalars(folder, result, summary["best_epoch"])
    rundir.write_gaps(folder, result)
    return result


def write_gaps_scalars(folder, result, step):
    """The gaps and the rotation diagnostic as TensorBoard scalars under gaps/, at the run's best epoch."""
    tensorboard = export.TensorBoard(folder)
    try:
        tensorboard.scalars({"log_px": result["rows"][0]["log_px"], "encoder_elbo": result["rows"][0]["encoder_elbo"]},
                            step, "gaps")
        for row in result["rows"]:
            tensorboard.scalars({f"{row['family']}_{name}": row[name] for name in
                                 ("optimized_elbo", "approximation_gap", "amortization_gap", "inference_gap")},
                                step, "gaps")
        for q, numbers in result["rotation"].items():
            tensorboard.scalars({f"{q}_{name}": numbers[name] for name in ROTATION_COLUMNS}, step, "gaps/rotation")
    finally:
        tensorboard.close()
