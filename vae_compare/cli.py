"""The `vae-compare` command: a small dispatcher in front of the Hydra app.

    vae-compare train [hydra overrides]          train one run, or a sweep with -m
    vae-compare evaluate RUN_FOLDER [overrides]  re-evaluate a finished run (e.g. eval.iwae_samples=5000)
    vae-compare gaps FOLDER [gaps.<key>=...]     approximation and amortization gaps of finished runs
    vae-compare report FOLDER                    summarize every run below FOLDER

Hydra owns sys.argv, so the subcommand word is removed before Hydra sees the arguments; Hydra's own flags
pass through untouched. Every override is composed and checked before any job starts, so bad input is one
line, not a traceback.
"""

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich import get_console

from vae_compare import UserError, data, lock
from vae_compare.config import type_name, validate
from vae_compare.export import CHECKPOINT, FAILED_FILE, check_writable

USAGE = __doc__.split("\n\n")[1] + """

Examples:
  vae-compare train family=cholesky latent_dim=16
  vae-compare train -m family=diag,cholesky,lowrank latent_dim=2,8,32
  vae-compare train experiment=quick family=lowrank family.rank=2
  vae-compare train resume=outputs/runs/<run>
  vae-compare train --help                    config groups and every option
"""
EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_FAILED_JOBS = 2, 3, 1
DEFAULT_THREADS = torch.get_num_threads()


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
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return [overrides]
    values = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
              else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*values)]


def compose(overrides, with_hydra=False):
    """The config Hydra would give a job with these overrides (with its `hydra` node if asked)."""
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="vae_compare.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


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
    from vae_compare.memory import check_fits
    from vae_compare.train import pick_device

    check_fits(cfg, pick_device(cfg.device))


def joblib_workers(configs, overrides):
    """With the joblib launcher, an explicit hydra.launcher.n_jobs: no more workers than jobs, so that
    torch_threads gives each job cores / workers threads. None for other launchers or when the user set it."""
    launcher = configs[0].hydra.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower() or any(
            o.startswith("hydra.launcher.n_jobs=") for o in overrides):
        return None
    cores = os.cpu_count() or 1
    workers = launcher.n_jobs if launcher.n_jobs > 0 else cores + 1 + launcher.n_jobs
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
def torch_threads(cfg):
    """train.threads; under the joblib launcher cores / workers, so jobs do not oversubscribe; else torch's
    default (set every time: the basic launcher runs every job in this one process)."""
    if cfg.train.threads is not None:
        return cfg.train.threads
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return DEFAULT_THREADS
    cores = os.cpu_count() or 1
    workers = launcher.n_jobs if launcher.n_jobs > 0 else cores + 1 + launcher.n_jobs
    return max(1, cores // max(1, workers))


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
    from vae_compare.train import Diverged, Interrupted, flush_denormals, train

    (folder / FAILED_FILE).unlink(missing_ok=True)
    try:
        validate(cfg)
        flush_denormals()  # a joblib worker process does not pass through main()
        torch.set_num_threads(torch_threads(cfg))
        train(cfg, folder, get_console())
    except Interrupted as interrupt:
        print(f"vae-compare: interrupted; checkpoint saved. Resume with: vae-compare train resume={folder}",
              file=sys.stderr)
        sys.exit(128 + interrupt.signum)
    except (UserError, Diverged, torch.OutOfMemoryError) as error:
        code = EXIT_DIVERGED if isinstance(error, Diverged) else EXIT_USER_ERROR
        if not multirun:
            if not (folder / CHECKPOINT).exists():
                remove_if_empty(folder)
            fail(str(error).splitlines()[0], code)
        record_failure(folder, overrides, error)
    except Exception as error:
        if not multirun:
            raise  # a bug: its traceback is what a report needs
        # a failing job must not stop the sweep, nor lose the other jobs' report
        logging.getLogger(__name__).exception("job failed")
        record_failure(folder, overrides, error)


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


def hydra_flags():
    """Hydra's own command-line flags, mirrored so the dispatcher can tell flags (and their values) from
    overrides without reordering anything."""
    parser = argparse.ArgumentParser(prog="vae-compare train", add_help=False, exit_on_error=False)
    parser.add_argument("overrides", nargs="*")
    for flags in (("-h", "--help"), ("--hydra-help",), ("--version",), ("--resolve",), ("-r", "--run"),
                  ("-m", "--multirun"), ("--experimental-rerun",)):
        parser.add_argument(*flags, action="store_true" if flags[0] != "--experimental-rerun" else "store")
    for flags in (("-c", "--cfg"), ("-p", "--package"), ("-cp", "--config-path"), ("-cn", "--config-name"),
                  ("-cd", "--config-dir"), ("-sc", "--shell-completion")):
        parser.add_argument(*flags)
    parser.add_argument("-i", "--info", nargs="?", const="all")
    return parser


def train_command(args):
    try:
        options = hydra_flags().parse_intermixed_args(args)
    except argparse.ArgumentError as error:
        fail(str(error))
    wants_help = options.help or options.hydra_help or options.version or options.cfg or options.info \
        or options.shell_completion
    if not wants_help:
        overrides = resume_overrides(options.overrides)
        configs = check_overrides(overrides, options.multirun)
        workers = joblib_workers(configs, overrides) if options.multirun else None
        if workers is not None:
            overrides = overrides + [f"hydra.launcher.n_jobs={workers}"]
        flags = list(args)
        for override in options.overrides:  # the flags stay in place; the overrides go last
            flags.remove(override)
        args = flags + overrides
    folder = None
    if not wants_help and not options.multirun:
        folder = Path(configs[0].hydra.run.dir)
        if not any(o.startswith("hydra.run.dir=") for o in args):
            # the default folder name holds the time: pin the one composed here, which is the one locked
            args = args + [f"hydra.run.dir={folder}"]
    sys.argv = ["vae-compare train", *args]
    from vae_compare import sweep

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
    from vae_compare.config import EVALUATE_KEYS
    from vae_compare.finish import evaluate_run

    folder, overrides = folder_and_overrides(
        args, "vae-compare evaluate", "Re-evaluate a finished run's best weights without retraining.", "RUN_FOLDER",
        None, f"any of: {', '.join(sorted(EVALUATE_KEYS))} (e.g. eval.iwae_samples=5000)")
    evaluate_run(folder, overrides, get_console())


def gaps_command(args):
    from vae_compare.config import GapsConfig
    from vae_compare.gaps import RUN_KEYS, gaps_main

    keys = ", ".join(f"gaps.{item.name}" for item in dataclasses.fields(GapsConfig))
    folder, overrides = folder_and_overrides(
        args, "vae-compare gaps",
        "Approximation and amortization gaps (Cremer et al. 2018) of every finished run at or below FOLDER, decoder "
        "frozen; writes gaps.csv and gaps.json into each run. Runs measured with the same settings are skipped.",
        "FOLDER", "a run, sweep or outputs folder",
        f"any of: {keys}, {', '.join(RUN_KEYS)} (e.g. gaps.images=200 'gaps.families=[diag,cholesky]')")
    gaps_main(folder, overrides, get_console())


def report_command(args):
    from vae_compare.report import main as report_main

    report_main(args)


COMMANDS = {"train": train_command, "evaluate": evaluate_command, "gaps": gaps_command, "report": report_command}


def main(argv=None):
    # vae_compare.train.flush_denormals, here before any parallel torch work starts OpenMP's threads
    torch.set_flush_denormal(True)
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
