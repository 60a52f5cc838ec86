"""The report's statistics against references: Dunnett's intervals against published worked examples, TOST
against a textbook case, the two-way model against hand computations, the minimum detectable effect and the
seeds for equivalence against their power, the verdict words on constructed cases; then the report's verdicts
and verdict.csv on the fake run folders of test_report (its sweep and make_run)."""

import io
import math

import numpy as np
import pytest
from rich.console import Console
from scipy import stats

from test_report import group, make_run, sweep  # noqa: F401 (sweep is a fixture)
from vae_compare import UserError, export
from vae_compare.report import build_report, main
from vae_compare.report.inference import (ALPHA, POWER, compare, dunnett_critical, minimum_detectable_effect,
                                          seeds_for_equivalence, tost_delta_min, tost_p, verdict_word)
from vae_compare.report.linear_model import fit_additive
from vae_compare.report.stats import paired_by_seed


def one_way(groups):
    """Means, pooled sd and df of a one-way layout (group 0 the control)."""
    means = [np.mean(g) for g in groups]
    df = sum(len(g) for g in groups) - len(groups)
    pooled = math.sqrt(sum(((np.asarray(g) - np.mean(g)) ** 2).sum() for g in groups) / df)
    return means, pooled, df


def test_dunnett_reproduces_the_maze_example_of_minitab_and_sas():
    """The mice maze example (18 mice, 6 per group, control C; Western Michigan University STAT 664 course
    notes, http://www.stat.wmich.edu/wang/664/egs/MTBmice.html): MSE 73.97 on 15 df, Minitab's Dunnett 95%
    simultaneous intervals 1 - C: [2.388, 26.61] and 2 - C: [-1.612, 22.61]."""
    control, first, second = [58, 32, 59, 64, 55, 49], [73, 70, 68, 71, 60, 62], [53, 74, 72, 62, 58, 61]
    means, pooled, df = one_way([control, first, second])
    assert df == 15 and pooled ** 2 == pytest.approx(73.9667, abs=1e-4)
    se = pooled * math.sqrt(2 / 6)
    critical = dunnett_critical([[1, 0.5], [0.5, 1]], df)  # equal groups: correlation 1/2
    for mean, (low, high) in zip(means[1:], [(2.388, 26.61), (-1.612, 22.61)]):
        gain = mean - means[0]
        assert gain - critical * se == pytest.approx(low, abs=2e-3)
        assert gain + critical * se == pytest.approx(high, abs=6e-3)  # printed to 4 significant digits


def test_dunnett_reproduces_the_blood_count_example_with_unequal_groups():
    """Dunnett (1955, JASA 50:1096), blood counts of a control (6 animals) and two drugs (4 and 5), as
    reproduced in scipy.stats.dunnett's documentation: the simultaneous 95% intervals of scipy's implementation.
    Unequal groups correlate the comparisons by sqrt(n_i n_j / ((n_i + n_0)(n_j + n_0))) (Dunnett 1955)."""
    control = [7.40, 8.50, 7.20, 8.24, 9.84, 8.32]
    drugs = [[9.76, 8.80, 7.68, 9.36], [12.80, 9.68, 12.16, 9.20, 10.55]]
    reference = stats.dunnett(*drugs, control=control, random_state=0).confidence_interval()
    means, pooled, df = one_way([control, *drugs])
    sizes = [len(control)] + [len(d) for d in drugs]
    rho = math.sqrt(sizes[1] * sizes[2] / ((sizes[1] + sizes[0]) * (sizes[2] + sizes[0])))
    critical = dunnett_critical([[1, rho], [rho, 1]], df)
    for i in (1, 2):
        se = pooled * math.sqrt(1 / sizes[i] + 1 / sizes[0])
        gain = means[i] - means[0]
        assert gain - critical * se == pytest.approx(reference.low[i - 1], abs=2e-3)
        assert gain + critical * se == pytest.approx(reference.high[i - 1], abs=2e-3)


