"""The report's words and tables: the verdict, summary.csv rows, the group and parameter tables as
markdown and as rich tables, and report.md."""

from collections import defaultdict

from rich import box
from rich.table import Table
from rich.text import Text

from vae_compare.posteriors import FAMILIES
from vae_compare.report.collect import family_order
from vae_compare.report.plots import PLOTS
from vae_compare.report.stats import CORRECTION, cell

PARAM_COLUMNS = ("head_outputs", "head_formula", "encoder_params", "decoder_params", "total_params", "hidden")


def interval(low, high):
    return f"[{low:+.2f}, {high:+.2f}]"


def significance(row):
    """What the seeds say about one variant's gain over diag, with the smallest effect they could detect."""
    if row["gain_n"] == 0:
        return "no seed shared with diag"
    if row["gain_n"] == 1:
        return "n=1 paired seed: no interval, no conclusion"
    low, high = row["gain_low"], row["gain_high"]
    where = f"{interval(low, high)}, {row['gain_n']} paired seeds, {CORRECTION} over {row['comparisons']}"
    if low > 0 or high < 0:
        return f"95% CI {where}: distinguishable from diag"
    bound = max(abs(low), abs(high))
    return f"95% CI {where}: not distinguishable from diag; no difference larger than ±{bound:.2f} nats at 95%"


def verdict(groups):
    """One sentence per dataset x latent_dim x settings cell, joined into one paragraph. A variant is named
    better or worse than diag only when its corrected interval excludes zero, never by its mean alone."""
    cells = defaultdict(list)
    for row in groups:
        cells[cell(row)].append(row)
    sentences = []
    for (dataset, latent_dim, setting), rows in cells.items():
        where = f"{dataset}, latent_dim {latent_dim}" + (f", {setting}" if setting else "")
        seeds = sorted({row["n"] for row in rows})
        n_text = f"n={seeds[0]}" if len(seeds) == 1 else f"n={seeds[0]}–{seeds[-1]}"
        others = [row for row in rows if row["baseline"] is not None and row["variant"] != row["baseline"]]
        if rows[0]["baseline"] is None:
            sentences.append(f"{where} ({n_text} seeds per variant): there is no diag run to compare with.")
            continue
        better = [row for row in others if row["gain_low"] is not None and row["gain_low"] > 0]
        worse = [row for row in others if row["gain_high"] is not None and row["gain_high"] < 0]
        unclear = [row for row in others if row not in better and row not in worse]
        parts = [f"{row['variant']} beats diag in test log p(x) by {row['gain']:+.2f} nats ({significance(row)})"
                 for row in better]
        parts += [f"{row['variant']} is worse than diag by {row['gain']:+.2f} nats ({significance(row)})"
                  for row in worse]
        parts += [f"{row['variant']} {'at ' + format(row['gain'], '+.2f') + ' nats ' if row['gain'] is not None else ''}"
                  f"({significance(row)})" for row in unclear]
        sentence = f"{where} ({n_text} seeds per variant): " + ("; ".join(parts) if parts else "only diag was run")
        # a richer posterior can tighten the bound without improving the model itself
        for row in others:
            elbo_better = row["elbo_gain_low"] is not None and row["elbo_gain_low"] > 0
            log_px_not = row["gain_high"] is not None and row["gain_low"] <= 0
            if elbo_better and log_px_not:
                sentence += (f"; {row['variant']} beats diag in ELBO ({row['elbo_gain']:+.2f} nats, 95% CI "
                             f"{interval(row['elbo_gain_low'], row['elbo_gain_high'])}) but not in log p(x) "
                             f"({row['gain']:+.2f} nats, {interval(row['gain_low'], row['gain_high'])})")
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
    return f"{row['gain']:+.2f} {interval(row['gain_low'], row['gain_high'])}"


def group_table(groups):
    """Header and rows of the group table, shared by report.md and the console."""
    with_setting = any(row["setting"] for row in groups)
    header = ["dataset", "d"] + (["settings"] if with_setting else []) + [
        "variant", "n", "log p(x)", "ELBO", "gain vs diag [95% CI]", "head", "params", "s/epoch", "active",
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
                   "gain vs diag: mean paired gain in log p(x) [interval] · ELBO: test, mean · gap: log-det gap · "
                   "s/ep: seconds per epoch. report.md also has head outputs, parameters and active units.")


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


def report_markdown(folder, runs, unfinished, groups, split_keys, verdict_text, tuned=False):
    iwae = sorted({str(run["summary"].get("test", {}).get("iwae_samples")) for run in runs})
    lines = [
        "# vae-compare report",
        "",
        f"{len(runs)} finished runs below `{folder}`; {unfinished} unfinished runs ignored.",
    ]
    if split_keys and tuned:
        lines.append(f"Tuned comparison: each family ran at its own selected setting; the settings that vary "
                     f"({', '.join(split_keys)}) are part of each variant's name, and every variant is compared "
                     "with diag at diag's own setting.")
    elif split_keys:
        lines.append(f"Settings that vary across runs and split the groups: {', '.join(split_keys)}.")
    grey = sum(run["config"].get("data.binarize") == "none" for run in runs)
    if grey:
        lines += ["", f"**{grey} runs use data.binarize=none**: their log p(x) and ELBO are Bernoulli log-likelihoods "
                      "of grey levels, not normalised likelihoods; compare them only with each other."]
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
        f"settings, with a 95% t-interval {CORRECTION}-corrected for the number of variants compared with diag at "
        "that latent_dim and settings (so a cell's intervals hold together at 95%); a half-width is the smallest "
        "difference those seeds can tell from zero. d is latent_dim; head (encoder head outputs per image), params "
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
