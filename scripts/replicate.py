"""The same runs trained twice: two folders whose runs share their whole config (seed included) but were trained on
two machines, whose floating-point kernels round differently. Prints, per variant, the differences SECOND - FIRST
of each seed's results, their mean with a 95% t-interval, and the speed ratio; a mean difference whose interval
excludes 0 says the machine moved the results, not only the noise.

Usage: python scripts/replicate.py FIRST SECOND
"""

import statistics
import sys
from pathlib import Path

from scipy import stats

from vae_compare.rundir import find_runs

# config keys that may differ between the two copies without changing what is trained or measured
IGNORED = {"train.threads", "device", "resume", "data.root"}
# name: (value from summary.json, decimals shown)
METRICS = {
    "test log p(x)": (lambda summary: summary["test"]["log_px"], 2),
    "best val ELBO": (lambda summary: summary["best_val_elbo"], 2),
    "best epoch": (lambda summary: summary["best_epoch"], 0),
}


def same_config(run):
    return tuple(sorted((key, str(value)) for key, value in run["config"].items() if key not in IGNORED))


def variant(run):
    matched = run["config"].get("model.match_params")
    return run["family"] + (f"[={matched}]" if matched else "") + f" d{run['latent_dim']}"


def mean_interval(differences):
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, half


def main(first, second):
    earlier = {same_config(run): run for run in find_runs(first)[0]}
    pairs = {}
    for run in find_runs(second)[0]:
        if same_config(run) in earlier:
            pairs.setdefault(variant(run), []).append((earlier[same_config(run)], run))
    if not pairs:
        raise SystemExit(f"error: no run below {second} has the config of a run below {first}")
    print(f"# The same runs on two machines: {second} - {first}\n")
    print("| variant | seeds | " + " | ".join(f"{name}: per seed | mean [95% CI]" for name in METRICS)
          + " | s/epoch ratio |")
    print("|---|---|" + "---|---|" * len(METRICS) + "---|")
    for name, runs in sorted(pairs.items()):
        runs.sort(key=lambda pair: pair[0]["seed"])
        cells = [name, ",".join(str(a["seed"]) for a, _ in runs)]
        for metric, decimals in METRICS.values():
            differences = [metric(b["summary"]) - metric(a["summary"]) for a, b in runs]
            mean, half = mean_interval(differences)
            cells.append(" ".join(f"{d:+.{decimals}f}" for d in differences))
            cells.append(f"{mean:+.{decimals + 1}f}"
                         + (f" [{mean - half:+.{decimals + 1}f}, {mean + half:+.{decimals + 1}f}]" if half is not None else ""))
        ratio = statistics.fmean(a["summary"]["seconds_per_epoch"] / b["summary"]["seconds_per_epoch"] for a, b in runs)
        cells.append(f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.splitlines()[-1])
    main(Path(sys.argv[1]), Path(sys.argv[2]))
