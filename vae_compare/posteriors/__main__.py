"""The study's sweeps from the family registry, one line of Hydra overrides per `vae-compare train -m` call:

    python -m vae_compare.posteriors tune              the tuning grid's sweeps (scripts/tune.sh)
    python -m vae_compare.posteriors answer 2,8,32     the answer's runs at those latent sizes (scripts/answer.sh)
    python -m vae_compare.posteriors answer 2,8,32 SELECTED.CSV
                                                       the same at the settings report --select chose (each
                                                       family's row; the keys the registry's runs name)
"""

import csv
import sys

from vae_compare.posteriors import FAMILIES
from vae_compare.posteriors.study import answer_sweeps, tuning_sweeps, with_selection


def main(args):
    if args == ["tune"]:
        sweeps = tuning_sweeps(FAMILIES)
    elif len(args) in (2, 3) and args[0] == "answer" and all(dim.isdigit() and int(dim) > 0 for dim in args[1].split(",")):
        sweeps = answer_sweeps(FAMILIES, args[1].split(","))
        if len(args) == 3:
            try:
                selected = {row["family"]: row["overrides"] for row in csv.DictReader(open(args[2]))}
            except (OSError, KeyError) as error:
                print(f"error: {args[2]}: not a selection (report --select's selected.csv): {error}", file=sys.stderr)
                return 2
            missing = sorted({sweep[1].split("=", 1)[1] for sweep in sweeps} - selected.keys())
            if missing:
                print(f"error: {args[2]} has no selection for {', '.join(missing)}", file=sys.stderr)
                return 2
            sweeps = [with_selection(sweep, selected[sweep[1].split("=", 1)[1]]) for sweep in sweeps]
    else:
        print("usage: python -m vae_compare.posteriors tune | answer <latent sizes, e.g. 2,8,32> [selected.csv]",
              file=sys.stderr)
        return 2
    for sweep in sweeps:
        print(" ".join(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
