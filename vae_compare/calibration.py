"""`vae-compare calibrate FOLDER`: how far each log p(x) estimator sits below a reference, run by run.

On the first calibration.images test images of a finished run, both proposals of eval.log_px_proposal are scored
with the run's own eval settings (IWAE with eval.iwae_samples draws), or those given as overrides (RUN_KEYS, to
calibrate other settings): `encoder` (the run's q(z|x)) and `qstar` (a full-covariance Gaussian fitted per image,
proposal.py). Their gap to a reference estimate, per image, is the
estimator's bias (an IWAE estimate is a lower bound in expectation, so the bias is negative):
- latent_dim 2: quadrature (quadrature.py) on a float64 copy of the decoder, grids laid by the encoder's q; its
  check is the grid's error bound.
- latent_dim > 2: AIS with HMC (ais.py) started from the fitted q*, with calibration.chains chains and
  calibration.temperatures temperatures; its check is the doubling rule: on the first calibration.check_images
  images, AIS with both doubled, and the mean change (the reference is good when it is below 0.05 nat).
A run's result goes to calibration.json (a run with the same settings is skipped on a rerun); the report gathers
every run's into calibration.csv (report/calibration.py).
"""

import copy
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from vae_compare import UserError, export, rundir
from vae_compare.ais import ais_log_px
from vae_compare.config import GAPS, GAPS_RUN_KEYS, command_settings, key
from vae_compare.evaluate import iwae_log_px, mean_and_stderr
from vae_compare.gaps import trained_run
from vae_compare.measure_runs import measure_runs_below
from vae_compare.posteriors import Noise
from vae_compare.proposal import qstar_log_px, qstar_proposal
from vae_compare.qstar import covariances, frozen
from vae_compare.quadrature import quadrature_log_px
from vae_compare.runtime import Clock

PROPOSALS = ("encoder", "qstar")
# an image whose estimate falls this far below the reference counts as missed: its proposal sits on another mode
# than the posterior's main mass (at latent_dim 2 one such image, 24 nats below, moved a run's mean bias by 0.5)
MISSED_NATS = 1.0
# the run's own keys calibrate may change: where the data are, and the estimator's settings under test
RUN_KEYS = (*GAPS_RUN_KEYS, "eval.iwae_samples", "eval.qstar_steps", "eval.qstar_samples", "eval.log_px_proposal")


@dataclass
class CalibrationConfig:
    """`vae-compare calibrate FOLDER calibration.<key>=...`: the reference and how many images it covers."""

    # the first this-many test images (the same images for every run)
    images: int = key(100, GAPS, minimum=1)
    # AIS (latent_dim > 2): chains per image, temperatures, leapfrog steps per HMC move
    chains: int = key(16, GAPS, minimum=1)
    temperatures: int = key(200, GAPS, minimum=2)
    leapfrog_steps: int = key(5, GAPS, minimum=1)
    # the doubling check: AIS with twice the chains and temperatures on the first this-many of the images
    check_images: int = key(20, GAPS, minimum=1)
    # quadrature (latent_dim 2): the grid's error target in nats per image
    quadrature_tolerance: float = key(1e-3, GAPS, above=0)


def reference(model, x, proposal, settings, seed):
    """(per-image reference log p(x), its check as a dict) for images x."""
    latent_dim = model.latent_dim
    if latent_dim == 2:
        exact = copy.deepcopy(model).double()
        with torch.no_grad():
            start = model.posterior(x)
            scale_tril = torch.linalg.cholesky(start.covariance().double())
            estimate = quadrature_log_px(exact.log_likelihood, x.double(), start.mean.double(), scale_tril,
                                         tolerance=settings.quadrature_tolerance)
        return estimate.log_px, {"reference": "quadrature", "check": "grid error bound, mean (max)",
                                 "check_mean": float(estimate.error_bound.mean()),
                                 "check_max": float(estimate.error_bound.max())}
    start = proposal.distribution()
    mean, scale_tril = start.mean.detach(), torch.linalg.cholesky(covariances(proposal)).detach()

    def ais(rows, factor):
        generator = torch.Generator(x.device).manual_seed(seed + factor)
        with torch.enable_grad():
            return ais_log_px(model.log_likelihood, x[rows], mean[rows], scale_tril[rows],
                              chains=settings.chains * factor, temperatures=settings.temperatures * factor,
                              leapfrog_steps=settings.leapfrog_steps, generator=generator).log_px
    base = ais(slice(None), 1)
    check = slice(0, min(settings.check_images, len(x)))
    change = ais(check, 2) - base[check]
    return base, {"reference": f"AIS from q*, {settings.chains} chains, {settings.temperatures} temperatures",
                  "check": f"doubling both on {len(change)} images: mean change (max |change|)",
                  "check_mean": float(change.mean()), "check_max": float(change.abs().max())}


