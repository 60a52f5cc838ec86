"""Statistics over seeds: per-group means, and each variant's gain over diag in its cell (dataset x latent_dim
x settings), with simultaneous intervals, TOST equivalence and a verdict (inference.py).

Two analyses of a cell:
- two-way (the default): the additive model variant + seed fitted to every variant of the cell at once
  (linear_model.py), one residual variance pooled over the variants, Dunnett's simultaneous intervals with
  the model's residual degrees of freedom and the correlation of the gains' estimates;
- paired (report --paired): each variant's per-seed differences from diag on the seeds both have, a t
  interval on n - 1 degrees of freedom, Bonferroni-corrected over the cell's comparisons.
"""

import math
import statistics
from collections import defaultdict

import numpy as np
from scipy import stats

from vae_compare.report.collect import family_order, is_matched
from vae_compare.report.inference import ALPHA, DEFAULT_DELTA, compare, dunnett_critical, seeds_for_equivalence
from vae_compare.report.linear_model import fit_additive

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
# The metric the gains, intervals and verdicts compare: a key of METRICS. Switching the log p(x) estimator is
# this line (and the estimator's METRICS entry).
COMPARISON_METRIC = "log_px"
METRIC_NAMES = {"log_px": "test log p(x)", "elbo": "test ELBO"}
TWO_WAY, PAIRED = "two-way", "paired"
ANALYSIS_NAMES = {TWO_WAY: "two-way model (variant + seed), pooled variance, Dunnett",
                  PAIRED: "paired by seed, Bonferroni"}
# The fields of a comparison (inference.compare) and how many seeds it rests on; empty on diag's own row.
COMPARISON_FIELDS = ("gain", "gain_low", "gain_high", "gain_se", "gain_df", "gain_critical", "tost_p",
                     "tost_delta_min", "mde", "verdict", "gain_n", "seeds_needed")


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


def per_seed(runs, path):
    """One value per seed: reruns of a seed (the same run in two sweeps) are averaged so each seed counts once."""
    by_seed = defaultdict(list)
    for run in runs:
        by_seed[run["seed"]].append(number(run["summary"], path))
    return {seed: statistics.fmean(values) for seed, values in by_seed.items()}


def recorded(by_seed):
    return {seed: value for seed, value in by_seed.items() if not math.isnan(value)}


def make_groups(runs, paired=False, delta=DEFAULT_DELTA, metric=COMPARISON_METRIC, alpha=ALPHA):
    """One row per dataset x latent_dim x settings x variant, with its gain over that cell's diag in metric;
    and one summary per cell (the analysis, its degrees of freedom, residual sd and variance check)."""
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
               "matched": is_matched(first["config"]), "n": len(seeds[metric]), "seeds": sorted(seeds[metric])}
        for name, by_seed in seeds.items():
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(by_seed.values())
        groups.append(row)
        values.append(seeds)
    cells = add_gains(groups, values, PAIRED if paired else TWO_WAY, delta, metric, alpha)
    return groups, cells


def add_gains(groups, values, analysis, delta, metric, alpha):
    """Gains over diag (unmatched) at the same dataset, latent_dim and settings, in metric and in the ELBO.

    Groups are sorted with plain diag first in each cell; if diag's own settings vary, the first is the baseline.
    """
    by_cell = defaultdict(list)
    for row, seeds in zip(groups, values):
        by_cell[cell(row)].append((row, seeds))
    summaries = []
    for key, members in by_cell.items():
        base = next((member for member in members if member[0]["family"] == "diag" and not member[0]["matched"]), None)
        others = [member for member in members if base is not None and member is not base]
        for row, _ in members:
            row.update({"baseline": base[0]["variant"] if base else None, "comparisons": len(others),
                        "analysis": analysis, "metric": metric, "delta": delta, "alpha": alpha})
            row.update(dict.fromkeys(COMPARISON_FIELDS))
            row.update({"gain_n": 0, "elbo_gain": None, "elbo_gain_low": None, "elbo_gain_high": None})
        summary = {"dataset": key[0], "latent_dim": key[1], "setting": key[2], "baseline": base[0]["variant"] if base
                   else None, "analysis": analysis, "metric": metric, "delta": delta, "alpha": alpha,
                   "comparisons": len(others)}
        if others:
            compare_cell = two_way if analysis == TWO_WAY else paired_by_seed
            results, fit_summary = compare_cell(base, others, metric, delta, alpha)
            elbo_results, _ = compare_cell(base, others, "elbo", delta, alpha)
            for (row, _), result, elbo in zip(others, results, elbo_results):
                row.update(result)
                row.update({"elbo_gain": elbo["gain"], "elbo_gain_low": elbo["gain_low"],
                            "elbo_gain_high": elbo["gain_high"]})
            summary.update(fit_summary)
        summaries.append(summary)
    return summaries


