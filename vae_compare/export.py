"""Result files of a run: their names, atomic writes, CSV, JSON, torch files, params.csv's row, TensorBoard.

Every file is written whole to a temporary name, fsynced and renamed, so a kill at any instant leaves
either the previous version or the new one, never half of one. What a run folder holds and how it is read
back is rundir.py's.
"""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import torch

from vae_compare import UserError

METRICS_FILE, PARAMS_FILE, SUMMARY_FILE = "metrics.csv", "params.csv", "summary.json"
CHECKPOINT, BEST, FINAL_FILE = "checkpoint.pt", "best.pt", "final.csv"
# Pictures of q(z|x) on the first test images, and the arrays they are drawn from (read by the report).
POSTERIOR_SAMPLE = "posterior_sample.pt"
ELLIPSES_PNG, CORRELATIONS_PNG = "posterior_ellipses.png", "posterior_correlations.png"
# A sweep job that failed leaves this file (its overrides and the error) instead of a summary.
FAILED_FILE = "failed.txt"
# `vae-compare gaps`: the gaps per q* (gaps.csv) and the whole measurement (gaps.json, written last).
GAPS_JSON, GAPS_CSV = "gaps.json", "gaps.csv"
CALIBRATION_JSON, CALIBRATION_CSV = "calibration.json", "calibration.csv"
UMASK = os.umask(0)
os.umask(UMASK)
# The temporary file of the write in progress, so that an exit that skips cleanup (a second Ctrl-C) can remove it.
PENDING_TEMP = None


def remove_pending_temp():
    if PENDING_TEMP is not None and os.path.exists(PENDING_TEMP):
        os.unlink(PENDING_TEMP)


def atomic_write(path: Path, data: bytes) -> None:
    global PENDING_TEMP
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        PENDING_TEMP = tmp
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; result files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # the rename itself is durable only once the folder's entry is on disk
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException as error:  # an OSError, or a signal that interrupts the write: no temp file stays
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None
        raise
    finally:
        PENDING_TEMP = None


def atomic_torch_save(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def csv_text(rows) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(path: Path, rows) -> None:
    atomic_write(path, csv_text(rows).encode())


def read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_writable(folder: Path, create=True) -> None:
    """Fail early, in one line, when the run folder cannot take files. With create=False the folder is
    not made: its nearest existing parent is tested instead."""
    folder = Path(folder).expanduser().absolute()
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(f"output folder {folder} is not writable: {error.strerror or error}") from None


def load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, corrupt or foreign file raises any of several types
        raise UserError(f"{path} is not a readable vae-compare checkpoint ({type(error).__name__})") from None


def params_row(cfg, model):
    """The parameter-count table row of one run. head_outputs is the built layer's width; head_formula is the
    family's closed form in d and k, written apart from the code that splits the head, so the two check each other."""
    encoder = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    decoder = sum(p.numel() for p in model.decoder.parameters() if p.requires_grad)
    return {
        "family": str(cfg.family.name),
        "latent_dim": cfg.latent_dim,
        "rank": cfg.family.rank,
        "hidden": "-".join(str(h) for h in model.config.encoder_hidden),
        "head_outputs": model.encoder[-1].out_features,
        "head_formula": model.family.head_formula(cfg.latent_dim, cfg.family.rank),
        "encoder_params": encoder,
        "decoder_params": decoder,
        "total_params": encoder + decoder,
        "decoder_hidden": "-".join(str(h) for h in model.config.decoder_hidden),
    }


class TensorBoard:
    """One SummaryWriter per run folder; hparams go into the same event files as the curves.

    Tag groups (the part before the first "/"): TensorBoard's TIME SERIES tab sorts the groups by name
    and opens only the first two, so the per-epoch curves are `train/` and `val/`, and everything
    else sorts after them: pictures under `viz/`, the run's test numbers (single points, for the
    HPARAMS tab) under `x_test/`.
    """

    def __init__(self, folder: Path):
        # tensorboard's modules are imported here, by the processes that write events, not by every import of
        # the package (the report and the tests of the math do without them)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, metrics: dict, step: int, prefix: str) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        from torchvision.utils import make_grid

        grid = make_grid(images.reshape(-1, 1, 28, 28).float().cpu(), nrow=8, padding=1)
        self.writer.add_image(tag, grid, step)

    def figure(self, tag: str, pixels, step: int) -> None:
        """A rendered figure as (H, W, 3) uint8 pixels (pictures.figure_array or png_array)."""
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.writer.add_text(tag, markdown, step)

    def hparams(self, hparams: dict, metrics: dict, step: int = 0) -> None:
        """metrics: {tag: (display name, value)}. The HPARAMS tab reads each metric's value from the last
        scalar of its tag and shows the display name as the column title."""
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        experiment, session_start, session_end = hparams_summary(hparams, {tag: v for tag, (_, v) in metrics.items()})
        # torch leaves the display names empty; they live in the experiment's plugin data
        content = experiment.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(content.content)
        for info in data.experiment.metric_infos:
            info.display_name = metrics[info.name.tag][0]
        content.content = data.SerializeToString()
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, (_, value) in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