def recorded_settings(settings, run_overrides):
    """What calibration.json records as its settings, and what a rerun compares to skip a measured run."""
    return {**OmegaConf.to_container(settings), "overrides": sorted(run_overrides)}


def bias_summary(bias):
    """The per-image biases (N,) summed up: mean ± standard error, and, since one missed mode moves the mean by
    far more than its share, the median, the worst image and the count of missed images (MISSED_NATS)."""
    return {**mean_and_stderr("bias", bias), "bias_median": float(bias.median()), "bias_worst": float(bias.min()),
            "missed_images": int((bias < -MISSED_NATS).sum()), "missed_nats": MISSED_NATS}


def calibrate_run(folder, settings, run_overrides, progress=None):
    """The biases of both proposals against the reference on one finished run, its eval settings changed by
    run_overrides (RUN_KEYS); written to calibration.json."""
    cfg, model, test = trained_run(folder, run_overrides, "calibrate")
    if settings.images > len(test):
        raise UserError(f"calibration.images={settings.images} but the run's test set has {len(test)} images")
    subset = type(test)(test.pixels[:settings.images])
    x, device = subset.pixels, subset.pixels.device
    model.eval()
    clock, seconds, estimates = Clock(device), {}, {}
    with torch.no_grad():
        estimates["encoder"] = iwae_log_px(model, subset, cfg.eval.iwae_samples, cfg.eval.chunk_size,
                                           noise=Noise(cfg.seed, device), progress=progress)
    seconds["encoder"] = clock.lap()
    proposal = qstar_proposal(model, subset, cfg.eval, cfg.seed, progress)
    with torch.no_grad():
        estimates["qstar"] = qstar_log_px(model, subset, cfg.eval, cfg.seed, progress, proposal=proposal)
    seconds["qstar"] = clock.lap()
    with frozen(model):
        truth, check = reference(model, x, proposal, settings, cfg.seed)
    seconds["reference"] = clock.lap()
    summary = rundir.read_summary(folder)
    rows = [{"proposal": name, "main": name == str(cfg.eval.log_px_proposal), "images": len(x),
             "iwae_samples": cfg.eval.iwae_samples, **bias_summary(estimates[name].double() - truth.double()),
             "seconds": seconds[name]} for name in PROPOSALS]
    result = {"settings": recorded_settings(settings, run_overrides), "rows": rows,
              "qstar_steps": cfg.eval.qstar_steps, "qstar_samples": cfg.eval.qstar_samples, "log_px_reference": float(truth.mean()),
              "reference_seconds": seconds["reference"], **check,
              "run": {"family": model.family.name, "latent_dim": cfg.latent_dim, "seed": cfg.seed,
                      "dataset": str(cfg.data.name), "best_epoch": summary["best_epoch"]}}
    export.write_json(folder / export.CALIBRATION_JSON, result)
    return result


def calibrate_main(folder, overrides, console):
    """calibrate_run on every finished run at or below FOLDER; runs measured with the same settings are skipped."""
    settings, run_overrides = command_settings(overrides, CalibrationConfig, "calibration", "calibrate", RUN_KEYS)

    def show(result):
        console.print(", ".join(f"{row['proposal']}: bias {row['bias']:+.3f} ± {row['bias_stderr']:.3f} nats "
                                f"(median {row['bias_median']:+.3f}, {row['missed_images']} of {row['images']} images "
                                f"more than {row['missed_nats']:g} nat below; {row['seconds']:.0f} s)"
                                for row in result["rows"])
                      + f"; reference {result['reference']} ({result['reference_seconds']:.0f} s), {result['check']} "
                        f"{result['check_mean']:+.3f} ({result['check_max']:.3f})", markup=False)

    return measure_runs_below(folder, export.CALIBRATION_JSON,
                              recorded_settings(settings, run_overrides),
                              lambda run, progress: calibrate_run(run, settings, run_overrides, progress), show, console)