def two_way(base, others, metric, delta, alpha=ALPHA):
    """Every variant of the cell against diag in one additive model (variant + seed) with pooled variance."""
    table = {index: recorded(seeds[metric]) for index, (_, seeds) in enumerate([base] + others)}
    fit = fit_additive(table, 0)
    usable = np.flatnonzero(fit.estimable)
    critical = None
    if fit.df > 0 and usable.size:
        cov = fit.unscaled_cov[np.ix_(usable, usable)]
        scale = np.sqrt(np.diag(cov))
        critical = dunnett_critical(cov / np.outer(scale, scale), fit.df, alpha)
    results = []
    for index in range(len(others)):
        gain = float(fit.gains[index]) if fit.estimable[index] else None
        se = fit.residual_sd * math.sqrt(fit.unscaled_cov[index, index]) if critical is not None and gain is not None else None
        result = compare(gain, se, fit.df, critical, delta, alpha)
        result["gain_n"] = fit.counts[index + 1]
        if result["verdict"] == "inconclusive" and fit.residual_sd is not None:
            result["seeds_needed"] = seeds_for_equivalence(fit.residual_sd * math.sqrt(2), delta, len(table), alpha)
        results.append(result)
    p, check = variance_check(fit.residuals)
    return results, {"df": fit.df, "residual_sd": fit.residual_sd, "critical": critical,
                     "variance_p": p, "variance_check": check}


def variance_check(residuals):
    """Brown-Forsythe's test (Levene's with the median) that the variants' residual variances are equal:
    (p-value or None, what it says). It needs three or more variants in the model (with two, the seed term
    leaves only their difference, whose spread both share) and uses the variants with three or more seeds (with
    two, a variant's residuals are +r and -r, whose deviations from their median do not vary)."""
    if len(residuals) < 3:
        return None, "variances not testable with two variants"
    spread = [values for values in residuals.values() if len(values) >= 3]
    if len(spread) < 2:
        return None, "variances not testable (fewer than two variants with three or more seeds)"
    with np.errstate(divide="ignore", invalid="ignore"):
        p = float(stats.levene(*spread, center="median").pvalue)
    if math.isnan(p):
        return None, "variances not testable (the residuals have no spread)"
    if p < ALPHA:
        return p, f"variances differ (Brown-Forsythe p = {p:.3f}): the pooled intervals are doubtful; compare --paired"
    return p, f"variances compatible (Brown-Forsythe p = {p:.2f})"


def paired_by_seed(base, others, metric, delta, alpha=ALPHA):
    """Each variant's per-seed differences from diag on the seeds both have: a t interval on n - 1 degrees of
    freedom, Bonferroni-corrected for the cell's comparisons."""
    baseline = recorded(base[1][metric])
    results = []
    for _, seeds in others:
        values = recorded(seeds[metric])
        diffs = [values[seed] - baseline[seed] for seed in sorted(values.keys() & baseline.keys())]
        gain, sd = mean_std(diffs) if diffs else (None, None)
        df = len(diffs) - 1
        se = sd / math.sqrt(len(diffs)) if sd is not None else None
        critical = stats.t.ppf(1 - alpha / (2 * len(others)), df) if se is not None else None
        result = compare(gain, se, df, critical, delta, alpha)
        result["gain_n"] = len(diffs)
        if result["verdict"] == "inconclusive" and sd is not None:
            result["seeds_needed"] = seeds_for_equivalence(sd, delta, 2, alpha)
        results.append(result)
    return results, {"df": None, "residual_sd": None, "critical": None, "variance_p": None,
                     "variance_check": "not needed (each comparison has its own variance)"}


def cell(row):
    return row["dataset"], row["latent_dim"], row["setting"]
