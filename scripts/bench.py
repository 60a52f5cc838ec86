"""Speed of vae_compare against plain PyTorch and against the machine, with targets.

    .venv/bin/python scripts/bench.py [--quick] [--device auto|cpu|cuda] [--repeats N] [--json PATH] [--only a,e]

a. one training epoch of this project's loop (Run.train_epoch) against the PyTorch-examples VAE pipeline
   (torchvision MNIST + ToTensor + DataLoader), same 50k images, batch 128, 784-400-20, grey levels;
b. training-step time of cholesky and lowrank over diag per latent_dim, against the ratio of FLOPs;
c. closed-form KL + rsample (forward and backward) of each family against torch.distributions;
d. achieved GFLOP/s of IWAE evaluation against a measured float32 torch.mm rate;
e. ms per step at batch 20 in burda2016 shapes (784-200-200-50 tanh, diag): the epoch loop
   (Run.train_epoch on a slice) and train_step alone, against the step's FLOP time at the measured
   torch.mm rate.

Each comparison is a module of scripts/benchmark/ (epoch, family_step, kl_rsample, iwae_rate, small_batch),
timed interleaved by benchmark/timing.py: a figure is the median of per-round ratios with its interquartile
range; a target is PASS or FAIL when the whole range is on one side of it, UNCLEAR when the range straddles it
(too noisy to judge: rerun on a quieter machine or with more --repeats). The load average is printed before
and after.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from rich.table import Table

from benchmark import epoch, family_step, iwae_rate, kl_rsample, small_batch
from benchmark.timing import console, fmt
from vae_compare import UserError, data
from vae_compare.runtime import flush_denormals, pick_device

# row letter -> the module that measures it and gives its rows of the summary
ROWS = {"a": epoch, "b": family_step, "c": kl_rsample, "d": iwae_rate, "e": small_batch}


def load_average():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


def machine_lines(device):
    lines = [f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
             f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs visible"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        if models:
            lines.append(f"CPU: {models[0]} x {len(models)}")
    return lines


def targets(results):
    """The summary table of every target of the rows that ran, and its rows for the JSON."""
    rows = [row for letter, module in ROWS.items() if letter in results for row in module.target_rows(results[letter])]
    table = Table(title="targets (median (interquartile range) of per-round figures; UNCLEAR: the range straddles the "
                        "target, too noisy to judge)")
    for column in ("target", "wanted", "measured", "min–max", "where", "result"):
        table.add_column(column, justify="left" if column in ("target", "where") else "right")
    colour = {"PASS": "green", "FAIL": "red", "UNCLEAR": "yellow"}
    for name, want, figure, where, result in rows:
        table.add_row(name, want, fmt(figure), f"{figure['min']:.3f}–{figure['max']:.3f}", where,
                      f"[{colour[result]}]{result}[/{colour[result]}]")
    console.print(table)
    return [{"target": name, "wanted": want, "measured": figure, "where": where, "result": result}
            for name, want, figure, where, result in rows]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="folder with the four MNIST idx files (default: found as "
                                            "vae-compare finds them: $VAE_COMPARE_DATA, then a download)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a pass in about a minute")
    parser.add_argument("--repeats", type=int, help="interleaved rounds per long figure (a, d; default 7, --quick 3); "
                                                    "short figures (b, c, e) take 3x as many")
    parser.add_argument("--only", default="abcde", help="sections to run, e.g. --only e or --only a,e (default: all)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, as training uses)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.short_repeats = 3 * args.repeats
    args.block_seconds = 0.03 if args.quick else 0.1  # length of one timing of a short call, in b and c
    args.only = set(args.only.replace(",", ""))
    if not args.only <= set(ROWS):
        parser.error(f"--only takes letters of a, b, c, d, e; got {''.join(sorted(args.only))}")
    return args


def main():
    args = parse_args()
    flush_denormals()  # as the vae-compare command does, before OpenMP's threads start (applies to both sides of a)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
        args.data_root = data.locate("mnist", args.data_root)
        pixels = data.read_images(args.data_root, "test").to(device)
    except UserError as error:
        sys.exit(f"bench: {error}")
    header = machine_lines(device) + [f"repeats {args.repeats} (short figures {args.short_repeats})"
                                      + (", --quick" if args.quick else ""),
                                      "load average before: " + " ".join(load_average())]
    for line in header:
        console.print(line)
    results = {"machine": header}
    measures = {"a": lambda: epoch.measure(args, device), "b": lambda: family_step.measure(args, device, pixels),
                "c": lambda: kl_rsample.measure(args, device),
                "d": lambda: iwae_rate.measure(args, device, pixels, results.get("b", [])),
                "e": lambda: small_batch.measure(args, device)}
    for letter, measure in measures.items():
        if letter in args.only:
            results[letter] = measure()
    results["targets"] = targets(results)
    results["load_average_after"] = load_average()
    console.print("load average after: " + " ".join(results["load_average_after"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        console.print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
