"""`vae-compare report FOLDER`: summarize every finished run below FOLDER.

Writes summary.csv (one row per run), report.md (groups, paired gains over diag, parameter counts,
a verdict computed from the numbers, plots) and five PNG plots, and prints the group table.

A group is dataset x latent_dim x settings x variant. The variant is the posterior family (with its
rank for lowrank, its own settings when they vary, and the family it was widened to match for
equal-budget runs); the settings are the other config values that vary across the runs (learning
rate, epochs, ...). Each variant is compared with diag at the same dataset, latent_dim and settings,
paired by seed: runs with the same seed see the same data order and binarization, so per-seed
differences cancel part of the run-to-run noise that a mean-vs-mean comparison would carry.
"""

import argparse
import io
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich import box, get_console
from rich.table import Table

from vae_compare import UserError, export
from vae_compare.posteriors import FAMILIES

# A folder holding any of these is a run folder, finished or not (params.csv is written before training).
RUN_MARKERS = {export.SUMMARY_FILE, export.PARAMS_FILE, export.METRICS_FILE, export.FAILED_FILE}
# Config values that are group dimensions of their own, so they are not "settings".
GROUP_KEYS = {"data.name", "latent_dim", "seed", "model.match_params", "model.match_rank"}
# Table order: cheapest posterior first (by head size at any d > k + 1), unknown families last.
FAMILY_ORDER = {"diag": 0, "lowrank": 1, "cholesky": 2}
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
PARAM_COLUMNS = ("head_outputs", "head_formula", "encoder_params", "decoder_params", "total_params", "hidden")
PLOTS = {
    "log_px_vs_latent_dim.png": "test log p(x), IWAE",
    "logdet_gap_vs_latent_dim.png": "log-det gap",
    "head_outputs_vs_latent_dim.png": "encoder head outputs",
    "seconds_per_epoch_vs_latent_dim.png": "seconds per epoch",
    "val_elbo_curves.png": "validation ELBO per epoch",
}
# Student t quantiles t_{0.975, df} for df = 1..30 (two-sided 95% intervals).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# ---- finding and labelling runs -----------------------------------------------------------------
def find_runs(folder: Path):
    """Finished runs below folder (summary.json with status complete), and the count of the others."""
    runs, unfinished = [], 0
    for path, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .hydra and friends
        if not RUN_MARKERS & set(files):
            continue
        summary = export.read_summary(Path(path))
        if summary is None:
            unfinished += 1
            continue
        config = export.flatten(summary["config"])
        runs.append({
            "folder": Path(path),
            "path": Path(path).relative_to(folder).as_posix(),
            "summary": summary,
            "config": config,
            "dataset": config["data.name"],
            "latent_dim": config["latent_dim"],
            "seed": config["seed"],
            "family": config["family.name"],
        })
    return runs, unfinished


def config_keys(runs):
    return list(dict.fromkeys(key for run in runs for key in run["config"]))


def varying(configs, keys):
    return [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]


def show(value):
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def label_runs(runs):
    """Give every run its variant and settings labels; returns the config keys that split groups."""
    all_keys = config_keys(runs)
    # config values that do not change results never split groups (but still go into summary.csv)
    candidates = [k for k in all_keys if k not in export.NON_RESULT_KEYS | GROUP_KEYS and not k.startswith("family.")]
    setting_keys = varying([run["config"] for run in runs], candidates)
    # family settings split only within one family: diag's scale_transform differs from cholesky's by default
    family_keys = {}
    for family in {run["family"] for run in runs}:
        configs = [run["config"] for run in runs if run["family"] == family]
        own = [k for k in all_keys if k.startswith("family.") and k not in ("family.name", "family.rank")]
        family_keys[family] = varying(configs, own)
    for run in runs:
        config = run["config"]
        run["variant"] = variant_label(config, family_keys[run["family"]])
        run["setting"] = ", ".join(f"{k}={show(config.get(k))}" for k in setting_keys)
    return setting_keys, sorted({k for keys in family_keys.values() for k in keys})


def variant_label(config, family_keys):
    """e.g. "diag", "lowrank(k=4)", "cholesky(offdiag_scale=0.1)", "diag matched→cholesky"."""
    family = config["family.name"]
    details = [f"k={config['family.rank']}"] if family == "lowrank" else []
    details += [f"{key.split('.', 1)[1]}={show(config.get(key))}" for key in family_keys]
    label = f"{family}({', '.join(details)})" if details else family
    target = config.get("model.match_params")
    if target is not None and target != family:
        label += " matched→" + (f"lowrank(k={config['model.match_rank']})" if target == "lowrank" else target)
    return label


