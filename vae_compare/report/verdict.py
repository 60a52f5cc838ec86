"""The report's verdicts: the paragraph that explains the four words, one sentence per cell, the verdict
table (report.md and the terminal) and verdict.csv."""

from collections import defaultdict

from rich.text import Text

from vae_compare import export
from vae_compare.report.inference import MAX_SEEDS, POWER, confidence
from vae_compare.report.render import interval, markdown_table, rich_table
from vae_compare.report.stats import ANALYSIS_NAMES, METRIC_NAMES, PAIRED, cell

VERDICT_FILE = "verdict.csv"
# verdict.csv: these columns first, in this order (issue 24), then the ones after
VERDICT_COLUMNS = ("dataset", "latent_dim", "variant", "n", "gain", "ci_low", "ci_high", "tost_delta_min", "mde",
                   "verdict")
EXTRA_COLUMNS = ("settings", "metric", "analysis", "n_diag", "se", "df", "critical", "alpha", "delta", "tost_p",
                 "seeds_needed", "residual_sd", "variance_p")


def words_paragraph(metric, delta, analysis, alpha):
    """The four verdict words, the numbers beside them, and how the intervals are made, in one paragraph."""
    name = METRIC_NAMES.get(metric, metric)
    level = confidence(alpha)
    if analysis == PAIRED:
        how = (f"Paired analysis (report --paired): each variant's per-seed differences from diag on the seeds both "
               f"have, a t-interval on n − 1 degrees of freedom, Bonferroni-corrected over the comparisons in its "
               f"latent size; the critical value c is t(1 − {alpha:g}/2m)")
    else:
        how = (f"Within each dataset and latent size, one two-way model (variant + seed, additive, least squares on "
               f"the runs there) pools the residual variance of all variants; the intervals are Dunnett's "
               f"simultaneous {level} intervals against diag, whose critical value c comes from the multivariate "
               f"t with the model's residual degrees of freedom and the correlation of the gains' estimates")
    return (f"**Verdicts.** The gain is {name} of the variant minus diag's (nats, higher is better). **better**: the "
            f"simultaneous {level} interval of the gain lies above 0; **worse**: it lies below 0; **equivalent**: "
            f"the interval contains 0 and TOST (two one-sided t-tests at {alpha:g}; a joint claim that all are "
            f"equivalent needs no correction, by the intersection-union principle) puts the gain within ±δ = "
            f"{delta:g} nats (report --delta); **inconclusive**: neither, so these seeds cannot tell, and the row "
            f"gives the seeds per variant TOST at ±δ would need for {POWER:.0%} power if the true gain were 0 (from "
            f"the observed sd). δmin is the smallest margin these data would call equivalent (|gain| + "
            f"t(1 − {alpha:g}) SE); MDE is the true gain these seeds would detect with {POWER:.0%} power, "
            f"(c + t({POWER:g})) SE. {how}.")


def needed_text(row):
    if row["verdict"] != "inconclusive":
        return ""
    if row["seeds_needed"] is None:
        return "?" if row["gain_se"] is None else f">{MAX_SEEDS:,}"
    return str(row["seeds_needed"])


def comparisons(groups):
    return [row for row in groups if row["baseline"] is not None and row["variant"] != row["baseline"]]


def cell_sentences(groups, cells):
    """One sentence per dataset x latent_dim x settings cell: the analysis and its checks, then each variant's
    verdict with its gain and interval, joined into one paragraph."""
    rows = defaultdict(list)
    for row in comparisons(groups):
        rows[cell(row)].append(row)
    sentences = []
    for summary in cells:
        key = summary["dataset"], summary["latent_dim"], summary["setting"]
        where = f"{key[0]}, latent_dim {key[1]}" + (f", {key[2]}" if key[2] else "")
        if summary["baseline"] is None:
            sentences.append(f"{where}: there is no diag run to compare with.")
            continue
        if not rows[key]:
            sentences.append(f"{where}: only diag was run.")
            continue
        if summary["analysis"] == PAIRED:
            model = "paired by seed"
        else:
            sd = "no residual sd" if summary["residual_sd"] is None else f"residual sd {summary['residual_sd']:.2f} nats"
            model = f"two-way model on {summary['df']} residual df, {sd}, {summary['variance_check']}"
        parts = []
        for row in rows[key]:
            if row["gain"] is None:
                parts.append(f"{row['variant']} inconclusive (no gain: it shares no seed with diag)")
                continue
            detail = f"{row['gain']:+.2f} nats, n={row['gain_n']}"
            detail += "" if row["gain_low"] is None else f", {interval(row['gain_low'], row['gain_high'])}"
            need = needed_text(row)
            detail += f", {need} seeds per variant for ±{row['delta']:g}" if need else ""
            parts.append(f"{row['variant']} {row['verdict']} ({detail})")
            # a richer posterior can tighten the bound without improving the model itself
            if row["elbo_gain_low"] is not None and row["elbo_gain_low"] > 0 and row["verdict"] != "better":
                parts[-1] += (f", though better in ELBO ({row['elbo_gain']:+.2f} nats, "
                              f"{interval(row['elbo_gain_low'], row['elbo_gain_high'])})")
        sentences.append(f"{where} ({model}): " + "; ".join(parts) + ".")
    return " ".join(sentences)


