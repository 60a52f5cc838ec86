"""`vae-compare report FOLDER`: summarize every finished run below FOLDER.

Writes summary.csv (one row per run), report.md (verdicts, groups, gains over diag, parameter counts, plots),
verdict.csv (one row per comparison with diag), the PNG plots of plots.PLOTS and one posterior picture per
dataset x latent_dim, the inference gaps of runs that have them (gaps.csv, report/gaps.py), and prints the
group and verdict tables (their main columns, for a 100-column terminal).

A group is dataset x latent_dim x settings x variant. The variant is the posterior family (with its
rank for low-rank families, its own settings when they vary, and the family it was widened to match for
equal-budget runs); the settings are the other config values that vary across the runs (learning
rate, epochs, ...). Each variant is compared with diag at the same dataset, latent_dim and settings
(stats.py): by default in one two-way model (variant + seed) per cell with pooled variance and Dunnett's
simultaneous intervals; with --paired by per-seed differences (runs with the same seed see the same data
order and binarization). Each comparison gets a verdict: better, worse, equivalent (TOST at ±delta) or
inconclusive (verdict.py).
"""

import argparse
import math
from pathlib import Path

from rich import get_console

from vae_compare import UserError, export
from vae_compare.report import verdict
from vae_compare.report.calibration import calibration_markdown, calibration_rows
from vae_compare.report.collect import config_keys, family_order, label_runs, varying
from vae_compare.report.gaps import gap_groups, gaps_markdown, write_gaps_plot
from vae_compare.report.plots import plot_colours, posterior_markdown, write_plots
from vae_compare.report.inference import ALPHA, DEFAULT_DELTA
from vae_compare.report.render import console_table, diverged_line, markdown_table, report_markdown, summary_rows
from vae_compare.report.select import select_settings, selection_table
from vae_compare.report.stats import ANALYSIS_NAMES, COMPARISON_METRIC, METRIC_NAMES, make_groups
from vae_compare.rundir import find_diverged, find_runs


