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
    "active_directions": ("test", "active_directions"),
    "logdet_gap": ("test", "logdet_gap"),
    "seconds_per_epoch": ("seconds_per_epoch",),
    "head_outputs": ("params", "head_outputs"),
    "total_params": ("params", "total_params"),
}
# Family-wise error rate of the comparisons in one cell (dataset x latent_dim x settings): the intervals are
# Bonferroni-corrected for the number of variants compared with diag there, so all of a cell's intervals
# hold together with 95% confidence.
ALPHA = 0.05
CORRECTION = "Bonferroni"


def number(summary, path):
    value = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return math.nan if value is None else float(value)


def mean_std(values):
    """Mean and sample sd; a metric that older runs did not record (NaN) is left out, and all-missing is NaN."""
    values = [value for value in values if not math.isnan(value)]
    if not values:
        return math.nan, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def t_cdf(t, df):
    """Student t distribution function, by Simpson's rule on the density from 0 to |t| (accurate to ~1e-10
    for the quantiles used here; no SciPy needed)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda x: math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))  # noqa: E731
    steps, width = 2000, abs(t)
    h = width / steps
    area = density(0) + density(width) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    half = area * h / 3
    return 0.5 + half if t >= 0 else 0.5 - half


def t_quantile(p, df):
    """The p-quantile of Student's t with df degrees of freedom (p > 0.5), by bisection on t_cdf."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def t_975(df):
    return t_quantile(0.975, df)


def paired_gain(values, baseline, comparisons=1):
    """Mean of values[seed] - baseline[seed] over shared seeds with a two-sided t interval at 1 - ALPHA,
    Bonferroni-corrected for `comparisons` (None bounds for n < 2). half_width is the smallest effect these
    seeds can tell from zero: differences inside ±half_width around the mean are not ruled out."""
    diffs = [values[seed] - baseline[seed] for seed in sorted(values.keys() & baseline.keys())]
    empty = {"gain": None, "gain_low": None, "gain_high": None, "gain_half_width": None}
    if not diffs:
        return {**empty, "gain_n": 0}
    mean, sd = mean_std(diffs)
    if sd is None:
        return {**empty, "gain": mean, "gain_n": 1}
    half = t_quantile(1 - ALPHA / (2 * comparisons), len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"gain": mean, "gain_low": mean - half, "gain_high": mean + half, "gain_half_width": half,
            "gain_n": len(diffs)}


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
    comparisons = defaultdict(int)  # variants compared with diag per cell: the Bonferroni factor
    for row in groups:
        if cell(row) in baselines and baselines[cell(row)][0] is not row:
            comparisons[cell(row)] += 1
    for row, seeds in zip(groups, values):
        base_row, base_seeds = baselines.get(cell(row), (None, None))
        row["baseline"] = base_row["variant"] if base_row else None
        row["comparisons"] = comparisons[cell(row)]
        if base_row is None or base_row is row:
            row.update({"gain": None, "gain_low": None, "gain_high": None, "gain_half_width": None, "gain_n": 0,
                        "elbo_gain": None, "elbo_gain_low": None, "elbo_gain_high": None})
            continue
        row.update(paired_gain(seeds["log_px"], base_seeds["log_px"], row["comparisons"]))
        elbo = paired_gain(seeds["elbo"], base_seeds["elbo"], row["comparisons"])
        row.update({"elbo_gain": elbo["gain"], "elbo_gain_low": elbo["gain_low"], "elbo_gain_high": elbo["gain_high"]})


def cell(row):
    return row["dataset"], row["latent_dim"], row["setting"]