def table(groups):
    """Header and rows of the verdict table, shared by report.md and the terminal; a line of its own names the
    settings above their rows when they vary."""
    rows_in = comparisons(groups)
    datasets = len({row["dataset"] for row in rows_in}) > 1
    header = (["dataset"] if datasets else []) + ["d", "variant", "n", "gain",
                                                  f"{confidence(rows_in[0]['alpha'])} sim. CI" if rows_in else "sim. CI", "δmin", "MDE",
                                                  "verdict", "seeds"]
    rows, setting = [], ""
    for row in rows_in:
        lead = ([row["dataset"]] if datasets else []) + [str(row["latent_dim"])]
        if row["setting"] and row["setting"] != setting:
            rows.append(lead + [row["setting"] + ":"] + [""] * (len(header) - len(lead) - 1))
        setting = row["setting"]
        known = row["gain_low"] is not None
        rows.append(lead + [
            row["variant"], str(row["gain_n"]), "" if row["gain"] is None else f"{row['gain']:+.2f}",
            interval(row["gain_low"], row["gain_high"]) if known else "",
            f"{row['tost_delta_min']:.2f}" if known else "", f"{row['mde']:.2f}" if known else "", row["verdict"],
            needed_text(row)])
    return header, rows


TABLE_CAPTION = ("n: seeds of the variant · gain: over diag (nats) · sim. CI: simultaneous interval · δmin: "
                 "smallest equivalence margin supported · MDE: effect detectable with 80% power · seeds: per "
                 "variant for TOST at ±δ (inconclusive rows)")


def console_table(groups, title):
    return rich_table(*table(groups), title, caption=Text(TABLE_CAPTION))


def markdown(groups, cells):
    """report.md's verdict section: the words, the sentences per cell, the table."""
    first = cells[0]
    return "\n".join([
        "## Verdict",
        "",
        words_paragraph(first["metric"], first["delta"], first["analysis"], first["alpha"]),
        "",
        f"Analysis: {ANALYSIS_NAMES[first['analysis']]}. " + cell_sentences(groups, cells),
        "",
        markdown_table(*table(groups)) if comparisons(groups) else "No variant was compared with diag.",
        "",
    ])


def write_verdict_csv(groups, cells, path):
    """verdict.csv: one row per comparison (a header alone when there is none)."""
    summaries = {(s["dataset"], s["latent_dim"], s["setting"]): s for s in cells}
    diag_seeds = {cell(row): row["n"] for row in groups if row["variant"] == row["baseline"]}
    rows = []
    for row in comparisons(groups):
        summary = summaries[cell(row)]
        values = {
            "dataset": row["dataset"], "latent_dim": row["latent_dim"], "variant": row["variant"], "n": row["gain_n"],
            "gain": row["gain"], "ci_low": row["gain_low"], "ci_high": row["gain_high"],
            "tost_delta_min": row["tost_delta_min"], "mde": row["mde"], "verdict": row["verdict"],
            "settings": row["setting"], "metric": row["metric"], "analysis": row["analysis"],
            "n_diag": diag_seeds[cell(row)], "se": row["gain_se"], "df": row["gain_df"],
            "critical": row["gain_critical"], "alpha": row["alpha"], "delta": row["delta"], "tost_p": row["tost_p"],
            "seeds_needed": row["seeds_needed"], "residual_sd": summary["residual_sd"],
            "variance_p": summary["variance_p"]}
        rows.append({column: values[column] for column in VERDICT_COLUMNS + EXTRA_COLUMNS})
    text = export.csv_text(rows) if rows else ",".join(VERDICT_COLUMNS + EXTRA_COLUMNS) + "\n"
    export.atomic_write(path, text.encode())
    return rows
