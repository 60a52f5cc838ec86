"""The `vae-compare` command: a small dispatcher in front of the Hydra app.

    vae-compare train [hydra overrides]          train one run, or a sweep with -m
    vae-compare evaluate RUN_FOLDER [overrides]  re-evaluate a finished run (e.g. eval.iwae_samples=5000)
    vae-compare gaps FOLDER [gaps.<key>=...]     approximation and amortization gaps of finished runs
    vae-compare calibrate FOLDER [calibration.<key>=...]  log p(x) estimators against quadrature or AIS
    vae-compare report FOLDER                    summarize every run below FOLDER

Hydra owns sys.argv, so the subcommand word is removed and the arguments are handed to the Hydra app
(`hydra.main`), which parses them itself. For a run or a sweep (overrides, with -m for a sweep) every job's
config is first composed through Hydra's compose API and checked, before any job starts, so bad input is one
line, not a traceback. Any other of Hydra's flags (--help, --hydra-help, --cfg, --info, -cd, ...) is Hydra's
alone: the arguments then go to Hydra as given, without those checks.
"""

import argparse
import contextlib
import dataclasses
import itertools
import logging
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich import get_console

from vae_compare import UserError, data, lock, sweep
from vae_compare.config import EVALUATE_KEYS, GAPS_RUN_KEYS, compose, type_name, validate
from vae_compare.export import BEST, CHECKPOINT, FAILED_FILE, check_writable
from vae_compare.calibration import RUN_KEYS as CALIBRATE_RUN_KEYS, CalibrationConfig, calibrate_main
from vae_compare.finish import reevaluate, reevaluation, summary_table
from vae_compare.frozen import frozen_decoder
from vae_compare.gaps import GapsConfig
from vae_compare.gaps_command import gaps_main
from vae_compare.memory import check_fits
from vae_compare.report import main as report_main
from vae_compare.runtime import flush_denormals, job_threads, joblib_workers, pick_device
from vae_compare.train import Diverged, Interrupted, train

USAGE = __doc__.split("\n\n")[1] + """

Examples:
  vae-compare train family=cholesky latent_dim=16
  vae-compare train -m family=diag,cholesky,lowrank latent_dim=2,8,32
  vae-compare train experiment=quick family=lowrank family.rank=2
  vae-compare train resume=outputs/runs/<run>
  vae-compare train --help                    config groups and every option
"""
EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_FAILED_JOBS = 2, 3, 1
# Hydra's flags for the mode of a run, the only ones the dispatcher reads: a single run or a sweep.
MODE_FLAGS = {"-r": False, "--run": False, "-m": True, "--multirun": True}


def fail(message, code=EXIT_USER_ERROR):
    print(f"vae-compare: error: {message}", file=sys.stderr)
    sys.exit(code)


# ---- checking overrides before Hydra runs anything ----------------------------------------------
def hydra_error_line(error):
    """One line from a Hydra/OmegaConf composition error; a value of the wrong type names the type it needs."""
    cause = error.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key and ("could not be converted" in str(cause) or "Invalid value" in str(cause)):
        return f"{full_key} must be {type_name(full_key)}, got {getattr(cause, 'value', None)!r}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    options = getattr(error, "options", None)
    if options:
        message += f"; available: {', '.join(options)}"
    if cause is not None:
        message += f" ({str(cause).splitlines()[0]})"
    return message


def job_overrides(overrides, multirun):
    """The override list of every job the command would run: the product of every sweep's values."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return [overrides]
    values = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
              else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*values)]


def check_overrides(overrides, multirun):
    """Compose and check every job before any starts; returns the composed configs."""
    try:
        jobs = job_overrides(overrides, multirun)
        configs = [(job, compose(job, with_hydra=True)) for job in jobs]
        output_dir = configs[0][1].hydra.sweep.dir if multirun else configs[0][1].hydra.run.dir
    except Exception as error:  # Hydra raises several exception types for bad overrides
        fail(hydra_error_line(error))
    for job, cfg in configs:
        try:
            validate(cfg)
            check_memory(cfg)
            frozen_decoder(cfg)
        except UserError as error:
            fail(f"{error}" + (f" (job: {' '.join(job)})" if multirun and len(jobs) > 1 else ""))
    resuming = configs[0][1].resume is not None
    if not multirun:  # a sweep's jobs each check their own folder's lock when they start
        try:
            lock.check_free(output_dir)
        except UserError as error:
            fail(str(error))
    if not multirun and not resuming and (Path(output_dir) / CHECKPOINT).exists():
        fail(f"{output_dir} already holds a run; continue it with: vae-compare train resume={output_dir}")
    try:
        check_writable(Path(output_dir), create=False)
        for cfg in {(cfg.data.name, cfg.data.root): cfg for _, cfg in configs}.values():
            if cfg.data.root is not None:
                data.locate(cfg.data.name, cfg.data.root)
    except UserError as error:
        fail(str(error))
    return [cfg for _, cfg in configs]


def check_memory(cfg):
    """The memory estimate against the job's device, before anything is built (train() checks again when the
    job starts, against what is free then)."""
    check_fits(cfg, pick_device(cfg.device))


def joblib_n_jobs(configs, overrides):
    """With the joblib launcher, an explicit hydra.launcher.n_jobs: no more workers than jobs, so that
    runtime.job_threads gives each job cores / workers threads. None for other launchers or when the user set it."""
    workers = joblib_workers(configs[0].hydra.launcher)
    if workers is None or any(o.startswith("hydra.launcher.n_jobs=") for o in overrides):
        return None
    return max(1, min(workers, len(configs)))


def resume_overrides(overrides):
    """`resume=FOLDER`: rerun with that run's own overrides, in that folder."""
    value = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if value in (None, "null"):
        return overrides
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        fail(f"resume={value}: no such run folder")
    if not (folder / CHECKPOINT).exists():
        fail(f"resume={value}: the folder holds no {CHECKPOINT}; nothing to resume")
    saved = OmegaConf.load(folder / ".hydra" / "overrides.yaml") if (folder / ".hydra" / "overrides.yaml").exists() else []
    kept = [o for o in saved if not o.startswith(("resume=", "hydra.run.dir="))]
    new = [o for o in overrides if not o.startswith("resume=")]
    return kept + new + [f"resume={folder}", f"hydra.run.dir={folder}"]