def test_dunnett_critical_values_against_the_table():
    """Dunnett's two-sided 5% point for 3 comparisons with a control on 12 error df: 2.686 as quoted from
    Howell's table (MRC CBU statistics wiki, FAQ/dunR; the table has 2 decimals, so within 0.005); one
    comparison is the t quantile itself, and a correlation near 1 comes near a single comparison's value."""
    equal = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    assert dunnett_critical(equal, 12) == pytest.approx(2.686, abs=5e-3)
    assert dunnett_critical([[1.0]], 12) == pytest.approx(stats.t.ppf(0.975, 12), abs=1e-12)
    nearly_one = np.full((3, 3), 0.999) + 0.001 * np.eye(3)
    assert stats.t.ppf(0.975, 12) < dunnett_critical(nearly_one, 12) < stats.t.ppf(0.975, 12) + 0.05
    # between the single t quantile and Bonferroni's, and more comparisons need more
    five = np.full((5, 5), 0.5) + 0.5 * np.eye(5)
    assert dunnett_critical(equal, 12) < dunnett_critical(five, 12) < stats.t.ppf(1 - 0.05 / 10, 12)


def test_tost_reproduces_lakens_2017():
    """Lakens (2017), Equivalence tests: a practical primer for t tests, correlations, and meta-analyses, Social
    Psychological and Personality Science 8:355, worked example (also TOSTER's TOSTtwo.raw example): Moery &
    Calin-Jageman (2016) control n = 95, M = 5.25, SD = 0.95; organic n = 89, M = 5.22, SD = 0.83; equal
    variances, bounds d = +-0.43: "t(182) = -2.69, p = .004"."""
    n1, n2 = 95, 89
    pooled = math.sqrt(((n1 - 1) * 0.95 ** 2 + (n2 - 1) * 0.83 ** 2) / (n1 + n2 - 2))
    se, df, gain, delta = pooled * math.sqrt(1 / n1 + 1 / n2), n1 + n2 - 2, 5.25 - 5.22, 0.43 * pooled
    assert df == 182
    assert round((gain - delta) / se, 2) == -2.69  # the upper bound's test, the binding one
    p = tost_p(gain, se, df, delta)
    assert round(p, 3) == 0.004
    # the smallest supported margin is where TOST's p-value reaches alpha
    smallest = tost_delta_min(gain, se, df)
    assert tost_p(gain, se, df, smallest) == pytest.approx(ALPHA, abs=1e-12)
    assert tost_p(gain, se, df, smallest * 0.99) > ALPHA > tost_p(gain, se, df, smallest * 1.01)
    assert tost_p(0.5, 0.0, 5, 1.0) == 0.0 and tost_p(1.5, 0.0, 5, 1.0) == 1.0  # no spread: known exactly


def test_two_way_model_against_a_hand_computation():
    """3 variants x 4 seeds, complete: gains are differences of variant means, residuals y - row mean - column
    mean + grand mean, (3-1)(4-1) = 6 residual df, SE of a gain sigma * sqrt(2/4), correlation 1/2."""
    y = np.array([[10.0, 12.0, 11.0, 13.0], [12.0, 15.0, 13.0, 16.0], [11.0, 12.0, 14.0, 14.5]])
    fit = fit_additive({v: dict(enumerate(row)) for v, row in enumerate(y)}, 0)
    rows, columns, grand = y.mean(1), y.mean(0), y.mean()
    residual = y - rows[:, None] - columns[None, :] + grand
    assert fit.df == 6 and fit.estimable.all()
    np.testing.assert_allclose(fit.gains, rows[1:] - rows[0], atol=1e-12)
    assert fit.residual_sd == pytest.approx(math.sqrt((residual ** 2).sum() / 6), abs=1e-12)
    np.testing.assert_allclose(fit.unscaled_cov, [[0.5, 0.25], [0.25, 0.5]], atol=1e-12)
    np.testing.assert_allclose(fit.residuals[2], residual[2], atol=1e-12)


