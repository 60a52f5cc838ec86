"""Inference on gains over a baseline: Dunnett's simultaneous intervals, TOST equivalence, the minimum
detectable effect, the seeds an equivalence claim would need, and the verdict word. Numbers in, numbers out;
scipy.stats gives every distribution."""

import functools
import math

import numpy as np
from scipy import optimize, stats

# Family-wise error rate of one cell's intervals, and the level of each TOST (report --alpha: a sequential
# design spends a share of it at each look).
ALPHA = 0.05
# Power for the minimum detectable effect and for the seeds an equivalence claim needs.
POWER = 0.80
# The default equivalence margin (report --delta), in nats.
DEFAULT_DELTA = 1.0
# Quasi-Monte Carlo points of the multivariate t integral, per comparison. Measured here: with 10,000, three
# QMC seeds put the critical value for 2 comparisons at df 15 within 7e-5 of the exact 2.43919 (a 2-D
# quadrature of Dunnett's integral); scipy's default of 1000 missed by up to 8e-4. Twice that, for margin.
POINTS_PER_COMPARISON = 20_000
# Searching for the seeds an equivalence claim needs stops here.
MAX_SEEDS = 100_000


def dunnett_critical(correlation, df, alpha=ALPHA):
    """The two-sided simultaneous critical value c of Dunnett (1955, exact two-sided tables: Dunnett 1964):
    P(max_i |T_i| <= c) = 1 - alpha, where T is multivariate t with df degrees of freedom and the given
    correlation between the comparisons (0.5 for equal seeds per variant). One comparison: the t quantile."""
    correlation = np.atleast_2d(np.asarray(correlation, dtype=float))
    # a report asks twice per cell (log p(x) and ELBO share the design); the integral is the slow part
    return critical_of(tuple(map(tuple, correlation.round(12))), df, alpha)


@functools.lru_cache(maxsize=256)
def critical_of(correlation, df, alpha):
    correlation = np.array(correlation)
    count = len(correlation)
    single = stats.t.ppf(1 - alpha / 2, df)
    if count == 1:
        return float(single)
    law = stats.multivariate_t(shape=correlation, df=df)

    def coverage_excess(c):
        # the same QMC points at every c, so the search sees a smooth function
        return law.cdf(np.full(count, c), lower_limit=np.full(count, -c), maxpts=POINTS_PER_COMPARISON * count,
                       random_state=np.random.default_rng(0)) - (1 - alpha)

    # c lies between the single t quantile (correlation 1) and Bonferroni's (which is conservative)
    bonferroni = stats.t.ppf(1 - alpha / (2 * count), df)
    return float(optimize.brentq(coverage_excess, 0.99 * single, 1.01 * bonferroni, xtol=1e-5))


def tost_p(gain, se, df, delta):
    """Schuirmann's (1987) two one-sided tests of H0: gain <= -delta and H0: gain >= +delta; the larger of the
    two one-sided t-test p-values. Equivalence within +-delta at level alpha when it is below alpha."""
    if se == 0:  # no spread at all: the gain is known exactly
        return 0.0 if abs(gain) < delta else 1.0
    below = stats.t.sf((gain + delta) / se, df)
    above = stats.t.cdf((gain - delta) / se, df)
    return float(max(below, above))


def tost_delta_min(gain, se, df, alpha=ALPHA):
    """The smallest margin at which TOST at alpha concludes equivalence: the end of the 1 - 2 alpha t-interval
    farthest from zero, |gain| + t(1 - alpha, df) * se (any margin above it is supported)."""
    return float(abs(gain) + stats.t.ppf(1 - alpha, df) * se)


def minimum_detectable_effect(se, df, critical, power=POWER):
    """The true gain that the test behind a two-sided interval with this critical value detects with the given
    power: (critical + t(power, df)) * se; with the Bonferroni t(1 - alpha/2m) as critical it is the usual
    (t(1-alpha/2m) + t(0.8)) * SE (the far tail's share of the power is ignored)."""
    return float((critical + stats.t.ppf(power, df)) * se)


def seeds_for_equivalence(spread, delta, groups, alpha=ALPHA, power=POWER):
    """Seeds per variant for TOST at +-delta to conclude equivalence with the given power when the true gain is
    0, in a balanced design where a gain's standard error is spread / sqrt(n) on (groups - 1)(n - 1) degrees of
    freedom (two-way model: spread = sigma * sqrt(2), groups = variants; paired: the sd of the differences, 2).
    The smallest n with delta >= (t(1 - alpha, df) + t(1 - (1 - power)/2, df)) * spread / sqrt(n): the normal
    approximation of Chow, Shao & Wang (2008, Sample Size Calculations in Clinical Research, section 3.2, the
    equivalence margin with true difference 0) with t quantiles at each n's own df. None above MAX_SEEDS."""
    if spread == 0:
        return 2
    seeds = np.arange(2, MAX_SEEDS + 1)
    df = (groups - 1) * (seeds - 1)
    needed = (stats.t.ppf(1 - alpha, df) + stats.t.ppf(1 - (1 - power) / 2, df)) * spread / np.sqrt(seeds)
    enough = np.flatnonzero(needed <= delta)
    return int(seeds[enough[0]]) if enough.size else None


def confidence(alpha):
    """The simultaneous intervals' confidence as a label: 95% at alpha 0.05, 99.5% at 0.005."""
    return f"{100 * (1 - alpha):.4g}%"


def verdict_word(low, high, equivalent):
    """better / worse when the simultaneous interval excludes 0; else equivalent when TOST concludes it; else
    inconclusive (also when there is no interval)."""
    if low is None or math.isnan(low):
        return "inconclusive"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "equivalent" if equivalent else "inconclusive"


def compare(gain, se, df, critical, delta, alpha=ALPHA):
    """Everything the report says about one gain with standard error se on df degrees of freedom, given the
    simultaneous critical value of its family of comparisons (seeds_needed is the caller's: it depends on the
    design)."""
    if se is None or df < 1:
        return {"gain": gain, "gain_low": None, "gain_high": None, "gain_se": None, "gain_df": df,
                "gain_critical": None, "tost_p": None, "tost_delta_min": None, "mde": None,
                "verdict": verdict_word(None, None, False), "seeds_needed": None}
    low, high = gain - critical * se, gain + critical * se
    p = tost_p(gain, se, df, delta)
    return {"gain": gain, "gain_low": low, "gain_high": high, "gain_se": se, "gain_df": df, "gain_critical": critical,
            "tost_p": p, "tost_delta_min": tost_delta_min(gain, se, df, alpha),
            "mde": minimum_detectable_effect(se, df, critical), "verdict": verdict_word(low, high, p < alpha),
            "seeds_needed": None}