def build_report(folder: Path, out: Path | None = None, console=None, select=False, tuned=False, paired=False,
                 delta=DEFAULT_DELTA, metric=COMPARISON_METRIC, alpha=ALPHA, seeds=None, latent_dims=None) -> dict:
    """Summarize every finished run below folder into out (default: folder); returns the numbers. With
    select, only choose each family's setting by validation ELBO (selected.csv, selection.md). With tuned,
    compare each family at its own setting (label_runs). paired: the per-seed paired analysis instead of the
    two-way model; delta: the equivalence margin in nats; metric: what the gains compare (METRIC_NAMES: test
    ELBO for runs that share a frozen decoder, whose log p(x) is the decoder's and the same for every family);
    alpha: the family-wise error rate of each cell's intervals and the level of each TOST (a sequential design's
    share at one look); seeds and latent_dims: only the runs of these seeds and latent sizes (a sequential design's
    look, which each latent size reaches when its runs have finished), None: every run."""
    if not 0 < delta < math.inf:
        raise UserError(f"--delta must be a positive number of nats, not {delta}")
    if not 0 < alpha < 0.5:
        raise UserError(f"--alpha must be between 0 and 0.5, not {alpha}")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; give the run or sweep folder that holds it")
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    runs, unfinished = find_runs(folder)
    only = {key: values for key, values in (("seed", seeds), ("latent_dim", latent_dims)) if values is not None}
    runs = [run for run in runs if all(run[key] in values for key, values in only.items())]
    diverged = find_diverged(folder)
    if not runs:
        raise UserError(f"no finished runs below {folder}"
                        + "".join(f" at {key} {sorted(values)}" for key, values in only.items())
                        + " (a finished run has summary.json with status complete)"
                        + (f"; {unfinished} unfinished" if unfinished else ""))
    out = folder if out is None else Path(out).expanduser()
    export.check_writable(out)
    setting_keys, family_keys = label_runs(runs, tuned)
    runs.sort(key=lambda run: (run["dataset"], run["latent_dim"], run["setting"],
                               family_order(run["family"]), run["variant"], run["seed"], run["path"]))
    varying_keys = varying([run["config"] for run in runs], config_keys(runs))
    console = console or get_console()
    if select:
        rows = select_settings(runs, setting_keys + family_keys)
        export.write_csv(out / "summary.csv", summary_rows(runs, varying_keys))
        export.write_csv(out / "selected.csv", rows)
        columns = ["dataset", "latent_dim", "family", "selected", "seeds", "val_elbo", "runner_up", "runner_up_val_elbo",
                   "overrides"]
        text = ("# Settings selected by validation ELBO\n\nMean best validation ELBO over seeds; the test set was not "
                "used. Confirm each selection on test over seeds with its overrides.\n\n"
                + markdown_table(columns, [[f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
                                           for row in rows]) + "\n")
        export.atomic_write(out / "selection.md", text.encode())
        console.print(selection_table(rows))
        console.print(f"selection: {out / 'selection.md'}")
        return {"runs": len(runs), "unfinished": unfinished, "selected": rows, "out": str(out)}
    groups, cells = make_groups(runs, paired=paired, delta=delta, metric=metric, alpha=alpha)
    export.write_csv(out / "summary.csv", summary_rows(runs, varying_keys))
    posterior_plots = write_plots(runs, groups, out)
    markdown = report_markdown(folder, runs, unfinished, groups, setting_keys + family_keys,
                               verdict.markdown(groups, cells), tuned, diverged)
    markdown += posterior_markdown(posterior_plots)
    gap_rows = gap_groups(runs)
    if gap_rows:
        export.write_csv(out / "gaps.csv", gap_rows)
        write_gaps_plot(gap_rows, plot_colours(groups), out)
        markdown += gaps_markdown(gap_rows)
    calibration = calibration_rows(runs)
    if calibration:
        export.write_csv(out / export.CALIBRATION_CSV, calibration)
        markdown += calibration_markdown(calibration)
    export.atomic_write(out / "report.md", markdown.encode())
    verdict_rows = verdict.write_verdict_csv(groups, cells, out / verdict.VERDICT_FILE)

    console.print(console_table(groups, title=f"{len(runs)} finished runs below {folder}"))
    if verdict_rows:
        title = f"verdicts: gain over diag, {ANALYSIS_NAMES[cells[0]['analysis']]}"
        console.print(verdict.console_table(groups, title=title))
    # variant names hold "[...]", which is not markup
    console.print(verdict.words_paragraph(cells[0]["metric"], delta, cells[0]["analysis"], alpha).replace("**", ""),
                  markup=False)
    sentences = verdict.cell_sentences(groups, cells)
    console.print(sentences, markup=False)
    if diverged:
        console.print(diverged_line(diverged), markup=False)
    console.print(f"report: {out / 'report.md'}")
    return {"runs": len(runs), "unfinished": unfinished, "diverged": diverged, "groups": groups, "cells": cells, "verdict": sentences,
            "verdicts": verdict_rows, "out": str(out), "gaps": gap_rows, "calibration": calibration}


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vae-compare report",
                                     description="Summarize every finished run below FOLDER.")
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="a run, sweep or outputs folder")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write the report (default: FOLDER)")
    parser.add_argument("--select", action="store_true",
                        help="tuning: pick each family's setting by mean validation ELBO (selected.csv, selection.md)")
    parser.add_argument("--tuned", action="store_true",
                        help="each family ran at its own selected setting: settings that vary label the variants "
                             "instead of splitting the comparison")
    parser.add_argument("--paired", action="store_true",
                        help="compare by per-seed differences from diag (Bonferroni t-intervals) instead of the "
                             "two-way model (variant + seed) with pooled variance and Dunnett's intervals")
    parser.add_argument("--delta", type=float, default=DEFAULT_DELTA, metavar="NATS",
                        help=f"equivalence margin for TOST: a gain within ±NATS of diag's counts as equivalent "
                             f"(default {DEFAULT_DELTA:g})")
    parser.add_argument("--metric", choices=sorted(METRIC_NAMES), default=COMPARISON_METRIC,
                        help=f"what the gains and verdicts compare (default {COMPARISON_METRIC}); elbo for encoders "
                             f"trained on one frozen decoder (train.decoder_from), whose log p(x) is the decoder's")
    parser.add_argument("--alpha", type=float, default=ALPHA,
                        help=f"family-wise error rate of each latent size's intervals, and the level of each TOST "
                             f"(default {ALPHA:g}; a sequential design's share at one look)")
    parser.add_argument("--seeds", type=number_list, metavar="S,S,...",
                        help="only the runs of these seeds (one look of a sequential design); default: every run")
    parser.add_argument("--latent-dims", type=number_list, metavar="D,D,...",
                        help="only the runs of these latent sizes (the sizes a look has reached); default: every run")
    options = parser.parse_args(args)
    build_report(options.folder, options.out, select=options.select, tuned=options.tuned, paired=options.paired,
                 delta=options.delta, metric=options.metric, alpha=options.alpha,
                 seeds=options.seeds, latent_dims=options.latent_dims)


def number_list(text):
    try:
        return {int(number) for number in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"whole numbers separated by commas, not {text!r}") from None
