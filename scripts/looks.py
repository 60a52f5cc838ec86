"""Merge the looks of the answer's sequential design (scripts/answer.sh) into one verdict per comparison.

Each look is a report of its own seeds at its own alpha (PUBLISH_DIR/look1, PUBLISH_DIR/look2). A comparison
decided at look 1 (better, worse or equivalent) keeps that verdict; one still open there takes look 2's, when
look 2 has run at its latent size. Writes PUBLISH_DIR/verdict.csv (the verdict.csv columns and `look`, the look
whose verdict it is) and PUBLISH_DIR/looks.md, and copies the latest look's report files beside them.

With --open it prints, instead, look 2's sweeps at latent size DIM (scripts/answer.sh runs them): the answer runs
(vae_compare.posteriors) of the variants look 1 left inconclusive there, and diag's, which they are compared with;
nothing when look 1 decided every comparison there. A decided comparison keeps look 1's verdict, so its variant
needs no more seeds (a multi-arm design drops an arm that has stopped; each look's alpha stays as it was).

Usage: python scripts/looks.py PUBLISH_DIR | python scripts/looks.py --open PUBLISH_DIR DIM
"""

import csv
import shutil
import sys
from pathlib import Path

from vae_compare.config import compose
from vae_compare.labels import run_label
from vae_compare.posteriors import FAMILIES
from vae_compare.posteriors.study import answer_sweeps

REPORT_FILES = ("report.md", "summary.csv", "gaps.csv", "calibration.csv")
BASELINE = "diag"


def read(path):
    return list(csv.DictReader(path.open())) if path.is_file() else []


def merge(first, second):
    """One row per comparison: look 1's where it decided or look 2 has none, else look 2's."""
    later = {(row["dataset"], row["latent_dim"], row["variant"]): row for row in second}
    merged = []
    for row in first:
        key = (row["dataset"], row["latent_dim"], row["variant"])
        if row["verdict"] == "inconclusive" and key in later:
            merged.append({**later[key], "look": "2"})
        else:
            merged.append({**row, "look": "1"})
    return merged


def main(publish):
    looks = [read(publish / f"look{look}" / "verdict.csv") for look in (1, 2)]
    merged = merge(*looks)
    if not merged:
        raise SystemExit(f"error: {publish}/look1/verdict.csv has no comparison")
    columns = list(merged[0])
    with (publish / "verdict.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(merged)
    latest = publish / ("look2" if looks[1] else "look1")
    for path in latest.iterdir():
        if path.name in REPORT_FILES or path.suffix == ".png":
            shutil.copy2(path, publish / path.name)
    lines = ["# The answer's verdicts, look by look", "",
             f"Each comparison's verdict is that of the look that decided it (look 1 at alpha "
             f"{looks[0][0]['alpha']}" + (f", look 2 at {looks[1][0]['alpha']}" if looks[1] else ", look 2 not run yet")
             + f"); the report beside this file is {latest.name}'s.", "",
             "| d | variant | look | seeds | gain | interval | δmin | verdict |", "|---|---|---|---|---|---|---|---|"]
    for row in merged:
        known = row["ci_low"] not in ("", None)
        interval = f"[{float(row['ci_low']):+.2f}, {float(row['ci_high']):+.2f}]" if known else ""
        delta = f"{float(row['tost_delta_min']):.2f}" if known else ""
        gain = f"{float(row['gain']):+.2f}" if row["gain"] else ""
        lines.append(f"| {row['latent_dim']} | {row['variant']} | {row['look']} | {row['n']} | {gain} | {interval} "
                     f"| {delta} | {row['verdict']} |")
    (publish / "looks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def open_sweeps(publish, dim):
    """Look 2's sweeps at latent size dim (strings), each a list of Hydra overrides, in the registry's order."""
    open_variants = {row["variant"] for row in read(publish / "look1" / "verdict.csv")
                     if row["latent_dim"] == dim and row["verdict"] == "inconclusive"}
    if not open_variants:
        return []
    labelled = [(run_label(compose(list(sweep) + ["experiment=answer"])), list(sweep))
                for sweep in answer_sweeps(FAMILIES, [dim])]
    unknown = open_variants - {label for label, _ in labelled}
    if unknown:
        raise SystemExit(f"error: look 1's open {', '.join(sorted(unknown))} at latent_dim {dim} is no answer run")
    return [sweep for label, sweep in labelled if label in open_variants | {BASELINE}]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--open":
        for sweep in open_sweeps(Path(sys.argv[2]), sys.argv[3]):
            print(" ".join(sweep))
    elif len(sys.argv) == 2:
        main(Path(sys.argv[1]))
    else:
        raise SystemExit("usage: " + __doc__.splitlines()[-1].split(": ", 1)[1])
