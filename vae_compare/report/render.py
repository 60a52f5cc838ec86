"""The report's tables and report.md: summary.csv rows, the group and parameter tables as markdown and as
rich tables (the verdicts have their own module, verdict.py)."""

from rich import box
from rich.table import Table
from rich.text import Text

from vae_compare.posteriors import FAMILIES
from vae_compare.report.collect import family_order
from vae_compare.report.plots import PLOTS
from vae_compare.report.inference import confidence
from vae_compare.report.stats import ANALYSIS_NAMES, METRIC_NAMES

PARAM_COLUMNS = ("head_outputs", "head_formula", "encoder_params", "decoder_params", "total_params", "hidden")


def interval(low, high):
    return f"[{low:+.2f}, {high:+.2f}]"


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
    if row["gain"] is None:
        return "no shared seed"
    if row["gain_low"] is None:
        return f"{row['gain']:+.2f} (n={row['gain_n']})"
    return f"{row['gain']:+.2f} {interval(row['gain_low'], row['gain_high'])}"


def group_table(groups):
    """Header and rows of the group table, shared by report.md and the console."""
    with_setting = any(row["setting"] for row in groups)
    header = ["dataset", "d"] + (["settings"] if with_setting else []) + [
        "variant", "n", "log p(x)", "ELBO", f"gain vs diag [{confidence(groups[0]['alpha'])} CI]", "head", "params", "s/epoch", "active",
        "active dir.", "logdet gap"]
    rows = []
    for row in groups:
        rows.append([row["dataset"], str(row["latent_dim"])] + ([row["setting"]] if with_setting else []) + [
            row["variant"], str(row["n"]), plus_minus(row["log_px_mean"], row["log_px_std"]),
            plus_minus(row["elbo_mean"], row["elbo_std"]), gain_text(row), f"{row['head_outputs_mean']:,.0f}",
            f"{row['total_params_mean']:,.0f}", f"{row['seconds_per_epoch_mean']:.2f}",
            f"{row['active_units_mean']:.1f}", f"{row['active_directions_mean']:.1f}", f"{row['logdet_gap_mean']:.3f}"])
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


TEXT_COLUMNS = ("dataset", "settings", "variant")
# The console's group table: the columns that answer the question, short enough for a 100-column terminal;
# report.md keeps every column.
CONSOLE_CAPTION = ("d: latent_dim · n: seeds · log p(x): test IWAE estimate, mean ± sd over seeds (nats) · "
                   "gain vs diag: gain in log p(x) [simultaneous interval], verdicts below · ELBO: test, mean · "
                   "gap: log-det gap · s/ep: seconds per epoch. report.md also has head outputs, parameters and active "
                   "units.")


def rich_table(header, rows, title, caption=None):
    """Compact (no borders, narrow gaps). Text cells are cut with an ellipsis rather than wrapped when the
    terminal is too narrow, so every row stays one line; numbers are never cut."""
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
                  pad_edge=False)
    for name in header:
        text = name in TEXT_COLUMNS
        table.add_column(name, justify="left" if text else "right", no_wrap=not text)
    for row in rows:
        table.add_row(*(Text(cell, no_wrap=True, overflow="ellipsis") if name in TEXT_COLUMNS else cell
                        for name, cell in zip(header, row)))
    return table


def console_table(groups, title):
    """The group table for the terminal: dataset only when there are several, no head outputs, parameters
    or active units, the ELBO without its sd; the abbreviations explained in the caption. Settings that
    vary get a line of their own above their rows instead of a column, which would leave too little room
    for the variant names."""
    datasets = len({row["dataset"] for row in groups}) > 1
    header = (["dataset"] if datasets else []) + ["d", "variant", "n", "log p(x)", "gain vs diag", "ELBO", "gap",
                                                  "s/ep"]
    rows, setting = [], None
    for row in groups:
        lead = ([row["dataset"]] if datasets else []) + [str(row["latent_dim"])]
        if row["setting"] and row["setting"] != setting:
            rows.append(lead + [row["setting"] + ":"] + [""] * (len(header) - len(lead) - 1))
        setting = row["setting"]
        rows.append(lead + [
            row["variant"], str(row["n"]), plus_minus(row["log_px_mean"], row["log_px_std"]), gain_text(row),
            f"{row['elbo_mean']:.2f}", f"{row['logdet_gap_mean']:.2f}", f"{row['seconds_per_epoch_mean']:.2f}"])
    if not datasets:
        title += f" ({groups[0]['dataset']})"
    return rich_table(header, rows, title, caption=Text(CONSOLE_CAPTION))  # Text: "[interval]" is no markup