# ---- the Hydra app -------------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_train(cfg: DictConfig):
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = " ".join(hydra_cfg.overrides.task)
    try:
        # the whole job, final evaluation included, holds the folder (a single run's CLI holds it already)
        with lock.hold(folder):
            run_job(cfg, folder, multirun, overrides)
    except lock.Locked as error:
        if not multirun:
            fail(str(error))
        # another process (a second copy of this sweep) is running this job: not a failure, and its files
        # are that process's to write
        get_console().print(f"[yellow]vae-compare: job [{overrides}] is running elsewhere "
                            f"({error.holder}); skipped[/yellow]")


def run_job(cfg, folder, multirun, overrides):
    (folder / FAILED_FILE).unlink(missing_ok=True)
    try:
        validate(cfg)
        flush_denormals()  # a joblib worker process does not pass through main()
        # set for every job: the basic launcher runs every job of a sweep in this one process
        torch.set_num_threads(job_threads(cfg.train.threads, HydraConfig.get().launcher))
        train(cfg, folder, get_console(), run_files=hydra_files(cfg))
    except Interrupted as interrupt:
        print(f"vae-compare: interrupted; checkpoint saved. Resume with: vae-compare train resume={folder}",
              file=sys.stderr)
        sys.exit(128 + interrupt.signum)
    except (UserError, Diverged, torch.OutOfMemoryError) as error:
        code = EXIT_DIVERGED if isinstance(error, Diverged) else EXIT_USER_ERROR
        if not multirun:
            if not (folder / CHECKPOINT).exists() and not isinstance(error, Diverged):  # a diverged run keeps its summary
                remove_if_empty(folder)
            fail(str(error).splitlines()[0], code)
        record_failure(folder, overrides, error)
    except Exception as error:
        if not multirun:
            raise  # a bug: its traceback is what a report needs
        # a failing job must not stop the sweep, nor lose the other jobs' report
        logging.getLogger(__name__).exception("job failed")
        record_failure(folder, overrides, error)


def hydra_files(cfg):
    """The files Hydra would write into .hydra/ (hydra.output_subdir is null): the job's config, Hydra's own and
    the overrides, which `resume=` reads back. train() writes them once the run's checks have passed."""
    hydra_cfg = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}


def record_failure(folder, overrides, error):
    """Note a failed sweep job in its folder; the sweep callback reports them all at the end."""
    reason = str(error).splitlines()[0] if str(error) else ""
    if not isinstance(error, UserError):  # a bad value explains itself; other errors need their kind
        reason = f"{type(error).__name__}: {reason}"
    message = f"job [{overrides}] failed: {reason}"
    get_console().print(f"[red]vae-compare: {message}[/red]")
    try:
        (folder / FAILED_FILE).write_text(message + "\n")
    except OSError:
        pass


def remove_if_empty(folder):
    """A run that failed before it saved anything leaves no folder behind: remove what Hydra put there
    (.hydra/ and the log), then the folder only if nothing else is in it."""
    shutil.rmtree(folder / ".hydra", ignore_errors=True)
    (folder / "train.log").unlink(missing_ok=True)
    (folder / lock.LOCK_FILE).unlink(missing_ok=True)  # still held: lock.take() sees the removal
    try:
        folder.rmdir()
    except OSError:
        pass


