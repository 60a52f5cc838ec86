"""The study's sweeps from the family registry, one line of Hydra overrides per `vae-compare train -m` call:

    python -m vae_compare.posteriors tune              the tuning grid's sweeps (scripts/tune.sh)
    python -m vae_compare.posteriors answer 2,8,32     the answer's runs at those latent sizes (scripts/answer.sh)
"""

import sys

from vae_compare.posteriors import FAMILIES
from vae_compare.posteriors.study import answer_sweeps, tuning_sweeps


def main(args):
    if args == ["tune"]:
        sweeps = tuning_sweeps(FAMILIES)
    elif len(args) == 2 and args[0] == "answer" and all(dim.isdigit() and int(dim) > 0 for dim in args[1].split(",")):
        sweeps = answer_sweeps(FAMILIES, args[1].split(","))
    else:
        print("usage: python -m vae_compare.posteriors tune | answer <latent sizes, e.g. 2,8,32>", file=sys.stderr)
        return 2
    for sweep in sweeps:
        print(" ".join(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
