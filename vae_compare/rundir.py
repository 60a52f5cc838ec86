"""A run folder's own files, read and written: the checkpoint, the best weights, summary.json, the gaps
files, and the search for finished runs below a folder.

The file names are export's, and every write is export's atomic one (a kill leaves the old file or the new).
"""

import json
import os
from pathlib import Path

from vae_compare import UserError, export
from vae_compare.config import check_same_config, recorded_config

# A folder holding any of these is a run folder, finished or not (params.csv is written before training).
RUN_MARKERS = {export.SUMMARY_FILE, export.PARAMS_FILE, export.METRICS_FILE, export.FAILED_FILE}


# ---- checkpoints and weights ------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    """The whole training state in one file."""
    export.atomic_torch_save(path, state)


def load_checkpoint(path: Path, current_config: dict) -> dict:
    """The state saved at `path`, after checking it is a checkpoint of this same experiment."""
    state = export.load_torch(path)
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path} is not a vae-compare checkpoint")
    check_same_config(path, state["config"], current_config)
    return state


def load_best(folder: Path) -> dict:
    """The run's best weights (best.pt), as a state dict on the CPU."""
    return export.load_torch(folder / export.BEST)


# ---- summary.json ---------------------------------------------------------------------------------------------
def read_summary(folder: Path):
    """summary.json of a finished run, or None."""
    path = Path(folder) / export.SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == "complete" else None


def write_summary(folder: Path, summary: dict) -> None:
    """summary.json, written last: a run folder with one is finished."""
    export.write_json(folder / export.SUMMARY_FILE, summary)


# ---- gaps.json, gaps.csv and calibration.json ------------------------------------------------------------------
def read_json(path: Path):
    """A JSON file a command wrote into a run (gaps.json, calibration.json), or None."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_gaps(folder: Path):
    """A run's gaps.json, or None."""
    return read_json(Path(folder) / export.GAPS_JSON)


def write_gaps(folder: Path, result: dict) -> None:
    """gaps.csv (one row per q*, with the log p(x) proposal), then gaps.json: a run with gaps.json is measured."""
    export.write_csv(folder / export.GAPS_CSV, [{**row, "log_px_proposal": result["log_px"]["proposal"],
                                                 "iwae_samples": result["log_px"]["samples"]}
                                                for row in result["rows"]])
    export.write_json(folder / export.GAPS_JSON, result)


# ---- finding runs ---------------------------------------------------------------------------------------------
def run_folders(folder: Path):
    """Every run folder at or below folder, finished or not, in sorted order."""
    for path, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .hydra and friends
        if RUN_MARKERS & set(files):
            yield Path(path)


def finished_runs_below(folder):
    """find_runs' (finished runs, unfinished count) at or below folder, for a command that works on finished runs
    (gaps, calibrate); a folder with none is one UserError."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    runs, unfinished = find_runs(folder)
    if not runs:
        raise UserError(f"no finished run at or below {folder}" + (f" ({unfinished} unfinished: finish them with "
                                                                   "vae-compare train resume=RUN_FOLDER)" if unfinished else ""))
    return runs, unfinished


def find_runs(folder: Path):
    """Finished runs below folder (summary.json with status complete), and the count of the others."""
    runs, unfinished = [], 0
    for path in run_folders(folder):
        summary = read_summary(path)
        if summary is None:
            unfinished += 1
            continue
        config = recorded_config(summary["config"])
        runs.append({
            "folder": path,
            "path": path.relative_to(folder).as_posix(),
            "summary": summary,
            "config": config,
            "dataset": config["data.name"],
            "latent_dim": config["latent_dim"],
            "seed": config["seed"],
            "family": config["family.name"],
        })
    return runs, unfinished


def find_diverged(folder: Path):
    """(path below folder, reason) of every run whose summary.json says it diverged (train.Diverged)."""
    diverged = []
    for path in run_folders(folder):
        try:
            summary = json.loads((path / export.SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            continue
        if summary.get("status") == "diverged":
            diverged.append((path.relative_to(folder).as_posix(), summary.get("reason", "")))
    return diverged
