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
                         "bias_stderr": row["bias_stderr"], "seconds": row["seconds"],
                         "reference": result["reference"], "log_px_reference": result["log_px_reference"],
                         "reference_check": result["check"], "check_mean": result["check_mean"],
                         "check_max": result["check_max"], "reference_seconds": result["reference_seconds"]})
    return rows


def bias_spreads(rows):
    """Per dataset x latent_dim x proposal: (largest - smallest mean bias over the variants, variants)."""
    cells = {}
    for row in rows:
        cells.setdefault((row["dataset"], row["latent_dim"], row["proposal"]), {}).setdefault(
            row["variant"], []).append(row["bias"])
    return {cell: (max(means) - min(means), len(means)) for cell, variants in cells.items()
            for means in [[sum(values) / len(values) for values in variants.values()]]}


def calibration_markdown(rows):
    """The report's section: what the biases are and whether their spread meets SPREAD_TARGET."""
    lines = ["## Calibration of log p(x)", "",
             "Bias of each proposal's IWAE estimate against the reference (quadrature at latent_dim 2, AIS above), "
             "mean ± standard error over the same test images, from `calibration.csv`:", ""]
    for row in rows:
        lines.append(f"- {row['dataset']} d {row['latent_dim']} {row['variant']} seed {row['seed']}, "
                     f"{row['proposal']}{' (main)' if row['main'] else ''}: {row['bias']:+.3f} ± "
                     f"{row['bias_stderr']:.3f} nats ({row['seconds']:.0f} s); {row['reference']}, "
                     f"{row['reference_check']} {row['check_mean']:+.3f} ({row['check_max']:.3f})")
    lines += ["", f"Spread of the mean bias between families (target below {SPREAD_TARGET} nat):", ""]
    for (dataset, latent_dim, proposal), (spread, variants) in bias_spreads(rows).items():
        if variants > 1:
            verdict = "meets" if spread < SPREAD_TARGET else "misses"
            lines.append(f"- {dataset} d {latent_dim}, {proposal}: {spread:.3f} nats over {variants} families "
                         f"({verdict} the target)")
    return "\n".join(lines) + "\n"
