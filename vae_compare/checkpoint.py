"""Checkpoints: the whole training state in one file, written atomically, and the check that a resumed
run continues the same experiment."""

from pathlib import Path

from vae_compare import UserError, export
from vae_compare.config import RESUMABLE_KEYS, flatten


def save(path: Path, state: dict) -> None:
    export.atomic_torch_save(path, state)


def load(path: Path, current_config: dict) -> dict:
    """The state saved at `path`, after checking it is a checkpoint of this same experiment."""
    state = export.load_torch(path)
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path} is not a vae-compare checkpoint")
    check_same_config(path, state["config"], current_config)
    return state


def check_same_config(path, saved: dict, current: dict) -> None:
    """A resumed run must continue the same experiment: only runtime and evaluation keys may differ
    (the final evaluation can be redone)."""
    saved, current = flatten(saved), flatten(current)
    for key in sorted(set(saved) | set(current)):
        if key not in RESUMABLE_KEYS and saved.get(key) != current.get(key):
            raise UserError(f"{path} was trained with {key}={saved.get(key)!r}, this run has {current.get(key)!r}; "
                            f"resume with the run's own settings (vae-compare train resume=<run folder>)")
