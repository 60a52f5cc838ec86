"""Statistics over seeds: per-group means, paired gains over diag with t-intervals."""

import math
import statistics
from collections import defaultdict

from vae_compare.report.collect import family_order, is_matched

# Per-run numbers averaged per group; each is a path into summary.json.
METRICS = {
    "log_px": ("test", "log_px"),
    "elbo": ("test", "elbo"),
    "active_units": ("test", "active_units"),
    "logdet_gap": ("test", "logdet_gap"),
    "seconds_per_epoch": ("seconds_per_epoch",),
    "head_outputs": ("params", "head_outputs"),
    "total_params": ("params", "total_params"),
}
# Student t quantiles t_{0.975, df} for df = 1..30 (two-sided 95% intervals).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def number(summary, path):
    value = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return math.nan if value is None else float(value)


def mean_std(values):
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def t_975(df):
    if df <= len(T_975):
        return T_975[df - 1]
    # past the table: Cornish-Fisher expansion around the normal quantile, within 1e-3 of the exact value
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_gain(values, baseline):
    """Mean of values[seed] - baseline[seed] over shared seeds with a 95% t interval (None for n < 2)."""
    diffs = [values[seed] - baseline[seed] for seed in sorted(values.keys() & baseline.keys())]
    if not diffs:
        return {"gain": None, "gain_low": None, "gain_high": None, "gain_n": 0}
    mean, sd = mean_std(diffs)
    half = None if sd is None else t_975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"gain": mean, "gain_low": None if half is None else mean - half,
            "gain_high": None if half is None else mean + half, "gain_n": len(diffs)}


def per_seed(runs, path):
    """One value per seed: reruns of a seed (the same run in two sweeps) are averaged so each seed counts once."""
    by_seed = defaultdict(list)
    for run in runs:
        by_seed[run["seed"]].append(number(run["summary"], path))
    return {seed: statistics.fmean(values) for seed, values in by_seed.items()}


def make_groups(runs):
    """One row per dataset x latent_dim x settings x variant, with paired gains over that cell's diag."""
    members = defaultdict(list)
    for run in runs:
        members[(run["dataset"], run["latent_dim"], run["setting"], run["variant"])].append(run)

    def order(key):
        first = members[key][0]
        return key[:3], family_order(first["family"]), is_matched(first["config"]), key[3]

    groups, values = [], []
    for key in sorted(members, key=order):
        first = members[key][0]
        seeds = {name: per_seed(members[key], path) for name, path in METRICS.items()}
        row = {"dataset": key[0], "latent_dim": key[1], "setting": key[2], "variant": key[3],
               "family": first["family"], "rank": first["config"]["family.rank"],
               "matched": is_matched(first["config"]), "n": len(seeds["log_px"]), "seeds": sorted(seeds["log_px"])}
        for name, by_seed in seeds.items():
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(by_seed.values())
        groups.append(row)
        values.append(seeds)
    add_gains(groups, values)
    return groups


def add_gains(groups, values):
    """Paired gain over diag (unmatched) at the same dataset, latent_dim and settings.

    Groups are sorted with plain diag first in each cell; if diag's own settings vary, the first is the baseline.
    """
    baselines = {}
    for row, seeds in zip(groups, values):
        if row["family"] == "diag" and not row["matched"]:
            baselines.setdefault(cell(row), (row, seeds))
    for row, seeds in zip(groups, values):
        base_row, base_seeds = baselines.get(cell(row), (None, None))
        row["baseline"] = base_row["variant"] if base_row else None
        if base_row is None or base_row is row:
            row.update({"gain": None, "gain_low": None, "gain_high": None, "gain_n": 0, "elbo_gain": None})
            continue
        row.update(paired_gain(seeds["log_px"], base_seeds["log_px"]))
        row["elbo_gain"] = paired_gain(seeds["elbo"], base_seeds["elbo"])["gain"]


def cell(row):
    return row["dataset"], row["latent_dim"], row["setting"]
