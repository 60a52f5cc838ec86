"""calibration.csv: every calibrated run's estimator biases (`vae-compare calibrate`, vae_compare/calibration.py),
and the spread of the bias between families, which must stay small for the comparison to favour no family."""

from vae_compare import export
from vae_compare.rundir import read_json

# the spread of the bias between families that the estimator must stay under (issue 24's target)
SPREAD_TARGET = 0.1


def calibration_rows(runs):
    """One row per calibrated run and proposal, in the report's run order."""
    rows = []
    for run in runs:
        result = read_json(run["folder"] / export.CALIBRATION_JSON)
        if result is None:
            continue
        for row in result["rows"]:
            rows.append({"dataset": run["dataset"], "latent_dim": run["latent_dim"], "variant": run["variant"],
                         "seed": run["seed"], "proposal": row["proposal"], "main": row["main"],
                         "images": row["images"], "iwae_samples": row["iwae_samples"], "bias": row["bias"],
                         "bias_stderr": row["bias_stderr"], "bias_median": row.get("bias_median"),
                         "bias_worst": row.get("bias_worst"), "missed_images": row.get("missed_images"),
                         "missed_nats": row.get("missed_nats"), "seconds": row["seconds"],
                         "reference": result["reference"], "log_px_reference": result["log_px_reference"],
                         "reference_check": result["check"], "check_mean": result["check_mean"],
                         "check_max": result["check_max"], "reference_seconds": result["reference_seconds"]})
    return rows


def bias_spreads(rows, statistic="bias"):
    """Per dataset x latent_dim x proposal: (largest - smallest of the variants' mean `statistic` (bias or
    bias_median), variants); rows without the statistic (calibrated before it was kept) are left out."""
    cells = {}
    for row in rows:
        if row[statistic] is not None:
            cells.setdefault((row["dataset"], row["latent_dim"], row["proposal"]), {}).setdefault(
                row["variant"], []).append(row[statistic])
    return {cell: (max(means) - min(means), len(means)) for cell, variants in cells.items()
            for means in [[sum(values) / len(values) for values in variants.values()]]}


def calibration_markdown(rows):
    """The report's section: what the biases are and whether their spread meets SPREAD_TARGET."""
    lines = ["## Calibration of log p(x)", "",
             "Bias of each proposal's IWAE estimate against the reference (quadrature at latent_dim 2, AIS above), "
             "mean ± standard error over the same test images, from `calibration.csv`:", ""]
    for row in rows:
        robust = ("" if row["bias_median"] is None else
                  f", median {row['bias_median']:+.3f}, worst {row['bias_worst']:+.2f}, "
                  f"{row['missed_images']} of {row['images']} images more than {row['missed_nats']:g} nat below")
        lines.append(f"- {row['dataset']} d {row['latent_dim']} {row['variant']} seed {row['seed']}, "
                     f"{row['proposal']}{' (main)' if row['main'] else ''}: {row['bias']:+.3f} ± "
                     f"{row['bias_stderr']:.3f} nats{robust} ({row['seconds']:.0f} s); {row['reference']}, "
                     f"{row['reference_check']} {row['check_mean']:+.3f} ({row['check_max']:.3f})")
    medians = bias_spreads(rows, "bias_median")
    lines += ["", f"Spread of the mean bias between families (target below {SPREAD_TARGET} nat), and of the median "
                  "bias, which an image whose proposal missed the posterior's main mode does not move:", ""]
    for cell, (spread, variants) in bias_spreads(rows).items():
        if variants > 1:
            dataset, latent_dim, proposal = cell
            verdict = "meets" if spread < SPREAD_TARGET else "misses"
            median = f"; median {medians[cell][0]:.3f}" if cell in medians and medians[cell][1] == variants else ""
            lines.append(f"- {dataset} d {latent_dim}, {proposal}: {spread:.3f} nats over {variants} families "
                         f"({verdict} the target){median}")
    return "\n".join(lines) + "\n"