def family_order(family):
    return FAMILY_ORDER.get(family, len(FAMILY_ORDER))


def is_matched(config):
    return config.get("model.match_params") not in (None, config["family.name"])


def series(item):
    """The plot/legend name of a run or group: its variant, and its settings when they vary."""
    return item["variant"] + (f" [{item['setting']}]" if item["setting"] else "")


# ---- statistics -----------------------------------------------------------------------------------
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


# ---- verdict --------------------------------------------------------------------------------------
def significance(row):
    if row["gain_n"] == 0:
        return "no seed shared with diag"
    if row["gain_n"] == 1:
        return "n=1 paired seed, no interval"
    low, high = row["gain_low"], row["gain_high"]
    word = "significant" if low > 0 or high < 0 else "not distinguishable from diag"
    return f"95% CI [{low:+.2f}, {high:+.2f}] over {row['gain_n']} paired seeds: {word}"


def verdict(groups):
    """One sentence per dataset x latent_dim x settings cell, joined into one paragraph."""
    cells = defaultdict(list)
    for row in groups:
        cells[cell(row)].append(row)
    sentences = []
    for (dataset, latent_dim, setting), rows in cells.items():
        where = f"{dataset}, latent_dim {latent_dim}" + (f", {setting}" if setting else "")
        seeds = sorted({row["n"] for row in rows})
        n_text = f"n={seeds[0]}" if len(seeds) == 1 else f"n={seeds[0]}–{seeds[-1]}"
        best = max(rows, key=lambda row: row["log_px_mean"])
        head = (f"{where} ({n_text} seeds per variant): {best['variant']} has the best mean test log p(x) "
                f"({best['log_px_mean']:.2f} nats)")
        if best["baseline"] is None:
            sentence = head + "; there is no diag run to compare with"
        elif best["variant"] == best["baseline"]:
            others = [row for row in rows if row is not best]
            sentence = head
            if others:
                runner = max(others, key=lambda row: row["log_px_mean"])
                sentence += f"; the next best is {runner['variant']}"
                if runner["gain"] is not None:
                    sentence += f" at {runner['gain']:+.2f} nats from diag"
                sentence += f" ({significance(runner)})"
        elif best["gain"] is None:
            sentence = head + f"; {significance(best)}"
        else:
            sentence = head + f", {best['gain']:+.2f} nats over diag ({significance(best)})"
        # a richer posterior can tighten the bound without improving the model itself
        for row in rows:
            if row["family"] != "diag" and row["elbo_gain"] is not None and row["elbo_gain"] > 0 >= row["gain"]:
                sentence += (f"; {row['variant']} beats diag in ELBO ({row['elbo_gain']:+.2f} nats) "
                             f"but not in log p(x) ({row['gain']:+.2f} nats)")
        sentences.append(sentence + ".")
    return " ".join(sentences)


# ---- tables ---------------------------------------------------------------------------------------
def summary_rows(runs, varying_keys):
    """summary.csv: one row per run, the same columns in every row."""
    fixed = ["data.name", "family.name", "family.rank", "latent_dim", "seed", "model.match_params"]
    columns = fixed + [key for key in varying_keys if key not in fixed]
    test_keys = list(dict.fromkeys(key for run in runs for key in run["summary"].get("test", {})))
    rows = []
    for run in runs:
        summary = run["summary"]
        row = {"run": run["path"], "variant": run["variant"]}
        row.update({key: run["config"].get(key) for key in columns})
        row.update({f"test_{key}": summary.get("test", {}).get(key) for key in test_keys})
        row.update({key: summary.get(key) for key in ("best_val_elbo", "best_epoch")})
        row.update({key: summary.get("params", {}).get(key) for key in PARAM_COLUMNS})
        row["seconds_per_epoch"] = summary.get("seconds_per_epoch")
        rows.append(row)
    return rows


def plus_minus(mean, std, digits=2):
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def gain_text(row):
    if row["baseline"] is None:
        return "no diag run"
    if row["variant"] == row["baseline"]:
        return "baseline"
    if row["gain_n"] == 0:
        return "no shared seed"
    if row["gain_n"] == 1:
        return f"{row['gain']:+.2f} (n=1)"
    return f"{row['gain']:+.2f} [{row['gain_low']:+.2f}, {row['gain_high']:+.2f}]"