def test_two_way_model_with_a_missing_seed_matches_yates():
    """The same table without variant 2's seed 3: least squares on the rest equals the complete table with the
    missing value filled by Yates' (1933) formula x = (t T + r B - G) / ((t-1)(r-1)) (T, B, G: the variant's,
    seed's and grand totals of what is there), one residual df fewer; the variance of the gain of the variant
    with the missing value is sigma^2 [2/r + t / (r (r-1)(t-1))] (Cochran & Cox 1957, Experimental Designs)."""
    y = np.array([[10.0, 12.0, 11.0, 13.0], [12.0, 15.0, 13.0, 16.0], [11.0, 12.0, 14.0, np.nan]])
    t, r = y.shape
    table = {v: {s: y[v, s] for s in range(r) if not np.isnan(y[v, s])} for v in range(t)}
    fit = fit_additive(table, 0)
    filled = y.copy()
    filled[2, 3] = (t * np.nansum(y[2]) + r * np.nansum(y[:, 3]) - np.nansum(y)) / ((t - 1) * (r - 1))
    rows, columns, grand = filled.mean(1), filled.mean(0), filled.mean()
    residual = filled - rows[:, None] - columns[None, :] + grand
    assert fit.df == (t - 1) * (r - 1) - 1 and fit.counts == {0: 4, 1: 4, 2: 3}
    np.testing.assert_allclose(fit.gains, rows[1:] - rows[0], atol=1e-12)
    assert fit.residual_sd == pytest.approx(math.sqrt((residual ** 2).sum() / fit.df), abs=1e-12)
    assert fit.unscaled_cov[0, 0] == pytest.approx(2 / r, abs=1e-12)
    assert fit.unscaled_cov[1, 1] == pytest.approx(2 / r + t / (r * (r - 1) * (t - 1)), abs=1e-12)


def test_two_way_model_links_variants_through_shared_seeds_only():
    """diag has seeds 0, 1; A seeds 1, 2; B seeds 2, 3; C seeds 8, 9 (shared with nobody). B is tied to diag
    through A: B - diag = (B - A at seed 2) + (A - diag at seed 1), exactly (no residual df); C is not."""
    table = {"diag": {0: 1.0, 1: 2.0}, "A": {1: 5.0, 2: 4.0}, "B": {2: 10.0, 3: 7.0}, "C": {8: 0.0, 9: 1.0}}
    fit = fit_additive(table, "diag")
    assert fit.variants == ["A", "B", "C"] and fit.estimable.tolist() == [True, True, False]
    assert fit.gains[0] == pytest.approx(5.0 - 2.0) and fit.gains[1] == pytest.approx((10.0 - 4.0) + (5.0 - 2.0))
    assert math.isnan(fit.gains[2]) and fit.df == 0 and fit.residual_sd is None


def test_a_cell_without_values_has_no_estimable_gain():
    """A tuning sweep (eval.on_test=false) has no test values: every gain is left out, nothing is fitted."""
    fit = fit_additive({"diag": {}, "A": {}, "B": {}}, "diag")
    assert fit.estimable.tolist() == [False, False] and np.isnan(fit.gains).all()
    assert fit.df == 0 and fit.residual_sd is None and fit.counts == {"diag": 0, "A": 0, "B": 0}


def test_minimum_detectable_effect_has_its_power():
    """(c + t(0.8)) SE: with many df it is the textbook (1.96 + 0.84) SE = 2.80 SE; on 12 df a true gain of
    that size puts the t statistic above c with probability close to 0.8 (noncentral t)."""
    assert minimum_detectable_effect(1.0, 10 ** 7, stats.norm.ppf(0.975)) == pytest.approx(2.8016, abs=1e-3)
    critical = stats.t.ppf(1 - 0.05 / 4, 12)  # Bonferroni over 2 comparisons
    mde = minimum_detectable_effect(0.5, 12, critical)
    assert stats.nct.sf(critical, 12, mde / 0.5) == pytest.approx(POWER, abs=0.03)