def diverged_line(diverged):
    """The one line saying which diverged runs (rundir.find_diverged) the report leaves out, or ""."""
    if not diverged:
        return ""
    return (f"{len(diverged)} diverged run(s) left out (status diverged in summary.json): "
            + "; ".join(f"{path} ({reason.split(';')[0]})" for path, reason in diverged))


def report_markdown(folder, runs, unfinished, groups, split_keys, verdict_section, tuned=False, diverged=()):
    """report.md up to its plots; verdict_section is verdict.markdown's."""
    iwae = sorted({str(run["summary"].get("test", {}).get("iwae_samples")) for run in runs})
    proposals = sorted({str(run["config"]["eval.log_px_proposal"]) for run in runs})
    metric = METRIC_NAMES.get(groups[0]["metric"], groups[0]["metric"])
    lines = [
        "# vae-compare report",
        "",
        f"{len(runs)} finished runs below `{folder}`; {unfinished} unfinished runs ignored.",
    ]
    if diverged:
        lines += ["", diverged_line(diverged)]
    if split_keys and tuned:
        lines.append(f"Tuned comparison: each family ran at its own selected setting; the settings that vary "
                     f"({', '.join(split_keys)}) are part of each variant's name, and every variant is compared "
                     "with diag at diag's own setting.")
    elif split_keys:
        lines.append(f"Settings that vary across runs and split the groups: {', '.join(split_keys)}.")
    frozen = [run for run in runs if run["config"].get("train.decoder_from") is not None]
    if frozen:
        sources = sorted({run["config"]["train.decoder_from"] for run in frozen})
        lines += ["", f"**Frozen decoder**: {len(frozen)} of the runs trained only their encoder, against the decoder "
                      f"of {', '.join(f'`{source}`' for source in sources)} (train.decoder_from)."]
    grey = sum(run["config"].get("data.binarize") == "none" for run in runs)
    if grey:
        lines += ["", f"**{grey} runs use data.binarize=none**: their log p(x) and ELBO are Bernoulli log-likelihoods "
                      "of grey levels, not normalised likelihoods; compare them only with each other."]
    lines += [
        "",
        verdict_section,
        "## Results",
        "",
        f"Test log p(x) is the IWAE estimate (k = {', '.join(iwae)} samples; proposal: {', '.join(proposals)}, "
        "eval.log_px_proposal) in nats, higher is better "
        "(NLL = −log p(x)); log p(x) and ELBO are mean ± sd over seeds. The gain is "
        f"{metric}(variant) − {metric}(diag) at the same dataset, latent_dim and "
        f"settings with its simultaneous {confidence(groups[0]['alpha'])} interval ({ANALYSIS_NAMES[groups[0]['analysis']]}; see Verdict). d is "
        "latent_dim; head (encoder head outputs per image), params "
        "(total parameters), s/epoch, active (coordinates whose posterior mean varies, Burda et al.), active dir. "
        "(the rotation-invariant count: eigenvalues of Cov_x(E[z|x]) above the threshold) and logdet gap are means "
        "over seeds.",
        "",
        markdown_table(*group_table(groups)),
        "",
        "## Parameter counts",
        "",
        "Head outputs per image: " + ", ".join(f"{name} {family.head_formula_text}" for name, family in FAMILIES.items())
        + ". Equal-budget (matched) runs widen the encoder's hidden layers (the decoder stays as it is), so their "
        "totals match the target family.",
        "",
        markdown_table(*params_table(runs)),
        "",
        "## Plots",
        "",
        "Error bars: ±1 sd over seeds.",
        "",
    ]
    for name, title, _ in PLOTS:  # the PNGs sit next to report.md, so the file name is the relative link
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)