def group_table(groups):
    """Header and rows of the group table, shared by report.md and the console."""
    with_setting = any(row["setting"] for row in groups)
    header = ["dataset", "d"] + (["settings"] if with_setting else []) + [
        "variant", "n", "log p(x)", "ELBO", "gain vs diag [95% CI]", "head", "params", "s/epoch", "active",
        "logdet gap"]
    rows = []
    for row in groups:
        rows.append([row["dataset"], str(row["latent_dim"])] + ([row["setting"]] if with_setting else []) + [
            row["variant"], str(row["n"]), plus_minus(row["log_px_mean"], row["log_px_std"]),
            plus_minus(row["elbo_mean"], row["elbo_std"]), gain_text(row), f"{row['head_outputs_mean']:,.0f}",
            f"{row['total_params_mean']:,.0f}", f"{row['seconds_per_epoch_mean']:.2f}",
            f"{row['active_units_mean']:.1f}", f"{row['logdet_gap_mean']:.3f}"])
    return header, rows


def params_table(runs):
    """Head outputs (formula and actual) and parameter totals per latent_dim and variant."""
    first = {}
    for run in sorted(runs, key=lambda run: (run["latent_dim"], family_order(run["family"]), run["variant"])):
        first.setdefault((run["latent_dim"], run["setting"], run["variant"]), run)
    with_setting = any(run["setting"] for run in runs)
    header = ["latent_dim"] + (["settings"] if with_setting else []) + [
        "variant", "head formula", "formula value", "head outputs", "hidden", "encoder params", "decoder params",
        "total params"]
    rows = []
    for (latent_dim, setting, variant), run in first.items():
        params = run["summary"].get("params", {})
        rows.append([str(latent_dim)] + ([setting] if with_setting else []) + [
            variant, FAMILIES[run["family"]].head_formula_text if run["family"] in FAMILIES else "?", str(params.get("head_formula")),
            str(params.get("head_outputs")), str(params.get("hidden")), f"{params.get('encoder_params', 0):,}",
            f"{params.get('decoder_params', 0):,}", f"{params.get('total_params', 0):,}"])
    return header, rows


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(header, rows, title):
    # compact (no borders, narrow gaps): the table has many columns and wraps less on ordinary terminals
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    for name in header:
        table.add_column(name, justify="left" if name in ("dataset", "settings", "variant") else "right")
    for row in rows:
        table.add_row(*row)
    return table


# ---- plots ----------------------------------------------------------------------------------------
def save_png(fig, path):
    """Render in memory, then write atomically (temporary name in the same folder, then rename)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    export.atomic_write(path, buffer.getvalue())


def plot_vs_latent_dim(groups, metric, ylabel, colours, path, log_y=False):
    """One panel per dataset, one line per variant: mean over seeds with ±1 sd error bars."""
    datasets = sorted({row["dataset"] for row in groups})
    fig = Figure(figsize=(5.5 * len(datasets), 4), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        rows = [row for row in groups if row["dataset"] == dataset]
        for name in dict.fromkeys(series(row) for row in rows):
            points = sorted((row["latent_dim"], row[f"{metric}_mean"], row[f"{metric}_std"] or 0.0)
                            for row in rows if series(row) == name)
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colours[name], label=name)
        dims = sorted({row["latent_dim"] for row in rows})
        if dims[-1] >= 4 * dims[0]:  # latent sizes are usually powers of two
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks(dims, [str(d) for d in dims])
        if log_y:
            ax.set_yscale("log")
        ax.set(title=dataset, xlabel="latent_dim", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_png(fig, path)


def validation_curve(folder):
    """(epochs, val_elbo) from a run's metrics.csv; empty when the file is missing or unreadable."""
    try:
        rows = export.read_csv(folder / export.METRICS_FILE)
    except OSError:
        return [], []
    points = []
    for row in rows:
        try:
            points.append((int(row["epoch"]), float(row["val_elbo"])))
        except (KeyError, TypeError, ValueError):
            continue
    return [p[0] for p in points], [p[1] for p in points]