def test_seeds_for_equivalence_reach_the_power_by_simulation():
    """Paired design (spread: sd of the per-seed differences), true gain 0: the returned number of seeds is the
    smallest at which TOST at +-delta concludes equivalence in 80% of simulated experiments (at sd = delta = 1:
    84.8% with 11 seeds, 79.5% with 10, over 100,000 simulated experiments each)."""
    sd, delta = 1.0, 1.0
    n = seeds_for_equivalence(sd, delta, 2)
    rng = np.random.default_rng(0)

    def power(seeds):
        diffs = rng.normal(0.0, sd, (100_000, seeds))
        gain, se = diffs.mean(1), diffs.std(1, ddof=1) / math.sqrt(seeds)
        return np.mean(np.abs(gain) + stats.t.ppf(1 - ALPHA, seeds - 1) * se < delta)

    assert n == 11
    assert power(n) > POWER > power(n - 1)
    assert seeds_for_equivalence(0.0, delta, 3) == 2
    assert seeds_for_equivalence(1e4, 1e-3, 3) is None  # beyond MAX_SEEDS
    # more variants share the seed term: more residual df at the same n, never more seeds
    assert seeds_for_equivalence(sd, delta, 5) <= n


@pytest.mark.parametrize("gain, se, expected", [
    (2.0, 0.5, "better"),         # interval above 0
    (-2.0, 0.5, "worse"),         # interval below 0
    (0.1, 0.2, "equivalent"),     # interval holds 0, TOST within +-1
    (0.5, 0.5, "inconclusive"),   # interval holds 0, TOST cannot exclude 1
    (0.5, 0.1, "better"),         # a small gain, measured precisely: above 0 beats "within delta"
    (0.3, None, "inconclusive"),  # no interval
])
def test_verdicts_on_constructed_cases(gain, se, expected):
    result = compare(gain, se, 10, 2.5, 1.0)
    assert result["verdict"] == expected
    if se is not None:
        assert (result["gain_low"], result["gain_high"]) == pytest.approx((gain - 2.5 * se, gain + 2.5 * se))
        assert result["tost_delta_min"] == pytest.approx(abs(gain) + stats.t.ppf(0.95, 10) * se)
        assert result["mde"] == pytest.approx((2.5 + stats.t.ppf(0.8, 10)) * se)
    assert verdict_word(None, None, True) == "inconclusive"


