"""e. ms per step at batch 20 in burda2016 shapes (784-200-200-50 tanh, diag): the epoch loop (Run.train_epoch on
a slice) and train_step alone, against the step's FLOP time at the measured torch.mm rate."""

import math
import tempfile
from pathlib import Path

import torch
from rich.table import Table

from benchmark.timing import console, fmt, interleaved_times, ratios, spread, verdict, wanted
from benchmark.workloads import live_progress, square_matmul, step_flops
from vae_compare.config import compose
from vae_compare.model import build_model
from vae_compare.posteriors import Noise
from vae_compare.train import Run, SignalGuard, make_optimizer, train_step

BURDA_BATCH = 20
# ms per step / FLOP time at the mm rate, for the epoch loop and train_step alone
TARGET = ("<=", 3.0)


def measure(args, device):
    """ms per step at batch 20, 784-200-200-50 tanh, diag, dynamic binarization: Run.train_epoch over a
    slice of the training set (the whole loop: batching, binarization, checks, progress bar) and
    train_step alone over the same number of pre-drawn batches, interleaved with a square torch.mm whose
    rate gives the FLOP time of a step in the same round."""
    images = 1000 if args.quick else 2000
    overrides = ["experiment=burda2016", f"data.root={args.data_root}", f"data.train_size={images}",
                 f"device={device.type}"]
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as folder, SignalGuard() as guard:
        run = Run(cfg, Path(folder))
        steps = run.train_data.steps_per_epoch(BURDA_BATCH)
        progress, task = live_progress()
        alone = build_model(cfg).to(device)
        optimizer = make_optimizer(alone, 1e-3)
        noise = Noise(cfg.seed, device)
        generator = torch.Generator(device).manual_seed(0)
        batches = [torch.bernoulli(b, generator=generator) for b in run.train_data.pixels.split(BURDA_BATCH)]

        def steps_alone():
            for batch in batches:
                train_step(alone, optimizer, batch, 1.0, math.inf, noise)

        square_name, (square, square_flops) = square_matmul(args, device)
        times = interleaved_times({"epoch": lambda: run.train_epoch(progress, task, guard), "train_step": steps_alone,
                                   "mm": square}, device, args.short_repeats)
        progress.stop()
    flops = step_flops(alone, BURDA_BATCH)
    flop_seconds = [flops / (square_flops / t) for t in times["mm"]]  # a step's FLOPs at this round's mm rate
    result = {"flops_per_step": flops, "steps": steps, "mm": square_name,
              "flop_ms": spread([1e3 * s for s in flop_seconds])}
    for name, count in (("epoch", steps), ("train_step", len(batches))):
        per_step = [t / count for t in times[name]]
        result[name] = {"ms_per_step": spread([1e3 * s for s in per_step]),
                        "over_flop_time": spread(ratios(per_step, flop_seconds))}
        result[name]["verdict"] = verdict(result[name]["over_flop_time"], TARGET)
    table = Table(title=f"e. batch {BURDA_BATCH}, burda2016 shapes (784-200-200-50 tanh, diag, dynamic binarization), "
                        f"{steps} steps per timing; FLOP time = {flops / 1e6:.1f} MFLOP at the {square_name} rate of the "
                        "same round; median (IQR)")
    for column in ("what", "ms / step", "× FLOP time", ""):
        table.add_column(column, justify="right" if column != "what" else "left")
    table.add_row("epoch loop (Run.train_epoch)", fmt(result["epoch"]["ms_per_step"], 2),
                  fmt(result["epoch"]["over_flop_time"], 2), result["epoch"]["verdict"])
    table.add_row("train_step alone", fmt(result["train_step"]["ms_per_step"], 2),
                  fmt(result["train_step"]["over_flop_time"], 2), result["train_step"]["verdict"])
    table.add_row("FLOP time at the mm rate", fmt(result["flop_ms"], 3), "1", "")
    console.print(table)
    return result


def target_rows(result):
    """The summary's rows (target, wanted, figure, where, verdict): the epoch loop and train_step alone."""
    return [(f"e. batch-20 step, {label}, × FLOP time", wanted(TARGET), result[name]["over_flop_time"],
             f"{result[name]['ms_per_step']['median']:.2f} ms/step", result[name]["verdict"])
            for name, label in (("epoch", "epoch loop"), ("train_step", "train_step alone"))]