def plot_validation_curves(runs, colours, path):
    """One panel per dataset x latent_dim, one colour per variant, one line per run."""
    panels = sorted({(run["dataset"], run["latent_dim"]) for run in runs})
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (dataset, latent_dim) in zip(axes, panels):
        labelled = set()
        for run in sorted((r for r in runs if (r["dataset"], r["latent_dim"]) == (dataset, latent_dim)), key=series):
            epochs, elbos = validation_curve(run["folder"])
            if not epochs:
                continue
            name = series(run)
            ax.plot(epochs, elbos, marker=".", alpha=0.8, color=colours[name],
                    label=None if name in labelled else name)
            labelled.add(name)
        ax.set(title=f"{dataset}, latent_dim {latent_dim}", xlabel="epoch", ylabel="validation ELBO (nats)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:  # grid cells left over when the panels do not fill the last row
        ax.set_visible(False)
    save_png(fig, path)


def write_plots(runs, groups, out):
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(series(row) for row in groups))}
    plot_vs_latent_dim(groups, "log_px", "test log p(x), IWAE (nats, higher is better)", colours,
                       out / "log_px_vs_latent_dim.png")
    plot_vs_latent_dim(groups, "logdet_gap", "log-det gap (nats)", colours, out / "logdet_gap_vs_latent_dim.png")
    plot_vs_latent_dim(groups, "head_outputs", "encoder head outputs", colours,
                       out / "head_outputs_vs_latent_dim.png", log_y=True)
    plot_vs_latent_dim(groups, "seconds_per_epoch", "seconds per epoch", colours,
                       out / "seconds_per_epoch_vs_latent_dim.png")
    plot_validation_curves(runs, colours, out / "val_elbo_curves.png")


# ---- report.md ------------------------------------------------------------------------------------
def report_markdown(folder, runs, unfinished, groups, split_keys, verdict_text):
    iwae = sorted({str(run["summary"].get("test", {}).get("iwae_samples")) for run in runs})
    lines = [
        "# vae-compare report",
        "",
        f"{len(runs)} finished runs below `{folder}`; {unfinished} unfinished runs ignored.",
    ]
    if split_keys:
        lines.append(f"Settings that vary across runs and split the groups: {', '.join(split_keys)}.")
    lines += [
        "",
        "## Verdict",
        "",
        verdict_text,
        "",
        "## Results",
        "",
        f"Test log p(x) is the IWAE estimate (k = {', '.join(iwae)} samples) in nats, higher is better "
        "(NLL = −log p(x)); log p(x) and ELBO are mean ± sd over seeds. The gain is the mean per-seed difference "
        "log p(x)(variant) − log p(x)(diag) over the seeds both have, at the same dataset, latent_dim and "
        "settings, with a 95% t-interval. d is latent_dim; head (encoder head outputs per image), params (total "
        "parameters), s/epoch, active (active units) and logdet gap are means over seeds.",
        "",
        markdown_table(*group_table(groups)),
        "",
        "## Parameter counts",
        "",
        "Head outputs per image: diag 2d, cholesky d + d(d+1)/2, lowrank d(k+2). Equal-budget (matched) runs "
        "widen the hidden layers, so their totals match the target family.",
        "",
        markdown_table(*params_table(runs)),
        "",
        "## Plots",
        "",
        "Error bars: ±1 sd over seeds.",
        "",
    ]
    for name, title in PLOTS.items():  # the PNGs sit next to report.md, so the file name is the relative link
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


# ---- entry points ---------------------------------------------------------------------------------
def build_report(folder: Path, out: Path | None = None, console=None) -> dict:
    """Summarize every finished run below folder into out (default: folder); returns the numbers."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    runs, unfinished = find_runs(folder)
    if not runs:
        raise UserError(f"no finished runs below {folder} (a finished run has summary.json with status complete)"
                        + (f"; {unfinished} unfinished" if unfinished else ""))
    out = folder if out is None else Path(out).expanduser()
    export.check_writable(out)
    setting_keys, family_keys = label_runs(runs)
    runs.sort(key=lambda run: (run["dataset"], run["latent_dim"], run["setting"],
                               family_order(run["family"]), run["variant"], run["seed"], run["path"]))
    groups = make_groups(runs)
    verdict_text = verdict(groups)
    varying_keys = varying([run["config"] for run in runs], config_keys(runs))
    export.write_csv(out / "summary.csv", summary_rows(runs, varying_keys))
    write_plots(runs, groups, out)
    markdown = report_markdown(folder, runs, unfinished, groups, setting_keys + family_keys, verdict_text)
    export.atomic_write(out / "report.md", markdown.encode())

    console = console or get_console()
    console.print(rich_table(*group_table(groups), title=f"{len(runs)} finished runs below {folder}"))
    console.print(verdict_text)
    console.print(f"report: {out / 'report.md'}")
    return {"runs": len(runs), "unfinished": unfinished, "groups": groups, "verdict": verdict_text, "out": str(out)}


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vae-compare report",
                                     description="Summarize every finished run below FOLDER.")
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="a run, sweep or outputs folder")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write the report (default: FOLDER)")
    options = parser.parse_args(args)
    build_report(options.folder, options.out)