def train_command(args):
    """`vae-compare train`: with only overrides (and Hydra's mode flags), every job is checked first and a single
    run holds its folder before Hydra writes into it; with any other of Hydra's flags the arguments go to Hydra
    as given."""
    flags = [arg for arg in args if arg.startswith("-")]  # an override never starts with "-"
    folder = None
    if all(flag in MODE_FLAGS for flag in flags):
        multirun = any(MODE_FLAGS[flag] for flag in flags)
        overrides = resume_overrides([arg for arg in args if not arg.startswith("-")])
        configs = check_overrides(overrides, multirun)
        workers = joblib_n_jobs(configs, overrides) if multirun else None
        if workers is not None:
            overrides = overrides + [f"hydra.launcher.n_jobs={workers}"]
        if not multirun:
            folder = Path(configs[0].hydra.run.dir)
            if not any(o.startswith("hydra.run.dir=") for o in overrides):
                # the default folder name holds the time: pin the one composed here, which is the one locked
                overrides = overrides + [f"hydra.run.dir={folder}"]
        args = flags + overrides  # Hydra reads the overrides as one list after its flags
    sys.argv = ["vae-compare train", *args]
    # a single run holds its folder from before Hydra writes .hydra/ into it until the process ends
    with lock.hold(folder) if folder is not None else contextlib.nullcontext():
        hydra_train()
    if sweep.FAILED_JOBS:
        fail(f"{len(sweep.FAILED_JOBS)} job(s) failed: " + "; ".join(sweep.FAILED_JOBS), EXIT_FAILED_JOBS)


def folder_and_overrides(args, prog, description, folder_metavar, folder_help, overrides_help):
    """(folder, KEY=VALUE overrides) of a command that works on run folders; a parse error is one line."""
    parser = argparse.ArgumentParser(prog=prog, exit_on_error=False, description=description)
    parser.add_argument("folder", type=Path, metavar=folder_metavar, help=folder_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    try:
        options = parser.parse_args(args)
    except argparse.ArgumentError as error:
        fail(f"{error}; {parser.format_usage().strip()}")
    return options.folder, options.overrides


def evaluate_command(args):
    folder, overrides = folder_and_overrides(
        args, "vae-compare evaluate", "Re-evaluate a finished run's best weights without retraining.", "RUN_FOLDER",
        None, f"any of: {', '.join(sorted(EVALUATE_KEYS))} (e.g. eval.iwae_samples=5000)")
    folder = folder.expanduser().resolve()
    if not (folder / ".hydra" / "config.yaml").exists() or not (folder / BEST).exists():
        raise UserError(f"{folder} is not a trained vae-compare run folder (needs .hydra/config.yaml and {BEST})")
    lock.check_free(folder)
    previous, cfg = reevaluation(folder, overrides)  # refusals before the lock: a refused command writes nothing
    with lock.hold(folder):  # it rewrites the run's final files: not while another process trains it
        summary = reevaluate(folder, previous, cfg)
    get_console().print(summary_table(summary))


def gaps_command(args):
    keys = ", ".join(f"gaps.{item.name}" for item in dataclasses.fields(GapsConfig))
    folder, overrides = folder_and_overrides(
        args, "vae-compare gaps",
        "Approximation and amortization gaps (Cremer et al. 2018) of every finished run at or below FOLDER, decoder "
        "frozen; writes gaps.csv and gaps.json into each run. Runs measured with the same settings are skipped.",
        "FOLDER", "a run, sweep or outputs folder",
        f"any of: {keys}, {', '.join(GAPS_RUN_KEYS)} (e.g. gaps.images=200 'gaps.families=[diag,cholesky]')")
    gaps_main(folder, overrides, get_console())


def calibrate_command(args):
    keys = ", ".join(f"calibration.{item.name}" for item in dataclasses.fields(CalibrationConfig))
    folder, overrides = folder_and_overrides(
        args, "vae-compare calibrate",
        "The log p(x) estimators' bias against a reference (quadrature at latent_dim 2, AIS above) for every "
        "finished run at or below FOLDER; writes calibration.json into each run, which the report gathers into "
        "calibration.csv. Runs calibrated with the same settings are skipped.",
        "FOLDER", "a run, sweep or outputs folder",
        f"any of: {keys}, {', '.join(CALIBRATE_RUN_KEYS)} (e.g. calibration.images=200 eval.qstar_steps=150)")
    calibrate_main(folder, overrides, get_console())


def report_command(args):
    report_main(args)


COMMANDS = {"train": train_command, "evaluate": evaluate_command, "gaps": gaps_command,
            "calibrate": calibrate_command, "report": report_command}


def main(argv=None):
    flush_denormals()  # before any parallel torch work starts OpenMP's threads
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(f"unknown command {argv[0]!r}; use one of: {', '.join(COMMANDS)} (vae-compare --help)")
    try:
        command(argv[1:])
    except UserError as error:
        fail(str(error))
    except KeyboardInterrupt:  # outside training (which checkpoints first): nothing to save
        print("vae-compare: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
