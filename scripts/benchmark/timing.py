"""Interleaved timing and the figures taken from it: spreads of per-round ratios, verdicts against a target, and
their printed form.

Every comparison is timed interleaved: one round times each side once, in turn (A, B, then B, A in the next
round, so neither side always runs first), and a ratio is taken within each round, so a change in the
machine's load between rounds falls on both sides of that ratio. A figure is the median of the per-round
ratios, with their spread: the interquartile range (and min-max, in the JSON). A target is PASS when the
whole interquartile range is on its good side, FAIL when the whole range is on the bad side, and UNCLEAR when
the range straddles the target (too noisy to judge).
"""

import statistics
import sys
import time

from rich.console import Console

from vae_compare.runtime import synchronize

# wide tables when the output is a file or a pipe
console = Console() if sys.stdout.isatty() else Console(width=160)


def seconds_of(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(fns, device, repeats, warmup=1):
    """Wall times of each fn in a dict, one list per fn with one entry per round, after `warmup` untimed
    calls each. Each round times every fn once, in turn; the order is reversed every other round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            times[name].append(seconds_of(fns[name], device))
    return times


def per_call_times(fns, device, repeats, block_seconds):
    """interleaved_times of one call each, every timing covering as many calls in a row as fill about
    block_seconds (judged from one call after a first one), so short calls rise above timer noise."""
    blocks, calls = {}, {}
    for name, fn in fns.items():
        fn()
        calls[name] = max(1, min(1000, round(block_seconds / seconds_of(fn, device))))
        blocks[name] = lambda fn=fn, n=calls[name]: [fn() for _ in range(n)]
    times = interleaved_times(blocks, device, repeats)
    return {name: [t / calls[name] for t in values] for name, values in times.items()}


def spread(values):
    """Median, quartiles and extremes of per-round figures."""
    values = sorted(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": values[0], "max": values[-1],
            "n": len(values)}


def ratios(numerators, denominators):
    """Per-round ratios of two interleaved timings."""
    return [a / b for a, b in zip(numerators, denominators)]


def verdict(figure, target):
    """PASS, FAIL or UNCLEAR for a spread against a target (op, value), judged on the interquartile range."""
    op, value = target
    low, high = figure["q1"], figure["q3"]
    good = {"<=": lambda x: x <= value, ">=": lambda x: x >= value, ">": lambda x: x > value}[op]
    if good(low) and good(high):
        return "PASS"
    if not good(low) and not good(high):
        return "FAIL"
    return "UNCLEAR"


def worst_verdict(verdicts):
    """A target over several figures (every size): FAIL if any fails, else UNCLEAR if any is, else PASS."""
    return "FAIL" if "FAIL" in verdicts else "UNCLEAR" if "UNCLEAR" in verdicts else "PASS"


def wanted(target):
    """A target (op, value) as the summary table shows it, e.g. "≤ 0.4"."""
    op, value = target
    return f"{op.replace('<=', '≤').replace('>=', '≥')} {value}"


def fmt(figure, digits=3):
    return f"{figure['median']:.{digits}f} ({figure['q1']:.{digits}f}–{figure['q3']:.{digits}f})"