# ---- the report's verdicts on fake run folders ---------------------------------------------------------
@pytest.fixture(scope="module")
def paired(sweep):
    """The same runs, reported with --paired."""
    root, _, _ = sweep
    out = root / "report_paired"
    return out, build_report(root, out, console=Console(file=io.StringIO(), width=200), paired=True)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_paired_gain_matches_hand_computation(paired):
    _, result = paired
    chol = group(result, 8, "cholesky")
    # differences 1, 2, 3: mean 2, sd 1; three variants are compared with diag at d=8 (cholesky, lowrank and
    # the matched diag), so the Bonferroni-corrected quantile is t(1 - 0.05/6, 2) = 7.649
    assert chol["comparisons"] == 3 and chol["analysis"] == "paired"
    assert chol["gain"] == pytest.approx(2.0)
    assert chol["gain_low"] == pytest.approx(2.0 - 7.6488 / math.sqrt(3), abs=1e-3)
    assert chol["gain_high"] == pytest.approx(2.0 + 7.6488 / math.sqrt(3), abs=1e-3)
    assert chol["gain_n"] == 3 and chol["baseline"] == "diag" and chol["gain_df"] == 2
    # TOST and the MDE use the same standard error, 1/sqrt(3): delta_min = 2 + t(0.95, 2) se
    assert chol["tost_delta_min"] == pytest.approx(2.0 + 2.9200 / math.sqrt(3), abs=1e-3)
    assert chol["mde"] == pytest.approx((7.6488 + 1.0607) / math.sqrt(3), abs=1e-3)
    lowrank = group(result, 8, "lowrank(k=2)")
    # differences 0.5, 0.6, 0.7: mean 0.6, sd 0.1
    assert lowrank["gain"] == pytest.approx(0.6)
    assert lowrank["gain_low"] == pytest.approx(0.6 - 7.6488 * 0.1 / math.sqrt(3), abs=1e-3)
    assert lowrank["verdict"] == "better" and chol["verdict"] == "inconclusive"
    chol2 = group(result, 2, "cholesky")
    # differences -0.5, -0.7: mean -0.6, sd 0.1414; two variants at d=2: t(1 - 0.05/4, 1) = 25.452
    assert chol2["gain"] == pytest.approx(-0.6)
    assert chol2["gain_high"] == pytest.approx(-0.6 + 25.452 * math.sqrt(0.02) / math.sqrt(2), abs=1e-2)
    assert chol2["elbo_gain"] == pytest.approx(1.0)
    diag = group(result, 8, "diag")
    assert diag["n"] == 3 and diag["log_px_mean"] == pytest.approx(-101.0) and diag["log_px_std"] == pytest.approx(1.0)
    assert diag["gain"] is None


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_paired_analysis_is_labelled_and_uses_shared_seeds_only(paired):
    out, _ = paired
    assert "Paired analysis (report --paired)" in (out / "report.md").read_text()
    assert {row["analysis"] for row in export.read_csv(out / "verdict.csv")} == {"paired"}
    base = ({}, {"log_px": {0: 0.0, 1: 1.0, 7: 5.0}})
    (gain,), _ = paired_by_seed(base, [({}, {"log_px": {0: 1.0, 1: 3.0, 2: 9.0}})], "log_px", 1.0)
    assert gain["gain_n"] == 2 and gain["gain"] == pytest.approx(1.5)
    (single,), _ = paired_by_seed(base, [({}, {"log_px": {0: 1.0}})], "log_px", 1.0)
    assert single["gain_n"] == 1 and single["gain"] == pytest.approx(1.0) and single["gain_low"] is None
    assert single["verdict"] == "inconclusive" and single["seeds_needed"] is None
    (none,), _ = paired_by_seed(base, [({}, {"log_px": {3: 1.0}})], "log_px", 1.0)
    assert none["gain_n"] == 0 and none["gain"] is None


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_two_way_gains_match_hand_computation(sweep):
    """d=2: diag, cholesky and lowrank at seeds 0 and 1, complete. Gains are differences of variant means
    (-0.6, -1.1); residuals y - variant mean - seed mean + grand mean are -/+0.0667 for diag and +/-0.0333 for
    the others, RSS 0.01333 on (3-1)(2-1) = 2 df: sd 0.08165; a gain's SE is sd * sqrt(2/2)."""
    _, _, result = sweep
    sd = math.sqrt(2 * ((0.2 / 3) ** 2 + 2 * (0.1 / 3) ** 2) / 2)
    critical = dunnett_critical([[1, 0.5], [0.5, 1]], 2)
    (summary,) = [c for c in result["cells"] if c["latent_dim"] == 2]
    assert summary["df"] == 2 and summary["residual_sd"] == pytest.approx(sd)
    assert summary["critical"] == pytest.approx(critical)
    for variant, gain in (("cholesky", -0.6), ("lowrank(k=2)", -1.1)):
        row = group(result, 2, variant)
        assert row["analysis"] == "two-way" and row["gain_n"] == 2 and row["gain_df"] == 2
        assert row["gain"] == pytest.approx(gain) and row["gain_se"] == pytest.approx(sd)
        assert (row["gain_low"], row["gain_high"]) == pytest.approx((gain - critical * sd, gain + critical * sd))
        assert row["verdict"] == "worse"
    assert group(result, 2, "cholesky")["elbo_gain"] == pytest.approx(1.0)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_verdict_csv_has_one_row_per_comparison(sweep):
    _, out, result = sweep
    rows = export.read_csv(out / "verdict.csv")
    assert list(rows[0])[:10] == ["dataset", "latent_dim", "variant", "n", "gain", "ci_low", "ci_high",
                                  "tost_delta_min", "mde", "verdict"]
    verdicts = {(int(row["latent_dim"]), row["variant"]): row["verdict"] for row in rows}
    # d=8: cholesky (+1, +2, +3) clears zero; lowrank (+0.5..0.7) and the one matched seed do not, nor are they
    # within 1 nat by TOST with these seeds
    assert verdicts == {(2, "cholesky"): "worse", (2, "lowrank(k=2)"): "worse", (8, "diag matched→cholesky"):
                        "inconclusive", (8, "cholesky"): "better", (8, "lowrank(k=2)"): "inconclusive"}
    for row in rows:
        group_row = group(result, int(row["latent_dim"]), row["variant"])
        assert float(row["gain"]) == pytest.approx(group_row["gain"]) and int(row["n"]) == group_row["gain_n"]
        assert float(row["ci_low"]) == pytest.approx(group_row["gain_low"])
        assert float(row["mde"]) == pytest.approx(group_row["mde"])
        assert (row["seeds_needed"] != "") == (row["verdict"] == "inconclusive")
    assert result["verdicts"] and len(result["verdicts"]) == len(rows)


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_verdict_words_are_explained_and_tabled(sweep):
    _, out, result = sweep
    report = (out / "report.md").read_text()
    paragraph = next(line for line in report.splitlines() if line.startswith("**Verdicts.**"))
    for word in ("**better**", "**worse**", "**equivalent**", "**inconclusive**", "Dunnett", "TOST", "±δ = 1"):
        assert word in paragraph
    assert "| d | variant | n | gain | 95% sim. CI | δmin | MDE | verdict | seeds |" in report
    assert "smallest effect" not in report  # a half-width is not a detectable effect
    d8 = next(s for s in result["verdict"].split(". mnist") if "latent_dim 8" in s)
    assert "two-way model on 4 residual df" in d8 and "cholesky better (+2.00 nats, n=3" in d8
    d2 = next(s for s in result["verdict"].split(". mnist") if "latent_dim 2" in s)
    assert "cholesky worse" in d2 and "though better in ELBO (+1.00 nats" in d2
    assert result["verdict"] in report


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_matched_runs_are_their_own_group(sweep, paired):
    _, out, result = sweep
    matched = group(result, 8, "diag matched→cholesky")
    assert matched["n"] == 1 and matched["matched"] and matched["gain_n"] == 1
    # the two-way model gives its single seed an interval from the pooled variance
    assert matched["gain_low"] is not None and matched["verdict"] == "inconclusive"
    assert "| diag matched→cholesky | 1 |" in (out / "report.md").read_text()
    paired_out, paired_result = paired
    matched = group(paired_result, 8, "diag matched→cholesky")
    assert matched["gain"] == pytest.approx(-0.2) and matched["gain_low"] is None
    assert "-0.20 (n=1)" in (paired_out / "report.md").read_text()


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_equivalence_at_the_margin_given(tmp_path):
    """cholesky within 0.35 nat of diag at each of 4 seeds (differences +0.35, -0.25, +0.25, -0.15): equivalent
    at the default ±1 nat, inconclusive at --delta 0.1, where the row states the seeds TOST would need; the
    terminal explains the words and tables them."""
    for seed, difference in enumerate((0.35, -0.25, 0.25, -0.15)):
        make_run(tmp_path / f"diag_s{seed}", "diag", 8, seed, -100.0 - seed)
        make_run(tmp_path / f"chol_s{seed}", "cholesky", 8, seed, -100.0 - seed + difference)
    console = Console(width=100, record=True, file=io.StringIO())
    result = build_report(tmp_path, console=console)
    (row,) = result["verdicts"]
    assert row["verdict"] == "equivalent" and row["gain"] == pytest.approx(0.05) and row["tost_delta_min"] < 1.0
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["analysis"] == "two-way" and row["df"] == 3  # 8 values - (1 + 1 variant + 3 seeds)
    text = " ".join(console.export_text().split())  # the paragraph as one line
    assert "equivalent: the interval contains 0" in text and "δmin MDE verdict seeds" in text
    main([str(tmp_path), "--out", str(tmp_path / "narrow"), "--delta", "0.1"])
    (narrow,) = export.read_csv(tmp_path / "narrow" / "verdict.csv")
    assert narrow["verdict"] == "inconclusive" and float(narrow["delta"]) == 0.1 and int(narrow["seeds_needed"]) > 4
    for bad in ("0", "-1", "nan"):
        with pytest.raises(UserError, match="--delta must be a positive number"):
            main([str(tmp_path), "--out", str(tmp_path / "bad"), "--delta", bad])


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_missing_seeds_are_fitted_on_what_is_there(tmp_path):
    """diag has seeds 0-2, cholesky 0-1 (a missing seed), lowrank only 5-6, which no other variant has: cholesky
    is compared on what is there; lowrank has no gain, and says why."""
    for seed in (0, 1, 2):
        make_run(tmp_path / f"diag_s{seed}", "diag", 8, seed, -100.0 - seed)
    for seed in (0, 1):
        make_run(tmp_path / f"chol_s{seed}", "cholesky", 8, seed, -99.0 - seed + 0.1 * seed)
    for seed in (5, 6):
        make_run(tmp_path / f"lowrank_s{seed}", "lowrank", 8, seed, -90.0 - seed, rank=2)
    result = build_report(tmp_path, console=Console(file=io.StringIO(), width=200))
    chol, lowrank = group(result, 8, "cholesky"), group(result, 8, "lowrank(k=2)")
    assert chol["gain_n"] == 2 and chol["gain"] == pytest.approx(1.05) and chol["gain_low"] is not None
    assert lowrank["gain"] is None and lowrank["verdict"] == "inconclusive"
    assert "lowrank(k=2) inconclusive (no gain: it shares no seed with diag)" in result["verdict"]
    rows = {row["variant"]: row for row in export.read_csv(tmp_path / "verdict.csv")}
    assert rows["lowrank(k=2)"]["gain"] == "" and rows["cholesky"]["verdict"] in ("better", "inconclusive")


