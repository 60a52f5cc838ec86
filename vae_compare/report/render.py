"""The report's words and tables: the verdict, summary.csv rows, the group and parameter tables as
markdown and as rich tables, and report.md."""

from collections import defaultdict

from rich import box
from rich.table import Table
from rich.text import Text

from vae_compare.posteriors import FAMILIES
from vae_compare.report.collect import family_order
from vae_compare.report.plots import PLOTS
from vae_compare.report.stats import cell

PARAM_COLUMNS = ("head_outputs", "head_formula", "encoder_params", "decoder_params", "total_params", "hidden")


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
