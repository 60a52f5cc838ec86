"""The two-way additive model of one cell (dataset x latent_dim x settings), fitted by least squares:

    y[variant, seed] = mu + a[variant] + b[seed] + e,   e ~ N(0, sigma^2), one sigma for every variant,

on the (variant, seed) values that are there. A seed missing for a variant simply has no row; the fit
stays least squares on the rest (the missing-plot analysis of Yates 1933, which fills a missing cell with
the value that has zero residual and takes one degree of freedom off the error). The gain of a variant is
a[variant] - a[baseline]; it is estimable only when the variant is tied to the baseline through shared
seeds (directly or through other variants), and is left out otherwise.
"""

from dataclasses import dataclass

import numpy as np

# |c'X^+X - c'| below this: the gain c'beta is estimable (the check is exact up to rounding)
ESTIMABLE_TOLERANCE = 1e-8


@dataclass
class AdditiveFit:
    variants: list            # the compared variants, baseline excluded, in the table's order
    gains: np.ndarray         # a[variant] - a[baseline]; NaN where not estimable
    estimable: np.ndarray     # bool per variant
    unscaled_cov: np.ndarray  # Cov(gains) / sigma^2 between the variants (rows and columns of non-estimable ones: NaN)
    df: int                   # residual degrees of freedom: observations - rank of the design
    residual_sd: float | None  # pooled sigma-hat = sqrt(RSS / df); None when df = 0
    residuals: dict           # variant (baseline included) -> its residuals, one per seed it has
    counts: dict              # variant (baseline included) -> number of seeds it has


def fit_additive(table: dict, baseline) -> AdditiveFit:
    """Fit the additive model to table {variant: {seed: value}} (the baseline is one of its variants)."""
    others = [variant for variant in table if variant != baseline]
    seeds = sorted({seed for by_seed in table.values() for seed in by_seed})
    cells = [(variant, seed, value) for variant, by_seed in table.items() for seed, value in sorted(by_seed.items())]
    # columns: intercept, one indicator per non-baseline variant (treatment coding: a[baseline] = 0), one per
    # seed after the first (none when no variant has a value, as in a tuning sweep that never read the test set)
    design = np.zeros((len(cells), 1 + len(others) + max(len(seeds) - 1, 0)))
    design[:, 0] = 1.0
    for i, (variant, seed, _) in enumerate(cells):
        if variant != baseline:
            design[i, 1 + others.index(variant)] = 1.0
        if seeds.index(seed):
            design[i, len(others) + seeds.index(seed)] = 1.0
    y = np.array([value for _, _, value in cells])
    pseudo_inverse = np.linalg.pinv(design)
    beta = pseudo_inverse @ y
    residual = y - design @ beta
    df = len(cells) - int(np.linalg.matrix_rank(design))
    contrasts = np.zeros((len(others), design.shape[1]))
    contrasts[np.arange(len(others)), 1 + np.arange(len(others))] = 1.0
    estimable = np.all(np.abs(contrasts @ pseudo_inverse @ design - contrasts) < ESTIMABLE_TOLERANCE, axis=1)
    gains = np.where(estimable, contrasts @ beta, np.nan)
    cov = contrasts @ pseudo_inverse @ pseudo_inverse.T @ contrasts.T  # (X'X)^+ = X^+ X^+'
    cov[~estimable, :] = np.nan
    cov[:, ~estimable] = np.nan
    residuals = {variant: [] for variant in table}
    for (variant, _, _), value in zip(cells, residual):
        residuals[variant].append(float(value))
    residual_sd = float(np.sqrt(residual @ residual / df)) if df > 0 else None
    return AdditiveFit(others, gains, estimable, cov, df, residual_sd, residuals,
                       {variant: len(by_seed) for variant, by_seed in table.items()})