@pytest.mark.slow  # seconds in-process: make test runs it, make test-fast leaves it out
def test_alpha_sets_the_level_of_a_looks_intervals_and_tost(sweep):
    """report --alpha 0.005 (look 1 of the answer's sequential design): the paired interval uses t(1 - 0.005/6, 2),
    TOST and delta_min are at 0.005, and the tables and verdict.csv say so."""
    root, _, _ = sweep
    out = root / "report_alpha"
    result = build_report(root, out, console=Console(file=io.StringIO(), width=200), paired=True, alpha=0.005)
    chol = group(result, 8, "cholesky")
    critical = stats.t.ppf(1 - 0.005 / 6, 2)
    assert critical > 7.6488  # wider than at 0.05
    assert chol["gain_low"] == pytest.approx(2.0 - critical / math.sqrt(3), abs=1e-6)
    assert chol["tost_delta_min"] == pytest.approx(2.0 + stats.t.ppf(0.995, 2) / math.sqrt(3), abs=1e-6)
    # lowrank's interval at 0.05 excluded zero (better); at 0.005 it is 0.6 +- 24.8 * 0.1 / sqrt(3): still above 0
    assert group(result, 8, "lowrank(k=2)")["gain_low"] == pytest.approx(0.6 - critical * 0.1 / math.sqrt(3), abs=1e-6)
    assert {row["alpha"] for row in export.read_csv(out / "verdict.csv")} == {"0.005"}
    text = (out / "report.md").read_text()
    assert "99.5% sim. CI" in text and "simultaneous 99.5% interval" in text and "t(1 − 0.005/2m)" in text
    with pytest.raises(UserError, match="--alpha"):
        build_report(root, out, console=Console(file=io.StringIO()), alpha=0.7)
    # a look reads its own seeds only (report --seeds)
    first = build_report(root, root / "report_look", console=Console(file=io.StringIO(), width=200), paired=True,
                         seeds={0, 1})
    assert group(first, 8, "diag")["n"] == 2 and group(first, 8, "cholesky")["gain"] == pytest.approx(1.5)
    with pytest.raises(UserError, match="at seed \\[9\\]"):
        main([str(root), "--seeds", "9", "--out", str(root / "report_none")])
    # and the latent sizes it has reached (report --latent-dims)
    reached = build_report(root, root / "report_d8", console=Console(file=io.StringIO(), width=200), paired=True,
                           seeds={0, 1}, latent_dims={8})
    assert {g["latent_dim"] for g in reached["groups"]} == {8} and group(reached, 8, "cholesky")["gain"] == pytest.approx(1.5)
    assert {row["latent_dim"] for row in export.read_csv(root / "report_d8" / "verdict.csv")} == {"8"}
    with pytest.raises(UserError, match="at seed \\[0\\] at latent_dim \\[32\\]"):
        main([str(root), "--seeds", "0", "--latent-dims", "32", "--out", str(root / "report_none")])
